//! `evosam bench scale`: how cost grows with work.
//! - One cell vs number of tasks T: a spec of T synthetic tasks (fixed images per task, cycling through the two
//!   families and four sites, a new generator seed every 8 tasks) run by the real runner with one strategy, for
//!   `evosam` and `joint`, each in its own `evosam run` process; its manifest gives the cell's time per stage
//!   (training, evaluation) and the process's peak RSS. Every task's embedding is computed into the on-disk cache first (what
//!   `evosam submit`'s prepare job does), so the runs read them and their peak memory is the cell's, not the
//!   encoder's.
//! - The ridge matcher vs T ([`super::matcher`]) and inference vs number of experts ([`super::experts`]).

use std::path::{Path, PathBuf};

use super::common::{markdown, on_pool, reset_peak_rss, thread_count};
use super::experts::{self, ExpertBytes, ExpertFigures};
use super::matcher::{self, MatcherFigures};
use evosam::model::{LiteMedSam, LoraConfig};
use evosam::spec::Spec;
use evosam::strategy::Registry;
use evosam::weights::resolve_weights;
use evosam::{Error, Result, RunOptions};

/// `evosam bench scale`'s arguments.
#[derive(Debug, clap::Args)]
pub struct ScaleArgs {
    /// Numbers of tasks T (comma-separated).
    #[arg(long, default_value = "1,2,4,8,16", value_delimiter = ',')]
    pub tasks: Vec<usize>,
    /// Strategies (presets) whose cell is timed vs T.
    #[arg(long, default_value = "evosam,joint", value_delimiter = ',')]
    pub strategies: Vec<String>,
    /// Training images per task.
    #[arg(long, default_value_t = 4)]
    pub train: usize,
    /// Test images per task.
    #[arg(long, default_value_t = 2)]
    pub test: usize,
    /// Epochs per task.
    #[arg(long, default_value_t = 1)]
    pub epochs: usize,
    /// Numbers of experts for the inference measurement (comma-separated).
    #[arg(long, default_value = "1,10,100", value_delimiter = ',')]
    pub experts: Vec<usize>,
    /// Images timed per number of experts (medians), and repetitions of the matcher's solve.
    #[arg(long, default_value_t = 10)]
    pub reps: usize,
    /// The matcher's random projection for its measurement (0: the pooled 256 values, as the `evosam` preset).
    #[arg(long, default_value_t = 0)]
    pub projection_dim: usize,
    /// Compute threads (0: all cores).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// Base weights: `lite_medsam` (the cache), or `random-tiny` (a tiny random model, to check the benchmark).
    #[arg(long, default_value = "lite_medsam")]
    pub weights: String,
    /// Where the runs' folders go (default: a temporary folder, removed at the end).
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
}

/// One cell's figures from a run of T tasks.
#[derive(Clone, Debug)]
pub struct CellFigures {
    /// The strategy preset.
    pub strategy: String,
    /// T.
    pub tasks: usize,
    /// Wall seconds of the cell.
    pub cell_s: f64,
    /// Training seconds of each stage 1..=T.
    pub train_s: Vec<f64>,
    /// Evaluation seconds summed over stages 0..=T.
    pub eval_s: f64,
    /// Optimiser steps, all stages.
    pub steps: u64,
    /// Test cases scored, all stages ((T + 1) x T x test images).
    pub cases_scored: usize,
    /// Peak RSS of the run's process, MiB (model, embeddings, the cell and the allocator's cache).
    pub peak_rss_mb: f64,
}

