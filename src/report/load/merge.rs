//! Several folders' rows merged: same columns required, exact duplicates dropped, conflicts rejected.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

use super::folder::FolderTables;
use crate::{Error, Result};

fn sorted(v: &[String]) -> Vec<String> {
    let mut v = v.to_vec();
    v.sort();
    v
}

pub(super) fn check_same_cols(
    table: &str,
    first: &FolderTables,
    cols0: &[String],
    other: &FolderTables,
    cols: &[String],
) -> Result<()> {
    if sorted(cols0) != sorted(cols) {
        return Err(Error::input(format!(
            "{}: {table} columns [{}] do not match those of {} [{}]; cannot merge these results folders",
            other.dir.display(),
            cols.join(", "),
            first.dir.display(),
            cols0.join(", ")
        )));
    }
    Ok(())
}

/// Merge one table's rows (`rows` of each folder) keyed by `key`, dropping exact duplicates (counted in
/// `dropped[table]`) and rejecting conflicting rows.
pub(super) fn merge_rows<R: PartialEq, K: std::hash::Hash + Eq + std::fmt::Debug>(
    table: &str,
    folders: &[FolderTables],
    rows: impl Fn(&FolderTables) -> Vec<R>,
    key: impl Fn(&R) -> K,
    dropped_by_table: &mut BTreeMap<String, usize>,
) -> Result<Vec<R>> {
    let mut out: Vec<R> = Vec::new();
    let mut seen: HashMap<K, (usize, PathBuf)> = HashMap::new();
    let mut dropped = 0;
    for f in folders {
        let dir = f.dir.as_path();
        for r in rows(f) {
            let k = key(&r);
            match seen.get(&k) {
                Some((idx, first_dir)) => {
                    if out[*idx] == r {
                        dropped += 1;
                    } else {
                        // Folders are merged as parts of one experiment; two experiments' rows share keys.
                        let hint = if first_dir != dir {
                            "; folders are merged only as parts of one experiment: if these are different \
                             experiments, compare them with `evosam report DIR... --compare --out DIR`"
                        } else {
                            ""
                        };
                        return Err(Error::input(format!(
                            "{}: {table} row {k:?} conflicts with a different row for the same key in {}{hint}",
                            dir.display(),
                            first_dir.display()
                        )));
                    }
                }
                None => {
                    seen.insert(k, (out.len(), dir.to_path_buf()));
                    out.push(r);
                }
            }
        }
    }
    dropped_by_table.insert(table.to_string(), dropped);
    Ok(out)
}
