//! Markdown, LaTeX (booktabs) and CSV renderings of the summary table.

use super::analysis::{Stat, SummaryTable, TableRow};
use super::stats::{Wilcoxon, WilcoxonMethod, EXACT_MAX_N};

/// Significance level of the dagger mark.
pub const ALPHA: f64 = 0.05;
/// Decimals shown for every statistic.
pub const DECIMALS: usize = 3;

/// A column of the summary table.
#[derive(Clone, Debug, PartialEq)]
pub struct ColumnSpec {
    /// Column header.
    pub header: String,
    /// Direction of "better", for the bold best value and the header arrow.
    pub higher_is_better: bool,
}

/// One rendered cell (format independent).
#[derive(Clone, Debug, PartialEq)]
pub struct Cell {
    /// The value (mean ± std), None when missing.
    pub stat: Option<Stat>,
    /// Best in its column.
    pub bold: bool,
    /// Significantly different from the reference (p < 0.05).
    pub dagger: bool,
}

/// The table as cells: `cells[row][col]` for the statistic columns of `columns()`.
#[derive(Clone, Debug, PartialEq)]
pub struct TableCells {
    /// The statistic columns.
    pub columns: Vec<ColumnSpec>,
    /// Row labels.
    pub strategies: Vec<String>,
    /// Runs per row.
    pub n_runs: Vec<usize>,
    /// `cells[row][col]`.
    pub cells: Vec<Vec<Cell>>,
    /// Pooled test against the reference (None for the reference itself or when skipped).
    pub p_all: Vec<Option<Wilcoxon>>,
    /// The reference strategy of the tests, if any.
    pub reference: Option<String>,
    /// The per-case metric of the table.
    pub metric: crate::metrics::Metric,
}

pub(super) fn round(v: f64) -> f64 {
    let f = 10f64.powi(DECIMALS as i32);
    (v * f).round() / f
}

fn row_stats(r: &TableRow) -> Vec<Option<Stat>> {
    let mut v = vec![r.acc, r.bwt, r.fwt, r.forgetting];
    v.extend(r.task_dice.iter().copied());
    v
}

/// The statistic columns of a summary table: the metrics, then final Dice per task.
pub fn columns(t: &SummaryTable) -> Vec<ColumnSpec> {
    let up = t.metric.higher_is_better();
    let mut c = vec![
        ColumnSpec {
            header: "ACC".into(),
            higher_is_better: up,
        },
        ColumnSpec {
            header: "BWT".into(),
            higher_is_better: true,
        },
        ColumnSpec {
            header: "FWT".into(),
            higher_is_better: true,
        },
        ColumnSpec {
            header: "Forgetting".into(),
            higher_is_better: false,
        },
    ];
    for task in &t.tasks {
        c.push(ColumnSpec {
            header: format!("{} {task}", t.metric.label()),
            higher_is_better: up,
        });
    }
    c
}

/// Build the cells: bold marks the best mean per column at the displayed precision (ties all bold);
/// the dagger marks a per-task Dice with p < 0.05 against the reference.
pub fn build_cells(t: &SummaryTable) -> TableCells {
    let columns = columns(t);
    let stats: Vec<Vec<Option<Stat>>> = t.rows.iter().map(row_stats).collect();
    let mut cells: Vec<Vec<Cell>> = stats
        .iter()
        .map(|r| {
            r.iter()
                .map(|s| Cell {
                    stat: *s,
                    bold: false,
                    dagger: false,
                })
                .collect()
        })
        .collect();
    for (j, col) in columns.iter().enumerate() {
        let vals: Vec<f64> = stats
            .iter()
            .filter_map(|r| r[j].map(|s| round(s.mean)))
            .collect();
        if vals.len() < 2 {
            continue; // a single value is not "best" of anything
        }
        let best = if col.higher_is_better {
            vals.iter().cloned().fold(f64::NEG_INFINITY, f64::max)
        } else {
            vals.iter().cloned().fold(f64::INFINITY, f64::min)
        };
        for (i, r) in stats.iter().enumerate() {
            if let Some(s) = r[j] {
                cells[i][j].bold = round(s.mean) == best;
            }
        }
    }
    for (i, r) in t.rows.iter().enumerate() {
        for (k, w) in r.test_task.iter().enumerate() {
            if let Some(w) = w {
                cells[i][4 + k].dagger = w.p_value < ALPHA;
            }
        }
    }
    TableCells {
        columns,
        strategies: t.rows.iter().map(|r| r.strategy.clone()).collect(),
        n_runs: t.rows.iter().map(|r| r.n_runs).collect(),
        cells,
        p_all: t.rows.iter().map(|r| r.test_all.clone()).collect(),
        reference: t.reference.clone(),
        metric: t.metric,
    }
}

