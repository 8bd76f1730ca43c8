//! The gate on a labelled split: each text's decision from the experts' probabilities, gate
//! fitting (length, stacking) and its cross-validated scoring. `moe select` chooses the shipped
//! gate with these; `moe report` compares gates with the same functions.

use super::platt;
use super::softmax::fit_softmax;
use crate::gate::{self, ExpertOutput, Gate, GateKind, GateWeights, ScoreMode, comparable_score};

/// Predicted index per row (the label, or the best guess when the gate abstains) and whether it
/// abstained.
pub fn predictions(gate: &Gate, probs: &[Vec<f32>], thresholds: &[f32], texts: &[String]) -> Vec<(usize, bool)> {
    decisions(gate, probs, thresholds, texts)
        .iter()
        .map(|d| (d.label.unwrap_or(d.best_guess), d.label.is_none()))
        .collect()
}

/// The gate's full decision per text (`probs` is expert-major: probs[k][i]).
pub fn decisions(gate: &Gate, probs: &[Vec<f32>], thresholds: &[f32], texts: &[String]) -> Vec<gate::Decision> {
    texts
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let outs: Vec<ExpertOutput> = probs
                .iter()
                .zip(thresholds)
                .map(|(p, &threshold)| ExpertOutput { probability: p[i], threshold })
                .collect();
            gate::decide(gate, &outs, gate::words(t), None)
        })
        .collect()
}

/// What gates are fitted and scored on: each expert's probabilities on a labelled split (expert-major),
/// the experts' thresholds and calibrations (`gate::IDENTITY` where none), the texts and their
/// class indices.
#[derive(Clone, Copy)]
pub struct GateData<'a> {
    pub probs: &'a [Vec<f32>],
    pub thr: &'a [f32],
    pub cal: &'a [[f32; 2]],
    pub texts: &'a [String],
    pub truth: &'a [usize],
}

/// Each expert's Platt map fitted on `rows` (expert k's positives: rows of class k).
pub fn fit_calibrations(d: &GateData, rows: &[usize]) -> Vec<[f32; 2]> {
    (0..d.probs.len())
        .map(|k| {
            let p: Vec<f32> = rows.iter().map(|&i| d.probs[k][i]).collect();
            let y: Vec<bool> = rows.iter().map(|&i| d.truth[i] == k).collect();
            platt::fit(&p, &y)
        })
        .collect()
}

/// Fit a length or stacking gate on the given rows (offset ln s so the fit targets w·s).
pub fn fit_gate(kind: GateKind, mode: ScoreMode, l2: f32, d: &GateData, rows: &[usize]) -> GateWeights {
    let GateData { probs, thr, cal, texts, truth } = *d;
    let c = probs.len();
    if kind == GateKind::Uniform {
        return GateWeights::Uniform;
    }
    let offset: Vec<Vec<f32>> = rows
        .iter()
        .map(|&i| (0..c).map(|k| comparable_score(mode, probs[k][i], thr[k], cal[k]).max(1e-6).ln()).collect())
        .collect();
    let y: Vec<usize> = rows.iter().map(|&i| truth[i]).collect();
    match kind {
        GateKind::Length => {
            let x: Vec<Vec<f32>> = rows.iter().map(|&i| vec![(1.0 + gate::words(&texts[i]) as f32).ln()]).collect();
            let m = fit_softmax(&x, &offset, &y, c, l2, 300);
            GateWeights::Length((0..c).map(|k| [m.bias[k], m.weights[k][0]]).collect())
        }
        _ => {
            let x: Vec<Vec<f32>> = rows.iter().map(|&i| (0..c).map(|k| gate::logit(probs[k][i])).collect()).collect();
            let m = fit_softmax(&x, &offset, &y, c, l2, 300);
            GateWeights::Stacking { weights: m.weights, bias: m.bias }
        }
    }
}

/// Predictions of a fitted gate by 5-fold cross-validation (row i is in fold i % 5). In
/// `calibrated` mode the experts' calibrations are refitted on the training folds too, so no
/// row is scored by a map that saw it.
pub fn cv_predictions(kind: GateKind, mode: ScoreMode, l2: f32, d: &GateData) -> Vec<(usize, bool)> {
    let texts = d.texts;
    let all: Vec<usize> = (0..texts.len()).collect();
    let mut preds = vec![(0usize, false); texts.len()];
    for fold in 0..5 {
        let train: Vec<usize> = all.iter().copied().filter(|i| i % 5 != fold).collect();
        let cal = if mode == ScoreMode::Calibrated { fit_calibrations(d, &train) } else { d.cal.to_vec() };
        let weights = fit_gate(kind, mode, l2, &GateData { cal: &cal, ..*d }, &train);
        let gate = Gate { weights, calibration: cal, ..Gate::uniform(mode) };
        let p = predictions(&gate, d.probs, d.thr, texts);
        for i in all.iter().copied().filter(|i| i % 5 == fold) {
            preds[i] = p[i];
        }
    }
    preds
}

pub fn accuracy(preds: &[(usize, bool)], truth: &[usize]) -> f64 {
    preds.iter().zip(truth).filter(|(p, t)| p.0 == **t).count() as f64 / truth.len().max(1) as f64
}
