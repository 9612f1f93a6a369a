//! Report tests against synthetic results folders generated here. Expected numbers are computed in
//! the tests directly from the generated rows, not through the report's own functions.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::analysis::ReportData;
use super::load::{load_results, ExtraRow, MatrixRow, MetricsRow, ScoreRow};
use super::*;

const STRATEGIES: [&str; 3] = ["finetune", "evosam", "replay"];
const TASKS: [&str; 3] = ["liver", "kidney", "spleen"];
const SEEDS: [i64; 3] = [0, 1, 2];
const CASES: [&str; 4] = ["001", "002", "017", "100"];

/// A synthetic results set following the results contract.
#[derive(Clone)]
pub(crate) struct Synthetic {
    pub scores: Vec<ScoreRow>,
    pub matrix: Vec<MatrixRow>,
    pub metrics: Vec<MetricsRow>,
    pub extras: Vec<ExtraRow>,
}

fn order_tasks<'a>(tasks: &[&'a str], order: &str) -> Vec<&'a str> {
    match order {
        "given" => tasks.to_vec(),
        _ => tasks.iter().rev().copied().collect(),
    }
}

pub(crate) fn synthetic(orders: &[&str]) -> Synthetic {
    synthetic_with(&STRATEGIES, &TASKS, &SEEDS, orders)
}

pub(crate) fn synthetic_with(
    strategies: &[&str],
    tasks: &[&str],
    seeds: &[i64],
    orders: &[&str],
) -> Synthetic {
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let mut scores = Vec::new();
    for &s in strategies {
        for &seed in seeds {
            for &order in orders {
                let seq = order_tasks(tasks, order);
                for stage in 0..=seq.len() as i64 {
                    let trained = if stage == 0 {
                        String::new()
                    } else {
                        seq[stage as usize - 1].to_string()
                    };
                    for (j, task) in seq.iter().enumerate() {
                        let pos = j as i64 + 1;
                        for case in CASES {
                            // Dice: low before training, high right after, decaying for the baselines.
                            let base = if pos > stage {
                                0.4
                            } else {
                                let age = (stage - pos) as f64;
                                match s {
                                    x if x.starts_with("evosam") => 0.85,
                                    "replay" => 0.82 - 0.04 * age,
                                    _ => 0.84 - 0.15 * age,
                                }
                            };
                            let noise: f64 = rng.random_range(-0.08..0.08);
                            // Rounded to 0.01 so that ties and zero differences occur.
                            let dice = ((base + noise).clamp(0.0, 1.0) * 100.0).round() / 100.0;
                            let routed_to = if s.starts_with("evosam") {
                                if pos > stage {
                                    Some("base".to_string())
                                } else if rng.random_range(0.0..1.0) < 0.8 {
                                    Some(task.to_string())
                                } else {
                                    Some(seq[rng.random_range(0..stage as usize)].to_string())
                                }
                            } else {
                                None
                            };
                            scores.push(ScoreRow {
                                strategy: s.into(),
                                seed,
                                order: order.into(),
                                stage,
                                trained_task: trained.clone(),
                                eval_task: task.to_string(),
                                eval_index: pos,
                                case: case.into(),
                                dice,
                                nsd: Some((dice * 0.9 + 0.05).min(1.0)),
                                hd95: Some(20.0 * (1.0 - dice)),
                                routed_to,
                                novelty: None,
                            });
                        }
                    }
                }
            }
        }
    }
    // matrix.csv: mean over cases (as the runner writes it).
    let mut groups: BTreeMap<(String, i64, String, i64, String), Vec<&ScoreRow>> = BTreeMap::new();
    for r in &scores {
        groups
            .entry((
                r.strategy.clone(),
                r.seed,
                r.order.clone(),
                r.stage,
                r.eval_task.clone(),
            ))
            .or_default()
            .push(r);
    }
    let matrix: Vec<MatrixRow> = groups
        .values()
        .map(|rows| MatrixRow {
            strategy: rows[0].strategy.clone(),
            seed: rows[0].seed,
            order: rows[0].order.clone(),
            stage: rows[0].stage,
            trained_task: rows[0].trained_task.clone(),
            eval_task: rows[0].eval_task.clone(),
            eval_index: rows[0].eval_index,
            dice: rows.iter().map(|r| r.dice).sum::<f64>() / rows.len() as f64,
            n_cases: rows.len() as i64,
        })
        .collect();
    // metrics.csv by the contract's definitions.
    let mut metrics = Vec::new();
    let mut extras = Vec::new();
    for &s in strategies {
        for &seed in seeds {
            for &order in orders {
                let t = tasks.len();
                let r = |k: usize, j: usize| {
                    matrix
                        .iter()
                        .find(|m| {
                            m.strategy == s
                                && m.seed == seed
                                && m.order == order
                                && m.stage == k as i64
                                && m.eval_index == j as i64
                        })
                        .map(|m| m.dice)
                        .unwrap()
                };
                let acc = (1..=t).map(|j| r(t, j)).sum::<f64>() / t as f64;
                let (bwt, fwt, fgt) = if t == 1 {
                    (0.0, None, 0.0)
                } else {
                    let bwt = (1..t).map(|j| r(t, j) - r(j, j)).sum::<f64>() / (t - 1) as f64;
                    let fwt = (2..=t).map(|j| r(j - 1, j) - r(0, j)).sum::<f64>() / (t - 1) as f64;
                    let fgt = (1..t)
                        .map(|j| (j..t).map(|l| r(l, j)).fold(f64::MIN, f64::max) - r(t, j))
                        .sum::<f64>()
                        / (t - 1) as f64;
                    (bwt, Some(fwt), fgt)
                };
                let mut extra = BTreeMap::new();
                extra.insert(
                    "matcher_acc".to_string(),
                    if s == "evosam" {
                        Some(0.9 + 0.01 * seed as f64)
                    } else {
                        None
                    },
                );
                metrics.push(MetricsRow {
                    strategy: s.into(),
                    seed,
                    order: order.into(),
                    acc,
                    bwt,
                    fwt,
                    forgetting: fgt,
                    extra,
                });
                for k in 0..=t as i64 {
                    let (params, experts) = match s {
                        x if x.starts_with("evosam") => (k as f64 * 12_288.0, k as f64),
                        _ => (
                            if k == 0 {
                                0.0
                            } else {
                                4_058_340.0 + seed as f64
                            },
                            0.0,
                        ),
                    };
                    for (key, v) in [("trainable_params", params), ("n_experts", experts)] {
                        extras.push(ExtraRow {
                            strategy: s.into(),
                            seed,
                            order: order.into(),
                            stage: k,
                            key: key.into(),
                            value: v,
                        });
                    }
                }
            }
        }
    }
    Synthetic {
        scores,
        matrix,
        metrics,
        extras,
    }
}

