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
        let (coef, probabilities) = (case["coef"].as_array().unwrap(), case["probabilities"].as_array().unwrap());
        assert_eq!((m.head.weights.len(), probabilities.len()), (coef.len(), x.len()), "C={c}: every weight and row");
        for (w, want) in m.head.weights.iter().zip(coef) {
            let want = want.as_f64().unwrap();
            assert!((f64::from(*w) - want).abs() < 1e-3 * want.abs().max(1.0), "C={c}: weight {w} vs sklearn {want}");
        }
        let b = case["intercept"].as_f64().unwrap();
        assert!(
            (f64::from(m.head.bias) - b).abs() < 1e-3 * b.abs().max(1.0),
            "C={c}: bias {} vs sklearn {b}",
            m.head.bias
        );
        for (r, p) in x.iter().zip(probabilities) {
            assert!((f64::from(m.probability(r)) - p.as_f64().unwrap()).abs() < 1e-4);
        }
    }
}

/// `moe fit`'s heads (standardize on train, fit every class together, fold back) against
/// scikit-learn's StandardScaler + balanced one-vs-rest LogisticRegression per class.
#[test]
fn one_vs_rest_on_standardized_features_matches_scikit_learn() {
    use moe_core::inference::Matrix;
    use moe_core::stats::ovr::{Options, Standardizer, fit_one_vs_rest};
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/sklearn_ovr.json");
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    for case in doc["cases"].as_array().unwrap() {
        let rows = case["x"].as_array().unwrap();
        let d = rows[0].as_array().unwrap().len();
        let data: Vec<f32> =
            rows.iter().flat_map(|r| r.as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32)).collect();
        let x = Matrix { rows: rows.len(), cols: d, data };
        let truth: Vec<usize> = case["y"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as usize).collect();
        let c = case["c"].as_f64().unwrap();
        let heads = case["heads"].as_array().unwrap();
        let scaler = Standardizer::fit(&x);
        let o = Options { c, tol: 1e-9, max_iter: 2000 };
        let fitted = fit_one_vs_rest(&scaler.apply(&x), &truth, heads.len(), o, None);
        assert_eq!(fitted.len(), heads.len(), "C={c}: one head per class");
        for (k, (f, want)) in fitted.iter().zip(heads).enumerate() {
            assert_eq!(want["coef"].as_array().unwrap().len(), d, "C={c} class {k}: one weight per feature");
            let head = scaler.fold(&f.head);
            for i in 0..x.rows {
                let z: f64 = want["coef"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .zip(x.row(i))
                    .map(|(w, v)| w.as_f64().unwrap() * f64::from(*v))
                    .sum::<f64>()
                    + want["intercept"].as_f64().unwrap();
                let got = f64::from(head.score(x.row(i)));
                assert!(
                    (got - z).abs() < 2e-3 * z.abs().max(1.0),
                    "C={c} class {k} row {i}: score {got} vs sklearn {z}"
                );
            }
        }
    }
}
