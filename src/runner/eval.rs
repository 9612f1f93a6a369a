//! Evaluation of one stage: every test case of every task of the order, scored by Dice at original resolution.

use super::plan::Cell;
use super::shared::Shared;
use crate::data::Case;
pub use crate::metrics::case_dice;
use crate::results::ScoreRow;
use crate::strategy::{Batch, Strategy, StrategyCtx};
use crate::Result;

/// Test cases per prediction batch.
pub const EVAL_BATCH: usize = 8;

/// Score every test case of every task of the order at stage `k`.
pub(super) fn evaluate(
    sh: &Shared,
    strat: &dyn Strategy,
    ctx: &StrategyCtx,
    cell: &Cell,
    k: usize,
    trained: &str,
) -> Result<Vec<ScoreRow>> {
    let order = &sh.spec.orders[cell.order];
    let label = &sh.spec.strategies[cell.strategy].label;
    let mut rows = Vec::new();
    for (j, &ti) in order.tasks.iter().enumerate() {
        let task = &sh.tasks[ti];
        for chunk in task.test.chunks(EVAL_BATCH) {
            let cases: Vec<&Case> = chunk.iter().collect();
            let batch = Batch {
                embeddings: sh.store.batch(&cases)?,
                prompts: crate::train::r#loop::eval_prompts(&cases, &sh.device)?,
                cases,
            };
            let pred = strat.predict(ctx, j, &batch)?;
            for (i, c) in batch.cases.iter().enumerate() {
                let d = case_dice(&pred.logits.get(i)?, c, task.fov_eval)?;
                rows.push(ScoreRow {
                    strategy: label.clone(),
                    seed: cell.seed as i64,
                    order: order.label.clone(),
                    stage: k as i64,
                    trained_task: trained.to_string(),
                    eval_task: task.name.clone(),
                    eval_index: (j + 1) as i64,
                    case: c.id.clone(),
                    dice: d,
                    routed_to: pred.routed_to.as_ref().and_then(|r| r.get(i).cloned()),
                });
            }
        }
    }
    Ok(rows)
}
