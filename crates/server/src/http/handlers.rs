//! Thin handlers: parse, validate into typed values, call the core or a control part, shape the
//! answer.

use std::time::Instant;

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::IntoResponse;
use http_body_util::BodyExt;
use serde_json::{Value, json};

use super::dto::{
    BundleList, BundlesQuery, ClassifyQuery, ClassifyRequest, ClassifyResponse, ExpertInfo, ExpertList, FeedbackBody,
    FeedbackOutcome, History, Job, SelectBody, ShadowBody, ShadowInfo, SwapBody, SwapOutcome, TeachBody, TrainBody,
    TrainQuery, UnknownsQuery, UploadQuery,
};
use super::error::{ApiError, ApiResult, BODY_LIMIT, TRAIN_LIMIT, UPLOAD_LIMIT};
use super::state::AppState;
use super::validation::{Admin, ApiJson, ApiPath, ApiQuery, Object};
use crate::control::fleet::FleetStatus;
use crate::control::swap::Swap;
use crate::control::unknowns::{self, Listing};
use crate::control::{shadow, swap, train, upload};
use moe_core::Error;

pub async fn classify(
    State(s): State<AppState>,
    ApiQuery(q): ApiQuery<ClassifyQuery>,
    ApiJson(req): ApiJson<ClassifyRequest>,
) -> ApiResult<Json<ClassifyResponse>> {
    let started = Instant::now();
    let valid = req.validate(&s.core.limits)?;
    let (results, generation) = s.core.classify(valid.texts).await?;
    s.unknowns.observe(&results);
    let results = results.iter().map(|r| q.experts.answer(r)).collect();
    Ok(Json(ClassifyResponse { results, took_ms: started.elapsed().as_secs_f64() * 1e3, generation }))
}

pub async fn list_experts(State(s): State<AppState>) -> ApiResult<Json<ExpertList>> {
    let mut list = ExpertList::from(s.core.snapshot()?.as_ref());
    list.experts = list.experts.into_iter().map(|e| e.with_live(&s.feedback)).collect();
    Ok(Json(list))
}

pub async fn get_expert(State(s): State<AppState>, ApiPath(class): ApiPath<String>) -> ApiResult<Json<ExpertInfo>> {
    let set = s.core.snapshot()?;
    let e = set.get(&class).ok_or(Error::UnknownClass(class))?;
    Ok(Json(ExpertInfo::in_set(e, &set).with_live(&s.feedback)))
}

/// A caller tells the true label of a text: scored by the current set and kept in the log.
pub async fn feedback(
    State(s): State<AppState>,
    ApiJson(req): ApiJson<FeedbackBody>,
) -> ApiResult<Json<FeedbackOutcome>> {
    let (text, label) = req.validate(&s.core.limits)?;
    let e = s.feedback.record(&s.core, text, label).await?;
    Ok(Json(FeedbackOutcome {
        recorded: true,
        served_label: e.experts.iter().any(|x| x.class == e.label),
        correct: e.predicted.as_deref() == Some(e.label.as_str()),
        label: e.label,
        predicted: e.predicted,
        generation: e.generation,
        entries: s.feedback.len(),
    }))
}

const ARCHIVE_TYPES: [&str; 3] = ["application/gzip", "application/x-gzip", "application/x-tar+gzip"];

