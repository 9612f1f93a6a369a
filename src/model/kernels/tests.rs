//! Each fused op against the same computation from candle's own ops, and against its own candle fallback (the
//! path it takes off the CPU, forced here by [`with_candle_fallback`]): forward values and the gradients of
//! `sum(y * r)` for a seeded random `r`, in f64 and in f32, on seeded inputs.
//!
//! Tolerances (largest absolute difference, relative to the reference's largest magnitude when that is above 1):
//! f64 1e-10 forward and 1e-5 gradients (candle's GeluErf backward rounds 1/sqrt(2 pi) to 0.398942); f32 2e-6
//! forward and 2e-5 gradients (f32 rounding summed in another order; measured at most 2.4e-7 and 2.0e-6).

use candle_core::{DType, Device, Tensor, Var, D};

use super::cpu::with_candle_fallback;

use super::add::add;
use super::attention::{attention, attention_scaled};
use super::dwconv::{dwconv3x3, dwconv3x3_shifted};
use super::gelu::bias_gelu;
use super::grouped_attn::grouped_attention;
use super::layer_norm::{layer_norm_ops, ln_act};
use super::linear::linear;
use super::lora_linear::lora_linear;
use super::readout::readout_gelu;
use super::tokens::tokens_plus;

/// The dtypes every op is checked in.
pub(crate) const DTYPES: [DType; 2] = [DType::F64, DType::F32];

/// A random f64 variable of `shape`, uniform in (-1, 1), from `seed` (also for the model's tests).
pub(crate) fn var(shape: &[usize], seed: u64) -> Var {
    var_in(shape, seed, DType::F64)
}

/// A random variable of `shape` in `dt`: [`var`]'s values (rounded to f32 for f32).
pub(crate) fn var_in(shape: &[usize], seed: u64, dt: DType) -> Var {
    Var::from_tensor(&rand_in(shape, seed, dt)).unwrap()
}

/// [`var_in`]'s values as a constant (no gradient).
pub(crate) fn rand_in(shape: &[usize], seed: u64, dt: DType) -> Tensor {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let n: usize = shape.iter().product();
    let v: Vec<f64> = (0..n).map(|_| rng.random_range(-1.0..1.0)).collect();
    Tensor::from_vec(v, shape, &Device::Cpu)
        .unwrap()
        .to_dtype(dt)
        .unwrap()
}

/// The largest magnitude of a tensor's elements (f32 or f64), as f64.
fn abs_max(t: &Tensor) -> f64 {
    t.abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
        .to_scalar::<f64>()
        .unwrap()
}

/// The largest absolute difference of two tensors of one shape (f32 or f64).
pub(crate) fn max_abs(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.dims(), b.dims());
    abs_max(&(a - b).unwrap())
}

/// [`max_abs`] divided by the largest magnitude of `b` when that is above 1.
fn rel_diff(a: &Tensor, b: &Tensor) -> f64 {
    max_abs(a, b) / abs_max(b).max(1.0)
}

/// The module docs' tolerances of a dtype: (forward, gradients).
fn tolerance(dt: DType) -> (f64, f64) {
    match dt {
        DType::F64 => (1e-10, 1e-5),
        _ => (2e-6, 2e-5),
    }
}

/// Forward values and the gradients of sum(y * r) (r seeded) agree between the fused op, candle's ops
/// (`reference`) and the fused op's own candle fallback, within the dtype's [`tolerance`].
fn check(vars: &[&Var], fused: &dyn Fn() -> Tensor, reference: &dyn Fn() -> Tensor) {
    let y1 = fused();
    let (tf, tg) = tolerance(y1.dtype());
    let r = rand_in(y1.dims(), 99, y1.dtype());
    let g1 = (&y1 * &r).unwrap().sum_all().unwrap().backward().unwrap();
    for (name, y2) in [
        ("candle's ops", reference()),
        ("the op's fallback", with_candle_fallback(fused)),
    ] {
        assert_eq!(y1.dims(), y2.dims());
        let d = rel_diff(&y1, &y2);
        eprintln!("{:?} vs {name}: forward diff {d:.2e}", y1.dtype());
        assert!(d < tf, "{:?} vs {name}: forward {d:e}", y1.dtype());
        let g2 = (&y2 * &r).unwrap().sum_all().unwrap().backward().unwrap();
        for (i, v) in vars.iter().enumerate() {
            let a = g1.get(v.as_tensor()).expect("fused gradient");
            let b = g2.get(v.as_tensor()).expect("reference gradient");
            let d = rel_diff(a, b);
            eprintln!("  var {i}: gradient diff {d:.2e}");
            assert!(d < tg, "{:?} vs {name}: var {i}: {d:e}", y1.dtype());
        }
    }
}

