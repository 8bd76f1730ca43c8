//! What handlers take from a request, checked at the edge: the JSON body, path and query in the
//! one error shape (400 / 413 / 415), the admin token, and validation — request bodies become
//! typed values the core can trust (like TGI's `Validation` → `ValidGenerateRequest`). Every limit
//! of a request is checked here, once. Read routes stay open; mutating ones take [`Admin`].

use std::fmt;
use std::marker::PhantomData;

use axum::Json;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::StatusCode;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use serde::de::value::MapAccessDeserializer;
use serde::de::{DeserializeOwned, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};
use subtle::ConstantTimeEq;

use super::dto::{
    ClassifyRequest, FeedbackBody, SelectBody, SwapBody, TeachBody, TrainBody, TrainQuery, UnknownsQuery,
};
use super::error::{ApiError, ApiResult, BODY_LIMIT};
use super::state::AppState;
use crate::control::jobs::Selection;
use crate::control::swap::{MinMetric, Swap};
use crate::control::train::{DEFAULT_MAX_EER, TrainRequest};
use crate::control::unknowns::{GroupParams, Teach};
use moe_core::config::Limits;

/// `Json` whose rejections use the service's error shape (400 / 413 / 415), and which takes only a
/// JSON object (see [`Object`]).
#[derive(Debug)]
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let Json(Object(v)) = Json::<Object<T>>::from_request(req, state).await?;
        Ok(ApiJson(v))
    }
}

/// A request body parsed as a JSON object only. serde's derived structs also accept an array of
/// their fields in order (`[]` is a `SelectBody` with every field left out), which the contract
/// (openapi.yaml: `type: object`) refuses; schemathesis found a 202 for `[]`.
pub struct Object<T>(pub T);

impl<T: DeserializeOwned> Object<T> {
    /// A body already read into bytes (handlers that take other media types too), as `ApiJson` would.
    pub fn from_slice(bytes: &[u8]) -> ApiResult<T> {
        serde_json::from_slice::<Object<T>>(bytes)
            .map(|Object(t)| t)
            .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Object<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Only<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for Only<T> {
            type Value = T;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
                T::deserialize(MapAccessDeserializer::new(map))
            }
        }
        d.deserialize_map(Only(PhantomData)).map(Object)
    }
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        if super::deadline::is_body_timeout(&r) {
            return ApiError::RequestTimeout;
        }
        match r.status() {
            StatusCode::PAYLOAD_TOO_LARGE => ApiError::PayloadTooLarge(BODY_LIMIT),
            StatusCode::UNSUPPORTED_MEDIA_TYPE => {
                ApiError::UnsupportedMediaType("expected Content-Type: application/json".into())
            }
            _ => ApiError::bad_request(format!("invalid JSON body: {}", r.body_text())),
        }
    }
}

/// `Path` whose rejections (an undecodable segment, a job id that is not a number) use the
/// service's error shape.
#[derive(Debug, FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
pub struct ApiPath<T>(pub T);

impl From<PathRejection> for ApiError {
    fn from(r: PathRejection) -> Self {
        ApiError::bad_request(format!("invalid path: {}", r.body_text()))
    }
}

/// `Query` whose rejections use the service's error shape.
#[derive(Debug, FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub struct ApiQuery<T>(pub T);

impl From<QueryRejection> for ApiError {
    fn from(r: QueryRejection) -> Self {
        ApiError::bad_request(format!("invalid query: {}", r.body_text()))
    }
}

/// Present in a handler's arguments = the request carried the configured admin token.
pub struct Admin;

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let Some(token) = state.admin_token.as_deref() else {
            return Err(ApiError::AdminDisabled);
        };
        let mut all = parts.headers.get_all(AUTHORIZATION).iter();
        let (first, second) = (all.next(), all.next());
        if second.is_some() {
            // Which one counts would be up to each proxy on the way: refuse rather than pick.
            return Err(ApiError::bad_request("more than one Authorization header"));
        }
        // Exactly `Bearer <token>` (HTTP drops a field value's surrounding whitespace before any
        // handler sees it, RFC 9110 section 5.5).
        let given = first.and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer ")).unwrap_or("");
        // Constant time in the token's content (the length is not secret).
        if bool::from(given.as_bytes().ct_eq(token.as_bytes())) { Ok(Admin) } else { Err(ApiError::Unauthorized) }
    }
}

/// Texts that passed every limit: 1..=max_texts texts, none blank, none over max_text_chars.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidClassify {
    pub texts: Vec<String>,
}

/// A character that shows: not whitespace and not `invisible` (the set of the `Text` pattern in
/// openapi.yaml).
fn visible(c: char) -> bool {
    !(c.is_whitespace() || moe_core::bundle::card::invisible(c))
}

