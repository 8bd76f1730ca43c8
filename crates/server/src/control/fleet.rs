//! A fleet of replicas sharing one registry (etcd): each replica follows the registry key and
//! announces itself under a lease.
//!
//! Invariants:
//! * A replica serves exactly one registry revision at a time (`ExpertSet::revision`); it moves
//!   to a newer one only after every bundle that revision names is loaded, validated and warmed,
//!   in one atomic install (`Core::follow`). Requests never see a half-followed set.
//! * The follower watches from the revision it serves + 1, so after a disconnect it resumes where
//!   it was (and re-reads the key, in case the history it missed was compacted).
//! * A revision that cannot be loaded leaves the replica on its current set; it says so (status
//!   `last_error`, `moe_fleet_failed_loads_total`) and tries the newest revision again every
//!   `RETRY` until it loads.
//! * Each replica keeps `<prefix>/replicas/<id>` (its address, served revision, errors) bound to
//!   a lease of `LEASE_TTL_S`: a replica that dies drops out of `GET /fleet` by itself.
//! * Nothing here is on the request path: classification never waits for etcd.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use etcd_client::{EventType, GetOptions, PutOptions};
use serde::{Deserialize, Serialize};

use crate::etcd::{EtcdStore, etcd_call};
use moe_core::error::lock;
use moe_core::service::Core;
use moe_core::store::Stored;
use moe_core::{Error, Result};

/// Lifetime of a replica's announcement without keep-alive.
pub const LEASE_TTL_S: i64 = 5;
/// How often a replica refreshes its announcement (and keeps its lease alive).
const ANNOUNCE_EVERY: Duration = Duration::from_millis(250);
const KEEP_ALIVE_EVERY: Duration = Duration::from_secs(1);
/// How often a replica that failed to follow a revision tries again.
const RETRY: Duration = Duration::from_secs(1);

/// Who this replica is, as the other replicas and operators see it.
#[derive(Debug, Clone)]
pub struct Replica {
    pub id: String,
    /// Base URL where this replica answers (e.g. `http://10.0.0.7:8080`).
    pub address: String,
}

/// What a replica announces about itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReplicaStatus {
    pub id: String,
    pub address: String,
    /// Registry revision of the set it serves (null with the file registry or while loading).
    pub revision: Option<i64>,
    pub generation: u64,
    pub ready: bool,
    pub experts: usize,
    /// Revisions it could not load since it started.
    pub failed_loads: u64,
    /// Why the newest revision is not served, if it is not.
    pub last_error: Option<String>,
}

/// The fleet as any replica sees it.
#[derive(Debug, Clone, Serialize)]
pub struct FleetStatus {
    /// "file" (one process) or "etcd".
    pub registry: &'static str,
    /// Latest revision in the shared registry (null with the file registry).
    pub revision: Option<i64>,
    /// True when every announced replica serves `revision` without an error.
    pub converged: bool,
    pub replicas: Vec<ReplicaStatus>,
}

#[derive(Default)]
struct Following {
    failed_loads: u64,
    last_error: Option<String>,
}

/// This replica's part in the fleet.
pub struct Fleet {
    core: Arc<Core>,
    /// The shared registry, when the core's store is etcd (`None`: one process, file store).
    etcd: Option<EtcdStore>,
    pub replica: Replica,
    following: Mutex<Following>,
    /// The lease of this replica's announcement, while it holds one.
    lease: Mutex<Option<i64>>,
}

impl Fleet {
    pub fn new(core: Arc<Core>, etcd: Option<EtcdStore>, replica: Replica) -> Arc<Fleet> {
        Arc::new(Fleet { core, etcd, replica, following: Mutex::default(), lease: Mutex::default() })
    }

