//! `source = "nifti"`: 3-D volumes and label volumes (`.nii` / `.nii.gz`), sliced to 2-D.
//!
//! ```toml
//! [[stream.task]]
//! name = "RUNMC"
//! source = "nifti"
//! root = "/data/prostate/RUNMC"
//! images = "Case*.nii.gz"           # globs relative to root
//! labels = "Case*_segmentation.nii.gz"
//! strip = ["_segmentation"]         # removed from stems' start/end to pair volumes with labels
//! axis = 2                          # slice axis (0, 1 or 2)
//! foreground_only = true            # keep only slices whose label has >= min_foreground pixels
//! min_foreground = 1
//! label_values = [1, 2]             # which label values are foreground (default: any value > 0)
//! test_fraction = 0.3               # split by case (volume), seeded by split_seed; or test_ids = [...]
//! max_train = 64                    # optional: at most this many training slices (a seeded subset)
//! max_test_volumes = 8              # optional: at most this many test volumes (a seeded subset)
//! intensity = { clip = [0.5, 99.5] } # per-volume percentile clipping before scaling (the default)
//! # tile = { size = 256, overlap = 32 } # optional: native-resolution tiles of each slice
//! ```
//! A case never lands on both sides of the split: the split is made on volumes before slicing.
//!
//! Training cases are slices. A **test case is a volume**: every slice the protocol prompts (those with at least
//! `min_foreground` label pixels, each with its label's box, as MedSAM evaluates) is predicted, the predictions are
//! stacked back (background on the other slices) and Dice, NSD and HD95 are computed in 3-D with the header's
//! voxel spacing (`runner::eval`). Intensities: each volume is clipped at its `intensity.clip` percentiles (MedSAM's
//! MR recipe; `[0, 100]` turns it off), then every slice is min-max scaled as any image is.

#[cfg(test)]
mod tests;
mod volume;

pub use volume::{clip_percentiles, read_volume, write_mask_volume, Volume};
#[cfg(test)]
pub(crate) use volume::{write_nifti_f32, write_nifti_f32_spaced};

use super::folder::validate_split;
use super::{
    glob_files, limit, match_key, split_by_fraction, DataSource, ImageSource, Mask2D, RawCase,
    RawImage,
};
use crate::spec::{Diag, Spec, TileSpec};
use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// A `source = "nifti"` task's keys (see the module docs for an example).
#[derive(Clone, Debug, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NiftiSpec {
    /// Folder the globs are relative to (relative paths: to the spec file's folder).
    #[serde(default = "d_root")]
    pub root: PathBuf,
    /// Glob of the image volumes.
    pub images: String,
    /// Glob of the label volumes.
    pub labels: String,
    /// Strings removed from the start/end of file stems to pair volumes with labels.
    #[serde(default)]
    pub strip: Vec<String>,
    /// Slice axis: 0, 1 or 2.
    #[serde(default = "d_axis")]
    pub axis: usize,
    /// Keep only slices with at least `min_foreground` foreground pixels.
    #[serde(default = "d_true")]
    pub foreground_only: bool,
    /// Foreground pixels a slice needs with `foreground_only`.
    #[serde(default = "d_minfg")]
    pub min_foreground: usize,
    /// Label values that count as foreground (default: any value > 0).
    #[serde(default)]
    pub label_values: Option<Vec<i64>>,
    /// Split rule: these case keys are the test set.
    #[serde(default)]
    pub test_ids: Option<Vec<String>>,
    /// Split rule: this fraction of the volumes is the test set (seeded by `split_seed`).
    #[serde(default)]
    pub test_fraction: Option<f64>,
    /// Seed of the fraction split and of the `max_train` / `max_test` subsets.
    #[serde(default)]
    pub split_seed: u64,
    /// At most this many training slices (a seeded subset).
    #[serde(default)]
    pub max_train: Option<usize>,
    /// Refused: test cases are volumes (use `max_test_volumes`); kept so the message can say so.
    #[serde(default, skip_serializing)]
    pub max_test: Option<usize>,
    /// At most this many test volumes (a seeded subset).
    #[serde(default)]
    pub max_test_volumes: Option<usize>,
    /// MRI intensity handling before the model's own scaling.
    #[serde(default)]
    pub intensity: Intensity,
    /// Cut each slice into tiles at native resolution (see [`TileSpec`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tile: Option<TileSpec>,
}

