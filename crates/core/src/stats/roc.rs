//! Binary ROC, AUC, the Equal Error Rate and its threshold, and classification metrics.
//!
//! ROC: thresholds are the distinct scores in decreasing order, preceded by +inf (nothing
//! predicted positive); at threshold t a row is predicted positive when score >= t. This matches
//! scikit-learn's `roc_curve(..., drop_intermediate=False)`.
//!
//! EER: with FNR = 1 - TPR, d_k = FPR_k - FNR_k rises from -1 to +1 along the curve. At the first
//! point k with d_k >= 0 the curve has crossed FPR = FNR between points k-1 and k; both FPR and FNR
//! are interpolated linearly there (alpha = -d_{k-1} / (d_k - d_{k-1})), so EER = FPR_{k-1} +
//! alpha (FPR_k - FPR_{k-1}), and the threshold is interpolated the same way between t_{k-1} and
//! t_k (the +inf of the first point is read as 1.0, the largest probability).

pub use crate::bundle::quality::{BinaryMetrics, BinaryReport};

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RocPoint {
    pub threshold: f64,
    pub fpr: f64,
    pub tpr: f64,
}

pub fn roc(scores: &[f32], labels: &[bool]) -> Vec<RocPoint> {
    assert_eq!(scores.len(), labels.len());
    let p = labels.iter().filter(|&&y| y).count() as f64;
    let n = labels.len() as f64 - p;
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    idx.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    let mut out = vec![RocPoint { threshold: f64::INFINITY, fpr: 0.0, tpr: 0.0 }];
    let (mut tp, mut fp) = (0.0, 0.0);
    let mut i = 0;
    while i < idx.len() {
        let t = scores[idx[i]];
        while i < idx.len() && scores[idx[i]] == t {
            if labels[idx[i]] {
                tp += 1.0
            } else {
                fp += 1.0
            }
            i += 1;
        }
        out.push(RocPoint {
            threshold: t as f64,
            fpr: if n > 0.0 { fp / n } else { 0.0 },
            tpr: if p > 0.0 { tp / p } else { 0.0 },
        });
    }
    out
}

/// Area under the ROC curve by the trapezoid rule.
pub fn auc(roc: &[RocPoint]) -> f64 {
    roc.windows(2).map(|w| (w[1].fpr - w[0].fpr) * (w[1].tpr + w[0].tpr) / 2.0).sum()
}

#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Eer {
    pub eer: f64,
    pub threshold: f64,
}

pub fn eer(roc: &[RocPoint]) -> Eer {
    let d = |p: &RocPoint| p.fpr - (1.0 - p.tpr);
    let thr = |p: &RocPoint| {
        if p.threshold.is_finite() { p.threshold } else { 1.0 }
    };
    for k in 1..roc.len() {
        let (a, b) = (&roc[k - 1], &roc[k]);
        let (da, db) = (d(a), d(b));
        if db >= 0.0 {
            if db == 0.0 {
                return Eer { eer: b.fpr, threshold: thr(b) };
            }
            let alpha = -da / (db - da);
            return Eer { eer: a.fpr + alpha * (b.fpr - a.fpr), threshold: thr(a) + alpha * (thr(b) - thr(a)) };
        }
    }
    let last = roc.last().expect("non-empty roc");
    Eer { eer: last.fpr, threshold: thr(last) }
}

pub fn at_threshold(scores: &[f32], labels: &[bool], threshold: f64) -> BinaryMetrics {
    let mut m = BinaryMetrics { threshold, ..Default::default() };
    for (&s, &y) in scores.iter().zip(labels) {
        match (s as f64 >= threshold, y) {
            (true, true) => m.tp += 1,
            (true, false) => m.fp += 1,
            (false, false) => m.tn += 1,
            (false, true) => m.fn_ += 1,
        }
    }
    let div = |a: usize, b: usize| if b == 0 { 0.0 } else { a as f64 / b as f64 };
    m.accuracy = div(m.tp + m.tn, scores.len());
    m.precision = div(m.tp, m.tp + m.fp);
    m.recall = div(m.tp, m.tp + m.fn_);
    m.f1 = if m.precision + m.recall > 0.0 { 2.0 * m.precision * m.recall / (m.precision + m.recall) } else { 0.0 };
    m
}

