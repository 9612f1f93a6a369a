//! Simulated clicks while training (`[train.prompt] clicks`, `click_prob`).
//!
//! LiteMedSAM was distilled with box prompts only: adding points to a box makes the frozen model worse (on Kvasir
//! polyps, mean Dice falls from 0.92 with the box to 0.69 after five corrective clicks, in PyTorch as in candle).
//! An adapter trained with boxes alone inherits that, so the prompt-efficiency study (the interactive
//! `[eval.interactive]` table) could only ever show clicks hurting. Training batches with clicks teach the adapter
//! what a click means: with probability `click_prob` a batch gets `n ~ U{1..=clicks}` clicks per image, each a
//! positive click on a foreground pixel or a negative click on a background pixel inside the image's box (equal
//! odds; the other kind when one has no pixel), all in the model frame, after the box and any `points`.
//! Every image of a batch gets the same number of clicks, so no padding token appears that evaluation never
//! shows (an image with neither kind of pixel gets SAM's "not a point" label -1).

use candle_core::{Device, Tensor};
use rand::Rng;
use rand_chacha::ChaCha8Rng;

use super::r#loop::sample_points;
use crate::data::Case;
use crate::model::{Adapter, LiteMedSam, Prompts};
use crate::spec::{ClickSource, PromptSpec};
use crate::Result;

/// A point prompt in the model frame (x, y) and its SAM label: 1 foreground, 0 background, -1 not a point.
pub type LabeledPoint = ([f32; 2], f32);

/// `n` clicks on `case` inside `bx` (model frame), as described in the module docs; `n = 0` draws nothing.
/// With `pred` (the adapter's own box-only prediction, thresholded, row-major in the model frame) the clicks
/// correct it, as the simulated user of the interactive study does: a positive click on a missed foreground
/// pixel or a negative click on a wrongly included background pixel of the resized image, the kind chosen in
/// proportion to the two error areas; a perfect prediction falls back to the mask's pixels.
pub fn sample_clicks(
    case: &Case,
    bx: [f32; 4],
    n: usize,
    pred: Option<&[bool]>,
    rng: &mut ChaCha8Rng,
) -> Result<Vec<LabeledPoint>> {
    if n == 0 {
        return Ok(Vec::new());
    }
    let m: Vec<f32> = case.mask.flatten_all()?.to_vec1()?;
    let s = case.mask.dim(2)?;
    if let Some(pred) = pred {
        if let Some(c) = corrective(&m, pred, s, (case.meta.new_w, case.meta.new_h), n, rng)? {
            return Ok(c);
        }
    }
    let lim = |v: f32| (v.max(0.0) as usize).min(s.saturating_sub(1));
    let (x0, y0, x1, y1) = (lim(bx[0]), lim(bx[1]), lim(bx[2]), lim(bx[3]));
    let mut fg = Vec::new();
    let mut bg = Vec::new();
    for (i, &v) in m.iter().enumerate() {
        let (x, y) = (i % s, i / s);
        if v > 0.5 {
            fg.push(i);
        } else if (x0..=x1).contains(&x) && (y0..=y1).contains(&y) {
            bg.push(i);
        }
    }
    let at = |i: usize, label: f32| ([(i % s) as f32 + 0.5, (i / s) as f32 + 0.5], label);
    Ok((0..n)
        .map(|_| {
            let positive = match (fg.is_empty(), bg.is_empty()) {
                (false, false) => rng.random_bool(0.5),
                (false, true) => true,
                (true, false) => false,
                (true, true) => return ([0.0, 0.0], -1.0),
            };
            let pool = if positive { &fg } else { &bg };
            at(
                pool[rng.random_range(0..pool.len())],
                f32::from(u8::from(positive)),
            )
        })
        .collect())
}

