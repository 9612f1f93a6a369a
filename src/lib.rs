//! evosam: continual-learning experiments for medical image segmentation on a frozen LiteMedSAM.
//!
//! Layout (see docs/ARCHITECTURE.md):
//! - [`model`]: LiteMedSAM in candle (TinyViT encoder, prompt encoder, mask decoder) with LoRA adapters.
//! - [`weights`], [`preprocess`], [`train`], [`embed_cache`]: weights cache, LiteMedSAM's input recipe,
//!   losses/optimiser, frozen-encoder embedding cache.
//! - [`spec`], [`data`], [`runner`], [`results`], [`metrics`]: the declarative experiment runner.
//! - [`strategy`]: EvoSAM and the baselines.
//! - [`report`]: plots and tables from a results folder.
//! - [`interactive`]: the simulated-clinician prompt-efficiency study (clicks, NoC, Dice-vs-clicks).

pub mod error;
pub use error::{Error, Result};

pub mod cli;
pub mod data;
pub mod embed_cache;
pub mod interactive;
pub mod metrics;
pub mod model;
pub mod preprocess;
pub mod report;
pub mod results;
pub mod runner;
pub mod spec;
pub mod strategy;
pub mod train;
pub mod weights;
