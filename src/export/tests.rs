//! The export against the expert set it came from, on the tiny random model: PEFT keys and values, the config's
//! scaling, and the router's tensors giving the matcher's scores and the novelty detector's scores.

use super::*;
use crate::model::{Adapter, LiteMedSamConfig, LoraConfig};
use crate::strategy::evosam::birth::Birth;
use crate::strategy::evosam::Routing;
use crate::strategy::matcher::MatcherConfig;
use crate::strategy::novelty::NoveltyConfig;
use candle_core::Tensor;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};

const DIM: usize = 6;

fn normal(rng: &mut ChaCha8Rng) -> f64 {
    StandardNormal.sample(rng)
}

/// Features of one task: a shifted Gaussian cloud.
fn feats(rng: &mut ChaCha8Rng, shift: usize, n: usize) -> Vec<Vec<f64>> {
    (0..n)
        .map(|_| {
            (0..DIM)
                .map(|j| normal(rng) * 0.3 + if j == shift { 2.0 } else { 0.0 })
                .collect()
        })
        .collect()
}

/// An adapter whose B is random (a fresh one has B = 0, which would hide a transposed or misplaced matrix).
fn trained_adapter(model: &LiteMedSam, cfg: &LoraConfig, seed: u64) -> Adapter {
    let ad = Adapter::new(model, cfg, seed).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(seed + 100);
    for v in ad.vars() {
        let n = v.elem_count();
        let vals: Vec<f32> = (0..n).map(|_| normal(&mut rng) as f32).collect();
        v.set(&Tensor::from_vec(vals, v.shape(), v.device()).unwrap())
            .unwrap();
    }
    ad
}

fn set_and_base(targets: &[&str], with_chain: bool) -> (ExpertSet, BaseModel, LiteMedSam) {
    let model = LiteMedSam::random(&LiteMedSamConfig::tiny(), 3, &Device::Cpu).unwrap();
    let cfg = LoraConfig {
        rank: 2,
        alpha: 3.0,
        targets: targets.iter().map(|s| s.to_string()).collect(),
    };
    let novelty = NoveltyConfig {
        enabled: true,
        ..NoveltyConfig::default()
    };
    let matcher = MatcherConfig {
        projection_dim: 5,
        ..MatcherConfig::default()
    };
    let mut set = ExpertSet::new(Routing::Matcher, DIM, matcher, novelty).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    for (k, name) in ["site-a", "site-b", "site-c"].iter().enumerate() {
        let f = feats(&mut rng, k, 6);
        set.push(
            name,
            trained_adapter(&model, &cfg, k as u64),
            Birth::default(),
            &f,
        )
        .unwrap();
    }
    if with_chain {
        set.chain = Some(trained_adapter(&model, &cfg, 9));
    }
    // every site of the tiny model counts as an nn.Linear here (the real model's table comes from its state dict)
    let base = BaseModel {
        name: "tiny.pth".into(),
        sha256: "0".repeat(64),
        linear: model
            .linear_sites()
            .into_iter()
            .map(|(p, _, _)| p)
            .collect(),
    };
    (set, base, model)
}

fn read_st(path: &Path) -> std::collections::HashMap<String, Tensor> {
    candle_core::safetensors::load(path, &Device::Cpu).unwrap()
}

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

#[test]
fn peft_folders_hold_every_site_under_peft_names_with_our_scaling() {
    let (set, base, _) = set_and_base(&["mask_decoder"], true);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("export");
    let ex = export_peft(&set, &base, &out).unwrap();
    assert_eq!(ex.experts.len(), 3);
    assert_eq!(ex.chain.as_deref(), Some("chain"));
    let folders: Vec<(&Adapter, String)> = set
        .adapters
        .iter()
        .zip(&ex.experts)
        .map(|(a, (_, f))| (a, f.clone()))
        .chain(std::iter::once((
            set.chain.as_ref().unwrap(),
            "chain".into(),
        )))
        .collect();
    for (ad, folder) in folders {
        let d = out.join(folder);
        let cfg = json(&d.join("adapter_config.json"));
        assert_eq!(cfg["peft_type"], "LORA");
        let r = cfg["r"].as_f64().unwrap();
        let alpha = cfg["lora_alpha"].as_f64().unwrap();
        assert_eq!(alpha / r, ad.config.scale());
        let targets: Vec<String> = cfg["target_modules"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_string())
            .collect();
        assert_eq!(targets, ad.paths());
        assert!(targets.iter().all(|t| t.starts_with("mask_decoder.")));
        let st = read_st(&d.join("adapter_model.safetensors"));
        assert_eq!(st.len(), 2 * targets.len());
        for p in &targets {
            let (a, b, _) = ad.site(p).unwrap();
            for (which, want) in [("A", a), ("B", b)] {
                let got = &st[&format!("base_model.model.{p}.lora_{which}.weight")];
                assert_eq!(got.dims(), want.dims(), "{p} {which}");
                let bits = |t: &Tensor| t.to_vec2::<f32>().unwrap();
                assert_eq!(bits(got), bits(want), "{p} {which}");
            }
        }
    }
    assert!(std::fs::read_to_string(out.join("README.md"))
        .unwrap()
        .contains("experts/site-a"));
    // a second export into the same folder is refused rather than mixed with the first
    let again = export_peft(&set, &base, &out).unwrap_err();
    assert_eq!(again.exit_code(), 2, "{again}");
}

