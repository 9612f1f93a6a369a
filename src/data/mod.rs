//! Task data: cases (image + mask) from synthetic streams, image folders or NIfTI volumes, in the model frame.
//!
//! Every source yields [`RawCase`]s at their original resolution; [`make_case`] applies LiteMedSAM's input recipe
//! (via [`crate::preprocess`]) and keeps the ground truth at original resolution for scoring.

pub mod embeddings;
pub mod folder;
mod kind;
mod mask;
pub mod nifti;
mod source;
pub mod synthetic;
pub mod tiled;
pub mod tiling;

pub use kind::{list_paths, DataSource};
pub use mask::Mask2D;
pub use source::{
    load_task, plan_counts, skipped_inputs, source_schemas, SourceSpec, SOURCE_KINDS,
};

use crate::preprocess::{self, PrepMeta};
use crate::{Error, Result};
use candle_core::{Device, Tensor};
use sha2::{Digest, Sha256};

/// Ground truth at original resolution.
pub type GroundTruth = Mask2D;

/// An image at original resolution: `channels` (1 or 3) interleaved f32 values (any range).
#[derive(Clone, Debug)]
pub struct RawImage {
    /// Height in pixels.
    pub h: usize,
    /// Width in pixels.
    pub w: usize,
    /// Channels (1 or 3), interleaved.
    pub channels: usize,
    /// Row-major interleaved values.
    pub data: Vec<f32>,
}

/// What a data source yields: either a decoded image or a file to decode, plus masks at original resolution.
pub struct RawCase {
    /// Case id (unique within the task).
    pub id: String,
    /// The image, decoded or still a file.
    pub image: ImageSource,
    /// Ground truth at original resolution.
    pub mask: Mask2D,
    /// Field-of-view mask, if the source has one.
    pub fov: Option<Mask2D>,
}

/// Where a raw case's image comes from.
pub enum ImageSource {
    /// Already decoded in memory (synthetic images, NIfTI slices).
    Raw(RawImage),
    /// An image file (PNG, JPEG, ...), decoded with `preprocess::load_image` when the case is made.
    File(std::path::PathBuf),
}

/// One image of a task in the model frame, with its ground truth at original resolution. Cloning is cheap
/// (tensors are reference-counted).
#[derive(Clone)]
pub struct Case {
    /// Case id (unique within the task).
    pub id: String,
    /// (3,S,S) model input in `[0, 1]`.
    pub image: Tensor,
    /// How the original image maps into the model frame.
    pub meta: PrepMeta,
    /// (1,S,S) {0,1} target in the model frame (nearest-neighbour resize of `gt`, zero padding).
    pub mask: Tensor,
    /// Ground truth at original resolution (what Dice is scored on).
    pub gt: GroundTruth,
    /// Field-of-view mask at original resolution, if any.
    pub fov: Option<Mask2D>,
    /// sha256 of the model input (f32 little-endian bytes): the embedding cache key.
    pub content_hash: String,
    /// The horizontally mirrored twin (train cases, when a strategy trains with `augment = true`).
    pub flipped: Option<Box<Case>>,
    /// Set when this case is one tile of a larger image (`tile = { .. }` of the task).
    pub tile: Option<TileOf>,
}

/// Where a tile case comes from, and its box prompt.
#[derive(Clone, Debug)]
pub struct TileOf {
    /// Id of the image the tile was cut from.
    pub image_id: String,
    /// The tile's place in that image (original pixels).
    pub rect: tiling::TileRect,
    /// The box prompt in the model frame when it is not the ground-truth box (`prompt = "tile"`).
    pub prompt_box: Option<[f32; 4]>,
}

/// A test image of a tiled task: its ground truth at full resolution and the test cases that are its tiles.
#[derive(Clone, Debug)]
pub struct TiledImage {
    /// Image id (the case id an untiled run would use).
    pub id: String,
    /// Ground truth of the whole image.
    pub gt: Mask2D,
    /// Field-of-view mask of the whole image, if any.
    pub fov: Option<Mask2D>,
    /// Indices into [`TaskData::test`] of this image's tiles.
    pub tiles: Vec<usize>,
    /// Overlap the tiles were cut with (for the blending weights).
    pub overlap: usize,
}

