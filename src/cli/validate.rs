//! `evosam validate SPEC`: check a spec (keys, types, ranges, presets, the weights file, LoRA settings against the
//! model's layers, data files, split sizes) without running it.

use evosam::spec::Spec;
use std::path::PathBuf;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Experiment spec (TOML).
    pub spec: PathBuf,
    /// Skip the data checks (file listings, pairing, split sizes).
    #[arg(long)]
    pub no_data: bool,
    /// After the checks, print the spec as it will run, as TOML: presets merged into each strategy, every default
    /// filled in, variables substituted, relative paths absolute (run.json keeps the same form under "spec").
    #[arg(long)]
    pub resolved: bool,
}

/// Check the spec and print what it describes.
pub fn run(args: Args) -> evosam::Result<()> {
    let spec = Spec::from_file(&args.spec)?;
    evosam::runner::check_model(&spec)?;
    if args.resolved {
        if !args.no_data {
            spec.check_data()?;
        }
        print!(
            "{}",
            evosam::runner::resolved_toml(&spec, &evosam::Registry::default())?
        );
        return Ok(());
    }
    println!(
        "spec {}: experiment {:?}",
        args.spec.display(),
        spec.experiment.name
    );
    println!(
        "  seeds {:?}, device {}, output {}",
        spec.experiment.seeds,
        spec.experiment.device,
        spec.experiment.output.join(&spec.experiment.name).display()
    );
    println!(
        "  model: weights {:?}, freeze_encoder {}",
        spec.model.weights, spec.model.freeze_encoder
    );
    if args.no_data {
        for t in &spec.stream.tasks {
            println!("  task {} ({})", t.name, t.source.kind);
        }
    } else {
        for line in spec.check_data()? {
            println!("  task {line}");
        }
    }
    let names = spec.task_names();
    for o in &spec.orders {
        let v: Vec<&str> = o.tasks.iter().map(|&i| names[i].as_str()).collect();
        println!("  order {}: {}", o.label, v.join(" -> "));
    }
    for s in &spec.strategies {
        println!(
            "  strategy {} (kind {}, preset {}): epochs {}, batch {}, lr {}, lora rank {} alpha {} targets {:?}",
            s.label, s.kind, s.preset, s.train.epochs, s.train.batch_size, s.train.lr, s.lora.rank, s.lora.alpha, s.lora.targets
        );
    }
    if let Some(i) = &spec.interactive {
        println!(
            "  interactive study: up to {} clicks, NoC targets {:?}, Dice at {:?}, mask prompt {}, stages {:?}{}",
            i.max_clicks,
            i.targets,
            i.report_at,
            if i.mask_prompt { "on" } else { "off" },
            i.stages,
            i.max_cases
                .map(|m| format!(", at most {m} images per task"))
                .unwrap_or_default()
        );
    }
    let n = spec.strategies.len() * spec.experiment.seeds.len() * spec.orders.len();
    println!("ok: {n} cells");
    Ok(())
}
