//! The training loop the strategies share: epochs of seeded shuffled batches over cached frozen-encoder
//! embeddings, box prompts from the ground truth with seeded jitter (plus optional positive points), the
//! segmentation loss (plus the hooks' extra term), an AdamW step on the adapter's variables, and progress.
//! Its one entry is [`crate::train::fit`]; this module holds the passes and the prompt helpers.

use super::budget::Schedule;
use super::clicks::{batch_points, box_only_masks, labeled_prompts, LabeledPoint};
use super::hooks::{TrainBatch, TrainHooks};
use crate::data::embeddings::{embed_with, EmbeddingStore};
use crate::data::Case;
use crate::model::{Adapter, LiteMedSam, Prompts};
use crate::spec::TrainSpec;
use crate::train::loss::{seg_loss, LossWeights};
use crate::train::optim::AdamW;
use crate::{Error, Result};
use candle_core::{Device, Tensor};
use rand::seq::SliceRandom;
use rand::Rng;
use rand_chacha::ChaCha8Rng;

/// A progress event from inside a cell: one optimiser step.
#[derive(Clone, Debug)]
pub struct Progress {
    /// Task being trained.
    pub task: String,
    /// Epoch (1-based) and number of epochs.
    pub epoch: usize,
    /// Number of epochs of this fit.
    pub epochs: usize,
    /// Step within the epoch (1-based).
    pub step: usize,
    /// Steps per epoch.
    pub steps: usize,
    /// This step's loss.
    pub loss: f64,
}

/// What the loop needs from its caller, borrowed for one fit. The loop knows no strategy: a strategy context
/// (or a test harness) hands these parts over through [`FitCtx`].
pub struct FitEnv<'a> {
    /// The frozen base model.
    pub model: &'a LiteMedSam,
    /// Cached frozen-encoder embeddings.
    pub embeddings: &'a EmbeddingStore,
    /// Epochs, batch size, loss weights, prompt settings.
    pub train: &'a TrainSpec,
    /// Strategy label (for messages).
    pub label: &'a str,
    /// Seeded RNG for shuffling, jitter, points and mirroring.
    pub rng: &'a mut ChaCha8Rng,
    /// Called after every optimiser step.
    pub progress: &'a (dyn Fn(Progress) + Send + Sync),
    /// Device of the model.
    pub device: &'a Device,
}

/// Anything that can lend a [`FitEnv`]: implemented by `strategy::StrategyCtx`.
pub trait FitCtx {
    /// Borrow the parts the loop needs.
    fn fit_env(&mut self) -> FitEnv<'_>;
}

/// What the passes of one fit did.
#[derive(Clone, Debug, Default)]
pub(super) struct FitStats {
    /// Optimiser steps taken.
    pub steps: usize,
    /// Epochs run (fewer than the budget when early stopping ended the fit).
    pub epochs: usize,
    /// Mean loss of the last epoch.
    pub last_epoch_loss: f64,
}

/// Box prompt from the GT (model frame), each coordinate moved by U(-jitter, jitter), clamped to the resized
/// extent and kept ordered.
pub fn jittered_box(case: &Case, jitter: f64, rng: &mut ChaCha8Rng) -> [f32; 4] {
    let b = case.gt_box();
    if jitter <= 0.0 {
        return b;
    }
    let maxx = (case.meta.new_w.max(1) - 1) as f32;
    let maxy = (case.meta.new_h.max(1) - 1) as f32;
    let mut o = [0f32; 4];
    for (i, v) in b.iter().enumerate() {
        let d = rng.random_range(-jitter..=jitter) as f32;
        let lim = if i % 2 == 0 { maxx } else { maxy };
        o[i] = (v + d).clamp(0.0, lim);
    }
    if o[0] > o[2] {
        o.swap(0, 2);
    }
    if o[1] > o[3] {
        o.swap(1, 3);
    }
    o
}

/// `n` positive points sampled uniformly from the case's model-frame mask (x, y); the box centre when empty.
pub fn sample_points(case: &Case, n: usize, rng: &mut ChaCha8Rng) -> Result<Vec<[f32; 2]>> {
    let m: Vec<f32> = case.mask.flatten_all()?.to_vec1()?;
    let s = case.mask.dim(2)?;
    let fg: Vec<usize> = m
        .iter()
        .enumerate()
        .filter(|(_, &v)| v > 0.5)
        .map(|(i, _)| i)
        .collect();
    Ok((0..n)
        .map(|_| {
            if fg.is_empty() {
                let b = case.gt_box();
                [(b[0] + b[2]) / 2.0, (b[1] + b[3]) / 2.0]
            } else {
                let i = fg[rng.random_range(0..fg.len())];
                [(i % s) as f32 + 0.5, (i / s) as f32 + 0.5]
            }
        })
        .collect())
}

