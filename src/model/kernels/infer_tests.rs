//! The inference-only kernels against the same computation from candle's ops, in f64 and f32 on seeded inputs, on
//! sizes that exercise the edges: odd maps, partial bands and windows, stride 2, several images, and thread pools
//! of 1 to 3. Tolerance (largest absolute difference): 1e-10 in f64, 1e-4 in f32. Their candle fallback is the
//! model layer's op-by-op path: the kernels return None when it applies (or a test forces it).

use candle_core::{DType, Tensor};

use super::conv3x3::conv3x3;
use super::cpu::with_candle_fallback;
use super::mbconv::bottleneck;
use super::tests::{rand_in as rand, DTYPES};
use super::window_attn::window_attention;

use super::tests::max_abs as max_diff;

/// The tolerance of a dtype (module docs).
fn tol(dt: DType) -> f64 {
    if dt == DType::F64 {
        1e-10
    } else {
        1e-4
    }
}

/// Run `f` on rayon pools of 1, 2 and 3 threads; the results must be the same bits on every pool.
fn on_pools(f: impl Fn() -> Tensor + Sync) {
    let mut first: Option<Vec<f64>> = None;
    for n in 1..=3 {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build()
            .unwrap();
        let got = pool
            .install(&f)
            .flatten_all()
            .unwrap()
            .to_dtype(DType::F64)
            .unwrap()
            .to_vec1::<f64>()
            .unwrap();
        match &first {
            None => first = Some(got),
            Some(a) => assert!(
                a.iter().zip(&got).all(|(x, y)| x.to_bits() == y.to_bits()),
                "results differ between 1 and {n} threads"
            ),
        }
    }
}

/// `gelu(x W^T + b)` (or without GELU) on channels-last maps, from candle's ops.
fn pointwise(x: &Tensor, w: &Tensor, b: &Tensor, gelu: bool) -> Tensor {
    let y = x
        .broadcast_matmul(&w.t().unwrap())
        .unwrap()
        .broadcast_add(b)
        .unwrap();
    if gelu {
        y.gelu_erf().unwrap()
    } else {
        y
    }
}

/// Depthwise 3x3 (padding 1) with bias and GELU, from candle's grouped conv2d; `wd` is `(9, C)` tap-major.
fn depthwise(x: &Tensor, wd: &Tensor, bd: &Tensor, stride: usize) -> Tensor {
    let c = x.dim(3).unwrap();
    let k = wd.t().unwrap().reshape((c, 1, 3, 3)).unwrap();
    x.permute((0, 3, 1, 2))
        .unwrap()
        .conv2d(&k, 1, stride, 1, c)
        .unwrap()
        .permute((0, 2, 3, 1))
        .unwrap()
        .broadcast_add(bd)
        .unwrap()
        .gelu_erf()
        .unwrap()
}

#[test]
fn bottleneck_matches_candle() {
    for dt in DTYPES {
        // (B, H, W, cin, hidden, cout, stride, residual): MBConvs and patch mergings.
        let cases = [
            (2, 11, 9, 6, 12, 6, 1, true),
            (1, 11, 9, 6, 10, 7, 2, false),
            (2, 10, 6, 5, 8, 8, 2, false),
            // More output rows than one parallel run: halos across run boundaries.
            (1, 70, 5, 3, 6, 3, 1, true),
            (2, 75, 4, 3, 5, 4, 2, false),
        ];
        for (i, &(b, h, w, cin, hid, cout, s, res)) in cases.iter().enumerate() {
            let seed = 10 * i as u64;
            let x = rand(&[b, h, w, cin], seed, dt);
            let (w1, b1) = (rand(&[hid, cin], seed + 1, dt), rand(&[hid], seed + 2, dt));
            let (wd, bd) = (rand(&[9, hid], seed + 3, dt), rand(&[hid], seed + 4, dt));
            let (w3, b3) = (
                rand(&[cout, hid], seed + 5, dt),
                rand(&[cout], seed + 6, dt),
            );
            let d = depthwise(&pointwise(&x, &w1, &b1, true), &wd, &bd, s);
            let want = if res {
                (pointwise(&d, &w3, &b3, false) + &x)
                    .unwrap()
                    .gelu_erf()
                    .unwrap()
            } else {
                pointwise(&d, &w3, &b3, false)
            };
            on_pools(|| {
                let got = bottleneck(&x, (&w1, &b1), (&wd, &bd), (&w3, &b3), s, res)
                    .unwrap()
                    .expect("fused path on the CPU");
                let e = max_diff(&got, &want);
                assert!(e < tol(dt), "case {i}: {e}");
                got
            });
        }
    }
}

