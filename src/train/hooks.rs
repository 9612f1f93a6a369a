//! The places where a strategy plugs into the shared training loop ([`crate::train::fit`]), each a named method
//! with a default that does nothing.
//!
//! Why hooks and not arguments: a continual-learning method differs from fine-tuning in a few places only: EWC and
//! LwF add a loss term, replay adds memory cases to each batch, EWC consolidates a Fisher when a task ends. Each
//! is one method here (Avalanche's plugins have the same shape: `before_backward`, `after_training_exp`), so a
//! new strategy overrides what it needs and the loop's signature never grows.

use super::r#loop::FitEnv;
use crate::data::Case;
use crate::model::{Adapter, DecoderOutput, Prompts};
use crate::Result;
use candle_core::Tensor;
use rand_chacha::ChaCha8Rng;

/// One training step's batch as the loop decoded it, for [`TrainHooks::extra_loss`].
pub struct TrainBatch<'b> {
    /// The batch's cases (the task's, then the hook's extra items), after mirroring.
    pub cases: &'b [&'b Case],
    /// Their (B,C,h,w) embeddings (through the adapter's encoder sites, if any).
    pub embeddings: &'b Tensor,
    /// The prompts the batch was decoded with (jittered boxes, plus clicks when trained with them).
    pub prompts: &'b Prompts,
    /// The adapter's output on the batch (what the segmentation loss was computed on).
    pub output: &'b DecoderOutput,
    /// The adapter being trained.
    pub adapter: &'b Adapter,
}

/// What a strategy adds to the shared training loop. Every method has a default that does nothing, so an
/// implementation overrides only what it changes; `()` is "no hooks", and a pair `(A, B)` runs both (A first).
///
/// ```
/// use evosam::{Case, FitEnv, TrainBatch, TrainHooks};
///
/// /// Adds `weight * sum(theta^2)` over the adapter's variables: a pull towards the base model.
/// struct Shrink {
///     weight: f64,
/// }
///
/// impl TrainHooks for Shrink {
///     fn extra_loss(
///         &self,
///         _env: &FitEnv,
///         batch: &TrainBatch,
///     ) -> evosam::Result<Option<candle_core::Tensor>> {
///         let mut total = None;
///         for v in batch.adapter.vars() {
///             let t = v.as_tensor().sqr()?.sum_all()?;
///             total = Some(match total {
///                 None => t,
///                 Some(s) => (s + t)?,
///             });
///         }
///         Ok(match total {
///             Some(t) => Some(t.affine(self.weight, 0.0)?),
///             None => None,
///         })
///     }
/// }
/// # let _ = Shrink { weight: 1e-3 };
/// ```
pub trait TrainHooks {
    /// Cases appended to every training batch after the task's own (experience replay), drawn with the loop's
    /// seeded `rng`. Epochs and steps are counted over the task's cases only. Default: none.
    fn extra_batch_items<'s>(&'s self, _rng: &mut ChaCha8Rng) -> Vec<&'s Case> {
        Vec::new()
    }

    /// A term added to the step's segmentation loss (EWC penalty, LwF distillation), or None. Default: None.
    fn extra_loss(&self, _env: &FitEnv, _batch: &TrainBatch) -> Result<Option<Tensor>> {
        Ok(None)
    }

    /// Called after every epoch (1-based) with the adapter as that epoch left it, before validation decides
    /// whether to go on. Default: nothing.
    fn after_epoch(&mut self, _env: &mut FitEnv, _adapter: &Adapter, _epoch: usize) -> Result<()> {
        Ok(())
    }

    /// Called once at the end of the fit, with the adapter as kept (the selected epoch) and the task's training
    /// cases (EWC consolidates its Fisher here, replay offers the cases to its memory). Default: nothing.
    fn after_task(
        &mut self,
        _env: &mut FitEnv,
        _adapter: &Adapter,
        _cases: &[&Case],
    ) -> Result<()> {
        Ok(())
    }
}

/// No hooks: plain fine-tuning.
impl TrainHooks for () {}

/// Both hooks: `A`'s batch items then `B`'s, the sum of their extra losses, `A`'s epoch and task ends then `B`'s.
impl<A: TrainHooks, B: TrainHooks> TrainHooks for (A, B) {
    fn extra_batch_items<'s>(&'s self, rng: &mut ChaCha8Rng) -> Vec<&'s Case> {
        let mut v = self.0.extra_batch_items(rng);
        v.extend(self.1.extra_batch_items(rng));
        v
    }

    fn extra_loss(&self, env: &FitEnv, batch: &TrainBatch) -> Result<Option<Tensor>> {
        Ok(
            match (
                self.0.extra_loss(env, batch)?,
                self.1.extra_loss(env, batch)?,
            ) {
                (Some(a), Some(b)) => Some((a + b)?),
                (a, b) => a.or(b),
            },
        )
    }

    fn after_epoch(&mut self, env: &mut FitEnv, adapter: &Adapter, epoch: usize) -> Result<()> {
        self.0.after_epoch(env, adapter, epoch)?;
        self.1.after_epoch(env, adapter, epoch)
    }

    fn after_task(&mut self, env: &mut FitEnv, adapter: &Adapter, cases: &[&Case]) -> Result<()> {
        self.0.after_task(env, adapter, cases)?;
        self.1.after_task(env, adapter, cases)
    }
}

/// Hooks borrowed mutably are hooks (so a strategy can lend itself, or a part of itself, to one fit).
impl<H: TrainHooks + ?Sized> TrainHooks for &mut H {
    fn extra_batch_items<'s>(&'s self, rng: &mut ChaCha8Rng) -> Vec<&'s Case> {
        (**self).extra_batch_items(rng)
    }

    fn extra_loss(&self, env: &FitEnv, batch: &TrainBatch) -> Result<Option<Tensor>> {
        (**self).extra_loss(env, batch)
    }

    fn after_epoch(&mut self, env: &mut FitEnv, adapter: &Adapter, epoch: usize) -> Result<()> {
        (**self).after_epoch(env, adapter, epoch)
    }

    fn after_task(&mut self, env: &mut FitEnv, adapter: &Adapter, cases: &[&Case]) -> Result<()> {
        (**self).after_task(env, adapter, cases)
    }
}
