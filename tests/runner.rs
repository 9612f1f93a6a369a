//! End-to-end tests of `evosam run` / `evosam validate` through the real binary, on tiny random-weight models.

mod common;

use std::path::{Path, PathBuf};

use common::{bin, kill_when, read, run, shared_data, spawn, text, two_task_spec, write};

fn crate_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn write_spec(dir: &Path, epochs: usize, extra: &str) -> PathBuf {
    let text = format!(
        "{}{extra}",
        two_task_spec("tiny", &["zeroshot", "finetune"], epochs)
    );
    write(dir, "tiny.toml", &text)
}

#[test]
fn run_kill_resume_gives_identical_tables() {
    let tmp = tempfile::tempdir().unwrap();
    // Every kind with state of its own: experts + matcher, reservoir memory, Fisher pairs, joint's adapter.
    // ... and the interactive study at every stage, whose rows must survive the kills too.
    let more = "\n[[strategy]]\npreset = \"evosam\"\n[[strategy]]\npreset = \"replay\"\n\
                [[strategy]]\npreset = \"online-ewc\"\n[[strategy]]\npreset = \"joint\"\n\
                [eval.interactive]\nmax_clicks = 3\nreport_at = [1, 3]\nstages = \"all\"\n\
                seconds_per_case = 4.0\nseconds_per_click = 1.5\n";
    let kinds = ["finetune", "evosam", "replay", "online-ewc", "joint"];
    let spec = write_spec(tmp.path(), 6, more);

    // uninterrupted reference run
    let a = tmp.path().join("a");
    let o = run(&spec, &a, &[]);
    assert!(o.status.success(), "{}", text(&o));
    let ra = a.join("tiny");
    for f in [
        "scores.parquet",
        "scores.csv",
        "matrix.csv",
        "metrics.csv",
        "extras.csv",
        "manifest.json",
        "tables/summary.md",
        "tables/summary.tex",
        "plots/plot_data.json",
        "clicks.parquet",
        "clicks.csv",
        "interactive.csv",
        "interactive.json",
        "tables/interactive.md",
        "tables/interactive.tex",
    ] {
        assert!(ra.join(f).is_file(), "missing {f}");
    }
    // 6 strategies x 2 orders x 3 stages x 4 cases x (box + 3 clicks) + header
    let clicks = read(&ra.join("clicks.csv"));
    assert_eq!(clicks.lines().count(), 6 * 2 * 3 * 4 * 4 + 1);
    assert!(clicks.starts_with(
        "strategy,seed,order,stage,eval_task,case,click,dice,routed_to,click_x,click_y,click_label"
    ));
    // per (strategy, order, stage): two tasks and "all"
    let inter = read(&ra.join("interactive.csv"));
    assert_eq!(inter.lines().count(), 6 * 2 * 3 * 3 + 1, "{inter}");
    assert!(
        inter
            .lines()
            .next()
            .unwrap()
            .contains("noc@0.8,noc@0.85,noc@0.9"),
        "{inter}"
    );
    assert!(
        inter.lines().next().unwrap().ends_with("seconds@0.9"),
        "{inter}"
    );
    let itable = read(&ra.join("tables/interactive.md"));
    assert!(
        itable.contains("| evosam |") && itable.contains("NoC@0.8"),
        "{itable}"
    );
    // the report ran at the end: EvoSAM's routing confusion and a strategy row in the tables
    assert!(ra.join("plots").read_dir().unwrap().any(|e| e
        .unwrap()
        .file_name()
        .to_string_lossy()
        .ends_with(".png")));
    assert!(read(&ra.join("tables/summary.md")).contains("evosam"));
    let scores = read(&ra.join("scores.csv"));
    // 6 strategies x 2 orders x 3 stages x 2 tasks x 2 cases + header
    assert_eq!(scores.lines().count(), 6 * 2 * 3 * 4 + 1, "{scores}");
    let metrics = read(&ra.join("metrics.csv"));
    assert_eq!(metrics.lines().count(), 13, "{metrics}");
    assert!(
        metrics.starts_with("strategy,seed,order,acc,bwt,fwt,forgetting"),
        "{metrics}"
    );
    let manifest: serde_json::Value =
        serde_json::from_str(&read(&ra.join("manifest.json"))).unwrap();
    assert_eq!(manifest["weights"]["name"], "random-tiny");
    assert!(manifest["metrics"]["bwt"].is_string());
    // where the time went (manifest only, never the tables): the run's parts, and each cell's stages
    let t = &manifest["timings"];
    for k in [
        "setup_s",
        "embeddings_s",
        "cells_wall_s",
        "train_s",
        "eval_s",
        "study_s",
        "checkpoint_s",
        "tables_s",
        "report_s",
        "total_s",
    ] {
        assert!(t[k].as_f64().is_some_and(|v| v >= 0.0), "timings.{k}: {t}");
    }
    assert_eq!(t["stages"], 6 * 2 * 3, "{t}");
    let positive = |k: &str| t[k].as_f64().unwrap() > 0.0;
    assert!(
        positive("train_s") && positive("eval_s") && positive("study_s"),
        "{t}"
    );
    assert!(t["total_s"].as_f64() >= t["cells_wall_s"].as_f64(), "{t}");
    assert_eq!(manifest["cells"][2]["id"], "finetune__seed0__given");
    let stages = manifest["cells"][2]["times"].as_array().unwrap();
    assert_eq!(stages.len(), 3, "stages 0, 1, 2 of a cell");
    assert_eq!(stages[0]["train_s"], 0.0, "stage 0 trains nothing");
    assert!(stages[2]["train_s"].as_f64().unwrap() > 0.0);
    // zero-shot rows are identical at every stage; fine-tuning changes predictions
    let matrix = read(&ra.join("matrix.csv"));
    assert!(
        matrix
            .lines()
            .any(|l| l.starts_with("finetune,0,given,2,vb,va,1,")),
        "{matrix}"
    );

    // a second run into the same folder without --resume is refused
    let o = run(&spec, &a, &[]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("already exists"), "{}", text(&o));

    // killed runs: SIGKILL once the first stage of each trained kind has been checkpointed, then --resume; each
    // kill lands in another kind's cell, so every kind is restored from its checkpoint at least once.
    let b = tmp.path().join("b");
    for (i, kind) in kinds.iter().enumerate() {
        let mut child = spawn(&spec, &b, i > 0, &[]);
        let marker = b.join(format!("tiny/cells/{kind}__seed0__given/stage_1/done"));
        let killed = kill_when(&mut child, || marker.exists());
        assert!(
            killed,
            "the run finished before the first {kind} checkpoint could be seen"
        );
    }
    assert!(
        !b.join("tiny/scores.csv").exists(),
        "the killed run should not have written its tables"
    );
    // the kill left the lock of a dead process behind: --resume takes it over
    let o = run(&spec, &b, &["--resume"]);
    assert!(o.status.success(), "{}", text(&o));
    let rb = b.join("tiny");
    for f in [
        "scores.csv",
        "matrix.csv",
        "metrics.csv",
        "extras.csv",
        "clicks.csv",
        "interactive.csv",
    ] {
        assert_eq!(
            read(&ra.join(f)),
            read(&rb.join(f)),
            "{f} differs after resume"
        );
    }
    let manifest: serde_json::Value =
        serde_json::from_str(&read(&rb.join("manifest.json"))).unwrap();
    assert_eq!(manifest["resumed"], true);

    // --resume with a changed spec is refused
    let spec2 = write_spec(tmp.path(), 7, "");
    let o = run(&spec2, &b, &["--resume"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("spec changed"), "{}", text(&o));
}

#[test]
fn jobs_give_the_same_tables_and_divergence_fails_one_cell() {
    let tmp = tempfile::tempdir().unwrap();
    let spec = write_spec(
        tmp.path(),
        2,
        "\n[[strategy]]\npreset = \"finetune\"\nlabel = \"diverge\"\n[strategy.train]\nlr = 1e30\n",
    );
    let a = tmp.path().join("a");
    let o = run(&spec, &a, &["--jobs", "1"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let t = text(&o);
    assert!(
        t.contains("non-finite") && t.contains("diverge") && t.contains("2 of 6 cells failed"),
        "{t}"
    );
    let b = tmp.path().join("b");
    let o = run(&spec, &b, &["--jobs", "3"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    for f in ["scores.csv", "matrix.csv", "metrics.csv"] {
        assert_eq!(
            read(&a.join("tiny").join(f)),
            read(&b.join("tiny").join(f)),
            "{f}: --jobs 3 differs from --jobs 1"
        );
    }
    // the other cells' metrics are there, the failed ones are not
    let metrics = read(&a.join("tiny/metrics.csv"));
    assert_eq!(
        metrics
            .lines()
            .filter(|l| l.starts_with("finetune,"))
            .count(),
        2,
        "{metrics}"
    );
    assert_eq!(
        metrics
            .lines()
            .filter(|l| l.starts_with("diverge,"))
            .count(),
        0,
        "{metrics}"
    );
    let manifest = read(&a.join("tiny/manifest.json"));
    assert!(manifest.contains("\"failed\""), "{manifest}");

    // `evosam report` with several folders needs --out (exit 2, saying so), and merges them there.
    let o = bin()
        .args(["report"])
        .arg(a.join("tiny"))
        .arg(b.join("tiny"))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("--out DIR"), "{}", text(&o));
    let merged = tmp.path().join("merged");
    let o = bin()
        .args(["report"])
        .arg(a.join("tiny"))
        .arg(b.join("tiny"))
        .arg("--out")
        .arg(&merged)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(merged.join("tables/summary.md").is_file());
}

#[test]
fn validate_reports_good_and_bad_specs() {
    let o = bin()
        .arg("validate")
        .arg(crate_dir().join("experiments/quickstart.toml"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("ok: 9 cells"), "{}", text(&o));

    let tmp = tempfile::tempdir().unwrap();
    let spec = write_spec(tmp.path(), 1, "");
    let bad = tmp.path().join("bad.toml");
    std::fs::write(
        &bad,
        read(&spec).replace("batch_size = 2", "batch_size = 2\nbatchsize = 3"),
    )
    .unwrap();
    let o = bin().arg("validate").arg(&bad).output().unwrap();
    assert_eq!(o.status.code(), Some(2));
    let t = text(&o);
    assert!(
        t.contains("bad.toml") && t.contains("line 32") && t.contains("batchsize"),
        "{t}"
    );
    // [eval.interactive] is checked strictly: the error names the key and quotes its line
    for (extra, want) in [
        (
            "\n[eval.interactive]\nmax_clicks = 0\n",
            "[eval.interactive]: `max_clicks` = 0 is out of range",
        ),
        ("\n[eval.interactive]\nclicks = 3\n", "| clicks = 3"),
        (
            "\n[eval.interactive]\nreport_at = [12]\n",
            "| report_at = [12]",
        ),
        ("\n[eval]\ninteractiv = 1\n", "| interactiv = 1"),
    ] {
        let p = write_spec(tmp.path(), 1, extra);
        let o = bin().arg("validate").arg(&p).output().unwrap();
        assert_eq!(o.status.code(), Some(2), "{extra}: {}", text(&o));
        assert!(text(&o).contains(want), "{extra}: {}", text(&o));
    }
    let p = write_spec(tmp.path(), 1, "\n[eval.interactive]\nmax_clicks = 5\n");
    let o = bin().arg("validate").arg(&p).output().unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let spec = write_spec(tmp.path(), 1, "");
    // a folder task whose files are missing is rejected before anything runs
    let missing = tmp.path().join("missing.toml");
    std::fs::write(
        &missing,
        read(&spec).replace(
            "source = \"synthetic\"\nfamily = \"vessels\"\nsite = 0\ntrain = 4\ntest = 2\nsize = 64",
            "source = \"folder\"\nroot = \"nowhere\"\nimages = \"*.png\"\nmasks = \"*.png\"\ntest_fraction = 0.5",
        ),
    )
    .unwrap();
    let o = bin()
        .arg("run")
        .arg(&missing)
        .arg("--out")
        .arg(tmp.path().join("o"))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("nowhere"), "{}", text(&o));
    assert!(
        !tmp.path().join("o").exists(),
        "nothing may be written for a bad spec"
    );
    // a missing weights file fails before training and leaves no results folder behind
    let nw = tmp.path().join("noweights.toml");
    std::fs::write(
        &nw,
        read(&spec).replace("weights = \"random-tiny\"", "weights = \"no/such.pth\""),
    )
    .unwrap();
    let o = bin()
        .arg("run")
        .arg(&nw)
        .arg("--out")
        .arg(tmp.path().join("o"))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("no/such.pth"), "{}", text(&o));
    assert!(
        !tmp.path().join("o/tiny").exists(),
        "a failed start must not leave a results folder"
    );
}

/// The shipped spec `experiments/<name>.toml` on DRIVE -> CHASEDB1 from ../shared/data (or
/// $EVOSAM_SHARED_DATA), with the tiny random model instead of LiteMedSAM.
fn real_vessel_spec(name: &str) -> String {
    let data = shared_data();
    assert!(
        data.join("retinal_vessel/DRIVE").is_dir() && data.join("retinal_vessel/CHASEDB1").is_dir(),
        "this test needs retinal_vessel/DRIVE and CHASEDB1 under {} (set EVOSAM_SHARED_DATA)",
        data.display()
    );
    let data = data.canonicalize().unwrap();
    read(&crate_dir().join(format!("experiments/{name}.toml")))
        .replace(
            "${EVOSAM_SHARED_DATA:-../../shared/data}",
            &data.display().to_string(),
        )
        .replace("weights = \"lite_medsam\"", "weights = \"random-tiny\"")
}

/// DRIVE -> CHASEDB1 from ../shared/data (or $EVOSAM_SHARED_DATA) through the shipped spec's data settings,
/// with the tiny random model so that it stays fast.
#[test]
#[ignore = "needs ../shared/data or $EVOSAM_SHARED_DATA (run with --ignored)"]
fn vessels_real_data_end_to_end() {
    let tmp = tempfile::tempdir().unwrap();
    let spec = real_vessel_spec("vessels-real")
        .replace("max_train = 8", "max_train = 2")
        .replace("max_test = 4", "max_test = 2")
        .replace("epochs = 8", "epochs = 1")
        .replace("seeds = [0, 1, 2]", "seeds = [0]");
    let p = write(tmp.path(), "vessels.toml", &spec);
    let o = run(&p, &tmp.path().join("out"), &[]);
    assert!(o.status.success(), "{}", text(&o));
    let scores = read(&tmp.path().join("out/vessels-real/scores.csv"));
    assert!(
        scores.contains(",DRIVE,") && scores.contains(",CHASEDB1,"),
        "{scores}"
    );
    // 9 strategies x 2 orders x 3 stages x (2 + 2) cases
    assert_eq!(scores.lines().count(), 9 * 2 * 3 * 4 + 1);
}

/// A tiled folder task next to an untiled synthetic one: training and evaluation run on tiles, scores stay per
/// image (one row per test image, named by the image), and the manifest records the tiling.
#[test]
fn tiled_folder_task_scores_per_image() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("data");
    std::fs::create_dir_all(d.join("img")).unwrap();
    std::fs::create_dir_all(d.join("lbl")).unwrap();
    for i in 0..5u32 {
        image::GrayImage::from_fn(300, 200, |x, y| {
            image::Luma([((x + 2 * y + i) % 200) as u8])
        })
        .save(d.join(format!("img/c{i}.png")))
        .unwrap();
        image::GrayImage::from_fn(300, 200, |x, y| {
            image::Luma([if (x / 7 + y / 5 + i) % 9 == 0 { 255 } else { 0 }])
        })
        .save(d.join(format!("lbl/c{i}.png")))
        .unwrap();
    }
    let spec = read(&write_spec(tmp.path(), 1, ""))
        .replace("orders = [\"given\", \"reverse\"]", "orders = [\"given\"]")
        .replace(
            "source = \"synthetic\"\nfamily = \"vessels\"\nsite = 0\ntrain = 4\ntest = 2\nsize = 64",
            "source = \"folder\"\nroot = \"data\"\nimages = \"img/*.png\"\nmasks = \"lbl/*.png\"\n\
             test_ids = [\"c1\", \"c3\"]\ntile = { size = 128, overlap = 16, prompt = \"tile\", keep_empty = 0.5 }",
        );
    let p = tmp.path().join("tiled.toml");
    std::fs::write(&p, spec).unwrap();
    let o = run(&p, &tmp.path().join("out"), &[]);
    assert!(o.status.success(), "{}", text(&o));
    let scores = read(&tmp.path().join("out/tiny/scores.csv"));
    let va: Vec<&str> = scores.lines().filter(|l| l.contains(",va,1,")).collect();
    // 2 strategies x 3 stages x 2 test images, each row an image (no tile ids)
    assert_eq!(va.len(), 2 * 3 * 2, "{scores}");
    assert!(
        va.iter()
            .all(|l| (l.contains(",c1,") || l.contains(",c3,")) && !l.contains('@')),
        "{scores}"
    );
    let manifest = read(&tmp.path().join("out/tiny/manifest.json"));
    // 300x200 at 128/16: 3 x 2 = 6 tiles per image
    assert!(
        manifest.contains("\"test_tiles\": 12") && manifest.contains("\"test_images\": 2"),
        "{manifest}"
    );
    assert!(
        manifest.contains("\"overlap\": 16"),
        "the spec's tiling is recorded: {manifest}"
    );
    // a bad tiling is refused with the key path and the spec line
    let bad = tmp.path().join("bad.toml");
    std::fs::write(&bad, read(&p).replace("overlap = 16", "overlap = 128")).unwrap();
    let o = bin().arg("validate").arg(&bad).output().unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        text(&o).contains("`tile.overlap` = 128") && text(&o).contains("| tile = {"),
        "{}",
        text(&o)
    );
}

/// The shipped tiled vessel spec on DRIVE -> CHASEDB1 from ../shared/data (or $EVOSAM_SHARED_DATA), with the tiny
/// random model: tiles are cut from the real photos and scores come back per image.
#[test]
#[ignore = "needs ../shared/data or $EVOSAM_SHARED_DATA (run with --ignored)"]
fn vessels_tiled_real_data_end_to_end() {
    let tmp = tempfile::tempdir().unwrap();
    let spec = real_vessel_spec("vessels-tiled")
        .replace("max_train = 8", "max_train = 2")
        .replace("max_test = 4", "max_test = 1")
        .replace("epochs = 4", "epochs = 1");
    let p = write(tmp.path(), "vessels.toml", &spec);
    let o = run(&p, &tmp.path().join("out"), &[]);
    assert!(o.status.success(), "{}", text(&o));
    let scores = read(&tmp.path().join("out/vessels-tiled/scores.csv"));
    // 4 strategies x 2 orders x 3 stages x (1 + 1) images; case ids are image ids, not tiles
    assert_eq!(scores.lines().count(), 4 * 2 * 3 * 2 + 1, "{scores}");
    assert!(!scores.contains('@'), "{scores}");
    let manifest = read(&tmp.path().join("out/vessels-tiled/manifest.json"));
    // one DRIVE test image is 2 x 2 tiles of 384 px, one CHASEDB1 image 3 x 3
    assert!(
        manifest.contains("\"test_tiles\": 4") && manifest.contains("\"test_tiles\": 9"),
        "{manifest}"
    );
}
