//! Frozen-encoder embeddings of the run's cases, keyed by each case's content hash. The runner fills the store
//! once (through the on-disk cache); the training loop and the strategies read from it.

use super::Case;
use crate::embed_cache::EmbeddingCache;
use crate::model::{Adapter, LiteMedSam};
use crate::{Error, Result};
use candle_core::{DType, Device, Tensor};
use std::collections::{HashMap, HashSet};

/// Frozen-encoder embeddings of every case of the run, keyed by the case's content hash: held in memory, or,
/// when they would not fit the run's memory budget, read from the on-disk cache on demand.
pub struct EmbeddingStore {
    map: HashMap<String, Tensor>,
    disk: Option<OnDisk>,
}

struct OnDisk {
    cache: EmbeddingCache,
    keys: HashSet<String>,
    device: Device,
}

impl EmbeddingStore {
    /// A store from content hash -> (C,h,w) embedding (any float dtype; read back as f32).
    pub fn new(map: HashMap<String, Tensor>) -> Self {
        Self { map, disk: None }
    }

    /// A store that holds nothing in memory: the embeddings of `keys` are read from `cache` when asked for (and
    /// moved to `device`).
    pub fn on_disk(cache: EmbeddingCache, keys: HashSet<String>, device: Device) -> Self {
        Self {
            map: HashMap::new(),
            disk: Some(OnDisk {
                cache: cache.without_memory(),
                keys,
                device,
            }),
        }
    }

    /// True when embeddings are read from disk on demand.
    pub fn is_on_disk(&self) -> bool {
        self.disk.is_some()
    }

    /// Number of embeddings held.
    pub fn len(&self) -> usize {
        self.map.len() + self.disk.as_ref().map_or(0, |d| d.keys.len())
    }

    /// True when the store holds nothing.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// True when the store holds the embedding of this content hash.
    pub fn contains(&self, key: &str) -> bool {
        self.map.contains_key(key) || self.disk.as_ref().is_some_and(|d| d.keys.contains(key))
    }

    /// One case's embedding (C,h,w), f32.
    pub fn get(&self, case: &Case) -> Result<Tensor> {
        let missing = || Error::internal(format!("no embedding for case {}", case.id));
        let t = match self.map.get(&case.content_hash) {
            Some(t) => t.clone(),
            None => {
                let d = self
                    .disk
                    .as_ref()
                    .filter(|d| d.keys.contains(&case.content_hash));
                let d = d.ok_or_else(missing)?;
                d.cache
                    .read(&case.content_hash)?
                    .ok_or_else(|| {
                        Error::internal(format!(
                            "embedding of case {} vanished from the cache {}",
                            case.id,
                            d.cache.dir().display()
                        ))
                    })?
                    .to_device(&d.device)?
            }
        };
        Ok(t.to_dtype(DType::F32)?)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::{make_case, ImageSource, Mask2D, RawCase, RawImage};
    use crate::model::LiteMedSamConfig;

    /// A store over the memory budget reads the same embeddings from disk that the in-memory store holds.
    #[test]
    fn on_disk_store_equals_in_memory_store() {
        let dev = Device::Cpu;
        let m = LiteMedSam::random(&LiteMedSamConfig::tiny(), 2, &dev).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let cache = EmbeddingCache::new(dir.path(), "tiny-seed2")
            .unwrap()
            .without_memory();
        let cases: Vec<Case> = (0..2)
            .map(|i| {
                let raw = RawCase {
                    id: format!("c{i}"),
                    image: ImageSource::Raw(RawImage {
                        h: 20,
                        w: 30,
                        channels: 1,
                        data: (0..600).map(|v| ((v * (i + 3)) % 17) as f32).collect(),
                    }),
                    mask: Mask2D::zeros(20, 30),
                    fov: None,
                };
                make_case(raw, 256, &dev).unwrap()
            })
            .collect();
        let mut map = HashMap::new();
        for c in &cases {
            let e = cache.get_or_compute(&m, &c.content_hash, &c.image).unwrap();
            map.insert(c.content_hash.clone(), e.to_dtype(DType::F16).unwrap());
        }
        let mem = EmbeddingStore::new(map);
        let keys = cases.iter().map(|c| c.content_hash.clone()).collect();
        let disk = EmbeddingStore::on_disk(cache, keys, dev.clone());
        assert!(disk.is_on_disk() && !mem.is_on_disk());
        assert_eq!((disk.len(), mem.len()), (2, 2));
        let refs: Vec<&Case> = cases.iter().collect();
        let (a, b) = (mem.batch(&refs).unwrap(), disk.batch(&refs).unwrap());
        assert_eq!(a.dtype(), DType::F32);
        let (a, b): (Vec<f32>, Vec<f32>) = (
            a.flatten_all().unwrap().to_vec1().unwrap(),
            b.flatten_all().unwrap().to_vec1().unwrap(),
        );
        assert_eq!(a, b);
        assert!(a.iter().any(|v| *v != 0.0));
        // a key the store does not hold is an internal error, not a silent zero
        let mut other = cases[0].clone();
        other.content_hash = "nope".into();
        assert!(disk.get(&other).is_err());
    }
}
