//! The steps of [`super::ReportData::compute`], one function per figure or table, each a pure function of the
//! results set (and of the display orders computed before it).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::super::load::{CellKey, ResultsSet, ScoreRow};
use super::super::stats::Stat;
use super::super::stats::{wilcoxon_signed_rank, Wilcoxon};
use super::types::{
    ConfusionData, CurveSeries, GrowthSeries, HeatmapData, MetricBar, TableRow, METRICS,
};

/// (seed, order, eval_task, case): the pairing key of the significance tests.
pub(super) type PairKey<'a> = (i64, &'a str, &'a str, &'a str);

pub(super) fn stats_by<K: Ord + Clone>(groups: BTreeMap<K, Vec<f64>>) -> BTreeMap<K, Stat> {
    groups
        .into_iter()
        .filter_map(|(k, v)| Stat::of(&v).map(|s| (k, s)))
        .collect()
}

/// Rows with a NaN or infinite value, over all tables.
pub(super) fn count_non_finite(rs: &ResultsSet) -> usize {
    let bad = |v: f64| !v.is_finite();
    rs.matrix.iter().filter(|r| bad(r.dice)).count()
        + rs.scores.iter().filter(|r| bad(r.dice)).count()
        + rs.metrics
            .iter()
            .filter(|r| bad(r.acc) || bad(r.bwt) || bad(r.forgetting))
            .count()
        + rs.extras.iter().filter(|r| bad(r.value)).count()
}

/// The last stage of each run among `(run, stage)` pairs.
pub(super) fn final_stages(rows: impl Iterator<Item = (CellKey, i64)>) -> HashMap<CellKey, i64> {
    let mut out: HashMap<CellKey, i64> = HashMap::new();
    for (k, stage) in rows {
        let e = out.entry(k).or_insert(stage);
        *e = (*e).max(stage);
    }
    out
}

/// The (stage, stat) points of one (strategy, name) series in per-(strategy, name, stage) statistics.
pub(super) fn series_points(
    st: &BTreeMap<(String, String, i64), Stat>,
    s: &str,
    name: &str,
) -> Vec<(i64, Stat)> {
    let (s, name) = (s.to_string(), name.to_string());
    st.range((s.clone(), name.clone(), i64::MIN)..=(s, name, i64::MAX))
        .map(|((_, _, k), v)| (*k, *v))
        .collect()
}

/// Forgetting curves: matrix Dice per (strategy, task, stage) over runs.
pub(super) fn curves(rs: &ResultsSet, strategies: &[String], tasks: &[String]) -> Vec<CurveSeries> {
    let mut g: BTreeMap<(String, String, i64), Vec<f64>> = BTreeMap::new();
    for r in &rs.matrix {
        g.entry((r.strategy.clone(), r.eval_task.clone(), r.stage))
            .or_default()
            .push(r.dice);
    }
    let st = stats_by(g);
    let mut curves = Vec::new();
    for s in strategies {
        for t in tasks {
            let pts = series_points(&st, s, t);
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
    curves
}

/// Accuracy matrices: matrix Dice per (strategy, stage, eval_index).
pub(super) fn heatmaps(rs: &ResultsSet, strategies: &[String]) -> Vec<HeatmapData> {
    let mut heatmaps = Vec::new();
    for s in strategies {
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
    heatmaps
}

/// Summary metrics from metrics.csv: one bar per (strategy, metric).
pub(super) fn summary_bars(rs: &ResultsSet, strategies: &[String]) -> Vec<MetricBar> {
    let mut summary = Vec::new();
    for s in strategies {
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
    summary
}

/// Routing confusion at the final stage of each run, per routing strategy.
pub(super) fn confusions(
    rs: &ResultsSet,
    strategies: &[String],
    tasks: &[String],
    is_final: &dyn Fn(&ScoreRow) -> bool,
) -> Vec<ConfusionData> {
    let mut confusions = Vec::new();
    for s in strategies {
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
        let routed: BTreeSet<&str> = rows.iter().filter_map(|r| r.routed_to.as_deref()).collect();
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
    confusions
}

/// Series of extras.csv `keys` against stage, per (key, strategy), over runs (parameter growth: [`super::GROWTH_KEYS`];
/// routing: [`super::ROUTING_KEYS`]).
pub(super) fn extras_series(
    rs: &ResultsSet,
    strategies: &[String],
    keys: &[&str],
) -> Vec<GrowthSeries> {
    let mut gg: BTreeMap<(String, String, i64), Vec<f64>> = BTreeMap::new();
    for r in &rs.extras {
        if keys.contains(&r.key.as_str()) {
            gg.entry((r.strategy.clone(), r.key.clone(), r.stage))
                .or_default()
                .push(r.value);
        }
    }
    let gs = stats_by(gg);
    let mut growth = Vec::new();
    for key in keys {
        for s in strategies {
            let pts = series_points(&gs, s, key);
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
    growth
}

/// The summary table's rows: metrics, final-stage Dice per task, and the paired Wilcoxon tests of every
/// strategy against the reference on final-stage per-case Dice.
pub(super) fn table_rows(
    rs: &ResultsSet,
    strategies: &[String],
    tasks: &[String],
    summary: &[MetricBar],
    reference: Option<&str>,
    is_final: &dyn Fn(&ScoreRow) -> bool,
) -> Vec<TableRow> {
    let final_matrix = final_stages(rs.matrix.iter().map(|r| (r.cell(), r.stage)));
    let mut fin: BTreeMap<(String, String), Vec<f64>> = BTreeMap::new();
    for r in &rs.matrix {
        if final_matrix.get(&r.cell()) == Some(&r.stage) {
            fin.entry((r.strategy.clone(), r.eval_task.clone()))
                .or_default()
                .push(r.dice);
        }
    }
    let fin = stats_by(fin);
    // Final-stage per-case dice keyed by (seed, order, task, case), per strategy.
    let mut per_case: HashMap<&str, BTreeMap<PairKey, f64>> = HashMap::new();
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
    let ref_cases = reference.and_then(|r| per_case.get(r)).unwrap_or(&empty);
    let mut rows = Vec::new();
    for s in strategies {
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
        let (test_all, test_task) = match reference {
            Some(r) if r != s.as_str() => {
                let mine = per_case.get(s.as_str()).unwrap_or(&empty);
                let pairs: Vec<(&PairKey, f64, f64)> = mine
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
    rows
}
