//! Model tests: reference parity on committed fixtures (real weights) and tiny-config smoke tests.

use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};

use super::*;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/parity")
}

fn load_img(i: usize) -> Tensor {
    let t = Tensor::read_npy(fixtures().join(format!("img{i}.npy"))).unwrap();
    (t.to_dtype(DType::F32).unwrap() / 255.0).unwrap()
}

/// max |a - b| / (max(b) - min(b)).
pub(crate) fn rel_diff(a: &Tensor, b: &Tensor) -> f32 {
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
    d / r
}

#[test]
fn parity_with_pytorch_reference() {
    let dev = Device::Cpu;
    let w = crate::weights::resolve_weights(None).expect("weights (EVOSAM_HOME or pip)");
    let model = LiteMedSam::from_pth(&w, &dev).unwrap();
    let cases: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("cases.json")).unwrap())
            .unwrap();
    let mut emb_cache: HashMap<usize, Tensor> = HashMap::new();
    let mut checked = 0;
    for case in cases["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let idx: Vec<usize> = case["images"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as usize)
            .collect();
        let boxes: Option<Vec<[f32; 4]>> = case["boxes"].as_array().map(|a| {
            a.iter()
                .map(|b| {
                    let v: Vec<f32> = b
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|x| x.as_f64().unwrap() as f32)
                        .collect();
                    [v[0], v[1], v[2], v[3]]
                })
                .collect()
        });
        let imgs: Vec<Tensor> = idx.iter().map(|&i| load_img(i)).collect();
        let x = Tensor::stack(&imgs, 0).unwrap();
        let emb = model.encode(&x).unwrap();
        if idx.len() == 1 {
            emb_cache.insert(idx[0], emb.clone());
        }
        if name == "single0" {
            let e8 = Tensor::read_npy(fixtures().join("img0_emb8.npy")).unwrap();
            let d = rel_diff(&emb.get(0).unwrap().narrow(0, 0, 8).unwrap(), &e8);
            eprintln!("embedding (first 8 channels) rel diff {d:.2e}");
            assert!(d < 1e-3, "embedding differs: {d}");
        }
        let mut prompts = match &boxes {
            Some(b) => Prompts::from_box_slice(b, &dev).unwrap(),
            None => Prompts::default(),
        };
        if let Some(pts) = case.get("points") {
            let flat: Vec<f32> = pts
                .as_array()
                .unwrap()
                .iter()
                .flat_map(|p| {
                    p.as_array().unwrap().iter().flat_map(|xy| {
                        xy.as_array()
                            .unwrap()
                            .iter()
                            .map(|v| v.as_f64().unwrap() as f32)
                    })
                })
                .collect();
            let labels: Vec<f32> = case["labels"]
                .as_array()
                .unwrap()
                .iter()
                .flat_map(|l| {
                    l.as_array()
                        .unwrap()
                        .iter()
                        .map(|v| v.as_f64().unwrap() as f32)
                })
                .collect();
            let (b, n) = (idx.len(), labels.len() / idx.len());
            prompts.points = Some((
                Tensor::from_vec(flat, (b, n, 2), &dev).unwrap(),
                Tensor::from_vec(labels, (b, n), &dev).unwrap(),
            ));
        }
        if let Some(f) = case.get("mask_in").and_then(|v| v.as_str()) {
            let m = Tensor::read_npy(fixtures().join(f)).unwrap();
            if name == "mask_box0" {
                let want = Tensor::read_npy(fixtures().join("mask_box0_dense8.npy")).unwrap();
                let dense = model.prompt_encoder.embed_masks(&m).unwrap(); // (1, s, s, C)
                let got = dense
                    .get(0)
                    .unwrap()
                    .permute((2, 0, 1))
                    .unwrap()
                    .narrow(0, 0, 8)
                    .unwrap();
                let d = rel_diff(&got.contiguous().unwrap(), &want);
                eprintln!("mask embedding (first 8 channels) rel diff {d:.2e}");
                assert!(d < 1e-3, "mask embedding differs: {d}");
            }
            prompts.masks = Some(m);
        }
        let out = model.decode(&emb, &prompts, None).unwrap();
        let want = Tensor::read_npy(fixtures().join(format!("{name}_logits.npy"))).unwrap();
        let want_iou = Tensor::read_npy(fixtures().join(format!("{name}_iou.npy"))).unwrap();
        assert_eq!(out.logits.dims(), want.dims());
        let d = rel_diff(&out.logits, &want);
        let di = (&out.iou - &want_iou)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        eprintln!(
            "parity {name}: logits max abs diff / range = {d:.2e}, iou max abs diff = {di:.2e}"
        );
        assert!(d < 1e-3, "{name}: logits differ, {d}");
        assert!(di < 1e-3, "{name}: iou differs, {di}");
        checked += 1;
    }
    assert_eq!(checked, 8);
}

