//! The decision rule: pure functions from the experts' probabilities to gate weights, scores,
//! pass/fail and the label. No I/O, no locks.
//!
//! For expert i with probability p_i and EER threshold t_i:
//! * passed_i = p_i >= t_i
//! * s_i, the comparable score: `probability` mode s_i = p_i; `margin` mode
//!   s_i = sigmoid(logit(p_i) - logit(t_i)) (0.5 exactly at the threshold); `calibrated` mode
//!   s_i = sigmoid(a_i logit(p_i) + b_i), the expert's Platt calibration (a_i > 0, fitted on val by
//!   `moe calibrate` and kept in its card, so it travels with the bundle through swaps);
//! * w_i, the gate weight (sums to 1 over experts): `uniform` 1/N; `length` softmax_i(a_i + b_i ln(1+words));
//!   `stacking` softmax_i(W z + b)_i with z_j = logit(p_j) (a multinomial logistic regression fitted on
//!   the validation split over every expert's logit);
//! * g_i = w_i s_i is the gated score reported as `score`.
//!
//! best_guess = argmax of g_i over all experts (ties: the first class in sorted order); the label
//! follows the set's label rule: `best_passed` (the default) = argmax of g_i over the experts that
//! passed; `best_guess_passed` = the best guess if it passed; `best_guess` = the best guess. With
//! no label the answer abstains because no expert passed (`no_expert_passed`).
//!
//! Open world: when the set carries a rejection rule, each text gets an in-scope score, either
//! `max_probability` (max_i p_i, the most confident expert), `softmax` (max_i softmax_i(logit(p_j)):
//! the experts' logits read as one classifier's, so a close runner-up lowers it; on CLINC150 and
//! wikiHow val it ranks wrong best guesses below right ones as one global softmax does,
//! docs/TRAINING.md) or `blend`:
//! w · (logit(max_i p_i) − m₁)/s₁ + (1 − w) · (max_i c_i·x − m₂)/s₂, where c_i·x is the text's
//! embedding's similarity to expert i's class centroid (a distance-based score; m, s standardise
//! both parts on val). Below the rule's `reject_below` (on that score's scale) the answer abstains
//! as `out_of_scope` whatever the label rule says. Rule and cut-off are chosen on val by `moe fit`.
//! The answer's out-of-scope score is sigmoid(g(reject_below) − g(score)) with g = logit for
//! `max_probability` and `softmax` and the identity for `blend`: 0.5 at the cut-off, above it declined.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GateKind {
    #[default]
    Uniform,
    Length,
    Stacking,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ScoreMode {
    #[default]
    Probability,
    Margin,
    Calibrated,
}

/// The identity calibration (a = 1, b = 0).
pub const IDENTITY: [f32; 2] = [1.0, 0.0];

/// Per-class length-gate parameters (a, b): weight logit a + b ln(1 + words).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct LengthGate {
    pub params: BTreeMap<String, [f32; 2]>,
}

/// A fitted stacking gate; valid only for exactly these classes at exactly these bundle versions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StackingGate {
    pub classes: Vec<String>,
    pub versions: BTreeMap<String, String>,
    /// weights[i][j]: contribution of expert j's logit to class i.
    pub weights: Vec<Vec<f32>>,
    pub bias: Vec<f32>,
}

/// Which expert names the label (module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LabelRule {
    #[default]
    BestPassed,
    BestGuessPassed,
    BestGuess,
}

/// Why an answer has no label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AbstainReason {
    NoExpertPassed,
    OutOfScope,
}

impl AbstainReason {
    pub fn name(self) -> &'static str {
        match self {
            AbstainReason::NoExpertPassed => "no_expert_passed",
            AbstainReason::OutOfScope => "out_of_scope",
        }
    }
}

/// The in-scope score an open-world rule reads (module doc).
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum InScopeScore {
    #[default]
    MaxProbability,
    Softmax,
    Blend {
        /// Weight w of the probability part.
        weight: f32,
        /// (m₁, s₁): mean and spread of logit(max p) over in-scope val texts.
        logit: [f32; 2],
        /// (m₂, s₂): the same for the nearest-centroid similarity.
        similarity: [f32; 2],
    },
}

