//! One table file (CSV as strings, or Parquet) with typed column accessors that name the file in their errors.

use std::path::{Path, PathBuf};

use polars::prelude::*;

use crate::{Error, Result};

pub(super) fn read_csv_as_strings(path: &Path) -> Result<DataFrame> {
    CsvReadOptions::default()
        .with_has_header(true)
        .with_infer_schema_length(Some(0))
        .try_into_reader_with_file_path(Some(path.to_path_buf()))
        .and_then(|r| r.finish())
        .map_err(|e| Error::input(format!("{}: cannot read CSV: {e}", path.display())))
}

/// Read a Parquet file. A damaged file can trip an assertion inside Polars' decoder (a panic, not an error):
/// that is caught and reported as bad input naming the file.
pub(super) fn read_parquet(path: &Path) -> Result<DataFrame> {
    let f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let read = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        ParquetReader::new(f).finish()
    }));
    match read {
        Ok(r) => {
            r.map_err(|e| Error::input(format!("{}: cannot read Parquet: {e}", path.display())))
        }
        Err(_) => Err(Error::input(format!(
            "{}: cannot read Parquet (damaged file)",
            path.display()
        ))),
    }
}

/// A table read from one file, with typed column accessors that name the file in their errors.
pub(super) struct Table {
    pub(super) path: PathBuf,
    pub(super) df: DataFrame,
}

impl Table {
    pub(super) fn names(&self) -> Vec<String> {
        self.df
            .get_column_names()
            .iter()
            .map(|s| s.to_string())
            .collect()
    }

    pub(super) fn require(&self, cols: &[&str]) -> Result<()> {
        let names = self.names();
        let missing: Vec<&str> = cols
            .iter()
            .copied()
            .filter(|c| !names.iter().any(|n| n == c))
            .collect();
        if missing.is_empty() {
            Ok(())
        } else {
            Err(Error::input(format!(
                "{}: missing column(s) {} (found: {})",
                self.path.display(),
                missing.join(", "),
                names.join(", ")
            )))
        }
    }

    fn cast(&self, name: &str, dtype: &DataType) -> Result<Column> {
        let col = self
            .df
            .column(name)
            .map_err(|_| Error::input(format!("{}: missing column {name}", self.path.display())))?;
        col.strict_cast(dtype).map_err(|e| {
            Error::input(format!(
                "{}: column {name} cannot be read as {dtype}: {e}",
                self.path.display()
            ))
        })
    }

    pub(super) fn strs(&self, name: &str, nullable: bool) -> Result<Vec<Option<String>>> {
        let col = self.cast(name, &DataType::String)?;
        let ca = col.str().map_err(|e| Error::internal(e.to_string()))?;
        let mut out = Vec::with_capacity(ca.len());
        for (i, v) in ca.iter().enumerate() {
            if v.is_none() && !nullable {
                return Err(self.null_err(name, i));
            }
            out.push(v.map(|s| s.to_string()));
        }
        Ok(out)
    }

    pub(super) fn i64s(&self, name: &str) -> Result<Vec<i64>> {
        // Through f64 is not needed: ints are written as ints. Strings such as "3" cast cleanly.
        let col = self.cast(name, &DataType::Int64)?;
        let ca = col.i64().map_err(|e| Error::internal(e.to_string()))?;
        ca.iter()
            .enumerate()
            .map(|(i, v)| v.ok_or_else(|| self.null_err(name, i)))
            .collect()
    }

    pub(super) fn f64s(&self, name: &str) -> Result<Vec<Option<f64>>> {
        let col = self.cast(name, &DataType::Float64)?;
        let ca = col.f64().map_err(|e| Error::internal(e.to_string()))?;
        Ok(ca.iter().collect())
    }

    pub(super) fn f64s_required(&self, name: &str) -> Result<Vec<f64>> {
        self.f64s(name)?
            .into_iter()
            .enumerate()
            .map(|(i, v)| v.ok_or_else(|| self.null_err(name, i)))
            .collect()
    }

    fn null_err(&self, name: &str, row: usize) -> Error {
        Error::input(format!(
            "{}: column {name} is empty/null in data row {}",
            self.path.display(),
            row + 1
        ))
    }
}

pub(super) fn req_strs(t: &Table, name: &str) -> Result<Vec<String>> {
    Ok(t.strs(name, false)?
        .into_iter()
        .map(|s| s.unwrap_or_default())
        .collect())
}

pub(super) fn opt_strs_default(t: &Table, name: &str) -> Result<Vec<String>> {
    Ok(t.strs(name, true)?
        .into_iter()
        .map(|s| s.unwrap_or_default())
        .collect())
}
