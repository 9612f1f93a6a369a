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
