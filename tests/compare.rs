//! `evosam report --compare` on real runner output: two experiments run on the tiny random-weight model; the
//! comparison table's numbers are checked against each experiment's own metrics.csv (means and sample standard
//! deviations computed here), a strategy one experiment lacks is empty/dashed (never 0), and the plain report
//! refuses the mix with a message that points at --compare.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use common::{bin, read, run, text, tiny_spec, two_task_spec, write};

/// (header, rows) of a plain CSV file (no quoted fields in these tables).
fn csv(path: &Path) -> (Vec<String>, Vec<Vec<String>>) {
    let t = read(path);
    let mut lines = t.lines();
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

fn mean_std(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    let m = v.iter().sum::<f64>() / n;
    let var = if v.len() > 1 {
        v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (n - 1.0)
    } else {
        0.0
    };
    (m, var.sqrt())
}

/// strategy -> column -> (mean, std) over the runs of metrics.csv.
fn metrics_stats(dir: &Path) -> BTreeMap<String, BTreeMap<String, (f64, f64)>> {
    let (head, rows) = csv(&dir.join("metrics.csv"));
    let col = |n: &str| head.iter().position(|h| h == n).unwrap();
    let mut by: BTreeMap<String, BTreeMap<String, Vec<f64>>> = BTreeMap::new();
    for r in &rows {
        for m in ["acc", "bwt", "fwt"] {
            by.entry(r[col("strategy")].clone())
                .or_default()
                .entry(m.to_string())
                .or_default()
                .push(r[col(m)].parse().unwrap());
        }
    }
    by.into_iter()
        .map(|(s, m)| (s, m.into_iter().map(|(k, v)| (k, mean_std(&v))).collect()))
        .collect()
}

#[test]
fn compare_table_matches_each_experiments_metrics_csv() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("results");
    // a: three tasks, one order; b: two tasks, two orders (two runs per strategy), with replay a lacks
    let specs = [
        (
            "cmp-a",
            tiny_spec("cmp-a", &["zeroshot", "finetune", "evosam"], 1),
        ),
        (
            "cmp-b",
            two_task_spec("cmp-b", &["zeroshot", "finetune", "evosam", "replay"], 1),
        ),
    ];
    for (name, spec) in &specs {
        let p = write(tmp.path(), &format!("{name}.toml"), spec);
        let o = run(&p, &out, &["--no-report"]);
        assert!(o.status.success(), "{name}: {}", text(&o));
    }
    let (a, b) = (out.join("cmp-a"), out.join("cmp-b"));

    // Without --compare: exit 2, and the message names both experiments and --compare.
    let o = bin()
        .arg("report")
        .args([&a, &b])
        .arg("--out")
        .arg(tmp.path().join("plain"))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let msg = text(&o);
    assert!(
        msg.contains("--compare") && msg.contains("cmp-a") && msg.contains("cmp-b"),
        "{msg}"
    );

    let cmp = tmp.path().join("cmp");
    let o = bin()
        .arg("report")
        .args([&a, &b])
        .arg("--compare")
        .arg("--out")
        .arg(&cmp)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    for f in [
        "tables/compare.md",
        "tables/compare.tex",
        "plots/compare_acc.svg",
        "plots/compare_acc.png",
    ] {
        assert!(cmp.join(f).is_file(), "{f}");
    }

    let (head, rows) = csv(&cmp.join("tables/compare.csv"));
    let col = |n: &str| {
        head.iter()
            .position(|h| h == n)
            .unwrap_or_else(|| panic!("{n}"))
    };
    let want = [("cmp-a", metrics_stats(&a)), ("cmp-b", metrics_stats(&b))];
    let mut checked = 0;
    for r in &rows {
        let s = &r[0];
        for (label, stats) in &want {
            match stats.get(s) {
                Some(m) => {
                    for key in ["acc", "bwt", "fwt"] {
                        let (mean, std) = m[key];
                        let got: f64 = r[col(&format!("{label}:{key}_mean"))].parse().unwrap();
                        let got_sd: f64 = r[col(&format!("{label}:{key}_std"))].parse().unwrap();
                        assert!(
                            (got - mean).abs() < 1e-12,
                            "{s} {label} {key}: {got} vs {mean}"
                        );
                        assert!(
                            (got_sd - std).abs() < 1e-12,
                            "{s} {label} {key} std: {got_sd} vs {std}"
                        );
                        checked += 1;
                    }
                }
                None => {
                    assert_eq!(r[col(&format!("{label}:acc_mean"))], "", "{s} in {label}");
                    assert_eq!(r[col(&format!("{label}:n_runs"))], "", "{s} in {label}");
                }
            }
        }
    }
    assert_eq!(checked, (3 + 4) * 3);
    // replay: missing from cmp-a, dashes in the Markdown, its mean over one experiment only
    let md = read(&cmp.join("tables/compare.md"));
    let replay: Vec<&str> = md
        .lines()
        .find(|l| l.starts_with("| replay |"))
        .unwrap()
        .split(" | ")
        .collect();
    assert_eq!(&replay[1..4], ["—", "—", "—"], "{md}");
    let rrow = rows.iter().find(|r| r[0] == "replay").unwrap();
    assert_eq!(rrow[col("mean_acc_n_experiments")], "1");
    assert_eq!(rrow[col("avg_rank")], "");
    let tex = read(&cmp.join("tables/compare.tex"));
    assert!(
        tex.contains("\\multicolumn{3}{c}{cmp-a}") && tex.contains("\\multicolumn{3}{c}{cmp-b}")
    );
}
