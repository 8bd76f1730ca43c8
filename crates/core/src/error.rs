//! The one error type of the library. Causes are kept (`#[source]`), never flattened into strings.
//! HTTP-only failures (media type, body size, auth, routing) live in `http::error::ApiError`, which
//! wraps this type and decides every status and code in one place.

use std::path::PathBuf;
use std::sync::Arc;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The caller asked for something invalid (an empty text, an unknown metric, a data split
    /// without positives...).
    #[error("{0}")]
    BadRequest(String),
    #[error("no expert for class {0:?}")]
    UnknownClass(String),
    #[error("not found: {0}")]
    NotFound(String),
    /// A bundle, trunk or registry failed validation; names the file and the problem.
    #[error("invalid bundle: {path}: {reason}")]
    InvalidBundle { path: PathBuf, reason: String },
    /// ONNX Runtime refused a bundle's graph (not ONNX, unsupported operator...).
    #[error("invalid bundle: {path}: ONNX Runtime refused the graph: {source}")]
    InvalidGraph {
        path: PathBuf,
        #[source]
        source: Arc<ort::Error>,
    },
    #[error("invalid registry: {path}: {reason}")]
    InvalidRegistry { path: PathBuf, reason: String },
    /// The shared registry (etcd) cannot be reached or refused the call.
    #[error("registry store unavailable: {context}")]
    Registry {
        context: String,
        #[source]
        source: Option<Arc<dyn std::error::Error + Send + Sync>>,
    },
    #[error("{0}")]
    Conflict(String),
    /// The candidate bundle is valid but fails the swap's quality gate.
    #[error("quality gate: {0}")]
    QualityGate(String),
    /// Work queues or the admission limit are full: the client should retry later.
    #[error("overloaded: {0}")]
    Overloaded(String),
    /// A bounded background resource (selection jobs) is full: retry later.
    #[error("too many: {0}")]
    TooMany(String),
    #[error("not ready: {0}")]
    NotReady(String),
    #[error("request timed out after {0} ms")]
    Timeout(u64),
    /// ONNX Runtime failed (loading the library, creating a session, running a graph). The cause is
    /// shared because one failed batch answers every job in it.
    #[error("ONNX Runtime: {context}")]
    Ort {
        context: String,
        #[source]
        source: Arc<ort::Error>,
    },
    #[error("tokenizer: {0}")]
    Tokenizer(#[source] Arc<dyn std::error::Error + Send + Sync>),
    /// An internal invariant broke (a worker thread stopped, a graph returned the wrong shape).
    #[error("internal: {0}")]
    Internal(String),
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

    pub fn ort(context: impl Into<String>, source: ort::Error) -> Self {
        Error::Ort { context: context.into(), source: Arc::new(source) }
    }

    /// A copy for fan-out (one batch failure answers every job in the batch).
    pub fn share(&self) -> Error {
        match self {
            Error::Ort { context, source } => Error::Ort { context: context.clone(), source: source.clone() },
            Error::Tokenizer(e) => Error::Tokenizer(e.clone()),
            Error::Registry { context, source } => Error::Registry { context: context.clone(), source: source.clone() },
            other => Error::Internal(other.to_string()),
        }
    }
}

/// A panicked blocking task (never expected; reported, not propagated as a panic).
impl From<tokio::task::JoinError> for Error {
    fn from(e: tokio::task::JoinError) -> Self {
        Error::Internal(format!("background task failed: {e}"))
    }
}

/// Lock a mutex whose data stays consistent even if a holder panicked: every critical section in
/// this crate replaces the guarded value whole or not at all, so a poisoned lock is recovered
/// instead of taking the routes that need it down until restart.
pub fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Read a lock recovered the same way as [`lock`].
pub fn read<T>(l: &std::sync::RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Write a lock recovered the same way as [`lock`].
pub fn write<T>(l: &std::sync::RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// An error's message with its chain of causes ("a: b: c"), skipping causes already in the
/// message: what the API answers and what the logs say.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut msg = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let s_msg = s.to_string();
        if !msg.contains(&s_msg) {
            msg = format!("{msg}: {s_msg}");
        }
        source = s.source();
    }
    msg
}
