//! TinyViT's windowed multi-head attention with relative position biases, for inference, straight from the
//! qkv projection of the whole feature map.
//!
//! Why: the op-by-op path pads the map, cuts it into windows (a copy), splits q, k and v per head (three more
//! copies), runs one small matmul per window and head (1,444 of them per block at LiteMedSAM's second stage, each
//! with its own dispatch), adds the biases and takes the softmax as separate passes, and copies the windows back.
//! Here one task per window gathers its tokens once, and every step of a head stays in cache.
//!
//! Padding as PyTorch does it: the map is zero-padded *before* the attention's layer norm, so a padded token's
//! q, k and v are the projection of the norm's bias, the same vector for every padded token (`pad`). Padded
//! tokens take part as keys and values; their own outputs are cropped, so they are not computed.
//!
//! Layouts: `qkv (B, H, W, 3C)` with each token's values ordered head by head as `[q | k | v]` of `kd` each
//! (`C = heads * kd`), `bias (heads, N, N)` with `N = ws * ws`, output `(B, H, W, C)` head by head.

use candle_core::{Result, Tensor, WithDType};
use rayon::prelude::*;

use super::attention::softmax_rows;
use super::cpu::{frozen_cpu, new_tensor, read_all};
use super::float::{with_float, Float};
use super::gemm::{gemm, Mat};
use super::par::simd_fn;

/// Sizes of one call.
#[derive(Clone, Copy)]
pub(crate) struct Dims {
    pub b: usize,
    pub h: usize,
    pub w: usize,
    pub heads: usize,
    pub kd: usize,
    /// Window side.
    pub ws: usize,
}

/// The attention of every window; returns `(B, H, W, heads * kd)` values.
pub(crate) fn forward<T: Float>(qkv: &[T], pad: &[T], bias: &[T], d: Dims, scale: T) -> Vec<T> {
    let c = d.heads * d.kd;
    let n = d.ws * d.ws;
    assert_eq!(
        qkv.len(),
        d.b * d.h * d.w * 3 * c,
        "window attention: qkv size"
    );
    assert_eq!(pad.len(), 3 * c, "window attention: pad size");
    assert_eq!(bias.len(), d.heads * n * n, "window attention: bias size");
    let (nh, nw) = (d.h.div_ceil(d.ws), d.w.div_ceil(d.ws));
    let windows = d.b * nh * nw;
    let inp = Inputs {
        qkv,
        pad,
        bias,
        d,
        scale,
    };
    // Window i is (image, window row, window column).
    let at = |i: usize| (i / (nh * nw), i % (nh * nw) / nw, i % nw);
    let outs: Vec<Vec<T>> = (0..windows)
        .into_par_iter()
        .map(|i| window_wide(&inp, at(i)))
        .collect();
    let mut out = vec![T::z(); d.b * d.h * d.w * c];
    for (i, o) in outs.iter().enumerate() {
        let (bi, wy, wx) = at(i);
        let (y0, x0) = (wy * d.ws, wx * d.ws);
        let cols = d.ws.min(d.w - x0);
        for (r, rows) in o.chunks(cols * c).enumerate() {
            let at = ((bi * d.h + y0 + r) * d.w + x0) * c;
            out[at..at + rows.len()].copy_from_slice(rows);
        }
    }
    out
}

/// One call's inputs, shared by every window.
struct Inputs<'a, T> {
    qkv: &'a [T],
    pad: &'a [T],
    bias: &'a [T],
    d: Dims,
    scale: T,
}

simd_fn!(fn window_wide = window<T: Float>(inp: &Inputs<'_, T>, at: (usize, usize, usize)) -> Vec<T>);

/// Window `(image, window row, window column)`: the outputs of its real tokens, row by row (`rows x cols x C`).
#[inline(always)]
fn window<T: Float>(inp: &Inputs<'_, T>, (bi, wy, wx): (usize, usize, usize)) -> Vec<T> {
    let Inputs {
        qkv,
        pad,
        bias,
        d,
        scale,
    } = *inp;
    let (kd, ws) = (d.kd, d.ws);
    let c = d.heads * kd;
    let n = ws * ws;
    let (y0, x0) = (wy * ws, wx * ws);
    let (rows, cols) = (ws.min(d.h - y0), ws.min(d.w - x0));
    // Window-local index of each real token, in output order.
    let real: Vec<usize> = (0..rows)
        .flat_map(|r| (0..cols).map(move |cc| r * ws + cc))
        .collect();
    let nq = real.len();
    let token = |t: usize| -> &[T] {
        let (r, cc) = (t / ws, t % ws);
        if r < rows && cc < cols {
            let at = ((bi * d.h + y0 + r) * d.w + x0 + cc) * 3 * c;
            &qkv[at..at + 3 * c]
        } else {
            pad
        }
    };
    let mut q = vec![T::z(); nq * kd];
    let mut k = vec![T::z(); n * kd];
    let mut v = vec![T::z(); n * kd];
    let mut s = vec![T::z(); nq * n];
    let mut o = vec![T::z(); nq * kd];
    let mut out = vec![T::z(); nq * c];
    let one = T::from_f64(1.0);
    for h in 0..d.heads {
        let base = h * 3 * kd;
        for t in 0..n {
            let tv = token(t);
            k[t * kd..(t + 1) * kd].copy_from_slice(&tv[base + kd..base + 2 * kd]);
            v[t * kd..(t + 1) * kd].copy_from_slice(&tv[base + 2 * kd..base + 3 * kd]);
        }
        for (i, &t) in real.iter().enumerate() {
            q[i * kd..(i + 1) * kd].copy_from_slice(&token(t)[base..base + kd]);
        }
        gemm(
            nq,
            n,
            kd,
            &mut s,
            n,
            false,
            Mat::rows(&q, kd),
            Mat::t(&k, kd),
            scale,
            1,
        );
        let bh = &bias[h * n * n..(h + 1) * n * n];
        for (srow, &t) in s.chunks_exact_mut(n).zip(&real) {
            for (sv, &bv) in srow.iter_mut().zip(&bh[t * n..(t + 1) * n]) {
                *sv += bv;
            }
            softmax_rows(srow, n, one);
        }
        gemm(
            nq,
            kd,
            n,
            &mut o,
            kd,
            false,
            Mat::rows(&s, n),
            Mat::rows(&v, kd),
            one,
            1,
        );
        for (orow, src) in out.chunks_exact_mut(c).zip(o.chunks_exact(kd)) {
            orow[h * kd..(h + 1) * kd].copy_from_slice(src);
        }
    }
    out
}

/// The attention on tensors: `qkv (B, H, W, 3C)`, `pad (3C)` (any shape of that size), `bias (heads, N, N)`;
/// `None` when the fused path does not apply (another device or dtype, or a gradient is tracked).
pub(crate) fn window_attention(
    qkv: &Tensor,
    pad: &Tensor,
    bias: &Tensor,
    heads: usize,
    ws: usize,
    scale: f64,
) -> Result<Option<Tensor>> {
    let ts = [qkv, pad, bias];
    if !frozen_cpu(&ts) || qkv.rank() != 4 {
        return Ok(None);
    }
    let (b, h, w, c3) = qkv.dims4()?;
    let kd = c3 / 3 / heads;
    let d = Dims {
        b,
        h,
        w,
        heads,
        kd,
        ws,
    };
    with_float!(qkv.dtype(), "window attention", T => read_all::<T, _>(&ts, |v| {
        new_tensor(forward(v[0], v[1], v[2], d, T::from_f64(scale)), (b, h, w, heads * kd))
    }).map(Some))
}
