//! Request and response bodies: the HTTP contract (openapi.yaml). Requests are checked into typed
//! values by `http::extract`; responses are built from the core's records here.

use serde::{Deserialize, Serialize};

pub use crate::control::jobs::Job;
pub use crate::control::swap::SwapOutcome;
use moe_core::bundle::Metric;
use moe_core::bundle::quality::SplitMetrics;
use moe_core::expert::Expert;
use moe_core::service::shadow::SHADOW_BUCKETS;
use moe_core::service::{ExpertResult, ExpertSet, Shadow, TextResult};

/// `POST /classify`: one text or a batch.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClassifyRequest {
    pub text: Option<String>,
    pub texts: Option<Vec<String>>,
}

/// Query of `POST /classify`: how much of each text's expert table to return.
#[derive(Debug, Default, Deserialize)]
pub struct ClassifyQuery {
    #[serde(default)]
    pub experts: ExpertsView,
}

/// `top` (default): every expert that passed its threshold and the `TOP_EXPERTS` best scores,
/// best first, so an answer stays small however many experts a set has; `all`: every expert's
/// row, in class order; `passed`: only the passed experts; `none`: no rows. The decision (label,
/// abstention, best guess) is the same in all four.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExpertsView {
    #[default]
    Top,
    All,
    Passed,
    None,
}

/// Rows of the default `top` view besides the passed experts.
pub const TOP_EXPERTS: usize = 5;

impl ExpertsView {
    /// One text's answer with the rows this view keeps.
    pub fn answer(self, r: &TextResult) -> ClassifyResult {
        let rows: Vec<&ExpertResult> = match self {
            ExpertsView::All => r.experts.iter().collect(),
            ExpertsView::Passed => r.experts.iter().filter(|e| e.passed).collect(),
            ExpertsView::None => Vec::new(),
            ExpertsView::Top => {
                // Best first, ties in class order (the set's order): a total order, so the rows
                // ranked under TOP_EXPERTS are those at or before the TOP_EXPERTS-th, found in linear
                // time; only the kept rows are sorted (a full sort of 1,000 rows per text showed in
                // the 1,000-expert profile, docs/BENCHMARKS.md).
                let order = |a: &&ExpertResult, b: &&ExpertResult| {
                    b.score.total_cmp(&a.score).then_with(|| a.index.cmp(&b.index))
                };
                let mut all: Vec<&ExpertResult> = r.experts.iter().collect();
                let last = (all.len() > TOP_EXPERTS).then(|| *all.select_nth_unstable_by(TOP_EXPERTS - 1, order).1);
                let mut best: Vec<&ExpertResult> =
                    r.experts.iter().filter(|e| e.passed || last.is_none_or(|l| order(e, &l).is_le())).collect();
                best.sort_by(order);
                best
            }
        };
        ClassifyResult {
            label: r.label.clone(),
            abstained: r.abstained,
            abstain_reason: r.reason,
            best_guess: r.best_guess.clone(),
            out_of_scope_score: r.out_of_scope_score,
            truncated: r.truncated,
            experts: rows.into_iter().map(|e| ExpertRow::of(r, e)).collect(),
        }
    }
}

/// One text's answer (`#/components/schemas/TextResult` in openapi.yaml).
#[derive(Debug, Serialize)]
pub struct ClassifyResult {
    pub label: Option<String>,
    pub abstained: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub abstain_reason: Option<moe_core::gate::AbstainReason>,
    pub best_guess: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub out_of_scope_score: Option<f32>,
    pub truncated: bool,
    pub experts: Vec<ExpertRow>,
}

/// One expert's part in an answer (`#/components/schemas/ExpertResult`).
#[derive(Debug, Serialize)]
pub struct ExpertRow {
    pub class: String,
    pub probability: f32,
    pub threshold: f32,
    pub passed: bool,
    pub gate_weight: f32,
    pub score: f32,
    pub algorithm: String,
    pub bundle: String,
    pub version: String,
}

