//! Training building blocks: segmentation losses and an AdamW whose state can be saved and restored.

/// Per-task budgets (`epochs` or exact `steps`) and the seeded validation split.
pub mod budget;
/// Simulated clicks in training batches (`[train.prompt] clicks`).
pub mod clicks;
mod fused_loss;
/// The shared training loop of the strategies (runner).
pub mod r#loop;
/// Segmentation losses (Dice, BCE, IoU-prediction MSE).
pub mod loss;
/// AdamW with saveable state.
pub mod optim;
/// Best-epoch selection on validation, early stopping and EvoSAM's keep-the-start rule.
pub mod select;

pub use loss::{iou_mse_loss, seg_loss, soft_dice_loss, stable_bce_with_logits, LossWeights};
pub use optim::{AdamW, ParamsAdamW};

#[cfg(test)]
mod grad_tests;
