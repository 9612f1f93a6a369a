//! The comparison against each experiment's own metrics.csv rows (expected numbers computed here from the rows
//! written, not through the report's functions) and the rank statistics against SciPy.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::*;
use crate::report::tests::{ms, synthetic_with, write_folder, Synthetic};

/// A results folder of experiment `name` (its manifest records the name and a fingerprint).
fn experiment(dir: &Path, name: &str, syn: &Synthetic) -> PathBuf {
    write_folder(dir, syn, false);
    let m = serde_json::json!({"experiment": name, "spec_fingerprint": format!("fp-{name}")});
    std::fs::write(dir.join("manifest.json"), m.to_string()).unwrap();
    dir.to_path_buf()
}

/// strategy -> [ACC, BWT, FWT] (mean, std) from the metrics rows.
fn expected(syn: &Synthetic) -> BTreeMap<String, [(f64, f64); 3]> {
    let mut by: BTreeMap<String, [Vec<f64>; 3]> = BTreeMap::new();
    for r in &syn.metrics {
        let e = by.entry(r.strategy.clone()).or_default();
        e[0].push(r.acc);
        e[1].push(r.bwt);
        e[2].push(r.fwt.unwrap());
    }
    by.into_iter()
        .map(|(s, v)| (s, [ms(&v[0]), ms(&v[1]), ms(&v[2])]))
        .collect()
}

fn csv_table(text: &str) -> (Vec<String>, Vec<Vec<String>>) {
    let mut lines = text.lines();
    let head = lines
        .next()
        .unwrap()
        .split(',')
        .map(str::to_string)
        .collect();
    (
        head,
        lines
            .map(|l| l.split(',').map(str::to_string).collect())
            .collect(),
    )
}

