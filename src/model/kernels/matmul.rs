//! Matrix products of tensors through the portable [`super::gemm`]: the crate's replacement for candle's CPU
//! matmul (whose `gemm` crate gives other bits on another CPU, see `gemm.rs`).
//!
//! - [`mm`]: the storage-level product the fused ops call (same arguments as candle's
//!   `BackendStorage::matmul`: `(batch, m, n, k)` and the two layouts, any strides, batch strides included);
//! - [`matmul`] / [`broadcast_matmul`]: tensor products with a backward pass (one graph node; the gradients are
//!   products through this module too, and only those some variable needs are computed). Off the CPU, or for
//!   other dtypes, they are candle's own.

use candle_core::backend::BackendStorage;
use candle_core::{bail, CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::cpu::cpu_ok;
use super::float::Float;
use super::gemm::{gemm, Mat};
use crate::model::isa::Numerics;

/// The start offset of every batch of a `(batch..., rows, cols)` layout, in batch order.
fn batch_offsets(l: &Layout, batch: usize) -> Result<Vec<usize>> {
    let dims = l.dims();
    let stride = l.stride();
    let r = dims.len();
    if r < 2 {
        bail!("matmul: rank {r} < 2");
    }
    let bd = &dims[..r - 2];
    if bd.iter().product::<usize>() != batch {
        bail!("matmul: batch {batch} does not match the layout {dims:?}");
    }
    let mut out = Vec::with_capacity(batch);
    let mut idx = vec![0usize; bd.len()];
    for _ in 0..batch {
        out.push(l.start_offset() + idx.iter().zip(stride).map(|(i, s)| i * s).sum::<usize>());
        for d in (0..bd.len()).rev() {
            idx[d] += 1;
            if idx[d] < bd[d] {
                break;
            }
            idx[d] = 0;
        }
    }
    Ok(out)
}

fn mm_t<T: Float>(
    a: &[T],
    b: &[T],
    (batch, m, n, k): (usize, usize, usize, usize),
    la: &Layout,
    lb: &Layout,
) -> Result<Vec<T>> {
    let (oa, ob) = (batch_offsets(la, batch)?, batch_offsets(lb, batch)?);
    let (sa, sb) = (la.stride(), lb.stride());
    let (ra, rb) = (sa.len(), sb.len());
    fn view<T>(data: &[T], off: usize, rs: usize, cs: usize) -> Mat<'_, T> {
        Mat {
            data: &data[off.min(data.len())..],
            rs,
            cs,
        }
    }
    let mut out = vec![T::z(); batch * m * n];
    if m * n == 0 {
        return Ok(out);
    }
    let one = |i: usize, dst: &mut [T], threads: usize| {
        gemm(
            m,
            n,
            k,
            dst,
            n,
            false,
            view(a, oa[i], sa[ra - 2], sa[ra - 1]),
            view(b, ob[i], sb[rb - 2], sb[rb - 1]),
            T::from_f64(1.0),
            threads,
        )
    };
    let threads = rayon::current_num_threads();
    if batch > 1 && threads > 1 {
        out.par_chunks_mut(m * n)
            .enumerate()
            .for_each(|(i, d)| one(i, d, 1));
    } else {
        for (i, d) in out.chunks_mut(m * n).enumerate() {
            one(i, d, threads);
        }
    }
    Ok(out)
}

/// `lhs` x `rhs` as candle's `BackendStorage::matmul` computes it (`(batch, m, n, k)`, strided layouts), into a
/// contiguous `(batch, m, n)` storage, through the portable gemm.
pub(crate) fn mm(
    lhs: &CpuStorage,
    rhs: &CpuStorage,
    bmnk: (usize, usize, usize, usize),
    la: &Layout,
    lb: &Layout,
) -> Result<CpuStorage> {
    if Numerics::active() == Numerics::Fast {
        return lhs.matmul(rhs, bmnk, la, lb);
    }
    match (lhs, rhs) {
        (CpuStorage::F32(a), CpuStorage::F32(b)) => Ok(f32::storage(mm_t(a, b, bmnk, la, lb)?)),
        (CpuStorage::F64(a), CpuStorage::F64(b)) => Ok(f64::storage(mm_t(a, b, bmnk, la, lb)?)),
        _ => lhs.matmul(rhs, bmnk, la, lb),
    }
}

/// The product of two tensors of one batch shape, `(.., m, k) x (.., k, n)`.
struct MatMul;

impl CustomOp2 for MatMul {
    fn name(&self) -> &'static str {
        "portable-matmul"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (d1, d2) = (l1.dims(), l2.dims());
        let r = d1.len();
        if r < 2 || d2.len() != r || d1[..r - 2] != d2[..r - 2] || d1[r - 1] != d2[r - 2] {
            bail!("matmul: shapes {d1:?} and {d2:?} do not multiply");
        }
        let (m, k, n) = (d1[r - 2], d1[r - 1], d2[r - 1]);
        let batch: usize = d1[..r - 2].iter().product();
        let mut dims = d1[..r - 2].to_vec();
        dims.extend([m, n]);
        Ok((mm(s1, s2, (batch, m, n, k), l1, l2)?, Shape::from(dims)))
    }

    fn bwd(
        &self,
        a: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let ga = a.track_op().then(|| matmul(g, &b.t()?)).transpose()?;
        let gb = b.track_op().then(|| matmul(&a.t()?, g)).transpose()?;
        Ok((ga, gb))
    }
}

/// `a` x `b` for tensors of one batch shape (as candle's `Tensor::matmul`), portable on the CPU.
pub(crate) fn matmul(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    if !cpu_ok(&[a, b]) || Numerics::active() == Numerics::Fast {
        return a.matmul(b);
    }
    a.apply_op2(b, MatMul)
}

/// `a` x `b` with the batch dimensions broadcast (as candle's `Tensor::broadcast_matmul`).
pub(crate) fn broadcast_matmul(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    if Numerics::active() == Numerics::Fast {
        return a.broadcast_matmul(b);
    }
    let (da, db) = (a.dims(), b.dims());
    let (ra, rb) = (da.len(), db.len());
    if ra < 2 || rb < 2 {
        bail!("broadcast_matmul: shapes {da:?} and {db:?} need rank >= 2");
    }
    let rank = ra.max(rb);
    // Batch dimensions, right-aligned; each pair equal or one of them 1.
    let mut batch = vec![1usize; rank - 2];
    for (i, o) in batch.iter_mut().enumerate() {
        let pick = |d: &[usize], r: usize| if i + r >= rank { d[i + r - rank] } else { 1 };
        let (x, y) = (pick(da, ra), pick(db, rb));
        *o = match (x, y) {
            _ if x == y => x,
            (1, _) => y,
            (_, 1) => x,
            _ => bail!("broadcast_matmul: batch dimensions of {da:?} and {db:?} differ"),
        };
    }
    let full = |d: &[usize], r: usize| -> Vec<usize> {
        batch
            .iter()
            .copied()
            .chain(d[r - 2..].iter().copied())
            .collect()
    };
    let (sa, sb) = (full(da, ra), full(db, rb));
    let a = if sa != da {
        a.broadcast_as(sa)?
    } else {
        a.clone()
    };
    let b = if sb != db {
        b.broadcast_as(sb)?
    } else {
        b.clone()
    };
    matmul(&a, &b)
}
