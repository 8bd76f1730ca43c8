//! Binary L2 logistic regression with sample weights, the objective of scikit-learn's
//! `LogisticRegression(C=c)` (the trainer's heads):
//!
//!   minimise  ½‖w‖² + C · Σᵢ sᵢ · log(1 + exp(−ỹᵢ (w·xᵢ + b)))      (b not penalised)
//!
//! solved by Newton's method (a Cholesky solve of the (d+1)² Hessian per step, with step halving
//! when the objective would rise): strongly convex, so it converges in a few steps to the same
//! optimum sklearn's lbfgs reaches (tests/fixtures/sklearn_logreg.json, written by sklearn, checks
//! it). Why not a crate: `linfa-logistic` brings ndarray, argmin and linfa for one convex fit of a
//! few hundred features; the whole solver is this file and it is checked against sklearn.
//! Also: stratified k-fold cross-validation, which picks C and gives out-of-fold scores.

use super::roc::binary_report;
use crate::bundle::quality::BinaryReport;
use crate::inference::LinearHead;

/// The C values cross-validation chooses from (sklearn's C: larger fits the data harder).
pub const C_GRID: [f64; 4] = [0.1, 1.0, 10.0, 100.0];
/// Folds of the cross-validation that picks C (fewer when a class has fewer examples).
pub const FOLDS: usize = 5;
/// Seed of the folds' order.
const CV_SEED: u64 = 42;

/// A fitted model: probability = sigmoid(w·x + b), with w and b as the linear head that serves it.
#[derive(Debug, Clone, PartialEq)]
pub struct Logistic {
    pub head: LinearHead,
    /// Newton steps taken.
    pub iterations: usize,
}

impl Logistic {
    pub fn probability(&self, x: &[f32]) -> f32 {
        sigmoid(f64::from(self.head.score(x))) as f32
    }
}

pub(super) fn sigmoid(z: f64) -> f64 {
    1.0 / (1.0 + (-z).exp())
}

/// log(1 + exp(z)) without overflow.
pub(super) fn softplus(z: f64) -> f64 {
    if z > 0.0 { z + (-z).exp().ln_1p() } else { z.exp().ln_1p() }
}

/// The balanced sample weights of the trainer's `class_weight` rebalancing: positives and
/// negatives each carry half the total weight.
pub fn balanced_weights(y: &[bool]) -> Vec<f64> {
    let n = y.len() as f64;
    let pos = y.iter().filter(|&&v| v).count().max(1) as f64;
    let neg = (y.len() as f64 - pos).max(1.0);
    y.iter().map(|&v| if v { n / (2.0 * pos) } else { n / (2.0 * neg) }).collect()
}

fn objective(x: &[&[f32]], y: &[bool], s: &[f64], c: f64, beta: &[f64]) -> f64 {
    let d = beta.len() - 1;
    let reg: f64 = beta[..d].iter().map(|v| v * v).sum::<f64>() * 0.5;
    let loss: f64 = x
        .iter()
        .zip(y)
        .zip(s)
        .map(|((xi, &yi), si)| {
            let z = xi.iter().zip(beta).map(|(a, b)| f64::from(*a) * b).sum::<f64>() + beta[d];
            si * softplus(if yi { -z } else { z })
        })
        .sum();
    reg + c * loss
}

/// Solve `h · v = g` in place for a symmetric positive definite `h` (n × n, row-major) by Cholesky.
fn cholesky_solve(h: &mut [f64], g: &mut [f64], n: usize) -> bool {
    for j in 0..n {
        let mut diag = h[j * n + j];
        for k in 0..j {
            diag -= h[j * n + k] * h[j * n + k];
        }
        if diag <= 0.0 || !diag.is_finite() {
            return false;
        }
        let diag = diag.sqrt();
        h[j * n + j] = diag;
        for i in j + 1..n {
            let mut v = h[i * n + j];
            for k in 0..j {
                v -= h[i * n + k] * h[j * n + k];
            }
            h[i * n + j] = v / diag;
        }
    }
    for i in 0..n {
        let mut v = g[i];
        for k in 0..i {
            v -= h[i * n + k] * g[k];
        }
        g[i] = v / h[i * n + i];
    }
    for i in (0..n).rev() {
        let mut v = g[i];
        for k in i + 1..n {
            v -= h[k * n + i] * g[k];
        }
        g[i] = v / h[i * n + i];
    }
    true
}

