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

/// The shared data folder (`../shared/data` next to the repository), if present.
fn shared_data() -> Option<PathBuf> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    [root.join("../shared/data"), root.join("../../shared/data")]
        .into_iter()
        .find(|p| p.join("polyp/Kvasir-SEG").is_dir())
}

#[test]
fn segment_real_polyp_image() {
    let Some(data) = shared_data() else {
        eprintln!("skipped: no ../shared/data next to the repository");
        return;
    };
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
