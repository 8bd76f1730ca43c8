//! The one error type of the crate. Its HTTP status and code are decided in exactly one place:
//! `http::error` (the `IntoResponse` impl).

use std::path::PathBuf;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request itself is wrong (bad JSON, empty text, too many texts...).
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("method not allowed on this route")]
    MethodNotAllowed,
    #[error("request body is larger than the configured limit (--max-body-bytes / MOE_MAX_BODY_BYTES)")]
    PayloadTooLarge,
    #[error("no expert for class {0:?}")]
    UnknownClass(String),
    #[error("not found: {0}")]
    NotFound(String),
    /// A bundle, trunk or registry failed validation; names the file and the problem.
    #[error("invalid bundle: {path}: {reason}")]
    InvalidBundle { path: PathBuf, reason: String },
    #[error("invalid registry: {path}: {reason}")]
    InvalidRegistry { path: PathBuf, reason: String },
    #[error("{0}")]
    Conflict(String),
    /// The candidate bundle is valid but fails the swap's quality gate.
    #[error("quality gate: {0}")]
    QualityGate(String),
    #[error("missing or wrong bearer token")]
    Unauthorized,
    #[error("admin routes are disabled: start the service with --admin-token / MOE_ADMIN_TOKEN")]
    AdminDisabled,
    /// Work queues are full: the client should retry later.
    #[error("overloaded: {0}")]
    Overloaded(String),
    #[error("not ready: {0}")]
    NotReady(String),
    #[error("request timed out after {0} ms")]
    Timeout(u64),
    #[error("inference failed: {0}")]
    Inference(String),
    #[error("ONNX Runtime: {0}")]
    Runtime(String),
    #[error("io: {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    pub fn bundle(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        Error::InvalidBundle { path: path.into(), reason: reason.into() }
    }

    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), source }
    }
}
