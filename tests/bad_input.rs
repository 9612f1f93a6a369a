//! Bad input through the real binary: every case exits 2 with a message naming the file, key or path, before
//! anything is written.

mod common;

use common::*;
use std::path::Path;

fn validate_in(dir: &Path, spec: &str, extra: &[&str]) -> std::process::Output {
    bin()
        .current_dir(dir)
        .arg("validate")
        .arg(spec)
        .args(extra)
        .output()
        .unwrap()
}

fn write_png(path: &Path, f: impl Fn(u32, u32) -> u8) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    image::GrayImage::from_fn(24, 20, |x, y| image::Luma([f(x, y)]))
        .save(path)
        .unwrap();
}

/// `train/` and `test/` folders of images and masks, as DRIVE lays them out; `unpaired` images have no mask.
fn folder_data(root: &Path, unpaired: &[&str]) {
    for split in ["train", "test"] {
        for i in 0..3 {
            let key = format!("{split}{i}");
            write_png(&root.join(format!("{split}/images/{key}.png")), |x, y| {
                ((x * 7 + y * 3) % 256) as u8
            });
            if !unpaired.contains(&key.as_str()) {
                write_png(
                    &root.join(format!("{split}/masks/{key}_mask.png")),
                    |x, y| {
                        if (6..14).contains(&x) && y > 4 {
                            255
                        } else {
                            0
                        }
                    },
                );
            }
        }
    }
}

fn folder_spec(root: &str, extra: &str) -> String {
    format!(
        "[experiment]\nname = \"f\"\n[stream]\n[[stream.task]]\nname = \"site\"\nsource = \"folder\"\n\
         root = \"{root}\"\nimages = \"*/images/*.png\"\nmasks = \"*/masks/*.png\"\nstrip = [\"_mask\"]\n\
         test_glob = \"test/*\"\n{extra}\n[model]\nweights = \"random-tiny\"\n[train]\nepochs = 1\n\
         batch_size = 2\n[[strategy]]\npreset = \"zeroshot\"\n[[strategy]]\npreset = \"finetune\"\n"
    )
}

/// Issue 14: `cd experiments && evosam validate vessels-real.toml` found an empty test split, because a spec given
/// by a bare file name resolved data under `./` and `test_glob` no longer matched the listed paths.
#[test]
fn test_glob_splits_the_same_from_any_working_directory() {
    let tmp = tempfile::tempdir().unwrap();
    folder_data(&tmp.path().join("data/site"), &[]);
    let exp = tmp.path().join("experiments");
    std::fs::create_dir_all(&exp).unwrap();
    write(&exp, "s.toml", &folder_spec("../data/site", ""));
    for (dir, arg) in [
        (exp.clone(), "s.toml"),
        (exp.clone(), "./s.toml"),
        (tmp.path().to_path_buf(), "experiments/s.toml"),
        (tmp.path().join("data"), "../experiments/s.toml"),
    ] {
        let o = validate_in(&dir, arg, &[]);
        assert!(
            o.status.success(),
            "{arg} from {}: {}",
            dir.display(),
            text(&o)
        );
        assert!(
            text(&o).contains("site: 3 train, 3 test"),
            "{arg} from {}: {}",
            dir.display(),
            text(&o)
        );
    }
}

/// A spec that is not UTF-8 is bad input (exit 2) named with its line, not an internal error.
#[test]
fn a_spec_that_is_not_utf8_exits_2_naming_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let mut bytes = tiny_spec("u", &["finetune"], 1).into_bytes();
    let at = bytes.iter().position(|&b| b == b'[').unwrap() + 1;
    bytes.insert(at, 0xff);
    let p = tmp.path().join("latin.toml");
    std::fs::write(&p, &bytes).unwrap();
    for args in [&["validate"][..], &["run", "--no-report"][..]] {
        let o = bin()
            .current_dir(tmp.path())
            .args(args)
            .arg("latin.toml")
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", text(&o));
        let t = text(&o);
        assert!(
            t.contains("latin.toml") && t.contains("line 1") && t.contains("not UTF-8"),
            "{args:?}: {t}"
        );
    }
    assert!(!tmp.path().join("results").exists());
}

