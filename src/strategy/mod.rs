//! Continual-learning strategies: the [`Strategy`] trait, the context the runner hands them, and the registry
//! that builds one from a resolved [`StrategySpec`].
//!
//! Adding a kind: write `strategy/<kind>.rs` with a `Params` struct (`#[serde(deny_unknown_fields)]`, parsed from
//! the preset table minus `kind`/`label`/`train`/`lora`) and a type implementing [`Strategy`], then add one arm to
//! [`validate_params`] and [`build`] (and a built-in preset to [`BUILTIN_PRESETS`]).

pub mod evosam;
pub mod ewc;
pub mod finetune;
pub mod joint;
pub mod lwf;
pub mod matcher;
pub mod novelty;
pub mod replay;
pub mod reservoir;
pub mod single;
pub mod zeroshot;

use crate::data::{Case, TaskData};
use crate::model::{Adapter, DecoderOutput, LiteMedSam, Prompts};
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
    ("evosam", include_str!("../../baselines/evosam.toml")),
    (
        "evosam-oracle",
        include_str!("../../baselines/evosam-oracle.toml"),
    ),
    ("ewc", include_str!("../../baselines/ewc.toml")),
    (
        "online-ewc",
        include_str!("../../baselines/online-ewc.toml"),
    ),
    ("replay", include_str!("../../baselines/replay.toml")),
    ("lwf", include_str!("../../baselines/lwf.toml")),
    ("joint", include_str!("../../baselines/joint.toml")),
];

/// Kinds the registry knows.
pub const KINDS: &[&str] = &[
    "zeroshot", "finetune", "evosam", "ewc", "replay", "lwf", "joint",
];

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
        "evosam" => parse_params::<evosam::Params>(params)?.check().map(|_| ()),
        "ewc" => parse_params::<ewc::Params>(params)?.check().map(|_| ()),
        "replay" => parse_params::<replay::Params>(params)?.check().map(|_| ()),
        "lwf" => parse_params::<lwf::Params>(params)?.check().map(|_| ()),
        "joint" => parse_params::<joint::Params>(params).map(|_| ()),
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
    let (sha, seed) = (base_sha256, init_seed);
    Ok(match spec.kind.as_str() {
        "zeroshot" => {
            let p = parse_params::<zeroshot::Params>(&spec.params).map_err(bad)?;
            Box::new(zeroshot::ZeroShot::new(spec, p))
        }
        "finetune" => {
            let p = parse_params::<finetune::Params>(&spec.params).map_err(bad)?;
            single(spec, model, sha, seed, finetune::FineTune { params: p })?
        }
        "evosam" => {
            let p = parse_params::<evosam::Params>(&spec.params)
                .and_then(|p| p.check())
                .map_err(bad)?;
            Box::new(evosam::EvoSam::new(spec, p, model, sha, seed)?)
        }
        "ewc" => {
            let p = parse_params::<ewc::Params>(&spec.params)
                .and_then(|p| p.check())
                .map_err(bad)?;
            single(spec, model, sha, seed, ewc::Ewc::new(p))?
        }
        "replay" => {
            let p = parse_params::<replay::Params>(&spec.params)
                .and_then(|p| p.check())
                .map_err(bad)?;
            single(spec, model, sha, seed, replay::Replay::new(p))?
        }
        "lwf" => {
            let p = parse_params::<lwf::Params>(&spec.params)
                .and_then(|p| p.check())
                .map_err(bad)?;
            single(spec, model, sha, seed, lwf::Lwf { params: p })?
        }
        "joint" => {
            let p = parse_params::<joint::Params>(&spec.params).map_err(bad)?;
            single(spec, model, sha, seed, joint::Joint { params: p })?
        }
        other => {
            return Err(bad(format!(
                "`kind` = {other:?} is unknown (known kinds: {})",
                KINDS.join(", ")
            )))
        }
    })
}

