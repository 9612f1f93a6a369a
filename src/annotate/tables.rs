//! The study's tables, derived from the event logs: `events.csv` + `events.parquet` (one row per action) and
//! `cases.csv` (one row per accepted case). Rewritten atomically after every accepted case and when a server
//! starts; the logs stay the record.

use std::path::Path;

use polars::prelude::*;

use super::events::{Action, Event};
use crate::results::{write_csv, write_parquet};
use crate::Result;

/// One accepted case of one annotator.
#[derive(Clone, Debug, PartialEq)]
pub struct CaseRow {
    /// Who annotated.
    pub annotator: String,
    /// Position in the annotator's schedule.
    pub slot: usize,
    /// Case id.
    pub case: String,
    /// The arm's label.
    pub model: String,
    /// The expert that served the case.
    pub expert: String,
    /// Seconds from opening the case to accepting it.
    pub seconds: f64,
    /// Prompts given (boxes + clicks, taken back ones included).
    pub n_prompts: usize,
    /// Clicks given.
    pub n_clicks: usize,
    /// Boxes drawn.
    pub n_boxes: usize,
    /// Undo actions.
    pub n_undo: usize,
    /// Clear actions.
    pub n_clear: usize,
    /// Prompts in effect at accept.
    pub final_prompts: usize,
    /// Dice at accept (None without ground truth).
    pub final_dice: Option<f64>,
}

/// One row per accepted (annotator, slot), in log order.
pub fn case_rows(events: &[Event]) -> Vec<CaseRow> {
    let mut out = Vec::new();
    let mut counts: std::collections::HashMap<(String, usize), [usize; 4]> = Default::default();
    for e in events {
        let c = counts.entry((e.annotator.clone(), e.slot)).or_default();
        match e.action {
            Action::Click => c[0] += 1,
            Action::Box => c[1] += 1,
            Action::Undo => c[2] += 1,
            Action::Clear => c[3] += 1,
            Action::Accept => {
                out.push(CaseRow {
                    annotator: e.annotator.clone(),
                    slot: e.slot,
                    case: e.case.clone(),
                    model: e.model.clone(),
                    expert: e.expert.clone(),
                    seconds: e.t_case_s,
                    n_prompts: c[0] + c[1],
                    n_clicks: c[0],
                    n_boxes: c[1],
                    n_undo: c[2],
                    n_clear: c[3],
                    final_prompts: e.n_prompts,
                    final_dice: e.dice,
                });
            }
            Action::Open | Action::Resume => {}
        }
    }
    out
}

fn col<T>(name: &str, v: T) -> Column
where
    Series: NamedFrom<T, [<T as IntoIterator>::Item]>,
    T: IntoIterator,
{
    Column::from(Series::new(name.into(), v))
}

/// The events table.
pub fn events_frame(ev: &[Event]) -> Result<DataFrame> {
    let s = |f: &dyn Fn(&Event) -> String| ev.iter().map(f).collect::<Vec<String>>();
    let o = |f: &dyn Fn(&Event) -> Option<f64>| ev.iter().map(f).collect::<Vec<Option<f64>>>();
    Ok(DataFrame::new_infer_height(vec![
        col("annotator", s(&|e| e.annotator.clone())),
        col("slot", ev.iter().map(|e| e.slot as i64).collect::<Vec<_>>()),
        col("case", s(&|e| e.case.clone())),
        col("model", s(&|e| e.model.clone())),
        col("expert", s(&|e| e.expert.clone())),
        col("action", s(&|e| e.action.as_str().to_string())),
        col("x", o(&|e| e.x)),
        col("y", o(&|e| e.y)),
        col("x1", o(&|e| e.x1)),
        col("y1", o(&|e| e.y1)),
        col(
            "label",
            ev.iter()
                .map(|e| e.label.map(i64::from))
                .collect::<Vec<_>>(),
        ),
        col(
            "n_prompts",
            ev.iter().map(|e| e.n_prompts as i64).collect::<Vec<_>>(),
        ),
        col("dice", o(&|e| e.dice)),
        col(
            "t_case_s",
            ev.iter().map(|e| e.t_case_s).collect::<Vec<_>>(),
        ),
        col("timestamp", s(&|e| e.timestamp.clone())),
    ])?)
}

