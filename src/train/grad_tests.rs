//! Gradient tests on the tiny configuration in f64: for every trainable module (decoder LoRA on the
//! attention projections, encoder LoRA on `attn.qkv`, unfrozen decoder weights), analytic gradients
//! agree with central finite differences, and every trainable tensor receives a non-zero gradient.

use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor, Var};
use rand::{Rng, SeedableRng};

use crate::model::{Adapter, DecoderOutput, LiteMedSam, LiteMedSamConfig, LoraConfig, Prompts};
use crate::train::loss::{seg_loss, LossWeights};

struct Setup {
    model: LiteMedSam,
    images: Tensor,
    prompts: Prompts,
    target: Tensor,
}

fn setup() -> Setup {
    let dev = Device::Cpu;
    let model = LiteMedSam::random_dtype(&LiteMedSamConfig::tiny(), 11, DType::F64, &dev).unwrap();
    // Seeded inputs: candle's Tensor::rand draws from an unseeded generator, which made the finite-difference
    // checks vary from run to run.
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(17);
    let px: Vec<f64> = (0..2 * 3 * 256 * 256)
        .map(|_| rng.random::<f64>())
        .collect();
    let images = Tensor::from_vec(px, (2, 3, 256, 256), &dev).unwrap();
    let prompts =
        Prompts::from_box_slice(&[[30., 40., 150., 170.], [90., 20., 220., 140.]], &dev).unwrap();
    let prompts = Prompts::from_boxes(prompts.boxes.unwrap().to_dtype(DType::F64).unwrap());
    let mut t = vec![0f64; 2 * 256 * 256];
    for (i, v) in t.iter_mut().enumerate() {
        let (b, y, x) = (i / 65536, (i / 256) % 256, i % 256);
        *v = if b == 0 {
            (y > 50 && y < 160 && x > 40 && x < 140) as u8 as f64
        } else {
            (y > 30 && y < 130 && x > 100) as u8 as f64
        };
    }
    let target = Tensor::from_vec(t, (2, 1, 256, 256), &dev).unwrap();
    Setup {
        model,
        images,
        prompts,
        target,
    }
}

/// Dice + BCE + (iou - 0.7)^2: the IoU-prediction term against a fixed value, because the real one
/// thresholds the logits and is not differentiable under finite differences.
fn loss(out: &DecoderOutput, target: &Tensor) -> Tensor {
    let w = LossWeights {
        dice: 1.0,
        bce: 1.0,
        iou: 0.0,
    };
    let l = seg_loss(out, target, &w).unwrap();
    let i = (&out.iou - 0.7).unwrap().sqr().unwrap().mean_all().unwrap();
    (l + i).unwrap()
}

fn nonzero(g: &GradStore, v: &Var) -> f64 {
    g.get(v.as_tensor())
        .map(|t| {
            t.abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f64>()
                .unwrap()
        })
        .unwrap_or(0.0)
}

/// Compare analytic and central-difference gradients on `per_var` random elements of each var.
fn fd_check(vars: &[(String, Var)], grads: &GradStore, per_var: usize, f: &dyn Fn() -> f64) {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
    let mut worst: f64 = 0.0;
    for (name, v) in vars {
        let g: Vec<f64> = grads
            .get(v.as_tensor())
            .unwrap_or_else(|| panic!("{name}: no gradient"))
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let base: Vec<f64> = v.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
        for _ in 0..per_var {
            // Prefer an element with a non-zero analytic gradient.
            let mut k = rng.random_range(0..base.len());
            for _ in 0..20 {
                if g[k] != 0.0 {
                    break;
                }
                k = rng.random_range(0..base.len());
            }
            let h = 1e-5;
            let mut p = base.clone();
            p[k] += h;
            v.set(&Tensor::from_vec(p.clone(), v.shape(), &Device::Cpu).unwrap())
                .unwrap();
            let fp = f();
            p[k] -= 2.0 * h;
            v.set(&Tensor::from_vec(p, v.shape(), &Device::Cpu).unwrap())
                .unwrap();
            let fm = f();
            v.set(&Tensor::from_vec(base.clone(), v.shape(), &Device::Cpu).unwrap())
                .unwrap();
            let fd = (fp - fm) / (2.0 * h);
            let err = (fd - g[k]).abs() / (1e-6 + fd.abs().max(g[k].abs()));
            worst = worst.max(err);
            assert!(
                err < 1e-4 || (fd - g[k]).abs() < 1e-8,
                "{name}[{k}]: finite difference {fd} vs analytic {}",
                g[k]
            );
        }
    }
    eprintln!(
        "checked {} tensors, worst relative error {worst:.2e}",
        vars.len()
    );
}

fn perturb_b(ad: &Adapter, seed: u64) {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    for (n, v) in ad.named_vars() {
        if n.ends_with("lora_B") {
            let vals: Vec<f64> = (0..v.elem_count())
                .map(|_| rng.random_range(-0.3..0.3))
                .collect();
            v.set(&Tensor::from_vec(vals, v.shape(), &Device::Cpu).unwrap())
                .unwrap();
        }
    }
}