/// `unpaired = "error"` (the default) stops at an image without a mask, naming it; `"skip"` leaves it out, counts
/// and names it in `validate`, the run's log and `manifest.json`; any other value is a spec error at its line.
#[test]
fn unpaired_images_are_an_error_or_skipped_and_listed() {
    let tmp = tempfile::tempdir().unwrap();
    folder_data(&tmp.path().join("data"), &["train1", "test2"]);
    for extra in ["", "unpaired = \"error\""] {
        let p = write(tmp.path(), "e.toml", &folder_spec("data", extra));
        let o = bin().arg("validate").arg(&p).output().unwrap();
        assert_eq!(o.status.code(), Some(2), "{}", text(&o));
        let t = text(&o);
        assert!(t.contains("no mask") && t.contains("unpaired"), "{t}");
    }
    let p = write(
        tmp.path(),
        "bad.toml",
        &folder_spec("data", "unpaired = \"ignore\""),
    );
    let o = bin().arg("validate").arg(&p).output().unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let t = text(&o);
    assert!(
        t.contains("bad.toml") && t.contains("line 12") && t.contains("unpaired"),
        "{t}"
    );

    let p = write(
        tmp.path(),
        "s.toml",
        &folder_spec("data", "unpaired = \"skip\""),
    );
    let o = bin().arg("validate").arg(&p).output().unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let t = text(&o);
    assert!(
        t.contains("site: 2 train, 2 test (folder), 2 unpaired images skipped")
            && t.contains("train1.png")
            && t.contains("test2.png"),
        "{t}"
    );
    let out = tmp.path().join("o");
    let o = bin()
        .env("RAYON_NUM_THREADS", "1")
        .arg("run")
        .arg(&p)
        .arg("--out")
        .arg(&out)
        .arg("--no-report")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let t = text(&o);
    assert!(
        t.contains("task site: 2 unpaired image(s) skipped") && t.contains("train1.png"),
        "{t}"
    );
    let m: serde_json::Value = serde_json::from_str(&read(&out.join("f/manifest.json"))).unwrap();
    let task = &m["tasks"][0];
    assert_eq!(task["train"], 2, "{task}");
    assert_eq!(task["skipped_count"], 2, "{task}");
    let listed: Vec<String> = task["skipped"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    assert!(
        listed.len() == 2
            && listed[0].ends_with("test/images/test2.png")
            && listed[1].ends_with("train/images/train1.png"),
        "{listed:?}"
    );
}

/// Values that cannot work are caught by `validate` (and by `run` before it writes anything), each naming the
/// key, the file or the layer limit.
#[test]
fn validate_catches_what_can_be_known_before_running() {
    let tmp = tempfile::tempdir().unwrap();
    let base = tiny_spec("v", &["finetune"], 1);
    let cases: &[(&str, &str, &str)] = &[
        ("lr = 0.01", "lr = 0.0", "`lr` must be a positive number"),
        ("lr = 0.01", "lr = -1e-3", "`lr` must be a positive number"),
        (
            "batch_size = 2",
            "batch_size = 0",
            "`batch_size` must be >= 1",
        ),
        (
            "[train]",
            "[model.lora]\nrank = 1000000\n[train]",
            "lora rank 1000000 is larger than the adapted layers allow",
        ),
        (
            "[train]",
            "[model.lora]\nalpha = -4.0\n[train]",
            "`alpha` must be a positive number",
        ),
        (
            "[train]",
            "[model.lora]\nalpha = 0.0\n[train]",
            "`alpha` must be a positive number",
        ),
        (
            "[train]",
            "[model.lora]\ntargets = [\"no_such_layer\"]\n[train]",
            "match no linear layer",
        ),
        (
            "[train]",
            "[model.lora]\ntargets = []\n[train]",
            "`targets` is empty",
        ),
        (
            "[train]",
            "[model.lora]\ntargets = [\"[\"]\n[train]",
            "not a valid glob",
        ),
        (
            "weights = \"random-tiny\"",
            "weights = \"no/such/lite_medsam.pth\"",
            "no/such/lite_medsam.pth",
        ),
        (
            "preset = \"finetune\"",
            "preset = \"finetune\"\nlora = { rank = 300 }",
            "lora rank 300",
        ),
        (
            "preset = \"finetune\"",
            "preset = \"finetune\"\ntrain = { weight_decay = -1.0 }",
            "`weight_decay` must be >= 0",
        ),
        ("size = 64", "size = 0", "`size` = 0 must be in 32..=2048"),
    ];
    let mut tried = 0;
    for (from, to, want) in cases {
        assert!(base.contains(from), "{from}");
        let p = write(tmp.path(), "x.toml", &base.replacen(from, to, 1));
        let o = bin().arg("validate").arg(&p).output().unwrap();
        assert_eq!(o.status.code(), Some(2), "{to}: {}", text(&o));
        let t = text(&o);
        assert!(t.contains("x.toml") || t.contains(want), "{to}: {t}");
        assert!(t.contains(want), "{to}: {t}");
        // run refuses it too, and leaves no results folder
        let out = tmp.path().join("out");
        let o = run(&p, &out, &[]);
        assert_eq!(o.status.code(), Some(2), "run {to}: {}", text(&o));
        assert!(!out.join("v").exists(), "{to}: run left a folder behind");
        tried += 1;
    }
    eprintln!("{tried} bad values, each refused with exit 2 by validate and run");
}
