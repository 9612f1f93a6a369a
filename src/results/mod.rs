//! Results tables (Polars) and atomic file writes. See the results contract in README.md ("Results"):
//! scores.parquet + scores.csv, matrix.csv, metrics.csv, extras.csv, manifest.json.
//!
//! Each table is one row struct declared with [`schema::table!`], which gives it its columns, frame, writer and
//! reader ([`Table`]); [`frame`] reads a file back.

pub mod frame;
pub mod schema;

use crate::metrics::cl_metrics;
use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

pub use frame::Frame;
use schema::table;
pub use schema::Table;

/// A cell of the experiment grid, the key of a run: strategy x seed x order. Ordered as the tuple of its fields.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CellKey {
    /// Strategy label.
    pub strategy: String,
    /// Experiment seed.
    pub seed: i64,
    /// Order label.
    pub order: String,
}

impl CellKey {
    /// The key of a run.
    pub fn new(strategy: &str, seed: i64, order: &str) -> CellKey {
        CellKey {
            strategy: strategy.to_string(),
            seed,
            order: order.to_string(),
        }
    }

    /// Whether a row's (strategy, seed, order) are this cell's.
    pub fn is(&self, strategy: &str, seed: i64, order: &str) -> bool {
        self.strategy == strategy && self.seed == seed && self.order == order
    }
}

/// `cell()`, the [`CellKey`] of a row, for row types with strategy, seed and order fields.
macro_rules! cell_of {
    ($($t:ty),+) => {$(
        impl $t {
            /// The run this row belongs to.
            pub fn cell(&self) -> $crate::results::CellKey {
                $crate::results::CellKey::new(&self.strategy, self.seed, &self.order)
            }
        }
    )+};
}
pub(crate) use cell_of;
cell_of!(ScoreRow, ExtraRow, MatrixRow, MetricsRow);

table! {
/// One scored test case at one stage (scores.parquet, scores.csv; slice_scores.* of volume tasks).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
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
    pub trained_task: String as OrEmpty,
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
    pub nsd: Option<f64> as Optional,
    /// 95th-percentile Hausdorff distance in mm (pixels without spacing); None as `nsd`.
    #[serde(default)]
    pub hd95: Option<f64> as Optional,
    /// Expert the case was routed to (routing strategies).
    pub routed_to: Option<String>,
    /// Novelty score of the case under a routing strategy's novelty detector (EvoSAM), else None.
    #[serde(default)]
    pub novelty: Option<f64> as Optional,
}
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

table! {
/// One extra per-stage value (extras.csv).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
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

table! {
/// One matrix entry (matrix.csv).
#[derive(Clone, Debug, Default, PartialEq)]
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
    pub trained_task: String as OrEmpty,
    /// Task evaluated.
    pub eval_task: String,
    /// Position of the evaluated task in the order (1-based).
    pub eval_index: i64,
    /// Mean Dice over the test cases.
    pub dice: f64,
    /// Test cases averaged.
    pub n_cases: i64,
}
}

table! {
/// One row of `metrics.csv`; `extra` holds the optional strategy columns (e.g. matcher_acc).
#[derive(Clone, Debug, Default, PartialEq)]
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
    ..
    /// Optional strategy columns by name (null where a run or a folder lacks one), after the fixed columns in
    /// name order.
    pub extra: BTreeMap<String, Option<f64>>,
}
}

