//! Tiling geometry: the tile grid of an image, crops, blending weights and stitching of tile logits back to the
//! full image, and the rule that keeps training tiles without foreground. Pure arithmetic, no model.
//!
//! Tiles are `size` x `size` (smaller only where the image is); along each axis the fewest tiles that overlap by
//! at least `overlap` are spread evenly from the image's first to its last pixel, so every pixel is covered and
//! no tile leaves the image. Overlaps are blended with a linear ramp that falls towards a tile's inner borders (borders on the image's
//! edge keep weight 1); the weights are normalised by their per-pixel sum, so they sum to one everywhere.

use super::mask::Mask2D;
use crate::preprocess::Image;
use crate::{Error, Result};
use rand::seq::SliceRandom;
use rand::SeedableRng;

/// One tile: its top-left corner and extent in original pixels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TileRect {
    /// Left column.
    pub x0: usize,
    /// Top row.
    pub y0: usize,
    /// Width.
    pub w: usize,
    /// Height.
    pub h: usize,
}

impl TileRect {
    /// The image pixel of tile pixel (x, y).
    pub fn to_image(&self, x: usize, y: usize) -> (usize, usize) {
        (self.x0 + x, self.y0 + y)
    }
}

/// Start positions along one axis of length `len`: the fewest tiles whose neighbours overlap by at least
/// `overlap`, spread evenly from 0 to `len - size` (so every overlap is about the same).
fn starts(len: usize, size: usize, overlap: usize) -> Vec<usize> {
    if len <= size {
        return vec![0];
    }
    let stride = size - overlap;
    let n = (len - overlap).div_ceil(stride);
    let mut v: Vec<usize> = (0..n)
        .map(|i| (i * (len - size) + (n - 1) / 2) / (n - 1))
        .collect();
    v.dedup();
    v
}

/// The tile grid of an `h` x `w` image (row-major order). `overlap < size` is required (checked by the spec).
pub fn grid(h: usize, w: usize, size: usize, overlap: usize) -> Vec<TileRect> {
    let overlap = overlap.min(size.saturating_sub(1));
    let (ys, xs) = (starts(h, size, overlap), starts(w, size, overlap));
    let mut out = Vec::with_capacity(ys.len() * xs.len());
    for &y0 in &ys {
        for &x0 in &xs {
            out.push(TileRect {
                x0,
                y0,
                w: size.min(w),
                h: size.min(h),
            });
        }
    }
    out
}

/// The tile's part of an image.
pub fn crop_image(img: &Image, r: &TileRect) -> Image {
    let mut data = Vec::with_capacity(r.w * r.h * 3);
    for y in r.y0..r.y0 + r.h {
        let row = (y * img.width + r.x0) * 3;
        data.extend_from_slice(&img.data[row..row + r.w * 3]);
    }
    Image {
        height: r.h,
        width: r.w,
        data,
    }
}

/// The tile's part of a mask.
pub fn crop_mask(m: &Mask2D, r: &TileRect) -> Mask2D {
    let mut data = Vec::with_capacity(r.w * r.h);
    for y in r.y0..r.y0 + r.h {
        data.extend_from_slice(&m.data[y * m.w + r.x0..y * m.w + r.x0 + r.w]);
    }
    Mask2D {
        h: r.h,
        w: r.w,
        data,
    }
}

/// 1-D blending ramp of a tile spanning `[start, start + ext)` of an axis of length `len`: 1 inside, falling
/// linearly to 1/(ramp+1) at an inner border; borders on the image's edge are not ramped. Always > 0.
fn ramp(start: usize, ext: usize, len: usize, ramp: usize) -> Vec<f64> {
    let r = (ramp + 1) as f64;
    (0..ext)
        .map(|i| {
            let mut v: f64 = 1.0;
            if start > 0 {
                v = v.min((i + 1) as f64 / r);
            }
            if start + ext < len {
                v = v.min((ext - i) as f64 / r);
            }
            v
        })
        .collect()
}

/// Unnormalised blending weight of every pixel of tile `r` (row-major, `r.h * r.w`) in an `h` x `w` image with
/// the given overlap; [`Stitcher`] normalises by the per-pixel sum.
pub fn tile_weights(r: &TileRect, h: usize, w: usize, overlap: usize) -> Vec<f64> {
    let wy = ramp(r.y0, r.h, h, overlap);
    let wx = ramp(r.x0, r.w, w, overlap);
    let mut out = Vec::with_capacity(r.h * r.w);
    for a in &wy {
        for b in &wx {
            out.push(a * b);
        }
    }
    out
}

/// Accumulates tile values (logits) into a full-resolution map, blended with [`tile_weights`].
pub struct Stitcher {
    h: usize,
    w: usize,
    overlap: usize,
    acc: Vec<f64>,
    wsum: Vec<f64>,
}

