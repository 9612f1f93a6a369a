//! Reading one or several results folders (see the results contract in README.md) into plain rows.
//!
//! Every table is read with Polars by the reader its declaration gives it (`crate::results::Table`). CSV files are
//! read with all columns as strings (no type inference, so case ids such as "007" keep their leading zeros) and
//! then cast to the contract's types; Parquet columns are cast likewise. Several folders are merged: their rows are concatenated, exact duplicate
//! rows are dropped, and two rows with the same key but different values are an error naming both folders.
//!
//! By job: `folder` reads one results folder, `merge` merges the folders' rows, `metric` re-expresses a set in
//! another per-case metric; this module holds the public types and [`load_results`].

use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::{Error, Result};

mod folder;
mod merge;
mod metric;

use folder::{read_folder, FolderTables};
use merge::{check_same_cols, merge_rows};

// The rows the runner writes, read back (same types as `crate::results`).
pub use crate::results::{CellKey, ExtraRow, MatrixRow, MetricsRow, ScoreRow};

/// The merged contents of one or more results folders.
#[derive(Clone, Debug, Default)]
pub struct ResultsSet {
    /// The folders read.
    pub run_dirs: Vec<PathBuf>,
    /// Per-case scores.
    pub scores: Vec<ScoreRow>,
    /// Accuracy-matrix rows.
    pub matrix: Vec<MatrixRow>,
    /// Per-run metrics.
    pub metrics: Vec<MetricsRow>,
    /// Per-stage extra values (parameter counts, experts).
    pub extras: Vec<ExtraRow>,
    /// Exact duplicate rows dropped while merging, per table.
    pub duplicates_dropped: BTreeMap<String, usize>,
    /// The interactive study's rows and settings (`clicks.parquet`, `interactive.json`), when run.
    pub clicks: Vec<crate::interactive::rows::ClickRow>,
    /// The study's settings from `interactive.json` (targets, report points, time model); None when no run
    /// had the study.
    pub interactive: Option<crate::interactive::InteractiveSpec>,
}

/// Read and merge results folders.
pub fn load_results(run_dirs: &[PathBuf]) -> Result<ResultsSet> {
    if run_dirs.is_empty() {
        return Err(Error::input("no results folder given"));
    }
    let folders: Vec<FolderTables> = run_dirs
        .iter()
        .map(|d| read_folder(d))
        .collect::<Result<_>>()?;
    let first = &folders[0];
    for f in &folders[1..] {
        check_same_cols("scores", first, &first.scores_cols, f, &f.scores_cols)?;
        check_same_cols("matrix.csv", first, &first.matrix_cols, f, &f.matrix_cols)?;
        if let (Some(a), Some(b)) = (&first.extras_cols, &f.extras_cols) {
            check_same_cols("extras.csv", first, a, f, b)?;
        }
    }
    let mut dup = BTreeMap::new();
    let scores = merge_rows(
        "scores",
        &folders,
        |f| f.scores.clone(),
        |r: &ScoreRow| (r.cell(), r.stage, r.eval_task.clone(), r.case.clone()),
        &mut dup,
    )?;
    let matrix = merge_rows(
        "matrix.csv",
        &folders,
        |f| f.matrix.clone(),
        |r: &MatrixRow| (r.cell(), r.stage, r.eval_task.clone()),
        &mut dup,
    )?;
    // metrics.csv: optional strategy columns may differ between folders (e.g. one part ran only the
    // baselines); a column absent in one folder reads as null there.
    let all_extra: Vec<String> = {
        let mut s: Vec<String> = folders
            .iter()
            .flat_map(|f| f.metrics.iter().flat_map(|m| m.extra.keys().cloned()))
            .collect();
        s.sort();
        s.dedup();
        s
    };
    let norm_metrics = |f: &FolderTables| -> Vec<MetricsRow> {
        f.metrics
            .iter()
            .map(|m| {
                let mut m = m.clone();
                for k in &all_extra {
                    m.extra.entry(k.clone()).or_insert(None);
                }
                m
            })
            .collect()
    };
    let metrics = merge_rows(
        "metrics.csv",
        &folders,
        norm_metrics,
        |r: &MetricsRow| r.cell(),
        &mut dup,
    )?;
    let extras = merge_rows(
        "extras.csv",
        &folders,
        |f| f.extras.clone(),
        |r: &ExtraRow| (r.cell(), r.stage, r.key.clone()),
        &mut dup,
    )?;
    if scores.is_empty() && matrix.is_empty() {
        return Err(Error::input(format!(
            "{}: the results tables are empty",
            run_dirs
                .iter()
                .map(|d| d.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    let (clicks, interactive) = super::interactive::load(run_dirs)?;
    Ok(ResultsSet {
        run_dirs: run_dirs.to_vec(),
        scores,
        matrix,
        metrics,
        extras,
        duplicates_dropped: dup,
        clicks,
        interactive,
    })
}
