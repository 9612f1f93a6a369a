//! SAM prompt encoder: boxes and points (sparse embeddings) and a mask prompt (dense embedding).
//!
//! The mask prompt is SAM's mask input: low-resolution logits (B, 1, 4s, 4s) of a previous prediction, run
//! through `mask_downscaling` (two 2x2 stride-2 convs with LayerNorm2d + GELU, then a 1x1 conv) into a
//! (B, s, s, embed_dim) map that replaces the no-mask embedding. LiteMedSAM's checkpoint carries these weights
//! (`prompt_encoder.mask_downscaling.{0,1,3,4,6}.*`), although it is not known whether it was trained with mask
//! prompts: the interactive study makes it optional.

use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;

use super::common::{self, Param, Visit};
use super::kernels;

/// Hyper-parameters of SAM's prompt encoder.
#[derive(Clone, Debug, PartialEq)]
pub struct PromptEncoderConfig {
    /// Width of the prompt (and image) embeddings.
    pub embed_dim: usize,
    /// Side of the image embedding grid (64 for a 256-pixel input).
    pub image_embedding_size: usize,
    /// Side of the model input in pixels; prompt coordinates are in this frame.
    pub input_image_size: usize,
    /// Hidden channels of the mask downscaling (16 in SAM and LiteMedSAM; the first conv has a quarter).
    pub mask_in_chans: usize,
}

/// `mask_downscaling` = Conv2d(1, c/4, 2, 2) -> LayerNorm2d -> GELU -> Conv2d(c/4, c, 2, 2) -> LayerNorm2d ->
/// GELU -> Conv2d(c, embed_dim, 1). The 2x2 stride-2 convs do not overlap, so each is one matrix product on
/// non-overlapping 2x2 patches, computed channels-last (the layout the decoder wants).
#[derive(Clone, Debug)]
struct MaskDownscaling {
    w0: Tensor, // (4, c1): rows (dy, dx)
    b0: Tensor,
    ln1: (Tensor, Tensor),
    w3: Tensor, // (4 * c1, c2): rows (dy, dx, cin)
    b3: Tensor,
    ln4: (Tensor, Tensor),
    w6: Tensor, // (c2, e)
    b6: Tensor,
}

/// LayerNorm2d's epsilon in SAM.
const LN2D_EPS: f64 = 1e-6;

impl MaskDownscaling {
    fn new(c2: usize, e: usize, vb: VarBuilder) -> Result<Self> {
        let c1 = c2 / 4;
        let ln = |i: &str, c: usize| -> Result<(Tensor, Tensor)> {
            Ok((vb.pp(i).get(c, "weight")?, vb.pp(i).get(c, "bias")?))
        };
        Ok(Self {
            w0: vb
                .pp("0")
                .get((c1, 1, 2, 2), "weight")?
                .reshape((c1, 4))?
                .t()?
                .contiguous()?,
            b0: vb.pp("0").get(c1, "bias")?,
            ln1: ln("1", c1)?,
            w3: vb
                .pp("3")
                .get((c2, c1, 2, 2), "weight")?
                .permute((0, 2, 3, 1))?
                .reshape((c2, 4 * c1))?
                .t()?
                .contiguous()?,
            b3: vb.pp("3").get(c2, "bias")?,
            ln4: ln("4", c2)?,
            w6: vb
                .pp("6")
                .get((e, c2, 1, 1), "weight")?
                .reshape((e, c2))?
                .t()?
                .contiguous()?,
            b6: vb.pp("6").get(e, "bias")?,
        })
    }

    /// (B, 1, 4s, 4s) -> (B, s, s, e).
    fn forward(&self, masks: &Tensor) -> Result<Tensor> {
        let (b, _, h, w) = masks.dims4()?;
        let (c1, c2, e) = (self.w0.dim(1)?, self.w3.dim(1)?, self.w6.dim(1)?);
        let (h1, w1) = (h / 2, w / 2);
        let x = masks
            .reshape((b, h1, 2, w1, 2))?
            .permute((0, 1, 3, 2, 4))?
            .reshape((b * h1 * w1, 4))?;
        let x = kernels::matmul(&x, &self.w0)?.broadcast_add(&self.b0)?;
        let x = common::gelu(&common::layer_norm(&x, &self.ln1.0, &self.ln1.1, LN2D_EPS)?)?;
        let (h2, w2) = (h1 / 2, w1 / 2);
        let x = x
            .reshape((b, h2, 2, w2, 2, c1))?
            .permute((0, 1, 3, 2, 4, 5))?
            .reshape((b * h2 * w2, 4 * c1))?;
        let x = kernels::matmul(&x, &self.w3)?.broadcast_add(&self.b3)?;
        let x = common::gelu(&common::layer_norm(&x, &self.ln4.0, &self.ln4.1, LN2D_EPS)?)?;
        debug_assert_eq!(x.dim(1)?, c2);
        kernels::matmul(&x, &self.w6)?
            .broadcast_add(&self.b6)?
            .reshape((b, h2, w2, e))
    }
}

