//! Figures (plotters), each written as SVG and as PNG from the same drawing code, one file per figure.
//!
//! Text is drawn with the DejaVu Sans font the crate carries (assets/fonts), registered with plotters'
//! ab_glyph backend, so figures render on machines without system fonts. Every strategy has one colour
//! and one marker in every figure (see [`strategy_style`]). Legends sit in their own row below the panels.
//! Shared pieces: [`style`] (font, colours, markers, legend), `panel` (frame, chart set-up, line panels),
//! `matrix` (heatmap-style grids), `png` (the resolution chunk).

use std::path::{Path, PathBuf};

use plotters::coord::Shift;
use plotters::prelude::*;

use crate::{Error, Result};

mod cd;
mod clicks;
mod compare_acc;
mod confusion;
mod curves;
mod growth;
mod heatmap;
mod matrix;
mod noc;
mod panel;
mod png;
pub mod style;
mod summary;
mod task_lines;

pub use cd::{cliques, CdFigure};
pub use clicks::ClicksFigure;
pub use compare_acc::CompareAccFigure;
pub use confusion::ConfusionFigure;
pub use curves::CurvesFigure;
pub use growth::GrowthFigure;
pub use heatmap::HeatmapFigure;
pub use noc::NocFigure;
pub use png::{set_png_dpi, PNG_DPI};
pub use style::{ensure_font, strategy_style, Marker};
pub use summary::SummaryFigure;

/// What drawing returns: plotters' errors as text (its error types are generic over the backend).
pub type DrawResult = std::result::Result<(), String>;

fn de<E: std::fmt::Display>(e: E) -> String {
    e.to_string()
}

/// A figure that can be drawn on any plotters backend.
pub trait Figure {
    /// Width and height in pixels.
    fn size(&self) -> (u32, u32);
    /// Draw the whole figure on `root` (of [`Figure::size`]).
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult;
}

/// Write `dir/stem.svg` and `dir/stem.png`, each drawn under a temporary name and renamed when complete (a full
/// disk or a kill never leaves a truncated figure under its final name).
pub fn save<F: Figure>(fig: &F, dir: &Path, stem: &str) -> Result<Vec<PathBuf>> {
    ensure_font()?;
    let size = fig.size();
    let svg = dir.join(format!("{stem}.svg"));
    let png = dir.join(format!("{stem}.png"));
    // the backends pick the format from the extension: keep it
    let svg_tmp = dir.join(format!(".tmp-{stem}.svg"));
    let png_tmp = dir.join(format!(".tmp-{stem}.png"));
    let drawn = (|| -> Result<()> {
        {
            let root = SVGBackend::new(&svg_tmp, size).into_drawing_area();
            fig.draw(&root)
                .and_then(|_| root.present().map_err(de))
                .map_err(|e| Error::internal(format!("{}: drawing failed: {e}", svg.display())))?;
        }
        {
            let root = BitMapBackend::new(&png_tmp, size).into_drawing_area();
            fig.draw(&root)
                .and_then(|_| root.present().map_err(de))
                .map_err(|e| Error::internal(format!("{}: drawing failed: {e}", png.display())))?;
        }
        set_png_dpi(&png_tmp, PNG_DPI)?;
        std::fs::rename(&svg_tmp, &svg).map_err(|e| Error::io(&svg, e))?;
        std::fs::rename(&png_tmp, &png).map_err(|e| Error::io(&png, e))
    })();
    if drawn.is_err() {
        let _ = std::fs::remove_file(&svg_tmp);
        let _ = std::fs::remove_file(&png_tmp);
    }
    drawn?;
    Ok(vec![svg, png])
}

/// File-name-safe version of a strategy name.
pub fn file_stem(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}
