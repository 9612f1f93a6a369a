//! The same tables on every machine: a small run (synthetic, 3 tasks, EvoSAM + EWC + replay on the tiny
//! random-weight model, whose maps are large enough for every kernel to split its work) under every instruction
//! set this CPU has (`EVOSAM_ISA`) and with 1, 2 and 3 compute threads gives byte-identical `matrix.csv`,
//! `scores.csv` and `extras.csv`, equal to the committed golden tables in `tests/golden/`, which CI compares on
//! whatever CPU it runs on.
//!
//! Regenerate the golden tables (after a change that is meant to alter the numbers; say why in the commit):
//!
//!     EVOSAM_BLESS=1 cargo test --release --locked --test portable

mod common;

use std::path::{Path, PathBuf};

use common::{bin, text, tiny_spec, write};

const TABLES: [&str; 3] = ["matrix.csv", "scores.csv", "extras.csv"];

fn golden_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

/// Run the spec with `EVOSAM_ISA=isa` (None: the CPU's widest) and `threads` compute threads.
fn run(spec: &Path, out: &Path, isa: Option<&str>, threads: usize) -> Vec<(String, String)> {
    let mut c = bin();
    c.env("RAYON_NUM_THREADS", threads.to_string())
        .env_remove("EVOSAM_ISA")
        .env_remove("EVOSAM_NUMERICS");
    if let Some(isa) = isa {
        c.env("EVOSAM_ISA", isa);
    }
    let o = c
        .arg("run")
        .arg(spec)
        .arg("--out")
        .arg(out)
        .args(["--quiet", "--no-report", "--jobs", "1"])
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "isa {isa:?}, {threads} threads: {}",
        text(&o)
    );
    TABLES
        .iter()
        .map(|t| {
            let p = out.join("portable").join(t);
            let s = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            (t.to_string(), s)
        })
        .collect()
}

/// The instruction sets this CPU can run, by the binary's own answer (exit 2 where it lacks one).
fn isas_here(spec: &Path) -> Vec<&'static str> {
    ["scalar", "avx2", "avx512"]
        .into_iter()
        .filter(|isa| {
            let o = bin()
                .env("EVOSAM_ISA", isa)
                .args(["validate", "--no-data"])
                .arg(spec)
                .output()
                .unwrap();
            match o.status.code() {
                Some(0) => true,
                Some(2) => {
                    assert!(text(&o).contains("does not support"), "{}", text(&o));
                    false
                }
                _ => panic!("validate under {isa}: {}", text(&o)),
            }
        })
        .collect()
}

#[test]
fn same_tables_on_every_isa_and_thread_count_and_equal_to_golden() {
    let tmp = tempfile::tempdir().unwrap();
    let spec = write(
        tmp.path(),
        "portable.toml",
        &tiny_spec("portable", &["evosam", "ewc", "replay"], 1),
    );
    let isas = isas_here(&spec);
    assert!(isas.contains(&"scalar"));
    eprintln!("instruction sets on this CPU: {isas:?}");
    let mut runs: Vec<(String, Vec<(String, String)>)> = Vec::new();
    for isa in &isas {
        let out = tmp.path().join(format!("isa-{isa}"));
        runs.push((
            format!("EVOSAM_ISA={isa}, 2 threads"),
            run(&spec, &out, Some(isa), 2),
        ));
    }
    for threads in [1, 3] {
        let out = tmp.path().join(format!("threads-{threads}"));
        runs.push((
            format!("default ISA, {threads} threads"),
            run(&spec, &out, None, threads),
        ));
    }
    let golden = golden_dir();
    if std::env::var("EVOSAM_BLESS").is_ok_and(|v| v == "1") {
        std::fs::create_dir_all(&golden).unwrap();
        for (t, s) in &runs[0].1 {
            std::fs::write(golden.join(t), s).unwrap();
        }
        eprintln!("wrote the golden tables to {}", golden.display());
    }
    for (t, _) in &runs[0].1 {
        let want = std::fs::read_to_string(golden.join(t)).unwrap_or_else(|e| {
            panic!("tests/golden/{t}: {e} (regenerate: EVOSAM_BLESS=1 cargo test --release --test portable)")
        });
        for (label, tables) in &runs {
            let got = &tables.iter().find(|(n, _)| n == t).unwrap().1;
            if *got != want {
                let line = got
                    .lines()
                    .zip(want.lines())
                    .position(|(a, b)| a != b)
                    .unwrap_or(0);
                panic!(
                    "{t} under {label} differs from tests/golden/{t} at line {}:\n  got  {}\n  want {}",
                    line + 1,
                    got.lines().nth(line).unwrap_or(""),
                    want.lines().nth(line).unwrap_or("")
                );
            }
        }
    }
    eprintln!(
        "{} runs ({}) gave the golden tables byte for byte",
        runs.len(),
        runs.iter()
            .map(|r| r.0.as_str())
            .collect::<Vec<_>>()
            .join("; ")
    );
}

#[test]
fn a_forced_isa_the_cpu_lacks_or_an_unknown_one_is_refused_with_exit_2() {
    let tmp = tempfile::tempdir().unwrap();
    let spec = write(tmp.path(), "s.toml", &tiny_spec("s", &["zeroshot"], 1));
    let o = bin()
        .env("EVOSAM_ISA", "sse9")
        .args(["validate", "--no-data"])
        .arg(&spec)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("EVOSAM_ISA"), "{}", text(&o));
    let o = bin()
        .env("EVOSAM_NUMERICS", "quick")
        .args(["validate", "--no-data"])
        .arg(&spec)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
}