fn d_root() -> PathBuf {
    PathBuf::from(".")
}
fn d_axis() -> usize {
    2
}
fn d_true() -> bool {
    true
}
fn d_minfg() -> usize {
    1
}

/// `intensity = { clip = [lo, hi] }`: clip each volume at these percentiles (0-100) before slicing.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Intensity {
    /// Lower and upper percentile; `[0, 100]` keeps every value.
    #[serde(default = "d_clip")]
    pub clip: [f64; 2],
}

impl Default for Intensity {
    fn default() -> Self {
        Intensity { clip: d_clip() }
    }
}

fn d_clip() -> [f64; 2] {
    [0.5, 99.5]
}

/// A test volume before its slices become model-frame cases: the label volume in the slice frame and the slices
/// to predict.
pub struct RawTestVolume {
    /// The volume's case key.
    pub id: String,
    /// The image volume (its header goes with saved predictions).
    pub image: PathBuf,
    /// Slice axis of the task.
    pub axis: usize,
    /// The NIfTI dims [X, Y, Z].
    pub nifti_dims: [usize; 3],
    /// (slices, rows, cols) in the slice frame.
    pub dims: [usize; 3],
    /// Physical spacing between slices, rows and columns.
    pub spacing: [f64; 3],
    /// Ground truth, slice-major in the slice frame.
    pub gt: Vec<bool>,
    /// The prompted slices: (slice index, the slice as a 2-D case).
    pub slices: Vec<(usize, RawCase)>,
}

/// An image volume and its label volume.
pub struct VolumePair {
    /// The case key both file stems reduce to.
    pub key: String,
    /// The image volume.
    pub image: PathBuf,
    /// The label volume.
    pub label: PathBuf,
}

/// The volumes of each split, before slicing (no volume is on both sides).
pub struct Plan {
    /// Training volumes.
    pub train: Vec<VolumePair>,
    /// Test volumes.
    pub test: Vec<VolumePair>,
}

impl DataSource for NiftiSpec {
    /// Split rule, axis and limits (no files involved). The error names the key at fault.
    fn validate(&self) -> std::result::Result<(), Diag> {
        validate_split(None, self.test_ids.as_ref(), self.test_fraction, false)?;
        if let Some(t) = &self.tile {
            t.validate()?;
        }
        if self.axis > 2 {
            return Err(Diag::at(
                "axis",
                format!("`axis` = {} must be 0, 1 or 2", self.axis),
            ));
        }
        if self.max_test.is_some() {
            return Err(Diag::at(
                "max_test",
                "`max_test` counted test slices; a NIfTI task's test cases are volumes, scored in 3-D: use \
                 `max_test_volumes` (`max_train` still counts slices)",
            ));
        }
        if matches!(self.max_train, Some(0)) || matches!(self.max_test_volumes, Some(0)) {
            let k = if matches!(self.max_train, Some(0)) {
                "max_train"
            } else {
                "max_test_volumes"
            };
            return Err(Diag::at(k, format!("`{k}` must be >= 1")));
        }
        let [lo, hi] = self.intensity.clip;
        if !(0.0..=100.0).contains(&lo) || !(0.0..=100.0).contains(&hi) || lo >= hi {
            return Err(Diag::at(
                "intensity",
                format!(
                    "`intensity.clip` = [{lo}, {hi}] must be two percentiles 0 <= lo < hi <= 100"
                ),
            ));
        }
        Ok(())
    }

    fn tile(&self) -> Option<&TileSpec> {
        self.tile.as_ref()
    }

    /// The volumes of each split (test volumes up to `max_test_volumes`).
    fn counts(&self, spec: &Spec, task: &str) -> Result<(usize, usize)> {
        let p = self.plan(spec, task)?;
        let te = p.test.len();
        Ok((
            p.train.len(),
            self.max_test_volumes.map_or(te, |m| te.min(m)),
        ))
    }

