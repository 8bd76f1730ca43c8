//! Evaluating one bundle on a labelled split, in the serving runtime, through the service's own
//! loading and inference code: `moe eval`, `moe calibrate`, the selection jobs and `moe select`
//! all call these functions.

use std::path::Path;

use serde_json::{Value, json};

use super::data::{DataArgs, Rows};
use super::metrics::binary_report;
use super::platt;
use crate::config::RuntimeConfig;
use crate::expert::Expert;
use crate::experts::card::bundle_names;
use crate::experts::card::{Calibration, Threshold};
use crate::experts::metrics::{BinaryReport, SplitMetrics};
use crate::inference::ExecutorPool;
use crate::{Error, Result};

pub fn probabilities(expert: &Expert, texts: &[String]) -> Result<Vec<f32>> {
    let mut out = Vec::with_capacity(texts.len());
    for chunk in texts.chunks(64) {
        out.extend(expert.probabilities_blocking(chunk)?);
    }
    Ok(out)
}

/// Probabilities of one expert on a split and its binary report (shared with the selection jobs).
pub fn evaluate(expert: &Expert, rows: &Rows) -> Result<BinaryReport> {
    let (scores, labels) = scored(expert, rows)?;
    Ok(binary_report(&scores, &labels))
}

/// One expert's probabilities on a split and whether each row is of its class.
fn scored(expert: &Expert, rows: &Rows) -> Result<(Vec<f32>, Vec<bool>)> {
    let scores = probabilities(expert, &rows.texts)?;
    let labels: Vec<bool> = rows.labels.iter().map(|l| *l == expert.class).collect();
    if !labels.iter().any(|&y| y) || labels.iter().all(|&y| y) {
        return Err(Error::BadRequest(format!("split has no positive or no negative rows for {:?}", expert.class)));
    }
    Ok((scores, labels))
}

/// Folds of the cross-fitting that tells whether an expert's calibration helps out of sample.
const CALIBRATION_FOLDS: usize = 5;

/// The Platt map fitted on the whole split, with the log-loss of the raw probabilities and of the
/// cross-fitted calibrated ones as its out-of-sample evidence.
fn platt_calibration(scores: &[f32], labels: &[bool], split: &str) -> Calibration {
    let [a, b] = platt::fit(scores, labels);
    let cross = platt::cross_fitted(scores, labels, CALIBRATION_FOLDS);
    Calibration {
        method: "platt".into(),
        a,
        b,
        split: split.to_string(),
        cross_validated: Some(json!({
            "folds": CALIBRATION_FOLDS,
            "log_loss_raw": platt::log_loss(scores, labels),
            "log_loss_calibrated": platt::log_loss(&cross, labels),
        })),
    }
}

/// `moe eval`: one bundle's ROC summary on a split (uncalibrated bundles allowed).
pub fn eval_bundle(
    models: &Path,
    bundle: &str,
    split: &str,
    data: &DataArgs,
    runtime: &RuntimeConfig,
) -> Result<Value> {
    let pool = ExecutorPool::default();
    let expert = Expert::load(&pool, runtime, models, bundle, false)?;
    let report = evaluate(&expert, &data.read(split)?)?;
    Ok(json!({"bundle": bundle, "class": expert.class, "split": split, "report": report}))
}

/// `moe calibrate`: write each bundle's EER threshold, Platt calibration and metrics on `split`
/// into its card (never on test). Prints one line per bundle.
pub fn calibrate(
    models: &Path,
    bundles: &[String],
    split: &str,
    data: &DataArgs,
    runtime: &RuntimeConfig,
) -> Result<()> {
    if split == "test" {
        return Err(Error::BadRequest("thresholds are never set on the test split".into()));
    }
    let rows = data.read(split)?;
    let names = if bundles.is_empty() { bundle_names(models)? } else { bundles.to_vec() };
    let pool = ExecutorPool::default();
    for name in names {
        let expert = Expert::load(&pool, runtime, models, &name, false)?;
        let (scores, labels) = scored(&expert, &rows)?;
        let r = binary_report(&scores, &labels);
        let mut card = expert.card.clone();
        card.calibration = Some(platt_calibration(&scores, &labels, split));
        card.threshold = Some(Threshold {
            value: (r.eer_threshold as f32).clamp(1e-6, 1.0 - 1e-6),
            method: "eer".into(),
            split: split.to_string(),
        });
        let line = format!(
            "{name}: {split} AUC {:.4} EER {:.4} threshold {:.4} F1@EER {:.4} F1@0.5 {:.4}",
            r.auc, r.eer, r.eer_threshold, r.at_eer.f1, r.at_0_5.f1
        );
        card.metrics.insert(
            split.to_string(),
            SplitMetrics { provider: expert.provider().to_string(), runtime: "onnxruntime (moe)".into(), report: r },
        );
        card.write(&models.join(&name).join("card.json"))?;
        println!("{line}");
    }
    Ok(())
}
