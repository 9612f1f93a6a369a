//! The models behind the page: LiteMedSAM, the two arms (EvoSAM's experts with their matcher, and the
//! comparison), the encoder pass that prepares a case once, and the decoder pass that answers each prompt.

use candle_core::{DType, Device, Tensor};

use super::cases::StudyCase;
use crate::embed_cache::EmbeddingCache;
use crate::model::{LiteMedSam, Prompts};
use crate::preprocess::{postprocess_logits, to_model_input, Image, PrepMeta};
use crate::strategy::evosam::{pooled_features, Choice, ExpertSet};
use crate::{Error, Result};

/// One arm of the study: a label for the logs and an expert set (None = the base model).
pub struct Arm {
    /// Name in the logs ("evosam", "base", or the comparison folder's name).
    pub label: String,
    /// Experts routed by their matcher; None = the frozen base model.
    pub experts: Option<ExpertSet>,
}

/// A prompt in original pixel coordinates.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Prompt {
    /// x0, y0, x1, y1.
    Box([f64; 4]),
    /// x, y, label (1 foreground, 0 background).
    Click([f64; 2], u8),
}

/// A case ready for prompting: its frame, frozen embedding, display image and the expert its arm routes it to.
pub struct Prepared {
    /// How the original image maps into the model frame.
    pub meta: PrepMeta,
    /// (1, C, s, s) frozen embedding.
    pub emb: Tensor,
    /// The image as PNG (what the page shows).
    pub png: Vec<u8>,
    /// The arm's routing decision (None = base model, no expert set).
    pub choice: Option<Choice>,
    /// Its name for the logs.
    pub expert_name: String,
}

/// The decoder's answer to the prompts of a case.
pub struct MaskOut {
    /// (1, 1, S, S) low-resolution logits (the next step's mask prompt).
    pub logits: Tensor,
    /// The thresholded mask at original resolution, row-major.
    pub mask: Vec<bool>,
}

/// LiteMedSAM + the two arms.
pub struct Engine {
    /// The frozen base model.
    pub model: LiteMedSam,
    /// Arm 0 = EvoSAM, arm 1 = the comparison.
    pub arms: [Arm; 2],
    /// The on-disk embedding cache (None: always encode).
    pub cache: Option<EmbeddingCache>,
    /// Pass the previous step's logits as SAM's mask prompt.
    pub mask_prompt: bool,
}

impl Engine {
    /// Decode, encode (or read from the cache) and route one case for `arm`.
    pub fn prepare(&self, case: &StudyCase, arm: usize) -> Result<Prepared> {
        let img = case.decode()?;
        for (what, m) in [("ground truth", &case.gt), ("field of view", &case.fov)] {
            if let Some(m) = m {
                if (m.h, m.w) != (img.height, img.width) {
                    return Err(Error::input(format!(
                        "case {}: the {what} is {}x{} but the image is {}x{}",
                        case.id, m.w, m.h, img.width, img.height
                    )));
                }
            }
        }
        let (x, meta) = to_model_input(&img, self.model.input_size())?;
        let x = x.to_device(&self.model.device())?.unsqueeze(0)?;
        let emb = match &self.cache {
            Some(c) => {
                let key = content_key(&x)?;
                c.get_or_compute(&self.model, &key, &x.squeeze(0)?)?
                    .unsqueeze(0)?
            }
            None => self.model.encode(&x)?,
        };
        let emb = emb.to_dtype(DType::F32)?;
        let (choice, expert_name) = match &self.arms[arm].experts {
            None => (None, "base".to_string()),
            Some(set) if set.is_empty() => (None, "base".to_string()),
            Some(set) => {
                let choice = set.decide(&pooled_features(&emb)?[0])?;
                let name = set.name_for(&choice);
                (Some(choice), name)
            }
        };
        Ok(Prepared {
            meta,
            emb,
            png: display_png(&img)?,
            choice,
            expert_name,
        })
    }

