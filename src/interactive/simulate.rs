//! The click loop: box first, then up to `max_clicks` simulated clicks, each answered by one decoder pass on
//! the frozen embedding (the caller's predictor), with the box, every click so far and optionally the previous
//! low-resolution logits as the mask prompt.

use candle_core::{DType, Device, Tensor};

use super::clicks::{next_click, Click};
use crate::data::{dice, Mask2D};
use crate::model::Prompts;
use crate::preprocess::{postprocess_logits, PrepMeta};
use crate::{Error, Result};

/// One image of the study: what the simulated user sees (ground truth and scored region, original frame) and the
/// box prompt it starts from (model frame).
pub struct SimCase<'a> {
    /// Ground truth at original resolution: Dice and the next click are computed against it.
    pub gt: &'a Mask2D,
    /// The scored region (the task's field of view when Dice is scored inside it): clicks stay inside it.
    pub fov: Option<&'a Mask2D>,
    /// How the image was resized into the model frame (maps predictions back and clicks forward).
    pub meta: &'a PrepMeta,
    /// The box prompt (x0, y0, x1, y1) in the model frame, kept for every click.
    pub gt_box: [f32; 4],
}

/// How [`simulate`] runs: the two settings of [`crate::spec::InteractiveSpec`] the loop itself uses.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SimOptions {
    /// Clicks after the box; each trace has `max_clicks + 1` Dice values.
    pub max_clicks: usize,
    /// Feed each image's previous low-resolution logits back as the mask prompt.
    pub mask_prompt: bool,
}

/// One image's interaction: Dice after the box (index 0) and after each click, the click made at each step
/// (None at 0, and after the user stopped because the prediction was perfect; Dice is then carried forward),
/// and where a routing strategy sent the image.
#[derive(Clone, Debug, PartialEq)]
pub struct Trace {
    /// Dice after the box (index 0) and after each click, `max_clicks + 1` values.
    pub dice: Vec<f64>,
    /// The click made at each step, aligned with `dice` (None at 0 and after the user stopped).
    pub clicks: Vec<Option<Click>>,
    /// Expert chosen at step 0 by a routing strategy, else None.
    pub routed_to: Option<String>,
}

/// A prediction of the caller for the still-active images `idx` (indices into the cases) and their prompts:
/// low-resolution logits (B, 1, S, S) and, for routing strategies, the chosen expert per image.
pub type Answer = (Tensor, Option<Vec<String>>);

/// Thresholded prediction at original resolution and its Dice (inside `fov` when given).
fn score(logits: &Tensor, c: &SimCase) -> Result<(Vec<bool>, f64)> {
    let full = postprocess_logits(logits, c.meta)?;
    let v: Vec<f32> = full.flatten_all()?.to_dtype(DType::F32)?.to_vec1()?;
    if v.len() != c.gt.h * c.gt.w {
        return Err(Error::internal(format!(
            "postprocessed logits have {} values, ground truth {}x{}",
            v.len(),
            c.gt.w,
            c.gt.h
        )));
    }
    let pred: Vec<bool> = v.iter().map(|&x| x > 0.0).collect();
    let d = dice(&pred, c.gt, c.fov);
    Ok((pred, d))
}

/// Run the study on `cases`. Every step calls `predict` once for all images that still get a click, so they all
/// have the same number of clicks (no padding points). The routing of step 0 is the one recorded: strategies
/// route on the embedding, which the clicks do not change, so the expert stays the same for all clicks.
pub fn simulate<F>(
    cases: &[SimCase],
    opts: &SimOptions,
    device: &Device,
    mut predict: F,
) -> Result<Vec<Trace>>
where
    F: FnMut(&[usize], &Prompts) -> Result<Answer>,
{
    let n = cases.len();
    let k_max = opts.max_clicks;
    let mut traces: Vec<Trace> = (0..n)
        .map(|_| Trace {
            dice: Vec::with_capacity(k_max + 1),
            clicks: Vec::with_capacity(k_max + 1),
            routed_to: None,
        })
        .collect();
    if n == 0 {
        return Ok(traces);
    }
    let mut low: Vec<Option<Tensor>> = vec![None; n];
    let mut pending: Vec<Option<Click>> = vec![None; n];
    let mut active: Vec<usize> = (0..n).collect();
    for step in 0..=k_max {
        if step > 0 {
            // Record this step's click; images without one stop and carry their Dice forward.
            for (i, t) in traces.iter_mut().enumerate() {
                t.clicks.push(pending[i]);
                if pending[i].is_none() {
                    let last = *t.dice.last().expect("step 0 scored");
                    t.dice.push(last);
                }
            }
            active.retain(|&i| pending[i].is_some());
        } else {
            traces.iter_mut().for_each(|t| t.clicks.push(None));
        }
        if active.is_empty() {
            continue;
        }
        let prompts = build_prompts(cases, &traces, &active, &low, opts.mask_prompt, device)?;
        let (logits, routed) = predict(&active, &prompts)?;
        // A strategy whose adapter holds trainable variables returns logits with their backward graph; kept as the
        // next mask prompt, each step's graph would chain onto the last (gigabytes after ten clicks).
        let logits = logits.detach();
        if logits.dim(0)? != active.len() {
            return Err(Error::internal(format!(
                "interactive step {step}: {} predictions for {} images",
                logits.dim(0)?,
                active.len()
            )));
        }
        for (row, &i) in active.iter().enumerate() {
            let l = logits.get(row)?;
            let (pred, d) = score(&l, &cases[i])?;
            traces[i].dice.push(d);
            if step == 0 {
                traces[i].routed_to = routed.as_ref().and_then(|r| r.get(row).cloned());
            }
            let previous: Vec<Click> = traces[i].clicks.iter().flatten().copied().collect();
            pending[i] = next_click(&pred, cases[i].gt, cases[i].fov, &previous);
            low[i] = Some(l);
        }
    }
    Ok(traces)
}

