//! The images of a study: every image file of a folder (with ground truth from a mask folder when given), or the
//! test split of one task of an experiment spec. The server reads images only from this list, by index.

use std::path::{Path, PathBuf};

use crate::data::SourceSpec;
use crate::data::{folder::load_mask, raw_to_image, ImageSource, Mask2D, RawCase};
use crate::preprocess::{load_image, Image};
use crate::{Error, Result};

/// One image of the study.
pub struct StudyCase {
    /// Case id (file stem, or the spec's case id).
    pub id: String,
    /// Where the image comes from.
    pub image: ImageSource,
    /// Ground truth at original resolution, when known.
    pub gt: Option<Mask2D>,
    /// Field of view Dice is scored in, when the task scores inside one.
    pub fov: Option<Mask2D>,
}

impl StudyCase {
    /// Decode the image.
    pub fn decode(&self) -> Result<Image> {
        match &self.image {
            ImageSource::File(p) => load_image(p),
            ImageSource::Raw(r) => raw_to_image(r),
        }
    }
}

const IMAGE_EXTS: &[&str] = &["png", "jpg", "jpeg", "tif", "tiff", "gif", "ppm", "pgm"];

fn is_image(p: &Path) -> bool {
    p.is_file()
        && p.extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| IMAGE_EXTS.contains(&e.to_ascii_lowercase().as_str()))
}

fn stem(p: &Path) -> String {
    p.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Image files directly in `dir` (sorted by name); `masks`: a folder with one mask per image, paired by file stem
/// (foreground > 127), when the study has ground truth.
pub fn from_folder(dir: &Path, masks: Option<&Path>) -> Result<Vec<StudyCase>> {
    let list = |d: &Path| -> Result<Vec<PathBuf>> {
        let rd = std::fs::read_dir(d).map_err(|e| Error::io(d, e))?;
        let mut v: Vec<PathBuf> = rd
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| is_image(p))
            .collect();
        v.sort();
        Ok(v)
    };
    let images = list(dir)?;
    if images.is_empty() {
        return Err(Error::input(format!(
            "{}: no image files ({})",
            dir.display(),
            IMAGE_EXTS.join(", ")
        )));
    }
    let mask_files = match masks {
        Some(m) => Some(list(m)?),
        None => None,
    };
    let mut out = Vec::with_capacity(images.len());
    for p in images {
        let id = stem(&p);
        let gt = match &mask_files {
            None => None,
            Some(files) => {
                let m = files.iter().find(|f| stem(f) == id).ok_or_else(|| {
                    Error::input(format!(
                        "{}: no mask named {id}.* in {}",
                        p.display(),
                        masks.unwrap_or(Path::new(".")).display()
                    ))
                })?;
                Some(load_mask(m, 127)?)
            }
        };
        out.push(StudyCase {
            id,
            image: ImageSource::File(p),
            gt,
            fov: None,
        });
    }
    Ok(out)
}

/// The test split of task `task` of the spec at `spec_path` (ground truth included).
pub fn from_spec(spec_path: &Path, task: &str) -> Result<Vec<StudyCase>> {
    let spec = crate::Spec::from_file(spec_path)?;
    let t = spec
        .stream
        .tasks
        .iter()
        .find(|t| t.name == task)
        .ok_or_else(|| {
            Error::input(format!(
                "{}: no task `{task}` (tasks: {})",
                spec_path.display(),
                spec.task_names().join(", ")
            ))
        })?;
    let (test, fov_eval) = match SourceSpec::of(&spec, t)? {
        SourceSpec::Synthetic(s) => (s.generate()?.1, false),
        SourceSpec::Folder(s) => (s.load(&spec, &t.name)?.1, s.fov_eval),
        // the annotation page shows slices: every prompted slice of every test volume
        SourceSpec::Nifti(s) => (
            s.load(&spec, &t.name)?
                .1
                .into_iter()
                .flat_map(|v| v.slices.into_iter().map(|(_, c)| c))
                .collect(),
            false,
        ),
    };
    if test.is_empty() {
        return Err(Error::input(format!(
            "{}: task `{task}` has no test images",
            spec_path.display()
        )));
    }
    Ok(test
        .into_iter()
        .map(|r: RawCase| StudyCase {
            id: r.id,
            image: r.image,
            gt: Some(r.mask),
            fov: if fov_eval { r.fov } else { None },
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folder_pairs_masks_by_stem_and_names_a_missing_one() {
        let d = tempfile::tempdir().unwrap();
        let (im, ms) = (d.path().join("im"), d.path().join("ms"));
        std::fs::create_dir_all(&im).unwrap();
        std::fs::create_dir_all(&ms).unwrap();
        for n in ["b", "a"] {
            image::RgbImage::new(4, 3)
                .save(im.join(format!("{n}.png")))
                .unwrap();
        }
        std::fs::write(im.join("notes.txt"), "x").unwrap();
        let mut m = image::GrayImage::new(4, 3);
        m.put_pixel(1, 1, image::Luma([255]));
        m.save(ms.join("a.png")).unwrap();
        let e = from_folder(&im, Some(&ms)).err().unwrap();
        assert_eq!(e.exit_code(), 2);
        assert!(e.to_string().contains("no mask named b"), "{e}");
        m.save(ms.join("b.png")).unwrap();
        let cs = from_folder(&im, Some(&ms)).unwrap();
        assert_eq!(
            cs.iter().map(|c| c.id.as_str()).collect::<Vec<_>>(),
            ["a", "b"]
        );
        assert_eq!(cs[0].gt.as_ref().unwrap().count(), 1);
        assert!(from_folder(&im, None).unwrap()[0].gt.is_none());
        assert_eq!(
            from_folder(&ms.join("nope"), None)
                .err()
                .unwrap()
                .exit_code(),
            2
        );
    }
}
