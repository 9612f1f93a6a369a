//! Channel-first feature maps to channels-last tokens, with a per-channel vector added, in one cache-blocked
//! pass: the decoder's first step on every cached embedding. As a permute (a strided copy, one element at a time)
//! followed by a broadcast add, it cost two passes over the 16 MiB map of a batch of 4, the first of them slow.
//! Inference only (the embedding and the vector untracked); otherwise candle's ops run.

use candle_core::{Result, Tensor};

use super::cpu::{frozen_cpu, new_tensor, read_all};
use super::float::{with_float, Float};
use super::par::par_rows;
use super::PAR_MIN;

/// Tokens per block: the block's channel rows are read 16 values at a time.
const BLOCK: usize = 16;

fn fwd<T: Float>(x: &[T], bias: &[T], hw: usize) -> Vec<T> {
    let c = bias.len();
    let mut out = vec![T::z(); x.len()];
    par_rows(&mut out, c, PAR_MIN, |r0, ch| {
        let rows = ch.len() / c;
        let mut lo = 0;
        while lo < rows {
            let r = r0 + lo;
            // A block never crosses an image.
            let (b, p) = (r / hw, r % hw);
            let m = BLOCK.min(rows - lo).min(hw - p);
            let src = &x[b * c * hw..(b + 1) * c * hw];
            let dst = &mut ch[lo * c..(lo + m) * c];
            for (k, &bv) in bias.iter().enumerate() {
                for (i, &v) in src[k * hw + p..k * hw + p + m].iter().enumerate() {
                    dst[i * c + k] = v + bv;
                }
            }
            lo += m;
        }
    });
    out
}

/// `x` (B, C, H, W) and `bias` (C) -> (B, H, W, C): `x` permuted to channels-last plus `bias` on every pixel.
pub(crate) fn tokens_plus(x: &Tensor, bias: &Tensor) -> Result<Tensor> {
    let (b, c, h, w) = x.dims4()?;
    let bias = bias.flatten_all()?;
    if !frozen_cpu(&[x, &bias]) || bias.elem_count() != c {
        return x
            .permute((0, 2, 3, 1))?
            .contiguous()?
            .broadcast_add(&bias.reshape((1, 1, 1, bias.elem_count()))?);
    }
    with_float!(x.dtype(), "tokens", T => read_all::<T, _>(&[x, &bias], |v| {
        new_tensor(fwd(v[0], v[1], h * w), (b, h, w, c))
    }))
}
