//! The core: the active expert set (one atomic snapshot per request) and one classify call.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use serde::Serialize;

use crate::config::{Limits, RuntimeConfig};
use crate::experts::card::{BundleFiles, Card, Kind};
use crate::experts::registry::RegistryFile;
use crate::gate::{self, ExpertOutput, Gate, GateSpec};
use crate::inference::executor::{Expect, Input};
use crate::inference::{Encoded, Executor, ExecutorPool, Matrix, TokenizerHandle};
use crate::{Error, Result};

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
    pub head: Option<Arc<Executor>>,
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
            return Err(Error::bundle(
                files.dir.join("card.json"),
                "has no calibrated threshold: run `moe calibrate` on it first",
            ));
        }
        let tokenizer = pool.tokenizer(&files.tokenizer, &files.tokenizer_sha256, files.max_seq_len)?;
        let big = cfg.intra_threads();
        let (stage1, head) = match (&files.card.kind, &files.trunk) {
            (Kind::Head, Some((tcard, tpath))) => {
                let trunk =
                    pool.executor(cfg, tpath, &tcard.graph.sha256, Expect::Tokens, Some(tcard.embedding_dim), big)?;
                let head = pool.executor(
                    cfg,
                    &files.graph,
                    &files.card.graph.sha256,
                    Expect::Embedding(tcard.embedding_dim),
                    Some(2),
                    cfg.head_threads,
                )?;
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

    /// Probabilities for texts, inside the async runtime (shadow scoring).
    pub async fn probabilities(&self, texts: &[String]) -> Result<Vec<f32>> {
        let enc = Arc::new(texts.iter().map(|t| self.tokenizer.encode(t)).collect::<Result<Vec<_>>>()?);
        let first = self.stage1.run(Input::Tokens(enc)).await?;
        let logits = match &self.head {
            Some(h) => h.run(Input::Embedding(Arc::new(first))).await?,
            None => first,
        };
        Ok(positive_probabilities(&logits))
    }

    /// Probabilities for texts, outside the async runtime (evaluation tools, warm-up).
    pub fn probabilities_blocking(&self, texts: &[String]) -> Result<Vec<f32>> {
        let enc = Arc::new(texts.iter().map(|t| self.tokenizer.encode(t)).collect::<Result<Vec<_>>>()?);
        let first = self.stage1.run_blocking(Input::Tokens(enc))?;
        let logits = match &self.head {
            Some(h) => h.run_blocking(Input::Embedding(Arc::new(first)))?,
            None => first,
        };
        Ok(positive_probabilities(&logits))
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

pub fn now_rfc3339() -> String {
    // Seconds since the epoch formatted as UTC RFC 3339 without pulling in a date crate.
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    // civil-from-days (H. Hinnant)
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// An immutable set of experts, swapped as a whole so a request never mixes versions.
pub struct ExpertSet {
    /// Sorted by class.
    pub experts: Vec<Arc<Expert>>,
    pub gate_spec: GateSpec,
    pub gate: Gate,
    pub generation: u64,
    /// Candidates scoring live traffic beside the active expert of their class.
    pub shadows: Vec<Arc<crate::shadow::Shadow>>,
}

impl ExpertSet {
    pub fn new(mut experts: Vec<Arc<Expert>>, gate_spec: GateSpec, generation: u64) -> ExpertSet {
        experts.sort_by(|a, b| a.class.cmp(&b.class));
        let ids: Vec<(String, String)> = experts.iter().map(|e| (e.class.clone(), e.card.version.clone())).collect();
        let gate = Gate::resolve(&gate_spec, &ids);
        if let Some(why) = &gate.disabled {
            tracing::warn!(reason = %why, "configured gate disabled, using uniform");
        }
        ExpertSet { experts, gate_spec, gate, generation, shadows: Vec::new() }
    }

    pub fn get(&self, class: &str) -> Option<&Arc<Expert>> {
        self.experts.iter().find(|e| e.class == class)
    }

    /// Load every bundle the registry names (blocking).
    pub fn load(pool: &ExecutorPool, cfg: &RuntimeConfig, root: &Path, generation: u64) -> Result<ExpertSet> {
        Self::load_from(pool, cfg, root, &RegistryFile::read(root)?, generation)
    }

    pub fn load_from(
        pool: &ExecutorPool,
        cfg: &RuntimeConfig,
        root: &Path,
        reg: &RegistryFile,
        generation: u64,
    ) -> Result<ExpertSet> {
        let mut experts = Vec::with_capacity(reg.experts.len());
        for (class, bundle) in &reg.experts {
            let e = Expert::load(pool, cfg, root, bundle, true)?;
            if &e.class != class {
                return Err(Error::InvalidRegistry {
                    path: RegistryFile::path(root),
                    reason: format!("names bundle {bundle} for class {class:?}, but its card is for {:?}", e.class),
                });
            }
            experts.push(Arc::new(e));
        }
        Ok(ExpertSet::new(experts, reg.gate.clone(), generation))
    }

    /// Run every expert on the texts: one tokenization per distinct tokenizer, every distinct
    /// trunk / full graph at once, then the heads; returns per expert the positive probabilities.
    pub async fn probabilities(&self, texts: &[String]) -> Result<(Vec<Vec<f32>>, Vec<bool>)> {
        let started = Instant::now();
        let mut encoded: HashMap<(String, usize), Arc<Vec<Encoded>>> = HashMap::new();
        for e in &self.experts {
            let key = (e.tokenizer.sha256.clone(), e.tokenizer.max_len);
            if let std::collections::hash_map::Entry::Vacant(slot) = encoded.entry(key) {
                let enc = texts.iter().map(|t| e.tokenizer.encode(t)).collect::<Result<Vec<_>>>()?;
                slot.insert(Arc::new(enc));
            }
        }
        let mut truncated = vec![false; texts.len()];
        for enc in encoded.values() {
            for (i, e) in enc.iter().enumerate() {
                truncated[i] |= e.truncated;
            }
        }
        // Stage 1: all distinct token graphs are queued before any is awaited, so they run concurrently.
        let mut stage1 = HashMap::new();
        for e in &self.experts {
            let key = (e.stage1.sha256.clone(), e.tokenizer.sha256.clone(), e.tokenizer.max_len);
            if let std::collections::hash_map::Entry::Vacant(slot) = stage1.entry(key) {
                let enc = encoded[&(e.tokenizer.sha256.clone(), e.tokenizer.max_len)].clone();
                slot.insert(e.stage1.submit(Input::Tokens(enc))?);
            }
        }
        let mut first: HashMap<_, Arc<Matrix>> = HashMap::new();
        for (k, rx) in stage1 {
            let m = rx.await.map_err(|_| Error::Inference("executor dropped a job".into()))??;
            first.insert(k, Arc::new(m));
        }
        // Stage 2: heads on their trunk's embeddings, again all queued before awaiting.
        let mut pending = Vec::with_capacity(self.experts.len());
        for e in &self.experts {
            let m = first[&(e.stage1.sha256.clone(), e.tokenizer.sha256.clone(), e.tokenizer.max_len)].clone();
            pending.push(match &e.head {
                Some(h) => Err(h.submit(Input::Embedding(m))?),
                None => Ok(m),
            });
        }
        let mut probs = Vec::with_capacity(self.experts.len());
        for (e, p) in self.experts.iter().zip(pending) {
            let logits = match p {
                Ok(m) => m,
                Err(rx) => Arc::new(rx.await.map_err(|_| Error::Inference("executor dropped a job".into()))??),
            };
            metrics::histogram!("moe_expert_seconds", "class" => e.class.clone())
                .record(started.elapsed().as_secs_f64());
            probs.push(positive_probabilities(&logits));
        }
        Ok((probs, truncated))
    }

    pub async fn classify(self: &Arc<Self>, texts: &[String]) -> Result<Vec<TextResult>> {
        let (probs, truncated) = self.probabilities(texts).await?;
        if !self.shadows.is_empty() {
            let (set, texts, active) = (self.clone(), texts.to_vec(), probs.clone());
            tokio::spawn(async move { set.run_shadows(&texts, &active).await });
        }
        Ok(texts
            .iter()
            .enumerate()
            .map(|(i, text)| self.decide(text, &probs.iter().map(|p| p[i]).collect::<Vec<_>>(), truncated[i]))
            .collect())
    }

    /// The gate's decision for one text given each expert's probability (same order as `experts`).
    pub fn decide(&self, text: &str, probs: &[f32], truncated: bool) -> TextResult {
        let outs: Vec<ExpertOutput> = self
            .experts
            .iter()
            .zip(probs)
            .map(|(e, &p)| ExpertOutput { probability: p, threshold: e.threshold.unwrap_or(0.5) })
            .collect();
        let d = gate::decide(&self.gate, &outs, gate::words(text));
        TextResult {
            label: d.label.map(|i| self.experts[i].class.clone()),
            abstained: d.label.is_none(),
            best_guess: self.experts[d.best_guess].class.clone(),
            truncated,
            experts: self
                .experts
                .iter()
                .enumerate()
                .map(|(i, e)| ExpertResult {
                    class: e.class.clone(),
                    probability: outs[i].probability,
                    threshold: outs[i].threshold,
                    passed: d.passed[i],
                    gate_weight: d.weights[i],
                    score: d.scores[i],
                    algorithm: e.card.algorithm.clone(),
                    bundle: e.bundle.clone(),
                    version: e.card.version.clone(),
                })
                .collect(),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ExpertResult {
    pub class: String,
    pub probability: f32,
    pub threshold: f32,
    pub passed: bool,
    pub gate_weight: f32,
    pub score: f32,
    pub algorithm: String,
    pub bundle: String,
    pub version: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct TextResult {
    pub label: Option<String>,
    pub abstained: bool,
    pub best_guess: String,
    pub truncated: bool,
    pub experts: Vec<ExpertResult>,
}

/// The service core shared by the HTTP handlers.
pub struct Core {
    pub root: PathBuf,
    pub runtime: RuntimeConfig,
    pub limits: Limits,
    pub pool: ExecutorPool,
    pub(crate) set: ArcSwapOption<ExpertSet>,
    pub(crate) generation: AtomicU64,
    /// Serialises the read-modify-write of the set and the registry file (held only for the
    /// install, never across loading or an await).
    pub(crate) install: std::sync::Mutex<crate::experts::registry::RegistryFile>,
    /// One swap at a time per class; swaps of different classes load in parallel.
    pub(crate) class_locks: std::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Labelled data whose validation split the selection jobs evaluate on.
    pub data: std::sync::OnceLock<crate::eval::data::DataArgs>,
    pub jobs: crate::jobs::Jobs,
}

impl Core {
    pub fn new(root: PathBuf, runtime: RuntimeConfig, limits: Limits) -> Arc<Core> {
        Arc::new(Core {
            root,
            runtime,
            limits,
            pool: ExecutorPool::default(),
            set: ArcSwapOption::empty(),
            generation: AtomicU64::new(0),
            install: std::sync::Mutex::new(RegistryFile {
                schema: crate::experts::registry::REGISTRY_SCHEMA,
                experts: Default::default(),
                gate: GateSpec::default(),
                history: Default::default(),
            }),
            class_locks: Default::default(),
            data: Default::default(),
            jobs: Default::default(),
        })
    }

    /// A new set equal to the current one but for the shadow of `class` (answers do not change).
    pub(crate) fn replace_shadow(&self, class: &str, shadow: Option<Arc<crate::shadow::Shadow>>) -> Result<()> {
        let _reg = self.install.lock().expect("install lock");
        let cur = self.snapshot()?;
        let generation = self.generation.fetch_add(1, Ordering::SeqCst) + 1;
        let mut set = ExpertSet::new(cur.experts.clone(), cur.gate_spec.clone(), generation);
        set.shadows = cur.shadows.iter().filter(|s| s.class != class).cloned().chain(shadow).collect();
        self.set.store(Some(Arc::new(set)));
        Ok(())
    }

    /// Load the registry's set and install it (blocking; run off the async workers).
    pub fn load_registry(&self) -> Result<()> {
        let g = self.generation.fetch_add(1, Ordering::SeqCst) + 1;
        let mut reg = RegistryFile::read(&self.root)?;
        let set = ExpertSet::load_from(&self.pool, &self.runtime, &self.root, &reg, g)?;
        for e in &set.experts {
            let h = reg.history.entry(e.class.clone()).or_default();
            if h.last().and_then(|l| l.bundle.as_ref()) != Some(&e.bundle) {
                h.push(crate::experts::registry::HistoryEntry {
                    bundle: Some(e.bundle.clone()),
                    version: Some(e.card.version.clone()),
                    at: now_rfc3339(),
                    action: "loaded".into(),
                });
            }
        }
        tracing::info!(experts = set.experts.len(), gate = set.gate.weights.name(), "expert set ready");
        *self.install.lock().expect("install lock") = reg;
        self.set.store(Some(Arc::new(set)));
        Ok(())
    }

    /// The current set; requests hold this snapshot for their whole life.
    pub fn snapshot(&self) -> Result<Arc<ExpertSet>> {
        self.set.load_full().ok_or_else(|| Error::NotReady("experts are still loading".into()))
    }

    pub fn is_ready(&self) -> bool {
        self.set.load().is_some()
    }

    /// Validate a classify request against the limits, then run it on one snapshot.
    /// Returns the results and the generation of the set that answered.
    pub async fn classify(&self, texts: Vec<String>) -> Result<(Vec<TextResult>, u64)> {
        let l = &self.limits;
        if texts.is_empty() {
            return Err(Error::BadRequest("no text given: send {\"text\": \"...\"} or {\"texts\": [...]}".into()));
        }
        if texts.len() > l.max_texts {
            return Err(Error::BadRequest(format!("{} texts given, the limit is {}", texts.len(), l.max_texts)));
        }
        for (i, t) in texts.iter().enumerate() {
            if t.trim().is_empty() {
                return Err(Error::BadRequest(format!("text {i} is empty")));
            }
            let n = t.chars().count();
            if n > l.max_text_chars {
                return Err(Error::BadRequest(format!(
                    "text {i} has {n} characters, the limit is {}",
                    l.max_text_chars
                )));
            }
        }
        let set = self.snapshot()?;
        let timeout = Duration::from_millis(l.request_timeout_ms);
        let results = tokio::time::timeout(timeout, set.classify(&texts))
            .await
            .map_err(|_| Error::Timeout(l.request_timeout_ms))??;
        Ok((results, set.generation))
    }
}
