//! Sequential fine-tuning: one LoRA adapter trained on each task in turn (no protection against forgetting).

use super::single::{SingleAdapter, SingleKind};
use super::StrategyCtx;
use crate::data::{Case, TaskData};
use crate::Result;
use serde::Deserialize;

/// The kind-specific keys of a `finetune` preset.
#[derive(Clone, Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Params {
    /// Fresh AdamW moments at each task (default) or carried over.
    #[serde(default = "yes")]
    pub reset_optimizer: bool,
}

pub(crate) fn yes() -> bool {
    true
}

/// The `finetune` strategy kind: the single adapter trained on each new task's cases only.
pub struct FineTune {
    /// The preset's settings.
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
        if self.params.reset_optimizer {
            core.reset_optimizer();
        }
        let cases: Vec<&Case> = task.train.iter().collect();
        core.fit(ctx, &task.name, &cases, &mut ())?;
        Ok(())
    }
}