impl InScopeScore {
    /// The score of a text whose experts give `probabilities` and whose embedding's best centroid
    /// similarity is `nearest` (None: no centroid, no blend). Only the `softmax` score computes the
    /// softmax share: the serving path pays its exponentials only when the rule reads it.
    pub fn of(&self, probabilities: impl Iterator<Item = f32> + Clone, nearest: Option<f32>) -> Option<f32> {
        match *self {
            InScopeScore::MaxProbability => Some(max_probability(probabilities)),
            InScopeScore::Softmax => Some(softmax_share(probabilities)),
            InScopeScore::Blend { weight, logit: [m1, s1], similarity: [m2, s2] } => nearest.map(|sim| {
                weight * (logit(max_probability(probabilities)) - m1) / s1.max(EPS)
                    + (1.0 - weight) * (sim - m2) / s2.max(EPS)
            }),
        }
    }

    /// sigmoid(g(cut) − g(score)): 0.5 at the cut-off, towards 1 further out of scope.
    pub fn out_of_scope(&self, score: f32, cut: f32) -> f32 {
        match self {
            InScopeScore::MaxProbability | InScopeScore::Softmax => sigmoid(logit(cut) - logit(score)),
            InScopeScore::Blend { .. } => sigmoid(cut - score),
        }
    }
}

/// max_i p_i.
pub fn max_probability(probabilities: impl Iterator<Item = f32>) -> f32 {
    probabilities.fold(f32::NEG_INFINITY, f32::max)
}

/// max_i softmax_i(logit(p_j)) = 1 / Σ_j exp(logit(p_j) − max_k logit(p_k)).
pub fn softmax_share(probabilities: impl Iterator<Item = f32> + Clone) -> f32 {
    let top = logit(max_probability(probabilities.clone()));
    let sum: f32 = probabilities.map(|p| (logit(p) - top).exp()).sum();
    1.0 / sum.max(1.0)
}

/// The set's rejection rule: decline a text as out of scope when its in-scope score is below
/// `reject_below`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OpenWorld {
    #[serde(default)]
    pub score: InScopeScore,
    pub reject_below: f32,
    /// How it was chosen (the val operating point), kept for operators.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chosen_by: Option<serde_json::Value>,
    /// The experts it was chosen with (class -> bundle version). A swap or a new class keeps the
    /// rule in force (declining nothing would be worse) but `changed_since_chosen` names them.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub versions: BTreeMap<String, String>,
}

impl OpenWorld {
    /// The classes swapped, added or removed since the rule was chosen, in class order (None: the
    /// rule does not record its experts).
    pub fn changed_since_chosen(&self, now: &[(String, String)]) -> Option<Vec<String>> {
        if self.versions.is_empty() {
            return None;
        }
        let mut changed: Vec<String> =
            now.iter().filter(|(c, v)| self.versions.get(c) != Some(v)).map(|(c, _)| c.clone()).collect();
        changed.extend(self.versions.keys().filter(|c| !now.iter().any(|(n, _)| n == *c)).cloned());
        changed.sort();
        Some(changed)
    }
}

/// The gate as written in the registry.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct GateSpec {
    #[serde(default)]
    pub kind: GateKind,
    #[serde(default)]
    pub score: ScoreMode,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub length: Option<LengthGate>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stacking: Option<StackingGate>,
    /// Evidence of how the gate was chosen (validation accuracies...), kept for operators.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selected_by: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "is_default")]
    pub label: LabelRule,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub open_world: Option<OpenWorld>,
}

fn is_default<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

/// The gate resolved against one expert set (classes in the set's order).
#[derive(Debug, Clone, PartialEq)]
pub struct Gate {
    pub score: ScoreMode,
    pub weights: GateWeights,
    /// Per expert (set order) the Platt map (a, b) of `calibrated` mode; empty in other modes.
    pub calibration: Vec<[f32; 2]>,
    /// Why the configured gate is not the one in force (e.g. a stacking gate fitted for other
    /// bundle versions), reported by the API.
    pub disabled: Option<String>,
    pub label: LabelRule,
    /// The open-world score and cut-off, when the set has one in force.
    pub open_world: Option<(InScopeScore, f32)>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum GateWeights {
    Uniform,
    Length(Vec<[f32; 2]>),
    Stacking { weights: Vec<Vec<f32>>, bias: Vec<f32> },
}

impl GateWeights {
    pub fn name(&self) -> &'static str {
        match self {
            GateWeights::Uniform => "uniform",
            GateWeights::Length(_) => "length",
            GateWeights::Stacking { .. } => "stacking",
        }
    }
}

