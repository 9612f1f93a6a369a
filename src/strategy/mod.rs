//! Continual-learning strategies: the [`Strategy`] trait, the context the runner hands them, and the registry
//! that builds one from a resolved [`StrategySpec`].
//!
//! Adding a kind: write `strategy/<kind>.rs` with a `Params` struct (`#[serde(deny_unknown_fields)]`, parsed from
//! the preset table minus `kind`/`label`/`train`/`lora`) and a type implementing [`Strategy`], then add one arm to
//! [`validate_params`] and [`build`] (and a built-in preset to [`BUILTIN_PRESETS`]).

pub mod finetune;
pub mod zeroshot;

use crate::data::{Case, TaskData};
use crate::model::{LiteMedSam, Prompts};
use crate::spec::StrategySpec;
use crate::{Error, Result};
use candle_core::{Device, Tensor};
use rand_chacha::ChaCha8Rng;
use serde::de::DeserializeOwned;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// Built-in presets (copies of `baselines/*.toml`), used when no `baselines/<name>.toml` sits next to the spec.
pub const BUILTIN_PRESETS: &[(&str, &str)] = &[
    ("zeroshot", include_str!("../../baselines/zeroshot.toml")),
    ("finetune", include_str!("../../baselines/finetune.toml")),
];

/// Kinds the registry knows.
pub const KINDS: &[&str] = &["zeroshot", "finetune"];

pub fn builtin_preset(name: &str) -> Option<&'static str> {
    BUILTIN_PRESETS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, t)| *t)
}

/// Parse kind-specific parameters (unknown keys and wrong types are errors naming the key).
pub fn parse_params<T: DeserializeOwned>(params: &toml::Table) -> std::result::Result<T, String> {
    toml::Value::Table(params.clone())
        .try_into()
        .map_err(|e: toml::de::Error| e.message().trim_end().to_string())
}

/// Check a kind's parameters without building anything. Messages name the key in backticks.
pub fn validate_params(kind: &str, params: &toml::Table) -> std::result::Result<(), String> {
    match kind {
        "zeroshot" => parse_params::<zeroshot::Params>(params).map(|_| ()),
        "finetune" => parse_params::<finetune::Params>(params).map(|_| ()),
        other => Err(format!(
            "`kind` = {other:?} is unknown (known kinds: {})",
            KINDS.join(", ")
        )),
    }
}

/// Build a strategy for one cell. `init_seed` is derived from (experiment seed, label, order).
pub fn build(
    spec: &StrategySpec,
    model: &LiteMedSam,
    base_sha256: &str,
    init_seed: u64,
) -> Result<Box<dyn Strategy>> {
    let bad = |m: String| Error::Spec {
        file: format!("strategy {:?}", spec.label),
        msg: m,
    };
    match spec.kind.as_str() {
        "zeroshot" => {
            let p = parse_params::<zeroshot::Params>(&spec.params).map_err(bad)?;
            Ok(Box::new(zeroshot::ZeroShot::new(spec, p)))
        }
        "finetune" => {
            let p = parse_params::<finetune::Params>(&spec.params).map_err(bad)?;
            Ok(Box::new(finetune::FineTune::new(
                spec,
                p,
                model,
                base_sha256,
                init_seed,
            )?))
        }
        other => Err(bad(format!(
            "`kind` = {other:?} is unknown (known kinds: {})",
            KINDS.join(", ")
        ))),
    }
}

/// Frozen-encoder embeddings of every case of the run, keyed by the case's content hash.
pub struct EmbeddingStore {
    map: HashMap<String, Tensor>,
}

