//! Platt scaling: per expert, q = sigmoid(a·logit(p) + b) fitted on a labelled split, so that
//! one-vs-all experts trained with different class balances and on different trunks give
//! probabilities that can be compared across experts (the gate's `calibrated` score mode).
//!
//! Fitted by Newton's method on the log-loss with Platt's smoothed targets — (n₊+1)/(n₊+2) for a
//! positive, 1/(n₋+2) for a negative — and a small pull towards the identity map (a = 1, b = 0):
//! with about 30 positives per class on val, a few extreme scores cannot decide the fit alone.
//! a stays positive, so the map is increasing: every threshold keeps its pass / fail decisions.
//! Whether calibration helps is measured out of sample by K-fold cross-fitting
//! ([`cross_fitted`]): each row is calibrated by a fit on the other folds.

#[cfg(test)]
use crate::gate::sigmoid;
use crate::gate::{calibrated, logit};

/// Pull towards the identity map (per row of the split, so it fades as data grows).
const PRIOR: f64 = 1e-2;

/// Fit (a, b) on probabilities `p` and labels `y` (identity when a side is empty).
pub fn fit(p: &[f32], y: &[bool]) -> [f32; 2] {
    let pos = y.iter().filter(|&&v| v).count() as f64;
    let neg = y.len() as f64 - pos;
    if pos == 0.0 || neg == 0.0 {
        return [1.0, 0.0];
    }
    let (t_pos, t_neg) = ((pos + 1.0) / (pos + 2.0), 1.0 / (neg + 2.0));
    let z: Vec<f64> = p.iter().map(|&v| f64::from(logit(v))).collect();
    let t: Vec<f64> = y.iter().map(|&v| if v { t_pos } else { t_neg }).collect();
    let lambda = PRIOR * y.len() as f64;
    let loss = |a: f64, b: f64| -> f64 {
        let data: f64 = z
            .iter()
            .zip(&t)
            .map(|(&zi, &ti)| {
                let s = a * zi + b;
                // log(1 + e^s) - t s, stable for large |s|
                s.max(0.0) + (-s.abs()).exp().ln_1p() - ti * s
            })
            .sum();
        data + 0.5 * lambda * ((a - 1.0).powi(2) + b * b)
    };
    let (mut a, mut b) = (1.0f64, 0.0f64);
    let mut current = loss(a, b);
    for _ in 0..100 {
        let (mut ga, mut gb, mut haa, mut hab, mut hbb) = (lambda * (a - 1.0), lambda * b, lambda, 0.0, lambda);
        for (&zi, &ti) in z.iter().zip(&t) {
            let q = 1.0 / (1.0 + (-(a * zi + b)).exp());
            let w = q * (1.0 - q);
            ga += (q - ti) * zi;
            gb += q - ti;
            haa += w * zi * zi;
            hab += w * zi;
            hbb += w;
        }
        let det = haa * hbb - hab * hab;
        if det <= 0.0 || !det.is_finite() {
            break;
        }
        let (da, db) = ((hbb * ga - hab * gb) / det, (haa * gb - hab * ga) / det);
        // Step halving keeps every step downhill (and a positive).
        let mut step = 1.0;
        let mut moved = false;
        while step > 1e-6 {
            let (na, nb) = (a - step * da, b - step * db);
            let l = loss(na, nb);
            if na > 0.0 && l <= current {
                (a, b, moved) = (na, nb, current - l > 1e-12);
                current = l;
                break;
            }
            step *= 0.5;
        }
        if !moved {
            break;
        }
    }
    [a as f32, b as f32]
}

/// Mean log-loss of probabilities against labels.
pub fn log_loss(p: &[f32], y: &[bool]) -> f64 {
    let eps = 1e-7f64;
    let total: f64 = p
        .iter()
        .zip(y)
        .map(|(&q, &v)| {
            let q = f64::from(q).clamp(eps, 1.0 - eps);
            if v { -q.ln() } else { -(1.0 - q).ln() }
        })
        .sum();
    total / p.len().max(1) as f64
}