impl Gate {
    pub fn uniform(score: ScoreMode) -> Gate {
        Gate {
            score,
            weights: GateWeights::Uniform,
            calibration: Vec::new(),
            disabled: None,
            label: LabelRule::BestPassed,
            open_world: None,
        }
    }

    /// This gate with a label rule and an open-world score and cut-off.
    pub fn deciding(self, label: LabelRule, open_world: Option<(InScopeScore, f32)>) -> Gate {
        Gate { label, open_world, ..self }
    }

    /// The open-world rule in force reads each text's centroid similarity.
    pub fn blends(&self) -> bool {
        matches!(self.open_world, Some((InScopeScore::Blend { .. }, _)))
    }

    /// This gate with these experts' calibrations (set order).
    pub fn calibrated(self, calibration: Vec<[f32; 2]>) -> Gate {
        Gate { calibration, ..self }
    }

    /// Resolve a registry gate for the experts `(class, version)` in order, with each expert's
    /// Platt calibration if its card has one. A gate that does not fit the set falls back to uniform
    /// (and `calibrated` mode without every expert calibrated to `probability`) and says why, never
    /// silently applied.
    pub fn resolve(spec: &GateSpec, experts: &[(String, String)], calibrations: &[Option<[f32; 2]>]) -> Gate {
        let open_world = spec.open_world.as_ref().map(|o| (o.score, o.reject_below));
        Gate::resolve_weights(spec, experts, calibrations).deciding(spec.label, open_world)
    }

    fn resolve_weights(spec: &GateSpec, experts: &[(String, String)], calibrations: &[Option<[f32; 2]>]) -> Gate {
        let gate = Gate::with_weights(spec, experts);
        if spec.score != ScoreMode::Calibrated {
            return gate;
        }
        if let Some(i) = calibrations.iter().position(Option::is_none) {
            let class = experts.get(i).map(|(c, _)| c.as_str()).unwrap_or("?");
            return Gate {
                disabled: Some(format!(
                    "calibrated scores need a Platt calibration in every expert's card; {class} has none \
                     (run `moe calibrate` on its bundle)"
                )),
                ..Gate::uniform(ScoreMode::Probability)
            };
        }
        gate.calibrated(calibrations.iter().flatten().copied().collect())
    }

