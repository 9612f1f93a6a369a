//! `evosam submit` through a real Slurm: the results tables equal those of `evosam run` byte for byte, a
//! cancelled array task is reported by finalize, and submitting again completes the run.
//!
//! These tests need a running Slurm whose jobs see this machine's files (a single node is enough):
//!
//! ```sh
//! eval "$(scripts/slurm-single-node.sh up)"     # installs slurm-wlm + munge if missing; sets SLURM_CONF
//! cargo test --release --locked --test slurm -- --ignored --test-threads=1
//! scripts/slurm-single-node.sh down
//! ```
//!
//! Without Slurm they are skipped (ignored, with the reason shown by `cargo test`).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::{read, text, two_task_spec};

const TABLES: [&str; 5] = [
    "scores.csv",
    "matrix.csv",
    "metrics.csv",
    "extras.csv",
    "scores.parquet",
];

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_evosam"))
}

fn require_slurm() {
    let ok = Command::new("sinfo")
        .args(["-h", "-o", "%T"])
        .output()
        .map(|o| o.status.success() && !o.stdout.is_empty())
        .unwrap_or(false);
    assert!(
        ok,
        "Slurm is not reachable (sinfo failed; SLURM_CONF={:?}). Start it with \
         `eval \"$(scripts/slurm-single-node.sh up)\"`",
        std::env::var("SLURM_CONF").ok()
    );
}

/// A folder for the test's files, kept under the crate's target dir (the single-node Slurm's jobs run as the
/// same user on this machine; a path with a space checks the quoting of the job scripts).
fn work_dir(name: &str) -> PathBuf {
    let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("slurm test/{name}"));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// The spec and the tables of a local `evosam run` of it (computed once for both tests).
fn reference() -> &'static (PathBuf, PathBuf) {
    static REF: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
    REF.get_or_init(|| {
        let d = work_dir("local");
        let spec = d.join("tiny slurm.toml");
        // six cells (3 strategies x 2 orders); enough epochs that a training cell runs for a few seconds, so
        // that one can be cancelled while it runs
        let spec_text = two_task_spec("tiny-slurm", &["zeroshot", "finetune", "ewc"], 6);
        std::fs::write(&spec, spec_text).unwrap();
        let t = Instant::now();
        let o = bin()
            .arg("run")
            .arg(&spec)
            .arg("--out")
            .arg(d.join("results"))
            .args(["--quiet", "--no-report"])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", text(&o));
        eprintln!("local run: {:.1} s", t.elapsed().as_secs_f64());
        (spec, d.join("results/tiny-slurm"))
    })
}

struct Ids {
    prepare: String,
    cells: String,
    finalize: String,
}

fn submit(spec: &Path, out: &Path, extra: &[&str]) -> (Ids, String) {
    let o = bin()
        .arg("submit")
        .arg(spec)
        .arg("--out")
        .arg(out)
        .args(["--cpus-per-task", "1", "--time", "00:10:00"])
        .args(extra)
        .output()
        .unwrap();
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    let field = |key: &str| {
        t.lines()
            .find_map(|l| l.strip_prefix(key))
            .map(|r| r.split_whitespace().next().unwrap_or("").to_string())
            .unwrap_or_else(|| panic!("no {key:?} in\n{t}"))
    };
    let ids = Ids {
        prepare: field("prepare job:"),
        cells: field("cells array:"),
        finalize: field("finalize job:"),
    };
    (ids, t)
}