    /// One prompt-encoder + mask-decoder pass on the frozen embedding. `mask_in`: the previous step's logits
    /// (used when the engine passes mask prompts). No prompt: an empty mask, no decoder pass.
    pub fn decode(
        &self,
        p: &Prepared,
        arm: usize,
        prompts: &[Prompt],
        mask_in: Option<&Tensor>,
    ) -> Result<Option<MaskOut>> {
        let dev = self.model.device();
        let s = p.meta.scale;
        let mut out = Prompts::default();
        if let Some([x0, y0, x1, y1]) = prompts.iter().rev().find_map(|q| match q {
            Prompt::Box(b) => Some(*b),
            _ => None,
        }) {
            out = Prompts::from_box_slice(
                &[crate::preprocess::scale_box([x0, y0, x1, y1], &p.meta)],
                &dev,
            )?;
        }
        let (mut xy, mut lab) = (Vec::new(), Vec::new());
        for q in prompts {
            if let Prompt::Click([x, y], l) = q {
                xy.extend([(x * s) as f32, (y * s) as f32]);
                lab.push(*l as f32);
            }
        }
        if !lab.is_empty() {
            let n = lab.len();
            out.points = Some((
                Tensor::from_vec(xy, (1, n, 2), &dev)?,
                Tensor::from_vec(lab, (1, n), &dev)?,
            ));
        }
        if out.boxes.is_none() && out.points.is_none() {
            return Ok(None);
        }
        if self.mask_prompt {
            out.masks = mask_in.cloned();
        }
        let adapter = match (&self.arms[arm].experts, &p.choice) {
            (Some(set), Some(c)) => set.adapter_for(c),
            _ => None,
        };
        let logits = self.model.decode(&p.emb, &out, adapter)?.logits.detach();
        let full = postprocess_logits(&logits.get(0)?, &p.meta)?;
        let mask: Vec<bool> = full
            .flatten_all()?
            .to_dtype(DType::F32)?
            .to_vec1::<f32>()?
            .into_iter()
            .map(|v| v > 0.0)
            .collect();
        Ok(Some(MaskOut { logits, mask }))
    }
}

/// The embedding-cache key of a model input: sha256 of its shape and f32 values (as the runner's cases).
fn content_key(x: &Tensor) -> Result<String> {
    use sha2::{Digest, Sha256};
    let x = x.squeeze(0)?.to_device(&Device::Cpu)?.contiguous()?;
    let mut h = Sha256::new();
    h.update(format!("{:?}", x.dims()).as_bytes());
    for v in x.flatten_all()?.to_vec1::<f32>()? {
        h.update(v.to_le_bytes());
    }
    Ok(hex::encode(h.finalize()))
}

/// The image as an 8-bit RGB PNG (min-max scaled, as the model sees it).
fn display_png(img: &Image) -> Result<Vec<u8>> {
    let (lo, hi) = img
        .data
        .iter()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &v| {
            (a.min(v), b.max(v))
        });
    let span = (hi - lo).max(1e-8);
    let px: Vec<u8> = img
        .data
        .iter()
        .map(|&v| ((v - lo) / span * 255.0).round().clamp(0.0, 255.0) as u8)
        .collect();
    let rgb = image::RgbImage::from_raw(img.width as u32, img.height as u32, px)
        .ok_or_else(|| Error::internal("display image buffer size"))?;
    encode_png(image::DynamicImage::ImageRgb8(rgb))
}

fn encode_png(img: image::DynamicImage) -> Result<Vec<u8>> {
    let mut buf = std::io::Cursor::new(Vec::new());
    img.write_to(&mut buf, image::ImageFormat::Png)
        .map_err(|e| Error::internal(format!("PNG encoding: {e}")))?;
    Ok(buf.into_inner())
}

/// The mask as an RGBA PNG overlay: translucent fill, opaque outline, transparent background.
pub fn overlay_png(mask: &[bool], w: usize, h: usize) -> Result<Vec<u8>> {
    let mut px = vec![0u8; w * h * 4];
    let at = |x: usize, y: usize| mask[y * w + x];
    for y in 0..h {
        for x in 0..w {
            if !at(x, y) {
                continue;
            }
            let edge = x == 0
                || y == 0
                || x + 1 == w
                || y + 1 == h
                || !at(x - 1, y)
                || !at(x + 1, y)
                || !at(x, y - 1)
                || !at(x, y + 1);
            let o = (y * w + x) * 4;
            px[o..o + 4].copy_from_slice(if edge {
                &[255, 215, 0, 255]
            } else {
                &[30, 144, 255, 110]
            });
        }
    }
    let rgba = image::RgbaImage::from_raw(w as u32, h as u32, px)
        .ok_or_else(|| Error::internal("overlay buffer size"))?;
    encode_png(image::DynamicImage::ImageRgba8(rgba))
}

/// Dice of a mask against the case's ground truth (inside its field of view), None without ground truth.
pub fn dice_of(mask: Option<&[bool]>, case: &StudyCase, meta: &PrepMeta) -> Option<f64> {
    let gt = case.gt.as_ref()?;
    let empty;
    let pred = match mask {
        Some(m) => m,
        None => {
            empty = vec![false; meta.orig_h * meta.orig_w];
            &empty
        }
    };
    Some(crate::data::dice(pred, gt, case.fov.as_ref()))
}

/// An all-empty mask of a case's size.
pub fn empty_mask(meta: &PrepMeta) -> Vec<bool> {
    vec![false; meta.orig_h * meta.orig_w]
}
