//! The report of an annotation study (`evosam annotate`): time per case, prompts per case and Dice at accept per
//! model (box plots), and a table with the paired Wilcoxon test over cases annotated under both models, per
//! annotator and pooled.

mod analysis;
mod plots;
mod table;

use std::path::{Path, PathBuf};

use crate::annotate::tables::case_rows;
use crate::{Error, Result};

pub use analysis::{BoxStat, Comparison, StudyReport, MEASURES};
pub use plots::StudyFigure;

/// True when `dir` holds an annotation study (`study.json`).
pub fn is_study(dir: &Path) -> bool {
    dir.join("study.json").is_file()
}

/// What the study report wrote.
pub struct StudySummary {
    /// Files written.
    pub files: Vec<PathBuf>,
    /// Notes for the user.
    pub notes: Vec<String>,
}

/// Read a study folder's logs and write `plots/study_boxplots.{svg,png}`, `tables/study.{md,csv}` and
/// `tables/study.json` under `out_dir`.
pub fn write_study_report(study_dir: &Path, out_dir: &Path) -> Result<StudySummary> {
    let sp = study_dir.join("study.json");
    let rec: crate::annotate::session::StudyRecord =
        serde_json::from_slice(&std::fs::read(&sp).map_err(|e| Error::io(&sp, e))?)
            .map_err(|e| Error::input(format!("{}: {e}", sp.display())))?;
    let events = crate::annotate::events::read_all(study_dir)?;
    let rows = case_rows(&events);
    let report = StudyReport::compute(&rows, &rec.models);
    let (plots_dir, tables_dir) = (out_dir.join("plots"), out_dir.join("tables"));
    for d in [&plots_dir, &tables_dir] {
        std::fs::create_dir_all(d).map_err(|e| Error::io(d, e))?;
    }
    let mut files = Vec::new();
    let mut notes = Vec::new();
    if rows.is_empty() {
        notes.push(format!(
            "{}: no accepted case yet: no box plots",
            study_dir.display()
        ));
    } else {
        files.extend(crate::report::plots::save(
            &StudyFigure { report: &report },
            &plots_dir,
            "study_boxplots",
        )?);
    }
    if report.comparisons.iter().all(|c| c.n_pairs == 0) {
        notes.push(
            "no case was annotated under both models: no paired test (use --design crossover, or two \
             annotators with the split design)"
                .into(),
        );
    }
    let write = |name: &str, text: &str| -> Result<PathBuf> {
        let p = tables_dir.join(name);
        crate::util::write_atomic(&p, text.as_bytes())?;
        Ok(p)
    };
    files.push(write("study.md", &table::to_markdown(&report))?);
    files.push(write("study.csv", &table::to_csv(&report))?);
    let js = serde_json::to_string_pretty(&report).map_err(|e| Error::internal(e.to_string()))?;
    files.push(write("study.json", &js)?);
    Ok(StudySummary { files, notes })
}

#[cfg(test)]
mod tests;
