//! evosam: continual-learning experiments for medical image segmentation on a frozen LiteMedSAM.
//!
//! The four things a user of this crate does are at the root:
//!
//! - **load a spec**: [`Spec::from_file`] (built-in strategies) or [`Spec::load`] with your own [`Registry`];
//! - **run it**: [`run`] with [`RunOptions`], which writes a results folder and returns a [`RunSummary`];
//! - **read the results**: [`load_results`] (a [`ResultsSet`] of [`ScoreRow`]s, [`MatrixRow`]s, ...) or
//!   [`write_report`] for the plots and tables;
//! - **add a strategy**: implement [`Strategy`] (training through [`StrategyCtx`], predicting a [`Batch`] into a
//!   [`Prediction`]), or, for one adapter trained task after task, just a [`SingleKind`] that [`SingleModel`]
//!   runs; train with [`fit`] and a [`FitPlan`], adding loss terms, batch items or end-of-task work through
//!   [`TrainHooks`]; describe it with a [`StrategyKind`] (params type, builder, presets) and
//!   [`Registry::register`] it. `examples/custom_strategy.rs` does all four end to end.
//!
//! The first three on a two-site synthetic stream and the tiny random model (`weights = "lite_medsam"` gives the
//! real LiteMedSAM, downloaded once into the cache):
//!
//! ```
//! use evosam::{load_results, run, write_report, Registry, RunOptions, Spec};
//!
//! # fn main() -> evosam::Result<()> {
//! let dir = tempfile::tempdir().unwrap();
//! let mut text = String::from("[experiment]\nname = \"demo\"\nseeds = [0]\n[stream]\norders = [\"given\"]\n");
//! for site in 0..2 {
//!     text += &format!(
//!         "[[stream.task]]\nname = \"site{site}\"\nsource = \"synthetic\"\nfamily = \"vessels\"\n\
//!          site = {site}\ntrain = 4\ntest = 2\nsize = 64\n"
//!     );
//! }
//! text += "[model]\nweights = \"random-tiny\"\n[train]\nepochs = 1\nbatch_size = 2\n";
//! text += "[[strategy]]\npreset = \"zeroshot\"\n[[strategy]]\npreset = \"finetune\"\n";
//! let path = dir.path().join("demo.toml");
//! std::fs::write(&path, text).unwrap();
//!
//! // load a spec
//! let spec = Spec::from_file(&path)?;
//! // run it
//! let mut opts = RunOptions::default();
//! opts.out = Some(dir.path().join("results"));
//! opts.quiet = true;
//! opts.report = false;
//! let summary = run(spec, &Registry::default(), &opts)?;
//! assert_eq!((summary.cells, summary.failed.len()), (2, 0));
//! // read the results: one metrics row per (strategy, seed, order), the accuracy matrix, every case's scores
//! let results = load_results(&[summary.dir.clone()])?;
//! let zeroshot = results.metrics.iter().find(|m| m.strategy == "zeroshot").unwrap();
//! assert_eq!(zeroshot.bwt, 0.0); // a model that never trains forgets nothing
//! assert_eq!(results.matrix.len(), 2 * 3 * 2); // strategies x stages (0, 1, 2) x tasks
//! // and the plots and tables
//! write_report(&[summary.dir], &dir.path().join("report"))?;
//! assert!(dir.path().join("report/tables/summary.md").is_file());
//! # Ok(())
//! # }
//! ```
//!
//! Layers, lowest first (docs/ARCHITECTURE.md; `python3 scripts/module_deps.py --check` enforces them):
//! `util`, `error`, `lock` < [`model`], [`preprocess`], [`weights`] < `embed_cache` < [`spec`] < [`data`] <
//! [`metrics`] < [`train`] < [`strategy`] < `results` < [`interactive`] < [`annotate`] < [`export`] < [`report`] < [`runner`] <
//! [`cluster`]; the binary's subcommands (`src/cli/`) use only this public surface.

#![warn(missing_docs)]

pub mod annotate;
mod error;
pub use error::{Error, Result};

pub mod cluster;
pub mod data;
mod embed_cache;
pub mod export;
pub mod interactive;
mod lock;
pub mod metrics;
pub mod model;
pub mod preprocess;
pub mod report;
mod results;
pub mod runner;
pub mod spec;
pub mod strategy;
pub mod train;
mod util;
pub mod weights;

// Load a spec.
pub use spec::{Catalog, Diag, Spec, StrategySpec};
// Run it.
pub use runner::{run, RunOptions, RunSummary};
// Read the results.
pub use report::load::{load_results, MetricsRow, ResultsSet};
pub use report::write_report;
pub use results::{ExtraRow, MatrixRow, ScoreRow};
// Add a strategy.
pub use data::{Case, TaskData};
pub use strategy::single::{SingleAdapter, SingleKind, SingleModel};
pub use strategy::{
    Batch, BuildEnv, Prediction, Registry, Strategy, StrategyCtx, StrategyKind, StrategyParams,
};
pub use train::{fit, FitEnv, FitPlan, FitReport, TrainBatch, TrainHooks};
