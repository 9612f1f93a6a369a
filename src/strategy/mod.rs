//! Continual-learning strategies: the [`Strategy`] trait, the context the runner hands them, and the
//! [`Registry`] that builds one from a resolved [`StrategySpec`].
//!
//! Adding a kind: write `strategy/<kind>.rs` with a `Params` struct (`#[serde(deny_unknown_fields)]`, parsed from
//! the preset table minus `kind`/`label`/`train`/`lora`, implementing [`StrategyParams`]) and a type implementing
//! [`Strategy`], then add one [`StrategyKind`] (name, params type, builder, presets) to `Registry::default()` in
//! `registry.rs`. A kind defined in another crate is registered on the registry it passes to `runner::run`.

pub mod evosam;
pub mod ewc;
pub mod finetune;
pub mod joint;
pub mod lwf;
pub mod matcher;
pub mod novelty;
mod registry;
pub mod replay;
pub mod reservoir;
pub mod single;
pub mod zeroshot;

pub use crate::data::embeddings::{embed_with, EmbeddingStore};
use crate::data::{Case, TaskData};
use crate::model::{Adapter, DecoderOutput, LiteMedSam, Prompts};
use crate::spec::StrategySpec;
pub use crate::train::r#loop::Progress;
use crate::train::r#loop::{FitCtx, FitEnv};
use crate::Result;
use candle_core::{Device, Tensor};
use rand_chacha::ChaCha8Rng;
pub use registry::{BuildEnv, Registry, StrategyKind, StrategyParams};
use std::collections::BTreeMap;
use std::path::Path;

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

/// Everything a strategy may use while training or predicting. Built by the runner for each stage;
/// `#[non_exhaustive]` so that new fields can come in a minor release.
#[non_exhaustive]
pub struct StrategyCtx<'a> {
    /// The frozen base model.
    pub model: &'a LiteMedSam,
    /// Frozen-encoder embeddings of every case of the run.
    pub embeddings: &'a EmbeddingStore,
    /// sha256 of the base weights (adapters record it).
    pub base_sha256: &'a str,
    /// This strategy's resolved spec entry (label, kind, train, lora, params).
    pub spec: &'a StrategySpec,
    /// Experiment seed of this cell.
    pub seed: u64,
    /// Label of this cell's order ("given", "reverse", ...).
    pub order_label: &'a str,
    /// All tasks of the stream, in the spec's order.
    pub tasks: &'a [TaskData],
    /// This cell's order: `order[k]` indexes `tasks` for the (k+1)-th task trained.
    pub order: &'a [usize],
    /// Stage being trained (1-based; 0 while evaluating zero-shot).
    pub stage: usize,
    /// Seeded RNG for this stage, derived from (seed, label, order, stage): a resumed run gets the same stream.
    pub rng: ChaCha8Rng,
    /// Progress callback (one call per optimiser step; [`crate::train::fit`] calls it).
    pub progress: &'a (dyn Fn(Progress) + Send + Sync),
    /// Device of the model.
    pub device: &'a Device,
}

impl FitCtx for StrategyCtx<'_> {
    fn fit_env(&mut self) -> FitEnv<'_> {
        FitEnv {
            model: self.model,
            embeddings: self.embeddings,
            train: &self.spec.train,
            label: &self.spec.label,
            rng: &mut self.rng,
            progress: self.progress,
            device: self.device,
        }
    }
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
    /// The cases, in order.
    pub cases: Vec<&'a Case>,
    /// (B,C,h,w) frozen-encoder embeddings.
    pub embeddings: Tensor,
    /// Exact ground-truth boxes (B,4) in the model frame.
    pub prompts: Prompts,
}

/// Logits (B,1,S,S) and, for routing strategies, the chosen expert per image (task name or "base").
#[non_exhaustive]
pub struct Prediction {
    /// Low-resolution mask logits (B,1,S,S).
    pub logits: Tensor,
    /// Per image, the expert it was routed to (routing strategies only; recorded as `routed_to`).
    pub routed_to: Option<Vec<String>>,
    /// Per-image novelty score of a routing strategy's novelty detector (scores.csv `novelty`), else None.
    pub novelty: Option<Vec<f64>>,
}

impl Prediction {
    /// Logits of a strategy that does not route (no `routed_to`, no novelty score).
    ///
    /// ```
    /// use candle_core::{Device, Tensor};
    /// let logits = Tensor::zeros((2, 1, 4, 4), candle_core::DType::F32, &Device::Cpu).unwrap();
    /// let p = evosam::Prediction::new(logits);
    /// assert!(p.routed_to.is_none() && p.novelty.is_none());
    /// ```
    pub fn new(logits: Tensor) -> Self {
        Self {
            logits,
            routed_to: None,
            novelty: None,
        }
    }

    /// Logits of a routing strategy: the expert each image went to and, when it has one, its novelty score.
    pub fn routed(logits: Tensor, routed_to: Vec<String>, novelty: Option<Vec<f64>>) -> Self {
        Self {
            logits,
            routed_to: Some(routed_to),
            novelty,
        }
    }
}

/// A continual-learning strategy: trained task after task, evaluated after every stage, checkpointed so a
/// killed run resumes to identical results. Built by the [`Registry`] from a [`StrategySpec`].
pub trait Strategy: Send {
    /// The strategy's label (the `strategy` column).
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
    use crate::train::{fit, FitEnv, FitPlan, TrainBatch, TrainHooks};
    use std::cell::Cell;