/// Each row calibrated by a fit on the other `folds` folds (row i is in fold i % folds).
pub fn cross_fitted(p: &[f32], y: &[bool], folds: usize) -> Vec<f32> {
    let mut out = vec![0.0; p.len()];
    for f in 0..folds {
        let (tp, ty): (Vec<f32>, Vec<bool>) =
            p.iter().zip(y).enumerate().filter(|(i, _)| i % folds != f).map(|(_, (&a, &b))| (a, b)).unzip();
        let cal = fit(&tp, &ty);
        for i in (f..p.len()).step_by(folds) {
            out[i] = calibrated(cal, p[i]);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Scores drawn so that the true map is known: p = sigmoid(z), P(y | z) = sigmoid(a z + b).
    fn sample(a: f32, b: f32, n: usize) -> (Vec<f32>, Vec<bool>) {
        let mut state = 7u64;
        let mut uniform = || {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (state >> 11) as f32 / (1u64 << 53) as f32
        };
        (0..n)
            .map(|_| {
                let z = uniform() * 12.0 - 6.0;
                (sigmoid(z), uniform() < sigmoid(a * z + b))
            })
            .unzip()
    }

    #[test]
    fn recovers_a_known_map() {
        let (p, y) = sample(0.5, -1.0, 20_000);
        let [a, b] = fit(&p, &y);
        assert!((a - 0.5).abs() < 0.05 && (b + 1.0).abs() < 0.08, "a {a} b {b}");
    }

    #[test]
    fn newton_finds_the_minimum_a_grid_search_finds() {
        // An independent check of the optimiser on a small, unbalanced split (30 positives).
        let (p, y) = sample(1.7, -3.0, 600);
        let [a, b] = fit(&p, &y);
        let pos = y.iter().filter(|&&v| v).count() as f64;
        let neg = y.len() as f64 - pos;
        let t: Vec<f64> = y.iter().map(|&v| if v { (pos + 1.0) / (pos + 2.0) } else { 1.0 / (neg + 2.0) }).collect();
        let lambda = PRIOR * y.len() as f64;
        let objective = |a: f64, b: f64| {
            p.iter()
                .zip(&t)
                .map(|(&pi, &ti)| {
                    let s = a * f64::from(logit(pi)) + b;
                    let q = 1.0 / (1.0 + (-s).exp());
                    -(ti * q.ln() + (1.0 - ti) * (1.0 - q).ln())
                })
                .sum::<f64>()
                + 0.5 * lambda * ((a - 1.0).powi(2) + b * b)
        };
        let mut best = (f64::MAX, 0.0, 0.0);
        for i in 1..=300 {
            for j in 0..=300 {
                let (ga, gb) = (i as f64 * 0.01, -6.0 + j as f64 * 0.02);
                let v = objective(ga, gb);
                if v < best.0 {
                    best = (v, ga, gb);
                }
            }
        }
        assert!(
            (f64::from(a) - best.1).abs() < 0.02 && (f64::from(b) - best.2).abs() < 0.04,
            "newton ({a}, {b}) grid ({}, {})",
            best.1,
            best.2
        );
        assert!(objective(f64::from(a), f64::from(b)) <= best.0 + 1e-6);
    }

    #[test]
    fn the_map_is_increasing_and_degenerate_splits_keep_the_identity() {
        let (p, y) = sample(0.3, 2.0, 2_000);
        let cal = fit(&p, &y);
        assert!(cal[0] > 0.0);
        assert!(calibrated(cal, 0.2) < calibrated(cal, 0.3));
        assert_eq!(fit(&p, &vec![false; p.len()]), [1.0, 0.0]);
        // Out of sample, calibration lowers the log-loss of a miscalibrated expert.
        let raw = log_loss(&p, &y);
        let cross = log_loss(&cross_fitted(&p, &y, 5), &y);
        assert!(cross < raw, "cross-fitted {cross} vs raw {raw}");
    }
}
