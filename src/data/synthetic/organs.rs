//! The `organs` family: an organ-like blob in an MRI-like body slice with distractors, four sites.

use rand::Rng;
use rand_chacha::ChaCha8Rng;

use super::field::{box_blur, gauss, smooth_field};
use crate::data::{Mask2D, RawImage};

struct OrganSite {
    body: f64,
    organ: f64,
    /// The organ's neighbour: a smaller blob of opposite contrast sitting in a notch of the organ, inside its box
    /// prompt (the organ is labelled without it). Which of the pair is bright depends on the site, so sites with
    /// opposite contrast conflict.
    neighbour: f64,
    distractor: f64,
    noise: f64,
    bias: f64,
    downsample: usize,
}

fn organ_site(site: u32) -> OrganSite {
    match site {
        // T2-like: bright organ, dark neighbour, mid-grey body
        0 => OrganSite {
            body: 0.45,
            organ: 0.85,
            neighbour: 0.2,
            distractor: 0.65,
            noise: 0.03,
            bias: 0.0,
            downsample: 1,
        },
        // T1-like inverted: dark organ, bright neighbour, strong bias field
        1 => OrganSite {
            body: 0.5,
            organ: 0.15,
            neighbour: 0.85,
            distractor: 0.3,
            noise: 0.05,
            bias: 0.35,
            downsample: 1,
        },
        // low resolution, low contrast, heavy noise; organ brighter than its neighbour
        2 => OrganSite {
            body: 0.35,
            organ: 0.6,
            neighbour: 0.2,
            distractor: 0.5,
            noise: 0.09,
            bias: 0.15,
            downsample: 3,
        },
        // dark body, organ darker than its bright neighbour, moderate bias, slightly low resolution
        _ => OrganSite {
            body: 0.3,
            organ: 0.1,
            neighbour: 0.7,
            distractor: 0.9,
            noise: 0.05,
            bias: 0.25,
            downsample: 2,
        },
    }
}

/// Radially perturbed ellipse membership.
fn blob(rng: &mut ChaCha8Rng, cx: f64, cy: f64, rx: f64, ry: f64) -> impl Fn(f64, f64) -> bool {
    let rot = rng.random::<f64>() * std::f64::consts::PI;
    let harm: Vec<(f64, f64)> = (2..5)
        .map(|_| (0.12 * rng.random::<f64>(), rng.random::<f64>() * 6.3))
        .collect();
    move |x: f64, y: f64| {
        let (dx, dy) = (x - cx, y - cy);
        let (u, v) = (
            dx * rot.cos() + dy * rot.sin(),
            -dx * rot.sin() + dy * rot.cos(),
        );
        let th = v.atan2(u);
        let mut k = 1.0;
        for (i, (a, ph)) in harm.iter().enumerate() {
            k += a * ((i as f64 + 2.0) * th + ph).cos();
        }
        (u / rx).powi(2) + (v / ry).powi(2) <= k * k
    }
}

pub(super) fn organs(rng: &mut ChaCha8Rng, site: u32, size: usize) -> (RawImage, Mask2D) {
    let p = organ_site(site);
    let s = size as f64;
    let (bcx, bcy) = (s * (0.5 + 0.04 * gauss(rng)), s * (0.5 + 0.04 * gauss(rng)));
    let (brx, bry) = (
        s * (0.38 + 0.05 * rng.random::<f64>()),
        s * (0.30 + 0.06 * rng.random::<f64>()),
    );
    let ocx = bcx + brx * 0.4 * (rng.random::<f64>() * 2.0 - 1.0);
    let ocy = bcy + bry * 0.4 * (rng.random::<f64>() * 2.0 - 1.0);
    let (orx, ory) = (
        s * (0.08 + 0.07 * rng.random::<f64>()),
        s * (0.07 + 0.06 * rng.random::<f64>()),
    );
    let organ = blob(rng, ocx, ocy, orx, ory);
    // the neighbour sits in a notch of the organ (inside the organ's box): centre half an organ radius off the
    // organ's centre, about half its size; the organ is labelled without it (a crescent)
    let na = rng.random::<f64>() * std::f64::consts::TAU;
    let nk = 0.5 + 0.15 * rng.random::<f64>();
    let neighbour = blob(
        rng,
        ocx + orx * 0.55 * na.cos(),
        ocy + ory * 0.55 * na.sin(),
        orx * nk,
        ory * nk,
    );
    let n_d = 2 + rng.random_range(0..2);
    let distractors: Vec<_> = (0..n_d)
        .map(|_| {
            let a = rng.random::<f64>() * std::f64::consts::TAU;
            let dcx = bcx + brx * 0.65 * a.cos();
            let dcy = bcy + bry * 0.65 * a.sin();
            let r = s * (0.03 + 0.04 * rng.random::<f64>());
            let ry = r * (0.7 + 0.6 * rng.random::<f64>());
            blob(rng, dcx, dcy, r, ry)
        })
        .collect();
    let tex = smooth_field(rng, size, 12);
    let bias = smooth_field(rng, size, 3);
    let mut img = vec![0.0; size * size];
    let mut mask = Mask2D::zeros(size, size);
    for y in 0..size {
        for x in 0..size {
            let (fx, fy) = (x as f64 + 0.5, y as f64 + 0.5);
            let in_body = ((fx - bcx) / brx).powi(2) + ((fy - bcy) / bry).powi(2) <= 1.0;
            let mut v = 0.02;
            if in_body {
                v = p.body + 0.06 * tex[y * size + x];
                if distractors.iter().any(|d| d(fx, fy)) {
                    v = p.distractor + 0.04 * tex[y * size + x];
                }
                if organ(fx, fy) {
                    v = p.organ + 0.05 * tex[y * size + x];
                    mask.data[y * size + x] = 1;
                }
                if neighbour(fx, fy) {
                    v = p.neighbour + 0.05 * tex[y * size + x];
                    mask.data[y * size + x] = 0;
                }
            }
            img[y * size + x] = v;
        }
    }
    box_blur(&mut img, size, 1);
    // lower acquisition resolution: block average
    let d = p.downsample;
    if d > 1 {
        for by in (0..size).step_by(d) {
            for bx in (0..size).step_by(d) {
                let (ye, xe) = ((by + d).min(size), (bx + d).min(size));
                let mut sum = 0.0;
                for y in by..ye {
                    for x in bx..xe {
                        sum += img[y * size + x];
                    }
                }
                let m = sum / ((ye - by) * (xe - bx)) as f64;
                for y in by..ye {
                    for x in bx..xe {
                        img[y * size + x] = m;
                    }
                }
            }
        }
    }
    let data: Vec<f32> = (0..size * size)
        .map(|i| {
            let v = img[i] * (1.0 + p.bias * bias[i]) + p.noise * gauss(rng);
            (v.clamp(0.0, 1.0) * 255.0) as f32
        })
        .collect();
    (
        RawImage {
            h: size,
            w: size,
            channels: 1,
            data,
        },
        mask,
    )
}
