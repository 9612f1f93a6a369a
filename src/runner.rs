//! The experiment runner: loads the model and data, computes each image's frozen-encoder embedding once, runs
//! every cell (strategy x seed x order) through the stream with per-stage checkpoints, and writes the results
//! tables.
//!
//! Results folder layout (`OUT/<experiment name>/`):
//! - `scores.parquet`, `scores.csv`, `matrix.csv`, `metrics.csv`, `extras.csv`, `manifest.json` (the contract);
//! - `run.json`: the spec fingerprint, checked by `--resume`;
//! - `cells/<label>__seed<seed>__<order>/stage_<k>/`: `scores.json`, `extras.json`, `state/` (the strategy's
//!   `save_state`, only the latest stage keeps it) and `done`. A stage folder is written under a temporary name
//!   and renamed when complete, so a kill at any moment leaves either a whole stage or none.
//!
//! Reproducibility: a cell's strategy is initialised from a seed derived from (seed, label, order) and each stage's
//! RNG from (seed, label, order, stage), so a resumed cell replays exactly what an uninterrupted one does.

use crate::data::{self, Case, TaskData};
use crate::interactive::rows::{ClickRow, RunStage};
use crate::interactive::study::study_task;
use crate::interactive::StudyStages;
use crate::model::{LiteMedSam, LiteMedSamConfig};
use crate::results::{self, ExtraRow, FolderLock, ScoreRow};
use crate::spec::Spec;
use crate::strategy::{self, Batch, EmbeddingStore, Progress, Strategy, StrategyCtx};
use crate::{Error, Result};
use candle_core::{DType, Device, Tensor};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Test cases per prediction batch.
pub const EVAL_BATCH: usize = 8;

#[derive(Clone, Debug)]
pub struct RunOptions {
    /// Results root (default: the spec's `output`); results go to `<out>/<experiment name>/`.
    pub out: Option<PathBuf>,
    /// Cells run concurrently.
    pub jobs: usize,
    pub resume: bool,
    pub quiet: bool,
    /// Write the report (plots/, tables/) into the run folder at the end (`evosam report` does the same).
    pub report: bool,
}

impl Default for RunOptions {
    fn default() -> Self {
        Self {
            out: None,
            jobs: 1,
            resume: false,
            quiet: false,
            report: true,
        }
    }
}

#[derive(Debug)]
pub struct RunSummary {
    pub dir: PathBuf,
    pub cells: usize,
    pub failed: Vec<(String, String)>,
}

/// One unit of work.
#[derive(Clone, Debug)]
pub struct Cell {
    pub strategy: usize,
    pub seed: u64,
    pub order: usize,
    pub id: String,
}

/// All cells of a spec, in the canonical order (strategy, seed, order).
pub fn cells_of(spec: &Spec) -> Vec<Cell> {
    let mut out = Vec::new();
    for (si, s) in spec.strategies.iter().enumerate() {
        for &seed in &spec.experiment.seeds {
            for (oi, o) in spec.orders.iter().enumerate() {
                out.push(Cell {
                    strategy: si,
                    seed,
                    order: oi,
                    id: format!("{}__seed{seed}__{}", s.label, o.label),
                });
            }
        }
    }
    out
}

/// A seed derived from named parts (stable across runs and platforms).
pub fn derive_seed(parts: &[&str]) -> u64 {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update([0u8]);
    }
    u64::from_le_bytes(h.finalize()[..8].try_into().expect("8 bytes"))
}

/// Resolve "cpu" / "cuda:N".
pub fn device_of(spec: &Spec) -> Result<Device> {
    match crate::spec::parse_device(&spec.experiment.device).map_err(|m| spec.err(m))? {
        None => Ok(Device::Cpu),
        Some(n) => Device::new_cuda(n).map_err(|e| {
            Error::input(format!(
                "device {:?} is not available ({e}); build with `--features cuda` on a machine with a GPU",
                spec.experiment.device
            ))
        }),
    }
}

/// Load the base model named by `[model] weights`; returns it with the weights' sha256 (or a tag for random ones).
pub fn load_model(spec: &Spec, device: &Device) -> Result<(LiteMedSam, String)> {
    let w = spec.model.weights.as_str();
    match w {
        "random-tiny" => {
            let m = LiteMedSam::random(&LiteMedSamConfig::tiny(), spec.model.seed, device)?;
            Ok((m, format!("random-tiny-seed{}", spec.model.seed)))
        }
        "lite_medsam" => {
            let p = crate::weights::resolve_weights(None)?;
            let m = LiteMedSam::from_pth(&p, device)?;
            Ok((m, crate::weights::LITE_MEDSAM_SHA256.to_string()))
        }
        path => {
            let p = spec.resolve_path(Path::new(path));
            if !p.is_file() {
                return Err(spec.err(format!(
                    "[model] weights = {path:?}: {} does not exist (use \"lite_medsam\", \"random-tiny\" or a file)",
                    p.display()
                )));
            }
            let sha = crate::weights::sha256_file(&p)?;
            let m = LiteMedSam::from_pth(&p, device)?;
            Ok((m, sha))
        }
    }
}

