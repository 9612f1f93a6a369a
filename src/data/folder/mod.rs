//! `source = "folder"`: images and masks matched by glob patterns and file stems.
//!
//! ```toml
//! [[stream.task]]
//! name = "DRIVE"
//! source = "folder"
//! root = "../../shared/data/retinal_vessel/DRIVE"  # relative to the spec file
//! images = "*/images/*.tif"                        # globs relative to root
//! masks = "*/1st_manual/*.gif"
//! fov = "*/mask/*.gif"                             # optional field-of-view masks
//! strip = ["_training", "_test", "_manual1", "_mask"] # removed from stems' start/end to pair files
//! test_glob = "test/**"      # split: images whose path under root matches go to test, or
//! # test_ids = ["01", ...]   # listed keys, or
//! # test_fraction = 0.3      # a seeded fraction (split_seed)
//! max_train = 8              # optional limits (seeded subsets)
//! max_test = 4
//! mask_threshold = 127       # mask pixels > threshold (8-bit grey) are foreground, or
//! # mask_values = [0, 128]   # these 8-bit grey values are (REFUGE-style class codes: 0 cup + 128 rim = disc)
//! # spacing = [0.5, 0.5]     # optional pixel spacing (rows, columns) in mm: NSD and HD95 in mm, else pixels
//! fov_eval = false           # score Dice inside the FOV only
//! unpaired = "error"         # an image without a mask (or FOV mask) stops the run; "skip" leaves it out
//! # tile = { size = 256, overlap = 32, prompt = "tile", keep_empty = 0.25 } # optional: native-resolution tiles
//! ```
//! With `unpaired = "skip"` the skipped images are counted and named by `evosam validate`, in the run's log and
//! in `manifest.json` (`tasks[].skipped`).

use super::{
    glob_files, limit, match_key, split_by_fraction, DataSource, ImageSource, Mask2D, RawCase,
};
use crate::spec::{Diag, Spec, TileSpec};
use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// A `source = "folder"` task's keys (see the module docs for an example).
#[derive(Clone, Debug, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FolderSpec {
    /// Folder the globs are relative to (relative paths: to the spec file's folder).
    #[serde(default = "d_root")]
    pub root: PathBuf,
    /// Glob of the images.
    pub images: String,
    /// Glob of the masks (paired with images by file stem after `strip`).
    pub masks: String,
    /// Glob of field-of-view masks, if the set has them.
    #[serde(default)]
    pub fov: Option<String>,
    /// Strings removed from the start/end of file stems to pair images, masks and FOV masks.
    #[serde(default)]
    pub strip: Vec<String>,
    /// Mask pixels above this 8-bit grey value are foreground.
    #[serde(default = "d_thr")]
    pub mask_threshold: u8,
    /// Instead of a threshold: the 8-bit grey values that are foreground (masks that code classes as values).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mask_values: Option<Vec<u8>>,
    /// Pixel spacing (rows, columns), e.g. in mm: NSD tolerance and HD95 are in this unit (default: pixels).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spacing: Option<[f64; 2]>,
    /// Split rule: images whose path under `root` matches this glob are the test set.
    #[serde(default)]
    pub test_glob: Option<String>,
    /// Split rule: these keys are the test set.
    #[serde(default)]
    pub test_ids: Option<Vec<String>>,
    /// Split rule: this fraction of the images is the test set (seeded by `split_seed`).
    #[serde(default)]
    pub test_fraction: Option<f64>,
    /// Seed of the fraction split and of the `max_train` / `max_test` subsets.
    #[serde(default)]
    pub split_seed: u64,
    /// At most this many training images (a seeded subset).
    #[serde(default)]
    pub max_train: Option<usize>,
    /// At most this many test images (a seeded subset).
    #[serde(default)]
    pub max_test: Option<usize>,
    /// Cut each image into tiles at native resolution (see [`TileSpec`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tile: Option<TileSpec>,
    /// Score Dice inside the field of view only.
    #[serde(default)]
    pub fov_eval: bool,
    /// What an image without a mask (or without a field-of-view mask) does: stop (default) or be skipped.
    #[serde(default, skip_serializing_if = "Unpaired::is_error")]
    pub unpaired: Unpaired,
    /// `width = [min, max]`: only the images whose width in pixels is in this range (inclusive, read from each
    /// file's header); the others are left out before the split. Why: a collection gathered from several
    /// devices (Kvasir-SEG's endoscopes) has no site labels, but its frame sizes tell the devices apart, so one
    /// folder gives several pseudo-sites.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub width: Option<[u32; 2]>,
}