/// The spec of one scale run: `tasks` synthetic tasks, one strategy.
pub fn spec_text(a: &ScaleArgs, strategy: &str, tasks: usize, threads: usize) -> String {
    let mut s = format!(
        "[experiment]\nname = \"scale-{strategy}-{tasks}\"\nseeds = [0]\ndevice = \"cpu\"\nthreads = {threads}\n\n\
         [stream]\norders = [\"given\"]\n\n"
    );
    for i in 0..tasks {
        let family = if i % 8 < 4 { "vessels" } else { "organs" };
        s.push_str(&format!(
            "[[stream.task]]\nname = \"t{i}\"\nsource = \"synthetic\"\nfamily = \"{family}\"\nsite = {}\n\
             seed = {}\ntrain = {}\ntest = {}\n\n",
            i % 4,
            i / 8,
            a.train,
            a.test
        ));
    }
    s.push_str(&format!(
        "[model]\nweights = \"{}\"\nfreeze_encoder = true\n\n[model.lora]\nrank = 4\nalpha = 4.0\n\
         targets = [\"mask_decoder\"]\n\n[train]\nepochs = {}\nbatch_size = 4\nlr = 3e-3\nval_fraction = 0.0\n\n\
         [[strategy]]\npreset = \"{strategy}\"\n",
        a.weights, a.epochs
    ));
    s
}

/// The spec of a scale run, parsed.
fn spec_of(
    a: &ScaleArgs,
    strategy: &str,
    tasks: usize,
    threads: usize,
    out: &Path,
) -> Result<Spec> {
    let file = out.join(format!("scale-{strategy}-{tasks}.toml"));
    let spec = Spec::parse(
        &spec_text(a, strategy, tasks, threads),
        &file,
        out,
        &Registry::default(),
    )?;
    spec.check_data()?;
    Ok(spec)
}

/// Compute the embeddings of the first `tasks` tasks into the cache (a prepare-only run in `out/prepare`).
pub fn prepare_embeddings(a: &ScaleArgs, tasks: usize, threads: usize, out: &Path) -> Result<()> {
    let spec = spec_of(a, "zeroshot", tasks, threads, out)?;
    let mut opts = RunOptions::default();
    opts.out = Some(out.join("prepare"));
    opts.quiet = true;
    evosam::runner::prepare_run(spec, &opts).map(|_| ())
}

/// Run one strategy's cell on `tasks` tasks into `out` and read its times and peak memory from the manifest: with
/// `exe`, as `exe run SPEC --out OUT --quiet --no-report` in a process of its own; without, in this process (its
/// peak RSS then counts from the last reset, or from the start where the kernel cannot reset it).
pub fn run_cell(
    a: &ScaleArgs,
    strategy: &str,
    tasks: usize,
    threads: usize,
    out: &Path,
    exe: Option<&Path>,
) -> Result<CellFigures> {
    let spec = spec_of(a, strategy, tasks, threads, out)?;
    let dir = out.join(&spec.experiment.name);
    if let Some(exe) = exe {
        let file = out.join(format!("{}.toml", spec.experiment.name));
        std::fs::write(&file, spec_text(a, strategy, tasks, threads))
            .map_err(|e| Error::io(&file, e))?;
        let o = std::process::Command::new(exe)
            .arg("run")
            .arg(&file)
            .arg("--out")
            .arg(out)
            .args(["--quiet", "--no-report"])
            .env("RAYON_NUM_THREADS", threads.to_string())
            .output()
            .map_err(|e| Error::internal(format!("cannot run {}: {e}", exe.display())))?;
        if !o.status.success() {
            return Err(Error::internal(format!(
                "{} run {} failed: {}",
                exe.display(),
                file.display(),
                String::from_utf8_lossy(&o.stderr)
            )));
        }
    } else {
        let mut opts = RunOptions::default();
        opts.out = Some(out.to_path_buf());
        opts.quiet = true;
        opts.report = false;
        reset_peak_rss();
        evosam::run(spec, &Registry::default(), &opts)?;
    }
    let mpath = dir.join("manifest.json");
    let text = std::fs::read_to_string(&mpath).map_err(|e| Error::io(&mpath, e))?;
    let m: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| Error::internal(format!("{}: {e}", mpath.display())))?;
    let cell = &m["cells"][0];
    let stages = cell["times"]
        .as_array()
        .ok_or_else(|| Error::internal(format!("{}: no cell times", mpath.display())))?;
    let f = |s: &serde_json::Value, k: &str| s[k].as_f64().unwrap_or(f64::NAN);
    let peak = f(&m["timings"], "peak_rss_mb");
    Ok(CellFigures {
        strategy: strategy.to_string(),
        tasks,
        cell_s: cell["wall_s"].as_f64().unwrap_or(f64::NAN),
        train_s: stages.iter().skip(1).map(|s| f(s, "train_s")).collect(),
        eval_s: stages.iter().map(|s| f(s, "eval_s")).sum(),
        steps: cell["steps"].as_u64().unwrap_or(0),
        cases_scored: (tasks + 1) * tasks * a.test,
        peak_rss_mb: peak,
    })
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len().max(1) as f64
}

