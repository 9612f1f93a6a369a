//! Reading one or several results folders (see the results contract in README.md) into plain rows.
//!
//! Every table is read with Polars. CSV files are read with all columns as strings (no type inference,
//! so case ids such as "007" keep their leading zeros) and then cast to the contract's types; Parquet
//! columns are cast likewise. Several folders are merged: their rows are concatenated, exact duplicate
//! rows are dropped, and two rows with the same key but different values are an error naming both folders.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use polars::prelude::*;

use crate::{Error, Result};

// The rows the runner writes, read back (same types as `crate::results`).
pub use crate::results::{ExtraRow, MatrixRow, ScoreRow};

/// One row of `metrics.csv`; `extra` holds the optional strategy columns (e.g. matcher_acc).
#[derive(Clone, Debug, PartialEq)]
pub struct MetricsRow {
    /// Strategy name.
    pub strategy: String,
    /// Seed of the run.
    pub seed: i64,
    /// Task-order label of the run.
    pub order: String,
    /// Average accuracy.
    pub acc: f64,
    /// Backward transfer.
    pub bwt: f64,
    /// Forward transfer, when defined.
    pub fwt: Option<f64>,
    /// Average forgetting.
    pub forgetting: f64,
    /// Optional strategy columns by name (null where a folder lacks one).
    pub extra: BTreeMap<String, Option<f64>>,
}

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

const SCORES_COLS: [&str; 10] = [
    "strategy",
    "seed",
    "order",
    "stage",
    "trained_task",
    "eval_task",
    "eval_index",
    "case",
    "dice",
    "routed_to",
];
const MATRIX_COLS: [&str; 9] = [
    "strategy",
    "seed",
    "order",
    "stage",
    "trained_task",
    "eval_task",
    "eval_index",
    "dice",
    "n_cases",
];
const METRICS_COLS: [&str; 7] = [
    "strategy",
    "seed",
    "order",
    "acc",
    "bwt",
    "fwt",
    "forgetting",
];
const EXTRAS_COLS: [&str; 6] = ["strategy", "seed", "order", "stage", "key", "value"];

fn read_csv_as_strings(path: &Path) -> Result<DataFrame> {
    CsvReadOptions::default()
        .with_has_header(true)
        .with_infer_schema_length(Some(0))
        .try_into_reader_with_file_path(Some(path.to_path_buf()))
        .and_then(|r| r.finish())
        .map_err(|e| Error::input(format!("{}: cannot read CSV: {e}", path.display())))
}

fn read_parquet(path: &Path) -> Result<DataFrame> {
    let f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    ParquetReader::new(f)
        .finish()
        .map_err(|e| Error::input(format!("{}: cannot read Parquet: {e}", path.display())))
}

/// A table read from one file, with typed column accessors that name the file in their errors.
struct Table {
    path: PathBuf,
    df: DataFrame,
}

impl Table {
    fn names(&self) -> Vec<String> {
        self.df
            .get_column_names()
            .iter()
            .map(|s| s.to_string())
            .collect()
    }

    fn require(&self, cols: &[&str]) -> Result<()> {
        let names = self.names();
        let missing: Vec<&str> = cols
            .iter()
            .copied()
            .filter(|c| !names.iter().any(|n| n == c))
            .collect();
        if missing.is_empty() {
            Ok(())
        } else {
            Err(Error::input(format!(
                "{}: missing column(s) {} (found: {})",
                self.path.display(),
                missing.join(", "),
                names.join(", ")
            )))
        }
    }

    fn cast(&self, name: &str, dtype: &DataType) -> Result<Column> {
        let col = self
            .df
            .column(name)
            .map_err(|_| Error::input(format!("{}: missing column {name}", self.path.display())))?;
        col.strict_cast(dtype).map_err(|e| {
            Error::input(format!(
                "{}: column {name} cannot be read as {dtype}: {e}",
                self.path.display()
            ))
        })
    }

    fn strs(&self, name: &str, nullable: bool) -> Result<Vec<Option<String>>> {
        let col = self.cast(name, &DataType::String)?;
        let ca = col.str().map_err(|e| Error::internal(e.to_string()))?;
        let mut out = Vec::with_capacity(ca.len());
        for (i, v) in ca.iter().enumerate() {
            if v.is_none() && !nullable {
                return Err(self.null_err(name, i));
            }
            out.push(v.map(|s| s.to_string()));
        }
        Ok(out)
    }

    fn i64s(&self, name: &str) -> Result<Vec<i64>> {
        // Through f64 is not needed: ints are written as ints. Strings such as "3" cast cleanly.
        let col = self.cast(name, &DataType::Int64)?;
        let ca = col.i64().map_err(|e| Error::internal(e.to_string()))?;
        ca.iter()
            .enumerate()
            .map(|(i, v)| v.ok_or_else(|| self.null_err(name, i)))
            .collect()
    }