/// Mean Dice per (cell, stage, eval task), in first-appearance order of the cells; sums run in row order so the
/// result is bit-reproducible.
pub fn matrix_rows(rows: &[ScoreRow]) -> Vec<MatrixRow> {
    // (cell, stage, eval index) -> (trained task, eval task, Dice sum, cases)
    type Entry = (String, String, f64, i64);
    let mut order: Vec<(CellKey, i64, i64)> = Vec::new();
    let mut acc: BTreeMap<(CellKey, i64, i64), Entry> = BTreeMap::new();
    for r in rows {
        let k = (r.cell(), r.stage, r.eval_index);
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
            let (
                CellKey {
                    strategy,
                    seed,
                    order,
                },
                stage,
                eval_index,
            ) = k;
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

/// R[k][j] (stages 0..=n_tasks x tasks of the order) of one run from its matrix rows; None when an entry is
/// missing (an incomplete cell).
pub(crate) fn run_matrix(m: &[MatrixRow], cell: &CellKey, n_tasks: usize) -> Option<Vec<Vec<f64>>> {
    let mut r = vec![vec![f64::NAN; n_tasks]; n_tasks + 1];
    for x in m.iter().filter(|x| cell.is(&x.strategy, x.seed, &x.order)) {
        let (k, j) = (x.stage as usize, x.eval_index as usize);
        if k <= n_tasks && (1..=n_tasks).contains(&j) {
            r[k][j - 1] = x.dice;
        }
    }
    (!r.iter().flatten().any(|v| v.is_nan())).then_some(r)
}

/// Share of a run's final-stage test cases routed to their own task's expert (`matcher_acc`); None when the run
/// routes no case (not a routing strategy).
pub fn matcher_acc(scores: &[ScoreRow], cell: &CellKey, stage: i64) -> Option<f64> {
    let routed: Vec<&ScoreRow> = scores
        .iter()
        .filter(|s| {
            cell.is(&s.strategy, s.seed, &s.order) && s.stage == stage && s.routed_to.is_some()
        })
        .collect();
    if routed.is_empty() {
        return None;
    }
    let ok = routed
        .iter()
        .filter(|s| s.routed_to.as_deref() == Some(s.eval_task.as_str()))
        .count();
    Some(ok as f64 / routed.len() as f64)
}

/// metrics.csv rows: one per complete cell, in first-appearance order; the optional columns are the final
/// stage's extras and, for routing strategies, [`matcher_acc`] (unless the strategy reports it itself).
pub fn metrics_rows(
    m: &[MatrixRow],
    scores: &[ScoreRow],
    extras: &[ExtraRow],
    n_tasks: usize,
) -> Result<Vec<MetricsRow>> {
    let mut cells: Vec<CellKey> = Vec::new();
    for r in m {
        let c = r.cell();
        if !cells.contains(&c) {
            cells.push(c);
        }
    }
    let fin = n_tasks as i64;
    let mut rows = Vec::new();
    for c in cells {
        let Some(r) = run_matrix(m, &c, n_tasks) else {
            continue; // incomplete cell (failed): no metrics
        };
        let met = cl_metrics(&r)?;
        let mut extra: BTreeMap<String, Option<f64>> = extras
            .iter()
            .filter(|e| c.is(&e.strategy, e.seed, &e.order) && e.stage == fin)
            .map(|e| (e.key.clone(), Some(e.value)))
            .collect();
        if !extra.contains_key("matcher_acc") {
            if let Some(a) = matcher_acc(scores, &c, fin) {
                extra.insert("matcher_acc".into(), Some(a));
            }
        }
        let CellKey {
            strategy,
            seed,
            order,
        } = c;
        rows.push(MetricsRow {
            strategy,
            seed,
            order,
            acc: met.acc,
            bwt: met.bwt,
            fwt: met.fwt,
            forgetting: met.forgetting,
            extra,
        });
    }
    Ok(rows)
}

/// Build and write every table into `dir`; returns the metrics rows.
pub fn write_tables(
    dir: &Path,
    scores: &[ScoreRow],
    extras: &[ExtraRow],
    n_tasks: usize,
) -> Result<Vec<MetricsRow>> {
    ScoreRow::write(
        scores,
        &[&dir.join("scores.parquet"), &dir.join("scores.csv")],
    )?;
    let m = matrix_rows(scores);
    MatrixRow::write(&m, &[&dir.join("matrix.csv")])?;
    let met = metrics_rows(&m, scores, extras, n_tasks)?;
    MetricsRow::write(&met, &[&dir.join("metrics.csv")])?;
    ExtraRow::write(extras, &[&dir.join("extras.csv")])?;
    Ok(met)
}

/// `slice_scores.parquet` + `.csv`: the secondary per-slice table of volume tasks (the scores columns; case
/// `<volume>/<slice>`, each slice scored in 2-D with the in-plane spacing). Never enters the matrix.
pub fn write_slice_scores(dir: &Path, rows: &[ScoreRow]) -> Result<()> {
    ScoreRow::write(
        rows,
        &[
            &dir.join("slice_scores.parquet"),
            &dir.join("slice_scores.csv"),
        ],
    )
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
mod tests;
