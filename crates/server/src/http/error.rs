//! The one place where errors become HTTP statuses, with one JSON shape:
//! `{"error": {"code": "...", "message": "..."}}`. `ApiError` adds the failures only HTTP has
//! (media type, body size, authentication, routing) to the library's `Error`, whose causes it
//! keeps.

use std::path::Path;
use std::sync::RwLock;

use axum::Json;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use moe_core::Error;

/// The limits a body can go over, as `ApiError::PayloadTooLarge` names them.
pub const BODY_LIMIT: &str = "the configured limit (--max-body-bytes / MOE_MAX_BODY_BYTES)";
pub const UPLOAD_LIMIT: &str = "the archive limit (--max-upload-bytes / MOE_MAX_UPLOAD_BYTES)";
pub const TRAIN_LIMIT: &str = "the training body limit (8 MiB)";

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(transparent)]
    Core(#[from] Error),
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("method not allowed on this route")]
    MethodNotAllowed,
    /// The body went over the limit named (`BODY_LIMIT`, `UPLOAD_LIMIT`, `TRAIN_LIMIT`).
    #[error("request body is larger than {0}")]
    PayloadTooLarge(&'static str),
    #[error("the request body did not arrive in time (--body-timeout-ms between frames, --body-deadline-ms in all)")]
    RequestTimeout,
    #[error("missing or wrong bearer token")]
    Unauthorized,
    #[error("admin routes are disabled: start the service with --admin-token / MOE_ADMIN_TOKEN")]
    AdminDisabled,
    #[error("the request target is {0} bytes, more than {max}", max = super::limits::MAX_URI_BYTES)]
    UriTooLong(usize),
    #[error("{0}")]
    HeadersTooLarge(String),
}

pub type ApiResult<T> = std::result::Result<T, ApiError>;

impl ApiError {
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::Core(Error::BadRequest(message.into()))
    }

    pub fn status_and_code(&self) -> (StatusCode, &'static str) {
        let e = match self {
            ApiError::UnsupportedMediaType(_) => return (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type"),
            ApiError::MethodNotAllowed => return (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            ApiError::PayloadTooLarge(_) => return (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            ApiError::Unauthorized => return (StatusCode::UNAUTHORIZED, "unauthorized"),
            ApiError::RequestTimeout => return (StatusCode::REQUEST_TIMEOUT, "request_timeout"),
            ApiError::AdminDisabled => return (StatusCode::FORBIDDEN, "admin_disabled"),
            ApiError::UriTooLong(_) => return (StatusCode::URI_TOO_LONG, "uri_too_long"),
            ApiError::HeadersTooLarge(_) => {
                return (StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, "headers_too_large");
            }
            ApiError::Core(e) => e,
        };
        match e {
            Error::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            Error::UnknownClass(_) => (StatusCode::NOT_FOUND, "unknown_class"),
            Error::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            Error::InvalidBundle { .. } | Error::InvalidGraph { .. } => {
                (StatusCode::UNPROCESSABLE_ENTITY, "invalid_bundle")
            }
            Error::QualityGate(_) => (StatusCode::UNPROCESSABLE_ENTITY, "quality_gate_failed"),
            Error::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            Error::InvalidRegistry { .. } => (StatusCode::INTERNAL_SERVER_ERROR, "invalid_registry"),
            Error::Overloaded(_) => (StatusCode::SERVICE_UNAVAILABLE, "overloaded"),
            Error::Registry { .. } => (StatusCode::SERVICE_UNAVAILABLE, "registry_unavailable"),
            Error::TooMany(_) => (StatusCode::TOO_MANY_REQUESTS, "too_many_jobs"),
            Error::NotReady(_) => (StatusCode::SERVICE_UNAVAILABLE, "not_ready"),
            Error::Timeout(_) => (StatusCode::SERVICE_UNAVAILABLE, "timeout"),
            Error::Ort { .. } | Error::Tokenizer(_) | Error::Internal(_) | Error::Io { .. } => {
                (StatusCode::INTERNAL_SERVER_ERROR, "internal")
            }
        }
    }
}

/// This server's folders (model roots, state folders; absolute and canonical forms) and the name
/// error messages show instead: a client learns which bundle or file failed, not where the server
/// keeps it. Every `AppState` adds its own (one in a server; many in a test process).
static HIDDEN: RwLock<Vec<(String, &'static str)>> = RwLock::new(Vec::new());

/// Show `models` as `<models>` and `state` as `<state>` in every error message.
pub fn hide_paths(models: &Path, state: &Path) {
    let mut hidden = moe_core::error::write(&HIDDEN);
    for (p, name) in [(models, "<models>"), (state, "<state>")] {
        for form in [std::path::absolute(p).ok(), p.canonicalize().ok()].into_iter().flatten() {
            let form = form.display().to_string();
            if form.len() > 1 && !hidden.iter().any(|(x, _)| *x == form) {
                hidden.push((form, name));
            }
        }
    }
    // Longest first: a folder inside another is replaced whole.
    hidden.sort_by_key(|(s, _)| std::cmp::Reverse(s.len()));
}

fn redact(mut message: String, hidden: &[(String, &'static str)]) -> String {
    for (path, name) in hidden {
        if message.contains(path.as_str()) {
            message = message.replace(path.as_str(), name);
        }
    }
    message
}

/// The message with its chain of causes (see `moe_core::error::chain`), this server's folders hidden.
fn message(e: &ApiError) -> String {
    redact(moe_core::error::chain(e), &moe_core::error::read(&HIDDEN))
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        metrics::counter!("moe_errors_total", "code" => code).increment(1);
        let message = message(&self);
        if status.is_server_error() && status != StatusCode::SERVICE_UNAVAILABLE {
            tracing::error!(error = %message, "request failed");
        }
        let body = Json(json!({"error": {"code": code, "message": message}}));
        if status == StatusCode::SERVICE_UNAVAILABLE {
            super::audit::overloaded(code);
            return (status, [(header::RETRY_AFTER, "1")], body).into_response();
        }
        if status == StatusCode::TOO_MANY_REQUESTS {
            return (status, [(header::RETRY_AFTER, "5")], body).into_response();
        }
        if status == StatusCode::UNAUTHORIZED {
            return (status, [(header::WWW_AUTHENTICATE, "Bearer")], body).into_response();
        }
        (status, body).into_response()
    }
}

#[cfg(test)]
mod redaction_tests {
    use super::*;

    #[test]
    fn server_folders_are_named_by_their_role() {
        let hidden = vec![("/srv/models/inner".to_string(), "<x>"), ("/srv/models".to_string(), "<models>")];
        let m = redact("invalid bundle: /srv/models/up3/model.onnx: sha256 mismatch".into(), &hidden);
        assert_eq!(m, "invalid bundle: <models>/up3/model.onnx: sha256 mismatch");
        assert_eq!(redact("/srv/models/inner/a".into(), &hidden), "<x>/a");
        assert_eq!(redact("models/up3: cannot open".into(), &hidden), "models/up3: cannot open");
    }
}
