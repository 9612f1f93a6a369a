//! The interactive study in the report: Dice-vs-clicks curves per task, NoC@τ bars and the interactive table
//! (Markdown + LaTeX), from `clicks.*` and `interactive.json` of a results folder.
//!
//! Every statistic is taken at each run's last studied stage. Units: a run is (strategy, seed, order); its value
//! of a column is the mean over its cases (all evaluated tasks pooled); the table shows mean ± sample std over runs,
//! and the dagger is a paired Wilcoxon signed-rank test against EvoSAM over (seed, order, task, case) pairs, as
//! in the summary table.

use std::collections::BTreeMap;

use serde::Serialize;

use super::analysis::Stat;
use super::stats::{wilcoxon_signed_rank, Wilcoxon};
use super::tables::{self, ColumnSpec};
use crate::interactive::rows::{case_values, curves, read_settings, value_columns, ClickRow};
use crate::spec::InteractiveSpec;
use crate::{Error, Result};
use polars::prelude::*;
use std::path::{Path, PathBuf};

/// Reference strategy of the tests (as in the summary table).
pub const REFERENCE: &str = "evosam";

/// Mean Dice after each click for one strategy on one task: mean ± std over runs of the run's mean over cases.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ClickCurve {
    pub strategy: String,
    pub task: String,
    pub mean: Vec<f64>,
    pub std: Vec<f64>,
    pub n_runs: usize,
}

/// NoC@τ of one strategy (all tasks pooled), over runs.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct NocBar {
    pub strategy: String,
    pub target: f64,
    pub stat: Stat,
}

