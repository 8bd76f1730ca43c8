//! Many one-vs-rest L2 logistic regressions on the same rows, fitted together: for each class k
//! the objective of [`super::logreg::fit`] with balanced weights (scikit-learn's
//! `LogisticRegression(C, class_weight="balanced")` on "is it k?"), scaled as scikit-learn scales
//! it for its stopping rule:
//!
//!   F_k(w, b) = ( ½‖w‖² + C · Σᵢ sᵢₖ · log(1 + exp(−ỹᵢₖ (w·xᵢ + b))) ) / (C · Σᵢ sᵢₖ)
//!
//! solved by L-BFGS per class, with every active class's objective and gradient computed in two
//! matrix products over the shared rows (Z = X·Wᵀ, then G = Rᵀ·X, split over row blocks on all
//! cores). 150 heads on 15,000 rows take seconds where 150 separate Newton fits (d² per row and
//! step) took minutes (docs/TRAINING.md). Checked against scikit-learn's fit
//! (tests/fixtures/sklearn_ovr.json, written by training/scripts/sklearn_logreg_fixture.py).
//!
//! Invariants: deterministic for the same input (row blocks are summed in a fixed order); each
//! class stops on its own (largest gradient entry below `tol`, no more progress, or `max_iter`
//! steps); the rows are only read.

use std::collections::VecDeque;

use super::linalg::gemm;
use super::logreg::{sigmoid, softplus};
use crate::linalg::{LinearHead, Matrix};

/// How hard to fit.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// scikit-learn's C (larger fits the data harder).
    pub c: f64,
    /// Stop when every gradient entry of the scaled objective is below this (scikit-learn: 1e-4).
    pub tol: f64,
    pub max_iter: usize,
}

impl Options {
    pub fn new(c: f64) -> Options {
        Options { c, tol: 1e-5, max_iter: 500 }
    }
}

/// One class's fitted head and the L-BFGS steps it took.
#[derive(Debug, Clone)]
pub struct Fitted {
    pub head: LinearHead,
    pub iterations: usize,
}

/// L-BFGS memory (pairs kept).
const MEMORY: usize = 10;
/// Armijo's sufficient-decrease constant.
const ARMIJO: f64 = 1e-4;
/// Rows per block of the matrix products (each block is one unit of work for a core).
const BLOCK: usize = 2048;

/// Fit one head per class `0..classes` on rows `x` whose class is `truth[i]` (rows of another
/// class are negatives; a row whose `truth` is `classes` or more, e.g. an out-of-scope example,
/// is a negative for every class), starting from `warm` when given (e.g. the fit at the previous C).
pub fn fit_one_vs_rest(
    x: &Matrix,
    truth: &[usize],
    classes: usize,
    o: Options,
    warm: Option<&[Fitted]>,
) -> Vec<Fitted> {
    assert_eq!(x.rows, truth.len(), "one class per row");
    let (n, d) = (x.rows, x.cols);
    let mut positives = vec![0usize; classes];
    for &t in truth.iter().filter(|&&t| t < classes) {
        positives[t] += 1;
    }
    // Balanced weights: positives and negatives each carry half of the n rows' weight.
    let weights: Vec<[f64; 2]> = positives
        .iter()
        .map(|&p| [n as f64 / (2.0 * (n - p).max(1) as f64), n as f64 / (2.0 * p.max(1) as f64)])
        .collect();
    let problem = Problem { x, truth, weights: &weights, c: o.c };
    let mut states: Vec<State> = (0..classes)
        .map(|k| {
            let beta = match warm {
                Some(w) => w[k].head.weights.iter().map(|&v| f64::from(v)).chain([f64::from(w[k].head.bias)]).collect(),
                None => vec![0.0; d + 1],
            };
            State::new(beta)
        })
        .collect();
    let all: Vec<usize> = (0..classes).collect();
    let first = {
        let betas: Vec<&[f64]> = states.iter().map(|s| s.beta.as_slice()).collect();
        problem.evaluate(&all, &betas)
    };
    for (s, (f, g)) in states.iter_mut().zip(first) {
        s.f = f;
        s.done = max_abs(&g) <= o.tol;
        s.g = g;
    }
    loop {
        let active: Vec<usize> = (0..classes).filter(|&k| !states[k].done).collect();
        if active.is_empty() {
            break;
        }
        for &k in &active {
            states[k].propose();
        }
        let trials: Vec<Vec<f64>> = active.iter().map(|&k| states[k].trial()).collect();
        let refs: Vec<&[f64]> = trials.iter().map(Vec::as_slice).collect();
        let evaluated = problem.evaluate(&active, &refs);
        for ((&k, trial), (f, g)) in active.iter().zip(trials).zip(evaluated) {
            states[k].judge(trial, f, g, &o);
        }
    }
    states
        .into_iter()
        .map(|s| Fitted {
            head: LinearHead::new(s.beta[..d].iter().map(|&v| v as f32).collect(), s.beta[d] as f32),
            iterations: s.iterations,
        })
        .collect()
}

