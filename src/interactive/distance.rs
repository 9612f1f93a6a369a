//! Exact Euclidean distance transform (Felzenszwalb and Huttenlocher, "Distance Transforms of Sampled
//! Functions", Theory of Computing 2012): squared distances by two passes of the 1-D lower envelope of parabolas,
//! O(pixels). No crate in the lock file offers one; the test checks it against brute force.

/// Larger than any squared distance in an image (kept finite so that parabola intersections stay finite).
const FAR: f64 = 1e20;

/// For each pixel of `region` (row-major `h` x `w`, true = inside), the squared Euclidean distance to the nearest
/// pixel outside the region, where everything beyond the image border counts as outside (so a region touching the
/// border is at distance 1 from it there). Pixels outside the region get 0. Values are exact integers.
pub fn squared_distance_to_outside(region: &[bool], h: usize, w: usize) -> Vec<u64> {
    assert_eq!(region.len(), h * w, "region must have h * w pixels");
    // Pad by one pixel of "outside" on every side: every row and column then holds a zero.
    let (ph, pw) = (h + 2, w + 2);
    let mut g = vec![0f64; ph * pw];
    for y in 0..h {
        for x in 0..w {
            if region[y * w + x] {
                g[(y + 1) * pw + x + 1] = FAR;
            }
        }
    }
    let n = ph.max(pw);
    let (mut f, mut d) = (vec![0f64; n], vec![0f64; n]);
    let (mut v, mut z) = (vec![0usize; n], vec![0f64; n + 1]);
    for x in 0..pw {
        for y in 0..ph {
            f[y] = g[y * pw + x];
        }
        envelope(&f[..ph], &mut d[..ph], &mut v, &mut z);
        for y in 0..ph {
            g[y * pw + x] = d[y];
        }
    }
    for y in 0..ph {
        let row = &mut g[y * pw..(y + 1) * pw];
        f[..pw].copy_from_slice(row);
        envelope(&f[..pw], &mut d[..pw], &mut v, &mut z);
        row.copy_from_slice(&d[..pw]);
    }
    let mut out = vec![0u64; h * w];
    for y in 0..h {
        for x in 0..w {
            out[y * w + x] = g[(y + 1) * pw + x + 1].round() as u64;
        }
    }
    out
}

/// 1-D squared distance transform of the sampled function `f`: d[q] = min_p (q - p)^2 + f[p].
fn envelope(f: &[f64], d: &mut [f64], v: &mut [usize], z: &mut [f64]) {
    let n = f.len();
    if n == 0 {
        return;
    }
    let sq = |q: usize| (q * q) as f64;
    let mut k = 0usize;
    v[0] = 0;
    z[0] = f64::NEG_INFINITY;
    z[1] = f64::INFINITY;
    // Where the parabolas from q and p (q > p) intersect.
    let cut = |q: usize, p: usize| ((f[q] + sq(q)) - (f[p] + sq(p))) / (2.0 * (q - p) as f64);
    for q in 1..n {
        let mut s = cut(q, v[k]);
        // z[0] = -inf stops this at k = 0.
        while s <= z[k] {
            k -= 1;
            s = cut(q, v[k]);
        }
        k += 1;
        v[k] = q;
        z[k] = s;
        z[k + 1] = f64::INFINITY;
    }
    let mut k = 0usize;
    for (q, dq) in d.iter_mut().enumerate() {
        while z[k + 1] < q as f64 {
            k += 1;
        }
        let p = v[k];
        let dp = q as f64 - p as f64;
        *dq = dp * dp + f[p];
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn brute(region: &[bool], h: usize, w: usize) -> Vec<u64> {
        let mut out = vec![0u64; h * w];
        for y in 0..h as i64 {
            for x in 0..w as i64 {
                if !region[(y * w as i64 + x) as usize] {
                    continue;
                }
                let mut best = u64::MAX;
                // Every pixel of the padded frame that is outside the region.
                for yy in -1..=h as i64 {
                    for xx in -1..=w as i64 {
                        let inside = yy >= 0
                            && xx >= 0
                            && yy < h as i64
                            && xx < w as i64
                            && region[(yy * w as i64 + xx) as usize];
                        if !inside {
                            let d = ((yy - y) * (yy - y) + (xx - x) * (xx - x)) as u64;
                            best = best.min(d);
                        }
                    }
                }
                out[(y * w as i64 + x) as usize] = best;
            }
        }
        out
    }

    #[test]
    fn matches_brute_force_on_random_masks() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        for (h, w, p) in [
            (1, 1, 1.0),
            (1, 9, 0.9),
            (7, 1, 0.9),
            (13, 17, 0.7),
            (20, 11, 0.95),
            (16, 16, 1.0),
            (9, 23, 0.3),
        ] {
            for _ in 0..5 {
                let region: Vec<bool> = (0..h * w).map(|_| rng.random_bool(p)).collect();
                assert_eq!(
                    squared_distance_to_outside(&region, h, w),
                    brute(&region, h, w),
                    "{h}x{w} p={p}"
                );
            }
        }
    }

    #[test]
    fn hand_computed_square() {
        // A 5x5 block inside a 7x7 image: its centre is 3 pixels from the nearest outside pixel.
        let (h, w) = (7, 7);
        let region: Vec<bool> = (0..h * w)
            .map(|i| (1..6).contains(&(i / w)) && (1..6).contains(&(i % w)))
            .collect();
        let d = squared_distance_to_outside(&region, h, w);
        assert_eq!(d[3 * w + 3], 9);
        assert_eq!(d[w + 1], 1);
        assert_eq!(d[2 * w + 2], 4);
        assert_eq!(d[0], 0);
        // The whole image: distances to the border frame.
        let d = squared_distance_to_outside(&[true; 9], 3, 3);
        assert_eq!(d, vec![1, 1, 1, 1, 4, 1, 1, 1, 1]);
    }
}