/// Write a results folder with the runner's own writers (scores as Parquet and CSV, the rest as CSV); metrics.csv
/// carries the synthetic metric values as given.
pub(crate) fn write_folder(dir: &Path, s: &Synthetic, parquet: bool) {
    use crate::results::{ExtraRow, MatrixRow, MetricsRow, Table};
    std::fs::create_dir_all(dir).unwrap();
    let (pq, csv) = (dir.join("scores.parquet"), dir.join("scores.csv"));
    let scores: Vec<&Path> = if parquet { vec![&pq, &csv] } else { vec![&csv] };
    ScoreRow::write(&s.scores, &scores).unwrap();
    MatrixRow::write(&s.matrix, &[&dir.join("matrix.csv")]).unwrap();
    MetricsRow::write(&s.metrics, &[&dir.join("metrics.csv")]).unwrap();
    ExtraRow::write(&s.extras, &[&dir.join("extras.csv")]).unwrap();
}

/// Independent mean and sample std (two-pass, n-1).
pub(crate) fn ms(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    let m = v.iter().sum::<f64>() / n;
    let var = if v.len() > 1 {
        v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (n - 1.0)
    } else {
        0.0
    };
    (m, var.sqrt())
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-9
}

fn sorted_scores(mut v: Vec<ScoreRow>) -> Vec<ScoreRow> {
    v.sort_by(|a, b| {
        (
            &a.strategy,
            a.seed,
            &a.order,
            a.stage,
            &a.eval_task,
            &a.case,
        )
            .cmp(&(
                &b.strategy,
                b.seed,
                &b.order,
                b.stage,
                &b.eval_task,
                &b.case,
            ))
    });
    v
}

#[test]
fn load_roundtrip_parquet_and_csv() {
    let syn = synthetic(&["given", "reverse"]);
    let tmp = tempfile::tempdir().unwrap();
    for parquet in [true, false] {
        let dir = tmp.path().join(format!("run_{parquet}"));
        write_folder(&dir, &syn, parquet);
        let rs = load_results(std::slice::from_ref(&dir)).unwrap();
        assert_eq!(rs.scores.len(), syn.scores.len());
        let a = sorted_scores(rs.scores.clone());
        let b = sorted_scores(syn.scores.clone());
        for (x, y) in a.iter().zip(b.iter()) {
            assert_eq!(x.case, y.case, "case ids keep leading zeros");
            assert_eq!(x.routed_to, y.routed_to);
            assert_eq!(x.trained_task, y.trained_task);
            assert!(close(x.dice, y.dice));
        }
        assert_eq!(rs.matrix.len(), syn.matrix.len());
        assert_eq!(rs.metrics.len(), syn.metrics.len());
        assert_eq!(rs.extras.len(), syn.extras.len());
        let evo = rs
            .metrics
            .iter()
            .find(|m| m.strategy == "evosam" && m.seed == 1)
            .unwrap();
        assert_eq!(evo.extra.get("matcher_acc").copied().flatten(), Some(0.91));
        let ft = rs
            .metrics
            .iter()
            .find(|m| m.strategy == "finetune")
            .unwrap();
        assert_eq!(ft.extra.get("matcher_acc").copied().flatten(), None);
    }
}

