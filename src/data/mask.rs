//! The binary mask type every source, metric and tile map shares (a leaf: it imports nothing of the crate).

/// A binary mask (0/1) at some resolution, row-major.
#[derive(Clone, Debug, PartialEq)]
pub struct Mask2D {
    /// Height in pixels.
    pub h: usize,
    /// Width in pixels.
    pub w: usize,
    /// Row-major values, 0 or 1.
    pub data: Vec<u8>,
}

impl Mask2D {
    /// An all-background mask.
    pub fn zeros(h: usize, w: usize) -> Self {
        Self {
            h,
            w,
            data: vec![0; h * w],
        }
    }

    /// Foreground pixel count.
    pub fn count(&self) -> usize {
        self.data.iter().filter(|&&v| v != 0).count()
    }

    /// Bounding box (x0, y0, x1, y1) of the foreground in pixel coordinates (inclusive), or None when empty.
    pub fn bbox(&self) -> Option<[usize; 4]> {
        let (mut x0, mut y0, mut x1, mut y1) = (usize::MAX, usize::MAX, 0, 0);
        for y in 0..self.h {
            for x in 0..self.w {
                if self.data[y * self.w + x] != 0 {
                    x0 = x0.min(x);
                    y0 = y0.min(y);
                    x1 = x1.max(x);
                    y1 = y1.max(y);
                }
            }
        }
        (x0 != usize::MAX).then_some([x0, y0, x1, y1])
    }
}