    /// The registry gate's weights for these experts, in the spec's score mode (no calibration).
    fn with_weights(spec: &GateSpec, experts: &[(String, String)]) -> Gate {
        let fallback = |why: String| Gate { disabled: Some(why), ..Gate::uniform(spec.score) };
        match spec.kind {
            GateKind::Uniform => Gate::uniform(spec.score),
            GateKind::Length => match &spec.length {
                None => fallback("length gate configured without parameters".into()),
                Some(l) => Gate {
                    weights: GateWeights::Length(
                        experts.iter().map(|(c, _)| l.params.get(c).copied().unwrap_or([0.0, 0.0])).collect(),
                    ),
                    ..Gate::uniform(spec.score)
                },
            },
            GateKind::Stacking => {
                let Some(s) = &spec.stacking else {
                    return fallback("stacking gate configured without parameters".into());
                };
                let classes: Vec<&String> = experts.iter().map(|(c, _)| c).collect();
                if s.classes.iter().collect::<Vec<_>>() != classes {
                    return fallback("stacking gate was fitted for another set of classes".into());
                }
                for (c, v) in experts {
                    if s.versions.get(c) != Some(v) {
                        return fallback(format!(
                            "stacking gate was fitted with {c} at version {}, now {v}",
                            s.versions.get(c).map(String::as_str).unwrap_or("?")
                        ));
                    }
                }
                let n = classes.len();
                if s.weights.len() != n || s.weights.iter().any(|r| r.len() != n) || s.bias.len() != n {
                    return fallback("stacking gate parameters have the wrong shape".into());
                }
                Gate {
                    weights: GateWeights::Stacking { weights: s.weights.clone(), bias: s.bias.clone() },
                    ..Gate::uniform(spec.score)
                }
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ExpertOutput {
    pub probability: f32,
    pub threshold: f32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// Index of the predicted expert, None when it abstains.
    pub label: Option<usize>,
    pub best_guess: usize,
    pub passed: Vec<bool>,
    pub weights: Vec<f32>,
    pub scores: Vec<f32>,
    /// Why there is no label (None when there is one).
    pub reason: Option<AbstainReason>,
    /// The open-world rule's in-scope score (None without a rule, or when the text has no
    /// centroid similarity for a `blend` rule).
    pub in_scope: Option<f32>,
    /// sigmoid(g(cut) − g(score)) (module doc), with a rule in force.
    pub out_of_scope: Option<f32>,
}

const EPS: f32 = 1e-6;

pub fn logit(p: f32) -> f32 {
    let p = p.clamp(EPS, 1.0 - EPS);
    (p / (1.0 - p)).ln()
}

pub fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

pub fn softmax(z: &[f32]) -> Vec<f32> {
    let m = z.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let e: Vec<f32> = z.iter().map(|v| (v - m).exp()).collect();
    let s: f32 = e.iter().sum();
    e.into_iter().map(|v| v / s).collect()
}

/// Number of whitespace-separated words: the length the length gate uses.
pub fn words(text: &str) -> usize {
    text.split_whitespace().count()
}

/// The Platt-calibrated probability sigmoid(a logit(p) + b).
pub fn calibrated(cal: [f32; 2], probability: f32) -> f32 {
    sigmoid(cal[0] * logit(probability) + cal[1])
}

/// s_i: an expert's probability made comparable across experts (see the module doc); `cal` is
/// the expert's calibration (used in `calibrated` mode only).
pub fn comparable_score(mode: ScoreMode, probability: f32, threshold: f32, cal: [f32; 2]) -> f32 {
    match mode {
        ScoreMode::Probability => probability,
        ScoreMode::Margin => sigmoid(logit(probability) - logit(threshold)),
        ScoreMode::Calibrated => calibrated(cal, probability),
    }
}

pub fn weights(gate: &Gate, out: &[ExpertOutput], words: usize) -> Vec<f32> {
    let n = out.len();
    match &gate.weights {
        GateWeights::Uniform => vec![1.0 / n as f32; n],
        GateWeights::Length(ab) => {
            let l = (1.0 + words as f32).ln();
            softmax(&ab.iter().map(|[a, b]| a + b * l).collect::<Vec<_>>())
        }
        GateWeights::Stacking { weights, bias } => {
            let z: Vec<f32> = out.iter().map(|o| logit(o.probability)).collect();
            let s: Vec<f32> = weights
                .iter()
                .zip(bias)
                .map(|(row, b)| b + row.iter().zip(&z).map(|(w, x)| w * x).sum::<f32>())
                .collect();
            softmax(&s)
        }
    }
}

/// The gate's decision; `nearest` is the text's best centroid similarity (for a `blend` rule).
pub fn decide(gate: &Gate, out: &[ExpertOutput], words: usize, nearest: Option<f32>) -> Decision {
    assert!(!out.is_empty(), "decide needs at least one expert");
    let w = weights(gate, out, words);
    let scores: Vec<f32> = out
        .iter()
        .zip(&w)
        .enumerate()
        .map(|(i, (o, w))| {
            let cal = gate.calibration.get(i).copied().unwrap_or(IDENTITY);
            w * comparable_score(gate.score, o.probability, o.threshold, cal)
        })
        .collect();
    let passed: Vec<bool> = out.iter().map(|o| o.probability >= o.threshold).collect();
    let argmax = |keep: &dyn Fn(usize) -> bool| {
        (0..out.len()).filter(|&i| keep(i)).fold(None, |best: Option<usize>, i| match best {
            Some(b) if scores[b] >= scores[i] => Some(b),
            _ => Some(i),
        })
    };
    let best_guess = argmax(&|_| true).expect("non-empty");
    let in_scope = gate.open_world.and_then(|(score, _)| score.of(out.iter().map(|o| o.probability), nearest));
    let out_of_scope = gate.open_world.zip(in_scope).map(|((score, cut), s)| score.out_of_scope(s, cut));
    let (label, reason) = if gate.open_world.zip(in_scope).is_some_and(|((_, cut), s)| s < cut) {
        (None, Some(AbstainReason::OutOfScope))
    } else {
        let label = match gate.label {
            LabelRule::BestPassed => argmax(&|i| passed[i]),
            LabelRule::BestGuessPassed => Some(best_guess).filter(|&b| passed[b]),
            LabelRule::BestGuess => Some(best_guess),
        };
        (label, label.is_none().then_some(AbstainReason::NoExpertPassed))
    };
    Decision { label, best_guess, passed, weights: w, scores, reason, in_scope, out_of_scope }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outs(v: &[(f32, f32)]) -> Vec<ExpertOutput> {
        v.iter().map(|&(probability, threshold)| ExpertOutput { probability, threshold }).collect()
    }

    #[test]
    fn an_open_world_rule_names_what_changed_since_it_was_chosen() {
        let pair = |c: &str, v: &str| (c.to_string(), v.to_string());
        let mut rule = OpenWorld {
            score: InScopeScore::MaxProbability,
            reject_below: 0.5,
            chosen_by: None,
            versions: BTreeMap::new(),
        };
        assert_eq!(rule.changed_since_chosen(&[pair("a", "1")]), None, "not recorded");
        rule.versions = [pair("a", "1"), pair("b", "1"), pair("c", "1")].into();
        assert_eq!(rule.changed_since_chosen(&[pair("a", "1"), pair("b", "1"), pair("c", "1")]), Some(vec![]));
        let now = [pair("a", "1"), pair("b", "2"), pair("d", "1")];
        assert_eq!(
            rule.changed_since_chosen(&now),
            Some(vec!["b".into(), "c".into(), "d".into()]),
            "swapped, gone, new"
        );
    }

    #[test]
    fn label_is_best_passing_expert() {
        let g = Gate::uniform(ScoreMode::Probability);
        // expert 0 has the highest probability but does not pass its strict threshold
        let d = decide(&g, &outs(&[(0.9, 0.95), (0.6, 0.5), (0.7, 0.3)]), 3, None);
        assert_eq!(d.passed, vec![false, true, true]);
        assert_eq!(d.label, Some(2));
        assert_eq!(d.best_guess, 0);
        assert!((d.weights.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert!((d.scores[2] - 0.7 / 3.0).abs() < 1e-6);
    }

    #[test]
    fn label_rules_and_the_out_of_scope_cut_off_say_why() {
        // expert 0 is the best guess but misses its threshold; expert 2 passes lower down
        let o = outs(&[(0.9, 0.95), (0.6, 0.5), (0.7, 0.3)]);
        let rule = |label, cut: Option<f32>| {
            decide(
                &Gate::uniform(ScoreMode::Probability).deciding(label, cut.map(|c| (InScopeScore::MaxProbability, c))),
                &o,
                3,
                None,
            )
        };
        assert_eq!(
            (rule(LabelRule::BestPassed, None).label, rule(LabelRule::BestPassed, None).reason),
            (Some(2), None)
        );
        let d = rule(LabelRule::BestGuessPassed, None);
        assert_eq!((d.label, d.reason, d.best_guess), (None, Some(AbstainReason::NoExpertPassed), 0));
        assert_eq!(rule(LabelRule::BestGuess, None).label, Some(0));
        assert_eq!(rule(LabelRule::BestGuess, None).in_scope, None, "no rule, no score");
        assert!((rule(LabelRule::BestGuess, Some(0.5)).in_scope.unwrap() - 0.9).abs() < 1e-6, "max probability");
        assert!((rule(LabelRule::BestGuess, Some(0.9)).out_of_scope.unwrap() - 0.5).abs() < 1e-6, "0.5 at the cut");
        // below the cut-off every rule declines it as out of scope; at it, none does
        for label in [LabelRule::BestPassed, LabelRule::BestGuessPassed, LabelRule::BestGuess] {
            let d = rule(label, Some(0.95));
            assert_eq!((d.label, d.reason, d.best_guess), (None, Some(AbstainReason::OutOfScope), 0));
            assert_ne!(rule(label, Some(0.9)).reason, Some(AbstainReason::OutOfScope));
        }
        // the registry spelling, and a spec without the fields reads as before
        let spec: GateSpec =
            serde_json::from_str(r#"{"label": "best_guess", "open_world": {"reject_below": 0.2}}"#).unwrap();
        let g = Gate::resolve(&spec, &[("a".into(), "1".into())], &[None]);
        assert_eq!((g.label, g.open_world), (LabelRule::BestGuess, Some((InScopeScore::MaxProbability, 0.2))));
        let old: GateSpec = serde_json::from_str("{}").unwrap();
        assert_eq!((old.label, old.open_world.clone()), (LabelRule::BestPassed, None));
        assert!(!serde_json::to_string(&old).unwrap().contains("label"), "defaults are not written");
    }

    #[test]
    fn the_softmax_score_is_the_top_share_of_the_experts_logits() {
        // Independent oracle: the softmax written out over the logits of 0.9, 0.6, 0.1.
        let z = [9.0f32.ln(), 1.5f32.ln(), (1.0f32 / 9.0).ln()];
        let want = z[0].exp() / z.iter().map(|v| v.exp()).sum::<f32>();
        let share = softmax_share([0.6f32, 0.9, 0.1].into_iter());
        assert!((share - want).abs() < 1e-5, "{share} vs {want}");
        assert_eq!(max_probability([0.6f32, 0.9, 0.1].into_iter()), 0.9);
        // A close runner-up lowers it; the top probability alone cannot tell.
        let (lone, close) = ([0.9f32, 0.1], [0.9f32, 0.85]);
        assert_eq!(max_probability(lone.into_iter()), max_probability(close.into_iter()));
        assert!(softmax_share(close.into_iter()) < 0.7 && softmax_share(lone.into_iter()) > 0.98);
        let g =
            Gate::uniform(ScoreMode::Probability).deciding(LabelRule::BestGuess, Some((InScopeScore::Softmax, 0.7)));
        let d = decide(&g, &outs(&[(0.9, 0.5), (0.85, 0.5)]), 1, None);
        assert_eq!((d.label, d.reason), (None, Some(AbstainReason::OutOfScope)));
        assert!(d.out_of_scope.unwrap() > 0.5);
        assert_eq!(decide(&g, &outs(&[(0.9, 0.5), (0.1, 0.5)]), 1, None).label, Some(0));
        let spec: GateSpec =
            serde_json::from_str(r#"{"open_world": {"score": {"kind": "softmax"}, "reject_below": 0.7}}"#).unwrap();
        assert_eq!(spec.open_world.unwrap().score, InScopeScore::Softmax);
    }

    #[test]
    fn a_blend_rule_reads_the_centroid_similarity() {
        let blend = InScopeScore::Blend { weight: 0.5, logit: [0.0, 1.0], similarity: [0.5, 0.1] };
        let g = Gate::uniform(ScoreMode::Probability).deciding(LabelRule::BestGuess, Some((blend, 0.0)));
        let o = outs(&[(0.5, 0.3), (0.2, 0.3)]); // logit(max p) = 0: the probability part is 0
        let near = decide(&g, &o, 1, Some(0.6)); // (0.6 - 0.5) / 0.1 = 1 → 0.5
        assert!((near.in_scope.unwrap() - 0.5).abs() < 1e-4 && near.label == Some(0), "{near:?}");
        let far = decide(&g, &o, 1, Some(0.3)); // (0.3 - 0.5) / 0.1 = -2 → -1: declined
        assert_eq!((far.label, far.reason), (None, Some(AbstainReason::OutOfScope)));
        assert!(far.out_of_scope.unwrap() > 0.5 && near.out_of_scope.unwrap() < 0.5);
        // no similarity (an expert without a centroid): the rule cannot score the text
        assert_eq!(decide(&g, &o, 1, None).reason, None);
        let spec: GateSpec = serde_json::from_str(
            r#"{"open_world": {"score": {"kind": "blend", "weight": 0.5, "logit": [0, 1], "similarity": [0.5, 0.1]}, "reject_below": 0}}"#,
        )
        .unwrap();
        assert_eq!(spec.open_world.unwrap().score, blend);
    }

    #[test]
    fn abstains_when_nobody_passes() {
        let g = Gate::uniform(ScoreMode::Probability);
        let d = decide(&g, &outs(&[(0.2, 0.5), (0.4, 0.5)]), 1, None);
        assert_eq!(d.label, None);
        assert_eq!(d.best_guess, 1);
    }

    #[test]
    fn margin_mode_normalises_by_threshold() {
        let g = Gate::uniform(ScoreMode::Margin);
        // 0.6 over a 0.5 threshold beats 0.7 over a 0.69 threshold in margin mode
        let d = decide(&g, &outs(&[(0.7, 0.69), (0.6, 0.5)]), 1, None);
        assert_eq!(d.label, Some(1));
        let at = decide(&g, &outs(&[(0.3, 0.3)]), 1, None);
        assert!((at.scores[0] - 0.5).abs() < 1e-5, "score is 0.5 at the threshold");
        let p = decide(&Gate::uniform(ScoreMode::Probability), &outs(&[(0.7, 0.69), (0.6, 0.5)]), 1, None);
        assert_eq!(p.label, Some(0));
    }

    #[test]
    fn length_gate_shifts_weight_with_length() {
        let spec = GateSpec {
            kind: GateKind::Length,
            length: Some(LengthGate {
                params: [("short".to_string(), [1.0, -1.0]), ("long".to_string(), [-1.0, 1.0])].into(),
            }),
            ..Default::default()
        };
        let experts = vec![("short".to_string(), "1".to_string()), ("long".to_string(), "1".to_string())];
        let g = Gate::resolve(&spec, &experts, &[]);
        assert_eq!(g.disabled, None);
        let o = outs(&[(0.8, 0.5), (0.8, 0.5)]);
        assert_eq!(decide(&g, &o, 0, None).label, Some(0));
        assert_eq!(decide(&g, &o, 50, None).label, Some(1));
        // hand-computed: words=0 -> logits (1, -1) -> w0 = e / (e + 1/e)
        let w = weights(&g, &o, 0);
        let e = std::f32::consts::E;
        assert!((w[0] - e / (e + 1.0 / e)).abs() < 1e-6);
    }

    #[test]
    fn stacking_gate_disabled_on_version_mismatch() {
        let spec = GateSpec {
            kind: GateKind::Stacking,
            stacking: Some(StackingGate {
                classes: vec!["a".into(), "b".into()],
                versions: [("a".to_string(), "1".to_string()), ("b".to_string(), "1".to_string())].into(),
                weights: vec![vec![1.0, 0.0], vec![0.0, 1.0]],
                bias: vec![0.0, 0.0],
            }),
            ..Default::default()
        };
        let ok = Gate::resolve(&spec, &[("a".into(), "1".into()), ("b".into(), "1".into())], &[]);
        assert_eq!(ok.weights.name(), "stacking");
        let swapped = Gate::resolve(&spec, &[("a".into(), "1".into()), ("b".into(), "2".into())], &[]);
        assert_eq!(swapped.weights, GateWeights::Uniform);
        assert!(swapped.disabled.unwrap().contains("version"));
        let grown = Gate::resolve(&spec, &[("a".into(), "1".into())], &[]);
        assert!(grown.disabled.is_some());
        // identity stacking: weights follow the experts' own logits
        let d = decide(&ok, &outs(&[(0.9, 0.5), (0.6, 0.5)]), 1, None);
        assert!(d.weights[0] > d.weights[1]);
        assert_eq!(d.label, Some(0));
    }

    #[test]
    fn calibrated_mode_ranks_by_each_experts_own_map_and_needs_every_map() {
        let spec = GateSpec { score: ScoreMode::Calibrated, ..Default::default() };
        let experts = vec![("a".to_string(), "1".to_string()), ("b".to_string(), "1".to_string())];
        // Expert a is over-confident (its 0.9 means about 0.5), b is honest.
        let g = Gate::resolve(&spec, &experts, &[Some([1.0, -logit(0.9)]), Some(IDENTITY)]);
        assert_eq!((g.score, g.disabled.clone()), (ScoreMode::Calibrated, None));
        let o = outs(&[(0.9, 0.5), (0.7, 0.5)]);
        assert_eq!(decide(&Gate::uniform(ScoreMode::Probability), &o, 1, None).label, Some(0));
        let d = decide(&g, &o, 1, None);
        assert_eq!(d.label, Some(1), "calibrated: 0.5 for a against 0.7 for b");
        assert!((d.scores[0] - 0.25).abs() < 1e-5, "uniform weight 1/2 x calibrated 0.5");
        assert_eq!(d.passed, vec![true, true], "pass / fail stays the raw probability against the threshold");
        // An expert without a calibration: the gate falls back to probabilities and says why.
        let missing = Gate::resolve(&spec, &experts, &[Some(IDENTITY), None]);
        assert_eq!(missing.score, ScoreMode::Probability);
        assert!(missing.disabled.unwrap().contains("b has none"));
    }
}
