//! The study table: per group and measure, median [IQR] (n) per model and the paired Wilcoxon test.

use super::analysis::{StudyReport, MEASURES};

fn cell(s: &Option<super::analysis::BoxStat>, digits: usize) -> String {
    match s {
        Some(b) => format!(
            "{:.d$} [{:.d$}–{:.d$}] (n={})",
            b.median,
            b.q1,
            b.q3,
            b.n,
            d = digits
        ),
        None => "–".into(),
    }
}

fn digits(measure: &str) -> usize {
    match measure {
        "final_dice" => 3,
        "n_prompts" => 1,
        _ => 1,
    }
}

fn label(measure: &str) -> &'static str {
    MEASURES
        .iter()
        .find(|(k, _)| *k == measure)
        .map(|(_, l)| *l)
        .unwrap_or("")
}

/// Markdown.
pub fn to_markdown(r: &StudyReport) -> String {
    let mut s = String::new();
    s.push_str("| Annotator | Measure |");
    for m in &r.models {
        s.push_str(&format!(" {m}: median [IQR] |"));
    }
    s.push_str(" Paired cases | p (Wilcoxon) |\n| :--- | :--- |");
    for _ in &r.models {
        s.push_str(" ---: |");
    }
    s.push_str(" ---: | ---: |\n");
    for c in &r.comparisons {
        s.push_str(&format!("| {} | {} |", c.group, label(&c.measure)));
        for st in &c.stats {
            s.push_str(&format!(" {} |", cell(st, digits(&c.measure))));
        }
        let p = c
            .wilcoxon
            .as_ref()
            .map(|w| format!("{:.3}", w.p_value))
            .unwrap_or_else(|| "–".into());
        s.push_str(&format!(" {} | {} |\n", c.n_pairs, p));
    }
    s.push_str(&format!(
        "\nMedian [first–third quartile] over accepted cases (n). Paired: cases annotated under both models \
         (per case, the mean over its annotations under each model), two-sided Wilcoxon signed-rank test of {} \
         against {}; – where no pair differs.\n",
        r.models.first().map(String::as_str).unwrap_or("?"),
        r.models.get(1).map(String::as_str).unwrap_or("?"),
    ));
    s
}

/// CSV: one row per group, measure and model.
pub fn to_csv(r: &StudyReport) -> String {
    let mut s = String::from("group,measure,model,n,min,q1,median,q3,max,mean,n_pairs,p_value\n");
    for c in &r.comparisons {
        for (m, st) in r.models.iter().zip(&c.stats) {
            let p = c
                .wilcoxon
                .as_ref()
                .map(|w| w.p_value.to_string())
                .unwrap_or_default();
            match st {
                Some(b) => s.push_str(&format!(
                    "{},{},{},{},{},{},{},{},{},{},{},{}\n",
                    c.group,
                    c.measure,
                    m,
                    b.n,
                    b.min,
                    b.q1,
                    b.median,
                    b.q3,
                    b.max,
                    b.mean,
                    c.n_pairs,
                    p
                )),
                None => s.push_str(&format!(
                    "{},{},{},0,,,,,,,{},{}\n",
                    c.group, c.measure, m, c.n_pairs, p
                )),
            }
        }
    }
    s
}
