//! Evaluating one bundle on a labelled split, in the serving runtime, through the service's own
//! loading and inference code: `moe eval`, `moe calibrate`, the selection jobs and `moe select`
//! all call these functions.

use std::path::Path;

use serde_json::{Value, json};

use super::data::{DataArgs, Rows};
use super::metrics::binary_report;
use crate::config::RuntimeConfig;
use crate::expert::Expert;
use crate::experts::card::Threshold;
use crate::experts::card::bundle_names;
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
    let scores = probabilities(expert, &rows.texts)?;
    let labels: Vec<bool> = rows.labels.iter().map(|l| *l == expert.class).collect();
    if !labels.iter().any(|&y| y) || labels.iter().all(|&y| y) {
        return Err(Error::BadRequest(format!("split has no positive or no negative rows for {:?}", expert.class)));
    }
    Ok(binary_report(&scores, &labels))
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

/// `moe calibrate`: write each bundle's EER threshold and metrics on `split` into its card
/// (never on test). Prints one line per bundle.
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
        let r = evaluate(&expert, &rows)?;
        let mut card = expert.card.clone();
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
