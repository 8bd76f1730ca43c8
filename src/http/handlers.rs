//! Thin handlers: parse, call the core, shape the answer.

use std::time::Instant;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
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

pub async fn swap_expert(
    _: Admin,
    State(s): State<AppState>,
    Path(class): Path<String>,
    ApiJson(req): ApiJson<SwapRequest>,
) -> Result<Json<SwapOutcome>> {
    Ok(Json(s.core.swap(&class, req).await?))
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
