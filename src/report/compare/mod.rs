//! `evosam report A B ... --compare`: strategies compared across experiments in one paper table.
//!
//! A continual-learning paper's main table has methods as rows and benchmarks as column groups. Here each benchmark
//! is an experiment: the folders given are grouped by experiment name and spec fingerprint ([`identity`]; parts of
//! one experiment still merge as in `evosam report`), each experiment is summarised exactly as its own report would
//! (ACC, BWT, FWT from metrics.csv, the paired Wilcoxon test against EvoSAM), and across experiments the strategies
//! are ranked by ACC with a Friedman test and, from 3 experiments on, a Nemenyi critical difference ([`analysis`]).
//! A strategy an experiment lacks is shown as missing, never as 0, and is left out of the ranks.
//!
//! Writes `tables/compare.{md,tex,csv}`, `tables/compare_friedman.csv`, `plots/compare_acc.{svg,png}` (one ACC
//! panel per experiment), `plots/compare_cd.{svg,png}` (with >= 3 experiments) and `plots/compare_data.json`.

use std::path::{Path, PathBuf};

pub mod analysis;
pub mod identity;
pub mod tables;

#[cfg(test)]
mod tests;

pub use analysis::CompareData;
pub use identity::{
    check_one_experiment, experiment_of, group_experiments, mixed_experiments_error, Experiment,
    ExperimentId,
};

use super::{plots, write_file, ReportSummary};
use crate::metrics::Metric;
use crate::{Error, Result};

/// Group `run_dirs` by experiment, compare them in `metric` and write the comparison under `out_dir`. At least two
/// experiments are needed.
pub fn write_compare_report(
    run_dirs: &[PathBuf],
    out_dir: &Path,
    metric: Metric,
) -> Result<ReportSummary> {
    let experiments = group_experiments(run_dirs)?;
    if experiments.len() < 2 {
        return Err(Error::input(format!(
            "--compare needs folders of at least two experiments; these all belong to {} (use evosam report \
             without --compare for one experiment)",
            experiments.first().map(|e| e.label.as_str()).unwrap_or("none")
        )));
    }
    let data = CompareData::compute(&experiments, metric)?;
    write_compare_data(&data, out_dir)
}

/// Render a computed comparison into `out_dir/tables` and `out_dir/plots`.
pub fn write_compare_data(d: &CompareData, out_dir: &Path) -> Result<ReportSummary> {
    let plots_dir = out_dir.join("plots");
    let tables_dir = out_dir.join("tables");
    for dir in [&plots_dir, &tables_dir] {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    let mut notes = d.notes.clone();
    let mut files = vec![
        write_file(&tables_dir.join("compare.md"), &tables::to_markdown(d))?,
        write_file(&tables_dir.join("compare.tex"), &tables::to_latex(d))?,
        write_file(&tables_dir.join("compare.csv"), &tables::to_csv(d))?,
        write_file(
            &tables_dir.join("compare_friedman.csv"),
            &tables::friedman_csv(d),
        )?,
    ];
    let strategies: Vec<String> = d.rows.iter().map(|r| r.strategy.clone()).collect();
    let labels: Vec<String> = d
        .experiments
        .iter()
        .map(|e| e.experiment.label.clone())
        .collect();
    if d.acc_curves.is_empty() {
        notes.push("matrix.csv has no rows: no ACC curves".into());
    } else {
        let fig = plots::CompareAccFigure {
            curves: &d.acc_curves,
            experiments: &labels,
            strategies: &strategies,
            metric: d.metric,
        };
        files.extend(plots::save(&fig, &plots_dir, "compare_acc")?);
    }
    match d.cd {
        Some(cd) => {
            let ranks: Vec<f64> = d
                .ranked
                .iter()
                .filter_map(|s| {
                    d.rows
                        .iter()
                        .find(|r| &r.strategy == s)
                        .and_then(|r| r.avg_rank)
                })
                .collect();
            let fig = plots::CdFigure {
                strategies: &d.ranked,
                ranks: &ranks,
                cd,
                n_experiments: d.experiments.len(),
                all: &strategies,
            };
            files.extend(plots::save(&fig, &plots_dir, "compare_cd")?);
        }
        None => notes.push(format!(
            "no critical-difference figure: it needs at least 3 experiments ({} given)",
            d.experiments.len()
        )),
    }
    let json = serde_json::to_string_pretty(d)
        .map_err(|e| Error::internal(format!("compare data JSON: {e}")))?;
    files.push(write_file(&plots_dir.join("compare_data.json"), &json)?);
    Ok(ReportSummary {
        out_dir: out_dir.to_path_buf(),
        files,
        notes,
    })
}
