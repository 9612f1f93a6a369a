//! `evosam bench jobs`: decoder train steps per second with N concurrent training loops, as `evosam run --jobs N`
//! runs N cells at once on one shared compute pool. Each loop is what a cell's training step does on cached
//! embeddings: a LoRA adapter on the mask decoder (the quickstart's: rank 4, alpha 4), batch 4, decoder forward,
//! segmentation loss, backward, AdamW.

use std::path::PathBuf;
use std::sync::Barrier;
use std::time::Instant;

use super::common::{markdown, median, thread_count};
use super::model::StepData;
use evosam::model::{Adapter, LiteMedSam, LoraConfig};
use evosam::train::{seg_loss, AdamW, LossWeights, ParamsAdamW};
use evosam::weights::resolve_weights;
use evosam::{Error, Result};

/// `evosam bench jobs`' arguments.
#[derive(Debug, clap::Args)]
pub struct JobsArgs {
    /// Concurrent training loops to compare (comma-separated).
    #[arg(long, default_value = "1,2", value_delimiter = ',')]
    pub jobs: Vec<usize>,
    /// Timed steps per loop (after one warm-up step each).
    #[arg(long, default_value_t = 6)]
    pub steps: usize,
    /// Repetitions per setting (the median is reported).
    #[arg(long, default_value_t = 3)]
    pub reps: usize,
    /// Compute threads shared by all loops (0: all cores), as `evosam run`'s pool.
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// LiteMedSAM weights (default: the cache).
    #[arg(long)]
    pub weights: Option<PathBuf>,
}

/// One setting's figures.
#[derive(Clone, Copy, Debug)]
pub struct Throughput {
    /// Concurrent loops.
    pub jobs: usize,
    /// Median over repetitions of (all loops' steps / wall seconds).
    pub steps_per_s: f64,
}

/// Run `jobs` loops of `steps` LoRA decoder steps at once (each after one warm-up step); all loops' steps per
/// wall second, from the moment every loop has warmed up to the last one's end.
pub fn steps_per_second(
    model: &LiteMedSam,
    data: &StepData,
    jobs: usize,
    steps: usize,
    pool: &rayon::ThreadPool,
) -> Result<f64> {
    let lora = LoraConfig {
        rank: 4,
        alpha: 4.0,
        targets: vec!["mask_decoder".into()],
    };
    let w = LossWeights::default();
    let params = ParamsAdamW {
        lr: 3e-3,
        weight_decay: 0.01,
        ..Default::default()
    };
    let ready = Barrier::new(jobs + 1);
    let done = std::thread::scope(|s| -> Result<f64> {
        let handles: Vec<_> = (0..jobs)
            .map(|j| {
                let (ready, lora, w) = (&ready, &lora, &w);
                // Each loop runs inside the shared pool, as each cell of `evosam run` does.
                s.spawn(move || -> Result<()> {
                    pool.install(|| {
                        let r = (|| {
                            let ad = Adapter::new(model, lora, j as u64)?;
                            let mut opt = AdamW::new(ad.vars(), params)?;
                            let mut step = move || -> Result<()> {
                                let out = model.decode(&data.emb, &data.prompts, Some(&ad))?;
                                let g = seg_loss(&out, &data.target, w)?.backward()?;
                                opt.step(&g)
                            };
                            step()?;
                            Ok::<_, Error>(step)
                        })();
                        ready.wait();
                        let mut step = r?;
                        for _ in 0..steps {
                            step()?;
                        }
                        Ok(())
                    })
                })
            })
            .collect();
        ready.wait();
        let t0 = Instant::now();
        for h in handles {
            h.join()
                .map_err(|_| Error::internal("a training loop panicked"))??;
        }
        Ok(t0.elapsed().as_secs_f64())
    })?;
    Ok((jobs * steps) as f64 / done)
}

/// Measure every setting of `jobs`, `reps` times each.
pub fn measure(
    model: &LiteMedSam,
    jobs: &[usize],
    steps: usize,
    reps: usize,
    threads: usize,
) -> Result<Vec<Throughput>> {
    let pool = evosam::runner::compute_pool(threads)?;
    let data = pool.install(|| StepData::new(model))?;
    jobs.iter()
        .map(|&j| {
            let v = (0..reps.max(1))
                .map(|_| steps_per_second(model, &data, j.max(1), steps.max(1), &pool))
                .collect::<Result<Vec<_>>>()?;
            Ok(Throughput {
                jobs: j.max(1),
                steps_per_s: median(v),
            })
        })
        .collect()
}

/// Run `evosam bench jobs` and print a Markdown table.
pub fn run(a: JobsArgs) -> Result<()> {
    let threads = thread_count(a.threads);
    let weights = resolve_weights(a.weights.as_deref())?;
    let model = LiteMedSam::from_pth(&weights, &candle_core::Device::Cpu)?;
    eprintln!(
        "evosam bench jobs: {threads} threads, {} steps per loop, {} reps (medians)",
        a.steps, a.reps
    );
    let t = measure(&model, &a.jobs, a.steps, a.reps, threads)?;
    let base = t.first().map(|x| x.steps_per_s).unwrap_or(f64::NAN);
    let rows: Vec<Vec<String>> = t
        .iter()
        .map(|x| {
            vec![
                x.jobs.to_string(),
                format!("{:.3}", x.steps_per_s),
                format!("{:.3}", x.steps_per_s / x.jobs as f64),
                format!("{:.2}", x.steps_per_s / base),
            ]
        })
        .collect();
    print!(
        "{}",
        markdown(
            &[
                "jobs",
                "decoder train steps/s (all jobs)",
                "steps/s per job",
                "vs first row"
            ],
            &rows
        )
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn concurrent_loops_all_step() {
        let dev = candle_core::Device::Cpu;
        let cfg = evosam::model::LiteMedSamConfig::tiny();
        let model = evosam::model::LiteMedSam::random(&cfg, 0, &dev).unwrap();
        let t = super::measure(&model, &[1, 2], 1, 1, 2).unwrap();
        assert_eq!(t.len(), 2);
        assert!(t
            .iter()
            .all(|x| x.steps_per_s.is_finite() && x.steps_per_s > 0.0));
    }
}
