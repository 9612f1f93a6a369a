//! SAM's TwoWayTransformer (tokens attend to the image embedding and back).

use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;

use super::common::{LayerNorm, Linear, Param, Visit};
use super::kernels;
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
///
/// The decoder's cross-attentions pair a few prompt tokens (n, 7 with a box) with the 4096 image tokens, and
/// projecting the image side costs far more than the attention itself. When the few side's tokens times the heads
/// are fewer than the internal width, the projections of the image side are absorbed into the token side instead
/// (the same products, associated the other way; the numbers agree to rounding):
/// - few queries (token to image): the score of query q and head h with key x is `(W_k,h^T q_h) . x` (the key
///   bias adds the same to every score of a row, which the softmax ignores), and the output is
///   `W_v,h (sum_x p x) + b_v,h` because each row of probabilities sums to 1, so the image tokens are read by one
///   attention of the `heads x n` absorbed queries, at full width;
/// - few keys (image to token): the score of image token x with key k is `x . (W_q,h^T k_h) + b_q,h . k_h`, and
///   the output projection folds into the values, `U_hk = W_o,h v_h + b_o / heads`, so each image token needs only
///   `heads x n` dot products and a weighted sum of as many rows ([`kernels::grouped_attention`]).
///
/// Either way no (tokens x internal) projection of the image is made, and the weight gradients of the absorbed
/// projections come from small token-side products.
#[derive(Clone, Debug)]
pub struct Attention {
    pub q_proj: Linear,
    pub k_proj: Linear,
    pub v_proj: Linear,
    pub out_proj: Linear,
    num_heads: usize,
}

/// Absorb the projections only when the other side has at least this many tokens (below it, the extra small
/// products cost more than they save).
const ABSORB_MIN_TOKENS: usize = 256;

/// Which way [`Attention::forward`] computes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum AttnPath {
    /// Project queries, keys and values, attend, project out.
    Standard,
    /// Few queries over many keys: the key and value projections absorbed into the queries.
    FewQueries,
    /// Many queries over few keys: the query and output projections absorbed into the keys and values.
    FewKeys,
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

    /// The cheapest way for `nq` queries over `nk` keys.
    pub(crate) fn path(&self, nq: usize, nk: usize) -> AttnPath {
        let internal = self.q_proj.out_dim();
        if nk >= ABSORB_MIN_TOKENS && self.num_heads * nq < internal {
            AttnPath::FewQueries
        } else if nq >= ABSORB_MIN_TOKENS && self.num_heads * nk < internal {
            AttnPath::FewKeys
        } else {
            AttnPath::Standard
        }
    }

    /// q (B, nq, C), k and v (B, nk, C) -> (B, nq, C).
    pub fn forward(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        ad: Option<&Adapter>,
    ) -> Result<Tensor> {
        let path = self.path(q.dim(1)?, k.dim(1)?);
        self.forward_by(path, q, k, v, ad)
    }

    /// [`Attention::forward`] along a chosen path (every path gives the same numbers up to rounding).
    pub(crate) fn forward_by(
        &self,
        path: AttnPath,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        ad: Option<&Adapter>,
    ) -> Result<Tensor> {
        match path {
            AttnPath::Standard => {
                let q = self.q_proj.forward(q, ad)?;
                let k = self.k_proj.forward(k, ad)?;
                let v = self.v_proj.forward(v, ad)?;
                let out = kernels::attention(&q, &k, &v, self.num_heads)?;
                self.out_proj.forward(&out, ad)
            }
            AttnPath::FewQueries => self.few_queries(q, k, v, ad),
            AttnPath::FewKeys => self.few_keys(q, k, v, ad),
        }
    }

    /// (out, in) weight -> (1, heads, d, in): head h's rows.
    fn heads_of(&self, w: &Tensor) -> Result<Tensor> {
        let (o, i) = w.dims2()?;
        w.reshape((1, self.num_heads, o / self.num_heads, i))
    }

    /// (B, n, internal) -> (B, heads, n, d).
    fn split(&self, x: &Tensor) -> Result<Tensor> {
        let (b, n, c) = x.dims3()?;
        x.reshape((b, n, self.num_heads, c / self.num_heads))?
            .transpose(1, 2)?
            .contiguous()
    }

    fn few_queries(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        ad: Option<&Adapter>,
    ) -> Result<Tensor> {
        let (b, nq, dim) = q.dims3()?;
        let h = self.num_heads;
        let qh = self.split(&self.q_proj.forward(q, ad)?)?; // (B, h, nq, d)
        let d = qh.dim(3)?;
        let wk = self.heads_of(&self.k_proj.effective_weight(ad)?)?; // (1, h, d, C)
        let qt = kernels::broadcast_matmul(&qh, &wk)?.reshape((b, h * nq, dim))?;
        let m = kernels::attention_scaled(&qt, k, v, 1, 1.0 / (d as f64).sqrt())?;
        let wv_t = self
            .heads_of(&self.v_proj.effective_weight(ad)?)?
            .transpose(2, 3)?; // (1, h, C, d)
        let out = kernels::broadcast_matmul(&m.reshape((b, h, nq, dim))?, &wv_t)?
            .transpose(1, 2)?
            .reshape((b, nq, h * d))?;
        let out = match &self.v_proj.bias {
            Some(bv) => out.broadcast_add(bv)?,
            None => out,
        };
        self.out_proj.forward(&out, ad)
    }

    fn few_keys(&self, q: &Tensor, k: &Tensor, v: &Tensor, ad: Option<&Adapter>) -> Result<Tensor> {
        let (b, nk, dim) = k.dims3()?;
        let h = self.num_heads;
        let kh = self.split(&self.k_proj.forward(k, ad)?)?; // (B, h, nk, d)
        let d = kh.dim(3)?;
        let scale = 1.0 / (d as f64).sqrt();
        let wq = self.heads_of(&self.q_proj.effective_weight(ad)?)?; // (1, h, d, C)
        let kt = kernels::broadcast_matmul(&kh, &wq)?; // (B, h, nk, C)
        let off = match &self.q_proj.bias {
            Some(bq) => kh
                .broadcast_mul(&bq.reshape((1, h, 1, d))?)?
                .sum_keepdim(3)?,
            None => kh.narrow(3, 0, 1)?.zeros_like()?,
        };
        let kc = (Tensor::cat(&[&kt, &off], 3)? * scale)?.reshape((b, h * nk, dim + 1))?;
        let vh = self.split(&self.v_proj.forward(v, ad)?)?; // (B, h, nk, d)
                                                            // W_o's columns of head h, transposed: (1, h, d, C).
        let wo_t = self
            .out_proj
            .effective_weight(ad)?
            .reshape((dim, h, d))?
            .permute((1, 2, 0))?
            .unsqueeze(0)?;
        let u = kernels::broadcast_matmul(&vh, &wo_t)?;
        let u = match &self.out_proj.bias {
            Some(bo) => u.broadcast_add(&(bo / h as f64)?)?,
            None => u,
        };
        kernels::grouped_attention(q, &kc, &u.reshape((b, h * nk, dim))?, h)
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
        let k = kernels::add(keys, key_pe)?;
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
        let keys = self.norm4.forward(&kernels::add(keys, &attn)?)?;
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
        let k = kernels::add(&keys, image_pe)?;
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

#[cfg(test)]
mod tests;