impl Case {
    /// Box prompt (x0,y0,x1,y1) in the model frame from the ground truth; the whole resized image when the
    /// ground truth is empty; a tile's own box when its task prompts with the tile (`prompt = "tile"`).
    pub fn gt_box(&self) -> [f32; 4] {
        if let Some(b) = self.tile.as_ref().and_then(|t| t.prompt_box) {
            return b;
        }
        match self.gt.bbox() {
            Some([x0, y0, x1, y1]) => {
                preprocess::scale_box([x0 as f64, y0 as f64, x1 as f64, y1 as f64], &self.meta)
            }
            None => [
                0.0,
                0.0,
                (self.meta.new_w.max(1) - 1) as f32,
                (self.meta.new_h.max(1) - 1) as f32,
            ],
        }
    }
}

/// A task's train and test cases.
#[derive(Clone)]
pub struct TaskData {
    /// Task name.
    pub name: String,
    /// Training cases.
    pub train: Vec<Case>,
    /// Held-out part of the training data for model selection (`[train] val_fraction`; empty by default). The
    /// runner moves these cases out of `train` per seed, identically for every strategy
    /// ([`crate::train::budget::split_validation`]).
    pub val: Vec<Case>,
    /// Test cases (the tiles of the test images, for a tiled task).
    pub test: Vec<Case>,
    /// A tiled task's test images (empty otherwise): evaluation stitches each image's tiles back and scores the
    /// whole image.
    pub test_images: Vec<TiledImage>,
    /// A NIfTI task's test volumes (empty otherwise): evaluation stacks each volume's slice predictions and
    /// scores the volume in 3-D; its slices are entries of `test` (or of `test_images` when tiled).
    pub test_volumes: Vec<TestVolume>,
    /// Score only inside the field of view (folder sources with `fov_eval = true`).
    pub fov_eval: bool,
    /// Spacing of the task's 2-D images and the NSD tolerance (volumes carry their own spacing).
    pub scoring: Scoring,
}

/// How a task's cases are scored besides Dice: the grid's physical spacing (rows, columns; mm, or 1 = pixels)
/// and the NSD tolerance in the same unit (`[eval] nsd_tolerance_mm`).
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct Scoring {
    /// Spacing between rows and between columns.
    pub spacing: [f64; 2],
    /// NSD tolerance.
    pub nsd_tolerance: f64,
}

/// A test volume of a NIfTI task: its label volume in the slice frame and the test entries that are its
/// prompted slices.
#[derive(Clone, Debug)]
pub struct TestVolume {
    /// The volume's case key (its row's `case` in the scores).
    pub id: String,
    /// The image volume: saved predictions take its header (affine, spacing).
    pub image: std::path::PathBuf,
    /// The task's slice axis.
    pub axis: usize,
    /// NIfTI dims [X, Y, Z].
    pub nifti_dims: [usize; 3],
    /// (slices, rows, cols) in the slice frame.
    pub dims: [usize; 3],
    /// Physical spacing between slices, rows and columns (mm).
    pub spacing: [f64; 3],
    /// Ground truth, slice-major in the slice frame.
    pub gt: Vec<bool>,
    /// (slice index, index into [`TaskData::test`], or into [`TaskData::test_images`] for a tiled task), in
    /// slice order.
    pub slices: Vec<(usize, usize)>,
}

/// Turn a raw image into the model's image type.
pub fn raw_to_image(r: &RawImage) -> Result<preprocess::Image> {
    let mut rgb = Vec::with_capacity(r.h * r.w * 3);
    match r.channels {
        1 => {
            for &v in &r.data {
                rgb.extend_from_slice(&[v, v, v]);
            }
        }
        3 => rgb.extend_from_slice(&r.data),
        c => return Err(Error::internal(format!("raw image with {c} channels"))),
    }
    preprocess::Image::from_rgb(r.h, r.w, rgb)
}

fn decode(r: &RawCase) -> Result<preprocess::Image> {
    match &r.image {
        ImageSource::Raw(raw) => raw_to_image(raw),
        ImageSource::File(p) => preprocess::load_image(p),
    }
}

