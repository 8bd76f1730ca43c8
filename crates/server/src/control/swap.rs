//! Swap, delete, rollback. A new bundle is loaded, validated and warmed off the hot path (one change
//! per class at a time, 409 for a second); the change itself is one `Core::commit`, which writes
//! the registry and installs the new set atomically. A refusal at any step changes nothing.
//! Requests in flight finish on the set they started with; executors no set uses any more shut
//! down when the last set holding them drops.

use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;

use moe_core::bundle::Metric;
use moe_core::expert::Expert;
use moe_core::service::{Change, Committed, Core};
use moe_core::{Error, Result};

/// A quality bound on the candidate's validation metric (a minimum, a maximum for EER).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MinMetric {
    pub metric: Metric,
    pub value: f64,
}

/// What a swap asks for, validated.
#[derive(Debug, Clone, Default)]
pub struct Swap {
    /// Bundle folder name under the model root.
    pub bundle: String,
    /// Optimistic concurrency: refuse (409) unless the class's active version is this one.
    pub expected_version: Option<String>,
    pub min_metric: Option<MinMetric>,
    /// Refuse unless the candidate's validation EER is not worse than the active expert's.
    pub not_worse: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct SwapOutcome {
    pub class: String,
    pub bundle: Option<String>,
    pub version: Option<String>,
    pub previous_bundle: Option<String>,
    pub previous_version: Option<String>,
    pub generation: u64,
    /// Shared-registry revision the change was committed at (None with the file registry).
    pub revision: Option<i64>,
    pub took_ms: f64,
}

impl SwapOutcome {
    fn new(class: &str, c: &Committed, started: Instant) -> SwapOutcome {
        let now = c.set.get(class);
        SwapOutcome {
            class: class.to_string(),
            bundle: now.map(|e| e.bundle.clone()),
            version: now.map(|e| e.card.version.clone()),
            previous_bundle: c.previous.as_ref().map(|e| e.bundle.clone()),
            previous_version: c.previous.as_ref().map(|e| e.card.version.clone()),
            generation: c.set.generation,
            revision: c.set.revision,
            took_ms: started.elapsed().as_secs_f64() * 1e3,
        }
    }
}

/// A validation-split metric from a calibrated card.
fn val_metric(e: &Expert, metric: Metric) -> Result<f64> {
    e.card
        .report("val")
        .map(|r| metric.of(r))
        .ok_or_else(|| Error::QualityGate(format!("bundle {} has no validation {metric}", e.bundle)))
}

fn quality_gate(req: &Swap, new: &Expert, current: Option<&Expert>) -> Result<()> {
    if let Some(m) = &req.min_metric {
        let v = val_metric(new, m.metric)?;
        if !m.metric.meets(v, m.value) {
            return Err(Error::QualityGate(format!(
                "{} has validation {} {v:.4}, the gate asks {} {}",
                new.bundle,
                m.metric,
                if m.metric.higher_is_better() { ">=" } else { "<=" },
                m.value
            )));
        }
    }
    if let (true, Some(cur)) = (req.not_worse, current) {
        let (new_eer, cur_eer) = (val_metric(new, Metric::Eer)?, val_metric(cur, Metric::Eer)?);
        if new_eer > cur_eer {
            return Err(Error::QualityGate(format!(
                "{} has validation EER {new_eer:.4}, worse than the active {} ({cur_eer:.4})",
                new.bundle, cur.bundle
            )));
        }
    }
    Ok(())
}

/// Load a bundle and check it is an expert for `class`.
pub async fn load_for(core: &Arc<Core>, class: &str, bundle: &str) -> Result<Expert> {
    let expert = core.load_expert(bundle).await?;
    if expert.class != class {
        return Err(Error::bundle(
            core.root().join(bundle).join("card.json"),
            format!("is an expert for {:?}, not {class:?}", expert.class),
        ));
    }
    Ok(expert)
}

/// `PUT /experts/{class}`: an unknown class gets a new slot.
pub async fn swap(core: &Arc<Core>, class: &str, req: Swap) -> Result<SwapOutcome> {
    swap_as(core, class, req, "swap").await
}

/// Install an already loaded expert and drop the class's shadow, in one change.
pub async fn promote(core: &Arc<Core>, class: &str, expert: Arc<Expert>) -> Result<SwapOutcome> {
    let started = Instant::now();
    let _guard = core.lock_class(class)?;
    let committed = core.commit(Change::Install { expert, action: "swap", drop_shadow: true, expect: None }).await?;
    Ok(SwapOutcome::new(class, &committed, started))
}

/// A swap recorded in the history under `action` ("swap", "select", "promote").
pub async fn swap_as(core: &Arc<Core>, class: &str, req: Swap, action: &'static str) -> Result<SwapOutcome> {
    let started = Instant::now();
    moe_core::bundle::card::check_class(class).map_err(Error::BadRequest)?;
    let _guard = core.lock_class(class)?;
    // expected_version is checked by the commit, against the registry it writes (the latest one).
    let active = core.snapshot()?.get(class).cloned();
    let expert = load_for(core, class, &req.bundle).await?;
    quality_gate(&req, &expert, active.as_deref())?;
    let change = Change::Install { expert: Arc::new(expert), action, drop_shadow: false, expect: req.expected_version };
    let committed = core.commit(change).await?;
    tracing::info!(class, bundle = %req.bundle, generation = committed.set.generation, action, "expert installed");
    Ok(SwapOutcome::new(class, &committed, started))
}

/// `DELETE /experts/{class}`.
pub async fn delete(core: &Arc<Core>, class: &str) -> Result<SwapOutcome> {
    let started = Instant::now();
    let _guard = core.lock_class(class)?;
    let committed = core.commit(Change::Remove { class: class.to_string() }).await?;
    Ok(SwapOutcome::new(class, &committed, started))
}

/// `POST /experts/{class}/rollback`: back to the bundle active before the current one.
pub async fn rollback(core: &Arc<Core>, class: &str) -> Result<SwapOutcome> {
    let started = Instant::now();
    let _guard = core.lock_class(class)?;
    let history = core.history(class)?;
    let current = history.last().and_then(|h| h.bundle.clone());
    let target = history
        .iter()
        .rev()
        .skip(1)
        .find_map(|h| h.bundle.clone().filter(|b| Some(b) != current.as_ref()))
        .ok_or_else(|| Error::Conflict(format!("{class:?} has no earlier bundle to roll back to")))?;
    let expert = load_for(core, class, &target).await?;
    let committed = core
        .commit(Change::Install { expert: Arc::new(expert), action: "rollback", drop_shadow: false, expect: None })
        .await?;
    Ok(SwapOutcome::new(class, &committed, started))
}
