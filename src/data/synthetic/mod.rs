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
//!
//! Files: this module holds the task spec and the per-image seeding; `vessels` and `organs` draw one family each,
//! `field` holds the noise and blur helpers both use.

mod field;
mod organs;
mod vessels;

use organs::organs;
use vessels::vessels;

use super::{DataSource, ImageSource, Mask2D, RawCase, RawImage};
use crate::spec::{Diag, Spec};
use crate::Result;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// Shape family of the synthetic objects.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    /// Branching vessel trees on fundus/angiography-like backgrounds (`family = "vessels"`).
    Vessels,
    /// One organ-like blob in an MRI-like body slice, with distractors (`family = "organs"`).
    Organs,
}

/// `source = "synthetic"` task fields.
#[derive(Clone, Debug, Serialize, Deserialize, schemars::JsonSchema)]
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

impl DataSource for SyntheticSpec {
    /// Ranges (no files involved). The error names the key at fault.
    fn validate(&self) -> std::result::Result<(), Diag> {
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

    /// The `train` and `test` keys (nothing to list).
    fn counts(&self, _spec: &Spec, _task: &str) -> Result<(usize, usize)> {
        Ok((self.train, self.test))
    }
}

impl SyntheticSpec {
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