    /// Counts what the loop calls; its extra loss calls the model (as LwF would) while `ctx` is lent to `fit`.
    #[derive(Default)]
    struct Counting {
        extra_calls: Cell<usize>,
        epochs: Vec<usize>,
        task_ends: usize,
        kept_cases: usize,
    }

    impl TrainHooks for Counting {
        fn extra_loss(&self, env: &FitEnv, b: &TrainBatch) -> Result<Option<Tensor>> {
            self.extra_calls.set(self.extra_calls.get() + 1);
            let base = env.model.decode(b.embeddings, b.prompts, None)?;
            Ok(Some(
                ((&b.output.logits - &base.logits)?.sqr()?.mean_all()? * 0.01)?,
            ))
        }
        fn after_epoch(&mut self, _: &mut FitEnv, _: &Adapter, epoch: usize) -> Result<()> {
            self.epochs.push(epoch);
            Ok(())
        }
        fn after_task(&mut self, _: &mut FitEnv, _: &Adapter, cases: &[&Case]) -> Result<()> {
            self.task_ends += 1;
            self.kept_cases = cases.len();
            Ok(())
        }
    }

    /// A toy joint-training strategy written against the public API: trains a fresh adapter on every seen task
    /// with hooks.
    struct Toy {
        adapter: Option<Adapter>,
        hooks: Counting,
    }

    impl Strategy for Toy {
        fn name(&self) -> &str {
            "toy"
        }
        fn train_task(&mut self, ctx: &mut StrategyCtx, _k: usize, _task: &TaskData) -> Result<()> {
            let adapter = Adapter::new(ctx.model, &ctx.spec.lora, 1)?;
            let cases: Vec<&Case> = ctx.seen().iter().flat_map(|t| t.train.iter()).collect();
            fit(
                ctx,
                FitPlan::new("all", &adapter, &cases).hooks(&mut self.hooks),
            )?;
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
    fn a_strategy_can_train_on_all_seen_tasks_with_hooks() {
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
            hooks: Counting::default(),
        };
        toy.train_task(&mut ctx, 1, &kit.tasks[1]).unwrap();
        // 6 cases, batch 2 -> 3 steps per epoch, 2 epochs
        assert_eq!(steps.load(std::sync::atomic::Ordering::Relaxed), 6);
        assert_eq!(toy.hooks.extra_calls.get(), 6);
        assert_eq!(toy.hooks.epochs, vec![1, 2]);
        assert_eq!((toy.hooks.task_ends, toy.hooks.kept_cases), (1, 6));
        let batch = kit.test_batch(0);
        let p = toy.predict(&ctx, 0, &batch).unwrap();
        assert_eq!(p.logits.dim(0).unwrap(), 2);
        let d =
            crate::metrics::case_dice(&p.logits.get(0).unwrap(), batch.cases[0], false).unwrap();
        assert!((0.0..=1.0).contains(&d));
    }

    /// The values of an adapter's variables.
    fn values(a: &Adapter) -> Vec<Vec<f32>> {
        a.vars()
            .iter()
            .map(|v| v.as_tensor().flatten_all().unwrap().to_vec1().unwrap())
            .collect()
    }

    #[test]
    fn a_seeded_plan_draws_its_own_stream_and_a_schedule_sets_the_budget() {
        let kit = super::kinds_tests::Kit::new(4, 3);
        let cases: Vec<&Case> = kit.tasks[0].train.iter().collect();
        let train = |seed: Option<u64>, ctx: &mut StrategyCtx| {
            let a = Adapter::new(&kit.model, &ctx.spec.lora, 3).unwrap();
            let plan = FitPlan::new("site0", &a, &cases);
            let plan = match seed {
                Some(s) => plan.seed(s),
                None => plan,
            };
            let r = fit(ctx, plan).unwrap();
            (values(&a), r)
        };
        // Two seeded fits from contexts in different states train the same weights and leave the context's
        // stream where it was; unseeded, the context's state shows.
        let mut c1 = kit.ctx("finetune", 1, &super::kinds_tests::noop);
        let mut c2 = kit.ctx("finetune", 2, &super::kinds_tests::noop);
        let before = c1.rng.clone();
        let (v1, r1) = train(Some(9), &mut c1);
        let (v2, _) = train(Some(9), &mut c2);
        assert_eq!(v1, v2);
        assert_eq!(c1.rng, before);
        assert_eq!((r1.steps, r1.epochs_run, r1.chosen_epoch), (6, 3, 3));
        let (u1, _) = train(None, &mut c1);
        let (u2, _) = train(None, &mut c2);
        assert_ne!(u1, u2);
        assert_ne!(c1.rng, before);
        // An explicit schedule: two passes of one step each.
        let a = Adapter::new(&kit.model, &c1.spec.lora, 3).unwrap();
        let sched = crate::train::budget::Schedule {
            steps_per_epoch: 1,
            epochs: vec![1, 1],
        };
        let r = fit(&mut c1, FitPlan::new("site0", &a, &cases).schedule(sched)).unwrap();
        assert_eq!((r.steps, r.epochs_run), (2, 2));
    }
}
