//! The numbers behind every plot and table, as plain structs computed from a [`ResultsSet`].
//!
//! Conventions: a "run" is one (strategy, seed, order). Means and standard deviations are taken over
//! runs (seeds x orders); std is the sample standard deviation (n-1), 0 for a single run.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::Serialize;

use super::load::ResultsSet;
use super::stats::{mean_std, wilcoxon_signed_rank, Wilcoxon};

/// Strategies whose position (and so colour and marker) is fixed; others follow in sorted order.
pub const KNOWN_STRATEGIES: [&str; 9] = [
    "evosam",
    "evosam-oracle",
    "zeroshot",
    "finetune",
    "ewc",
    "online-ewc",
    "replay",
    "lwf",
    "joint",
];

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

/// Mean, sample std (n-1) and count.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Stat {
    pub mean: f64,
    pub std: f64,
    pub n: usize,
}

impl Stat {
    /// Statistics of the finite values (NaN/inf are left out; `n` counts the values used).
    pub fn of(values: &[f64]) -> Option<Stat> {
        let finite: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
        let values = finite.as_slice();
        mean_std(values).map(|(mean, std)| Stat {
            mean,
            std,
            n: values.len(),
        })
    }
}

/// Dice of one task against training stage for one strategy (forgetting curve), over runs.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CurveSeries {
    pub strategy: String,
    pub task: String,
    pub stages: Vec<i64>,
    pub mean: Vec<f64>,
    pub std: Vec<f64>,
    pub n: Vec<usize>,
}

/// Accuracy matrix of one strategy: rows = stages 0..=T, columns = position j in the order (1-based).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct HeatmapData {
    pub strategy: String,
    pub stages: Vec<i64>,
    /// Task name when every run has the same task at that position, else "task j".
    pub col_labels: Vec<String>,
    /// `cells[row][col]`, `None` where no run has a value.
    pub cells: Vec<Vec<Option<Stat>>>,
}

/// One bar of the summary chart.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct MetricBar {
    pub strategy: String,
    /// "ACC", "BWT", "FWT" or "Forgetting".
    pub metric: String,
    pub stat: Option<Stat>,
}

pub const METRICS: [&str; 4] = ["ACC", "BWT", "FWT", "Forgetting"];

/// Routing confusion matrix of one routing strategy at the final stage, summed over runs and cases.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ConfusionData {
    pub strategy: String,
    pub true_labels: Vec<String>,
    pub routed_labels: Vec<String>,
    pub counts: Vec<Vec<u64>>,
    /// Row-normalised counts (0 for an empty row).
    pub fractions: Vec<Vec<f64>>,
}

/// An extras.csv key against stage for one strategy, over runs.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct GrowthSeries {
    pub strategy: String,
    pub key: String,
    pub stages: Vec<i64>,
    pub mean: Vec<f64>,
    pub std: Vec<f64>,
    pub n: Vec<usize>,
}

pub const GROWTH_KEYS: [&str; 2] = ["trainable_params", "n_experts"];

/// One row of the summary table.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TableRow {
    pub strategy: String,
    /// Runs (seed x order) in metrics.csv.
    pub n_runs: usize,
    pub acc: Option<Stat>,
    pub bwt: Option<Stat>,
    pub fwt: Option<Stat>,
    pub forgetting: Option<Stat>,
    /// Final-stage Dice per task, in `SummaryTable::tasks` order.
    pub task_dice: Vec<Option<Stat>>,
    /// Test against the reference over all (seed, order, task, case) pairs; None for the reference.
    pub test_all: Option<Wilcoxon>,
    /// Test per task.
    pub test_task: Vec<Option<Wilcoxon>>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SummaryTable {
    pub tasks: Vec<String>,
    pub rows: Vec<TableRow>,
    /// The reference strategy of the tests, when present.
    pub reference: Option<String>,
}

/// Everything the report draws and tabulates.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ReportData {
    pub strategies: Vec<String>,
    pub tasks: Vec<String>,
    pub curves: Vec<CurveSeries>,
    pub heatmaps: Vec<HeatmapData>,
    pub summary: Vec<MetricBar>,
    pub confusions: Vec<ConfusionData>,
    pub growth: Vec<GrowthSeries>,
    pub table: SummaryTable,
    pub notes: Vec<String>,
    /// The interactive study (curves, NoC bars, table), when the results have one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interactive: Option<super::interactive::InteractiveData>,
}