impl ClassifyRequest {
    pub fn validate(self, l: &Limits) -> ApiResult<ValidClassify> {
        let texts = match (self.text, self.texts) {
            (Some(t), None) => vec![t],
            (None, Some(ts)) => ts,
            (Some(_), Some(_)) => return Err(ApiError::bad_request("send either \"text\" or \"texts\", not both")),
            (None, None) => return Err(ApiError::bad_request("missing \"text\" (a string) or \"texts\" (a list)")),
        };
        if texts.is_empty() {
            return Err(ApiError::bad_request("no text given: send {\"text\": \"...\"} or {\"texts\": [...]}"));
        }
        if texts.len() > l.max_texts {
            return Err(ApiError::bad_request(format!("{} texts given, the limit is {}", texts.len(), l.max_texts)));
        }
        check_texts("text", &texts, l)?;
        Ok(ValidClassify { texts })
    }
}

impl SwapBody {
    pub fn validate(self) -> ApiResult<Swap> {
        if self.bundle.trim().is_empty() {
            return Err(ApiError::bad_request("\"bundle\" is empty"));
        }
        if let Some(m) = &self.min_metric
            && !m.value.is_finite()
        {
            return Err(ApiError::bad_request("\"min_metric.value\" must be a finite number"));
        }
        Ok(Swap {
            bundle: self.bundle,
            expected_version: self.expected_version,
            min_metric: self.min_metric.map(|m| MinMetric { metric: m.metric, value: m.value }),
            not_worse: self.not_worse,
        })
    }
}

/// Every text must show something (not only whitespace, control or invisible format characters)
/// and fit `--max-text-chars`; `what` names it in the error ("text 3 is empty").
fn check_texts(what: &str, texts: &[String], l: &Limits) -> ApiResult<()> {
    for (i, t) in texts.iter().enumerate() {
        if t.trim().is_empty() {
            return Err(ApiError::bad_request(format!("{what} {i} is empty")));
        }
        if !t.chars().any(visible) {
            return Err(ApiError::bad_request(format!("{what} {i} has no visible characters")));
        }
        let n = t.chars().count();
        if n > l.max_text_chars {
            return Err(ApiError::bad_request(format!(
                "{what} {i} has {n} characters, the limit is {}",
                l.max_text_chars
            )));
        }
    }
    Ok(())
}

impl TrainBody {
    /// A `text,label` CSV (header row first): rows of `class` are the positives, the others the
    /// negatives; the options come from the query.
    pub fn from_csv(bytes: &[u8], class: &str, q: TrainQuery) -> ApiResult<TrainBody> {
        let mut r = csv::Reader::from_reader(bytes);
        let headers = r.headers().map_err(|e| ApiError::bad_request(format!("CSV header: {e}")))?.clone();
        let col = |name: &str| {
            headers.iter().position(|h| h.trim() == name).ok_or_else(|| {
                ApiError::bad_request(format!(
                    "the CSV needs a header row with \"text\" and \"label\" (no {name:?} column)"
                ))
            })
        };
        let (t, l) = (col("text")?, col("label")?);
        let (mut positives, mut negatives) = (Vec::new(), Vec::new());
        for (i, row) in r.records().enumerate() {
            let row = row.map_err(|e| ApiError::bad_request(format!("CSV row {}: {e}", i + 1)))?;
            let (text, label) = (row.get(t).unwrap_or(""), row.get(l).unwrap_or(""));
            if label.trim() == class { positives.push(text.to_string()) } else { negatives.push(text.to_string()) }
        }
        Ok(TrainBody {
            positives,
            negatives: (!negatives.is_empty()).then_some(negatives),
            mode: q.mode,
            trunk: q.trunk,
            max_eer: q.max_eer,
            use_feedback: q.use_feedback,
        })
    }

    pub fn validate(self, l: &Limits, who: String, feedback: Option<Vec<(String, String)>>) -> ApiResult<TrainRequest> {
        check_texts("positive", &self.positives, l)?;
        if let Some(n) = &self.negatives {
            check_texts("negative", n, l)?;
        }
        let max_eer = self.max_eer.unwrap_or(DEFAULT_MAX_EER);
        if !(max_eer.is_finite() && (0.0..=1.0).contains(&max_eer)) {
            return Err(ApiError::bad_request("\"max_eer\" must be a number in [0, 1]"));
        }
        if self.trunk.as_ref().is_some_and(|t| t.trim().is_empty()) {
            return Err(ApiError::bad_request("\"trunk\" is empty: omit it to use the set's main trunk"));
        }
        Ok(TrainRequest {
            positives: self.positives,
            negatives: self.negatives,
            mode: self.mode,
            trunk: self.trunk,
            max_eer,
            who,
            feedback,
        })
    }
}

/// Longest feedback label, in characters.
pub const MAX_LABEL_CHARS: usize = 200;

impl FeedbackBody {
    /// (text, label), both with a visible character, within the text and label limits.
    pub fn validate(self, l: &Limits) -> ApiResult<(String, String)> {
        check_texts("text", std::slice::from_ref(&self.text), l)?;
        if self.label.chars().count() > MAX_LABEL_CHARS {
            return Err(ApiError::bad_request(format!("\"label\" has more than {MAX_LABEL_CHARS} characters")));
        }
        // A label names a class: the same rule as class names.
        moe_core::bundle::card::check_shown(&self.label)
            .map_err(|e| ApiError::bad_request(format!("\"label\": {e}")))?;
        Ok((self.text, self.label))
    }
}

