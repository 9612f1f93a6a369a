//! `evosam annotate`: a local web page on which clinicians segment images with box and click prompts, for
//! prompt-efficiency studies with people (the counterpart of the simulated clicks of [`crate::interactive`]).
//!
//! - [`cases`]: the study's images (a folder, or a task's test split of a spec).
//! - [`schedule`]: which model serves each case (seeded, balanced, blinded).
//! - [`engine`]: LiteMedSAM and the two arms; one encoder pass per case ahead of time, one decoder pass per prompt.
//! - [`events`]: the append-only, fsynced event log; [`tables`]: `events.csv`/`.parquet`, `cases.csv` from it.
//! - [`session`]: one annotator's state (resumes from the log); [`server`]: the token-checked HTTP API and page.
//!
//! `evosam report STUDY_DIR` summarises a study (`crate::report::study`).

pub mod cases;
pub mod engine;
pub mod events;
pub mod schedule;
pub mod server;
pub mod session;
pub mod tables;

#[cfg(test)]
mod tests;

/// A random access token (128 bits, hex).
pub fn new_token() -> String {
    use rand::Rng;
    let b: [u8; 16] = rand::rng().random();
    hex::encode(b)
}
