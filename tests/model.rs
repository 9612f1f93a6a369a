//! End-to-end checks of `evosam segment` (the binary as a user runs it).

use std::path::PathBuf;
use std::process::Command;

fn evosam() -> Command {
    Command::new(env!("CARGO_BIN_EXE_evosam"))
}

#[test]
fn segment_unreadable_image_is_a_clear_error_with_exit_code_2() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("broken.png");
    std::fs::write(&bad, b"this is not a PNG").unwrap();
    let out = evosam()
        .args(["segment", "--box", "1,1,10,10", "--out"])
        .arg(dir.path().join("m.png"))
        .arg("--image")
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("broken.png") && err.contains("cannot decode image"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    let out = evosam()
        .args([
            "segment",
            "--image",
            "/nonexistent.png",
            "--box",
            "1,1,2,2",
            "--out",
            "x.png",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

/// The shared data folder (`../shared/data` next to the repository). The tests that need it are `#[ignore]`d;
/// run with `--ignored` where the data is (`.ci/run` does): then a missing folder is a failure, not a pass.
fn shared_data() -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    [root.join("../shared/data"), root.join("../../shared/data")]
        .into_iter()
        .find(|p| p.join("polyp/Kvasir-SEG").is_dir())
        .expect("this test needs ../shared/data (polyp/Kvasir-SEG) next to the repository")
}

#[test]
#[ignore = "needs ../shared/data and the LiteMedSAM weights (run with --ignored)"]
fn segment_real_polyp_image() {
    let data = shared_data();
    let kv = data.join("polyp/Kvasir-SEG");
    let boxes: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(kv.join("kavsir_bboxes.json")).unwrap())
            .unwrap();
    let (id, entry) = boxes.as_object().unwrap().iter().next().unwrap();
    let b = &entry["bbox"][0];
    let bx = format!("{},{},{},{}", b["xmin"], b["ymin"], b["xmax"], b["ymax"]);
    let dir = tempfile::tempdir().unwrap();
    let mask = dir.path().join("mask.png");
    let logits = dir.path().join("logits.npy");
    let out = evosam()
        .args(["segment", "--box", &bx])
        .arg("--image")
        .arg(kv.join(format!("images/{id}.jpg")))
        .arg("--out")
        .arg(&mask)
        .arg("--logits")
        .arg(&logits)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let m = image::open(&mask).unwrap().to_luma8();
    let gt = image::open(kv.join(format!("masks/{id}.jpg")))
        .unwrap()
        .to_luma8();
    assert_eq!(m.dimensions(), gt.dimensions());
    assert!(m.pixels().all(|p| p.0[0] == 0 || p.0[0] == 255));
    let (mut inter, mut a, mut g) = (0usize, 0usize, 0usize);
    for (p, q) in m.pixels().zip(gt.pixels()) {
        let (x, y) = (p.0[0] > 0, q.0[0] > 127);
        inter += (x && y) as usize;
        a += x as usize;
        g += y as usize;
    }
    let dice = 2.0 * inter as f64 / (a + g) as f64;
    eprintln!("{id}: Dice {dice:.3}");
    assert!(dice > 0.8, "Dice {dice}");
    let l = candle_core::Tensor::read_npy(&logits).unwrap();
    assert_eq!(l.dims(), &[256, 256]);
}

/// `segment --experts DIR`: an expert folder (as EvoSAM writes it) with a "polyp" expert equal to the base model and
/// a "vessel" expert that changes the output; the matcher, fitted on real Kvasir and DRIVE images, must pick
/// "polyp" for another Kvasir image, and `--expert vessel` must override it.
#[test]
#[ignore = "needs ../shared/data and the LiteMedSAM weights (run with --ignored)"]
fn segment_with_experts_routes_with_the_matcher() {
    use evosam::model::{Adapter, LiteMedSam, LoraConfig};
    use evosam::strategy::evosam::{pooled_features, ExpertSet, Routing};
    use evosam::strategy::matcher::MatcherConfig;
    let data = shared_data();
    assert!(
        data.join("retinal_vessel/DRIVE").is_dir(),
        "this test needs retinal_vessel/DRIVE in {}",
        data.display()
    );
    let mut kvasir: Vec<PathBuf> = std::fs::read_dir(data.join("polyp/Kvasir-SEG/images"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    kvasir.sort();
    let mut drive: Vec<PathBuf> =
        std::fs::read_dir(data.join("retinal_vessel/DRIVE/training/images"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
    drive.sort();
    let weights = evosam::weights::resolve_weights(None).unwrap();
    let sha = evosam::weights::sha256_file(&weights).unwrap();
    let dev = candle_core::Device::Cpu;
    let model = LiteMedSam::from_pth(&weights, &dev).unwrap();
    let feats = |paths: &[PathBuf]| -> Vec<Vec<f64>> {
        paths
            .iter()
            .flat_map(|p| {
                let img = evosam::preprocess::load_image(p).unwrap();
                let (x, _) = evosam::preprocess::to_model_input(&img, 256).unwrap();
                pooled_features(&model.encode(&x.unsqueeze(0).unwrap()).unwrap()).unwrap()
            })
            .collect()
    };
    let cfg = MatcherConfig {
        lambda: 1e-3,
        ..Default::default()
    };
    let mut set = ExpertSet::new(Routing::Matcher, 256, cfg, Default::default()).unwrap();
    let lora = LoraConfig {
        rank: 4,
        alpha: 4.0,
        targets: vec!["mask_decoder".into()],
    };
    for (name, paths) in [("polyp", &kvasir[..3]), ("vessel", &drive[..3])] {
        let ad = Adapter::new(&model, &lora, 1).unwrap();
        if name == "vessel" {
            for (n, v) in ad.named_vars() {
                if n.ends_with(".lora_B") {
                    v.set(&(v.as_tensor().ones_like().unwrap() * 0.05).unwrap())
                        .unwrap();
                }
            }
        }
        set.matcher.add_task(name, &feats(paths)).unwrap();
        set.names.push(name.into());
        set.adapters.push(ad);
    }
    let dir = tempfile::tempdir().unwrap();
    let experts = dir.path().join("state");
    set.save(&experts, &sha).unwrap();
    let image = &kvasir[5];
    let run = |extra: &[&str], out: &str| {
        let o = evosam()
            .args(["segment", "--box", "40,40,400,400", "--image"])
            .arg(image)
            .arg("--out")
            .arg(dir.path().join(out))
            .args(extra)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr).to_string();
        assert!(o.status.success(), "{err}");
        (err, image::open(dir.path().join(out)).unwrap().to_luma8())
    };
    let e = experts.to_str().unwrap();
    let (_, base) = run(&[], "base.png");
    let (err, routed) = run(&["--experts", e], "routed.png");
    assert!(
        err.contains("expert: polyp (chosen by the matcher"),
        "{err}"
    );
    assert_eq!(routed, base, "the polyp expert is the base model (B = 0)");
    let (err, forced) = run(&["--experts", e, "--expert", "vessel"], "forced.png");
    assert!(
        err.contains("expert: vessel (chosen with --expert)"),
        "{err}"
    );
    assert_ne!(forced, base, "the vessel expert changes the mask");
}

/// `--point` and `--mask-in` are checked before any weights are needed: bad input is exit code 2 with a message
/// naming the argument.
#[test]
fn segment_rejects_bad_clicks_and_mask_prompts() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("img.png");
    image::RgbImage::from_pixel(40, 30, image::Rgb([90, 60, 30]))
        .save(&img)
        .unwrap();
    let bad_npy = dir.path().join("bad.npy");
    candle_core::Tensor::zeros((64, 64), candle_core::DType::F32, &candle_core::Device::Cpu)
        .unwrap()
        .write_npy(&bad_npy)
        .unwrap();
    let bad = bad_npy.to_str().unwrap();
    for (args, want) in [
        (vec!["--point", "5,5"], "expected X,Y,LABEL"),
        (vec!["--point", "5,5,2"], "must be 1 (foreground) or 0"),
        (vec!["--point", "50,5,1"], "outside the 40x30 image"),
        (vec!["--point", "x,5,1"], "`x` is not a number"),
        (vec![], "--box and/or --point"),
        (vec!["--box", "1,1,20,20", "--mask-in", bad], "256x256"),
        (
            vec!["--point", "5,5,1", "--mask-in", "/nonexistent.npy"],
            "nonexistent.npy",
        ),
    ] {
        let out = evosam()
            .args(["segment", "--out"])
            .arg(dir.path().join("m.png"))
            .arg("--image")
            .arg(&img)
            .args(&args)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
}

/// Refining a real polyp by hand: box, then the box's logits as `--mask-in` with a click; the mask changes and the
/// command reports the prompts it used.
#[test]
#[ignore = "needs ../shared/data and the LiteMedSAM weights (run with --ignored)"]
fn segment_refines_a_real_polyp_with_clicks() {
    let data = shared_data();
    let kv = data.join("polyp/Kvasir-SEG");
    let mut images: Vec<PathBuf> = std::fs::read_dir(kv.join("images"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    images.sort();
    let image = &images[0];
    let dir = tempfile::tempdir().unwrap();
    let run = |extra: &[&str], out: &str, logits: &str| {
        let o = evosam()
            .args(["segment", "--image"])
            .arg(image)
            .arg("--out")
            .arg(dir.path().join(out))
            .arg("--logits")
            .arg(dir.path().join(logits))
            .args(extra)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr).to_string();
        assert!(o.status.success(), "{err}");
        (err, image::open(dir.path().join(out)).unwrap().to_luma8())
    };
    let (_, boxed) = run(&["--box", "40,40,300,300"], "box.png", "box.npy");
    let l0 = dir.path().join("box.npy");
    let (w, h) = boxed.dimensions();
    let click = format!("{},{},0", w / 2, h / 2);
    let (err, refined) = run(
        &[
            "--box",
            "40,40,300,300",
            "--point",
            &click,
            "--mask-in",
            l0.to_str().unwrap(),
        ],
        "refined.png",
        "refined.npy",
    );
    assert!(
        err.contains("1 click") && err.contains("mask prompt"),
        "{err}"
    );
    assert_ne!(refined, boxed, "a click changes the mask");
    let (_, points_only) = run(
        &["--point", &click.replace(",0", ",1")],
        "pts.png",
        "pts.npy",
    );
    assert_eq!(points_only.dimensions(), (w, h));
}