pub(super) fn fmt_num(v: f64) -> String {
    let s = format!("{:.*}", DECIMALS, v);
    if s.starts_with("-") && s[1..].chars().all(|c| c == '0' || c == '.') {
        s[1..].to_string() // no "-0.000"
    } else {
        s
    }
}

fn fmt_p(p: f64) -> String {
    if p < 0.001 {
        "<0.001".into()
    } else {
        format!("{p:.3}")
    }
}

/// The footnote lines under a table (what ± and † mean, the test used), in Markdown or LaTeX.
pub fn footnote(tc: &TableCells, tex: bool) -> Vec<String> {
    let (pm, dag, le) = if tex {
        ("$\\pm$", "$^\\dagger$", "$\\le$")
    } else {
        ("±", "†", "≤")
    };
    let (p_lt, n1) = if tex {
        (format!("$p < {ALPHA}$"), "$n-1$")
    } else {
        (format!("p < {ALPHA}"), "n-1")
    };
    let m = tc.metric.label();
    let best = if tc.metric.higher_is_better() {
        "highest; lowest for forgetting".to_string()
    } else {
        format!("lowest for ACC, {m} and forgetting; highest for BWT and FWT")
    };
    let of = if tc.metric == crate::metrics::Metric::Dice {
        String::new()
    } else {
        format!(" of {m}")
    };
    let mut v = vec![format!(
        "Values: mean {pm} sample standard deviation (denominator {n1}; 0 for a single run) over runs (seeds x orders); n = runs. \
         ACC, BWT, FWT, forgetting{of} as defined in the results contract; {m} columns: {m} of each task after the last stage. \
         Bold: best per column at the shown precision ({best})."
    )];
    match &tc.reference {
        Some(r) => v.push(format!(
            "{dag} {p_lt} against {r}: two-sided paired Wilcoxon signed-rank test over (seed, order, case) pairs at the final stage \
             ({m} columns: the cases of that task; p column: all tasks pooled, n = non-zero pairs used). Zero differences are dropped (Wilcoxon's method); \
             exact null distribution for {le} {EXACT_MAX_N} non-zero differences without ties, otherwise normal approximation with tie and continuity correction."
        )),
        None => v.push("No strategy named \"evosam\" in these results: significance tests skipped.".into()),
    }
    v
}

pub(super) fn p_text(w: &Option<Wilcoxon>, is_ref: bool, tex: bool) -> String {
    let dag = if tex { "$^\\dagger$" } else { "†" };
    match w {
        Some(w) => {
            let p = fmt_p(w.p_value);
            let p = if tex { p.replace('<', "$<$") } else { p };
            format!(
                "{p}{} (n={})",
                if w.p_value < ALPHA { dag } else { "" },
                w.n_used
            )
        }
        None if is_ref => "ref.".into(),
        None => "n/a".into(),
    }
}

pub(super) fn md_escape(s: &str) -> String {
    s.replace('|', "\\|")
}

/// `s` with LaTeX's special characters escaped.
pub fn tex_escape(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' => o.push_str("\\textbackslash{}"),
            '&' | '%' | '$' | '#' | '_' | '{' | '}' => {
                o.push('\\');
                o.push(c)
            }
            '~' => o.push_str("\\textasciitilde{}"),
            '^' => o.push_str("\\textasciicircum{}"),
            _ => o.push(c),
        }
    }
    o
}

pub(super) fn cell_md(c: &Cell) -> String {
    match c.stat {
        None => "n/a".into(),
        Some(s) => {
            let body = format!("{} ± {}", fmt_num(s.mean), fmt_num(s.std));
            let body = if c.bold { format!("**{body}**") } else { body };
            if c.dagger {
                format!("{body}†")
            } else {
                body
            }
        }
    }
}

