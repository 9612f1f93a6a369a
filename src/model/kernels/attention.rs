//! Fused multi-head attention on token-major (B, n, C) tensors: heads are split and merged inside, and the
//! softmax probabilities are kept for the backward pass.

use std::sync::{Arc, Mutex};

use candle_core::backend::BackendStorage;
use candle_core::{bail, CpuStorage, CustomOp3, Layout, Result, Shape, Storage, Tensor, D};

use super::cpu::{cpu_ok, grad_of, lock};
use super::float::{dot, with_float, Float};
use super::matmul::{matmul, mm};
use super::par::par_rows;
use super::PAR_MIN;

/// Multi-head attention core on token-major tensors: per head, S = Q K^T (gemm), softmax rows,
/// O = P V (gemm); the probabilities are kept for the backward pass.
struct AttnOp {
    heads: usize,
    scale: f64,
    probs: Mutex<Option<CpuStorage>>,
}

#[derive(Clone, Copy)]
struct AttnDims {
    nb: usize,
    nq: usize,
    nk: usize,
    c: usize,
}

/// A (B, rows, d) view of head `h` of a token-major (B, rows, C) tensor at `off`.
fn head_view(nb: usize, rows: usize, c: usize, d: usize, off: usize, h: usize) -> Layout {
    Layout::new(
        Shape::from((nb, rows, d)),
        vec![rows * c, c, 1],
        off + h * d,
    )
}

/// Its transpose, (B, d, rows).
fn head_view_t(nb: usize, rows: usize, c: usize, d: usize, off: usize, h: usize) -> Layout {
    Layout::new(
        Shape::from((nb, d, rows)),
        vec![rows * c, 1, c],
        off + h * d,
    )
}

fn off(l: &Layout) -> Result<usize> {
    l.contiguous_offsets()
        .map(|(a, _)| a)
        .ok_or_else(|| candle_core::Error::Msg("fused attention: not contiguous".into()))
}

/// Copy a contiguous (B, rows, d) block into head `h` of a (B, rows, C) buffer.
fn scatter_head<T: Float>(dst: &mut [T], src: &[T], rows: usize, c: usize, d: usize, h: usize) {
    for (i, r) in src.chunks_exact(d).enumerate() {
        dst[i * c + h * d..i * c + h * d + d].copy_from_slice(r);
    }
    let _ = rows;
}

/// Softmax of each row of `n` values of `x` after scaling by `scale` (max-subtracted).
#[inline(always)]
pub(super) fn softmax_rows<T: Float>(x: &mut [T], n: usize, scale: T) {
    for row in x.chunks_exact_mut(n) {
        let mut mx = T::from_f64(f64::NEG_INFINITY);
        for v in row.iter_mut() {
            *v *= scale;
            if *v > mx {
                mx = *v;
            }
        }
        let mut sum = T::z();
        for v in row.iter_mut() {
            *v = (*v - mx).exp_();
            sum += *v;
        }
        let inv = T::from_f64(1.0) / sum;
        for v in row.iter_mut() {
            *v *= inv;
        }
    }
}

/// dS = P * (dP - rowsum(P * dP)) * scale, in place in dP.
#[inline(always)]
pub(super) fn softmax_grad_rows<T: Float>(dp: &mut [T], p: &[T], n: usize, scale: T) {
    for (dr, pr) in dp.chunks_exact_mut(n).zip(p.chunks_exact(n)) {
        let s = dot(dr, pr);
        for (dv, &pv) in dr.iter_mut().zip(pr) {
            *dv = pv * (*dv - s) * scale;
        }
    }
}

impl AttnOp {
    fn dims(&self, lq: &Layout, lk: &Layout) -> Result<AttnDims> {
        let (nb, nq, c) = lq.shape().dims3()?;
        let (_, nk, _) = lk.shape().dims3()?;
        Ok(AttnDims { nb, nq, nk, c })
    }