/// Clicks on the errors of `pred` against `mask` (both row-major, side `s`) within the resized extent `(w, h)`;
/// None when there is no error.
fn corrective(
    mask: &[f32],
    pred: &[bool],
    s: usize,
    (w, h): (usize, usize),
    n: usize,
    rng: &mut ChaCha8Rng,
) -> Result<Option<Vec<LabeledPoint>>> {
    if pred.len() != mask.len() {
        return Err(crate::Error::internal(format!(
            "training clicks: prediction has {} pixels, mask {}",
            pred.len(),
            mask.len()
        )));
    }
    let mut fneg = Vec::new();
    let mut fpos = Vec::new();
    for (i, (&t, &p)) in mask.iter().zip(pred).enumerate() {
        if i % s >= w || i / s >= h {
            continue;
        }
        match (t > 0.5, p) {
            (true, false) => fneg.push(i),
            (false, true) => fpos.push(i),
            _ => {}
        }
    }
    let total = fneg.len() + fpos.len();
    if total == 0 {
        return Ok(None);
    }
    Ok(Some(
        (0..n)
            .map(|_| {
                let k = rng.random_range(0..total);
                let (i, label) = if k < fneg.len() {
                    (fneg[k], 1.0)
                } else {
                    (fpos[k - fneg.len()], 0.0)
                };
                ([(i % s) as f32 + 0.5, (i / s) as f32 + 0.5], label)
            })
            .collect(),
    ))
}

/// The point prompts of one training batch: `points` positive points per image, then (with probability
/// `click_prob`) the same number of simulated clicks for every image. `predict` gives the adapter's box-only
/// prediction of the batch (thresholded, one row-major model-frame mask per image); it is called only for a batch
/// that gets clicks, and only when `click_source = "errors"`. None when the batch has no point.
pub fn batch_points(
    batch: &[&Case],
    boxes: &[[f32; 4]],
    prompt: &PromptSpec,
    rng: &mut ChaCha8Rng,
    predict: &mut dyn FnMut() -> Result<Vec<Vec<bool>>>,
) -> Result<Option<Vec<Vec<LabeledPoint>>>> {
    let mut pts: Vec<Vec<LabeledPoint>> = vec![Vec::new(); batch.len()];
    if prompt.points > 0 {
        for (p, c) in pts.iter_mut().zip(batch) {
            p.extend(
                sample_points(c, prompt.points, rng)?
                    .into_iter()
                    .map(|xy| (xy, 1.0)),
            );
        }
    }
    if prompt.clicks > 0 && rng.random_bool(prompt.click_prob.clamp(0.0, 1.0)) {
        let n = rng.random_range(1..=prompt.clicks);
        let preds = match prompt.click_source {
            ClickSource::Errors => Some(predict()?),
            ClickSource::Mask => None,
        };
        for (i, ((p, c), b)) in pts.iter_mut().zip(batch).zip(boxes).enumerate() {
            let pred = preds.as_ref().map(|v| v[i].as_slice());
            p.extend(sample_clicks(c, *b, n, pred, rng)?);
        }
    }
    Ok(if pts.iter().all(|p| p.is_empty()) {
        None
    } else {
        Some(pts)
    })
}

/// The adapter's prediction for `boxes` alone (no gradient), thresholded at logit 0: one row-major model-frame
/// mask per image, what [`batch_points`] places corrective clicks on.
pub fn box_only_masks(
    model: &LiteMedSam,
    emb: &Tensor,
    boxes: &[[f32; 4]],
    adapter: Option<&Adapter>,
    device: &Device,
) -> Result<Vec<Vec<bool>>> {
    let prompts = labeled_prompts(boxes, None, device)?;
    let out = model.decode(&emb.detach(), &prompts, adapter)?;
    let logits = out.logits.detach().to_dtype(candle_core::DType::F32)?;
    let b = logits.dim(0)?;
    (0..b)
        .map(|i| {
            let v: Vec<f32> = logits.get(i)?.flatten_all()?.to_vec1()?;
            Ok(v.into_iter().map(|x| x > 0.0).collect())
        })
        .collect()
}

