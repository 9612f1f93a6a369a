//! Spec diagnostics: validation errors that carry the key path they are about, and the one place that turns a
//! key path into a file, line and quoted source line.
//!
//! Why a path and not a message: a check (a data source's ranges, a strategy's parameters, serde's "unknown
//! field") knows *which key* is wrong; the spec parser knows *where* that key was written (the spec, or a preset
//! file for keys a strategy entry did not override). [`Diag`] carries the first to the second. Typed
//! deserialisation of a TOML table goes through [`from_table`], which records the path of the key serde
//! complained about, so no caller has to find a key by reading an error message.

use crate::Error;
use serde::de::{self, DeserializeOwned, IntoDeserializer};
use std::fmt;
use toml::{Table, Value};

/// One step of a key path: a table key or an array index.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Seg {
    /// A key of a table.
    Key(String),
    /// An element of an array (0-based).
    Index(usize),
}

/// A key path inside a TOML table, e.g. `train.loss.dice` or `orders[2]`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeyPath(pub Vec<Seg>);

impl KeyPath {
    /// The empty path (the table itself).
    pub fn root() -> Self {
        Self(Vec::new())
    }

    /// A path of table keys, e.g. `KeyPath::keys(&["loss", "dice"])`.
    pub fn keys(keys: &[&str]) -> Self {
        Self(keys.iter().map(|k| Seg::Key(k.to_string())).collect())
    }

    /// This path below `prefix`.
    pub fn under(mut self, prefix: &[Seg]) -> Self {
        let mut v = prefix.to_vec();
        v.append(&mut self.0);
        Self(v)
    }

    /// The first key, if the path starts with one.
    pub fn first_key(&self) -> Option<&str> {
        match self.0.first() {
            Some(Seg::Key(k)) => Some(k),
            _ => None,
        }
    }

    /// True for the empty path.
    pub fn is_root(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Display for KeyPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, s) in self.0.iter().enumerate() {
            match s {
                Seg::Key(k) if i == 0 => write!(f, "{k}")?,
                Seg::Key(k) => write!(f, ".{k}")?,
                Seg::Index(n) => write!(f, "[{n}]")?,
            }
        }
        Ok(())
    }
}

/// A validation problem in one table: the key path it is about (empty: the table as a whole) and a message.
/// The message names the key for the reader; code uses [`Diag::path`].
#[derive(Clone, Debug, PartialEq)]
pub struct Diag {
    /// Where in the table the problem is.
    pub path: KeyPath,
    /// What is wrong, for a person.
    pub msg: String,
}

impl Diag {
    /// A problem with the key `key` of the table.
    pub fn at(key: &str, msg: impl Into<String>) -> Self {
        Self {
            path: KeyPath::keys(&[key]),
            msg: msg.into(),
        }
    }

    /// A problem with a nested key, e.g. `Diag::at_path(&["matcher", "lambda"], ..)`.
    pub fn at_path(keys: &[&str], msg: impl Into<String>) -> Self {
        Self {
            path: KeyPath::keys(keys),
            msg: msg.into(),
        }
    }

    /// A problem with the table as a whole (e.g. two options that exclude each other).
    pub fn table(msg: impl Into<String>) -> Self {
        Self {
            path: KeyPath::root(),
            msg: msg.into(),
        }
    }

    /// The same problem, one table further down (e.g. a check of `[matcher]` inside a strategy's parameters).
    pub fn under(mut self, key: &str) -> Self {
        self.path = self.path.under(&[Seg::Key(key.to_string())]);
        self
    }

    /// The message with a prefix (e.g. `"[matcher] "`).
    pub fn prefixed(mut self, p: &str) -> Self {
        self.msg = format!("{p}{}", self.msg);
        self
    }
}

impl fmt::Display for Diag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.msg)
    }
}

impl std::error::Error for Diag {}

impl de::Error for Diag {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        Diag::table(msg.to_string())
    }
}

/// Deserialise a TOML table into `T`. Errors name the key path they are about (unknown keys, wrong types,
/// missing keys point at the table itself), with serde's message.
pub fn from_table<T: DeserializeOwned>(t: &Table) -> Result<T, Diag> {
    T::deserialize(ValueDe {
        v: Value::Table(t.clone()),
        path: Vec::new(),
    })
}