    #[allow(clippy::too_many_arguments)]
    fn fwd<T: Float>(
        &self,
        sq: &CpuStorage,
        lq: &Layout,
        sk: &CpuStorage,
        lk: &Layout,
        sv: &CpuStorage,
        lv: &Layout,
        dm: AttnDims,
    ) -> Result<Vec<T>> {
        let AttnDims { nb, nq, nk, c } = dm;
        let d = c / self.heads;
        let (qo, ko, vo) = (off(lq)?, off(lk)?, off(lv)?);
        let scale = T::from_f64(self.scale);
        let mut out = vec![T::z(); nb * nq * c];
        let mut probs: Vec<T> = Vec::with_capacity(self.heads * nb * nq * nk);
        for h in 0..self.heads {
            let s = mm(
                sq,
                sk,
                (nb, nq, nk, d),
                &head_view(nb, nq, c, d, qo, h),
                &head_view_t(nb, nk, c, d, ko, h),
            )?;
            let mut p = T::take(s)?;
            par_rows(&mut p, nk, PAR_MIN, |_, ch| softmax_rows(ch, nk, scale));
            let ps = T::storage(p);
            let o = mm(
                &ps,
                sv,
                (nb, nq, d, nk),
                &Layout::contiguous((nb, nq, nk)),
                &head_view(nb, nk, c, d, vo, h),
            )?;
            scatter_head(&mut out, T::cpu_storage_as_slice(&o)?, nb * nq, c, d, h);
            probs.extend_from_slice(T::cpu_storage_as_slice(&ps)?);
        }
        *lock(&self.probs)? = Some(T::storage(probs));
        Ok(out)
    }

    #[allow(clippy::type_complexity, clippy::too_many_arguments)]
    fn bwd_k<T: Float>(
        &self,
        sq: &CpuStorage,
        lq: &Layout,
        sk: &CpuStorage,
        lk: &Layout,
        sv: &CpuStorage,
        lv: &Layout,
        sg: &CpuStorage,
        lg: &Layout,
        dm: AttnDims,
        need: [bool; 3],
    ) -> Result<(Vec<T>, Vec<T>, Vec<T>)> {
        let AttnDims { nb, nq, nk, c } = dm;
        let d = c / self.heads;
        let (qo, ko, vo, go) = (off(lq)?, off(lk)?, off(lv)?, off(lg)?);
        let scale = T::from_f64(self.scale);
        let guard = lock(&self.probs)?;
        let probs = guard
            .as_ref()
            .ok_or_else(|| candle_core::Error::Msg("fused attention: no forward".into()))?;
        let all_p = T::cpu_storage_as_slice(probs)?;
        // Only the gradients some variable needs (a constant key or value map costs nothing).
        let mut dq = vec![T::z(); if need[0] { nb * nq * c } else { 0 }];
        let mut dk = vec![T::z(); if need[1] { nb * nk * c } else { 0 }];
        let mut dv = vec![T::z(); if need[2] { nb * nk * c } else { 0 }];
        let per = nb * nq * nk;
        for h in 0..self.heads {
            let p = &all_p[h * per..(h + 1) * per];
            let ph = h * per;
            if need[0] || need[1] {
                // dP = dO V^T
                let dps = mm(
                    sg,
                    sv,
                    (nb, nq, nk, d),
                    &head_view(nb, nq, c, d, go, h),
                    &head_view_t(nb, nk, c, d, vo, h),
                )?;
                let mut ds = T::take(dps)?;
                par_rows(&mut ds, nk, PAR_MIN, |r0, ch| {
                    softmax_grad_rows(ch, &p[r0 * nk..r0 * nk + ch.len()], nk, scale)
                });
                let dss = T::storage(ds);
                let ds_l = Layout::contiguous((nb, nq, nk));
                let ds_t = Layout::new(Shape::from((nb, nk, nq)), vec![nq * nk, 1, nk], 0);
                if need[0] {
                    let gq = mm(
                        &dss,
                        sk,
                        (nb, nq, d, nk),
                        &ds_l,
                        &head_view(nb, nk, c, d, ko, h),
                    )?;
                    scatter_head(&mut dq, T::cpu_storage_as_slice(&gq)?, nb * nq, c, d, h);
                }
                if need[1] {
                    let gk = mm(
                        &dss,
                        sq,
                        (nb, nk, d, nq),
                        &ds_t,
                        &head_view(nb, nq, c, d, qo, h),
                    )?;
                    scatter_head(&mut dk, T::cpu_storage_as_slice(&gk)?, nb * nk, c, d, h);
                }
            }
            if need[2] {
                let p_t = Layout::new(Shape::from((nb, nk, nq)), vec![nq * nk, 1, nk], ph);
                let gv = mm(
                    probs,
                    sg,
                    (nb, nk, d, nq),
                    &p_t,
                    &head_view(nb, nq, c, d, go, h),
                )?;
                scatter_head(&mut dv, T::cpu_storage_as_slice(&gv)?, nb * nk, c, d, h);
            }
        }
        Ok((dq, dk, dv))
    }
}

