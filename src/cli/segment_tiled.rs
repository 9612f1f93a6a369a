//! `evosam segment --tile SIZE[,OVERLAP]`: one large image segmented at native resolution, tile by tile, with
//! the tiles' logits blended back into one mask ([`evosam::data::tiling`]).

use candle_core::Device;

use super::segment::{load_experts, parse_box, Args};
use evosam::data::tiling::{crop_image, grid, Stitcher, TileRect};
use evosam::model::{LiteMedSam, Prompts};
use evosam::preprocess::{
    load_image, mask_u8, postprocess_logits, scale_box, to_model_input, validate_box, PrepMeta,
};
use evosam::weights::resolve_weights;
use evosam::{Error, Result};

/// Margin (pixels) between a tile's border and its box prompt.
const MARGIN: f64 = 4.0;
/// Default overlap of `--tile SIZE`.
const DEFAULT_OVERLAP: usize = 32;

/// Parse `SIZE[,OVERLAP]` (16 <= SIZE, OVERLAP < SIZE).
pub fn parse_tile(s: &str) -> Result<(usize, usize)> {
    let bad = |why: &str| Error::input(format!("--tile `{s}`: {why}"));
    let v: Vec<&str> = s.split(',').map(str::trim).collect();
    let num = |t: &str| -> Result<usize> {
        t.parse::<usize>()
            .map_err(|_| bad(&format!("`{t}` is not a whole number")))
    };
    let (size, overlap) = match v.as_slice() {
        [a] => (num(a)?, DEFAULT_OVERLAP.min(num(a)?.saturating_sub(1))),
        [a, b] => (num(a)?, num(b)?),
        _ => return Err(bad("expected SIZE or SIZE,OVERLAP")),
    };
    if size < 16 {
        return Err(bad("SIZE must be >= 16 pixels"));
    }
    if overlap >= size {
        return Err(bad("OVERLAP must be smaller than SIZE"));
    }
    Ok((size, overlap))
}

/// The box prompt of one tile in tile pixels: the tile minus the margin, clipped to the user's box (None when
/// the box misses the tile).
fn tile_box(r: &TileRect, user: Option<[f64; 4]>) -> Option<[f64; 4]> {
    let m = MARGIN.min((r.w.min(r.h) as f64 - 1.0) / 2.0).max(0.0);
    let mut b = [m, m, r.w as f64 - 1.0 - m, r.h as f64 - 1.0 - m];
    if let Some([x0, y0, x1, y1]) = user {
        let (ox, oy) = (r.x0 as f64, r.y0 as f64);
        b = [
            (x0 - ox).max(0.0),
            (y0 - oy).max(0.0),
            (x1 - ox).min(r.w as f64 - 1.0),
            (y1 - oy).min(r.h as f64 - 1.0),
        ];
        if b[0] >= b[2] || b[1] >= b[3] {
            return None;
        }
    }
    Some(b)
}

/// Segment `args.image` in tiles and write the mask.
pub fn run(args: &Args, size: usize, overlap: usize) -> Result<()> {
    if !args.points.is_empty() || args.mask_in.is_some() || args.logits.is_some() {
        return Err(Error::input(
            "--tile prompts every tile with itself: it cannot be combined with --point, --mask-in or --logits",
        ));
    }
    let img = load_image(&args.image)?;
    let (h, w) = (img.height, img.width);
    let user = match &args.bbox {
        Some(bs) => {
            let b = parse_box(bs)?;
            validate_box(b, &PrepMeta::new(h, w, 256))
                .map_err(|e| Error::input(format!("{}: {e}", args.image.display())))?;
            Some(b)
        }
        None => None,
    };
    let dev = Device::Cpu;
    let weights = resolve_weights(args.weights.as_deref())?;
    let model = LiteMedSam::from_pth(&weights, &dev)?;
    let experts = load_experts(args, &model, &weights)?;
    let fixed = match (&experts, &args.expert) {
        (Some(set), Some(name)) => {
            Some(set.names.iter().position(|n| n == name).ok_or_else(|| {
                Error::input(format!(
                    "--expert `{name}`: not in the expert folder (experts: {})",
                    set.names.join(", ")
                ))
            })?)
        }
        _ => None,
    };
    let rects = grid(h, w, size, overlap);
    let mut st = Stitcher::new(h, w, overlap);
    let mut routed: std::collections::BTreeMap<String, usize> = Default::default();
    for r in &rects {
        let Some(b) = tile_box(r, user) else {
            // outside the user's box: background
            st.add(r, &vec![-20.0; r.w * r.h])?;
            continue;
        };
        let (x, meta) = to_model_input(&crop_image(&img, r), model.input_size())?;
        let emb = model.encode(&x.unsqueeze(0)?)?;
        let ad = match &experts {
            Some(set) if !set.is_empty() => match fixed {
                Some(k) => {
                    *routed.entry(set.names[k].clone()).or_default() += 1;
                    Some(&set.adapters[k])
                }
                None => {
                    let pooled = evosam::strategy::evosam::pooled_features(&emb)?;
                    let c = set.decide(&pooled[0])?;
                    *routed.entry(set.name_for(&c)).or_default() += 1;
                    set.adapter_for(&c)
                }
            },
            _ => None,
        };
        let prompts = Prompts::from_box_slice(&[scale_box(b, &meta)], &dev)?;
        let out = model.decode(&emb, &prompts, ad)?;
        let full = postprocess_logits(&out.logits.get(0)?, &meta)?;
        st.add(r, &full.flatten_all()?.to_vec1::<f32>()?)?;
    }
    let logits = st.finish()?;
    let t = candle_core::Tensor::from_vec(logits, (h, w), &dev)?;
    let mask = mask_u8(&t)?;
    let fg = mask.iter().filter(|&&v| v > 0).count();
    let png = image::GrayImage::from_raw(w as u32, h as u32, mask)
        .ok_or_else(|| Error::internal("mask buffer size"))?;
    png.save(&args.out)
        .map_err(|e| Error::input(format!("{}: cannot write mask: {e}", args.out.display())))?;
    if !routed.is_empty() {
        let v: Vec<String> = routed.iter().map(|(k, n)| format!("{k} {n}")).collect();
        eprintln!("experts per tile: {}", v.join(", "));
    }
    eprintln!(
        "{} ({} tiles of {size} px, overlap {overlap}{}): {w}x{h} mask, {fg} foreground pixels ({:.1}%) -> {}",
        args.image.display(),
        rects.len(),
        if user.is_some() { ", clipped to the box" } else { "" },
        100.0 * fg as f64 / (w * h) as f64,
        args.out.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tile_argument_and_boxes() {
        assert_eq!(parse_tile("256").unwrap(), (256, 32));
        assert_eq!(parse_tile("384, 64").unwrap(), (384, 64));
        assert_eq!(parse_tile("20").unwrap(), (20, 19));
        for bad in ["", "8", "64,64", "a,1", "64,2,3", "-5"] {
            let e = parse_tile(bad).unwrap_err();
            assert_eq!(e.exit_code(), 2, "{bad}");
        }
        let r = TileRect {
            x0: 100,
            y0: 50,
            w: 64,
            h: 64,
        };
        assert_eq!(tile_box(&r, None), Some([4.0, 4.0, 59.0, 59.0]));
        // a box covering part of the tile is clipped to it, in tile pixels
        assert_eq!(
            tile_box(&r, Some([120.0, 0.0, 400.0, 80.0])),
            Some([20.0, 0.0, 63.0, 30.0])
        );
        assert_eq!(tile_box(&r, Some([0.0, 0.0, 90.0, 90.0])), None);
    }
}
