//! A stage's linear heads stacked into one matrix: one pass over their weights scores them all.

use std::sync::Arc;

use super::plan::Plan;
use crate::expert::{Expert, Head};
use crate::inference::{LinearHead, Matrix};
use crate::linalg::dot;
use crate::{Error, Result};

/// The linear heads of one stage as one `k x dim` matrix, so a request scores all of them in one
/// pass over contiguous weights with one allocation instead of `k` (the 1,000-expert profile,
/// docs/BENCHMARKS.md). The probability is the per-head path's: 1 / (1 + e^-(w·x + b)).
pub(super) struct Stacked {
    pub(super) stage: usize,
    /// Set indices of the experts, in row order of `weights`.
    pub(super) experts: Vec<usize>,
    dim: usize,
    weights: Vec<f32>,
    bias: Vec<f32>,
    /// The heads' class centroids, `k x dim` in the same order, when every head has one.
    centroids: Option<Vec<f32>>,
}

impl Stacked {
    /// One per stage with at least two linear heads (one head gains nothing from a product).
    pub(super) fn build(experts: &[Arc<Expert>], plan: &Plan) -> Vec<Stacked> {
        let mut out: Vec<Stacked> = Vec::new();
        for (stage, _) in plan.stages.iter().enumerate() {
            let heads: Vec<(usize, &LinearHead)> = experts
                .iter()
                .enumerate()
                .filter(|(i, _)| plan.stage_of[*i] == stage)
                .filter_map(|(i, e)| match &e.head {
                    Some(Head::Linear(l)) => Some((i, l.as_ref())),
                    _ => None,
                })
                .collect();
            let Some(dim) = heads.first().map(|(_, l)| l.weights.len()) else { continue };
            if heads.len() < 2 || heads.iter().any(|(_, l)| l.weights.len() != dim) {
                continue;
            }
            out.push(Stacked {
                stage,
                experts: heads.iter().map(|(i, _)| *i).collect(),
                dim,
                weights: heads.iter().flat_map(|(_, l)| l.weights.iter().copied()).collect(),
                bias: heads.iter().map(|(_, l)| l.bias).collect(),
                centroids: heads
                    .iter()
                    .map(|(_, l)| l.centroid.as_deref())
                    .collect::<Option<Vec<&[f32]>>>()
                    .map(|cs| cs.concat()),
            });
        }
        out
    }

    /// Raise each row's best centroid similarity (`LinearHead::similarity`, bit for bit) with these
    /// heads' centroids; false (nothing done) when they have none or `x` has another width.
    pub(super) fn nearest(&self, x: &Matrix, best: &mut [Option<f32>]) -> bool {
        let Some(cs) = self.centroids.as_ref().filter(|_| x.cols == self.dim) else { return false };
        for c in cs.chunks(self.dim) {
            for (r, b) in best.iter_mut().enumerate().take(x.rows) {
                raise(b, dot(c, x.row(r)));
            }
        }
        true
    }

    /// Each stacked expert's positive probabilities on `x` (rows x dim), into its column of `out`
    /// (texts x experts, set order).
    pub(super) fn probabilities(&self, x: &Matrix, out: &mut Matrix) -> Result<()> {
        if x.cols != self.dim {
            return Err(Error::Internal(format!(
                "linear heads of {} weights got an embedding of {}",
                self.dim, x.cols
            )));
        }
        // One dot product per (text, head), each summed in the same order whatever the number of
        // rows: a text's probabilities must not depend on its batch (a matrix product sums in blocks
        // that change with the shape, ~1e-6 apart).
        // Weights outer, so a head's row stays in cache.
        for ((w, &b), &e) in self.weights.chunks(self.dim).zip(&self.bias).zip(&self.experts) {
            for r in 0..x.rows {
                out.data[r * out.cols + e] = 1.0 / (1.0 + (0.0 - (dot(x.row(r), w) + b)).exp());
            }
        }
        Ok(())
    }
}

