//! SAM's TwoWayTransformer (tokens attend to the image embedding and back).

use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;

use super::common::{LayerNorm, Linear, Param, Visit};
use super::lora::Adapter;
use candle_core::Module;

/// Hyper-parameters of SAM's two-way transformer.
#[derive(Clone, Debug, PartialEq)]
pub struct TwoWayTransformerConfig {
    /// Two-way attention blocks.
    pub depth: usize,
    /// Token width.
    pub embedding_dim: usize,
    /// Attention heads.
    pub num_heads: usize,
    /// Hidden width of the token MLPs.
    pub mlp_dim: usize,
    /// Internal width divisor of the cross-attention layers.
    pub attention_downsample_rate: usize,
}

/// Multi-head attention with projections to a (possibly downsampled) internal width.
#[derive(Clone, Debug)]
pub struct Attention {
    pub q_proj: Linear,
    pub k_proj: Linear,
    pub v_proj: Linear,
    pub out_proj: Linear,
    num_heads: usize,
}

impl Attention {
    pub fn new(dim: usize, num_heads: usize, downsample: usize, vb: VarBuilder) -> Result<Self> {
        let internal = dim / downsample;
        Ok(Self {
            q_proj: Linear::new(dim, internal, vb.pp("q_proj"))?,
            k_proj: Linear::new(dim, internal, vb.pp("k_proj"))?,
            v_proj: Linear::new(dim, internal, vb.pp("v_proj"))?,
            out_proj: Linear::new(internal, dim, vb.pp("out_proj"))?,
            num_heads,
        })
    }

    pub fn forward(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        ad: Option<&Adapter>,
    ) -> Result<Tensor> {
        let q = self.q_proj.forward(q, ad)?;
        let k = self.k_proj.forward(k, ad)?;
        let v = self.v_proj.forward(v, ad)?;
        let out = super::kernels::attention(&q, &k, &v, self.num_heads)?;
        self.out_proj.forward(&out, ad)
    }
}

impl Visit for Attention {
    fn visit(&mut self, f: &mut dyn FnMut(Param<'_>) -> Result<()>) -> Result<()> {
        self.q_proj.visit(f)?;
        self.k_proj.visit(f)?;
        self.v_proj.visit(f)?;
        self.out_proj.visit(f)
    }
}

#[derive(Clone, Debug)]
struct TwoWayAttentionBlock {
    self_attn: Attention,
    norm1: LayerNorm,
    cross_attn_token_to_image: Attention,
    norm2: LayerNorm,
    lin1: Linear,
    lin2: Linear,
    norm3: LayerNorm,
    norm4: LayerNorm,
    cross_attn_image_to_token: Attention,
    skip_first_layer_pe: bool,
}

impl TwoWayAttentionBlock {
    fn new(
        cfg: &TwoWayTransformerConfig,
        skip_first_layer_pe: bool,
        vb: VarBuilder,
    ) -> Result<Self> {
        let (d, h, r) = (
            cfg.embedding_dim,
            cfg.num_heads,
            cfg.attention_downsample_rate,
        );
        Ok(Self {
            self_attn: Attention::new(d, h, 1, vb.pp("self_attn"))?,
            norm1: LayerNorm::new(d, 1e-5, vb.pp("norm1"))?,
            cross_attn_token_to_image: Attention::new(d, h, r, vb.pp("cross_attn_token_to_image"))?,
            norm2: LayerNorm::new(d, 1e-5, vb.pp("norm2"))?,
            lin1: Linear::new(d, cfg.mlp_dim, vb.pp("mlp").pp("lin1"))?,
            lin2: Linear::new(cfg.mlp_dim, d, vb.pp("mlp").pp("lin2"))?,
            norm3: LayerNorm::new(d, 1e-5, vb.pp("norm3"))?,
            norm4: LayerNorm::new(d, 1e-5, vb.pp("norm4"))?,
            cross_attn_image_to_token: Attention::new(d, h, r, vb.pp("cross_attn_image_to_token"))?,
            skip_first_layer_pe,
        })
    }

