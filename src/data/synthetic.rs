//! Built-in synthetic task streams: deterministic from a seed, no files needed.
//!
//! Two families at `size` x `size` (default 256), each with four "sites" whose appearance differs strongly, so
//! that training on one site's task hurts another's:
//! - `vessels`: branching trees on fundus/angiography-like backgrounds. Sites differ in polarity (dark vessels on a
//!   bright background vs bright on dark), colour, vessel calibre, noise, blur and background texture.
//! - `organs`: an organ-like blob (radially perturbed ellipse) inside an MRI-like body slice with distractor blobs.
//!   A smaller blob of opposite contrast sits in a notch of the organ, inside its box (the label excludes it).
//!   Sites differ in which of the pair is bright, bias field, noise and resolution.
//!
//! Each image's random stream is derived from (seed, family, site, split, index) alone, so a task's data never
//! depends on other tasks or on the experiment seed.

use super::{ImageSource, Mask2D, RawCase, RawImage};
use crate::spec::Diag;
use crate::Result;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// Shape family of the synthetic objects.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    /// Branching vessel trees on fundus/angiography-like backgrounds (`family = "vessels"`).
    Vessels,
    /// One organ-like blob in an MRI-like body slice, with distractors (`family = "organs"`).
    Organs,
}

/// `source = "synthetic"` task fields.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyntheticSpec {
    /// Which shapes to draw.
    pub family: Family,
    /// Site (domain) 0..=3.
    #[serde(default)]
    pub site: u32,
    /// Training images.
    #[serde(default = "d_train")]
    pub train: usize,
    /// Test images.
    #[serde(default = "d_test")]
    pub test: usize,
    /// Generator seed.
    #[serde(default)]
    pub seed: u64,
    /// Image side in pixels.
    #[serde(default = "d_size")]
    pub size: usize,
}

fn d_train() -> usize {
    16
}
fn d_test() -> usize {
    8
}
fn d_size() -> usize {
    256
}

/// Number of distinct synthetic "sites" (appearance styles).
pub const N_SITES: u32 = 4;

impl SyntheticSpec {
    /// Ranges (no files involved). The error names the key at fault.
    pub fn validate(&self) -> std::result::Result<(), Diag> {
        if self.site >= N_SITES {
            return Err(Diag::at(
                "site",
                format!(
                    "`site` = {} is out of range (0..={})",
                    self.site,
                    N_SITES - 1
                ),
            ));
        }
        if self.train == 0 || self.test == 0 {
            let k = if self.train == 0 { "train" } else { "test" };
            return Err(Diag::at(
                k,
                "`train` and `test` must be >= 1 (the split would be empty)",
            ));
        }
        if !(32..=2048).contains(&self.size) {
            return Err(Diag::at(
                "size",
                format!("`size` = {} must be in 32..=2048", self.size),
            ));
        }
        Ok(())
    }

    /// (train, test) raw cases.
    pub fn generate(&self) -> Result<(Vec<RawCase>, Vec<RawCase>)> {
        let gen = |split: u64, n: usize| -> Vec<RawCase> {
            (0..n)
                .map(|i| {
                    let (img, mask) = generate_one(
                        self.family,
                        self.site,
                        self.seed,
                        split,
                        i as u64,
                        self.size,
                    );
                    let name = match self.family {
                        Family::Vessels => "vessels",
                        Family::Organs => "organs",
                    };
                    RawCase {
                        id: format!(
                            "{name}-s{}-{}{i:03}",
                            self.site,
                            if split == 0 { "train" } else { "test" }
                        ),
                        image: ImageSource::Raw(img),
                        mask,
                        fov: None,
                    }
                })
                .collect()
        };
        Ok((gen(0, self.train), gen(1, self.test)))
    }
}

fn stream_seed(family: Family, site: u32, seed: u64, split: u64, index: u64) -> u64 {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(format!("evosam-synthetic/{family:?}/{site}/{seed}/{split}/{index}").as_bytes());
    let d = h.finalize();
    u64::from_le_bytes(d[..8].try_into().expect("8 bytes"))
}

