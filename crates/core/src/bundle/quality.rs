//! The metrics a card records and the one `Metric` vocabulary used to compare bundles (swap quality
//! gates, selection jobs, `moe select`). `eval::metrics` computes these values; this module only
//! names and reads them, so every reader agrees on what "f1" or "eer" means.

use serde::{Deserialize, Serialize};

/// Classification counts and rates at one threshold.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct BinaryMetrics {
    pub threshold: f64,
    pub accuracy: f64,
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    pub tp: usize,
    pub fp: usize,
    pub tn: usize,
    #[serde(rename = "fn")]
    pub fn_: usize,
}

/// Everything `moe eval` reports for one bundle on one split.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BinaryReport {
    pub rows: usize,
    pub positives: usize,
    pub auc: f64,
    pub eer: f64,
    pub eer_threshold: f64,
    pub at_eer: BinaryMetrics,
    pub at_0_5: BinaryMetrics,
}

/// One split's entry in a card's `metrics` (written by `moe calibrate`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SplitMetrics {
    /// Execution provider that computed it ("CPU", "CUDA").
    pub provider: String,
    pub runtime: String,
    pub report: BinaryReport,
}

/// A metric bundles are compared on. `f1` and `accuracy` are read at the EER threshold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Metric {
    /// Equal error rate (lower is better).
    #[default]
    Eer,
    /// Area under the ROC curve.
    Auc,
    /// F1 at the EER threshold.
    F1,
    /// Accuracy at the EER threshold.
    Accuracy,
}

impl Metric {
    pub const ALL: [Metric; 4] = [Metric::Eer, Metric::Auc, Metric::F1, Metric::Accuracy];

    pub fn name(self) -> &'static str {
        match self {
            Metric::Eer => "eer",
            Metric::Auc => "auc",
            Metric::F1 => "f1",
            Metric::Accuracy => "accuracy",
        }
    }

    pub fn higher_is_better(self) -> bool {
        self != Metric::Eer
    }

    /// The value as reported.
    pub fn of(self, r: &BinaryReport) -> f64 {
        match self {
            Metric::Eer => r.eer,
            Metric::Auc => r.auc,
            Metric::F1 => r.at_eer.f1,
            Metric::Accuracy => r.at_eer.accuracy,
        }
    }

    /// The value oriented so that higher is always better (for ranking).
    pub fn rank(self, r: &BinaryReport) -> f64 {
        let v = self.of(r);
        if self.higher_is_better() { v } else { -v }
    }

    /// Whether `value` satisfies a bound on this metric (a minimum, or a maximum for EER).
    pub fn meets(self, value: f64, bound: f64) -> bool {
        if self.higher_is_better() { value >= bound } else { value <= bound }
    }
}

impl std::fmt::Display for Metric {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(eer: f64, auc: f64, f1: f64) -> BinaryReport {
        BinaryReport {
            rows: 10,
            positives: 2,
            auc,
            eer,
            eer_threshold: 0.3,
            at_eer: BinaryMetrics { f1, accuracy: 0.9, ..Default::default() },
            at_0_5: BinaryMetrics::default(),
        }
    }

    #[test]
    fn ranking_orients_every_metric_upwards() {
        let (good, bad) = (report(0.1, 0.95, 0.8), report(0.2, 0.90, 0.7));
        for m in Metric::ALL {
            if m == Metric::Accuracy {
                assert_eq!(m.rank(&good), m.rank(&bad));
                continue;
            }
            assert!(m.rank(&good) > m.rank(&bad), "{m}");
        }
        assert!(Metric::Eer.meets(0.1, 0.15) && !Metric::Eer.meets(0.2, 0.15));
        assert!(Metric::Auc.meets(0.95, 0.9) && !Metric::Auc.meets(0.85, 0.9));
        assert_eq!(serde_json::to_value(Metric::F1).unwrap(), "f1");
        assert_eq!(serde_json::from_value::<Metric>("auc".into()).unwrap(), Metric::Auc);
        assert!(serde_json::from_value::<Metric>("speed".into()).is_err());
    }

    #[test]
    fn a_card_metrics_block_reads_into_the_metric_vocabulary_and_writes_back_the_same_keys() {
        let text = r#"{"provider": "CPU", "runtime": "onnxruntime (moe)", "report": {"rows": 580,
            "positives": 31, "auc": 0.97, "eer": 0.1, "eer_threshold": 0.02,
            "at_eer": {"threshold": 0.02, "accuracy": 0.89, "precision": 0.3, "recall": 0.8, "f1": 0.47,
                       "tp": 27, "fp": 56, "tn": 493, "fn": 4},
            "at_0_5": {"threshold": 0.5, "accuracy": 0.97, "precision": 0.8, "recall": 0.7, "f1": 0.77,
                       "tp": 22, "fp": 4, "tn": 545, "fn": 9}}}"#;
        let m: SplitMetrics = serde_json::from_str(text).unwrap();
        assert_eq!((m.report.at_eer.fn_, m.report.at_0_5.fn_), (4, 9));
        // Each name of the vocabulary reads its own figure (at the EER threshold, not at 0.5).
        let read: Vec<(Metric, f64)> = Metric::ALL.iter().map(|&k| (k, k.of(&m.report))).collect();
        assert_eq!(read, [(Metric::Eer, 0.1), (Metric::Auc, 0.97), (Metric::F1, 0.47), (Metric::Accuracy, 0.89)]);
        // Written back with the card's own keys ("fn", not the field's name), nothing lost.
        let written: serde_json::Value = serde_json::to_value(&m).unwrap();
        assert_eq!(written, serde_json::from_str::<serde_json::Value>(text).unwrap());
    }
}
