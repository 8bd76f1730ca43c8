//! The open-world choices `moe fit` makes on val: the label rule (`gate::LabelRule`: must a
//! right best guess give way to a lower-ranked expert that passed its lenient threshold?), the
//! in-scope score (the top probability, or a blend with the embedding's similarity to the nearest
//! class centroid, a distance-based score) and the cut-off below which a text is declined as out
//! of scope. The operator states one trade-off (`TradeOff`): either the share of in-scope val
//! texts the set may decline (`--max-in-scope-abstain`), within which the combination with the
//! best val accuracy wins, counting a declined out-of-scope val text (`--oos-label` rows) as
//! right; or the share of out-of-scope texts it must decline (`--min-oos-recall`), read as a
//! one-sided 95 % lower bound on the val recall (100 out-of-scope val rows leave a wide interval),
//! within which the combination with the best in-scope val accuracy wins. Label rules are judged
//! with cross-fitted thresholds (`cross_fitted`), since the served ones are fitted on val. Every
//! decision goes through the service's own `ExpertSet::decide`. Never test.

use std::collections::BTreeMap;

use moe_core::Result;
use moe_core::gate::{AbstainReason, GateSpec, InScopeScore, LabelRule, OpenWorld, logit, max_probability};
use moe_core::service::{ExpertSet, TextResult};
use moe_core::stats::roc::{binary_report, wilson_lower};
use serde_json::{Value, json};

/// The operator's one trade-off between declining in-scope texts and letting out-of-scope ones in.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum TradeOff {
    /// At most this share of in-scope val texts declined.
    MaxInScopeAbstain(f64),
    /// At least this share of out-of-scope texts declined: the one-sided 95 % Wilson lower bound
    /// of the val recall must reach it.
    MinOutOfScopeRecall(f64),
}

/// The in-scope scores the operator lets `moe fit` choose among (`--in-scope-score`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ScoreChoice {
    /// The top probability or a blend, chosen on val (softmax only when asked for: it ranks
    /// in-scope errors best but catches unseen classes worst, docs/TRAINING.md "Coverage").
    Auto,
    MaxProbability,
    Softmax,
    /// The blends of the top probability with the centroid similarity (their weight on val).
    Blend,
}

impl ScoreChoice {
    fn allows(self, score: &InScopeScore) -> bool {
        matches!(
            (self, score),
            (ScoreChoice::Auto, InScopeScore::MaxProbability | InScopeScore::Blend { .. })
                | (ScoreChoice::MaxProbability, InScopeScore::MaxProbability)
                | (ScoreChoice::Softmax, InScopeScore::Softmax)
                | (ScoreChoice::Blend, InScopeScore::Blend { .. })
        )
    }
}

/// Standard errors below the val recall for a one-sided 95 % bound.
const ONE_SIDED_95: f64 = 1.6448536269514722;

/// The fewest of `m` out-of-scope val texts to decline so that the recall's lower bound reaches
/// `recall`; None when even all `m` do not.
fn declines_needed(m: usize, recall: f64) -> Option<usize> {
    (0..=m).find(|&k| wilson_lower(k, m, ONE_SIDED_95) >= recall)
}

/// A cut-off below which exactly the `extra` lowest of the ascending `sorted` scores fall (with
/// any equal to the last of them): halfway to the next higher score. None if there are fewer.
fn cut_above(sorted: &[f32], extra: usize) -> Option<f32> {
    let last = *sorted.get(extra.checked_sub(1)?)?;
    Some(match sorted[extra..].iter().find(|&&s| s > last) {
        Some(&next) => Some(last + (next - last) / 2.0).filter(|&m| m > last).unwrap_or(next),
        None => last.next_up(),
    })
}

const RULES: [LabelRule; 3] = [LabelRule::BestPassed, LabelRule::BestGuessPassed, LabelRule::BestGuess];
/// Weights of the probability part a `blend` score is tried with.
const BLEND_WEIGHTS: [f32; 3] = [0.3, 0.5, 0.7];