fn single<K: single::SingleKind + 'static>(
    spec: &StrategySpec,
    model: &LiteMedSam,
    sha: &str,
    seed: u64,
    kind: K,
) -> Result<Box<dyn Strategy>> {
    Ok(Box::new(single::SingleModel::new(
        spec, model, sha, seed, kind,
    )?))
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

/// Decode a batch with one adapter per image (None = the base model). Adapters with encoder sites re-encode
/// their images; otherwise the batch's cached embeddings are used.
pub fn decode_cases(
    ctx: &StrategyCtx,
    batch: &Batch,
    routes: &[Option<&Adapter>],
) -> Result<DecoderOutput> {
    if !routes
        .iter()
        .any(|r| r.is_some_and(|a| a.targets_encoder()))
    {
        return ctx
            .model
            .decode_routed(&batch.embeddings, &batch.prompts, routes);
    }
    let mut logits = Vec::new();
    let mut ious = Vec::new();
    for (i, r) in routes.iter().enumerate() {
        let one = [batch.cases[i]];
        let emb = embed_with(ctx.model, ctx.embeddings, &one, *r)?;
        let idx = Tensor::new(&[i as u32], ctx.device)?;
        let out = ctx.model.decode(&emb, &batch.prompts.select(&idx)?, *r)?;
        logits.push(out.logits);
        ious.push(out.iou);
    }
    Ok(DecoderOutput {
        logits: Tensor::cat(&logits, 0)?,
        iou: Tensor::cat(&ious, 0)?,
    })
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

impl<'a> StrategyCtx<'a> {
    /// Tasks trained so far in this order, including the current one (position `k` = `order[k]`). The references
    /// outlive the context borrow, so they can be used while `ctx` is passed on mutably (e.g. to `fit`).
    pub fn seen(&self) -> Vec<&'a TaskData> {
        let tasks: &'a [TaskData] = self.tasks;
        self.order[..self.stage.min(self.order.len())]
            .iter()
            .map(|&i| &tasks[i])
            .collect()
    }

    /// The task at position `k` of this order.
    pub fn task_at(&self, k: usize) -> &'a TaskData {
        let tasks: &'a [TaskData] = self.tasks;
        &tasks[self.order[k]]
    }

    /// Name of the task at position `k` of this order.
    pub fn task_name(&self, k: usize) -> &'a str {
        &self.task_at(k).name
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
    /// Per-image novelty score of a routing strategy's novelty detector (scores.csv `novelty`), else None.
    pub novelty: Option<Vec<f64>>,
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
mod kinds_tests;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Adapter;
    use crate::train::optim::AdamW;

    /// A toy joint-training strategy written against the public API: trains a fresh adapter on every seen task
    /// with an extra loss term that calls the model (as LwF would), while `ctx` is borrowed mutably by `fit`.
    struct Toy {
        adapter: Option<Adapter>,
        extra_calls: std::cell::Cell<usize>,
    }

    impl Strategy for Toy {
        fn name(&self) -> &str {
            "toy"
        }
        fn train_task(&mut self, ctx: &mut StrategyCtx, _k: usize, _task: &TaskData) -> Result<()> {
            let adapter = Adapter::new(ctx.model, &ctx.spec.lora, 1)?;
            let mut opt = AdamW::new(adapter.vars(), finetune::adamw_params(ctx.spec))?;
            let cases: Vec<&Case> = ctx.seen().iter().flat_map(|t| t.train.iter()).collect();
            let model = ctx.model;
            let calls = &self.extra_calls;
            let extra =
                |_c: &[&Case], emb: &Tensor, p: &Prompts, out: &crate::model::DecoderOutput| {
                    calls.set(calls.get() + 1);
                    let base = model.decode(emb, p, None)?;
                    Ok(Some(
                        ((&out.logits - &base.logits)?.sqr()?.mean_all()? * 0.01)?,
                    ))
                };
            crate::train::r#loop::fit(ctx, "all", &adapter, &mut opt, &cases, Some(&extra))?;
            self.adapter = Some(adapter);
            Ok(())
        }
        fn predict(&self, ctx: &StrategyCtx, _k: usize, batch: &Batch) -> Result<Prediction> {
            let out = ctx
                .model
                .decode(&batch.embeddings, &batch.prompts, self.adapter.as_ref())?;
            Ok(Prediction {
                logits: out.logits,
                routed_to: Some(vec!["base".into(); batch.cases.len()]),
                novelty: None,
            })
        }
        fn save_state(&self, _dir: &Path) -> Result<()> {
            Ok(())
        }
        fn load_state(&mut self, _ctx: &StrategyCtx, _dir: &Path) -> Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_strategy_can_train_on_all_seen_tasks_with_an_extra_loss() {
        let kit = super::kinds_tests::Kit::new(3, 2);
        let steps = std::sync::atomic::AtomicUsize::new(0);
        let progress = |_p: Progress| {
            steps.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        };
        let mut ctx = kit.ctx("finetune", 2, &progress);
        assert_eq!(ctx.seen().len(), 2);
        assert_eq!(ctx.task_name(1), "site1");
        let mut toy = Toy {
            adapter: None,
            extra_calls: std::cell::Cell::new(0),
        };
        toy.train_task(&mut ctx, 1, &kit.tasks[1]).unwrap();
        // 6 cases, batch 2 -> 3 steps per epoch, 2 epochs
        assert_eq!(steps.load(std::sync::atomic::Ordering::Relaxed), 6);
        assert_eq!(toy.extra_calls.get(), 6);
        let batch = kit.test_batch(0);
        let p = toy.predict(&ctx, 0, &batch).unwrap();
        assert_eq!(p.logits.dim(0).unwrap(), 2);
        let d = crate::runner::case_dice(&p.logits.get(0).unwrap(), batch.cases[0], false).unwrap();
        assert!((0.0..=1.0).contains(&d));
    }

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