impl ExpertRow {
    /// Row `e` of answer `r`.
    fn of(r: &TextResult, e: &ExpertResult) -> ExpertRow {
        let name = r.name(e);
        ExpertRow {
            class: name.class.clone(),
            probability: e.probability,
            threshold: e.threshold,
            passed: e.passed,
            gate_weight: e.gate_weight,
            score: e.score,
            algorithm: name.algorithm.clone(),
            bundle: name.bundle.clone(),
            version: name.version.clone(),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct ClassifyResponse {
    pub results: Vec<ClassifyResult>,
    pub took_ms: f64,
    /// Generation of the expert set that answered (changes on every swap).
    pub generation: u64,
}

/// `PUT /experts/{class}` with a JSON body.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SwapBody {
    /// Bundle folder name under the model root.
    pub bundle: String,
    #[serde(default)]
    pub expected_version: Option<String>,
    #[serde(default)]
    pub min_metric: Option<MinMetricBody>,
    #[serde(default)]
    pub not_worse: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MinMetricBody {
    /// "auc", "f1" (at the EER threshold), "accuracy" (at the EER threshold) or "eer" (a maximum).
    pub metric: Metric,
    pub value: f64,
}

/// Query of `PUT /experts/{class}` with an archive body.
#[derive(Debug, Deserialize)]
pub struct UploadQuery {
    pub expected_version: Option<String>,
}

/// `POST /experts/{class}/select`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SelectBody {
    /// "eer" (default, lower is better), "auc", "f1" or "accuracy" (at the EER threshold).
    #[serde(default)]
    pub metric: Option<Metric>,
    #[serde(default)]
    pub candidates: Option<Vec<String>>,
    /// Evaluate on the feedback log's texts too (the job's result counts them).
    #[serde(default)]
    pub use_feedback: bool,
}

/// `POST /experts/{class}/train`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainBody {
    /// Texts of the class.
    pub positives: Vec<String>,
    /// Texts of other classes (default: a sample of the other classes' training rows of --data).
    #[serde(default)]
    pub negatives: Option<Vec<String>>,
    /// "install" (default) or "shadow".
    #[serde(default)]
    pub mode: crate::control::train::Mode,
    /// Trunk id to train on (default: the trunk most experts of the set run on).
    #[serde(default)]
    pub trunk: Option<String>,
    /// Quality gate: refuse when the cross-validated EER is above this (default 0.25).
    #[serde(default)]
    pub max_eer: Option<f64>,
    /// Add the feedback log's texts: those labelled with the class as positives, the others as
    /// negatives (never silently: the job's result counts them).
    #[serde(default)]
    pub use_feedback: bool,
}

/// Query of `POST /experts/{class}/train` with a CSV body (a JSON body carries these itself).
#[derive(Debug, Default, Deserialize)]
pub struct TrainQuery {
    #[serde(default)]
    pub mode: crate::control::train::Mode,
    pub trunk: Option<String>,
    pub max_eer: Option<f64>,
    #[serde(default)]
    pub use_feedback: bool,
}

/// Query of `GET /unknowns` (defaults in `control::unknowns`).
#[derive(Debug, Default, Deserialize)]
pub struct UnknownsQuery {
    /// Cosine similarity at which two declined texts are neighbours.
    pub similarity: Option<f32>,
    /// Fewest texts in a group.
    pub min_size: Option<usize>,
    /// Texts shown per group.
    pub examples: Option<usize>,
}

/// `POST /unknowns/{group}/teach`: the group's texts become the positives of a new class.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TeachBody {
    /// The new class's name (not one the set serves).
    pub class: String,
    /// Texts of other classes (default: a sample of the other classes' training rows of --data).
    #[serde(default)]
    pub negatives: Option<Vec<String>>,
    /// Quality gate: refuse when the cross-validated EER is above this (default 0.25).
    #[serde(default)]
    pub max_eer: Option<f64>,
    /// The grouping the group id came from (the listing's `similarity` and `min_size`).
    #[serde(default)]
    pub similarity: Option<f32>,
    #[serde(default)]
    pub min_size: Option<usize>,
}

/// `POST /feedback`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeedbackBody {
    pub text: String,
    /// The true class (it may be a class the set does not serve yet).
    pub label: String,
}

#[derive(Debug, Serialize)]
pub struct FeedbackOutcome {
    pub recorded: bool,
    pub label: String,
    /// The set's answer for the text when the feedback arrived (null: abstained).
    pub predicted: Option<String>,
    pub correct: bool,
    /// Whether the label is a class the set serves.
    pub served_label: bool,
    pub generation: u64,
    /// Entries in the log now.
    pub entries: usize,
}

/// `PUT /experts/{class}/shadow`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShadowBody {
    pub bundle: String,
}

