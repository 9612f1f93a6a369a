//! The decoder's last upscaling layer and its mask read-out as one node: `out[b, r s + j] = sum_c
//! gelu(x_r W_j^T + b_j)_c h_{b,c}` for each input row r and sub-pixel j (the 2x2 transposed conv's four output
//! pixels). Composed of ops, the (rows x 4 x 32) activation map (32 MiB at batch 4) was written, read back by the
//! read-out, and in the backward pass given a gradient of its own size, zero-filled and accumulated by candle,
//! then read again by the linear layer's backward. Here the backward works in bands of rows that stay in cache:
//! only the pre-activations are kept (for the GELU derivative), and the input gradient, the weight gradient and
//! the hyper-vector gradient come out of each band at once.

use std::sync::{Arc, Mutex};

use candle_core::backend::BackendStorage;
use candle_core::{bail, CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};

use super::cpu::{cpu_ok, grad_of, lock, read_all, slices};
use super::float::{dot, with_float, Float};
use super::gemm::{gemm, Mat};
use super::matmul::matmul;
use super::par::{par_rows, simd_fn};
use super::PAR_MIN;

/// Rows per band of the backward pass.
const BAND: usize = 64;

struct ReadoutGelu {
    /// Images.
    nb: usize,
    /// Input width.
    k: usize,
    /// Outputs per row (sub-pixels x channels).
    n: usize,
    /// Channels per sub-pixel (the hyper-vector's width).
    c: usize,
    /// Pre-activations (rows, n), kept for the backward pass.
    z: Mutex<Option<CpuStorage>>,
}

impl ReadoutGelu {
    fn fwd<T: Float>(&self, x: &[T], wb: &[T], h: &[T]) -> (Vec<T>, Vec<T>) {
        let (k, n, c) = (self.k, self.n, self.c);
        let rows = x.len() / k;
        let per_img = rows / self.nb;
        let mut z = vec![T::z(); rows * n];
        let one = T::from_f64(1.0);
        gemm(
            rows,
            n,
            k,
            &mut z,
            n,
            false,
            Mat::rows(x, k),
            Mat::t(wb, k + 1),
            one,
            rayon::current_num_threads(),
        );
        // Add the bias to the kept pre-activations and read each row out while it is in cache.
        let bias: Vec<T> = (0..n).map(|j| wb[j * (k + 1) + k]).collect();
        let parts = par_rows(&mut z, n, PAR_MIN, |r0, ch| {
            fwd_rows_wide(ch, r0, &bias, h, per_img, c)
        });
        let out = parts.concat();
        (z, out)
    }

    /// (dx, dwb, dh) for the output gradient `g`; dwb only with `need_w` (a frozen layer under a LoRA step is
    /// not trained, and its weight gradient would cost as much as dx), else empty.
    #[allow(clippy::too_many_arguments)]
    fn bwd_k<T: Float>(
        &self,
        x: &[T],
        wb: &[T],
        h: &[T],
        z: &[T],
        g: &[T],
        need_w: bool,
    ) -> (Vec<T>, Vec<T>, Vec<T>) {
        let (k, n, c) = (self.k, self.n, self.c);
        let sp = n / c;
        let rows = x.len() / k;
        let per_img = rows / self.nb;
        let one = T::from_f64(1.0);
        let mut dx = vec![T::z(); x.len()];
        // Each part: its rows in bands; returns its (dW | db) and dh sums.
        let parts = par_rows(&mut dx, k, PAR_MIN, |r0, ch| {
            let mut dwb = vec![T::z(); if need_w { n * (k + 1) } else { 0 }];
            let mut dh = vec![T::z(); self.nb * c];
            let mut dz = vec![T::z(); BAND * n];
            let nr = ch.len() / k;
            let mut lo = 0;
            while lo < nr {
                let m = BAND.min(nr - lo);
                let r = r0 + lo;
                dz_band_wide(
                    &z[r * n..(r + m) * n],
                    &g[r * sp..(r + m) * sp],
                    h,
                    &mut dh,
                    &mut dz[..m * n],
                    (r, per_img, c, n),
                );
                // dx = dz W (W: the first k columns of wb).
                gemm(
                    m,
                    k,
                    n,
                    &mut ch[lo * k..(lo + m) * k],
                    k,
                    false,
                    Mat::rows(&dz[..m * n], n),
                    Mat::rows(wb, k + 1),
                    one,
                    1,
                );
                if need_w {
                    // dW += dz^T x; db += column sums of dz.
                    let xb = &x[r * k..(r + m) * k];
                    gemm(
                        n,
                        k,
                        m,
                        &mut dwb,
                        k + 1,
                        true,
                        Mat::t(&dz[..m * n], n),
                        Mat::rows(xb, k),
                        one,
                        1,
                    );
                    for dzr in dz[..m * n].chunks_exact(n) {
                        for (j, &v) in dzr.iter().enumerate() {
                            dwb[j * (k + 1) + k] += v;
                        }
                    }
                }
                lo += m;
            }
            (dwb, dh)
        });
        let mut dwb = vec![T::z(); if need_w { n * (k + 1) } else { 0 }];
        let mut dh = vec![T::z(); self.nb * c];
        for (pw, ph) in parts {
            for (a, v) in dwb.iter_mut().zip(pw) {
                *a += v;
            }
            for (a, v) in dh.iter_mut().zip(ph) {
                *a += v;
            }
        }
        (dx, dwb, dh)
    }
}