#[test]
fn compare_table_matches_each_experiments_metrics_and_shows_missing_as_missing() {
    let tmp = tempfile::tempdir().unwrap();
    let alpha = synthetic_with(
        &["finetune", "evosam", "replay"],
        &["liver", "kidney", "spleen"],
        &[0, 1, 2],
        &["given", "reverse"],
    );
    let beta = synthetic_with(
        &["finetune", "evosam", "replay"],
        &["a", "b"],
        &[0, 1],
        &["given"],
    );
    // gamma has no replay
    let gamma = synthetic_with(
        &["finetune", "evosam"],
        &["w", "x", "y", "z"],
        &[0, 3],
        &["given"],
    );
    let dirs = vec![
        experiment(&tmp.path().join("a"), "alpha", &alpha),
        experiment(&tmp.path().join("b"), "beta", &beta),
        experiment(&tmp.path().join("g"), "gamma", &gamma),
    ];
    let out = tmp.path().join("cmp");
    let summary = write_compare_report(&dirs, &out, Metric::Dice).unwrap();
    for f in [
        "tables/compare.md",
        "tables/compare.tex",
        "tables/compare.csv",
        "tables/compare_friedman.csv",
        "plots/compare_acc.svg",
        "plots/compare_acc.png",
        "plots/compare_cd.svg",
        "plots/compare_cd.png",
        "plots/compare_data.json",
    ] {
        assert!(summary.files.contains(&out.join(f)), "{f} not written");
    }
    let exp = [expected(&alpha), expected(&beta), expected(&gamma)];
    let labels = ["alpha", "beta", "gamma"];
    let (head, rows) = csv_table(&std::fs::read_to_string(out.join("tables/compare.csv")).unwrap());
    let col = |name: &str| {
        head.iter()
            .position(|h| h == name)
            .unwrap_or_else(|| panic!("{name}"))
    };
    let num = |row: &[String], name: &str| row[col(name)].parse::<f64>().ok();
    assert_eq!(rows.len(), 3);
    for row in &rows {
        let s = &row[0];
        let mut means = [vec![], vec![], vec![]];
        for (e, label) in exp.iter().zip(labels) {
            match e.get(s) {
                Some(v) => {
                    for (m, key) in ["acc", "bwt", "fwt"].iter().enumerate() {
                        let (mean, std) = v[m];
                        let got = num(row, &format!("{label}:{key}_mean")).unwrap();
                        let got_sd = num(row, &format!("{label}:{key}_std")).unwrap();
                        assert!(
                            (got - mean).abs() < 1e-12,
                            "{s} {label} {key}: {got} vs {mean}"
                        );
                        assert!(
                            (got_sd - std).abs() < 1e-12,
                            "{s} {label} {key} std: {got_sd} vs {std}"
                        );
                        means[m].push(mean);
                    }
                }
                None => {
                    // missing, not 0
                    assert_eq!(row[col(&format!("{label}:acc_mean"))], "", "{s} {label}");
                    assert_eq!(row[col(&format!("{label}:n_runs"))], "");
                }
            }
        }
        for (m, key) in ["acc", "bwt", "fwt"].iter().enumerate() {
            let want = means[m].iter().sum::<f64>() / means[m].len() as f64;
            assert!((num(row, &format!("mean_{key}")).unwrap() - want).abs() < 1e-12);
            assert_eq!(
                num(row, &format!("mean_{key}_n_experiments")),
                Some(means[m].len() as f64)
            );
        }
    }
    // Ranks over the strategies all three have (finetune, evosam), by hand from the ACC means.
    let acc = |e: usize, s: &str| exp[e][s][0].0;
    let mut evo_rank = 0.0;
    for e in 0..3 {
        evo_rank += match acc(e, "evosam").partial_cmp(&acc(e, "finetune")).unwrap() {
            std::cmp::Ordering::Greater => 1.0,
            std::cmp::Ordering::Less => 2.0,
            std::cmp::Ordering::Equal => 1.5,
        };
    }
    let evo_rank = evo_rank / 3.0;
    let by_name = |s: &str| rows.iter().find(|r| r[0] == s).unwrap();
    assert!((num(by_name("evosam"), "avg_rank").unwrap() - evo_rank).abs() < 1e-12);
    assert!((num(by_name("finetune"), "avg_rank").unwrap() - (3.0 - evo_rank)).abs() < 1e-12);
    assert_eq!(num(by_name("replay"), "avg_rank"), None);
    // CD for k = 2 over N = 3: 1.9599639845400534 (scipy studentized_range.ppf(0.95, 2, inf) / sqrt(2))
    // * sqrt(2 * 3 / (6 * 3))
    let f = std::fs::read_to_string(out.join("tables/compare_friedman.csv")).unwrap();
    let (fh, fr) = csv_table(&f);
    let cd: f64 = fr[0][fh.iter().position(|h| h == "nemenyi_cd").unwrap()]
        .parse()
        .unwrap();
    assert!(
        (cd - 1.9599639845400534 * (1.0f64 / 3.0).sqrt()).abs() < 1e-6,
        "{cd}"
    );

    // Markdown: replay's gamma cells are dashes, its mean is marked as partial.
    let md = std::fs::read_to_string(out.join("tables/compare.md")).unwrap();
    let replay: Vec<&str> = md
        .lines()
        .find(|l| l.starts_with("| replay |"))
        .unwrap()
        .split(" | ")
        .collect();
    // columns: strategy, alpha x3, beta x3, gamma x3, mean x3, rank
    assert_eq!(&replay[7..10], ["—", "—", "—"], "{replay:?}");
    assert!(replay[10].ends_with('‡'), "{replay:?}");
    assert!(
        md.contains("Friedman test") && md.contains("Wilcoxon signed-rank") && md.contains("CD = ")
    );
    // LaTeX: one \multicolumn group per experiment and the mean, booktabs rules, the footnote.
    let tex = std::fs::read_to_string(out.join("tables/compare.tex")).unwrap();
    for l in labels {
        assert!(
            tex.contains(&format!("\\multicolumn{{3}}{{c}}{{{l}}}")),
            "{l}"
        );
    }
    assert!(
        tex.contains("\\cmidrule(lr){2-4}")
            && tex.contains("\\toprule")
            && tex.contains("\\bottomrule")
    );
    assert!(
        tex.contains("\\mathbf{") && tex.contains("\\footnotesize") && tex.contains("Friedman")
    );
    let svg = std::fs::read_to_string(out.join("plots/compare_acc.svg")).unwrap();
    for l in labels {
        assert!(svg.contains(l), "panel {l}");
    }
}

