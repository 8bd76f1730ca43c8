//! The core: the active expert set (one atomic snapshot per request), one classify call, and the
//! one function through which every change of the set goes (`Core::commit`).
//!
//! Invariants:
//! * A request takes one snapshot (`ExpertSet`, immutable) and finishes on it.
//! * Every change (load at start, swap, delete, rollback, shadow attach / drop) goes through
//!   `install`: under the registry lock it builds the new set, writes the registry when it
//!   changed (temp file, fsync, rename), bumps the generation and stores the set. A failure before
//!   the store changes nothing, in memory or on disk.
//! * The mutable registry (active set, history) lives in the state folder, never in the model
//!   root: the shipped `models/registry.json` only seeds it on the first start.
//! * Admission control happens before any work: a request whose texts would take the number of
//!   texts in flight over `--max-in-flight-texts` is refused at once (503).
//!
//! What *uses* the core (swaps, shadows, selection jobs, uploads) lives in `control/`.

pub mod set;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use tokio::sync::Semaphore;

pub use self::set::{ExpertResult, ExpertSet, Shadow, TextResult};
use crate::config::{Limits, RuntimeConfig};
use crate::error::lock;
use crate::expert::Expert;
use crate::experts::card::{Card, bundle_names};
use crate::experts::registry::{HistoryEntry, RegistryFile};
use crate::inference::ExecutorPool;
use crate::{Error, Result};

/// Where the service reads bundles and keeps its mutable state.
#[derive(Debug, Clone)]
pub struct Paths {
    /// Model root: bundles, trunks/, and the shipped registry.json (read-only for the service).
    pub models: PathBuf,
    /// State folder: the live registry.json (active set, history). Created when missing.
    pub state: PathBuf,
}

impl Paths {
    pub fn new(models: impl Into<PathBuf>, state: impl Into<PathBuf>) -> Paths {
        Paths { models: models.into(), state: state.into() }
    }
}

/// One change of the active set.
pub enum Change {
    /// Install this expert for its class (replacing the active one, or adding the class); with
    /// `drop_shadow` the class's shadow goes in the same change (a promotion).
    Install { expert: Arc<Expert>, action: &'static str, drop_shadow: bool },
    /// Remove a class.
    Remove { class: String },
    /// Attach (Some) or drop (None) the shadow of a class; answers and the registry do not change.
    Shadow { class: String, shadow: Option<Arc<Shadow>> },
}

/// The result of a change: the installed set and the expert the class had before.
pub struct Committed {
    pub set: Arc<ExpertSet>,
    pub previous: Option<Arc<Expert>>,
}

type ShadowJob = (Arc<ExpertSet>, Vec<String>, Vec<Vec<f32>>);

/// The service core shared by the HTTP layer and the control parts.
pub struct Core {
    pub paths: Paths,
    pub runtime: RuntimeConfig,
    pub limits: Limits,
    pub pool: ExecutorPool,
    set: ArcSwapOption<ExpertSet>,
    generation: AtomicU64,
    /// The registry as last written; its lock serialises every change (held for the install and
    /// the registry write, never across loading a bundle or an await).
    registry: Mutex<RegistryFile>,
    /// One change per class at a time; changes of different classes load in parallel.
    class_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Permits = texts that may be in flight at once (admission control).
    admission: Arc<Semaphore>,
    /// Bounded queue to the shadow-scoring thread (started with the first shadowed request).
    shadow_tx: OnceLock<SyncSender<ShadowJob>>,
}

impl Core {
    pub fn new(paths: Paths, runtime: RuntimeConfig, limits: Limits) -> Arc<Core> {
        Arc::new(Core {
            admission: Arc::new(Semaphore::new(limits.max_in_flight_texts.max(1))),
            paths,
            runtime,
            limits,
            pool: ExecutorPool::default(),
            set: ArcSwapOption::empty(),
            generation: AtomicU64::new(0),
            registry: Mutex::new(RegistryFile::empty()),
            class_locks: Default::default(),
            shadow_tx: OnceLock::new(),
        })
    }

    /// The model root.
    pub fn root(&self) -> &Path {
        &self.paths.models
    }