#[test]
fn router_tensors_reproduce_the_matcher_and_novelty_scores() {
    let (set, base, _) = set_and_base(&["mask_decoder"], false);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("export");
    export_peft(&set, &base, &out).unwrap();
    let doc = json(&out.join("router/router.json"));
    assert_eq!(doc["version"], router::ROUTER_VERSION);
    assert!(doc["chain"].is_null());
    let st = read_st(&out.join("router/router.safetensors"));
    let w = st["matcher.weights"].to_vec2::<f64>().unwrap();
    let proj = st["matcher.projection"].to_vec2::<f64>().unwrap();
    let means = st["novelty.means"].to_vec2::<f64>().unwrap();
    let l = st["novelty.cholesky"].to_vec2::<f64>().unwrap();
    let threshold = doc["novelty"]["threshold"].as_f64();
    assert_eq!(threshold, set.novelty_threshold());
    let counts: usize = doc["novelty"]["calibration_counts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as usize)
        .sum();
    assert_eq!(st["novelty.calibration"].dims(), [counts]);
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    // images like each task's and unlike any (shift 5: a coordinate no task moved)
    for shift in [0, 1, 2, 5] {
        for x in feats(&mut rng, shift, 3) {
            // the router recipe of router.json, written out here independently of the crate's code
            let mut h: Vec<f64> = (0..proj[0].len())
                .map(|j| (0..DIM).map(|i| x[i] * proj[i][j]).sum::<f64>().max(0.0))
                .collect();
            let nf = h.clone();
            h.push(1.0);
            let scores: Vec<f64> = (0..w[0].len())
                .map(|t| h.iter().zip(&w).map(|(hi, row)| hi * row[t]).sum())
                .collect();
            let want = set.matcher.scores(&x).unwrap();
            for (a, b) in scores.iter().zip(&want) {
                assert!((a - b).abs() < 1e-9 * (1.0 + b.abs()), "{a} vs {b}");
            }
            // novelty: forward substitution L z = x - mu, score = min |z|
            let score = means
                .iter()
                .map(|mu| {
                    let diff: Vec<f64> = nf.iter().zip(mu).map(|(a, b)| a - b).collect();
                    let mut z = vec![0.0; diff.len()];
                    for i in 0..diff.len() {
                        let s: f64 = (0..i).map(|j| l[i][j] * z[j]).sum();
                        z[i] = (diff[i] - s) / l[i][i];
                    }
                    z.iter().map(|v| v * v).sum::<f64>().sqrt()
                })
                .fold(f64::INFINITY, f64::min);
            let want = set.novelty_score(&x).unwrap().unwrap();
            assert!(
                (score - want).abs() < 1e-9 * (1.0 + want),
                "{score} vs {want}"
            );
        }
    }
}

#[test]
fn a_site_that_is_no_linear_module_in_pytorch_is_refused_by_name() {
    let (set, mut base, _) = set_and_base(&["mask_decoder"], false);
    let site = set.adapters[0].paths()[0].clone();
    base.linear.remove(&site);
    let dir = tempfile::tempdir().unwrap();
    let e = export_peft(&set, &base, &dir.path().join("x")).unwrap_err();
    assert_eq!(e.exit_code(), 2);
    assert!(e.to_string().contains(&site), "{e}");
    assert!(
        !dir.path().join("x").exists(),
        "a refused export writes nothing"
    );
}
