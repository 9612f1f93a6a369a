//! The numbers of a comparison across experiments: per experiment each strategy's ACC, BWT and FWT (mean ± std over
//! that experiment's runs, from the same summary table `evosam report` writes for it, with its Wilcoxon test against
//! EvoSAM), their mean over experiments, the average ACC rank with the Friedman test and the Nemenyi critical
//! difference, and the ACC-against-stage curves.

use std::collections::BTreeMap;

use serde::Serialize;

use super::identity::Experiment;
use crate::metrics::Metric;
use crate::report::analysis::{strategy_order, CurveSeries, ReportData, Stat};
use crate::report::load::{load_results, MatrixRow, ResultsSet};
use crate::report::stats::{friedman, nemenyi_cd, ranks, Friedman, Wilcoxon};
use crate::Result;

/// Significance level of the Friedman and Nemenyi tests.
pub const ALPHA: f64 = 0.05;

/// The three metrics of each experiment's column group.
pub const COMPARE_METRICS: [&str; 3] = ["ACC", "BWT", "FWT"];

/// One strategy in one experiment.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ExperimentCell {
    /// Runs (seeds x orders) of the strategy in this experiment's metrics.csv.
    pub n_runs: usize,
    /// ACC, BWT, FWT over those runs (FWT `None` when undefined, e.g. a one-task stream).
    pub stats: [Option<Stat>; 3],
    /// This experiment's paired Wilcoxon test against EvoSAM (pooled final-stage cases); None for EvoSAM itself
    /// or when the experiment has no EvoSAM.
    pub test: Option<Wilcoxon>,
}

/// One row of the comparison table.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CompareRow {
    /// Strategy name.
    pub strategy: String,
    /// Per experiment (in [`CompareData::experiments`] order); None where the experiment has no such strategy.
    pub cells: Vec<Option<ExperimentCell>>,
    /// ACC, BWT, FWT: the mean of the experiment means over the experiments that have a value.
    pub mean: [Option<f64>; 3],
    /// How many experiments each `mean` is over.
    pub mean_n: [usize; 3],
    /// Average ACC rank over the experiments (1 = best), for the strategies every experiment has.
    pub avg_rank: Option<f64>,
}

/// One experiment of the comparison.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ExperimentInfo {
    /// Its name, fingerprint and folders.
    pub experiment: Experiment,
    /// Its tasks, in display order.
    pub tasks: Vec<String>,
    /// The reference of its Wilcoxon tests, when it has one.
    pub reference: Option<String>,
    /// The most runs any strategy has in it.
    pub max_runs: usize,
}

/// Everything the comparison report tabulates and draws.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CompareData {
    /// The per-case metric of ACC, BWT and FWT.
    pub metric: Metric,
    /// The experiments, in the order given.
    pub experiments: Vec<ExperimentInfo>,
    /// One row per strategy of any experiment, in display order.
    pub rows: Vec<CompareRow>,
    /// The strategies every experiment has: the ones ranked and tested.
    pub ranked: Vec<String>,
    /// Friedman test of their ACC over the experiments (blocks); None with fewer than 2 of either.
    pub friedman: Option<Friedman>,
    /// Nemenyi critical difference of the average ranks at [`ALPHA`], with at least 3 experiments.
    pub cd: Option<f64>,
    /// ACC after each stage (mean over the tasks trained so far) per experiment; `task` holds the experiment
    /// label.
    pub acc_curves: Vec<CurveSeries>,
    /// Things worth telling the user.
    pub notes: Vec<String>,
}

/// Per run, ACC after stage k >= 1: mean of R[k][j] over the positions j <= k.
fn acc_curves(rs: &ResultsSet, label: &str, strategies: &[String]) -> Vec<CurveSeries> {
    // (strategy, seed, order) -> stage -> values of the tasks trained so far
    type RunStages = BTreeMap<i64, Vec<f64>>;
    let mut runs: BTreeMap<(String, i64, String), RunStages> = BTreeMap::new();
    for r in rs.matrix.iter().filter(|r: &&MatrixRow| r.stage >= 1) {
        if r.eval_index <= r.stage && r.dice.is_finite() {
            runs.entry((r.strategy.clone(), r.seed, r.order.clone()))
                .or_default()
                .entry(r.stage)
                .or_default()
                .push(r.dice);
        }
    }
    let mut out = Vec::new();
    for s in strategies {
        let mut by_stage: BTreeMap<i64, Vec<f64>> = BTreeMap::new();
        for ((strategy, _, _), stages) in &runs {
            if strategy == s {
                for (k, v) in stages {
                    by_stage
                        .entry(*k)
                        .or_default()
                        .push(v.iter().sum::<f64>() / v.len() as f64);
                }
            }
        }
        let stats: Vec<(i64, Stat)> = by_stage
            .into_iter()
            .filter_map(|(k, v)| Stat::of(&v).map(|st| (k, st)))
            .collect();
        if !stats.is_empty() {
            out.push(CurveSeries {
                strategy: s.clone(),
                task: label.to_string(),
                stages: stats.iter().map(|(k, _)| *k).collect(),
                mean: stats.iter().map(|(_, s)| s.mean).collect(),
                std: stats.iter().map(|(_, s)| s.std).collect(),
                n: stats.iter().map(|(_, s)| s.n).collect(),
            });
        }
    }
    out
}