/// The shared rows and each class's labels and weights.
struct Problem<'a> {
    x: &'a Matrix,
    truth: &'a [usize],
    /// Per class: [negative weight, positive weight].
    weights: &'a [[f64; 2]],
    c: f64,
}

impl Problem<'_> {
    /// The scaled objective and its gradient for class `classes[j]` at `betas[j]` (w then b).
    fn evaluate(&self, classes: &[usize], betas: &[&[f64]]) -> Vec<(f64, Vec<f64>)> {
        let (n, d, a) = (self.x.rows, self.x.cols, classes.len());
        let w: Vec<f32> = betas.iter().flat_map(|b| b[..d].iter().map(|&v| v as f32)).collect();
        let bias: Vec<f64> = betas.iter().map(|b| b[d]).collect();
        let blocks: Vec<(usize, usize)> = (0..n).step_by(BLOCK).map(|s| (s, (s + BLOCK).min(n))).collect();
        let workers = std::thread::available_parallelism().map_or(1, |v| v.get()).min(blocks.len()).max(1);
        let mut parts: Vec<Option<Part>> = (0..blocks.len()).map(|_| None).collect();
        std::thread::scope(|s| {
            let chunks: Vec<_> = parts
                .chunks_mut(blocks.len().div_ceil(workers))
                .zip(blocks.chunks(blocks.len().div_ceil(workers)))
                .collect();
            for (out, mine) in chunks {
                let (w, bias) = (&w, &bias);
                s.spawn(move || {
                    for (slot, &(start, end)) in out.iter_mut().zip(mine) {
                        *slot = Some(self.block(classes, w, bias, start, end));
                    }
                });
            }
        });
        // Sum the blocks in row order (deterministic).
        let mut loss = vec![0f64; a];
        let mut bias_grad = vec![0f64; a];
        let mut grad = vec![0f64; a * d];
        for p in parts.into_iter().map(|p| p.expect("every block evaluated")) {
            for j in 0..a {
                loss[j] += p.loss[j];
                bias_grad[j] += p.bias_grad[j];
            }
            for (g, v) in grad.iter_mut().zip(&p.grad) {
                *g += f64::from(*v);
            }
        }
        (0..a)
            .map(|j| {
                let beta = betas[j];
                let total = n as f64; // balanced weights sum to n
                let scale = 1.0 / (self.c * total);
                let reg: f64 = beta[..d].iter().map(|v| v * v).sum::<f64>() * 0.5;
                let f = (reg + self.c * loss[j]) * scale;
                let mut g: Vec<f64> = (0..d).map(|i| (beta[i] + self.c * grad[j * d + i]) * scale).collect();
                g.push(bias_grad[j] / total);
                (f, g)
            })
            .collect()
    }

    /// One row block's weighted loss and gradient sums for every class in `classes`.
    fn block(&self, classes: &[usize], w: &[f32], bias: &[f64], start: usize, end: usize) -> Part {
        let (d, a, m) = (self.x.cols, classes.len(), end - start);
        let xs = &self.x.data[start * d..end * d];
        let mut z = vec![0f32; m * a];
        // Z = X·Wᵀ: X is m × d row-major, W is a × d row-major read as its transpose.
        gemm(m, d, a, (xs, d, 1), (w, 1, d), &mut z);
        let mut loss = vec![0f64; a];
        let mut bias_grad = vec![0f64; a];
        for (i, row) in z.chunks_mut(a).enumerate() {
            let t = self.truth[start + i];
            for (j, zv) in row.iter_mut().enumerate() {
                let k = classes[j];
                let y = t == k;
                let s = self.weights[k][usize::from(y)];
                let score = f64::from(*zv) + bias[j];
                loss[j] += s * softplus(if y { -score } else { score });
                let r = s * (sigmoid(score) - if y { 1.0 } else { 0.0 });
                bias_grad[j] += r;
                *zv = r as f32;
            }
        }
        let mut grad = vec![0f32; a * d];
        // G = Rᵀ·X: z now holds the residuals R (m × a row-major), read as its transpose.
        gemm(a, m, d, (&z, 1, a), (xs, d, 1), &mut grad);
        Part { loss, bias_grad, grad }
    }
}

/// One row block's sums.
struct Part {
    loss: Vec<f64>,
    bias_grad: Vec<f64>,
    grad: Vec<f32>,
}

