//! A tiled task's cases: each raw image cut by [`super::tiling::grid`] into tiles that become ordinary model-frame
//! [`Case`]s (with [`TileOf`] set), the training tiles filtered by the empty-tile rule, the test images recorded as
//! [`TiledImage`]s for stitching.

use super::tiling::{crop_image, crop_mask, grid, keep_training_tiles, TileRect};
use super::{
    flip_image, flip_mask, make_case_from, Case, ImageSource, RawCase, RawImage, TileOf, TiledImage,
};
use crate::preprocess::{self, Image};
use crate::spec::{TilePrompt, TileSpec};
use crate::Result;
use candle_core::Device;

/// Case id of a tile: the image id and the tile's top-left corner.
pub fn tile_id(image_id: &str, r: &TileRect) -> String {
    format!("{image_id}@x{}y{}", r.x0, r.y0)
}

fn raw_tile(id: String, mask: crate::data::Mask2D, fov: Option<crate::data::Mask2D>) -> RawCase {
    RawCase {
        id,
        image: ImageSource::Raw(RawImage {
            h: 0,
            w: 0,
            channels: 3,
            data: vec![],
        }),
        mask,
        fov,
    }
}

/// One tile as a model-frame case (and, with `augment`, its mirrored twin).
fn tile_case(
    r: &RawCase,
    img: &Image,
    rect: &TileRect,
    ts: &TileSpec,
    size: usize,
    augment: bool,
    device: &Device,
) -> Result<Case> {
    let crop = crop_image(img, rect);
    let mask = crop_mask(&r.mask, rect);
    let fov = r.fov.as_ref().map(|f| crop_mask(f, rect));
    let id = tile_id(&r.id, rect);
    let twin = if augment {
        let t = raw_tile(
            format!("{id}#hflip"),
            flip_mask(&mask),
            fov.as_ref().map(flip_mask),
        );
        Some(make_case_from(t, &flip_image(&crop), size, device)?)
    } else {
        None
    };
    let mut c = make_case_from(raw_tile(id, mask, fov), &crop, size, device)?;
    let prompt_box = match ts.prompt {
        TilePrompt::GtBox => None,
        TilePrompt::Tile => {
            let m = ts.margin.min(rect.w.min(rect.h).saturating_sub(1) / 2) as f64;
            let b = [m, m, (rect.w - 1) as f64 - m, (rect.h - 1) as f64 - m];
            Some(preprocess::scale_box(b, &c.meta))
        }
    };
    let of = TileOf {
        image_id: r.id.clone(),
        rect: *rect,
        prompt_box,
    };
    c.flipped = twin.map(|mut t| {
        // the box of a mirrored tile is the same box (the margin is symmetric)
        t.tile = Some(of.clone());
        Box::new(t)
    });
    c.tile = Some(of);
    Ok(c)
}

/// Training tiles of `raw`: every tile with foreground, and a `keep_empty` fraction of the others (seeded per
/// task and image).
pub fn train_tiles(
    raw: Vec<RawCase>,
    ts: &TileSpec,
    task: &str,
    size: usize,
    augment: bool,
    device: &Device,
) -> Result<Vec<Case>> {
    let mut out = Vec::new();
    for r in raw {
        let img = super::decode(&r)?;
        check_dims(&r, &img)?;
        let rects = grid(img.height, img.width, ts.size, ts.overlap);
        let fg: Vec<bool> = rects
            .iter()
            .map(|rect| crop_mask(&r.mask, rect).count() > 0)
            .collect();
        let seed = crate::util::derive_seed(&["tiles", task, &r.id]);
        let keep = keep_training_tiles(&fg, ts.keep_empty, seed);
        for (rect, k) in rects.iter().zip(keep) {
            if k {
                out.push(tile_case(&r, &img, rect, ts, size, augment, device)?);
            }
        }
    }
    Ok(out)
}

