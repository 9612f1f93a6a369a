//! Model selection on held-out validation cases: evaluate after every epoch, keep the best epoch, stop early after
//! `patience` epochs without improvement, and (optionally) keep the starting point when training never beats it.
//!
//! Why: on small real tasks (ten images per site) a fixed budget can leave an adapter worse than where it started
//! (an expert below the base model, a fine-tuned model that overshot). Selecting on held-out Dice makes the budget
//! an upper bound rather than a guess. The "keep the start" rule is EvoSAM's: a new expert that does not beat its
//! starting point (the base model or the expert it was copied from) on validation is not worth keeping as trained.
//! Single-model baselines get the same best-epoch selection, but their epoch 0 is not eligible.

use crate::data::embeddings::{embed_with, EmbeddingStore};
use crate::data::Case;
use crate::model::{Adapter, LiteMedSam};
use crate::train::optim::AdamW;
use crate::train::r#loop::{ExtraLoss, FitCtx, FitStats};
use crate::Result;
use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

/// What a selected fit did.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct FitReport {
    /// Optimiser steps taken.
    pub steps: usize,
    /// Epochs run (fewer than the budget after early stopping).
    pub epochs_run: usize,
    /// The epoch whose weights were kept (0 = the starting point; the last epoch without validation).
    pub chosen_epoch: usize,
    /// Validation Dice of the starting point and after each epoch run (empty without validation cases).
    pub val_dice: Vec<f64>,
    /// Mean training loss of the last epoch run.
    pub last_epoch_loss: f64,
}

impl FitReport {
    /// True when the starting point was kept.
    pub fn kept_start(&self) -> bool {
        !self.val_dice.is_empty() && self.chosen_epoch == 0
    }

    /// Validation Dice of the kept weights.
    pub fn chosen_val_dice(&self) -> Option<f64> {
        self.val_dice.get(self.chosen_epoch).copied()
    }
}

/// Validation cases per decoder batch.
const VAL_BATCH: usize = 8;

/// Mean Dice of `adapter` on validation cases (exact ground-truth box prompts, as at test time); each case is
/// scored at its original resolution, inside its field of view when `fov` is set, like the test scores.
pub fn validation_dice(
    model: &LiteMedSam,
    store: &EmbeddingStore,
    device: &Device,
    adapter: Option<&Adapter>,
    val: &[&Case],
    fov: bool,
) -> Result<f64> {
    if val.is_empty() {
        return Ok(f64::NAN);
    }
    let d = validation_dices(model, store, device, adapter, val, fov)?;
    Ok(mean(&d))
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len() as f64
}

/// Seed of the validation clicks (fixed: every model is scored with the same draw).
const VAL_CLICK_SEED: u64 = 0x0c11c4;

/// The validation score of each case, in the order of `val`: its Dice with the box prompt, or, when the spec
/// trains with clicks (`clicks` = `[train.prompt] clicks` > 0), the mean of its Dice with the box alone and with
/// the box plus n = 1..=clicks corrective clicks, placed as in training on the errors of the model's own box-only
/// prediction (a fixed seeded draw per n, the same for every model scored).
///
/// Why: a model trained to use clicks is worth keeping for what the clicks do. Scored on the box alone, a
/// click-trained EvoSAM expert that ties with the base on box Dice was replaced by the base (measured on
/// `experiments/interactive-polyp.toml`: seed 0's Kvasir expert kept the base, 0.9205 vs 0.9202 box Dice), and
/// EvoSAM's click curve fell to the zero-shot model's.
pub fn validation_scores(
    model: &LiteMedSam,
    store: &EmbeddingStore,
    device: &Device,
    adapter: Option<&Adapter>,
    val: &[&Case],
    fov: bool,
    clicks: usize,
) -> Result<Vec<f64>> {
    use rand::SeedableRng;
    let mut out = Vec::with_capacity(val.len());
    for chunk in val.chunks(VAL_BATCH) {
        let emb = embed_with(model, store, chunk, adapter)?;
        let boxes: Vec<[f32; 4]> = chunk.iter().map(|c| c.gt_box()).collect();
        let preds = if clicks > 0 {
            crate::train::clicks::box_only_masks(model, &emb, &boxes, adapter, device)?
        } else {
            Vec::new()
        };
        let mut sums = vec![0.0; chunk.len()];
        for n in 0..=clicks {
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(VAL_CLICK_SEED ^ n as u64);
            let pts = if n == 0 {
                None
            } else {
                let mut p = Vec::with_capacity(chunk.len());
                for ((c, b), pred) in chunk.iter().zip(&boxes).zip(&preds) {
                    p.push(crate::train::clicks::sample_clicks(
                        c,
                        *b,
                        n,
                        Some(pred),
                        &mut rng,
                    )?);
                }
                Some(p)
            };
            let prompts = crate::train::clicks::labeled_prompts(&boxes, pts.as_deref(), device)?;
            let o = model.decode(&emb, &prompts, adapter)?;
            for (i, c) in chunk.iter().enumerate() {
                sums[i] += crate::metrics::case_dice(&o.logits.get(i)?, c, fov)?;
            }
        }
        out.extend(sums.into_iter().map(|s| s / (clicks + 1) as f64));
    }
    Ok(out)
}

