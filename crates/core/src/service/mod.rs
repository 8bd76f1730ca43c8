//! The core: the active expert set (one atomic snapshot per request), one classify call, and the
//! one function through which every change of the set goes (`Core::commit`).
//!
//! Invariants:
//! * A request takes one snapshot (`ExpertSet`, immutable) and finishes on it.
//! * Every change (load at start, swap, delete, rollback, shadow attach / drop, and a document
//!   another replica wrote to a shared registry) ends in `install`: the registry is written first
//!   when it changed, by compare-and-swap on the document the change was applied to
//!   (`RegistryStore::write`), then the generation is bumped and the set stored. A failure before
//!   the write changes nothing, in memory or in the registry; a lost compare-and-swap applies the
//!   change again on what won (another class) or refuses it (409, the same class).
//! * Installs are ordered: the file store installs in its write order, a shared registry's
//!   documents only by rising revision, so an older document never replaces a newer one.
//! * No lock is held across a bundle load, a registry write (fsync, etcd) or an await: the
//!   `installing` lock covers one comparison and one set construction.
//! * The mutable registry (active set, history) lives in a `RegistryStore` (the state folder, or
//!   etcd for a fleet), never in the model root: the shipped `models/registry.json` only seeds it.
//!   The served registry document is read lock-free from `published` (or the set itself).
//! * Admission control happens before any work: a request whose texts would take the number of
//!   texts in flight over `--max-in-flight-texts` is refused at once (503).
//!
//! What *uses* the core (swaps, shadows, selection jobs, uploads) lives in `control/`.

mod plan;
pub mod results;
pub mod set;
pub mod shadow;
mod stacked;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use arc_swap::{ArcSwap, ArcSwapOption};
use tokio::sync::Semaphore;

pub use self::results::{Declined, Embedded, ExpertName, ExpertResult, Scored, TextResult};
pub use self::set::ExpertSet;
pub use self::shadow::Shadow;
use crate::bundle::bundle_names;
use crate::bundle::card::Card;
use crate::bundle::registry::{HistoryEntry, RegistryFile};
use crate::config::{Limits, RuntimeConfig};
use crate::error::lock;
use crate::expert::Expert;
use crate::inference::{ExecutorPool, Matrix};
use crate::store::{FileStore, RegistryStore, Stored, Written};
use crate::{Error, Result};

/// Where the service reads bundles and keeps its mutable state.
#[derive(Debug, Clone)]
pub struct Paths {
    /// Model root: bundles, trunks/, and the shipped registry.json. The service never rewrites the
    /// shipped registry or an existing bundle; uploads and training add new bundle folders.
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
#[derive(Clone)]
pub enum Change {
    /// Install this expert for its class (replacing the active one, or adding the class); with
    /// `drop_shadow` the class's shadow goes in the same change (a promotion). With `expect`, only
    /// if the class's active version in the registry is still that one (checked at the write).
    Install { expert: Arc<Expert>, action: &'static str, drop_shadow: bool, expect: Option<String> },
    /// Remove a class.
    Remove { class: String },
    /// Attach (Some) or drop (None) the shadow of a class; answers and the registry do not change.
    Shadow { class: String, shadow: Option<Arc<Shadow>> },
}

impl Change {
    /// The shadows after this change: a promotion drops its class's shadow, a shadow change
    /// attaches or drops one; the others keep them.
    fn shadows_after(&self, shadows: &[Arc<Shadow>]) -> Vec<Arc<Shadow>> {
        let mut shadows = shadows.to_vec();
        match self {
            Change::Install { expert, drop_shadow: true, .. } => shadows.retain(|s| s.class != expert.class),
            Change::Shadow { class, shadow } => {
                shadows.retain(|s| &s.class != class);
                shadows.extend(shadow.clone());
            }
            Change::Install { .. } | Change::Remove { .. } => {}
        }
        shadows
    }

    /// Optimistic concurrency: refuse (409) unless `doc` still has the version the caller expects.
    fn check_expected(&self, doc: &RegistryFile) -> Result<()> {
        let Change::Install { expert, expect: Some(want), .. } = self else { return Ok(()) };
        let have = doc.history.get(&expert.class).and_then(|h| h.last()).and_then(|h| h.version.as_deref());
        if have != Some(want.as_str()) {
            let have = have.map_or_else(|| "no version (no expert)".to_string(), |v| format!("version {v:?}"));
            return Err(Error::Conflict(format!("{:?} is at {have}, not {want:?}", expert.class)));
        }
        Ok(())
    }

