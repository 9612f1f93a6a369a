//! Running cells concurrently: the compute pool every cell computes in, and `jobs` worker threads that take the
//! cells in order. A cell's failure or panic is that cell's outcome, never the run's.

use super::cell::run_cell;
use super::plan::Cell;
use super::shared::Shared;
use super::timing::CellTimes;
use crate::{Error, Result};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// What one process's run of a cell gave.
#[derive(Clone, Debug)]
pub(super) struct Outcome {
    /// The cell id.
    pub id: String,
    /// Ok, or the error.
    pub result: std::result::Result<(), String>,
    /// Wall seconds of this invocation.
    pub wall_s: f64,
    /// Where they went, per stage run.
    pub times: CellTimes,
}

/// The run's compute pool: `threads` rayon threads. Everything that computes (embeddings, then every cell) runs
/// inside it: the calling thread is then one of the pool's workers, which its kernels and matmuls split work on,
/// so the serial parts of a step and the parallel ones never need more than `threads` cores (work started from a
/// thread outside the pool kept `threads + 1` threads busy, which on a small machine cost 5-10% of every step).
pub fn compute_pool(threads: usize) -> Result<Arc<rayon::ThreadPool>> {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads.max(1))
        .thread_name(|i| format!("evosam-compute-{i}"))
        .build()
        .map_err(|e| Error::internal(format!("cannot start {threads} compute threads: {e}")))?;
    Ok(Arc::new(pool))
}

/// Run `cells`, `jobs` at a time, each inside `pool` ([`compute_pool`]; jobs share its threads). Cells start in
/// their canonical order (worker threads take the next one when they are free); the outcomes come back in that
/// order too.
pub(super) fn run_cells(
    shared: &Shared,
    cells: &[Cell],
    jobs: usize,
    pool: &rayon::ThreadPool,
) -> Result<Vec<Outcome>> {
    let next = AtomicUsize::new(0);
    let out: Mutex<Vec<Option<Outcome>>> = Mutex::new(vec![None; cells.len()]);
    std::thread::scope(|s| -> Result<()> {
        for w in 0..jobs.max(1).min(cells.len()) {
            std::thread::Builder::new()
                .name(format!("evosam-cell-{w}"))
                .spawn_scoped(s, || loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(cell) = cells.get(i) else { break };
                    let o = run_guarded(shared, cell, pool);
                    out.lock().unwrap_or_else(|p| p.into_inner())[i] = Some(o);
                })
                .map_err(|e| Error::internal(format!("cannot start a cell thread: {e}")))?;
        }
        Ok(())
    })?;
    let out = out.into_inner().unwrap_or_else(|p| p.into_inner());
    Ok(out.into_iter().flatten().collect())
}

/// One cell inside the compute pool; a panic becomes the cell's error.
fn run_guarded(sh: &Shared, cell: &Cell, pool: &rayon::ThreadPool) -> Outcome {
    let t0 = Instant::now();
    let mut times = CellTimes::default();
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        pool.install(|| run_cell(sh, cell, &mut times))
    }))
    .unwrap_or_else(|p| {
        let msg = p
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default();
        Err(Error::internal(format!("panicked: {msg}")))
    })
    .map_err(|e| e.to_string());
    sh.reporter
        .cell_done(&cell.id, r.as_ref().err().map(|s| s.as_str()));
    Outcome {
        id: cell.id.clone(),
        result: r,
        wall_s: t0.elapsed().as_secs_f64(),
        times,
    }
}
