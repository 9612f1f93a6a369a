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
//! max_train = 64                    # optional slice limits (seeded subsets)
//! max_test = 32
//! # tile = { size = 256, overlap = 32 } # optional: native-resolution tiles of each slice
//! ```
//! A case never lands on both sides of the split: the split is made on volumes before slicing.

use super::folder::validate_split;
use super::{
    glob_files, limit, match_key, split_by_fraction, ImageSource, Mask2D, RawCase, RawImage,
};
use crate::spec::{Diag, Spec, TileSpec};
use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// A `source = "nifti"` task's keys (see the module docs for an example).
#[derive(Clone, Debug, Serialize, Deserialize)]
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
    /// At most this many test slices (a seeded subset).
    #[serde(default)]
    pub max_test: Option<usize>,
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

/// A volume as (dims [X,Y,Z], values in logical C order: index (x*Y + y)*Z + z).
pub struct Volume {
    /// Size along x, y, z.
    pub dims: [usize; 3],
    /// Voxel values (scaled by the header's slope and intercept).
    pub data: Vec<f32>,
}

impl NiftiSpec {
    /// Split rule, axis and limits (no files involved). The error names the key at fault.
    pub fn validate(&self) -> std::result::Result<(), Diag> {
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
        if matches!(self.max_train, Some(0)) || matches!(self.max_test, Some(0)) {
            let k = if matches!(self.max_train, Some(0)) {
                "max_train"
            } else {
                "max_test"
            };
            return Err(Diag::at(k, "`max_train`/`max_test` must be >= 1"));
        }
        Ok(())
    }

