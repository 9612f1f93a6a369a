//! Training building blocks: segmentation losses and an AdamW whose state can be saved and restored.

pub mod budget;
/// The shared training loop of the strategies (runner).
pub mod r#loop;
pub mod loss;
pub mod optim;
pub mod select;

pub use loss::{iou_mse_loss, seg_loss, soft_dice_loss, stable_bce_with_logits, LossWeights};
pub use optim::{AdamW, ParamsAdamW};

#[cfg(test)]
mod grad_tests;
