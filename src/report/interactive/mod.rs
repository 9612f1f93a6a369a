//! The interactive study in the report: Dice-vs-clicks curves per task, NoC@τ bars and the interactive table
//! (Markdown + LaTeX), from `clicks.parquet` and `interactive.json` of the results folder(s).
//!
//! Every statistic is taken at each run's last studied stage. Units: a run is (strategy, seed, order); its value
//! of a column is the mean over its cases (all evaluated tasks pooled); the table shows mean ± sample std over runs,
//! and the dagger is a paired Wilcoxon signed-rank test against EvoSAM over (seed, order, task, case) pairs, as
//! in the summary table. [`load`](mod@load) reads the folders, this file computes, [`table`] renders.

use std::collections::BTreeMap;

use serde::Serialize;

use super::stats::{wilcoxon_signed_rank, Stat, Wilcoxon};
use crate::interactive::rows::{case_values, curves, value_columns, CaseKey, ClickRow};
use crate::results::CellKey;
use crate::spec::InteractiveSpec;

pub mod load;
pub mod table;

pub use load::load;
pub use table::{to_latex, to_markdown};

/// Reference strategy of the tests (as in the summary table).
pub const REFERENCE: &str = "evosam";

/// Mean Dice after each click for one strategy on one task: mean ± std over runs of the run's mean over cases.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ClickCurve {
    /// Strategy label.
    pub strategy: String,
    /// Evaluated task.
    pub task: String,
    /// Mean Dice after k clicks (k = 0: the box).
    pub mean: Vec<f64>,
    /// Standard deviation over runs.
    pub std: Vec<f64>,
    /// Runs averaged.
    pub n_runs: usize,
}

/// NoC@τ of one strategy (all tasks pooled), over runs.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct NocBar {
    /// Strategy label.
    pub strategy: String,
    /// τ.
    pub target: f64,
    /// Mean ± std over runs of the run's mean NoC@τ.
    pub stat: Stat,
}

/// The numbers of the interactive table (bold and daggers are decided when it is rendered).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct InteractiveTable {
    /// (header, higher is better, column of interactive.csv).
    pub columns: Vec<(String, bool, String)>,
    /// Rows, in report order.
    pub strategies: Vec<String>,
    /// Runs per strategy.
    pub n_runs: Vec<usize>,
    /// `stats[row][col]`: mean ± std over runs.
    pub stats: Vec<Vec<Option<Stat>>>,
    /// `tests[row][col]`: paired test of the per-case values against the reference.
    pub tests: Vec<Vec<Option<Wilcoxon>>>,
    /// Test of the per-case AUC against the reference (None for the reference or without one).
    pub p_auc: Vec<Option<Wilcoxon>>,
    /// The reference strategy, when present.
    pub reference: Option<String>,
    /// Clicks after the box.
    pub max_clicks: usize,
    /// The study's settings (targets, report points, time model).
    pub settings: InteractiveSpec,
}

/// Everything the report shows of the study.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct InteractiveData {
    /// Tasks in panel order.
    pub tasks: Vec<String>,
    /// Dice-vs-clicks curves per (task, strategy).
    pub curves: Vec<ClickCurve>,
    /// NoC@τ per (strategy, τ).
    pub noc: Vec<NocBar>,
    /// The table.
    pub table: InteractiveTable,
}

/// A case (of a run's last studied stage) and its Dice curve.
type CaseCurve = (CaseKey, Vec<f64>);