/// One image (values 0..255, 3 channels) and its mask.
pub fn generate_one(
    family: Family,
    site: u32,
    seed: u64,
    split: u64,
    index: u64,
    size: usize,
) -> (RawImage, Mask2D) {
    let mut rng = ChaCha8Rng::seed_from_u64(stream_seed(family, site, seed, split, index));
    match family {
        Family::Vessels => vessels(&mut rng, site, size),
        Family::Organs => organs(&mut rng, site, size),
    }
}

fn gauss(rng: &mut ChaCha8Rng) -> f64 {
    // Box-Muller
    let u1: f64 = rng.random::<f64>().max(1e-12);
    let u2: f64 = rng.random::<f64>();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

/// Smooth random field in [-1, 1]: a coarse grid of uniform values, bilinearly upsampled.
fn smooth_field(rng: &mut ChaCha8Rng, size: usize, grid: usize) -> Vec<f64> {
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

fn box_blur(img: &mut [f64], size: usize, r: usize) {
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

fn vessels(rng: &mut ChaCha8Rng, site: u32, size: usize) -> (RawImage, Mask2D) {
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

fn organs(rng: &mut ChaCha8Rng, site: u32, size: usize) -> (RawImage, Mask2D) {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(img: &RawImage, m: &Mask2D) -> (f64, usize) {
        (img.data.iter().map(|&v| v as f64).sum(), m.count())
    }

    #[test]
    fn deterministic_and_seed_sensitive() {
        for fam in [Family::Vessels, Family::Organs] {
            let (a, ma) = generate_one(fam, 1, 3, 0, 5, 64);
            let (b, mb) = generate_one(fam, 1, 3, 0, 5, 64);
            assert_eq!(a.data, b.data);
            assert_eq!(ma, mb);
            let (c, mc) = generate_one(fam, 1, 4, 0, 5, 64);
            assert_ne!(digest(&a, &ma), digest(&c, &mc));
            let (d, md) = generate_one(fam, 1, 3, 1, 5, 64); // test split differs from train
            assert_ne!(digest(&a, &ma), digest(&d, &md));
        }
    }

    #[test]
    fn masks_are_plausible_and_sites_differ() {
        for fam in [Family::Vessels, Family::Organs] {
            let mut means = Vec::new();
            for site in 0..N_SITES {
                let mut fg_in = 0.0;
                let mut bg_in = 0.0;
                for i in 0..4 {
                    let (img, m) = generate_one(fam, site, 0, 0, i, 256);
                    let frac = m.count() as f64 / (256.0 * 256.0);
                    assert!(
                        frac > 0.005 && frac < 0.35,
                        "{fam:?} site {site}: foreground fraction {frac}"
                    );
                    let ch = img.channels;
                    let (mut f, mut nf, mut b, mut nb) = (0.0, 0.0, 0.0, 0.0);
                    for p in 0..256 * 256 {
                        let v: f64 =
                            (0..ch).map(|c| img.data[p * ch + c] as f64).sum::<f64>() / ch as f64;
                        if m.data[p] != 0 {
                            f += v;
                            nf += 1.0;
                        } else {
                            b += v;
                            nb += 1.0;
                        }
                    }
                    fg_in += f / nf;
                    bg_in += b / nb;
                }
                means.push((fg_in / 4.0, bg_in / 4.0));
            }
            // polarity flips between site 0 and site 1: the foreground is brighter than the background in one
            // and darker in the other
            let s0 = means[0].0 - means[0].1;
            let s1 = means[1].0 - means[1].1;
            assert!(s0 * s1 < 0.0, "{fam:?}: {means:?}");
            assert!(s0.abs() > 15.0 && s1.abs() > 15.0, "{fam:?}: {means:?}");
        }
    }

    #[test]
    fn spec_generates_requested_counts() {
        let s = SyntheticSpec {
            family: Family::Organs,
            site: 2,
            train: 3,
            test: 2,
            seed: 1,
            size: 64,
        };
        let (tr, te) = s.generate().unwrap();
        assert_eq!((tr.len(), te.len()), (3, 2));
        assert_eq!(tr[0].id, "organs-s2-train000");
        assert!(s.validate().is_ok());
        assert!(SyntheticSpec {
            site: 9,
            ..s.clone()
        }
        .validate()
        .is_err());
        assert!(SyntheticSpec { test: 0, ..s }.validate().is_err());
    }
}
