//! Reading the study's rows and settings from results folders.

use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::interactive::rows::{read_settings, CaseKey, ClickRow};
use crate::results::Table;
use crate::spec::InteractiveSpec;
use crate::{Error, Result};

/// The study's rows and settings from one or more results folders (empty / None when no folder has them).
/// Folders must agree on the settings; rows that appear in several folders must be equal (and are kept once).
pub fn load(run_dirs: &[PathBuf]) -> Result<(Vec<ClickRow>, Option<InteractiveSpec>)> {
    let mut settings: Option<(InteractiveSpec, &PathBuf)> = None;
    let mut rows: Vec<ClickRow> = Vec::new();
    // (case, click) -> (Dice, first folder)
    let mut seen: BTreeMap<(CaseKey, i64), (f64, PathBuf)> = BTreeMap::new();
    for dir in run_dirs {
        let Some(s) = read_settings(dir)? else {
            continue;
        };
        match &settings {
            Some((first, fdir)) if *first != s => {
                return Err(Error::input(format!(
                    "{} and {}: the interactive studies have different settings (interactive.json)",
                    fdir.display(),
                    dir.display()
                )))
            }
            Some(_) => {}
            None => settings = Some((s, dir)),
        }
        for r in ClickRow::read(&dir.join("clicks.parquet"))? {
            let key = (r.case_key(), r.click);
            match seen.get(&key) {
                Some((d, prev)) if d.to_bits() != r.dice.to_bits() => {
                    return Err(Error::input(format!(
                        "{} and {}: click row {key:?} differs (Dice {d} vs {})",
                        prev.display(),
                        dir.display(),
                        r.dice
                    )))
                }
                Some(_) => {}
                None => {
                    seen.insert(key, (r.dice, dir.clone()));
                    rows.push(r);
                }
            }
        }
    }
    Ok((rows, settings.map(|s| s.0)))
}
