//! The pure linear algebra under both `inference` and `stats`: a dense row-major matrix, dot
//! products, and a linear head computed in Rust: `logits = [0, w·x + b]` on a trunk embedding,
//! the same function as the trainer's one-node ONNX Gemm heads (whose first column is all zeros),
//! without an ONNX Runtime session, a queue or a thread hop. Stored as `head.json`:
//! `{"weights": [dim floats], "bias": float}`.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// A dense row-major f32 matrix (graph outputs, embeddings).
#[derive(Debug, Clone, PartialEq)]
pub struct Matrix {
    pub rows: usize,
    pub cols: usize,
    pub data: Vec<f32>,
}

impl Matrix {
    pub fn row(&self, i: usize) -> &[f32] {
        &self.data[i * self.cols..(i + 1) * self.cols]
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LinearHead {
    pub weights: Vec<f32>,
    pub bias: f32,
    /// The class's mean train embedding at unit length (written by `moe fit`): the open-world
    /// rule's nearest-class similarity is its dot product with a (unit-length) embedding.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub centroid: Option<Vec<f32>>,
}

impl LinearHead {
    /// Read `head.json` and check it fits an embedding of `dim` values.
    pub fn read(path: &Path, dim: usize) -> Result<LinearHead> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::bundle(path, format!("cannot read: {e}")))?;
        let head: LinearHead =
            serde_json::from_str(&text).map_err(|e| Error::bundle(path, format!("bad linear head: {e}")))?;
        if head.weights.len() != dim {
            return Err(Error::bundle(
                path,
                format!("has {} weights, the trunk's embedding has {dim} values", head.weights.len()),
            ));
        }
        if !head.bias.is_finite() || head.weights.iter().any(|w| !w.is_finite()) {
            return Err(Error::bundle(path, "has a weight or bias that is not a finite number"));
        }
        if let Some(c) = &head.centroid
            && (c.len() != dim || c.iter().any(|v| !v.is_finite()))
        {
            return Err(Error::bundle(path, format!("centroid must be {dim} finite numbers, has {}", c.len())));
        }
        Ok(head)
    }

    /// The head with no centroid.
    pub fn new(weights: Vec<f32>, bias: f32) -> LinearHead {
        LinearHead { weights, bias, centroid: None }
    }

    /// The mean of a class's embeddings at unit length: its centroid (zeros for no rows).
    pub fn centroid_of<'a>(rows: impl IntoIterator<Item = &'a [f32]>, dim: usize) -> Vec<f32> {
        let mut sum = vec![0f64; dim];
        for row in rows {
            for (s, v) in sum.iter_mut().zip(row) {
                *s += f64::from(*v);
            }
        }
        let norm = sum.iter().map(|v| v * v).sum::<f64>().sqrt().max(1e-12);
        sum.iter().map(|v| (v / norm) as f32).collect()
    }

    /// The embedding's similarity to the class centroid, when the head has one.
    pub fn similarity(&self, x: &[f32]) -> Option<f32> {
        self.centroid.as_ref().map(|c| dot(c, x))
    }

    /// The positive-class logit of one embedding.
    pub fn score(&self, x: &[f32]) -> f32 {
        dot(&self.weights, x) + self.bias
    }

    /// `[rows, 2]` logits `[0, w·x + b]`, the shape every head returns.
    pub fn logits(&self, embedding: &Matrix) -> Result<Matrix> {
        if embedding.cols != self.weights.len() {
            return Err(Error::Internal(format!(
                "linear head of {} weights got an embedding of {}",
                self.weights.len(),
                embedding.cols
            )));
        }
        let data = (0..embedding.rows).flat_map(|i| [0.0, self.score(embedding.row(i))]).collect();
        Ok(Matrix { rows: embedding.rows, cols: 2, data })
    }
}

/// `a · b` in eight independent partial sums (which the compiler turns into vector lanes; one
/// sequential sum was 18 % of a 1,000-expert server's CPU in the centroid similarities,
/// docs/BENCHMARKS.md). Every head score and centroid similarity goes through it, so the offline
/// tools and the service sum in the same order.
/// On x86-64 CPUs with AVX2 the same source runs compiled for AVX2 (one 8-lane register instead
/// of two 4-lane ones): the same sums in the same order, bit for bit (test below); measured in
/// docs/BENCHMARKS.md (ab-avx2-dots.jsonl).
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: `dot_avx2` needs AVX2, which the CPU was just seen to have.
        return unsafe { dot_avx2(a, b) };
    }
    dot_lanes(a, b)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn dot_avx2(a: &[f32], b: &[f32]) -> f32 {
    dot_lanes(a, b)
}

#[inline(always)]
fn dot_lanes(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca.remainder().iter().zip(cb.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in ca.zip(cb) {
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    acc.iter().sum::<f32>() + tail
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_avx2_dot_sums_bit_for_bit_as_the_portable_one() {
        // Lengths around the 8-lane chunks, values of mixed sign and magnitude (a fixed LCG).
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            ((state >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 10f32.powi((state % 7) as i32 - 3)
        };
        for n in [0, 1, 7, 8, 9, 383, 384, 385, 768] {
            let a: Vec<f32> = (0..n).map(|_| next()).collect();
            let b: Vec<f32> = (0..n).map(|_| next()).collect();
            assert_eq!(dot(&a, &b).to_bits(), dot_lanes(&a, &b).to_bits(), "length {n}");
            let plain: f64 = a.iter().zip(&b).map(|(x, y)| f64::from(*x) * f64::from(*y)).sum();
            assert!((f64::from(dot(&a, &b)) - plain).abs() <= 1e-4 * (1.0 + plain.abs()), "length {n}");
        }
    }

    #[test]
    fn logits_are_zero_and_the_affine_score() {
        let h = LinearHead::new(vec![1.0, -2.0], 0.5);
        let m = Matrix { rows: 2, cols: 2, data: vec![1.0, 1.0, 0.0, -1.0] };
        assert_eq!(h.logits(&m).unwrap().data, vec![0.0, -0.5, 0.0, 2.5]);
        assert!(h.logits(&Matrix { rows: 1, cols: 3, data: vec![0.0; 3] }).is_err());
    }
}