/// Wait until none of the jobs is queued or running.
fn wait_done(ids: &Ids, limit: Duration) {
    let t = Instant::now();
    let mine = |id: &str| id.parse::<u64>().ok();
    let want: Vec<u64> = [&ids.prepare, &ids.cells, &ids.finalize]
        .iter()
        .filter_map(|i| mine(i))
        .collect();
    loop {
        let q = evosam::cluster::slurm::any_queued(&want).expect("squeue failed");
        if q.is_empty() {
            return;
        }
        assert!(
            t.elapsed() < limit,
            "jobs still queued after {limit:?}: {q:?}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn status(dir: &Path) -> String {
    let o = bin().arg("status").arg(dir).output().unwrap();
    assert!(o.status.success(), "{}", text(&o));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn assert_same_tables(a: &Path, b: &Path) {
    for f in TABLES {
        let (x, y) = (std::fs::read(a.join(f)), std::fs::read(b.join(f)));
        let (x, y) = (
            x.unwrap_or_else(|e| panic!("{}: {e}", a.join(f).display())),
            y.unwrap_or_else(|e| panic!("{}: {e}", b.join(f).display())),
        );
        assert!(
            x == y,
            "{f} differs between {} and {}",
            a.display(),
            b.display()
        );
    }
}

#[test]
#[ignore = "needs a running Slurm (scripts/slurm-single-node.sh up)"]
fn slurm_submission_equals_local_run() {
    require_slurm();
    let (spec, local) = reference();
    let d = work_dir("submit");
    let t = Instant::now();
    let (ids, _) = submit(spec, &d.join("results"), &[]);
    let run = d.join("results/tiny-slurm");
    // while it runs: one line per cell and a summary
    let s = status(&run);
    assert!(s.contains(&format!("prepare {}", ids.prepare)), "{s}");
    assert_eq!(
        s.lines().filter(|l| l.contains("__seed0__")).count(),
        6,
        "{s}"
    );
    wait_done(&ids, Duration::from_secs(600));
    eprintln!("submission: {:.1} s", t.elapsed().as_secs_f64());
    let flog = run.join(format!("slurm/logs/finalize_{}.out", ids.finalize));
    let log = read(&flog);
    assert!(!log.contains("error:"), "finalize failed:\n{log}");
    assert_same_tables(local, &run);
    // finalize wrote what `run` writes: manifest and report
    assert!(run.join("manifest.json").is_file());
    assert!(run.join("tables/summary.md").is_file(), "{log}");
    let s = status(&run);
    assert!(
        s.contains("6 cells: 6 done, 0 running, 0 waiting, 0 failed"),
        "{s}"
    );
    // every cell ran in its own array task
    let logs = std::fs::read_dir(run.join("slurm/logs"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with(&format!("cells_{}_", ids.cells))
        })
        .count();
    assert_eq!(logs, 6);
}

#[test]
#[ignore = "needs a running Slurm (scripts/slurm-single-node.sh up)"]
fn slurm_cancelled_cell_is_reported_and_resubmit_completes() {
    require_slurm();
    let (spec, local) = reference();
    let d = work_dir("cancel");
    // one cell at a time, so that the cancelled one is the only one running when it is cancelled
    let (ids, _) = submit(spec, &d.join("results"), &["--max-parallel", "1"]);
    let run = d.join("results/tiny-slurm");
    // a second chain over the same cells while the first is queued would race it: refused
    let o = bin()
        .arg("submit")
        .arg(spec)
        .arg("--out")
        .arg(d.join("results"))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("still queued or running"), "{}", text(&o));
    let victim = 2; // finetune__seed0__given: trains
    let cell = run.join("cells/finetune__seed0__given");
    let t = Instant::now();
    // wait until it trains (its first stage, zero-shot evaluation, is written), then cancel its task
    while !cell.join("stage_0/done").is_file() {
        assert!(
            t.elapsed() < Duration::from_secs(300),
            "cell {victim} never started"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let o = Command::new("scancel")
        .arg(format!("{}_{victim}", ids.cells))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    wait_done(&ids, Duration::from_secs(600));
    let stages = (0..)
        .take_while(|k| cell.join(format!("stage_{k}/done")).is_file())
        .count();
    assert!(
        stages < 3,
        "the cell finished before it could be cancelled; make it longer"
    );

    // finalize names the cell and its log, and fails
    let log = read(&run.join(format!("slurm/logs/finalize_{}.out", ids.finalize)));
    let cell_log = run.join(format!("slurm/logs/cells_{}_{victim}.out", ids.cells));
    assert!(log.contains("finetune__seed0__given"), "{log}");
    assert!(log.contains(&cell_log.display().to_string()), "{log}");
    assert!(log.contains("error: 1 of 6 cells failed"), "{log}");
    let s = status(&run);
    assert!(
        s.contains("6 cells: 5 done, 0 running, 0 waiting, 1 failed"),
        "{s}"
    );
    assert!(
        s.lines()
            .any(|l| l.starts_with("finetune__seed0__given") && l.contains("failed")),
        "{s}"
    );

    // submitting again runs only that cell, resuming from its last stage, and completes the run
    let (ids2, out) = submit(spec, &d.join("results"), &["--max-parallel", "1"]);
    assert!(out.contains("5 of 6 cells already finished"), "{out}");
    assert!(out.contains(&format!("--array={victim}%1")), "{out}");
    wait_done(&ids2, Duration::from_secs(600));
    let log = read(&run.join(format!("slurm/logs/finalize_{}.out", ids2.finalize)));
    assert!(!log.contains("error:"), "{log}");
    assert_same_tables(local, &run);
    let s = status(&run);
    assert!(s.contains("6 cells: 6 done"), "{s}");
}
