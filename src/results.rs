//! Results tables (Polars) and atomic file writes. See the results contract in README.md ("Results"):
//! scores.parquet + scores.csv, matrix.csv, metrics.csv, extras.csv, manifest.json.

use crate::metrics::cl_metrics;
use crate::{Error, Result};
use polars::prelude::*;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// One scored test case at one stage.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ScoreRow {
    /// Strategy label.
    pub strategy: String,
    /// Experiment seed.
    pub seed: i64,
    /// Order label.
    pub order: String,
    /// Stage: tasks trained so far (0 = zero-shot).
    pub stage: i64,
    /// Task trained at this stage ("" at stage 0).
    pub trained_task: String,
    /// Task evaluated.
    pub eval_task: String,
    /// Position of the evaluated task in the order (1-based).
    pub eval_index: i64,
    /// Test case id.
    pub case: String,
    /// Dice, stored as its bit pattern in checkpoints so that resumed runs reproduce it exactly.
    #[serde(with = "f64_bits")]
    pub dice: f64,
    /// Normalised surface Dice (see `metrics::DEFINITIONS`); None in results of versions before it existed.
    #[serde(default)]
    pub nsd: Option<f64>,
    /// 95th-percentile Hausdorff distance in mm (pixels without spacing); None as `nsd`.
    #[serde(default)]
    pub hd95: Option<f64>,
    /// Expert the case was routed to (routing strategies).
    pub routed_to: Option<String>,
    /// Novelty score of the case under a routing strategy's novelty detector (EvoSAM), else None.
    #[serde(default)]
    pub novelty: Option<f64>,
}

impl ScoreRow {
    /// The row's value of a per-case metric (None: the row has none, e.g. results of an older version).
    pub fn value(&self, metric: crate::metrics::Metric) -> Option<f64> {
        use crate::metrics::Metric;
        match metric {
            Metric::Dice => Some(self.dice),
            Metric::Nsd => self.nsd,
            Metric::Hd95 => self.hd95,
        }
    }
}

/// One extra per-stage value (extras.csv).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ExtraRow {
    /// Strategy label.
    pub strategy: String,
    /// Experiment seed.
    pub seed: i64,
    /// Order label.
    pub order: String,
    /// Stage: tasks trained so far (0 = zero-shot).
    pub stage: i64,
    /// Name of the value (e.g. "n_experts").
    pub key: String,
    /// The value.
    #[serde(with = "f64_bits")]
    pub value: f64,
}

/// Serde helper: an f64 as its bit pattern (checkpoints reproduce values exactly).
pub(crate) mod f64_bits {
    use serde::{Deserialize, Deserializer, Serializer};
    pub fn serialize<S: Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(v.to_bits())
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        Ok(f64::from_bits(u64::deserialize(d)?))
    }
}

pub use crate::util::write_atomic;

/// Write a frame as CSV (atomically).
pub fn write_csv(path: &Path, df: &mut DataFrame) -> Result<()> {
    let mut buf = Vec::new();
    CsvWriter::new(&mut buf).include_header(true).finish(df)?;
    write_atomic(path, &buf)
}

/// Write a frame as Parquet (atomically).
pub fn write_parquet(path: &Path, df: &mut DataFrame) -> Result<()> {
    let mut buf = Vec::new();
    ParquetWriter::new(&mut buf).finish(df)?;
    write_atomic(path, &buf)
}

/// A named column from any value polars can build a series from.
fn col<T>(name: &str, v: T) -> Column
where
    Series: NamedFrom<T, [<T as IntoIterator>::Item]>,
    T: IntoIterator,
{
    Column::from(Series::new(name.into(), v))
}

/// The column `name` of one field of every row (strings, integers, floats, options of them).
pub(crate) fn col_of<R, T>(name: &str, rows: &[R], f: impl Fn(&R) -> T) -> Column
where
    Series: NamedFrom<Vec<T>, [T]>,
{
    col(name, rows.iter().map(f).collect::<Vec<T>>())
}

