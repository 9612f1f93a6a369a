//! The study's tables, derived from the event logs: `events.csv` + `events.parquet` (one row per action) and
//! `cases.csv` (one row per accepted case). Rewritten atomically after every accepted case and when a server
//! starts; the logs stay the record.

use std::path::Path;

use super::events::{Action, Event};
use crate::results::schema::table;
use crate::results::Table;
use crate::Result;

table! {
/// One accepted case of one annotator: one row of `cases.csv` (columns in field order).
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

/// Rewrite `events.csv`, `events.parquet` and `cases.csv` from every log of the study folder.
pub fn write_tables(study_dir: &Path) -> Result<()> {
    let ev = super::events::read_all(study_dir)?;
    Event::write(
        &ev,
        &[
            &study_dir.join("events.csv"),
            &study_dir.join("events.parquet"),
        ],
    )?;
    CaseRow::write(&case_rows(&ev), &[&study_dir.join("cases.csv")])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::annotate::events::{log_path, EventLog};
    use polars::prelude::*;

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

    #[test]
    fn tables_read_back_as_the_rows_they_were_written_from() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = EventLog::open(&log_path(dir.path(), "a")).unwrap();
        let open = Event {
            case: "007".into(), // a leading zero survives the CSV
            ..ev(0, Action::Open, 0.0, 0)
        };
        let evs = vec![
            open.clone(),
            Event {
                x: Some(1.5),
                y: Some(2.25),
                x1: Some(30.0),
                y1: Some(41.125),
                ..Event {
                    action: Action::Box,
                    n_prompts: 1,
                    t_case_s: 1.0 / 3.0,
                    ..open.clone()
                }
            },
            Event {
                x: Some(7.0),
                y: Some(8.0),
                label: Some(1),
                dice: None,
                ..Event {
                    action: Action::Click,
                    n_prompts: 2,
                    t_case_s: 2.5,
                    ..open.clone()
                }
            },
            Event {
                action: Action::Accept,
                dice: None,
                t_case_s: 3.75,
                ..open.clone()
            },
            ev(1, Action::Open, 0.0, 0),
            Event {
                label: Some(0),
                x: Some(3.0),
                y: Some(4.0),
                ..ev(1, Action::Click, 0.5, 1)
            },
            ev(1, Action::Accept, 1.0, 1),
        ];
        for e in &evs {
            log.append(e).unwrap();
        }
        write_tables(dir.path()).unwrap();
        let header = |f: &str| {
            let text = std::fs::read_to_string(dir.path().join(f)).unwrap();
            text.lines().next().unwrap().to_string()
        };
        assert_eq!(
            header("events.csv"),
            "annotator,slot,case,model,expert,action,x,y,x1,y1,label,n_prompts,dice,t_case_s,timestamp"
        );
        assert_eq!(header("events.csv"), Event::COLUMNS.join(","));
        assert_eq!(header("cases.csv"), CaseRow::COLUMNS.join(","));
        assert_eq!(Event::read(&dir.path().join("events.csv")).unwrap(), evs);
        assert_eq!(
            Event::read(&dir.path().join("events.parquet")).unwrap(),
            evs
        );
        let cases = case_rows(&evs);
        assert_eq!(cases.len(), 2);
        assert_eq!(CaseRow::read(&dir.path().join("cases.csv")).unwrap(), cases);
    }

    #[test]
    fn a_damaged_table_is_an_input_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("cases.csv");
        let bad = [
            "annotator,slot,case,model,expert,seconds,n_prompts,n_clicks,n_boxes,n_undo,n_clear,final_prompts,final_dice",
            "a,-1,c0,evosam,base,2.0,1,0,1,0,0,1,",
        ];
        std::fs::write(&p, bad.join("\n")).unwrap();
        let e = CaseRow::read(&p).unwrap_err().to_string();
        assert!(e.contains("cases.csv") && e.contains("slot"), "{e}");
        let p = dir.path().join("events.csv");
        let row = "a,0,c0,m,base,wave,,,,,,0,,0.0,t";
        std::fs::write(&p, format!("{}\n{row}\n", Event::COLUMNS.join(","))).unwrap();
        let e = Event::read(&p).unwrap_err().to_string();
        assert!(e.contains("events.csv") && e.contains("\"wave\""), "{e}");
    }
}
