//! Training building blocks: segmentation losses and an AdamW whose state can be saved and restored.

mod fused_loss;
/// The shared training loop of the strategies (runner).
pub mod r#loop;
/// Segmentation losses (Dice, BCE, IoU-prediction MSE).
pub mod loss;
/// AdamW with saveable state.
pub mod optim;

pub use loss::{iou_mse_loss, seg_loss, soft_dice_loss, stable_bce_with_logits, LossWeights};
pub use optim::{AdamW, ParamsAdamW};

#[cfg(test)]
mod grad_tests;
