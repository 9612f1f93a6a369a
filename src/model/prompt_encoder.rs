//! SAM prompt encoder (boxes and points; no mask input, which LiteMedSAM does not use).

use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;

use super::common::{Param, Visit};

/// Hyper-parameters of SAM's prompt encoder.
#[derive(Clone, Debug, PartialEq)]
pub struct PromptEncoderConfig {
    /// Width of the prompt (and image) embeddings.
    pub embed_dim: usize,
    /// Side of the image embedding grid (64 for a 256-pixel input).
    pub image_embedding_size: usize,
    /// Side of the model input in pixels; prompt coordinates are in this frame.
    pub input_image_size: usize,
}

#[derive(Clone, Debug)]
pub struct PromptEncoder {
    pub cfg: PromptEncoderConfig,
    path: String,
    pe_gauss: Tensor,              // (2, embed_dim/2)
    point_embeddings: Vec<Tensor>, // 4 x (1, embed_dim)
    not_a_point_embed: Tensor,     // (1, embed_dim)
    no_mask_embed: Tensor,         // (1, embed_dim)
    dense_pe: Tensor,              // (1, embed_dim, s, s)
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
        let dense_pe = Self::grid_pe(&pe_gauss, cfg.image_embedding_size)?;
        Ok(Self {
            cfg: cfg.clone(),
            path: vb.prefix(),
            pe_gauss,
            point_embeddings,
            not_a_point_embed,
            no_mask_embed,
            dense_pe,
        })
    }

    /// coords in [0,1], (..., 2) -> (..., embed_dim): [sin, cos](2*pi*(2c-1) G).
    fn pe_encoding(g: &Tensor, coords: &Tensor) -> Result<Tensor> {
        let dims = coords.dims().to_vec();
        let n: usize = dims[..dims.len() - 1].iter().product();
        let c = ((coords.reshape((n, 2))? * 2.0)? - 1.0)?;
        let c = (c.matmul(g)? * (2.0 * std::f64::consts::PI))?;
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
        Self::pe_encoding(g, &coords)?
            .permute((2, 0, 1))?
            .unsqueeze(0)?
            .contiguous()
    }

    /// Dense positional encoding (1, embed_dim, s, s).
    pub fn get_dense_pe(&self) -> &Tensor {
        &self.dense_pe
    }

    /// Dense prompt embedding: the no-mask embedding broadcast to (B, embed_dim, s, s).
    pub fn dense_embeddings(&self, b: usize) -> Result<Tensor> {
        let s = self.cfg.image_embedding_size;
        self.no_mask_embed
            .reshape((1, self.cfg.embed_dim, 1, 1))?
            .broadcast_as((b, self.cfg.embed_dim, s, s))
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
