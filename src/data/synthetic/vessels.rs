//! The `vessels` family: branching trees on fundus/angiography-like backgrounds, four sites.

use rand::Rng;
use rand_chacha::ChaCha8Rng;

use super::field::{box_blur, gauss, smooth_field};
use crate::data::{Mask2D, RawImage};

struct VesselSite {
    bg: [f64; 3],
    vessel: [f64; 3],
    calibre: f64,
    noise: f64,
    blur: usize,
    texture: f64,
    vignette: bool,
}

fn vessel_site(site: u32) -> VesselSite {
    match site {
        // fundus photo: dark red vessels on an orange background, vignetting
        0 => VesselSite {
            bg: [200.0, 95.0, 45.0],
            vessel: [110.0, 30.0, 20.0],
            calibre: 1.0,
            noise: 4.0,
            blur: 1,
            texture: 12.0,
            vignette: true,
        },
        // inverted, noisy: bright thin vessels on a dark blue background
        1 => VesselSite {
            bg: [25.0, 30.0, 60.0],
            vessel: [235.0, 235.0, 190.0],
            calibre: 0.7,
            noise: 28.0,
            blur: 0,
            texture: 10.0,
            vignette: false,
        },
        // green, blurred, low contrast, thick vessels
        2 => VesselSite {
            bg: [70.0, 150.0, 70.0],
            vessel: [35.0, 95.0, 40.0],
            calibre: 1.6,
            noise: 8.0,
            blur: 2,
            texture: 25.0,
            vignette: false,
        },
        // angiography-like grey: bright vessels on a strongly textured grey background
        _ => VesselSite {
            bg: [110.0, 110.0, 110.0],
            vessel: [225.0, 225.0, 225.0],
            calibre: 1.2,
            noise: 12.0,
            blur: 1,
            texture: 45.0,
            vignette: false,
        },
    }
}

/// Draw a branching tree into `v` (coverage in [0,1]).
fn draw_tree(rng: &mut ChaCha8Rng, v: &mut [f64], size: usize, calibre: f64) {
    let s = size as f64;
    // Root near one side, growing inwards.
    let mut stack: Vec<(f64, f64, f64, f64, u32)> = Vec::new(); // x, y, angle, radius, depth
    let n_roots = 2 + rng.random_range(0..2);
    for _ in 0..n_roots {
        let side = rng.random_range(0..4);
        let t = 0.2 + 0.6 * rng.random::<f64>();
        let (x, y, a) = match side {
            0 => (t * s, 2.0, std::f64::consts::FRAC_PI_2),
            1 => (t * s, s - 3.0, -std::f64::consts::FRAC_PI_2),
            2 => (2.0, t * s, 0.0),
            _ => (s - 3.0, t * s, std::f64::consts::PI),
        };
        let a = a + (rng.random::<f64>() - 0.5) * 0.8;
        stack.push((
            x,
            y,
            a,
            calibre * s / 256.0 * (3.0 + rng.random::<f64>() * 1.0),
            0,
        ));
    }
    while let Some((mut x, mut y, mut a, r, depth)) = stack.pop() {
        let len = s * (0.25 + 0.25 * rng.random::<f64>()) / (1.0 + depth as f64 * 0.35);
        let steps = (len / 1.5) as usize;
        for k in 0..steps {
            a += (rng.random::<f64>() - 0.5) * 0.25;
            x += 1.5 * a.cos();
            y += 1.5 * a.sin();
            if x < -5.0 || y < -5.0 || x > s + 5.0 || y > s + 5.0 {
                break;
            }
            stamp_disc(v, size, x, y, r);
            if depth < 4 && k > 6 && rng.random::<f64>() < 0.025 {
                let side = if rng.random::<bool>() { 1.0 } else { -1.0 };
                stack.push((
                    x,
                    y,
                    a + side * (0.4 + 0.5 * rng.random::<f64>()),
                    (r * 0.75).max(0.6),
                    depth + 1,
                ));
            }
        }
    }
}

fn stamp_disc(v: &mut [f64], size: usize, cx: f64, cy: f64, r: f64) {
    let rr = r + 1.0;
    let (x0, x1) = (
        (cx - rr).floor().max(0.0) as usize,
        ((cx + rr).ceil().max(0.0) as usize).min(size - 1),
    );
    let (y0, y1) = (
        (cy - rr).floor().max(0.0) as usize,
        ((cy + rr).ceil().max(0.0) as usize).min(size - 1),
    );
    for y in y0..=y1 {
        for x in x0..=x1 {
            let d = ((x as f64 - cx).powi(2) + (y as f64 - cy).powi(2)).sqrt();
            let c = (r + 0.5 - d).clamp(0.0, 1.0);
            let p = &mut v[y * size + x];
            if c > *p {
                *p = c;
            }
        }
    }
}

pub(super) fn vessels(rng: &mut ChaCha8Rng, site: u32, size: usize) -> (RawImage, Mask2D) {
    let p = vessel_site(site);
    let mut cov = vec![0.0; size * size];
    draw_tree(rng, &mut cov, size, p.calibre);
    let mask = Mask2D {
        h: size,
        w: size,
        data: cov.iter().map(|&c| (c >= 0.5) as u8).collect(),
    };
    let tex = smooth_field(rng, size, 9);
    let tex2 = smooth_field(rng, size, 5);
    let gain = 0.85 + 0.3 * rng.random::<f64>();
    let mut chans: Vec<Vec<f64>> = (0..3)
        .map(|c| {
            (0..size * size)
                .map(|i| {
                    let bg = p.bg[c] * gain + p.texture * (0.7 * tex[i] + 0.3 * tex2[i]);
                    bg * (1.0 - cov[i]) + p.vessel[c] * gain * cov[i]
                })
                .collect()
        })
        .collect();
    for ch in chans.iter_mut() {
        box_blur(ch, size, p.blur);
    }
    let c = (size as f64 - 1.0) / 2.0;
    let mut data = vec![0f32; size * size * 3];
    for i in 0..size * size {
        let (y, x) = ((i / size) as f64, (i % size) as f64);
        let rad = ((x - c).powi(2) + (y - c).powi(2)).sqrt() / c;
        let vig = if p.vignette {
            (1.15 - 0.45 * rad * rad).clamp(0.0, 1.0)
        } else {
            1.0
        };
        for (k, ch) in chans.iter().enumerate() {
            let v = ch[i] * vig + p.noise * gauss(rng);
            data[i * 3 + k] = v.clamp(0.0, 255.0) as f32;
        }
    }
    (
        RawImage {
            h: size,
            w: size,
            channels: 3,
            data,
        },
        mask,
    )
}