#[derive(Debug, Serialize)]
pub struct ShadowInfo {
    pub bundle: String,
    pub version: String,
    pub algorithm: String,
    pub threshold: f32,
    pub loaded_at: String,
    pub texts: u64,
    pub agreement_rate: Option<f64>,
    pub mean_abs_probability_diff: Option<f64>,
    pub probability_histogram: [u64; SHADOW_BUCKETS],
}

impl From<&Shadow> for ShadowInfo {
    fn from(sh: &Shadow) -> Self {
        let s = sh.stats();
        let n = s.texts as f64;
        ShadowInfo {
            bundle: sh.expert.bundle.clone(),
            version: sh.expert.card.version.clone(),
            algorithm: sh.expert.card.algorithm.clone(),
            threshold: sh.threshold,
            loaded_at: sh.expert.loaded_at.clone(),
            texts: s.texts,
            agreement_rate: (s.texts > 0).then(|| s.agreements as f64 / n),
            mean_abs_probability_diff: (s.texts > 0).then(|| s.sum_abs_probability_diff / n),
            probability_histogram: s.probability_histogram,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct ExpertInfo {
    pub class: String,
    pub bundle: String,
    pub version: String,
    pub algorithm: String,
    pub kind: moe_core::bundle::Kind,
    pub threshold: Option<f32>,
    pub threshold_method: Option<String>,
    /// The Platt map (a, b) of the `calibrated` score mode, when `moe calibrate` fitted one.
    pub calibration: Option<[f32; 2]>,
    pub metrics: std::collections::BTreeMap<String, SplitMetrics>,
    pub provider: &'static str,
    pub loaded_at: String,
    pub trunk: Option<String>,
    pub max_seq_len: usize,
    /// The lexicon that corrects texts before the tokenizer, if any.
    pub spelling: Option<SpellingInfo>,
    /// A candidate scoring live traffic beside this expert, with its agreement statistics.
    pub shadow: Option<ShadowInfo>,
    /// This version's precision / recall / AUC / EER on the feedback it scored (POST /feedback).
    pub live: Option<crate::control::feedback::LiveMetrics>,
}

impl ExpertInfo {
    /// With the live metrics of this version on the feedback log.
    pub fn with_live(mut self, log: &crate::control::feedback::FeedbackLog) -> ExpertInfo {
        self.live = Some(log.metrics(&self.class, &self.version));
        self
    }

    pub fn in_set(e: &Expert, set: &ExpertSet) -> ExpertInfo {
        ExpertInfo { shadow: set.shadow(&e.class).map(|s| ShadowInfo::from(s.as_ref())), ..ExpertInfo::from(e) }
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
            calibration: e.calibration(),
            metrics: e.card.metrics.clone(),
            provider: e.provider(),
            loaded_at: e.loaded_at.clone(),
            trunk: e.card.trunk.as_ref().map(|t| t.id.clone()),
            max_seq_len: e.card.max_seq_len,
            spelling: e.tokenizer.speller.as_ref().map(|s| SpellingInfo { sha256: s.sha256.clone(), words: s.len() }),
            shadow: None,
            live: None,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct SpellingInfo {
    pub sha256: String,
    pub words: usize,
}

#[derive(Debug, Serialize)]
pub struct GateInfo {
    pub configured: moe_core::gate::GateKind,
    pub active: &'static str,
    pub score: moe_core::gate::ScoreMode,
    pub disabled_reason: Option<String>,
    pub label_rule: moe_core::gate::LabelRule,
    /// The rejection rule and its val operating point (null: nothing is declined as out of scope).
    pub open_world: Option<OpenWorldInfo>,
}

/// The rejection rule as the registry holds it, and what changed since it was chosen.
#[derive(Debug, Serialize)]
pub struct OpenWorldInfo {
    #[serde(flatten)]
    pub rule: moe_core::gate::OpenWorld,
    /// Classes swapped, added or removed since the rule was chosen on val (null: not recorded).
    pub changed_since_chosen: Option<Vec<String>>,
}

#[derive(Debug, Serialize)]
pub struct ExpertList {
    pub experts: Vec<ExpertInfo>,
    pub gate: GateInfo,
    pub generation: u64,
    /// Revision of the shared registry this set serves (null with the file registry).
    pub revision: Option<i64>,
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
                label_rule: s.gate_spec.label,
                open_world: s
                    .gate_spec
                    .open_world
                    .clone()
                    .map(|rule| OpenWorldInfo { changed_since_chosen: rule.changed_since_chosen(&s.versions()), rule }),
            },
            generation: s.generation,
            revision: s.revision,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct History {
    pub class: String,
    pub history: Vec<moe_core::bundle::registry::HistoryEntry>,
}

/// Query of `GET /bundles`.
#[derive(Debug, Default, Deserialize)]
pub struct BundlesQuery {
    /// Only the bundles whose card names this class.
    pub class: Option<String>,
}

/// One bundle folder of the model root: what a swap or a shadow may name.
#[derive(Debug, Serialize)]
pub struct BundleInfo {
    pub bundle: String,
    /// None when the card cannot be read (then `error` says why).
    pub class: Option<String>,
    pub version: Option<String>,
    pub algorithm: Option<String>,
    pub kind: Option<moe_core::bundle::Kind>,
    pub trunk: Option<String>,
    /// The validation EER its card records (what `moe calibrate` measured).
    pub val_eer: Option<f64>,
    /// Serving its class in the current set.
    pub active: bool,
    /// Attached as the shadow of its class.
    pub shadow: bool,
    pub error: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct BundleList {
    pub bundles: Vec<BundleInfo>,
    pub generation: u64,
}

impl BundleList {
    pub fn new(
        cards: Vec<(String, moe_core::Result<moe_core::bundle::Card>)>,
        set: &ExpertSet,
        class: Option<&str>,
    ) -> Self {
        let bundles = cards
            .into_iter()
            .map(|(bundle, card)| match card {
                Ok(c) => BundleInfo {
                    active: set.get(&c.class).is_some_and(|e| e.bundle == bundle),
                    shadow: set.shadow(&c.class).is_some_and(|s| s.expert.bundle == bundle),
                    val_eer: c.report("val").map(|r| r.eer),
                    class: Some(c.class),
                    version: Some(c.version),
                    algorithm: Some(c.algorithm),
                    kind: Some(c.kind),
                    trunk: c.trunk.map(|t| t.id),
                    error: None,
                    bundle,
                },
                Err(e) => BundleInfo {
                    bundle,
                    class: None,
                    version: None,
                    algorithm: None,
                    kind: None,
                    trunk: None,
                    val_eer: None,
                    active: false,
                    shadow: false,
                    error: Some(e.to_string()),
                },
            })
            .filter(|b| class.is_none() || b.class.as_deref() == class)
            .collect();
        BundleList { bundles, generation: set.generation }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use moe_core::service::ExpertName;

    use super::*;

    /// The `top` view keeps what a full sort keeps (passed rows and the `TOP_EXPERTS` best, ties in
    /// class order), best first, for sets smaller and larger than `TOP_EXPERTS`.
    #[test]
    fn top_rows_are_those_of_a_full_sort() {
        let mut s = 5u64;
        let mut next = || {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (s >> 33) as usize
        };
        for k in [1, 3, 5, 6, 40, 1000] {
            let names = (0..k)
                .map(|i| ExpertName {
                    class: format!("c{i}"),
                    algorithm: "a".into(),
                    bundle: "b".into(),
                    version: "1".into(),
                })
                .collect();
            // Few distinct scores, so ties are common.
            let experts: Vec<ExpertResult> = (0..k)
                .map(|index| ExpertResult {
                    index,
                    probability: 0.5,
                    threshold: 0.5,
                    passed: next() % 7 == 0,
                    gate_weight: 1.0,
                    score: (next() % 9) as f32 / 8.0,
                })
                .collect();
            let r = TextResult {
                label: None,
                abstained: true,
                reason: None,
                out_of_scope_score: None,
                best_guess: "c0".into(),
                truncated: false,
                declined: None,
                experts: experts.clone(),
                names: Arc::new(names),
            };
            let mut want: Vec<&ExpertResult> = experts.iter().collect();
            want.sort_by(|a, b| b.score.total_cmp(&a.score).then_with(|| a.index.cmp(&b.index)));
            let want: Vec<String> = want
                .into_iter()
                .enumerate()
                .filter(|(rank, e)| e.passed || *rank < TOP_EXPERTS)
                .map(|(_, e)| format!("c{}", e.index))
                .collect();
            let got: Vec<String> = ExpertsView::Top.answer(&r).experts.into_iter().map(|e| e.class).collect();
            assert_eq!(got, want, "{k} experts");
        }
    }
}
