//! A cell's checkpoint folders: `cells/<id>/stage_<k>/`, each written under a temporary name and renamed when
//! complete (so a kill leaves a whole stage or none), and the walk over the committed stages that collects the
//! run's tables.

use super::plan::Cell;
use super::shared::Shared;
use crate::results::{ExtraRow, ScoreRow};
use crate::util::write_atomic;
use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// A volume task's per-slice scores of one stage (`slice_scores.csv`), beside `scores.json`.
pub(super) const SLICE_SCORES_FILE: &str = "slice_scores.json";

pub(super) fn stage_dir(cdir: &Path, k: usize) -> PathBuf {
    cdir.join(format!("stage_{k}"))
}

pub(super) fn cell_dir(shared: &Shared, cell: &Cell) -> PathBuf {
    shared.dir.join("cells").join(&cell.id)
}

/// The last complete stage of a cell folder (`None`: nothing committed yet).
pub(super) fn last_done(cdir: &Path, stages: usize) -> Option<usize> {
    (0..=stages)
        .rev()
        .find(|&k| stage_dir(cdir, k).join("done").is_file())
}

/// The committed stage folders of a cell, stage 0 first, up to the first one missing
/// ([`super::record::stages_done`] of them, at most the order's stages).
fn committed_stages(sh: &Shared, cell: &Cell) -> impl Iterator<Item = PathBuf> {
    let cdir = cell_dir(sh, cell);
    let n = sh.spec.orders[cell.order].tasks.len();
    let done = super::record::stages_done(&cdir).min(n + 1);
    (0..done).map(move |k| stage_dir(&cdir, k))
}

pub(super) fn write_json<T: Serialize>(path: &Path, v: &T) -> Result<()> {
    let s =
        serde_json::to_vec(v).map_err(|e| Error::internal(format!("{}: {e}", path.display())))?;
    write_atomic(path, &s)
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T> {
    let s = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_slice(&s)
        .map_err(|e| Error::internal(format!("{}: corrupt checkpoint: {e}", path.display())))
}

/// Write a stage folder under a temporary name, mark it done, then rename it into place.
pub(super) fn commit_stage(
    cdir: &Path,
    k: usize,
    write: impl FnOnce(&Path) -> Result<()>,
) -> Result<()> {
    let fin = stage_dir(cdir, k);
    let tmp = cdir.join(format!(".stage_{k}.tmp"));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    }
    std::fs::create_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    write(&tmp)?;
    write_atomic(&tmp.join("done"), b"ok\n")?;
    if fin.exists() {
        std::fs::remove_dir_all(&fin).map_err(|e| Error::io(&fin, e))?;
    }
    std::fs::rename(&tmp, &fin).map_err(|e| Error::io(&fin, e))?;
    // make the rename durable
    if let Ok(d) = std::fs::File::open(cdir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Every committed stage's scores and extras, in canonical cell order.
pub(super) fn collect(sh: &Shared, cells: &[Cell]) -> Result<(Vec<ScoreRow>, Vec<ExtraRow>)> {
    let (mut scores, mut extras) = (Vec::new(), Vec::new());
    for sd in cells.iter().flat_map(|c| committed_stages(sh, c)) {
        scores.extend(read_json::<Vec<ScoreRow>>(&sd.join("scores.json"))?);
        extras.extend(read_json::<Vec<ExtraRow>>(&sd.join("extras.json"))?);
    }
    Ok((scores, extras))
}

/// Every committed stage's rows of an optional stage file (`clicks.json`, `slice_scores.json`), in canonical cell
/// order.
pub(super) fn collect_optional<T: serde::de::DeserializeOwned>(
    sh: &Shared,
    cells: &[Cell],
    file: &str,
) -> Result<Vec<T>> {
    let mut rows = Vec::new();
    for sd in cells.iter().flat_map(|c| committed_stages(sh, c)) {
        let f = sd.join(file);
        if f.is_file() {
            rows.extend(read_json::<Vec<T>>(&f)?);
        }
    }
    Ok(rows)
}