#[derive(Clone, Debug)]
pub struct PromptEncoder {
    pub cfg: PromptEncoderConfig,
    path: String,
    pe_gauss: Tensor,              // (2, embed_dim/2)
    point_embeddings: Vec<Tensor>, // 4 x (1, embed_dim)
    not_a_point_embed: Tensor,     // (1, embed_dim)
    no_mask_embed: Tensor,         // (1, embed_dim)
    dense_pe_tokens: Tensor,       // (1, s * s, embed_dim)
    mask_downscaling: MaskDownscaling,
}

impl PromptEncoder {
    pub fn new(cfg: &PromptEncoderConfig, vb: VarBuilder) -> Result<Self> {
        let e = cfg.embed_dim;
        let pe_gauss = vb
            .pp("pe_layer")
            .get((2, e / 2), "positional_encoding_gaussian_matrix")?;
        let mut point_embeddings = Vec::new();
        for i in 0..4 {
            point_embeddings.push(vb.pp("point_embeddings").pp(i).get((1, e), "weight")?);
        }
        let not_a_point_embed = vb.pp("not_a_point_embed").get((1, e), "weight")?;
        let no_mask_embed = vb.pp("no_mask_embed").get((1, e), "weight")?;
        let s = cfg.image_embedding_size;
        let dense_pe_tokens = Self::grid_pe(&pe_gauss, s)?.reshape((1, s * s, e))?;
        let mask_downscaling =
            MaskDownscaling::new(cfg.mask_in_chans, e, vb.pp("mask_downscaling"))?;
        Ok(Self {
            cfg: cfg.clone(),
            path: vb.prefix(),
            pe_gauss,
            point_embeddings,
            not_a_point_embed,
            no_mask_embed,
            dense_pe_tokens,
            mask_downscaling,
        })
    }

    /// coords in [0,1], (..., 2) -> (..., embed_dim): [sin, cos](2*pi*(2c-1) G).
    fn pe_encoding(g: &Tensor, coords: &Tensor) -> Result<Tensor> {
        let dims = coords.dims().to_vec();
        let n: usize = dims[..dims.len() - 1].iter().product();
        let c = ((coords.reshape((n, 2))? * 2.0)? - 1.0)?;
        let c = (kernels::matmul(&c, g)? * (2.0 * std::f64::consts::PI))?;
        let out = Tensor::cat(&[c.sin()?, c.cos()?], 1)?;
        let mut od = dims;
        *od.last_mut().expect("rank") = out.dim(1)?;
        out.reshape(od)
    }

    fn grid_pe(g: &Tensor, s: usize) -> Result<Tensor> {
        let mut v = Vec::with_capacity(s * s * 2);
        for y in 0..s {
            for x in 0..s {
                v.push((x as f64 + 0.5) / s as f64);
                v.push((y as f64 + 0.5) / s as f64);
            }
        }
        let coords = Tensor::from_vec(v, (s, s, 2), g.device())?.to_dtype(g.dtype())?;
        Self::pe_encoding(g, &coords)
    }

    /// Dense positional encoding of the image tokens: (1, s * s, embed_dim), channels-last (SAM's
    /// `get_dense_pe()`, which is (1, embed_dim, s, s), permuted).
    pub fn dense_pe_tokens(&self) -> &Tensor {
        &self.dense_pe_tokens
    }

    /// The no-mask embedding (1, embed_dim): SAM's dense prompt embedding, the same on every pixel, when no mask
    /// prompt is given.
    pub fn no_mask_embedding(&self) -> &Tensor {
        &self.no_mask_embed
    }