    fn unit(&self) -> &'static str {
        " volumes"
    }
}

impl NiftiSpec {
    /// Pair the volumes and split them; errors name the task and the folder.
    pub fn plan(&self, spec: &Spec, task: &str) -> Result<Plan> {
        let what = format!("task {task:?}");
        let (root, images) = super::list_inputs(spec, &self.root, &self.images, &what, "volume")?;
        let mut labels = BTreeMap::new();
        for p in glob_files(&root, &self.labels, &what)? {
            labels.insert(match_key(&p, &self.strip), p);
        }
        let mut pairs = Vec::new();
        for img in images {
            // a label file may also match the image pattern (e.g. "Case*.nii.gz"): skip it
            if labels.values().any(|l| l == &img) {
                continue;
            }
            let key = match_key(&img, &self.strip);
            let label = labels.get(&key).cloned().ok_or_else(|| {
                Error::input(format!(
                    "{what}: volume {} has no label volume (key {key:?})",
                    img.display()
                ))
            })?;
            if pairs.iter().any(|p: &VolumePair| p.key == key) {
                return Err(Error::input(format!(
                    "{what}: two volumes share the key {key:?} (adjust `strip`)"
                )));
            }
            pairs.push(VolumePair {
                key,
                image: img,
                label,
            });
        }
        if pairs.is_empty() {
            return Err(Error::input(format!(
                "{what}: no image volumes left after removing label files"
            )));
        }
        let test_keys: Vec<String> = if let Some(ids) = &self.test_ids {
            for id in ids {
                if !pairs.iter().any(|p| &p.key == id) {
                    return Err(Error::input(format!(
                        "{what}: `test_ids` lists {id:?}, which matches no volume key"
                    )));
                }
            }
            ids.clone()
        } else {
            let keys: Vec<String> = pairs.iter().map(|p| p.key.clone()).collect();
            split_by_fraction(&keys, self.test_fraction.unwrap_or(0.3), self.split_seed).1
        };
        let (test, train): (Vec<_>, Vec<_>) =
            pairs.into_iter().partition(|p| test_keys.contains(&p.key));
        Ok(Plan { train, test })
    }

    /// Read one volume pair: both volumes, dims checked, intensities clipped.
    fn read_pair(&self, p: &VolumePair) -> Result<(Volume, Volume)> {
        let mut vol = read_volume(&p.image)?;
        let lab = read_volume(&p.label)?;
        if vol.dims != lab.dims {
            return Err(Error::input(format!(
                "{}: volume dims {:?} differ from its label volume {} dims {:?}",
                p.image.display(),
                vol.dims,
                p.label.display(),
                lab.dims
            )));
        }
        let [lo, hi] = self.intensity.clip;
        if lo > 0.0 || hi < 100.0 {
            clip_percentiles(&mut vol.data, lo, hi);
        }
        Ok((vol, lab))
    }

    /// Read, slice and filter the planned volumes: the training slices (at most `max_train`) and the test
    /// volumes (at most `max_test_volumes`). A label list that leaves no foreground in any volume of a split is
    /// an input error naming the task.
    pub fn load(&self, spec: &Spec, task: &str) -> Result<(Vec<RawCase>, Vec<RawTestVolume>)> {
        let plan = self.plan(spec, task)?;
        let mut train = Vec::new();
        for p in &plan.train {
            let (vol, lab) = self.read_pair(p)?;
            train.extend(
                self.slice_case(&p.key, &vol, &lab)
                    .into_iter()
                    .map(|(_, c)| c),
            );
        }
        let train = limit(train, self.max_train, self.split_seed);
        let test_pairs = limit(
            plan.test,
            self.max_test_volumes,
            self.split_seed.wrapping_add(1),
        );
        let mut test = Vec::new();
        for p in &test_pairs {
            let (vol, lab) = self.read_pair(p)?;
            let (dims, gt) = self.label_frame(&lab);
            let slices = self.slices(&p.key, &vol, &gt);
            test.push(RawTestVolume {
                id: p.key.clone(),
                image: p.image.clone(),
                axis: self.axis,
                nifti_dims: vol.dims,
                dims,
                spacing: slice_frame(self.axis, vol.spacing),
                gt,
                slices,
            });
        }
        let fg = |v: &RawTestVolume| v.gt.iter().any(|&x| x);
        if !test.is_empty() && !test.iter().any(fg) {
            return Err(Error::input(format!(
                "task {task:?}: no test volume has foreground with `label_values` = {:?}",
                self.label_values
            )));
        }
        Ok((train, test))
    }

