//! Building blocks shared by the LiteMedSAM modules: a LoRA-aware linear layer, layer norms made of
//! differentiable ops, BatchNorm folding, and a parameter visitor (used to enumerate LoRA sites and to
//! unfreeze base weights for strategies that fine-tune them).

use candle_core::{DType, Module, Result, Tensor, Var, D};
use candle_nn::VarBuilder;

use super::kernels;
use super::lora::Adapter;

/// One named parameter reached by [`Visit::visit`].
pub enum Param<'a> {
    /// A linear layer (a LoRA site); its weight and bias are `path.weight` / `path.bias`.
    Linear(&'a mut Linear),
    /// Any other tensor, with its full state-dict name (folded convs: `path.c.weight` / `path.c.bias`).
    Tensor(String, &'a mut Tensor),
}

/// Walk every parameter of a module.
pub trait Visit {
    fn visit(&mut self, f: &mut dyn FnMut(Param<'_>) -> Result<()>) -> Result<()>;
}

/// `y = x W^T + b (+ (alpha/r) B(A x) when the active adapter has this path)`.
#[derive(Clone, Debug)]
pub struct Linear {
    pub path: String,
    pub weight: Tensor, // (out, in)
    pub bias: Option<Tensor>,
}

impl Linear {
    pub fn new(in_dim: usize, out_dim: usize, vb: VarBuilder) -> Result<Self> {
        let weight = vb.get((out_dim, in_dim), "weight")?;
        let bias = Some(vb.get(out_dim, "bias")?);
        Ok(Self {
            path: vb.prefix(),
            weight,
            bias,
        })
    }

    /// A linear layer from given tensors (e.g. a folded 1x1 Conv2d_BN).
    pub fn from_tensors(path: String, weight: Tensor, bias: Option<Tensor>) -> Self {
        Self { path, weight, bias }
    }

    pub fn in_dim(&self) -> usize {
        self.weight.dims()[1]
    }
    pub fn out_dim(&self) -> usize {
        self.weight.dims()[0]
    }

    /// No adapter modifies this layer: its weight and bias are the whole map (a fused kernel may use them).
    pub fn plain(&self, ad: Option<&Adapter>) -> bool {
        ad.and_then(|a| a.site(&self.path)).is_none()
    }

    /// The bias, or an error naming the layer (for kernels that need one).
    pub fn bias_or_err(&self) -> Result<&Tensor> {
        self.bias
            .as_ref()
            .ok_or_else(|| candle_core::Error::Msg(format!("{}: no bias", self.path)))
    }

    pub fn forward(&self, x: &Tensor, ad: Option<&Adapter>) -> Result<Tensor> {
        self.forward_act(x, ad, false)
    }

    /// `gelu(forward(x))` (erf GELU), fused.
    pub fn forward_gelu(&self, x: &Tensor, ad: Option<&Adapter>) -> Result<Tensor> {
        self.forward_act(x, ad, true)
    }

    /// One fused node: `act(x W^T + b (+ LoRA))`; x may also be any tensor read as rows of
    /// `in_dim` values (then the result is (rows, out)).
    pub fn forward_act(&self, x: &Tensor, ad: Option<&Adapter>, act: bool) -> Result<Tensor> {
        let site = ad.and_then(|a| a.site(&self.path));
        match site {
            Some((a, bm, scale)) => {
                kernels::lora_linear(x, &self.weight, self.bias.as_ref(), a, bm, scale, act)
            }
            None => kernels::linear(x, &self.weight, self.bias.as_ref(), act),
        }
    }

    /// The weight this layer applies, `W (+ (alpha/r) B A` when the active adapter has this path), as a
    /// differentiable (out, in) tensor: for callers that fold the layer into another product.
    pub fn effective_weight(&self, ad: Option<&Adapter>) -> Result<Tensor> {
        match ad.and_then(|a| a.site(&self.path)) {
            Some((a, bm, scale)) => self.weight.add(&(kernels::matmul(bm, a)? * scale)?),
            None => Ok(self.weight.clone()),
        }
    }

    /// `x W^T` plus the LoRA term, without the bias.
    pub fn forward_no_bias(&self, x: &Tensor, ad: Option<&Adapter>) -> Result<Tensor> {
        let dims = x.dims().to_vec();
        let in_dim = *dims.last().expect("rank >= 1");
        let n: usize = dims[..dims.len() - 1].iter().product();
        let x2 = x.reshape((n, in_dim))?;
        let mut y = kernels::matmul(&x2, &self.weight.t()?)?;
        if let Some((a, bm, scale)) = ad.and_then(|a| a.site(&self.path)) {
            let low = kernels::matmul(&kernels::matmul(&x2, &a.t()?)?, &bm.t()?)?;
            y = (y + (low * scale)?)?;
        }
        let mut out_dims = dims;
        *out_dims.last_mut().expect("rank >= 1") = self.out_dim();
        y.reshape(out_dims)
    }
}

impl Visit for Linear {
    fn visit(&mut self, f: &mut dyn FnMut(Param<'_>) -> Result<()>) -> Result<()> {
        f(Param::Linear(self))
    }
}

/// Layer norm over the last dimension, from differentiable ops (candle's fused layer norm records no
/// backward op).
#[derive(Clone, Debug)]
pub struct LayerNorm {
    pub path: String,
    pub weight: Tensor,
    pub bias: Tensor,
    pub eps: f64,
}

impl LayerNorm {
    pub fn new(dim: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            path: vb.prefix(),
            weight: vb.get(dim, "weight")?,
            bias: vb.get(dim, "bias")?,
            eps,
        })
    }
}

impl Module for LayerNorm {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        layer_norm(x, &self.weight, &self.bias, self.eps)
    }
}

impl Visit for LayerNorm {
    fn visit(&mut self, f: &mut dyn FnMut(Param<'_>) -> Result<()>) -> Result<()> {
        f(Param::Tensor(
            format!("{}.weight", self.path),
            &mut self.weight,
        ))?;
        f(Param::Tensor(format!("{}.bias", self.path), &mut self.bias))
    }
}

/// Differentiable layer norm over the last dimension (fused kernel on the CPU).
pub fn layer_norm(x: &Tensor, w: &Tensor, b: &Tensor, eps: f64) -> Result<Tensor> {
    kernels::ln_act(x, w, b, eps, false)
}

/// Softmax over the last dimension, differentiable (candle's `softmax_last_dim` has no backward):
/// the fused kernel is used only when no gradient is being tracked.
pub fn softmax_last(x: &Tensor) -> Result<Tensor> {
    if x.track_op() {
        candle_nn::ops::softmax(x, D::Minus1)
    } else {
        candle_nn::ops::softmax_last_dim(x)
    }
}

/// Exact (erf) GELU, as PyTorch's `nn.GELU()`.
pub fn gelu(x: &Tensor) -> Result<Tensor> {
    kernels::gelu(x)
}

/// A Conv2d followed by BatchNorm2d (`path.c.weight`, `path.bn.*`), folded: returns the conv weight
/// scaled per output channel and the bias, as PyTorch's `Conv2d_BN.fuse()`.
pub fn fold_conv_bn(out_ch: usize, w_shape: &[usize], vb: &VarBuilder) -> Result<(Tensor, Tensor)> {
    let w = vb.pp("c").get(w_shape, "weight")?;
    let bn = vb.pp("bn");
    let gamma = bn.get(out_ch, "weight")?;
    let beta = bn.get(out_ch, "bias")?;
    let mean = bn.get(out_ch, "running_mean")?;
    let var = bn.get(out_ch, "running_var")?;
    let inv = (var + 1e-5)?.sqrt()?.recip()?.mul(&gamma)?; // gamma / sqrt(var + eps)
    let mut shape = vec![out_ch];
    shape.extend(std::iter::repeat_n(1, w_shape.len() - 1));
    let w = w.broadcast_mul(&inv.reshape(shape)?)?;
    let b = (beta - mean.mul(&inv)?)?;
    Ok((w, b))
}

/// Replace `t` by a trainable copy and return its [`Var`].
pub fn make_var(t: &mut Tensor) -> Result<Var> {
    let v = Var::from_tensor(&t.detach())?;
    *t = v.as_tensor().clone();
    Ok(v)
}

/// Convert a tensor to `dtype` only when needed.
pub fn to_dtype(t: &Tensor, dtype: DType) -> Result<Tensor> {
    if t.dtype() == dtype {
        Ok(t.clone())
    } else {
        t.to_dtype(dtype)
    }
}