/// Everything the report shows of the study; None when the folder has no click rows.
pub fn compute(
    rows: &[ClickRow],
    settings: &InteractiveSpec,
    strategy_order: &[String],
) -> Option<InteractiveData> {
    // The last studied stage of each run.
    let mut last: BTreeMap<CellKey, i64> = BTreeMap::new();
    for r in rows {
        let e = last.entry(r.cell()).or_insert(r.stage);
        *e = (*e).max(r.stage);
    }
    let per_case: Vec<CaseCurve> = curves(rows)
        .into_iter()
        .filter(|(k, _)| last.get(&k.cell) == Some(&k.stage))
        .collect();
    if per_case.is_empty() {
        return None;
    }
    let max_clicks = per_case.iter().map(|(_, d)| d.len()).max().unwrap_or(1) - 1;
    let mut tasks: Vec<String> = Vec::new();
    let mut strategies: Vec<String> = Vec::new();
    for (k, _) in &per_case {
        if !tasks.contains(&k.eval_task) {
            tasks.push(k.eval_task.clone());
        }
        if !strategies.contains(&k.cell.strategy) {
            strategies.push(k.cell.strategy.clone());
        }
    }
    strategies.sort_by_key(|s| {
        strategy_order
            .iter()
            .position(|o| o == s)
            .unwrap_or(usize::MAX)
    });
    let curves_out = click_curves(&per_case, &strategies, &tasks);
    // Per-case values (value_columns order) and per-run means.
    let cols = value_columns(settings);
    let vals: Vec<(CaseKey, Vec<f64>)> = per_case
        .iter()
        .map(|(k, d)| (k.clone(), case_values(d, settings)))
        .collect();
    let mut run_sums: BTreeMap<CellKey, (usize, Vec<f64>)> = BTreeMap::new();
    for (k, v) in &vals {
        let e = run_sums
            .entry(k.cell.clone())
            .or_insert_with(|| (0, vec![0.0; v.len()]));
        e.0 += 1;
        e.1.iter_mut().zip(v).for_each(|(a, b)| *a += b);
    }
    let run_means = |s: &str, j: usize| -> Vec<f64> {
        run_sums
            .iter()
            .filter(|(r, _)| r.strategy == s)
            .map(|(_, (n, sums))| sums[j] / *n as f64)
            .collect()
    };
    let mut noc = Vec::new();
    for s in &strategies {
        for (j, &t) in settings.targets.iter().enumerate() {
            if let Some(stat) = Stat::of(&run_means(s, j)) {
                noc.push(NocBar {
                    strategy: s.clone(),
                    target: t,
                    stat,
                });
            }
        }
    }
    // Table columns: NoC@τ, Dice@k, AUC, seconds@τ (fail@τ stays in interactive.csv).
    let mut columns: Vec<(String, bool, String)> = Vec::new();
    for name in &cols {
        let (header, higher) = if let Some(t) = name.strip_prefix("noc@") {
            (format!("NoC@{t}"), false)
        } else if let Some(k) = name.strip_prefix("dice@") {
            (format!("Dice@{k}"), true)
        } else if name == "auc" {
            ("AUC".to_string(), true)
        } else if let Some(t) = name.strip_prefix("seconds@") {
            (format!("Time@{t} (s)"), false)
        } else {
            continue;
        };
        columns.push((header, higher, name.clone()));
    }
    let col_index = |name: &str| cols.iter().position(|c| c == name).expect("column");
    let reference = strategies.iter().find(|s| *s == REFERENCE).cloned();
    let paired = |s: &str, j: usize| -> Option<Wilcoxon> {
        let r = reference.as_deref()?;
        if s == r {
            return None;
        }
        // the same case of the same seed and order
        let key = |k: &CaseKey| {
            (
                k.cell.seed,
                k.cell.order.clone(),
                k.eval_task.clone(),
                k.case.clone(),
            )
        };
        let refv: BTreeMap<_, f64> = vals
            .iter()
            .filter(|(k, _)| k.cell.strategy == r)
            .map(|(k, v)| (key(k), v[j]))
            .collect();
        let (mut x, mut y) = (Vec::new(), Vec::new());
        for (k, v) in vals.iter().filter(|(k, _)| k.cell.strategy == s) {
            if let Some(&rv) = refv.get(&key(k)) {
                x.push(v[j]);
                y.push(rv);
            }
        }
        wilcoxon_signed_rank(&x, &y)
    };
    let col_idx: Vec<usize> = columns.iter().map(|(_, _, name)| col_index(name)).collect();
    let stats: Vec<Vec<Option<Stat>>> = strategies
        .iter()
        .map(|s| {
            col_idx
                .iter()
                .map(|&j| Stat::of(&run_means(s, j)))
                .collect()
        })
        .collect();
    let tests: Vec<Vec<Option<Wilcoxon>>> = strategies
        .iter()
        .map(|s| col_idx.iter().map(|&j| paired(s, j)).collect())
        .collect();
    let n_runs = strategies
        .iter()
        .map(|s| run_sums.keys().filter(|r| &r.strategy == s).count())
        .collect();
    let p_auc = strategies
        .iter()
        .map(|s| paired(s, col_index("auc")))
        .collect();
    Some(InteractiveData {
        tasks,
        curves: curves_out,
        noc,
        table: InteractiveTable {
            columns,
            strategies,
            n_runs,
            stats,
            tests,
            p_auc,
            reference,
            max_clicks,
            settings: settings.clone(),
        },
    })
}