/// `unpaired`: the rule for an image that has no mask.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Unpaired {
    /// The image is an error naming it (the default).
    #[default]
    Error,
    /// The image is left out, and counted and listed.
    Skip,
}

impl Unpaired {
    fn is_error(&self) -> bool {
        *self == Unpaired::Error
    }
}

fn d_root() -> PathBuf {
    PathBuf::from(".")
}
fn d_thr() -> u8 {
    127
}

/// One matched item.
#[derive(Clone, Debug)]
pub struct Item {
    /// The key image, mask and FOV stems reduce to.
    pub key: String,
    /// The image file.
    pub image: PathBuf,
    /// Its mask.
    pub mask: PathBuf,
    /// Its field-of-view mask, when the task has them.
    pub fov: Option<PathBuf>,
}

/// Listing result: matched items per split.
pub struct Plan {
    /// Training items.
    pub train: Vec<Item>,
    /// Test items.
    pub test: Vec<Item>,
    /// Images left out with `unpaired = "skip"` (no mask or no field-of-view mask), in path order.
    pub skipped: Vec<PathBuf>,
}

/// Exactly one split rule must be given; shared by folder and NIfTI sources.
pub fn validate_split(
    test_glob: Option<&String>,
    test_ids: Option<&Vec<String>>,
    test_fraction: Option<f64>,
    allow_glob: bool,
) -> std::result::Result<(), Diag> {
    let n = test_glob.is_some() as usize
        + test_ids.is_some() as usize
        + test_fraction.is_some() as usize;
    let opts = if allow_glob {
        "`test_glob`, `test_ids` or `test_fraction`"
    } else {
        "`test_ids` or `test_fraction`"
    };
    if n != 1 {
        return Err(Diag::table(format!(
            "give exactly one train/test split rule: {opts}"
        )));
    }
    if let Some(f) = test_fraction {
        if !(f > 0.0 && f < 1.0) {
            return Err(Diag::at(
                "test_fraction",
                format!("`test_fraction` = {f} must be in (0, 1)"),
            ));
        }
    }
    if let Some(ids) = test_ids {
        if ids.is_empty() {
            return Err(Diag::at("test_ids", "`test_ids` is empty"));
        }
    }
    Ok(())
}

impl DataSource for FolderSpec {
    /// Split rule, limits and glob syntax (no files involved). The error names the key at fault.
    fn validate(&self) -> std::result::Result<(), Diag> {
        validate_split(
            self.test_glob.as_ref(),
            self.test_ids.as_ref(),
            self.test_fraction,
            true,
        )?;
        if matches!(self.max_train, Some(0)) || matches!(self.max_test, Some(0)) {
            let k = if matches!(self.max_train, Some(0)) {
                "max_train"
            } else {
                "max_test"
            };
            return Err(Diag::at(k, "`max_train`/`max_test` must be >= 1"));
        }
        if let Some(t) = &self.tile {
            t.validate()?;
        }
        if let Some(v) = &self.mask_values {
            if v.is_empty() {
                return Err(Diag::at("mask_values", "`mask_values` is empty"));
            }
            if self.mask_threshold != d_thr() {
                return Err(Diag::at(
                    "mask_values",
                    "give either `mask_values` or `mask_threshold`, not both",
                ));
            }
        }
        if let Some(sp) = self.spacing {
            if sp.iter().any(|d| !(d.is_finite() && *d > 0.0)) {
                return Err(Diag::at(
                    "spacing",
                    format!("`spacing` = {sp:?} must be two positive distances (rows, columns)"),
                ));
            }
        }
        if let Some([lo, hi]) = self.width {
            if lo > hi {
                return Err(Diag::at(
                    "width",
                    format!("`width` = [{lo}, {hi}]: the minimum is above the maximum"),
                ));
            }
        }
        if self.fov_eval && self.fov.is_none() {
            return Err(Diag::at("fov_eval", "`fov_eval = true` needs `fov` masks"));
        }
        let optional = [
            ("fov", self.fov.as_ref()),
            ("test_glob", self.test_glob.as_ref()),
        ];
        for (k, g) in [("images", Some(&self.images)), ("masks", Some(&self.masks))]
            .into_iter()
            .chain(optional)
        {
            let Some(g) = g else { continue };
            glob::Pattern::new(g)
                .map_err(|e| Diag::at(k, format!("`{k}` = {g:?} is not a valid glob: {e}")))?;
        }
        Ok(())
    }

