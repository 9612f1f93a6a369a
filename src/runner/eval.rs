//! Evaluation of one stage: every test case of every task of the order, scored by Dice, NSD and HD95 at original
//! resolution. A tiled task's tiles are predicted, stitched back to their image ([`stitch_image`]) and scored per
//! image; a NIfTI task's slice predictions are stacked into their volume and scored in 3-D ([`volume_case`]).

use super::plan::Cell;
use super::shared::Shared;
use crate::data::tiling::Stitcher;
use crate::data::{Case, TaskData, TestVolume, TiledImage};
pub use crate::metrics::case_dice;
use crate::metrics::surface::{self, CaseScores};
use crate::results::ScoreRow;
use crate::strategy::{Batch, Strategy, StrategyCtx};
use crate::Result;

/// Test cases per prediction batch.
pub const EVAL_BATCH: usize = 8;

/// One 2-D test image's prediction at original resolution, and where it was routed.
struct ImagePred {
    mask: Vec<bool>,
    routed_to: Option<String>,
    novelty: Option<f64>,
}

/// One stage's scores: a row per test case (per volume for NIfTI tasks) and, for volume tasks, the secondary
/// per-slice rows (each prompted slice scored in 2-D with the in-plane spacing; case `<volume>/<slice>`).
pub(super) struct Evaluation {
    pub rows: Vec<ScoreRow>,
    pub slice_rows: Vec<ScoreRow>,
}

/// Score every test case of every task of the order at stage `k`; at the last stage, with `[eval]
/// save_predictions`, also write each test volume's prediction as NIfTI under `predictions/<cell>/<task>/`.
pub(super) fn evaluate(
    sh: &Shared,
    strat: &dyn Strategy,
    ctx: &StrategyCtx,
    cell: &Cell,
    k: usize,
    trained: &str,
) -> Result<Evaluation> {
    let order = &sh.spec.orders[cell.order];
    let label = &sh.spec.strategies[cell.strategy].label;
    let save = sh.spec.eval.save_predictions && k == order.tasks.len();
    let (mut rows, mut slice_rows) = (Vec::new(), Vec::new());
    for (j, &ti) in order.tasks.iter().enumerate() {
        let task = &sh.tasks[ti];
        let row = |case: String, s: CaseScores, routed_to: Option<String>, novelty: Option<f64>| {
            ScoreRow {
                strategy: label.clone(),
                seed: cell.seed as i64,
                order: order.label.clone(),
                stage: k as i64,
                trained_task: trained.to_string(),
                eval_task: task.name.clone(),
                eval_index: (j + 1) as i64,
                case,
                dice: s.dice,
                nsd: Some(s.nsd),
                hd95: Some(s.hd95),
                routed_to,
                novelty,
            }
        };
        let preds = predict_images(sh, strat, ctx, j, task)?;
        // each 2-D test image: its id, ground truth and field of view (tiled: whole images; else the cases); a
        // volume task's are its prompted slices
        let images: Vec<(&str, &crate::data::Mask2D, Option<&crate::data::Mask2D>)> =
            if task.test_images.is_empty() {
                task.test
                    .iter()
                    .map(|c| (c.id.as_str(), &c.gt, c.fov.as_ref()))
                    .collect()
            } else {
                let t = &task.test_images;
                t.iter()
                    .map(|i| (i.id.as_str(), &i.gt, i.fov.as_ref()))
                    .collect()
            };
        if task.test_volumes.is_empty() {
            for ((id, gt, fov), p) in images.into_iter().zip(preds) {
                let fov = fov.filter(|_| task.fov_eval);
                let s = crate::metrics::image_scores(&p.mask, gt, fov, &task.scoring);
                rows.push(row(id.to_string(), s, p.routed_to, p.novelty));
            }
            continue;
        }
        for v in &task.test_volumes {
            let (s, mask, routed, novelty) = volume_case(v, &preds, task.scoring.nsd_tolerance)?;
            if save {
                let path = sh
                    .dir
                    .join("predictions")
                    .join(&cell.id)
                    .join(&task.name)
                    .join(format!("{}.nii.gz", v.id));
                save_volume(&path, v, &mask)?;
            }
            rows.push(row(v.id.clone(), s, routed, novelty));
            // the secondary per-slice rows: each prompted slice (case `<volume>/<slice>`) in 2-D, in-plane spacing
            let in_plane = crate::data::Scoring {
                spacing: [v.spacing[1], v.spacing[2]],
                nsd_tolerance: task.scoring.nsd_tolerance,
            };
            for &(_, i) in &v.slices {
                let ((id, gt, _), p) = (images[i], &preds[i]);
                let s = crate::metrics::image_scores(&p.mask, gt, None, &in_plane);
                slice_rows.push(row(id.to_string(), s, p.routed_to.clone(), p.novelty));
            }
        }
    }
    Ok(Evaluation { rows, slice_rows })
}

