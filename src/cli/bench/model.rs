//! `evosam bench model`: encoder forward time per image, full forward time, decoder train-step time
//! (batch 4, cached embeddings, AdamW on the whole mask decoder), a LoRA decoder step, optionally an encoder-LoRA
//! step (`--encoder-lora`: the GPU setting), and peak memory. With `--reference`, runs
//! `scripts/bench_reference.py` (PyTorch) in the same run and prints the candle/PyTorch ratios. `--device cuda`
//! measures on the GPU (a binary built with `--features cuda`; every timing waits for the device).

use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};

use super::common::{on_pool, peak_rss_mb, thread_count, time_it};
use evosam::model::{Adapter, LiteMedSam, LoraConfig, Prompts};
use evosam::train::{seg_loss, AdamW, LossWeights, ParamsAdamW};
use evosam::weights::resolve_weights;
use evosam::{Error, Result};

/// `evosam bench model`'s arguments.
#[derive(Debug, clap::Args)]
pub struct ModelArgs {
    /// Repetitions per measurement (medians are reported), after one warm-up.
    #[arg(long, default_value_t = 5)]
    pub reps: usize,
    /// Threads for candle and PyTorch (0: all cores). The `evosam` binary sets RAYON_NUM_THREADS to this before
    /// anything runs, because candle's matmul reads that variable; the measurements also run on a rayon pool of
    /// this size.
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// Also run scripts/bench_reference.py (PyTorch) and print ratios.
    #[arg(long)]
    pub reference: bool,
    /// The reference script.
    #[arg(long, default_value = "scripts/bench_reference.py")]
    pub reference_script: PathBuf,
    /// LiteMedSAM weights (default: the cache).
    #[arg(long)]
    pub weights: Option<PathBuf>,
    /// "cpu", "cuda" or "cuda:N" (also passed to the reference).
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Also time a LoRA step on the encoder's attention (`attn.qkv`, rank 4) and the decoder, batch 4, with the
    /// encoder run at every step (slow on a CPU: several seconds per step).
    #[arg(long)]
    pub encoder_lora: bool,
}

/// The measurements, medians over repetitions.
#[derive(Debug, Default, Clone, Copy)]
pub struct Figures {
    /// Encoder forward, seconds per image (batch 1).
    pub encoder_s: f64,
    /// Encoder + prompt encoder + decoder forward, seconds per image (batch 1).
    pub full_s: f64,
    /// Decoder training step on cached embeddings, seconds (batch 4, AdamW on the whole decoder).
    pub decoder_step_s: f64,
    /// LoRA (q/v projections, rank 4) decoder training step, seconds (batch 4).
    pub lora_step_s: f64,
    /// Encoder-LoRA step (q/k/v of every encoder attention and the decoder's, rank 4, batch 4), seconds.
    pub encoder_lora_step_s: Option<f64>,
    /// Peak resident set size of the process, MiB.
    pub peak_rss_mb: f64,
}

/// A training batch of 4: random images, their (cached) embeddings, box prompts and box-shaped targets 10
/// pixels inside each box.
pub struct StepData {
    /// (4, 3, 256, 256) in [0, 1).
    pub images: Tensor,
    /// The frozen encoder's embeddings of `images`, detached.
    pub emb: Tensor,
    /// One box per image.
    pub prompts: Prompts,
    /// (4, 1, 256, 256) targets.
    pub target: Tensor,
}

impl StepData {
    /// Draw the images (seed 1) and encode them once.
    pub fn new(model: &LiteMedSam) -> Result<Self> {
        let dev = model.device();
        let images = rand_images(4, 1, &dev)?;
        let emb = model.encode(&images)?.detach();
        let boxes = [
            [40f32, 50., 200., 190.],
            [10., 10., 120., 100.],
            [100., 80., 250., 240.],
            [60., 30., 180., 220.],
        ];
        let prompts = Prompts::from_box_slice(&boxes, &dev)?;
        let mut t = vec![0f32; 4 * 256 * 256];
        for (i, b) in boxes.iter().enumerate() {
            for y in (b[1] as usize + 10)..(b[3] as usize - 10) {
                for x in (b[0] as usize + 10)..(b[2] as usize - 10) {
                    t[i * 65536 + y * 256 + x] = 1.0;
                }
            }
        }
        let target = Tensor::from_vec(t, (4, 1, 256, 256), &dev)?;
        Ok(Self {
            images,
            emb,
            prompts,
            target,
        })
    }
}

/// `b` random 256x256 RGB images in [0, 1) from `seed`.
pub fn rand_images(b: usize, seed: u64, dev: &Device) -> Result<Tensor> {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let v: Vec<f32> = (0..b * 3 * 256 * 256)
        .map(|_| rng.random_range(0.0..1.0))
        .collect();
    Ok(Tensor::from_vec(v, (b, 3, 256, 256), dev)?)
}