    /// Load the live registry (seeding it from the model root's on the first start), load and warm
    /// every bundle it names, and install the set (blocking; run off the async workers).
    pub fn load_registry(&self) -> Result<()> {
        let reg = RegistryFile::open_state(&self.paths.state, &self.paths.models)?;
        let path = RegistryFile::path(&self.paths.state);
        let experts = ExpertSet::load_experts(&self.pool, &self.runtime, &self.paths.models, &reg, &path)?;
        let mut next = reg.clone();
        for e in &experts {
            let h = next.history.entry(e.class.clone()).or_default();
            if h.last().and_then(|l| l.bundle.as_ref()) != Some(&e.bundle) {
                h.push(HistoryEntry::new(Some(&e.bundle), Some(&e.card.version), "loaded"));
            }
        }
        let mut current = lock(&self.registry);
        *current = reg;
        let set = self.install(&mut current, next, experts, Vec::new())?;
        tracing::info!(experts = set.experts.len(), gate = set.gate.weights.name(), "expert set ready");
        Ok(())
    }

    /// The one install path: build the set, write the registry if it changed, bump the generation,
    /// store the set. `current` is the registry lock's guard, so installs are serialised.
    fn install(
        &self,
        current: &mut RegistryFile,
        mut next: RegistryFile,
        experts: Vec<Arc<Expert>>,
        shadows: Vec<Arc<Shadow>>,
    ) -> Result<Arc<ExpertSet>> {
        // Bounded history: the newest entries of each class are kept (the last is the active one).
        let keep = self.limits.history_per_class.max(1);
        for h in next.history.values_mut() {
            if h.len() > keep {
                h.drain(..h.len() - keep);
            }
        }
        let generation = self.generation.load(Ordering::SeqCst) + 1;
        let set = Arc::new(ExpertSet::new(experts, next.gate.clone(), generation, shadows)?);
        if next != *current {
            next.write(&self.paths.state)?; // a failed write leaves memory and disk as they were
        }
        self.generation.store(generation, Ordering::SeqCst);
        self.set.store(Some(set.clone()));
        *current = next;
        Ok(set)
    }

    /// Apply one change (blocking: it may fsync the registry).
    pub fn commit_blocking(&self, change: Change) -> Result<Committed> {
        let mut reg = lock(&self.registry);
        let current = self.snapshot()?;
        let mut next = reg.clone();
        let mut experts = current.experts.clone();
        let mut shadows = current.shadows.clone();
        let class = match &change {
            Change::Install { expert, .. } => expert.class.clone(),
            Change::Remove { class } | Change::Shadow { class, .. } => class.clone(),
        };
        let previous = current.get(&class).cloned();
        match change {
            Change::Install { expert, action, drop_shadow } => {
                next.experts.insert(class.clone(), expert.bundle.clone());
                next.history.entry(class.clone()).or_default().push(HistoryEntry::new(
                    Some(&expert.bundle),
                    Some(&expert.card.version),
                    action,
                ));
                experts.retain(|e| e.class != class);
                experts.push(expert);
                if drop_shadow {
                    shadows.retain(|s| s.class != class);
                }
            }
            Change::Remove { class } => {
                if previous.is_none() {
                    return Err(Error::UnknownClass(class));
                }
                if experts.len() == 1 {
                    return Err(Error::Conflict("cannot remove the last expert".into()));
                }
                next.experts.remove(&class);
                next.history.entry(class.clone()).or_default().push(HistoryEntry::new(None, None, "delete"));
                experts.retain(|e| e.class != class);
            }
            Change::Shadow { class, shadow } => {
                if previous.is_none() {
                    return Err(Error::UnknownClass(class));
                }
                shadows.retain(|s| s.class != class);
                shadows.extend(shadow);
            }
        }
        let set = self.install(&mut reg, next, experts, shadows)?;
        Ok(Committed { set, previous })
    }

    /// Apply one change on a blocking thread.
    pub async fn commit(self: &Arc<Self>, change: Change) -> Result<Committed> {
        let core = self.clone();
        tokio::task::spawn_blocking(move || core.commit_blocking(change)).await?
    }

    /// One change per class at a time: a second one gets 409 instead of waiting.
    pub fn lock_class(&self, class: &str) -> Result<tokio::sync::OwnedMutexGuard<()>> {
        let lock = lock(&self.class_locks).entry(class.to_string()).or_default().clone();
        lock.try_lock_owned().map_err(|_| Error::Conflict(format!("another change of {class:?} is running")))
    }

