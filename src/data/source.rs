//! Data sources behind one dispatch: a task's [`SourceTable`] is read into [`SourceSpec`] (each source's own
//! params type), whose [`DataSource`] checks its ranges and, from file listings only, its files (what
//! `evosam validate` prints); then the task is loaded into model-frame cases.

use super::{
    decode, flip_image, flip_mask, folder, make_case_from, nifti, synthetic, tiled, Case,
    DataSource, ImageSource, RawCase, RawImage, TaskData,
};
#[cfg(doc)]
use crate::spec::SourceTable;
use crate::spec::{from_table, Diag, Spec, TaskSpec, TileSpec};
use crate::Result;
use candle_core::Device;
use serde::Serialize;
use std::path::PathBuf;
use toml::Table;

/// A task's data source, read from its [`SourceTable`] into the source's own params type. Serialises as the
/// spec wrote it plus defaults (`{"source": "synthetic", "family": ..}`): the run fingerprint and manifest
/// record this form.
#[derive(Clone, Debug, Serialize)]
#[serde(tag = "source", rename_all = "lowercase")]
pub enum SourceSpec {
    /// Generated vessel/organ images (`source = "synthetic"`).
    Synthetic(synthetic::SyntheticSpec),
    /// Image + mask files (`source = "folder"`).
    Folder(folder::FolderSpec),
    /// NIfTI volumes sliced to 2D (`source = "nifti"`).
    Nifti(nifti::NiftiSpec),
}

/// The data-source kinds this crate reads.
pub const SOURCE_KINDS: &[&str] = &["synthetic", "folder", "nifti"];

/// JSON Schema of each source kind's keys (the params types [`SourceSpec::parse`] reads), in
/// [`SOURCE_KINDS`] order: what `evosam schema` documents.
pub fn source_schemas(gen: &mut schemars::SchemaGenerator) -> Vec<(String, schemars::Schema)> {
    use schemars::JsonSchema;
    vec![
        (
            "synthetic".into(),
            synthetic::SyntheticSpec::json_schema(gen),
        ),
        ("folder".into(), folder::FolderSpec::json_schema(gen)),
        ("nifti".into(), nifti::NiftiSpec::json_schema(gen)),
    ]
}

impl SourceSpec {
    /// Read a source table of kind `kind` and check its ranges (no files are touched).
    pub fn parse(kind: &str, params: &Table) -> std::result::Result<SourceSpec, Diag> {
        let s = match kind {
            "synthetic" => SourceSpec::Synthetic(from_table(params)?),
            "folder" => SourceSpec::Folder(from_table(params)?),
            "nifti" => SourceSpec::Nifti(from_table(params)?),
            other => {
                return Err(Diag::at(
                    "source",
                    format!(
                        "`source` = {other:?} is unknown: use {}",
                        SOURCE_KINDS.join(", ")
                    ),
                ))
            }
        };
        s.source().validate()?;
        Ok(s)
    }

    /// The source's own checks and counts.
    pub fn source(&self) -> &dyn DataSource {
        match self {
            SourceSpec::Synthetic(x) => x,
            SourceSpec::Folder(x) => x,
            SourceSpec::Nifti(x) => x,
        }
    }

    /// The task's tiling, if its source has one (`tile = { .. }` of folder and NIfTI sources).
    pub fn tile(&self) -> Option<&TileSpec> {
        self.source().tile()
    }

    /// The typed source of a task of a parsed spec (the spec checked it already; an error here is a bug).
    pub fn of(spec: &Spec, t: &TaskSpec) -> Result<SourceSpec> {
        Self::parse(&t.source.kind, &t.source.params)
            .map_err(|d| spec.err(format!("line {}: task {:?}: {}", t.line, t.name, d.msg)))
    }
}

impl Spec {
    /// Check every data source (files exist, pairs match, splits non-empty) without decoding images: each
    /// task's source checks its own entry ([`DataSource::check`]). Returns one line per task describing what was
    /// found.
    pub fn check_data(&self) -> Result<Vec<String>> {
        self.stream
            .tasks
            .iter()
            .map(|t| SourceSpec::of(self, t)?.source().check(self, t))
            .collect()
    }
}