/// Mirror an image left-right.
pub fn flip_image(img: &preprocess::Image) -> preprocess::Image {
    let (h, w) = (img.height, img.width);
    let mut data = vec![0f32; img.data.len()];
    for y in 0..h {
        for x in 0..w {
            for c in 0..3 {
                data[(y * w + x) * 3 + c] = img.data[(y * w + (w - 1 - x)) * 3 + c];
            }
        }
    }
    preprocess::Image {
        height: h,
        width: w,
        data,
    }
}

/// Mirror a mask left-right.
pub fn flip_mask(m: &Mask2D) -> Mask2D {
    let mut data = vec![0u8; m.data.len()];
    for y in 0..m.h {
        for x in 0..m.w {
            data[y * m.w + x] = m.data[y * m.w + (m.w - 1 - x)];
        }
    }
    Mask2D {
        h: m.h,
        w: m.w,
        data,
    }
}

/// Preprocess a raw case into the model frame.
pub fn make_case(r: RawCase, size: usize, device: &Device) -> Result<Case> {
    let img = decode(&r)?;
    make_case_from(r, &img, size, device)
}

/// Preprocess a decoded image with the raw case's masks.
pub fn make_case_from(
    r: RawCase,
    img: &preprocess::Image,
    size: usize,
    device: &Device,
) -> Result<Case> {
    let (input, meta) = preprocess::to_model_input(img, size)?;
    if meta.orig_h != r.mask.h || meta.orig_w != r.mask.w {
        let what = match &r.image {
            ImageSource::File(p) => p.display().to_string(),
            ImageSource::Raw(_) => r.id.clone(),
        };
        return Err(Error::input(format!(
            "{what}: image is {}x{} (w x h) but its mask is {}x{}",
            meta.orig_w, meta.orig_h, r.mask.w, r.mask.h
        )));
    }
    if let Some(f) = &r.fov {
        if f.h != r.mask.h || f.w != r.mask.w {
            return Err(Error::input(format!(
                "{}: field-of-view mask is {}x{} but the image is {}x{}",
                r.id, f.w, f.h, meta.orig_w, meta.orig_h
            )));
        }
    }
    let input = input.to_device(&Device::Cpu)?.contiguous()?;
    let flat: Vec<f32> = input.flatten_all()?.to_vec1()?;
    let mut h = Sha256::new();
    h.update(format!("{:?}", input.dims()).as_bytes());
    for v in &flat {
        h.update(v.to_le_bytes());
    }
    let content_hash = hex::encode(h.finalize());
    let mask = model_frame_mask(&r.mask, &meta, size);
    Ok(Case {
        id: r.id,
        image: input.to_device(device)?,
        mask: Tensor::from_vec(mask, (1, size, size), device)?,
        meta,
        gt: r.mask,
        fov: r.fov,
        content_hash,
        flipped: None,
        tile: None,
    })
}

/// Nearest-neighbour resize of a mask into the resized extent of the model frame; zero padding elsewhere.
pub fn model_frame_mask(m: &Mask2D, meta: &PrepMeta, size: usize) -> Vec<f32> {
    let mut out = vec![0f32; size * size];
    let sy = m.h as f64 / meta.new_h.max(1) as f64;
    let sx = m.w as f64 / meta.new_w.max(1) as f64;
    for y in 0..meta.new_h.min(size) {
        let yy = (((y as f64 + 0.5) * sy) as usize).min(m.h - 1);
        for x in 0..meta.new_w.min(size) {
            let xx = (((x as f64 + 0.5) * sx) as usize).min(m.w - 1);
            out[y * size + x] = m.data[yy * m.w + xx] as f32;
        }
    }
    out
}

/// Deterministic split of sorted keys: a seeded shuffle, then the first `round(frac * n)` keys (at least one, and
/// at most n - 1 when n >= 2) go to the test side. Returns (train keys, test keys), each sorted.
pub fn split_by_fraction(keys: &[String], frac: f64, seed: u64) -> (Vec<String>, Vec<String>) {
    use rand::seq::SliceRandom;
    use rand::SeedableRng;
    let mut k: Vec<String> = keys.to_vec();
    k.sort();
    k.dedup();
    let n = k.len();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    k.shuffle(&mut rng);
    let mut nt = (frac * n as f64).round() as usize;
    if n >= 2 {
        nt = nt.clamp(1, n - 1);
    } else {
        nt = nt.min(n);
    }
    let mut test: Vec<String> = k[..nt].to_vec();
    let mut train: Vec<String> = k[nt..].to_vec();
    test.sort();
    train.sort();
    (train, test)
}