impl Stitcher {
    /// An empty `h` x `w` map for tiles with the given overlap.
    pub fn new(h: usize, w: usize, overlap: usize) -> Self {
        Self {
            h,
            w,
            overlap,
            acc: vec![0.0; h * w],
            wsum: vec![0.0; h * w],
        }
    }

    /// Add one tile's values (row-major, `r.h * r.w`).
    pub fn add(&mut self, r: &TileRect, values: &[f32]) -> Result<()> {
        if values.len() != r.h * r.w || r.y0 + r.h > self.h || r.x0 + r.w > self.w {
            return Err(Error::internal(format!(
                "tile {r:?} with {} values does not fit a {}x{} image",
                values.len(),
                self.w,
                self.h
            )));
        }
        let wt = tile_weights(r, self.h, self.w, self.overlap);
        for y in 0..r.h {
            for x in 0..r.w {
                let (ix, iy) = r.to_image(x, y);
                let i = iy * self.w + ix;
                let k = y * r.w + x;
                self.acc[i] += wt[k] * values[k] as f64;
                self.wsum[i] += wt[k];
            }
        }
        Ok(())
    }

    /// The blended map (row-major `h * w`); an error when a pixel was covered by no tile.
    pub fn finish(self) -> Result<Vec<f32>> {
        if let Some(i) = self.wsum.iter().position(|&s| s <= 0.0) {
            return Err(Error::internal(format!(
                "pixel ({}, {}) of a {}x{} image is covered by no tile",
                i % self.w,
                i / self.w,
                self.w,
                self.h
            )));
        }
        Ok(self
            .acc
            .iter()
            .zip(&self.wsum)
            .map(|(a, s)| (a / s) as f32)
            .collect())
    }
}