pub(super) fn cell_tex(c: &Cell) -> String {
    match c.stat {
        None => "n/a".into(),
        Some(s) => {
            let (m, d) = (fmt_num(s.mean), fmt_num(s.std));
            let body = if c.bold {
                format!("\\mathbf{{{m} \\pm {d}}}")
            } else {
                format!("{m} \\pm {d}")
            };
            // One math group per cell (no "$$" between the value and the dagger).
            format!("${body}{}$", if c.dagger { "^\\dagger" } else { "" })
        }
    }
}

pub(super) fn header_arrow(c: &ColumnSpec, tex: bool) -> String {
    match (c.higher_is_better, tex) {
        (true, false) => format!("{} ↑", c.header),
        (false, false) => format!("{} ↓", c.header),
        (true, true) => format!("{} $\\uparrow$", tex_escape(&c.header)),
        (false, true) => format!("{} $\\downarrow$", tex_escape(&c.header)),
    }
}

fn p_header(tc: &TableCells) -> String {
    format!(
        "p vs {}",
        tc.reference.clone().unwrap_or_else(|| "evosam".into())
    )
}

/// The table as Markdown, with its footnote.
pub fn to_markdown(tc: &TableCells) -> String {
    let mut s = String::new();
    let mut head = vec!["Strategy".to_string(), "n".to_string()];
    head.extend(
        tc.columns
            .iter()
            .map(|c| md_escape(&header_arrow(c, false))),
    );
    head.push(p_header(tc));
    s.push_str(&format!("| {} |\n", head.join(" | ")));
    let align: Vec<&str> = head
        .iter()
        .enumerate()
        .map(|(i, _)| if i == 0 { ":---" } else { "---:" })
        .collect();
    s.push_str(&format!("| {} |\n", align.join(" | ")));
    for (i, strat) in tc.strategies.iter().enumerate() {
        let mut row = vec![md_escape(strat), tc.n_runs[i].to_string()];
        row.extend(tc.cells[i].iter().map(cell_md));
        row.push(p_text(
            &tc.p_all[i],
            tc.reference.as_deref() == Some(strat.as_str()),
            false,
        ));
        s.push_str(&format!("| {} |\n", row.join(" | ")));
    }
    s.push('\n');
    for line in footnote(tc, false) {
        s.push_str(&line);
        s.push_str("\n\n");
    }
    s
}

/// The table as a LaTeX `tabular` (booktabs), with its footnote.
pub fn to_latex(tc: &TableCells) -> String {
    let ncols = 3 + tc.columns.len();
    let mut s = String::new();
    s.push_str("% Requires \\usepackage{booktabs} and \\usepackage{graphicx}. Generated by `evosam report`.\n");
    s.push_str("\\begin{table}[t]\n\\centering\n\\small\n");
    s.push_str(&format!(
        "\\caption{{Continual-learning results. {}}}\n\\label{{tab:evosam-summary}}\n",
        footnote(tc, true).join(" ")
    ));
    s.push_str("\\resizebox{\\linewidth}{!}{%\n");
    s.push_str(&format!(
        "\\begin{{tabular}}{{l{}}}\n",
        "r".repeat(ncols - 1)
    ));
    s.push_str("\\toprule\n");
    let mut head = vec!["Strategy".to_string(), "$n$".to_string()];
    head.extend(tc.columns.iter().map(|c| header_arrow(c, true)));
    head.push(tex_escape(&p_header(tc)));
    s.push_str(&format!("{} \\\\\n\\midrule\n", head.join(" & ")));
    for (i, strat) in tc.strategies.iter().enumerate() {
        let mut row = vec![tex_escape(strat), tc.n_runs[i].to_string()];
        row.extend(tc.cells[i].iter().map(cell_tex));
        row.push(p_text(
            &tc.p_all[i],
            tc.reference.as_deref() == Some(strat.as_str()),
            true,
        ));
        s.push_str(&format!("{} \\\\\n", row.join(" & ")));
    }
    s.push_str("\\bottomrule\n\\end{tabular}%\n}\n\\end{table}\n");
    s
}

/// A CSV field, quoted when it holds a comma, a quote or a newline.
pub(super) fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// One CSV line: every field quoted where it needs to be, joined by commas, ended by a newline.
pub(super) fn csv_line<S: AsRef<str>>(fields: impl IntoIterator<Item = S>) -> String {
    let mut s = fields
        .into_iter()
        .map(|f| csv_field(f.as_ref()))
        .collect::<Vec<_>>()
        .join(",");
    s.push('\n');
    s
}

