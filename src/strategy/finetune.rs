//! Sequential fine-tuning: one LoRA adapter trained on each task in turn (no protection against forgetting).

use super::single::{SingleAdapter, SingleKind};
use super::StrategyCtx;
use crate::data::{Case, TaskData};
use crate::Result;
use serde::Deserialize;

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
    pub params: Params,
}

impl SingleKind for FineTune {
    fn train(
        &mut self,
        core: &mut SingleAdapter,
        ctx: &mut StrategyCtx,
        _task_index: usize,
        task: &TaskData,
    ) -> Result<()> {
        let cases: Vec<&Case> = task.train.iter().collect();
        let reset = self.params.reset_optimizer;
        core.fit(ctx, &task.name, &cases, None, &[], 0, reset)?;
        Ok(())
    }
}
