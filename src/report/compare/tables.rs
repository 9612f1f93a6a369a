//! The comparison table as Markdown, LaTeX (booktabs, one `\multicolumn` group per experiment) and CSV. One grid of
//! cells, built once, is rendered three ways so that the formats cannot disagree on a value or on the bold.

use super::analysis::{CompareData, ALPHA as RANK_ALPHA, COMPARE_METRICS};
use crate::report::stats::{Stat, EXACT_MAX_N};
use crate::report::tables::{
    csv_field, csv_line, fmt_num, md_escape, opt, round, tex_escape, ALPHA,
};

/// What a cell holds.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Value {
    /// The experiment has no such strategy (shown as a dash, never as 0).
    Missing,
    /// The strategy ran but the value is undefined (e.g. FWT of a one-task stream).
    Undefined,
    /// Mean ± std over the runs.
    Stat(Stat),
    /// A single number (mean over experiments, average rank).
    Number(f64),
}

/// One cell of the grid.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GridCell {
    /// The value.
    pub value: Value,
    /// Best in its column at the shown precision.
    pub bold: bool,
    /// p < 0.05 against the reference in that experiment's Wilcoxon test.
    pub dagger: bool,
    /// A mean over fewer experiments than the others of its column.
    pub partial: bool,
}

/// The table, format independent: column groups (label, width) and `cells[row][col]`.
#[derive(Clone, Debug, PartialEq)]
pub struct Grid {
    /// Group headers and how many columns each spans (the experiments, "Mean", then the rank column's empty group).
    pub groups: Vec<(String, usize)>,
    /// Column headers with the direction of "better" (true: higher).
    pub columns: Vec<(String, bool)>,
    /// Row labels.
    pub strategies: Vec<String>,
    /// `cells[row][col]`.
    pub cells: Vec<Vec<GridCell>>,
}

fn cell(value: Value) -> GridCell {
    GridCell {
        value,
        bold: false,
        dagger: false,
        partial: false,
    }
}

fn shown(c: &GridCell) -> Option<f64> {
    match c.value {
        Value::Stat(s) if !c.partial => Some(round(s.mean)),
        Value::Number(v) if !c.partial => Some(round(v)),
        _ => None,
    }
}

/// Build the grid: per experiment ACC, BWT, FWT; the means over experiments; the average rank.
pub fn grid(d: &CompareData) -> Grid {
    let up = d.metric.higher_is_better();
    let mut groups: Vec<(String, usize)> = d
        .experiments
        .iter()
        .map(|e| (e.experiment.label.clone(), 3))
        .collect();
    groups.push(("Mean over experiments".into(), 3));
    groups.push((String::new(), 1));
    let dirs = [up, true, true];
    let mut columns: Vec<(String, bool)> = Vec::new();
    for _ in 0..=d.experiments.len() {
        columns.extend(
            COMPARE_METRICS
                .iter()
                .zip(dirs)
                .map(|(m, b)| (m.to_string(), b)),
        );
    }
    columns.push(("Avg. rank".into(), false));
    let max_n: Vec<usize> = (0..3)
        .map(|m| d.rows.iter().map(|r| r.mean_n[m]).max().unwrap_or(0))
        .collect();
    let mut cells: Vec<Vec<GridCell>> = d
        .rows
        .iter()
        .map(|r| {
            let mut row = Vec::new();
            for c in &r.cells {
                match c {
                    None => row.extend([cell(Value::Missing); 3]),
                    Some(c) => {
                        for (m, s) in c.stats.iter().enumerate() {
                            let mut g = cell(s.map(Value::Stat).unwrap_or(Value::Undefined));
                            g.dagger = m == 0 && c.test.as_ref().is_some_and(|w| w.p_value < ALPHA);
                            row.push(g);
                        }
                    }
                }
            }
            for ((mean, n), max) in r.mean.iter().zip(r.mean_n).zip(&max_n) {
                let mut g = cell(mean.map(Value::Number).unwrap_or(Value::Missing));
                g.partial = mean.is_some() && n < *max;
                row.push(g);
            }
            row.push(cell(
                r.avg_rank.map(Value::Number).unwrap_or(Value::Missing),
            ));
            row
        })
        .collect();
    for (j, (_, higher)) in columns.iter().enumerate() {
        let vals: Vec<f64> = cells.iter().filter_map(|r| shown(&r[j])).collect();
        if vals.len() < 2 {
            continue; // a single value is not "best" of anything
        }
        let best = if *higher {
            vals.iter().cloned().fold(f64::NEG_INFINITY, f64::max)
        } else {
            vals.iter().cloned().fold(f64::INFINITY, f64::min)
        };
        for r in cells.iter_mut() {
            r[j].bold = shown(&r[j]) == Some(best);
        }
    }
    Grid {
        groups,
        columns,
        strategies: d.rows.iter().map(|r| r.strategy.clone()).collect(),
        cells,
    }
}

