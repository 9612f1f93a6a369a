//! What the parts of a run share: the options it was started with and the state every cell reads.

use super::progress::Reporter;
use crate::data::TaskData;
use crate::model::LiteMedSam;
use crate::spec::Spec;
use crate::strategy::{EmbeddingStore, Registry};
use candle_core::Device;
use std::path::PathBuf;

/// How to run a spec (the `evosam run` flags). `#[non_exhaustive]`: start from [`RunOptions::default`] and set
/// the fields you need (new options may come in a minor release).
///
/// ```
/// let mut opts = evosam::RunOptions::default();
/// opts.out = Some("results".into());
/// opts.quiet = true;
/// assert_eq!(opts.jobs, 1);
/// assert!(opts.report);
/// ```
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct RunOptions {
    /// Results root (default: the spec's `output`); results go to `<out>/<experiment name>/`.
    pub out: Option<PathBuf>,
    /// Cells run concurrently.
    pub jobs: usize,
    /// Continue an interrupted run in the same folder.
    pub resume: bool,
    /// No progress output (errors are still returned).
    pub quiet: bool,
    /// Write the report (plots/, tables/) into the run folder at the end (`evosam report` does the same).
    pub report: bool,
}

impl Default for RunOptions {
    fn default() -> Self {
        Self {
            out: None,
            jobs: 1,
            resume: false,
            quiet: false,
            report: true,
        }
    }
}

/// What every cell reads.
pub(super) struct Shared {
    pub spec: Spec,
    pub registry: Registry,
    pub model: LiteMedSam,
    pub sha: String,
    pub tasks: Vec<TaskData>,
    pub store: EmbeddingStore,
    pub dir: PathBuf,
    pub device: Device,
    pub reporter: Reporter,
}