    /// Load, validate and warm a bundle of the model root on a blocking thread.
    pub async fn load_expert(self: &Arc<Self>, bundle: &str) -> Result<Expert> {
        crate::experts::card::check_name(bundle).map_err(|r| Error::bundle(&self.paths.models, r))?;
        let (core, name) = (self.clone(), bundle.to_string());
        tokio::task::spawn_blocking(move || Expert::load(&core.pool, &core.runtime, &core.paths.models, &name, true))
            .await?
    }

    /// Every bundle installed for `class`, oldest first.
    pub fn history(&self, class: &str) -> Result<Vec<HistoryEntry>> {
        lock(&self.registry).history.get(class).cloned().ok_or_else(|| Error::UnknownClass(class.to_string()))
    }

    /// Every bundle folder of the model root with its card, or why its card cannot be read
    /// (file I/O: runs on a blocking thread).
    pub async fn bundles(&self) -> Result<Vec<(String, Result<Card>)>> {
        let root = self.root().to_path_buf();
        tokio::task::spawn_blocking(move || {
            Ok(bundle_names(&root)?
                .into_iter()
                .map(|b| {
                    let card = Card::read(&root.join(&b).join("card.json"));
                    (b, card)
                })
                .collect())
        })
        .await?
    }

    /// The current set; requests hold this snapshot for their whole life.
    pub fn snapshot(&self) -> Result<Arc<ExpertSet>> {
        self.set.load_full().ok_or_else(|| Error::NotReady("experts are still loading".into()))
    }

    pub fn is_ready(&self) -> bool {
        self.set.load().is_some()
    }

    /// Classify already validated texts on one snapshot, within the request deadline. Returns
    /// the results and the generation of the set that answered.
    pub async fn classify(&self, texts: Vec<String>) -> Result<(Vec<TextResult>, u64)> {
        let set = self.snapshot()?;
        let n = u32::try_from(texts.len()).unwrap_or(u32::MAX);
        let _permit =
            self.admission.clone().try_acquire_many_owned(n).map_err(|_| {
                Error::Overloaded(format!("more than {} texts in flight", self.limits.max_in_flight_texts))
            })?;
        let timeout = Duration::from_millis(self.limits.request_timeout_ms);
        let (probs, truncated) = tokio::time::timeout(timeout, set.probabilities(&texts))
            .await
            .map_err(|_| Error::Timeout(self.limits.request_timeout_ms))??;
        let results = set.decide_all(&texts, &probs, &truncated);
        record_decisions(&results);
        if !set.shadows.is_empty() {
            self.queue_shadows(set.clone(), texts, probs);
        }
        Ok((results, set.generation))
    }

    /// Hand a request to the shadow-scoring thread; when its queue is full the request is not
    /// shadowed (counted), so shadows never slow or grow the response path.
    fn queue_shadows(&self, set: Arc<ExpertSet>, texts: Vec<String>, probs: Vec<Vec<f32>>) {
        let capacity = self.limits.shadow_queue.max(1);
        let tx = self.shadow_tx.get_or_init(|| {
            let (tx, rx) = std::sync::mpsc::sync_channel::<ShadowJob>(capacity);
            let spawned = std::thread::Builder::new().name("shadows".into()).spawn(move || {
                while let Ok((set, texts, probs)) = rx.recv() {
                    set.score_shadows(&texts, &probs);
                }
            });
            if let Err(e) = spawned {
                tracing::error!(error = %e, "cannot start the shadow thread: shadows will not be scored");
            }
            tx
        });
        if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) = tx.try_send((set, texts, probs)) {
            metrics::counter!("moe_shadow_dropped_total").increment(1);
        }
    }

    /// Texts currently admitted (for tests and metrics).
    pub fn texts_in_flight(&self) -> usize {
        self.limits.max_in_flight_texts.max(1) - self.admission.available_permits()
    }
}

/// Live decision counts for `/metrics` (and the console): texts classified, each expert's passes
/// (its pass rate is passes / texts) and each label or abstention. Only the passed experts are
/// counted, so the cost is about two counter updates per text, not one per expert.
fn record_decisions(results: &[TextResult]) {
    metrics::counter!("moe_texts_classified_total").increment(results.len() as u64);
    for r in results {
        for e in r.experts.iter().filter(|e| e.passed) {
            metrics::counter!("moe_expert_passed_total", "class" => e.class.clone()).increment(1);
        }
        let label = r.label.clone().unwrap_or_else(|| "(abstained)".into());
        metrics::counter!("moe_labels_total", "label" => label).increment(1);
    }
}
