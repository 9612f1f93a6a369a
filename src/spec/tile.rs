//! `tile = { .. }` of a folder or NIfTI task: cut each image into overlapping tiles at native resolution.
//!
//! ```toml
//! [[stream.task]]
//! source = "folder"
//! tile = { size = 256, overlap = 32, prompt = "tile", keep_empty = 0.25 }
//! ```
//!
//! Sizes are in original pixels. Each tile is resized to the model input and encoded once; training draws tiles
//! (tiles without foreground: a seeded `keep_empty` fraction of them), evaluation predicts every tile and stitches
//! the logits back to the full image, so Dice stays per image.

use super::Diag;
use serde::{Deserialize, Serialize};

/// The box prompt of a tile.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum TilePrompt {
    /// The ground-truth box of the structure inside the tile (the whole tile when it has none): box-prompted tasks.
    GtBox,
    /// The whole tile minus `margin` pixels on each side: structures that fill the field (vessels).
    Tile,
}

/// A task's tiling (see the module documentation).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TileSpec {
    /// Tile side in original pixels (tiles are square; an image smaller than this is one tile of its own size).
    #[schemars(range(min = 16))]
    pub size: usize,
    /// Overlap of neighbouring tiles in original pixels (< size).
    #[serde(default)]
    pub overlap: usize,
    /// Box prompt per tile: "gt-box" (default) or "tile".
    #[serde(default = "d_prompt")]
    pub prompt: TilePrompt,
    /// Fraction of the training tiles without foreground that are kept (a seeded choice); tiles with foreground
    /// are always kept, and every test tile is evaluated.
    #[serde(default = "d_keep")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub keep_empty: f64,
    /// Margin in original pixels between the tile's border and its box prompt when `prompt = "tile"`.
    #[serde(default = "d_margin")]
    pub margin: usize,
}

fn d_prompt() -> TilePrompt {
    TilePrompt::GtBox
}
fn d_keep() -> f64 {
    0.25
}
fn d_margin() -> usize {
    4
}

impl TileSpec {
    /// Ranges; the key path is relative to the task table (`tile.size`, ...).
    pub fn validate(&self) -> Result<(), Diag> {
        if self.size < 16 {
            return Err(Diag::at_path(
                &["tile", "size"],
                format!("`tile.size` = {} must be >= 16 pixels", self.size),
            ));
        }
        if self.overlap >= self.size {
            return Err(Diag::at_path(
                &["tile", "overlap"],
                format!(
                    "`tile.overlap` = {} must be smaller than `tile.size` = {}",
                    self.overlap, self.size
                ),
            ));
        }
        if !(0.0..=1.0).contains(&self.keep_empty) {
            return Err(Diag::at_path(
                &["tile", "keep_empty"],
                format!("`tile.keep_empty` = {} must be in [0, 1]", self.keep_empty),
            ));
        }
        if 2 * self.margin >= self.size {
            return Err(Diag::at_path(
                &["tile", "margin"],
                format!(
                    "`tile.margin` = {} must be less than half of `tile.size` = {}",
                    self.margin, self.size
                ),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{from_table, Seg};

    fn parse(s: &str) -> Result<TileSpec, Diag> {
        let t: toml::Table = toml::from_str(s).unwrap();
        let ts: TileSpec = from_table(&t)?;
        ts.validate()?;
        Ok(ts)
    }

    fn path(d: &Diag) -> Vec<String> {
        d.path
            .0
            .iter()
            .map(|s| match s {
                Seg::Key(k) => k.clone(),
                other => format!("{other:?}"),
            })
            .collect()
    }

    #[test]
    fn defaults_and_ranges() {
        let t = parse("size = 256").unwrap();
        assert_eq!(
            (t.overlap, t.prompt, t.keep_empty, t.margin),
            (0, TilePrompt::GtBox, 0.25, 4)
        );
        let t = parse("size = 384\noverlap = 64\nprompt = \"tile\"\nkeep_empty = 1.0").unwrap();
        assert_eq!((t.size, t.overlap, t.prompt), (384, 64, TilePrompt::Tile));
        let d = parse("size = 64\noverlap = 64").unwrap_err();
        assert_eq!(path(&d), ["tile", "overlap"]);
        let d = parse("size = 8").unwrap_err();
        assert_eq!(path(&d), ["tile", "size"]);
        let d = parse("size = 64\nkeep_empty = 1.5").unwrap_err();
        assert_eq!(path(&d), ["tile", "keep_empty"]);
        let d = parse("size = 64\nmargin = 32").unwrap_err();
        assert_eq!(path(&d), ["tile", "margin"]);
        // unknown keys and bad prompt values are refused by serde with the key named
        assert!(parse("size = 64\nstride = 3").is_err());
        assert!(parse("size = 64\nprompt = \"points\"").is_err());
    }
}
