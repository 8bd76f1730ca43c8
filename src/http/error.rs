//! The one place where errors become HTTP statuses, with one JSON shape:
//! `{"error": {"code": "...", "message": "..."}}`.

use axum::Json;
use axum::extract::FromRequest;
use axum::extract::rejection::JsonRejection;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::Error;

impl Error {
    pub fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            Error::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            Error::UnsupportedMediaType(_) => (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type"),
            Error::PayloadTooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            Error::UnknownClass(_) => (StatusCode::NOT_FOUND, "unknown_class"),
            Error::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            Error::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            Error::InvalidBundle { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "invalid_bundle"),
            Error::QualityGate(_) => (StatusCode::UNPROCESSABLE_ENTITY, "quality_gate_failed"),
            Error::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            Error::Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized"),
            Error::AdminDisabled => (StatusCode::FORBIDDEN, "admin_disabled"),
            Error::InvalidRegistry { .. } => (StatusCode::INTERNAL_SERVER_ERROR, "invalid_registry"),
            Error::Overloaded(_) => (StatusCode::SERVICE_UNAVAILABLE, "overloaded"),
            Error::NotReady(_) => (StatusCode::SERVICE_UNAVAILABLE, "not_ready"),
            Error::Timeout(_) => (StatusCode::SERVICE_UNAVAILABLE, "timeout"),
            Error::Inference(_) | Error::Runtime(_) | Error::Io { .. } => {
                (StatusCode::INTERNAL_SERVER_ERROR, "internal")
            }
        }
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        metrics::counter!("moe_errors_total", "code" => code).increment(1);
        if status.is_server_error() && status != StatusCode::SERVICE_UNAVAILABLE {
            tracing::error!(error = %self, "request failed");
        }
        let body = Json(json!({"error": {"code": code, "message": self.to_string()}}));
        if status == StatusCode::SERVICE_UNAVAILABLE {
            return (status, [(header::RETRY_AFTER, "1")], body).into_response();
        }
        if status == StatusCode::UNAUTHORIZED {
            return (status, [(header::WWW_AUTHENTICATE, "Bearer")], body).into_response();
        }
        (status, body).into_response()
    }
}

/// `Json` whose rejections use the service's error shape (400 / 413 / 415).
#[derive(Debug, FromRequest)]
#[from_request(via(axum::Json), rejection(Error))]
pub struct ApiJson<T>(pub T);

impl From<JsonRejection> for Error {
    fn from(r: JsonRejection) -> Self {
        match r.status() {
            StatusCode::PAYLOAD_TOO_LARGE => Error::PayloadTooLarge,
            StatusCode::UNSUPPORTED_MEDIA_TYPE => {
                Error::UnsupportedMediaType("expected Content-Type: application/json".into())
            }
            _ => Error::BadRequest(format!("invalid JSON body: {}", r.body_text())),
        }
    }
}