/// Predictions of a task's test images at original resolution: one per entry of `test` (untiled) or of
/// `test_images` (tiled, stitched).
fn predict_images(
    sh: &Shared,
    strat: &dyn Strategy,
    ctx: &StrategyCtx,
    j: usize,
    task: &TaskData,
) -> Result<Vec<ImagePred>> {
    if !task.test_images.is_empty() {
        return task
            .test_images
            .iter()
            .map(|img| stitch_image(sh, strat, ctx, j, task, img))
            .collect();
    }
    let mut out = Vec::with_capacity(task.test.len());
    for chunk in task.test.chunks(EVAL_BATCH) {
        let (batch, pred) = predict_cases(sh, strat, ctx, j, chunk.iter().collect())?;
        for (i, c) in batch.cases.iter().enumerate() {
            out.push(ImagePred {
                mask: crate::metrics::case_mask(&pred.logits.get(i)?, c)?,
                routed_to: pred.routed_to.as_ref().and_then(|r| r.get(i).cloned()),
                novelty: pred.novelty.as_ref().and_then(|r| r.get(i).copied()),
            });
        }
    }
    Ok(out)
}

/// One batch of test cases with their cached embeddings and evaluation prompts, and the strategy's prediction.
fn predict_cases<'a>(
    sh: &Shared,
    strat: &dyn Strategy,
    ctx: &StrategyCtx,
    j: usize,
    cases: Vec<&'a Case>,
) -> Result<(Batch<'a>, crate::strategy::Prediction)> {
    let batch = Batch {
        embeddings: sh.store.batch(&cases)?,
        prompts: crate::train::r#loop::eval_prompts(&cases, &sh.device)?,
        cases,
    };
    let pred = strat.predict(ctx, j, &batch)?;
    Ok((batch, pred))
}

