//! TinyViT's inverted bottleneck (`1x1 conv -> GELU -> depthwise 3x3 -> GELU -> 1x1 conv`, BatchNorm folded), in
//! one pass over bands of image rows, for inference.
//!
//! Why: at LiteMedSAM's first stage the hidden map is 256 x 256 pixels x 256 channels, 64 MiB per image. Made
//! op by op it is written and read back from memory five times (matmul, GELU, depthwise conv, GELU, matmul),
//! and the encoder spends a quarter of its time there while the arithmetic units wait. Here each thread takes a
//! run of rows and walks it in bands of a few rows: the hidden rows of a band (plus one row of halo above and
//! below, carried over from the previous band) are computed, convolved and projected back while they are in
//! cache, so the hidden map never exists whole. Peak memory drops by the same 64 MiB per image.
//!
//! The same kernel serves the patch merging between stages (stride 2, no residual). Both layouts are
//! channels-last: `x (B, H, W, C)`, output `(B, Ho, Wo, Cout)` with `Ho = (H - 1) / stride + 1`.
//! It computes what the op-by-op path computes (same GELU, the depthwise conv's own row kernel); only the matmuls'
//! summation order may differ in the last bits. Nothing here records a backward pass: the layers use it only
//! when no gradient is tracked.

use candle_core::{Result, Tensor};
use rayon::prelude::*;

use super::cpu::{frozen_cpu, new_tensor, read_all};
use super::dwconv::{input_rows, row_kernel};
use super::float::{with_float, Float};
use super::gemm::{gemm, Mat};
use super::par::simd_fn;

/// Output rows per band: small enough that a band's hidden rows (`(BAND + 2) * W * hidden` values) stay in
/// the L2 cache at stage 0, large enough that each matmul has thousands of rows.
const BAND: usize = 4;

/// Output rows per parallel task (a multiple of [`BAND`]): enough tasks to balance two to eight threads at
/// LiteMedSAM's first stage (256 rows), few enough that the halo rows computed twice (one per task) cost little.
const RUN: usize = 32;

/// The weights of one bottleneck, folded, as plain slices.
pub(crate) struct Bottleneck<'a, T> {
    /// `(hidden, cin)`.
    pub w1: &'a [T],
    pub b1: &'a [T],
    /// `(9, hidden)`, tap-major.
    pub wd: &'a [T],
    pub bd: &'a [T],
    /// `(cout, hidden)`.
    pub w3: &'a [T],
    pub b3: &'a [T],
    pub stride: usize,
    /// MBConv: `gelu(y + b3 + x)`; patch merging: `y + b3`.
    pub residual_gelu: bool,
}

/// Sizes of one call.
#[derive(Clone, Copy)]
pub(crate) struct Dims {
    pub b: usize,
    pub h: usize,
    pub w: usize,
    pub cin: usize,
    pub hidden: usize,
    pub cout: usize,
}

fn out_dim(n: usize, stride: usize) -> usize {
    (n - 1) / stride + 1
}

/// The bottleneck on `x`; returns `(B, Ho, Wo, cout)` values.
pub(crate) fn forward<T: Float>(x: &[T], d: Dims, k: &Bottleneck<'_, T>) -> Vec<T> {
    let s = k.stride;
    let (ho, wo) = (out_dim(d.h, s), out_dim(d.w, s));
    assert_eq!(x.len(), d.b * d.h * d.w * d.cin, "bottleneck: input size");
    assert!(!k.residual_gelu || (s == 1 && d.cin == d.cout));
    let mut out = vec![T::z(); d.b * ho * wo * d.cout];
    // Runs of RUN output rows, the parallel tasks; each walks its run in bands. The split does not depend on
    // the number of threads, so neither do the results (every matmul sees the same rows whatever the pool).
    let orow = wo * d.cout;
    let mut jobs: Vec<(usize, usize, &mut [T])> = Vec::new();
    for (bi, img) in out.chunks_mut(ho * orow).enumerate() {
        for (ri, run) in img.chunks_mut(RUN * orow).enumerate() {
            jobs.push((bi, ri * RUN, run));
        }
    }
    jobs.into_par_iter().for_each(|(bi, r0, run)| {
        let xi = &x[bi * d.h * d.w * d.cin..(bi + 1) * d.h * d.w * d.cin];
        run_rows_wide(xi, d, k, r0, run)
    });
    out
}

simd_fn!(fn run_rows_wide = run_rows<T: Float>(
    x: &[T],
    d: Dims,
    k: &Bottleneck<'_, T>,
    r0: usize,
    run: &mut [T],
));

