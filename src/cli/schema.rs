//! `evosam schema`: print the JSON Schema of a spec (or of a preset), or the spec reference page, all generated
//! from the spec types (`evosam::spec::schema`); `docs/` holds the committed copies.

use evosam::spec::{reference, schema};
use evosam::Registry;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The schema of a preset file (baselines/<name>.toml) instead of a spec.
    #[arg(long, conflicts_with = "markdown")]
    pub preset: bool,
    /// The spec reference (docs/spec.md) instead of the JSON Schema.
    #[arg(long)]
    pub markdown: bool,
}

/// Print the schema (or the reference) to standard output.
pub fn run(args: Args) -> evosam::Result<()> {
    let reg = Registry::default();
    let text = if args.markdown {
        reference::markdown(&reg)
    } else if args.preset {
        schema::to_pretty(&schema::preset_schema(&reg))
    } else {
        schema::to_pretty(&schema::spec_schema(&reg))
    };
    print!("{text}");
    Ok(())
}