#[test]
fn curves_heatmaps_summary_growth_match_raw_rows() {
    let syn = synthetic(&["given", "reverse"]);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("run");
    write_folder(&dir, &syn, true);
    let data = ReportData::compute(&load_results(&[dir]).unwrap());
    assert_eq!(data.strategies, vec!["evosam", "finetune", "replay"]);
    assert_eq!(data.tasks, vec!["liver", "kidney", "spleen"]);

    // Forgetting curves: every strategy x task, stages 0..=3, over 3 seeds x 2 orders.
    assert_eq!(data.curves.len(), 9);
    for c in &data.curves {
        assert_eq!(c.stages, vec![0, 1, 2, 3]);
        for (i, k) in c.stages.iter().enumerate() {
            let v: Vec<f64> = syn
                .matrix
                .iter()
                .filter(|m| m.strategy == c.strategy && m.eval_task == c.task && m.stage == *k)
                .map(|m| m.dice)
                .collect();
            assert_eq!(v.len(), 6);
            let (m, s) = ms(&v);
            assert!(
                close(c.mean[i], m) && close(c.std[i], s),
                "{} {} stage {k}",
                c.strategy,
                c.task
            );
            assert_eq!(c.n[i], 6);
        }
    }
    // Heatmaps: rows stages, columns positions in the order (orders differ, so generic labels).
    assert_eq!(data.heatmaps.len(), 3);
    for h in &data.heatmaps {
        // "given" = liver, kidney, spleen; "reverse" = spleen, kidney, liver: only position 2 agrees.
        assert_eq!(h.col_labels, vec!["task 1", "kidney", "task 3"]);
        for (ri, k) in h.stages.iter().enumerate() {
            for j in 1..=3i64 {
                let v: Vec<f64> = syn
                    .matrix
                    .iter()
                    .filter(|m| m.strategy == h.strategy && m.stage == *k && m.eval_index == j)
                    .map(|m| m.dice)
                    .collect();
                let (m, s) = ms(&v);
                let cell = h.cells[ri][j as usize - 1].unwrap();
                assert!(close(cell.mean, m) && close(cell.std, s));
            }
        }
    }
    // Summary bars from metrics.csv.
    assert_eq!(data.summary.len(), 12);
    for b in &data.summary {
        let v: Vec<f64> = syn
            .metrics
            .iter()
            .filter(|m| m.strategy == b.strategy)
            .map(|m| match b.metric.as_str() {
                "ACC" => m.acc,
                "BWT" => m.bwt,
                "FWT" => m.fwt.unwrap(),
                _ => m.forgetting,
            })
            .collect();
        let (m, s) = ms(&v);
        let st = b.stat.unwrap();
        assert!(
            close(st.mean, m) && close(st.std, s) && st.n == 6,
            "{} {}",
            b.strategy,
            b.metric
        );
    }
    // Routing confusion: only evosam routes; counts at the final stage (3).
    assert_eq!(data.confusions.len(), 1);
    let cf = &data.confusions[0];
    assert_eq!(cf.strategy, "evosam");
    assert_eq!(cf.true_labels, vec!["liver", "kidney", "spleen"]);
    for (i, t) in cf.true_labels.iter().enumerate() {
        let mut total = 0;
        for (j, r) in cf.routed_labels.iter().enumerate() {
            let n = syn
                .scores
                .iter()
                .filter(|s| s.strategy == "evosam" && s.stage == 3 && &s.eval_task == t)
                .filter(|s| s.routed_to.as_deref() == Some(r.as_str()))
                .count() as u64;
            assert_eq!(cf.counts[i][j], n, "{t} -> {r}");
            total += n;
        }
        assert_eq!(total, 3 * 2 * CASES.len() as u64);
        for j in 0..cf.routed_labels.len() {
            assert!(close(
                cf.fractions[i][j],
                cf.counts[i][j] as f64 / total as f64
            ));
        }
    }
    // Parameter growth.
    assert_eq!(data.growth.len(), 6);
    for g in &data.growth {
        for (i, k) in g.stages.iter().enumerate() {
            let v: Vec<f64> = syn
                .extras
                .iter()
                .filter(|e| e.strategy == g.strategy && e.key == g.key && e.stage == *k)
                .map(|e| e.value)
                .collect();
            let (m, s) = ms(&v);
            assert!(close(g.mean[i], m) && close(g.std[i], s));
        }
    }
    let evo = data
        .growth
        .iter()
        .find(|g| g.strategy == "evosam" && g.key == "n_experts")
        .unwrap();
    assert_eq!(evo.mean, vec![0.0, 1.0, 2.0, 3.0]);
}

/// Independent Wilcoxon pieces: number of non-zero differences and W+ by average ranks. Ties are exact
/// float equality of |d|, as in scipy.stats.wilcoxon.
fn independent_w_plus(d: &[f64]) -> (usize, f64) {
    let nz: Vec<f64> = d.iter().copied().filter(|x| *x != 0.0).collect();
    let mut w = 0.0;
    for x in &nz {
        if *x > 0.0 {
            // average rank of |x|: (#smaller) + (#equal + 1) / 2
            let smaller = nz.iter().filter(|y| y.abs() < x.abs()).count() as f64;
            let equal = nz.iter().filter(|y| y.abs() == x.abs()).count() as f64;
            w += smaller + (equal + 1.0) / 2.0;
        }
    }
    (nz.len(), w)
}

