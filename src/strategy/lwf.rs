//! Learning without forgetting: distillation of the previous model's mask logits.
//!
//! For binary masks the soft targets are `p = sigmoid(z_old / T)` and the loss is the mean binary cross-entropy of
//! `z_new / T` against them, scaled by `T^2` (Hinton et al.) so its gradient scale does not shrink with T.
//! The BCE is the stable form `max(x, 0) - x p + log1p(exp(-|x|))`.

use candle_core::Tensor;

use crate::spec::Diag;
use crate::Result;

/// The temperature-scaled distillation loss of the module docs: mean BCE of `new_logits / T` against
/// `sigmoid(old_logits / T)`, times `T^2`. `old_logits` is detached (no gradient reaches the teacher); both
/// tensors have the same shape.
pub fn distillation_loss(
    new_logits: &Tensor,
    old_logits: &Tensor,
    temperature: f64,
) -> Result<Tensor> {
    let t = temperature;
    let x = new_logits.affine(1.0 / t, 0.0)?;
    let p = candle_nn::ops::sigmoid(&old_logits.detach().affine(1.0 / t, 0.0)?)?;
    let bce = ((x.relu()? - (&x * &p)?)? + x.abs()?.neg()?.exp()?.affine(1.0, 1.0)?.log()?)?;
    Ok(bce.mean_all()?.affine(t * t, 0.0)?)
}

// ---------------------------------------------------------------------------------------------------------------
// The `lwf` strategy kind.

use super::single::{SingleAdapter, SingleKind};
use super::StrategyCtx;
use crate::data::{Case, TaskData};
use crate::model::Adapter;
use crate::train::{FitEnv, TrainBatch, TrainHooks};
use serde::Deserialize;

/// The kind-specific keys of an `lwf` preset.
#[derive(Clone, Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Params {
    /// Distillation temperature T.
    #[serde(default = "default_temperature")]
    pub temperature: f64,
    /// Weight of the distillation term added to the segmentation loss.
    #[serde(default = "default_weight")]
    pub weight: f64,
    /// Fresh AdamW moments at each task (default) or carried over.
    #[serde(default = "super::finetune::yes")]
    pub reset_optimizer: bool,
}

fn default_temperature() -> f64 {
    2.0
}
fn default_weight() -> f64 {
    1.0
}

impl Params {
    /// Ranges of the distillation settings.
    pub fn check(self) -> std::result::Result<Self, Diag> {
        if !(self.temperature > 0.0 && self.temperature.is_finite()) {
            return Err(Diag::at(
                "temperature",
                format!("`temperature` = {} must be > 0", self.temperature),
            ));
        }
        if !(self.weight >= 0.0 && self.weight.is_finite()) {
            return Err(Diag::at(
                "weight",
                format!("`weight` = {} must be >= 0", self.weight),
            ));
        }
        Ok(self)
    }
}

/// The `lwf` strategy kind: fine-tuning on each new task while distilling the adapter as it was before the task.
pub struct Lwf {
    /// The preset's settings.
    pub params: Params,
}

impl SingleKind for Lwf {
    fn train(
        &mut self,
        core: &mut SingleAdapter,
        ctx: &mut StrategyCtx,
        task_index: usize,
        task: &TaskData,
    ) -> Result<()> {
        if self.params.reset_optimizer {
            core.reset_optimizer();
        }
        let cases: Vec<&Case> = task.train.iter().collect();
        // The teacher is the model as it was before this task (frozen copy of the adapter).
        let mut hooks = Distillation {
            teacher: if task_index > 0 {
                Some(core.adapter.deep_clone()?)
            } else {
                None
            },
            temperature: self.params.temperature,
            weight: self.params.weight,
        };
        core.fit(ctx, &task.name, &cases, &mut hooks)?;
        Ok(())
    }
}

/// LwF as training hooks: `weight` times the [`distillation_loss`] of the step's logits against the teacher's
/// (none without a teacher, i.e. on the first task, or with a zero weight).
pub struct Distillation {
    /// The model before the task (a frozen copy of the adapter); None on the first task.
    pub teacher: Option<Adapter>,
    /// Distillation temperature T.
    pub temperature: f64,
    /// Weight of the term.
    pub weight: f64,
}

impl TrainHooks for Distillation {
    fn extra_loss(&self, env: &FitEnv, batch: &TrainBatch) -> Result<Option<Tensor>> {
        let (Some(te), w) = (&self.teacher, self.weight) else {
            return Ok(None);
        };
        if w <= 0.0 {
            return Ok(None);
        }
        // The teacher sees the images through its own encoder sites, if it has any.
        let temb = if te.targets_encoder() {
            super::embed_with(env.model, env.embeddings, batch.cases, Some(te))?
        } else {
            batch.embeddings.clone()
        };
        let old = env
            .model
            .decode(&temb, batch.prompts, Some(te))?
            .logits
            .detach();
        Ok(Some(
            distillation_loss(&batch.output.logits, &old, self.temperature)?.affine(w, 0.0)?,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn matches_hand_computation() {
        let dev = Device::Cpu;
        let new = Tensor::new(&[2.0f64, -1.0, 0.0, 30.0], &dev).unwrap();
        let old = Tensor::new(&[1.0f64, -3.0, 4.0, -30.0], &dev).unwrap();
        let t = 2.0;
        let got = distillation_loss(&new, &old, t)
            .unwrap()
            .to_scalar::<f64>()
            .unwrap();
        let mut want = 0.0;
        for (x, z) in [(2.0f64, 1.0f64), (-1.0, -3.0), (0.0, 4.0), (30.0, -30.0)] {
            let xs = x / t;
            let p = 1.0 / (1.0 + (-z / t).exp());
            let sig = 1.0 / (1.0 + (-xs).exp());
            want += -(p * sig.ln() + (1.0 - p) * (1.0 - sig).ln());
        }
        want = want / 4.0 * t * t;
        assert!((got - want).abs() < 1e-9, "{got} vs {want}");
    }

    #[test]
    fn gradient_vanishes_when_student_equals_teacher() {
        let dev = Device::Cpu;
        let z = Var::from_vec(vec![1.5f64, -0.3, 4.0], 3, &dev).unwrap();
        let old = Tensor::new(&[1.5f64, -0.3, 4.0], &dev).unwrap();
        let l = distillation_loss(z.as_tensor(), &old, 1.5).unwrap();
        let g = l
            .backward()
            .unwrap()
            .get(z.as_tensor())
            .unwrap()
            .to_vec1::<f64>()
            .unwrap();
        assert!(g.iter().all(|v| v.abs() < 1e-12), "{g:?}");
        let z2 = Var::from_vec(vec![0.0f64, -0.3, 4.0], 3, &dev).unwrap();
        let l2 = distillation_loss(z2.as_tensor(), &old, 1.5).unwrap();
        let g2 = l2
            .backward()
            .unwrap()
            .get(z2.as_tensor())
            .unwrap()
            .to_vec1::<f64>()
            .unwrap();
        // Student below the teacher on the first logit: the gradient pushes it up (negative derivative).
        assert!(g2[0] < -1e-3);
    }
}
