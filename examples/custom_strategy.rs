//! A strategy defined outside the crate, registered next to the built-ins and run end to end.
//!
//! `fresh-lora` trains a new LoRA adapter on every task and forgets the previous one (a deliberately naive
//! baseline); its one parameter, `scale`, multiplies the logits at prediction time. The experiment uses the
//! tiny random model and a synthetic stream, so it needs no weights or data and runs in seconds on a CPU:
//!
//! ```text
//! cargo run --release --locked --example custom_strategy
//! ```
//!
//! `cargo test` builds this file, so it keeps compiling against the public API.

use std::path::Path;

use evosam::model::Adapter;
use evosam::train::r#loop::fit;
use evosam::train::{AdamW, ParamsAdamW};
use evosam::{
    Batch, BuildEnv, Case, Diag, Prediction, Registry, RunOptions, Spec, Strategy, StrategyCtx,
    StrategyKind, StrategyParams, StrategySpec, TaskData,
};
use serde::Deserialize;

/// The kind-specific keys of a `fresh-lora` preset (everything but kind/label/train/lora).
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
struct Params {
    /// Logit scale at prediction time.
    #[serde(default = "one")]
    scale: f64,
}

fn one() -> f64 {
    1.0
}

impl StrategyParams for Params {
    fn check(self) -> Result<Self, Diag> {
        if !(self.scale.is_finite() && self.scale > 0.0) {
            return Err(Diag::at(
                "scale",
                format!("`scale` = {} must be > 0", self.scale),
            ));
        }
        Ok(self)
    }
}

struct FreshLora {
    label: String,
    params: Params,
    base_sha256: String,
    adapter: Option<Adapter>,
}

const ADAPTER_FILE: &str = "adapter.safetensors";

impl FreshLora {
    fn build(
        spec: &StrategySpec,
        params: Params,
        env: &BuildEnv,
    ) -> evosam::Result<Box<dyn Strategy>> {
        Ok(Box::new(FreshLora {
            label: spec.label.clone(),
            params,
            base_sha256: env.base_sha256.to_string(),
            adapter: None,
        }))
    }
}

impl Strategy for FreshLora {
    fn name(&self) -> &str {
        &self.label
    }

    fn train_task(
        &mut self,
        ctx: &mut StrategyCtx,
        _task_index: usize,
        task: &TaskData,
    ) -> evosam::Result<()> {
        // The stage RNG is seeded from (seed, label, order, stage): use it for the adapter's initialisation
        // too, so a resumed run trains exactly the same adapter.
        let seed = rand::Rng::random::<u64>(&mut ctx.rng);
        let adapter = Adapter::new(ctx.model, &ctx.spec.lora, seed)?;
        let mut opt = AdamW::new(
            adapter.vars(),
            ParamsAdamW {
                lr: ctx.spec.train.lr,
                weight_decay: ctx.spec.train.weight_decay,
                max_grad_norm: ctx.spec.train.max_grad_norm,
                ..Default::default()
            },
        )?;
        let cases: Vec<&Case> = task.train.iter().collect();
        fit(ctx, &task.name, &adapter, &mut opt, &cases, None)?;
        self.adapter = Some(adapter);
        Ok(())
    }

    fn predict(
        &self,
        ctx: &StrategyCtx,
        _task_index: usize,
        batch: &Batch,
    ) -> evosam::Result<Prediction> {
        let out = ctx
            .model
            .decode(&batch.embeddings, &batch.prompts, self.adapter.as_ref())?;
        Ok(Prediction {
            logits: (out.logits * self.params.scale)?,
            routed_to: None,
            novelty: None,
        })
    }

    fn save_state(&self, dir: &Path) -> evosam::Result<()> {
        match &self.adapter {
            Some(a) => a.save(&dir.join(ADAPTER_FILE), &self.base_sha256),
            None => Ok(()),
        }
    }

    fn load_state(&mut self, ctx: &StrategyCtx, dir: &Path) -> evosam::Result<()> {
        let p = dir.join(ADAPTER_FILE);
        self.adapter = if p.is_file() {
            Some(Adapter::load(&p, ctx.model, ctx.base_sha256)?)
        } else {
            None
        };
        Ok(())
    }
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
scale = 2.0
"#;

fn main() -> evosam::Result<()> {
    let mut registry = Registry::default();
    registry.register(
        StrategyKind::new::<Params>("fresh-lora", FreshLora::build).preset(
            "fresh-lora",
            "kind = \"fresh-lora\"\nlabel = \"fresh-lora\"\n",
        ),
    )?;

    let out = tempfile::tempdir().map_err(|e| evosam::Error::io(std::env::temp_dir(), e))?;
    let spec = Spec::parse(SPEC, Path::new("custom.toml"), out.path(), &registry)?;
    let opts = RunOptions {
        out: Some(out.path().to_path_buf()),
        quiet: true,
        report: false,
        ..RunOptions::default()
    };
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