/// Fit on rows `x` (each of the same length) with labels `y`, sample weights `s` and strength `c`.
pub fn fit(x: &[&[f32]], y: &[bool], s: &[f64], c: f64) -> Logistic {
    let d = x.first().map_or(0, |r| r.len());
    let n = d + 1;
    let mut beta = vec![0f64; n];
    let mut obj = objective(x, y, s, c, &beta);
    let mut iterations = 0;
    for _ in 0..100 {
        iterations += 1;
        let mut g = vec![0f64; n];
        let mut h = vec![0f64; n * n];
        let mut row = vec![0f64; n];
        for ((xi, &yi), si) in x.iter().zip(y).zip(s) {
            for (r, v) in row.iter_mut().zip(xi.iter()) {
                *r = f64::from(*v);
            }
            row[d] = 1.0;
            let z: f64 = row.iter().zip(&beta).map(|(a, b)| a * b).sum();
            let p = sigmoid(z);
            let gi = c * si * (p - if yi { 1.0 } else { 0.0 });
            let hi = c * si * p * (1.0 - p);
            for a in 0..n {
                g[a] += gi * row[a];
                let ha = hi * row[a];
                if ha != 0.0 {
                    let line = &mut h[a * n..a * n + a + 1];
                    for (hv, rb) in line.iter_mut().zip(&row[..=a]) {
                        *hv += ha * rb;
                    }
                }
            }
        }
        for a in 0..d {
            g[a] += beta[a];
            h[a * n + a] += 1.0;
        }
        h[d * n + d] += 1e-9; // the unpenalised intercept: keep the system definite
        for a in 0..n {
            for b in 0..a {
                h[b * n + a] = h[a * n + b];
            }
        }
        let gnorm = g.iter().map(|v| v.abs()).fold(0.0, f64::max);
        if gnorm < 1e-7 * c.max(1.0) || !cholesky_solve(&mut h, &mut g, n) {
            break;
        }
        // g now holds the Newton step; halve it until the objective does not rise.
        let mut t = 1.0;
        let mut accepted = false;
        for _ in 0..30 {
            let trial: Vec<f64> = beta.iter().zip(&g).map(|(b, st)| b - t * st).collect();
            let o = objective(x, y, s, c, &trial);
            if o <= obj {
                let moved = beta.iter().zip(&trial).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
                beta = trial;
                obj = o;
                accepted = moved > 1e-10;
                break;
            }
            t *= 0.5;
        }
        if !accepted {
            break;
        }
    }
    let head = LinearHead::new(beta[..d].iter().map(|&v| v as f32).collect(), beta[d] as f32);
    Logistic { head, iterations }
}

/// Stratified fold of each row (0..k): positives and negatives each dealt round-robin in a
/// seeded order, so every fold has its share of both.
pub fn stratified_folds(y: &[bool], k: usize, seed: u64) -> Vec<usize> {
    let mut fold = vec![0usize; y.len()];
    for want in [true, false] {
        let mut idx: Vec<usize> = (0..y.len()).filter(|&i| y[i] == want).collect();
        shuffle(&mut idx, seed ^ u64::from(want));
        for (j, &i) in idx.iter().enumerate() {
            fold[i] = j % k;
        }
    }
    fold
}

/// One SplitMix64 step: advance `state` and return the next number of its stream (seeded,
/// portable, no dependency: the shuffles, samples and perturbations here must repeat on every
/// machine).
pub fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Fisher–Yates with a SplitMix64 stream: deterministic for a seed, no dependency.
pub fn shuffle<T>(v: &mut [T], seed: u64) {
    let mut state = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
    for i in (1..v.len()).rev() {
        let j = (splitmix64(&mut state) % (i as u64 + 1)) as usize;
        v.swap(i, j);
    }
}

/// Out-of-fold probabilities: each row scored by a model fitted on the other folds (balanced
/// weights recomputed per training part).
pub fn cross_val_probabilities(x: &[&[f32]], y: &[bool], folds: &[usize], k: usize, c: f64) -> Vec<f32> {
    let mut out = vec![0f32; y.len()];
    for f in 0..k {
        let train: Vec<usize> = (0..y.len()).filter(|&i| folds[i] != f).collect();
        let xt: Vec<&[f32]> = train.iter().map(|&i| x[i]).collect();
        let yt: Vec<bool> = train.iter().map(|&i| y[i]).collect();
        let m = fit(&xt, &yt, &balanced_weights(&yt), c);
        for i in (0..y.len()).filter(|&i| folds[i] == f) {
            out[i] = m.probability(x[i]);
        }
    }
    out
}

