//! Plumbing shared by the custom ops: reading contiguous CPU storage, making result tensors, and the
//! tensors-saved-for-backward slots.

use std::sync::{Mutex, MutexGuard};

use candle_core::{
    bail, CpuStorage, DType, Device, Layout, Result, Shape, Storage, Tensor, WithDType,
};

use super::float::Float;

/// The contiguous values of a storage under `l`.
pub(crate) fn slices<'a, T: WithDType>(s: &'a CpuStorage, l: &Layout) -> Result<&'a [T]> {
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&s.as_slice::<T>()?[a..b]),
        None => bail!("fused op: input must be contiguous"),
    }
}

/// All tensors on the CPU with one f32/f64 dtype: the fused path applies (unless a test forced candle's path,
/// see `with_candle_fallback`).
pub(crate) fn cpu_ok(ts: &[&Tensor]) -> bool {
    let dt = ts[0].dtype();
    !candle_forced()
        && matches!(dt, DType::F32 | DType::F64)
        && ts.iter().all(|t| t.device().is_cpu() && t.dtype() == dt)
}

#[cfg(test)]
thread_local! {
    static CANDLE_FORCED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Whether the calling thread is inside `with_candle_fallback`.
#[cfg(test)]
fn candle_forced() -> bool {
    CANDLE_FORCED.with(|f| f.get())
}

/// Never outside tests.
#[cfg(not(test))]
#[inline(always)]
fn candle_forced() -> bool {
    false
}

/// Run `f` with every op of this module taking its candle fallback on the calling thread: the path that runs off
/// the CPU (or for another dtype), which tests compare with the kernel path on the CPU. Why a thread-local of
/// test builds, not an environment variable: the library sets no process-wide state, and tests running in
/// parallel threads each keep their own setting.
#[cfg(test)]
pub(crate) fn with_candle_fallback<R>(f: impl FnOnce() -> R) -> R {
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            CANDLE_FORCED.with(|c| c.set(self.0));
        }
    }
    let _restore = Restore(CANDLE_FORCED.with(|c| c.replace(true)));
    f()
}

/// Run `f` on the contiguous data of `t` (copied first only when not contiguous).
pub(crate) fn read<T: Float, R>(t: &Tensor, f: impl FnOnce(&[T]) -> Result<R>) -> Result<R> {
    let t = t.contiguous()?;
    let (s, l) = t.storage_and_layout();
    let Storage::Cpu(cs) = &*s else {
        bail!("fused op: CPU tensors only")
    };
    f(slices::<T>(cs, l)?)
}

/// A CPU tensor from values.
pub(crate) fn new_tensor<T: Float>(v: Vec<T>, shape: impl Into<Shape>) -> Result<Tensor> {
    Tensor::from_vec(v, shape, &Device::Cpu)
}

/// The gradient `v` of `like` as a tensor of its shape, or `None` when `like` tracks no gradient (a custom op's
/// backward returns only what some variable needs).
pub(crate) fn grad_of<T: Float>(v: Vec<T>, like: &Tensor) -> Result<Option<Tensor>> {
    like.track_op()
        .then(|| new_tensor(v, like.shape()))
        .transpose()
}

/// Lock a slot of values kept for the backward pass.
pub(crate) fn lock<T>(slot: &Mutex<T>) -> Result<MutexGuard<'_, T>> {
    slot.lock()
        .map_err(|_| candle_core::Error::Msg("fused op: poisoned".into()))
}

/// Keep `v` (shape `shape`) for the backward pass.
pub(crate) fn stash<T: Float>(
    slot: &Mutex<Option<Tensor>>,
    v: Vec<T>,
    shape: (usize, usize),
) -> Result<()> {
    let t = new_tensor(v, shape)?;
    *lock(slot)? = Some(t);
    Ok(())
}

/// The fused inference kernels apply: CPU tensors of one float dtype, none of them tracked for a gradient.
pub(crate) fn frozen_cpu(ts: &[&Tensor]) -> bool {
    cpu_ok(ts) && ts.iter().all(|t| !t.track_op())
}

/// Run `f` on the contiguous data of every tensor in `ts` (each copied first only when not contiguous).
pub(crate) fn read_all<T: Float, R>(
    ts: &[&Tensor],
    f: impl FnOnce(&[&[T]]) -> Result<R>,
) -> Result<R> {
    let ts: Vec<Tensor> = ts.iter().map(|t| t.contiguous()).collect::<Result<_>>()?;
    let guards: Vec<_> = ts.iter().map(|t| t.storage_and_layout()).collect();
    let mut views = Vec::with_capacity(ts.len());
    for (s, l) in &guards {
        let Storage::Cpu(cs) = &**s else {
            bail!("fused op: CPU tensors only")
        };
        views.push(slices::<T>(cs, l)?);
    }
    f(&views)
}