/// What `--resume` checks: everything that changes results.
#[derive(Serialize)]
struct Fingerprinted<'a> {
    stream: &'a crate::spec::StreamSpec,
    orders: &'a [crate::spec::Order],
    model: &'a crate::spec::ModelSpec,
    strategies: &'a [crate::spec::StrategySpec],
    seeds: &'a [u64],
}

pub fn spec_fingerprint(spec: &Spec) -> String {
    let f = Fingerprinted {
        stream: &spec.stream,
        orders: &spec.orders,
        model: &spec.model,
        strategies: &spec.strategies,
        seeds: &spec.experiment.seeds,
    };
    let s = serde_json::to_string(&f).unwrap_or_default();
    hex::encode(Sha256::digest(s.as_bytes()))
}

#[derive(Serialize, Deserialize)]
struct RunFile {
    fingerprint: String,
    started: String,
}

// ------------------------------------------------------------------ progress

enum Mode {
    Quiet,
    Lines,
    Bars {
        multi: MultiProgress,
        overall: ProgressBar,
    },
}

/// Progress for the whole run: bars on a terminal, plain lines otherwise, nothing with `--quiet`.
pub struct Reporter {
    mode: Mode,
    bars: Mutex<HashMap<String, ProgressBar>>,
    last_line: Mutex<HashMap<String, (usize, usize)>>,
    start: Instant,
}