pub fn binary_report(scores: &[f32], labels: &[bool]) -> BinaryReport {
    let r = roc(scores, labels);
    let e = eer(&r);
    BinaryReport {
        rows: scores.len(),
        positives: labels.iter().filter(|&&y| y).count(),
        auc: auc(&r),
        eer: e.eer,
        eer_threshold: e.threshold,
        at_eer: at_threshold(scores, labels, e.threshold),
        at_0_5: at_threshold(scores, labels, 0.5),
    }
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct ClassMetrics {
    pub class: String,
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    pub support: usize,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct MulticlassReport {
    pub rows: usize,
    pub accuracy: f64,
    pub macro_f1: f64,
    pub per_class: Vec<ClassMetrics>,
}

pub fn multiclass(classes: &[String], truth: &[usize], pred: &[usize]) -> MulticlassReport {
    let per_class: Vec<ClassMetrics> = classes
        .iter()
        .enumerate()
        .map(|(c, name)| {
            let tp = truth.iter().zip(pred).filter(|&(&t, &p)| t == c && p == c).count();
            let fp = truth.iter().zip(pred).filter(|&(&t, &p)| t != c && p == c).count();
            let support = truth.iter().filter(|&&t| t == c).count();
            let precision = if tp + fp > 0 { tp as f64 / (tp + fp) as f64 } else { 0.0 };
            let recall = if support > 0 { tp as f64 / support as f64 } else { 0.0 };
            let f1 = if precision + recall > 0.0 { 2.0 * precision * recall / (precision + recall) } else { 0.0 };
            ClassMetrics { class: name.clone(), precision, recall, f1, support }
        })
        .collect();
    let correct = truth.iter().zip(pred).filter(|(t, p)| t == p).count();
    MulticlassReport {
        rows: truth.len(),
        accuracy: correct as f64 / truth.len().max(1) as f64,
        macro_f1: per_class.iter().map(|c| c.f1).sum::<f64>() / per_class.len().max(1) as f64,
        per_class,
    }
}

/// The lower end of the Wilson score interval for the share `k / n`, `z` standard errors below
/// (1.645: a one-sided 95 % bound). 0 for no trials.
pub fn wilson_lower(k: usize, n: usize, z: f64) -> f64 {
    if n == 0 {
        return 0.0;
    }
    let (n, p) = (n as f64, k.min(n) as f64 / n as f64);
    let z2 = z * z;
    let centre = p + z2 / (2.0 * n);
    let half = z * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt();
    ((centre - half) / (1.0 + z2 / n)).max(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    /// Oracle: statsmodels 0.15 `proportion_confint(k, n, alpha=0.10, method="wilson")[0]`.
    #[test]
    fn wilson_lower_bound_matches_statsmodels() {
        let z = 1.6448536269514722;
        for (k, n, want) in [
            (86, 100, 0.7934062180620008),
            (87, 100, 0.8048062640785282),
            (95, 100, 0.9008389147209471),
            (100, 100, 0.9736572792168257),
            (0, 10, 0.0),
            (7, 10, 0.44169979586983493),
            (905, 1000, 0.8886371214662044),
        ] {
            assert!(close(wilson_lower(k, n, z), want), "{k}/{n}: {} vs {want}", wilson_lower(k, n, z));
        }
        assert_eq!(wilson_lower(0, 0, z), 0.0);
    }

    #[test]
    fn roc_and_auc_by_hand() {
        // scores 0.9(+) 0.8(-) 0.7(+) 0.6(-): ROC (0,0) (0,.5) (.5,.5) (.5,1) (1,1), AUC 0.75
        let r = roc(&[0.9, 0.8, 0.7, 0.6], &[true, false, true, false]);
        let pts: Vec<(f64, f64)> = r.iter().map(|p| (p.fpr, p.tpr)).collect();
        assert_eq!(pts, vec![(0.0, 0.0), (0.0, 0.5), (0.5, 0.5), (0.5, 1.0), (1.0, 1.0)]);
        assert!(close(auc(&r), 0.75));
        assert!(r[0].threshold.is_infinite());
        assert!(close(r[2].threshold, 0.800000011920929));
    }

    #[test]
    fn ties_form_one_point() {
        let r = roc(&[0.5, 0.5, 0.5], &[true, false, true]);
        assert_eq!(r.len(), 2);
        assert!(close(r[1].fpr, 1.0) && close(r[1].tpr, 1.0));
    }

    #[test]
    fn eer_exact_crossing() {
        // points: (fpr,fnr) = (0,1) (0,.5) (.5,.5) ...: d = 0 exactly at the third point
        let r = roc(&[0.9, 0.8, 0.7, 0.6], &[true, false, true, false]);
        let e = eer(&r);
        assert!(close(e.eer, 0.5));
        assert!(close(e.threshold, 0.800000011920929));
    }

    #[test]
    fn eer_interpolated_by_hand() {
        // 3 positives (0.9, 0.6, 0.4), 2 negatives (0.7, 0.3)
        // points: inf (0,1) ; .9 (0, 2/3) ; .7 (.5, 2/3) ; .6 (.5, 1/3) ...
        // d: -1, -2/3, -1/6, +1/6 -> crossing between t=.7 (d=-1/6) and t=.6 (d=+1/6): alpha = 1/2
        // EER = .5 + .5*(.5-.5) = .5 ; threshold = .7 + .5*(.6-.7) = .65
        let r = roc(&[0.9, 0.7, 0.6, 0.4, 0.3], &[true, false, true, true, false]);
        let e = eer(&r);
        assert!(close(e.eer, 0.5), "{e:?}");
        assert!((e.threshold - 0.65).abs() < 1e-6, "{e:?}");
    }

    #[test]
    fn perfect_separation_threshold_between_classes() {
        let r = roc(&[0.9, 0.8, 0.2, 0.1], &[true, true, false, false]);
        let e = eer(&r);
        assert!(close(e.eer, 0.0));
        assert!(close(auc(&r), 1.0));
        let m = at_threshold(&[0.9, 0.8, 0.2, 0.1], &[true, true, false, false], e.threshold);
        assert_eq!((m.tp, m.tn, m.fp, m.fn_), (2, 2, 0, 0));
    }

    #[test]
    fn binary_metrics_by_hand() {
        let m = at_threshold(&[0.9, 0.6, 0.4, 0.2], &[true, false, true, false], 0.5);
        assert_eq!((m.tp, m.fp, m.tn, m.fn_), (1, 1, 1, 1));
        assert!(close(m.accuracy, 0.5) && close(m.precision, 0.5) && close(m.recall, 0.5) && close(m.f1, 0.5));
    }

    #[test]
    fn multiclass_by_hand() {
        let classes = vec!["a".to_string(), "b".to_string()];
        let r = multiclass(&classes, &[0, 0, 1, 1], &[0, 1, 1, 1]);
        assert!(close(r.accuracy, 0.75));
        // a: p=1 r=.5 f1=2/3 ; b: p=2/3 r=1 f1=.8
        assert!(close(r.per_class[0].f1, 2.0 / 3.0));
        assert!(close(r.per_class[1].f1, 0.8));
        assert!(close(r.macro_f1, (2.0 / 3.0 + 0.8) / 2.0));
    }
}