#[test]
fn friedman_over_experiments_matches_scipy() {
    // The fixed table of stats.rs's tests: 5 experiments x 4 strategies, ACC per (experiment, strategy); scipy
    // 1.17.1: friedmanchisquare(*np.array(TABLE).T) -> (8.937499999999998, 0.030133503572178515), average ranks
    // [1.2, 2.3, 3.2, 3.3] (rankdata of -ACC per row, averaged).
    let table = [
        [0.80, 0.75, 0.70, 0.72],
        [0.85, 0.80, 0.80, 0.60],
        [0.78, 0.79, 0.65, 0.66],
        [0.90, 0.70, 0.72, 0.71],
        [0.88, 0.81, 0.77, 0.77],
    ];
    let names = ["evosam", "replay", "ewc", "finetune"];
    let tmp = tempfile::tempdir().unwrap();
    let mut dirs = Vec::new();
    for (e, accs) in table.iter().enumerate() {
        let mut syn = synthetic_with(&names, &["p", "q"], &[0], &["given"]);
        for r in &mut syn.metrics {
            r.acc = accs[names.iter().position(|n| *n == r.strategy).unwrap()];
        }
        dirs.push(experiment(
            &tmp.path().join(format!("e{e}")),
            &format!("exp{e}"),
            &syn,
        ));
    }
    let d = CompareData::compute(&group_experiments(&dirs).unwrap(), Metric::Dice).unwrap();
    let f = d.friedman.as_ref().unwrap();
    assert_eq!((f.n_blocks, f.k, f.df), (5, 4, 3));
    assert!((f.statistic - 8.9375).abs() < 1e-12, "{}", f.statistic);
    assert!((f.p_value - 0.030133503572178515).abs() < 1e-9);
    for (n, want) in names.iter().zip([1.2, 2.3, 3.2, 3.3]) {
        let r = d.rows.iter().find(|r| r.strategy == *n).unwrap();
        assert!((r.avg_rank.unwrap() - want).abs() < 1e-12, "{n}");
    }
    // scipy: studentized_range.ppf(0.95, 4, np.inf) / np.sqrt(2) = 2.569031772546482; CD = q * sqrt(4*5/(6*5))
    assert!((d.cd.unwrap() - 2.569031772546482 * (20.0f64 / 30.0).sqrt()).abs() < 1e-6);
    let md = tables::to_markdown(&d);
    // 8.937499999999998 shown to 3 decimals
    assert!(md.contains("= 8.937, df = 3, p = 0.030"), "{md}");
    // best average rank in bold
    assert!(
        md.lines()
            .any(|l| l.starts_with("| evosam |") && l.ends_with("**1.200** |")),
        "{md}"
    );
    // the figures: ACC panels and the critical-difference diagram (EVOSAM_KEEP_COMPARE=DIR keeps them to look at)
    let out = std::env::var_os("EVOSAM_KEEP_COMPARE")
        .map(PathBuf::from)
        .unwrap_or_else(|| tmp.path().join("out"));
    let s = write_compare_data(&d, &out).unwrap();
    assert!(s.files.contains(&out.join("plots/compare_cd.png")));
    let cd_svg = std::fs::read_to_string(out.join("plots/compare_cd.svg")).unwrap();
    assert!(
        cd_svg.contains("CD = 2.10") && cd_svg.contains("evosam (1.20)"),
        "{cd_svg}"
    );
}

#[test]
fn parts_of_one_experiment_merge_and_different_experiments_need_compare() {
    let tmp = tempfile::tempdir().unwrap();
    let syn = synthetic_with(&["finetune", "evosam"], &["a", "b"], &[0], &["given"]);
    let part = |keep: &str| Synthetic {
        scores: syn
            .scores
            .iter()
            .filter(|r| r.strategy == keep)
            .cloned()
            .collect(),
        matrix: syn
            .matrix
            .iter()
            .filter(|r| r.strategy == keep)
            .cloned()
            .collect(),
        metrics: syn
            .metrics
            .iter()
            .filter(|r| r.strategy == keep)
            .cloned()
            .collect(),
        extras: syn
            .extras
            .iter()
            .filter(|r| r.strategy == keep)
            .cloned()
            .collect(),
    };
    let p1 = experiment(&tmp.path().join("p1"), "alpha", &part("finetune"));
    let p2 = experiment(&tmp.path().join("p2"), "alpha", &part("evosam"));
    let other = experiment(&tmp.path().join("o"), "beta", &syn);
    let groups = group_experiments(&[p1.clone(), other.clone(), p2.clone()]).unwrap();
    assert_eq!(groups.len(), 2);
    assert_eq!(groups[0].run_dirs, vec![p1.clone(), p2.clone()]);
    assert_eq!(
        (groups[0].label.as_str(), groups[1].label.as_str()),
        ("alpha", "beta")
    );
    // the plain report merges the parts, and refuses two experiments, pointing at --compare
    crate::report::write_report(&[p1.clone(), p2.clone()], &tmp.path().join("r")).unwrap();
    let e = crate::report::write_report(&[p1.clone(), other.clone()], &tmp.path().join("r2"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("--compare") && e.contains("alpha") && e.contains("beta"),
        "{e}"
    );
    // --compare with one experiment is refused
    let e = write_compare_report(
        &[p1.clone(), p2.clone()],
        &tmp.path().join("c"),
        Metric::Dice,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("at least two experiments"), "{e}");
    // same name, other fingerprint: another experiment, labelled with the fingerprint
    let fp2 = experiment(&tmp.path().join("fp2"), "beta", &syn);
    std::fs::write(
        fp2.join("manifest.json"),
        r#"{"experiment": "beta", "spec_fingerprint": "0123456789abcdef"}"#,
    )
    .unwrap();
    let g = group_experiments(&[other.clone(), fp2]).unwrap();
    assert_eq!(g[1].label, "beta (01234567)");
    // folders recording nothing: the row merge still rejects a conflict, and says what --compare is for
    let (u1, u2) = (tmp.path().join("u1"), tmp.path().join("u2"));
    write_folder(&u1, &syn, false);
    let mut changed = syn.clone();
    changed.metrics[0].acc += 0.1;
    write_folder(&u2, &changed, false);
    let e = crate::report::write_report(&[u1, u2], &tmp.path().join("r3"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("conflicts") && e.contains("--compare"), "{e}");
}