/// A JSON body names a bundle in the model root; an `application/gzip` body is a bundle archive,
/// streamed to a temporary file (never held whole in memory).
pub async fn swap_expert(
    _: Admin,
    State(s): State<AppState>,
    ApiPath(class): ApiPath<String>,
    ApiQuery(q): ApiQuery<UploadQuery>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Json<SwapOutcome>> {
    let ct = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let outcome = if ARCHIVE_TYPES.iter().any(|t| ct.starts_with(t)) {
        let archive = receive_archive(&s, body).await?;
        let guards = Swap { expected_version: q.expected_version, ..Default::default() };
        upload::swap_archive(&s.core, &class, archive, guards).await?
    } else if ct.starts_with("application/json") {
        let bytes =
            axum::body::to_bytes(body, s.core.limits.max_body_bytes).await.map_err(|e| body_error(e, BODY_LIMIT))?;
        swap::swap(&s.core, &class, Object::<SwapBody>::from_slice(&bytes)?.validate()?).await?
    } else {
        return Err(ApiError::UnsupportedMediaType(
            "expected application/json (a bundle name) or application/gzip (a bundle archive)".into(),
        ));
    };
    Ok(Json(outcome))
}

/// 413 when a body went over its limit, 400 when it could not be read.
fn body_error(e: axum::Error, limit: &'static str) -> ApiError {
    if super::deadline::is_body_timeout(&e) {
        return ApiError::RequestTimeout;
    }
    if super::deadline::caused_by::<http_body_util::LengthLimitError>(&e) {
        ApiError::PayloadTooLarge(limit)
    } else {
        ApiError::bad_request(format!("cannot read the request body: {e}"))
    }
}

/// Stream an archive body into a temporary file of the model root, at most --max-upload-bytes,
/// writing in 1 MiB pieces on blocking threads.
async fn receive_archive(s: &AppState, body: Body) -> ApiResult<upload::Incoming> {
    let (root, limit) = (s.core.root().to_path_buf(), s.core.limits.max_upload_bytes as u64);
    let mut incoming =
        tokio::task::spawn_blocking(move || upload::Incoming::create(&root, limit)).await.map_err(Error::from)??;
    let mut body = body;
    let mut buf: Vec<u8> = Vec::with_capacity(1 << 20);
    loop {
        let frame = body.frame().await.transpose().map_err(|e| body_error(e, UPLOAD_LIMIT))?;
        let done = frame.is_none();
        if let Some(data) = frame.and_then(|f| f.into_data().ok()) {
            buf.extend_from_slice(&data);
        }
        if buf.len() >= 1 << 20 || (done && !buf.is_empty()) {
            let chunk = std::mem::take(&mut buf);
            let (back, ok) = tokio::task::spawn_blocking(move || {
                let ok = incoming.write(&chunk);
                (incoming, ok)
            })
            .await
            .map_err(Error::from)?;
            incoming = back;
            if !ok? {
                return Err(ApiError::PayloadTooLarge(UPLOAD_LIMIT));
            }
        }
        if done {
            return Ok(incoming);
        }
    }
}

pub async fn delete_expert(
    _: Admin,
    State(s): State<AppState>,
    ApiPath(class): ApiPath<String>,
) -> ApiResult<Json<SwapOutcome>> {
    Ok(Json(swap::delete(&s.core, &class).await?))
}

pub async fn rollback(
    _: Admin,
    State(s): State<AppState>,
    ApiPath(class): ApiPath<String>,
) -> ApiResult<Json<SwapOutcome>> {
    Ok(Json(swap::rollback(&s.core, &class).await?))
}

pub async fn select(
    _: Admin,
    State(s): State<AppState>,
    ApiPath(class): ApiPath<String>,
    ApiJson(req): ApiJson<SelectBody>,
) -> ApiResult<(StatusCode, Json<Job>)> {
    let labelled = req.use_feedback.then(|| s.feedback.labelled());
    Ok((StatusCode::ACCEPTED, Json(s.jobs.start_select(&class, req.validate(labelled)?).await?)))
}

/// Train a linear head for the class from labelled texts (JSON, or a `text,label` CSV with the
/// options in the query): a background job (202 + the job).
pub async fn train(
    _: Admin,
    State(s): State<AppState>,
    ApiPath(class): ApiPath<String>,
    ApiQuery(q): ApiQuery<TrainQuery>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<(StatusCode, Json<Job>)> {
    let ct = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let bytes =
        axum::body::to_bytes(body, super::limits::TRAIN_BODY_BYTES).await.map_err(|e| body_error(e, TRAIN_LIMIT))?;
    let req = if ct.starts_with("text/csv") {
        TrainBody::from_csv(&bytes, &class, q)?
    } else if ct.starts_with("application/json") {
        Object::<TrainBody>::from_slice(&bytes)?
    } else {
        return Err(ApiError::UnsupportedMediaType("expected application/json or text/csv (text,label)".into()));
    };
    let labelled = req.use_feedback.then(|| s.feedback.labelled());
    let req = req.validate(&s.core.limits, super::audit::fingerprint_of(&headers), labelled)?;
    Ok((StatusCode::ACCEPTED, Json(train::start(&s.jobs, &s.core, &class, req).await?)))
}

/// The declined texts grouped into candidate classes (on a blocking thread: a matrix product).
pub async fn unknowns(
    _: Admin,
    State(s): State<AppState>,
    ApiQuery(q): ApiQuery<UnknownsQuery>,
) -> ApiResult<Json<Listing>> {
    let p = q.validate()?;
    let trunk = s.core.snapshot()?.primary_trunk().map(str::to_string);
    let store = s.unknowns.clone();
    Ok(Json(tokio::task::spawn_blocking(move || store.group(trunk.as_deref(), p).0).await.map_err(Error::from)?))
}

/// Teach a group of declined texts as a new class: a training job (202 + the job).
pub async fn teach_unknowns(
    _: Admin,
    State(s): State<AppState>,
    ApiPath(group): ApiPath<String>,
    headers: HeaderMap,
    ApiJson(req): ApiJson<TeachBody>,
) -> ApiResult<(StatusCode, Json<Job>)> {
    let t = req.validate(&s.core.limits, super::audit::fingerprint_of(&headers))?;
    Ok((StatusCode::ACCEPTED, Json(unknowns::teach(&s.unknowns, &s.jobs, &s.core, &group, t).await?)))
}

pub async fn job(State(s): State<AppState>, ApiPath(id): ApiPath<u64>) -> ApiResult<Json<Job>> {
    Ok(Json(s.jobs.get(id).ok_or_else(|| Error::NotFound(format!("job {id}")))?))
}

pub async fn attach_shadow(
    _: Admin,
    State(s): State<AppState>,
    ApiPath(class): ApiPath<String>,
    ApiJson(req): ApiJson<ShadowBody>,
) -> ApiResult<Json<ShadowInfo>> {
    Ok(Json(ShadowInfo::from(shadow::attach(&s.core, &class, &req.bundle).await?.as_ref())))
}

pub async fn drop_shadow(
    _: Admin,
    State(s): State<AppState>,
    ApiPath(class): ApiPath<String>,
) -> ApiResult<Json<ShadowInfo>> {
    Ok(Json(ShadowInfo::from(shadow::drop(&s.core, &class).await?.as_ref())))
}

pub async fn promote_shadow(
    _: Admin,
    State(s): State<AppState>,
    ApiPath(class): ApiPath<String>,
) -> ApiResult<Json<SwapOutcome>> {
    Ok(Json(shadow::promote(&s.core, &class).await?))
}

/// The bundle folders of the model root (what a swap or a shadow may name), optionally one class's.
pub async fn list_bundles(
    State(s): State<AppState>,
    ApiQuery(q): ApiQuery<BundlesQuery>,
) -> ApiResult<Json<BundleList>> {
    let set = s.core.snapshot()?;
    Ok(Json(BundleList::new(s.core.bundles().await?, &set, q.class.as_deref())))
}

pub async fn history(State(s): State<AppState>, ApiPath(class): ApiPath<String>) -> ApiResult<Json<History>> {
    let history = s.core.history(&class)?;
    Ok(Json(History { class, history }))
}

pub async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

pub async fn readyz(State(s): State<AppState>) -> ApiResult<Json<Value>> {
    let set = s.core.snapshot()?;
    Ok(Json(json!({"status": "ready", "experts": set.experts.len(), "generation": set.generation,
        "revision": set.revision, "registry": s.core.store().kind()})))
}

/// The replicas sharing this one's registry and whether they serve its latest revision.
pub async fn fleet(State(s): State<AppState>) -> ApiResult<Json<FleetStatus>> {
    Ok(Json(s.fleet.status().await?))
}

pub async fn metrics(State(s): State<AppState>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], s.metrics.render())
}

pub async fn openapi() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/yaml")], include_str!("../../../../openapi.yaml"))
}

pub async fn not_found() -> ApiError {
    Error::NotFound("no such route".into()).into()
}

pub async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}
