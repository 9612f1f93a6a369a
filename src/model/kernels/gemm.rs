//! Matrix products on plain slices, for the fused inference kernels: the same `gemm` crate that candle's CPU
//! matmul calls (with its AVX-512 kernels where the CPU has them), but on sub-blocks of buffers the kernels own,
//! with strides, accumulation and a chosen thread count, so a kernel can multiply a band of rows that is still
//! in cache without making a tensor of it.

use super::float::Float;

/// A read-only matrix view: element `(i, j)` is `data[i * rs + j * cs]`.
#[derive(Clone, Copy)]
pub(crate) struct Mat<'a, T> {
    pub data: &'a [T],
    pub rs: usize,
    pub cs: usize,
}

impl<'a, T> Mat<'a, T> {
    /// A row-major matrix with rows `ld` elements apart.
    pub fn rows(data: &'a [T], ld: usize) -> Self {
        Self {
            data,
            rs: ld,
            cs: 1,
        }
    }
    /// The transpose of a row-major matrix with rows `ld` elements apart (e.g. `W^T` for a weight `(out, in)`).
    pub fn t(data: &'a [T], ld: usize) -> Self {
        Self {
            data,
            rs: 1,
            cs: ld,
        }
    }
    fn fits(&self, r: usize, c: usize) -> bool {
        r == 0 || c == 0 || (r - 1) * self.rs + (c - 1) * self.cs < self.data.len()
    }
}

/// `dst = scale * a b` (or `dst += scale * a b` with `acc`), `a` (m x k), `b` (k x n), `dst` (m x n) row-major
/// with rows `ld` apart. `threads` > 1 splits the product on rayon's pool (the caller's pool).
///
/// Panics when a view is too short for its shape (a bug in the calling kernel, never bad input).
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm<T: Float>(
    m: usize,
    n: usize,
    k: usize,
    dst: &mut [T],
    ld: usize,
    acc: bool,
    a: Mat<'_, T>,
    b: Mat<'_, T>,
    scale: T,
    threads: usize,
) {
    if m == 0 || n == 0 {
        return;
    }
    assert!(
        a.fits(m, k) && b.fits(k, n) && (m - 1) * ld + n <= dst.len() && n <= ld,
        "gemm: view too short for ({m} x {k}) x ({k} x {n})"
    );
    let par = if threads > 1 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: every element the product reads or writes lies inside the slices (checked above: the last
    // element of each view is in bounds and strides are non-negative), `dst` is borrowed mutably and so
    // cannot alias `a` or `b`, and `T` is f32 or f64, types the crate supports.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            ld as isize,
            acc,
            a.data.as_ptr(),
            a.cs as isize,
            a.rs as isize,
            b.data.as_ptr(),
            b.cs as isize,
            b.rs as isize,
            T::from_f64(1.0),
            scale,
            false,
            false,
            false,
            par,
        )
    }
}
