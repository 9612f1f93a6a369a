//! The interactive study of one stage (when the spec has `[eval.interactive]`): every task of the order through
//! [`crate::interactive::study::StudyRun`], with the cell's strategy as it is after the stage.

use super::plan::Cell;
use super::shared::Shared;
use crate::interactive::rows::{ClickRow, RunStage};
use crate::interactive::study::StudyRun;
use crate::spec::StudyStages;
use crate::strategy::{Strategy, StrategyCtx};
use crate::Result;

/// Checkpoint file of a stage's interactive-study rows (next to scores.json).
pub(super) const CLICKS_FILE: &str = "clicks.json";

/// The study's rows at stage `k`; None when the spec has no study or does not study this stage.
pub(super) fn study_stage(
    sh: &Shared,
    strat: &dyn Strategy,
    ctx: &StrategyCtx,
    cell: &Cell,
    k: usize,
) -> Result<Option<Vec<ClickRow>>> {
    let Some(spec) = &sh.spec.interactive else {
        return Ok(None);
    };
    let order = &sh.spec.orders[cell.order];
    let n = order.tasks.len();
    if spec.stages == StudyStages::Final && k != n {
        return Ok(None);
    }
    sh.reporter.stage(&cell.id, k, n, "interactive study");
    let at = RunStage {
        strategy: sh.spec.strategies[cell.strategy].label.clone(),
        seed: cell.seed as i64,
        order: order.label.clone(),
        stage: k as i64,
    };
    let run = StudyRun {
        strategy: strat,
        ctx,
        store: &sh.store,
        spec,
        at: &at,
        device: &sh.device,
    };
    let mut rows = Vec::new();
    for (j, &ti) in order.tasks.iter().enumerate() {
        rows.extend(run.task(j, &sh.tasks[ti])?);
    }
    Ok(Some(rows))
}
