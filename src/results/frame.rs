//! One table file written atomically (CSV, Parquet) and read back with typed column accessors that name the file
//! in their errors. CSV files are read with all columns as strings (no type inference, so case ids such as "007"
//! keep their leading zeros) and then cast to the table's types; Parquet columns are cast likewise.

use std::path::{Path, PathBuf};

use polars::prelude::*;

use crate::util::write_atomic;
use crate::{Error, Result};

pub(crate) fn read_csv_as_strings(path: &Path) -> Result<DataFrame> {
    CsvReadOptions::default()
        .with_has_header(true)
        .with_infer_schema_length(Some(0))
        .try_into_reader_with_file_path(Some(path.to_path_buf()))
        .and_then(|r| r.finish())
        .map_err(|e| Error::input(format!("{}: cannot read CSV: {e}", path.display())))
}

/// Read a Parquet file. A damaged file can trip an assertion inside Polars' decoder (a panic, not an error):
/// that is caught and reported as bad input naming the file.
pub(crate) fn read_parquet(path: &Path) -> Result<DataFrame> {
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
pub struct Frame {
    /// The file it was read from.
    pub path: PathBuf,
    /// Its columns (strings for a CSV file).
    pub df: DataFrame,
}

impl Frame {
    /// Read `path`: Parquet when it ends in `.parquet`, else CSV (every column as strings).
    pub fn open(path: &Path) -> Result<Frame> {
        let df = if path.extension().is_some_and(|e| e == "parquet") {
            read_parquet(path)?
        } else {
            read_csv_as_strings(path)?
        };
        Ok(Frame {
            path: path.to_path_buf(),
            df,
        })
    }

    /// The column names, in file order.
    pub fn names(&self) -> Vec<String> {
        self.df
            .get_column_names()
            .iter()
            .map(|s| s.to_string())
            .collect()
    }

    /// An input error naming every column of `cols` the file lacks.
    pub fn require(&self, cols: &[&str]) -> Result<()> {
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

    /// A string column (a null is an error unless `nullable`).
    pub fn strs(&self, name: &str, nullable: bool) -> Result<Vec<Option<String>>> {
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

    /// An integer column without nulls.
    pub fn i64s(&self, name: &str) -> Result<Vec<i64>> {
        // Through f64 is not needed: ints are written as ints. Strings such as "3" cast cleanly.
        let col = self.cast(name, &DataType::Int64)?;
        let ca = col.i64().map_err(|e| Error::internal(e.to_string()))?;
        ca.iter()
            .enumerate()
            .map(|(i, v)| v.ok_or_else(|| self.null_err(name, i)))
            .collect()
    }

    /// A nullable integer column.
    pub fn opt_i64s(&self, name: &str) -> Result<Vec<Option<i64>>> {
        let col = self.cast(name, &DataType::Int64)?;
        let ca = col.i64().map_err(|e| Error::internal(e.to_string()))?;
        Ok(ca.iter().collect())
    }

    /// Whether the file has a column `name`.
    pub fn has(&self, name: &str) -> bool {
        self.df.column(name).is_ok()
    }

    /// A nullable float column.
    pub fn f64s(&self, name: &str) -> Result<Vec<Option<f64>>> {
        let col = self.cast(name, &DataType::Float64)?;
        let ca = col.f64().map_err(|e| Error::internal(e.to_string()))?;
        Ok(ca.iter().collect())
    }

    /// A float column without nulls.
    pub fn f64s_required(&self, name: &str) -> Result<Vec<f64>> {
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

pub(crate) fn req_strs(t: &Frame, name: &str) -> Result<Vec<String>> {
    Ok(t.strs(name, false)?
        .into_iter()
        .map(|s| s.unwrap_or_default())
        .collect())
}

pub(crate) fn opt_strs_default(t: &Frame, name: &str) -> Result<Vec<String>> {
    Ok(t.strs(name, true)?
        .into_iter()
        .map(|s| s.unwrap_or_default())
        .collect())
}

/// Write a frame as CSV (atomically).
pub fn write_csv(path: &Path, df: &mut DataFrame) -> Result<()> {
    let mut buf = Vec::new();
    CsvWriter::new(&mut buf).include_header(true).finish(df)?;
    write_atomic(path, &buf)
}

/// Write a frame as Parquet (atomically).
pub fn write_parquet(path: &Path, df: &mut DataFrame) -> Result<()> {
    let mut buf = Vec::new();
    ParquetWriter::new(&mut buf).finish(df)?;
    write_atomic(path, &buf)
}
