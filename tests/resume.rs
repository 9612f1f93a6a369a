//! Kill and resume through the real binary: every stateful strategy kind killed at every stage boundary, seeded
//! random kills (also while the tables and the report are written), and two processes on one folder.

mod common;

use common::*;
use rand::{Rng, SeedableRng};
use std::time::{Duration, Instant};

/// Every stateful kind, SIGKILLed right after each of its stages 1 and 2 is committed (a three-task stream),
/// then resumed: the tables and every cell's final state equal an uninterrupted run's. Regression test for online
/// EWC, whose anchor kept a backprop edge to the live parameters, so its penalty did nothing before a restore and
/// pulled after one (a kill after its second task changed the stage-3 row).
#[test]
fn every_kind_killed_at_every_stage_boundary_resumes_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let spec = write(tmp.path(), "b.toml", &tiny_spec("b", &STATEFUL, 2));
    let a = tmp.path().join("a");
    let o = run(&spec, &a, &["--no-report"]);
    assert!(o.status.success(), "{}", text(&o));

    let b = tmp.path().join("b");
    let rb = b.join("b");
    let mut first = true;
    let mut kills = 0;
    for kind in STATEFUL {
        let cell = format!("{kind}__seed0__given");
        for k in 1..3 {
            let mut child = spawn(&spec, &b, !first, &["--no-report"]);
            first = false;
            let marker = rb.join(format!("cells/{cell}/stage_{k}/done"));
            let killed = kill_when(&mut child, || marker.is_file());
            assert!(killed, "{cell}: the run ended before stage {k} was seen");
            // the kill landed before the next stage was committed: the resume restores exactly stage k
            assert_eq!(
                stages_done(&rb, &cell),
                Some(k),
                "{cell}: killed too late (poll the marker faster)"
            );
            kills += 1;
        }
    }
    assert_eq!(kills, 14);
    let o = run(&spec, &b, &["--resume", "--no-report"]);
    assert!(o.status.success(), "{}", text(&o));
    assert_same_results(&a.join("b"), &rb, "killed at every stage boundary");
}

/// Seeded random kills of a real run (at any moment: data loading, training, checkpoint commits, tables, report),
/// each followed by `--resume`; every chain ends with tables identical to an uninterrupted run. Targeted kills
/// land while the tables are written and while the report is drawn.
#[test]
fn random_kills_then_resume_give_identical_tables() {
    let tmp = tempfile::tempdir().unwrap();
    // two kinds per chain (finetune is in every other test)
    let chains: [&[&str]; 3] = [
        &["online-ewc", "evosam"],
        &["replay", "lwf"],
        &["ewc", "joint"],
    ];
    let seed: u64 = std::env::var("EVOSAM_KILL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(14);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut trials = 0;
    for (c, kinds) in chains.iter().enumerate() {
        let name = format!("k{c}");
        let spec = write(
            tmp.path(),
            &format!("{name}.toml"),
            &tiny_spec(&name, kinds, 2),
        );
        let a = tmp.path().join(format!("a{c}"));
        let t0 = Instant::now();
        let o = run(&spec, &a, &[]);
        assert!(o.status.success(), "{}", text(&o));
        let full = t0.elapsed().as_secs_f64();
        let b = tmp.path().join(format!("b{c}"));
        let rb = b.join(&name);
        // three kills at random moments of the remaining work
        for i in 0..3 {
            let mut child = spawn(&spec, &b, i > 0, &[]);
            let at = Duration::from_secs_f64(rng.random_range(0.05..full.max(0.1)));
            let t = Instant::now();
            let killed = kill_when(&mut child, || t.elapsed() >= at);
            eprintln!(
                "chain {c} ({kinds:?}) kill {i}: at {:.2} s of a {full:.2} s run: {}",
                at.as_secs_f64(),
                if killed { "killed" } else { "had finished" }
            );
            trials += 1;
        }
        // then once while the tables are written (scores.parquet is the first table) or the report is drawn
        let marker = if c % 2 == 0 {
            rb.join("scores.parquet")
        } else {
            rb.join("plots")
        };
        let _ = std::fs::remove_file(rb.join("scores.parquet"));
        let _ = std::fs::remove_dir_all(rb.join("plots"));
        let mut child = spawn(&spec, &b, true, &[]);
        let killed = kill_when(&mut child, || marker.exists());
        eprintln!(
            "chain {c}: kill at {}: {}",
            marker.display(),
            if killed { "killed" } else { "had finished" }
        );
        trials += 1;
        let o = run(&spec, &b, &["--resume"]);
        assert!(o.status.success(), "{}", text(&o));
        assert_same_results(&a.join(&name), &rb, &format!("chain {c} {kinds:?}"));
        assert!(rb.join("tables/summary.md").is_file());
    }
    assert!(trials >= 10);
}

/// A second `evosam run --resume` on a folder in use is refused with the owner named, and the first run is not
/// disturbed; a lock left by a killed process (dead pid on this host) is taken over.
#[test]
fn second_resume_is_refused_and_a_stale_lock_is_taken_over() {
    let tmp = tempfile::tempdir().unwrap();
    let spec = write(tmp.path(), "l.toml", &tiny_spec("l", &["finetune"], 12));
    let out = tmp.path().join("o");
    let rd = out.join("l");
    let mut first = spawn(&spec, &out, false, &["--no-report"]);
    // wait until the first run is training (its folder and lock exist)
    let t0 = Instant::now();
    while !rd
        .join("cells/finetune__seed0__given/stage_0/done")
        .is_file()
    {
        assert!(
            first.try_wait().unwrap().is_none(),
            "the first run ended early"
        );
        assert!(t0.elapsed() < Duration::from_secs(120));
        std::thread::sleep(Duration::from_millis(5));
    }
    let o = run(&spec, &out, &["--resume", "--no-report"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let t = text(&o);
    assert!(
        t.contains("is locked by") && t.contains(&format!("pid {}", first.id())),
        "{t}"
    );
    // ... and without --resume too (the folder exists)
    let o = run(&spec, &out, &["--no-report"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let st = first.wait().unwrap();
    assert!(st.success(), "the first run was disturbed");
    let reference = read(&rd.join("scores.csv"));

    // a stale lock: the pid of a process that has exited, on this host
    let mut dead = std::process::Command::new("true").spawn().unwrap();
    let pid = dead.id();
    dead.wait().unwrap();
    // the host name the run lock records (the kernel's, as `evosam` reads it)
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    let host = host.trim();
    let lock = format!(
        "{{\"host\":\"{host}\",\"pid\":{pid},\"started\":\"2026-01-01T00:00:00Z\",\"what\":\"run\",\"token\":\"x\"}}"
    );
    std::fs::write(rd.join(".lock"), &lock).unwrap();
    std::fs::write(rd.join("cells/finetune__seed0__given/.lock"), &lock).unwrap();
    std::fs::remove_file(rd.join("scores.csv")).unwrap();
    let o = run(&spec, &out, &["--resume", "--no-report"]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(read(&rd.join("scores.csv")), reference);
    assert!(
        !rd.join(".lock").exists(),
        "the lock is released at the end"
    );
}
