//! The online trainer's logistic regression against scikit-learn's LogisticRegression on the same
//! data, weights and C (fixture written by training/scripts/sklearn_logreg_fixture.py).

use moe_core::stats::logreg::{balanced_weights, fit};
use serde_json::Value;

#[test]
fn logistic_regression_matches_scikit_learn() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/sklearn_logreg.json");
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    for case in doc["cases"].as_array().unwrap() {
        let rows: Vec<Vec<f32>> = case["x"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r.as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect())
            .collect();
        let x: Vec<&[f32]> = rows.iter().map(Vec::as_slice).collect();
        let y: Vec<bool> = case["y"].as_array().unwrap().iter().map(|v| v.as_bool().unwrap()).collect();
        let c = case["c"].as_f64().unwrap();
        let m = fit(&x, &y, &balanced_weights(&y), c);
        for (w, want) in m.head.weights.iter().zip(case["coef"].as_array().unwrap()) {
            let want = want.as_f64().unwrap();
            assert!((f64::from(*w) - want).abs() < 1e-3 * want.abs().max(1.0), "C={c}: weight {w} vs sklearn {want}");
        }
        let b = case["intercept"].as_f64().unwrap();
        assert!(
            (f64::from(m.head.bias) - b).abs() < 1e-3 * b.abs().max(1.0),
            "C={c}: bias {} vs sklearn {b}",
            m.head.bias
        );
        for (r, p) in x.iter().zip(case["probabilities"].as_array().unwrap()) {
            assert!((f64::from(m.probability(r)) - p.as_f64().unwrap()).abs() < 1e-4);
        }
    }
}
