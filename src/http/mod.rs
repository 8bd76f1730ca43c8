//! The HTTP layer: router, thin handlers, DTOs, the JSON error shape, metrics.

pub mod dto;
pub mod error;
pub mod handlers;
pub mod metrics;

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::middleware;
use axum::routing::{get, post};
use tower_http::trace::TraceLayer;

use crate::core::Core;

#[derive(Clone)]
pub struct AppState {
    pub core: Arc<Core>,
    pub metrics: metrics_exporter_prometheus::PrometheusHandle,
}

impl AppState {
    pub fn new(core: Arc<Core>) -> AppState {
        AppState {
            core,
            metrics: metrics::prometheus(),
        }
    }
}

/// Every (method, path) the router serves; a test keeps openapi.yaml equal to this list.
pub const ROUTES: &[(&str, &str)] = &[
    ("post", "/classify"),
    ("get", "/experts"),
    ("get", "/experts/{class}"),
    ("get", "/healthz"),
    ("get", "/readyz"),
    ("get", "/metrics"),
    ("get", "/openapi.yaml"),
];

pub fn app(state: AppState) -> Router {
    let limit = state.core.limits.max_body_bytes;
    Router::new()
        .route("/classify", post(handlers::classify))
        .route("/experts", get(handlers::list_experts))
        .route("/experts/{class}", get(handlers::get_expert))
        .route("/healthz", get(handlers::healthz))
        .route("/readyz", get(handlers::readyz))
        .route("/metrics", get(handlers::metrics))
        .route("/openapi.yaml", get(handlers::openapi))
        .fallback(handlers::not_found)
        .method_not_allowed_fallback(handlers::method_not_allowed)
        .layer(DefaultBodyLimit::max(limit))
        .layer(middleware::from_fn(metrics::track))
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}