    /// The label volume as foreground bits in the slice frame: ((slices, rows, cols), slice-major values).
    fn label_frame(&self, lab: &Volume) -> ([usize; 3], Vec<bool>) {
        let [_, ny, nz] = lab.dims;
        let (ns, rows, cols) = frame_dims(self.axis, lab.dims);
        let mut gt = Vec::with_capacity(ns * rows * cols);
        for s in 0..ns {
            for r in 0..rows {
                for c in 0..cols {
                    let (x, y, z) = to_xyz(self.axis, s, r, c);
                    gt.push(self.is_fg(lab.data[(x * ny + y) * nz + z]));
                }
            }
        }
        ([ns, rows, cols], gt)
    }

    fn is_fg(&self, v: f32) -> bool {
        match &self.label_values {
            Some(vals) => vals.contains(&(v.round() as i64)),
            None => v > 0.5,
        }
    }

    /// 2-D slices along `axis` (rows follow the later remaining axis, columns the earlier one), with their slice
    /// index; with `foreground_only`, only those with at least `min_foreground` label pixels.
    pub fn slice_case(&self, key: &str, vol: &Volume, lab: &Volume) -> Vec<(usize, RawCase)> {
        let (_, gt) = self.label_frame(lab);
        self.slices(key, vol, &gt)
    }

    /// [`NiftiSpec::slice_case`] with the label already in the slice frame ([`NiftiSpec::label_frame`]).
    fn slices(&self, key: &str, vol: &Volume, gt: &[bool]) -> Vec<(usize, RawCase)> {
        let [_, ny, nz] = vol.dims;
        let (ns, rows, cols) = frame_dims(self.axis, vol.dims);
        let plane = rows * cols;
        let mut out = Vec::new();
        for s in 0..ns {
            let mut img = Vec::with_capacity(plane);
            for r in 0..rows {
                for c in 0..cols {
                    let (x, y, z) = to_xyz(self.axis, s, r, c);
                    img.push(vol.data[(x * ny + y) * nz + z]);
                }
            }
            let mask = Mask2D {
                h: rows,
                w: cols,
                data: gt[s * plane..(s + 1) * plane]
                    .iter()
                    .map(|&g| g as u8)
                    .collect(),
            };
            if self.foreground_only && mask.count() < self.min_foreground.max(1) {
                continue;
            }
            out.push((
                s,
                RawCase {
                    id: format!("{key}/{s:03}"),
                    image: ImageSource::Raw(RawImage {
                        h: rows,
                        w: cols,
                        channels: 1,
                        data: img,
                    }),
                    mask,
                    fov: None,
                },
            ));
        }
        out
    }
}

/// (slices, rows, cols) of a volume of NIfTI dims [X, Y, Z] sliced along `axis`.
pub fn frame_dims(axis: usize, [nx, ny, nz]: [usize; 3]) -> (usize, usize, usize) {
    match axis {
        0 => (nx, nz, ny),
        1 => (ny, nz, nx),
        _ => (nz, ny, nx),
    }
}

/// The NIfTI voxel (x, y, z) of slice `s`, row `r`, column `c` when slicing along `axis`.
pub fn to_xyz(axis: usize, s: usize, r: usize, c: usize) -> (usize, usize, usize) {
    match axis {
        0 => (s, c, r),
        1 => (c, s, r),
        _ => (c, r, s),
    }
}

/// Spacing along x, y, z as (slices, rows, cols) of the slice frame.
pub fn slice_frame(axis: usize, [sx, sy, sz]: [f64; 3]) -> [f64; 3] {
    match axis {
        0 => [sx, sz, sy],
        1 => [sy, sz, sx],
        _ => [sz, sy, sx],
    }
}
