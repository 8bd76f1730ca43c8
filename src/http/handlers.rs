//! Thin handlers: parse, validate into typed values, call the core or a control part, shape the
//! answer.

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
use super::dto::{
    ClassifyRequest, ClassifyResponse, ExpertInfo, ExpertList, History, Job, SelectBody, ShadowBody, ShadowInfo,
    SwapBody, SwapOutcome, UploadQuery,
};
use super::error::{ApiError, ApiJson, ApiResult};
use crate::Error;
use crate::control::swap::Swap;
use crate::control::{shadow, swap, upload};

pub async fn classify(
    State(s): State<AppState>,
    ApiJson(req): ApiJson<ClassifyRequest>,
) -> ApiResult<Json<ClassifyResponse>> {
    let started = Instant::now();
    let valid = req.validate(&s.core.limits)?;
    let (results, generation) = s.core.classify(valid.texts).await?;
    Ok(Json(ClassifyResponse { results, took_ms: started.elapsed().as_secs_f64() * 1e3, generation }))
}

pub async fn list_experts(State(s): State<AppState>) -> ApiResult<Json<ExpertList>> {
    Ok(Json(ExpertList::from(s.core.snapshot()?.as_ref())))
}

pub async fn get_expert(State(s): State<AppState>, Path(class): Path<String>) -> ApiResult<Json<ExpertInfo>> {
    let set = s.core.snapshot()?;
    let e = set.get(&class).ok_or(Error::UnknownClass(class))?;
    Ok(Json(ExpertInfo::in_set(e, &set)))
}

const ARCHIVE_TYPES: [&str; 3] = ["application/gzip", "application/x-gzip", "application/x-tar+gzip"];

/// A JSON body names a bundle in the model root; an `application/gzip` body is a bundle archive.
pub async fn swap_expert(
    _: Admin,
    State(s): State<AppState>,
    Path(class): Path<String>,
    Query(q): Query<UploadQuery>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<SwapOutcome>> {
    let body = body.map_err(|r| match r.status() {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::PayloadTooLarge,
        _ => ApiError::bad_request(r.body_text()),
    })?;
    let ct = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let outcome = if ARCHIVE_TYPES.iter().any(|t| ct.starts_with(t)) {
        let guards = Swap { expected_version: q.expected_version, ..Default::default() };
        upload::swap_archive(&s.core, &class, body, guards).await?
    } else if ct.starts_with("application/json") {
        let req: SwapBody =
            serde_json::from_slice(&body).map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))?;
        swap::swap(&s.core, &class, req.validate()?).await?
    } else {
        return Err(ApiError::UnsupportedMediaType(
            "expected application/json (a bundle name) or application/gzip (a bundle archive)".into(),
        ));
    };
    Ok(Json(outcome))
}

pub async fn delete_expert(
    _: Admin,
    State(s): State<AppState>,
    Path(class): Path<String>,
) -> ApiResult<Json<SwapOutcome>> {
    Ok(Json(swap::delete(&s.core, &class).await?))
}

pub async fn rollback(_: Admin, State(s): State<AppState>, Path(class): Path<String>) -> ApiResult<Json<SwapOutcome>> {
    Ok(Json(swap::rollback(&s.core, &class).await?))
}

pub async fn select(
    _: Admin,
    State(s): State<AppState>,
    Path(class): Path<String>,
    ApiJson(req): ApiJson<SelectBody>,
) -> ApiResult<(StatusCode, Json<Job>)> {
    Ok((StatusCode::ACCEPTED, Json(s.jobs.start_select(&class, req.validate()?).await?)))
}

pub async fn job(State(s): State<AppState>, Path(id): Path<u64>) -> ApiResult<Json<Job>> {
    Ok(Json(s.jobs.get(id).ok_or_else(|| Error::NotFound(format!("job {id}")))?))
}

pub async fn attach_shadow(
    _: Admin,
    State(s): State<AppState>,
    Path(class): Path<String>,
    ApiJson(req): ApiJson<ShadowBody>,
) -> ApiResult<Json<ShadowInfo>> {
    Ok(Json(ShadowInfo::from(shadow::attach(&s.core, &class, &req.bundle).await?.as_ref())))
}

pub async fn drop_shadow(
    _: Admin,
    State(s): State<AppState>,
    Path(class): Path<String>,
) -> ApiResult<Json<ShadowInfo>> {
    Ok(Json(ShadowInfo::from(shadow::drop(&s.core, &class).await?.as_ref())))
}

pub async fn promote_shadow(
    _: Admin,
    State(s): State<AppState>,
    Path(class): Path<String>,
) -> ApiResult<Json<SwapOutcome>> {
    Ok(Json(shadow::promote(&s.core, &class).await?))
}

pub async fn history(State(s): State<AppState>, Path(class): Path<String>) -> ApiResult<Json<History>> {
    let history = s.core.history(&class)?;
    Ok(Json(History { class, history }))
}

pub async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

pub async fn readyz(State(s): State<AppState>) -> ApiResult<Json<Value>> {
    let set = s.core.snapshot()?;
    Ok(Json(json!({"status": "ready", "experts": set.experts.len(), "generation": set.generation})))
}

pub async fn metrics(State(s): State<AppState>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], s.metrics.render())
}

pub async fn openapi() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/yaml")], include_str!("../../openapi.yaml"))
}

pub async fn not_found() -> ApiError {
    Error::NotFound("no such route".into()).into()
}

pub async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}
