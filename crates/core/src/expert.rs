//! One expert: a bundle loaded into ONNX Runtime (its tokenizer, its trunk or full graph, its head),
//! validated, warmed by a self-test, and able to give each text its positive-class probability.
//! Invariant: an `Expert` that exists passed every check of its card and its self-test.

use std::path::Path;
use std::sync::Arc;

use crate::bundle::card::{BundleFiles, Card, Kind};
use crate::clock::now_rfc3339;
use crate::config::RuntimeConfig;
use crate::inference::executor::{Expect, Input};
use crate::inference::{Executor, ExecutorPool, LinearHead, Matrix, TokenizerHandle};
use crate::{Error, Result};

/// What turns a trunk's embedding into logits `[rows, 2]`.
pub enum Head {
    /// An ONNX graph on its own executor.
    Graph(Arc<Executor>),
    /// A linear head computed in Rust on the calling thread (a dot product per row).
    Linear(Arc<LinearHead>),
}

impl Head {
    /// Logits for an embedding, waiting on the graph's executor where there is one.
    pub fn run_blocking(&self, embedding: Arc<Matrix>) -> Result<Matrix> {
        match self {
            Head::Graph(g) => g.run_blocking(Input::Embedding(embedding)),
            Head::Linear(l) => l.logits(&embedding),
        }
    }
}

/// One loaded, warmed expert.
pub struct Expert {
    pub class: String,
    pub bundle: String,
    pub card: Card,
    /// The EER threshold from the card (None only for uncalibrated bundles in the eval tools).
    pub threshold: Option<f32>,
    pub tokenizer: Arc<TokenizerHandle>,
    /// The trunk for heads, the whole model for full bundles.
    pub stage1: Arc<Executor>,
    pub head: Option<Head>,
    pub loaded_at: String,
}

impl Expert {
    /// Load, validate and warm a bundle (blocking). `require_threshold`: refuse uncalibrated cards.
    pub fn load(
        pool: &ExecutorPool,
        cfg: &RuntimeConfig,
        root: &Path,
        name: &str,
        require_threshold: bool,
    ) -> Result<Expert> {
        let files = BundleFiles::open(root, name)?;
        if require_threshold && files.card.threshold.is_none() {
            return Err(uncalibrated(files.dir.join("card.json")));
        }
        let spelling = files.spelling.as_ref().filter(|_| cfg.spelling).map(|(p, h)| (p.as_path(), h.as_str()));
        let tokenizer = pool.tokenizer(&files.tokenizer, &files.tokenizer_sha256, files.max_seq_len, spelling)?;
        let big = cfg.intra_threads();
        let (stage1, head) = match (&files.card.kind, &files.trunk) {
            (kind, Some((tcard, tpath))) if kind.on_trunk() => {
                let trunk =
                    pool.executor(cfg, tpath, &tcard.graph.sha256, Expect::Tokens, Some(tcard.embedding_dim), big)?;
                let head = if *kind == Kind::Linear {
                    Head::Linear(Arc::new(LinearHead::read(&files.graph, tcard.embedding_dim)?))
                } else {
                    Head::Graph(pool.executor(
                        cfg,
                        &files.graph,
                        &files.card.graph.sha256,
                        Expect::Embedding(tcard.embedding_dim),
                        Some(2),
                        cfg.head_threads,
                    )?)
                };
                (trunk, Some(head))
            }
            _ => (pool.executor(cfg, &files.graph, &files.card.graph.sha256, Expect::Tokens, Some(2), big)?, None),
        };
        let expert = Expert {
            class: files.card.class.clone(),
            bundle: files.name.clone(),
            threshold: files.card.threshold.as_ref().map(|t| t.value),
            card: files.card,
            tokenizer,
            stage1,
            head,
            loaded_at: now_rfc3339(),
        };
        let probe = ["warm-up", "how to check that a text gets the same answer in any batch"];
        expert.stage1.probe(probe.iter().map(|t| expert.tokenizer.encode(t)).collect::<Result<Vec<_>>>()?)?;
        expert.self_test(cfg.selftest_tolerance, &files.dir)?;
        Ok(expert)
    }

    /// Warm-up with real forward passes: the card's recorded texts must give the recorded
    /// probabilities (catches a wrong tokenizer, trunk or graph), else the bundle is refused.
    fn self_test(&self, tolerance: f32, dir: &Path) -> Result<()> {
        let mut texts: Vec<String> = self.card.selftest.iter().map(|s| s.text.clone()).collect();
        if texts.is_empty() {
            texts.push("warm-up".into());
        }
        let probs = self.probabilities_blocking(&texts)?;
        for (s, p) in self.card.selftest.iter().zip(&probs) {
            if (s.probability - p).abs() > tolerance || !p.is_finite() {
                return Err(Error::bundle(
                    dir.join("card.json"),
                    format!(
                        "self-test failed on {:?}: recorded probability {}, this runtime gives {p} (tolerance {tolerance})",
                        s.text, s.probability
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Probabilities for texts, outside the async runtime (evaluation tools, warm-up, shadows).
    pub fn probabilities_blocking(&self, texts: &[String]) -> Result<Vec<f32>> {
        let enc = Arc::new(texts.iter().map(|t| self.tokenizer.encode(t)).collect::<Result<Vec<_>>>()?);
        let first = self.stage1.run_blocking(Input::Tokens(enc))?;
        let logits = match &self.head {
            Some(h) => h.run_blocking(Arc::new(first))?,
            None => first,
        };
        Ok(positive_probabilities(&logits))
    }

    /// The Platt map (a, b) of the card, if `moe calibrate` fitted one.
    pub fn calibration(&self) -> Option<[f32; 2]> {
        self.card.calibration.as_ref().map(|c| [c.a, c.b])
    }

    /// The decision threshold a served expert must have (an expert set or a shadow needs one).
    pub fn served_threshold(&self) -> Result<f32> {
        self.threshold.ok_or_else(|| uncalibrated(self.bundle.as_str()))
    }

    pub fn provider(&self) -> &'static str {
        self.stage1.provider
    }
}

/// softmax(logits)[:, 1] for [rows, 2] logits.
pub fn positive_probabilities(m: &Matrix) -> Vec<f32> {
    (0..m.rows)
        .map(|i| {
            let r = m.row(i);
            1.0 / (1.0 + (r[0] - r[1]).exp())
        })
        .collect()
}

fn uncalibrated(path: impl Into<std::path::PathBuf>) -> Error {
    Error::bundle(path, "has no calibrated threshold: run `moe calibrate` on it first")
}
