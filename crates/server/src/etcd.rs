//! The live registry in one etcd key shared by a fleet of replicas (`--registry
//! etcd://host:port/prefix`): `moe_core::store::RegistryStore` on etcd, and the calls the fleet
//! makes beside it (replica list, watch).
//!
//! Invariants:
//! * The registry document is one value (`RegistryFile` as JSON) under `<prefix>/registry`; its
//!   `mod_revision` is the *registry revision* every replica reports.
//! * A write is a compare-and-swap on the revision the writer based its change on: it either
//!   lands whole or answers `Lost` with the document that won, never a half-written registry.
//! * An empty store is seeded once, from the model root's shipped `registry.json`, by a
//!   transaction that only succeeds while the key does not exist: two replicas starting together
//!   cannot both seed.
//! * Calls to etcd have a deadline (`ETCD_TIMEOUT`): an unreachable store is an error that says so
//!   (`Error::Registry`, 503 at the HTTP edge), never a hang.
//!
//! The store's blocking calls run on the caller's thread with `Handle::block_on`: the core makes
//! them from blocking threads only (the loader, `Core::commit_blocking`).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Client, Compare, CompareOp, ConnectOptions, GetOptions, Txn, TxnOp, WatchOptions, WatchStream};

use moe_core::bundle::RegistryFile;
use moe_core::store::{RegistryStore, Stored, Written};
use moe_core::{Error, Result};

/// Deadline of one etcd call (connect, get, transaction).
pub const ETCD_TIMEOUT: Duration = Duration::from_secs(2);

/// Where an `etcd://` registry lives.
#[derive(Debug, Clone, PartialEq)]
pub struct EtcdTarget {
    /// `http://host:port` for each endpoint.
    pub endpoints: Vec<String>,
    /// Key prefix without a trailing slash, e.g. `/moe`.
    pub prefix: String,
}

impl EtcdTarget {
    /// `etcd://host:port[,host:port...][/prefix]` (default prefix `/moe`).
    pub fn parse(url: &str) -> Result<EtcdTarget> {
        let bad =
            |why: &str| Error::BadRequest(format!("--registry {url:?}: {why} (expected etcd://host:port/prefix)"));
        let rest = url.strip_prefix("etcd://").ok_or_else(|| bad("not an etcd:// address"))?;
        let (hosts, prefix) = rest.split_once('/').unwrap_or((rest, "moe"));
        let prefix = prefix.trim_end_matches('/');
        if prefix.is_empty() || prefix.contains(char::is_whitespace) {
            return Err(bad("empty or blank key prefix"));
        }
        let endpoints: Vec<String> = hosts
            .split(',')
            .map(|h| {
                let ok = h.rsplit_once(':').is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
                if ok { Ok(format!("http://{h}")) } else { Err(bad("every endpoint needs host:port")) }
            })
            .collect::<Result<_>>()?;
        Ok(EtcdTarget { endpoints, prefix: format!("/{prefix}") })
    }
}

/// The registry in etcd, plus the replica list beside it.
#[derive(Clone)]
pub struct EtcdStore {
    client: Client,
    pub target: EtcdTarget,
    handle: tokio::runtime::Handle,
}

/// One etcd call with the deadline `ETCD_TIMEOUT`. Our own deadline, not only the client's: with
/// no reachable endpoint the client's balanced channel waits for one to become ready, unbounded
/// (seen here: a change hung while etcd restarted).
pub async fn etcd_call<T>(
    context: impl Into<String>,
    call: impl std::future::Future<Output = std::result::Result<T, etcd_client::Error>>,
) -> Result<T> {
    let context = context.into();
    match tokio::time::timeout(ETCD_TIMEOUT, call).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(source)) => Err(Error::Registry { context, source: Some(Arc::new(source)) }),
        Err(_) => Err(Error::Registry {
            context: format!("{context}: no answer within {} ms", ETCD_TIMEOUT.as_millis()),
            source: None,
        }),
    }
}

impl EtcdStore {
    /// A client for `target` (connections are made lazily; calls fail after `ETCD_TIMEOUT`).
    pub async fn connect(target: EtcdTarget) -> Result<EtcdStore> {
        let options = ConnectOptions::new()
            .with_connect_timeout(ETCD_TIMEOUT)
            .with_timeout(ETCD_TIMEOUT)
            .with_keep_alive(Duration::from_secs(2), ETCD_TIMEOUT)
            .with_keep_alive_while_idle(true);
        let client = etcd_call(
            format!("connecting to {}", target.endpoints.join(",")),
            Client::connect(&target.endpoints, Some(options)),
        )
        .await?;
        Ok(EtcdStore { client, target, handle: tokio::runtime::Handle::current() })
    }

    fn block_on<T>(&self, f: impl std::future::Future<Output = T>) -> T {
        self.handle.block_on(f)
    }

    /// The key of the registry document.
    pub fn registry_key(&self) -> String {
        format!("{}/registry", self.target.prefix)
    }

    /// The prefix under which each replica keeps its lease-bound status.
    pub fn replicas_prefix(&self) -> String {
        format!("{}/replicas/", self.target.prefix)
    }

    pub fn client(&self) -> Client {
        self.client.clone()
    }