/// Deserialise any TOML value (see [`from_table`]).
pub fn from_value<T: DeserializeOwned>(v: Value) -> Result<T, Diag> {
    T::deserialize(ValueDe {
        v,
        path: Vec::new(),
    })
}

/// A deserializer over a `toml::Value` that knows its own key path: errors raised inside it are stamped with
/// the path of the deepest key they came from.
struct ValueDe {
    v: Value,
    path: Vec<Seg>,
}

fn stamp(mut e: Diag, path: &[Seg]) -> Diag {
    if e.path.is_root() {
        e.path = KeyPath(path.to_vec());
    }
    e
}

impl<'de> de::Deserializer<'de> for ValueDe {
    type Error = Diag;

    fn deserialize_any<V: de::Visitor<'de>>(self, visitor: V) -> Result<V::Value, Diag> {
        let path = self.path;
        let r = match self.v {
            Value::String(s) => visitor.visit_string(s),
            Value::Integer(i) => visitor.visit_i64(i),
            Value::Float(x) => visitor.visit_f64(x),
            Value::Boolean(b) => visitor.visit_bool(b),
            Value::Datetime(d) => visitor.visit_string(d.to_string()),
            Value::Array(a) => visitor.visit_seq(SeqAccess {
                it: a.into_iter().enumerate(),
                path: path.clone(),
            }),
            Value::Table(t) => visitor.visit_map(MapAccess {
                it: t.into_iter(),
                next: None,
                path: path.clone(),
            }),
        };
        r.map_err(|e| stamp(e, &path))
    }

    fn deserialize_option<V: de::Visitor<'de>>(self, visitor: V) -> Result<V::Value, Diag> {
        visitor.visit_some(self)
    }

    fn deserialize_enum<V: de::Visitor<'de>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Diag> {
        let path = self.path;
        match self.v {
            Value::String(s) => {
                let d: de::value::StringDeserializer<Diag> = s.into_deserializer();
                d.deserialize_enum(name, variants, visitor)
                    .map_err(|e| stamp(e, &path))
            }
            other => ValueDe { v: other, path }.deserialize_any(visitor),
        }
    }

    fn deserialize_newtype_struct<V: de::Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Diag> {
        visitor.visit_newtype_struct(self)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf unit unit_struct seq tuple tuple_struct map struct identifier ignored_any
    }
}

struct SeqAccess {
    it: std::iter::Enumerate<std::vec::IntoIter<Value>>,
    path: Vec<Seg>,
}

impl<'de> de::SeqAccess<'de> for SeqAccess {
    type Error = Diag;

    fn next_element_seed<T: de::DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, Diag> {
        match self.it.next() {
            None => Ok(None),
            Some((i, v)) => {
                let mut path = self.path.clone();
                path.push(Seg::Index(i));
                seed.deserialize(ValueDe { v, path }).map(Some)
            }
        }
    }
}

struct MapAccess {
    it: toml::map::IntoIter<String, Value>,
    next: Option<(String, Value)>,
    path: Vec<Seg>,
}

impl<'de> de::MapAccess<'de> for MapAccess {
    type Error = Diag;

    fn next_key_seed<K: de::DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Diag> {
        match self.it.next() {
            None => Ok(None),
            Some((k, v)) => {
                let mut path = self.path.clone();
                path.push(Seg::Key(k.clone()));
                let d: de::value::StrDeserializer<Diag> = k.as_str().into_deserializer();
                let r = seed.deserialize(d).map_err(|e| stamp(e, &path));
                self.next = Some((k, v));
                r.map(Some)
            }
        }
    }

    fn next_value_seed<V: de::DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, Diag> {
        let (k, v) = self
            .next
            .take()
            .ok_or_else(|| Diag::table("value without a key"))?;
        let mut path = self.path.clone();
        path.push(Seg::Key(k));
        seed.deserialize(ValueDe { v, path })
    }
}

/// Where spec errors point: a file's name and text.
pub(crate) struct SpecSource<'a> {
    pub file: String,
    pub text: &'a str,
}

