//! Helpers shared by the robustness tests: the binary, a tiny synthetic spec, runs, kills and table comparison.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The `evosam` binary with one compute thread (several tests run at once on a small machine).
pub fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_evosam"));
    c.env("RAYON_NUM_THREADS", "1");
    c
}

/// stdout + stderr of a finished command.
pub fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A file's text, or a panic naming it.
pub fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// Every stateful strategy kind (zeroshot has no state).
pub const STATEFUL: [&str; 7] = [
    "finetune",
    "ewc",
    "online-ewc",
    "replay",
    "lwf",
    "joint",
    "evosam",
];

/// A synthetic vessel stream on the tiny random-weight model: one task per name in `tasks` (site = its
/// position), task orders `orders`, `epochs` epochs, and `kinds` as strategies.
pub fn synthetic_spec(
    name: &str,
    orders: &[&str],
    tasks: &[&str],
    kinds: &[&str],
    epochs: usize,
) -> String {
    let orders: Vec<String> = orders.iter().map(|o| format!("\"{o}\"")).collect();
    let mut s = format!(
        "[experiment]\nname = \"{name}\"\nseeds = [0]\n\n[stream]\norders = [{}]\n",
        orders.join(", ")
    );
    for (i, t) in tasks.iter().enumerate() {
        s.push_str(&format!(
            "\n[[stream.task]]\nname = \"{t}\"\nsource = \"synthetic\"\nfamily = \"vessels\"\nsite = {i}\n\
             train = 4\ntest = 2\nsize = 64\n"
        ));
    }
    s.push_str(&format!(
        "\n[model]\nweights = \"random-tiny\"\n\n[train]\nepochs = {epochs}\nbatch_size = 2\nlr = 0.01\n"
    ));
    for k in kinds {
        s.push_str(&format!("\n[[strategy]]\npreset = \"{k}\"\n"));
    }
    s
}

/// A three-task synthetic stream ("given" order only) on the tiny random-weight model with `kinds` as strategies.
pub fn tiny_spec(name: &str, kinds: &[&str], epochs: usize) -> String {
    synthetic_spec(name, &["given"], &["ta", "tb", "tc"], kinds, epochs)
}

/// A two-task synthetic stream (tasks va, vb; orders given and reverse) on the tiny random-weight model.
pub fn two_task_spec(name: &str, kinds: &[&str], epochs: usize) -> String {
    synthetic_spec(name, &["given", "reverse"], &["va", "vb"], kinds, epochs)
}

/// `$EVOSAM_SHARED_DATA`, else `../shared/data` next to the crate.
pub fn shared_data() -> PathBuf {
    std::env::var("EVOSAM_SHARED_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/data"))
}

/// Write `text` as `dir/<file>` and return the path.
pub fn write(dir: &Path, file: &str, text: &str) -> PathBuf {
    let p = dir.join(file);
    std::fs::write(&p, text).unwrap();
    p
}

/// `evosam run SPEC --out OUT --quiet --no-report [extra]` to completion.
pub fn run(spec: &Path, out: &Path, extra: &[&str]) -> Output {
    bin()
        .arg("run")
        .arg(spec)
        .arg("--out")
        .arg(out)
        .arg("--quiet")
        .args(extra)
        .output()
        .unwrap()
}

/// Start `evosam run` (with `--resume` when `resume`) in the background.
pub fn spawn(spec: &Path, out: &Path, resume: bool, extra: &[&str]) -> Child {
    let mut c = bin();
    c.arg("run")
        .arg(spec)
        .arg("--out")
        .arg(out)
        .arg("--quiet")
        .args(extra);
    if resume {
        c.arg("--resume");
    }
    c.stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// Poll (every millisecond) until `cond` holds, then SIGKILL the child. Returns false when the child ended first.
pub fn kill_when(child: &mut Child, mut cond: impl FnMut() -> bool) -> bool {
    let t0 = Instant::now();
    loop {
        if cond() {
            child.kill().unwrap(); // SIGKILL
            let _ = child.wait();
            return true;
        }
        if child.try_wait().unwrap().is_some() {
            return false;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(300),
            "the run neither ended nor reached the kill point"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// The tables a run must reproduce byte for byte.
pub const TABLES: [&str; 4] = ["scores.csv", "matrix.csv", "metrics.csv", "extras.csv"];

/// Assert that two run folders hold byte-identical tables and identical final strategy states.
pub fn assert_same_results(a: &Path, b: &Path, what: &str) {
    for f in TABLES {
        let (x, y) = (read(&a.join(f)), read(&b.join(f)));
        assert!(
            x == y,
            "{what}: {f} differs\n--- uninterrupted\n{x}\n--- resumed\n{y}"
        );
    }
    // the last checkpoint of every cell: tensors bit for bit (safetensors metadata order is not fixed)
    for cell in std::fs::read_dir(a.join("cells")).unwrap() {
        let cell = cell.unwrap().file_name();
        let last = (0..10)
            .rev()
            .map(|k| PathBuf::from(&cell).join(format!("stage_{k}/state")))
            .find(|p| a.join("cells").join(p).is_dir());
        let Some(state) = last else { continue };
        assert_same_state(
            &a.join("cells").join(&state),
            &b.join("cells").join(&state),
            what,
        );
    }
}

/// Every file under `dir`, as paths relative to it, sorted.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p.strip_prefix(dir).unwrap().to_path_buf());
            }
        }
    }
    out.sort();
    out
}

fn assert_same_state(a: &Path, b: &Path, what: &str) {
    let (fa, fb) = (files_under(a), files_under(b));
    assert_eq!(fa, fb, "{what}: {} holds other files", b.display());
    for f in fa {
        let (x, y) = (
            std::fs::read(a.join(&f)).unwrap(),
            std::fs::read(b.join(&f)).unwrap(),
        );
        let name = f.display().to_string();
        if name.ends_with(".safetensors") {
            let (sx, sy) = (
                safetensors::SafeTensors::deserialize(&x).unwrap(),
                safetensors::SafeTensors::deserialize(&y).unwrap(),
            );
            let mut nx = sx.names();
            let mut ny = sy.names();
            nx.sort();
            ny.sort();
            assert_eq!(nx, ny, "{what}: {name}: tensor names");
            for n in nx {
                assert!(
                    sx.tensor(n).unwrap().data() == sy.tensor(n).unwrap().data(),
                    "{what}: {name}: tensor {n} differs after resume ({})",
                    b.display()
                );
            }
        } else if name.ends_with(".json") {
            let (jx, jy): (serde_json::Value, serde_json::Value) = (
                serde_json::from_slice(&x).unwrap(),
                serde_json::from_slice(&y).unwrap(),
            );
            assert!(
                jx == jy,
                "{what}: {name} differs after resume ({})",
                b.display()
            );
        } else {
            assert!(
                x == y,
                "{what}: {name} differs after resume ({})",
                b.display()
            );
        }
    }
}

/// The highest committed stage of a cell, if any.
pub fn stages_done(run_dir: &Path, cell: &str) -> Option<usize> {
    (0..10).rev().find(|k| {
        run_dir
            .join(format!("cells/{cell}/stage_{k}/done"))
            .is_file()
    })
}
