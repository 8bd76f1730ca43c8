//! `registry.json`: the active bundle of each class, the gate, and each class's history.
//!
//! Two copies with one format: the model root's `registry.json` is the shipped default (written by
//! `moe select`, tracked in git, never written by the service); the state folder's is the live
//! one, seeded from the shipped one on the first start and rewritten atomically on every change.
//!
//! Invariant: a live registry in a state folder serves only the model root it was seeded from
//! (`seeded_root`, the root's canonical path): started on another root it is refused with what to
//! do, never served against bundles it did not name (a copy of the root whose shipped registry is
//! byte-identical to the seed counts as the same root).

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
    /// In a state folder's live registry: the canonical path of the model root it was seeded from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seeded_root: Option<String>,
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
    /// One of `ACTIONS`.
    pub action: String,
}

/// Every history action the service records (openapi.yaml's enum; a test keeps them equal).
pub const ACTIONS: &[&str] = &["loaded", "swap", "rollback", "delete", "select", "train"];

impl HistoryEntry {
    pub fn new(bundle: Option<&str>, version: Option<&str>, action: &str) -> HistoryEntry {
        debug_assert!(ACTIONS.contains(&action), "history action {action:?} is not in ACTIONS");
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
            seeded_root: None,
            committed_ms: None,
        }
    }

    /// The live registry in `state`; on the first start (none there yet) a copy of the shipped
    /// registry of `models`, written into `state` (created if missing).
    pub fn open_state(state: &Path, models: &Path) -> Result<RegistryFile> {
        let shipped = Self::path(models);
        // Temp files are only left by a process killed mid-write; the registry itself is intact.
        let temp = format!(".{REGISTRY_FILE}.tmp");
        for e in std::fs::read_dir(state).into_iter().flatten().flatten() {
            if e.file_name().to_str().is_some_and(|n| n.starts_with(&temp)) {
                std::fs::remove_file(e.path()).map_err(|err| Error::io(e.path(), err))?;
                tracing::warn!(path = %e.path().display(), "removed the temp file of an interrupted registry write");
            }
        }
        let root = models.canonicalize().map_err(|e| Error::io(models, e))?.display().to_string();
        if Self::path(state).is_file() {
            let reg = Self::read(state)?;
            let shipped_hash = std::fs::read(&shipped).ok().map(|b| hex::encode(Sha256::digest(&b)));
            if shipped_hash.is_some() && reg.seeded_from != shipped_hash {
                reg.check_root(state, models, &root)?;
                tracing::warn!(state = %Self::path(state).display(), shipped = %shipped.display(),
                    "the shipped registry changed since the state was seeded; serving the state \
                     (remove the state registry to start from the shipped one)");
            }
            return Ok(reg);
        }
        let mut reg = Self::seed(models)?;
        reg.seeded_root = Some(root);
        std::fs::create_dir_all(state).map_err(|e| Error::io(state, e))?;
        reg.write(state)?;
        tracing::info!(from = %shipped.display(), to = %Self::path(state).display(), "live registry seeded");
        Ok(reg)
    }

    /// A live registry whose seed differs from `models`' shipped registry must have been seeded
    /// from this root (`root`: its canonical path); one from before roots were recorded must at
    /// least name only bundles this root has.
    fn check_root(&self, state: &Path, models: &Path, root: &str) -> Result<()> {
        let refuse = |why: String| Error::InvalidRegistry {
            path: Self::path(state),
            reason: format!(
                "{why}: give this model root a state folder of its own (--state / MOE_STATE), or remove {} \
                 to seed it from {}",
                Self::path(state).display(),
                Self::path(models).display()
            ),
        };
        match &self.seeded_root {
            Some(seeded) if seeded != root => Err(refuse(format!("seeded from the model root {seeded}, not {root}"))),
            Some(_) => Ok(()),
            None => match self.experts.values().find(|b| !models.join(b).is_dir()) {
                Some(missing) => Err(refuse(format!("names bundle {missing:?}, which {root} does not hold"))),
                None => Ok(()),
            },
        }
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
        crate::files::write_atomic(&Self::path(root), self.to_json().as_bytes())
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

    fn root_with(base: &Path, name: &str, experts: &[(&str, &str)]) -> PathBuf {
        let root = base.join(name);
        let reg = RegistryFile {
            experts: experts.iter().map(|(c, b)| (c.to_string(), b.to_string())).collect(),
            ..RegistryFile::empty()
        };
        for (_, b) in experts {
            std::fs::create_dir_all(root.join(b)).unwrap();
        }
        reg.write(&root).unwrap();
        root
    }

    #[test]
    fn a_state_never_serves_another_model_root() {
        let base = std::env::temp_dir().join(format!("moe-reg-roots-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let state = base.join("state");
        let a = root_with(&base, "a", &[("Travel", "travel--a")]);
        let seeded = RegistryFile::open_state(&state, &a).unwrap();
        assert_eq!(seeded.seeded_root.as_deref(), Some(a.canonicalize().unwrap().to_str().unwrap()));
        // Root b also holds a's bundle (it would have served a's experts) and root c does not (it
        // would have died with "cannot open"): both are refused with what to do, naming both roots.
        let b = root_with(&base, "b", &[("Travel", "travel--a"), ("Food", "food--b")]);
        let c = root_with(&base, "c", &[("Food", "food--c")]);
        for other in [&b, &c] {
            let e = RegistryFile::open_state(&state, other).unwrap_err();
            assert!(matches!(e, Error::InvalidRegistry { .. }), "{e}");
            let m = e.to_string();
            assert!(m.contains("seeded from the model root") && m.contains("--state"), "{m}");
            assert!(m.contains(other.canonicalize().unwrap().to_str().unwrap()), "{m}");
        }
        // A copy of a whose shipped registry is the same bytes is the same set: served.
        let copy = root_with(&base, "copy", &[("Travel", "travel--a")]);
        assert_eq!(RegistryFile::open_state(&state, &copy).unwrap().experts["Travel"], "travel--a");
        // A state from before roots were recorded: served while this root holds its bundles.
        let mut legacy = RegistryFile::read(&state).unwrap();
        legacy.seeded_root = None;
        legacy.write(&state).unwrap();
        assert!(RegistryFile::open_state(&state, &b).is_ok());
        let m = RegistryFile::open_state(&state, &c).unwrap_err().to_string();
        assert!(m.contains("names bundle \"travel--a\""), "{m}");
        // Its own root, with a changed shipped registry, is still served (with a warning).
        root_with(&base, "a", &[("Travel", "travel--a"), ("Food", "food--a")]);
        let mut own = RegistryFile::read(&state).unwrap();
        own.seeded_root = Some(a.canonicalize().unwrap().display().to_string());
        own.write(&state).unwrap();
        assert_eq!(RegistryFile::open_state(&state, &a).unwrap().experts.len(), 1);
        std::fs::remove_dir_all(base).unwrap();
    }
}
