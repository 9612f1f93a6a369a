//! Evaluation of one stage: every test case of every task of the order, scored by Dice at original resolution.
//! A tiled task's tiles are predicted, stitched back to their image ([`stitch_image`]) and scored per image.

use super::plan::Cell;
use super::shared::Shared;
use crate::data::tiling::Stitcher;
use crate::data::{Case, TaskData, TiledImage};
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
        let row =
            |case: String, dice: f64, routed_to: Option<String>, novelty: Option<f64>| ScoreRow {
                strategy: label.clone(),
                seed: cell.seed as i64,
                order: order.label.clone(),
                stage: k as i64,
                trained_task: trained.to_string(),
                eval_task: task.name.clone(),
                eval_index: (j + 1) as i64,
                case,
                dice,
                routed_to,
                novelty,
            };
        if !task.test_images.is_empty() {
            for img in &task.test_images {
                let (d, routed, novelty) = stitch_image(sh, strat, ctx, j, task, img)?;
                rows.push(row(img.id.clone(), d, routed, novelty));
            }
            continue;
        }
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
                rows.push(row(
                    c.id.clone(),
                    d,
                    pred.routed_to.as_ref().and_then(|r| r.get(i).cloned()),
                    pred.novelty.as_ref().and_then(|r| r.get(i).copied()),
                ));
            }
        }
    }
    Ok(rows)
}

/// Predict every tile of one test image, stitch the logits (resized to each tile's original extent) with the
/// blending weights of [`crate::data::tiling`], and score Dice on the whole image's ground truth (inside the FOV
/// when the task says so). The image's `routed_to` is the expert most of its tiles went to (ties: the first
/// name); its novelty the mean over its tiles.
fn stitch_image(
    sh: &Shared,
    strat: &dyn Strategy,
    ctx: &StrategyCtx,
    j: usize,
    task: &TaskData,
    img: &TiledImage,
) -> Result<(f64, Option<String>, Option<f64>)> {
    let mut st = Stitcher::new(img.gt.h, img.gt.w, img.overlap);
    let (mut routes, mut novelty) = (Vec::new(), Vec::new());
    for chunk in img.tiles.chunks(EVAL_BATCH) {
        let cases: Vec<&Case> = chunk.iter().map(|&i| &task.test[i]).collect();
        let batch = Batch {
            embeddings: sh.store.batch(&cases)?,
            prompts: crate::train::r#loop::eval_prompts(&cases, &sh.device)?,
            cases,
        };
        let pred = strat.predict(ctx, j, &batch)?;
        for (i, c) in batch.cases.iter().enumerate() {
            let rect = c.tile.as_ref().map(|t| t.rect).ok_or_else(|| {
                crate::Error::internal(format!("test case {} of a tiled task is no tile", c.id))
            })?;
            let full = crate::preprocess::postprocess_logits(&pred.logits.get(i)?, &c.meta)?;
            st.add(&rect, &full.flatten_all()?.to_vec1::<f32>()?)?;
        }
        routes.extend(pred.routed_to.unwrap_or_default());
        novelty.extend(pred.novelty.unwrap_or_default());
    }
    let logits = st.finish()?;
    let pred: Vec<bool> = logits.iter().map(|&x| x > 0.0).collect();
    let fov = if task.fov_eval {
        img.fov.as_ref()
    } else {
        None
    };
    let d = crate::data::dice(&pred, &img.gt, fov);
    let routed = majority(&routes);
    let nov = (!novelty.is_empty()).then(|| novelty.iter().sum::<f64>() / novelty.len() as f64);
    Ok((d, routed, nov))
}

/// The most frequent name (ties: the one seen first); None for none.
fn majority(names: &[String]) -> Option<String> {
    let mut best: Option<(&String, usize)> = None;
    for n in names {
        let c = names.iter().filter(|m| *m == n).count();
        if best.is_none_or(|(_, b)| c > b) {
            best = Some((n, c));
        }
    }
    best.map(|(n, _)| n.clone())
}

#[cfg(test)]
mod tests {
    #[test]
    fn majority_route() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert_eq!(
            super::majority(&s(&["b", "a", "a", "b", "a"])),
            Some("a".into())
        );
        assert_eq!(super::majority(&s(&["b", "a"])), Some("b".into()));
        assert_eq!(super::majority(&[]), None);
    }
}