    fn f64s(&self, name: &str) -> Result<Vec<Option<f64>>> {
        let col = self.cast(name, &DataType::Float64)?;
        let ca = col.f64().map_err(|e| Error::internal(e.to_string()))?;
        Ok(ca.iter().collect())
    }

    fn f64s_required(&self, name: &str) -> Result<Vec<f64>> {
        self.f64s(name)?
            .into_iter()
            .enumerate()
            .map(|(i, v)| v.ok_or_else(|| self.null_err(name, i)))
            .collect()
    }

    fn null_err(&self, name: &str, row: usize) -> Error {
        Error::input(format!(
            "{}: column {name} is empty/null in data row {}",
            self.path.display(),
            row + 1
        ))
    }
}

fn req_strs(t: &Table, name: &str) -> Result<Vec<String>> {
    Ok(t.strs(name, false)?
        .into_iter()
        .map(|s| s.unwrap_or_default())
        .collect())
}

fn opt_strs_default(t: &Table, name: &str) -> Result<Vec<String>> {
    Ok(t.strs(name, true)?
        .into_iter()
        .map(|s| s.unwrap_or_default())
        .collect())
}

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

fn scores_rows(t: &Table) -> Result<Vec<ScoreRow>> {
    let strategy = req_strs(t, "strategy")?;
    let seed = t.i64s("seed")?;
    let order = req_strs(t, "order")?;
    let stage = t.i64s("stage")?;
    let trained = opt_strs_default(t, "trained_task")?;
    let eval_task = req_strs(t, "eval_task")?;
    let eval_index = t.i64s("eval_index")?;
    let case = req_strs(t, "case")?;
    let dice = t.f64s_required("dice")?;
    let routed = t.strs("routed_to", true)?;
    // optional (results written before the column existed have none)
    let novelty = if t.df.column("novelty").is_ok() {
        t.f64s("novelty")?
    } else {
        vec![None; strategy.len()]
    };
    let mut out = Vec::with_capacity(strategy.len());
    for i in 0..strategy.len() {
        out.push(ScoreRow {
            strategy: strategy[i].clone(),
            seed: seed[i],
            order: order[i].clone(),
            stage: stage[i],
            trained_task: trained[i].clone(),
            eval_task: eval_task[i].clone(),
            eval_index: eval_index[i],
            case: case[i].clone(),
            dice: dice[i],
            routed_to: routed[i].clone().filter(|s| !s.is_empty()),
            novelty: novelty[i],
        });
    }
    Ok(out)
}

fn matrix_rows(t: &Table) -> Result<Vec<MatrixRow>> {
    let strategy = req_strs(t, "strategy")?;
    let seed = t.i64s("seed")?;
    let order = req_strs(t, "order")?;
    let stage = t.i64s("stage")?;
    let trained = opt_strs_default(t, "trained_task")?;
    let eval_task = req_strs(t, "eval_task")?;
    let eval_index = t.i64s("eval_index")?;
    let dice = t.f64s_required("dice")?;
    let n_cases = t.i64s("n_cases")?;
    Ok((0..strategy.len())
        .map(|i| MatrixRow {
            strategy: strategy[i].clone(),
            seed: seed[i],
            order: order[i].clone(),
            stage: stage[i],
            trained_task: trained[i].clone(),
            eval_task: eval_task[i].clone(),
            eval_index: eval_index[i],
            dice: dice[i],
            n_cases: n_cases[i],
        })
        .collect())
}

fn metrics_rows(t: &Table) -> Result<Vec<MetricsRow>> {
    let strategy = req_strs(t, "strategy")?;
    let seed = t.i64s("seed")?;
    let order = req_strs(t, "order")?;
    let acc = t.f64s_required("acc")?;
    let bwt = t.f64s_required("bwt")?;
    let fwt = t.f64s("fwt")?;
    let forgetting = t.f64s_required("forgetting")?;
    let mut extra_cols: Vec<(String, Vec<Option<f64>>)> = Vec::new();
    for name in t.names() {
        if !METRICS_COLS.contains(&name.as_str()) {
            extra_cols.push((name.clone(), t.f64s(&name)?));
        }
    }
    Ok((0..strategy.len())
        .map(|i| MetricsRow {
            strategy: strategy[i].clone(),
            seed: seed[i],
            order: order[i].clone(),
            acc: acc[i],
            bwt: bwt[i],
            fwt: fwt[i],
            forgetting: forgetting[i],
            extra: extra_cols.iter().map(|(n, v)| (n.clone(), v[i])).collect(),
        })
        .collect())
}

