//! The study's event log: one JSON line per action, appended and fsynced as it happens
//! (`STUDY_DIR/log/<annotator>.jsonl`), so killing the server or closing the browser loses at most the action in
//! flight. `events.csv`/`events.parquet` and `cases.csv` are derived from the logs (see [`super::tables`]).

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::results::frame::{req_strs, Frame};
use crate::results::schema::{self, table, Cell};
use crate::{Error, Result};

/// What the annotator did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// The case was shown for the first time.
    Open,
    /// The case was shown again after the server restarted.
    Resume,
    /// A box prompt (x, y, x1, y1); replaces an earlier box.
    Box,
    /// A click (x, y, label).
    Click,
    /// The last prompt was taken back.
    Undo,
    /// Every prompt was taken back.
    Clear,
    /// The annotator accepted the mask; the next case follows.
    Accept,
}

impl Action {
    /// The name written in the tables.
    pub fn as_str(&self) -> &'static str {
        match self {
            Action::Open => "open",
            Action::Resume => "resume",
            Action::Box => "box",
            Action::Click => "click",
            Action::Undo => "undo",
            Action::Clear => "clear",
            Action::Accept => "accept",
        }
    }

    /// Every action, in declaration order.
    pub const ALL: [Action; 7] = [
        Action::Open,
        Action::Resume,
        Action::Box,
        Action::Click,
        Action::Undo,
        Action::Clear,
        Action::Accept,
    ];

    /// The action named `name` in the tables.
    pub fn parse(name: &str) -> Option<Action> {
        Action::ALL.into_iter().find(|a| a.as_str() == name)
    }

    /// A box or a click (what counts as a prompt).
    pub fn is_prompt(&self) -> bool {
        matches!(self, Action::Box | Action::Click)
    }
}

/// The `action` column: the names of [`Action::as_str`].
impl Cell for Action {
    fn column(name: &str, values: Vec<Self>) -> polars::prelude::Column {
        let names: Vec<&str> = values.iter().map(Action::as_str).collect();
        polars::prelude::Column::new(name.into(), names)
    }
    fn read(f: &Frame, name: &str, _how: schema::Read, _len: usize) -> Result<Vec<Self>> {
        req_strs(f, name)?
            .iter()
            .enumerate()
            .map(|(i, s)| {
                Action::parse(s).ok_or_else(|| {
                    Error::input(format!(
                        "{}: column {name} has unknown action {s:?} in data row {}",
                        f.path.display(),
                        i + 1
                    ))
                })
            })
            .collect()
    }
}

table! {
/// One logged action; also one row of `events.csv`/`events.parquet` (columns in field order).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Who annotated.
    pub annotator: String,
    /// Position in the annotator's schedule (0-based).
    pub slot: usize,
    /// Case id.
    pub case: String,
    /// The arm's label (e.g. "evosam", "base"); never shown on the page.
    pub model: String,
    /// The expert that served the case ("base" for the base model).
    pub expert: String,
    /// What happened.
    pub action: Action,
    /// Box x0 or click x, original pixels.
    pub x: Option<f64>,
    /// Box y0 or click y.
    pub y: Option<f64>,
    /// Box x1.
    pub x1: Option<f64>,
    /// Box y1.
    pub y1: Option<f64>,
    /// Click label: 1 foreground, 0 background.
    pub label: Option<u8>,
    /// Prompts in effect after the action.
    pub n_prompts: usize,
    /// Dice of the mask after the action against the ground truth, when the case has one and a mask exists.
    pub dice: Option<f64>,
    /// Seconds since the case was opened (time the case was on screen, summed over server sessions).
    pub t_case_s: f64,
    /// Wall-clock time (RFC 3339, UTC).
    pub timestamp: String,
}
}

/// The append-only log of one annotator.
pub struct EventLog {
    path: PathBuf,
    file: File,
}

/// The log file of `annotator` in a study folder.
pub fn log_path(study_dir: &Path, annotator: &str) -> PathBuf {
    study_dir.join("log").join(format!("{annotator}.jsonl"))
}

