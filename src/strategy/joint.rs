//! Joint training: at every stage, one adapter trained on the union of all tasks seen so far (the usual upper
//! bound of continual learning; it needs every past task's data).

use super::single::{SingleAdapter, SingleKind};
use super::StrategyCtx;
use crate::data::{Case, TaskData};
use crate::Result;
use serde::Deserialize;

/// The kind-specific keys of a `joint` preset.
#[derive(Clone, Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Params {
    /// Start every stage from a fresh adapter (true) or continue from the previous stage's.
    #[serde(default = "super::finetune::yes")]
    pub from_scratch: bool,
}

/// The `joint` strategy kind: at each stage the adapter is trained on the training cases of every task seen so far.
pub struct Joint {
    /// The preset's settings.
    pub params: Params,
}

impl SingleKind for Joint {
    fn train(
        &mut self,
        core: &mut SingleAdapter,
        ctx: &mut StrategyCtx,
        _task_index: usize,
        task: &TaskData,
    ) -> Result<()> {
        if self.params.from_scratch {
            core.reinit(ctx.spec, ctx.model)?;
        }
        core.reset_optimizer();
        let seen = ctx.seen();
        let cases: Vec<&Case> = seen.iter().flat_map(|t| t.train.iter()).collect();
        let name = format!("{} (joint, {} tasks)", task.name, seen.len());
        core.fit(ctx, &name, &cases, &mut ())?;
        Ok(())
    }
}