    pub fn class(&self) -> &str {
        match self {
            Change::Install { expert, .. } => &expert.class,
            Change::Remove { class } | Change::Shadow { class, .. } => class,
        }
    }
}

/// A change applied to a registry document: the next document and experts.
type Applied = (RegistryFile, Vec<Arc<Expert>>);

/// How many times a change is re-applied on top of other replicas' changes before giving up.
const COMMIT_ATTEMPTS: usize = 5;

/// The result of a change: the installed set and the expert the class had before.
pub struct Committed {
    pub set: Arc<ExpertSet>,
    pub previous: Option<Arc<Expert>>,
}

type ShadowJob = (Arc<ExpertSet>, Vec<String>, Matrix);

/// The service core shared by the HTTP layer and the control parts.
pub struct Core {
    pub paths: Paths,
    pub runtime: RuntimeConfig,
    pub limits: Limits,
    pub pool: ExecutorPool,
    set: ArcSwapOption<ExpertSet>,
    generation: AtomicU64,
    /// Where the live registry is kept (a state file, or etcd for a fleet).
    store: Arc<dyn RegistryStore>,
    /// Orders installs: held for one comparison and one set construction, nothing slow.
    installing: Mutex<()>,
    /// The registry document (and revision) of the served set: written only by `install`, under
    /// the `installing` lock; read lock-free by anyone.
    published: ArcSwap<Stored>,
    /// One change per class at a time; changes of different classes load in parallel.
    class_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Permits = texts that may be in flight at once (admission control).
    admission: Arc<Semaphore>,
    /// Bounded queue to the shadow-scoring thread (started with the first shadowed request).
    shadow_tx: OnceLock<SyncSender<ShadowJob>>,
}

impl Core {
    /// A core with the file registry in the state folder.
    pub fn new(paths: Paths, runtime: RuntimeConfig, limits: Limits) -> Arc<Core> {
        let store = Arc::new(FileStore::new(&paths.state));
        Core::with_store(paths, runtime, limits, store)
    }