/// The cells' table: one row per strategy and T, with the matcher's figures for EvoSAM rows.
pub fn cells_table(cells: &[CellFigures], matcher: &[(usize, MatcherFigures)]) -> String {
    let rows: Vec<Vec<String>> = cells
        .iter()
        .map(|c| {
            let m = matcher
                .iter()
                .find(|(t, _)| *t == c.tasks && c.strategy.starts_with("evosam"));
            let ms = |f: fn(&MatcherFigures) -> f64| {
                m.map(|(_, x)| format!("{:.2}", f(x) * 1e3))
                    .unwrap_or_else(|| "-".into())
            };
            vec![
                c.strategy.clone(),
                c.tasks.to_string(),
                format!("{:.1}", c.cell_s),
                format!("{:.2}", mean(&c.train_s)),
                format!("{:.2}", c.train_s.last().copied().unwrap_or(f64::NAN)),
                c.steps.to_string(),
                format!("{:.1}", c.eval_s),
                format!("{:.1}", c.eval_s / c.cases_scored.max(1) as f64 * 1e3),
                ms(|x| x.add_task_s),
                ms(|x| x.solve_s),
                m.map(|(_, x)| format!("{:.0}", x.state_bytes as f64 / 1024.0))
                    .unwrap_or_else(|| "-".into()),
                format!("{:.0}", c.peak_rss_mb),
            ]
        })
        .collect();
    markdown(
        &[
            "strategy",
            "T",
            "cell (s)",
            "train/stage, mean (s)",
            "train, stage T (s)",
            "steps",
            "eval, all stages (s)",
            "eval per case (ms)",
            "matcher add task (ms)",
            "matcher solve (ms)",
            "matcher state (KiB)",
            "peak RSS (MiB)",
        ],
        &rows,
    )
}

/// The experts' table.
pub fn experts_table(figs: &[ExpertFigures]) -> String {
    let rows: Vec<Vec<String>> = figs
        .iter()
        .map(|f| {
            vec![
                f.experts.to_string(),
                format!("{:.1}", f.infer_s * 1e3),
                format!("{:.2}", f.route_s * 1e3),
                format!("{:.2}", f.push_s * 1e3),
                format!("{}/{}", f.routed_right, f.reps),
                format!("{:.1}", f.rss_growth_mb),
            ]
        })
        .collect();
    markdown(
        &[
            "experts",
            "per image: route + decode (ms)",
            "routing alone (ms)",
            "add one expert (ms)",
            "routed to its expert",
            "RSS growth building the set (MiB)",
        ],
        &rows,
    )
}

/// Bytes of one expert, in words.
pub fn bytes_line(b: &ExpertBytes) -> String {
    format!(
        "bytes per expert: adapter {} values = {} B in memory (f32), {} B as safetensors; matcher sums of its task \
         {} B (f64, d x d + 2d with d = 257)",
        b.params, b.memory, b.file, b.matcher
    )
}

