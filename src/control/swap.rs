//! The registry's mutations: swap, delete, rollback. A new bundle is loaded, validated and warmed
//! off the hot path; then, under a short lock, a NEW expert set equal to the current one with that
//! class replaced is built, the registry file is written atomically, and the set is stored with
//! one atomic swap. A failure at any step before the store changes nothing. Requests in flight
//! finish on the set they started with; executors no set uses any more shut down when it drops.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::core::{Core, Expert, ExpertSet, now_rfc3339};
use crate::experts::card::check_name;
use crate::experts::registry::HistoryEntry;
use crate::{Error, Result};

/// Body of `PUT /experts/{class}`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SwapRequest {
    /// Bundle folder name under the model root.
    pub bundle: String,
    /// Optimistic concurrency: refuse (409) unless the class's active version is this one.
    #[serde(default)]
    pub expected_version: Option<String>,
    /// Quality gate on the candidate's validation metrics (from its calibrated card).
    #[serde(default)]
    pub min_metric: Option<MinMetric>,
    /// Quality gate: refuse unless the candidate's validation EER is not worse than the current one's.
    #[serde(default)]
    pub not_worse: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MinMetric {
    /// "auc", "f1" (at the EER threshold), "accuracy" (at the EER threshold) or "eer" (a maximum).
    pub metric: String,
    pub value: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct SwapOutcome {
    pub class: String,
    pub bundle: Option<String>,
    pub version: Option<String>,
    pub previous_bundle: Option<String>,
    pub previous_version: Option<String>,
    pub generation: u64,
    pub took_ms: f64,
}

/// A validation-split metric from a calibrated card: (value, higher_is_better).
fn val_metric(e: &Expert, metric: &str) -> Result<(f64, bool)> {
    let r = e.card.metrics.get("val").and_then(|v| v.get("report"));
    let get = |path: &[&str]| path.iter().try_fold(r?, |v, k| v.get(k)).and_then(|v| v.as_f64());
    let (v, up) = match metric {
        "eer" => (get(&["eer"]), false),
        "auc" => (get(&["auc"]), true),
        "f1" => (get(&["at_eer", "f1"]), true),
        "accuracy" => (get(&["at_eer", "accuracy"]), true),
        other => return Err(Error::BadRequest(format!("unknown metric {other:?} (eer, auc, f1, accuracy)"))),
    };
    let v = v.ok_or_else(|| Error::QualityGate(format!("bundle {} has no validation {metric}", e.bundle)))?;
    Ok((v, up))
}

fn quality_gate(req: &SwapRequest, new: &Expert, current: Option<&Expert>) -> Result<()> {
    if let Some(m) = &req.min_metric {
        let (v, up) = val_metric(new, &m.metric)?;
        if (up && v < m.value) || (!up && v > m.value) {
            return Err(Error::QualityGate(format!(
                "{} has validation {} {v:.4}, the gate asks {} {}",
                new.bundle,
                m.metric,
                if up { ">=" } else { "<=" },
                m.value
            )));
        }
    }
    if let (true, Some(cur)) = (req.not_worse, current) {
        let (new_eer, _) = val_metric(new, "eer")?;
        let (cur_eer, _) = val_metric(cur, "eer")?;
        if new_eer > cur_eer {
            return Err(Error::QualityGate(format!(
                "{} has validation EER {new_eer:.4}, worse than the active {} ({cur_eer:.4})",
                new.bundle, cur.bundle
            )));
        }
    }
    Ok(())
}

impl Core {
    /// One change per class at a time: a second one gets 409 instead of waiting.
    pub(crate) fn lock_class(&self, class: &str) -> Result<tokio::sync::OwnedMutexGuard<()>> {
        let lock = self.class_locks.lock().expect("class locks").entry(class.to_string()).or_default().clone();
        lock.try_lock_owned().map_err(|_| Error::Conflict(format!("another change of {class:?} is running")))
    }

    /// Load, validate and warm a bundle on a blocking thread.
    pub(crate) async fn load_expert(self: &Arc<Self>, bundle: &str) -> Result<Expert> {
        check_name(bundle).map_err(|r| Error::bundle(&self.root, r))?;
        let (core, name) = (self.clone(), bundle.to_string());
        tokio::task::spawn_blocking(move || Expert::load(&core.pool, &core.runtime, &core.root, &name, true))
            .await
            .map_err(|e| Error::Runtime(format!("loader panicked: {e}")))?
    }

    /// Replace (or add) `class` with `expert` (None: remove it); persist, then store atomically.
    fn install(
        &self,
        class: &str,
        expert: Option<Expert>,
        action: &str,
    ) -> Result<(Arc<ExpertSet>, Option<Arc<Expert>>)> {
        let mut reg = self.install.lock().expect("install lock");
        let current = self.snapshot()?;
        let previous = current.get(class).cloned();
        let mut experts: Vec<Arc<Expert>> = current.experts.iter().filter(|e| e.class != class).cloned().collect();
        let mut next = reg.clone();
        let entry = HistoryEntry {
            bundle: expert.as_ref().map(|e| e.bundle.clone()),
            version: expert.as_ref().map(|e| e.card.version.clone()),
            at: now_rfc3339(),
            action: action.to_string(),
        };
        match expert {
            Some(e) => {
                next.experts.insert(class.to_string(), e.bundle.clone());
                experts.push(Arc::new(e));
            }
            None => {
                next.experts.remove(class);
            }
        }
        if experts.is_empty() {
            return Err(Error::Conflict("cannot remove the last expert".into()));
        }
        next.history.entry(class.to_string()).or_default().push(entry);
        next.write(&self.root)?; // a failed write leaves memory and disk as they were
        let generation = self.generation.fetch_add(1, Ordering::SeqCst) + 1;
        let mut set = ExpertSet::new(experts, next.gate.clone(), generation);
        // Shadows stay attached across swaps, except on a deleted class.
        set.shadows =
            current.shadows.iter().filter(|s| s.class != class || set.get(class).is_some()).cloned().collect();
        let set = Arc::new(set);
        self.set.store(Some(set.clone()));
        *reg = next;
        Ok((set, previous))
    }

    fn outcome(class: &str, set: &ExpertSet, previous: Option<Arc<Expert>>, started: Instant) -> SwapOutcome {
        let now = set.get(class);
        SwapOutcome {
            class: class.to_string(),
            bundle: now.map(|e| e.bundle.clone()),
            version: now.map(|e| e.card.version.clone()),
            previous_bundle: previous.as_ref().map(|e| e.bundle.clone()),
            previous_version: previous.as_ref().map(|e| e.card.version.clone()),
            generation: set.generation,
            took_ms: started.elapsed().as_secs_f64() * 1e3,
        }
    }

    /// `PUT /experts/{class}`: an unknown class gets a new slot.
    pub async fn swap(self: &Arc<Self>, class: &str, req: SwapRequest) -> Result<SwapOutcome> {
        let started = Instant::now();
        let _guard = self.lock_class(class)?;
        let current = self.snapshot()?;
        let active = current.get(class).cloned();
        if let Some(want) = &req.expected_version {
            let have = active.as_ref().map(|e| e.card.version.as_str());
            if have != Some(want.as_str()) {
                return Err(Error::Conflict(format!("{class:?} is at version {have:?}, not {want:?}")));
            }
        }
        let expert = self.load_expert(&req.bundle).await?;
        if expert.class != class {
            return Err(Error::bundle(
                self.root.join(&req.bundle).join("card.json"),
                format!("is an expert for {:?}, not {class:?}", expert.class),
            ));
        }
        quality_gate(&req, &expert, active.as_deref())?;
        let (set, previous) = self.install(class, Some(expert), "swap")?;
        tracing::info!(class, bundle = %req.bundle, generation = set.generation, "expert swapped");
        Ok(Self::outcome(class, &set, previous, started))
    }

    /// `DELETE /experts/{class}`.
    pub async fn delete(self: &Arc<Self>, class: &str) -> Result<SwapOutcome> {
        let started = Instant::now();
        let _guard = self.lock_class(class)?;
        if self.snapshot()?.get(class).is_none() {
            return Err(Error::UnknownClass(class.to_string()));
        }
        let (set, previous) = self.install(class, None, "delete")?;
        Ok(Self::outcome(class, &set, previous, started))
    }

    /// `POST /experts/{class}/rollback`: back to the bundle active before the current one.
    pub async fn rollback(self: &Arc<Self>, class: &str) -> Result<SwapOutcome> {
        let started = Instant::now();
        let _guard = self.lock_class(class)?;
        let history = self.history(class)?;
        let current = history.last().and_then(|h| h.bundle.clone());
        let target = history
            .iter()
            .rev()
            .skip(1)
            .find_map(|h| h.bundle.clone().filter(|b| Some(b) != current.as_ref()))
            .ok_or_else(|| Error::Conflict(format!("{class:?} has no earlier bundle to roll back to")))?;
        let expert = self.load_expert(&target).await?;
        let (set, previous) = self.install(class, Some(expert), "rollback")?;
        Ok(Self::outcome(class, &set, previous, started))
    }

    pub fn history(&self, class: &str) -> Result<Vec<HistoryEntry>> {
        self.install
            .lock()
            .expect("install lock")
            .history
            .get(class)
            .cloned()
            .ok_or_else(|| Error::UnknownClass(class.to_string()))
    }
}
