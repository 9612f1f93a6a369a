//! CUDA vs CPU on a machine with a GPU (built only with `--features cuda`; run by `scripts/gpu-check.sh`):
//! the committed parity fixtures' box prompts through LiteMedSAM on both devices, logits and IoU compared, and a
//! LoRA training step's loss and gradients on both.
#![cfg(feature = "cuda")]

use candle_core::{DType, Device, Tensor};
use evosam::model::{Adapter, LiteMedSam, LoraConfig, Prompts};
use evosam::train::{seg_loss, LossWeights};
use std::path::PathBuf;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/parity")
}

fn gpu() -> Device {
    let name = std::env::var("EVOSAM_GPU").unwrap_or_else(|_| "cuda:0".into());
    evosam::runner::open_device(&name).expect("a CUDA device (EVOSAM_GPU, default cuda:0)")
}

/// max |a - b| / (max(b) - min(b)), both brought to the CPU.
fn rel_diff(a: &Tensor, b: &Tensor) -> f32 {
    let (a, b) = (
        a.to_device(&Device::Cpu).unwrap(),
        b.to_device(&Device::Cpu).unwrap(),
    );
    let d = (&a - &b).unwrap().abs().unwrap().max_all().unwrap();
    let r = (b.max_all().unwrap() - b.min_all().unwrap()).unwrap();
    d.to_scalar::<f32>().unwrap() / r.to_scalar::<f32>().unwrap()
}

#[test]
#[ignore = "needs an NVIDIA GPU: scripts/gpu-check.sh"]
fn cuda_logits_match_cpu_on_the_parity_fixtures() {
    let w = evosam::weights::resolve_weights(None).expect("weights (EVOSAM_HOME or pip)");
    let (cpu, gpu) = (Device::Cpu, gpu());
    let m_cpu = LiteMedSam::from_pth(&w, &cpu).unwrap();
    let m_gpu = LiteMedSam::from_pth(&w, &gpu).unwrap();
    let cases: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("cases.json")).unwrap())
            .unwrap();
    let mut checked = 0;
    for case in cases["cases"].as_array().unwrap() {
        // box prompts only (points and mask prompts are covered on the CPU by the parity test)
        let (Some(boxes), None, None) = (
            case["boxes"].as_array(),
            case.get("points"),
            case.get("mask_in"),
        ) else {
            continue;
        };
        let boxes: Vec<[f32; 4]> = boxes
            .iter()
            .map(|b| {
                let v: Vec<f32> = b
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_f64().unwrap() as f32)
                    .collect();
                [v[0], v[1], v[2], v[3]]
            })
            .collect();
        let imgs: Vec<Tensor> = case["images"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| {
                let t =
                    Tensor::read_npy(fixtures().join(format!("img{}.npy", i.as_u64().unwrap())))
                        .unwrap();
                (t.to_dtype(DType::F32).unwrap() / 255.0).unwrap()
            })
            .collect();
        let x = Tensor::stack(&imgs, 0).unwrap();
        let run = |m: &LiteMedSam, dev: &Device| {
            let p = Prompts::from_box_slice(&boxes, dev).unwrap();
            m.forward(&x.to_device(dev).unwrap(), &p, None).unwrap()
        };
        let (a, b) = (run(&m_gpu, &gpu), run(&m_cpu, &cpu));
        let name = case["name"].as_str().unwrap();
        let (dl, di) = (rel_diff(&a.logits, &b.logits), rel_diff(&a.iou, &b.iou));
        eprintln!("{name}: CUDA vs CPU logits max diff / range {dl:.2e}, iou {di:.2e}");
        assert!(dl < 1e-3, "{name}: logits differ, {dl}");
        assert!(di < 1e-2, "{name}: iou differs, {di}");
        checked += 1;
    }
    assert!(
        checked >= 2,
        "only {checked} box-only cases in the fixtures"
    );
}

#[test]
#[ignore = "needs an NVIDIA GPU: scripts/gpu-check.sh"]
fn cuda_lora_step_matches_cpu() {
    let w = evosam::weights::resolve_weights(None).expect("weights (EVOSAM_HOME or pip)");
    let (cpu, gpu) = (Device::Cpu, gpu());
    let img = (Tensor::read_npy(fixtures().join("img0.npy"))
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap()
        / 255.0)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    let cfg = LoraConfig {
        rank: 4,
        alpha: 8.0,
        targets: vec!["attn.qkv".into(), "mask_decoder".into()],
    };
    let mut target = vec![0f32; 256 * 256];
    for y in 60..160 {
        for x in 70..180 {
            target[y * 256 + x] = 1.0;
        }
    }
    let step = |dev: &Device| {
        let m = LiteMedSam::from_pth(&w, dev).unwrap();
        let ad = Adapter::new(&m, &cfg, 3).unwrap();
        let p = Prompts::from_box_slice(&[[60., 50., 190., 170.]], dev).unwrap();
        let emb = m
            .encode_with(&img.to_device(dev).unwrap(), Some(&ad))
            .unwrap();
        let out = m.decode(&emb, &p, Some(&ad)).unwrap();
        let t = Tensor::from_vec(target.clone(), (1, 1, 256, 256), dev).unwrap();
        let loss = seg_loss(&out, &t, &LossWeights::default()).unwrap();
        let g = loss.backward().unwrap();
        let grads: Vec<Tensor> = ad
            .vars()
            .iter()
            .filter_map(|v| g.get(v).map(|t| t.to_device(&Device::Cpu).unwrap()))
            .collect();
        let l = loss
            .to_device(&Device::Cpu)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        (l, grads)
    };
    let ((lg, gg), (lc, gc)) = (step(&gpu), step(&cpu));
    eprintln!("loss CUDA {lg} CPU {lc}");
    assert!(
        (lg - lc).abs() < 1e-3 * lc.abs().max(1.0),
        "loss {lg} vs {lc}"
    );
    assert_eq!(gg.len(), gc.len());
    assert!(!gc.is_empty(), "no LoRA gradient");
    let worst = gg
        .iter()
        .zip(&gc)
        .map(|(a, b)| rel_diff(a, b))
        .filter(|d| d.is_finite())
        .fold(0f32, f32::max);
    eprintln!("LoRA gradients: CUDA vs CPU worst max diff / range {worst:.2e}");
    assert!(worst < 1e-2, "gradients differ: {worst}");
}