/// scores table from rows (in the given order).
pub fn scores_frame(rows: &[ScoreRow]) -> Result<DataFrame> {
    Ok(DataFrame::new_infer_height(vec![
        col_of("strategy", rows, |r| r.strategy.clone()),
        col_of("seed", rows, |r| r.seed),
        col_of("order", rows, |r| r.order.clone()),
        col_of("stage", rows, |r| r.stage),
        col_of("trained_task", rows, |r| r.trained_task.clone()),
        col_of("eval_task", rows, |r| r.eval_task.clone()),
        col_of("eval_index", rows, |r| r.eval_index),
        col_of("case", rows, |r| r.case.clone()),
        col_of("dice", rows, |r| r.dice),
        col_of("nsd", rows, |r| r.nsd),
        col_of("hd95", rows, |r| r.hd95),
        col_of("routed_to", rows, |r| r.routed_to.clone()),
        col_of("novelty", rows, |r| r.novelty),
    ])?)
}

/// One matrix entry.
#[derive(Clone, Debug, PartialEq)]
pub struct MatrixRow {
    /// Strategy label.
    pub strategy: String,
    /// Experiment seed.
    pub seed: i64,
    /// Order label.
    pub order: String,
    /// Stage: tasks trained so far (0 = zero-shot).
    pub stage: i64,
    /// Task trained at this stage ("" at stage 0).
    pub trained_task: String,
    /// Task evaluated.
    pub eval_task: String,
    /// Position of the evaluated task in the order (1-based).
    pub eval_index: i64,
    /// Mean Dice over the test cases.
    pub dice: f64,
    /// Test cases averaged.
    pub n_cases: i64,
}

type CellKey = (String, i64, String);

/// Mean Dice per (cell, stage, eval task), in first-appearance order of the cells; sums run in row order so the
/// result is bit-reproducible.
pub fn matrix_rows(rows: &[ScoreRow]) -> Vec<MatrixRow> {
    // (cell, stage, eval index) -> (trained task, eval task, Dice sum, cases)
    type Entry = (String, String, f64, i64);
    let mut order: Vec<(CellKey, i64, i64)> = Vec::new();
    let mut acc: BTreeMap<(CellKey, i64, i64), Entry> = BTreeMap::new();
    for r in rows {
        let k = (
            (r.strategy.clone(), r.seed, r.order.clone()),
            r.stage,
            r.eval_index,
        );
        let e = acc.entry(k.clone()).or_insert_with(|| {
            order.push(k.clone());
            (r.trained_task.clone(), r.eval_task.clone(), 0.0, 0)
        });
        e.2 += r.dice;
        e.3 += 1;
    }
    // keep cells in first-appearance order, stages and eval indices ascending within a cell
    let mut cell_pos: Vec<CellKey> = Vec::new();
    for (c, _, _) in &order {
        if !cell_pos.contains(c) {
            cell_pos.push(c.clone());
        }
    }
    let mut keys = order.clone();
    keys.sort_by_key(|(c, s, j)| (cell_pos.iter().position(|x| x == c).unwrap_or(0), *s, *j));
    keys.into_iter()
        .map(|k| {
            let (tt, et, sum, n) = acc[&k].clone();
            let ((strategy, seed, order), stage, eval_index) = k;
            MatrixRow {
                strategy,
                seed,
                order,
                stage,
                trained_task: tt,
                eval_task: et,
                eval_index,
                dice: sum / n as f64,
                n_cases: n,
            }
        })
        .collect()
}

/// The matrix as a frame (matrix.csv columns).
pub fn matrix_frame(m: &[MatrixRow]) -> Result<DataFrame> {
    Ok(DataFrame::new_infer_height(vec![
        col_of("strategy", m, |r| r.strategy.clone()),
        col_of("seed", m, |r| r.seed),
        col_of("order", m, |r| r.order.clone()),
        col_of("stage", m, |r| r.stage),
        col_of("trained_task", m, |r| r.trained_task.clone()),
        col_of("eval_task", m, |r| r.eval_task.clone()),
        col_of("eval_index", m, |r| r.eval_index),
        col_of("dice", m, |r| r.dice),
        col_of("n_cases", m, |r| r.n_cases),
    ])?)
}