/// Keep the larger similarity.
pub(super) fn raise(best: &mut Option<f32>, sim: f32) {
    *best = Some(best.map_or(sim, |v| v.max(sim)));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::expert::positive_probabilities;

    /// Stacked heads give each head's own probabilities (its `logits`, as served one by one), and
    /// a text's are bit for bit the same alone and inside batches of any size.
    #[test]
    fn stacked_heads_match_each_head_alone() {
        let (dim, k) = (37, 6);
        let mut s = 11u64;
        let mut next = || {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((s >> 33) as f32 / (1u64 << 31) as f32) - 0.5
        };
        let heads: Vec<LinearHead> =
            (0..k).map(|_| LinearHead::new((0..dim).map(|_| next()).collect(), next())).collect();
        let stacked = Stacked {
            stage: 0,
            experts: (0..k).collect(),
            dim,
            weights: heads.iter().flat_map(|h| h.weights.clone()).collect(),
            bias: heads.iter().map(|h| h.bias).collect(),
            centroids: None,
        };
        let probabilities = |x: &Matrix| {
            let mut out = Matrix { rows: x.rows, cols: k, data: vec![f32::NAN; x.rows * k] };
            stacked.probabilities(x, &mut out).unwrap();
            (0..k).map(|h| (0..x.rows).map(|r| out.row(r)[h]).collect()).collect::<Vec<Vec<f32>>>()
        };
        for rows in [1, 4, 7, 64] {
            let x = Matrix { rows, cols: dim, data: (0..rows * dim).map(|_| next()).collect() };
            let got = probabilities(&x);
            for (h, got) in heads.iter().zip(&got) {
                let want = positive_probabilities(&h.logits(&x).unwrap());
                assert!(want.iter().zip(got).all(|(a, b)| (a - b).abs() < 1e-6), "{rows} rows: {want:?} vs {got:?}");
            }
            for r in 0..rows {
                let alone = Matrix { rows: 1, cols: dim, data: x.row(r).to_vec() };
                let alone = probabilities(&alone);
                assert!(got.iter().zip(&alone).all(|(b, a)| b[r].to_bits() == a[0].to_bits()), "row {r} of {rows}");
            }
        }
        let wrong = Matrix { rows: 1, cols: dim + 1, data: vec![0.0; dim + 1] };
        assert!(stacked.probabilities(&wrong, &mut Matrix { rows: 1, cols: k, data: vec![0.0; k] }).is_err());
    }

    /// Stacked centroids give each row the best of the heads' own similarities, bit for bit, and
    /// decline (false) without centroids or on another width.
    #[test]
    fn stacked_centroids_give_the_best_head_similarity() {
        let (dim, k, rows) = (37, 7, 6);
        let mut s = 7u64;
        let mut next = || {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((s >> 33) as f32 / (1u64 << 31) as f32) - 0.5
        };
        let heads: Vec<LinearHead> = (0..k)
            .map(|_| {
                let mut h = LinearHead::new(vec![0.0; dim], 0.0);
                h.centroid = Some((0..dim).map(|_| next()).collect());
                h
            })
            .collect();
        let mut stacked = Stacked {
            stage: 0,
            experts: (0..k).collect(),
            dim,
            weights: vec![0.0; k * dim],
            bias: vec![0.0; k],
            centroids: Some(heads.iter().flat_map(|h| h.centroid.clone().unwrap()).collect()),
        };
        let x = Matrix { rows, cols: dim, data: (0..rows * dim).map(|_| next()).collect() };
        let mut best = vec![None; rows];
        assert!(stacked.nearest(&x, &mut best));
        for (r, b) in best.iter().enumerate() {
            let want = heads.iter().map(|h| h.similarity(x.row(r)).unwrap()).fold(f32::MIN, f32::max);
            assert_eq!(b.unwrap().to_bits(), want.to_bits(), "row {r}");
        }
        let wrong = Matrix { rows: 1, cols: dim + 1, data: vec![0.0; dim + 1] };
        assert!(!stacked.nearest(&wrong, &mut [None]));
        stacked.centroids = None;
        assert!(!stacked.nearest(&x, &mut best));
    }
}
