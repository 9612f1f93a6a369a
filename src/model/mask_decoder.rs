//! SAM mask decoder, single-mask output (LiteMedSAM uses `multimask_output=False`): only the first
//! mask token's hypernetwork is evaluated.

use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;

use super::common::{Linear, Param, Visit};
use super::lora::Adapter;
use super::transformer::{TwoWayTransformer, TwoWayTransformerConfig};

/// Hyper-parameters of SAM's mask decoder.
#[derive(Clone, Debug, PartialEq)]
pub struct MaskDecoderConfig {
    /// Width of the tokens and of the image embedding.
    pub transformer_dim: usize,
    /// The two-way transformer between prompt tokens and image tokens.
    pub transformer: TwoWayTransformerConfig,
    /// Masks of the multimask output (LiteMedSAM uses the single-mask output only).
    pub num_multimask_outputs: usize,
    /// Layers of the IoU-prediction MLP.
    pub iou_head_depth: usize,
    /// Hidden width of the IoU-prediction MLP.
    pub iou_head_hidden_dim: usize,
}

/// A stack of linear layers with ReLU between them.
#[derive(Clone, Debug)]
pub struct Mlp {
    pub layers: Vec<Linear>,
}

impl Mlp {
    pub fn new(
        input: usize,
        hidden: usize,
        output: usize,
        n: usize,
        vb: VarBuilder,
    ) -> Result<Self> {
        let mut layers = Vec::new();
        for i in 0..n {
            let a = if i == 0 { input } else { hidden };
            let b = if i + 1 == n { output } else { hidden };
            layers.push(Linear::new(a, b, vb.pp("layers").pp(i))?);
        }
        Ok(Self { layers })
    }
    pub fn forward(&self, x: &Tensor, ad: Option<&Adapter>) -> Result<Tensor> {
        let mut x = x.clone();
        for (i, l) in self.layers.iter().enumerate() {
            x = l.forward(&x, ad)?;
            if i + 1 < self.layers.len() {
                x = x.relu()?;
            }
        }
        Ok(x)
    }
}

/// ConvTranspose2d with kernel 2 and stride 2, on channels-last maps, as one linear layer (the
/// kernel does not overlap, so this is exact): each input pixel gives a 2x2 block of outputs.
#[derive(Clone, Debug)]
struct ConvT2x2 {
    path: String,
    w: Tensor, // (4*cout, cin), rows ordered (dy, dx, cout)
    b: Tensor,
}

impl ConvT2x2 {
    fn new(cin: usize, cout: usize, vb: VarBuilder) -> Result<Self> {
        let w = vb
            .get((cin, cout, 2, 2), "weight")?
            .permute((2, 3, 1, 0))?
            .reshape((4 * cout, cin))?
            .contiguous()?;
        Ok(Self {
            path: vb.prefix(),
            w,
            b: vb.get(cout, "bias")?,
        })
    }
    /// The bias of each of the four sub-pixels' outputs, (4 * cout), ordered as the weight's rows.
    fn bias4(&self) -> Result<Tensor> {
        Tensor::cat(&[&self.b, &self.b, &self.b, &self.b], 0)
    }

    /// `x` read as rows of `cin` values, `hyper` (B, cout) -> (B, rows / B x 4): erf-GELU of the sub-pixel
    /// outputs, each pixel's `cout` channels dotted with its image's `hyper` (the mask read-out).
    fn readout_gelu(&self, x: &Tensor, hyper: &Tensor) -> Result<Tensor> {
        let wb = Tensor::cat(&[&self.w, &self.bias4()?.unsqueeze(1)?], 1)?;
        super::kernels::readout_gelu(x, &wb, hyper)
    }

    /// x read as rows of `cin` values -> (rows, 4 * cout), columns ordered (dy, dx, cout): the
    /// sub-pixel layout (no spatial interleave).
    fn forward_subpixel(&self, x: &Tensor) -> Result<Tensor> {
        super::kernels::linear(x, &self.w, Some(&self.bias4()?), false)
    }
}

#[derive(Clone, Debug)]
pub struct MaskDecoder {
    path: String,
    iou_token: Tensor,   // (1, C)
    mask_tokens: Tensor, // (n_masks, C)
    pub transformer: TwoWayTransformer,
    up0: ConvT2x2,
    ln1: (Tensor, Tensor),
    up3: ConvT2x2,
    pub hyper0: Mlp,
    pub iou_prediction_head: Mlp,
}