/// R[k][j] (stages 0..=n_tasks x tasks of the order) of one run from its matrix rows; None when an entry is
/// missing (an incomplete cell).
pub(crate) fn run_matrix(
    m: &[MatrixRow],
    (strategy, seed, order): &(String, i64, String),
    n_tasks: usize,
) -> Option<Vec<Vec<f64>>> {
    let mut r = vec![vec![f64::NAN; n_tasks]; n_tasks + 1];
    for x in m
        .iter()
        .filter(|x| &x.strategy == strategy && x.seed == *seed && &x.order == order)
    {
        let (k, j) = (x.stage as usize, x.eval_index as usize);
        if k <= n_tasks && (1..=n_tasks).contains(&j) {
            r[k][j - 1] = x.dice;
        }
    }
    (!r.iter().flatten().any(|v| v.is_nan())).then_some(r)
}

/// metrics.csv: one row per complete cell; optional columns from the final stage's extras and, for routing
/// strategies, `matcher_acc` from the routed_to column (unless the strategy reports it itself).
pub fn metrics_frame(
    m: &[MatrixRow],
    scores: &[ScoreRow],
    extras: &[ExtraRow],
    n_tasks: usize,
) -> Result<DataFrame> {
    let mut cells: Vec<CellKey> = Vec::new();
    for r in m {
        let c = (r.strategy.clone(), r.seed, r.order.clone());
        if !cells.contains(&c) {
            cells.push(c);
        }
    }
    let mut extra_keys: BTreeSet<String> = BTreeSet::new();
    let mut rows: Vec<(CellKey, crate::metrics::ClMetrics, BTreeMap<String, f64>)> = Vec::new();
    for c in cells {
        let Some(r) = run_matrix(m, &c, n_tasks) else {
            continue; // incomplete cell (failed): no metrics
        };
        let met = cl_metrics(&r)?;
        let fin = n_tasks as i64;
        let mut ex: BTreeMap<String, f64> = extras
            .iter()
            .filter(|e| e.strategy == c.0 && e.seed == c.1 && e.order == c.2 && e.stage == fin)
            .map(|e| (e.key.clone(), e.value))
            .collect();
        if !ex.contains_key("matcher_acc") {
            let routed: Vec<&ScoreRow> = scores
                .iter()
                .filter(|s| {
                    s.strategy == c.0
                        && s.seed == c.1
                        && s.order == c.2
                        && s.stage == fin
                        && s.routed_to.is_some()
                })
                .collect();
            if !routed.is_empty() {
                let ok = routed
                    .iter()
                    .filter(|s| s.routed_to.as_deref() == Some(s.eval_task.as_str()))
                    .count();
                ex.insert("matcher_acc".into(), ok as f64 / routed.len() as f64);
            }
        }
        extra_keys.extend(ex.keys().cloned());
        rows.push((c, met, ex));
    }
    let mut cols = vec![
        col_of("strategy", &rows, |r| r.0 .0.clone()),
        col_of("seed", &rows, |r| r.0 .1),
        col_of("order", &rows, |r| r.0 .2.clone()),
        col_of("acc", &rows, |r| r.1.acc),
        col_of("bwt", &rows, |r| r.1.bwt),
        col_of("fwt", &rows, |r| r.1.fwt),
        col_of("forgetting", &rows, |r| r.1.forgetting),
    ];
    for k in &extra_keys {
        if [
            "strategy",
            "seed",
            "order",
            "acc",
            "bwt",
            "fwt",
            "forgetting",
        ]
        .contains(&k.as_str())
        {
            continue;
        }
        cols.push(col_of(k, &rows, |r| r.2.get(k).copied()));
    }
    Ok(DataFrame::new_infer_height(cols)?)
}

/// Extra values as a frame (extras.csv columns).
pub fn extras_frame(e: &[ExtraRow]) -> Result<DataFrame> {
    Ok(DataFrame::new_infer_height(vec![
        col_of("strategy", e, |r| r.strategy.clone()),
        col_of("seed", e, |r| r.seed),
        col_of("order", e, |r| r.order.clone()),
        col_of("stage", e, |r| r.stage),
        col_of("key", e, |r| r.key.clone()),
        col_of("value", e, |r| r.value),
    ])?)
}