/// Texts, each one's class index, every expert's probabilities (expert-major) and each text's
/// best centroid similarity (`ExpertSet::nearest_on`).
pub type InScope<'a> = (&'a [String], &'a [usize], &'a [Vec<f32>], &'a [Option<f32>]);
/// Out-of-scope texts, every expert's probabilities on them and their centroid similarities.
pub type OutOfScope<'a> = (&'a [String], &'a [Vec<f32>], &'a [Option<f32>]);

/// max_k p_k per text.
fn max_probabilities(probs: &[Vec<f32>], rows: usize) -> Vec<f32> {
    (0..rows).map(|i| max_probability(probs.iter().map(|p| p[i]))).collect()
}

/// Mean and standard deviation.
fn spread(v: &[f32]) -> [f32; 2] {
    let n = v.len().max(1) as f64;
    let m = v.iter().map(|&x| f64::from(x)).sum::<f64>() / n;
    let var = v.iter().map(|&x| (f64::from(x) - m).powi(2)).sum::<f64>() / n;
    [m as f32, var.sqrt().max(1e-6) as f32]
}

/// The in-scope scores to try: the top probability, the softmax share, and blends with the
/// centroid similarity (standardised on the in-scope val texts) when every text has one.
fn scores_to_try(max_p: &[f32], nearest: &[Option<f32>]) -> Vec<InScopeScore> {
    let mut out = vec![InScopeScore::MaxProbability, InScopeScore::Softmax];
    if let Some(sims) = nearest.iter().copied().collect::<Option<Vec<f32>>>().filter(|s| !s.is_empty()) {
        let logits: Vec<f32> = max_p.iter().map(|&p| logit(p)).collect();
        let (l, s) = (spread(&logits), spread(&sims));
        out.extend(BLEND_WEIGHTS.iter().map(|&weight| InScopeScore::Blend { weight, logit: l, similarity: s }));
    }
    out
}

/// The set's answers on the val texts and the out-of-scope val texts with each expert's EER
/// threshold read off the other half of val (two folds, alternate rows of each class; the
/// out-of-scope rows alternate too). The served thresholds are fitted on all of val, so val
/// cannot judge them in sample: a rule that leans on 150 thresholds looked better on val than
/// on test (docs/TRAINING.md); cross-fitting measures it out of sample.
fn cross_fitted(
    set: &mut ExpertSet,
    (texts, truth, probs): (&[String], &[usize], &[Vec<f32>]),
    (oos_texts, oos_probs): (&[String], &[Vec<f32>]),
) -> (Vec<TextResult>, Vec<TextResult>) {
    let mut seen = vec![0usize; set.experts.len()];
    let fold: Vec<usize> = truth
        .iter()
        .map(|&t| {
            seen[t] += 1;
            seen[t] % 2
        })
        .collect();
    let served = set.thresholds.clone();
    let (mut answers, mut oos) = (vec![None; texts.len()], vec![None; oos_texts.len()]);
    for f in 0..2 {
        let other: Vec<usize> = (0..texts.len()).filter(|&i| fold[i] != f).collect();
        set.thresholds = probs
            .iter()
            .enumerate()
            .map(|(k, p)| {
                let scores: Vec<f32> = other.iter().map(|&i| p[i]).collect();
                let labels: Vec<bool> = other.iter().map(|&i| truth[i] == k).collect();
                if labels.iter().any(|&y| y) && labels.iter().any(|&y| !y) {
                    (binary_report(&scores, &labels).eer_threshold as f32).clamp(1e-6, 1.0 - 1e-6)
                } else {
                    served[k]
                }
            })
            .collect();
        let column = |p: &[Vec<f32>], i: usize| p.iter().map(|v| v[i]).collect::<Vec<f32>>();
        for i in (0..texts.len()).filter(|&i| fold[i] == f) {
            answers[i] = Some(set.decide(&texts[i], &column(probs, i), false, None));
        }
        for (i, slot) in oos.iter_mut().enumerate().filter(|(i, _)| i % 2 == f) {
            *slot = Some(set.decide(&oos_texts[i], &column(oos_probs, i), false, None));
        }
    }
    set.thresholds = served;
    (answers.into_iter().flatten().collect(), oos.into_iter().flatten().collect())
}