    fn forward(
        &self,
        queries: &Tensor,
        keys: &Tensor,
        query_pe: &Tensor,
        key_pe: &Tensor,
        ad: Option<&Adapter>,
    ) -> Result<(Tensor, Tensor)> {
        let queries = if self.skip_first_layer_pe {
            self.self_attn.forward(queries, queries, queries, ad)?
        } else {
            let q = (queries + query_pe)?;
            (queries + self.self_attn.forward(&q, &q, queries, ad)?)?
        };
        let queries = self.norm1.forward(&queries)?;
        let q = (&queries + query_pe)?;
        let k = (keys + key_pe)?;
        let queries = (&queries + self.cross_attn_token_to_image.forward(&q, &k, keys, ad)?)?;
        let queries = self.norm2.forward(&queries)?;
        let mlp = self
            .lin2
            .forward(&self.lin1.forward(&queries, ad)?.relu()?, ad)?;
        let queries = self.norm3.forward(&(queries + mlp)?)?;
        let q = (&queries + query_pe)?;
        let attn = self
            .cross_attn_image_to_token
            .forward(&k, &q, &queries, ad)?;
        let keys = self.norm4.forward(&(keys + attn)?)?;
        Ok((queries, keys))
    }
}

impl Visit for TwoWayAttentionBlock {
    fn visit(&mut self, f: &mut dyn FnMut(Param<'_>) -> Result<()>) -> Result<()> {
        self.self_attn.visit(f)?;
        self.norm1.visit(f)?;
        self.cross_attn_token_to_image.visit(f)?;
        self.norm2.visit(f)?;
        self.lin1.visit(f)?;
        self.lin2.visit(f)?;
        self.norm3.visit(f)?;
        self.norm4.visit(f)?;
        self.cross_attn_image_to_token.visit(f)
    }
}

#[derive(Clone, Debug)]
pub struct TwoWayTransformer {
    layers: Vec<TwoWayAttentionBlock>,
    final_attn_token_to_image: Attention,
    norm_final_attn: LayerNorm,
}

impl TwoWayTransformer {
    pub fn new(cfg: &TwoWayTransformerConfig, vb: VarBuilder) -> Result<Self> {
        let mut layers = Vec::new();
        for i in 0..cfg.depth {
            layers.push(TwoWayAttentionBlock::new(
                cfg,
                i == 0,
                vb.pp("layers").pp(i),
            )?);
        }
        Ok(Self {
            layers,
            final_attn_token_to_image: Attention::new(
                cfg.embedding_dim,
                cfg.num_heads,
                cfg.attention_downsample_rate,
                vb.pp("final_attn_token_to_image"),
            )?,
            norm_final_attn: LayerNorm::new(cfg.embedding_dim, 1e-5, vb.pp("norm_final_attn"))?,
        })
    }

    /// image (B, HW, C) tokens, image_pe (B or 1, HW, C), points (B, N, C) -> (queries, keys).
    pub fn forward(
        &self,
        image: &Tensor,
        image_pe: &Tensor,
        points: &Tensor,
        ad: Option<&Adapter>,
    ) -> Result<(Tensor, Tensor)> {
        let mut queries = points.clone();
        let mut keys = image.clone();
        for l in &self.layers {
            (queries, keys) = l.forward(&queries, &keys, points, image_pe, ad)?;
        }
        let q = (&queries + points)?;
        let k = keys.broadcast_add(image_pe)?;
        let attn = self.final_attn_token_to_image.forward(&q, &k, &keys, ad)?;
        let queries = self.norm_final_attn.forward(&(queries + attn)?)?;
        Ok((queries, keys))
    }
}

impl Visit for TwoWayTransformer {
    fn visit(&mut self, f: &mut dyn FnMut(Param<'_>) -> Result<()>) -> Result<()> {
        for l in &mut self.layers {
            l.visit(f)?;
        }
        self.final_attn_token_to_image.visit(f)?;
        self.norm_final_attn.visit(f)
    }
}
