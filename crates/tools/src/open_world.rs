//! The open-world choices `moe fit` makes on val: the label rule (`gate::LabelRule`: must a
//! right best guess give way to a lower-ranked expert that passed its lenient threshold?) and
//! the cut-off on the most confident expert's probability below which a text is declined as out
//! of scope. The operator states one trade-off, the share of in-scope val texts the set may
//! decline (`--max-in-scope-abstain`); within it, the rule and cut-off with the best val accuracy
//! win, counting a declined out-of-scope val text (`--oos-label` rows) as right.
//! Every decision goes through `ExpertSet::decide_all`, the service's own code. Never test.

use moe_core::Result;
use moe_core::gate::{GateSpec, LabelRule, OpenWorld};
use moe_core::service::ExpertSet;
use moe_core::stats::roc::binary_report;
use serde_json::{Value, json};

const RULES: [LabelRule; 3] = [LabelRule::BestPassed, LabelRule::BestGuessPassed, LabelRule::BestGuess];

/// Texts, each one's class index, and every expert's probabilities (expert-major).
pub type InScope<'a> = (&'a [String], &'a [usize], &'a [Vec<f32>]);
/// Out-of-scope texts and every expert's probabilities on them (expert-major).
pub type OutOfScope<'a> = (&'a [String], &'a [Vec<f32>]);

/// max_k p_k per text: the in-scope score the cut-off reads.
fn in_scope_scores(probs: &[Vec<f32>], rows: usize) -> Vec<f32> {
    (0..rows).map(|i| probs.iter().map(|p| p[i]).fold(f32::NEG_INFINITY, f32::max)).collect()
}

/// One candidate's val figures.
struct Candidate {
    rule: LabelRule,
    reject_below: Option<f32>,
    accuracy: f64,
    abstained: f64,
    recall: Option<f64>,
    fits_budget: bool,
}

/// The label rule and the open-world rule (None: no cut-off) for the set `make` builds from a
/// gate spec, chosen on val within `budget` (module doc), and the table they were chosen from.
pub fn choose(
    make: &dyn Fn(&GateSpec) -> Result<ExpertSet>,
    base: &GateSpec,
    (texts, truth, probs): InScope,
    (oos_texts, oos_probs): OutOfScope,
    budget: f64,
) -> Result<(LabelRule, Option<OpenWorld>, Value)> {
    let n = texts.len();
    let allowed = (budget * n as f64).floor() as usize;
    let scores = in_scope_scores(probs, n);
    let oos_scores = in_scope_scores(oos_probs, oos_texts.len());
    let mut candidates = Vec::new();
    for rule in RULES {
        let set = make(&GateSpec { label: rule, open_world: None, ..base.clone() })?;
        let answers = set.decide_all(texts, probs, &vec![false; n]);
        let own = answers.iter().filter(|r| r.abstained).count();
        // The cut-off spends what the label rule left of the budget on the least confident texts.
        let mut kept: Vec<f32> = answers.iter().zip(&scores).filter(|(r, _)| !r.abstained).map(|(_, s)| *s).collect();
        kept.sort_by(f32::total_cmp);
        let extra = allowed.saturating_sub(own);
        let reject_below =
            (budget > 0.0 && extra > 0).then(|| kept.get(extra.min(kept.len().saturating_sub(1))).copied()).flatten();
        let declined = |s: f32| reject_below.is_some_and(|t| s < t);
        let right = answers
            .iter()
            .zip(truth)
            .zip(&scores)
            .filter(|((r, t), s)| !declined(**s) && r.label.as_deref() == Some(set.experts[**t].class.as_str()))
            .count();
        let abstained = answers.iter().zip(&scores).filter(|(r, s)| r.abstained || declined(**s)).count();
        let recall = (!oos_texts.is_empty()).then(|| {
            let oos = set.decide_all(oos_texts, oos_probs, &vec![false; oos_texts.len()]);
            oos.iter().zip(&oos_scores).filter(|(r, s)| r.abstained || declined(**s)).count() as f64
                / oos_texts.len() as f64
        });
        candidates.push(Candidate {
            rule,
            reject_below,
            accuracy: right as f64 / n.max(1) as f64,
            abstained: abstained as f64 / n.max(1) as f64,
            recall,
            fits_budget: own <= allowed,
        });
    }
    // Within the budget: the best val accuracy over every val text, an out-of-scope text counted
    // right when declined (CLINC150's accuracy with out-of-scope as one more class; in-scope
    // accuracy alone without such rows); else the fewest in-scope declines. Ties keep the earlier
    // rule (the default first).
    let m = oos_texts.len() as f64;
    let overall = |c: &Candidate| (c.accuracy * n as f64 + c.recall.unwrap_or(0.0) * m) / (n as f64 + m);
    let key = |c: &Candidate| (c.fits_budget, if c.fits_budget { overall(c) } else { -c.abstained }, c.accuracy);
    let best = candidates
        .iter()
        .fold(None::<&Candidate>, |b, c| match b {
            Some(b) if key(b).partial_cmp(&key(c)) != Some(std::cmp::Ordering::Less) => Some(b),
            _ => Some(c),
        })
        .expect("three rules");
    let table: Vec<Value> = candidates
        .iter()
        .map(|c| {
            json!({"label_rule": c.rule, "reject_below": c.reject_below, "val_in_scope_accuracy": c.accuracy,
                   "val_in_scope_declined": c.abstained, "val_out_of_scope_recall": c.recall,
                   "within_budget": c.fits_budget})
        })
        .collect();
    let chosen_by = json!({
        "max_in_scope_abstain": budget, "split": "val", "in_scope_rows": n, "out_of_scope_rows": oos_texts.len(),
        "metric": if oos_texts.is_empty() { "in-scope accuracy within the budget" }
                  else { "accuracy over in-scope and out-of-scope val texts (declined = right for out-of-scope) within the budget" },
        "val_in_scope_accuracy": best.accuracy, "val_in_scope_declined": best.abstained,
        "val_out_of_scope_recall": best.recall, "table": table,
    });
    eprintln!(
        "moe fit: label rule {:?}, out-of-scope cut-off {:?}: val in-scope accuracy {:.2} %, declined {:.2} %{}",
        best.rule,
        best.reject_below,
        best.accuracy * 100.0,
        best.abstained * 100.0,
        best.recall.map_or(String::new(), |r| format!(", out-of-scope recall {:.1} %", r * 100.0))
    );
    let open_world =
        best.reject_below.map(|reject_below| OpenWorld { reject_below, chosen_by: Some(chosen_by.clone()) });
    Ok((best.rule, open_world, chosen_by))
}