#[test]
fn table_cells_and_tests_match_raw_rows() {
    let syn = synthetic(&["given"]);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("run");
    write_folder(&dir, &syn, false);
    let data = ReportData::compute(&load_results(&[dir]).unwrap());
    let t = &data.table;
    assert_eq!(t.reference.as_deref(), Some("evosam"));
    for row in &t.rows {
        // Final per-task Dice: stage 3 of each seed.
        for (ti, task) in t.tasks.iter().enumerate() {
            let v: Vec<f64> = syn
                .matrix
                .iter()
                .filter(|m| m.strategy == row.strategy && m.stage == 3 && &m.eval_task == task)
                .map(|m| m.dice)
                .collect();
            let (m, s) = ms(&v);
            let st = row.task_dice[ti].unwrap();
            assert!(close(st.mean, m) && close(st.std, s) && st.n == 3);
        }
        let acc: Vec<f64> = syn
            .metrics
            .iter()
            .filter(|m| m.strategy == row.strategy)
            .map(|m| m.acc)
            .collect();
        let (m, s) = ms(&acc);
        assert!(close(row.acc.unwrap().mean, m) && close(row.acc.unwrap().std, s));
        assert_eq!(row.n_runs, 3);
        if row.strategy == "evosam" {
            assert!(row.test_all.is_none());
            continue;
        }
        // Pairs per (seed, order, task, case) at the final stage.
        let get = |s: &str, seed: i64, task: &str, case: &str| {
            syn.scores
                .iter()
                .find(|r| {
                    r.strategy == s
                        && r.seed == seed
                        && r.stage == 3
                        && r.eval_task == task
                        && r.case == case
                })
                .unwrap()
                .dice
        };
        let mut d_all = Vec::new();
        for (ti, task) in t.tasks.iter().enumerate() {
            let mut d = Vec::new();
            for seed in SEEDS {
                for case in CASES {
                    d.push(get(&row.strategy, seed, task, case) - get("evosam", seed, task, case));
                }
            }
            let w = row.test_task[ti].as_ref().unwrap();
            let (n, wp) = independent_w_plus(&d);
            assert_eq!(w.n_pairs, 12);
            assert_eq!(w.n_used, n);
            assert!(close(w.w_plus, wp));
            assert!(close(w.w_plus + w.w_minus, (n * (n + 1)) as f64 / 2.0));
            assert!(w.p_value > 0.0 && w.p_value <= 1.0);
            d_all.extend(d);
        }
        let w = row.test_all.as_ref().unwrap();
        let (n, wp) = independent_w_plus(&d_all);
        assert_eq!((w.n_pairs, w.n_used), (36, n));
        assert!(close(w.w_plus, wp));
    }
    // finetune forgets (task 1 ages by 2 stages): clearly below evosam on liver.
    let ft = t.rows.iter().find(|r| r.strategy == "finetune").unwrap();
    assert!(ft.test_task[0].as_ref().unwrap().p_value < 0.05);

    // Rendered cells: the markdown shows exactly these numbers, best bold, daggers.
    let cells = tables::build_cells(t);
    let md = tables::to_markdown(&cells);
    for (i, row) in t.rows.iter().enumerate() {
        let acc: Vec<f64> = syn
            .metrics
            .iter()
            .filter(|m| m.strategy == row.strategy)
            .map(|m| m.acc)
            .collect();
        let (m, s) = ms(&acc);
        let text = format!("{m:.3} ± {s:.3}");
        let line = md
            .lines()
            .find(|l| l.starts_with(&format!("| {} |", row.strategy)))
            .unwrap();
        assert!(line.contains(&text), "{line} lacks {text}");
        // Bold ACC exactly for the best rounded mean.
        let best = t
            .rows
            .iter()
            .map(|r| (r.acc.unwrap().mean * 1000.0).round())
            .fold(f64::MIN, f64::max);
        let is_best = (m * 1000.0).round() == best;
        assert_eq!(cells.cells[i][0].bold, is_best);
        assert_eq!(line.contains(&format!("**{text}**")), is_best);
        // Forgetting: lowest is best.
        let fg: Vec<f64> = syn
            .metrics
            .iter()
            .filter(|m| m.strategy == row.strategy)
            .map(|m| m.forgetting)
            .collect();
        let best_fg = t
            .rows
            .iter()
            .map(|r| (r.forgetting.unwrap().mean * 1000.0).round())
            .fold(f64::MAX, f64::min);
        assert_eq!(
            cells.cells[i][3].bold,
            (ms(&fg).0 * 1000.0).round() == best_fg
        );
        for (k, w) in row.test_task.iter().enumerate() {
            assert_eq!(
                cells.cells[i][4 + k].dagger,
                w.as_ref().map(|w| w.p_value < 0.05).unwrap_or(false)
            );
        }
    }
    assert!(md.contains("† p < 0.05 against evosam"));
    assert!(md.contains("Zero differences are dropped"));
    let tex = tables::to_latex(&cells);
    assert!(tex.contains("\\toprule") && tex.contains("\\midrule") && tex.contains("\\bottomrule"));
    assert!(tex.contains("\\mathbf{"));
    assert!(tex.contains("^\\dagger$"));
    assert!(!tex.contains("$$"), "adjacent math groups");
    assert!(tex.contains("$p < 0.05$"));
    let csv = tables::to_csv(t);
    assert_eq!(csv.lines().count(), 4);
}

