//! Reading the study's rows and settings from results folders.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use polars::prelude::*;

use super::Run;
use crate::interactive::rows::{read_settings, ClickRow};
use crate::spec::InteractiveSpec;
use crate::{Error, Result};

/// Read `clicks.parquet` of a folder into rows.
fn read_clicks(dir: &Path) -> Result<Vec<ClickRow>> {
    let path = dir.join("clicks.parquet");
    let f = std::fs::File::open(&path).map_err(|e| Error::io(&path, e))?;
    let df = ParquetReader::new(f)
        .finish()
        .map_err(|e| Error::input(format!("{}: cannot read Parquet: {e}", path.display())))?;
    let bad = |c: &str, e: &dyn std::fmt::Display| {
        Error::input(format!("{}: column `{c}`: {e}", path.display()))
    };
    let strs = |c: &str| -> Result<Vec<Option<String>>> {
        let col = df.column(c).map_err(|e| bad(c, &e))?;
        let ca = col.str().map_err(|e| bad(c, &e))?;
        Ok(ca.iter().map(|v| v.map(str::to_string)).collect())
    };
    let ints = |c: &str| -> Result<Vec<Option<i64>>> {
        let col = df.column(c).map_err(|e| bad(c, &e))?;
        Ok(col.i64().map_err(|e| bad(c, &e))?.iter().collect())
    };
    let need = |v: Vec<Option<String>>, c: &str| -> Result<Vec<String>> {
        v.into_iter()
            .map(|x| x.ok_or_else(|| bad(c, &"null value")))
            .collect()
    };
    let needi = |v: Vec<Option<i64>>, c: &str| -> Result<Vec<i64>> {
        v.into_iter()
            .map(|x| x.ok_or_else(|| bad(c, &"null value")))
            .collect()
    };
    let strategy = need(strs("strategy")?, "strategy")?;
    let seed = needi(ints("seed")?, "seed")?;
    let order = need(strs("order")?, "order")?;
    let stage = needi(ints("stage")?, "stage")?;
    let task = need(strs("eval_task")?, "eval_task")?;
    let case = need(strs("case")?, "case")?;
    let click = needi(ints("click")?, "click")?;
    let dcol = df.column("dice").map_err(|e| bad("dice", &e))?;
    let dice: Vec<f64> = dcol
        .f64()
        .map_err(|e| bad("dice", &e))?
        .iter()
        .map(|v| v.unwrap_or(f64::NAN))
        .collect();
    let routed = strs("routed_to")?;
    let (x, y, l) = (ints("click_x")?, ints("click_y")?, ints("click_label")?);
    Ok((0..df.height())
        .map(|i| ClickRow {
            strategy: strategy[i].clone(),
            seed: seed[i],
            order: order[i].clone(),
            stage: stage[i],
            eval_task: task[i].clone(),
            case: case[i].clone(),
            click: click[i],
            dice: dice[i],
            routed_to: routed[i].clone(),
            click_x: x[i],
            click_y: y[i],
            click_label: l[i],
        })
        .collect())
}

/// The study's rows and settings from one or more results folders (empty / None when no folder has them).
/// Folders must agree on the settings; rows that appear in several folders must be equal (and are kept once).
pub fn load(run_dirs: &[PathBuf]) -> Result<(Vec<ClickRow>, Option<InteractiveSpec>)> {
    let mut settings: Option<(InteractiveSpec, &PathBuf)> = None;
    let mut rows: Vec<ClickRow> = Vec::new();
    // (run, stage, task, case, click) -> (Dice, first folder)
    type Key = (Run, i64, String, String, i64);
    let mut seen: BTreeMap<Key, (f64, PathBuf)> = BTreeMap::new();
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
        for r in read_clicks(dir)? {
            let key = (
                (r.strategy.clone(), r.seed, r.order.clone()),
                r.stage,
                r.eval_task.clone(),
                r.case.clone(),
                r.click,
            );
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
