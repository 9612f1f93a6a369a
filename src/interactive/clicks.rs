//! The simulated clinician: where the next click goes.
//!
//! The rule is the standard one of interactive-segmentation benchmarks (RITM's `Clicker`, used by SAM's and most
//! later evaluations), so that our numbers read like theirs:
//! 1. Error regions, inside the scored region (the field of view when the task scores inside one): false negatives
//!    FN = ground truth and not predicted, false positives FP = predicted and not ground truth.
//! 2. Exact Euclidean distance transform of each region: every error pixel's distance to the nearest pixel outside
//!    that region (the image border and the outside of the field of view count as outside). Pixels already clicked
//!    are set to 0, so an unhelpful click is not repeated.
//! 3. The larger region is the one with the larger maximum distance (the one that fits the larger disc): a positive
//!    click in FN if its maximum is strictly larger than FP's, otherwise a negative click in FP (RITM's tie rule).
//! 4. The click is the region's pixel at that maximum distance, the first one in raster order (smallest row, then
//!    smallest column) when several tie.
//! 5. No click when no error pixel is left (the prediction is perfect inside the scored region).

use serde::{Deserialize, Serialize};

use super::distance::squared_distance_to_outside;
use crate::data::Mask2D;
use crate::preprocess::PrepMeta;

/// One click in the original image frame: pixel column `x`, row `y`; positive = "this is foreground".
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Click {
    /// Pixel column in the original image (0 = left).
    pub x: usize,
    /// Pixel row in the original image (0 = top).
    pub y: usize,
    /// True for a foreground click (placed in a false-negative region), false for a background one (false
    /// positive region).
    pub positive: bool,
}

impl Click {
    /// SAM's point label: 1 foreground, 0 background.
    pub fn label(&self) -> u8 {
        self.positive as u8
    }

    /// The click in the model frame, scaled like a box prompt (SAM's `apply_coords`: coordinates times
    /// the resize factor; the prompt encoder adds the half-pixel shift itself).
    pub fn model_frame(&self, meta: &PrepMeta) -> [f32; 2] {
        [
            (self.x as f64 * meta.scale) as f32,
            (self.y as f64 * meta.scale) as f32,
        ]
    }
}