/// Box + clicks so far (+ previous logits) for the active images.
fn build_prompts(
    cases: &[SimCase],
    traces: &[Trace],
    active: &[usize],
    low: &[Option<Tensor>],
    mask_prompt: bool,
    device: &Device,
) -> Result<Prompts> {
    let boxes: Vec<[f32; 4]> = active.iter().map(|&i| cases[i].gt_box).collect();
    let mut prompts = Prompts::from_box_slice(&boxes, device)?;
    let k = traces[active[0]].clicks.iter().flatten().count();
    if k > 0 {
        let (mut xy, mut lab) = (Vec::new(), Vec::new());
        for &i in active {
            let clicks: Vec<&Click> = traces[i].clicks.iter().flatten().collect();
            if clicks.len() != k {
                return Err(Error::internal("active images with different click counts"));
            }
            for c in clicks {
                xy.extend(c.model_frame(cases[i].meta));
                lab.push(c.label() as f32);
            }
        }
        let b = active.len();
        prompts.points = Some((
            Tensor::from_vec(xy, (b, k, 2), device)?,
            Tensor::from_vec(lab, (b, k), device)?,
        ));
        if mask_prompt {
            let m: Vec<Tensor> = active
                .iter()
                .map(|&i| {
                    low[i]
                        .clone()
                        .ok_or_else(|| Error::internal("no previous logits"))
                })
                .collect::<Result<_>>()?;
            prompts.masks = Some(Tensor::stack(&m, 0)?);
        }
    }
    Ok(prompts)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake model: predicts a disc of radius 2 + 3 * (number of positive clicks) around the box centre, on a
    /// 256 x 256 frame that is also the original frame (scale 1).
    #[test]
    fn loop_records_dice_clicks_and_stops_when_perfect() {
        let dev = Device::Cpu;
        let s = 256usize;
        let meta = PrepMeta::new(s, s, s);
        let disc = |r: f64| -> Vec<f32> {
            (0..s * s)
                .map(|i| {
                    let (y, x) = ((i / s) as f64, (i % s) as f64);
                    if ((y - 100.0).powi(2) + (x - 100.0).powi(2)).sqrt() <= r {
                        10.0
                    } else {
                        -10.0
                    }
                })
                .collect()
        };
        let gt_a = Mask2D {
            h: s,
            w: s,
            data: disc(8.0).iter().map(|&v| (v > 0.0) as u8).collect(),
        };
        let gt_b = Mask2D {
            h: s,
            w: s,
            data: disc(2.0).iter().map(|&v| (v > 0.0) as u8).collect(),
        };
        let cases = [
            SimCase {
                gt: &gt_a,
                fov: None,
                meta: &meta,
                gt_box: [92.0, 92.0, 108.0, 108.0],
            },
            SimCase {
                gt: &gt_b,
                fov: None,
                meta: &meta,
                gt_box: [98.0, 98.0, 102.0, 102.0],
            },
        ];
        let mut calls = Vec::new();
        let opts = SimOptions {
            max_clicks: 3,
            mask_prompt: true,
        };
        let traces = simulate(&cases, &opts, &dev, |idx, p| {
            let b = idx.len();
            let npos = match &p.points {
                None => vec![0usize; b],
                Some((_, l)) => l
                    .to_vec2::<f32>()?
                    .iter()
                    .map(|r| r.iter().filter(|&&v| v == 1.0).count())
                    .collect(),
            };
            assert_eq!(p.masks.is_some(), p.points.is_some());
            // The previous logits come back without their backward graph.
            assert!(!p.masks.as_ref().is_some_and(|m| m.track_op()));
            calls.push(idx.to_vec());
            let v: Vec<f32> = npos
                .iter()
                .flat_map(|&k| disc(2.0 + 3.0 * k as f64))
                .collect();
            // Logits through a trainable variable, as a LoRA strategy's are.
            let w = candle_core::Var::new(1f32, &dev)?;
            let l = Tensor::from_vec(v, (b, 1, s, s), &dev)?.broadcast_mul(w.as_tensor())?;
            assert!(l.track_op());
            Ok((l, Some(vec!["e".into(); b])))
        })
        .unwrap();
        // Image b is perfect after the box: no click, the loop drops it; image a grows 2 -> 5 -> 8 (perfect).
        assert_eq!(calls, vec![vec![0, 1], vec![0], vec![0]]);
        let (a, b) = (&traces[0], &traces[1]);
        assert_eq!(b.dice, vec![1.0; 4]);
        assert_eq!(b.clicks, vec![None; 4]);
        assert_eq!(a.dice.len(), 4);
        assert!(a.dice[0] < a.dice[1] && a.dice[1] < a.dice[2]);
        assert_eq!(a.dice[2], 1.0);
        assert_eq!(a.dice[3], 1.0);
        assert!(a.clicks[1].unwrap().positive && a.clicks[2].unwrap().positive);
        assert_eq!(a.clicks[3], None);
        assert_eq!(a.routed_to.as_deref(), Some("e"));
    }
}
