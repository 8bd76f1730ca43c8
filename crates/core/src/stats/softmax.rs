//! Fitting the gates on validation data: a multinomial logistic regression
//! P(c | x) ∝ exp(W_c · x + b_c + offset_c), full-batch gradient descent with L2.
//!
//! With offset_c = ln s_c (each expert's comparable score) the fitted model's argmax is exactly the
//! argmax of the gated score w_c · s_c that the service uses, where w = softmax(W x + b).

use crate::gate::softmax;

#[derive(Debug, Clone, PartialEq)]
pub struct Softmax {
    /// weights[c][k]
    pub weights: Vec<Vec<f32>>,
    pub bias: Vec<f32>,
}

/// x: n rows of d features; offset: n rows of C values (or empty); y: class index per row.
pub fn fit_softmax(x: &[Vec<f32>], offset: &[Vec<f32>], y: &[usize], classes: usize, l2: f32, iters: usize) -> Softmax {
    let n = x.len();
    let d = x.first().map_or(0, Vec::len);
    let mut w = vec![vec![0f32; d]; classes];
    let mut b = vec![0f32; classes];
    // Adam: robust to the different feature scales (logits vs log-lengths) without tuning.
    let (mut mw, mut vw) = (vec![vec![0f32; d]; classes], vec![vec![0f32; d]; classes]);
    let (mut mb, mut vb) = (vec![0f32; classes], vec![0f32; classes]);
    let (lr, b1, b2, eps) = (0.05f32, 0.9f32, 0.999f32, 1e-8f32);
    for t in 1..=iters {
        let mut gw = vec![vec![0f32; d]; classes];
        let mut gb = vec![0f32; classes];
        for i in 0..n {
            let z: Vec<f32> = (0..classes)
                .map(|c| {
                    b[c] + w[c].iter().zip(&x[i]).map(|(a, v)| a * v).sum::<f32>() + offset.get(i).map_or(0.0, |o| o[c])
                })
                .collect();
            let p = softmax(&z);
            for c in 0..classes {
                let g = p[c] - f32::from(u8::from(y[i] == c));
                gb[c] += g;
                for k in 0..d {
                    gw[c][k] += g * x[i][k];
                }
            }
        }
        let bc1 = 1.0 - b1.powi(t as i32);
        let bc2 = 1.0 - b2.powi(t as i32);
        for c in 0..classes {
            for k in 0..d {
                let g = gw[c][k] / n as f32 + l2 * w[c][k];
                mw[c][k] = b1 * mw[c][k] + (1.0 - b1) * g;
                vw[c][k] = b2 * vw[c][k] + (1.0 - b2) * g * g;
                w[c][k] -= lr * (mw[c][k] / bc1) / ((vw[c][k] / bc2).sqrt() + eps);
            }
            let g = gb[c] / n as f32;
            mb[c] = b1 * mb[c] + (1.0 - b1) * g;
            vb[c] = b2 * vb[c] + (1.0 - b2) * g * g;
            b[c] -= lr * (mb[c] / bc1) / ((vb[c] / bc2).sqrt() + eps);
        }
    }
    Softmax { weights: w, bias: b }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn learns_a_separable_problem() {
        // class = which feature is larger
        let x: Vec<Vec<f32>> = (0..40).map(|i| if i % 2 == 0 { vec![1.0, -1.0] } else { vec![-1.0, 1.0] }).collect();
        let y: Vec<usize> = (0..40).map(|i| i % 2).collect();
        let m = fit_softmax(&x, &[], &y, 2, 1e-3, 300);
        for (xi, yi) in x.iter().zip(&y) {
            let z: Vec<f32> = (0..2).map(|c| m.bias[c] + m.weights[c][0] * xi[0] + m.weights[c][1] * xi[1]).collect();
            let pred = if z[1] > z[0] { 1 } else { 0 };
            assert_eq!(pred, *yi);
        }
    }

    /// The penalised mean cross-entropy that `fit_softmax` descends, written out in f64.
    fn objective(m: &Softmax, x: &[Vec<f32>], offset: &[Vec<f32>], y: &[usize], l2: f64) -> f64 {
        let mut loss = 0.0;
        for ((xi, oi), &yi) in x.iter().zip(offset).zip(y) {
            let z: Vec<f64> = (0..m.bias.len())
                .map(|c| {
                    f64::from(oi[c] + m.bias[c])
                        + m.weights[c].iter().zip(xi).map(|(w, v)| f64::from(w * v)).sum::<f64>()
                })
                .collect();
            let log_norm = z.iter().map(|v| v.exp()).sum::<f64>().ln();
            loss += log_norm - z[yi];
        }
        let penalty: f64 = m.weights.iter().flatten().map(|w| f64::from(*w).powi(2)).sum();
        loss / x.len() as f64 + l2 / 2.0 * penalty
    }

    #[test]
    fn a_right_offset_stays_right_and_the_fit_still_lowers_the_loss() {
        // The offset already predicts the label: the correction keeps every row right, and it is a
        // fit, not nothing: with a feature that also tells the classes apart, its loss falls well
        // below the offset's alone (an all-zero correction).
        let offset: Vec<Vec<f32>> = (0..20).map(|i| if i < 10 { vec![0.0, -3.0] } else { vec![-3.0, 0.0] }).collect();
        let x: Vec<Vec<f32>> = (0..20).map(|i| vec![1.0, if i < 10 { -0.5 } else { 0.5 }]).collect();
        let y: Vec<usize> = (0..20).map(|i| usize::from(i >= 10)).collect();
        let m = fit_softmax(&x, &offset, &y, 2, 1e-2, 200);
        for ((xi, oi), yi) in x.iter().zip(&offset).zip(&y) {
            let z: Vec<f32> = (0..2)
                .map(|c| oi[c] + m.bias[c] + m.weights[c].iter().zip(xi).map(|(w, v)| w * v).sum::<f32>())
                .collect();
            assert_eq!(usize::from(z[1] > z[0]), *yi, "the fitted correction keeps every row right");
        }
        let zero = Softmax { weights: vec![vec![0.0; 2]; 2], bias: vec![0.0; 2] };
        let (fitted, alone) = (objective(&m, &x, &offset, &y, 1e-2), objective(&zero, &x, &offset, &y, 1e-2));
        assert!(fitted < 0.75 * alone, "fitted loss {fitted} against the offset's own {alone}");
    }
}