/// The cases table.
pub fn cases_frame(rows: &[CaseRow]) -> Result<DataFrame> {
    let s = |f: &dyn Fn(&CaseRow) -> String| rows.iter().map(f).collect::<Vec<String>>();
    let i = |f: &dyn Fn(&CaseRow) -> usize| rows.iter().map(|r| f(r) as i64).collect::<Vec<i64>>();
    Ok(DataFrame::new_infer_height(vec![
        col("annotator", s(&|r| r.annotator.clone())),
        col("slot", i(&|r| r.slot)),
        col("case", s(&|r| r.case.clone())),
        col("model", s(&|r| r.model.clone())),
        col("expert", s(&|r| r.expert.clone())),
        col(
            "seconds",
            rows.iter().map(|r| r.seconds).collect::<Vec<_>>(),
        ),
        col("n_prompts", i(&|r| r.n_prompts)),
        col("n_clicks", i(&|r| r.n_clicks)),
        col("n_boxes", i(&|r| r.n_boxes)),
        col("n_undo", i(&|r| r.n_undo)),
        col("n_clear", i(&|r| r.n_clear)),
        col("final_prompts", i(&|r| r.final_prompts)),
        col(
            "final_dice",
            rows.iter().map(|r| r.final_dice).collect::<Vec<_>>(),
        ),
    ])?)
}

/// Rewrite `events.csv`, `events.parquet` and `cases.csv` from every log of the study folder.
pub fn write_tables(study_dir: &Path) -> Result<()> {
    let ev = super::events::read_all(study_dir)?;
    let mut ef = events_frame(&ev)?;
    write_csv(&study_dir.join("events.csv"), &mut ef)?;
    write_parquet(&study_dir.join("events.parquet"), &mut ef)?;
    let mut cf = cases_frame(&case_rows(&ev))?;
    write_csv(&study_dir.join("cases.csv"), &mut cf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::annotate::events::{log_path, EventLog};

    fn ev(slot: usize, action: Action, t: f64, n: usize) -> Event {
        Event {
            annotator: "a".into(),
            slot,
            case: format!("c{slot}"),
            model: if slot.is_multiple_of(2) {
                "evosam"
            } else {
                "base"
            }
            .into(),
            expert: "base".into(),
            action,
            x: None,
            y: None,
            x1: None,
            y1: None,
            label: None,
            n_prompts: n,
            dice: Some(0.25 * n as f64),
            t_case_s: t,
            timestamp: "2026-01-01T00:00:00Z".into(),
        }
    }

    #[test]
    fn cases_count_prompts_and_take_the_accept_time() {
        let evs = vec![
            ev(0, Action::Open, 0.0, 0),
            ev(0, Action::Box, 1.0, 1),
            ev(0, Action::Click, 2.0, 2),
            ev(0, Action::Undo, 3.0, 1),
            ev(0, Action::Click, 4.0, 2),
            ev(0, Action::Accept, 5.5, 2),
            ev(1, Action::Open, 0.0, 0),
            ev(1, Action::Box, 0.5, 1),
            ev(1, Action::Clear, 0.7, 0),
            ev(1, Action::Box, 0.9, 1),
            ev(1, Action::Accept, 1.25, 1),
            ev(2, Action::Open, 0.0, 0), // not accepted: no row
        ];
        let rows = case_rows(&evs);
        assert_eq!(rows.len(), 2);
        let r = &rows[0];
        assert_eq!((r.n_prompts, r.n_clicks, r.n_boxes, r.n_undo), (3, 2, 1, 1));
        assert_eq!(
            (r.seconds, r.final_prompts, r.final_dice),
            (5.5, 2, Some(0.5))
        );
        let r = &rows[1];
        assert_eq!((r.n_prompts, r.n_boxes, r.n_clear), (2, 2, 1));
        assert_eq!(r.model, "base");
    }

    #[test]
    fn tables_are_written_from_the_logs() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = EventLog::open(&log_path(dir.path(), "a")).unwrap();
        for e in [
            ev(0, Action::Open, 0.0, 0),
            ev(0, Action::Box, 1.0, 1),
            ev(0, Action::Accept, 2.0, 1),
        ] {
            log.append(&e).unwrap();
        }
        write_tables(dir.path()).unwrap();
        let f = CsvReadOptions::default()
            .try_into_reader_with_file_path(Some(dir.path().join("events.csv")))
            .unwrap()
            .finish()
            .unwrap();
        assert_eq!(f.height(), 3);
        let pq =
            ParquetReader::new(std::fs::File::open(dir.path().join("events.parquet")).unwrap())
                .finish()
                .unwrap();
        assert_eq!(pq.height(), 3);
        let c = std::fs::read_to_string(dir.path().join("cases.csv")).unwrap();
        assert_eq!(c.lines().count(), 2, "{c}");
        assert!(
            c.lines()
                .nth(1)
                .unwrap()
                .starts_with("a,0,c0,evosam,base,2.0,1,0,1"),
            "{c}"
        );
    }
}
