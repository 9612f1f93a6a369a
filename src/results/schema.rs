//! One declaration per table (the results, the interactive study's, the annotation study's). [`table!`] takes a
//! row struct and gives it, from its fields, the column list ([`Table::COLUMNS`], in field order), the Polars frame
//! ([`Table::frame`]), the CSV/Parquet writer ([`Table::write`]) and the reader ([`Table::from_frame`],
//! [`Table::read`]): a column added to the struct shows up in all of them. A field's type says how its column is
//! built and read ([`Cell`]); a field may add how it is read back (`as OrEmpty`: a null reads as ""; `as Optional`:
//! files of older versions may lack the column); a table with
//! columns known only at run time (metrics.csv's strategy columns, interactive.csv's values) ends in one `..` field
//! whose type implements [`Rest`].

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use polars::prelude::*;

use super::frame::{opt_strs_default, req_strs, Frame};
use crate::Result;

/// How a column is read back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Read {
    /// The file must have the column; nulls only in an `Option` field.
    Required,
    /// A string column whose nulls (empty CSV fields) read as "".
    OrEmpty,
    /// The column may be missing (files of older versions): every value then reads as None.
    Optional,
}

/// One column of a table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Field {
    /// Column name (the field's name).
    pub name: &'static str,
    /// How it is read back.
    pub read: Read,
}

/// A row type declared with [`table!`].
pub trait Table: Sized {
    /// The fixed columns in file order.
    const FIELDS: &'static [Field];
    /// The fixed column names in file order.
    const COLUMNS: &'static [&'static str];

    /// Names of the run-time columns after the fixed ones (none for a table without a `..` field).
    fn rest_names(rows: &[Self]) -> Vec<String>;

    /// The table as a frame, with the run-time columns `rest` after the fixed ones (a name that is also a fixed
    /// column is skipped).
    fn frame_with(rows: &[Self], rest: &[String]) -> Result<DataFrame>;

    /// Rows from a frame read back (a CSV file's strings are cast to the fields' types); an input error naming
    /// the file for a missing column or a value of the wrong type.
    fn from_frame(f: &Frame) -> Result<Vec<Self>>;

    /// The columns a file must have: the fixed ones less the `Optional`.
    fn required() -> Vec<&'static str> {
        Self::FIELDS
            .iter()
            .filter(|f| f.read != Read::Optional)
            .map(|f| f.name)
            .collect()
    }

    /// The table as a frame, run-time columns from the rows.
    fn frame(rows: &[Self]) -> Result<DataFrame> {
        Self::frame_with(rows, &Self::rest_names(rows))
    }

    /// Write the rows to every path of `paths` (atomically), Parquet for a `.parquet` name, else CSV.
    fn write(rows: &[Self], paths: &[&Path]) -> Result<()> {
        let mut df = Self::frame(rows)?;
        write_frame(&mut df, paths)
    }

    /// Read a file written by [`Table::write`].
    fn read(path: &Path) -> Result<Vec<Self>> {
        Self::from_frame(&Frame::open(path)?)
    }
}

/// Write `df` to every path of `paths` (atomically), Parquet for a `.parquet` name, else CSV.
pub fn write_frame(df: &mut DataFrame, paths: &[&Path]) -> Result<()> {
    for p in paths {
        if p.extension().is_some_and(|e| e == "parquet") {
            super::frame::write_parquet(p, df)?;
        } else {
            super::frame::write_csv(p, df)?;
        }
    }
    Ok(())
}

/// A field type: how its column is built and read back.
pub trait Cell: Sized + Clone {
    /// The column of these values.
    fn column(name: &str, values: Vec<Self>) -> Column;
    /// The column `name` of a frame read back, `len` values.
    fn read(f: &Frame, name: &str, how: Read, len: usize) -> Result<Vec<Self>>;
}

