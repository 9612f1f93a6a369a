//! Frozen-encoder embeddings of the run's cases, keyed by each case's content hash. The runner fills the store
//! once (through the on-disk cache); the training loop and the strategies read from it.

use super::Case;
use crate::model::{Adapter, LiteMedSam};
use crate::{Error, Result};
use candle_core::Tensor;
use std::collections::HashMap;

/// Frozen-encoder embeddings of every case of the run, keyed by the case's content hash.
pub struct EmbeddingStore {
    map: HashMap<String, Tensor>,
}

impl EmbeddingStore {
    /// A store from content hash -> (C,h,w) embedding.
    pub fn new(map: HashMap<String, Tensor>) -> Self {
        Self { map }
    }

    /// Number of embeddings held.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// True when the store holds nothing.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// True when the store holds the embedding of this content hash.
    pub fn contains(&self, key: &str) -> bool {
        self.map.contains_key(key)
    }

    /// One case's embedding (C,h,w).
    pub fn get(&self, case: &Case) -> Result<Tensor> {
        self.map
            .get(&case.content_hash)
            .cloned()
            .ok_or_else(|| Error::internal(format!("no embedding for case {}", case.id)))
    }

    /// Stacked embeddings (B,C,h,w).
    pub fn batch(&self, cases: &[&Case]) -> Result<Tensor> {
        let v: Vec<Tensor> = cases.iter().map(|c| self.get(c)).collect::<Result<_>>()?;
        Ok(Tensor::stack(&v, 0)?)
    }
}

/// Image embeddings of `cases` as seen through `adapter`: the cached frozen-encoder ones, unless the adapter has
/// encoder sites (e.g. `attn.qkv`, the GPU setting); then the encoder runs on the images, differentiably.
pub fn embed_with(
    model: &LiteMedSam,
    store: &EmbeddingStore,
    cases: &[&Case],
    adapter: Option<&Adapter>,
) -> Result<Tensor> {
    match adapter {
        Some(a) if a.targets_encoder() => {
            let imgs: Vec<Tensor> = cases.iter().map(|c| c.image.clone()).collect();
            model.encode_with(&Tensor::stack(&imgs, 0)?, Some(a))
        }
        _ => store.batch(cases),
    }
}