/// One class's L-BFGS state.
struct State {
    beta: Vec<f64>,
    f: f64,
    g: Vec<f64>,
    /// (s, y, 1 / s·y) pairs, oldest first.
    memory: VecDeque<(Vec<f64>, Vec<f64>, f64)>,
    direction: Vec<f64>,
    step: f64,
    slope: f64,
    /// A direction is proposed and its step is being searched.
    searching: bool,
    iterations: usize,
    done: bool,
}

impl State {
    fn new(beta: Vec<f64>) -> State {
        State {
            beta,
            f: 0.0,
            g: Vec::new(),
            memory: VecDeque::new(),
            direction: Vec::new(),
            step: 1.0,
            slope: 0.0,
            searching: false,
            iterations: 0,
            done: false,
        }
    }

    /// A new search direction (two-loop recursion), unless a step along the last one is pending.
    fn propose(&mut self) {
        if self.searching {
            return;
        }
        let mut q: Vec<f64> = self.g.clone();
        let mut alphas = Vec::with_capacity(self.memory.len());
        for (s, y, rho) in self.memory.iter().rev() {
            let alpha = rho * dot(s, &q);
            axpy(-alpha, y, &mut q);
            alphas.push(alpha);
        }
        if let Some((s, y, _)) = self.memory.back() {
            let gamma = dot(s, y) / dot(y, y);
            q.iter_mut().for_each(|v| *v *= gamma);
        }
        for ((s, y, rho), alpha) in self.memory.iter().zip(alphas.into_iter().rev()) {
            let b = rho * dot(y, &q);
            axpy(alpha - b, s, &mut q);
        }
        q.iter_mut().for_each(|v| *v = -*v);
        self.slope = dot(&self.g, &q);
        if self.slope >= 0.0 {
            // Not a descent direction (lost curvature): restart from the gradient.
            self.memory.clear();
            q = self.g.iter().map(|v| -v).collect();
            self.slope = -dot(&self.g, &self.g);
        }
        self.step = if self.memory.is_empty() { (1.0 / dot(&q, &q).sqrt()).min(1.0) } else { 1.0 };
        self.direction = q;
        self.searching = true;
    }

    fn trial(&self) -> Vec<f64> {
        self.beta.iter().zip(&self.direction).map(|(b, p)| b + self.step * p).collect()
    }

    /// Accept the trial point when it decreases the objective enough, else halve the step.
    fn judge(&mut self, trial: Vec<f64>, f: f64, g: Vec<f64>, o: &Options) {
        if f <= self.f + ARMIJO * self.step * self.slope {
            let s: Vec<f64> = trial.iter().zip(&self.beta).map(|(a, b)| a - b).collect();
            let y: Vec<f64> = g.iter().zip(&self.g).map(|(a, b)| a - b).collect();
            let sy = dot(&s, &y);
            if sy > 1e-12 {
                if self.memory.len() == MEMORY {
                    self.memory.pop_front();
                }
                self.memory.push_back((s, y, 1.0 / sy));
            }
            let progress = self.f - f;
            self.beta = trial;
            self.f = f;
            self.g = g;
            self.iterations += 1;
            self.searching = false;
            self.done =
                max_abs(&self.g) <= o.tol || self.iterations >= o.max_iter || progress <= 1e-13 * self.f.abs().max(1.0);
        } else {
            self.step *= 0.5;
            // No step along a descent direction decreases the objective: rounding, at the optimum.
            self.done = self.step < 1e-12;
        }
    }
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn axpy(alpha: f64, x: &[f64], y: &mut [f64]) {
    for (yv, xv) in y.iter_mut().zip(x) {
        *yv += alpha * xv;
    }
}

fn max_abs(v: &[f64]) -> f64 {
    v.iter().map(|x| x.abs()).fold(0.0, f64::max)
}

/// Per-feature centring and scaling fitted on train rows, folded back into the heads after the
/// fit so the served head reads the raw embedding: w·((x − μ)/σ) + b = (w/σ)·x + (b − Σ w μ/σ).
/// Features whose spread is below `MIN_SPREAD` are only centred (a constant feature carries nothing).
#[derive(Debug, Clone, PartialEq)]
pub struct Standardizer {
    pub mean: Vec<f32>,
    pub scale: Vec<f32>,
}

/// Smallest standard deviation a feature is divided by.
const MIN_SPREAD: f64 = 1e-3;

impl Standardizer {
    pub fn fit(x: &Matrix) -> Standardizer {
        let (n, d) = (x.rows.max(1) as f64, x.cols);
        let mut mean = vec![0f64; d];
        for i in 0..x.rows {
            axpy_f32(1.0, x.row(i), &mut mean);
        }
        mean.iter_mut().for_each(|m| *m /= n);
        let mut var = vec![0f64; d];
        for i in 0..x.rows {
            for ((v, &xv), m) in var.iter_mut().zip(x.row(i)).zip(&mean) {
                *v += (f64::from(xv) - m).powi(2);
            }
        }
        Standardizer {
            mean: mean.iter().map(|&m| m as f32).collect(),
            scale: var.iter().map(|v| (v / n).sqrt().max(MIN_SPREAD) as f32).collect(),
        }
    }