fn column<T>(name: &str, v: Vec<T>) -> Column
where
    Series: NamedFrom<Vec<T>, [T]>,
{
    Column::from(Series::new(name.into(), v))
}

impl Cell for String {
    fn column(name: &str, values: Vec<Self>) -> Column {
        column(name, values)
    }
    fn read(f: &Frame, name: &str, how: Read, _len: usize) -> Result<Vec<Self>> {
        if how == Read::OrEmpty {
            opt_strs_default(f, name)
        } else {
            req_strs(f, name)
        }
    }
}

impl Cell for i64 {
    fn column(name: &str, values: Vec<Self>) -> Column {
        column(name, values)
    }
    fn read(f: &Frame, name: &str, _how: Read, _len: usize) -> Result<Vec<Self>> {
        f.i64s(name)
    }
}

/// A count or position: an integer column; a negative value read back is an input error.
impl Cell for usize {
    fn column(name: &str, values: Vec<Self>) -> Column {
        column(
            name,
            values.into_iter().map(|v| v as i64).collect::<Vec<i64>>(),
        )
    }
    fn read(f: &Frame, name: &str, _how: Read, _len: usize) -> Result<Vec<Self>> {
        let v = f.i64s(name)?;
        v.into_iter()
            .enumerate()
            .map(|(i, x)| narrow(f, name, i, x))
            .collect()
    }
}

/// A small code that may be missing (a click's label): a nullable integer column.
impl Cell for Option<u8> {
    fn column(name: &str, values: Vec<Self>) -> Column {
        column(
            name,
            values
                .into_iter()
                .map(|v| v.map(i64::from))
                .collect::<Vec<Option<i64>>>(),
        )
    }
    fn read(f: &Frame, name: &str, how: Read, len: usize) -> Result<Vec<Self>> {
        let v = optional(f, name, how, len, || f.opt_i64s(name))?;
        v.into_iter()
            .enumerate()
            .map(|(i, x)| x.map(|x| narrow(f, name, i, x)).transpose())
            .collect()
    }
}

/// An integer read back as a narrower type; an input error naming the file, column and row when out of range.
fn narrow<T: TryFrom<i64>>(f: &Frame, name: &str, row: usize, x: i64) -> Result<T> {
    T::try_from(x).map_err(|_| {
        crate::Error::input(format!(
            "{}: column {name} has {x} in data row {}, out of range",
            f.path.display(),
            row + 1
        ))
    })
}

impl Cell for f64 {
    fn column(name: &str, values: Vec<Self>) -> Column {
        column(name, values)
    }
    fn read(f: &Frame, name: &str, _how: Read, _len: usize) -> Result<Vec<Self>> {
        f.f64s_required(name)
    }
}

/// An `Option` column: all None when the column may be missing and is.
fn optional<T: Clone>(
    f: &Frame,
    name: &str,
    how: Read,
    len: usize,
    read: impl Fn() -> Result<Vec<Option<T>>>,
) -> Result<Vec<Option<T>>> {
    if how == Read::Optional && !f.has(name) {
        Ok(vec![None; len])
    } else {
        read()
    }
}

impl Cell for Option<f64> {
    fn column(name: &str, values: Vec<Self>) -> Column {
        column(name, values)
    }
    fn read(f: &Frame, name: &str, how: Read, len: usize) -> Result<Vec<Self>> {
        optional(f, name, how, len, || f.f64s(name))
    }
}

impl Cell for Option<i64> {
    fn column(name: &str, values: Vec<Self>) -> Column {
        column(name, values)
    }
    fn read(f: &Frame, name: &str, how: Read, len: usize) -> Result<Vec<Self>> {
        optional(f, name, how, len, || f.opt_i64s(name))
    }
}

impl Cell for Option<String> {
    fn column(name: &str, values: Vec<Self>) -> Column {
        column(name, values)
    }
    /// A null or an empty string reads as None (a CSV file cannot tell them apart).
    fn read(f: &Frame, name: &str, how: Read, len: usize) -> Result<Vec<Self>> {
        let v = optional(f, name, how, len, || f.strs(name, true))?;
        Ok(v.into_iter().map(|s| s.filter(|s| !s.is_empty())).collect())
    }
}

