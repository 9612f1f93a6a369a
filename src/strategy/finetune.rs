//! Sequential fine-tuning: one LoRA adapter trained on each task in turn (no protection against forgetting).

use super::single::SingleAdapter;
use super::{Batch, Prediction, Strategy, StrategyCtx};
use crate::data::{Case, TaskData};
use crate::model::LiteMedSam;
use crate::spec::StrategySpec;
use crate::Result;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::Path;

pub use super::single::adamw_params;

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Params {
    /// Fresh AdamW moments at each task (default) or carried over.
    #[serde(default = "yes")]
    pub reset_optimizer: bool,
}

pub(crate) fn yes() -> bool {
    true
}

pub struct FineTune {
    label: String,
    params: Params,
    core: SingleAdapter,
    base_sha256: String,
}

impl FineTune {
    pub fn new(
        spec: &StrategySpec,
        params: Params,
        model: &LiteMedSam,
        base_sha256: &str,
        init_seed: u64,
    ) -> Result<Self> {
        Ok(Self {
            label: spec.label.clone(),
            params,
            core: SingleAdapter::new(spec, model, init_seed)?,
            base_sha256: base_sha256.to_string(),
        })
    }
}

impl Strategy for FineTune {
    fn name(&self) -> &str {
        &self.label
    }

    fn train_task(
        &mut self,
        ctx: &mut StrategyCtx,
        _task_index: usize,
        task: &TaskData,
    ) -> Result<()> {
        let cases: Vec<&Case> = task.train.iter().collect();
        let reset = self.params.reset_optimizer;
        self.core
            .fit(ctx, &task.name, &cases, None, &[], 0, reset)?;
        Ok(())
    }

    fn predict(&self, ctx: &StrategyCtx, _task_index: usize, batch: &Batch) -> Result<Prediction> {
        self.core.predict(ctx, batch)
    }

    fn save_state(&self, dir: &Path) -> Result<()> {
        self.core.save(dir, &self.base_sha256)
    }

    fn load_state(&mut self, ctx: &StrategyCtx, dir: &Path) -> Result<()> {
        self.core.load(ctx, dir)
    }

    fn extra_metrics(&self) -> BTreeMap<String, f64> {
        self.core.extras()
    }
}
