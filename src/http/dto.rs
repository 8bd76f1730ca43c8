//! Request and response bodies (see openapi.yaml).

use serde::{Deserialize, Serialize};

use crate::core::{Expert, ExpertSet, TextResult};
use crate::{Error, Result};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClassifyRequest {
    pub text: Option<String>,
    pub texts: Option<Vec<String>>,
}

impl ClassifyRequest {
    pub fn into_texts(self) -> Result<Vec<String>> {
        match (self.text, self.texts) {
            (Some(t), None) => Ok(vec![t]),
            (None, Some(ts)) => Ok(ts),
            (Some(_), Some(_)) => Err(Error::BadRequest("send either \"text\" or \"texts\", not both".into())),
            (None, None) => Err(Error::BadRequest("missing \"text\" (a string) or \"texts\" (a list)".into())),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct ClassifyResponse {
    pub results: Vec<TextResult>,
    pub took_ms: f64,
    /// Generation of the expert set that answered (changes on every swap).
    pub generation: u64,
}

#[derive(Debug, Serialize)]
pub struct ExpertInfo {
    pub class: String,
    pub bundle: String,
    pub version: String,
    pub algorithm: String,
    pub kind: crate::experts::Kind,
    pub threshold: Option<f32>,
    pub threshold_method: Option<String>,
    pub metrics: serde_json::Value,
    pub provider: &'static str,
    pub loaded_at: String,
    pub trunk: Option<String>,
    pub max_seq_len: usize,
    /// A candidate scoring live traffic beside this expert, with its agreement statistics.
    pub shadow: Option<crate::shadow::ShadowInfo>,
}

impl ExpertInfo {
    pub fn in_set(e: &Expert, set: &ExpertSet) -> ExpertInfo {
        ExpertInfo { shadow: set.shadow(&e.class).map(|s| s.info()), ..ExpertInfo::from(e) }
    }
}

impl From<&Expert> for ExpertInfo {
    fn from(e: &Expert) -> Self {
        ExpertInfo {
            class: e.class.clone(),
            bundle: e.bundle.clone(),
            version: e.card.version.clone(),
            algorithm: e.card.algorithm.clone(),
            kind: e.card.kind,
            threshold: e.threshold,
            threshold_method: e.card.threshold.as_ref().map(|t| format!("{} on {}", t.method, t.split)),
            metrics: e.card.metrics.clone(),
            provider: e.provider(),
            loaded_at: e.loaded_at.clone(),
            trunk: e.card.trunk.as_ref().map(|t| t.id.clone()),
            max_seq_len: e.card.max_seq_len,
            shadow: None,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct GateInfo {
    pub configured: crate::gate::GateKind,
    pub active: &'static str,
    pub score: crate::gate::ScoreMode,
    pub disabled_reason: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct ExpertList {
    pub experts: Vec<ExpertInfo>,
    pub gate: GateInfo,
    pub generation: u64,
}

impl From<&ExpertSet> for ExpertList {
    fn from(s: &ExpertSet) -> Self {
        ExpertList {
            experts: s.experts.iter().map(|e| ExpertInfo::in_set(e, s)).collect(),
            gate: GateInfo {
                configured: s.gate_spec.kind,
                active: s.gate.weights.name(),
                score: s.gate.score,
                disabled_reason: s.gate.disabled.clone(),
            },
            generation: s.generation,
        }
    }
}
