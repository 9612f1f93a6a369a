//! `evosam annotate`: a local web page on which clinicians segment images with box and click prompts, for
//! prompt-efficiency studies with people (the counterpart of the simulated clicks of [`crate::interactive`]).
//!
//! [`serve_study`] with [`StudyOptions`] is the whole surface: it opens (or continues) a study folder and serves
//! the page. Inside, one file per job:
//!
//! - `cases`: the study's images (a folder, or a task's test split of a spec).
//! - `schedule`: which model serves each case (seeded, balanced, blinded; [`Design`]).
//! - `engine`: LiteMedSAM and the two arms; one encoder pass per case ahead of time, one decoder pass per prompt.
//! - `events`: the append-only, fsynced event log; `tables`: `events.csv`/`.parquet`, `cases.csv` from it.
//! - `session`: one annotator's state (resumes from the log); `server`: the token-checked HTTP API and page.
//! - `launch`: the above put together ([`serve_study`]).
//!
//! `evosam report STUDY_DIR` summarises a study (`crate::report::study`).

mod cases;
mod engine;
pub(crate) mod events;
mod launch;
mod schedule;
mod server;
pub(crate) mod session;
pub(crate) mod tables;

pub use launch::{serve_study, Compare, Ready, StudyImages, StudyOptions};
pub use schedule::Design;

#[cfg(test)]
mod tests;

/// A random access token (128 bits, hex).
fn new_token() -> String {
    use rand::Rng;
    let b: [u8; 16] = rand::rng().random();
    hex::encode(b)
}
