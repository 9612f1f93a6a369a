//! Model selection on held-out validation cases: [`crate::train::fit`] scores them after every epoch, keeps the best
//! epoch and stops early after `patience` epochs without improvement; [`select_epoch`] with an eligible start keeps
//! the starting point when training never beats it.
//!
//! Why: on small real tasks (ten images per site) a fixed budget can leave an adapter worse than where it started
//! (an expert below the base model, a fine-tuned model that overshot). Selecting on held-out Dice makes the budget
//! an upper bound rather than a guess. The "keep the start" rule is EvoSAM's: a new expert that does not beat its
//! starting point (the base model or the expert it was copied from) on validation is not worth keeping as trained.
//! Single-model baselines get the same best-epoch selection, but their epoch 0 is not eligible.

use crate::data::embeddings::{embed_with, EmbeddingStore};
use crate::data::Case;
use crate::model::{Adapter, LiteMedSam};
use crate::Result;
use candle_core::Device;

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

/// The arithmetic mean (NaN of nothing).
pub(crate) fn mean(v: &[f64]) -> f64 {
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

/// The held-out cases of a task and how to score them: what selects the epoch in [`crate::train::fit`], and what
/// EvoSAM's keep-the-start rule compares models on.
pub struct Validation<'v> {
    /// The frozen model the adapter is evaluated on.
    pub model: &'v LiteMedSam,
    /// Cached frozen-encoder embeddings of the validation cases.
    pub embeddings: &'v EmbeddingStore,
    /// Device of the validation forward passes.
    pub device: &'v Device,
    /// Held-out cases.
    pub cases: &'v [&'v Case],
    /// Score inside the field of view.
    pub fov: bool,
    /// `[train.prompt] clicks`: with clicks, validation scores the clicks too ([`validation_scores`]).
    pub clicks: usize,
}

impl Validation<'_> {
    /// The validation score of each held-out case for `adapter` (None: the base model), see
    /// [`validation_scores`].
    pub fn scores(&self, adapter: Option<&Adapter>) -> Result<Vec<f64>> {
        validation_scores(
            self.model,
            self.embeddings,
            self.device,
            adapter,
            self.cases,
            self.fov,
            self.clicks,
        )
    }
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