impl CompareData {
    /// Load each experiment's folders (merged as parts of one experiment) and compute the comparison in `metric`.
    pub fn compute(experiments: &[Experiment], metric: Metric) -> Result<CompareData> {
        let mut notes = Vec::new();
        let mut per: Vec<(ExperimentInfo, ReportData, Vec<CurveSeries>)> = Vec::new();
        for e in experiments {
            let rs = load_results(&e.run_dirs)?;
            let data = ReportData::compute_metric(&rs, metric)?;
            let curves = acc_curves(&rs.in_metric(metric)?, &e.label, &data.strategies);
            notes.extend(data.notes.iter().map(|n| format!("{}: {n}", e.label)));
            let info = ExperimentInfo {
                experiment: e.clone(),
                tasks: data.tasks.clone(),
                reference: data.table.reference.clone(),
                max_runs: data.table.rows.iter().map(|r| r.n_runs).max().unwrap_or(0),
            };
            per.push((info, data, curves));
        }
        let strategies = strategy_order(
            per.iter()
                .flat_map(|(_, d, _)| d.strategies.iter().map(|s| s.as_str())),
        );
        let mut rows: Vec<CompareRow> =
            strategies
                .iter()
                .map(|s| {
                    let cells: Vec<Option<ExperimentCell>> =
                        per.iter()
                            .map(|(_, d, _)| {
                                d.table.rows.iter().find(|r| &r.strategy == s).map(|r| {
                                    ExperimentCell {
                                        n_runs: r.n_runs,
                                        stats: [r.acc, r.bwt, r.fwt],
                                        test: r.test_all.clone(),
                                    }
                                })
                            })
                            .collect();
                    let mut mean = [None; 3];
                    let mut mean_n = [0; 3];
                    for m in 0..3 {
                        let v: Vec<f64> = cells
                            .iter()
                            .filter_map(|c| c.as_ref().and_then(|c| c.stats[m]).map(|s| s.mean))
                            .collect();
                        mean_n[m] = v.len();
                        mean[m] = (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64);
                    }
                    CompareRow {
                        strategy: s.clone(),
                        cells,
                        mean,
                        mean_n,
                        avg_rank: None,
                    }
                })
                .collect();
        // Ranked: the strategies with an ACC in every experiment (a complete block design).
        let ranked_idx: Vec<usize> = (0..rows.len())
            .filter(|&i| {
                rows[i]
                    .cells
                    .iter()
                    .all(|c| c.as_ref().is_some_and(|c| c.stats[0].is_some()))
            })
            .collect();
        let left_out: Vec<&str> = (0..rows.len())
            .filter(|i| !ranked_idx.contains(i))
            .map(|i| rows[i].strategy.as_str())
            .collect();
        if !left_out.is_empty() {
            notes.push(format!(
                "not in every experiment, so left out of the ranks and the Friedman test: {}",
                left_out.join(", ")
            ));
        }
        let up = metric.higher_is_better();
        // blocks = experiments, treatments = ranked strategies
        let table: Vec<Vec<f64>> = (0..per.len())
            .map(|e| {
                ranked_idx
                    .iter()
                    .map(|&i| {
                        rows[i].cells[e]
                            .as_ref()
                            .and_then(|c| c.stats[0])
                            .map(|s| s.mean)
                            .unwrap_or(f64::NAN)
                    })
                    .collect()
            })
            .collect();
        let fr = friedman(&table, up);
        let avg: Vec<f64> = match &fr {
            Some(f) => f.avg_ranks.clone(),
            // one experiment or one strategy: the ranks are still defined
            None if !ranked_idx.is_empty() && !table.is_empty() => {
                let mut sum = vec![0.0; ranked_idx.len()];
                for row in &table {
                    for (s, r) in sum.iter_mut().zip(ranks(row, up)) {
                        *s += r;
                    }
                }
                sum.iter().map(|s| s / table.len() as f64).collect()
            }
            None => Vec::new(),
        };
        for (&i, r) in ranked_idx.iter().zip(&avg) {
            rows[i].avg_rank = Some(*r);
        }
        if fr.is_none() {
            notes.push(format!(
                "Friedman test skipped: it needs at least 2 experiments and 2 strategies in all of them ({} experiment(s), {} strategy(ies))",
                per.len(),
                ranked_idx.len()
            ));
        }
        let cd = (per.len() >= 3 && ranked_idx.len() >= 2)
            .then(|| nemenyi_cd(ranked_idx.len(), per.len(), ALPHA));
        let ranked = ranked_idx
            .iter()
            .map(|&i| rows[i].strategy.clone())
            .collect();
        let acc_curves = per.iter().flat_map(|(_, _, c)| c.iter().cloned()).collect();
        Ok(CompareData {
            metric,
            experiments: per.into_iter().map(|(i, _, _)| i).collect(),
            rows,
            ranked,
            friedman: fr,
            cd,
            acc_curves,
            notes,
        })
    }
}