fn click_curves(
    per_case: &[CaseCurve],
    strategies: &[String],
    tasks: &[String],
) -> Vec<ClickCurve> {
    let mut out = Vec::new();
    for t in tasks {
        for s in strategies {
            // Per run: the mean curve over its cases of this task.
            let mut runs: BTreeMap<&CellKey, (usize, Vec<f64>)> = BTreeMap::new();
            for (k, d) in per_case {
                if &k.cell.strategy != s || &k.eval_task != t {
                    continue;
                }
                let e = runs
                    .entry(&k.cell)
                    .or_insert_with(|| (0, vec![0.0; d.len()]));
                e.0 += 1;
                e.1.iter_mut().zip(d).for_each(|(a, b)| *a += b);
            }
            if runs.is_empty() {
                continue;
            }
            let k = runs.values().map(|v| v.1.len()).min().unwrap_or(0);
            let (mut mean, mut std) = (Vec::with_capacity(k), Vec::with_capacity(k));
            for i in 0..k {
                let v: Vec<f64> = runs.values().map(|(n, s)| s[i] / *n as f64).collect();
                let st = Stat::of(&v).expect("runs");
                mean.push(st.mean);
                std.push(st.std);
            }
            out.push(ClickCurve {
                strategy: s.clone(),
                task: t.clone(),
                mean,
                std,
                n_runs: runs.len(),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(s: &str, seed: i64, task: &str, case: &str, click: i64, dice: f64) -> ClickRow {
        ClickRow {
            strategy: s.into(),
            seed,
            order: "given".into(),
            stage: 2,
            eval_task: task.into(),
            case: case.into(),
            click,
            dice,
            routed_to: None,
            click_x: None,
            click_y: None,
            click_label: None,
        }
    }

    #[test]
    fn curves_bars_and_table() {
        let settings = InteractiveSpec::from_table(
            &toml::from_str(
                "max_clicks = 2\ntargets = [0.8]\nreport_at = [1]\n\
                 seconds_per_case = 5.0\nseconds_per_click = 2.0",
            )
            .unwrap(),
        )
        .unwrap();
        let mut rows = Vec::new();
        for seed in [0, 1] {
            // evosam reaches 0.8 at click 1 on both cases; finetune only on case a at click 2.
            for (case, e, f) in [
                ("a", [0.5, 0.85, 0.9], [0.5, 0.6, 0.8]),
                ("b", [0.7, 0.8, 0.9], [0.6, 0.6, 0.7]),
            ] {
                for k in 0..3 {
                    rows.push(row("evosam", seed, "polyp", case, k, e[k as usize]));
                    rows.push(row(
                        "finetune",
                        seed,
                        "polyp",
                        case,
                        k,
                        f[k as usize] + 0.01 * seed as f64,
                    ));
                }
            }
        }
        // An earlier stage is ignored.
        let mut early = row("evosam", 0, "polyp", "a", 0, 0.0);
        early.stage = 1;
        rows.push(early);
        let order = vec!["finetune".to_string(), "evosam".to_string()];
        let d = compute(&rows, &settings, &order).unwrap();
        assert_eq!(d.tasks, vec!["polyp"]);
        assert_eq!(d.table.strategies, order);
        assert_eq!(d.table.max_clicks, 2);
        let ev = d.curves.iter().find(|c| c.strategy == "evosam").unwrap();
        assert_eq!(ev.mean.len(), 3);
        assert!((ev.mean[1] - 0.825).abs() < 1e-12 && ev.std[1] == 0.0);
        assert_eq!(ev.n_runs, 2);
        let bar = |s: &str| d.noc.iter().find(|b| b.strategy == s).unwrap().stat;
        assert_eq!(bar("evosam").mean, 1.0);
        // finetune: case a at click 2, case b never (3 = max_clicks + 1) -> 2.5.
        assert_eq!(bar("finetune").mean, 2.5);
        let headers: Vec<&str> = d.table.columns.iter().map(|c| c.0.as_str()).collect();
        assert_eq!(headers, vec!["NoC@0.8", "Dice@1", "AUC", "Time@0.8 (s)"]);
        // Time = 5 + 2 * NoC: evosam 7, finetune 10; lower is better -> evosam bold.
        let t = &d.table;
        assert_eq!(t.stats[1][3].unwrap().mean, 7.0);
        let cells = table::cells(t);
        assert!(cells[1][3].bold && !cells[0][3].bold);
        assert!(t.tests[0][0].is_some() && t.tests[1][0].is_none());
        assert!(t.p_auc[1].is_none() && t.p_auc[0].is_some());
        let md = to_markdown(t);
        assert!(md.contains("| finetune | 2 |"), "{md}");
        assert!(md.contains("3 (max_clicks + 1) when never reached"), "{md}");
        assert!(md.contains("p vs evosam (AUC)"), "{md}");
        let tex = to_latex(t);
        assert!(tex.contains("\\label{tab:evosam-interactive}") && tex.contains("\\toprule"));
        assert!(compute(&[], &settings, &order).is_none());
    }
}