impl Reporter {
    pub fn new(quiet: bool, n_cells: usize) -> Self {
        let mode = if quiet {
            Mode::Quiet
        } else if std::io::stderr().is_terminal() {
            let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
            let overall = multi.add(ProgressBar::new(n_cells as u64));
            overall.set_style(
                ProgressStyle::with_template(
                    "cells {bar:30} {pos}/{len} [{elapsed_precise} eta {eta}] {msg}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            Mode::Bars { multi, overall }
        } else {
            Mode::Lines
        };
        Self {
            mode,
            bars: Mutex::new(HashMap::new()),
            last_line: Mutex::new(HashMap::new()),
            start: Instant::now(),
        }
    }

    fn stamp(&self) -> String {
        let s = self.start.elapsed().as_secs();
        format!("[{:02}:{:02}:{:02}]", s / 3600, (s / 60) % 60, s % 60)
    }

    /// A run-level message.
    pub fn info(&self, msg: &str) {
        match &self.mode {
            Mode::Quiet => {}
            Mode::Lines => eprintln!("{} {msg}", self.stamp()),
            Mode::Bars { multi, .. } => {
                let _ = multi.println(msg);
            }
        }
    }

    fn cell_bar(&self, id: &str) -> Option<ProgressBar> {
        let Mode::Bars { multi, .. } = &self.mode else {
            return None;
        };
        let mut bars = self.bars.lock().ok()?;
        Some(
            bars.entry(id.to_string())
                .or_insert_with(|| {
                    let b = multi.add(ProgressBar::new(1));
                    b.set_style(
                        ProgressStyle::with_template(
                            "  {prefix} {bar:20} {pos}/{len} eta {eta} {msg}",
                        )
                        .unwrap_or_else(|_| ProgressStyle::default_bar()),
                    );
                    b.set_prefix(id.to_string());
                    b
                })
                .clone(),
        )
    }

    pub fn stage(&self, id: &str, stage: usize, n: usize, what: &str) {
        match &self.mode {
            Mode::Quiet => {}
            Mode::Lines => eprintln!("{} {id}: stage {stage}/{n}: {what}", self.stamp()),
            Mode::Bars { .. } => {
                if let Some(b) = self.cell_bar(id) {
                    b.set_message(format!("stage {stage}/{n}: {what}"));
                }
            }
        }
    }

    pub fn step(&self, id: &str, stage: usize, n: usize, p: &Progress) {
        match &self.mode {
            Mode::Quiet => {}
            Mode::Lines => {
                if p.step == p.steps {
                    if let Ok(mut l) = self.last_line.lock() {
                        if l.get(id) == Some(&(stage, p.epoch)) {
                            return;
                        }
                        l.insert(id.to_string(), (stage, p.epoch));
                    }
                    eprintln!(
                        "{} {id}: stage {stage}/{n} task {} epoch {}/{} loss {:.4}",
                        self.stamp(),
                        p.task,
                        p.epoch,
                        p.epochs,
                        p.loss
                    );
                }
            }
            Mode::Bars { .. } => {
                if let Some(b) = self.cell_bar(id) {
                    b.set_length((p.epochs * p.steps) as u64);
                    b.set_position(((p.epoch - 1) * p.steps + p.step) as u64);
                    b.set_message(format!(
                        "stage {stage}/{n} {} epoch {}/{} loss {:.4}",
                        p.task, p.epoch, p.epochs, p.loss
                    ));
                }
            }
        }
    }

    pub fn cell_done(&self, id: &str, err: Option<&str>) {
        match &self.mode {
            // the final error lists failed cells
            Mode::Quiet => {}
            Mode::Lines => match err {
                None => eprintln!("{} {id}: done", self.stamp()),
                Some(e) => eprintln!("{} {id}: FAILED: {e}", self.stamp()),
            },
            Mode::Bars { multi, overall } => {
                if let Some(b) = self.bars.lock().ok().and_then(|mut m| m.remove(id)) {
                    b.finish_and_clear();
                    multi.remove(&b);
                }
                if let Some(e) = err {
                    let _ = multi.println(format!("cell {id} FAILED: {e}"));
                }
                overall.inc(1);
            }
        }
    }

    pub fn finish(&self) {
        if let Mode::Bars { overall, .. } = &self.mode {
            overall.finish();
        }
    }
}

// ------------------------------------------------------------------ run

struct Shared {
    spec: Spec,
    model: LiteMedSam,
    sha: String,
    tasks: Vec<TaskData>,
    store: EmbeddingStore,
    dir: PathBuf,
    device: Device,
    reporter: Reporter,
}

/// Set the compute thread count before any parallel work starts: candle's matmuls and rayon's global pool both
/// read `RAYON_NUM_THREADS`. All cells share that one pool, so `--jobs N` interleaves work on the same threads
/// instead of multiplying them.
pub fn configure_threads(spec: &Spec) -> usize {
    let n = if spec.experiment.threads > 0 {
        spec.experiment.threads
    } else if let Some(n) = std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|s| s.parse::<usize>().ok())
        .filter(|&n| n > 0)
    {
        n
    } else {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    };
    // SAFETY-free in edition 2021; called before any thread pool exists.
    std::env::set_var("RAYON_NUM_THREADS", n.to_string());
    n
}

fn is_empty_dir(d: &Path) -> bool {
    match std::fs::read_dir(d) {
        Ok(mut it) => it.all(|e| e.map(|e| e.file_name() == ".lock").unwrap_or(false)),
        Err(_) => true,
    }
}

/// Run a spec end to end. Returns an error (after writing the tables of the cells that finished) when any cell
/// failed.
pub fn run(spec: Spec, opts: &RunOptions) -> Result<RunSummary> {
    let started = chrono::Utc::now().to_rfc3339();
    let threads = configure_threads(&spec);
    let root = opts
        .out
        .clone()
        .unwrap_or_else(|| spec.experiment.output.clone());
    let dir = root.join(&spec.experiment.name);
    let fingerprint = spec_fingerprint(&spec);

    // Folder ownership: a fresh run needs a new or empty folder; --resume needs a matching spec.
    if dir.exists() && !is_empty_dir(&dir) && !opts.resume {
        return Err(Error::input(format!(
            "results folder {} already exists: pass --resume to continue it, or --out DIR for another folder",
            dir.display()
        )));
    }
    let lock = FolderLock::acquire(&dir)?;
    let run_file = dir.join("run.json");
    let mut first_start = started.clone();
    let resumed = run_file.is_file();
    if resumed {
        let text = std::fs::read_to_string(&run_file).map_err(|e| Error::io(&run_file, e))?;
        let rf: RunFile = serde_json::from_str(&text).map_err(|e| {
            Error::input(format!(
                "{}: not an evosam run file: {e}",
                run_file.display()
            ))
        })?;
        if rf.fingerprint != fingerprint {
            return Err(Error::input(format!(
                "{}: the spec changed since this run started (tasks, orders, model, strategies or seeds differ); \
                 use another --out or restore the spec",
                dir.display()
            )));
        }
        first_start = rf.started;
    } else {
        let rf = RunFile {
            fingerprint: fingerprint.clone(),
            started: started.clone(),
        };
        results::write_atomic(
            &run_file,
            serde_json::to_string_pretty(&rf)
                .unwrap_or_default()
                .as_bytes(),
        )?;
    }

    let cells = cells_of(&spec);
    let reporter = Reporter::new(opts.quiet, cells.len());
    // Everything before the first cell; a fresh run that fails here leaves no folder behind.
    let prep = (|| -> Result<_> {
        let device = device_of(&spec)?;
        reporter.info(&format!(
            "{}: {} tasks, {} strategies x {} seeds x {} orders = {} cells, {} jobs, {threads} threads",
            spec.experiment.name,
            spec.stream.tasks.len(),
            spec.strategies.len(),
            spec.experiment.seeds.len(),
            spec.orders.len(),
            cells.len(),
            opts.jobs.max(1)
        ));
        let (model, sha) = load_model(&spec, &device)?;
        check_encoder_targets(&spec, &model)?;
        let size = model.input_size();
        let augment = spec.strategies.iter().any(|s| s.train.augment);
        let mut tasks = Vec::new();
        for t in &spec.stream.tasks {
            let td = data::load_task(&spec, t, size, augment, &device)?;
            reporter.info(&format!(
                "task {}: {} train, {} test",
                td.name,
                td.train.len(),
                td.test.len()
            ));
            tasks.push(td);
        }
        let t_emb = Instant::now();
        let store = compute_embeddings(&spec, &model, &sha, &tasks, &reporter)?;
        let emb_s = t_emb.elapsed().as_secs_f64();
        Ok((device, model, sha, tasks, store, emb_s))
    })();
    let (device, model, sha, tasks, store, emb_s) = match prep {
        Ok(x) => x,
        Err(e) => {
            if !resumed {
                let _ = std::fs::remove_file(&run_file);
                drop(lock);
                let _ = std::fs::remove_dir(&dir);
            }
            return Err(e);
        }
    };

    let shared = Arc::new(Shared {
        spec,
        model,
        sha,
        tasks,
        store,
        dir: dir.clone(),
        device,
        reporter,
    });
    let outcomes = run_cells(&shared, &cells, opts.jobs.max(1))?;
    shared.reporter.finish();

    // Collect every stage written (also the completed stages of failed cells), in canonical order.
    let (scores, extras) = collect(&shared, &cells)?;
    let metrics = results::write_tables(&dir, &scores, &extras, shared.spec.stream.tasks.len())?;
    if let Some(ispec) = &shared.spec.interactive {
        let clicks = collect_clicks(&shared, &cells)?;
        crate::interactive::rows::write_tables(&dir, &clicks, ispec)?;
    }
    if !opts.quiet {
        print_metrics(&metrics);
    }
    let failed: Vec<(String, String)> = outcomes
        .iter()
        .filter_map(|(id, r, _)| r.as_ref().err().map(|e| (id.clone(), e.clone())))
        .collect();
    write_manifest(
        &shared,
        &dir,
        &first_start,
        resumed,
        opts,
        threads,
        &outcomes,
        emb_s,
    )?;
    drop(lock);
    if !failed.is_empty() {
        let list: Vec<String> = failed
            .iter()
            .map(|(id, e)| format!("  {id}: {e}"))
            .collect();
        return Err(Error::internal(format!(
            "{} of {} cells failed (tables hold the others, in {}):\n{}",
            failed.len(),
            cells.len(),
            dir.display(),
            list.join("\n")
        )));
    }
    if opts.report {
        match crate::report::write_report(std::slice::from_ref(&dir), &dir) {
            Ok(r) => {
                shared.reporter.info(&format!(
                    "report: {} files in {} and {}",
                    r.files.len(),
                    dir.join("plots").display(),
                    dir.join("tables").display()
                ));
                for n in &r.notes {
                    shared.reporter.info(&format!("report: {n}"));
                }
            }
            // The results are complete and safe; only the derived figures are missing.
            Err(e) => eprintln!(
                "warning: the report could not be written ({e}); the results are complete, retry with \
                 `evosam report {}`",
                dir.display()
            ),
        }
    }
    shared
        .reporter
        .info(&format!("results in {}", dir.display()));
    Ok(RunSummary {
        dir,
        cells: cells.len(),
        failed,
    })
}

/// LoRA targets in the image encoder need `freeze_encoder = false` (and then run the encoder at every step: the
/// GPU setting); with a frozen encoder they would be silently useless, so they are refused.
fn check_encoder_targets(spec: &Spec, model: &LiteMedSam) -> Result<()> {
    for s in &spec.strategies {
        let enc: Vec<String> = model
            .linear_sites()
            .into_iter()
            .map(|(p, _, _)| p)
            .filter(|p| p.starts_with("image_encoder.") && s.lora.matches(p))
            .collect();
        if spec.model.freeze_encoder && !enc.is_empty() {
            return Err(spec.err(format!(
                "strategy {:?}: lora targets {:?} match {} image-encoder layers (e.g. {}), but [model] \
                 freeze_encoder = true; set freeze_encoder = false to train encoder LoRA (slow on a CPU: the \
                 encoder runs at every step) or target the mask decoder",
                s.label,
                s.lora.targets,
                enc.len(),
                enc[0]
            )));
        }
    }
    Ok(())
}

/// Compute (or read from the on-disk cache) every case's embedding once. Values are rounded through f16 so a
/// freshly computed embedding equals a cached one bit for bit.
fn compute_embeddings(
    spec: &Spec,
    model: &LiteMedSam,
    sha: &str,
    tasks: &[TaskData],
    reporter: &Reporter,
) -> Result<EmbeddingStore> {
    let cache = if spec.model.weights == "random-tiny" {
        None
    } else {
        let dir = spec
            .experiment
            .cache
            .clone()
            .unwrap_or_else(|| crate::weights::evosam_home().join("embeddings"));
        Some(crate::embed_cache::EmbeddingCache::new(&dir, sha)?)
    };
    let all: Vec<&Case> = tasks
        .iter()
        .flat_map(|t| t.train.iter().chain(t.test.iter()))
        .flat_map(|c| std::iter::once(c).chain(c.flipped.as_deref()))
        .collect();
    let mut map = HashMap::new();
    let t0 = Instant::now();
    let n = all.len();
    for (i, c) in all.into_iter().enumerate() {
        if map.contains_key(&c.content_hash) {
            continue;
        }
        let e = match &cache {
            Some(cache) => cache.get_or_compute(model, &c.content_hash, &c.image)?,
            None => model.encode(&c.image.unsqueeze(0)?)?.squeeze(0)?,
        };
        let e = e.to_dtype(DType::F16)?.to_dtype(DType::F32)?;
        map.insert(c.content_hash.clone(), e);
        if (i + 1) % 16 == 0 || i + 1 == n {
            reporter.info(&format!(
                "embeddings {}/{n} ({:.1} s)",
                i + 1,
                t0.elapsed().as_secs_f64()
            ));
        }
    }
    Ok(EmbeddingStore::new(map))
}

/// (cell id, result, wall seconds of this invocation).
type Outcome = (String, std::result::Result<(), String>, f64);

fn run_cells(shared: &Arc<Shared>, cells: &[Cell], jobs: usize) -> Result<Vec<Outcome>> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .max_blocking_threads(jobs)
        .build()
        .map_err(|e| Error::internal(format!("tokio runtime: {e}")))?;
    rt.block_on(async {
        let sem = Arc::new(tokio::sync::Semaphore::new(jobs));
        let mut set = tokio::task::JoinSet::new();
        for (i, cell) in cells.iter().enumerate() {
            let permit = sem
                .clone()
                .acquire_owned()
                .await
                .map_err(|e| Error::internal(e.to_string()))?;
            let sh = shared.clone();
            let cell = cell.clone();
            set.spawn_blocking(move || {
                let _permit = permit;
                let t0 = Instant::now();
                // a panic is that cell's failure, not the run's
                let r =
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run_cell(&sh, &cell)))
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
                (i, cell.id.clone(), r, t0.elapsed().as_secs_f64())
            });
        }
        let mut out: Vec<Option<Outcome>> = vec![None; cells.len()];
        while let Some(j) = set.join_next().await {
            match j {
                Ok((i, id, r, secs)) => out[i] = Some((id, r, secs)),
                Err(e) => return Err(Error::internal(format!("a cell panicked: {e}"))),
            }
        }
        Ok(out.into_iter().flatten().collect())
    })
}

