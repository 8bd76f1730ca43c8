//! Thin handlers: parse, call the core, shape the answer.

use std::time::Instant;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::IntoResponse;
use serde_json::{Value, json};

use super::AppState;
use super::auth::Admin;
use super::dto::{ClassifyRequest, ClassifyResponse, ExpertInfo, ExpertList};
use super::error::ApiJson;
use crate::admin::{SwapOutcome, SwapRequest};
use crate::experts::registry::HistoryEntry;
use crate::jobs::{Job, SelectRequest};
use crate::shadow::ShadowInfo;
use crate::{Error, Result};

pub async fn classify(
    State(s): State<AppState>,
    ApiJson(req): ApiJson<ClassifyRequest>,
) -> Result<Json<ClassifyResponse>> {
    let started = Instant::now();
    let texts = req.into_texts()?;
    let (results, generation) = s.core.classify(texts).await?;
    Ok(Json(ClassifyResponse { results, took_ms: started.elapsed().as_secs_f64() * 1e3, generation }))
}

pub async fn list_experts(State(s): State<AppState>) -> Result<Json<ExpertList>> {
    Ok(Json(ExpertList::from(s.core.snapshot()?.as_ref())))
}

pub async fn get_expert(State(s): State<AppState>, Path(class): Path<String>) -> Result<Json<ExpertInfo>> {
    let set = s.core.snapshot()?;
    let e = set.get(&class).ok_or(Error::UnknownClass(class))?;
    Ok(Json(ExpertInfo::in_set(e, &set)))
}

#[derive(serde::Deserialize)]
pub struct UploadQuery {
    pub expected_version: Option<String>,
}

/// A JSON body names a bundle in the model root; an `application/gzip` body is a bundle archive.
pub async fn swap_expert(
    _: Admin,
    State(s): State<AppState>,
    Path(class): Path<String>,
    Query(q): Query<UploadQuery>,
    headers: HeaderMap,
    body: std::result::Result<Bytes, BytesRejection>,
) -> Result<Json<SwapOutcome>> {
    let body = body.map_err(|r| match r.status() {
        StatusCode::PAYLOAD_TOO_LARGE => Error::PayloadTooLarge,
        _ => Error::BadRequest(r.body_text()),
    })?;
    let ct = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let outcome =
        if ["application/gzip", "application/x-gzip", "application/x-tar+gzip"].iter().any(|t| ct.starts_with(t)) {
            let guards = SwapRequest { expected_version: q.expected_version, ..Default::default() };
            s.core.swap_archive(&class, body, guards).await?
        } else if ct.starts_with("application/json") {
            let req: SwapRequest =
                serde_json::from_slice(&body).map_err(|e| Error::BadRequest(format!("invalid JSON body: {e}")))?;
            s.core.swap(&class, req).await?
        } else {
            return Err(Error::UnsupportedMediaType(
                "expected application/json (a bundle name) or application/gzip (a bundle archive)".into(),
            ));
        };
    Ok(Json(outcome))
}

pub async fn delete_expert(
    _: Admin,
    State(s): State<AppState>,
    Path(class): Path<String>,
) -> Result<Json<SwapOutcome>> {
    Ok(Json(s.core.delete(&class).await?))
}

pub async fn rollback(_: Admin, State(s): State<AppState>, Path(class): Path<String>) -> Result<Json<SwapOutcome>> {
    Ok(Json(s.core.rollback(&class).await?))
}

pub async fn select(
    _: Admin,
    State(s): State<AppState>,
    Path(class): Path<String>,
    ApiJson(req): ApiJson<SelectRequest>,
) -> Result<(StatusCode, Json<Job>)> {
    Ok((StatusCode::ACCEPTED, Json(s.core.start_select(&class, req)?)))
}

pub async fn job(State(s): State<AppState>, Path(id): Path<u64>) -> Result<Json<Job>> {
    s.core.jobs.get(id).map(Json).ok_or_else(|| Error::NotFound(format!("job {id}")))
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShadowRequest {
    pub bundle: String,
}

pub async fn attach_shadow(
    _: Admin,
    State(s): State<AppState>,
    Path(class): Path<String>,
    ApiJson(req): ApiJson<ShadowRequest>,
) -> Result<Json<ShadowInfo>> {
    Ok(Json(s.core.attach_shadow(&class, &req.bundle).await?))
}

pub async fn drop_shadow(_: Admin, State(s): State<AppState>, Path(class): Path<String>) -> Result<Json<ShadowInfo>> {
    Ok(Json(s.core.drop_shadow(&class)?))
}

pub async fn promote_shadow(
    _: Admin,
    State(s): State<AppState>,
    Path(class): Path<String>,
) -> Result<Json<SwapOutcome>> {
    Ok(Json(s.core.promote_shadow(&class).await?))
}

pub async fn history(State(s): State<AppState>, Path(class): Path<String>) -> Result<Json<Value>> {
    let h: Vec<HistoryEntry> = s.core.history(&class)?;
    Ok(Json(json!({"class": class, "history": h})))
}

pub async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

pub async fn readyz(State(s): State<AppState>) -> Result<Json<Value>> {
    let set = s.core.snapshot()?;
    Ok(Json(json!({"status": "ready", "experts": set.experts.len(), "generation": set.generation})))
}

pub async fn metrics(State(s): State<AppState>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], s.metrics.render())
}

pub async fn openapi() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/yaml")], include_str!("../../openapi.yaml"))
}

pub async fn not_found() -> Error {
    Error::NotFound("no such route".into())
}

pub async fn method_not_allowed() -> Error {
    Error::MethodNotAllowed
}
