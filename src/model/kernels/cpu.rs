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

/// All tensors on the CPU with one f32/f64 dtype: the fused path applies.
pub(crate) fn cpu_ok(ts: &[&Tensor]) -> bool {
    let dt = ts[0].dtype();
    matches!(dt, DType::F32 | DType::F64)
        && ts.iter().all(|t| t.device().is_cpu() && t.dtype() == dt)
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