#[test]
fn the_switch_forces_candle_only_inside_its_scope() {
    let (x, b) = (
        rand_in(&[2, 3], 1, DType::F32),
        rand_in(&[3], 2, DType::F32),
    );
    // The fused op is one custom node; candle's path is a broadcast add (its own op).
    let fused = add(&x, &b.unsqueeze(0).unwrap()).unwrap();
    let forced = with_candle_fallback(|| {
        assert!(!super::cpu::cpu_ok(&[&x]));
        add(&x, &b.unsqueeze(0).unwrap()).unwrap()
    });
    assert!(super::cpu::cpu_ok(&[&x]), "the switch is restored");
    assert_eq!(max_abs(&fused, &forced), 0.0);
    // Another thread is not affected.
    with_candle_fallback(|| {
        let x2 = x.clone();
        std::thread::spawn(move || assert!(super::cpu::cpu_ok(&[&x2])))
            .join()
            .unwrap();
    });
}

fn candle_linear(x: &Tensor, w: &Tensor, b: &Tensor, act: bool) -> Tensor {
    let (o, i) = w.dims2().unwrap();
    let y = x
        .reshape(((), i))
        .unwrap()
        .matmul(&w.t().unwrap())
        .unwrap()
        .broadcast_add(b)
        .unwrap();
    let y = if act { y.gelu_erf().unwrap() } else { y };
    if x.dims().last() == Some(&i) {
        let mut d = x.dims().to_vec();
        *d.last_mut().unwrap() = o;
        y.reshape(d).unwrap()
    } else {
        y
    }
}

#[test]
fn linear_matches_candle() {
    for dt in DTYPES {
        let (x, w, b) = (
            var_in(&[2, 5, 6], 1, dt),
            var_in(&[4, 6], 2, dt),
            var_in(&[4], 3, dt),
        );
        for act in [false, true] {
            check(
                &[&x, &w, &b],
                &|| linear(x.as_tensor(), w.as_tensor(), Some(b.as_tensor()), act).unwrap(),
                &|| candle_linear(x.as_tensor(), w.as_tensor(), b.as_tensor(), act),
            );
        }
        // x read as rows of 3 values.
        let w3 = var_in(&[4, 3], 4, dt);
        check(
            &[&x, &w3, &b],
            &|| linear(x.as_tensor(), w3.as_tensor(), Some(b.as_tensor()), true).unwrap(),
            &|| candle_linear(x.as_tensor(), w3.as_tensor(), b.as_tensor(), true),
        );
    }
}

#[test]
fn lora_linear_matches_candle() {
    for dt in DTYPES {
        let (x, a, bm) = (
            var_in(&[2, 5, 6], 5, dt),
            var_in(&[2, 6], 6, dt),
            var_in(&[4, 2], 7, dt),
        );
        let (w, b) = (var_in(&[4, 6], 8, dt), var_in(&[4], 9, dt));
        let (w, b) = (w.as_tensor().detach(), b.as_tensor().detach());
        for act in [false, true] {
            check(
                &[&x, &a, &bm],
                &|| {
                    lora_linear(
                        x.as_tensor(),
                        &w,
                        Some(&b),
                        a.as_tensor(),
                        bm.as_tensor(),
                        1.5,
                        act,
                    )
                    .unwrap()
                },
                &|| {
                    let low = x
                        .as_tensor()
                        .matmul(
                            &a.as_tensor()
                                .t()
                                .unwrap()
                                .unsqueeze(0)
                                .unwrap()
                                .repeat((2, 1, 1))
                                .unwrap(),
                        )
                        .unwrap()
                        .matmul(
                            &bm.as_tensor()
                                .t()
                                .unwrap()
                                .unsqueeze(0)
                                .unwrap()
                                .repeat((2, 1, 1))
                                .unwrap(),
                        )
                        .unwrap();
                    let y = (candle_linear(x.as_tensor(), &w, &b, false) + (low * 1.5).unwrap())
                        .unwrap();
                    if act {
                        y.gelu_erf().unwrap()
                    } else {
                        y
                    }
                },
            );
        }
    }
}

