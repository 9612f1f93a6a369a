//! The convolutional parts of TinyViT: the patch embedding, the MBConv blocks of stage 0 and the patch
//! merging between stages, all with BatchNorm folded into the convolutions at load and feature maps
//! channels-last.

use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;

use super::super::common::{fold_conv_bn, gelu, Linear, Param, Visit};
use super::super::kernels::{bias_gelu, bottleneck, dwconv3x3};
use super::super::lora::Adapter;

/// A Conv2d_BN with a 1x1 kernel, folded, as a linear layer on channels-last maps.
pub(super) fn conv1x1_bn(cin: usize, cout: usize, vb: VarBuilder) -> Result<Linear> {
    let (w, b) = fold_conv_bn(cout, &[cout, cin, 1, 1], &vb)?;
    Ok(Linear::from_tensors(
        vb.prefix(),
        w.reshape((cout, cin))?,
        Some(b),
    ))
}

/// A depthwise 3x3 Conv2d_BN, folded.
#[derive(Clone, Debug)]
pub(super) struct DwConvBn {
    pub(super) path: String,
    pub(super) weight: Tensor, // (9, C)
    pub(super) bias: Tensor,   // (C)
    pub(super) stride: usize,
}

impl DwConvBn {
    pub(super) fn new(c: usize, stride: usize, vb: VarBuilder) -> Result<Self> {
        let (w, b) = fold_conv_bn(c, &[c, 1, 3, 3], &vb)?;
        let weight = w.reshape((c, 9))?.t()?.contiguous()?;
        Ok(Self {
            path: vb.prefix(),
            weight,
            bias: b,
            stride,
        })
    }
    pub(super) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        dwconv3x3(x, &self.weight, self.stride)?.broadcast_add(&self.bias)
    }
    pub(super) fn forward_gelu(&self, x: &Tensor) -> Result<Tensor> {
        bias_gelu(&dwconv3x3(x, &self.weight, self.stride)?, &self.bias)
    }
}

impl Visit for DwConvBn {
    fn visit(&mut self, f: &mut dyn FnMut(Param<'_>) -> Result<()>) -> Result<()> {
        f(Param::Tensor(
            format!("{}.c.weight", self.path),
            &mut self.weight,
        ))?;
        f(Param::Tensor(
            format!("{}.c.bias", self.path),
            &mut self.bias,
        ))
    }
}

#[derive(Clone, Debug)]
pub(super) struct PatchEmbed {
    pub(super) c0: Linear,
    pub(super) c1: Linear,
}

impl PatchEmbed {
    pub(super) fn new(cin: usize, n: usize, vb: VarBuilder) -> Result<Self> {
        let vb = vb.pp("seq");
        Ok(Self {
            c0: conv1x1_bn(cin, n / 2, vb.pp("0"))?,
            c1: conv1x1_bn(n / 2, n, vb.pp("2"))?,
        })
    }
    pub(super) fn forward(&self, x: &Tensor, ad: Option<&Adapter>) -> Result<Tensor> {
        let x = self.c0.forward_gelu(x, ad)?;
        self.c1.forward(&x, ad)
    }
}

#[derive(Clone, Debug)]
pub(super) struct MbConv {
    pub(super) conv1: Linear,
    pub(super) conv2: DwConvBn,
    pub(super) conv3: Linear,
}

impl MbConv {
    pub(super) fn new(c: usize, expand: usize, vb: VarBuilder) -> Result<Self> {
        let h = c * expand;
        Ok(Self {
            conv1: conv1x1_bn(c, h, vb.pp("conv1"))?,
            conv2: DwConvBn::new(h, 1, vb.pp("conv2"))?,
            conv3: conv1x1_bn(h, c, vb.pp("conv3"))?,
        })
    }
    pub(super) fn forward(&self, x: &Tensor, ad: Option<&Adapter>) -> Result<Tensor> {
        if let Some(y) = fused(&self.conv1, &self.conv2, &self.conv3, x, ad, true)? {
            return Ok(y);
        }
        let y = self.conv1.forward_gelu(x, ad)?;
        let y = self.conv2.forward_gelu(&y)?;
        let y = self.conv3.forward_no_bias(&y, ad)?;
        match &self.conv3.bias {
            Some(b) => bias_gelu(&(y + x)?, b),
            None => gelu(&(y + x)?),
        }
    }
}

#[derive(Clone, Debug)]
pub(super) struct PatchMerging {
    pub(super) conv1: Linear,
    pub(super) conv2: DwConvBn,
    pub(super) conv3: Linear,
}

impl PatchMerging {
    pub(super) fn new(cin: usize, cout: usize, stride: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            conv1: conv1x1_bn(cin, cout, vb.pp("conv1"))?,
            conv2: DwConvBn::new(cout, stride, vb.pp("conv2"))?,
            conv3: conv1x1_bn(cout, cout, vb.pp("conv3"))?,
        })
    }
    pub(super) fn forward(&self, x: &Tensor, ad: Option<&Adapter>) -> Result<Tensor> {
        if let Some(y) = fused(&self.conv1, &self.conv2, &self.conv3, x, ad, false)? {
            return Ok(y);
        }
        let y = self.conv1.forward_gelu(x, ad)?;
        let y = self.conv2.forward_gelu(&y)?;
        self.conv3.forward(&y, ad)
    }
}

/// `conv1 -> GELU -> conv2 (depthwise) -> GELU -> conv3` (with `residual_gelu`: then `+ x` and GELU) in the fused
/// inference kernel, when no adapter modifies the 1x1 convs and no gradient is tracked; `None` otherwise.
fn fused(
    conv1: &Linear,
    conv2: &DwConvBn,
    conv3: &Linear,
    x: &Tensor,
    ad: Option<&Adapter>,
    residual_gelu: bool,
) -> Result<Option<Tensor>> {
    if !(conv1.plain(ad) && conv3.plain(ad)) {
        return Ok(None);
    }
    bottleneck(
        x,
        (&conv1.weight, conv1.bias_or_err()?),
        (&conv2.weight, &conv2.bias),
        (&conv3.weight, conv3.bias_or_err()?),
        conv2.stride,
        residual_gelu,
    )
}