fn extras_rows(t: &Table) -> Result<Vec<ExtraRow>> {
    let strategy = req_strs(t, "strategy")?;
    let seed = t.i64s("seed")?;
    let order = req_strs(t, "order")?;
    let stage = t.i64s("stage")?;
    let key = req_strs(t, "key")?;
    let value = t.f64s_required("value")?;
    Ok((0..strategy.len())
        .map(|i| ExtraRow {
            strategy: strategy[i].clone(),
            seed: seed[i],
            order: order[i].clone(),
            stage: stage[i],
            key: key[i].clone(),
            value: value[i],
        })
        .collect())
}

/// Rows of one folder, before merging.
struct FolderTables {
    dir: PathBuf,
    scores_cols: Vec<String>,
    matrix_cols: Vec<String>,
    extras_cols: Option<Vec<String>>,
    scores: Vec<ScoreRow>,
    matrix: Vec<MatrixRow>,
    metrics: Vec<MetricsRow>,
    extras: Vec<ExtraRow>,
}

fn read_folder(dir: &Path) -> Result<FolderTables> {
    if !dir.is_dir() {
        return Err(Error::input(format!(
            "{}: results folder not found",
            dir.display()
        )));
    }
    let scores_t = read_scores(dir)?;
    let scores = scores_rows(&scores_t)?;

    let mpath = dir.join("matrix.csv");
    if !mpath.is_file() {
        return Err(Error::input(format!(
            "{}: missing (results folder without matrix.csv)",
            mpath.display()
        )));
    }
    let matrix_t = Table {
        df: read_csv_as_strings(&mpath)?,
        path: mpath,
    };
    matrix_t.require(&MATRIX_COLS)?;
    let matrix = matrix_rows(&matrix_t)?;

    let mepath = dir.join("metrics.csv");
    if !mepath.is_file() {
        return Err(Error::input(format!(
            "{}: missing (results folder without metrics.csv)",
            mepath.display()
        )));
    }
    let metrics_t = Table {
        df: read_csv_as_strings(&mepath)?,
        path: mepath,
    };
    metrics_t.require(&METRICS_COLS)?;
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

fn sorted(v: &[String]) -> Vec<String> {
    let mut v = v.to_vec();
    v.sort();
    v
}

fn check_same_cols(
    table: &str,
    first: &FolderTables,
    cols0: &[String],
    other: &FolderTables,
    cols: &[String],
) -> Result<()> {
    if sorted(cols0) != sorted(cols) {
        return Err(Error::input(format!(
            "{}: {table} columns [{}] do not match those of {} [{}]; cannot merge these results folders",
            other.dir.display(),
            cols.join(", "),
            first.dir.display(),
            cols0.join(", ")
        )));
    }
    Ok(())
}

/// Merge one table's rows (`rows` of each folder) keyed by `key`, dropping exact duplicates (counted in
/// `dropped[table]`) and rejecting conflicting rows.
fn merge_rows<R: PartialEq, K: std::hash::Hash + Eq + std::fmt::Debug>(
    table: &str,
    folders: &[FolderTables],
    rows: impl Fn(&FolderTables) -> Vec<R>,
    key: impl Fn(&R) -> K,
    dropped_by_table: &mut BTreeMap<String, usize>,
) -> Result<Vec<R>> {
    let mut out: Vec<R> = Vec::new();
    let mut seen: HashMap<K, (usize, PathBuf)> = HashMap::new();
    let mut dropped = 0;
    for f in folders {
        let dir = f.dir.as_path();
        for r in rows(f) {
            let k = key(&r);
            match seen.get(&k) {
                Some((idx, first_dir)) => {
                    if out[*idx] == r {
                        dropped += 1;
                    } else {
                        return Err(Error::input(format!(
                            "{}: {table} row {k:?} conflicts with a different row for the same key in {}",
                            dir.display(),
                            first_dir.display()
                        )));
                    }
                }
                None => {
                    seen.insert(k, (out.len(), dir.to_path_buf()));
                    out.push(r);
                }
            }
        }
    }
    dropped_by_table.insert(table.to_string(), dropped);
    Ok(out)
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
        |r: &ScoreRow| {
            (
                r.strategy.clone(),
                r.seed,
                r.order.clone(),
                r.stage,
                r.eval_task.clone(),
                r.case.clone(),
            )
        },
        &mut dup,
    )?;
    let matrix = merge_rows(
        "matrix.csv",
        &folders,
        |f| f.matrix.clone(),
        |r: &MatrixRow| {
            (
                r.strategy.clone(),
                r.seed,
                r.order.clone(),
                r.stage,
                r.eval_task.clone(),
            )
        },
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
        |r: &MetricsRow| (r.strategy.clone(), r.seed, r.order.clone()),
        &mut dup,
    )?;
    let extras = merge_rows(
        "extras.csv",
        &folders,
        |f| f.extras.clone(),
        |r: &ExtraRow| {
            (
                r.strategy.clone(),
                r.seed,
                r.order.clone(),
                r.stage,
                r.key.clone(),
            )
        },
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