/// Build and write every table into `dir`; returns the metrics frame.
pub fn write_tables(
    dir: &Path,
    scores: &[ScoreRow],
    extras: &[ExtraRow],
    n_tasks: usize,
) -> Result<DataFrame> {
    let mut s = scores_frame(scores)?;
    write_parquet(&dir.join("scores.parquet"), &mut s)?;
    write_csv(&dir.join("scores.csv"), &mut s)?;
    let m = matrix_rows(scores);
    write_csv(&dir.join("matrix.csv"), &mut matrix_frame(&m)?)?;
    let mut met = metrics_frame(&m, scores, extras, n_tasks)?;
    write_csv(&dir.join("metrics.csv"), &mut met)?;
    write_csv(&dir.join("extras.csv"), &mut extras_frame(extras)?)?;
    Ok(met)
}

/// `slice_scores.parquet` + `.csv`: the secondary per-slice table of volume tasks (the scores columns; case
/// `<volume>/<slice>`, each slice scored in 2-D with the in-plane spacing). Never enters the matrix.
pub fn write_slice_scores(dir: &Path, rows: &[ScoreRow]) -> Result<()> {
    let mut s = scores_frame(rows)?;
    write_parquet(&dir.join("slice_scores.parquet"), &mut s)?;
    write_csv(&dir.join("slice_scores.csv"), &mut s)
}

/// A lock on a results folder (`DIR/.lock`), held by the process that writes the folder's tables. It records
/// host, pid and start time and is kept fresh by a heartbeat ([`crate::lock`]), so it is correct on a shared file
/// system: a dead owner on this host is taken over at once, one on another host when its heartbeat stops.
pub struct FolderLock {
    _lock: crate::lock::Lock,
}

