//! One annotator's session: the study record (`study.json`), the schedule, the prompts of the open case, and the
//! event log. Restarting the server replays the log and continues at the first case not accepted, with the prompts
//! the annotator had given.

use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use super::cases::StudyCase;
use super::engine::{dice_of, Engine, Prepared, Prompt};
use super::events::{log_path, Action, Event, EventLog};
use super::schedule::{schedule, Design, Slot};
use crate::{Error, Result};

const FORMAT: &str = "evosam-annotate-1";

/// `study.json`: what every annotator of a study folder shares.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StudyRecord {
    /// File format tag.
    pub format: String,
    /// Schedule seed.
    pub seed: u64,
    /// The design.
    pub design: Design,
    /// Arm labels: [EvoSAM, comparison].
    pub models: [String; 2],
    /// Case ids, in the study's order.
    pub cases: Vec<String>,
    /// Annotators in the order they joined (their index flips the arms in the split design).
    pub annotators: Vec<String>,
}

/// Check an annotator name: 1 to 64 letters, digits, `-`, `_`, `.` (not starting with `.`); it names a file.
pub fn check_annotator(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(Error::input(format!(
            "--annotator `{name}`: use 1 to 64 letters, digits, `-`, `_` or `.` (not starting with `.`)"
        )))
    }
}

/// Read or create `study.json` and register the annotator; a folder started with other cases, models, design
/// or seed is refused.
pub fn join_study(dir: &Path, want: &StudyRecord, annotator: &str) -> Result<(StudyRecord, usize)> {
    let p = dir.join("study.json");
    let mut rec = match std::fs::read(&p) {
        Ok(b) => {
            let r: StudyRecord = serde_json::from_slice(&b)
                .map_err(|e| Error::input(format!("{}: {e}", p.display())))?;
            let same = r.format == want.format
                && r.seed == want.seed
                && r.design == want.design
                && r.models == want.models
                && r.cases == want.cases;
            if !same {
                return Err(Error::input(format!(
                    "{}: this study was started with other settings (seed {}, design {:?}, models {:?}, {} cases); \
                     run it with the same images, models, --seed and --design, or choose a new --out",
                    p.display(),
                    r.seed,
                    r.design,
                    r.models,
                    r.cases.len()
                )));
            }
            r
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => want.clone(),
        Err(e) => return Err(Error::io(&p, e)),
    };
    let idx = match rec.annotators.iter().position(|a| a == annotator) {
        Some(i) => i,
        None => {
            rec.annotators.push(annotator.to_string());
            rec.annotators.len() - 1
        }
    };
    let js = serde_json::to_vec_pretty(&rec).map_err(|e| Error::internal(e.to_string()))?;
    crate::util::write_atomic(&p, &js)?;
    Ok((rec, idx))
}

/// A new study record.
pub fn record(seed: u64, design: Design, models: [String; 2], cases: &[StudyCase]) -> StudyRecord {
    StudyRecord {
        format: FORMAT.into(),
        seed,
        design,
        models,
        cases: cases.iter().map(|c| c.id.clone()).collect(),
        annotators: Vec::new(),
    }
}

/// A change to the open case's prompts.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Edit {
    /// Add (or replace) the box.
    Box([f64; 4]),
    /// Add a click.
    Click([f64; 2], u8),
    /// Take back the last prompt.
    Undo,
    /// Take back every prompt.
    Clear,
}

/// One annotator's state.
pub struct Session {
    /// The study folder.
    pub dir: PathBuf,
    /// Who annotates.
    pub annotator: String,
    /// The schedule.
    pub slots: Vec<Slot>,
    /// Arm labels.
    pub models: [String; 2],
    /// Position in the schedule of the open case (== slots.len() when done).
    pub current: usize,
    /// Prompts of the open case, oldest first.
    pub prompts: Vec<Prompt>,
    /// Low-res logits after each prompt (None where not computed since a restart).
    logits: Vec<Option<Tensor>>,
    /// The mask after the last prompt (None: no prompt or not computed yet).
    mask: Option<Vec<bool>>,
    log: EventLog,
    /// Seconds the open case was on screen before this server started.
    base_elapsed: f64,
    opened: Option<Instant>,
    logged_open: bool,
}

impl Session {
    /// Join the study, build the schedule and replay the annotator's log.
    pub fn start(dir: &Path, annotator: &str, want: &StudyRecord) -> Result<Self> {
        check_annotator(annotator)?;
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let (rec, idx) = join_study(dir, want, annotator)?;
        let slots = schedule(rec.cases.len(), rec.seed, rec.design, annotator, idx);
        let (log, events) = EventLog::open(&log_path(dir, annotator))?;
        let mut s = Self {
            dir: dir.to_path_buf(),
            annotator: annotator.to_string(),
            slots,
            models: rec.models.clone(),
            current: 0,
            prompts: Vec::new(),
            logits: Vec::new(),
            mask: None,
            log,
            base_elapsed: 0.0,
            opened: None,
            logged_open: false,
        };
        s.replay(&events);
        Ok(s)
    }

    fn replay(&mut self, events: &[Event]) {
        self.current = events
            .iter()
            .filter(|e| e.action == Action::Accept)
            .map(|e| e.slot + 1)
            .max()
            .unwrap_or(0)
            .min(self.slots.len());
        for e in events.iter().filter(|e| e.slot == self.current) {
            self.logged_open = true;
            self.base_elapsed = e.t_case_s;
            match e.action {
                Action::Box => {
                    if let (Some(x), Some(y), Some(x1), Some(y1)) = (e.x, e.y, e.x1, e.y1) {
                        self.prompts.push(Prompt::Box([x, y, x1, y1]));
                    }
                }
                Action::Click => {
                    if let (Some(x), Some(y), Some(l)) = (e.x, e.y, e.label) {
                        self.prompts.push(Prompt::Click([x, y], l));
                    }
                }
                Action::Undo => {
                    self.prompts.pop();
                }
                Action::Clear => self.prompts.clear(),
                _ => {}
            }
        }
        self.logits = vec![None; self.prompts.len()];
    }