/// One candidate's val figures.
struct Candidate {
    score: InScopeScore,
    rule: LabelRule,
    reject_below: Option<f32>,
    accuracy: f64,
    abstained: f64,
    recall: Option<f64>,
    /// Within the budget, or reaching the recall bound.
    meets: bool,
    /// AUROC of the score between the in-scope val texts whose best guess is right and those
    /// whose best guess is wrong: how well it ranks along the whole coverage curve, not only at
    /// the cut-off (reported in the table).
    ranking: f64,
}

/// The label rule and the open-world rule (None: no cut-off) for the set `make` builds from a
/// gate spec, chosen on val under the operator's trade-off (module doc), and the table they were
/// chosen from. `versions` (class -> bundle version of the set's experts) goes into the rule as
/// it stands.
pub fn choose(
    make: &dyn Fn(&GateSpec) -> Result<ExpertSet>,
    base: &GateSpec,
    versions: BTreeMap<String, String>,
    (texts, truth, probs, nearest): InScope,
    (oos_texts, oos_probs, oos_nearest): OutOfScope,
    trade_off: TradeOff,
    allowed: ScoreChoice,
) -> Result<(LabelRule, Option<OpenWorld>, Value)> {
    let (n, m) = (texts.len(), oos_texts.len());
    let max_p = max_probabilities(probs, n);
    // Each text's score from its column of the expert-major probabilities.
    let of = |score: &InScopeScore, p: &[Vec<f32>], rows: usize, near: &[Option<f32>]| -> Vec<f32> {
        (0..rows)
            .map(|i| score.of(p.iter().map(|e| e[i]), near.get(i).copied().flatten()).unwrap_or(f32::INFINITY))
            .collect()
    };
    let needed = match trade_off {
        TradeOff::MinOutOfScopeRecall(r) => declines_needed(m, r),
        TradeOff::MaxInScopeAbstain(_) => None,
    };
    let mut candidates = Vec::new();
    for rule in RULES {
        let mut set = make(&GateSpec { label: rule, open_world: None, ..base.clone() })?;
        let (answers, oos) = cross_fitted(&mut set, (texts, truth, probs), (oos_texts, oos_probs));
        let guessed_right: Vec<bool> =
            answers.iter().zip(truth).map(|(r, &t)| r.best_guess.as_str() == set.experts[t].class).collect();
        for score in scores_to_try(&max_p, nearest).into_iter().filter(|s| allowed.allows(s)) {
            let scores = of(&score, probs, n, nearest);
            let oos_scores = of(&score, oos_probs, m, oos_nearest);
            let (reject_below, meets) = match trade_off {
                TradeOff::MaxInScopeAbstain(budget) => budget_cut(budget, n, &answers, &scores),
                TradeOff::MinOutOfScopeRecall(_) => recall_cut(needed, &oos, &oos_scores),
            };
            let declined = |s: f32| reject_below.is_some_and(|t| s < t);
            let right = answers
                .iter()
                .zip(truth)
                .zip(&scores)
                .filter(|((r, t), s)| !declined(**s) && r.label.as_deref() == Some(set.experts[**t].class.as_str()))
                .count();
            let abstained = answers.iter().zip(&scores).filter(|(r, s)| r.abstained || declined(**s)).count();
            let recall = (m > 0).then(|| {
                oos.iter().zip(&oos_scores).filter(|(r, s)| r.abstained || declined(**s)).count() as f64 / m as f64
            });
            candidates.push(Candidate {
                score,
                rule,
                reject_below,
                accuracy: right as f64 / n.max(1) as f64,
                abstained: abstained as f64 / n.max(1) as f64,
                recall,
                meets,
                ranking: ranking_auc(&scores, &guessed_right),
            });
        }
    }
    if candidates.is_empty() {
        return Err(moe_core::Error::BadRequest(format!(
            "--in-scope-score {allowed:?}: no such score for this set (a blend needs every head's class centroid)"
        )));
    }
    let (best, chosen_by) = pick(&candidates, n, m, trade_off, needed);
    let open_world = best.reject_below.map(|reject_below| OpenWorld {
        score: best.score,
        reject_below,
        chosen_by: Some(chosen_by.clone()),
        versions,
    });
    Ok((best.rule, open_world, chosen_by))
}