/// The type of a table's `..` field: float columns whose names are known only at run time.
pub trait Rest: Sized + Clone {
    /// The column names of these rows, in file order.
    fn names(rows: &[&Self]) -> Vec<String>;
    /// This row's value in column `name`.
    fn get(&self, name: &str) -> Option<f64>;
    /// The values of every row from the columns `names` of a frame read back.
    fn read(f: &Frame, names: &[String]) -> Result<Vec<Self>>;
}

/// Rows of values from run-time columns read back: row `i` pairs each name with `cols[..][i]`.
fn by_row<V: Copy, R: FromIterator<(String, V)>>(
    names: &[String],
    cols: &[Vec<V>],
    n: usize,
) -> Vec<R> {
    (0..n)
        .map(|i| {
            names
                .iter()
                .cloned()
                .zip(cols.iter().map(|c| c[i]))
                .collect()
        })
        .collect()
}

/// Named values that a row may lack (null in its column): metrics.csv's strategy columns; columns sorted by name.
impl Rest for BTreeMap<String, Option<f64>> {
    fn names(rows: &[&Self]) -> Vec<String> {
        let keys: BTreeSet<&String> = rows.iter().flat_map(|r| r.keys()).collect();
        keys.into_iter().cloned().collect()
    }
    fn get(&self, name: &str) -> Option<f64> {
        self.get(name).copied().flatten()
    }
    fn read(f: &Frame, names: &[String]) -> Result<Vec<Self>> {
        let cols: Vec<Vec<Option<f64>>> = names.iter().map(|n| f.f64s(n)).collect::<Result<_>>()?;
        Ok(by_row(names, &cols, f.df.height()))
    }
}

/// Values every row has, in column order (interactive.csv); columns in the first row's order.
impl Rest for Vec<(String, f64)> {
    fn names(rows: &[&Self]) -> Vec<String> {
        rows.first()
            .map(|r| r.iter().map(|(n, _)| n.clone()).collect())
            .unwrap_or_default()
    }
    fn get(&self, name: &str) -> Option<f64> {
        self.iter().find(|(n, _)| n == name).map(|(_, v)| *v)
    }
    fn read(f: &Frame, names: &[String]) -> Result<Vec<Self>> {
        let cols: Vec<Vec<f64>> = names
            .iter()
            .map(|n| f.f64s_required(n))
            .collect::<Result<_>>()?;
        Ok(by_row(names, &cols, f.df.height()))
    }
}

/// The next value of a column read back (each has one per row; a short one is a bug, not bad input).
pub fn next<T>(column: &mut impl Iterator<Item = T>, f: &Frame) -> Result<T> {
    column.next().ok_or_else(|| {
        crate::Error::internal(format!(
            "{}: a column read back has fewer values than rows",
            f.path.display()
        ))
    })
}

/// A run-time column of every row: its value or null.
pub fn rest_column<R>(name: &str, rows: &[R], get: impl Fn(&R) -> Option<f64>) -> Column {
    column(name, rows.iter().map(get).collect::<Vec<Option<f64>>>())
}