fn cell_text(c: &GridCell, tex: bool) -> String {
    let body = match c.value {
        Value::Missing => return if tex { "--".into() } else { "—".into() },
        Value::Undefined => return "n/a".into(),
        Value::Stat(s) => (fmt_num(s.mean), Some(fmt_num(s.std))),
        Value::Number(v) => (fmt_num(v), None),
    };
    let marks = match (c.dagger, c.partial, tex) {
        (true, _, true) => "^\\dagger",
        (_, true, true) => "^\\ddagger",
        (true, _, false) => "†",
        (_, true, false) => "‡",
        _ => "",
    };
    // (plus-minus, bold open, bold close, cell open, cell close) of each format
    let (pm, b0, b1, c0, c1) = if tex {
        (" \\pm ", "\\mathbf{", "}", "$", "$")
    } else {
        (" ± ", "**", "**", "", "")
    };
    let inner = match &body.1 {
        Some(sd) => format!("{}{pm}{sd}", body.0),
        None => body.0.clone(),
    };
    let inner = if c.bold {
        format!("{b0}{inner}{b1}")
    } else {
        inner
    };
    format!("{c0}{inner}{marks}{c1}")
}

fn arrow(header: &str, higher: bool, tex: bool) -> String {
    match (higher, tex) {
        (true, false) => format!("{header} ↑"),
        (false, false) => format!("{header} ↓"),
        (true, true) => format!("{} $\\uparrow$", tex_escape(header)),
        (false, true) => format!("{} $\\downarrow$", tex_escape(header)),
    }
}

