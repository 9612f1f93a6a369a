//! One results folder read into rows (scores, matrix, metrics, extras), before merging.

use std::path::{Path, PathBuf};

use super::rows::{
    extras_rows, matrix_rows, metrics_rows, scores_rows, MetricsRow, EXTRAS_COLS, MATRIX_COLS,
    METRICS_COLS, SCORES_COLS,
};
use super::table::{read_csv_as_strings, read_parquet, Table};
use crate::results::{ExtraRow, MatrixRow, ScoreRow};
use crate::{Error, Result};

fn read_scores(dir: &Path) -> Result<Table> {
    let pq = dir.join("scores.parquet");
    let csv = dir.join("scores.csv");
    let (path, df) = if pq.is_file() {
        (pq.clone(), read_parquet(&pq)?)
    } else if csv.is_file() {
        (csv.clone(), read_csv_as_strings(&csv)?)
    } else {
        return Err(Error::input(format!(
            "{}: not a results folder (neither scores.parquet nor scores.csv found)",
            dir.display()
        )));
    };
    let t = Table { path, df };
    t.require(&SCORES_COLS)?;
    Ok(t)
}

/// `dir/name`, a CSV file the folder must have, with the contract's columns `cols`.
fn read_required_csv(dir: &Path, name: &str, cols: &[&str]) -> Result<Table> {
    let path = dir.join(name);
    if !path.is_file() {
        return Err(Error::input(format!(
            "{}: missing (results folder without {name})",
            path.display()
        )));
    }
    let t = Table {
        df: read_csv_as_strings(&path)?,
        path,
    };
    t.require(cols)?;
    Ok(t)
}

/// Rows of one folder, before merging.
pub(super) struct FolderTables {
    pub(super) dir: PathBuf,
    pub(super) scores_cols: Vec<String>,
    pub(super) matrix_cols: Vec<String>,
    pub(super) extras_cols: Option<Vec<String>>,
    pub(super) scores: Vec<ScoreRow>,
    pub(super) matrix: Vec<MatrixRow>,
    pub(super) metrics: Vec<MetricsRow>,
    pub(super) extras: Vec<ExtraRow>,
}

pub(super) fn read_folder(dir: &Path) -> Result<FolderTables> {
    if !dir.is_dir() {
        return Err(Error::input(format!(
            "{}: results folder not found",
            dir.display()
        )));
    }
    let scores_t = read_scores(dir)?;
    let scores = scores_rows(&scores_t)?;

    let matrix_t = read_required_csv(dir, "matrix.csv", &MATRIX_COLS)?;
    let matrix = matrix_rows(&matrix_t)?;
    let metrics_t = read_required_csv(dir, "metrics.csv", &METRICS_COLS)?;
    let metrics = metrics_rows(&metrics_t)?;

    let epath = dir.join("extras.csv");
    let (extras, extras_cols) = if epath.is_file()
        && std::fs::metadata(&epath)
            .map(|m| m.len() > 0)
            .unwrap_or(false)
    {
        let t = Table {
            df: read_csv_as_strings(&epath)?,
            path: epath,
        };
        if t.df.width() == 0 {
            (Vec::new(), None)
        } else {
            t.require(&EXTRAS_COLS)?;
            let cols = t.names();
            (extras_rows(&t)?, Some(cols))
        }
    } else {
        (Vec::new(), None)
    };

    Ok(FolderTables {
        dir: dir.to_path_buf(),
        scores_cols: scores_t.names(),
        matrix_cols: matrix_t.names(),
        extras_cols,
        scores,
        matrix,
        metrics,
        extras,
    })
}