/// What cross-validation chose.
pub struct Fitted {
    pub model: Logistic,
    pub c: f64,
    pub folds: usize,
    pub report: BinaryReport,
    pub grid: Vec<serde_json::Value>,
}

/// Pick C by out-of-fold AUC, read the EER threshold off the out-of-fold probabilities, refit on all.
/// Balanced class weights make the fit's implicit prior 1/2; `logit_shift` (ln(p / (1 - p)) for the
/// class's expected share p of traffic) moves the probabilities, the threshold and the cv report to
/// that prior, so the new expert competes in the gate on the scale of the others. The decisions at
/// the threshold, the AUC and the EER do not change (a monotone shift of both sides).
pub fn cross_validate(x: &[Vec<f32>], y: &[bool], logit_shift: f64) -> Fitted {
    let rows: Vec<&[f32]> = x.iter().map(Vec::as_slice).collect();
    let pos = y.iter().filter(|&&v| v).count();
    let k = FOLDS.min(pos).min(y.len() - pos).max(2);
    let folds = stratified_folds(y, k, CV_SEED);
    let mut best: Option<(f64, Vec<f32>, BinaryReport)> = None;
    let mut grid = Vec::new();
    for &c in &C_GRID {
        let oof = cross_val_probabilities(&rows, y, &folds, k, c);
        let r = binary_report(&oof, y);
        grid.push(serde_json::json!({"C": c, "cv_auc": r.auc, "cv_eer": r.eer}));
        if best.as_ref().is_none_or(|(_, _, b)| r.auc > b.auc) {
            best = Some((c, oof, r));
        }
    }
    let (c, oof, _) = best.expect("C_GRID is not empty");
    let shifted: Vec<f32> = oof.iter().map(|&p| shift_probability(p, logit_shift)).collect();
    let report = binary_report(&shifted, y);
    let mut model = fit(&rows, y, &balanced_weights(y), c);
    model.head.bias += logit_shift as f32;
    Fitted { model, c, folds: k, report, grid }
}

/// sigmoid(logit(p) + shift), computed in f64.
pub fn shift_probability(p: f32, shift: f64) -> f32 {
    let p = f64::from(p).clamp(1e-12, 1.0 - 1e-12);
    (1.0 / (1.0 + (-((p / (1.0 - p)).ln() + shift)).exp())) as f32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prior_shift_moves_probabilities_monotonically_and_zero_changes_nothing() {
        assert!((shift_probability(0.3, 0.0) - 0.3).abs() < 1e-7);
        let shift = (1.0f64 / 18.0).ln();
        let (a, b) = (shift_probability(0.2, shift), shift_probability(0.8, shift));
        assert!(a < 0.2 && b < 0.8 && a < b);
        assert!((shift_probability(0.5, shift) - 1.0 / 19.0).abs() < 1e-6);
    }

    #[test]
    fn cholesky_solves_a_small_system() {
        let mut h = vec![4.0, 2.0, 2.0, 3.0];
        let mut g = vec![2.0, 1.0];
        assert!(cholesky_solve(&mut h, &mut g, 2));
        assert!((g[0] - 0.5).abs() < 1e-12 && g[1].abs() < 1e-12, "{g:?}");
    }

    #[test]
    fn folds_are_stratified_and_deterministic() {
        let y: Vec<bool> = (0..50).map(|i| i % 5 == 0).collect();
        let f = stratified_folds(&y, 5, 7);
        assert_eq!(f, stratified_folds(&y, 5, 7));
        for k in 0..5 {
            assert_eq!((0..50).filter(|&i| f[i] == k && y[i]).count(), 2);
            assert_eq!((0..50).filter(|&i| f[i] == k && !y[i]).count(), 8);
        }
    }

    #[test]
    fn separates_a_separable_problem_and_regularisation_shrinks() {
        let rows: Vec<Vec<f32>> = (0..40).map(|i| vec![i as f32 / 40.0 - 0.5, ((i * 7) % 11) as f32 / 11.0]).collect();
        let x: Vec<&[f32]> = rows.iter().map(Vec::as_slice).collect();
        let y: Vec<bool> = rows.iter().map(|r| r[0] > 0.0).collect();
        let s = vec![1.0; 40];
        let strong = fit(&x, &y, &s, 100.0);
        let weak = fit(&x, &y, &s, 0.01);
        assert!(x.iter().zip(&y).all(|(r, &t)| (strong.probability(r) > 0.5) == t));
        assert!(strong.head.weights[0] > weak.head.weights[0] && weak.head.weights[0] > 0.0);
    }
}
