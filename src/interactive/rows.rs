//! Results of the study: one row per (case, click) in `clicks.parquet`/`clicks.csv`, and the per-run summary
//! (NoC@τ, fail@τ, Dice@k, AUC, seconds@τ) in `interactive.csv`.

use std::collections::BTreeMap;

use polars::prelude::*;
use serde::{Deserialize, Serialize};

use super::simulate::Trace;
use crate::metrics::clicks::summarise;
use crate::results::schema::table;
use crate::results::{write_atomic, CellKey, Table};
use crate::spec::InteractiveSpec;
use crate::{Error, Result};

/// The settings file next to the tables: what the report needs to recompute the summary (targets, report
/// points, time model) and the metric definitions.
pub const SETTINGS_FILE: &str = "interactive.json";

/// `eval_task` of the row that pools every evaluated task of a run.
pub const ALL_TASKS: &str = "all";

table! {
/// One case after one click (click 0 = the box alone): clicks.parquet, clicks.csv.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct ClickRow {
    /// Strategy label.
    pub strategy: String,
    /// Experiment seed.
    pub seed: i64,
    /// Order label.
    pub order: String,
    /// Stage studied: tasks trained so far (0 = zero-shot).
    pub stage: i64,
    /// Task the case belongs to.
    pub eval_task: String,
    /// Test case id.
    pub case: String,
    /// Clicks made so far (0 = the box alone).
    pub click: i64,
    /// Dice, stored as its bit pattern in checkpoints so that resumed runs reproduce it exactly.
    #[serde(with = "crate::results::f64_bits")]
    pub dice: f64,
    /// Expert the case was routed to (routing strategies; the same for every click of a case), else None.
    pub routed_to: Option<String>,
    /// Column of this step's click in the original image frame (None at click 0 and after the user stopped).
    pub click_x: Option<i64>,
    /// Row of this step's click in the original image frame (None when `click_x` is).
    pub click_y: Option<i64>,
    /// 1 positive (foreground), 0 negative.
    pub click_label: Option<i64>,
}
}
crate::results::cell_of!(ClickRow, InteractiveRow);

/// Which run and stage a set of traces belongs to.
#[derive(Clone, Debug, PartialEq)]
pub struct RunStage {
    /// Strategy label.
    pub strategy: String,
    /// Experiment seed.
    pub seed: i64,
    /// Order label.
    pub order: String,
    /// Stage: tasks trained so far (0 = zero-shot).
    pub stage: i64,
}

/// Rows of one task's traces (`case_ids[i]` is the id of `traces[i]`).
pub fn click_rows(
    at: &RunStage,
    eval_task: &str,
    case_ids: &[&str],
    traces: &[Trace],
) -> Vec<ClickRow> {
    let mut rows = Vec::new();
    for (id, t) in case_ids.iter().zip(traces) {
        for (k, (&d, c)) in t.dice.iter().zip(&t.clicks).enumerate() {
            rows.push(ClickRow {
                strategy: at.strategy.clone(),
                seed: at.seed,
                order: at.order.clone(),
                stage: at.stage,
                eval_task: eval_task.to_string(),
                case: id.to_string(),
                click: k as i64,
                dice: d,
                routed_to: t.routed_to.clone(),
                click_x: c.map(|c| c.x as i64),
                click_y: c.map(|c| c.y as i64),
                click_label: c.map(|c| c.label() as i64),
            });
        }
    }
    rows
}

table! {
/// One line of interactive.csv: means over the cases of a run, stage and task (or all tasks).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct InteractiveRow {
    /// Strategy label.
    pub strategy: String,
    /// Experiment seed.
    pub seed: i64,
    /// Order label.
    pub order: String,
    /// Stage studied: tasks trained so far (0 = zero-shot).
    pub stage: i64,
    /// Task averaged over, or [`ALL_TASKS`] for the row pooling every case of the run and stage.
    pub eval_task: String,
    /// Cases the means are taken over.
    pub n_cases: i64,
    ..
    /// (column, mean) in the order of [`value_columns`].
    pub values: Vec<(String, f64)>,
}
}

/// The value columns for a spec: noc@τ and fail@τ per target, dice@k per report point, auc, and seconds@τ per
/// target with a time model.
pub fn value_columns(spec: &InteractiveSpec) -> Vec<String> {
    let mut c: Vec<String> = spec.targets.iter().map(|t| format!("noc@{t}")).collect();
    c.extend(spec.targets.iter().map(|t| format!("fail@{t}")));
    c.extend(spec.report_at.iter().map(|k| format!("dice@{k}")));
    c.push("auc".into());
    if spec.time_model().is_some() {
        c.extend(spec.targets.iter().map(|t| format!("seconds@{t}")));
    }
    c
}