/// Prompts for a batch: boxes (B, 4) and, when given, (B, N, 2) points with labels (B, N). Every image must have
/// the same number of points.
pub fn labeled_prompts(
    boxes: &[[f32; 4]],
    points: Option<&[Vec<LabeledPoint>]>,
    device: &Device,
) -> Result<Prompts> {
    let b = boxes.len();
    let flat: Vec<f32> = boxes.iter().flatten().copied().collect();
    let boxes = Tensor::from_vec(flat, (b, 4), device)?;
    let points = match points {
        Some(p) if !p.is_empty() && !p[0].is_empty() => {
            let n = p[0].len();
            if p.iter().any(|v| v.len() != n) {
                return Err(crate::Error::internal(
                    "training prompts: images of a batch with different numbers of points",
                ));
            }
            let coords: Vec<f32> = p
                .iter()
                .flat_map(|v| v.iter().flat_map(|(xy, _)| *xy))
                .collect();
            let labels: Vec<f32> = p.iter().flat_map(|v| v.iter().map(|(_, l)| *l)).collect();
            Some((
                Tensor::from_vec(coords, (b, n, 2), device)?,
                Tensor::from_vec(labels, (b, n), device)?,
            ))
        }
        _ => None,
    };
    Ok(Prompts {
        boxes: Some(boxes),
        points,
        masks: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::r#loop::tests::case;
    use rand::SeedableRng;

    fn no_pred() -> Result<Vec<Vec<bool>>> {
        panic!("no prediction is asked for")
    }

    fn mask_at(c: &Case, xy: [f32; 2]) -> f32 {
        let (x, y) = (xy[0] as usize, xy[1] as usize);
        let s = c.mask.dim(2).unwrap();
        c.mask.flatten_all().unwrap().to_vec1::<f32>().unwrap()[y * s + x]
    }

    #[test]
    fn clicks_land_on_the_right_side_of_the_mask_inside_the_box() {
        let c = case();
        // foreground (16, 8)-(30.4, 14.4) in the model frame; a box with a background margin around it
        let bx = [10.0, 4.0, 36.0, 20.0];
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let clicks = sample_clicks(&c, bx, 400, None, &mut rng).unwrap();
        assert_eq!(clicks.len(), 400);
        let pos = clicks.iter().filter(|(_, l)| *l == 1.0).count();
        assert!((150..250).contains(&pos), "{pos} positive of 400");
        for (xy, l) in &clicks {
            assert_eq!(mask_at(&c, *xy), *l, "click {xy:?} labelled {l}");
            assert!(
                xy[0] >= 10.0 && xy[0] < 37.0 && xy[1] >= 4.0 && xy[1] < 21.0,
                "{xy:?}"
            );
        }
        // a box that holds foreground only: every click is positive
        let tight = [17.0, 9.0, 29.0, 13.0];
        let only = sample_clicks(&c, tight, 50, None, &mut rng).unwrap();
        assert!(only
            .iter()
            .all(|(xy, l)| *l == 1.0 && mask_at(&c, *xy) == 1.0));
    }

    #[test]
    fn corrective_clicks_land_on_the_errors() {
        let c = case();
        let s = c.mask.dim(2).unwrap();
        let m: Vec<f32> = c.mask.flatten_all().unwrap().to_vec1().unwrap();
        // the prediction misses the foreground's first column and adds one background pixel
        let mut pred: Vec<bool> = m.iter().map(|v| *v > 0.5).collect();
        let first_col = (0..s * s)
            .filter(|i| m[*i] > 0.5)
            .map(|i| i % s)
            .min()
            .unwrap();
        let missed: Vec<usize> = (0..s * s)
            .filter(|i| m[*i] > 0.5 && i % s == first_col)
            .collect();
        for i in &missed {
            pred[*i] = false;
        }
        let extra = 2 * s + 2; // (2, 2): background, inside the resized extent (64 x 32)
        assert!(m[extra] < 0.5);
        pred[extra] = true;
        let mut rng = ChaCha8Rng::seed_from_u64(11);
        let clicks = sample_clicks(&c, c.gt_box(), 300, Some(&pred), &mut rng).unwrap();
        let (mut pos, mut neg) = (0, 0);
        for (xy, l) in &clicks {
            let i = xy[1] as usize * s + xy[0] as usize;
            if *l == 1.0 {
                assert!(
                    missed.contains(&i),
                    "positive click {xy:?} not on a missed pixel"
                );
                pos += 1;
            } else {
                assert_eq!(i, extra, "negative click {xy:?} not on the extra pixel");
                neg += 1;
            }
        }
        // kinds in proportion to the error areas
        let want = 300.0 / (missed.len() + 1) as f64;
        assert!(
            (neg as f64 - want).abs() < 4.0 * want.sqrt() + 2.0,
            "{neg} negatives, ~{want} expected"
        );
        assert_eq!(pos + neg, 300);
        // a perfect prediction falls back to the mask's pixels
        let perfect: Vec<bool> = m.iter().map(|v| *v > 0.5).collect();
        let fb = sample_clicks(&c, c.gt_box(), 20, Some(&perfect), &mut rng).unwrap();
        assert!(fb.iter().all(|(xy, l)| mask_at(&c, *xy) == *l));
    }

    #[test]
    fn no_clicks_draw_nothing_and_points_stay_as_before() {
        let c = case();
        let spec = PromptSpec {
            points: 2,
            ..PromptSpec::default()
        };
        let b = c.gt_box();
        let mut r1 = ChaCha8Rng::seed_from_u64(5);
        let mut r2 = ChaCha8Rng::seed_from_u64(5);
        let got = batch_points(&[&c, &c], &[b, b], &spec, &mut r1, &mut no_pred)
            .unwrap()
            .unwrap();
        let want: Vec<Vec<[f32; 2]>> = (0..2)
            .map(|_| sample_points(&c, 2, &mut r2).unwrap())
            .collect();
        for (g, w) in got.iter().zip(&want) {
            assert_eq!(g.iter().map(|(xy, _)| *xy).collect::<Vec<_>>(), *w);
            assert!(g.iter().all(|(_, l)| *l == 1.0));
        }
        // the generators are in the same state: training without clicks replays exactly as before
        assert_eq!(r1.random::<u64>(), r2.random::<u64>());
        let none = PromptSpec::default();
        assert!(batch_points(&[&c], &[b], &none, &mut r1, &mut no_pred)
            .unwrap()
            .is_none());
        assert_eq!(r1.random::<u64>(), r2.random::<u64>());
    }

    #[test]
    fn clicked_batches_give_every_image_the_same_count() {
        let c = case();
        let spec = PromptSpec {
            clicks: 5,
            click_prob: 1.0,
            click_source: ClickSource::Mask,
            ..PromptSpec::default()
        };
        let b = c.gt_box();
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let mut counts = std::collections::BTreeSet::new();
        for _ in 0..50 {
            let p = batch_points(&[&c, &c, &c], &[b, b, b], &spec, &mut rng, &mut no_pred)
                .unwrap()
                .unwrap();
            assert!(p.iter().all(|v| v.len() == p[0].len()));
            counts.insert(p[0].len());
            let pr = labeled_prompts(&[b, b, b], Some(&p), &Device::Cpu).unwrap();
            let (coords, labels) = pr.points.unwrap();
            assert_eq!(coords.dims(), &[3, p[0].len(), 2]);
            assert_eq!(labels.dims(), &[3, p[0].len()]);
        }
        assert_eq!(counts, (1..=5).collect());
        let off = PromptSpec {
            clicks: 5,
            click_prob: 0.0,
            ..PromptSpec::default()
        };
        assert!(batch_points(&[&c], &[b], &off, &mut rng, &mut no_pred)
            .unwrap()
            .is_none());
        let ragged = vec![vec![([1.0, 1.0], 1.0)], vec![]];
        assert!(labeled_prompts(&[b, b], Some(&ragged), &Device::Cpu).is_err());
    }
}