impl CustomOp3 for AttnOp {
    fn name(&self) -> &'static str {
        "fused-attention"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let dm = self.dims(l1, l2)?;
        let s = with_float!(s1.dtype(), "fused attention", T => {
            T::storage(self.fwd::<T>(s1, l1, s2, l2, s3, l3, dm)?)
        });
        Ok((s, l1.shape().clone()))
    }
    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        _res: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let dm = self.dims(q.layout(), k.layout())?;
        let g = g.contiguous()?;
        let (qs, lq) = q.storage_and_layout();
        let (ks, lk) = k.storage_and_layout();
        let (vs, lv) = v.storage_and_layout();
        let (gs, lg) = g.storage_and_layout();
        let (Storage::Cpu(qs), Storage::Cpu(ks), Storage::Cpu(vs), Storage::Cpu(gs)) =
            (&*qs, &*ks, &*vs, &*gs)
        else {
            bail!("fused attention: CPU only")
        };
        let need = [q.track_op(), k.track_op(), v.track_op()];
        with_float!(q.dtype(), "fused attention", T => {
            let (a, b, c) = self.bwd_k::<T>(qs, lq, ks, lk, vs, lv, gs, lg, dm, need)?;
            Ok((grad_of(a, q)?, grad_of(b, k)?, grad_of(c, v)?))
        })
    }
}

/// softmax(q_h k_h^T / sqrt(d)) v_h for every head h, on q (B, nq, C), k and v (B, nk, C); the
/// result (B, nq, C) has the heads concatenated along C (as SAM's `_recombine_heads`).
pub(crate) fn attention(q: &Tensor, k: &Tensor, v: &Tensor, heads: usize) -> Result<Tensor> {
    let d = q.dims3()?.2 / heads;
    attention_scaled(q, k, v, heads, 1.0 / (d as f64).sqrt())
}

/// [`attention()`] with the scores multiplied by `scale` instead of `1/sqrt(C/heads)` (for queries whose
/// projection was absorbed into them, whose width is no longer the head's).
pub(crate) fn attention_scaled(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    heads: usize,
    scale: f64,
) -> Result<Tensor> {
    let (b, nq, c) = q.dims3()?;
    let d = c / heads;
    if !cpu_ok(&[q, k, v]) || k.dims3()?.2 != c || v.dims() != k.dims() {
        let split = |x: &Tensor| -> Result<Tensor> {
            let (b, n, c) = x.dims3()?;
            x.reshape((b, n, heads, c / heads))?
                .transpose(1, 2)?
                .contiguous()
        };
        let (qh, kh, vh) = (split(q)?, split(k)?, split(v)?);
        let attn = (matmul(&qh, &kh.t()?)? * scale)?;
        let attn = candle_nn::ops::softmax(&attn, D::Minus1)?;
        return matmul(&attn, &vh)?
            .transpose(1, 2)?
            .reshape((b, nq, heads * d));
    }
    q.contiguous()?.apply_op3_arc(
        &k.contiguous()?,
        &v.contiguous()?,
        Arc::new(Box::new(AttnOp {
            heads,
            scale,
            probs: Mutex::new(None),
        })),
    )
}