type RunKey = (String, i64, String); // strategy, seed, order
/// (seed, order, eval_task, case): the pairing key of the significance tests.
type CaseKey<'a> = (i64, &'a str, &'a str, &'a str);

fn stats_by<K: Ord + Clone>(groups: BTreeMap<K, Vec<f64>>) -> BTreeMap<K, Stat> {
    groups
        .into_iter()
        .filter_map(|(k, v)| Stat::of(&v).map(|s| (k, s)))
        .collect()
}

impl ReportData {
    pub fn compute(rs: &ResultsSet) -> ReportData {
        let mut notes = Vec::new();
        let bad = |v: f64| !v.is_finite();
        let n_bad = rs.matrix.iter().filter(|r| bad(r.dice)).count()
            + rs.scores.iter().filter(|r| bad(r.dice)).count()
            + rs.metrics
                .iter()
                .filter(|r| bad(r.acc) || bad(r.bwt) || bad(r.forgetting))
                .count()
            + rs.extras.iter().filter(|r| bad(r.value)).count();
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

        // Forgetting curves: matrix dice per (strategy, task, stage) over runs.
        let mut g: BTreeMap<(String, String, i64), Vec<f64>> = BTreeMap::new();
        for r in &rs.matrix {
            g.entry((r.strategy.clone(), r.eval_task.clone(), r.stage))
                .or_default()
                .push(r.dice);
        }
        let st = stats_by(g);
        let mut curves = Vec::new();
        for s in &strategies {
            for t in &tasks {
                let pts: Vec<(i64, Stat)> = st
                    .range((s.clone(), t.clone(), i64::MIN)..=(s.clone(), t.clone(), i64::MAX))
                    .map(|((_, _, k), v)| (*k, *v))
                    .collect();
                if pts.is_empty() {
                    continue;
                }
                curves.push(CurveSeries {
                    strategy: s.clone(),
                    task: t.clone(),
                    stages: pts.iter().map(|p| p.0).collect(),
                    mean: pts.iter().map(|p| p.1.mean).collect(),
                    std: pts.iter().map(|p| p.1.std).collect(),
                    n: pts.iter().map(|p| p.1.n).collect(),
                });
            }
        }

        // Heatmaps: matrix dice per (strategy, stage, eval_index).
        let mut heatmaps = Vec::new();
        for s in &strategies {
            let rows: Vec<_> = rs.matrix.iter().filter(|r| &r.strategy == s).collect();
            if rows.is_empty() {
                continue;
            }
            let max_stage = rows.iter().map(|r| r.stage).max().unwrap_or(0);
            let min_stage = rows.iter().map(|r| r.stage).min().unwrap_or(0).min(0);
            let max_pos = rows.iter().map(|r| r.eval_index).max().unwrap_or(0).max(1);
            let stages: Vec<i64> = (min_stage..=max_stage).collect();
            let mut names: BTreeMap<i64, BTreeSet<&str>> = BTreeMap::new();
            let mut vals: BTreeMap<(i64, i64), Vec<f64>> = BTreeMap::new();
            for r in &rows {
                names
                    .entry(r.eval_index)
                    .or_default()
                    .insert(r.eval_task.as_str());
                vals.entry((r.stage, r.eval_index))
                    .or_default()
                    .push(r.dice);
            }
            let col_labels: Vec<String> = (1..=max_pos)
                .map(|j| match names.get(&j) {
                    Some(set) if set.len() == 1 => {
                        set.iter().next().map(|s| s.to_string()).unwrap_or_default()
                    }
                    _ => format!("task {j}"),
                })
                .collect();
            let vs = stats_by(vals);
            let cells = stages
                .iter()
                .map(|k| (1..=max_pos).map(|j| vs.get(&(*k, j)).copied()).collect())
                .collect();
            heatmaps.push(HeatmapData {
                strategy: s.clone(),
                stages,
                col_labels,
                cells,
            });
        }

        // Summary metrics from metrics.csv.
        let mut summary = Vec::new();
        for s in &strategies {
            let rows: Vec<_> = rs.metrics.iter().filter(|r| &r.strategy == s).collect();
            if rows.is_empty() {
                continue;
            }
            let acc: Vec<f64> = rows.iter().map(|r| r.acc).collect();
            let bwt: Vec<f64> = rows.iter().map(|r| r.bwt).collect();
            let fwt: Vec<f64> = rows
                .iter()
                .filter_map(|r| r.fwt)
                .filter(|v| v.is_finite())
                .collect();
            let fgt: Vec<f64> = rows.iter().map(|r| r.forgetting).collect();
            for (m, v) in METRICS.iter().zip([acc, bwt, fwt, fgt]) {
                summary.push(MetricBar {
                    strategy: s.clone(),
                    metric: m.to_string(),
                    stat: Stat::of(&v),
                });
            }
        }

        // Routing confusion at the final stage of each run.
        let mut final_stage_scores: HashMap<RunKey, i64> = HashMap::new();
        for r in &rs.scores {
            let e = final_stage_scores
                .entry((r.strategy.clone(), r.seed, r.order.clone()))
                .or_insert(r.stage);
            *e = (*e).max(r.stage);
        }
        let is_final = |r: &super::load::ScoreRow| {
            final_stage_scores.get(&(r.strategy.clone(), r.seed, r.order.clone())) == Some(&r.stage)
        };
        let mut confusions = Vec::new();
        for s in &strategies {
            let rows: Vec<_> = rs
                .scores
                .iter()
                .filter(|r| &r.strategy == s && r.routed_to.is_some() && is_final(r))
                .collect();
            if rows.is_empty() {
                continue;
            }
            let present: BTreeSet<&str> = rows.iter().map(|r| r.eval_task.as_str()).collect();
            let mut true_labels: Vec<String> = tasks
                .iter()
                .filter(|t| present.contains(t.as_str()))
                .cloned()
                .collect();
            for p in &present {
                if !true_labels.iter().any(|t| t == p) {
                    true_labels.push(p.to_string());
                }
            }
            let mut routed_labels = true_labels.clone();
            let routed: BTreeSet<&str> =
                rows.iter().filter_map(|r| r.routed_to.as_deref()).collect();
            if routed.contains("base") && !routed_labels.iter().any(|t| t == "base") {
                routed_labels.push("base".into());
            }
            for p in &routed {
                if !routed_labels.iter().any(|t| t == p) {
                    routed_labels.push(p.to_string());
                }
            }
            let mut counts = vec![vec![0u64; routed_labels.len()]; true_labels.len()];
            for r in &rows {
                let i = true_labels.iter().position(|t| *t == r.eval_task);
                let j = routed_labels
                    .iter()
                    .position(|t| Some(t.as_str()) == r.routed_to.as_deref());
                if let (Some(i), Some(j)) = (i, j) {
                    counts[i][j] += 1;
                }
            }
            let fractions = counts
                .iter()
                .map(|row| {
                    let tot: u64 = row.iter().sum();
                    row.iter()
                        .map(|&c| if tot > 0 { c as f64 / tot as f64 } else { 0.0 })
                        .collect()
                })
                .collect();
            confusions.push(ConfusionData {
                strategy: s.clone(),
                true_labels,
                routed_labels,
                counts,
                fractions,
            });
        }

        // Parameter growth from extras.csv.
        let mut gg: BTreeMap<(String, String, i64), Vec<f64>> = BTreeMap::new();
        for r in &rs.extras {
            if GROWTH_KEYS.contains(&r.key.as_str()) {
                gg.entry((r.strategy.clone(), r.key.clone(), r.stage))
                    .or_default()
                    .push(r.value);
            }
        }
        let gs = stats_by(gg);
        let mut growth = Vec::new();
        for key in GROWTH_KEYS {
            for s in &strategies {
                let pts: Vec<(i64, Stat)> = gs
                    .range(
                        (s.clone(), key.to_string(), i64::MIN)
                            ..=(s.clone(), key.to_string(), i64::MAX),
                    )
                    .map(|((_, _, k), v)| (*k, *v))
                    .collect();
                if pts.is_empty() {
                    continue;
                }
                growth.push(GrowthSeries {
                    strategy: s.clone(),
                    key: key.to_string(),
                    stages: pts.iter().map(|p| p.0).collect(),
                    mean: pts.iter().map(|p| p.1.mean).collect(),
                    std: pts.iter().map(|p| p.1.std).collect(),
                    n: pts.iter().map(|p| p.1.n).collect(),
                });
            }
        }
        if rs.extras.is_empty() {
            notes.push("extras.csv absent or empty: no parameter-growth figure".into());
        }

        // Summary table.
        let mut final_stage_matrix: HashMap<RunKey, i64> = HashMap::new();
        for r in &rs.matrix {
            let e = final_stage_matrix
                .entry((r.strategy.clone(), r.seed, r.order.clone()))
                .or_insert(r.stage);
            *e = (*e).max(r.stage);
        }
        let mut fin: BTreeMap<(String, String), Vec<f64>> = BTreeMap::new();
        for r in &rs.matrix {
            if final_stage_matrix.get(&(r.strategy.clone(), r.seed, r.order.clone()))
                == Some(&r.stage)
            {
                fin.entry((r.strategy.clone(), r.eval_task.clone()))
                    .or_default()
                    .push(r.dice);
            }
        }
        let fin = stats_by(fin);
        let reference = strategies
            .iter()
            .find(|s| s.as_str() == REFERENCE_STRATEGY)
            .cloned();
        if reference.is_none() {
            notes.push(format!(
                "no strategy named \"{REFERENCE_STRATEGY}\": the significance tests are skipped"
            ));
        }
        // Final-stage per-case dice keyed by (seed, order, task, case), per strategy.
        let mut per_case: HashMap<&str, BTreeMap<CaseKey, f64>> = HashMap::new();
        for r in rs.scores.iter().filter(|r| is_final(r)) {
            per_case.entry(r.strategy.as_str()).or_default().insert(
                (
                    r.seed,
                    r.order.as_str(),
                    r.eval_task.as_str(),
                    r.case.as_str(),
                ),
                r.dice,
            );
        }
        let empty = BTreeMap::new();
        let ref_cases = reference
            .as_ref()
            .and_then(|r| per_case.get(r.as_str()))
            .unwrap_or(&empty);
        let mut rows = Vec::new();
        for s in &strategies {
            let ms: Vec<_> = rs.metrics.iter().filter(|r| &r.strategy == s).collect();
            let bar = |m: &str| {
                summary
                    .iter()
                    .find(|b| &b.strategy == s && b.metric == m)
                    .and_then(|b| b.stat)
            };
            let task_dice = tasks
                .iter()
                .map(|t| fin.get(&(s.clone(), t.clone())).copied())
                .collect();
            let (test_all, test_task) = match &reference {
                Some(r) if r != s => {
                    let mine = per_case.get(s.as_str()).unwrap_or(&empty);
                    let pairs: Vec<(&CaseKey, f64, f64)> = mine
                        .iter()
                        .filter_map(|(k, v)| ref_cases.get(k).map(|rv| (k, *v, *rv)))
                        .filter(|p| p.1.is_finite() && p.2.is_finite())
                        .collect();
                    let test = |sel: &dyn Fn(&str) -> bool| {
                        let (x, y): (Vec<f64>, Vec<f64>) = pairs
                            .iter()
                            .filter(|p| sel(p.0 .2))
                            .map(|p| (p.1, p.2))
                            .unzip();
                        wilcoxon_signed_rank(&x, &y)
                    };
                    let all = test(&|_| true);
                    let per: Vec<Option<Wilcoxon>> =
                        tasks.iter().map(|t| test(&|x: &str| x == t)).collect();
                    (all, per)
                }
                _ => (None, vec![None; tasks.len()]),
            };
            rows.push(TableRow {
                strategy: s.clone(),
                n_runs: ms.len(),
                acc: bar("ACC"),
                bwt: bar("BWT"),
                fwt: bar("FWT"),
                forgetting: bar("Forgetting"),
                task_dice,
                test_all,
                test_task,
            });
        }
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
