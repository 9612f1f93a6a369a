//! Attention of many queries over a few keys whose heads are summed, not concatenated: the core of the decoder's
//! image-to-token attention once its query and output projections are absorbed into the token side
//! (`transformer::Attention`, "few keys").
//!
//! For each query row `x_i` (B, n, C) and keys in `groups` groups of `m` (a group per head):
//! `out_i = sum_g sum_j softmax_j(x_i . k_gj + c_gj) u_gj`, the softmax running over the `m` keys of each group.
//! The keys and their additive offsets travel as one tensor `kc` (B, G m, C + 1), column C holding `c`, so the
//! op has three inputs (candle's custom ops take at most three).

use std::sync::{Arc, Mutex};

use candle_core::backend::BackendStorage;
use candle_core::{bail, CpuStorage, CustomOp3, Layout, Result, Shape, Tensor, WithDType, D};

use super::attention::{softmax_grad_rows, softmax_rows};
use super::cpu::{cpu_ok, grad_of, lock, read_all, slices};
use super::float::{with_float, Float};
use super::gemm::{gemm, Mat};
use super::par::par_rows;
use super::PAR_MIN;

struct GroupedAttn {
    nb: usize,
    n: usize,
    gm: usize,
    m: usize,
    c: usize,
    probs: Mutex<Option<CpuStorage>>,
}

impl GroupedAttn {
    fn threads() -> usize {
        rayon::current_num_threads().max(1)
    }

    /// Probabilities (B, n, G m) and the output (B, n, C).
    fn fwd<T: Float>(&self, x: &[T], kc: &[T], u: &[T]) -> (Vec<T>, Vec<T>) {
        let (n, gm, m, c) = (self.n, self.gm, self.m, self.c);
        let th = Self::threads();
        let one = T::from_f64(1.0);
        let mut p = vec![T::z(); self.nb * n * gm];
        let mut out = vec![T::z(); self.nb * n * c];
        for b in 0..self.nb {
            let (xb, kb) = (
                &x[b * n * c..],
                &kc[b * gm * (c + 1)..(b + 1) * gm * (c + 1)],
            );
            let pb = &mut p[b * n * gm..(b + 1) * n * gm];
            // S = x K^T, K read from the first C columns of kc.
            gemm(
                n,
                gm,
                c,
                pb,
                gm,
                false,
                Mat::rows(xb, c),
                Mat::t(kb, c + 1),
                one,
                th,
            );
            par_rows(pb, gm, PAR_MIN, |_, rows| {
                for row in rows.chunks_exact_mut(gm) {
                    for (j, v) in row.iter_mut().enumerate() {
                        *v += kb[j * (c + 1) + c];
                    }
                    softmax_rows(row, m, one);
                }
            });
            let ob = &mut out[b * n * c..(b + 1) * n * c];
            gemm(
                n,
                c,
                gm,
                ob,
                c,
                false,
                Mat::rows(pb, gm),
                Mat::rows(&u[b * gm * c..], c),
                one,
                th,
            );
        }
        (p, out)
    }

    /// Gradients of x, kc and u for the output gradient `g`, each only when `need` says so.
    #[allow(clippy::type_complexity)]
    fn bwd_k<T: Float>(
        &self,
        x: &[T],
        kc: &[T],
        u: &[T],
        p: &[T],
        g: &[T],
        need: [bool; 3],
    ) -> (Vec<T>, Vec<T>, Vec<T>) {
        let (n, gm, m, c) = (self.n, self.gm, self.m, self.c);
        let th = Self::threads();
        let one = T::from_f64(1.0);
        let mut dx = vec![T::z(); if need[0] { x.len() } else { 0 }];
        let mut dkc = vec![T::z(); if need[1] { kc.len() } else { 0 }];
        let mut du = vec![T::z(); if need[2] { u.len() } else { 0 }];
        let mut ds = vec![T::z(); n * gm];
        for b in 0..self.nb {
            let (xb, gb) = (
                &x[b * n * c..(b + 1) * n * c],
                &g[b * n * c..(b + 1) * n * c],
            );
            let (kb, ub) = (&kc[b * gm * (c + 1)..], &u[b * gm * c..(b + 1) * gm * c]);
            let pb = &p[b * n * gm..(b + 1) * n * gm];
            if need[0] || need[1] {
                // dP = dO U^T, then dS through each group's softmax.
                gemm(
                    n,
                    gm,
                    c,
                    &mut ds,
                    gm,
                    false,
                    Mat::rows(gb, c),
                    Mat::t(ub, c),
                    one,
                    th,
                );
                par_rows(&mut ds, gm, PAR_MIN, |r0, rows| {
                    let pr = &pb[r0 * gm..r0 * gm + rows.len()];
                    softmax_grad_rows(rows, pr, m, one);
                });
            }
            if need[0] {
                let dxb = &mut dx[b * n * c..(b + 1) * n * c];
                gemm(
                    n,
                    c,
                    gm,
                    dxb,
                    c,
                    false,
                    Mat::rows(&ds, gm),
                    Mat::rows(kb, c + 1),
                    one,
                    th,
                );
            }
            if need[1] {
                let dkb = &mut dkc[b * gm * (c + 1)..(b + 1) * gm * (c + 1)];
                gemm(
                    gm,
                    c,
                    n,
                    dkb,
                    c + 1,
                    false,
                    Mat::t(&ds, gm),
                    Mat::rows(xb, c),
                    one,
                    th,
                );
                for row in ds.chunks_exact(gm) {
                    for (j, &v) in row.iter().enumerate() {
                        dkb[j * (c + 1) + c] += v;
                    }
                }
            }
            if need[2] {
                let dub = &mut du[b * gm * c..(b + 1) * gm * c];
                gemm(
                    gm,
                    c,
                    n,
                    dub,
                    c,
                    false,
                    Mat::t(pb, gm),
                    Mat::rows(gb, c),
                    one,
                    th,
                );
            }
        }
        (dx, dkc, du)
    }
}

