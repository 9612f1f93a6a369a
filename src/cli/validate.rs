//! `evosam validate` (in progress).

#[derive(Debug, clap::Args)]
pub struct Args {}

pub fn run(_args: Args) -> crate::Result<()> {
    Err(crate::Error::internal("`evosam validate` is not available yet"))
}
