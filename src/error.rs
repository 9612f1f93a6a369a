//! Typed library errors. The binary maps [`Error::exit_code`] to the process exit status:
//! 2 for bad input (a file, key, path or argument the user gave), 1 for internal failures.

use std::path::PathBuf;

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Every error of the library; [`Error::exit_code`] sorts them into bad input and internal failure.
///
/// `#[non_exhaustive]`: new variants may come in a minor release, so a `match` outside this crate ends with a
/// wildcard arm. A downstream strategy's own error travels as [`Error::Other`] (see [`Error::other`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
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
    /// An error of code outside this crate (a custom strategy or data source), kept whole: its message is shown
    /// and its `source()` chain stays reachable. Counts as an internal failure (exit code 1).
    #[error(transparent)]
    Other(Box<dyn std::error::Error + Send + Sync + 'static>),
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

    /// Wrap an error of downstream code (a custom strategy's own error type) without losing it.
    ///
    /// ```
    /// #[derive(Debug)]
    /// struct MyError;
    /// impl std::fmt::Display for MyError {
    ///     fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
    ///         f.write_str("my strategy failed")
    ///     }
    /// }
    /// impl std::error::Error for MyError {}
    ///
    /// let e = evosam::Error::other(MyError);
    /// assert_eq!(e.to_string(), "my strategy failed");
    /// assert_eq!(e.exit_code(), 1);
    /// assert!(matches!(e, evosam::Error::Other(ref b) if b.is::<MyError>()));
    /// ```
    pub fn other(e: impl std::error::Error + Send + Sync + 'static) -> Self {
        Error::Other(Box::new(e))
    }
}
