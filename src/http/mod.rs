//! The HTTP layer: router, thin handlers, DTOs and their validation, the JSON error shape,
//! metrics. It calls the core (classify, snapshots) and the control parts (swaps, shadows, jobs);
//! nothing below it imports it.

pub mod audit;
pub mod auth;
pub mod canned;
pub mod console;
pub mod deadline;
pub mod dto;
pub mod error;
pub mod handlers;
pub mod metrics;
pub mod server;
pub mod validate;

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::handler::Handler;
use axum::middleware;
use axum::routing::{get, post, put};
use std::time::Duration;

use tower_http::trace::TraceLayer;

use crate::control::feedback::FeedbackLog;
use crate::control::fleet::{Fleet, Replica};
use crate::control::jobs::Jobs;
use crate::core::Core;
use crate::eval::data::DataArgs;

#[derive(Clone)]
pub struct AppState {
    pub core: Arc<Core>,
    /// Selection jobs (evaluate on the validation split of the configured data).
    pub jobs: Arc<Jobs>,
    pub metrics: metrics_exporter_prometheus::PrometheusHandle,
    /// Bearer token of the admin routes; None disables them (403).
    pub admin_token: Option<Arc<str>>,
    /// Labelled texts sent back by callers, with each expert's live metrics on them.
    pub feedback: Arc<FeedbackLog>,
    /// This replica and, with a shared registry, the others (`GET /fleet`).
    pub fleet: Arc<Fleet>,
}

impl AppState {
    /// State without selection data (selection jobs answer 400) and without admin routes (403).
    pub fn new(core: Arc<Core>) -> AppState {
        error::hide_paths(&core.paths.models, &core.paths.state);
        let jobs = Jobs::new(core.clone(), None);
        let feedback = FeedbackLog::open(&core.paths.state, core.limits.feedback_cap);
        let fleet = Fleet::new(core.clone(), Replica { id: "local".into(), address: String::new() });
        AppState { core, jobs, metrics: metrics::prometheus(), admin_token: None, feedback, fleet }
    }

    /// This replica's part in a fleet (its identity; following starts with `Fleet::start`).
    pub fn with_fleet(mut self, fleet: Arc<Fleet>) -> AppState {
        self.fleet = fleet;
        self
    }

    /// Labelled data whose validation split selection jobs evaluate on.
    pub fn with_data(mut self, data: Option<DataArgs>) -> AppState {
        self.jobs = Jobs::new(self.core.clone(), data);
        self
    }

    pub fn with_admin_token(mut self, token: Option<String>) -> AppState {
        self.admin_token = token.filter(|t| !t.is_empty()).map(Arc::from);
        self
    }
}

/// Longest request target (path and query) answered; longer ones get a JSON 414.
pub const MAX_URI_BYTES: usize = 8 * 1024;
/// Most header fields, and most bytes of all header names and values, answered; more get a JSON
/// 431. The HTTP/1 parser lets up to `server::PARSER_MAX_HEADERS` fields through so that these
/// answers come from here, in the error shape, not from hyper (an empty body). Beyond the parser's
/// own limits (that many fields, or a head over hyper's ~400 KB buffer) hyper still answers 431
/// with no body: the one answer that is not JSON.
pub const MAX_HEADERS: usize = 100;
pub const MAX_HEADER_BYTES: usize = 32 * 1024;

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

/// Largest `POST /experts/{class}/train` body: 20,000 titles of ~100 bytes with JSON quoting.
pub const TRAIN_BODY_BYTES: usize = 8 << 20;

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
        .layer(middleware::from_fn(metrics::track))
        // 5xx answers are logged by the error mapping (503s rate-limited), not once more here.
        .layer(TraceLayer::new_for_http().on_failure(()))
        .with_state(state)
}