    /// This replica's own status.
    pub fn me(&self) -> ReplicaStatus {
        let set = self.core.snapshot().ok();
        let f = lock(&self.following);
        ReplicaStatus {
            id: self.replica.id.clone(),
            address: self.replica.address.clone(),
            revision: set.as_ref().and_then(|s| s.revision),
            generation: set.as_ref().map_or(0, |s| s.generation),
            ready: set.is_some(),
            experts: set.as_ref().map_or(0, |s| s.experts.len()),
            failed_loads: f.failed_loads,
            last_error: f.last_error.clone(),
        }
    }

    /// `GET /fleet`: the replicas announced in the shared registry (or this one alone).
    pub async fn status(&self) -> Result<FleetStatus> {
        let Some(etcd) = self.etcd.as_ref() else {
            return Ok(FleetStatus { registry: "file", revision: None, converged: true, replicas: vec![self.me()] });
        };
        let revision = etcd.get().await?.and_then(|s| s.revision);
        let prefix = etcd.replicas_prefix();
        let mut client = etcd.client();
        let resp =
            etcd_call(format!("listing {prefix}"), client.get(prefix.as_str(), Some(GetOptions::new().with_prefix())))
                .await?;
        let mut replicas: Vec<ReplicaStatus> =
            resp.kvs().iter().filter_map(|kv| serde_json::from_slice(kv.value()).ok()).collect();
        replicas.sort_by(|a, b| a.id.cmp(&b.id));
        let converged = !replicas.is_empty()
            && replicas.iter().all(|r| r.ready && r.revision == revision && r.last_error.is_none());
        Ok(FleetStatus { registry: "etcd", revision, converged, replicas })
    }

    /// Start following the shared registry and announcing this replica (no-op with the file
    /// registry). Call after the first set is installed.
    pub fn start(self: &Arc<Self>) {
        let Some(etcd) = self.etcd.clone() else { return };
        let (me, store) = (self.clone(), etcd.clone());
        tokio::spawn(async move { me.follow_forever(store).await });
        let me = self.clone();
        tokio::spawn(async move { me.announce_forever(etcd).await });
    }

    /// Apply one registry document; failures are recorded, never fatal.
    async fn apply(&self, stored: Stored) {
        let committed_ms = stored.doc.committed_ms;
        let revision = stored.revision;
        let core = self.core.clone();
        let outcome = tokio::task::spawn_blocking(move || core.follow(stored)).await.map_err(Error::from);
        let mut f = lock(&self.following);
        match outcome.and_then(|r| r) {
            Ok(changed) => {
                f.last_error = None;
                if changed {
                    if let Some(at) = committed_ms {
                        let took = moe_core::clock::unix_ms().saturating_sub(at) as f64 / 1e3;
                        metrics::histogram!("moe_fleet_convergence_seconds").record(took);
                    }
                    metrics::gauge!("moe_registry_revision").set(revision.unwrap_or_default() as f64);
                }
            }
            Err(e) => {
                f.failed_loads += 1;
                metrics::counter!("moe_fleet_failed_loads_total").increment(1);
                let msg = format!("cannot serve registry revision {revision:?}: {}", moe_core::error::chain(&e));
                tracing::error!(error = %msg, "keeping the current set");
                f.last_error = Some(msg);
            }
        }
    }

    fn behind(&self) -> bool {
        lock(&self.following).last_error.is_some()
    }

    /// Watch the registry key forever, reconnecting with backoff.
    async fn follow_forever(self: Arc<Self>, etcd: EtcdStore) {
        const FIRST: Duration = Duration::from_millis(100);
        let mut backoff = FIRST;
        loop {
            let started = std::time::Instant::now();
            if let Err(e) = self.follow_once(&etcd).await {
                let error = moe_core::error::chain(&e);
                tracing::warn!(%error, retry_ms = backoff.as_millis() as u64, "registry watch interrupted");
            }
            // A watch that held for a while was a success: the next outage starts the backoff over.
            backoff = if started.elapsed() > Duration::from_secs(10) { FIRST } else { (backoff * 2).min(RETRY * 2) };
            tokio::time::sleep(backoff).await;
        }
    }