/// A full-precision number, empty when missing.
pub(super) fn opt(v: Option<f64>) -> String {
    v.map(|x| format!("{x}")).unwrap_or_default()
}

/// Machine-readable summary: one row per strategy, full precision, mean/std/n per column.
pub fn to_csv(t: &SummaryTable) -> String {
    let cols = columns(t);
    let mut head = vec!["strategy".to_string(), "n_runs".to_string()];
    for c in &cols {
        let k = c.header.to_lowercase().replace(' ', "_");
        head.push(format!("{k}_mean"));
        head.push(format!("{k}_std"));
        head.push(format!("{k}_n"));
    }
    head.extend(["p_vs_reference".to_string(), "n_pairs_used".to_string()]);
    let mut s = csv_line(&head);
    for r in &t.rows {
        let mut f = vec![r.strategy.clone(), r.n_runs.to_string()];
        for st in row_stats(r) {
            f.push(opt(st.map(|x| x.mean)));
            f.push(opt(st.map(|x| x.std)));
            f.push(st.map(|x| x.n.to_string()).unwrap_or_default());
        }
        f.push(opt(r.test_all.as_ref().map(|w| w.p_value)));
        f.push(
            r.test_all
                .as_ref()
                .map(|w| w.n_used.to_string())
                .unwrap_or_default(),
        );
        s += &csv_line(&f);
    }
    s
}

/// All tests: strategy, task ("all" = pooled), pairs, non-zero pairs, W+, W-, statistic, p, method.
pub fn wilcoxon_csv(t: &SummaryTable) -> String {
    let mut s = String::from(
        "strategy,reference,task,n_pairs,n_used,w_plus,w_minus,statistic,p_value,method\n",
    );
    let reference = match &t.reference {
        Some(r) => r.clone(),
        None => return s,
    };
    for r in &t.rows {
        let all = std::iter::once(("all".to_string(), &r.test_all));
        let per = t.tasks.iter().cloned().zip(r.test_task.iter());
        for (task, w) in all.chain(per) {
            if let Some(w) = w {
                s.push_str(&format!(
                    "{},{},{},{},{},{},{},{},{},{}\n",
                    csv_field(&r.strategy),
                    csv_field(&reference),
                    csv_field(&task),
                    w.n_pairs,
                    w.n_used,
                    w.w_plus,
                    w.w_minus,
                    w.statistic,
                    w.p_value,
                    match w.method {
                        WilcoxonMethod::Exact => "exact",
                        WilcoxonMethod::Normal => "normal-approx",
                    }
                ));
            }
        }
    }
    s
}

/// `tables/routing.md`: per routing strategy and stage, where test images went (mean ± std over runs of the
/// `route_*` keys of extras.csv; see the results contract). None when no strategy routes.
pub fn routing_markdown(
    series: &[crate::report::analysis::GrowthSeries],
    strategies: &[String],
) -> Option<String> {
    use crate::report::analysis::ROUTING_KEYS;
    let mut out = String::from(
        "Where test images went, per stage (mean ± std over seeds and orders): `seen`: the tasks trained so \
         far, `new`: the tasks not trained yet.\n\n| strategy | stage | seen: own expert | seen: base | seen: \
         chain (novel) | new: base | runs |\n|---|---:|---:|---:|---:|---:|---:|\n",
    );
    let mut any = false;
    for s in strategies {
        let of = |key: &str| series.iter().find(|g| &g.strategy == s && g.key == key);
        let Some(stages) = ROUTING_KEYS
            .iter()
            .filter_map(|k| of(k))
            .map(|g| g.stages.clone())
            .max_by_key(|v| v.len())
        else {
            continue;
        };
        for st in stages {
            let mut runs = 0;
            let cells: Vec<String> = ROUTING_KEYS
                .iter()
                .map(|k| {
                    of(k)
                        .and_then(|g| g.stages.iter().position(|x| *x == st).map(|i| (g, i)))
                        .map(|(g, i)| {
                            runs = runs.max(g.n[i]);
                            format!("{:.3} ± {:.3}", g.mean[i], g.std[i])
                        })
                        .unwrap_or_else(|| "-".into())
                })
                .collect();
            out += &format!(
                "| {} | {st} | {} | {runs} |\n",
                md_escape(s),
                cells.join(" | ")
            );
            any = true;
        }
    }
    any.then_some(out)
}