impl CustomOp3 for GroupedAttn {
    fn name(&self) -> &'static str {
        "fused-grouped-attention"
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
        let s = with_float!(s1.dtype(), "fused grouped attention", T => {
            let (p, out) = self.fwd::<T>(slices(s1, l1)?, slices(s2, l2)?, slices(s3, l3)?);
            *lock(&self.probs)? = Some(T::storage(p));
            T::storage(out)
        });
        Ok((s, Shape::from((self.nb, self.n, self.c))))
    }
    fn bwd(
        &self,
        x: &Tensor,
        kc: &Tensor,
        u: &Tensor,
        _res: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let need = [x.track_op(), kc.track_op(), u.track_op()];
        let guard = lock(&self.probs)?;
        let Some(probs) = guard.as_ref() else {
            bail!("fused grouped attention: no forward")
        };
        let (dx, dkc, du) = with_float!(x.dtype(), "fused grouped attention", T => {
            let p = T::cpu_storage_as_slice(probs)?;
            let (a, b, c) = read_all::<T, _>(&[x, kc, u, g], |v| {
                Ok(self.bwd_k(v[0], v[1], v[2], p, v[3], need))
            })?;
            (grad_of(a, x)?, grad_of(b, kc)?, grad_of(c, u)?)
        });
        Ok((dx, dkc, du))
    }
}

/// `x` (B, n, C) queries, `kc` (B, G m, C + 1) keys with their offsets in the last column, `u` (B, G m, C) values
/// -> (B, n, C): `sum_g sum_j softmax_j(x . k_gj + c_gj) u_gj` with `groups` = G softmax groups of m keys each.
pub(crate) fn grouped_attention(
    x: &Tensor,
    kc: &Tensor,
    u: &Tensor,
    groups: usize,
) -> Result<Tensor> {
    let (nb, n, c) = x.dims3()?;
    let (_, gm, c1) = kc.dims3()?;
    if c1 != c + 1 || u.dims() != [nb, gm, c] || kc.dim(0)? != nb || groups == 0 || gm % groups != 0
    {
        bail!(
            "grouped_attention: x {:?}, kc {:?}, u {:?}, {groups} groups",
            x.dims(),
            kc.dims(),
            u.dims()
        )
    }
    let m = gm / groups;
    if !cpu_ok(&[x, kc, u]) {
        let k = kc.narrow(2, 0, c)?;
        let off = kc.narrow(2, c, 1)?.squeeze(2)?.unsqueeze(1)?;
        let s = super::matmul(x, &k.t()?)?.broadcast_add(&off)?;
        let p = candle_nn::ops::softmax(&s.reshape((nb, n, groups, m))?, D::Minus1)?;
        return super::matmul(&p.reshape((nb, n, gm))?, u);
    }
    x.contiguous()?.apply_op3_arc(
        &kc.contiguous()?,
        &u.contiguous()?,
        Arc::new(Box::new(GroupedAttn {
            nb,
            n,
            gm,
            m,
            c,
            probs: Mutex::new(None),
        })),
    )
}
