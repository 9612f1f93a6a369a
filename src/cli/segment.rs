//! `evosam segment` (in progress).

#[derive(Debug, clap::Args)]
pub struct Args {}

pub fn run(_args: Args) -> crate::Result<()> {
    Err(crate::Error::internal("`evosam segment` is not available yet"))
}