/// The pHYs chunk of a PNG: (x px/unit, y px/unit, unit), read independently of the writer.
fn png_phys(path: &Path) -> Option<(u32, u32, u8)> {
    let b = std::fs::read(path).ok()?;
    let mut pos = 8;
    while pos + 12 <= b.len() {
        let len = u32::from_be_bytes(b[pos..pos + 4].try_into().ok()?) as usize;
        if &b[pos + 4..pos + 8] == b"pHYs" {
            let d = &b[pos + 8..pos + 17];
            return Some((
                u32::from_be_bytes(d[0..4].try_into().ok()?),
                u32::from_be_bytes(d[4..8].try_into().ok()?),
                d[8],
            ));
        }
        pos += 12 + len;
    }
    None
}

fn assert_png_not_blank(path: &Path) {
    // 300 dpi = 11811 pixels per metre.
    assert_eq!(
        png_phys(path),
        Some((11811, 11811, 1)),
        "{}: pHYs",
        path.display()
    );
    let img = image::open(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .to_rgb8();
    let (w, h) = img.dimensions();
    assert!(w >= 1000 && h >= 500, "{}: {w}x{h}", path.display());
    let non_white = img.pixels().filter(|p| p.0 != [255, 255, 255]).count();
    let frac = non_white as f64 / (w * h) as f64;
    assert!(
        frac > 0.01 && frac < 0.95,
        "{}: non-white fraction {frac}",
        path.display()
    );
    let colours: BTreeSet<[u8; 3]> = img.pixels().map(|p| p.0).collect();
    assert!(
        colours.len() > 10,
        "{}: only {} colours",
        path.display(),
        colours.len()
    );
    // Text is rendered: the title row (top 100 px) has dark anti-aliased pixels.
    let dark = (0..100.min(h))
        .flat_map(|y| (0..w).map(move |x| (x, y)))
        .filter(|&(x, y)| img.get_pixel(x, y).0.iter().all(|&c| c < 100))
        .count();
    assert!(
        dark > 200,
        "{}: title text missing ({dark} dark pixels)",
        path.display()
    );
}

fn expected_files() -> Vec<&'static str> {
    vec![
        "plots/forgetting_curves.svg",
        "plots/forgetting_curves.png",
        "plots/matrix_evosam.svg",
        "plots/matrix_evosam.png",
        "plots/matrix_finetune.png",
        "plots/matrix_replay.png",
        "plots/summary_metrics.svg",
        "plots/summary_metrics.png",
        "plots/routing_confusion_evosam.svg",
        "plots/routing_confusion_evosam.png",
        "plots/param_growth.svg",
        "plots/param_growth.png",
        "plots/plot_data.json",
        "tables/summary.md",
        "tables/summary.tex",
        "tables/summary.csv",
        "tables/wilcoxon.csv",
    ]
}

#[test]
fn write_report_writes_every_file() {
    let syn = synthetic(&["given", "reverse"]);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("run");
    write_folder(&dir, &syn, true);
    let summary = write_report(std::slice::from_ref(&dir), &dir).unwrap();
    assert_eq!(summary.files.len(), 3 * 2 + 2 + 2 + 2 + 2 + 1 + 4);
    for f in expected_files() {
        let p = dir.join(f);
        assert!(summary.files.contains(&p), "{f} not listed");
        let len = std::fs::metadata(&p).map(|m| m.len()).unwrap_or(0);
        assert!(len > 100, "{f}: {len} bytes");
    }
    for f in &summary.files {
        if f.extension().and_then(|e| e.to_str()) == Some("png") {
            assert_png_not_blank(f);
        }
        if f.extension().and_then(|e| e.to_str()) == Some("svg") {
            let s = std::fs::read_to_string(f).unwrap();
            assert!(s.contains("<svg") && s.contains("</svg>"));
        }
    }
    let curves = std::fs::read_to_string(dir.join("plots/forgetting_curves.svg")).unwrap();
    for s in STRATEGIES {
        assert!(curves.contains(s), "legend lacks {s}");
    }
    // The data dump holds the plotted numbers.
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("plots/plot_data.json")).unwrap())
            .unwrap();
    assert_eq!(json["curves"].as_array().unwrap().len(), 9);
    if std::env::var_os("EVOSAM_KEEP_REPORT").is_some() {
        let keep = PathBuf::from(std::env::var_os("EVOSAM_KEEP_REPORT").unwrap());
        std::fs::create_dir_all(&keep).unwrap();
        for f in &summary.files {
            std::fs::copy(f, keep.join(f.file_name().unwrap())).unwrap();
        }
        for f in [
            "scores.csv",
            "scores.parquet",
            "matrix.csv",
            "metrics.csv",
            "extras.csv",
        ] {
            std::fs::copy(dir.join(f), keep.join(f)).unwrap();
        }
    }
}

