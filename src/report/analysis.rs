//! The numbers behind every plot and table, as plain structs computed from a [`ResultsSet`].
//!
//! Conventions: a "run" is one (strategy, seed, order). Means and standard deviations are taken over
//! runs (seeds x orders); std is the sample standard deviation (n-1), 0 for a single run.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use super::load::{ResultsSet, ScoreRow};
pub use super::stats::Stat;

mod steps;
mod types;
use steps::{
    confusions, count_non_finite, curves, extras_series, final_stages, heatmaps, summary_bars,
    table_rows,
};
pub use types::{
    ConfusionData, CurveSeries, GrowthSeries, HeatmapData, MetricBar, SummaryTable, TableRow,
    GROWTH_KEYS, METRICS, ROUTING_KEYS,
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

/// Everything the report draws and tabulates.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ReportData {
    /// The per-case metric everything is drawn in (`evosam report --metric`).
    pub metric: crate::metrics::Metric,
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
    /// Routing shares per stage ([`ROUTING_KEYS`]), for routing strategies.
    pub routing: Vec<GrowthSeries>,
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
        let final_scores = final_stages(rs.scores.iter().map(|r| (r.cell(), r.stage)));
        let is_final = |r: &ScoreRow| final_scores.get(&r.cell()) == Some(&r.stage);
        let confusions = confusions(rs, &strategies, &tasks, &is_final);
        let growth = extras_series(rs, &strategies, &GROWTH_KEYS);
        let routing = extras_series(rs, &strategies, &ROUTING_KEYS);
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
            routing,
            table: SummaryTable {
                metric: crate::metrics::Metric::Dice,
                tasks,
                rows,
                reference,
            },
            notes,
            metric: crate::metrics::Metric::Dice,
        }
    }

    /// [`ReportData::compute`] in another per-case metric: the scores re-expressed in it
    /// ([`ResultsSet::in_metric`]), the matrix and ACC/BWT/FWT/forgetting recomputed.
    pub fn compute_metric(
        rs: &ResultsSet,
        metric: crate::metrics::Metric,
    ) -> crate::Result<ReportData> {
        let mut d = Self::compute(&rs.in_metric(metric)?);
        d.metric = metric;
        d.table.metric = metric;
        if !metric.higher_is_better() {
            d.notes.push(format!(
                "{}: lower is better; BWT = mean (R[j][j] - R[T][j]), FWT = mean (R[0][j] - R[j-1][j]) and \
                 forgetting = mean (R[T][j] - min_l R[l][j]), so that positive BWT/FWT still improve",
                metric.label()
            ));
        }
        Ok(d)
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