/// Prompts for a batch: boxes (B,4) and, when `points > 0`, (B,N,2) positive points with labels (B,N).
pub fn make_prompts(
    boxes: &[[f32; 4]],
    points: Option<&[Vec<[f32; 2]>]>,
    device: &Device,
) -> Result<Prompts> {
    let labeled: Option<Vec<Vec<LabeledPoint>>> = points.map(|p| {
        p.iter()
            .map(|v| v.iter().map(|xy| (*xy, 1.0)).collect())
            .collect()
    });
    labeled_prompts(boxes, labeled.as_deref(), device)
}

/// Exact GT box prompts (evaluation).
pub fn eval_prompts(cases: &[&Case], device: &Device) -> Result<Prompts> {
    let boxes: Vec<[f32; 4]> = cases.iter().map(|c| c.gt_box()).collect();
    make_prompts(&boxes, None, device)
}

/// One fit's passes over a task, as [`crate::train::fit`] hands them to the loop.
pub(super) struct Passes<'p> {
    /// Task name (progress and error messages).
    pub task: &'p str,
    /// The adapter trained.
    pub adapter: &'p Adapter,
    /// Its optimiser.
    pub opt: &'p mut AdamW,
    /// The task's training cases (epochs and steps count over these).
    pub cases: &'p [&'p Case],
    /// Steps of each pass.
    pub schedule: &'p Schedule,
    /// The strategy's hooks.
    pub hooks: &'p mut dyn TrainHooks,
}

