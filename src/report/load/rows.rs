//! The contract's column names, and a table's columns turned into rows.

use std::collections::BTreeMap;

use super::table::{opt_strs_default, req_strs, Table};

use crate::results::{ExtraRow, MatrixRow, ScoreRow};
use crate::Result;

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

pub(super) const SCORES_COLS: [&str; 10] = [
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
pub(super) const MATRIX_COLS: [&str; 9] = [
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
pub(super) const METRICS_COLS: [&str; 7] = [
    "strategy",
    "seed",
    "order",
    "acc",
    "bwt",
    "fwt",
    "forgetting",
];
pub(super) const EXTRAS_COLS: [&str; 6] = ["strategy", "seed", "order", "stage", "key", "value"];

/// The columns that name a run, first in every table: strategy, seed, order.
fn run_key(t: &Table) -> Result<(Vec<String>, Vec<i64>, Vec<String>)> {
    Ok((
        req_strs(t, "strategy")?,
        t.i64s("seed")?,
        req_strs(t, "order")?,
    ))
}

pub(super) fn scores_rows(t: &Table) -> Result<Vec<ScoreRow>> {
    let (strategy, seed, order) = run_key(t)?;
    let stage = t.i64s("stage")?;
    let trained = opt_strs_default(t, "trained_task")?;
    let eval_task = req_strs(t, "eval_task")?;
    let eval_index = t.i64s("eval_index")?;
    let case = req_strs(t, "case")?;
    let dice = t.f64s_required("dice")?;
    let routed = t.strs("routed_to", true)?;
    // optional (results written before the column existed have none)
    let optional = |name: &str| -> Result<Vec<Option<f64>>> {
        if t.df.column(name).is_ok() {
            t.f64s(name)
        } else {
            Ok(vec![None; strategy.len()])
        }
    };
    let (novelty, nsd, hd95) = (optional("novelty")?, optional("nsd")?, optional("hd95")?);
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
            nsd: nsd[i],
            hd95: hd95[i],
            routed_to: routed[i].clone().filter(|s| !s.is_empty()),
            novelty: novelty[i],
        });
    }
    Ok(out)
}

pub(super) fn matrix_rows(t: &Table) -> Result<Vec<MatrixRow>> {
    let (strategy, seed, order) = run_key(t)?;
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

pub(super) fn metrics_rows(t: &Table) -> Result<Vec<MetricsRow>> {
    let (strategy, seed, order) = run_key(t)?;
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

pub(super) fn extras_rows(t: &Table) -> Result<Vec<ExtraRow>> {
    let (strategy, seed, order) = run_key(t)?;
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