impl MaskDecoder {
    pub fn new(cfg: &MaskDecoderConfig, vb: VarBuilder) -> Result<Self> {
        let d = cfg.transformer_dim;
        let nm = cfg.num_multimask_outputs + 1;
        let up = vb.pp("output_upscaling");
        Ok(Self {
            path: vb.prefix(),
            iou_token: vb.pp("iou_token").get((1, d), "weight")?,
            mask_tokens: vb.pp("mask_tokens").get((nm, d), "weight")?,
            transformer: TwoWayTransformer::new(&cfg.transformer, vb.pp("transformer"))?,
            up0: ConvT2x2::new(d, d / 4, up.pp("0"))?,
            ln1: (
                up.pp("1").get(d / 4, "weight")?,
                up.pp("1").get(d / 4, "bias")?,
            ),
            up3: ConvT2x2::new(d / 4, d / 8, up.pp("3"))?,
            hyper0: Mlp::new(d, d, d / 8, 3, vb.pp("output_hypernetworks_mlps").pp(0))?,
            iou_prediction_head: Mlp::new(
                d,
                cfg.iou_head_hidden_dim,
                nm,
                cfg.iou_head_depth,
                vb.pp("iou_prediction_head"),
            )?,
        })
    }

    /// src (B, s, s, C) channels-last image embedding with the dense prompt already added,
    /// pe (1, s*s, C), sparse (B, N, C) -> (masks (B, 1, 4s, 4s), iou (B, 1)).
    pub fn forward(
        &self,
        src: &Tensor,
        pe: &Tensor,
        sparse: &Tensor,
        ad: Option<&Adapter>,
    ) -> Result<(Tensor, Tensor)> {
        let (b, s, _, c) = src.dims4()?;
        let out_tokens = Tensor::cat(&[&self.iou_token, &self.mask_tokens], 0)?;
        let out_tokens = out_tokens
            .unsqueeze(0)?
            .broadcast_as((b, out_tokens.dim(0)?, c))?;
        let tokens = Tensor::cat(&[&out_tokens, &sparse.to_dtype(src.dtype())?], 1)?;
        let (hs, keys) = self
            .transformer
            .forward(&src.reshape((b, s * s, c))?, pe, &tokens, ad)?;
        let iou_tok = hs.narrow(1, 0, 1)?.squeeze(1)?;
        let mask_tok = hs.narrow(1, 1, 1)?.squeeze(1)?;
        // Output upscaling (two 2x2 stride-2 transposed convs) in sub-pixel layout: pixel
        // (4i + 2a + a', 4j + 2d + d') lives at [b, i, j, (a, d), (a', d')], so no large permute is
        // needed; only the final one-channel mask is interleaved.
        let x = self.up0.forward_subpixel(&keys)?; // (B*s*s, 4 * C/4)
                                                   // Layer norm over each sub-pixel's C/4 channels, then GELU.
        let x = super::kernels::ln_act(&x, &self.ln1.0, &self.ln1.1, 1e-6, true)?;
        let hyper = self.hyper0.forward(&mask_tok, ad)?; // (B, C/8)
                                                         // The second transposed conv, its GELU and the read-out with the hypernetwork's vector, as one node.
        let masks = self.up3.readout_gelu(&x, &hyper)?; // (B, s*s*16)
        let masks = masks
            .reshape((b * s, s, 2, 2, 2, 2))?
            .permute((0, 2, 4, 1, 3, 5))?
            .reshape((b, 1, 4 * s, 4 * s))?;
        let iou = self
            .iou_prediction_head
            .forward(&iou_tok, ad)?
            .narrow(1, 0, 1)?;
        Ok((masks, iou))
    }
}

impl Visit for MaskDecoder {
    fn visit(&mut self, f: &mut dyn FnMut(Param<'_>) -> Result<()>) -> Result<()> {
        f(Param::Tensor(
            format!("{}.iou_token.weight", self.path),
            &mut self.iou_token,
        ))?;
        f(Param::Tensor(
            format!("{}.mask_tokens.weight", self.path),
            &mut self.mask_tokens,
        ))?;
        self.transformer.visit(f)?;
        for u in [&mut self.up0, &mut self.up3] {
            f(Param::Tensor(format!("{}.weight", u.path), &mut u.w))?;
            f(Param::Tensor(format!("{}.bias", u.path), &mut u.b))?;
        }
        f(Param::Tensor(
            format!("{}.output_upscaling.1.weight", self.path),
            &mut self.ln1.0,
        ))?;
        f(Param::Tensor(
            format!("{}.output_upscaling.1.bias", self.path),
            &mut self.ln1.1,
        ))?;
        for l in &mut self.hyper0.layers {
            l.visit(f)?;
        }
        for l in &mut self.iou_prediction_head.layers {
            l.visit(f)?;
        }
        Ok(())
    }
}