/// The fused inference kernels (bottlenecks, windowed attention, the neck's conv) give the embedding the
/// op-by-op path gives: a fresh adapter on every encoder linear (B = 0, so the same function) sends every layer
/// down the op-by-op path.
#[test]
fn fused_encoder_matches_the_op_by_op_path() {
    let dev = Device::Cpu;
    let m = LiteMedSam::random(&LiteMedSamConfig::tiny(), 3, &dev).unwrap();
    let x = Tensor::rand(0f32, 1f32, (2, 3, 256, 256), &dev).unwrap();
    let lcfg = LoraConfig {
        rank: 2,
        alpha: 2.0,
        targets: vec!["image_encoder.*".into()],
    };
    let ad = Adapter::new(&m, &lcfg, 1).unwrap();
    let fused = m.encode(&x).unwrap();
    let plain = m.encode_with(&x, Some(&ad)).unwrap();
    let d = rel_diff(&fused, &plain);
    eprintln!("fused vs op-by-op embedding: max abs diff / range {d:.2e}");
    assert!(d < 1e-5, "fused encoder differs: {d}");
}

#[test]
fn tiny_pipeline_shapes_and_routing() {
    let dev = Device::Cpu;
    let cfg = LiteMedSamConfig::tiny();
    let m = LiteMedSam::random(&cfg, 7, &dev).unwrap();
    let x = Tensor::rand(0f32, 1f32, (2, 3, 256, 256), &dev).unwrap();
    let t0 = std::time::Instant::now();
    let emb = m.encode(&x).unwrap();
    eprintln!("tiny encode of 2 images: {:?}", t0.elapsed());
    assert_eq!(emb.dims(), &[2, 32, 64, 64]);
    let p = Prompts::from_box_slice(&[[10., 20., 100., 200.], [50., 50., 60., 90.]], &dev).unwrap();
    let out = m.decode(&emb, &p, None).unwrap();
    assert_eq!(out.logits.dims(), &[2, 1, 256, 256]);
    assert_eq!(out.iou.dims(), &[2, 1]);
    // Batched = one at a time.
    let o1 = m
        .decode(
            &emb.narrow(0, 1, 1).unwrap(),
            &p.select(&Tensor::new(&[1u32], &dev).unwrap()).unwrap(),
            None,
        )
        .unwrap();
    let d = (out.logits.narrow(0, 1, 1).unwrap() - &o1.logits)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(d < 1e-4, "batch row differs from single: {d}");
    // A fresh adapter changes nothing; a perturbed one changes only its routed image.
    let lcfg = LoraConfig {
        rank: 2,
        alpha: 4.0,
        targets: vec!["q_proj".into(), "v_proj".into()],
    };
    let ad = Adapter::new(&m, &lcfg, 1).unwrap();
    let oa = m.decode(&emb, &p, Some(&ad)).unwrap();
    let d = (&oa.logits - &out.logits)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert_eq!(d, 0.0);
    for v in ad.vars() {
        v.set(&(v.as_tensor() + 0.3).unwrap()).unwrap();
    }
    let routed = m.decode_routed(&emb, &p, &[None, Some(&ad)]).unwrap();
    let full = m.decode(&emb, &p, Some(&ad)).unwrap();
    let r0 = (routed.logits.get(0).unwrap() - out.logits.get(0).unwrap())
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    let r1 = (routed.logits.get(1).unwrap() - full.logits.get(1).unwrap())
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    let changed = (full.logits.get(1).unwrap() - out.logits.get(1).unwrap())
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(r0 < 1e-5 && r1 < 1e-4, "routing mixes images: {r0} {r1}");
    assert!(changed > 1e-3, "adapter had no effect");
}

