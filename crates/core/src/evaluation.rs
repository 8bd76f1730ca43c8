//! Evaluating one bundle on a labelled split, in the serving runtime, through the service's own
//! loading and inference code: `moe eval`, `moe calibrate`, the selection jobs and `moe select`
//! all call these functions.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use serde_json::{Value, json};

use crate::bundle::bundle_names;
use crate::bundle::card::{Calibration, Threshold};
use crate::bundle::quality::{BinaryReport, SplitMetrics};
use crate::config::RuntimeConfig;
use crate::data::{DataArgs, Rows};
use crate::expert::{Expert, positive_probabilities};
use crate::inference::executor::Input;
use crate::inference::{Executor, ExecutorPool, Matrix, TokenizerHandle};
use crate::stats::platt;
use crate::stats::roc::binary_report;
use crate::{Error, Result};

/// Texts per graph run in the offline tools.
const CHUNK: usize = 64;

/// A token graph's output for every text, run in chunks of `CHUNK`; `done` hears the rows so far
/// after each chunk.
pub fn trunk_outputs<T: AsRef<str>>(
    exec: &Executor,
    tok: &TokenizerHandle,
    texts: &[T],
    mut done: impl FnMut(usize),
) -> Result<Matrix> {
    let mut all = Matrix { rows: 0, cols: 0, data: Vec::new() };
    for chunk in texts.chunks(CHUNK) {
        let enc = chunk.iter().map(|t| tok.encode(t.as_ref())).collect::<Result<Vec<_>>>()?;
        let m = exec.run_blocking(Input::Tokens(Arc::new(enc)))?;
        all.cols = m.cols;
        all.rows += m.rows;
        all.data.extend(m.data);
        done(all.rows);
    }
    Ok(all)
}

pub fn probabilities(expert: &Expert, texts: &[String]) -> Result<Vec<f32>> {
    let mut out = Vec::with_capacity(texts.len());
    for chunk in texts.chunks(CHUNK) {
        out.extend(expert.probabilities_blocking(chunk)?);
    }
    Ok(out)
}

/// Scores many experts on one list of texts, running each trunk over the texts once: experts
/// that share a trunk and a text pipeline (tokenizer, length, lexicon) reuse its embeddings and
/// run only their heads, so calibrating or selecting N heads costs one trunk pass, not N. The
/// embeddings come from the same executors, so every probability equals [`probabilities`]'s.
pub struct Scorer<'a> {
    texts: &'a [String],
    embeddings: HashMap<String, Arc<Matrix>>,
}

impl<'a> Scorer<'a> {
    pub fn new(texts: &'a [String]) -> Scorer<'a> {
        Scorer { texts, embeddings: HashMap::new() }
    }

    /// Use `embedding` (one row per text, computed by the expert's own trunk and text pipeline,
    /// e.g. by `moe fit` before the bundles existed) instead of running the trunk again.
    pub fn seed(&mut self, expert: &Expert, embedding: Arc<Matrix>) -> Result<()> {
        if embedding.rows != self.texts.len() {
            return Err(Error::Internal(format!(
                "seeded embedding has {} rows for {} texts",
                embedding.rows,
                self.texts.len()
            )));
        }
        self.embeddings.insert(Self::key(expert), embedding);
        Ok(())
    }

    /// Trunk passes run so far (one per distinct trunk and text pipeline).
    pub fn trunk_passes(&self) -> usize {
        self.embeddings.len()
    }

    pub fn probabilities(&mut self, expert: &Expert) -> Result<Vec<f32>> {
        let Some(head) = &expert.head else { return probabilities(expert, self.texts) };
        let embedding = self.embedding(expert)?;
        let mut out = Vec::with_capacity(embedding.rows);
        for start in (0..embedding.rows).step_by(CHUNK) {
            let rows = CHUNK.min(embedding.rows - start);
            let part = embedding.data[start * embedding.cols..(start + rows) * embedding.cols].to_vec();
            let logits = head.run_blocking(Arc::new(Matrix { rows, cols: embedding.cols, data: part }))?;
            out.extend(positive_probabilities(&logits));
        }
        Ok(out)
    }

    /// What makes two experts' trunk outputs the same: the graph and the text pipeline.
    fn key(expert: &Expert) -> String {
        let tok = &expert.tokenizer;
        let lexicon = tok.speller.as_ref().map_or("", |s| s.sha256.as_str());
        format!("{}|{}|{}|{lexicon}", expert.stage1.sha256, tok.sha256, tok.max_len)
    }

    /// The expert's trunk output for every text, computed on first use.
    fn embedding(&mut self, expert: &Expert) -> Result<Arc<Matrix>> {
        let key = Self::key(expert);
        if let Some(m) = self.embeddings.get(&key) {
            return Ok(m.clone());
        }
        let all = Arc::new(trunk_outputs(&expert.stage1, &expert.tokenizer, self.texts, |_| {})?);
        self.embeddings.insert(key, all.clone());
        Ok(all)
    }
}

/// Probabilities of one expert on a split and its binary report (shared with the selection jobs).
pub fn evaluate(expert: &Expert, rows: &Rows) -> Result<BinaryReport> {
    let (scores, labels) = scored(&mut Scorer::new(&rows.texts), expert, rows)?;
    Ok(binary_report(&scores, &labels))
}

/// One expert's probabilities on a split and whether each row is of its class.
fn scored(scorer: &mut Scorer, expert: &Expert, rows: &Rows) -> Result<(Vec<f32>, Vec<bool>)> {
    let scores = scorer.probabilities(expert)?;
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
pub fn platt_calibration(scores: &[f32], labels: &[bool], split: &str) -> Calibration {
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
/// into its card (never on test). Prints one line per bundle. Every bundle is scored before any
/// card is written, so a bundle that fails to load or score leaves every card as it was.
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
    let mut scorer = Scorer::new(&rows.texts);
    let mut done = Vec::with_capacity(names.len());
    for name in names {
        let expert = Expert::load(&pool, runtime, models, &name, false)?;
        let (scores, labels) = scored(&mut scorer, &expert, &rows)?;
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
        done.push((name, card, line));
    }
    for (name, card, line) in done {
        card.write(&models.join(&name).join("card.json"))?;
        println!("{line}");
    }
    Ok(())
}
