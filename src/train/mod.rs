//! Training: the one entry [`fit`] with its [`FitPlan`] and [`TrainHooks`], segmentation losses and an AdamW
//! whose state can be saved and restored.

/// Per-task budgets (`epochs` or exact `steps`) and the seeded validation split.
pub mod budget;
/// Simulated clicks in training batches (`[train.prompt] clicks`).
pub mod clicks;
mod fit;
mod fused_loss;
mod hooks;
/// The shared training loop of the strategies (runner).
pub mod r#loop;
/// Segmentation losses (Dice, BCE, IoU-prediction MSE).
pub mod loss;
/// AdamW with saveable state.
pub mod optim;
/// Validation scoring and the best-epoch rule (used by [`fit`] and EvoSAM's keep-the-start rule).
pub mod select;

pub use fit::{fit, FitPlan, FitReport};
pub use hooks::{TrainBatch, TrainHooks};
pub use loss::{iou_mse_loss, seg_loss, soft_dice_loss, stable_bce_with_logits, LossWeights};
pub use optim::{AdamW, ParamsAdamW};
pub use r#loop::{FitCtx, FitEnv, Progress};

#[cfg(test)]
mod grad_tests;
