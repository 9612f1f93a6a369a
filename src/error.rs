//! Typed library errors. The binary maps [`Error::exit_code`] to the process exit status:
//! 2 for bad input (a file, key, path or argument the user gave), 1 for internal failures.

use std::path::PathBuf;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad user input: an unreadable image, a malformed argument, a missing file.
    #[error("{0}")]
    Input(String),
    /// A spec (TOML) problem, with the file and, where known, line and key.
    #[error("{file}: {msg}")]
    Spec { file: String, msg: String },
    /// Weights missing, corrupt or mismatched.
    #[error("weights: {0}")]
    Weights(String),
    /// An I/O failure on a named path.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Training diverged (non-finite loss).
    #[error("non-finite loss: {0}")]
    NonFinite(String),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    #[error(transparent)]
    Polars(#[from] polars::error::PolarsError),
    #[error("{0}")]
    Internal(String),
}

impl Error {
    /// Process exit code for this error: 2 for bad input, 1 for internal failure.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Input(_) | Error::Spec { .. } | Error::Weights(_) => 2,
            Error::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => 2,
            _ => 1,
        }
    }

    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    pub fn input(msg: impl Into<String>) -> Self {
        Error::Input(msg.into())
    }

    pub fn internal(msg: impl Into<String>) -> Self {
        Error::Internal(msg.into())
    }
}
