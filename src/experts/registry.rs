//! `registry.json`: the active bundle of each class, the gate, and each class's history.
//!
//! Two copies with one format: the model root's `registry.json` is the shipped default (written by
//! `moe select`, tracked in git, never written by the service); the state folder's is the live
//! one, seeded from the shipped one on the first start and rewritten atomically on every change.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub use crate::gate::GateSpec;
use crate::{Error, Result};

pub const REGISTRY_FILE: &str = "registry.json";
pub const REGISTRY_SCHEMA: u32 = 1;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RegistryFile {
    pub schema: u32,
    /// class -> bundle folder name
    pub experts: BTreeMap<String, String>,
    #[serde(default)]
    pub gate: GateSpec,
    /// Per class, every bundle installed, oldest first (the last entry is the active one).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub history: BTreeMap<String, Vec<HistoryEntry>>,
    /// In a live registry: SHA-256 of the shipped registry it was seeded from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seeded_from: Option<String>,
    /// In a shared (etcd) registry: when the writing replica committed this document, in Unix
    /// milliseconds (replicas measure their convergence time from it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub committed_ms: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryEntry {
    /// Bundle folder; None when the class was deleted.
    pub bundle: Option<String>,
    pub version: Option<String>,
    pub at: String,
    /// "loaded", "swap", "rollback", "delete", "select"
    pub action: String,
}

impl HistoryEntry {
    pub fn new(bundle: Option<&str>, version: Option<&str>, action: &str) -> HistoryEntry {
        HistoryEntry {
            bundle: bundle.map(str::to_string),
            version: version.map(str::to_string),
            at: crate::clock::now_rfc3339(),
            action: action.to_string(),
        }
    }
}

impl RegistryFile {
    /// A registry naming nothing (before the first load).
    pub fn empty() -> RegistryFile {
        RegistryFile {
            schema: REGISTRY_SCHEMA,
            experts: BTreeMap::new(),
            gate: GateSpec::default(),
            history: BTreeMap::new(),
            seeded_from: None,
            committed_ms: None,
        }
    }

    /// The live registry in `state`; on the first start (none there yet) a copy of the shipped
    /// registry of `models`, written into `state` (created if missing).
    pub fn open_state(state: &Path, models: &Path) -> Result<RegistryFile> {
        let shipped = Self::path(models);
        // A temp file is only left by a process killed mid-write; the registry itself is intact.
        let stale = state.join(format!(".{REGISTRY_FILE}.tmp"));
        if stale.is_file() {
            std::fs::remove_file(&stale).map_err(|e| Error::io(&stale, e))?;
            tracing::warn!(path = %stale.display(), "removed the temp file of an interrupted registry write");
        }
        if Self::path(state).is_file() {
            let reg = Self::read(state)?;
            let shipped_hash = std::fs::read(&shipped).ok().map(|b| hex::encode(Sha256::digest(&b)));
            if shipped_hash.is_some() && reg.seeded_from != shipped_hash {
                tracing::warn!(state = %Self::path(state).display(), shipped = %shipped.display(),
                    "the shipped registry changed since the state was seeded; serving the state \
                     (remove the state registry to start from the shipped one)");
            }
            return Ok(reg);
        }
        let reg = Self::seed(models)?;
        std::fs::create_dir_all(state).map_err(|e| Error::io(state, e))?;
        reg.write(state)?;
        tracing::info!(from = %shipped.display(), to = %Self::path(state).display(), "live registry seeded");
        Ok(reg)
    }

    /// The shipped registry of `models`, marked with its SHA-256 as the seed of a live registry
    /// (the state folder's, or a shared one in etcd).
    pub fn seed(models: &Path) -> Result<RegistryFile> {
        let shipped = Self::path(models);
        let bytes = std::fs::read(&shipped).map_err(|e| Error::io(&shipped, e))?;
        let mut reg = Self::read(models)?;
        reg.seeded_from = Some(hex::encode(Sha256::digest(&bytes)));
        Ok(reg)
    }