fn stage_dir(cdir: &Path, k: usize) -> PathBuf {
    cdir.join(format!("stage_{k}"))
}

fn cell_dir(shared: &Shared, cell: &Cell) -> PathBuf {
    shared.dir.join("cells").join(&cell.id)
}

/// Train and evaluate one cell, resuming after its last complete stage.
fn run_cell(sh: &Shared, cell: &Cell) -> Result<()> {
    let sspec = &sh.spec.strategies[cell.strategy];
    let order = &sh.spec.orders[cell.order];
    let n = order.tasks.len();
    let cdir = cell_dir(sh, cell);
    std::fs::create_dir_all(&cdir).map_err(|e| Error::io(&cdir, e))?;
    let seed_s = cell.seed.to_string();
    let init_seed = derive_seed(&["init", &seed_s, &sspec.label, &order.label]);
    let mut strat: Box<dyn Strategy> = strategy::build(sspec, &sh.model, &sh.sha, init_seed)?;
    let done = (0..=n)
        .rev()
        .find(|&k| stage_dir(&cdir, k).join("done").is_file());
    let start = done.map(|k| k + 1).unwrap_or(0);
    if start > n {
        return Ok(());
    }
    let id = cell.id.clone();
    let stage_now = std::sync::atomic::AtomicUsize::new(0);
    let progress = |p: Progress| {
        sh.reporter.step(
            &id,
            stage_now.load(std::sync::atomic::Ordering::Relaxed),
            n,
            &p,
        )
    };
    let make_ctx = |k: usize| StrategyCtx {
        model: &sh.model,
        embeddings: &sh.store,
        base_sha256: &sh.sha,
        spec: sspec,
        seed: cell.seed,
        order_label: &order.label,
        tasks: &sh.tasks,
        order: &order.tasks,
        stage: k,
        rng: ChaCha8Rng::seed_from_u64(derive_seed(&[
            "stage",
            &seed_s,
            &sspec.label,
            &order.label,
            &k.to_string(),
        ])),
        progress: &progress,
        device: &sh.device,
    };
    if let Some(k) = done.filter(|&k| k >= 1) {
        let ctx = make_ctx(k);
        strat.load_state(&ctx, &stage_dir(&cdir, k).join("state"))?;
        sh.reporter.stage(&cell.id, k, n, "resumed from checkpoint");
    }
    for k in start..=n {
        stage_now.store(k, std::sync::atomic::Ordering::Relaxed);
        let mut ctx = make_ctx(k);
        let trained = if k > 0 {
            let task = &sh.tasks[order.tasks[k - 1]];
            sh.reporter
                .stage(&cell.id, k, n, &format!("training {}", task.name));
            strat.train_task(&mut ctx, k - 1, task)?;
            task.name.clone()
        } else {
            String::new()
        };
        sh.reporter.stage(&cell.id, k, n, "evaluating");
        let rows = evaluate(sh, strat.as_ref(), &ctx, cell, k, &trained)?;
        let clicks = study_stage(sh, strat.as_ref(), &ctx, cell, k)?;
        let extras: Vec<ExtraRow> = strat
            .extra_metrics()
            .into_iter()
            .map(|(key, value)| ExtraRow {
                strategy: sspec.label.clone(),
                seed: cell.seed as i64,
                order: order.label.clone(),
                stage: k as i64,
                key,
                value,
            })
            .collect();
        commit_stage(&cdir, k, |tmp| {
            if k > 0 {
                let sdir = tmp.join("state");
                std::fs::create_dir_all(&sdir).map_err(|e| Error::io(&sdir, e))?;
                strat.save_state(&sdir)?;
            }
            write_json(&tmp.join("scores.json"), &rows)?;
            write_json(&tmp.join("extras.json"), &extras)?;
            if let Some(c) = &clicks {
                write_json(&tmp.join(CLICKS_FILE), c)?;
            }
            Ok(())
        })?;
        // only the latest state is needed to resume
        if k >= 2 {
            let old = stage_dir(&cdir, k - 1).join("state");
            if old.exists() {
                let _ = std::fs::remove_dir_all(&old);
            }
        }
    }
    Ok(())
}