impl SelectBody {
    /// `feedback`: the log's (text, label) pairs when the request asked to evaluate on them.
    pub fn validate(self, feedback: Option<Vec<(String, String)>>) -> ApiResult<Selection> {
        for b in self.candidates.iter().flatten() {
            moe_core::bundle::card::check_shown(b)
                .map_err(|e| ApiError::bad_request(format!("\"candidates\" holds a name that is no bundle's: {e}")))?;
        }
        if self.candidates.as_ref().is_some_and(|c| c.is_empty()) {
            return Err(ApiError::bad_request(
                "\"candidates\" is empty: omit it to consider every bundle of the class",
            ));
        }
        Ok(Selection { metric: self.metric.unwrap_or_default(), candidates: self.candidates, feedback })
    }
}

/// Largest `min_size` and `examples` of a grouping.
pub const MAX_GROUP_PARAM: usize = 10_000;

/// Grouping parameters: the given ones checked, the others at their defaults.
fn group_params(similarity: Option<f32>, min_size: Option<usize>, examples: Option<usize>) -> ApiResult<GroupParams> {
    let d = GroupParams::default();
    let p = GroupParams {
        similarity: similarity.unwrap_or(d.similarity),
        min_size: min_size.unwrap_or(d.min_size),
        examples: examples.unwrap_or(d.examples),
    };
    if !(p.similarity.is_finite() && (0.0..=1.0).contains(&p.similarity)) {
        return Err(ApiError::bad_request("\"similarity\" must be a number in [0, 1]"));
    }
    if !(2..=MAX_GROUP_PARAM).contains(&p.min_size) || !(1..=MAX_GROUP_PARAM).contains(&p.examples) {
        return Err(ApiError::bad_request(format!(
            "\"min_size\" must be in [2, {MAX_GROUP_PARAM}] and \"examples\" in [1, {MAX_GROUP_PARAM}]"
        )));
    }
    Ok(p)
}

impl UnknownsQuery {
    pub fn validate(self) -> ApiResult<GroupParams> {
        group_params(self.similarity, self.min_size, self.examples)
    }
}

impl TeachBody {
    pub fn validate(self, l: &Limits, who: String) -> ApiResult<Teach> {
        moe_core::bundle::card::check_class(&self.class).map_err(ApiError::bad_request)?;
        if let Some(n) = &self.negatives {
            check_texts("negative", n, l)?;
        }
        let max_eer = self.max_eer.unwrap_or(DEFAULT_MAX_EER);
        if !(max_eer.is_finite() && (0.0..=1.0).contains(&max_eer)) {
            return Err(ApiError::bad_request("\"max_eer\" must be a number in [0, 1]"));
        }
        let params = group_params(self.similarity, self.min_size, None)?;
        Ok(Teach { class: self.class, negatives: self.negatives, max_eer, who, params })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(text: Option<&str>, texts: Option<Vec<&str>>) -> ClassifyRequest {
        ClassifyRequest {
            text: text.map(str::to_string),
            texts: texts.map(|v| v.into_iter().map(str::to_string).collect()),
        }
    }

    #[test]
    fn classify_limits_are_checked_once_into_a_typed_value() {
        let l = Limits { max_texts: 2, max_text_chars: 5, ..Limits::default() };
        assert_eq!(req(Some("hello"), None).validate(&l).unwrap().texts, vec!["hello"]);
        assert_eq!(req(None, Some(vec!["a", "b"])).validate(&l).unwrap().texts, vec!["a", "b"]);
        for (r, why) in [
            (req(None, None), "missing"),
            (req(Some("a"), Some(vec!["b"])), "not both"),
            (req(None, Some(vec![])), "no text"),
            (req(None, Some(vec!["a", "b", "c"])), "3 texts given, the limit is 2"),
            (req(Some(" \t"), None), "text 0 is empty"),
            (req(Some("\u{200B}\u{FEFF}"), None), "text 0 has no visible characters"),
            (req(Some("\u{202E}"), None), "text 0 has no visible characters"),
            (req(Some("\u{202A}\u{2066}\u{2069} "), None), "text 0 has no visible characters"),
            (req(None, Some(vec!["ok", "\u{0000}\u{200D} "])), "text 1 has no visible characters"),
            (req(None, Some(vec!["ok", "toolong"])), "text 1 has 7 characters, the limit is 5"),
        ] {
            let e = r.validate(&l).unwrap_err();
            assert_eq!(e.status_and_code().1, "bad_request");
            assert!(e.to_string().contains(why), "{e} lacks {why:?}");
        }
        // Invisible characters beside a visible one are fine.
        assert!(req(Some("a\u{200B}b"), None).validate(&l).is_ok());
        // Characters, not bytes: five 2-byte characters pass.
        assert!(req(Some("ééééé"), None).validate(&l).is_ok());
    }
}