/// A split's open-world figures under the set's rules: in-scope accuracy with declines counted
/// wrong, declines by reason, and with out-of-scope rows their recall, precision, F1 and the
/// AUROC of the in-scope score.
pub fn measure(
    set: &ExpertSet,
    classes: &[String],
    (texts, truth, probs): InScope,
    (oos_texts, oos_probs): OutOfScope,
) -> Value {
    let answers = set.decide_all(texts, probs, &vec![false; texts.len()]);
    let n = texts.len().max(1) as f64;
    let right = answers.iter().zip(truth).filter(|(r, t)| r.label.as_deref() == Some(classes[**t].as_str())).count();
    let reason = |rs: &[moe_core::service::TextResult], why: &str| {
        rs.iter().filter(|r| r.reason.is_some_and(|x| x.name() == why)).count()
    };
    let declined_in = answers.iter().filter(|r| r.abstained).count();
    let mut out = json!({
        "in_scope_rows": texts.len(), "in_scope_accuracy": right as f64 / n,
        "in_scope_declined": declined_in as f64 / n,
        "in_scope_declined_by_reason": {"no_expert_passed": reason(&answers, "no_expert_passed"),
                                         "out_of_scope": reason(&answers, "out_of_scope")},
        "out_of_scope_rows": oos_texts.len(),
    });
    if !oos_texts.is_empty() {
        let oos = set.decide_all(oos_texts, oos_probs, &vec![false; oos_texts.len()]);
        let caught = oos.iter().filter(|r| r.abstained).count() as f64;
        let recall = caught / oos_texts.len() as f64;
        let precision = if caught + declined_in as f64 > 0.0 { caught / (caught + declined_in as f64) } else { 0.0 };
        let mut scores: Vec<f32> = in_scope_scores(probs, texts.len()).iter().map(|s| 1.0 - s).collect();
        scores.extend(in_scope_scores(oos_probs, oos_texts.len()).iter().map(|s| 1.0 - s));
        let labels: Vec<bool> = (0..scores.len()).map(|i| i >= texts.len()).collect();
        out["out_of_scope_recall"] = json!(recall);
        out["out_of_scope_precision"] = json!(precision);
        out["out_of_scope_f1"] =
            json!(if recall + precision > 0.0 { 2.0 * recall * precision / (recall + precision) } else { 0.0 });
        out["auroc_max_probability"] = json!(binary_report(&scores, &labels).auc);
        out["out_of_scope_declined_by_reason"] =
            json!({"no_expert_passed": reason(&oos, "no_expert_passed"), "out_of_scope": reason(&oos, "out_of_scope")});
    }
    out
}
