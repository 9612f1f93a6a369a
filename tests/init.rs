//! `evosam init`: the starter spec of a data folder's layout validates and runs; an existing file is kept
//! without --force; without a folder it writes the quickstart template.

mod common;

use common::{bin, read, run, shared_data, text, write};
use std::path::Path;

fn init(dir: Option<&Path>, out: &Path, extra: &[&str]) -> std::process::Output {
    let mut c = bin();
    c.arg("init");
    if let Some(d) = dir {
        c.arg(d);
    }
    c.arg("--out").arg(out).args(extra).output().unwrap()
}

/// The written spec made short: the tiny random model, 1 epoch, 2 training images (slices) and 1 test image
/// (volume) per task, two strategies.
fn shortened(spec: &str) -> String {
    spec.replace("weights = \"lite_medsam\"", "weights = \"random-tiny\"")
        .replace("epochs = 4", "epochs = 1")
        .replace(
            "split_seed = 0\n",
            "split_seed = 0\nmax_train = 2\nmax_test = 1\n",
        )
        .replace("\n[[strategy]]\npreset = \"evosam\"\n", "\n")
}

#[test]
fn init_detects_a_folder_layout_and_keeps_existing_files() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    for site in ["siteA", "siteB"] {
        for sub in ["images", "labels"] {
            std::fs::create_dir_all(data.join(site).join(sub)).unwrap();
        }
        for i in 0..4 {
            let mut img = image::RgbImage::new(32, 32);
            let mut m = image::GrayImage::new(32, 32);
            for y in 8..20 {
                for x in 8..20 {
                    img.put_pixel(x, y, image::Rgb([200, 90, 40]));
                    m.put_pixel(x, y, image::Luma([255]));
                }
            }
            img.save(data.join(site).join(format!("images/img_{i:02}.png")))
                .unwrap();
            m.save(data.join(site).join(format!("labels/img_{i:02}_gt.png")))
                .unwrap();
        }
    }
    let out = dir.path().join("s.toml");
    let o = init(Some(&data), &out, &[]);
    assert!(o.status.success(), "{}", text(&o));
    let spec = read(&out);
    for want in [
        "name = \"siteA\"",
        "name = \"siteB\"",
        "images = \"images/*.png\"",
        "masks = \"labels/*.png\"",
        "strip = [\"img_\", \"_gt\"]",
        "test_fraction = 0.3",
        "# [[strategy]]\n# preset = \"joint\"",
    ] {
        assert!(spec.contains(want), "{want}:\n{spec}");
    }
    let o = bin().arg("validate").arg(&out).output().unwrap();
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("siteA: 3 train, 1 test"), "{}", text(&o));
    // kept without --force, replaced with it
    write(dir.path(), "s.toml", "keep me");
    let o = init(Some(&data), &out, &[]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("--force"), "{}", text(&o));
    assert_eq!(read(&out), "keep me");
    assert!(init(Some(&data), &out, &["--force"]).status.success());
    assert_ne!(read(&out), "keep me");
    // no layout: exit 2, nothing written
    let empty = dir.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let o = init(Some(&empty), &dir.path().join("none.toml"), &[]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(!dir.path().join("none.toml").exists());
    // without a folder: the quickstart template
    let q = dir.path().join("q.toml");
    assert!(init(None, &q, &[]).status.success());
    assert!(read(&q).contains("name = \"quickstart\""));
    assert!(bin()
        .args(["validate", "--no-data"])
        .arg(&q)
        .output()
        .unwrap()
        .status
        .success());
}

/// `evosam init` on the shared CHASEDB1 folder and the prostate sites writes specs that validate and run.
#[test]
#[ignore = "needs ../shared/data (retinal_vessel/CHASEDB1, prostate) or $EVOSAM_SHARED_DATA (run with --ignored)"]
fn init_specs_of_the_shared_data_validate_and_run() {
    let data = shared_data();
    let dir = tempfile::tempdir().unwrap();
    for (sub, tasks) in [
        ("retinal_vessel/CHASEDB1", &["CHASEDB1"][..]),
        ("prostate", &["NCI-384", "RUNMC"][..]),
    ] {
        let src = data.join(sub);
        assert!(
            src.is_dir(),
            "{} is missing (set EVOSAM_SHARED_DATA)",
            src.display()
        );
        let out = dir.path().join(format!("{}.toml", tasks[0].to_lowercase()));
        let o = init(Some(&src), &out, &[]);
        assert!(o.status.success(), "{sub}: {}", text(&o));
        let o = bin().arg("validate").arg(&out).output().unwrap();
        assert!(o.status.success(), "{sub}: {}", text(&o));
        for t in tasks {
            assert!(
                text(&o).contains(&format!("task {t}: ")),
                "{sub}: {}",
                text(&o)
            );
        }
        let short = shortened(&read(&out)).replace(
            "max_test = 1",
            if sub == "prostate" {
                "max_test_volumes = 1"
            } else {
                "max_test = 1"
            },
        );
        let spec = write(dir.path(), &format!("short-{}.toml", tasks[0]), &short);
        let o = run(&spec, &dir.path().join("results"), &[]);
        assert!(o.status.success(), "{sub}: {}", text(&o));
    }
}