    pub fn with_store(
        paths: Paths,
        runtime: RuntimeConfig,
        limits: Limits,
        store: Arc<dyn RegistryStore>,
    ) -> Arc<Core> {
        Arc::new(Core {
            store,
            admission: Arc::new(Semaphore::new(limits.max_in_flight_texts.max(1))),
            paths,
            runtime,
            limits,
            pool: ExecutorPool::default(),
            set: ArcSwapOption::empty(),
            generation: AtomicU64::new(0),
            installing: Mutex::new(()),
            published: ArcSwap::from_pointee(Stored { doc: RegistryFile::empty(), revision: None }),
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
        self.load_registry_with(&|_| Ok(()))
    }

    /// `load_registry`, with `prepare` run on the live registry document before its experts are
    /// loaded and the set becomes ready (start-up repairs of the model root that depend on it).
    pub fn load_registry_with(&self, prepare: &dyn Fn(&RegistryFile) -> Result<()>) -> Result<()> {
        let stored = self.store.open(&self.paths.models)?;
        prepare(&stored.doc)?;
        let experts = self.experts_for(&stored.doc, &[])?;
        let mut next = stored.doc.clone();
        for e in &experts {
            let h = next.history.entry(e.class.clone()).or_default();
            if h.last().and_then(|l| l.bundle.as_ref()) != Some(&e.bundle) {
                h.push(HistoryEntry::new(Some(&e.bundle), Some(&e.card.version), "loaded"));
            }
        }
        if next == stored.doc {
            self.install(stored, experts, None)?;
        } else {
            let mut installed = Ok(None);
            match self.store.write(&next, &stored, &mut |s| installed = self.install(s, experts.clone(), None))? {
                Written::At(_) => drop(installed?),
                // Another replica recorded its start first: serve what it wrote.
                Written::Lost(now) => {
                    let experts = self.experts_for(&now.doc, &experts)?;
                    self.install(*now, experts, None)?;
                }
            }
        }
        let set = self.snapshot()?;
        tracing::info!(experts = set.experts.len(), gate = set.gate.weights.name(), revision = ?set.revision,
            registry = self.store.kind(), "expert set ready");
        Ok(())
    }

    /// The experts a registry names, reusing those of `have` (blocking: loads the others).
    fn experts_for(&self, doc: &RegistryFile, have: &[Arc<Expert>]) -> Result<Vec<Arc<Expert>>> {
        ExpertSet::load_experts(&self.pool, &self.runtime, &self.paths.models, doc, &self.store.location(), have)
    }

    /// The one install path: build the set (shadows: the served set's, after `change`), bump the
    /// generation, store the set and its registry document. `None` when a newer shared-registry
    /// document is served already (the newer one holds this change too: it was written on top).
    fn install(
        &self,
        next: Stored,
        experts: Vec<Arc<Expert>>,
        change: Option<&Change>,
    ) -> Result<Option<Arc<ExpertSet>>> {
        let _serialised = lock(&self.installing);
        if next.revision.is_some() && next.revision <= self.published.load().revision {
            return Ok(None);
        }
        self.install_locked(next, experts, change).map(Some)
    }

    /// `install` for a change that writes nothing (a shadow): only while `base` is still served.
    fn install_unwritten(
        &self,
        base: &Stored,
        experts: Vec<Arc<Expert>>,
        change: &Change,
    ) -> Result<Option<Arc<ExpertSet>>> {
        let _serialised = lock(&self.installing);
        if **self.published.load() != *base {
            return Ok(None);
        }
        self.install_locked(base.clone(), experts, Some(change)).map(Some)
    }

    fn install_locked(
        &self,
        next: Stored,
        experts: Vec<Arc<Expert>>,
        change: Option<&Change>,
    ) -> Result<Arc<ExpertSet>> {
        let shadows = self.set.load().as_ref().map(|s| s.shadows.clone()).unwrap_or_default();
        let shadows = change.map_or(shadows.clone(), |c| c.shadows_after(&shadows));
        let generation = self.generation.load(Ordering::SeqCst) + 1;
        let set = Arc::new(ExpertSet::new(experts, next.doc.gate.clone(), (generation, next.revision), shadows)?);
        self.generation.store(generation, Ordering::SeqCst);
        self.set.store(Some(set.clone()));
        self.published.store(Arc::new(next));
        Ok(set)
    }

    /// Apply one change (blocking: it may load bundles and writes the registry). The change is
    /// applied on top of the latest document (with a shared registry: the store's, loading what
    /// other replicas changed if this one has not followed it yet) and written by compare-and-
    /// swap: when another writer won in between, a change of *another* class is applied again on
    /// top of what it wrote; a change of *this* class is a lost race and refused (409), as two
    /// local changes of one class are.
    pub fn commit_blocking(&self, change: Change) -> Result<Committed> {
        let class = change.class().to_string();
        let mut base = Stored::clone(&self.published.load());
        let mut experts = self.snapshot()?.experts.clone();
        if let Some(latest) = self.store.latest()?.filter(|l| l.revision > base.revision) {
            experts = self.experts_for(&latest.doc, &experts)?;
            base = latest;
        }
        for _ in 0..COMMIT_ATTEMPTS {
            change.check_expected(&base.doc)?;
            let previous = experts.iter().find(|e| e.class == class).cloned();
            let (next, next_experts) = self.apply(&change, &base.doc, experts.clone())?;
            if next == base.doc {
                if let Some(set) = self.install_unwritten(&base, next_experts, &change)? {
                    return Ok(Committed { set, previous });
                }
                // Another change was installed meanwhile: apply this one on top of it.
                (base, experts) = (Stored::clone(&self.published.load()), self.snapshot()?.experts.clone());
                continue;
            }
            let mut installed = Ok(None);
            let written = self
                .store
                .write(&next, &base, &mut |s| installed = self.install(s, next_experts.clone(), Some(&change)))?;
            match written {
                Written::At(_) => {
                    let set = match installed? {
                        Some(set) => set,
                        None => self.snapshot()?,
                    };
                    return Ok(Committed { set, previous });
                }
                Written::Lost(now) => {
                    if now.doc.experts.get(&class) != base.doc.experts.get(&class)
                        || now.doc.history.get(&class) != base.doc.history.get(&class)
                    {
                        return Err(Error::Conflict(format!(
                            "{class:?} was changed by another writer at the same time (registry revision {:?}); retry",
                            now.revision
                        )));
                    }
                    // What won is often served already (this process's own other change).
                    let have: Vec<_> = experts.iter().chain(&self.snapshot()?.experts).cloned().collect();
                    experts = self.experts_for(&now.doc, &have)?;
                    base = *now;
                }
            }
        }
        Err(Error::Conflict(format!("the registry kept changing under {COMMIT_ATTEMPTS} attempts; retry")))
    }

    /// The registry and experts after `change` on top of `base` (pure but for the history stamps).
    fn apply(&self, change: &Change, base: &RegistryFile, mut experts: Vec<Arc<Expert>>) -> Result<Applied> {
        let class = change.class();
        let mut next = base.clone();
        let known = base.experts.contains_key(class);
        match change {
            Change::Install { expert, action, .. } => {
                next.experts.insert(class.to_string(), expert.bundle.clone());
                next.history.entry(class.to_string()).or_default().push(HistoryEntry::new(
                    Some(&expert.bundle),
                    Some(&expert.card.version),
                    action,
                ));
                experts.retain(|e| e.class != class);
                experts.push(expert.clone());
            }
            Change::Remove { .. } => {
                if !known {
                    return Err(Error::UnknownClass(class.to_string()));
                }
                if next.experts.len() == 1 {
                    return Err(Error::Conflict("cannot remove the last expert".into()));
                }
                next.experts.remove(class);
                next.history.entry(class.to_string()).or_default().push(HistoryEntry::new(None, None, "delete"));
                experts.retain(|e| e.class != class);
            }
            Change::Shadow { .. } => {
                if !known {
                    return Err(Error::UnknownClass(class.to_string()));
                }
            }
        }
        // Bounded history: the newest entries of each class are kept (the last is the active one).
        let keep = self.limits.history_per_class.max(1);
        for h in next.history.values_mut() {
            if h.len() > keep {
                h.drain(..h.len() - keep);
            }
        }
        Ok((next, experts))
    }

    /// Serve a registry document written by another replica (blocking: loads the bundles that
    /// changed, then installs). Older or equal revisions are ignored. Returns whether the set
    /// changed. A bundle that cannot be loaded is an error: the current set stays.
    pub fn follow(&self, incoming: Stored) -> Result<bool> {
        if incoming.revision <= self.published.load().revision {
            return Ok(false);
        }
        let have = self.snapshot().map(|s| s.experts.clone()).unwrap_or_default();
        let experts = self.experts_for(&incoming.doc, &have)?;
        let Some(set) = self.install(incoming, experts, None)? else { return Ok(false) };
        tracing::info!(revision = ?set.revision, generation = set.generation, "followed the shared registry");
        Ok(true)
    }

    /// The registry document and revision the served set came from (lock-free).
    pub fn served(&self) -> Arc<Stored> {
        self.published.load_full()
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
        crate::bundle::card::check_name(bundle).map_err(|r| Error::bundle(&self.paths.models, r))?;
        let (core, name) = (self.clone(), bundle.to_string());
        tokio::task::spawn_blocking(move || Expert::load(&core.pool, &core.runtime, &core.paths.models, &name, true))
            .await?
    }

    /// Every bundle installed for `class`, oldest first.
    pub fn history(&self, class: &str) -> Result<Vec<HistoryEntry>> {
        self.published.load().doc.history.get(class).cloned().ok_or_else(|| Error::UnknownClass(class.to_string()))
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

    /// Classify already validated texts on one snapshot, within the request deadline. Returns
    /// the results and the generation of the set that answered.
    pub async fn classify(&self, texts: Vec<String>) -> Result<(Vec<TextResult>, u64)> {
        let set = self.snapshot()?;
        if texts.len() > self.limits.max_in_flight_texts {
            // It could never be admitted: a retry cannot succeed, so not a 503.
            return Err(Error::BadRequest(format!(
                "{} texts in one request, more than --max-in-flight-texts ({}) admits at once",
                texts.len(),
                self.limits.max_in_flight_texts
            )));
        }
        let n = u32::try_from(texts.len()).unwrap_or(u32::MAX);
        let _permit =
            self.admission.clone().try_acquire_many_owned(n).map_err(|_| {
                Error::Overloaded(format!("more than {} texts in flight", self.limits.max_in_flight_texts))
            })?;
        let timeout = Duration::from_millis(self.limits.request_timeout_ms);
        let scored = tokio::time::timeout(timeout, set.probabilities(&texts))
            .await
            .map_err(|_| Error::Timeout(self.limits.request_timeout_ms))??;
        let mut results = set.decide_rows(&texts, &scored.probs, &scored.truncated, &scored.nearest);
        scored.attach_declined(&texts, &mut results);
        let probs = scored.probs;
        record_decisions(&results);
        if !set.shadows.is_empty() {
            self.queue_shadows(set.clone(), texts, probs);
        }
        Ok((results, set.generation))
    }

    /// Hand a request to the shadow-scoring thread; when its queue is full the request is not
    /// shadowed (counted), so shadows never slow or grow the response path.
    fn queue_shadows(&self, set: Arc<ExpertSet>, texts: Vec<String>, probs: Matrix) {
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

    /// The live registry's home.
    pub fn store(&self) -> &dyn RegistryStore {
        self.store.as_ref()
    }

    /// Texts currently admitted (for tests and metrics).
    pub fn texts_in_flight(&self) -> usize {
        self.limits.max_in_flight_texts.max(1) - self.admission.available_permits()
    }
}

/// Live decision counts for `/metrics` (and the console): texts classified, each expert's passes
/// (its pass rate is passes / texts), each label or abstention, and abstentions by reason. Only
/// the passed experts are counted, so the cost is about two counter updates per text, not one per
/// expert.
fn record_decisions(results: &[TextResult]) {
    metrics::counter!("moe_texts_classified_total").increment(results.len() as u64);
    for r in results {
        for e in r.experts.iter().filter(|e| e.passed) {
            metrics::counter!("moe_expert_passed_total", "class" => r.name(e).class.clone()).increment(1);
        }
        let label = r.label.clone().unwrap_or_else(|| "(abstained)".into());
        metrics::counter!("moe_labels_total", "label" => label).increment(1);
        if let Some(reason) = r.reason {
            metrics::counter!("moe_abstentions_total", "reason" => reason.name()).increment(1);
        }
    }
}
