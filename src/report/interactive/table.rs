//! The interactive table as Markdown and LaTeX: bold marks the best mean per column at the shown precision,
//! the dagger a paired test against the reference with p < 0.05 (as in the summary table).

use super::{InteractiveTable, REFERENCE};
use crate::report::tables::{self, Cell, ColumnSpec};

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

/// The rendered cells: `cells[row][col]` with bold (best mean per column at the shown precision; ties all bold)
/// and dagger (p < [`tables::ALPHA`] against the reference).
pub fn cells(t: &InteractiveTable) -> Vec<Vec<Cell>> {
    let round = |v: f64| {
        let f = 10f64.powi(tables::DECIMALS as i32);
        (v * f).round() / f
    };
    let mut cells: Vec<Vec<Cell>> = t
        .stats
        .iter()
        .zip(&t.tests)
        .map(|(st, te)| {
            st.iter()
                .zip(te)
                .map(|(s, w)| Cell {
                    stat: *s,
                    bold: false,
                    dagger: w.as_ref().is_some_and(|w| w.p_value < tables::ALPHA),
                })
                .collect()
        })
        .collect();
    for (c, (_, higher, _)) in t.columns.iter().enumerate() {
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
    cells
}

fn columns(t: &InteractiveTable) -> Vec<ColumnSpec> {
    t.columns
        .iter()
        .map(|(h, hi, _)| ColumnSpec {
            header: h.clone(),
            higher_is_better: *hi,
        })
        .collect()
}

/// The interactive table in Markdown, legend below.
pub fn to_markdown(t: &InteractiveTable) -> String {
    let (cols, cells) = (columns(t), cells(t));
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
    let (cols, cells) = (columns(t), cells(t));
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
