//! Typed library errors. The binary maps [`Error::exit_code`] to the process exit status:
//! 2 for bad input (a file, key, path or argument the user gave), 1 for internal failures.

use std::path::PathBuf;

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Every error of the library; [`Error::exit_code`] sorts them into bad input and internal failure.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad user input: an unreadable image, a malformed argument, a missing file.
    #[error("{0}")]
    Input(String),
    /// A spec (TOML) problem, with the file and, where known, line and key.
    #[error("{file}: {msg}")]
    Spec {
        /// The spec or preset file (or a strategy label for build-time errors).
        file: String,
        /// What is wrong, with the line where known.
        msg: String,
    },
    /// Weights missing, corrupt or mismatched.
    #[error("weights: {0}")]
    Weights(String),
    /// An I/O failure on a named path.
    #[error("{}: {source}", path.display())]
    Io {
        /// The path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Training diverged (non-finite loss).
    #[error("non-finite loss: {0}")]
    NonFinite(String),
    /// A tensor operation failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// A table operation failed.
    #[error(transparent)]
    Polars(#[from] polars::error::PolarsError),
    /// An internal failure.
    #[error("{0}")]
    Internal(String),
}

impl Error {
    /// Process exit code for this error: 2 for bad input, 1 for internal failure.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Input(_) | Error::Spec { .. } | Error::Weights(_) => 2,
            Error::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => 2,
            // a file whose content cannot be read as what it should be (e.g. JSON that is not UTF-8)
            Error::Io { source, .. } if source.kind() == std::io::ErrorKind::InvalidData => 2,
            _ => 1,
        }
    }

    /// An I/O failure on a named path.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    /// Bad user input.
    pub fn input(msg: impl Into<String>) -> Self {
        Error::Input(msg.into())
    }

    /// An internal failure (a bug or a broken invariant).
    pub fn internal(msg: impl Into<String>) -> Self {
        Error::Internal(msg.into())
    }
}