#[test]
fn merging_folders_equals_single_folder() {
    let syn = synthetic(&["given", "reverse"]);
    let tmp = tempfile::tempdir().unwrap();
    let whole = tmp.path().join("whole");
    write_folder(&whole, &syn, true);
    // Split by strategy: part A evosam, part B the baselines plus one matrix row of part A.
    let part = |keep: &dyn Fn(&str) -> bool| Synthetic {
        scores: syn
            .scores
            .iter()
            .filter(|r| keep(&r.strategy))
            .cloned()
            .collect(),
        matrix: syn
            .matrix
            .iter()
            .filter(|r| keep(&r.strategy))
            .cloned()
            .collect(),
        metrics: syn
            .metrics
            .iter()
            .filter(|r| keep(&r.strategy))
            .cloned()
            .collect(),
        extras: syn
            .extras
            .iter()
            .filter(|r| keep(&r.strategy))
            .cloned()
            .collect(),
    };
    let a = part(&|s| s == "evosam");
    let mut b = part(&|s| s != "evosam");
    b.matrix.push(a.matrix[0].clone()); // an exact duplicate across folders
    let (da, db) = (tmp.path().join("a"), tmp.path().join("b"));
    write_folder(&da, &a, true);
    write_folder(&db, &b, false);
    let one = ReportData::compute(&load_results(std::slice::from_ref(&whole)).unwrap());
    let rs = load_results(&[da.clone(), db.clone()]).unwrap();
    assert_eq!(rs.duplicates_dropped.get("matrix.csv"), Some(&1));
    let merged = ReportData::compute(&rs);
    assert_eq!(one.curves, merged.curves);
    assert_eq!(one.heatmaps, merged.heatmaps);
    assert_eq!(one.summary, merged.summary);
    assert_eq!(one.confusions, merged.confusions);
    assert_eq!(one.growth, merged.growth);
    assert_eq!(one.table.rows.len(), merged.table.rows.len());
    for (x, y) in one.table.rows.iter().zip(merged.table.rows.iter()) {
        assert_eq!(x.task_dice, y.task_dice);
        assert_eq!(x.test_all, y.test_all);
    }
    // The same folder twice: everything is a duplicate, numbers unchanged.
    let twice = load_results(&[whole.clone(), whole.clone()]).unwrap();
    assert_eq!(twice.scores.len(), syn.scores.len());
    assert_eq!(
        twice.duplicates_dropped.get("scores"),
        Some(&syn.scores.len())
    );

    // Several folders merge into one report (the CLI's `--out` check is tested in tests/runner.rs).
    let out = tmp.path().join("merged");
    crate::report::write_report(&[da.clone(), db.clone()], &out).unwrap();
    assert!(out.join("tables/summary.md").is_file());
    assert!(out.join("plots/forgetting_curves.png").is_file());
}

#[test]
fn bad_inputs_give_clear_errors() {
    let syn = synthetic(&["given"]);
    let tmp = tempfile::tempdir().unwrap();
    let good = tmp.path().join("good");
    write_folder(&good, &syn, false);
    // Mismatched schema: a matrix.csv with an extra column.
    let odd = tmp.path().join("odd");
    write_folder(&odd, &syn, false);
    let text = std::fs::read_to_string(odd.join("matrix.csv")).unwrap();
    let changed: Vec<String> = text
        .lines()
        .enumerate()
        .map(|(i, l)| {
            if i == 0 {
                format!("{l},extra_col")
            } else {
                format!("{l},1")
            }
        })
        .collect();
    std::fs::write(odd.join("matrix.csv"), changed.join("\n")).unwrap();
    let e = load_results(&[good.clone(), odd.clone()])
        .unwrap_err()
        .to_string();
    assert!(
        e.contains(&odd.display().to_string()) && e.contains("do not match"),
        "{e}"
    );
    // A conflicting row (same key, different dice) across folders.
    let conf = tmp.path().join("conflict");
    let mut c = syn.clone();
    c.scores[0].dice = (c.scores[0].dice + 0.5) % 1.0;
    write_folder(&conf, &c, false);
    let e = load_results(&[good.clone(), conf.clone()])
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("conflicts") && e.contains(&conf.display().to_string()),
        "{e}"
    );
    // A missing column, a non-numeric value, a missing folder.
    let bad = tmp.path().join("bad");
    write_folder(&bad, &syn, false);
    let text = std::fs::read_to_string(bad.join("metrics.csv"))
        .unwrap()
        .replace("acc,", "accuracy,");
    std::fs::write(bad.join("metrics.csv"), text).unwrap();
    let e = load_results(std::slice::from_ref(&bad)).unwrap_err();
    assert_eq!(e.exit_code(), 2);
    assert!(
        e.to_string().contains("metrics.csv") && e.to_string().contains("acc"),
        "{e}"
    );
    let bad2 = tmp.path().join("bad2");
    write_folder(&bad2, &syn, false);
    let text = std::fs::read_to_string(bad2.join("extras.csv")).unwrap();
    let mut lines: Vec<String> = text.lines().map(|s| s.to_string()).collect();
    lines[1] = lines[1].rsplit_once(',').unwrap().0.to_string() + ",lots";
    std::fs::write(bad2.join("extras.csv"), lines.join("\n")).unwrap();
    let e = load_results(std::slice::from_ref(&bad2))
        .unwrap_err()
        .to_string();
    assert!(e.contains("extras.csv") && e.contains("value"), "{e}");
    let e = load_results(&[tmp.path().join("nope")]).unwrap_err();
    assert_eq!(e.exit_code(), 2);
}

