//! A dense 3x3 convolution (padding 1, stride 1, no bias) on a channels-last map, for inference: the encoder
//! neck's second conv.
//!
//! Why: built from tensors it needs an im2col copy nine times the map (`(H*W, 9*C)`, made by a concatenation of
//! nine strided views) before one matmul. Here the map is padded once, and the nine taps are nine accumulating
//! matmuls that read the padded map in place: on a grid `W + 2` pixels wide, the input of output pixel `p` under
//! tap `(ky, kx)` is pixel `p + ky * (W + 2) + kx`, so each tap's input is one contiguous row-major matrix. The two
//! extra columns per output row are computed and dropped.
//!
//! Layouts: `x (B, H, W, C)`, weight `(cout, 9 * C)` tap-major (`w[o][(ky * 3 + kx) * C + c]`), output
//! `(B, H, W, cout)`.

use candle_core::{Result, Tensor};

use super::cpu::{frozen_cpu, new_tensor, read_all};
use super::float::{with_float, Float};
use super::gemm::{gemm, Mat};

/// The convolution of `x (b, h, w, cin)`; returns `(b, h, w, cout)` values.
pub(crate) fn forward<T: Float>(
    x: &[T],
    wt: &[T],
    (b, h, w, cin, cout): (usize, usize, usize, usize, usize),
) -> Vec<T> {
    assert_eq!(x.len(), b * h * w * cin, "conv3x3: input size");
    assert_eq!(wt.len(), cout * 9 * cin, "conv3x3: weight size");
    let pw = w + 2;
    // Padded rows, plus two pixels so the last tap of the last extra column stays in bounds.
    let mut xp = vec![T::z(); ((h + 2) * pw + 2) * cin];
    let mut grid = vec![T::z(); h * pw * cout];
    let mut out = vec![T::z(); b * h * w * cout];
    let threads = rayon::current_num_threads();
    for bi in 0..b {
        let img = &x[bi * h * w * cin..(bi + 1) * h * w * cin];
        for (y, row) in img.chunks_exact(w * cin).enumerate() {
            let at = ((y + 1) * pw + 1) * cin;
            xp[at..at + w * cin].copy_from_slice(row);
        }
        for tap in 0..9 {
            let off = ((tap / 3) * pw + tap % 3) * cin;
            gemm(
                h * pw,
                cout,
                cin,
                &mut grid,
                cout,
                tap > 0,
                Mat::rows(&xp[off..], cin),
                Mat::t(&wt[tap * cin..], 9 * cin),
                T::from_f64(1.0),
                threads,
            );
        }
        let dst = &mut out[bi * h * w * cout..(bi + 1) * h * w * cout];
        for (y, row) in dst.chunks_exact_mut(w * cout).enumerate() {
            row.copy_from_slice(&grid[y * pw * cout..(y * pw + w) * cout]);
        }
    }
    out
}

/// The convolution on tensors: `x (B, H, W, C)`, `w (cout, 9 * C)`; `None` when the fused path does not apply
/// (another device or dtype, or a gradient is tracked).
pub(crate) fn conv3x3(x: &Tensor, w: &Tensor) -> Result<Option<Tensor>> {
    let ts = [x, w];
    if !frozen_cpu(&ts) || x.rank() != 4 {
        return Ok(None);
    }
    let (b, h, wd, cin) = x.dims4()?;
    let cout = w.dim(0)?;
    with_float!(x.dtype(), "conv3x3", T => read_all::<T, _>(&ts, |v| {
        new_tensor(forward(v[0], v[1], (b, h, wd, cin, cout)), (b, h, wd, cout))
    }).map(Some))
}