/// Per-case values (same order as [`value_columns`]) of one Dice curve.
pub fn case_values(dice: &[f64], spec: &InteractiveSpec) -> Vec<f64> {
    let tm = spec.time_model();
    let s = summarise(dice, &spec.targets, &spec.report_at, tm.as_ref());
    let never = dice.len();
    let mut v: Vec<f64> = s.noc.iter().map(|&n| n as f64).collect();
    v.extend(s.noc.iter().map(|&n| (n == never) as u8 as f64));
    v.extend(s.dice_at.iter().copied());
    v.push(s.auc);
    if let Some(sec) = s.seconds {
        v.extend(sec);
    }
    v
}

/// One case of one run at one stage: the key of a Dice-vs-clicks curve. Ordered as the tuple (strategy, seed,
/// order, stage, eval_task, case).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CaseKey {
    /// The run.
    pub cell: CellKey,
    /// Stage studied.
    pub stage: i64,
    /// Task the case belongs to.
    pub eval_task: String,
    /// Test case id.
    pub case: String,
}

impl ClickRow {
    /// The curve this row is a point of.
    pub fn case_key(&self) -> CaseKey {
        CaseKey {
            cell: self.cell(),
            stage: self.stage,
            eval_task: self.eval_task.clone(),
            case: self.case.clone(),
        }
    }
}

/// Dice curves per (strategy, seed, order, stage, eval_task, case), in first-appearance order.
pub fn curves(rows: &[ClickRow]) -> Vec<(CaseKey, Vec<f64>)> {
    let mut order: Vec<CaseKey> = Vec::new();
    let mut map: BTreeMap<CaseKey, Vec<(i64, f64)>> = BTreeMap::new();
    for r in rows {
        let k = r.case_key();
        map.entry(k.clone())
            .or_insert_with(|| {
                order.push(k.clone());
                Vec::new()
            })
            .push((r.click, r.dice));
    }
    order
        .into_iter()
        .map(|k| {
            let mut v = map.remove(&k).unwrap_or_default();
            v.sort_by_key(|p| p.0);
            (k, v.into_iter().map(|p| p.1).collect())
        })
        .collect()
}

/// interactive.csv rows: per run and stage, one row per evaluated task (first-appearance order) and one pooled
/// row (`eval_task = "all"`, every case of every task). Sums run in row order, so results are bit-reproducible.
pub fn interactive_rows(rows: &[ClickRow], spec: &InteractiveSpec) -> Vec<InteractiveRow> {
    let cols = value_columns(spec);
    // (cell, stage studied)
    type RunAt = (CellKey, i64);
    let mut runs: Vec<RunAt> = Vec::new();
    let mut acc: BTreeMap<(RunAt, String), (usize, Vec<f64>)> = BTreeMap::new();
    let mut tasks: BTreeMap<RunAt, Vec<String>> = BTreeMap::new();
    for (k, dice) in curves(rows) {
        let (run, task) = ((k.cell, k.stage), k.eval_task);
        if !runs.contains(&run) {
            runs.push(run.clone());
        }
        let ts = tasks.entry(run.clone()).or_default();
        if !ts.contains(&task) {
            ts.push(task.clone());
        }
        let v = case_values(&dice, spec);
        for t in [task, ALL_TASKS.to_string()] {
            let e = acc
                .entry((run.clone(), t))
                .or_insert_with(|| (0, vec![0.0; v.len()]));
            e.0 += 1;
            e.1.iter_mut().zip(&v).for_each(|(a, b)| *a += b);
        }
    }
    let mut out = Vec::new();
    for run in runs {
        let mut names = tasks.remove(&run).unwrap_or_default();
        names.push(ALL_TASKS.into());
        for t in names {
            let (n, sums) = &acc[&(run.clone(), t.clone())];
            out.push(InteractiveRow {
                strategy: run.0.strategy.clone(),
                seed: run.0.seed,
                order: run.0.order.clone(),
                stage: run.1,
                eval_task: t,
                n_cases: *n as i64,
                values: cols
                    .iter()
                    .cloned()
                    .zip(sums.iter().map(|s| s / *n as f64))
                    .collect(),
            });
        }
    }
    out
}

/// interactive.csv as a frame: the value columns are the spec's (also with no rows).
pub fn interactive_frame(rows: &[InteractiveRow], spec: &InteractiveSpec) -> Result<DataFrame> {
    InteractiveRow::frame_with(rows, &value_columns(spec))
}

/// Write `clicks.parquet`, `clicks.csv`, `interactive.csv` and `interactive.json` into `dir`.
pub fn write_tables(
    dir: &std::path::Path,
    rows: &[ClickRow],
    spec: &InteractiveSpec,
) -> Result<()> {
    ClickRow::write(
        rows,
        &[&dir.join("clicks.parquet"), &dir.join("clicks.csv")],
    )?;
    let s = interactive_rows(rows, spec);
    crate::results::schema::write_frame(
        &mut interactive_frame(&s, spec)?,
        &[&dir.join("interactive.csv")],
    )?;
    let defs: BTreeMap<&str, &str> =
        crate::metrics::definitions(crate::metrics::Recorded::Interactive).collect();
    let json = serde_json::json!({ "settings": spec, "definitions": defs });
    let bytes = serde_json::to_vec_pretty(&json)
        .map_err(|e| Error::internal(format!("{SETTINGS_FILE}: {e}")))?;
    write_atomic(&dir.join(SETTINGS_FILE), &bytes)
}