#[test]
#[ignore = "micro-benchmark: prints timings, asserts nothing; run by hand with --ignored --nocapture"]
fn micro_bench_ops() {
    let dev = Device::Cpu;
    let x = Tensor::randn(0f32, 1.0, (1, 256, 256, 256), &dev).unwrap();
    let w = Tensor::randn(0f32, 1.0, (9, 256), &dev).unwrap();
    let lin = Tensor::randn(0f32, 0.1, (256, 64), &dev).unwrap();
    let t = |name: &str, f: &dyn Fn() -> Tensor| {
        f();
        let t0 = std::time::Instant::now();
        for _ in 0..3 {
            f();
        }
        eprintln!(
            "{name}: {:.1} ms",
            t0.elapsed().as_secs_f64() * 1000.0 / 3.0
        );
    };
    t("gelu_erf 16.7M", &|| x.gelu_erf().unwrap());
    t("gelu tanh 16.7M", &|| x.gelu().unwrap());
    t("add 16.7M", &|| (&x + &x).unwrap());
    t("dwconv 256ch 256x256", &|| {
        kernels::dwconv3x3(&x, &w, 1).unwrap()
    });
    t("matmul 65536x256 @ 256x64", &|| {
        x.reshape((65536, 256)).unwrap().matmul(&lin).unwrap()
    });
    t("matmul 65536x64 @ 64x256 (t)", &|| {
        let y = x
            .narrow(3, 0, 64)
            .unwrap()
            .contiguous()
            .unwrap()
            .reshape((65536, 64))
            .unwrap();
        y.matmul(&lin.t().unwrap()).unwrap()
    });
    t("broadcast_add bias", &|| {
        x.broadcast_add(&w.get(0).unwrap()).unwrap()
    });
}

#[test]
#[ignore = "micro-benchmark: prints timings, asserts nothing; run by hand with --ignored --nocapture"]
fn micro_bench_encoder_stages() {
    let dev = Device::Cpu;
    let w = crate::weights::resolve_weights(None).unwrap();
    let m = LiteMedSam::from_pth(&w, &dev).unwrap();
    let x = Tensor::rand(0f32, 1.0, (1, 3, 256, 256), &dev).unwrap();
    m.encode(&x).unwrap();
    for _ in 0..2 {
        let t0 = std::time::Instant::now();
        m.image_encoder.forward_profiled(&x).unwrap();
        eprintln!("total {:.0} ms", t0.elapsed().as_secs_f64() * 1000.0);
    }
    let tiny = LiteMedSam::random(&LiteMedSamConfig::tiny(), 1, &dev).unwrap();
    tiny.encode(&x).unwrap();
    let t0 = std::time::Instant::now();
    tiny.image_encoder.forward_profiled(&x).unwrap();
    eprintln!("tiny total {:.0} ms", t0.elapsed().as_secs_f64() * 1000.0);
    let emb = tiny.encode(&x).unwrap();
    let p = Prompts::from_box_slice(&[[10., 10., 100., 100.]], &dev).unwrap();
    tiny.decode(&emb, &p, None).unwrap();
    let t0 = std::time::Instant::now();
    tiny.decode(&emb, &p, None).unwrap();
    eprintln!("tiny decode {:.0} ms", t0.elapsed().as_secs_f64() * 1000.0);
}