/// One statistic cell of the interactive table.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ICell {
    pub stat: Option<Stat>,
    pub bold: bool,
    pub dagger: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct InteractiveTable {
    /// (header, higher is better, column of interactive.csv).
    pub columns: Vec<(String, bool, String)>,
    pub strategies: Vec<String>,
    pub n_runs: Vec<usize>,
    pub cells: Vec<Vec<ICell>>,
    /// Test of the per-case AUC against the reference (None for the reference or without one).
    pub p_auc: Vec<Option<Wilcoxon>>,
    pub reference: Option<String>,
    pub max_clicks: usize,
    pub settings: InteractiveSpec,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct InteractiveData {
    pub tasks: Vec<String>,
    pub curves: Vec<ClickCurve>,
    pub noc: Vec<NocBar>,
    pub table: InteractiveTable,
}

type Run = (String, i64, String);

/// Read `clicks.parquet` of a folder into rows.
fn read_clicks(dir: &Path) -> Result<Vec<ClickRow>> {
    let path = dir.join("clicks.parquet");
    let f = std::fs::File::open(&path).map_err(|e| Error::io(&path, e))?;
    let df = ParquetReader::new(f)
        .finish()
        .map_err(|e| Error::input(format!("{}: cannot read Parquet: {e}", path.display())))?;
    let bad = |c: &str, e: &dyn std::fmt::Display| {
        Error::input(format!("{}: column `{c}`: {e}", path.display()))
    };
    let strs = |c: &str| -> Result<Vec<Option<String>>> {
        let col = df.column(c).map_err(|e| bad(c, &e))?;
        let ca = col.str().map_err(|e| bad(c, &e))?;
        Ok(ca.iter().map(|v| v.map(str::to_string)).collect())
    };
    let ints = |c: &str| -> Result<Vec<Option<i64>>> {
        let col = df.column(c).map_err(|e| bad(c, &e))?;
        Ok(col.i64().map_err(|e| bad(c, &e))?.iter().collect())
    };
    let need = |v: Vec<Option<String>>, c: &str| -> Result<Vec<String>> {
        v.into_iter()
            .map(|x| x.ok_or_else(|| bad(c, &"null value")))
            .collect()
    };
    let needi = |v: Vec<Option<i64>>, c: &str| -> Result<Vec<i64>> {
        v.into_iter()
            .map(|x| x.ok_or_else(|| bad(c, &"null value")))
            .collect()
    };
    let strategy = need(strs("strategy")?, "strategy")?;
    let seed = needi(ints("seed")?, "seed")?;
    let order = need(strs("order")?, "order")?;
    let stage = needi(ints("stage")?, "stage")?;
    let task = need(strs("eval_task")?, "eval_task")?;
    let case = need(strs("case")?, "case")?;
    let click = needi(ints("click")?, "click")?;
    let dcol = df.column("dice").map_err(|e| bad("dice", &e))?;
    let dice: Vec<f64> = dcol
        .f64()
        .map_err(|e| bad("dice", &e))?
        .iter()
        .map(|v| v.unwrap_or(f64::NAN))
        .collect();
    let routed = strs("routed_to")?;
    let (x, y, l) = (ints("click_x")?, ints("click_y")?, ints("click_label")?);
    Ok((0..df.height())
        .map(|i| ClickRow {
            strategy: strategy[i].clone(),
            seed: seed[i],
            order: order[i].clone(),
            stage: stage[i],
            eval_task: task[i].clone(),
            case: case[i].clone(),
            click: click[i],
            dice: dice[i],
            routed_to: routed[i].clone(),
            click_x: x[i],
            click_y: y[i],
            click_label: l[i],
        })
        .collect())
}

/// The study's rows and settings from one or more results folders (empty / None when no folder has them).
/// Folders must agree on the settings; rows that appear in several folders must be equal (and are kept once).
pub fn load(run_dirs: &[PathBuf]) -> Result<(Vec<ClickRow>, Option<InteractiveSpec>)> {
    let mut settings: Option<(InteractiveSpec, &PathBuf)> = None;
    let mut rows: Vec<ClickRow> = Vec::new();
    let mut seen: BTreeMap<(Run, i64, String, String, i64), (f64, PathBuf)> = BTreeMap::new();
    for dir in run_dirs {
        let Some(s) = read_settings(dir)? else {
            continue;
        };
        match &settings {
            Some((first, fdir)) if *first != s => {
                return Err(Error::input(format!(
                    "{} and {}: the interactive studies have different settings (interactive.json)",
                    fdir.display(),
                    dir.display()
                )))
            }
            Some(_) => {}
            None => settings = Some((s, dir)),
        }
        for r in read_clicks(dir)? {
            let key = (
                (r.strategy.clone(), r.seed, r.order.clone()),
                r.stage,
                r.eval_task.clone(),
                r.case.clone(),
                r.click,
            );
            match seen.get(&key) {
                Some((d, prev)) if d.to_bits() != r.dice.to_bits() => {
                    return Err(Error::input(format!(
                        "{} and {}: click row {key:?} differs (Dice {d} vs {})",
                        prev.display(),
                        dir.display(),
                        r.dice
                    )))
                }
                Some(_) => {}
                None => {
                    seen.insert(key, (r.dice, dir.clone()));
                    rows.push(r);
                }
            }
        }
    }
    Ok((rows, settings.map(|s| s.0)))
}

/// Everything the report shows of the study; None when the folder has no click rows.
pub fn compute(
    rows: &[ClickRow],
    settings: &InteractiveSpec,
    strategy_order: &[String],
) -> Option<InteractiveData> {
    // The last studied stage of each run.
    let mut last: BTreeMap<Run, i64> = BTreeMap::new();
    for r in rows {
        let e = last
            .entry((r.strategy.clone(), r.seed, r.order.clone()))
            .or_insert(r.stage);
        *e = (*e).max(r.stage);
    }
    let per_case: Vec<((Run, String, String), Vec<f64>)> = curves(rows)
        .into_iter()
        .filter(|((s, seed, o, st, _, _), _)| last.get(&(s.clone(), *seed, o.clone())) == Some(st))
        .map(|((s, seed, o, _, t, c), d)| (((s, seed, o), t, c), d))
        .collect();
    if per_case.is_empty() {
        return None;
    }
    let max_clicks = per_case.iter().map(|(_, d)| d.len()).max().unwrap_or(1) - 1;
    let mut tasks: Vec<String> = Vec::new();
    let mut strategies: Vec<String> = Vec::new();
    for ((run, t, _), _) in &per_case {
        if !tasks.contains(t) {
            tasks.push(t.clone());
        }
        if !strategies.contains(&run.0) {
            strategies.push(run.0.clone());
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
    let vals: Vec<((Run, String, String), Vec<f64>)> = per_case
        .iter()
        .map(|(k, d)| (k.clone(), case_values(d, settings)))
        .collect();
    let mut run_sums: BTreeMap<Run, (usize, Vec<f64>)> = BTreeMap::new();
    for ((run, _, _), v) in &vals {
        let e = run_sums
            .entry(run.clone())
            .or_insert_with(|| (0, vec![0.0; v.len()]));
        e.0 += 1;
        e.1.iter_mut().zip(v).for_each(|(a, b)| *a += b);
    }
    let run_means = |s: &str, j: usize| -> Vec<f64> {
        run_sums
            .iter()
            .filter(|(r, _)| r.0 == s)
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
        let key = |k: &(Run, String, String)| (k.0 .1, k.0 .2.clone(), k.1.clone(), k.2.clone());
        let refv: BTreeMap<_, f64> = vals
            .iter()
            .filter(|(k, _)| k.0 .0 == r)
            .map(|(k, v)| (key(k), v[j]))
            .collect();
        let (mut x, mut y) = (Vec::new(), Vec::new());
        for (k, v) in vals.iter().filter(|(k, _)| k.0 .0 == s) {
            if let Some(&rv) = refv.get(&key(k)) {
                x.push(v[j]);
                y.push(rv);
            }
        }
        wilcoxon_signed_rank(&x, &y)
    };
    let mut cells: Vec<Vec<ICell>> = strategies
        .iter()
        .map(|s| {
            columns
                .iter()
                .map(|(_, _, name)| {
                    let j = col_index(name);
                    ICell {
                        stat: Stat::of(&run_means(s, j)),
                        bold: false,
                        dagger: paired(s, j).is_some_and(|w| w.p_value < tables::ALPHA),
                    }
                })
                .collect()
        })
        .collect();
    let round = |v: f64| {
        let f = 10f64.powi(tables::DECIMALS as i32);
        (v * f).round() / f
    };
    for (c, (_, higher, _)) in columns.iter().enumerate() {
        let means: Vec<f64> = cells
            .iter()
            .filter_map(|r| r[c].stat.map(|s| round(s.mean)))
            .collect();
        if means.len() < 2 {
            continue;
        }
        let best = if *higher {
            means.iter().cloned().fold(f64::NEG_INFINITY, f64::max)
        } else {
            means.iter().cloned().fold(f64::INFINITY, f64::min)
        };
        for row in cells.iter_mut() {
            if let Some(s) = row[c].stat {
                row[c].bold = round(s.mean) == best;
            }
        }
    }
    let n_runs = strategies
        .iter()
        .map(|s| run_sums.keys().filter(|r| &r.0 == s).count())
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
            cells,
            p_auc,
            reference,
            max_clicks,
            settings: settings.clone(),
        },
    })
}

