//! Paper-ready reports from one or more results folders: forgetting curves, accuracy-matrix heatmaps,
//! a metrics summary chart, routing confusion and parameter growth (SVG + PNG in `plots/`), and
//! summary tables with multi-seed statistics and Wilcoxon tests (Markdown, LaTeX, CSV in `tables/`).
//!
//! Pipeline: [`load::load_results`] (Polars) -> [`analysis::ReportData::compute`] (plain structs: the
//! numbers behind every figure and table) -> [`plots`] / [`tables`] (rendering).

pub mod analysis;
pub mod compare;
pub mod interactive;
pub mod load;
pub mod plots;
pub mod stats;
pub mod study;
pub mod tables;

#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};

pub use analysis::ReportData;
pub use load::{load_results, ResultsSet};

use crate::{Error, Result};

/// What `write_report` wrote.
#[derive(Clone, Debug, Default)]
pub struct ReportSummary {
    /// The folder holding `plots/` and `tables/`.
    pub out_dir: PathBuf,
    /// Every file written (plots, tables, data dump).
    pub files: Vec<PathBuf>,
    /// Things worth telling the user (skipped figures or tests, merged duplicates).
    pub notes: Vec<String>,
}

fn write_file(path: &Path, text: &str) -> Result<PathBuf> {
    crate::util::write_atomic(path, text.as_bytes())?;
    Ok(path.to_path_buf())
}

/// Read the results folder(s), merge them, and write `out_dir/plots/` and `out_dir/tables/`.
pub fn write_report(run_dirs: &[PathBuf], out_dir: &Path) -> Result<ReportSummary> {
    write_report_in(run_dirs, out_dir, crate::metrics::Metric::Dice)
}

/// [`write_report`] with the matrix, curves and tables in another per-case metric (`--metric nsd|hd95`).
pub fn write_report_in(
    run_dirs: &[PathBuf],
    out_dir: &Path,
    metric: crate::metrics::Metric,
) -> Result<ReportSummary> {
    compare::check_one_experiment(run_dirs)?;
    let rs = load_results(run_dirs)?;
    let data = ReportData::compute_metric(&rs, metric)?;
    write_report_data(&data, out_dir)
}

/// Render already computed report data into `out_dir`.
pub fn write_report_data(data: &ReportData, out_dir: &Path) -> Result<ReportSummary> {
    let plots_dir = out_dir.join("plots");
    let tables_dir = out_dir.join("tables");
    for d in [&plots_dir, &tables_dir] {
        std::fs::create_dir_all(d).map_err(|e| Error::io(d, e))?;
    }
    let mut files = Vec::new();
    let mut notes = data.notes.clone();

    if !data.curves.is_empty() {
        let fig = plots::CurvesFigure {
            curves: &data.curves,
            tasks: &data.tasks,
            strategies: &data.strategies,
            metric: data.metric,
        };
        files.extend(plots::save(&fig, &plots_dir, "forgetting_curves")?);
    } else {
        notes.push("matrix.csv has no rows: no forgetting curves or heatmaps".into());
    }
    for h in &data.heatmaps {
        let fig = plots::HeatmapFigure {
            data: h,
            metric: data.metric,
        };
        files.extend(plots::save(
            &fig,
            &plots_dir,
            &format!("matrix_{}", plots::file_stem(&h.strategy)),
        )?);
    }
    if !data.summary.is_empty() {
        let fig = plots::SummaryFigure {
            bars: &data.summary,
            strategies: &data.strategies,
        };
        files.extend(plots::save(&fig, &plots_dir, "summary_metrics")?);
    } else {
        notes.push("metrics.csv has no rows: no summary chart".into());
    }
    if data.confusions.is_empty() {
        notes.push("no scores with routed_to: no routing confusion matrix".into());
    }
    for c in &data.confusions {
        let fig = plots::ConfusionFigure { data: c };
        files.extend(plots::save(
            &fig,
            &plots_dir,
            &format!("routing_confusion_{}", plots::file_stem(&c.strategy)),
        )?);
    }
    if !data.growth.is_empty() {
        let fig = plots::GrowthFigure {
            growth: &data.growth,
            strategies: &data.strategies,
        };
        files.extend(plots::save(&fig, &plots_dir, "param_growth")?);
    } else if !notes.iter().any(|n| n.contains("extras.csv")) {
        notes.push(
            "extras.csv has no trainable_params / n_experts: no parameter-growth figure".into(),
        );
    }
    let json = serde_json::to_string_pretty(data)
        .map_err(|e| Error::internal(format!("plot data JSON: {e}")))?;
    files.push(write_file(&plots_dir.join("plot_data.json"), &json)?);

    let cells = tables::build_cells(&data.table);
    files.push(write_file(
        &tables_dir.join("summary.md"),
        &tables::to_markdown(&cells),
    )?);
    files.push(write_file(
        &tables_dir.join("summary.tex"),
        &tables::to_latex(&cells),
    )?);
    files.push(write_file(
        &tables_dir.join("summary.csv"),
        &tables::to_csv(&data.table),
    )?);
    files.push(write_file(
        &tables_dir.join("wilcoxon.csv"),
        &tables::wilcoxon_csv(&data.table),
    )?);
    if let Some(md) = tables::routing_markdown(&data.routing, &data.strategies) {
        files.push(write_file(&tables_dir.join("routing.md"), &md)?);
    }
    if let Some(it) = &data.interactive {
        let fig = plots::ClicksFigure {
            curves: &it.curves,
            tasks: &it.tasks,
            strategies: &data.strategies,
        };
        files.extend(plots::save(&fig, &plots_dir, "interactive_dice_vs_clicks")?);
        let fig = plots::NocFigure {
            bars: &it.noc,
            targets: &it.table.settings.targets,
            never: it.table.max_clicks + 1,
            strategies: &data.strategies,
        };
        files.extend(plots::save(&fig, &plots_dir, "interactive_noc")?);
        files.push(write_file(
            &tables_dir.join("interactive.md"),
            &interactive::to_markdown(&it.table),
        )?);
        files.push(write_file(
            &tables_dir.join("interactive.tex"),
            &interactive::to_latex(&it.table),
        )?);
    }
    Ok(ReportSummary {
        out_dir: out_dir.to_path_buf(),
        files,
        notes,
    })
}
