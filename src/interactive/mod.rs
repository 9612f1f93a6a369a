//! The prompt-efficiency study: a simulated clinician refines each test image with clicks, and we measure how
//! fast each strategy's predictions reach a good Dice (issue 11; protocol in the README, "Interactive study").
//!
//! - [`clicks`]: where the next click goes (the standard simulated user of interactive-segmentation benchmarks).
//! - [`distance`]: the exact Euclidean distance transform it needs.
//! - [`simulate`](mod@simulate): the loop (box, then clicks, one decoder pass per click on the frozen embedding).
//! - [`metrics`]: NoC@τ, Dice@k, AUC and the time model, per case.
//! - the settings: the spec's `[eval.interactive]` table, [`InteractiveSpec`] (in [`crate::spec`]).
//! - [`rows`]: the results rows (clicks.csv, interactive.csv).
//!
//! - [`study`]: one strategy at one stage, through the strategy's own `predict`.
//!
//! The loop itself takes a predictor closure and knows no strategy; [`study`] is the only part that does, and the
//! runner calls it after each stage it studies.

pub mod clicks;
pub mod distance;
pub mod rows;
pub mod simulate;
pub mod study;

/// The curve metrics (NoC@τ, Dice@k, AUC, time), which live with the crate's other metrics.
pub use crate::metrics::clicks as metrics;

pub use crate::spec::{InteractiveSpec, StudyStages, TimeModel};
pub use clicks::{next_click, Click};
pub use metrics::{auc, noc, summarise, CurveSummary};
pub use simulate::{simulate, SimCase, SimOptions, Trace};
