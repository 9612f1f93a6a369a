//! Noise and blur helpers shared by the synthetic families.

use rand::Rng;
use rand_chacha::ChaCha8Rng;

pub(super) fn gauss(rng: &mut ChaCha8Rng) -> f64 {
    // Box-Muller
    let u1: f64 = rng.random::<f64>().max(1e-12);
    let u2: f64 = rng.random::<f64>();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

/// Smooth random field in [-1, 1]: a coarse grid of uniform values, bilinearly upsampled.
pub(super) fn smooth_field(rng: &mut ChaCha8Rng, size: usize, grid: usize) -> Vec<f64> {
    let g = grid.max(2);
    let vals: Vec<f64> = (0..g * g)
        .map(|_| rng.random::<f64>() * 2.0 - 1.0)
        .collect();
    let mut out = vec![0.0; size * size];
    for y in 0..size {
        let fy = y as f64 / (size - 1) as f64 * (g - 1) as f64;
        let y0 = (fy.floor() as usize).min(g - 2);
        let ty = fy - y0 as f64;
        for x in 0..size {
            let fx = x as f64 / (size - 1) as f64 * (g - 1) as f64;
            let x0 = (fx.floor() as usize).min(g - 2);
            let tx = fx - x0 as f64;
            let a = vals[y0 * g + x0] * (1.0 - tx) + vals[y0 * g + x0 + 1] * tx;
            let b = vals[(y0 + 1) * g + x0] * (1.0 - tx) + vals[(y0 + 1) * g + x0 + 1] * tx;
            out[y * size + x] = a * (1.0 - ty) + b * ty;
        }
    }
    out
}

pub(super) fn box_blur(img: &mut [f64], size: usize, r: usize) {
    if r == 0 {
        return;
    }
    let mut tmp = vec![0.0; img.len()];
    for y in 0..size {
        for x in 0..size {
            let (a, b) = (x.saturating_sub(r), (x + r).min(size - 1));
            let s: f64 = img[y * size + a..=y * size + b].iter().sum();
            tmp[y * size + x] = s / (b - a + 1) as f64;
        }
    }
    for y in 0..size {
        for x in 0..size {
            let (a, b) = (y.saturating_sub(r), (y + r).min(size - 1));
            let mut s = 0.0;
            for yy in a..=b {
                s += tmp[yy * size + x];
            }
            img[y * size + x] = s / (b - a + 1) as f64;
        }
    }
}