impl EventLog {
    /// Open (or create) a log and read its events. A last line cut short by a crash (no newline) is dropped
    /// from the file before anything is appended, so the log stays one event per line.
    pub fn open(path: &Path) -> Result<(Self, Vec<Event>)> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        }
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(|e| Error::io(path, e))?;
        let mut text = String::new();
        file.read_to_string(&mut text)
            .map_err(|e| Error::io(path, e))?;
        let complete = text.rfind('\n').map(|i| i + 1).unwrap_or(0);
        if complete < text.len() {
            file.set_len(complete as u64)
                .map_err(|e| Error::io(path, e))?;
            file.sync_all().map_err(|e| Error::io(path, e))?;
        }
        file.seek(SeekFrom::End(0))
            .map_err(|e| Error::io(path, e))?;
        let events = parse_lines(&text[..complete], path)?;
        Ok((
            Self {
                path: path.to_path_buf(),
                file,
            },
            events,
        ))
    }

    /// Append one event and wait until it is on disk.
    pub fn append(&mut self, ev: &Event) -> Result<()> {
        let mut line = serde_json::to_string(ev).map_err(|e| Error::internal(e.to_string()))?;
        line.push('\n');
        self.file
            .write_all(line.as_bytes())
            .and_then(|_| self.file.sync_data())
            .map_err(|e| Error::io(&self.path, e))
    }
}

/// Events of a log's complete lines.
fn parse_lines(text: &str, path: &Path) -> Result<Vec<Event>> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l).map_err(|e| {
                Error::input(format!(
                    "{}: line {}: not an event of this tool: {e}",
                    path.display(),
                    i + 1
                ))
            })
        })
        .collect()
}

/// Every event of every annotator's log in a study folder (complete lines only), annotators in name order.
pub fn read_all(study_dir: &Path) -> Result<Vec<Event>> {
    let dir = study_dir.join("log");
    let mut files: Vec<PathBuf> = match std::fs::read_dir(&dir) {
        Ok(rd) => rd
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "jsonl"))
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(Error::io(&dir, e)),
    };
    files.sort();
    let mut out = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f).map_err(|e| Error::io(&f, e))?;
        let complete = text.rfind('\n').map(|i| i + 1).unwrap_or(0);
        out.extend(parse_lines(&text[..complete], &f)?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn ev(slot: usize, action: Action, t: f64) -> Event {
        Event {
            annotator: "a".into(),
            slot,
            case: format!("c{slot}"),
            model: "evosam".into(),
            expert: "base".into(),
            action,
            x: Some(1.5),
            y: None,
            x1: None,
            y1: None,
            label: None,
            n_prompts: 0,
            dice: Some(0.5),
            t_case_s: t,
            timestamp: "2026-01-01T00:00:00Z".into(),
        }
    }

    #[test]
    fn appends_survive_reopening_and_a_torn_last_line_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let p = log_path(dir.path(), "a");
        {
            let (mut log, evs) = EventLog::open(&p).unwrap();
            assert!(evs.is_empty());
            log.append(&ev(0, Action::Open, 0.0)).unwrap();
            log.append(&ev(0, Action::Click, 1.0)).unwrap();
        }
        // a crash in the middle of the third write
        let mut f = OpenOptions::new().append(true).open(&p).unwrap();
        f.write_all(br#"{"annotator":"a","slot":0,"ca"#).unwrap();
        drop(f);
        let (mut log, evs) = EventLog::open(&p).unwrap();
        assert_eq!(
            evs,
            vec![ev(0, Action::Open, 0.0), ev(0, Action::Click, 1.0)]
        );
        log.append(&ev(0, Action::Accept, 2.0)).unwrap();
        drop(log);
        let (_, evs) = EventLog::open(&p).unwrap();
        assert_eq!(evs.len(), 3);
        assert_eq!(evs[2], ev(0, Action::Accept, 2.0));
        // earlier lines are never rewritten: the file starts with the first event's line
        let text = std::fs::read_to_string(&p).unwrap();
        let first = serde_json::to_string(&ev(0, Action::Open, 0.0)).unwrap();
        assert!(text.starts_with(&first));
        assert_eq!(read_all(dir.path()).unwrap().len(), 3);
    }

    #[test]
    fn a_corrupt_complete_line_is_an_input_error() {
        let dir = tempfile::tempdir().unwrap();
        let p = log_path(dir.path(), "a");
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, "not json\n").unwrap();
        let e = EventLog::open(&p).err().unwrap();
        assert_eq!(e.exit_code(), 2);
        assert!(e.to_string().contains("line 1"), "{e}");
    }
}