/// Run the candle measurements (with `encoder_lora`, also the encoder-LoRA step). Every timed call waits for
/// the device to finish (a no-op on the CPU).
pub fn measure(model: &mut LiteMedSam, reps: usize, encoder_lora: bool) -> Result<Figures> {
    let dev = model.device();
    let sync = || -> Result<()> { Ok(dev.synchronize()?) };
    let x1 = rand_images(1, 0, &dev)?;
    let p1 = Prompts::from_box_slice(&[[40., 50., 200., 190.]], &dev)?;
    let encoder_s = time_it(reps, || {
        model.encode(&x1)?;
        sync()
    })?;
    let full_s = time_it(reps, || {
        model.forward(&x1, &p1, None)?;
        sync()
    })?;
    // Decoder training step on cached embeddings, batch 4.
    let StepData {
        images: x4,
        emb,
        prompts: p4,
        target,
    } = StepData::new(model)?;
    let w = LossWeights::default();
    let params = ParamsAdamW {
        lr: 1e-4,
        weight_decay: 0.01,
        ..Default::default()
    };
    // LoRA step first (the base decoder is still frozen).
    let lcfg = LoraConfig {
        rank: 4,
        alpha: 8.0,
        targets: vec!["mask_decoder.*q_proj".into(), "mask_decoder.*v_proj".into()],
    };
    let ad = Adapter::new(model, &lcfg, 0)?;
    let mut opt = AdamW::new(ad.vars(), params)?;
    let lora_step_s = time_it(reps, || {
        let out = model.decode(&emb, &p4, Some(&ad))?;
        let loss = seg_loss(&out, &target, &w)?;
        let g = loss.backward()?;
        opt.step(&g)?;
        sync()
    })?;
    let encoder_lora_step_s = if encoder_lora {
        let ecfg = LoraConfig {
            rank: 4,
            alpha: 8.0,
            targets: vec!["attn.qkv".into()],
        };
        let ad = Adapter::new(model, &ecfg, 0)?;
        let mut opt = AdamW::new(ad.vars(), params)?;
        Some(time_it(reps, || {
            let emb = model.encode_with(&x4, Some(&ad))?;
            let out = model.decode(&emb, &p4, Some(&ad))?;
            let g = seg_loss(&out, &target, &w)?.backward()?;
            opt.step(&g)?;
            sync()
        })?)
    } else {
        None
    };
    let vars: Vec<_> = model
        .unfreeze(&["mask_decoder."])?
        .into_iter()
        .map(|(_, v)| v)
        .collect();
    let mut opt = AdamW::new(vars, params)?;
    let decoder_step_s = time_it(reps, || {
        let out = model.decode(&emb, &p4, None)?;
        let loss = seg_loss(&out, &target, &w)?;
        let g = loss.backward()?;
        opt.step(&g)?;
        sync()
    })?;
    Ok(Figures {
        encoder_s,
        full_s,
        decoder_step_s,
        lora_step_s,
        encoder_lora_step_s,
        peak_rss_mb: peak_rss_mb().unwrap_or(f64::NAN),
    })
}

fn run_reference(a: &ModelArgs, threads: usize) -> Result<serde_json::Value> {
    let out = std::process::Command::new("python3")
        .arg(&a.reference_script)
        .args([
            "--reps",
            &a.reps.to_string(),
            "--threads",
            &threads.to_string(),
            "--device",
            &a.device,
        ])
        .stderr(std::process::Stdio::inherit())
        .output()
        .map_err(|e| {
            Error::input(format!(
                "cannot run python3 {}: {e}",
                a.reference_script.display()
            ))
        })?;
    if !out.status.success() {
        return Err(Error::input(format!(
            "{} failed ({})",
            a.reference_script.display(),
            out.status
        )));
    }
    let s = String::from_utf8_lossy(&out.stdout);
    let last = s
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with('{'))
        .unwrap_or("");
    serde_json::from_str(last).map_err(|e| {
        Error::input(format!(
            "{}: unreadable output ({e}): {s}",
            a.reference_script.display()
        ))
    })
}

/// Run `evosam bench model`: measure and print a table (with `--reference`, next to PyTorch's figures).
pub fn run(a: ModelArgs) -> Result<()> {
    let threads = thread_count(a.threads);
    let weights = resolve_weights(a.weights.as_deref())?;
    let dev = evosam::runner::open_device(&a.device)?;
    let mut model = LiteMedSam::from_pth(&weights, &dev)?;
    if model.dtype() != DType::F32 {
        return Err(Error::internal(format!(
            "the model loaded as {:?}, not f32",
            model.dtype()
        )));
    }
    eprintln!(
        "evosam bench model: {}, {} threads, {} reps (medians)",
        a.device, threads, a.reps
    );
    let f = on_pool(threads, || measure(&mut model, a.reps, a.encoder_lora))?;
    let reference = if a.reference {
        Some(run_reference(&a, threads)?)
    } else {
        None
    };
    let r = |k: &str| {
        reference
            .as_ref()
            .and_then(|v| v.get(k))
            .and_then(|v| v.as_f64())
    };
    println!(
        "{:<44} {:>12} {:>12} {:>8}",
        "measurement", "candle", "pytorch", "ratio"
    );
    let rows = [
        (
            "encoder forward (s/image, batch 1)",
            f.encoder_s,
            r("encoder_s"),
        ),
        ("full forward (s/image, batch 1)", f.full_s, r("full_s")),
        (
            "decoder train step (s, batch 4, cached emb)",
            f.decoder_step_s,
            r("decoder_step_s"),
        ),
        (
            "LoRA q/v decoder step (s, batch 4, r=4)",
            f.lora_step_s,
            None,
        ),
        (
            "encoder-LoRA step (s, batch 4, qkv r=4)",
            f.encoder_lora_step_s.unwrap_or(f64::NAN),
            None,
        ),
        ("peak memory (MiB RSS)", f.peak_rss_mb, r("peak_rss_mb")),
    ];
    // (the encoder-LoRA row only when it was measured)
    for (name, c, p) in rows.into_iter().filter(|r| !r.1.is_nan()) {
        match p {
            Some(p) => println!("{name:<44} {c:>12.3} {p:>12.3} {:>8.2}", c / p),
            None => println!("{name:<44} {c:>12.3} {:>12} {:>8}", "-", "-"),
        }
    }
    if let Some(v) = &reference {
        println!(
            "reference: torch {} with {} threads",
            v["torch"].as_str().unwrap_or("?"),
            v["threads"]
        );
    }
    Ok(())
}