    /// Parse a stored document (a corrupt value is an error naming the key, never a fallback).
    pub fn parse(&self, value: &[u8], revision: i64) -> Result<Stored> {
        let doc: RegistryFile = serde_json::from_slice(value)
            .map_err(|e| Error::InvalidRegistry { path: self.location(), reason: format!("bad JSON: {e}") })?;
        doc.check().map_err(|reason| Error::InvalidRegistry { path: self.location(), reason })?;
        Ok(Stored { doc, revision: Some(revision) })
    }

    /// The current document, if the key exists.
    pub async fn get(&self) -> Result<Option<Stored>> {
        let key = self.registry_key();
        let resp = etcd_call(format!("reading {key}"), self.client.clone().get(key.as_str(), None)).await?;
        resp.kvs().first().map(|kv| self.parse(kv.value(), kv.mod_revision())).transpose()
    }

    /// The current document; an empty store is seeded from the shipped registry (once, by
    /// whichever replica's transaction lands first).
    pub async fn seed_or_get(&self, models: &Path) -> Result<Stored> {
        if let Some(s) = self.get().await? {
            return Ok(s);
        }
        let seed = RegistryFile::seed(models)?;
        let key = self.registry_key();
        let txn = Txn::new()
            .when([Compare::create_revision(key.as_str(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key.as_str(), seed.to_json(), None)]);
        let seeded = etcd_call(format!("seeding {key}"), self.client.clone().txn(txn)).await?.succeeded();
        if seeded {
            tracing::info!(key, from = %RegistryFile::path(models).display(), "registry seeded in etcd");
        }
        self.get()
            .await?
            .ok_or_else(|| Error::InvalidRegistry { path: self.location(), reason: "vanished after seeding".into() })
    }

    /// Compare-and-swap: put `next` if the key's revision is still `base`, else read what won. The
    /// stored document carries its commit time (`committed_ms`: followers measure their
    /// convergence from it).
    pub async fn compare_and_put(&self, next: &RegistryFile, base: Option<i64>) -> Result<Written> {
        let key = self.registry_key();
        let base = base.ok_or_else(|| Error::Internal("an etcd write needs the revision it is based on".into()))?;
        let stamped = RegistryFile { committed_ms: Some(moe_core::clock::unix_ms()), ..next.clone() };
        let txn = Txn::new()
            .when([Compare::mod_revision(key.as_str(), CompareOp::Equal, base)])
            .and_then([TxnOp::put(key.as_str(), stamped.to_json(), None)])
            .or_else([TxnOp::get(key.as_str(), None::<GetOptions>)]);
        let resp = etcd_call(format!("writing {key}"), self.client.clone().txn(txn)).await?;
        if resp.succeeded() {
            let revision = resp.header().map(|h| h.revision()).unwrap_or_default();
            return Ok(Written::At(Some(revision)));
        }
        match self.get().await? {
            Some(now) => Ok(Written::Lost(Box::new(now))),
            None => Err(Error::InvalidRegistry { path: self.location(), reason: "the key was deleted".into() }),
        }
    }

    /// Watch the registry key from `revision` on.
    pub async fn watch(&self, revision: i64) -> Result<WatchStream> {
        let key = self.registry_key();
        let options = WatchOptions::new().with_start_revision(revision);
        etcd_call(format!("watching {key}"), self.client.clone().watch(key.as_str(), Some(options))).await
    }
}

impl RegistryStore for EtcdStore {
    fn kind(&self) -> &'static str {
        "etcd"
    }

    fn location(&self) -> PathBuf {
        PathBuf::from(format!("etcd://{}{}", self.target.endpoints.join(","), self.registry_key()))
    }

    fn open(&self, models: &Path) -> Result<Stored> {
        self.block_on(self.seed_or_get(models))
    }

    fn latest(&self) -> Result<Option<Stored>> {
        self.block_on(self.get())
    }

    /// Other writers (replicas, and this one's other threads) may land after this write and before
    /// `landed` runs: the core orders its installs by revision.
    fn write(&self, next: &RegistryFile, base: &Stored, landed: &mut dyn FnMut(Stored)) -> Result<Written> {
        let written = self.block_on(self.compare_and_put(next, base.revision))?;
        if let Written::At(revision) = written {
            landed(Stored { doc: next.clone(), revision });
        }
        Ok(written)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etcd_addresses_parse_or_say_what_is_wrong() {
        let t = EtcdTarget::parse("etcd://127.0.0.1:2379/fleet-a").unwrap();
        assert_eq!(t.endpoints, ["http://127.0.0.1:2379"]);
        assert_eq!(t.prefix, "/fleet-a");
        let t = EtcdTarget::parse("etcd://a:1,b:2").unwrap();
        assert_eq!((t.endpoints.len(), t.prefix.as_str()), (2, "/moe"));
        for bad in ["http://a:1/x", "etcd://a/x", "etcd://:1/x", "etcd://a:1/", "etcd://a:99999/x"] {
            let e = EtcdTarget::parse(bad).unwrap_err().to_string();
            assert!(e.contains("--registry") && e.contains("etcd://host:port/prefix"), "{bad}: {e}");
        }
    }
}