    /// Pair the volumes and split them; errors name the task and the folder.
    pub fn plan(&self, spec: &Spec, task: &str) -> Result<Plan> {
        let root = spec.resolve_path(&self.root);
        let what = format!("task {task:?}");
        if !root.is_dir() {
            return Err(Error::input(format!(
                "{what}: data folder {} does not exist",
                root.display()
            )));
        }
        let images = glob_files(&root, &self.images, &what)?;
        if images.is_empty() {
            return Err(Error::input(format!(
                "{what}: no volume matches {:?} under {}",
                self.images,
                root.display()
            )));
        }
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

    /// Read, slice and filter the planned volumes: (train, test) 2-D cases.
    pub fn load(&self, spec: &Spec, task: &str) -> Result<(Vec<RawCase>, Vec<RawCase>)> {
        let plan = self.plan(spec, task)?;
        let slices = |pairs: &[VolumePair]| -> Result<Vec<RawCase>> {
            let mut out = Vec::new();
            for p in pairs {
                let vol = read_volume(&p.image)?;
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
                out.extend(self.slice_case(&p.key, &vol, &lab));
            }
            Ok(out)
        };
        let train = limit(slices(&plan.train)?, self.max_train, self.split_seed);
        let test = limit(
            slices(&plan.test)?,
            self.max_test,
            self.split_seed.wrapping_add(1),
        );
        Ok((train, test))
    }

    fn is_fg(&self, v: f32) -> bool {
        match &self.label_values {
            Some(vals) => vals.contains(&(v.round() as i64)),
            None => v > 0.5,
        }
    }

    /// 2-D slices along `axis`: rows follow the later remaining axis, columns the earlier one.
    pub fn slice_case(&self, key: &str, vol: &Volume, lab: &Volume) -> Vec<RawCase> {
        let [nx, ny, nz] = vol.dims;
        let idx = |x: usize, y: usize, z: usize| (x * ny + y) * nz + z;
        let (ns, rows, cols) = match self.axis {
            0 => (nx, nz, ny),
            1 => (ny, nz, nx),
            _ => (nz, ny, nx),
        };
        let mut out = Vec::new();
        for s in 0..ns {
            let mut img = Vec::with_capacity(rows * cols);
            let mut m = Vec::with_capacity(rows * cols);
            for r in 0..rows {
                for c in 0..cols {
                    let i = match self.axis {
                        0 => idx(s, c, r),
                        1 => idx(c, s, r),
                        _ => idx(c, r, s),
                    };
                    img.push(vol.data[i]);
                    m.push(self.is_fg(lab.data[i]) as u8);
                }
            }
            let mask = Mask2D {
                h: rows,
                w: cols,
                data: m,
            };
            if self.foreground_only && mask.count() < self.min_foreground.max(1) {
                continue;
            }
            out.push(RawCase {
                id: format!("{key}/{s:03}"),
                image: ImageSource::Raw(RawImage {
                    h: rows,
                    w: cols,
                    channels: 1,
                    data: img,
                }),
                mask,
                fov: None,
            });
        }
        out
    }
}

/// Read a `.nii`/`.nii.gz` volume as f32 (scaling applied). 4-D volumes with one time point are accepted.
pub fn read_volume(path: &Path) -> Result<Volume> {
    use nifti::{IntoNdArray, NiftiObject};
    let p = path.to_path_buf();
    let res = std::panic::catch_unwind(
        move || -> std::result::Result<(Vec<usize>, Vec<f32>), String> {
            let obj = nifti::ReaderOptions::new()
                .read_file(&p)
                .map_err(|e| e.to_string())?;
            let arr = obj
                .into_volume()
                .into_ndarray::<f32>()
                .map_err(|e| e.to_string())?;
            let shape = arr.shape().to_vec();
            let data: Vec<f32> = arr.iter().copied().collect();
            Ok((shape, data))
        },
    );
    let (shape, data) = match res {
        Ok(Ok(x)) => x,
        Ok(Err(e)) => {
            return Err(Error::input(format!(
                "{}: cannot read NIfTI: {e}",
                path.display()
            )))
        }
        Err(_) => {
            return Err(Error::input(format!(
                "{}: cannot read NIfTI (corrupt file)",
                path.display()
            )))
        }
    };
    let dims = match shape.as_slice() {
        [x, y] => [*x, *y, 1],
        [x, y, z] => [*x, *y, *z],
        [x, y, z, 1] => [*x, *y, *z],
        s => {
            return Err(Error::input(format!(
                "{}: volume has shape {s:?}; expected 2-D, 3-D or 4-D with one time point",
                path.display()
            )))
        }
    };
    if data.iter().any(|v| !v.is_finite()) {
        return Err(Error::input(format!(
            "{}: volume has non-finite values",
            path.display()
        )));
    }
    Ok(Volume { dims, data })
}

/// Write a minimal NIfTI-1 single file (float32 data, x fastest on disk), for the tests.
#[cfg(test)]
pub(crate) fn write_nifti_f32(
    path: &Path,
    dims: [usize; 3],
    data_xyz: impl Fn(usize, usize, usize) -> f32,
) -> Result<()> {
    let mut h = vec![0u8; 352];
    h[0..4].copy_from_slice(&348i32.to_le_bytes());
    let d: [i16; 8] = [
        3,
        dims[0] as i16,
        dims[1] as i16,
        dims[2] as i16,
        1,
        1,
        1,
        1,
    ];
    for (i, v) in d.iter().enumerate() {
        h[40 + 2 * i..42 + 2 * i].copy_from_slice(&v.to_le_bytes());
    }
    h[70..72].copy_from_slice(&16i16.to_le_bytes()); // FLOAT32
    h[72..74].copy_from_slice(&32i16.to_le_bytes());
    for i in 0..8 {
        h[76 + 4 * i..80 + 4 * i].copy_from_slice(&1f32.to_le_bytes());
    }
    h[108..112].copy_from_slice(&352f32.to_le_bytes());
    h[112..116].copy_from_slice(&1f32.to_le_bytes()); // scl_slope
    h[344..348].copy_from_slice(b"n+1\0");
    for z in 0..dims[2] {
        for y in 0..dims[1] {
            for x in 0..dims[0] {
                h.extend_from_slice(&data_xyz(x, y, z).to_le_bytes());
            }
        }
    }
    std::fs::write(path, h).map_err(|e| Error::io(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec_in(dir: &Path) -> Spec {
        let text = "[experiment]\nname = \"x\"\n[stream]\n[[stream.task]]\nname = \"a\"\nsource = \"synthetic\"\nfamily = \"vessels\"\n[[strategy]]\npreset = \"zeroshot\"\n";
        Spec::from_str_at(text, &dir.join("spec.toml"), dir).unwrap()
    }

    /// A gzip stream with stored (uncompressed) deflate blocks.
    fn gzip_stored(data: &[u8]) -> Vec<u8> {
        let mut crc = 0xffff_ffffu32;
        for &b in data {
            crc ^= b as u32;
            for _ in 0..8 {
                crc = if crc & 1 != 0 {
                    (crc >> 1) ^ 0xedb8_8320
                } else {
                    crc >> 1
                };
            }
        }
        let crc = !crc;
        let mut out = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 255];
        let chunks: Vec<&[u8]> = data.chunks(65535).collect();
        for (i, c) in chunks.iter().enumerate() {
            out.push((i + 1 == chunks.len()) as u8);
            let n = c.len() as u16;
            out.extend_from_slice(&n.to_le_bytes());
            out.extend_from_slice(&(!n).to_le_bytes());
            out.extend_from_slice(c);
        }
        out.extend_from_slice(&crc.to_le_bytes());
        out.extend_from_slice(&(data.len() as u32).to_le_bytes());
        out
    }

    #[test]
    fn reads_slices_and_splits_by_case() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("vols");
        std::fs::create_dir_all(&d).unwrap();
        // 4 cases, 6x5x4 volumes; label foreground only in slices z = 1 and 2, value 1 at x < 2 (z=1), 2 at z=2
        for c in 0..4 {
            write_nifti_f32(&d.join(format!("case{c}.nii")), [6, 5, 4], |x, y, z| {
                (c * 100 + x + 10 * y + z) as f32
            })
            .unwrap();
            write_nifti_f32(
                &d.join(format!("case{c}_seg.nii")),
                [6, 5, 4],
                |x, _, z| match z {
                    1 if x < 2 => 1.0,
                    2 if x >= 3 => 2.0,
                    _ => 0.0,
                },
            )
            .unwrap();
        }
        let v = read_volume(&d.join("case1.nii")).unwrap();
        assert_eq!(v.dims, [6, 5, 4]);
        // logical index (x*Y + y)*Z + z
        assert_eq!(v.data[(3 * 5 + 2) * 4 + 1], (100 + 3 + 20 + 1) as f32);

        let spec = spec_in(dir.path());
        let n: NiftiSpec = toml::from_str(
            "root = \"vols\"\nimages = \"case*.nii\"\nlabels = \"case*_seg.nii\"\nstrip = [\"_seg\"]\ntest_ids = [\"case2\"]",
        )
        .unwrap();
        n.validate().unwrap();
        let (tr, te) = n.load(&spec, "a").unwrap();
        // 3 train cases x 2 foreground slices, 1 test case x 2
        assert_eq!((tr.len(), te.len()), (6, 2));
        assert!(te.iter().all(|c| c.id.starts_with("case2/")));
        assert!(tr.iter().all(|c| !c.id.starts_with("case2/")));
        let c = &te[0];
        assert_eq!(c.id, "case2/001");
        assert_eq!((c.mask.w, c.mask.h), (6, 5)); // axis 2: rows = y, cols = x
        assert_eq!(c.mask.count(), 2 * 5);
        match &c.image {
            ImageSource::Raw(r) => assert_eq!(r.data[2 * 6 + 4], (200 + 4 + 20 + 1) as f32), // (y=2, x=4)
            _ => panic!(),
        }
        // label_values picks only value 2 -> only slice 2 stays
        let n2: NiftiSpec = toml::from_str(
            "root = \"vols\"\nimages = \"case*.nii\"\nlabels = \"case*_seg.nii\"\nstrip = [\"_seg\"]\ntest_fraction = 0.5\nlabel_values = [2]\naxis = 2",
        )
        .unwrap();
        let (tr, te) = n2.load(&spec, "a").unwrap();
        assert_eq!((tr.len(), te.len()), (2, 2));
        let keys = |v: &[RawCase]| {
            v.iter()
                .map(|c| c.id.split('/').next().unwrap().to_string())
                .collect::<Vec<_>>()
        };
        assert!(keys(&tr).iter().all(|k| !keys(&te).contains(k)));
        // all slices, axis 0
        let n3: NiftiSpec = toml::from_str(
            "root = \"vols\"\nimages = \"case*.nii\"\nlabels = \"case*_seg.nii\"\nstrip = [\"_seg\"]\ntest_ids = [\"case0\"]\naxis = 0\nforeground_only = false",
        )
        .unwrap();
        let (tr, te) = n3.load(&spec, "a").unwrap();
        assert_eq!((tr.len(), te.len()), (18, 6));
        assert_eq!((te[0].mask.w, te[0].mask.h), (5, 4));

        // .nii.gz volumes (gzip with stored deflate blocks) read the same
        let gz = |src: &Path, dst: &Path| {
            let raw = std::fs::read(src).unwrap();
            std::fs::write(dst, gzip_stored(&raw)).unwrap();
        };
        let g = dir.path().join("gz");
        std::fs::create_dir_all(&g).unwrap();
        gz(&d.join("case1.nii"), &g.join("case1.nii.gz"));
        let vz = read_volume(&g.join("case1.nii.gz")).unwrap();
        assert_eq!(vz.dims, v.dims);
        assert_eq!(vz.data, v.data);

        // corrupt file -> error naming it, no panic
        std::fs::write(d.join("case3.nii"), b"garbage").unwrap();
        let e = n.load(&spec, "a").err().unwrap().to_string();
        assert!(e.contains("case3.nii"), "{e}");
        // missing label
        std::fs::remove_file(d.join("case1_seg.nii")).unwrap();
        let e = n.plan(&spec, "a").err().unwrap().to_string();
        assert!(e.contains("case1.nii") && e.contains("no label"), "{e}");
        assert!(toml::from_str::<NiftiSpec>(
            "images = \"a\"\nlabels = \"b\"\naxis = 3\ntest_fraction = 0.2"
        )
        .unwrap()
        .validate()
        .is_err());
    }
}
