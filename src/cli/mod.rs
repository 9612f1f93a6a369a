//! Subcommand implementations behind the `evosam` binary. Each file owns one subcommand:
//! its clap `Args` struct and a `run(args) -> crate::Result<()>` function.

pub mod annotate;
pub mod bench;
pub mod report;
pub mod run;
pub mod segment;
pub mod status;
pub mod submit;
pub mod validate;
