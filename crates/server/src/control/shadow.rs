//! Shadow mode: a candidate bundle scores live traffic beside the active expert of its class, off
//! the response path (a bounded queue to one scoring thread, see `Core::classify`), without
//! changing any answer. Its agreement with the active expert (same pass/fail decision) and its
//! score distribution are reported; it can be promoted (a normal swap) or dropped. Shadows live in
//! memory only: a restart drops them.

use std::sync::Arc;

use super::swap::{self, SwapOutcome, load_for};
use moe_core::service::{Change, Core, Shadow};
use moe_core::{Error, Result};

/// `PUT /experts/{class}/shadow`: load, validate and warm the candidate, then attach it.
pub async fn attach(core: &Arc<Core>, class: &str, bundle: &str) -> Result<Arc<Shadow>> {
    let _guard = core.lock_class(class)?;
    if core.snapshot()?.get(class).is_none() {
        return Err(Error::UnknownClass(class.to_string()));
    }
    let shadow = Arc::new(Shadow::new(load_for(core, class, bundle).await?)?);
    core.commit(Change::Shadow { class: class.to_string(), shadow: Some(shadow.clone()) }).await?;
    Ok(shadow)
}

fn current(core: &Core, class: &str) -> Result<Arc<Shadow>> {
    core.snapshot()?.shadow(class).cloned().ok_or_else(|| Error::NotFound(format!("no shadow for {class:?}")))
}

/// `DELETE /experts/{class}/shadow`: returns the dropped shadow with its final statistics.
pub async fn drop(core: &Arc<Core>, class: &str) -> Result<Arc<Shadow>> {
    let _guard = core.lock_class(class)?;
    let old = current(core, class)?;
    core.commit(Change::Shadow { class: class.to_string(), shadow: None }).await?;
    Ok(old)
}

/// `POST /experts/{class}/shadow/promote`: the shadow's (already warmed) expert becomes the
/// active one and the shadow goes, in one change.
pub async fn promote(core: &Arc<Core>, class: &str) -> Result<SwapOutcome> {
    let sh = current(core, class)?;
    swap::promote(core, class, sh.expert.clone()).await
}