    fn tile(&self) -> Option<&TileSpec> {
        self.tile.as_ref()
    }

    /// The images of each split after pairing and limits.
    fn counts(&self, spec: &Spec, task: &str) -> Result<(usize, usize)> {
        let p = self.plan(spec, task)?;
        Ok((p.train.len(), p.test.len()))
    }

    /// The images without a mask, with `unpaired = "skip"`.
    fn skipped(&self, spec: &Spec, task: &str) -> Result<Vec<PathBuf>> {
        Ok(if self.unpaired == Unpaired::Skip {
            self.plan(spec, task)?.skipped
        } else {
            Vec::new()
        })
    }
}

impl FolderSpec {
    /// List and pair files, then split. Errors name the task, the pattern and the file at fault.
    pub fn plan(&self, spec: &Spec, task: &str) -> Result<Plan> {
        let what = format!("task {task:?}");
        let (root, images) = super::list_inputs(spec, &self.root, &self.images, &what, "image")?;
        let index = |pattern: &str, kind: &str| -> Result<BTreeMap<String, PathBuf>> {
            let mut m = BTreeMap::new();
            for p in glob_files(&root, pattern, &what)? {
                let k = match_key(&p, &self.strip);
                if let Some(prev) = m.insert(k.clone(), p.clone()) {
                    return Err(Error::input(format!(
                        "{what}: {kind} files {} and {} both pair with key {k:?} (adjust `strip` or the pattern)",
                        prev.display(),
                        p.display()
                    )));
                }
            }
            Ok(m)
        };
        let masks = index(&self.masks, "mask")?;
        let fovs = match &self.fov {
            Some(f) => Some(index(f, "field-of-view")?),
            None => None,
        };
        let mut items = Vec::new();
        let mut skipped = Vec::new();
        let mut seen = BTreeMap::new();
        for img in images {
            let key = match_key(&img, &self.strip);
            if let Some(prev) = seen.insert(key.clone(), img.clone()) {
                return Err(Error::input(format!(
                    "{what}: images {} and {} have the same key {key:?} (adjust `strip`)",
                    prev.display(),
                    img.display()
                )));
            }
            let skip = self.unpaired == Unpaired::Skip;
            let Some(mask) = masks.get(&key).cloned() else {
                if skip {
                    skipped.push(img);
                    continue;
                }
                return Err(Error::input(format!(
                    "{what}: image {} has no mask (key {key:?}; no file matching {:?} has that key; \
                     `unpaired = \"skip\"` leaves such images out)",
                    img.display(),
                    self.masks
                )));
            };
            let fov = match &fovs {
                Some(f) => match f.get(&key) {
                    Some(p) => Some(p.clone()),
                    None if skip => {
                        skipped.push(img);
                        continue;
                    }
                    None => {
                        return Err(Error::input(format!(
                            "{what}: image {} has no field-of-view mask (key {key:?}; \
                             `unpaired = \"skip\"` leaves such images out)",
                            img.display()
                        )))
                    }
                },
                None => None,
            };
            items.push(Item {
                key,
                image: img,
                mask,
                fov,
            });
        }
        if let Some([lo, hi]) = self.width {
            let mut kept = Vec::new();
            for it in items {
                let (w, _) = image::image_dimensions(&it.image).map_err(|e| {
                    Error::input(format!("{what}: image {}: {e}", it.image.display()))
                })?;
                if (lo..=hi).contains(&w) {
                    kept.push(it);
                }
            }
            if kept.is_empty() {
                return Err(Error::input(format!(
                    "{what}: no image under {} has a width in `width` = [{lo}, {hi}]",
                    root.display()
                )));
            }
            items = kept;
        }
        let (mut train, mut test) = (Vec::new(), Vec::new());
        if let Some(g) = &self.test_glob {
            let pat = glob::Pattern::new(g)
                .map_err(|e| Error::input(format!("{what}: `test_glob` {g:?}: {e}")))?;
            for it in items {
                let rel = relative_to(&it.image, &root);
                if pat.matches_path(&rel) {
                    test.push(it);
                } else {
                    train.push(it);
                }
            }
        } else if let Some(ids) = &self.test_ids {
            for id in ids {
                if !items.iter().any(|i| &i.key == id) {
                    return Err(Error::input(format!(
                        "{what}: `test_ids` lists {id:?}, which matches no image key"
                    )));
                }
            }
            for it in items {
                if ids.contains(&it.key) {
                    test.push(it);
                } else {
                    train.push(it);
                }
            }
        } else {
            let frac = self.test_fraction.unwrap_or(0.3);
            let keys: Vec<String> = items.iter().map(|i| i.key.clone()).collect();
            let (_, te) = split_by_fraction(&keys, frac, self.split_seed);
            for it in items {
                if te.contains(&it.key) {
                    test.push(it);
                } else {
                    train.push(it);
                }
            }
        }
        let train = limit(train, self.max_train, self.split_seed);
        let test = limit(test, self.max_test, self.split_seed.wrapping_add(1));
        Ok(Plan {
            train,
            test,
            skipped,
        })
    }