impl EmbeddingStore {
    pub fn new(map: HashMap<String, Tensor>) -> Self {
        Self { map }
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

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

/// A progress event from inside a cell.
#[derive(Clone, Debug)]
pub struct Progress {
    pub task: String,
    pub epoch: usize,
    pub epochs: usize,
    pub step: usize,
    pub steps: usize,
    pub loss: f64,
}

/// Everything a strategy may use while training or predicting.
pub struct StrategyCtx<'a> {
    pub model: &'a LiteMedSam,
    pub embeddings: &'a EmbeddingStore,
    /// sha256 of the base weights (adapters record it).
    pub base_sha256: &'a str,
    pub spec: &'a StrategySpec,
    /// Experiment seed of this cell.
    pub seed: u64,
    pub order_label: &'a str,
    /// All tasks of the stream, in the spec's order.
    pub tasks: &'a [TaskData],
    /// This cell's order: `order[k]` indexes `tasks` for the (k+1)-th task trained.
    pub order: &'a [usize],
    /// Stage being trained (1-based; 0 while evaluating zero-shot).
    pub stage: usize,
    /// Seeded RNG for this stage, derived from (seed, label, order, stage): a resumed run gets the same stream.
    pub rng: ChaCha8Rng,
    pub progress: &'a (dyn Fn(Progress) + Send + Sync),
    pub device: &'a Device,
}

impl StrategyCtx<'_> {
    /// Tasks trained so far in this order, including the current one (position `k` = `order[k]`).
    pub fn seen(&self) -> Vec<&TaskData> {
        self.order[..self.stage.min(self.order.len())]
            .iter()
            .map(|&i| &self.tasks[i])
            .collect()
    }

    /// Name of the task at position `k` of this order.
    pub fn task_name(&self, k: usize) -> &str {
        &self.tasks[self.order[k]].name
    }
}

/// A batch for prediction: cases, their embeddings and box prompts (exact GT boxes, model frame).
pub struct Batch<'a> {
    pub cases: Vec<&'a Case>,
    /// (B,C,h,w) frozen-encoder embeddings.
    pub embeddings: Tensor,
    pub prompts: Prompts,
}

/// Logits (B,1,S,S) and, for routing strategies, the chosen expert per image (task name or "base").
pub struct Prediction {
    pub logits: Tensor,
    pub routed_to: Option<Vec<String>>,
}

pub trait Strategy: Send {
    fn name(&self) -> &str;

    /// Train on the task at position `task_index` of the order (`task` = `ctx.tasks[ctx.order[task_index]]`).
    fn train_task(
        &mut self,
        ctx: &mut StrategyCtx,
        task_index: usize,
        task: &TaskData,
    ) -> Result<()>;

    /// Predict a batch of cases of the task at position `task_index` (the true task: only oracles may use it).
    fn predict(&self, ctx: &StrategyCtx, task_index: usize, batch: &Batch) -> Result<Prediction>;

    /// Save everything needed to continue after the current stage (adapters, optimiser state, buffers...).
    fn save_state(&self, dir: &Path) -> Result<()>;

    /// Restore what `save_state` wrote.
    fn load_state(&mut self, ctx: &StrategyCtx, dir: &Path) -> Result<()>;

    /// Per-stage values for extras.csv (e.g. "trainable_params", "n_experts", "matcher_acc").
    fn extra_metrics(&self) -> BTreeMap<String, f64> {
        BTreeMap::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_and_params() {
        for (name, text) in BUILTIN_PRESETS {
            let mut t: toml::Table = toml::from_str(text).unwrap();
            let kind = t.remove("kind").unwrap().as_str().unwrap().to_string();
            t.remove("label");
            t.remove("train");
            t.remove("lora");
            validate_params(&kind, &t).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
        let e = validate_params("magic", &toml::Table::new()).unwrap_err();
        assert!(e.contains("magic") && e.contains("finetune"), "{e}");
        let mut t = toml::Table::new();
        t.insert("nope".into(), toml::Value::Integer(1));
        let e = validate_params("finetune", &t).unwrap_err();
        assert!(e.contains("nope"), "{e}");
        let e = validate_params("zeroshot", &t).unwrap_err();
        assert!(e.contains("nope"), "{e}");
    }
}
