//! One results folder read into rows (scores, matrix, metrics, extras), before merging.

use std::path::{Path, PathBuf};

use crate::results::{ExtraRow, Frame, MatrixRow, MetricsRow, ScoreRow, Table};
use crate::{Error, Result};

/// The scores table of a folder: Parquet when there is one, else CSV.
fn read_scores(dir: &Path) -> Result<Frame> {
    let pq = dir.join("scores.parquet");
    let csv = dir.join("scores.csv");
    if pq.is_file() {
        Frame::open(&pq)
    } else if csv.is_file() {
        Frame::open(&csv)
    } else {
        Err(Error::input(format!(
            "{}: not a results folder (neither scores.parquet nor scores.csv found)",
            dir.display()
        )))
    }
}

/// `dir/name`, a CSV file the folder must have.
fn read_required_csv(dir: &Path, name: &str) -> Result<Frame> {
    let path = dir.join(name);
    if !path.is_file() {
        return Err(Error::input(format!(
            "{}: missing (results folder without {name})",
            path.display()
        )));
    }
    Frame::open(&path)
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
    let scores = ScoreRow::from_frame(&scores_t)?;

    let matrix_t = read_required_csv(dir, "matrix.csv")?;
    let matrix = MatrixRow::from_frame(&matrix_t)?;
    let metrics = MetricsRow::from_frame(&read_required_csv(dir, "metrics.csv")?)?;

    let epath = dir.join("extras.csv");
    let (extras, extras_cols) = if epath.is_file()
        && std::fs::metadata(&epath)
            .map(|m| m.len() > 0)
            .unwrap_or(false)
    {
        let t = Frame::open(&epath)?;
        if t.df.width() == 0 {
            (Vec::new(), None)
        } else {
            (ExtraRow::from_frame(&t)?, Some(t.names()))
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