#[test]
fn attention_matches_candle() {
    for dt in DTYPES {
        for (nq, nk) in [(3, 9), (9, 3)] {
            let (q, k, v) = (
                var_in(&[2, nq, 8], 10, dt),
                var_in(&[2, nk, 8], 11, dt),
                var_in(&[2, nk, 8], 12, dt),
            );
            check(
                &[&q, &k, &v],
                &|| attention(q.as_tensor(), k.as_tensor(), v.as_tensor(), 2).unwrap(),
                &|| {
                    let split = |x: &Tensor| {
                        let (b, n, _) = x.dims3().unwrap();
                        x.reshape((b, n, 2, 4))
                            .unwrap()
                            .transpose(1, 2)
                            .unwrap()
                            .contiguous()
                            .unwrap()
                    };
                    let (qh, kh, vh) = (
                        split(q.as_tensor()),
                        split(k.as_tensor()),
                        split(v.as_tensor()),
                    );
                    let s = (qh.matmul(&kh.t().unwrap()).unwrap() * 0.5).unwrap();
                    let p = candle_nn::ops::softmax(&s, D::Minus1).unwrap();
                    p.matmul(&vh)
                        .unwrap()
                        .transpose(1, 2)
                        .unwrap()
                        .reshape((2, nq, 8))
                        .unwrap()
                },
            );
        }
        // The same tensor as query, key and value (self-attention).
        let x = var_in(&[2, 5, 8], 13, dt);
        let y1 = attention(x.as_tensor(), x.as_tensor(), x.as_tensor(), 2).unwrap();
        let g = y1.sqr().unwrap().sum_all().unwrap().backward().unwrap();
        assert!(g.get(x.as_tensor()).is_some());
    }
}

#[test]
fn attention_with_constant_inputs_only_differentiates_the_rest() {
    for dt in DTYPES {
        // A scaled single-head attention of a few tracked queries over constant keys and values (the decoder's
        // absorbed token-to-image attention): only the queries' gradient is made, and it matches candle's ops.
        let q = var_in(&[2, 4, 8], 20, dt);
        let k = rand_in(&[2, 300, 8], 0, dt);
        let v = rand_in(&[2, 300, 8], 0, dt);
        check(
            &[&q],
            &|| attention_scaled(q.as_tensor(), &k, &v, 1, 0.3).unwrap(),
            &|| {
                let s = (q.as_tensor().matmul(&k.t().unwrap()).unwrap() * 0.3).unwrap();
                candle_nn::ops::softmax(&s, D::Minus1)
                    .unwrap()
                    .matmul(&v)
                    .unwrap()
            },
        );
    }
}

#[test]
fn grouped_attention_matches_candle() {
    for dt in DTYPES {
        // 3 groups of 2 keys, over 300 queries (above the parallel threshold) and 5 (below it).
        for n in [300, 5] {
            let (x, kc, u) = (
                var_in(&[2, n, 8], 21, dt),
                var_in(&[2, 6, 9], 22, dt),
                var_in(&[2, 6, 8], 23, dt),
            );
            check(
                &[&x, &kc, &u],
                &|| grouped_attention(x.as_tensor(), kc.as_tensor(), u.as_tensor(), 3).unwrap(),
                &|| {
                    let k = kc.as_tensor().narrow(2, 0, 8).unwrap();
                    let c = kc.as_tensor().narrow(2, 8, 1).unwrap();
                    let s = x
                        .as_tensor()
                        .matmul(&k.t().unwrap())
                        .unwrap()
                        .broadcast_add(&c.squeeze(2).unwrap().unsqueeze(1).unwrap())
                        .unwrap();
                    let p = candle_nn::ops::softmax(&s.reshape((2, n, 3, 2)).unwrap(), D::Minus1)
                        .unwrap()
                        .reshape((2, n, 6))
                        .unwrap();
                    p.matmul(u.as_tensor()).unwrap()
                },
            );
        }
        // Each group's probabilities sum to 1: with every value row equal to w, the output is groups x w.
        let x = rand_in(&[1, 4, 8], 24, dt);
        let kc = rand_in(&[1, 6, 9], 25, dt);
        let w = rand_in(&[1, 1, 8], 26, dt);
        let y = grouped_attention(&x, &kc, &w.broadcast_as((1, 6, 8)).unwrap(), 3).unwrap();
        let d = max_abs(&y, &(w * 3.0).unwrap().broadcast_as((1, 4, 8)).unwrap());
        assert!(d < if dt == DType::F64 { 1e-12 } else { 1e-5 }, "{d}");
        // Shapes that do not fit are an error, not a panic.
        assert!(grouped_attention(&x, &kc, &kc, 3).is_err());
        assert!(grouped_attention(
            &x,
            &kc,
            &Tensor::zeros((1, 6, 8), dt, &Device::Cpu).unwrap(),
            4
        )
        .is_err());
    }
}