    /// List, pair and split the files: (train, test) cases, images read lazily.
    pub fn load(&self, spec: &Spec, task: &str) -> Result<(Vec<RawCase>, Vec<RawCase>)> {
        let plan = self.plan(spec, task)?;
        let mask = |p: &Path| match &self.mask_values {
            Some(v) => load_mask_values(p, v),
            None => load_mask(p, self.mask_threshold),
        };
        let conv = |items: Vec<Item>| -> Result<Vec<RawCase>> {
            items
                .into_iter()
                .map(|it| {
                    Ok(RawCase {
                        id: it.key.clone(),
                        image: ImageSource::File(it.image.clone()),
                        mask: mask(&it.mask)?,
                        fov: match &it.fov {
                            Some(f) => Some(load_mask(f, self.mask_threshold)?),
                            None => None,
                        },
                    })
                })
                .collect()
        };
        let (train, test) = (conv(plan.train)?, conv(plan.test)?);
        if let Some(v) = &self.mask_values {
            if train.iter().chain(&test).all(|c| c.mask.count() == 0) {
                return Err(Error::input(format!(
                    "task {task:?}: `mask_values` = {v:?} marks no pixel of any mask as foreground (check the \
                     grey values the masks use)"
                )));
            }
        }
        Ok((train, test))
    }
}

/// `path` relative to `root`, ignoring `.` components: `glob` drops the leading `./` of a pattern such as
/// `./../data/*/x.png` (a spec given by a bare file name has the base folder `.`), so a plain `strip_prefix`
/// failed and `test_glob` was matched against the whole path.
pub(crate) fn relative_to(path: &Path, root: &Path) -> PathBuf {
    use std::path::Component;
    fn parts(p: &Path) -> Vec<Component<'_>> {
        p.components()
            .filter(|c| !matches!(c, Component::CurDir))
            .collect()
    }
    let (p, r) = (parts(path), parts(root));
    if p.len() >= r.len() && p[..r.len()] == r[..] {
        p[r.len()..].iter().collect()
    } else {
        path.to_path_buf()
    }
}

/// Load a mask as 8-bit grey and binarise: value > threshold.
pub fn load_mask(path: &Path, threshold: u8) -> Result<Mask2D> {
    load_grey_mask(path, |v| v > threshold)
}

/// Read a mask whose listed 8-bit grey values are foreground (after conversion to grey).
pub fn load_mask_values(path: &Path, values: &[u8]) -> Result<Mask2D> {
    load_grey_mask(path, |v| values.contains(&v))
}

/// A mask file as 8-bit grey, foreground where `fg` holds.
fn load_grey_mask(path: &Path, fg: impl Fn(u8) -> bool) -> Result<Mask2D> {
    let img = image::open(path)
        .map_err(|e| Error::input(format!("{}: cannot read mask: {e}", path.display())))?;
    let g = img.to_luma8();
    let (w, h) = (g.width() as usize, g.height() as usize);
    Ok(Mask2D {
        h,
        w,
        data: g.into_raw().into_iter().map(|v| fg(v) as u8).collect(),
    })
}

#[cfg(test)]
mod tests;
