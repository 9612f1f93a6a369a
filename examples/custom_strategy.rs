//! A strategy defined outside the crate, registered next to the built-ins and run end to end.
//!
//! `fresh-lora` trains a new LoRA adapter (the same initialisation each time) on every task and forgets the
//! previous one (a deliberately naive baseline). Its one parameter, `shrink`, adds `shrink * sum(theta^2)` over
//! the adapter's variables to the training loss through a [`TrainHooks`] hook: a pull towards the base model.
//! The library's `SingleModel` does the rest: prediction, saving and restoring the adapter and its optimiser
//! (so a killed run resumes), and the extras. The experiment uses the tiny random model and a synthetic stream,
//! so it needs no weights or data and runs in seconds on a CPU:
//!
//! ```text
//! cargo run --release --locked --example custom_strategy
//! ```
//!
//! `cargo test` builds this file, so it keeps compiling against the public API.

use std::path::Path;

use candle_core::Tensor;
use evosam::{
    BuildEnv, Case, Diag, FitEnv, Registry, RunOptions, SingleAdapter, SingleKind, SingleModel,
    Spec, Strategy, StrategyCtx, StrategyKind, StrategyParams, StrategySpec, TaskData, TrainBatch,
    TrainHooks,
};
use serde::Deserialize;

/// The kind-specific keys of a `fresh-lora` preset (everything but kind/label/train/lora).
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
struct Params {
    /// Weight of the pull towards the base model (0 = none).
    #[serde(default)]
    shrink: f64,
}

impl StrategyParams for Params {
    fn check(self) -> Result<Self, Diag> {
        if !(self.shrink.is_finite() && self.shrink >= 0.0) {
            return Err(Diag::at(
                "shrink",
                format!("`shrink` = {} must be >= 0", self.shrink),
            ));
        }
        Ok(self)
    }
}

/// The training rule of `fresh-lora` (and its hook).
struct FreshLora {
    shrink: f64,
}

impl SingleKind for FreshLora {
    fn train(
        &mut self,
        core: &mut SingleAdapter,
        ctx: &mut StrategyCtx,
        _task_index: usize,
        task: &TaskData,
    ) -> evosam::Result<()> {
        core.reinit(ctx.spec, ctx.model)?;
        let cases: Vec<&Case> = task.train.iter().collect();
        core.fit(ctx, &task.name, &cases, self)?;
        Ok(())
    }
}

impl TrainHooks for FreshLora {
    fn extra_loss(&self, _env: &FitEnv, batch: &TrainBatch) -> evosam::Result<Option<Tensor>> {
        if self.shrink == 0.0 {
            return Ok(None);
        }
        let squares = batch
            .adapter
            .vars()
            .iter()
            .map(|v| v.as_tensor().sqr()?.sum_all())
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(Some(
            (Tensor::stack(&squares, 0)?.sum_all()? * self.shrink)?,
        ))
    }
}

fn build(spec: &StrategySpec, p: Params, env: &BuildEnv) -> evosam::Result<Box<dyn Strategy>> {
    let kind = FreshLora { shrink: p.shrink };
    let model = SingleModel::new(spec, env.model, env.base_sha256, env.init_seed, kind)?;
    Ok(Box::new(model))
}

const SPEC: &str = r#"
[experiment]
name = "custom-strategy"

[stream]
orders = ["given"]

[[stream.task]]
name = "vessels"
source = "synthetic"
family = "vessels"
site = 0
train = 4
test = 2
size = 64

[[stream.task]]
name = "organs"
source = "synthetic"
family = "organs"
site = 1
train = 4
test = 2
size = 64

[model]
weights = "random-tiny"

[train]
epochs = 3
batch_size = 2
lr = 0.02

[[strategy]]
preset = "zeroshot"

[[strategy]]
preset = "fresh-lora"
shrink = 1e-3
"#;

fn main() -> evosam::Result<()> {
    let mut registry = Registry::default();
    registry.register(StrategyKind::new::<Params>("fresh-lora", build).preset(
        "fresh-lora",
        "kind = \"fresh-lora\"\nlabel = \"fresh-lora\"\n",
    ))?;

    let out = tempfile::tempdir().map_err(|e| evosam::Error::io(std::env::temp_dir(), e))?;
    let spec = Spec::parse(SPEC, Path::new("custom.toml"), out.path(), &registry)?;
    let mut opts = RunOptions::default();
    opts.out = Some(out.path().to_path_buf());
    opts.quiet = true;
    opts.report = false;
    let summary = evosam::run(spec, &registry, &opts)?;

    let results = evosam::load_results(std::slice::from_ref(&summary.dir))?;
    println!(
        "{} cells, {} scored test cases in {}",
        summary.cells,
        results.scores.len(),
        summary.dir.display()
    );
    print!(
        "{}",
        std::fs::read_to_string(summary.dir.join("metrics.csv"))
            .map_err(|e| evosam::Error::io(summary.dir.join("metrics.csv"), e))?
    );
    Ok(())
}