/// TinyViT's windowed attention as the op-by-op path computes it: pad the qkv map with `pad`, cut windows,
/// softmax(q k^T * scale + bias) v per head, put the windows back and crop.
fn windows_reference(qkv: &Tensor, pad: &Tensor, bias: &Tensor, heads: usize, ws: usize) -> Tensor {
    let (b, h, w, c3) = qkv.dims4().unwrap();
    let kd = c3 / 3 / heads;
    let (ph, pw) = (h.div_ceil(ws) * ws, w.div_ceil(ws) * ws);
    let mut x = qkv.clone();
    if pw > w {
        let p = pad
            .reshape((1, 1, 1, c3))
            .unwrap()
            .broadcast_as((b, h, pw - w, c3))
            .unwrap();
        x = Tensor::cat(&[&x, &p.contiguous().unwrap()], 2).unwrap();
    }
    if ph > h {
        let p = pad
            .reshape((1, 1, 1, c3))
            .unwrap()
            .broadcast_as((b, ph - h, pw, c3))
            .unwrap();
        x = Tensor::cat(&[&x, &p.contiguous().unwrap()], 1).unwrap();
    }
    let (nh, nw, n) = (ph / ws, pw / ws, ws * ws);
    let win = x
        .reshape((b, nh, ws, nw, ws, c3))
        .unwrap()
        .transpose(2, 3)
        .unwrap()
        .reshape((b * nh * nw, n, heads, 3 * kd))
        .unwrap();
    let part = |i: usize| {
        win.narrow(3, i * kd, kd)
            .unwrap()
            .transpose(1, 2)
            .unwrap()
            .contiguous()
            .unwrap()
    };
    let (q, k, v) = (part(0), part(1), part(2));
    let att = (q.matmul(&k.t().unwrap()).unwrap() * (kd as f64).powf(-0.5))
        .unwrap()
        .broadcast_add(&bias.unsqueeze(0).unwrap())
        .unwrap();
    let att = candle_nn::ops::softmax_last_dim(&att).unwrap();
    att.matmul(&v)
        .unwrap()
        .transpose(1, 2)
        .unwrap()
        .reshape((b, nh, nw, ws, ws, heads * kd))
        .unwrap()
        .transpose(2, 3)
        .unwrap()
        .reshape((b, ph, pw, heads * kd))
        .unwrap()
        .narrow(1, 0, h)
        .unwrap()
        .narrow(2, 0, w)
        .unwrap()
}

#[test]
fn window_attention_matches_candle() {
    for dt in DTYPES {
        // (B, H, W, heads, kd, ws): padded on both sides, on one side, not at all, and one window.
        for (i, &(b, h, w, heads, kd, ws)) in [
            (2, 9, 7, 2, 3, 4),
            (1, 8, 10, 3, 2, 4),
            (1, 8, 8, 2, 4, 4),
            (2, 5, 5, 1, 3, 5),
        ]
        .iter()
        .enumerate()
        {
            let seed = 100 + 10 * i as u64;
            let qkv = rand(&[b, h, w, 3 * heads * kd], seed, dt);
            let pad = rand(&[3 * heads * kd], seed + 1, dt);
            let bias = rand(&[heads, ws * ws, ws * ws], seed + 2, dt);
            let want = windows_reference(&qkv, &pad, &bias, heads, ws);
            on_pools(|| {
                let scale = (kd as f64).powf(-0.5);
                let got = window_attention(&qkv, &pad, &bias, heads, ws, scale)
                    .unwrap()
                    .expect("fused path on the CPU");
                let e = max_diff(&got, &want);
                assert!(e < tol(dt), "case {i}: {e}");
                got
            });
        }
    }
}

#[test]
fn conv3x3_matches_candle() {
    for dt in DTYPES {
        for (i, &(b, h, w, cin, cout)) in [(2, 7, 5, 4, 6), (1, 1, 3, 2, 3)].iter().enumerate() {
            let seed = 200 + 10 * i as u64;
            let x = rand(&[b, h, w, cin], seed, dt);
            let k = rand(&[cout, cin, 3, 3], seed + 1, dt);
            let wt = k
                .permute((0, 2, 3, 1))
                .unwrap()
                .reshape((cout, 9 * cin))
                .unwrap();
            let want = x
                .permute((0, 3, 1, 2))
                .unwrap()
                .conv2d(&k, 1, 1, 1, 1)
                .unwrap()
                .permute((0, 2, 3, 1))
                .unwrap();
            on_pools(|| {
                let got = conv3x3(&x, &wt).unwrap().expect("fused path on the CPU");
                let e = max_diff(&got, &want);
                assert!(e < tol(dt), "case {i}: {e}");
                got
            });
        }
    }
}

#[test]
fn tracked_inputs_take_the_op_by_op_path() {
    let dt = DType::F64;
    let x = candle_core::Var::from_tensor(&rand(&[1, 4, 4, 2], 1, dt)).unwrap();
    let wt = rand(&[3, 18], 2, dt);
    assert!(conv3x3(x.as_tensor(), &wt).unwrap().is_none());
    let f32x = rand(&[1, 4, 4, 2], 3, DType::F32);
    assert!(conv3x3(&f32x, &wt).unwrap().is_none(), "mixed dtypes");
    // The switch of the tests sends every inference kernel to the op-by-op path.
    let x = x.as_tensor().detach();
    assert!(conv3x3(&x, &wt).unwrap().is_some());
    with_candle_fallback(|| {
        assert!(conv3x3(&x, &wt).unwrap().is_none());
        let (w1, b1) = (rand(&[4, 2], 4, dt), rand(&[4], 5, dt));
        let (wd, bd) = (rand(&[9, 4], 6, dt), rand(&[4], 7, dt));
        let (w3, b3) = (rand(&[2, 4], 8, dt), rand(&[2], 9, dt));
        let m = bottleneck(&x, (&w1, &b1), (&wd, &bd), (&w3, &b3), 1, true);
        assert!(m.unwrap().is_none());
        let (qkv, pad, bias) = (
            rand(&[1, 4, 4, 6], 10, dt),
            rand(&[6], 11, dt),
            rand(&[1, 4, 4], 12, dt),
        );
        assert!(window_attention(&qkv, &pad, &bias, 1, 2, 0.5)
            .unwrap()
            .is_none());
    });
}
