//! Everything before the first cell: the device, the base model, the tasks' data, every case's embedding, and
//! the compute thread count (read here, applied by the binary).

use super::progress::Reporter;
use crate::data::{self, Case, TaskData};
use crate::model::{LiteMedSam, LiteMedSamConfig};
use crate::spec::Spec;
use crate::strategy::EmbeddingStore;
use crate::{Error, Result};
use candle_core::{DType, Device};
use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::time::Instant;

/// The compute thread count of a run: the spec's `threads`, else `RAYON_NUM_THREADS`, else all cores. The
/// library only reads it; the `evosam` binary sets `RAYON_NUM_THREADS` to it before anything runs, because
/// candle's matmuls and rayon's global pool read that variable once, when they start. All cells share that
/// one pool, so `--jobs N` interleaves work on the same threads instead of multiplying them.
pub fn threads_for(spec: &Spec) -> usize {
    if spec.experiment.threads > 0 {
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
    }
}

/// Resolve the spec's "cpu" / "cuda" / "cuda:N".
pub fn device_of(spec: &Spec) -> Result<Device> {
    match crate::spec::parse_device(&spec.experiment.device).map_err(|m| spec.err(m))? {
        None => Ok(Device::Cpu),
        Some(n) => open_cuda(&spec.experiment.device, n),
    }
}

/// Open "cpu" / "cuda" / "cuda:N" (e.g. a `--device` flag); an unknown name or an unavailable GPU is an input
/// error that says what to do.
pub fn open_device(name: &str) -> Result<Device> {
    match crate::spec::parse_device(name).map_err(|m| Error::input(format!("device: {m}")))? {
        None => Ok(Device::Cpu),
        Some(n) => open_cuda(name, n),
    }
}

fn open_cuda(name: &str, ordinal: usize) -> Result<Device> {
    Device::new_cuda(ordinal).map_err(|e| {
        Error::input(format!(
            "device {name:?} is not available ({e}); {}",
            cuda_hint()
        ))
    })
}

/// What to do when a CUDA device cannot be opened: a binary built with the `cuda` feature needs a GPU and its
/// driver; one built without it needs rebuilding.
pub fn cuda_hint() -> &'static str {
    if cfg!(feature = "cuda") {
        "this binary was built with CUDA support, but no usable GPU or NVIDIA driver was found (check nvidia-smi, \
         the driver version (580 or newer for CUDA 13) and CUDA_VISIBLE_DEVICES), or use device = \"cpu\""
    } else {
        "this binary was built without CUDA: build with `--features cuda` on a machine with a GPU, or use \
         device = \"cpu\""
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

/// What every cell shares, before the first cell runs.
pub(super) struct Prepared {
    pub device: Device,
    pub model: LiteMedSam,
    pub sha: String,
    pub tasks: Vec<TaskData>,
    pub store: EmbeddingStore,
    pub embeddings_s: f64,
}

/// Device, model, data and embeddings of a run; `banner` is reported once the device is known.
pub(super) fn prepare(spec: &Spec, reporter: &Reporter, banner: &str) -> Result<Prepared> {
    let device = device_of(spec)?;
    reporter.info(banner);
    let (model, sha) = load_model(spec, &device)?;
    super::check::check_lora_sites(spec, &model)?;
    super::check::check_encoder_targets(spec, &model)?;
    let size = model.input_size();
    let augment = spec.strategies.iter().any(|s| s.train.augment);
    let mut tasks = Vec::new();
    for t in &spec.stream.tasks {
        let td = data::load_task(spec, t, size, augment, &device)?;
        let test = if td.test_volumes.is_empty() {
            format!("{} test", td.test.len())
        } else {
            format!(
                "{} test volumes ({} prompted slices), scored in 3-D",
                td.test_volumes.len(),
                td.test.len()
            )
        };
        reporter.info(&format!(
            "task {}: {} train, {test}",
            td.name,
            td.train.len()
        ));
        let skipped = data::skipped_inputs(spec, t)?;
        if !skipped.is_empty() {
            reporter.info(&format!(
                "task {}: {} unpaired image(s) skipped (unpaired = \"skip\"): {}",
                td.name,
                skipped.len(),
                data::list_paths(&skipped)
            ));
        }
        tasks.push(td);
    }
    let t_emb = Instant::now();
    let store = compute_embeddings(spec, &model, &sha, &tasks, reporter)?;
    Ok(Prepared {
        device,
        model,
        sha,
        tasks,
        store,
        embeddings_s: t_emb.elapsed().as_secs_f64(),
    })
}

/// Memory budget of a run's embeddings in MiB: `EVOSAM_EMBED_BUDGET_MB`, else 4096. Above it (e.g. the tiles
/// of many large images) the embeddings are not held in memory but read from the on-disk cache when needed.
pub fn embedding_budget_mb() -> usize {
    std::env::var("EVOSAM_EMBED_BUDGET_MB")
        .ok()
        .and_then(|s| s.parse::<usize>().ok())
        .unwrap_or(DEFAULT_EMBED_BUDGET_MB)
}

/// Default of [`embedding_budget_mb`].
pub const DEFAULT_EMBED_BUDGET_MB: usize = 4096;

/// Compute (or read from the on-disk cache) every case's embedding once. Values are rounded through f16 so a
/// freshly computed embedding equals a cached one bit for bit; they are held as f16, in memory while they fit
/// [`embedding_budget_mb`], else on disk only (random test models, which have no disk cache, always in memory).
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
        Some(crate::embed_cache::EmbeddingCache::new(&dir, sha)?.without_memory())
    };
    let all: Vec<&Case> = tasks
        .iter()
        .flat_map(|t| t.train.iter().chain(t.test.iter()))
        .flat_map(|c| std::iter::once(c).chain(c.flipped.as_deref()))
        .collect();
    let unique = all
        .iter()
        .map(|c| &c.content_hash)
        .collect::<HashSet<_>>()
        .len();
    let budget = embedding_budget_mb() as f64;
    let mut map = HashMap::new();
    let mut seen = HashSet::new();
    let mut on_disk = false;
    let t0 = Instant::now();
    let n = all.len();
    for (i, c) in all.into_iter().enumerate() {
        if !seen.insert(c.content_hash.clone()) {
            continue;
        }
        let e = match &cache {
            Some(cache) => cache.get_or_compute(model, &c.content_hash, &c.image)?,
            None => model.encode(&c.image.unsqueeze(0)?)?.squeeze(0)?,
        };
        let e = e.to_dtype(DType::F16)?;
        if seen.len() == 1 {
            let mb = (unique * e.elem_count() * 2) as f64 / (1024.0 * 1024.0);
            on_disk = cache.is_some() && mb > budget;
            if on_disk {
                reporter.info(&format!(
                    "embeddings: {unique} x {:.1} MiB = {mb:.0} MiB exceed the memory budget of {budget:.0} MiB \
                     (EVOSAM_EMBED_BUDGET_MB): read from the disk cache when needed",
                    mb / unique as f64
                ));
            }
        }
        if !on_disk {
            map.insert(c.content_hash.clone(), e);
        }
        if (i + 1) % 16 == 0 || i + 1 == n {
            reporter.info(&format!(
                "embeddings {}/{n} ({:.1} s)",
                i + 1,
                t0.elapsed().as_secs_f64()
            ));
        }
    }
    match cache {
        Some(cache) if on_disk => Ok(EmbeddingStore::on_disk(cache, seen, model.device())),
        _ => Ok(EmbeddingStore::new(map)),
    }
}