/// The next click for a prediction `pred` (row-major, original frame, same size as `gt`), or None when no
/// error is left. `fov`, when given, limits the errors to its pixels; `previous` clicks are never repeated.
pub fn next_click(
    pred: &[bool],
    gt: &Mask2D,
    fov: Option<&Mask2D>,
    previous: &[Click],
) -> Option<Click> {
    let (h, w) = (gt.h, gt.w);
    debug_assert_eq!(pred.len(), h * w);
    let inside = |i: usize| fov.is_none_or(|f| f.data[i] != 0);
    let fnr: Vec<bool> = (0..h * w)
        .map(|i| inside(i) && gt.data[i] != 0 && !pred[i])
        .collect();
    let fpr: Vec<bool> = (0..h * w)
        .map(|i| inside(i) && gt.data[i] == 0 && pred[i])
        .collect();
    let mut dfn = squared_distance_to_outside(&fnr, h, w);
    let mut dfp = squared_distance_to_outside(&fpr, h, w);
    for c in previous {
        if c.x < w && c.y < h {
            dfn[c.y * w + c.x] = 0;
            dfp[c.y * w + c.x] = 0;
        }
    }
    // The first maximum in raster order (a strict `>` keeps the earliest of equal values).
    let argmax = |d: &[u64]| -> (u64, usize) {
        d.iter().enumerate().fold(
            (0u64, 0usize),
            |best, (i, &v)| if v > best.0 { (v, i) } else { best },
        )
    };
    let (mfn, ifn) = argmax(&dfn);
    let (mfp, ifp) = argmax(&dfp);
    if mfn == 0 && mfp == 0 {
        return None;
    }
    let (positive, i) = if mfn > mfp { (true, ifn) } else { (false, ifp) };
    Some(Click {
        x: i % w,
        y: i / w,
        positive,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mask(h: usize, w: usize, f: impl Fn(usize, usize) -> bool) -> Mask2D {
        Mask2D {
            h,
            w,
            data: (0..h * w).map(|i| f(i / w, i % w) as u8).collect(),
        }
    }

    fn rect(y0: usize, y1: usize, x0: usize, x1: usize) -> impl Fn(usize, usize) -> bool {
        move |y, x| (y0..y1).contains(&y) && (x0..x1).contains(&x)
    }

    #[test]
    fn positive_click_at_the_centre_of_the_larger_missed_part() {
        // GT: a 9x9 square (rows/cols 2..11) and a 3x3 square; the prediction covers only the 3x3 square and a
        // thin false-positive strip. The missed 9x9 square is the larger error: click at its centre (6, 6).
        let (h, w) = (20, 24);
        let big = rect(2, 11, 2, 11);
        let small = rect(14, 17, 18, 21);
        let gt = mask(h, w, |y, x| big(y, x) || small(y, x));
        let strip = rect(18, 19, 0, 12);
        let pred: Vec<bool> = (0..h * w)
            .map(|i| small(i / w, i % w) || strip(i / w, i % w))
            .collect();
        let c = next_click(&pred, &gt, None, &[]).unwrap();
        assert_eq!(
            c,
            Click {
                x: 6,
                y: 6,
                positive: true
            }
        );
        assert_eq!(c.label(), 1);
    }

    #[test]
    fn negative_click_in_a_larger_false_positive_and_ties() {
        // GT: a 5x5 square (all missed); prediction: a 7x7 false-positive blob elsewhere -> negative click at the
        // blob's centre.
        let (h, w) = (16, 30);
        let gt = mask(h, w, rect(1, 6, 1, 6));
        let blob = rect(4, 11, 15, 22);
        let pred: Vec<bool> = (0..h * w).map(|i| blob(i / w, i % w)).collect();
        let c = next_click(&pred, &gt, None, &[]).unwrap();
        assert_eq!(
            c,
            Click {
                x: 18,
                y: 7,
                positive: false
            }
        );
        assert_eq!(c.label(), 0);
        // Equal depths (5x5 missed, 5x5 false positive): RITM's rule gives a negative click.
        let blob5 = rect(4, 9, 15, 20);
        let pred: Vec<bool> = (0..h * w).map(|i| blob5(i / w, i % w)).collect();
        let c = next_click(&pred, &gt, None, &[]).unwrap();
        assert!(!c.positive);
        assert_eq!((c.x, c.y), (17, 6));
        // A 4x4 region has four centre pixels at the same depth: the first in raster order wins.
        let gt4 = mask(h, w, rect(2, 6, 2, 6));
        let c = next_click(&vec![false; h * w], &gt4, None, &[]).unwrap();
        assert_eq!(
            c,
            Click {
                x: 3,
                y: 3,
                positive: true
            }
        );
        // Once clicked, the next click goes to the next deepest pixel, not the same one.
        let c2 = next_click(&vec![false; h * w], &gt4, None, &[c]).unwrap();
        assert_eq!((c2.x, c2.y), (4, 3));
    }

    #[test]
    fn no_click_when_perfect_and_the_fov_is_respected() {
        let (h, w) = (12, 12);
        let gt = mask(h, w, rect(3, 8, 3, 8));
        let pred: Vec<bool> = gt.data.iter().map(|&v| v != 0).collect();
        assert_eq!(next_click(&pred, &gt, None, &[]), None);
        // A big false positive outside the field of view and a small miss inside it: the click goes to the
        // miss, and the FOV border counts as the region's boundary.
        let fov = mask(h, w, |_, x| x < 9);
        let mut pred = pred.clone();
        for y in 0..h {
            for x in 9..w {
                pred[y * w + x] = true;
            }
        }
        pred[5 * w + 5] = false;
        let c = next_click(&pred, &gt, Some(&fov), &[]).unwrap();
        assert_eq!(
            c,
            Click {
                x: 5,
                y: 5,
                positive: true
            }
        );
        // Without the FOV the false positive (3 columns wide, 12 high) is the larger error.
        let c = next_click(&pred, &gt, None, &[]).unwrap();
        assert!(!c.positive && c.x >= 9, "{c:?}");
        // Perfect inside the FOV: no click although there are errors outside.
        pred[5 * w + 5] = true;
        assert_eq!(next_click(&pred, &gt, Some(&fov), &[]), None);
    }

    #[test]
    fn clicks_scale_to_the_model_frame_like_boxes() {
        let meta = PrepMeta::new(512, 384, 256);
        let c = Click {
            x: 100,
            y: 300,
            positive: true,
        };
        let b = crate::preprocess::scale_box([100.0, 300.0, 0.0, 0.0], &meta);
        assert_eq!(c.model_frame(&meta), [b[0], b[1]]);
        assert_eq!(c.model_frame(&meta), [50.0, 150.0]);
    }
}