simd_fn!(fn fwd_rows_wide = fwd_rows<T: Float>(
    z: &mut [T],
    r0: usize,
    bias: &[T],
    h: &[T],
    per_img: usize,
    c: usize,
) -> Vec<T>);

/// Rows `r0..` of the pre-activations `z`: add the bias in place; returns each row's read-outs.
#[inline(always)]
fn fwd_rows<T: Float>(
    z: &mut [T],
    r0: usize,
    bias: &[T],
    h: &[T],
    per_img: usize,
    c: usize,
) -> Vec<T> {
    let n = bias.len();
    let sp = n / c;
    let mut out = Vec::with_capacity(z.len() / n * sp);
    let mut a = vec![T::z(); n];
    for (i, zr) in z.chunks_exact_mut(n).enumerate() {
        let b = (r0 + i) / per_img;
        let hb = &h[b * c..(b + 1) * c];
        for ((zv, av), &bv) in zr.iter_mut().zip(a.iter_mut()).zip(bias) {
            *zv += bv;
            *av = zv.gelu();
        }
        for s in 0..sp {
            out.push(dot(&a[s * c..(s + 1) * c], hb));
        }
    }
    out
}

simd_fn!(fn dz_band_wide = dz_band<T: Float>(
    z: &[T],
    g: &[T],
    h: &[T],
    dh: &mut [T],
    dz: &mut [T],
    at: (usize, usize, usize, usize),
));

/// One band of rows starting at global row `r` (`at` = (r, rows per image, channels, outputs per row)): the
/// pre-activation gradients `dz` from the read-out gradients `g`, and the hyper-vectors' gradients added to `dh`.
#[inline(always)]
fn dz_band<T: Float>(
    z: &[T],
    g: &[T],
    h: &[T],
    dh: &mut [T],
    dz: &mut [T],
    at: (usize, usize, usize, usize),
) {
    let (r, per_img, c, n) = at;
    let sp = n / c;
    for (i, (zr, dzr)) in z.chunks_exact(n).zip(dz.chunks_exact_mut(n)).enumerate() {
        let b = (r + i) / per_img;
        let hb = &h[b * c..(b + 1) * c];
        let dhb = &mut dh[b * c..(b + 1) * c];
        for s in 0..sp {
            let gv = g[i * sp + s];
            let zs = &zr[s * c..(s + 1) * c];
            let ds = &mut dzr[s * c..(s + 1) * c];
            for (((d, dhv), &zv), &hv) in ds.iter_mut().zip(dhb.iter_mut()).zip(zs).zip(hb) {
                *dhv += gv * zv.gelu();
                *d = gv * hv * zv.gelu_grad();
            }
        }
    }
}

impl CustomOp3 for ReadoutGelu {
    fn name(&self) -> &'static str {
        "fused-readout-gelu"
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
        let rows = l1.shape().elem_count() / self.k;
        let s = with_float!(s1.dtype(), "fused read-out", T => {
            let (z, out) = self.fwd::<T>(slices(s1, l1)?, slices(s2, l2)?, slices(s3, l3)?);
            *lock(&self.z)? = Some(T::storage(z));
            T::storage(out)
        });
        Ok((
            s,
            Shape::from((self.nb, rows / self.nb * (self.n / self.c))),
        ))
    }
    fn bwd(
        &self,
        x: &Tensor,
        wb: &Tensor,
        h: &Tensor,
        _res: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let guard = lock(&self.z)?;
        let Some(z) = guard.as_ref() else {
            bail!("fused read-out: no forward")
        };
        with_float!(x.dtype(), "fused read-out", T => {
            let z = z.as_slice::<T>()?;
            let need_w = wb.track_op();
            let (a, b, c) = read_all::<T, _>(&[x, wb, h, g], |v| {
                Ok(self.bwd_k(v[0], v[1], v[2], z, v[3], need_w))
            })?;
            Ok((grad_of(a, x)?, grad_of(b, wb)?, grad_of(c, h)?))
        })
    }
}

/// `x` read as rows of `k` values (B images of equal row counts), `wb` (n, k + 1) the weight with the bias as
/// its last column, `h` (B, c) with n a multiple of c -> (B, rows per image x n / c): for each row and each of its
/// n / c groups of c outputs, `gelu(x W^T + b)` of the group dotted with the image's `h`.
pub(crate) fn readout_gelu(x: &Tensor, wb: &Tensor, h: &Tensor) -> Result<Tensor> {
    let (n, k1) = wb.dims2()?;
    let (nb, c) = h.dims2()?;
    let k = k1.saturating_sub(1);
    if k == 0 || c == 0 || !n.is_multiple_of(c) || !x.elem_count().is_multiple_of(nb * k) {
        bail!(
            "readout_gelu: x {:?}, wb {:?}, h {:?}",
            x.dims(),
            wb.dims(),
            h.dims()
        )
    }
    let rows = x.elem_count() / k;
    if !cpu_ok(&[x, wb, h]) {
        let z = matmul(&x.reshape((rows, k))?, &wb.narrow(1, 0, k)?.t()?)?
            .broadcast_add(&wb.narrow(1, k, 1)?.squeeze(1)?)?
            .gelu_erf()?;
        let z = z.reshape((nb, rows / nb * (n / c), c))?;
        return matmul(&z, &h.unsqueeze(2)?)?.squeeze(2);
    }
    x.contiguous()?.apply_op3_arc(
        &wb.contiguous()?,
        &h.contiguous()?,
        Arc::new(Box::new(ReadoutGelu {
            nb,
            k,
            n,
            c,
            z: Mutex::new(None),
        })),
    )
}