    async fn follow_once(&self, etcd: &EtcdStore) -> Result<()> {
        let from = self.core.served().revision.unwrap_or(0) + 1;
        let mut stream = etcd.watch(from).await?;
        // Catch up first: revisions written while no watch was open may have been compacted.
        if let Some(now) = etcd.get().await? {
            self.apply(now).await;
        }
        loop {
            let message = if self.behind() {
                match tokio::time::timeout(RETRY, stream.message()).await {
                    Ok(m) => m,
                    Err(_) => {
                        if let Some(now) = etcd.get().await? {
                            self.apply(now).await;
                        }
                        continue;
                    }
                }
            } else {
                stream.message().await
            };
            let resp = message.map_err(|source| Error::Registry {
                context: format!("watching {}", etcd.registry_key()),
                source: Some(Arc::new(source)),
            })?;
            let Some(resp) = resp else { return Ok(()) };
            if resp.canceled() {
                return Err(Error::Internal(format!(
                    "watch canceled by etcd ({}; compacted at {})",
                    resp.cancel_reason(),
                    resp.compact_revision()
                )));
            }
            // Only the newest document of a batch matters: each one is the whole registry.
            let newest = resp.events().iter().rev().find(|e| e.event_type() == EventType::Put).and_then(|e| e.kv());
            if let Some(kv) = newest {
                match etcd.parse(kv.value(), kv.mod_revision()) {
                    Ok(stored) => self.apply(stored).await,
                    Err(e) => {
                        let mut f = lock(&self.following);
                        f.failed_loads += 1;
                        f.last_error = Some(e.to_string());
                    }
                }
            }
        }
    }

    /// At shutdown: revoke the announcement's lease, so the replica leaves `GET /fleet` at once
    /// instead of when the lease runs out.
    pub async fn leave(&self) {
        let (Some(etcd), Some(lease)) = (self.etcd.as_ref(), lock(&self.lease).take()) else { return };
        if let Err(e) = etcd_call("revoking the lease", etcd.client().lease_revoke(lease)).await {
            tracing::warn!(error = %moe_core::error::chain(&e), "could not leave the fleet; the lease will expire");
        }
    }

    /// Keep `<prefix>/replicas/<id>` up to date under a lease, re-registering after an outage.
    async fn announce_forever(self: Arc<Self>, etcd: EtcdStore) {
        loop {
            if let Err(e) = self.announce_once(&etcd).await {
                let error = moe_core::error::chain(&e);
                tracing::warn!(%error, "replica announcement interrupted; registering again");
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    async fn announce_once(&self, etcd: &EtcdStore) -> Result<()> {
        let mut client = etcd.client();
        let key = format!("{}{}", etcd.replicas_prefix(), self.replica.id);
        let lease = etcd_call("granting a lease", client.lease_grant(LEASE_TTL_S, None)).await?.id();
        *lock(&self.lease) = Some(lease);
        let (mut keeper, mut acks) = etcd_call("keeping the lease", client.lease_keep_alive(lease)).await?;
        let mut last: Option<ReplicaStatus> = None;
        let mut since_keep_alive = Duration::ZERO;
        loop {
            let me = self.me();
            if last.as_ref() != Some(&me) {
                let value = serde_json::to_vec(&me).map_err(|e| Error::Internal(e.to_string()))?;
                let put = client.put(key.as_str(), value, Some(PutOptions::new().with_lease(lease)));
                etcd_call("announcing the replica", put).await?;
                last = Some(me);
            }
            if since_keep_alive >= KEEP_ALIVE_EVERY {
                since_keep_alive = Duration::ZERO;
                etcd_call("keeping the lease", keeper.keep_alive()).await?;
                match tokio::time::timeout(crate::etcd::ETCD_TIMEOUT, acks.message()).await {
                    Ok(Ok(Some(ack))) if ack.ttl() > 0 => {}
                    _ => return Err(Error::Internal(format!("lease {lease} expired or unanswered"))),
                }
            }
            tokio::time::sleep(ANNOUNCE_EVERY).await;
            since_keep_alive += ANNOUNCE_EVERY;
        }
    }
}
