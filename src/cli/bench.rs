//! `evosam bench` (in progress).

#[derive(Debug, clap::Args)]
pub struct Args {}

pub fn run(_args: Args) -> crate::Result<()> {
    Err(crate::Error::internal("`evosam bench` is not available yet"))
}
