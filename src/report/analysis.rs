//! The numbers behind every plot and table, as plain structs computed from a [`ResultsSet`].
//!
//! Conventions: a "run" is one (strategy, seed, order). Means and standard deviations are taken over
//! runs (seeds x orders); std is the sample standard deviation (n-1), 0 for a single run.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use super::load::{ResultsSet, ScoreRow};
pub use super::stats::Stat;
use super::stats::Wilcoxon;

mod steps;
use steps::{
    confusions, count_non_finite, curves, final_stages, growth, heatmaps, run_key, summary_bars,
    table_rows,
};

/// Strategies whose position (and so colour and marker) is fixed: the built-in presets, in the registry's
/// order; others follow in sorted order.
pub static KNOWN_STRATEGIES: std::sync::LazyLock<Vec<&'static str>> =
    std::sync::LazyLock::new(|| {
        static BUILTIN: std::sync::LazyLock<crate::strategy::Registry> =
            std::sync::LazyLock::new(crate::strategy::Registry::default);
        BUILTIN.preset_names()
    });

/// The reference strategy of the significance tests.
pub const REFERENCE_STRATEGY: &str = "evosam";

/// Stable display order of strategies: the known list first (in that order), then the rest sorted.
pub fn strategy_order<'a>(names: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    let set: BTreeSet<&str> = names.into_iter().collect();
    let mut out: Vec<String> = KNOWN_STRATEGIES
        .iter()
        .filter(|k| set.contains(*k))
        .map(|s| s.to_string())
        .collect();
    for s in &set {
        if !KNOWN_STRATEGIES.contains(s) {
            out.push(s.to_string());
        }
    }
    out
}

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
    /// One of [`GROWTH_KEYS`].
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
    /// Task columns, in display order.
    pub tasks: Vec<String>,
    /// One row per strategy, in display order.
    pub rows: Vec<TableRow>,
    /// The reference strategy of the tests, when present.
    pub reference: Option<String>,
}

/// Everything the report draws and tabulates.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ReportData {
    /// Strategies in display order.
    pub strategies: Vec<String>,
    /// Tasks in display order.
    pub tasks: Vec<String>,
    /// Forgetting curves.
    pub curves: Vec<CurveSeries>,
    /// Accuracy matrices, one per strategy.
    pub heatmaps: Vec<HeatmapData>,
    /// Summary bars, per (strategy, metric).
    pub summary: Vec<MetricBar>,
    /// Routing confusion, one per routing strategy.
    pub confusions: Vec<ConfusionData>,
    /// Parameter growth series.
    pub growth: Vec<GrowthSeries>,
    /// The summary table.
    pub table: SummaryTable,
    /// Data-quality notes for the report (left-out values, skipped tests, dropped duplicates).
    pub notes: Vec<String>,
    /// The interactive study (curves, NoC bars, table), when the results have one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interactive: Option<super::interactive::InteractiveData>,
}

impl ReportData {
    /// Compute every figure's and table's numbers from the rows of a results set, in named steps:
    /// data-quality notes, display orders, curves, heatmaps, summary bars, routing confusion, parameter growth
    /// and the summary table with its significance tests.
    pub fn compute(rs: &ResultsSet) -> ReportData {
        let mut notes = Vec::new();
        let n_bad = count_non_finite(rs);
        if n_bad > 0 {
            notes.push(format!(
                "{n_bad} row(s) with NaN/infinite values: left out of means, stds and tests"
            ));
        }
        let strategies = strategy_order(
            rs.matrix
                .iter()
                .map(|r| r.strategy.as_str())
                .chain(rs.scores.iter().map(|r| r.strategy.as_str()))
                .chain(rs.metrics.iter().map(|r| r.strategy.as_str())),
        );
        let tasks = task_order(rs);
        let curves = curves(rs, &strategies, &tasks);
        let heatmaps = heatmaps(rs, &strategies);
        let summary = summary_bars(rs, &strategies);
        let final_scores = final_stages(
            rs.scores
                .iter()
                .map(|r| (run_key(&r.strategy, r.seed, &r.order), r.stage)),
        );
        let is_final = |r: &ScoreRow| {
            final_scores.get(&run_key(&r.strategy, r.seed, &r.order)) == Some(&r.stage)
        };
        let confusions = confusions(rs, &strategies, &tasks, &is_final);
        let growth = growth(rs, &strategies);
        if rs.extras.is_empty() {
            notes.push("extras.csv absent or empty: no parameter-growth figure".into());
        }
        let reference = strategies
            .iter()
            .find(|s| s.as_str() == REFERENCE_STRATEGY)
            .cloned();
        if reference.is_none() {
            notes.push(format!(
                "no strategy named \"{REFERENCE_STRATEGY}\": the significance tests are skipped"
            ));
        }
        let rows = table_rows(
            rs,
            &strategies,
            &tasks,
            &summary,
            reference.as_deref(),
            &is_final,
        );
        for (t, n) in &rs.duplicates_dropped {
            if *n > 0 {
                notes.push(format!(
                    "{t}: {n} exact duplicate row(s) dropped while merging"
                ));
            }
        }
        let interactive = rs
            .interactive
            .as_ref()
            .and_then(|s| super::interactive::compute(&rs.clicks, s, &strategies));
        ReportData {
            interactive,
            strategies,
            tasks: tasks.clone(),
            curves,
            heatmaps,
            summary,
            confusions,
            growth,
            table: SummaryTable {
                tasks,
                rows,
                reference,
            },
            notes,
        }
    }
}

/// Task display order: positions in the order labelled "given" (else the first order label), then the
/// remaining tasks sorted by name.
pub fn task_order(rs: &ResultsSet) -> Vec<String> {
    let orders: BTreeSet<&str> = rs
        .matrix
        .iter()
        .map(|r| r.order.as_str())
        .chain(rs.scores.iter().map(|r| r.order.as_str()))
        .collect();
    let reference = if orders.contains("given") {
        Some("given")
    } else {
        orders.iter().next().copied()
    };
    let mut pos: BTreeMap<String, i64> = BTreeMap::new();
    let all = rs
        .matrix
        .iter()
        .map(|r| (r.order.as_str(), r.eval_task.as_str(), r.eval_index))
        .chain(
            rs.scores
                .iter()
                .map(|r| (r.order.as_str(), r.eval_task.as_str(), r.eval_index)),
        );
    let mut names: BTreeSet<String> = BTreeSet::new();
    for (o, t, j) in all {
        names.insert(t.to_string());
        if Some(o) == reference {
            let e = pos.entry(t.to_string()).or_insert(j);
            *e = (*e).min(j);
        }
    }
    let mut first: Vec<(i64, String)> = pos.into_iter().map(|(t, j)| (j, t)).collect();
    first.sort();
    let mut out: Vec<String> = first.into_iter().map(|(_, t)| t).collect();
    for n in names {
        if !out.contains(&n) {
            out.push(n);
        }
    }
    out
}