/// The footnote: what the values, marks and ranks are, and the tests used.
pub fn footnote(d: &CompareData, tex: bool) -> Vec<String> {
    let (pm, dag, ddag, chi, le, alpha) = if tex {
        (
            "$\\pm$",
            "$^\\dagger$",
            "$^\\ddagger$",
            "$\\chi^2_F$",
            "$\\le$",
            "$\\alpha$",
        )
    } else {
        ("±", "†", "‡", "χ²_F", "≤", "α")
    };
    let dash = if tex { "--" } else { "—" };
    let (p_lt, cd_fig) = if tex {
        (format!("$p < {ALPHA}$"), "compare\\_cd")
    } else {
        (format!("p < {ALPHA}"), "compare_cd")
    };
    let esc = |s: &str| if tex { tex_escape(s) } else { md_escape(s) };
    let m = d.metric.label();
    let runs: Vec<String> = d
        .experiments
        .iter()
        .map(|e| format!("{} {}", esc(&e.experiment.label), e.max_runs))
        .collect();
    let mut v = vec![format!(
        "Values: mean {pm} sample standard deviation (denominator n-1; 0 for a single run) over each experiment's runs \
         (seeds x orders; runs per strategy: {}). ACC, BWT, FWT in {m} as defined in the results contract. \
         Bold: best per column at the shown precision (highest ACC, BWT, FWT{}; lowest rank). \
         {dash}: the strategy was not run in that experiment (never counted as 0); n/a: undefined (FWT of a one-task stream).",
        runs.join(", "),
        if d.metric.higher_is_better() { "" } else { "; lowest ACC" }
    )];
    let partial = grid(d).cells.iter().flatten().any(|c| c.partial);
    v.push(format!(
        "Mean over experiments: the mean of the experiment means{}",
        if partial {
            format!(
                "; {ddag} over fewer experiments than the other rows (the strategy is missing from some), left out of \
                 the bold."
            )
        } else {
            ".".into()
        }
    ));
    let refs: Vec<&str> = d
        .experiments
        .iter()
        .filter_map(|e| e.reference.as_deref())
        .collect();
    v.push(match refs.first() {
        Some(r) => format!(
            "{dag} {p_lt} against {} in that experiment (ACC columns): two-sided paired Wilcoxon signed-rank test over \
             (seed, order, task, case) pairs at the final stage, all tasks pooled, as in each experiment's own summary \
             table; zero differences dropped, exact null distribution for {le} {EXACT_MAX_N} non-zero differences without \
             ties, otherwise normal approximation with tie and continuity correction.",
            esc(r)
        ),
        None => "No experiment has a strategy named \"evosam\": Wilcoxon tests skipped.".into(),
    });
    let n = d.experiments.len();
    let k = d.ranked.len();
    let mut rank = format!(
        "Avg. rank: the rank of ACC within each experiment (1 = best, ties share their mean rank), averaged over the \
         {n} experiments, for the {k} strategies that every experiment has. "
    );
    match &d.friedman {
        Some(f) => {
            let p = if tex {
                fmt_p(f.p_value).replace('<', "$<$")
            } else {
                fmt_p(f.p_value)
            };
            rank += &format!(
                "Friedman test over the experiments (blocks): {chi} = {:.3}, df = {}, p = {p} (chi-square approximation, \
                 corrected for ties{}).",
                f.statistic,
                f.df,
                if n < 5 { "; with few experiments it has little power" } else { "" }
            );
        }
        None => {
            rank +=
                "Friedman test not computed (needs at least 2 experiments and 2 ranked strategies)."
        }
    }
    match d.cd {
        Some(cd) => rank += &format!(
            " Nemenyi critical difference CD = {cd:.3} at {alpha} = {RANK_ALPHA} (Demsar 2006; figure {cd_fig}): \
             strategies whose average ranks differ by less than CD are not significantly different."
        ),
        None => rank += " No critical-difference figure: it needs at least 3 experiments.",
    }
    v.push(rank);
    v
}

fn fmt_p(p: f64) -> String {
    if p < 0.001 {
        "<0.001".into()
    } else {
        format!("{p:.3}")
    }
}

/// The comparison as Markdown (column headers "experiment: metric"), with its footnote.
pub fn to_markdown(d: &CompareData) -> String {
    let g = grid(d);
    let mut head = vec!["Strategy".to_string()];
    let mut j = 0;
    for (label, span) in &g.groups {
        for _ in 0..*span {
            let (h, up) = &g.columns[j];
            let h = arrow(h, *up, false);
            head.push(if label.is_empty() {
                h
            } else {
                format!("{}: {h}", md_escape(label))
            });
            j += 1;
        }
    }
    let mut s = format!("| {} |\n", head.join(" | "));
    let align: Vec<&str> = (0..head.len())
        .map(|i| if i == 0 { ":---" } else { "---:" })
        .collect();
    s += &format!("| {} |\n", align.join(" | "));
    for (name, row) in g.strategies.iter().zip(&g.cells) {
        let mut f = vec![md_escape(name)];
        f.extend(row.iter().map(|c| cell_text(c, false)));
        s += &format!("| {} |\n", f.join(" | "));
    }
    s.push('\n');
    for line in footnote(d, false) {
        s += &line;
        s += "\n\n";
    }
    s
}