#[test]
fn add_matches_candle_and_skips_constants() {
    for dt in DTYPES {
        // Same shapes, and a (1, n, c) term for the whole batch (the positional encoding); above and below the
        // parallel threshold.
        for n in [3, 5000] {
            let (a, b, b1) = (
                var_in(&[2, n, 8], 30, dt),
                var_in(&[2, n, 8], 31, dt),
                var_in(&[1, n, 8], 32, dt),
            );
            check(
                &[&a, &b],
                &|| add(a.as_tensor(), b.as_tensor()).unwrap(),
                &|| (a.as_tensor() + b.as_tensor()).unwrap(),
            );
            check(
                &[&a, &b1],
                &|| add(a.as_tensor(), b1.as_tensor()).unwrap(),
                &|| a.as_tensor().broadcast_add(b1.as_tensor()).unwrap(),
            );
        }
        // A constant side gets no gradient.
        let a = var_in(&[2, 3, 4], 33, dt);
        let c = Tensor::ones((1, 3, 4), dt, &Device::Cpu).unwrap();
        let y = add(a.as_tensor(), &c).unwrap();
        let g = y.sum_all().unwrap().backward().unwrap();
        assert!(g.get(a.as_tensor()).is_some() && g.get(&c).is_none());
    }
}

#[test]
fn tokens_plus_matches_candle() {
    // 2 images of 3 x 37 pixels (blocks that end at an image's edge), 5 channels; and a map above the parallel
    // threshold.
    // The same bits as candle's ops and as the op's own fallback.
    for ((h, w), dt) in [(3, 37), (64, 64)]
        .into_iter()
        .flat_map(|hw| DTYPES.map(|dt| (hw, dt)))
    {
        let x = rand_in(&[2, 5, h, w], 35, dt);
        let b = rand_in(&[5], 36, dt);
        let y = tokens_plus(&x, &b).unwrap();
        let r = x
            .permute((0, 2, 3, 1))
            .unwrap()
            .broadcast_add(&b.reshape((1, 1, 1, 5)).unwrap())
            .unwrap();
        assert_eq!(max_abs(&y, &r), 0.0);
        let fb = with_candle_fallback(|| tokens_plus(&x, &b).unwrap());
        assert_eq!(max_abs(&y, &fb), 0.0);
    }
    // A tracked map takes candle's ops (with their gradient).
    let x = var(&[1, 5, 2, 3], 34);
    let b = Tensor::zeros(5, candle_core::DType::F64, &Device::Cpu).unwrap();
    let g = tokens_plus(x.as_tensor(), &b)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    assert!(g.get(x.as_tensor()).is_some());
}

#[test]
fn ln_act_matches_candle() {
    for dt in DTYPES {
        let (x, w, b) = (
            var_in(&[3, 2, 8], 14, dt),
            var_in(&[4], 15, dt),
            var_in(&[4], 16, dt),
        );
        for act in [false, true] {
            check(
                &[&x, &w, &b],
                &|| ln_act(x.as_tensor(), w.as_tensor(), b.as_tensor(), 1e-6, act).unwrap(),
                &|| {
                    let y = layer_norm_ops(
                        &x.as_tensor().reshape(((), 4)).unwrap(),
                        w.as_tensor(),
                        b.as_tensor(),
                        1e-6,
                    )
                    .unwrap();
                    let y = if act { y.gelu_erf().unwrap() } else { y };
                    y.reshape((3, 2, 8)).unwrap()
                },
            );
        }
    }
}

