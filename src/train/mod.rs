//! Training: the one entry [`fit`] with its [`FitPlan`] and [`TrainHooks`], segmentation losses and an AdamW
//! whose state can be saved and restored.

pub mod budget;
pub mod clicks;
mod fit;
mod fused_loss;
mod hooks;
/// The shared training loop of the strategies (runner).
pub mod r#loop;
pub mod loss;
pub mod optim;
pub mod select;

pub use fit::{fit, FitPlan, FitReport};
pub use hooks::{TrainBatch, TrainHooks};
pub use loss::{iou_mse_loss, seg_loss, soft_dice_loss, stable_bce_with_logits, LossWeights};
pub use optim::{AdamW, ParamsAdamW};
pub use r#loop::{FitCtx, FitEnv, Progress};

#[cfg(test)]
mod grad_tests;