/// AUROC of `scores` for `right` (0.5 when either side is empty or a score is missing).
fn ranking_auc(scores: &[f32], right: &[bool]) -> f64 {
    let both = right.iter().any(|&r| r) && right.iter().any(|&r| !r);
    if !both || scores.iter().any(|s| !s.is_finite()) {
        return 0.5;
    }
    binary_report(scores, right).auc
}

/// Under an in-scope budget (a share of the `n` val texts): the cut-off spends what the label rule
/// left of the budget on the lowest scores; whether the rule alone is within the budget.
fn budget_cut(budget: f64, n: usize, answers: &[TextResult], scores: &[f32]) -> (Option<f32>, bool) {
    let own = answers.iter().filter(|r| r.abstained).count();
    let allowed = (budget * n as f64).floor() as usize;
    let mut kept: Vec<f32> = answers.iter().zip(scores).filter(|(r, _)| !r.abstained).map(|(_, s)| *s).collect();
    kept.sort_by(f32::total_cmp);
    let extra = allowed.saturating_sub(own);
    let cut = (budget > 0.0 && extra > 0).then(|| kept.get(extra.min(kept.len().saturating_sub(1))).copied()).flatten();
    (cut, own <= allowed)
}

/// Under a bound on out-of-scope recall: the cut-off declines the lowest-scored out-of-scope texts
/// the label rule let through, as many as the bound needs (all of them when it cannot be reached);
/// whether the bound is reached.
fn recall_cut(needed: Option<usize>, oos: &[TextResult], oos_scores: &[f32]) -> (Option<f32>, bool) {
    let mut open: Vec<f32> =
        oos.iter().zip(oos_scores).filter(|(r, s)| !r.abstained && s.is_finite()).map(|(_, s)| *s).collect();
    open.sort_by(f32::total_cmp);
    let caught = oos.iter().filter(|r| r.abstained).count();
    match needed.map(|k| k.saturating_sub(caught)) {
        Some(0) => (None, true),
        Some(extra) if extra <= open.len() => (cut_above(&open, extra), true),
        _ => (cut_above(&open, open.len()), false),
    }
}

/// The candidate chosen on val, and how (the table of every candidate, for the card and report).
fn pick(
    candidates: &[Candidate],
    n: usize,
    oos_rows: usize,
    trade_off: TradeOff,
    needed: Option<usize>,
) -> (&Candidate, Value) {
    // Budget: within it, the best val accuracy over every val text, an out-of-scope text counted
    // right when declined (CLINC150's accuracy with out-of-scope as one more class; in-scope
    // accuracy alone without such rows); else the fewest in-scope declines. Recall: among those
    // reaching the bound, the best in-scope val accuracy; else the highest recall. Ties keep the
    // earlier candidate (the default rule and the top probability first). The ranking AUROC is
    // reported, not chosen on.
    let m = oos_rows as f64;
    let overall = |c: &Candidate| (c.accuracy * n as f64 + c.recall.unwrap_or(0.0) * m) / (n as f64 + m);
    let key = |c: &Candidate| match trade_off {
        TradeOff::MaxInScopeAbstain(_) => (c.meets, if c.meets { overall(c) } else { -c.abstained }, c.accuracy),
        TradeOff::MinOutOfScopeRecall(_) => {
            (c.meets, if c.meets { c.accuracy } else { c.recall.unwrap_or(0.0) }, c.accuracy)
        }
    };
    let best = candidates
        .iter()
        .fold(None::<&Candidate>, |b, c| match b {
            Some(b) if key(b).partial_cmp(&key(c)) != Some(std::cmp::Ordering::Less) => Some(b),
            _ => Some(c),
        })
        .expect("choose refuses an empty list");
    let meets_key = match trade_off {
        TradeOff::MaxInScopeAbstain(_) => "within_budget",
        TradeOff::MinOutOfScopeRecall(_) => "reaches_recall_bound",
    };
    let table: Vec<Value> = candidates
        .iter()
        .map(|c| {
            json!({"score": c.score, "label_rule": c.rule, "reject_below": c.reject_below,
                   "val_in_scope_accuracy": c.accuracy, "val_in_scope_declined": c.abstained,
                   "val_out_of_scope_recall": c.recall, meets_key: c.meets, "val_ranking_auroc": c.ranking})
        })
        .collect();
    let mut chosen_by = json!({
        "split": "val", "in_scope_rows": n, "out_of_scope_rows": oos_rows,
        "val_in_scope_accuracy": best.accuracy, "val_in_scope_declined": best.abstained,
        "val_out_of_scope_recall": best.recall, "table": table,
    });
    match trade_off {
        TradeOff::MaxInScopeAbstain(budget) => {
            chosen_by["max_in_scope_abstain"] = json!(budget);
            chosen_by["metric"] = json!(if oos_rows == 0 {
                "in-scope accuracy within the budget"
            } else {
                "accuracy over in-scope and out-of-scope val texts (declined = right for out-of-scope) within the budget"
            });
        }
        TradeOff::MinOutOfScopeRecall(recall) => {
            chosen_by["min_out_of_scope_recall"] = json!(recall);
            chosen_by["bound"] = json!("one-sided 95 % Wilson lower bound of the val out-of-scope recall");
            chosen_by["out_of_scope_declines_needed"] = json!(needed);
            chosen_by["val_out_of_scope_recall_bound"] =
                json!(best.recall.map(|r| wilson_lower((r * m).round() as usize, oos_rows, ONE_SIDED_95)));
            chosen_by["reached"] = json!(best.meets);
            chosen_by["metric"] =
                json!("in-scope val accuracy (declines counted wrong) among the candidates reaching the bound");
        }
    }
    eprintln!(
        "moe fit: label rule {:?}, out-of-scope score {:?} cut at {:?}: val in-scope accuracy {:.2} %, declined {:.2} %{}{}",
        best.rule,
        best.score,
        best.reject_below,
        best.accuracy * 100.0,
        best.abstained * 100.0,
        best.recall.map_or(String::new(), |r| format!(", out-of-scope recall {:.1} %", r * 100.0)),
        if best.meets { "" } else { " (the trade-off could not be met on val)" }
    );
    (best, chosen_by)
}