    pub fn apply(&self, x: &Matrix) -> Matrix {
        let data = x
            .data
            .chunks(x.cols)
            .flat_map(|r| r.iter().zip(&self.mean).zip(&self.scale).map(|((v, m), s)| (v - m) / s))
            .collect();
        Matrix { rows: x.rows, cols: x.cols, data }
    }

    /// The head on standardized features as a head on raw features.
    pub fn fold(&self, head: &LinearHead) -> LinearHead {
        let weights: Vec<f32> = head.weights.iter().zip(&self.scale).map(|(w, s)| w / s).collect();
        let shift: f64 = weights.iter().zip(&self.mean).map(|(w, m)| f64::from(*w) * f64::from(*m)).sum();
        LinearHead { weights, bias: (f64::from(head.bias) - shift) as f32, centroid: head.centroid.clone() }
    }
}

fn axpy_f32(alpha: f64, x: &[f32], y: &mut [f64]) {
    for (yv, xv) in y.iter_mut().zip(x) {
        *yv += alpha * f64::from(*xv);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::logreg::{balanced_weights, fit};

    /// Seeded rows in three loose clusters.
    fn problem(n: usize, d: usize, classes: usize) -> (Matrix, Vec<usize>) {
        let mut state = 7u64;
        let mut next = || {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((state >> 33) as f64 / (1u64 << 31) as f64) as f32 - 0.5
        };
        let truth: Vec<usize> = (0..n).map(|i| i % classes).collect();
        let data = truth
            .iter()
            .flat_map(|&t| (0..d).map(|j| next() + if j % classes == t { 0.4 } else { 0.0 }).collect::<Vec<_>>())
            .collect();
        (Matrix { rows: n, cols: d, data }, truth)
    }

    #[test]
    fn matches_the_newton_fit_of_each_class() {
        let (x, truth) = problem(300, 6, 3);
        let fitted = fit_one_vs_rest(&x, &truth, 3, Options { c: 1.0, tol: 1e-9, max_iter: 1000 }, None);
        let rows: Vec<&[f32]> = (0..x.rows).map(|i| x.row(i)).collect();
        for (k, f) in fitted.iter().enumerate() {
            let y: Vec<bool> = truth.iter().map(|&t| t == k).collect();
            let newton = fit(&rows, &y, &balanced_weights(&y), 1.0);
            for (a, b) in
                f.head.weights.iter().chain([&f.head.bias]).zip(newton.head.weights.iter().chain([&newton.head.bias]))
            {
                assert!((a - b).abs() < 1e-3 * b.abs().max(1.0), "class {k}: {a} vs Newton's {b}");
            }
        }
    }

    #[test]
    fn a_warm_start_at_the_optimum_is_short_and_fits_are_deterministic() {
        let (x, truth) = problem(200, 5, 2);
        let o = Options { c: 10.0, tol: 1e-7, max_iter: 1000 };
        let cold = fit_one_vs_rest(&x, &truth, 2, o, None);
        let again = fit_one_vs_rest(&x, &truth, 2, o, None);
        assert_eq!(
            cold.iter().map(|f| f.head.clone()).collect::<Vec<_>>(),
            again.iter().map(|f| f.head.clone()).collect::<Vec<_>>()
        );
        let warm = fit_one_vs_rest(&x, &truth, 2, o, Some(&cold));
        for (w, c) in warm.iter().zip(&cold) {
            assert!(2 * w.iterations < c.iterations, "warm {} steps, cold {}", w.iterations, c.iterations);
        }
    }

    #[test]
    fn standardizing_folds_back_into_the_same_scores() {
        let (x, _) = problem(50, 4, 2);
        let s = Standardizer::fit(&x);
        let head = LinearHead::new(vec![0.5, -1.0, 2.0, 0.25], 0.3);
        let raw = s.fold(&head);
        let z = s.apply(&x);
        for i in 0..x.rows {
            assert!((head.score(z.row(i)) - raw.score(x.row(i))).abs() < 1e-4);
        }
        let constant = Matrix { rows: 3, cols: 1, data: vec![2.0; 3] };
        assert_eq!(
            Standardizer::fit(&constant).apply(&constant).data,
            vec![0.0; 3],
            "a constant feature is centred only"
        );
    }
}