#[test]
fn readout_gelu_matches_candle() {
    for dt in DTYPES {
        // 2 images of 3300 rows (above the parallel threshold: parts of several bands, a part boundary inside an
        // image) and of 3 rows; rows of 5 values, 3 sub-pixels of 4 channels. Last, a frozen weight (a LoRA step):
        // the other gradients are unchanged.
        for (rows, train_w) in [(3300, true), (3, true), (3300, false)] {
            let (x, wv, h) = (
                var_in(&[2 * rows, 5], 17, dt),
                var_in(&[12, 6], 18, dt),
                var_in(&[2, 4], 19, dt),
            );
            let wb = if train_w {
                wv.as_tensor().clone()
            } else {
                wv.as_tensor().detach()
            };
            let vars = if train_w {
                vec![&x, &wv, &h]
            } else {
                vec![&x, &h]
            };
            check(
                &vars,
                &|| readout_gelu(x.as_tensor(), &wb, h.as_tensor()).unwrap(),
                &|| {
                    let w = wb.narrow(1, 0, 5).unwrap();
                    let b = wb.narrow(1, 5, 1).unwrap().squeeze(1).unwrap();
                    let z = x
                        .as_tensor()
                        .matmul(&w.t().unwrap())
                        .unwrap()
                        .broadcast_add(&b)
                        .unwrap();
                    // GELU from erf (whose backward is exact; candle's gelu_erf backward rounds 1/sqrt(2 pi), which
                    // sums to 1e-5 over this many rows).
                    let e =
                        ((&z / std::f64::consts::SQRT_2).unwrap().erf().unwrap() + 1.0).unwrap();
                    let a = ((&z * 0.5).unwrap() * e).unwrap();
                    // (2 rows, 12) -> per image (rows x 3 pixels, 4 channels), dotted with the image's h.
                    a.reshape((2, rows * 3, 4))
                        .unwrap()
                        .matmul(&h.as_tensor().unsqueeze(2).unwrap())
                        .unwrap()
                        .squeeze(2)
                        .unwrap()
                },
            );
        }
        let x = Tensor::zeros((4, 5), dt, &Device::Cpu).unwrap();
        let h = Tensor::zeros((2, 4), dt, &Device::Cpu).unwrap();
        // 12 outputs per row are not groups of 5 channels; a weight of 3 columns has no bias column for 5 inputs.
        assert!(readout_gelu(
            &x,
            &Tensor::zeros((12, 6), dt, &Device::Cpu).unwrap(),
            &Tensor::zeros((2, 5), dt, &Device::Cpu).unwrap()
        )
        .is_err());
        assert!(readout_gelu(&x, &Tensor::zeros((12, 4), dt, &Device::Cpu).unwrap(), &h).is_err());
    }
}

#[test]
fn bias_gelu_matches_candle() {
    for dt in DTYPES {
        let (x, b) = (var_in(&[3, 5, 7], 40, dt), var_in(&[7], 41, dt));
        check(
            &[&x, &b],
            &|| bias_gelu(x.as_tensor(), b.as_tensor()).unwrap(),
            &|| {
                x.as_tensor()
                    .broadcast_add(b.as_tensor())
                    .unwrap()
                    .gelu_erf()
                    .unwrap()
            },
        );
    }
}

#[test]
fn dwconv3x3_matches_candle() {
    // (stride, H, W): odd and even maps, stride 1 and 2; 3 channels, 2 images.
    for dt in DTYPES {
        for (stride, h, w) in [(1, 5, 6), (2, 7, 6), (2, 6, 5)] {
            let (x, k) = (var_in(&[2, h, w, 3], 42, dt), var_in(&[9, 3], 43, dt));
            check(
                &[&x, &k],
                &|| dwconv3x3(x.as_tensor(), k.as_tensor(), stride).unwrap(),
                // candle's grouped conv2d for stride 1; for stride 2 its backward fails on these odd maps (a
                // shape mismatch inside candle), so the nine shifted multiply-adds of candle's ops.
                &|| {
                    if stride == 2 {
                        return dwconv3x3_shifted(x.as_tensor(), k.as_tensor(), 2).unwrap();
                    }
                    let kc = k.as_tensor().t().unwrap().reshape((3, 1, 3, 3)).unwrap();
                    x.as_tensor()
                        .permute((0, 3, 1, 2))
                        .unwrap()
                        .conv2d(&kc, 1, 1, 1, 3)
                        .unwrap()
                        .permute((0, 2, 3, 1))
                        .unwrap()
                },
            );
        }
    }
}