/// A split's open-world figures under the set's rules: in-scope accuracy with declines counted
/// wrong, declines by reason, and with out-of-scope rows their recall, precision, F1 and the
/// AUROC of the top probability and of the rule's own score.
pub fn measure(
    set: &ExpertSet,
    classes: &[String],
    (texts, truth, probs, nearest): InScope,
    (oos_texts, oos_probs, oos_nearest): OutOfScope,
) -> Value {
    let answers = set.decide_all(texts, probs, &vec![false; texts.len()], nearest);
    let n = texts.len().max(1) as f64;
    let right = answers.iter().zip(truth).filter(|(r, t)| r.label.as_deref() == Some(classes[**t].as_str())).count();
    let by_reason = |rs: &[TextResult]| {
        json!({"no_expert_passed": rs.iter().filter(|r| r.reason == Some(AbstainReason::NoExpertPassed)).count(),
               "out_of_scope": rs.iter().filter(|r| r.reason == Some(AbstainReason::OutOfScope)).count()})
    };
    let declined_in = answers.iter().filter(|r| r.abstained).count();
    let mut out = json!({
        "in_scope_rows": texts.len(), "in_scope_accuracy": right as f64 / n,
        "in_scope_declined": declined_in as f64 / n,
        "in_scope_declined_by_reason": by_reason(&answers),
        "out_of_scope_rows": oos_texts.len(),
    });
    if !oos_texts.is_empty() {
        let oos = set.decide_all(oos_texts, oos_probs, &vec![false; oos_texts.len()], oos_nearest);
        let caught = oos.iter().filter(|r| r.abstained).count() as f64;
        let recall = caught / oos_texts.len() as f64;
        let precision = if caught + declined_in as f64 > 0.0 { caught / (caught + declined_in as f64) } else { 0.0 };
        let mut scores: Vec<f32> = max_probabilities(probs, texts.len()).iter().map(|s| 1.0 - s).collect();
        scores.extend(max_probabilities(oos_probs, oos_texts.len()).iter().map(|s| 1.0 - s));
        let labels: Vec<bool> = (0..scores.len()).map(|i| i >= texts.len()).collect();
        // The rule's own score, when it is not the top probability.
        let rule: Vec<f32> = answers.iter().chain(&oos).filter_map(|r| r.out_of_scope_score).collect();
        if rule.len() == labels.len() {
            out["auroc_rule_score"] = json!(binary_report(&rule, &labels).auc);
        }
        out["out_of_scope_recall"] = json!(recall);
        out["out_of_scope_precision"] = json!(precision);
        out["out_of_scope_f1"] =
            json!(if recall + precision > 0.0 { 2.0 * recall * precision / (recall + precision) } else { 0.0 });
        out["auroc_max_probability"] = json!(binary_report(&scores, &labels).auc);
        out["out_of_scope_declined_by_reason"] = by_reason(&oos);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cut_declines_exactly_the_lowest_scores_with_their_ties() {
        let s = [0.1, 0.2, 0.2, 0.4];
        let below = |t: f32| s.iter().filter(|&&x| x < t).count();
        assert_eq!(cut_above(&s, 1), Some(0.15));
        assert_eq!(below(cut_above(&s, 2).unwrap()), 3, "a tie with the last declined is declined too");
        assert_eq!(cut_above(&s, 4).map(below), Some(4), "all: just above the highest");
        assert_eq!((cut_above(&s, 0), cut_above(&s, 5)), (None, None));
        // Adjacent floats have no midpoint between them: the higher one is the cut.
        let (a, b) = (1.0f32, 1.0f32.next_up());
        assert_eq!(cut_above(&[a, b], 1), Some(b));
    }

    fn candidate(score: InScopeScore, accuracy: f64, recall: Option<f64>, ranking: f64) -> Candidate {
        let (rule, reject_below, abstained, meets) = (LabelRule::BestGuess, Some(0.1), 0.03, true);
        Candidate { score, rule, reject_below, accuracy, abstained, recall, meets, ranking }
    }

    #[test]
    fn the_operating_point_decides_and_ties_keep_the_earlier_score() {
        let budget = TradeOff::MaxInScopeAbstain(0.03);
        // One more right text at the cut-off wins over a better ranking along the curve.
        let cands = [
            candidate(InScopeScore::MaxProbability, 0.798, None, 0.80),
            candidate(InScopeScore::Softmax, 0.800, None, 0.84),
        ];
        assert_eq!(pick(&cands, 580, 0, budget, None).0.score, InScopeScore::Softmax);
        let cands = [
            candidate(InScopeScore::MaxProbability, 0.800, None, 0.80),
            candidate(InScopeScore::Softmax, 0.800, None, 0.84),
        ];
        assert_eq!(pick(&cands, 580, 0, budget, None).0.score, InScopeScore::MaxProbability);
        // With out-of-scope rows, accuracy over both (declined out-of-scope texts right) decides.
        let cands = [
            candidate(InScopeScore::MaxProbability, 0.80, Some(0.90), 0.80),
            candidate(InScopeScore::Softmax, 0.81, Some(0.80), 0.84),
        ];
        assert_eq!(pick(&cands, 580, 100, budget, None).0.score, InScopeScore::MaxProbability);
        assert_eq!(ranking_auc(&[0.9, 0.8, 0.1], &[true, true, false]), 1.0);
        // Unasked, the rule never reads the softmax score; asked, it reads nothing else.
        let all = scores_to_try(&[0.9, 0.2], &[Some(0.8), Some(0.1)]);
        let kept = |c: ScoreChoice| all.iter().filter(|s| c.allows(s)).copied().collect::<Vec<_>>();
        assert!(!kept(ScoreChoice::Auto).contains(&InScopeScore::Softmax) && kept(ScoreChoice::Auto).len() == 4);
        assert_eq!(kept(ScoreChoice::Softmax), vec![InScopeScore::Softmax]);
        assert_eq!(ranking_auc(&[0.9, f32::INFINITY], &[true, false]), 0.5, "a text the score cannot read");
    }

    #[test]
    fn declines_needed_is_the_fewest_whose_lower_bound_reaches_the_recall() {
        // statsmodels' Wilson bounds (stats::roc tests): 86/100 -> 0.793, 87/100 -> 0.805.
        assert_eq!(declines_needed(100, 0.8), Some(87));
        assert_eq!(declines_needed(100, 0.98), None, "100/100 only vouches for 0.974");
        assert_eq!(declines_needed(0, 0.5), None);
    }
}