/// Declare a results table: a row struct (every field `pub`, each a [`Cell`] type, optionally followed by
/// `as OrEmpty` or `as Optional`, see [`Read`]), optionally ending in `.. pub name: T` with `T:` [`Rest`]. It
/// expands to the struct as written and its [`Table`] implementation.
macro_rules! table {
    (
        $(#[$sm:meta])*
        pub struct $name:ident {
            $(
                $(#[$fm:meta])*
                pub $field:ident : $fty:ty $(as $how:ident)?
            ),+
            $(, .. $(#[$rm:meta])* pub $rest:ident : $rty:ty)?
            $(,)?
        }
    ) => {
        $(#[$sm])*
        pub struct $name {
            $( $(#[$fm])* pub $field: $fty, )+
            $( $(#[$rm])* pub $rest: $rty, )?
        }

        impl $crate::results::schema::Table for $name {
            const FIELDS: &'static [$crate::results::schema::Field] = &[$(
                $crate::results::schema::Field {
                    name: stringify!($field),
                    read: $crate::results::schema::table!(@read $($how)?),
                }
            ),+];
            const COLUMNS: &'static [&'static str] = &[$(stringify!($field)),+];

            #[allow(unused_variables, unreachable_code)]
            fn rest_names(rows: &[Self]) -> Vec<String> {
                $(
                    return <$rty as $crate::results::schema::Rest>::names(
                        &rows.iter().map(|r| &r.$rest).collect::<Vec<_>>(),
                    );
                )?
                Vec::new()
            }

            #[allow(unused_variables)]
            fn frame_with(rows: &[Self], rest: &[String]) -> $crate::Result<polars::prelude::DataFrame> {
                #[allow(unused_mut)]
                let mut cols = vec![$(
                    <$fty as $crate::results::schema::Cell>::column(
                        stringify!($field),
                        rows.iter().map(|r| r.$field.clone()).collect(),
                    )
                ),+];
                $(
                    for n in rest.iter().filter(|n| !Self::COLUMNS.contains(&n.as_str())) {
                        cols.push($crate::results::schema::rest_column(n, rows, |r| {
                            <$rty as $crate::results::schema::Rest>::get(&r.$rest, n)
                        }));
                    }
                )?
                Ok(polars::prelude::DataFrame::new_infer_height(cols)?)
            }

            fn from_frame(f: &$crate::results::frame::Frame) -> $crate::Result<Vec<Self>> {
                f.require(&<Self as $crate::results::schema::Table>::required())?;
                let n = f.df.height();
                $(
                    let mut $field = <$fty as $crate::results::schema::Cell>::read(
                        f,
                        stringify!($field),
                        $crate::results::schema::table!(@read $($how)?),
                        n,
                    )?
                    .into_iter();
                )+
                $(
                    let names: Vec<String> = f
                        .names()
                        .into_iter()
                        .filter(|c| !Self::COLUMNS.contains(&c.as_str()))
                        .collect();
                    let mut $rest = <$rty as $crate::results::schema::Rest>::read(f, &names)?.into_iter();
                )?
                (0..n)
                    .map(|_| {
                        Ok($name {
                            $( $field: $crate::results::schema::next(&mut $field, f)?, )+
                            $( $rest: $crate::results::schema::next(&mut $rest, f)?, )?
                        })
                    })
                    .collect()
            }
        }
    };
    (@read) => {
        $crate::results::schema::Read::Required
    };
    (@read $how:ident) => {
        $crate::results::schema::Read::$how
    };
}
pub(crate) use table;

/// Test helper: write `rows` as CSV and as Parquet into `dir`, read both back and check they equal `rows`; returns
/// the CSV text.
#[cfg(test)]
pub(crate) fn assert_round_trip<T: Table + PartialEq + std::fmt::Debug>(
    dir: &Path,
    stem: &str,
    rows: &[T],
) -> String {
    let (csv, pq) = (
        dir.join(format!("{stem}.csv")),
        dir.join(format!("{stem}.parquet")),
    );
    T::write(rows, &[&csv, &pq]).unwrap();
    assert_eq!(T::read(&csv).unwrap(), rows, "{stem}.csv");
    assert_eq!(T::read(&pq).unwrap(), rows, "{stem}.parquet");
    let text = std::fs::read_to_string(&csv).unwrap();
    let header: Vec<&str> = text.lines().next().unwrap().split(',').collect();
    assert_eq!(&header[..T::COLUMNS.len()], T::COLUMNS, "{stem}.csv header");
    text
}