/// Output rows `r0 .. r0 + run.len() / (Wo * cout)` of one image.
#[inline(always)]
fn run_rows<T: Float>(x: &[T], d: Dims, k: &Bottleneck<'_, T>, r0: usize, run: &mut [T]) {
    let s = k.stride;
    let wo = out_dim(d.w, s);
    let (hid, w) = (d.hidden, d.w);
    let hrow = w * hid;
    let rows_out = run.len() / (wo * d.cout);
    // Hidden rows held: [have0, have1) at the start of `hbuf`.
    let cap = (BAND - 1) * s + 3;
    let mut hbuf = vec![T::z(); cap * hrow];
    let mut dbuf = vec![T::z(); BAND * wo * hid];
    let (mut have0, mut have1) = (0usize, 0usize);
    let mut o = 0;
    while o < rows_out {
        let n = BAND.min(rows_out - o);
        let (oy0, oy1) = (r0 + o, r0 + o + n);
        // Input rows the band reads: oy*s - 1 ..= (oy1-1)*s + 1, clipped.
        let lo = (oy0 * s).saturating_sub(1);
        let hi = ((oy1 - 1) * s + 2).min(d.h);
        // Keep the rows already computed, compute the rest.
        let keep0 = if lo >= have0 && lo < have1 { lo } else { have1 };
        let kept = have1.max(keep0) - keep0;
        if kept > 0 {
            hbuf.copy_within((keep0 - have0) * hrow..(have1 - have0) * hrow, 0);
        }
        let new0 = if kept > 0 { have1 } else { lo };
        let m = (hi - new0) * w;
        let dst = &mut hbuf[(new0 - lo) * hrow..(hi - lo) * hrow];
        gemm(
            m,
            hid,
            d.cin,
            dst,
            hid,
            false,
            Mat::rows(&x[new0 * w * d.cin..hi * w * d.cin], d.cin),
            Mat::t(k.w1, d.cin),
            T::from_f64(1.0),
            1,
        );
        bias_gelu_rows(dst, k.b1);
        (have0, have1) = (lo, hi);
        // Depthwise 3x3 (padding 1) + bias + GELU into dbuf.
        let db = &mut dbuf[..n * wo * hid];
        db.fill(T::z());
        for (r, drow) in db.chunks_exact_mut(wo * hid).enumerate() {
            let rows = input_rows(oy0 + r, s, d.h, |iy| &hbuf[(iy - lo) * hrow..][..hrow]);
            row_kernel(drow, &rows, k.wd, hid, s);
        }
        bias_gelu_rows(db, k.bd);
        // Project back, then bias (+ residual and GELU).
        let y = &mut run[o * wo * d.cout..(o + n) * wo * d.cout];
        gemm(
            n * wo,
            d.cout,
            hid,
            y,
            d.cout,
            false,
            Mat::rows(db, hid),
            Mat::t(k.w3, hid),
            T::from_f64(1.0),
            1,
        );
        if k.residual_gelu {
            let xr = &x[oy0 * w * d.cin..oy1 * w * d.cin];
            for (py, px) in y.chunks_exact_mut(d.cout).zip(xr.chunks_exact(d.cin)) {
                for ((v, &b), &xv) in py.iter_mut().zip(k.b3).zip(px) {
                    *v = (*v + xv + b).gelu();
                }
            }
        } else {
            for py in y.chunks_exact_mut(d.cout) {
                for (v, &b) in py.iter_mut().zip(k.b3) {
                    *v += b;
                }
            }
        }
        o += n;
    }
}

/// `v <- gelu(v + b)` on every row of `b.len()` values.
#[inline(always)]
fn bias_gelu_rows<T: Float>(buf: &mut [T], b: &[T]) {
    for px in buf.chunks_exact_mut(b.len()) {
        for (v, &bv) in px.iter_mut().zip(b) {
            *v = (*v + bv).gelu();
        }
    }
}

/// The bottleneck on a tensor `x (B, H, W, cin)` with folded weights `w1 (hidden, cin)`, `wd (9, hidden)`,
/// `w3 (cout, hidden)` and their biases; `None` when the fused path does not apply (another device or dtype, or
/// a gradient is tracked): the caller then runs the layers op by op.
pub(crate) fn bottleneck(
    x: &Tensor,
    (w1, b1): (&Tensor, &Tensor),
    (wd, bd): (&Tensor, &Tensor),
    (w3, b3): (&Tensor, &Tensor),
    stride: usize,
    residual_gelu: bool,
) -> Result<Option<Tensor>> {
    let ts = [x, w1, b1, wd, bd, w3, b3];
    if !frozen_cpu(&ts) || x.rank() != 4 {
        return Ok(None);
    }
    let (b, h, w, cin) = x.dims4()?;
    let (hidden, cout) = (w1.dim(0)?, w3.dim(0)?);
    let d = Dims {
        b,
        h,
        w,
        cin,
        hidden,
        cout,
    };
    let (ho, wo) = (out_dim(h, stride), out_dim(w, stride));
    with_float!(x.dtype(), "bottleneck", T => read_all::<T, _>(&ts, |v| {
        let k = Bottleneck {
            w1: v[1], b1: v[2], wd: v[3], bd: v[4], w3: v[5], b3: v[6], stride, residual_gelu,
        };
        new_tensor(forward(v[0], d, &k), (b, ho, wo, cout))
    }).map(Some))
}
