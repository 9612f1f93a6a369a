//! The plain data types of the report: what each plot and table is drawn from.

use serde::Serialize;

use super::super::stats::{Stat, Wilcoxon};

/// Dice of one task against training stage for one strategy (forgetting curve), over runs.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CurveSeries {
    /// Strategy name.
    pub strategy: String,
    /// The evaluated task.
    pub task: String,
    /// Training stages (0: before training), ascending.
    pub stages: Vec<i64>,
    /// Mean Dice per stage.
    pub mean: Vec<f64>,
    /// Std of the Dice per stage.
    pub std: Vec<f64>,
    /// Runs per stage.
    pub n: Vec<usize>,
}

/// Accuracy matrix of one strategy: rows = stages 0..=T, columns = position j in the order (1-based).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct HeatmapData {
    /// Strategy name.
    pub strategy: String,
    /// Row stages, from 0 (or the lowest) to the last.
    pub stages: Vec<i64>,
    /// Task name when every run has the same task at that position, else "task j".
    pub col_labels: Vec<String>,
    /// `cells[row][col]`, `None` where no run has a value.
    pub cells: Vec<Vec<Option<Stat>>>,
}

/// One bar of the summary chart.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct MetricBar {
    /// Strategy name.
    pub strategy: String,
    /// "ACC", "BWT", "FWT" or "Forgetting".
    pub metric: String,
    /// Over runs; None when no run has a finite value.
    pub stat: Option<Stat>,
}

/// The summary metrics, in panel and column order.
pub const METRICS: [&str; 4] = ["ACC", "BWT", "FWT", "Forgetting"];

/// Routing confusion matrix of one routing strategy at the final stage, summed over runs and cases.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ConfusionData {
    /// Strategy name.
    pub strategy: String,
    /// Rows: the true tasks, in display order.
    pub true_labels: Vec<String>,
    /// Columns: the experts routed to (task names, then `base` and any others).
    pub routed_labels: Vec<String>,
    /// `counts[true][routed]`: evaluated cases.
    pub counts: Vec<Vec<u64>>,
    /// Row-normalised counts (0 for an empty row).
    pub fractions: Vec<Vec<f64>>,
}

/// An extras.csv key against stage for one strategy, over runs.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct GrowthSeries {
    /// Strategy name.
    pub strategy: String,
    /// One of [`GROWTH_KEYS`] or [`ROUTING_KEYS`].
    pub key: String,
    /// Stages, ascending.
    pub stages: Vec<i64>,
    /// Mean value per stage.
    pub mean: Vec<f64>,
    /// Std per stage.
    pub std: Vec<f64>,
    /// Runs per stage.
    pub n: Vec<usize>,
}

/// The extras.csv keys drawn as parameter growth.
pub const GROWTH_KEYS: [&str; 2] = ["trainable_params", "n_experts"];

/// The extras.csv keys of the routing table (`tables/routing.md`): per stage, where the test images of the tasks
/// trained so far went (their own expert, the base model, the chain) and the share of not-yet-trained tasks'
/// images sent to the base model (definitions in the results contract).
pub const ROUTING_KEYS: [&str; 4] = [
    "route_seen_own",
    "route_seen_base",
    "route_seen_chain",
    "route_new_base",
];

/// One row of the summary table.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TableRow {
    /// Strategy name.
    pub strategy: String,
    /// Runs (seed x order) in metrics.csv.
    pub n_runs: usize,
    /// Average accuracy (final-stage mean Dice).
    pub acc: Option<Stat>,
    /// Backward transfer.
    pub bwt: Option<Stat>,
    /// Forward transfer (None where a run has none).
    pub fwt: Option<Stat>,
    /// Average forgetting.
    pub forgetting: Option<Stat>,
    /// Final-stage Dice per task, in `SummaryTable::tasks` order.
    pub task_dice: Vec<Option<Stat>>,
    /// Test against the reference over all (seed, order, task, case) pairs; None for the reference.
    pub test_all: Option<Wilcoxon>,
    /// Test per task.
    pub test_task: Vec<Option<Wilcoxon>>,
}

/// The summary table: one row per strategy.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SummaryTable {
    /// The per-case metric of the task columns and of ACC/BWT/FWT/forgetting.
    pub metric: crate::metrics::Metric,
    /// Task columns, in display order.
    pub tasks: Vec<String>,
    /// One row per strategy, in display order.
    pub rows: Vec<TableRow>,
    /// The reference strategy of the tests, when present.
    pub reference: Option<String>,
}
