//! Subcommand implementations behind the `evosam` binary. Each file owns one subcommand:
//! its clap `Args` struct and a `run(args) -> evosam::Result<()>` function. They
//! belong to the binary, not the library, and reach the library only through its public surface.

pub mod alloc;
pub mod annotate;
pub mod bench;
pub mod export;
pub mod init;
pub mod report;
pub mod run;
pub mod schema;
pub mod segment;
pub mod segment_tiled;
pub mod status;
pub mod submit;
pub mod validate;