#[test]
#[ignore = "micro-benchmark: prints timings, asserts nothing; run by hand with --ignored --nocapture"]
fn micro_bench_decoder_step() {
    use crate::train::{seg_loss, LossWeights};
    let dev = Device::Cpu;
    let w = crate::weights::resolve_weights(None).unwrap();
    let mut m = LiteMedSam::from_pth(&w, &dev).unwrap();
    let emb = Tensor::randn(0f32, 1.0, (4, 256, 64, 64), &dev).unwrap();
    let p = Prompts::from_box_slice(
        &[
            [10., 10., 100., 100.],
            [20., 30., 200., 150.],
            [5., 5., 250., 250.],
            [100., 100., 200., 220.],
        ],
        &dev,
    )
    .unwrap();
    let target = Tensor::rand(0f32, 1.0, (4, 1, 256, 256), &dev)
        .unwrap()
        .gt(0.5)
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap();
    let t = |name: &str, f: &mut dyn FnMut()| {
        f();
        let t0 = std::time::Instant::now();
        for _ in 0..3 {
            f();
        }
        eprintln!(
            "{name}: {:.0} ms",
            t0.elapsed().as_secs_f64() * 1000.0 / 3.0
        );
    };
    t("decode fwd b4 frozen", &mut || {
        m.decode(&emb, &p, None).unwrap();
    });
    let _vars = m.unfreeze(&["mask_decoder."]).unwrap();
    t("decode fwd b4 trainable", &mut || {
        m.decode(&emb, &p, None).unwrap();
    });
    t("decode fwd+loss+bwd b4", &mut || {
        let o = m.decode(&emb, &p, None).unwrap();
        seg_loss(&o, &target, &LossWeights::default())
            .unwrap()
            .backward()
            .unwrap();
    });
}

#[test]
fn adapter_save_load_roundtrip_and_refusals() {
    let dev = Device::Cpu;
    let m = LiteMedSam::random(&LiteMedSamConfig::tiny(), 2, &dev).unwrap();
    let cfg = LoraConfig {
        rank: 3,
        alpha: 6.0,
        targets: vec!["mask_decoder.*_proj".into(), "attn.qkv".into()],
    };
    let ad = Adapter::new(&m, &cfg, 5).unwrap();
    assert!(ad.targets_encoder() && ad.targets_decoder());
    for v in ad.vars() {
        v.set(&(v.as_tensor() + 0.1).unwrap()).unwrap();
    }
    let n_sites = ad.paths().len();
    assert_eq!(
        ad.num_params(),
        ad.vars().iter().map(|v| v.elem_count()).sum::<usize>()
    );
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("e/expert.safetensors");
    ad.save(&f, "abc123").unwrap();
    let back = Adapter::load(&f, &m, "abc123").unwrap();
    assert_eq!(back.config, cfg);
    assert_eq!(back.paths().len(), n_sites);
    for ((n1, v1), (n2, v2)) in ad.named_vars().iter().zip(back.named_vars()) {
        assert_eq!(n1, &n2);
        let d = (v1.as_tensor() - v2.as_tensor())
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert_eq!(d, 0.0);
    }
    let e = Adapter::load(&f, &m, "other").unwrap_err();
    assert!(e.to_string().contains("abc123"), "{e}");
    // Another architecture: sites do not fit.
    let real_cfg = LiteMedSamConfig {
        decoder: {
            let mut d = LiteMedSamConfig::tiny().decoder;
            d.transformer.mlp_dim = 48;
            d
        },
        ..LiteMedSamConfig::tiny()
    };
    let other = LiteMedSam::random(&real_cfg, 2, &dev).unwrap();
    let ad2 = Adapter::new(
        &other,
        &LoraConfig {
            rank: 2,
            alpha: 1.0,
            targets: vec!["lin1".into()],
        },
        0,
    )
    .unwrap();
    ad2.save(&f, "abc123").unwrap();
    assert!(Adapter::load(&f, &m, "abc123").is_err());
    // deep_clone is independent.
    let c = ad.deep_clone().unwrap();
    c.vars()[0].set(&c.vars()[0].zeros_like().unwrap()).unwrap();
    assert!(
        ad.vars()[0]
            .as_tensor()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
            > 0.0
    );
    // Targets that match nothing are an error.
    assert!(Adapter::new(
        &m,
        &LoraConfig {
            rank: 2,
            alpha: 1.0,
            targets: vec!["nope".into()]
        },
        0
    )
    .is_err());
}

