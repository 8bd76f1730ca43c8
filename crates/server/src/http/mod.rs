//! The HTTP layer: router, thin handlers, DTOs and their validation, the JSON error shape,
//! metrics. It calls the core (classify, snapshots) and the control parts (swaps, shadows, jobs);
//! nothing below it imports it.

pub mod audit;
pub mod console;
pub mod deadline;
pub mod dto;
pub mod error;
pub mod handlers;
pub mod limits;
pub mod prometheus;
pub mod protocol_errors;
pub mod server;
pub mod slots;
pub mod state;
pub mod validation;

pub use limits::{MAX_HEADER_BYTES, MAX_HEADERS, MAX_URI_BYTES, TRAIN_BODY_BYTES};
pub use state::AppState;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::handler::Handler;
use axum::middleware;
use axum::routing::{get, post, put};
use std::time::Duration;

use tower_http::trace::TraceLayer;

/// Refuse an oversized request head before any routing, in the one error shape.
async fn head_limits(req: axum::extract::Request, next: middleware::Next) -> axum::response::Response {
    use axum::response::IntoResponse;
    let uri = req.uri().to_string().len();
    if uri > MAX_URI_BYTES {
        return error::ApiError::UriTooLong(uri).into_response();
    }
    let headers = req.headers();
    let bytes: usize = headers.iter().map(|(k, v)| k.as_str().len() + v.len()).sum();
    if headers.len() > MAX_HEADERS || bytes > MAX_HEADER_BYTES {
        let why = format!(
            "{} header fields, {bytes} bytes: at most {MAX_HEADERS} fields and {MAX_HEADER_BYTES} bytes",
            headers.len()
        );
        return error::ApiError::HeadersTooLarge(why).into_response();
    }
    next.run(req).await
}

/// Every (method, path) the router serves; a test keeps openapi.yaml equal to this list.
pub const ROUTES: &[(&str, &str)] = &[
    ("get", "/"),
    ("get", "/console.js"),
    ("get", "/console.css"),
    ("post", "/classify"),
    ("get", "/experts"),
    ("get", "/experts/{class}"),
    ("put", "/experts/{class}"),
    ("delete", "/experts/{class}"),
    ("get", "/experts/{class}/history"),
    ("post", "/experts/{class}/rollback"),
    ("post", "/experts/{class}/select"),
    ("post", "/experts/{class}/train"),
    ("put", "/experts/{class}/shadow"),
    ("delete", "/experts/{class}/shadow"),
    ("post", "/experts/{class}/shadow/promote"),
    ("get", "/bundles"),
    ("post", "/feedback"),
    ("get", "/unknowns"),
    ("post", "/unknowns/{group}/teach"),
    ("get", "/jobs/{id}"),
    ("get", "/fleet"),
    ("get", "/healthz"),
    ("get", "/readyz"),
    ("get", "/metrics"),
    ("get", "/openapi.yaml"),
];

pub fn app(state: AppState) -> Router {
    let limit = state.core.limits.max_body_bytes;
    let upload_limit = state.core.limits.max_upload_bytes;
    let deadlines = (
        Duration::from_millis(state.core.limits.body_timeout_ms.max(1)),
        Duration::from_millis(state.core.limits.body_deadline_ms.max(1)),
    );
    Router::new()
        .route("/", get(console::index))
        .route("/console.js", get(console::script))
        .route("/console.css", get(console::style))
        .route("/classify", post(handlers::classify))
        .route("/experts", get(handlers::list_experts))
        .route(
            "/experts/{class}",
            get(handlers::get_expert)
                .put(handlers::swap_expert.layer(DefaultBodyLimit::max(upload_limit)))
                .delete(handlers::delete_expert),
        )
        .route("/experts/{class}/history", get(handlers::history))
        .route("/experts/{class}/rollback", post(handlers::rollback))
        .route("/experts/{class}/select", post(handlers::select))
        .route("/experts/{class}/train", post(handlers::train.layer(DefaultBodyLimit::max(TRAIN_BODY_BYTES))))
        .route("/experts/{class}/shadow", put(handlers::attach_shadow).delete(handlers::drop_shadow))
        .route("/experts/{class}/shadow/promote", post(handlers::promote_shadow))
        .route("/bundles", get(handlers::list_bundles))
        .route("/feedback", post(handlers::feedback))
        .route("/unknowns", get(handlers::unknowns))
        .route("/unknowns/{group}/teach", post(handlers::teach_unknowns))
        .route("/jobs/{id}", get(handlers::job))
        .route("/fleet", get(handlers::fleet))
        .route("/healthz", get(handlers::healthz))
        .route("/readyz", get(handlers::readyz))
        .route("/metrics", get(handlers::metrics))
        .route("/openapi.yaml", get(handlers::openapi))
        .fallback(handlers::not_found)
        .method_not_allowed_fallback(handlers::method_not_allowed)
        .layer(DefaultBodyLimit::max(limit))
        .layer(middleware::from_fn_with_state(deadlines, deadline::body_deadlines))
        .layer(middleware::from_fn(head_limits))
        .layer(middleware::from_fn(audit::audit))
        .layer(middleware::from_fn(prometheus::track))
        // 5xx answers are logged by the error mapping (503s rate-limited), not once more here.
        .layer(TraceLayer::new_for_http().on_failure(()))
        .with_state(state)
}