    pub fn path(root: &Path) -> PathBuf {
        root.join(REGISTRY_FILE)
    }

    /// A missing or corrupt registry is an error that says so, never a silent fallback.
    pub fn read(root: &Path) -> Result<RegistryFile> {
        let path = Self::path(root);
        let bad = |reason: String| Error::InvalidRegistry { path: path.clone(), reason };
        let text = std::fs::read_to_string(&path).map_err(|e| bad(format!("cannot read: {e}")))?;
        let reg: RegistryFile = serde_json::from_str(&text).map_err(|e| bad(format!("bad JSON: {e}")))?;
        reg.check().map_err(bad)?;
        Ok(reg)
    }

    /// What every registry, in a file or in etcd, must satisfy.
    pub fn check(&self) -> std::result::Result<(), String> {
        if self.schema != REGISTRY_SCHEMA {
            return Err(format!("schema {} is not supported (expected {REGISTRY_SCHEMA})", self.schema));
        }
        if self.experts.is_empty() {
            return Err("names no experts".into());
        }
        Ok(())
    }

    /// The document as stored (pretty JSON with a final newline).
    pub fn to_json(&self) -> String {
        let text = serde_json::to_string_pretty(self).expect("registry serializes");
        format!("{text}\n")
    }

    pub fn write(&self, root: &Path) -> Result<()> {
        crate::experts::card::write_atomic(&Self::path(root), self.to_json().as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_and_corrupt_registries_are_errors() {
        let dir = std::env::temp_dir().join(format!("moe-reg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let e = RegistryFile::read(&dir).unwrap_err().to_string();
        assert!(e.contains("registry.json") && e.contains("cannot read"), "{e}");
        std::fs::write(dir.join(REGISTRY_FILE), "{not json").unwrap();
        assert!(RegistryFile::read(&dir).unwrap_err().to_string().contains("bad JSON"));
        let reg =
            RegistryFile { experts: [("Travel".to_string(), "travel--x".to_string())].into(), ..RegistryFile::empty() };
        reg.write(&dir).unwrap();
        assert_eq!(RegistryFile::read(&dir).unwrap(), reg);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn state_is_seeded_once_and_the_shipped_registry_is_never_written() {
        let base = std::env::temp_dir().join(format!("moe-reg-state-{}", std::process::id()));
        let (models, state) = (base.join("models"), base.join("state"));
        std::fs::create_dir_all(&models).unwrap();
        let shipped =
            RegistryFile { experts: [("Travel".to_string(), "travel--x".to_string())].into(), ..RegistryFile::empty() };
        shipped.write(&models).unwrap();
        let before = std::fs::read(RegistryFile::path(&models)).unwrap();
        let seeded = RegistryFile::open_state(&state, &models).unwrap();
        assert_eq!(seeded.experts, shipped.experts);
        assert_eq!(seeded.seeded_from.as_deref(), Some(hex::encode(Sha256::digest(&before)).as_str()));
        // A change of the live registry stays in the state folder ...
        let mut live = seeded.clone();
        live.experts.insert("Travel".into(), "travel--y".into());
        live.write(&state).unwrap();
        assert_eq!(RegistryFile::open_state(&state, &models).unwrap().experts["Travel"], "travel--y");
        // A temp file left by a write that was killed is removed; the registry is read as it was.
        std::fs::write(state.join(".registry.json.tmp"), b"{half").unwrap();
        assert_eq!(RegistryFile::open_state(&state, &models).unwrap().experts["Travel"], "travel--y");
        assert!(!state.join(".registry.json.tmp").exists());
        // ... and the shipped file is byte-for-byte what it was.
        assert_eq!(std::fs::read(RegistryFile::path(&models)).unwrap(), before);
        std::fs::remove_dir_all(base).unwrap();
    }
}