/// Which training tiles to keep: every tile with foreground, and `round(keep_empty * n_empty)` of the tiles
/// without, chosen by a seeded shuffle.
pub fn keep_training_tiles(has_fg: &[bool], keep_empty: f64, seed: u64) -> Vec<bool> {
    let mut empty: Vec<usize> = (0..has_fg.len()).filter(|&i| !has_fg[i]).collect();
    let n_keep =
        ((keep_empty.clamp(0.0, 1.0) * empty.len() as f64).round() as usize).min(empty.len());
    empty.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(seed));
    let mut keep = has_fg.to_vec();
    for &i in &empty[..n_keep] {
        keep[i] = true;
    }
    keep
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHAPES: &[(usize, usize, usize, usize)] = &[
        // (h, w, size, overlap)
        (584, 565, 256, 32),
        (960, 999, 256, 64),
        (100, 300, 128, 0),
        (50, 40, 64, 16), // smaller than one tile
        (2336, 3504, 512, 64),
        (257, 256, 256, 255),
    ];

    #[test]
    fn every_pixel_covered_and_tiles_inside() {
        for &(h, w, s, o) in SHAPES {
            let g = grid(h, w, s, o);
            let mut cover = vec![0u32; h * w];
            for r in &g {
                assert!(r.x0 + r.w <= w && r.y0 + r.h <= h, "{r:?} leaves {w}x{h}");
                assert_eq!((r.w, r.h), (s.min(w), s.min(h)));
                for y in 0..r.h {
                    for x in 0..r.w {
                        let (ix, iy) = r.to_image(x, y);
                        cover[iy * w + ix] += 1;
                    }
                }
            }
            assert!(
                cover.iter().all(|&c| c >= 1),
                "{h}x{w} {s}/{o}: uncovered pixel"
            );
            // neighbours overlap by at least `overlap`, and one tile fewer would not reach it
            let xs: Vec<usize> = g.iter().filter(|r| r.y0 == 0).map(|r| r.x0).collect();
            for p in xs.windows(2) {
                assert!(p[1] > p[0] && p[0] + s - p[1] >= o, "{xs:?}");
            }
            if xs.len() > 1 {
                let n = xs.len() - 1;
                assert!(
                    n == 1 || (w - s) as f64 / (n - 1) as f64 > (s - o) as f64,
                    "{xs:?} not the fewest"
                );
            }
        }
        // the counts the issue quotes: a 3504x2336 image at 512/64 is ~60 tiles (8 x 6 = 48 here)
        assert_eq!(grid(2336, 3504, 512, 64).len(), 48);
        assert_eq!(grid(584, 565, 256, 32).len(), 9);
        // DRIVE at 384/64: 2 x 2; CHASEDB1 (999x960): 3 x 3, evenly spread
        assert_eq!(grid(584, 565, 384, 64).len(), 4);
        let g = grid(960, 999, 384, 64);
        assert_eq!(g.len(), 9);
        assert_eq!(
            g[..3].iter().map(|r| r.x0).collect::<Vec<_>>(),
            [0, 308, 615]
        );
    }

    #[test]
    fn normalised_weights_sum_to_one() {
        for &(h, w, s, o) in SHAPES {
            let g = grid(h, w, s, o);
            let mut wsum = vec![0f64; h * w];
            let ws: Vec<Vec<f64>> = g.iter().map(|r| tile_weights(r, h, w, o)).collect();
            for (r, wt) in g.iter().zip(&ws) {
                assert!(wt.iter().all(|&v| v > 0.0));
                for y in 0..r.h {
                    for x in 0..r.w {
                        wsum[(r.y0 + y) * w + r.x0 + x] += wt[y * r.w + x];
                    }
                }
            }
            let mut total = vec![0f64; h * w];
            for (r, wt) in g.iter().zip(&ws) {
                for y in 0..r.h {
                    for x in 0..r.w {
                        let i = (r.y0 + y) * w + r.x0 + x;
                        total[i] += wt[y * r.w + x] / wsum[i];
                    }
                }
            }
            assert!(total.iter().all(|&t| (t - 1.0).abs() < 1e-12));
        }
    }

    #[test]
    fn constant_and_coordinate_maps_stitch_back() {
        for &(h, w, s, o) in SHAPES {
            let g = grid(h, w, s, o);
            let mut st = Stitcher::new(h, w, o);
            for r in &g {
                st.add(r, &vec![-2.5f32; r.h * r.w]).unwrap();
            }
            assert!(st.finish().unwrap().iter().all(|&v| v == -2.5));
            // each tile carries its pixels' own image coordinates: stitching returns the coordinate map
            let mut sx = Stitcher::new(h, w, o);
            let mut sy = Stitcher::new(h, w, o);
            for r in &g {
                let (mut vx, mut vy) = (Vec::new(), Vec::new());
                for y in 0..r.h {
                    for x in 0..r.w {
                        let (ix, iy) = r.to_image(x, y);
                        vx.push(ix as f32);
                        vy.push(iy as f32);
                    }
                }
                sx.add(r, &vx).unwrap();
                sy.add(r, &vy).unwrap();
            }
            let (fx, fy) = (sx.finish().unwrap(), sy.finish().unwrap());
            for i in 0..h * w {
                assert!((fx[i] - (i % w) as f32).abs() < 1e-3, "x at {i}");
                assert!((fy[i] - (i / w) as f32).abs() < 1e-3, "y at {i}");
            }
        }
        // a missing tile is an error, not a silent zero
        let g = grid(100, 100, 64, 8);
        let mut st = Stitcher::new(100, 100, 8);
        st.add(&g[0], &vec![1.0; 64 * 64]).unwrap();
        assert!(st.finish().is_err());
        let mut st = Stitcher::new(10, 10, 0);
        assert!(st.add(&g[3], &vec![0.0; 64 * 64]).is_err());
    }

    #[test]
    fn crops_map_pixels_back_exactly() {
        let (h, w) = (37, 53);
        let m = Mask2D {
            h,
            w,
            data: (0..h * w).map(|i| ((i * 7919) % 5 == 0) as u8).collect(),
        };
        let img = Image {
            height: h,
            width: w,
            data: (0..h * w * 3).map(|i| i as f32).collect(),
        };
        for r in grid(h, w, 16, 5) {
            let cm = crop_mask(&m, &r);
            let ci = crop_image(&img, &r);
            assert_eq!((cm.h, cm.w, ci.height, ci.width), (r.h, r.w, r.h, r.w));
            for y in 0..r.h {
                for x in 0..r.w {
                    let (ix, iy) = r.to_image(x, y);
                    assert_eq!(cm.data[y * r.w + x], m.data[iy * w + ix]);
                    for c in 0..3 {
                        assert_eq!(
                            ci.data[(y * r.w + x) * 3 + c],
                            img.data[(iy * w + ix) * 3 + c]
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn empty_tile_rule() {
        let fg = [
            true, false, false, true, false, false, false, false, false, true, false,
        ];
        // 8 empty tiles
        for (frac, want) in [(0.0, 0), (0.25, 2), (0.5, 4), (1.0, 8)] {
            let k = keep_training_tiles(&fg, frac, 3);
            assert!(
                fg.iter().zip(&k).all(|(f, k)| !f || *k),
                "foreground always kept"
            );
            let kept_empty = fg.iter().zip(&k).filter(|(f, k)| !**f && **k).count();
            assert_eq!(kept_empty, want, "keep_empty {frac}");
            assert_eq!(k, keep_training_tiles(&fg, frac, 3), "seeded");
        }
        let a = keep_training_tiles(&fg, 0.5, 1);
        let differs = (2..40).any(|s| keep_training_tiles(&fg, 0.5, s) != a);
        assert!(differs, "the choice depends on the seed");
    }
}