impl FolderLock {
    /// Take the lock of a results folder (refused while a live process holds it; a stale lock is taken over).
    pub fn acquire(dir: &Path) -> Result<FolderLock> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        Ok(FolderLock {
            _lock: crate::lock::Lock::acquire(&dir.join(".lock"), "an evosam run")?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(strategy: &str, stage: i64, j: i64, case: &str, dice: f64) -> ScoreRow {
        ScoreRow {
            strategy: strategy.into(),
            seed: 0,
            order: "given".into(),
            stage,
            trained_task: if stage == 0 {
                String::new()
            } else {
                format!("t{stage}")
            },
            eval_task: format!("t{j}"),
            eval_index: j,
            case: case.into(),
            dice,
            nsd: Some(dice * 0.9),
            hd95: Some(10.0 * (1.0 - dice)),
            routed_to: None,
            novelty: None,
        }
    }

    #[test]
    fn matrix_and_metrics_from_scores() {
        // two tasks, two cases each; R = [[.2,.4],[.8,.5],[.6,.9]] as case means
        let mut rows = Vec::new();
        for (k, vals) in [
            (0, [0.1, 0.3, 0.4, 0.4]),
            (1, [0.8, 0.8, 0.4, 0.6]),
            (2, [0.5, 0.7, 1.0, 0.8]),
        ] {
            rows.push(row("ft", k, 1, "a", vals[0]));
            rows.push(row("ft", k, 1, "b", vals[1]));
            rows.push(row("ft", k, 2, "c", vals[2]));
            rows.push(row("ft", k, 2, "d", vals[3]));
        }
        let m = matrix_rows(&rows);
        assert_eq!(m.len(), 6);
        assert_eq!(m[0].n_cases, 2);
        let want = [0.2, 0.4, 0.8, 0.5, 0.6, 0.9];
        for (r, w) in m.iter().zip(want) {
            assert!((r.dice - w).abs() < 1e-12, "{r:?}");
        }
        let mut df = metrics_frame(&m, &rows, &[], 2).unwrap();
        assert_eq!(df.height(), 1);
        let acc = df.column("acc").unwrap().f64().unwrap().get(0).unwrap();
        assert!((acc - 0.75).abs() < 1e-12);
        let bwt = df.column("bwt").unwrap().f64().unwrap().get(0).unwrap();
        assert!((bwt - (0.6 - 0.8)).abs() < 1e-12);
        let fwt = df.column("fwt").unwrap().f64().unwrap().get(0).unwrap();
        assert!((fwt - (0.5 - 0.4)).abs() < 1e-12);
        // routed rows give matcher_acc
        for r in rows.iter_mut().filter(|r| r.stage == 2) {
            r.routed_to = Some(if r.case == "d" {
                "t1".into()
            } else {
                r.eval_task.clone()
            });
        }
        let extras = vec![ExtraRow {
            strategy: "ft".into(),
            seed: 0,
            order: "given".into(),
            stage: 2,
            key: "n_experts".into(),
            value: 2.0,
        }];
        df = metrics_frame(&m, &rows, &extras, 2).unwrap();
        let ma = df
            .column("matcher_acc")
            .unwrap()
            .f64()
            .unwrap()
            .get(0)
            .unwrap();
        assert!((ma - 0.75).abs() < 1e-12);
        assert_eq!(
            df.column("n_experts").unwrap().f64().unwrap().get(0),
            Some(2.0)
        );
        // an incomplete cell gets no metrics row
        let part: Vec<ScoreRow> = rows.iter().filter(|r| r.stage < 2).cloned().collect();
        assert_eq!(
            metrics_frame(&matrix_rows(&part), &part, &[], 2)
                .unwrap()
                .height(),
            0
        );
    }

    #[test]
    fn tables_round_trip_and_atomic_writes() {
        let dir = tempfile::tempdir().unwrap();
        let rows = vec![
            row("zs", 0, 1, "a", 0.123456789012345),
            row("zs", 1, 1, "a", 1.0 / 3.0),
        ];
        write_tables(dir.path(), &rows, &[], 1).unwrap();
        for f in [
            "scores.parquet",
            "scores.csv",
            "matrix.csv",
            "metrics.csv",
            "extras.csv",
        ] {
            assert!(dir.path().join(f).is_file(), "{f}");
        }
        // parquet round trip is exact
        let f = std::fs::File::open(dir.path().join("scores.parquet")).unwrap();
        let df = ParquetReader::new(f).finish().unwrap();
        let d: Vec<f64> = df
            .column("dice")
            .unwrap()
            .f64()
            .unwrap()
            .into_no_null_iter()
            .collect();
        assert_eq!(d, vec![0.123456789012345, 1.0 / 3.0]);
        assert_eq!(df.column("routed_to").unwrap().null_count(), 2);
        let csv = std::fs::read_to_string(dir.path().join("scores.csv")).unwrap();
        assert!(
            csv.starts_with(
                "strategy,seed,order,stage,trained_task,eval_task,eval_index,case,dice,nsd,hd95,routed_to"
            ),
            "{csv}"
        );
        assert!(csv.contains("0.123456789012345"), "{csv}");
        let metrics = std::fs::read_to_string(dir.path().join("metrics.csv")).unwrap();
        assert!(
            metrics.starts_with("strategy,seed,order,acc,bwt,fwt,forgetting\n"),
            "{metrics}"
        );

        // atomic write: replaces the whole file and leaves no temporary files behind
        let p = dir.path().join("x.txt");
        write_atomic(&p, b"first").unwrap();
        write_atomic(&p, b"second").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"second");
        let leftovers: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().starts_with(".tmp-"))
            .collect();
        assert!(leftovers.is_empty());
        // a failed write (target is a folder) leaves the old content alone
        std::fs::create_dir(dir.path().join("d")).unwrap();
        assert!(write_atomic(&dir.path().join("d"), b"x").is_err());
    }

    #[test]
    fn checkpoint_rows_keep_exact_bits() {
        let r = row("zs", 0, 1, "a", 0.1 + 0.2);
        let j = serde_json::to_string(&r).unwrap();
        let back: ScoreRow = serde_json::from_str(&j).unwrap();
        assert_eq!(back.dice.to_bits(), r.dice.to_bits());
    }

    #[test]
    fn folder_lock_refuses_live_owner_and_takes_stale() {
        let dir = tempfile::tempdir().unwrap();
        let l = FolderLock::acquire(dir.path()).unwrap();
        // our own pid is alive: a second acquire fails
        assert!(FolderLock::acquire(dir.path()).is_err());
        drop(l);
        assert!(!dir.path().join(".lock").exists());
        // stale lock (no such pid) is taken over
        std::fs::write(dir.path().join(".lock"), "4294967\n").unwrap();
        let _l = FolderLock::acquire(dir.path()).unwrap();
    }
}
