//! LiteMedSAM's input recipe: resize the longest side to S (256), min-max normalise to [0, 1],
//! zero-pad bottom/right to SxS; boxes scaled by S / max(H, W); logits cropped to the resized extent
//! and resized back bilinearly (align_corners = false) to the original size.

use std::path::Path;

use candle_core::{Device, Tensor};
use image::{imageops::FilterType, ImageBuffer, Rgb};

use crate::{Error, Result};

/// A decoded image as RGB f32 (grey is replicated; 8-bit scaled by 1/255, 16-bit by 1/65535 — the
/// scale does not matter after min-max normalisation).
#[derive(Clone, Debug)]
pub struct Image {
    /// Rows.
    pub height: usize,
    /// Columns.
    pub width: usize,
    /// Row-major, interleaved RGB, length `height * width * 3`.
    pub data: Vec<f32>,
}

impl Image {
    /// An image from interleaved RGB values; an input error when the length does not match or a side is 0.
    pub fn from_rgb(height: usize, width: usize, data: Vec<f32>) -> Result<Self> {
        if data.len() != height * width * 3 || height == 0 || width == 0 {
            return Err(Error::input(format!(
                "image buffer of {} values does not fit {height}x{width}x3",
                data.len()
            )));
        }
        Ok(Self {
            height,
            width,
            data,
        })
    }
}

/// Decode PNG/JPEG/TIFF/GIF/PPM (grey or colour, 8 or 16 bit). Unreadable files give `Error::Input`.
pub fn load_image(path: &Path) -> Result<Image> {
    let reader = image::ImageReader::open(path)
        .map_err(|e| Error::input(format!("{}: cannot open image: {e}", path.display())))?;
    let reader = reader
        .with_guessed_format()
        .map_err(|e| Error::input(format!("{}: cannot read image: {e}", path.display())))?;
    let img = reader
        .decode()
        .map_err(|e| Error::input(format!("{}: cannot decode image: {e}", path.display())))?;
    let rgb = img.into_rgb32f();
    let (w, h) = rgb.dimensions();
    if w == 0 || h == 0 {
        return Err(Error::input(format!("{}: empty image", path.display())));
    }
    Image::from_rgb(h as usize, w as usize, rgb.into_raw())
}

/// Sizes and scale of one preprocessed image.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PrepMeta {
    /// Height of the original image.
    pub orig_h: usize,
    /// Width of the original image.
    pub orig_w: usize,
    /// Height after resizing the longest side to the model input (before padding).
    pub new_h: usize,
    /// Width after resizing (before padding).
    pub new_w: usize,
    /// Resize factor, model-input pixels per original pixel.
    pub scale: f64,
}

impl PrepMeta {
    /// The sizes for an `orig_h` x `orig_w` image resized (longest side) to a `size` x `size` input.
    pub fn new(orig_h: usize, orig_w: usize, size: usize) -> Self {
        let scale = size as f64 / orig_h.max(orig_w) as f64;
        let new_h = ((orig_h as f64 * scale + 0.5) as usize).clamp(1, size);
        let new_w = ((orig_w as f64 * scale + 0.5) as usize).clamp(1, size);
        Self {
            orig_h,
            orig_w,
            new_h,
            new_w,
            scale,
        }
    }
}

/// The model input (3, S, S) on the CPU, f32, and its metadata.
pub fn to_model_input(img: &Image, size: usize) -> Result<(Tensor, PrepMeta)> {
    let meta = PrepMeta::new(img.height, img.width, size);
    // The resize clamps f32 pixels to [0, 1]: bring the data there first (linear, so the final
    // min-max normalisation is unaffected).
    let (mn0, mx0) = img
        .data
        .iter()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &v| {
            (a.min(v), b.max(v))
        });
    if !mn0.is_finite() || !mx0.is_finite() {
        return Err(Error::input("image contains non-finite values"));
    }
    let r0 = (mx0 - mn0).max(1e-8);
    let data: Vec<f32> = img.data.iter().map(|&v| (v - mn0) / r0).collect();
    let buf: ImageBuffer<Rgb<f32>, Vec<f32>> =
        ImageBuffer::from_raw(img.width as u32, img.height as u32, data)
            .ok_or_else(|| Error::input("image buffer has the wrong length"))?;
    let resized = if meta.new_h == img.height && meta.new_w == img.width {
        buf
    } else {
        image::imageops::resize(
            &buf,
            meta.new_w as u32,
            meta.new_h as u32,
            FilterType::Triangle,
        )
    };
    let px = resized.as_raw();
    let (mn, mx) = px
        .iter()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &v| {
            (a.min(v), b.max(v))
        });
    let range = (mx - mn).max(1e-8);
    let mut out = vec![0f32; 3 * size * size];
    for y in 0..meta.new_h {
        for x in 0..meta.new_w {
            for c in 0..3 {
                let v = (px[(y * meta.new_w + x) * 3 + c] - mn) / range;
                out[c * size * size + y * size + x] = v.clamp(0.0, 1.0);
            }
        }
    }
    Ok((Tensor::from_vec(out, (3, size, size), &Device::Cpu)?, meta))
}

/// A box (x0, y0, x1, y1) in original pixels -> the model frame.
pub fn scale_box(b: [f64; 4], meta: &PrepMeta) -> [f32; 4] {
    b.map(|v| (v * meta.scale) as f32)
}