impl SpecSource<'_> {
    /// 1-based line of a byte offset.
    pub fn line_of(&self, offset: usize) -> usize {
        self.text[..offset.min(self.text.len())]
            .matches('\n')
            .count()
            + 1
    }

    /// An error about the file as a whole.
    pub fn err(&self, msg: impl Into<String>) -> Error {
        Error::Spec {
            file: self.file.clone(),
            msg: msg.into(),
        }
    }

    /// An error at a byte offset: "line N: msg" and the quoted line.
    pub fn err_at(&self, offset: usize, msg: impl fmt::Display) -> Error {
        let line = self.line_of(offset);
        let text = self.text.lines().nth(line - 1).unwrap_or("").trim_end();
        self.err(format!("line {line}: {msg}\n  {line} | {text}"))
    }

    /// An error about key `d.path` of the table at `table` (a key path from the document root), prefixed with
    /// `what` (e.g. "[[stream.task]] #2 (b)"). Points at the key's line when the key is written in this file,
    /// else at the table's header (`fallback`, a byte offset).
    pub fn err_diag(&self, table: &[Seg], fallback: usize, what: &str, d: &Diag) -> Error {
        let mut full = table.to_vec();
        full.extend(d.path.0.iter().cloned());
        let off = locate(self.text, &full).unwrap_or(fallback);
        self.err_at(off, format!("{what}: {}", d.msg.trim_end()))
    }

    /// A TOML syntax or top-level type error.
    pub fn toml_err(&self, e: &toml::de::Error) -> Error {
        match e.span() {
            Some(s) => self.err_at(s.start, e.message()),
            None => self.err(e.message().to_string()),
        }
    }
}

/// Byte offset of the deepest part of `path` written in `text`: the key itself when present, else the nearest
/// enclosing table or array element. None when even the first step is absent.
pub(crate) fn locate(text: &str, path: &[Seg]) -> Option<usize> {
    let doc = toml::de::DeTable::parse(text).ok()?;
    let mut table: &toml::de::DeTable = doc.get_ref();
    let mut found: Option<usize> = None;
    let mut cur: Option<&toml::Spanned<toml::de::DeValue>> = None;
    for seg in path {
        match seg {
            Seg::Key(k) => {
                if let Some(c) = cur {
                    match c.get_ref() {
                        toml::de::DeValue::Table(t) => table = t,
                        _ => break,
                    }
                }
                let Some((key, val)) = table.iter().find(|(kk, _)| kk.get_ref().as_ref() == k)
                else {
                    break;
                };
                found = Some(key.span().start);
                cur = Some(val);
            }
            Seg::Index(i) => {
                let Some(c) = cur else { break };
                let toml::de::DeValue::Array(a) = c.get_ref() else {
                    break;
                };
                let Some(el) = a.get(*i) else { break };
                found = Some(el.span().start);
                cur = Some(el);
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Inner {
        #[serde(default)]
        dice: f64,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Outer {
        #[serde(default)]
        epochs: usize,
        #[serde(default)]
        loss: Option<Inner>,
        #[serde(default)]
        list: Vec<u32>,
    }

    fn err(text: &str) -> Diag {
        let t: Table = toml::from_str(text).unwrap();
        from_table::<Outer>(&t).unwrap_err()
    }

    #[test]
    fn errors_carry_the_key_path() {
        assert_eq!(err("epochz = 1").path.to_string(), "epochz");
        assert_eq!(err("epochs = \"two\"").path.to_string(), "epochs");
        assert_eq!(err("[loss]\ndice = true").path.to_string(), "loss.dice");
        assert_eq!(err("[loss]\ndise = 1.0").path.to_string(), "loss.dise");
        assert_eq!(err("list = [1, -2]").path.to_string(), "list[1]");
        let ok: Outer =
            from_table(&toml::from_str("epochs = 3\n[loss]\ndice = 2").unwrap()).unwrap();
        assert_eq!(ok.epochs, 3);
    }

    #[test]
    fn locate_finds_keys_in_tables_and_arrays_of_tables() {
        let text = "[a]\nx = 1\n\n[[t]]\nname = \"p\"\n[[t]]\nname = \"q\"\n[t.sub]\ny = 2\n";
        let line = |p: &[Seg]| {
            let src = SpecSource {
                file: "f".into(),
                text,
            };
            src.line_of(locate(text, p).unwrap())
        };
        let k = |s: &str| Seg::Key(s.into());
        assert_eq!(line(&[k("a"), k("x")]), 2);
        assert_eq!(line(&[k("t"), Seg::Index(1), k("name")]), 7);
        assert_eq!(line(&[k("t"), Seg::Index(1), k("sub"), k("y")]), 9);
        // a key that is not written falls back to its table
        assert_eq!(line(&[k("t"), Seg::Index(0), k("nope")]), 4);
    }
}