#[test]
fn no_reference_strategy_skips_tests_with_a_note() {
    let mut syn = synthetic(&["given"]);
    let rename = |s: &mut String| {
        if s == "evosam" {
            *s = "evosam-lora8".into()
        }
    };
    syn.scores.iter_mut().for_each(|r| rename(&mut r.strategy));
    syn.matrix.iter_mut().for_each(|r| rename(&mut r.strategy));
    syn.metrics.iter_mut().for_each(|r| rename(&mut r.strategy));
    syn.extras.iter_mut().for_each(|r| rename(&mut r.strategy));
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("run");
    write_folder(&dir, &syn, true);
    let summary = write_report(std::slice::from_ref(&dir), &dir).unwrap();
    assert!(summary
        .notes
        .iter()
        .any(|n| n.contains("significance tests are skipped")));
    let md = std::fs::read_to_string(dir.join("tables/summary.md")).unwrap();
    assert!(md.contains("significance tests skipped"));
    assert!(!md.contains('†'));
    // Unknown strategies still get distinct styles.
    let all: Vec<String> = vec!["evosam-lora8".into(), "finetune".into(), "replay".into()];
    let styles: BTreeSet<(u8, u8, u8)> = all
        .iter()
        .map(|s| {
            let (c, _) = plots::strategy_style(s, &all);
            (c.0, c.1, c.2)
        })
        .collect();
    assert_eq!(styles.len(), 3);
}

#[test]
fn many_strategies_long_names_single_run_and_single_task() {
    let strategies = [
        "evosam",
        "evosam-oracle",
        "zeroshot",
        "finetune",
        "ewc",
        "online-ewc",
        "replay",
        "lwf",
        "joint",
        "my-very-long-custom-baseline",
    ];
    let tasks = [
        "abdominal-ct-liver",
        "kidney",
        "cardiac-mri-left-ventricle",
        "polyp",
        "spleen",
    ];
    let syn = synthetic_with(&strategies, &tasks, &[3], &["given"]);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("run");
    write_folder(&dir, &syn, true);
    let summary = write_report(std::slice::from_ref(&dir), &dir).unwrap();
    let data = ReportData::compute(&load_results(std::slice::from_ref(&dir)).unwrap());
    // One run per strategy: std 0 everywhere, n = 1.
    assert!(data
        .curves
        .iter()
        .all(|c| c.std.iter().all(|s| *s == 0.0) && c.n.iter().all(|n| *n == 1)));
    assert_eq!(data.heatmaps[0].col_labels, tasks.to_vec());
    assert_eq!(data.confusions.len(), 2); // evosam and evosam-oracle route
    for f in &summary.files {
        if f.extension().and_then(|e| e.to_str()) == Some("png") {
            assert_png_not_blank(f);
        }
    }
    // Colours are distinct across the ten strategies.
    let all: Vec<String> = data.strategies.clone();
    let cols: BTreeSet<(u8, u8, u8)> = all
        .iter()
        .map(|s| {
            let (c, _) = plots::strategy_style(s, &all);
            (c.0, c.1, c.2)
        })
        .collect();
    assert_eq!(cols.len(), 10);
    if let Some(keep) = std::env::var_os("EVOSAM_KEEP_REPORT") {
        let keep = PathBuf::from(keep).join("many");
        std::fs::create_dir_all(&keep).unwrap();
        for f in &summary.files {
            std::fs::copy(f, keep.join(f.file_name().unwrap())).unwrap();
        }
    }

    // A single task: FWT undefined (null) for every run, the chart says n/a, the table shows n/a.
    let one = synthetic_with(&["evosam", "finetune"], &["liver"], &[0, 1], &["given"]);
    assert!(one.metrics.iter().all(|m| m.fwt.is_none()));
    let dir1 = tmp.path().join("one");
    write_folder(&dir1, &one, false);
    let summary = write_report(std::slice::from_ref(&dir1), &dir1).unwrap();
    let data = ReportData::compute(&load_results(std::slice::from_ref(&dir1)).unwrap());
    assert!(data
        .summary
        .iter()
        .filter(|b| b.metric == "FWT")
        .all(|b| b.stat.is_none()));
    let md = std::fs::read_to_string(dir1.join("tables/summary.md")).unwrap();
    assert!(md
        .lines()
        .filter(|l| l.starts_with("| evosam") || l.starts_with("| finetune"))
        .all(|l| l.contains("n/a")));
    for f in &summary.files {
        if f.extension().and_then(|e| e.to_str()) == Some("png") {
            assert_png_not_blank(f);
        }
    }
    if let Some(keep) = std::env::var_os("EVOSAM_KEEP_REPORT") {
        let keep = PathBuf::from(keep).join("one");
        std::fs::create_dir_all(&keep).unwrap();
        for f in &summary.files {
            std::fs::copy(f, keep.join(f.file_name().unwrap())).unwrap();
        }
    }
}

