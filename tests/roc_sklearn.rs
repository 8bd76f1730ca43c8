//! The ROC / AUC / EER code against scikit-learn's roc_curve and roc_auc_score, and scipy's root of
//! FPR = FNR, on the same scores
//! (fixture written by training/scripts/sklearn_roc_fixture.py).

use moe_core::stats::roc::{auc, eer, roc};
use serde_json::Value;

#[test]
fn roc_matches_scikit_learn() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/sklearn_roc.json");
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    for case in doc["cases"].as_array().unwrap() {
        let scores: Vec<f32> = case["scores"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect();
        let labels: Vec<bool> = case["labels"].as_array().unwrap().iter().map(|v| v.as_bool().unwrap()).collect();
        let r = roc(&scores, &labels);
        let fpr = case["fpr"].as_array().unwrap();
        assert_eq!(r.len(), fpr.len(), "same number of ROC points");
        for (i, p) in r.iter().enumerate() {
            assert!((p.fpr - fpr[i].as_f64().unwrap()).abs() < 1e-12);
            assert!((p.tpr - case["tpr"][i].as_f64().unwrap()).abs() < 1e-12);
            match case["thresholds"][i].as_f64() {
                Some(t) => assert!((p.threshold - t).abs() < 1e-6, "threshold {i}: {} vs {t}", p.threshold),
                None => assert!(p.threshold.is_infinite()),
            }
        }
        assert!((auc(&r) - case["auc"].as_f64().unwrap()).abs() < 1e-12);
        // EER where FPR = FNR on the linearly interpolated curve: against scipy's root of
        // 1 - x - TPR(x) on scikit-learn's curve; its threshold inside the score range.
        let e = eer(&r);
        let want = case["eer"].as_f64().unwrap();
        assert!((e.eer - want).abs() < 1e-9, "EER {} vs scipy {want}", e.eer);
        assert!(e.threshold > 0.0 && e.threshold <= 1.0);
    }
}