/// Every tile of every test image, and the images they stitch back into.
pub fn test_tiles(
    raw: Vec<RawCase>,
    ts: &TileSpec,
    size: usize,
    device: &Device,
) -> Result<(Vec<Case>, Vec<TiledImage>)> {
    let (mut cases, mut images) = (Vec::new(), Vec::new());
    for r in raw {
        let img = super::decode(&r)?;
        check_dims(&r, &img)?;
        let mut tiles = Vec::new();
        for rect in grid(img.height, img.width, ts.size, ts.overlap) {
            tiles.push(cases.len());
            cases.push(tile_case(&r, &img, &rect, ts, size, false, device)?);
        }
        images.push(TiledImage {
            id: r.id,
            gt: r.mask,
            fov: r.fov,
            tiles,
            overlap: ts.overlap,
        });
    }
    Ok((cases, images))
}

/// The image and its masks must agree before they are cut (the same check [`make_case_from`] makes untiled).
fn check_dims(r: &RawCase, img: &Image) -> Result<()> {
    let what = match &r.image {
        ImageSource::File(p) => p.display().to_string(),
        ImageSource::Raw(_) => r.id.clone(),
    };
    if img.height != r.mask.h || img.width != r.mask.w {
        return Err(crate::Error::input(format!(
            "{what}: image is {}x{} (w x h) but its mask is {}x{}",
            img.width, img.height, r.mask.w, r.mask.h
        )));
    }
    if let Some(f) = &r.fov {
        if f.h != r.mask.h || f.w != r.mask.w {
            return Err(crate::Error::input(format!(
                "{what}: field-of-view mask is {}x{} but the image is {}x{}",
                f.w, f.h, img.width, img.height
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::{dice, load_task, tiling::Stitcher};
    use crate::spec::Spec;
    use std::path::Path;

    const H: u32 = 130;
    const W: u32 = 150;

    /// A horizontal "vessel" band in the middle rows, nothing in the top 64 rows' left part.
    fn fg(x: u32, y: u32) -> bool {
        (60..66).contains(&y) || (x > 100 && y > 20)
    }

    fn write_data(dir: &Path, n: usize) {
        let d = dir.join("data");
        std::fs::create_dir_all(d.join("img")).unwrap();
        std::fs::create_dir_all(d.join("lbl")).unwrap();
        for i in 0..n {
            image::GrayImage::from_fn(W, H, |x, y| {
                image::Luma([((x * 3 + y * 5 + i as u32) % 251) as u8])
            })
            .save(d.join(format!("img/c{i}.png")))
            .unwrap();
            image::GrayImage::from_fn(W, H, |x, y| image::Luma([if fg(x, y) { 255 } else { 0 }]))
                .save(d.join(format!("lbl/c{i}.png")))
                .unwrap();
        }
    }

    fn spec(dir: &Path, tile: &str) -> Spec {
        let text = format!(
            "[experiment]\nname = \"x\"\n[stream]\n[[stream.task]]\nname = \"t\"\nsource = \"folder\"\nroot = \"data\"\n\
             images = \"img/*.png\"\nmasks = \"lbl/*.png\"\ntest_ids = [\"c0\", \"c1\"]\ntile = {tile}\n\
             [[strategy]]\npreset = \"zeroshot\"\n"
        );
        Spec::from_str_at(&text, &dir.join("spec.toml"), dir).unwrap()
    }

    #[test]
    fn tiled_task_cases_prompts_and_exact_stitching() {
        let dir = tempfile::tempdir().unwrap();
        write_data(dir.path(), 5);
        // tiles of the model's size (64): scale 1, so model-frame masks stitch back exactly
        let s = spec(
            dir.path(),
            "{ size = 64, overlap = 16, prompt = \"tile\", keep_empty = 0.0 }",
        );
        let t = load_task(&s, &s.stream.tasks[0], 64, false, &candle_core::Device::Cpu).unwrap();
        let rects = grid(H as usize, W as usize, 64, 16);
        assert_eq!(rects.len(), 9);
        // test: every tile of both images, in grid order; the images keep their full masks
        assert_eq!(t.test.len(), 2 * rects.len());
        assert_eq!(t.test_images.len(), 2);
        assert_eq!(t.test_images[1].tiles, (9..18).collect::<Vec<_>>());
        assert_eq!(t.test[10].id, tile_id("c1", &rects[1]));
        // train: keep_empty = 0 keeps exactly the tiles with foreground
        let want: usize = rects
            .iter()
            .filter(|r| {
                (0..r.h).any(|y| (0..r.w).any(|x| fg((r.x0 + x) as u32, (r.y0 + y) as u32)))
            })
            .count();
        assert!(want < rects.len(), "the fixture must have empty tiles");
        assert_eq!(t.train.len(), 3 * want);
        assert!(t.train.iter().all(|c| c.gt.count() > 0));
        // prompt = "tile": the tile minus the 4 px margin, in the model frame (scale 1 here)
        assert_eq!(t.test[0].gt_box(), [4.0, 4.0, 59.0, 59.0]);
        for img in &t.test_images {
            let mut st = Stitcher::new(img.gt.h, img.gt.w, img.overlap);
            for &i in &img.tiles {
                let c = &t.test[i];
                let logits = ((c.mask.clone() * 20.0).unwrap() - 10.0).unwrap();
                let full = crate::preprocess::postprocess_logits(&logits, &c.meta).unwrap();
                st.add(
                    &c.tile.as_ref().unwrap().rect,
                    &full.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                )
                .unwrap();
            }
            let pred: Vec<bool> = st.finish().unwrap().iter().map(|&v| v > 0.0).collect();
            let gt: Vec<bool> = img.gt.data.iter().map(|&v| v != 0).collect();
            assert_eq!(
                pred, gt,
                "{}: stitched tile masks are the image's mask",
                img.id
            );
            assert_eq!(dice(&pred, &img.gt, None), 1.0);
        }
        // gt-box prompts: a tile's box is its own foreground's
        let s = spec(dir.path(), "{ size = 64, overlap = 16, keep_empty = 1.0 }");
        let t = load_task(&s, &s.stream.tasks[0], 64, true, &candle_core::Device::Cpu).unwrap();
        assert_eq!(
            t.train.len(),
            3 * rects.len(),
            "keep_empty = 1 keeps every tile"
        );
        let c = &t.train[0];
        let b =
            c.gt.bbox()
                .map(|[a, b, c, d]| [a as f32, b as f32, c as f32, d as f32]);
        assert_eq!(Some(c.gt_box()), b);
        assert!(
            c.flipped.as_ref().unwrap().tile.is_some(),
            "the mirrored twin is a tile too"
        );
    }

    #[test]
    fn validation_keeps_an_images_tiles_together() {
        let dir = tempfile::tempdir().unwrap();
        write_data(dir.path(), 6);
        let s = spec(dir.path(), "{ size = 64, overlap = 16, keep_empty = 1.0 }");
        let t = load_task(&s, &s.stream.tasks[0], 64, false, &candle_core::Device::Cpu).unwrap();
        let image = |c: &Case| c.tile.as_ref().unwrap().image_id.clone();
        for seed in 0..4 {
            let v = crate::train::budget::split_validation(std::slice::from_ref(&t), seed, 0.25);
            let val: std::collections::BTreeSet<String> = v[0].val.iter().map(image).collect();
            let train: std::collections::BTreeSet<String> = v[0].train.iter().map(image).collect();
            // 4 training images: round(0.25 * 4) = 1 image, with all its 9 tiles
            assert_eq!(val.len(), 1, "seed {seed}");
            assert_eq!(v[0].val.len(), 9);
            assert!(val.is_disjoint(&train));
            assert_eq!(train.len(), 3);
        }
    }
}
