//! The trait every data-source kind implements ([`DataSource`]): its own params check and, from file listings only,
//! its own file check, which `evosam validate` runs. Apart from the dispatch (`source.rs`), so that each source's
//! file depends on this one and not on the others.

use std::path::PathBuf;

use crate::spec::{Diag, Spec, TaskSpec, TileSpec};
use crate::Result;

/// One kind of data source, as [`SourceSpec`](super::SourceSpec) dispatches to it: each kind checks its own
/// params and, from file listings only, its own files, the way it lists them to load. A new kind implements this
/// trait and takes one arm in `SourceSpec`; [`Spec::check_data`] (`evosam validate`) then checks its tasks too.
pub trait DataSource {
    /// Ranges and combinations of the params (no files involved); the error names the key at fault.
    fn validate(&self) -> std::result::Result<(), Diag>;

    /// The task's tiling, if the source has one (`tile = { .. }`).
    fn tile(&self) -> Option<&TileSpec> {
        None
    }

    /// Train and test items of task `task` (images, or the source's [`DataSource::unit`]), from file listings
    /// only; errors name the task and the pattern, file or folder at fault.
    fn counts(&self, spec: &Spec, task: &str) -> Result<(usize, usize)>;

    /// The files task `task` leaves out, in path order (none unless the source skips some).
    fn skipped(&self, _spec: &Spec, _task: &str) -> Result<Vec<PathBuf>> {
        Ok(Vec::new())
    }

    /// What a count is of, after the number in `evosam validate`'s line ("" for images, " volumes").
    fn unit(&self) -> &'static str {
        ""
    }

    /// `evosam validate`'s line for task `t`: its counts, tiling and skipped files; an error for a split that
    /// would be empty.
    fn check(&self, spec: &Spec, t: &TaskSpec) -> Result<String> {
        let (ntr, nte) = split_counts(self, spec, t)?;
        let skipped = self.skipped(spec, &t.name)?;
        let note = match skipped.len() {
            0 => String::new(),
            n => format!(
                ", {n} unpaired image{} skipped: {}",
                if n == 1 { "" } else { "s" },
                list_paths(&skipped)
            ),
        };
        let tiles = match self.tile() {
            Some(ts) => format!(", tiles of {} px, overlap {}", ts.size, ts.overlap),
            None => String::new(),
        };
        let unit = self.unit();
        Ok(format!(
            "{}: {} train{unit}, {} test{unit} ({}{tiles}){note}",
            t.name, ntr, nte, t.source.kind
        ))
    }
}

/// Paths joined by ", " for a log line.
pub fn list_paths(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// A source's counts of task `t`; an error naming the task when a split would be empty.
pub(super) fn split_counts<S: DataSource + ?Sized>(
    source: &S,
    spec: &Spec,
    t: &TaskSpec,
) -> Result<(usize, usize)> {
    let (tr, te) = source.counts(spec, &t.name)?;
    if tr == 0 || te == 0 {
        return Err(spec.err(format!(
            "line {}: task {:?} has an empty {} split ({tr} train, {te} test)",
            t.line,
            t.name,
            if tr == 0 { "train" } else { "test" }
        )));
    }
    Ok((tr, te))
}