/// Check a box against the original image size.
pub fn validate_box(b: [f64; 4], meta: &PrepMeta) -> Result<()> {
    let [x0, y0, x1, y1] = b;
    if b.iter().any(|v| !v.is_finite())
        || x0 >= x1
        || y0 >= y1
        || x0 < 0.0
        || y0 < 0.0
        || x1 > meta.orig_w as f64
        || y1 > meta.orig_h as f64
    {
        return Err(Error::input(format!(
            "box {x0},{y0},{x1},{y1} must satisfy 0 <= x0 < x1 <= {} and 0 <= y0 < y1 <= {}",
            meta.orig_w, meta.orig_h
        )));
    }
    Ok(())
}

/// Bilinear resize as PyTorch's `F.interpolate(mode="bilinear", align_corners=False)` (no antialias).
pub fn resize_bilinear(src: &[f32], h: usize, w: usize, oh: usize, ow: usize) -> Vec<f32> {
    let coords = |n_in: usize, n_out: usize| -> Vec<(usize, usize, f32)> {
        let s = n_in as f64 / n_out as f64;
        (0..n_out)
            .map(|i| {
                let x = ((i as f64 + 0.5) * s - 0.5).max(0.0);
                let i0 = (x.floor() as usize).min(n_in - 1);
                let i1 = (i0 + 1).min(n_in - 1);
                (i0, i1, (x - i0 as f64) as f32)
            })
            .collect()
    };
    let (cy, cx) = (coords(h, oh), coords(w, ow));
    let mut out = vec![0f32; oh * ow];
    for (y, &(y0, y1, ly)) in cy.iter().enumerate() {
        for (x, &(x0, x1, lx)) in cx.iter().enumerate() {
            let a = src[y0 * w + x0] * (1.0 - lx) + src[y0 * w + x1] * lx;
            let b = src[y1 * w + x0] * (1.0 - lx) + src[y1 * w + x1] * lx;
            out[y * ow + x] = a * (1.0 - ly) + b * ly;
        }
    }
    out
}

/// Low-resolution logits (1, S, S) -> logits at the original size (H, W) (CPU, f32).
pub fn postprocess_logits(logits: &Tensor, meta: &PrepMeta) -> Result<Tensor> {
    let l = logits
        .to_device(&Device::Cpu)?
        .to_dtype(candle_core::DType::F32)?;
    let l = match l.rank() {
        3 => l.squeeze(0)?,
        2 => l,
        _ => {
            return Err(Error::internal(format!(
                "logits must be (1, S, S), got {:?}",
                logits.dims()
            )))
        }
    };
    let crop = l
        .narrow(0, 0, meta.new_h)?
        .narrow(1, 0, meta.new_w)?
        .contiguous()?;
    let v: Vec<f32> = crop.flatten_all()?.to_vec1()?;
    let out = resize_bilinear(&v, meta.new_h, meta.new_w, meta.orig_h, meta.orig_w);
    Ok(Tensor::from_vec(
        out,
        (meta.orig_h, meta.orig_w),
        &Device::Cpu,
    )?)
}

/// Binary mask (0/255) of logits > 0 (sigmoid > 0.5), row-major.
pub fn mask_u8(logits: &Tensor) -> Result<Vec<u8>> {
    let v: Vec<f32> = logits
        .flatten_all()?
        .to_dtype(candle_core::DType::F32)?
        .to_vec1()?;
    Ok(v.iter().map(|&x| if x > 0.0 { 255 } else { 0 }).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bilinear_matches_torch_hand_values() {
        // torch: F.interpolate([[0,1],[2,3]], size=(4,4), bilinear, align_corners=False) row 0
        // = [0, 0.25, 0.75, 1]; row 1 = [0.5, 0.75, 1.25, 1.5].
        let o = resize_bilinear(&[0., 1., 2., 3.], 2, 2, 4, 4);
        let want = [0., 0.25, 0.75, 1., 0.5, 0.75, 1.25, 1.5];
        for (a, b) in o.iter().zip(want) {
            assert!((a - b).abs() < 1e-6, "{o:?}");
        }
    }

    #[test]
    fn preprocess_pads_and_normalises() {
        let (h, w) = (100, 200);
        let data: Vec<f32> = (0..h * w * 3)
            .map(|i| (i % 97) as f32 * 3.0 + 10.0)
            .collect();
        let img = Image::from_rgb(h, w, data).unwrap();
        let (t, m) = to_model_input(&img, 256).unwrap();
        assert_eq!((m.new_h, m.new_w), (128, 256));
        assert_eq!(t.dims(), &[3, 256, 256]);
        let pad = t
            .narrow(1, 128, 128)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert_eq!(pad, 0.0);
        let mx = t.max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!((mx - 1.0).abs() < 1e-6);
        assert_eq!(
            scale_box([10., 20., 30., 40.], &m),
            [12.8, 25.6, 38.4, 51.2]
        );
        let logits = Tensor::ones((1, 256, 256), candle_core::DType::F32, &Device::Cpu).unwrap();
        assert_eq!(postprocess_logits(&logits, &m).unwrap().dims(), &[100, 200]);
    }

    #[test]
    fn unreadable_file_is_input_error() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("bad.png");
        std::fs::write(&p, b"not an image").unwrap();
        let e = load_image(&p).unwrap_err();
        assert_eq!(e.exit_code(), 2);
        assert!(e.to_string().contains("bad.png"));
    }
}