    /// True when every slot is accepted.
    pub fn done(&self) -> bool {
        self.current >= self.slots.len()
    }

    /// Seconds the open case has been on screen.
    pub fn elapsed(&self) -> f64 {
        self.base_elapsed
            + self
                .opened
                .map(|t| t.elapsed().as_secs_f64())
                .unwrap_or(0.0)
    }

    fn event(&self, case: &StudyCase, p: &Prepared, action: Action, dice: Option<f64>) -> Event {
        let slot = self.slots[self.current];
        Event {
            annotator: self.annotator.clone(),
            slot: self.current,
            case: case.id.clone(),
            model: self.models[slot.arm].clone(),
            expert: p.expert_name.clone(),
            action,
            x: None,
            y: None,
            x1: None,
            y1: None,
            label: None,
            n_prompts: self.prompts.len(),
            dice,
            t_case_s: (self.elapsed() * 1000.0).round() / 1000.0,
            timestamp: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        }
    }

    /// Start the clock of the open case (logs `open`, or `resume` after a restart); idempotent.
    pub fn ensure_open(&mut self, case: &StudyCase, p: &Prepared) -> Result<()> {
        if self.opened.is_some() || self.done() {
            return Ok(());
        }
        self.opened = Some(Instant::now());
        let action = if self.logged_open {
            Action::Resume
        } else {
            Action::Open
        };
        self.logged_open = true;
        let ev = self.event(case, p, action, None);
        self.log.append(&ev)
    }

    /// The mask of the current prompts (recomputing the chain of decoder passes after a restart).
    pub fn current_mask(&mut self, engine: &Engine, p: &Prepared) -> Result<Option<Vec<bool>>> {
        if self.mask.is_none() && !self.prompts.is_empty() {
            let arm = self.slots[self.current].arm;
            for k in 0..self.prompts.len() {
                if self.logits[k].is_none() || k + 1 == self.prompts.len() {
                    let prev = self.mask_in(k);
                    let out = engine.decode(p, arm, &self.prompts[..=k], prev.as_ref())?;
                    self.logits[k] = out.as_ref().map(|o| o.logits.clone());
                    self.mask = out.map(|o| o.mask);
                }
            }
        }
        Ok(self.mask.clone())
    }

    /// The mask prompt for step k: the logits of step k - 1, unless step k is a new box (the region changed).
    fn mask_in(&self, k: usize) -> Option<Tensor> {
        if k == 0 || matches!(self.prompts[k], Prompt::Box(_)) {
            None
        } else {
            self.logits[k - 1].clone()
        }
    }

    /// Apply an edit (already validated), run the decoder, log the action; returns the new mask (None = empty).
    pub fn edit(
        &mut self,
        engine: &Engine,
        case: &StudyCase,
        p: &Prepared,
        e: Edit,
    ) -> Result<Option<Vec<bool>>> {
        self.ensure_open(case, p)?;
        // Bring the chain up to date first (after a restart), so the mask prompt of the new step is right.
        self.current_mask(engine, p)?;
        let arm = self.slots[self.current].arm;
        let (action, coords) = match e {
            Edit::Box(b) => {
                self.prompts.push(Prompt::Box(b));
                (
                    Action::Box,
                    (Some(b[0]), Some(b[1]), Some(b[2]), Some(b[3]), None),
                )
            }
            Edit::Click([x, y], l) => {
                self.prompts.push(Prompt::Click([x, y], l));
                (Action::Click, (Some(x), Some(y), None, None, Some(l)))
            }
            Edit::Undo => {
                self.prompts.pop();
                self.logits.truncate(self.prompts.len());
                (Action::Undo, (None, None, None, None, None))
            }
            Edit::Clear => {
                self.prompts.clear();
                self.logits.clear();
                (Action::Clear, (None, None, None, None, None))
            }
        };
        if action.is_prompt() {
            let k = self.prompts.len() - 1;
            let prev = self.mask_in(k);
            let out = engine.decode(p, arm, &self.prompts, prev.as_ref())?;
            self.logits.push(out.as_ref().map(|o| o.logits.clone()));
            self.mask = out.map(|o| o.mask);
        } else {
            self.mask = None;
            self.current_mask(engine, p)?;
        }
        let mut ev = self.event(
            case,
            p,
            action,
            dice_of(self.mask.as_deref(), case, &p.meta),
        );
        (ev.x, ev.y, ev.x1, ev.y1, ev.label) = coords;
        self.log.append(&ev)?;
        Ok(self.mask.clone())
    }

    /// Accept the open case's mask, log it, move to the next case and rewrite the tables.
    pub fn accept(&mut self, engine: &Engine, case: &StudyCase, p: &Prepared) -> Result<()> {
        self.ensure_open(case, p)?;
        self.current_mask(engine, p)?;
        let ev = self.event(
            case,
            p,
            Action::Accept,
            dice_of(self.mask.as_deref(), case, &p.meta),
        );
        self.log.append(&ev)?;
        self.current += 1;
        self.prompts.clear();
        self.logits.clear();
        self.mask = None;
        self.base_elapsed = 0.0;
        self.opened = None;
        self.logged_open = false;
        super::tables::write_tables(&self.dir)
    }
}