    /// Mask prompt: low-resolution logits (B, 1, 4s, 4s) -> dense embedding (B, s, s, embed_dim), channels-last.
    pub fn embed_masks(&self, masks: &Tensor) -> Result<Tensor> {
        let m = 4 * self.cfg.image_embedding_size;
        let (_, c, h, w) = masks.dims4()?;
        if c != 1 || h != m || w != m {
            candle_core::bail!(
                "a mask prompt must be (B, 1, {m}, {m}), got {:?}",
                masks.dims()
            );
        }
        self.mask_downscaling
            .forward(&common::to_dtype(masks, self.pe_gauss.dtype())?)
    }

    fn coords_pe(&self, coords: &Tensor) -> Result<Tensor> {
        let c = (coords.to_dtype(self.pe_gauss.dtype())? + 0.5)? / self.cfg.input_image_size as f64;
        Self::pe_encoding(&self.pe_gauss, &c?)
    }

    /// Box corners (B, 4) -> (B, 2, embed_dim).
    pub fn embed_boxes(&self, boxes: &Tensor) -> Result<Tensor> {
        let b = boxes.dim(0)?;
        let pe = self.coords_pe(&boxes.reshape((b, 2, 2))?)?;
        let add = Tensor::cat(&[&self.point_embeddings[2], &self.point_embeddings[3]], 0)?
            .unsqueeze(0)?;
        pe.broadcast_add(&add)
    }

    /// Points (B, N, 2) with labels (B, N) (1 foreground, 0 background, -1 padding) -> (B, N(+1), e).
    pub fn embed_points(&self, points: &Tensor, labels: &Tensor, pad: bool) -> Result<Tensor> {
        let dt = self.pe_gauss.dtype();
        let (b, _, _) = points.dims3()?;
        let mut points = points.to_dtype(dt)?;
        let mut labels = labels.to_dtype(dt)?;
        if pad {
            points = Tensor::cat(
                &[&points, &Tensor::zeros((b, 1, 2), dt, points.device())?],
                1,
            )?;
            // The padding point sits at -0.5 so that after the +0.5 shift it is (0, 0), as in SAM.
            points = points.broadcast_sub(&Tensor::cat(
                &[
                    &Tensor::zeros((1, points.dim(1)? - 1, 2), dt, points.device())?,
                    &Tensor::full(0.5, (1, 1, 2), points.device())?.to_dtype(dt)?,
                ],
                1,
            )?)?;
            labels = Tensor::cat(
                &[
                    &labels,
                    &Tensor::full(-1.0, (b, 1), labels.device())?.to_dtype(dt)?,
                ],
                1,
            )?;
        }
        let pe = self.coords_pe(&points)?;
        let l = labels.unsqueeze(2)?;
        let is = |v: f64| -> Result<Tensor> { l.eq(v)?.to_dtype(dt) };
        let (mneg, m0, m1) = (is(-1.0)?, is(0.0)?, is(1.0)?);
        let keep = (1.0 - &mneg)?;
        let e = pe.broadcast_mul(&keep)?;
        let e = e.broadcast_add(&mneg.broadcast_mul(&self.not_a_point_embed.unsqueeze(0)?)?)?;
        let e = e.broadcast_add(&m0.broadcast_mul(&self.point_embeddings[0].unsqueeze(0)?)?)?;
        e.broadcast_add(&m1.broadcast_mul(&self.point_embeddings[1].unsqueeze(0)?)?)
    }

    /// Sparse embeddings (B, N, e) for points and/or boxes.
    pub fn sparse_embeddings(
        &self,
        points: Option<(&Tensor, &Tensor)>,
        boxes: Option<&Tensor>,
    ) -> Result<Tensor> {
        let mut parts = Vec::new();
        if let Some((p, l)) = points {
            parts.push(self.embed_points(p, l, boxes.is_none())?);
        }
        if let Some(b) = boxes {
            parts.push(self.embed_boxes(b)?);
        }
        if parts.is_empty() {
            return Err(candle_core::Error::Msg(
                "a prompt needs a box or points".into(),
            ));
        }
        Tensor::cat(&parts, 1)
    }
}

impl Visit for PromptEncoder {
    fn visit(&mut self, f: &mut dyn FnMut(Param<'_>) -> Result<()>) -> Result<()> {
        for (i, t) in self.point_embeddings.iter_mut().enumerate() {
            f(Param::Tensor(
                format!("{}.point_embeddings.{i}.weight", self.path),
                t,
            ))?;
        }
        f(Param::Tensor(
            format!("{}.not_a_point_embed.weight", self.path),
            &mut self.not_a_point_embed,
        ))?;
        f(Param::Tensor(
            format!("{}.no_mask_embed.weight", self.path),
            &mut self.no_mask_embed,
        ))
    }
}