/// Predict every tile of one test image and stitch the logits (resized to each tile's original extent) with
/// the blending weights of [`crate::data::tiling`]. The image's `routed_to` is the expert most of its tiles went
/// to (ties: the first name); its novelty the mean over its tiles.
fn stitch_image(
    sh: &Shared,
    strat: &dyn Strategy,
    ctx: &StrategyCtx,
    j: usize,
    task: &TaskData,
    img: &TiledImage,
) -> Result<ImagePred> {
    let mut st = Stitcher::new(img.gt.h, img.gt.w, img.overlap);
    let (mut routes, mut novelty) = (Vec::new(), Vec::new());
    for chunk in img.tiles.chunks(EVAL_BATCH) {
        let cases: Vec<&Case> = chunk.iter().map(|&i| &task.test[i]).collect();
        let (batch, pred) = predict_cases(sh, strat, ctx, j, cases)?;
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
    Ok(ImagePred {
        mask: logits.iter().map(|&x| x > 0.0).collect(),
        routed_to: majority(&routes),
        novelty: mean(&novelty),
    })
}

fn mean(v: &[f64]) -> Option<f64> {
    (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
}

/// A volume's scores, its stacked prediction, its majority route and mean novelty.
type VolumeCase = (CaseScores, Vec<bool>, Option<String>, Option<f64>);

/// Stack a volume's slice predictions (background on slices not prompted) and score it in 3-D with its voxel
/// spacing. Returns the scores, the prediction (slice-major, slice frame), the majority route and the mean
/// novelty over its slices.
fn volume_case(v: &TestVolume, preds: &[ImagePred], tau: f64) -> Result<VolumeCase> {
    let [ns, rows, cols] = v.dims;
    let plane = rows * cols;
    let mut mask = vec![false; ns * plane];
    let (mut routes, mut novelty) = (Vec::new(), Vec::new());
    for &(z, i) in &v.slices {
        let p = preds
            .get(i)
            .filter(|p| p.mask.len() == plane && z < ns)
            .ok_or_else(|| {
                crate::Error::internal(format!(
                    "volume {}: slice {z} has no prediction of {rows}x{cols}",
                    v.id
                ))
            })?;
        mask[z * plane..(z + 1) * plane].copy_from_slice(&p.mask);
        routes.extend(p.routed_to.clone());
        novelty.extend(p.novelty);
    }
    let s = surface::case_scores(&mask, &v.gt, &v.dims, &v.spacing, tau);
    Ok((s, mask, majority(&routes), mean(&novelty)))
}

/// Write a volume's prediction (slice frame) back in NIfTI order with the image volume's header.
fn save_volume(path: &std::path::Path, v: &TestVolume, mask: &[bool]) -> Result<()> {
    let [_, ny, nz] = v.nifti_dims;
    let [ns, rows, cols] = v.dims;
    let mut out = vec![0u8; mask.len()];
    for s in 0..ns {
        for r in 0..rows {
            for c in 0..cols {
                let (x, y, z) = crate::data::nifti::to_xyz(v.axis, s, r, c);
                out[(x * ny + y) * nz + z] = mask[(s * rows + r) * cols + c] as u8;
            }
        }
    }
    crate::data::nifti::write_mask_volume(path, v.nifti_dims, &out, &v.image)
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
    use super::*;

    #[test]
    fn majority_route() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert_eq!(majority(&s(&["b", "a", "a", "b", "a"])), Some("a".into()));
        assert_eq!(majority(&s(&["b", "a"])), Some("b".into()));
        assert_eq!(majority(&[]), None);
    }

    /// Slice predictions listed out of order (as workers may finish them) are stacked at their own slice index;
    /// unprompted slices stay background.
    #[test]
    fn volume_stacks_slices_in_place() {
        let (ns, rows, cols) = (4usize, 3usize, 2usize);
        let plane = rows * cols;
        let mut gt = vec![false; ns * plane];
        for z in [1usize, 2] {
            gt[z * plane..(z + 1) * plane].fill(true);
        }
        let v = TestVolume {
            id: "v".into(),
            image: "x.nii".into(),
            axis: 2,
            nifti_dims: [cols, rows, ns],
            dims: [ns, rows, cols],
            spacing: [3.0, 0.5, 0.5],
            gt,
            // slice 2 is prediction 0, slice 1 prediction 1
            slices: vec![(2, 0), (1, 1)],
        };
        let p = |on: bool, to: &str| ImagePred {
            mask: vec![on; plane],
            routed_to: Some(to.into()),
            novelty: Some(if on { 1.0 } else { 3.0 }),
        };
        // slice 2 predicted fully, slice 1 empty: Dice 2*6/(6+12) = 2/3
        let (s, mask, routed, nov) = volume_case(&v, &[p(true, "a"), p(false, "b")], 2.0).unwrap();
        assert!((s.dice - 2.0 / 3.0).abs() < 1e-12);
        assert_eq!(mask.iter().filter(|&&m| m).count(), plane);
        assert!(mask[2 * plane..3 * plane].iter().all(|&m| m));
        assert_eq!(routed.as_deref(), Some("a"));
        assert_eq!(nov, Some(2.0));
        // the missing slice 1 is 3 mm from the predicted one: HD95 3 (every other border distance is 0)
        assert!((s.hd95 - 3.0).abs() < 1e-12, "{}", s.hd95);
        // a slice index pointing past the predictions is an internal error, not a panic
        let bad = TestVolume {
            slices: vec![(0, 5)],
            ..v
        };
        assert!(volume_case(&bad, &[], 2.0).is_err());
    }
}