/// Dice of each validation case (box prompt), in the order of `val`: the paired values behind evidence that
/// compares two models on the same held-out images.
pub fn validation_dices(
    model: &LiteMedSam,
    store: &EmbeddingStore,
    device: &Device,
    adapter: Option<&Adapter>,
    val: &[&Case],
    fov: bool,
) -> Result<Vec<f64>> {
    validation_scores(model, store, device, adapter, val, fov, 0)
}

/// Copies of an adapter's values (to restore the best epoch).
fn snapshot(adapter: &Adapter) -> Result<Vec<Tensor>> {
    adapter
        .vars()
        .iter()
        .map(|v| Ok(v.as_tensor().copy()?))
        .collect()
}

fn restore(adapter: &Adapter, snap: &[Tensor]) -> Result<()> {
    for (v, t) in adapter.vars().iter().zip(snap) {
        v.set(t)?;
    }
    Ok(())
}

/// The selection rule on a sequence of validation scores (index 0 = the start): the first index with the highest
/// score among the trained epochs (1..); when `start_eligible`, the start is kept unless that epoch beats it by more
/// than `margin` (so ties keep the start). Returns None when nothing is eligible.
pub fn select_epoch(val: &[f64], start_eligible: bool, margin: f64) -> Option<usize> {
    let mut best: Option<usize> = None;
    for (i, &v) in val.iter().enumerate().skip(1) {
        if best.is_none_or(|b| v > val[b]) {
            best = Some(i);
        }
    }
    if !start_eligible || val.is_empty() {
        return best;
    }
    match best {
        Some(b) if val[b] > val[0] + margin => Some(b),
        _ => Some(0),
    }
}

/// [`select_epoch`] without a margin.
pub fn best_epoch(val: &[f64], start_eligible: bool) -> Option<usize> {
    select_epoch(val, start_eligible, 0.0)
}

/// Options of [`fit_selected`]: where to evaluate, on what, and the rules.
pub struct Selection<'v> {
    /// The frozen model the adapter is evaluated on.
    pub model: &'v LiteMedSam,
    /// Cached frozen-encoder embeddings of the validation cases.
    pub embeddings: &'v EmbeddingStore,
    /// Device of the validation forward passes.
    pub device: &'v Device,
    /// Stop after this many epochs without a better validation Dice (0 = never; `[train] patience`).
    pub patience: usize,
    /// Held-out cases (empty: plain training, the last epoch is kept).
    pub val: &'v [&'v Case],
    /// Score validation inside the field of view.
    pub fov: bool,
    /// Keep the starting weights when no epoch beats them on validation (EvoSAM's rule).
    pub keep_start: bool,
    /// With `keep_start`: how much (mean validation Dice) an epoch must beat the start by.
    pub start_margin: f64,
    /// `[train.prompt] clicks`: with clicks, validation scores the clicks too ([`validation_scores`]).
    pub clicks: usize,
}