#[test]
#[ignore = "micro-benchmark: prints timings, asserts nothing; run by hand with --ignored --nocapture"]
fn micro_bench_fused() {
    let dev = Device::Cpu;
    let x = Tensor::randn(0f32, 1.0, (1, 256, 256, 256), &dev).unwrap();
    let b = Tensor::randn(0f32, 1.0, 256, &dev).unwrap();
    let w9 = Tensor::randn(0f32, 1.0, (9, 256), &dev).unwrap();
    for _ in 0..2 {
        let t0 = std::time::Instant::now();
        kernels::bias_gelu(&x, &b).unwrap();
        let t1 = std::time::Instant::now();
        x.broadcast_add(&b).unwrap().gelu_erf().unwrap();
        let t2 = std::time::Instant::now();
        kernels::dwconv3x3(&x, &w9, 1).unwrap();
        let t3 = std::time::Instant::now();
        eprintln!(
            "bias_gelu fused {:.1} ms, candle {:.1} ms; dwconv {:.1} ms",
            (t1 - t0).as_secs_f64() * 1e3,
            (t2 - t1).as_secs_f64() * 1e3,
            (t3 - t2).as_secs_f64() * 1e3
        );
    }
}

#[test]
fn tiny_mask_prompt_changes_the_output_and_batches_like_single_images() {
    let dev = Device::Cpu;
    let m = LiteMedSam::random(&LiteMedSamConfig::tiny(), 3, &dev).unwrap();
    let emb = Tensor::rand(-1f32, 1f32, (2, 32, 64, 64), &dev).unwrap();
    let mut p =
        Prompts::from_box_slice(&[[10., 20., 100., 200.], [50., 50., 60., 90.]], &dev).unwrap();
    let plain = m.decode(&emb, &p, None).unwrap();
    p.masks = Some(Tensor::rand(-5f32, 5f32, (2, 1, 256, 256), &dev).unwrap());
    let dense = m
        .prompt_encoder
        .embed_masks(p.masks.as_ref().unwrap())
        .unwrap();
    assert_eq!(dense.dims(), &[2, 64, 64, 32]);
    let out = m.decode(&emb, &p, None).unwrap();
    let changed = (&out.logits - &plain.logits)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(changed > 1e-3, "the mask prompt must change the logits");
    let one = m
        .decode(
            &emb.narrow(0, 1, 1).unwrap(),
            &p.select(&Tensor::new(&[1u32], &dev).unwrap()).unwrap(),
            None,
        )
        .unwrap();
    let d = rel_diff(&out.logits.narrow(0, 1, 1).unwrap(), &one.logits);
    assert!(d < 1e-4, "batch row differs from single: {d}");
    // Wrong sizes are errors, not panics.
    p.masks = Some(Tensor::zeros((2, 1, 128, 128), DType::F32, &dev).unwrap());
    let e = m.decode(&emb, &p, None).unwrap_err().to_string();
    assert!(e.contains("mask prompt"), "{e}");
    p.masks = Some(Tensor::zeros((1, 1, 256, 256), DType::F32, &dev).unwrap());
    assert!(m.decode(&emb, &p, None).is_err());
}