/// A seeded subset of at most `max` items (kept in their original order).
pub fn limit<T>(v: Vec<T>, max: Option<usize>, seed: u64) -> Vec<T> {
    use rand::seq::SliceRandom;
    use rand::SeedableRng;
    match max {
        Some(m) if m < v.len() => {
            let mut idx: Vec<usize> = (0..v.len()).collect();
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed ^ 0x5eed_1157);
            idx.shuffle(&mut rng);
            let mut keep: Vec<usize> = idx[..m].to_vec();
            keep.sort();
            let mut out = Vec::with_capacity(m);
            for (i, x) in v.into_iter().enumerate() {
                if keep.binary_search(&i).is_ok() {
                    out.push(x);
                }
            }
            out
        }
        _ => v,
    }
}

/// File stem with the configured strings removed from its start and end (repeatedly), used to pair files.
pub fn match_key(path: &std::path::Path, strip: &[String]) -> String {
    let name = path
        .file_name()
        .map(|s| s.to_string_lossy().to_string())
        .unwrap_or_default();
    let base: &str = if let Some(s) = name.strip_suffix(".nii.gz") {
        s
    } else {
        match name.rfind('.') {
            Some(i) if i > 0 => &name[..i],
            _ => name.as_str(),
        }
    };
    let mut stem = base.to_string();
    loop {
        let before = stem.clone();
        for s in strip {
            if s.is_empty() {
                continue;
            }
            if let Some(x) = stem.strip_suffix(s.as_str()) {
                if !x.is_empty() {
                    stem = x.to_string();
                }
            }
            if let Some(x) = stem.strip_prefix(s.as_str()) {
                if !x.is_empty() {
                    stem = x.to_string();
                }
            }
        }
        if stem == before {
            return stem;
        }
    }
}

/// A task's data folder (resolved against the spec) and the files its `pattern` matches there; errors say the folder
/// is missing or nothing matches (`noun`: what the pattern lists, for the message).
pub(crate) fn list_inputs(
    spec: &crate::spec::Spec,
    root: &std::path::Path,
    pattern: &str,
    what: &str,
    noun: &str,
) -> Result<(std::path::PathBuf, Vec<std::path::PathBuf>)> {
    let root = spec.resolve_path(root);
    if !root.is_dir() {
        return Err(Error::input(format!(
            "{what}: data folder {} does not exist",
            root.display()
        )));
    }
    let files = glob_files(&root, pattern, what)?;
    if files.is_empty() {
        return Err(Error::input(format!(
            "{what}: no {noun} matches {pattern:?} under {}",
            root.display()
        )));
    }
    Ok((root, files))
}

/// Expand a glob relative to `root`, sorted. Errors name the pattern.
pub fn glob_files(
    root: &std::path::Path,
    pattern: &str,
    what: &str,
) -> Result<Vec<std::path::PathBuf>> {
    let full = root.join(pattern);
    let pat = full.to_string_lossy().to_string();
    let mut out = Vec::new();
    let it = glob::glob(&pat)
        .map_err(|e| Error::input(format!("{what}: bad glob pattern {pat:?}: {e}")))?;
    for p in it {
        let p = p.map_err(|e| Error::input(format!("{what}: {e}")))?;
        if p.is_file() {
            out.push(p);
        }
    }
    out.sort();
    Ok(out)
}