#[test]
fn decoder_lora_gradients() {
    let s = setup();
    let emb = s.model.encode(&s.images).unwrap();
    let cfg = LoraConfig {
        rank: 2,
        alpha: 4.0,
        targets: vec![
            "q_proj".into(),
            "k_proj".into(),
            "v_proj".into(),
            "out_proj".into(),
        ],
    };
    let ad = Adapter::new(&s.model, &cfg, 3).unwrap();
    assert_eq!(
        ad.paths().len(),
        7 * 4,
        "7 attention layers x 4 projections"
    );
    assert!(!ad.targets_encoder());
    // Fresh adapter: B = 0, so only B gets a gradient (A's gradient is B^T(...) = 0).
    let g = loss(
        &s.model.decode(&emb, &s.prompts, Some(&ad)).unwrap(),
        &s.target,
    )
    .backward()
    .unwrap();
    for (n, v) in ad.named_vars() {
        let z = nonzero(&g, &v);
        if n.ends_with("lora_B") {
            assert!(z > 0.0, "{n}: zero gradient on a fresh adapter");
        } else {
            assert_eq!(z, 0.0, "{n}");
        }
    }
    perturb_b(&ad, 9);
    let f = || {
        loss(
            &s.model.decode(&emb, &s.prompts, Some(&ad)).unwrap(),
            &s.target,
        )
        .to_scalar::<f64>()
        .unwrap()
    };
    let g = loss(
        &s.model.decode(&emb, &s.prompts, Some(&ad)).unwrap(),
        &s.target,
    )
    .backward()
    .unwrap();
    for (n, v) in ad.named_vars() {
        assert!(nonzero(&g, &v) > 0.0, "{n}: zero gradient");
    }
    fd_check(&ad.named_vars(), &g, 1, &f);
}

#[test]
fn encoder_lora_gradients() {
    let s = setup();
    let cfg = LoraConfig {
        rank: 2,
        alpha: 2.0,
        targets: vec!["attn.qkv".into()],
    };
    let ad = Adapter::new(&s.model, &cfg, 4).unwrap();
    assert_eq!(
        ad.paths().len(),
        3,
        "one TinyViT block in each of stages 1-3"
    );
    assert!(ad.targets_encoder() && !ad.targets_decoder());
    perturb_b(&ad, 10);
    let f = || {
        let emb = s.model.encode_with(&s.images, Some(&ad)).unwrap();
        loss(
            &s.model.decode(&emb, &s.prompts, Some(&ad)).unwrap(),
            &s.target,
        )
    };
    let g = f().backward().unwrap();
    for (n, v) in ad.named_vars() {
        assert!(nonzero(&g, &v) > 0.0, "{n}: zero gradient");
    }
    fd_check(&ad.named_vars(), &g, 1, &|| f().to_scalar::<f64>().unwrap());
}

#[test]
fn unfrozen_decoder_gradients() {
    let mut s = setup();
    let emb = s.model.encode(&s.images).unwrap();
    let vars = s.model.unfreeze(&["mask_decoder."]).unwrap();
    assert!(vars.len() > 50, "{} decoder tensors", vars.len());
    assert!(!s.model.encoder_trainable());
    let f = || loss(&s.model.decode(&emb, &s.prompts, None).unwrap(), &s.target);
    let g = f().backward().unwrap();
    // The key bias of a token-to-image attention adds the same to every score of a query's row, which the
    // softmax cancels: its gradient is exactly zero (the decoder's absorbed attention makes none), and moving it
    // leaves the loss unchanged.
    let cancelled = |n: &str| n.contains("token_to_image.k_proj.bias");
    let l0 = f().to_scalar::<f64>().unwrap();
    for (n, v) in &vars {
        if cancelled(n) {
            assert_eq!(nonzero(&g, v), 0.0, "{n}");
            let b = v.as_tensor().copy().unwrap();
            v.set(&(&b + 0.5).unwrap()).unwrap();
            let l1 = f().to_scalar::<f64>().unwrap();
            v.set(&b).unwrap();
            assert!(
                (l1 - l0).abs() < 1e-9 * l0.abs().max(1.0),
                "{n}: {l0} -> {l1}"
            );
        } else {
            assert!(nonzero(&g, v) > 0.0, "{n}: zero gradient");
        }
    }
    assert_eq!(vars.iter().filter(|(n, _)| cancelled(n)).count(), 3);
    // Finite differences on every third tensor (each kind of layer is covered) to keep the test fast.
    let some: Vec<(String, Var)> = vars
        .iter()
        .filter(|(n, _)| !cancelled(n))
        .step_by(3)
        .cloned()
        .collect();
    fd_check(&some, &g, 1, &|| f().to_scalar::<f64>().unwrap());
}

#[test]
fn unfrozen_encoder_tensors_get_gradients() {
    let mut s = setup();
    let vars = s
        .model
        .unfreeze(&["image_encoder.layers.1.", "image_encoder.neck"])
        .unwrap();
    assert!(s.model.encoder_trainable());
    let f = || {
        let emb = s.model.encode(&s.images).unwrap();
        loss(&s.model.decode(&emb, &s.prompts, None).unwrap(), &s.target)
    };
    let g = f().backward().unwrap();
    for (n, v) in &vars {
        assert!(nonzero(&g, v) > 0.0, "{n}: zero gradient");
    }
    // Finite differences on a few: the depthwise conv, the attention biases, the neck's 3x3 conv.
    let pick: Vec<(String, Var)> = vars
        .iter()
        .filter(|(n, _)| {
            n.ends_with("local_conv.c.weight")
                || n.ends_with("attention_biases")
                || n.ends_with("neck.2.weight")
                || n.ends_with("downsample.conv2.c.weight")
        })
        .cloned()
        .collect();
    assert!(
        pick.len() >= 3,
        "{:?}",
        pick.iter().map(|p| &p.0).collect::<Vec<_>>()
    );
    fd_check(&pick, &g, 1, &|| f().to_scalar::<f64>().unwrap());
}