fn write_json<T: Serialize>(path: &Path, v: &T) -> Result<()> {
    let s =
        serde_json::to_vec(v).map_err(|e| Error::internal(format!("{}: {e}", path.display())))?;
    results::write_atomic(path, &s)
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T> {
    let s = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_slice(&s)
        .map_err(|e| Error::internal(format!("{}: corrupt checkpoint: {e}", path.display())))
}

/// Write a stage folder under a temporary name, mark it done, then rename it into place.
fn commit_stage(cdir: &Path, k: usize, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let fin = stage_dir(cdir, k);
    let tmp = cdir.join(format!(".stage_{k}.tmp"));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    }
    std::fs::create_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    write(&tmp)?;
    results::write_atomic(&tmp.join("done"), b"ok\n")?;
    if fin.exists() {
        std::fs::remove_dir_all(&fin).map_err(|e| Error::io(&fin, e))?;
    }
    std::fs::rename(&tmp, &fin).map_err(|e| Error::io(&fin, e))?;
    // make the rename durable
    if let Ok(d) = std::fs::File::open(cdir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Checkpoint file of a stage's interactive-study rows.
const CLICKS_FILE: &str = "clicks.json";

/// The interactive study at stage `k` (None when the spec has none or does not study this stage).
fn study_stage(
    sh: &Shared,
    strat: &dyn Strategy,
    ctx: &StrategyCtx,
    cell: &Cell,
    k: usize,
) -> Result<Option<Vec<ClickRow>>> {
    let Some(spec) = &sh.spec.interactive else {
        return Ok(None);
    };
    let order = &sh.spec.orders[cell.order];
    let n = order.tasks.len();
    if spec.stages == StudyStages::Final && k != n {
        return Ok(None);
    }
    sh.reporter.stage(&cell.id, k, n, "interactive study");
    let at = RunStage {
        strategy: sh.spec.strategies[cell.strategy].label.clone(),
        seed: cell.seed as i64,
        order: order.label.clone(),
        stage: k as i64,
    };
    let mut rows = Vec::new();
    for (j, &ti) in order.tasks.iter().enumerate() {
        rows.extend(study_task(
            strat,
            ctx,
            &sh.store,
            j,
            &sh.tasks[ti],
            spec,
            &at,
            &sh.device,
        )?);
    }
    Ok(Some(rows))
}

/// Every stage's interactive rows, in canonical cell order.
fn collect_clicks(sh: &Shared, cells: &[Cell]) -> Result<Vec<ClickRow>> {
    let mut rows = Vec::new();
    for cell in cells {
        let cdir = cell_dir(sh, cell);
        let n = sh.spec.orders[cell.order].tasks.len();
        for k in 0..=n {
            let sd = stage_dir(&cdir, k);
            if !sd.join("done").is_file() {
                break;
            }
            let f = sd.join(CLICKS_FILE);
            if f.is_file() {
                rows.extend(read_json::<Vec<ClickRow>>(&f)?);
            }
        }
    }
    Ok(rows)
}

/// Score every test case of every task of the order at stage `k`.
fn evaluate(
    sh: &Shared,
    strat: &dyn Strategy,
    ctx: &StrategyCtx,
    cell: &Cell,
    k: usize,
    trained: &str,
) -> Result<Vec<ScoreRow>> {
    let order = &sh.spec.orders[cell.order];
    let label = &sh.spec.strategies[cell.strategy].label;
    let mut rows = Vec::new();
    for (j, &ti) in order.tasks.iter().enumerate() {
        let task = &sh.tasks[ti];
        for chunk in task.test.chunks(EVAL_BATCH) {
            let cases: Vec<&Case> = chunk.iter().collect();
            let batch = Batch {
                embeddings: sh.store.batch(&cases)?,
                prompts: crate::train::r#loop::eval_prompts(&cases, &sh.device)?,
                cases,
            };
            let pred = strat.predict(ctx, j, &batch)?;
            for (i, c) in batch.cases.iter().enumerate() {
                let d = case_dice(&pred.logits.get(i)?, c, task.fov_eval)?;
                rows.push(ScoreRow {
                    strategy: label.clone(),
                    seed: cell.seed as i64,
                    order: order.label.clone(),
                    stage: k as i64,
                    trained_task: trained.to_string(),
                    eval_task: task.name.clone(),
                    eval_index: (j + 1) as i64,
                    case: c.id.clone(),
                    dice: d,
                    routed_to: pred.routed_to.as_ref().and_then(|r| r.get(i).cloned()),
                });
            }
        }
    }
    Ok(rows)
}

/// Dice of one case from its low-res logits (1,S,S): crop + bilinear resize to the original size, threshold at 0
/// (sigmoid > 0.5).
pub fn case_dice(logits: &Tensor, c: &Case, fov_eval: bool) -> Result<f64> {
    let full = crate::preprocess::postprocess_logits(logits, &c.meta)?;
    let v: Vec<f32> = full.flatten_all()?.to_dtype(DType::F32)?.to_vec1()?;
    if v.len() != c.gt.h * c.gt.w {
        return Err(Error::internal(format!(
            "case {}: postprocessed logits have {} values, ground truth {}x{}",
            c.id,
            v.len(),
            c.gt.w,
            c.gt.h
        )));
    }
    let pred: Vec<bool> = v.iter().map(|&x| x > 0.0).collect();
    Ok(data::dice(
        &pred,
        &c.gt,
        if fov_eval { c.fov.as_ref() } else { None },
    ))
}

fn collect(sh: &Shared, cells: &[Cell]) -> Result<(Vec<ScoreRow>, Vec<ExtraRow>)> {
    let (mut scores, mut extras) = (Vec::new(), Vec::new());
    for cell in cells {
        let cdir = cell_dir(sh, cell);
        let n = sh.spec.orders[cell.order].tasks.len();
        for k in 0..=n {
            let sd = stage_dir(&cdir, k);
            if !sd.join("done").is_file() {
                break;
            }
            scores.extend(read_json::<Vec<ScoreRow>>(&sd.join("scores.json"))?);
            extras.extend(read_json::<Vec<ExtraRow>>(&sd.join("extras.json"))?);
        }
    }
    Ok((scores, extras))
}

/// One line per cell: ACC, BWT, FWT, forgetting.
fn print_metrics(df: &polars::prelude::DataFrame) {
    let get_s = |c: &str, i: usize| {
        df.column(c)
            .ok()
            .and_then(|c| c.get(i).ok())
            .map(|v| v.to_string())
    };
    let get_f = |c: &str, i: usize| {
        df.column(c)
            .ok()
            .and_then(|c| c.f64().ok().and_then(|x| x.get(i)))
            .map(|v| format!("{v:+.4}"))
            .unwrap_or_else(|| "    -  ".into())
    };
    for i in 0..df.height() {
        println!(
            "{} seed {} order {}: ACC {:.4} BWT {} FWT {} forgetting {}",
            get_s("strategy", i).unwrap_or_default().trim_matches('"'),
            get_s("seed", i).unwrap_or_default(),
            get_s("order", i).unwrap_or_default().trim_matches('"'),
            df.column("acc")
                .ok()
                .and_then(|c| c.f64().ok().and_then(|x| x.get(i)))
                .unwrap_or(f64::NAN),
            get_f("bwt", i),
            get_f("fwt", i),
            get_f("forgetting", i)
        );
    }
}

fn git_commit() -> String {
    std::process::Command::new("git")
        .args(["rev-parse", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into())
}

fn write_manifest(
    sh: &Shared,
    dir: &Path,
    started: &str,
    resumed: bool,
    opts: &RunOptions,
    threads: usize,
    outcomes: &[Outcome],
    embeddings_s: f64,
) -> Result<()> {
    let hostname = std::fs::read_to_string("/etc/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    let cells: Vec<serde_json::Value> = outcomes
        .iter()
        .map(|(id, r, secs)| match r {
            Ok(()) => serde_json::json!({"id": id, "status": "ok", "wall_s": secs}),
            Err(e) => serde_json::json!({"id": id, "status": "failed", "error": e, "wall_s": secs}),
        })
        .collect();
    let defs: serde_json::Map<String, serde_json::Value> = crate::metrics::DEFINITIONS
        .iter()
        .map(|(k, v)| (k.to_string(), serde_json::Value::String(v.to_string())))
        .collect();
    let m = serde_json::json!({
        "experiment": sh.spec.experiment.name,
        "spec_file": sh.spec.file.display().to_string(),
        "spec": sh.spec,
        "spec_fingerprint": spec_fingerprint(&sh.spec),
        "crate_version": env!("CARGO_PKG_VERSION"),
        "git_commit": git_commit(),
        "weights": {"name": sh.spec.model.weights, "sha256": sh.sha},
        "machine": {
            "hostname": hostname,
            "os": std::env::consts::OS,
            "arch": std::env::consts::ARCH,
            "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
            "threads": threads,
            "device": sh.spec.experiment.device,
        },
        "jobs": opts.jobs.max(1),
        "started": started,
        "finished": chrono::Utc::now().to_rfc3339(),
        "resumed": resumed,
        "tasks": sh.tasks.iter().map(|t| serde_json::json!({"name": t.name, "train": t.train.len(), "test": t.test.len()})).collect::<Vec<_>>(),
        "cells": cells,
        "embeddings": {"count": sh.store.len(), "wall_s": embeddings_s},
        "metrics": defs,
    });
    let s = serde_json::to_vec_pretty(&m).map_err(|e| Error::internal(e.to_string()))?;
    results::write_atomic(&dir.join("manifest.json"), &s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_and_cells_are_stable() {
        assert_eq!(derive_seed(&["a", "b"]), derive_seed(&["a", "b"]));
        assert_ne!(derive_seed(&["a", "b"]), derive_seed(&["ab", ""]));
        let text = "[experiment]\nname = \"x\"\nseeds = [1, 2]\n[stream]\norders = [\"given\", \"reverse\"]\n\
                    [[stream.task]]\nname = \"a\"\nsource = \"synthetic\"\nfamily = \"vessels\"\n\
                    [[stream.task]]\nname = \"b\"\nsource = \"synthetic\"\nfamily = \"organs\"\n\
                    [[strategy]]\npreset = \"zeroshot\"\n[[strategy]]\npreset = \"finetune\"\n";
        let spec = Spec::from_str_at(text, Path::new("s.toml"), Path::new(".")).unwrap();
        let c = cells_of(&spec);
        assert_eq!(c.len(), 8);
        assert_eq!(c[0].id, "zeroshot__seed1__given");
        assert_eq!(c[3].id, "zeroshot__seed2__reverse");
        assert_eq!(c[7].id, "finetune__seed2__reverse");
        let fp = spec_fingerprint(&spec);
        let spec2 = Spec::from_str_at(
            &text.replace("seeds = [1, 2]", "seeds = [1, 3]"),
            Path::new("s.toml"),
            Path::new("."),
        )
        .unwrap();
        assert_ne!(fp, spec_fingerprint(&spec2));
    }

    #[test]
    fn stage_commit_is_all_or_nothing() {
        let d = tempfile::tempdir().unwrap();
        // a failing writer leaves no stage folder
        let r = commit_stage(d.path(), 1, |tmp| {
            std::fs::write(tmp.join("scores.json"), "[]").unwrap();
            Err(Error::internal("boom"))
        });
        assert!(r.is_err());
        assert!(!stage_dir(d.path(), 1).exists());
        commit_stage(d.path(), 1, |tmp| {
            std::fs::write(tmp.join("scores.json"), "[]").map_err(|e| Error::io(tmp, e))
        })
        .unwrap();
        assert!(stage_dir(d.path(), 1).join("done").is_file());
        assert!(stage_dir(d.path(), 1).join("scores.json").is_file());
    }
}