fn click_curves(
    per_case: &[((Run, String, String), Vec<f64>)],
    strategies: &[String],
    tasks: &[String],
) -> Vec<ClickCurve> {
    let mut out = Vec::new();
    for t in tasks {
        for s in strategies {
            // Per run: the mean curve over its cases of this task.
            let mut runs: BTreeMap<&Run, (usize, Vec<f64>)> = BTreeMap::new();
            for ((run, task, _), d) in per_case {
                if &run.0 != s || task != t {
                    continue;
                }
                let e = runs.entry(run).or_insert_with(|| (0, vec![0.0; d.len()]));
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

fn legend(t: &InteractiveTable, tex: bool) -> Vec<String> {
    let (pm, dag, ge, tau) = if tex {
        ("$\\pm$", "$^\\dagger$", "$\\ge$", "$\\tau$")
    } else {
        ("±", "†", "≥", "τ")
    };
    let s = &t.settings;
    let mut v = vec![format!(
        "Simulated clinician (README, \"Interactive study\"): click 0 = the box prompt, then up to {} clicks at the \
         centre of the larger error region{}. Values: mean {pm} sample standard deviation over runs (seeds x orders) \
         of the mean over all test cases studied, at each run's last studied stage; n = runs. NoC@{tau}: clicks to \
         first reach Dice {ge} {tau}; {} (max_clicks + 1) when never reached. Dice@k: Dice after k clicks. AUC: area \
         under Dice vs clicks (0..{}), divided by {}. Bold: best per column at the shown precision.",
        t.max_clicks,
        if s.mask_prompt {
            ", previous logits as the mask prompt"
        } else {
            ""
        },
        t.max_clicks + 1,
        t.max_clicks,
        t.max_clicks
    )];
    if let Some(tm) = s.time_model() {
        v.push(format!(
            "Time@{tau}: {} s per image + {} s per click x NoC@{tau} (the spec's time model).",
            tm.seconds_per_case, tm.seconds_per_click
        ));
    }
    match &t.reference {
        Some(r) => v.push(format!(
            "{dag} p < {} against {r}: two-sided paired Wilcoxon signed-rank test over (seed, order, task, case) pairs \
             of the per-case values (p column: AUC; n = non-zero pairs used).",
            tables::ALPHA
        )),
        None => v.push(
            "No strategy named \"evosam\" in these results: significance tests skipped.".into(),
        ),
    }
    v
}

fn as_cells(t: &InteractiveTable) -> (Vec<ColumnSpec>, Vec<Vec<tables::Cell>>) {
    let cols = t
        .columns
        .iter()
        .map(|(h, hi, _)| ColumnSpec {
            header: h.clone(),
            higher_is_better: *hi,
        })
        .collect();
    let cells = t
        .cells
        .iter()
        .map(|r| {
            r.iter()
                .map(|c| tables::Cell {
                    stat: c.stat,
                    bold: c.bold,
                    dagger: c.dagger,
                })
                .collect()
        })
        .collect();
    (cols, cells)
}

/// The interactive table in Markdown, legend below.
pub fn to_markdown(t: &InteractiveTable) -> String {
    let (cols, cells) = as_cells(t);
    let mut head = vec!["Strategy".to_string(), "n".to_string()];
    head.extend(
        cols.iter()
            .map(|c| tables::md_escape(&tables::header_arrow(c, false))),
    );
    head.push(format!(
        "p vs {} (AUC)",
        t.reference.as_deref().unwrap_or(REFERENCE)
    ));
    let mut s = format!("| {} |\n", head.join(" | "));
    let align: Vec<&str> = (0..head.len())
        .map(|i| if i == 0 { ":---" } else { "---:" })
        .collect();
    s.push_str(&format!("| {} |\n", align.join(" | ")));
    for (i, strat) in t.strategies.iter().enumerate() {
        let mut row = vec![tables::md_escape(strat), t.n_runs[i].to_string()];
        row.extend(cells[i].iter().map(tables::cell_md));
        let is_ref = t.reference.as_deref() == Some(strat.as_str());
        row.push(tables::p_text(&t.p_auc[i], is_ref, false));
        s.push_str(&format!("| {} |\n", row.join(" | ")));
    }
    s.push('\n');
    for line in legend(t, false) {
        s.push_str(&line);
        s.push_str("\n\n");
    }
    s
}

/// The interactive table in LaTeX (booktabs), legend in the caption.
pub fn to_latex(t: &InteractiveTable) -> String {
    let (cols, cells) = as_cells(t);
    let mut s = String::new();
    s.push_str("% Requires \\usepackage{booktabs} and \\usepackage{graphicx}. Generated by `evosam report`.\n");
    s.push_str("\\begin{table}[t]\n\\centering\n\\small\n");
    s.push_str(&format!(
        "\\caption{{Interaction cost (simulated clicks). {}}}\n\\label{{tab:evosam-interactive}}\n",
        legend(t, true).join(" ")
    ));
    s.push_str("\\resizebox{\\linewidth}{!}{%\n");
    s.push_str(&format!(
        "\\begin{{tabular}}{{l{}}}\n",
        "r".repeat(cols.len() + 2)
    ));
    s.push_str("\\toprule\n");
    let mut head = vec!["Strategy".to_string(), "$n$".to_string()];
    head.extend(cols.iter().map(|c| tables::header_arrow(c, true)));
    head.push(tables::tex_escape(&format!(
        "p vs {} (AUC)",
        t.reference.as_deref().unwrap_or(REFERENCE)
    )));
    s.push_str(&format!("{} \\\\\n\\midrule\n", head.join(" & ")));
    for (i, strat) in t.strategies.iter().enumerate() {
        let mut row = vec![tables::tex_escape(strat), t.n_runs[i].to_string()];
        row.extend(cells[i].iter().map(tables::cell_tex));
        let is_ref = t.reference.as_deref() == Some(strat.as_str());
        row.push(tables::p_text(&t.p_auc[i], is_ref, true));
        s.push_str(&format!("{} \\\\\n", row.join(" & ")));
    }
    s.push_str("\\bottomrule\n\\end{tabular}%\n}\n\\end{table}\n");
    s
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
        assert_eq!(t.cells[1][3].stat.unwrap().mean, 7.0);
        assert!(t.cells[1][3].bold && !t.cells[0][3].bold);
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