/// Train under `p.schedule`: seeded shuffled batches (plus the hooks' extra items), jittered box prompts (plus
/// clicks), the segmentation loss plus the hooks' extra term, an AdamW step with the warmup factor. After each
/// epoch the hooks' `after_epoch`, then `keep_going` (validation, early stopping) may end the fit. Non-finite loss
/// stops with [`Error::NonFinite`] naming the strategy, task, epoch and step.
pub(super) fn run_passes(
    env: &mut FitEnv,
    p: Passes,
    keep_going: &mut dyn FnMut(usize, &Adapter) -> Result<bool>,
) -> Result<FitStats> {
    let Passes {
        task,
        adapter,
        opt,
        cases,
        schedule,
        hooks,
    } = p;
    let (model, device, train) = (env.model, env.device, env.train);
    let w = LossWeights {
        dice: train.loss.dice,
        bce: train.loss.bce,
        iou: train.loss.iou,
    };
    let bs = train.batch_size.max(1);
    let n_epochs = schedule.epochs.len();
    let total_steps = schedule.total_steps();
    let base_lr = opt.learning_rate();
    let mut stats = FitStats::default();
    let mut idx: Vec<usize> = (0..cases.len()).collect();
    for (epoch, &steps_per_epoch) in schedule.epochs.iter().enumerate() {
        idx.shuffle(&mut *env.rng);
        let mut sum = 0.0;
        for (step, chunk) in idx.chunks(bs).take(steps_per_epoch).enumerate() {
            let mut picked: Vec<&Case> = chunk.iter().map(|&i| cases[i]).collect();
            picked.extend(hooks.extra_batch_items(&mut *env.rng));
            let batch: Vec<&Case> = picked
                .into_iter()
                .map(|c| match c.flipped.as_deref() {
                    Some(f) if train.augment && env.rng.random_bool(0.5) => f,
                    _ => c,
                })
                .collect();
            let emb = embed_with(model, env.embeddings, &batch, Some(adapter))?;
            let boxes: Vec<[f32; 4]> = batch
                .iter()
                .map(|c| jittered_box(c, train.prompt.jitter, &mut *env.rng))
                .collect();
            let mut predict = || box_only_masks(model, &emb, &boxes, Some(adapter), device);
            let pts = batch_points(&batch, &boxes, &train.prompt, &mut *env.rng, &mut predict)?;
            let prompts = labeled_prompts(&boxes, pts.as_deref(), device)?;
            let masks: Vec<Tensor> = batch.iter().map(|c| c.mask.clone()).collect();
            let target = Tensor::stack(&masks, 0)?;
            let out = model.decode(&emb, &prompts, Some(adapter))?;
            let mut loss = seg_loss(&out, &target, &w)?;
            let seen = TrainBatch {
                cases: &batch,
                embeddings: &emb,
                prompts: &prompts,
                output: &out,
                adapter,
            };
            if let Some(t) = hooks.extra_loss(env, &seen)? {
                loss = (loss + t)?;
            }
            let lv = loss.to_dtype(candle_core::DType::F64)?.to_scalar::<f64>()?;
            if !lv.is_finite() {
                return Err(Error::NonFinite(format!(
                    "strategy {:?}, task {task:?}, epoch {}/{}, step {}: loss = {lv}",
                    env.label,
                    epoch + 1,
                    n_epochs,
                    step + 1
                )));
            }
            let grads = loss.backward()?;
            if train.warmup > 0.0 {
                let f = crate::train::budget::warmup_factor(train.warmup, total_steps, stats.steps);
                opt.set_learning_rate(base_lr * f);
            }
            let stepped = opt.step(&grads);
            opt.set_learning_rate(base_lr);
            stepped?;
            sum += lv;
            stats.steps += 1;
            (env.progress)(Progress {
                task: task.to_string(),
                epoch: epoch + 1,
                epochs: n_epochs,
                step: step + 1,
                steps: steps_per_epoch,
                loss: lv,
            });
        }
        stats.last_epoch_loss = sum / steps_per_epoch.max(1) as f64;
        stats.epochs = epoch + 1;
        hooks.after_epoch(env, adapter, epoch + 1)?;
        if !keep_going(epoch + 1, adapter)? {
            break;
        }
    }
    Ok(stats)
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::data::{make_case, ImageSource, Mask2D, RawCase, RawImage};
    use rand::SeedableRng;

    /// A 40 x 20 image (model frame 64 x 32) whose foreground is the box x 10..=19, y 5..=9.
    pub(in crate::train) fn case() -> Case {
        // 40 x 20 image, foreground box x 10..=19, y 5..=9
        let mut m = Mask2D::zeros(20, 40);
        for y in 5..10 {
            for x in 10..20 {
                m.data[y * 40 + x] = 1;
            }
        }
        let img = RawImage {
            h: 20,
            w: 40,
            channels: 1,
            data: (0..800).map(|i| (i % 7) as f32).collect(),
        };
        make_case(
            RawCase {
                id: "c".into(),
                image: ImageSource::Raw(img),
                mask: m,
                fov: None,
            },
            64,
            &Device::Cpu,
        )
        .unwrap()
    }

    #[test]
    fn boxes_and_points_follow_the_mask() {
        let c = case();
        // scale 64/40 = 1.6: box (10,5,19,9) -> (16, 8, 30.4, 14.4)
        let b = c.gt_box();
        let want = [16.0, 8.0, 30.4, 14.4];
        for (x, w) in b.iter().zip(want) {
            assert!((x - w).abs() < 1e-4, "{b:?}");
        }
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        for _ in 0..200 {
            let j = jittered_box(&c, 5.0, &mut rng);
            assert!(j[0] <= j[2] && j[1] <= j[3], "{j:?}");
            assert!(j.iter().all(|v| *v >= 0.0));
            assert!(j[2] <= 63.0 && j[3] <= 31.0, "{j:?}"); // resized extent 64 x 32
            for (x, w) in j.iter().zip(want) {
                assert!((x - w).abs() <= 5.0 + 1e-4, "{j:?}");
            }
        }
        assert_eq!(jittered_box(&c, 0.0, &mut rng), b);
        let mut r1 = ChaCha8Rng::seed_from_u64(9);
        let mut r2 = ChaCha8Rng::seed_from_u64(9);
        assert_eq!(
            jittered_box(&c, 3.0, &mut r1),
            jittered_box(&c, 3.0, &mut r2)
        );
        for p in sample_points(&c, 20, &mut rng).unwrap() {
            let (x, y) = (p[0] as usize, p[1] as usize);
            assert_eq!(
                c.mask
                    .get(0)
                    .unwrap()
                    .get(y)
                    .unwrap()
                    .get(x)
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap(),
                1.0
            );
        }
        let pr = make_prompts(
            &[b, b],
            Some(&[vec![[1.0, 2.0]], vec![[3.0, 4.0]]]),
            &Device::Cpu,
        )
        .unwrap();
        assert_eq!(pr.boxes.unwrap().dims(), &[2, 4]);
        let (pc, pl) = pr.points.unwrap();
        assert_eq!(
            (pc.dims(), pl.dims()),
            (&[2usize, 1, 2][..], &[2usize, 1][..])
        );
    }
}