impl Selection<'_> {
    /// The validation score of each held-out case for `adapter` (None: the base model), see
    /// [`validation_scores`].
    pub fn scores(&self, adapter: Option<&Adapter>) -> Result<Vec<f64>> {
        validation_scores(
            self.model,
            self.embeddings,
            self.device,
            adapter,
            self.val,
            self.fov,
            self.clicks,
        )
    }

    /// The mean validation score of `adapter` (NaN without validation cases).
    pub fn score(&self, adapter: Option<&Adapter>) -> Result<f64> {
        if self.val.is_empty() {
            return Ok(f64::NAN);
        }
        Ok(mean(&self.scores(adapter)?))
    }
}

/// Train as [`crate::train::r#loop::fit_mixed`] under the spec's budget, evaluating on `sel.val` after every
/// epoch; the adapter ends with the weights of the selected epoch (see [`best_epoch`]), and training stops after
/// `[train] patience` epochs without a better validation Dice (0 = never).
#[allow(clippy::too_many_arguments)]
pub fn fit_selected<C: FitCtx + ?Sized>(
    ctx: &mut C,
    task_name: &str,
    adapter: &Adapter,
    opt: &mut AdamW,
    cases: &[&Case],
    extra: Option<&ExtraLoss>,
    memory: &[&Case],
    per_batch: usize,
    sel: &Selection,
) -> Result<FitReport> {
    if sel.val.is_empty() {
        let st: FitStats = crate::train::r#loop::fit_hooked(
            ctx, task_name, adapter, opt, cases, extra, memory, per_batch, None,
        )?;
        return Ok(FitReport {
            steps: st.steps,
            epochs_run: st.epochs,
            chosen_epoch: st.epochs,
            val_dice: Vec::new(),
            last_epoch_loss: st.last_epoch_loss,
        });
    }
    let patience = sel.patience;
    let start = sel.score(Some(adapter))?;
    let mut val_dice = vec![start];
    let start_snap = if sel.keep_start {
        Some(snapshot(adapter)?)
    } else {
        None
    };
    // The best trained epoch so far (the start is weighed against it at the end).
    let mut best_snap: Option<Vec<Tensor>> = None;
    let mut since_best = 0usize;
    let mut hook = |epoch: usize, a: &Adapter| -> Result<bool> {
        let d = sel.score(Some(a))?;
        val_dice.push(d);
        if best_epoch(&val_dice, false) == Some(epoch) {
            best_snap = Some(snapshot(a)?);
            since_best = 0;
        } else {
            since_best += 1;
        }
        Ok(patience == 0 || since_best < patience)
    };
    let st = crate::train::r#loop::fit_hooked(
        ctx,
        task_name,
        adapter,
        opt,
        cases,
        extra,
        memory,
        per_batch,
        Some(&mut hook),
    )?;
    let chosen = select_epoch(&val_dice, sel.keep_start, sel.start_margin).unwrap_or(0);
    let keep = if chosen == 0 { &start_snap } else { &best_snap };
    if chosen != st.epochs {
        if let Some(s) = keep {
            restore(adapter, s)?;
        }
    }
    Ok(FitReport {
        steps: st.steps,
        epochs_run: st.epochs,
        chosen_epoch: chosen,
        val_dice,
        last_epoch_loss: st.last_epoch_loss,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn best_epoch_rule() {
        // the start wins only when eligible; ties keep the earlier index
        assert_eq!(best_epoch(&[0.5, 0.4, 0.3], true), Some(0));
        assert_eq!(best_epoch(&[0.5, 0.4, 0.3], false), Some(1));
        assert_eq!(best_epoch(&[0.5, 0.5, 0.6, 0.6], true), Some(2));
        assert_eq!(best_epoch(&[0.2, 0.2], true), Some(0));
        assert_eq!(best_epoch(&[0.2], false), None);
        assert_eq!(best_epoch(&[], true), None);
        // a margin: the start stays unless beaten by more than it
        assert_eq!(select_epoch(&[0.5, 0.505, 0.4], true, 0.01), Some(0));
        assert_eq!(select_epoch(&[0.5, 0.505, 0.52], true, 0.01), Some(2));
        assert_eq!(select_epoch(&[0.5, 0.505, 0.4], false, 0.01), Some(1));
    }
}