/// Dice of a thresholded prediction against the ground truth, optionally only inside a field of view.
/// Empty rule: 1 if both are empty, 0 if only one is.
pub fn dice(pred: &[bool], gt: &Mask2D, fov: Option<&Mask2D>) -> f64 {
    let (mut inter, mut p, mut g) = (0usize, 0usize, 0usize);
    for (i, &pv) in pred.iter().enumerate() {
        if let Some(f) = fov {
            if f.data[i] == 0 {
                continue;
            }
        }
        let gv = gt.data[i] != 0;
        inter += (pv && gv) as usize;
        p += pv as usize;
        g += gv as usize;
    }
    if p + g == 0 {
        1.0
    } else {
        2.0 * inter as f64 / (p + g) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dice_hand_computed() {
        let gt = Mask2D {
            h: 2,
            w: 3,
            data: vec![1, 1, 0, 0, 1, 0],
        };
        let pred = [true, false, true, false, true, false];
        // |P∩G| = 2, |P| = 3, |G| = 3 -> 4/6
        assert!((dice(&pred, &gt, None) - 4.0 / 6.0).abs() < 1e-12);
        let fov = Mask2D {
            h: 2,
            w: 3,
            data: vec![1, 1, 0, 1, 1, 1],
        };
        // outside FOV: index 2 dropped -> P = 2, G = 3, inter 2 -> 4/5
        assert!((dice(&pred, &gt, Some(&fov)) - 0.8).abs() < 1e-12);
        let empty = Mask2D::zeros(2, 3);
        assert_eq!(dice(&[false; 6], &empty, None), 1.0);
        assert_eq!(dice(&pred, &empty, None), 0.0);
        assert_eq!(dice(&[false; 6], &gt, None), 0.0);
    }

    #[test]
    fn keys_and_splits() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let strip = s(&[
            "_training",
            "_test",
            "_manual1",
            "_mask",
            "Image_",
            "mask_",
            "_1stHO",
        ]);
        let k = |p: &str| match_key(std::path::Path::new(p), &strip);
        assert_eq!(k("a/21_training.tif"), "21");
        assert_eq!(k("a/21_manual1.gif"), "21");
        assert_eq!(k("a/01_test_mask.gif"), "01");
        assert_eq!(k("x/Image_01L.jpg"), "01L");
        assert_eq!(k("x/Image_01L_1stHO.png"), "01L");
        assert_eq!(k("x/mask_01L.png"), "01L");
        assert_eq!(k("v/case01.nii.gz"), "case01");
        assert_eq!(k("v/case01.nii"), "case01");
        let keys: Vec<String> = (0..10).map(|i| format!("k{i}")).collect();
        let (tr, te) = split_by_fraction(&keys, 0.3, 7);
        assert_eq!((tr.len(), te.len()), (7, 3));
        assert!(te.iter().all(|t| !tr.contains(t)));
        assert_eq!(split_by_fraction(&keys, 0.3, 7), (tr.clone(), te.clone()));
        assert_ne!(split_by_fraction(&keys, 0.3, 8).1, te);
        let (tr1, te1) = split_by_fraction(&keys[..2], 0.01, 0);
        assert_eq!((tr1.len(), te1.len()), (1, 1));
        let l = limit((0..10).collect::<Vec<_>>(), Some(4), 1);
        assert_eq!(l.len(), 4);
        assert!(l.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(limit((0..3).collect::<Vec<_>>(), Some(4), 1), vec![0, 1, 2]);
    }

    #[test]
    fn flips_mirror_images_and_masks() {
        let m = Mask2D {
            h: 2,
            w: 3,
            data: vec![1, 0, 0, 0, 1, 1],
        };
        assert_eq!(flip_mask(&m).data, vec![0, 0, 1, 1, 1, 0]);
        assert_eq!(flip_mask(&flip_mask(&m)), m);
        let img = preprocess::Image {
            height: 1,
            width: 2,
            data: vec![1., 2., 3., 4., 5., 6.],
        };
        assert_eq!(flip_image(&img).data, vec![4., 5., 6., 1., 2., 3.]);
    }

    #[test]
    fn bbox_and_model_frame_mask() {
        let mut m = Mask2D::zeros(4, 8);
        m.data[8 + 2] = 1; // (x=2,y=1)
        m.data[3 * 8 + 5] = 1; // (x=5,y=3)
        assert_eq!(m.bbox(), Some([2, 1, 5, 3]));
        assert_eq!(Mask2D::zeros(3, 3).bbox(), None);
        // 8x4 image into a 16 frame: scale 2, resized 16x8
        let meta = PrepMeta {
            orig_h: 4,
            orig_w: 8,
            new_h: 8,
            new_w: 16,
            scale: 2.0,
        };
        let f = model_frame_mask(&m, &meta, 16);
        assert_eq!(f.iter().filter(|&&v| v > 0.0).count(), 8); // each pixel -> 2x2
        assert_eq!(f[2 * 16 + 4], 1.0);
        assert_eq!(f[3 * 16 + 5], 1.0);
        assert_eq!(f[8 * 16 + 4], 0.0); // padding rows stay zero
    }
}