/// The files a task leaves out (folder sources with `unpaired = "skip"`: images without a mask), in path order;
/// empty for every other source. From file listings only.
pub fn skipped_inputs(spec: &Spec, t: &TaskSpec) -> Result<Vec<PathBuf>> {
    SourceSpec::of(spec, t)?.source().skipped(spec, &t.name)
}

/// Counts of train and test items (images, or volumes for NIfTI) a task will have, from file listings only.
pub fn plan_counts(spec: &Spec, t: &TaskSpec) -> Result<(usize, usize)> {
    super::kind::split_counts(SourceSpec::of(spec, t)?.source(), spec, t)
}

/// Load one task: decode, preprocess to the model frame, and check that neither split is empty.
/// `augment`: also build each train case's mirrored twin ([`Case::flipped`]). A tiled task's cases are its tiles
/// ([`super::tiled`]).
pub fn load_task(
    spec: &Spec,
    t: &TaskSpec,
    size: usize,
    augment: bool,
    device: &Device,
) -> Result<TaskData> {
    let source = SourceSpec::of(spec, t)?;
    let mut scoring = super::Scoring {
        spacing: [1.0, 1.0],
        nsd_tolerance: spec.eval.nsd_tolerance_mm,
    };
    let mut volumes = Vec::new();
    let (train, test, fov_eval) = match &source {
        SourceSpec::Synthetic(s) => {
            let (a, b) = s.generate()?;
            (a, b, false)
        }
        SourceSpec::Folder(s) => {
            let (a, b) = s.load(spec, &t.name)?;
            if let Some(sp) = s.spacing {
                scoring.spacing = sp;
            }
            (a, b, s.fov_eval)
        }
        SourceSpec::Nifti(s) => {
            let (a, vols) = s.load(spec, &t.name)?;
            let mut test = Vec::new();
            for v in vols {
                let mut slices = Vec::with_capacity(v.slices.len());
                for (z, c) in v.slices {
                    slices.push((z, test.len()));
                    test.push(c);
                }
                volumes.push(super::TestVolume {
                    id: v.id,
                    image: v.image,
                    axis: v.axis,
                    nifti_dims: v.nifti_dims,
                    dims: v.dims,
                    spacing: v.spacing,
                    gt: v.gt,
                    slices,
                });
            }
            (a, test, false)
        }
    };
    if train.is_empty() || test.is_empty() {
        return Err(spec.err(format!(
            "line {}: task {:?} has an empty {} split after loading ({} train, {} test)",
            t.line,
            t.name,
            if train.is_empty() { "train" } else { "test" },
            train.len(),
            test.len()
        )));
    }
    if let Some(ts) = source.tile() {
        let train = tiled::train_tiles(train, ts, &t.name, size, augment, device)?;
        let (test, test_images) = tiled::test_tiles(test, ts, size, device)?;
        if train.is_empty() {
            return Err(spec.err(format!(
                "line {}: task {:?}: no training tile has foreground and `tile.keep_empty` keeps none of the rest",
                t.line, t.name
            )));
        }
        return Ok(TaskData {
            name: t.name.clone(),
            train,
            val: Vec::new(),
            test,
            test_images,
            test_volumes: volumes,
            fov_eval,
            scoring,
        });
    }
    let conv = |v: Vec<RawCase>, aug: bool| -> Result<Vec<Case>> {
        v.into_iter()
            .map(|r| {
                let img = decode(&r)?;
                let twin = if aug {
                    let fr = RawCase {
                        id: format!("{}#hflip", r.id),
                        image: ImageSource::Raw(RawImage {
                            h: 0,
                            w: 0,
                            channels: 3,
                            data: vec![],
                        }),
                        mask: flip_mask(&r.mask),
                        fov: r.fov.as_ref().map(flip_mask),
                    };
                    Some(Box::new(make_case_from(
                        fr,
                        &flip_image(&img),
                        size,
                        device,
                    )?))
                } else {
                    None
                };
                let mut c = make_case_from(r, &img, size, device)?;
                c.flipped = twin;
                Ok(c)
            })
            .collect()
    };
    Ok(TaskData {
        name: t.name.clone(),
        train: conv(train, augment)?,
        val: Vec::new(),
        test: conv(test, false)?,
        test_images: Vec::new(),
        test_volumes: volumes,
        fov_eval,
        scoring,
    })
}