/// The comparison as a LaTeX table (booktabs; `\multicolumn` header per experiment), footnote below it.
pub fn to_latex(d: &CompareData) -> String {
    let g = grid(d);
    let ncols = 1 + g.columns.len();
    let mut s = String::from(
        "% Requires \\usepackage{booktabs} and \\usepackage{graphicx}. Generated by `evosam report --compare`.\n",
    );
    s += "\\begin{table}[t]\n\\centering\n\\small\n";
    s += "\\caption{Continual-learning strategies compared across experiments.}\n\\label{tab:evosam-compare}\n";
    s += "\\resizebox{\\linewidth}{!}{%\n";
    s += &format!(
        "\\begin{{tabular}}{{l{}}}\n\\toprule\n",
        "r".repeat(ncols - 1)
    );
    let mut top = vec![String::new()];
    let mut rules = String::new();
    let mut col = 2;
    for (label, span) in &g.groups {
        if label.is_empty() {
            top.extend(std::iter::repeat_n(String::new(), *span));
        } else {
            top.push(format!(
                "\\multicolumn{{{span}}}{{c}}{{{}}}",
                tex_escape(label)
            ));
            rules += &format!("\\cmidrule(lr){{{col}-{}}}", col + span - 1);
        }
        col += span;
    }
    s += &format!("{} \\\\\n{rules}\n", top.join(" & "));
    let mut head = vec!["Strategy".to_string()];
    head.extend(g.columns.iter().map(|(h, up)| arrow(h, *up, true)));
    s += &format!("{} \\\\\n\\midrule\n", head.join(" & "));
    for (name, row) in g.strategies.iter().zip(&g.cells) {
        let mut f = vec![tex_escape(name)];
        f.extend(row.iter().map(|c| cell_text(c, true)));
        s += &format!("{} \\\\\n", f.join(" & "));
    }
    s += "\\bottomrule\n\\end{tabular}%\n}\n";
    s += &format!(
        "\\par\\smallskip\n\\parbox{{\\linewidth}}{{\\footnotesize {}}}\n\\end{{table}}\n",
        footnote(d, true).join(" ")
    );
    s
}

/// Machine-readable comparison, full precision: per experiment `<label>:n_runs`, `<label>:acc_mean`, `_std`, ...,
/// `<label>:p_vs_reference`, then the means over experiments (with how many experiments each is over) and the
/// average rank. Empty fields: missing or undefined.
pub fn to_csv(d: &CompareData) -> String {
    let mut head = vec!["strategy".to_string()];
    for e in &d.experiments {
        let l = &e.experiment.label;
        head.push(format!("{l}:n_runs"));
        for m in COMPARE_METRICS {
            let m = m.to_lowercase();
            head.push(format!("{l}:{m}_mean"));
            head.push(format!("{l}:{m}_std"));
        }
        head.push(format!("{l}:p_vs_reference"));
    }
    for m in COMPARE_METRICS {
        let m = m.to_lowercase();
        head.push(format!("mean_{m}"));
        head.push(format!("mean_{m}_n_experiments"));
    }
    head.push("avg_rank".into());
    let mut s = csv_line(&head);
    for r in &d.rows {
        let mut f = vec![r.strategy.clone()];
        for c in &r.cells {
            match c {
                None => f.extend(std::iter::repeat_n(String::new(), 8)),
                Some(c) => {
                    f.push(c.n_runs.to_string());
                    for st in c.stats {
                        f.push(opt(st.map(|x| x.mean)));
                        f.push(opt(st.map(|x| x.std)));
                    }
                    f.push(opt(c.test.as_ref().map(|w| w.p_value)));
                }
            }
        }
        for m in 0..3 {
            f.push(opt(r.mean[m]));
            f.push(r.mean_n[m].to_string());
        }
        f.push(opt(r.avg_rank));
        s += &csv_line(&f);
    }
    s
}

/// The Friedman test and the critical difference as one CSV row (header only when not computed).
pub fn friedman_csv(d: &CompareData) -> String {
    let mut s = String::from(
        "n_experiments,k_strategies,statistic,df,p_value,alpha,nemenyi_cd,strategies\n",
    );
    if let Some(f) = &d.friedman {
        s += &format!(
            "{},{},{},{},{},{},{},{}\n",
            f.n_blocks,
            f.k,
            f.statistic,
            f.df,
            f.p_value,
            RANK_ALPHA,
            opt(d.cd),
            csv_field(&d.ranked.join(" "))
        );
    }
    s
}
