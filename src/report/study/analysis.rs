//! The numbers of the study report: per group (annotator, or "all") and model, the summaries of time per case,
//! prompts per case and Dice at accept, and the paired Wilcoxon test over cases seen under both models.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::annotate::tables::CaseRow;
use crate::report::stats::{wilcoxon_signed_rank, Wilcoxon};

/// The measures compared.
pub const MEASURES: [(&str, &str); 3] = [
    ("seconds", "Time per case (s)"),
    ("n_prompts", "Prompts per case"),
    ("final_dice", "Dice at accept"),
];

fn value(r: &CaseRow, measure: &str) -> Option<f64> {
    match measure {
        "seconds" => Some(r.seconds),
        "n_prompts" => Some(r.n_prompts as f64),
        _ => r.final_dice,
    }
}

/// Five-number summary + mean of one (group, model, measure).
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct BoxStat {
    /// Values summarised.
    pub n: usize,
    /// Minimum.
    pub min: f64,
    /// First quartile.
    pub q1: f64,
    /// Median.
    pub median: f64,
    /// Third quartile.
    pub q3: f64,
    /// Maximum.
    pub max: f64,
    /// Mean.
    pub mean: f64,
}

/// Quantile with linear interpolation (NumPy's default) of non-empty values.
fn quantile(values: &[f64], q: f64) -> f64 {
    crate::util::quantile(values, q).unwrap_or(f64::NAN)
}

impl BoxStat {
    /// Summary of values (None when empty).
    pub fn of(values: &[f64]) -> Option<BoxStat> {
        if values.is_empty() {
            return None;
        }
        let mut v = values.to_vec();
        v.sort_by(f64::total_cmp);
        Some(BoxStat {
            n: v.len(),
            min: v[0],
            q1: quantile(&v, 0.25),
            median: quantile(&v, 0.5),
            q3: quantile(&v, 0.75),
            max: v[v.len() - 1],
            mean: v.iter().sum::<f64>() / v.len() as f64,
        })
    }
}

/// One (group, measure) comparison: both models' summaries and the paired test.
#[derive(Clone, Debug, Serialize)]
pub struct Comparison {
    /// An annotator's name or "all".
    pub group: String,
    /// Measure key.
    pub measure: String,
    /// Summary per model (in the study's model order).
    pub stats: Vec<Option<BoxStat>>,
    /// Cases with a value under both models.
    pub n_pairs: usize,
    /// The paired test of model 0 against model 1 (None without a non-zero difference).
    pub wilcoxon: Option<Wilcoxon>,
}

/// Everything the study report shows.
#[derive(Clone, Debug, Serialize)]
pub struct StudyReport {
    /// Model labels (EvoSAM first).
    pub models: Vec<String>,
    /// Groups: annotators in name order, then "all".
    pub groups: Vec<String>,
    /// Values per (group, model, measure) for the box plots.
    pub values: BTreeMap<String, Vec<BTreeMap<String, Vec<f64>>>>,
    /// One comparison per group and measure.
    pub comparisons: Vec<Comparison>,
    /// Accepted cases.
    pub n_rows: usize,
}

/// Per case (for a group's rows) and model: the mean value.
fn per_case(rows: &[&CaseRow], model: &str, measure: &str) -> BTreeMap<String, f64> {
    let mut acc: BTreeMap<String, (f64, usize)> = BTreeMap::new();
    for r in rows.iter().filter(|r| r.model == model) {
        if let Some(v) = value(r, measure) {
            let e = acc.entry(r.case.clone()).or_default();
            e.0 += v;
            e.1 += 1;
        }
    }
    acc.into_iter()
        .map(|(k, (s, n))| (k, s / n as f64))
        .collect()
}

impl StudyReport {
    /// Compute from the accepted cases; `models` from `study.json`.
    pub fn compute(rows: &[CaseRow], models: &[String]) -> StudyReport {
        let mut groups: Vec<String> = rows.iter().map(|r| r.annotator.clone()).collect();
        groups.sort();
        groups.dedup();
        groups.push("all".into());
        let mut values = BTreeMap::new();
        let mut comparisons = Vec::new();
        for g in &groups {
            let rs: Vec<&CaseRow> = rows
                .iter()
                .filter(|r| g == "all" || &r.annotator == g)
                .collect();
            let mut per_model = Vec::new();
            for m in models {
                let mut by = BTreeMap::new();
                for (key, _) in MEASURES {
                    let v: Vec<f64> = rs
                        .iter()
                        .filter(|r| &r.model == m)
                        .filter_map(|r| value(r, key))
                        .collect();
                    by.insert(key.to_string(), v);
                }
                per_model.push(by);
            }
            for (key, _) in MEASURES {
                let stats = per_model.iter().map(|by| BoxStat::of(&by[key])).collect();
                let (mut x, mut y) = (Vec::new(), Vec::new());
                if models.len() == 2 {
                    let a = per_case(&rs, &models[0], key);
                    let b = per_case(&rs, &models[1], key);
                    for (case, va) in &a {
                        if let Some(vb) = b.get(case) {
                            x.push(*va);
                            y.push(*vb);
                        }
                    }
                }
                comparisons.push(Comparison {
                    group: g.clone(),
                    measure: key.to_string(),
                    stats,
                    n_pairs: x.len(),
                    wilcoxon: wilcoxon_signed_rank(&x, &y),
                });
            }
            values.insert(g.clone(), per_model);
        }
        StudyReport {
            models: models.to_vec(),
            groups,
            values,
            comparisons,
            n_rows: rows.len(),
        }
    }
}