/// Read the settings written by [`write_tables`] (None when the folder has none).
pub fn read_settings(dir: &std::path::Path) -> Result<Option<InteractiveSpec>> {
    let path = dir.join(SETTINGS_FILE);
    if !path.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    let v: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| Error::input(format!("{}: {e}", path.display())))?;
    let s: InteractiveSpec = serde_json::from_value(v["settings"].clone())
        .map_err(|e| Error::input(format!("{}: settings: {e}", path.display())))?;
    s.validate()
        .map_err(|d| Error::input(format!("{}: settings: {}", path.display(), d.msg)))?;
    Ok(Some(s))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::interactive::Click;

    fn trace(dice: &[f64]) -> Trace {
        let mut clicks = vec![None];
        clicks.extend((1..dice.len()).map(|k| {
            Some(Click {
                x: k,
                y: 2 * k,
                positive: k % 2 == 1,
            })
        }));
        Trace {
            dice: dice.to_vec(),
            clicks,
            routed_to: Some("polyp".into()),
        }
    }

    #[test]
    fn rows_summaries_and_frames() {
        let spec = InteractiveSpec::from_table(
            &toml::from_str(
                "max_clicks = 3\ntargets = [0.8, 0.9]\nreport_at = [1, 3]\n\
                 seconds_per_case = 10.0\nseconds_per_click = 2.0",
            )
            .unwrap(),
        )
        .unwrap();
        let at = RunStage {
            strategy: "evosam".into(),
            seed: 0,
            order: "given".into(),
            stage: 2,
        };
        let mut rows = click_rows(
            &at,
            "polyp",
            &["a", "b"],
            &[
                trace(&[0.5, 0.82, 0.85, 0.95]),
                trace(&[0.9, 0.9, 0.9, 0.9]),
            ],
        );
        rows.extend(click_rows(
            &at,
            "vessel",
            &["c"],
            &[trace(&[0.1, 0.2, 0.3, 0.4])],
        ));
        assert_eq!(rows.len(), 12);
        assert_eq!(rows[1].click_x, Some(1));
        assert_eq!(rows[1].click_label, Some(1));
        assert_eq!(rows[0].click_label, None);
        let s = interactive_rows(&rows, &spec);
        assert_eq!(
            s.iter().map(|r| r.eval_task.as_str()).collect::<Vec<_>>(),
            vec!["polyp", "vessel", "all"]
        );
        let get = |r: &InteractiveRow, k: &str| r.values.iter().find(|v| v.0 == k).unwrap().1;
        // polyp: NoC@0.8 = (1 + 0)/2, NoC@0.9 = (3 + 0)/2; vessel never: 4 = max_clicks + 1.
        assert_eq!(get(&s[0], "noc@0.8"), 0.5);
        assert_eq!(get(&s[0], "noc@0.9"), 1.5);
        assert_eq!(get(&s[1], "noc@0.9"), 4.0);
        assert_eq!(get(&s[1], "fail@0.9"), 1.0);
        assert_eq!(get(&s[2], "fail@0.9"), 1.0 / 3.0);
        assert_eq!(get(&s[0], "dice@3"), (0.95 + 0.9) / 2.0);
        // seconds@0.9 = 10 + 2 * NoC: (16 + 10)/2.
        assert_eq!(get(&s[0], "seconds@0.9"), 13.0);
        assert_eq!(s[2].n_cases, 3);
        let a = ((0.5 + 0.82) / 2.0 + (0.82 + 0.85) / 2.0 + (0.85 + 0.95) / 2.0) / 3.0;
        assert!((get(&s[0], "auc") - (a + 0.9) / 2.0).abs() < 1e-12);
        let df = interactive_frame(&s, &spec).unwrap();
        assert_eq!(df.height(), 3);
        assert!(df.column("seconds@0.8").is_ok() && df.column("fail@0.8").is_ok());
        let df = ClickRow::frame(&rows).unwrap();
        assert_eq!(df.height(), 12);
        assert_eq!(df.column("click_x").unwrap().null_count(), 3);
        // Both tables through CSV and Parquet and back.
        let dir = tempfile::tempdir().unwrap();
        crate::results::schema::assert_round_trip(dir.path(), "clicks", &rows);
        let text = crate::results::schema::assert_round_trip(dir.path(), "interactive", &s);
        assert!(text.starts_with(
            "strategy,seed,order,stage,eval_task,n_cases,noc@0.8,noc@0.9,fail@0.8,fail@0.9,dice@1,dice@3,auc,\
             seconds@0.8,seconds@0.9\n"
        ), "{text}");
        // Checkpoint round trip keeps the exact bits.
        let back: Vec<ClickRow> =
            serde_json::from_str(&serde_json::to_string(&rows).unwrap()).unwrap();
        assert_eq!(back, rows);
    }
}