#[test]
fn non_finite_values_are_left_out_with_a_note() {
    let mut syn = synthetic(&["given"]);
    // One NaN in matrix.csv (evosam, seed 0, stage 3, first task) and one in the scores.
    let i = syn
        .matrix
        .iter()
        .position(|m| m.strategy == "evosam" && m.seed == 0 && m.stage == 3 && m.eval_index == 1)
        .unwrap();
    syn.matrix[i].dice = f64::NAN;
    let task = syn.matrix[i].eval_task.clone();
    let j = syn
        .scores
        .iter()
        .position(|r| r.strategy == "finetune" && r.stage == 3)
        .unwrap();
    syn.scores[j].dice = f64::NAN;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("run");
    write_folder(&dir, &syn, false);
    let summary = write_report(std::slice::from_ref(&dir), &dir).unwrap();
    assert!(summary.notes.iter().any(|n| n.contains("NaN")));
    let data = ReportData::compute(&load_results(std::slice::from_ref(&dir)).unwrap());
    let c = data
        .curves
        .iter()
        .find(|c| c.strategy == "evosam" && c.task == task)
        .unwrap();
    let v: Vec<f64> = syn
        .matrix
        .iter()
        .filter(|m| {
            m.strategy == "evosam" && m.eval_task == task && m.stage == 3 && m.dice.is_finite()
        })
        .map(|m| m.dice)
        .collect();
    assert_eq!(v.len(), 2);
    assert_eq!(c.n[3], 2);
    assert!(close(c.mean[3], ms(&v).0));
    let ft = data
        .table
        .rows
        .iter()
        .find(|r| r.strategy == "finetune")
        .unwrap();
    assert_eq!(
        ft.test_all.as_ref().unwrap().n_pairs,
        3 * 3 * CASES.len() - 1
    );
}

/// Timing on a full-size results set (not run by default):
/// `cargo test --release --lib report::tests::large_results_timing -- --ignored --nocapture`
#[test]
#[ignore = "micro-benchmark: prints timings, asserts nothing; run by hand with --ignored --nocapture"]
fn large_results_timing() {
    let strategies = [
        "evosam",
        "evosam-oracle",
        "zeroshot",
        "finetune",
        "ewc",
        "online-ewc",
        "replay",
        "lwf",
        "joint",
    ];
    let tasks = ["t1", "t2", "t3", "t4", "t5", "t6"];
    let mut syn = synthetic_with(&strategies, &tasks, &[0, 1, 2], &["given", "reverse"]);
    // 4 cases per (stage, task) -> 48 by repeating with new case ids.
    let base = syn.scores.clone();
    for k in 1..12 {
        syn.scores.extend(base.iter().map(|r| {
            let mut r = r.clone();
            r.case = format!("{}-{k}", r.case);
            r
        }));
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("run");
    write_folder(&dir, &syn, true);
    let t0 = std::time::Instant::now();
    let summary = write_report(std::slice::from_ref(&dir), &dir).unwrap();
    eprintln!(
        "{} score rows: {} files in {:.2?}",
        syn.scores.len(),
        summary.files.len(),
        t0.elapsed()
    );
}

/// `--metric hd95`: the same files, task columns named HD95, lower is bold, and the numbers are those of the
/// hd95 column (the fixture's hd95 = 20 (1 - dice): ACC in HD95 = 20 (1 - ACC in Dice)).
#[test]
fn report_in_hd95_and_nsd() {
    let syn = synthetic(&["given"]);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("run");
    write_folder(&dir, &syn, true);
    let out = tmp.path().join("hd95");
    let metric = crate::metrics::Metric::Hd95;
    let summary = crate::report::write_report_in(std::slice::from_ref(&dir), &out, metric).unwrap();
    assert!(summary
        .files
        .iter()
        .any(|f| f.ends_with("plots/forgetting_curves.svg")));
    let rs = load_results(std::slice::from_ref(&dir)).unwrap();
    let dice = ReportData::compute(&rs);
    let hd = ReportData::compute_metric(&rs, metric).unwrap();
    assert_eq!(hd.metric, metric);
    for (d, h) in dice.table.rows.iter().zip(&hd.table.rows) {
        let (a, b) = (d.acc.unwrap().mean, h.acc.unwrap().mean);
        assert!(
            (b - 20.0 * (1.0 - a)).abs() < 1e-9,
            "{} {a} {b}",
            d.strategy
        );
        // lower is better: BWT keeps its sign (scaled by 20), forgetting too
        assert!((h.bwt.unwrap().mean - 20.0 * d.bwt.unwrap().mean).abs() < 1e-9);
        assert!((h.forgetting.unwrap().mean - 20.0 * d.forgetting.unwrap().mean).abs() < 1e-9);
    }
    let cells = crate::report::tables::build_cells(&hd.table);
    assert!(cells.columns[0].header == "ACC" && !cells.columns[0].higher_is_better);
    assert!(cells.columns.iter().any(|c| c.header.starts_with("HD95 ")));
    // the bold ACC is the lowest mean
    let accs: Vec<f64> = cells
        .cells
        .iter()
        .map(|r| r[0].stat.unwrap().mean)
        .collect();
    let best = accs.iter().copied().fold(f64::INFINITY, f64::min);
    for (r, a) in cells.cells.iter().zip(&accs) {
        assert_eq!(r[0].bold, (a * 1000.0).round() == (best * 1000.0).round());
    }
    let md = std::fs::read_to_string(out.join("tables/summary.md")).unwrap();
    assert!(md.contains("HD95") && md.contains("lowest for ACC"), "{md}");
    let nsd = ReportData::compute_metric(&rs, crate::metrics::Metric::Nsd).unwrap();
    assert!(crate::report::tables::build_cells(&nsd.table)
        .columns
        .iter()
        .any(|c| c.header.starts_with("NSD ")));
}