/// Run `evosam bench scale` and print its tables.
pub fn run(a: ScaleArgs) -> Result<()> {
    let threads = thread_count(a.threads);
    let tmp = tempfile::tempdir().map_err(|e| Error::internal(format!("temporary folder: {e}")))?;
    let out = a.out.clone().unwrap_or_else(|| tmp.path().to_path_buf());
    eprintln!(
        "evosam bench scale: {threads} threads; T = {:?}, {} train + {} test images per task, {} epoch(s); \
         experts {:?}",
        a.tasks, a.train, a.test, a.epochs, a.experts
    );
    let exe = std::env::current_exe()
        .map_err(|e| Error::internal(format!("cannot find this program: {e}")))?;
    let most = a.tasks.iter().copied().max().unwrap_or(1).max(1);
    prepare_embeddings(&a, most, threads, &out)?;
    let mut cells = Vec::new();
    for s in &a.strategies {
        for &t in &a.tasks {
            let c = run_cell(&a, s, t.max(1), threads, &out, Some(&exe))?;
            eprintln!(
                "  {s} T={t}: cell {:.1} s, peak RSS {:.0} MiB",
                c.cell_s, c.peak_rss_mb
            );
            cells.push(c);
        }
    }
    let mut mfigs = Vec::new();
    for &t in &a.tasks {
        mfigs.push((
            t,
            matcher::measure(t.max(1), a.train, a.projection_dim, a.reps)?,
        ));
    }
    let model = load_model(&a.weights)?;
    let lora = LoraConfig {
        rank: 4,
        alpha: 4.0,
        targets: vec!["mask_decoder".into()],
    };
    let (efigs, bytes) = on_pool(threads, || {
        let img = super::model::rand_images(1, 3, &model.device())?;
        let base = model.encode(&img)?;
        let mut figs = Vec::new();
        let mut bytes = None;
        for &n in &a.experts {
            let (f, set) = experts::measure(&model, &base, &lora, n.max(1), a.reps)?;
            bytes = Some(experts::bytes_per_expert(&set)?);
            figs.push(f);
        }
        Ok((figs, bytes))
    })?;
    println!(
        "\nOne cell vs number of tasks T ({} train + {} test images per task, {} epoch(s), batch 4; matcher d = {}):\n",
        a.train,
        a.test,
        a.epochs,
        mfigs.first().map(|(_, m)| m.dim).unwrap_or(0)
    );
    print!("{}", cells_table(&cells, &mfigs));
    println!("\nInference per image vs number of experts (one image per call, box prompt):\n");
    print!("{}", experts_table(&efigs));
    if let Some(b) = bytes {
        println!("\n{}", bytes_line(&b));
    }
    Ok(())
}

fn load_model(weights: &str) -> Result<LiteMedSam> {
    let dev = candle_core::Device::Cpu;
    if weights == "random-tiny" {
        return LiteMedSam::random(&evosam::model::LiteMedSamConfig::tiny(), 0, &dev);
    }
    let p = if weights == "lite_medsam" {
        resolve_weights(None)?
    } else {
        resolve_weights(Some(Path::new(weights)))?
    };
    LiteMedSam::from_pth(&p, &dev)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        a: ScaleArgs,
    }

    #[test]
    fn a_tiny_scale_run_times_every_stage() {
        let a = Cli::parse_from([
            "x",
            "--weights",
            "random-tiny",
            "--train",
            "2",
            "--test",
            "1",
        ])
        .a;
        let d = tempfile::tempdir().unwrap();
        let c = run_cell(&a, "joint", 2, 1, d.path(), None).unwrap();
        assert_eq!(c.train_s.len(), 2, "one training time per stage");
        assert!(c.train_s.iter().all(|&s| s > 0.0) && c.eval_s > 0.0);
        // joint trains on every task seen so far: stage 1 one task (1 step), stage 2 both (1 step of 4 images)
        assert_eq!(c.steps, 2);
        assert_eq!(c.cases_scored, 6);
        let t = cells_table(&[c], &[]);
        assert_eq!(t.lines().count(), 3);
        assert!(
            t.lines().nth(2).unwrap().starts_with("| joint | 2 |"),
            "{t}"
        );
    }
}
