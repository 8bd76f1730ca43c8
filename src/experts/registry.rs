//! `registry.json` in the model root: the active bundle of each class and the gate.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

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

impl RegistryFile {
    pub fn path(root: &Path) -> PathBuf {
        root.join(REGISTRY_FILE)
    }

    /// A missing or corrupt registry is an error that says so, never a silent fallback.
    pub fn read(root: &Path) -> Result<RegistryFile> {
        let path = Self::path(root);
        let bad = |reason: String| Error::InvalidRegistry { path: path.clone(), reason };
        let text = std::fs::read_to_string(&path).map_err(|e| bad(format!("cannot read: {e}")))?;
        let reg: RegistryFile = serde_json::from_str(&text).map_err(|e| bad(format!("bad JSON: {e}")))?;
        if reg.schema != REGISTRY_SCHEMA {
            return Err(bad(format!("schema {} is not supported (expected {REGISTRY_SCHEMA})", reg.schema)));
        }
        if reg.experts.is_empty() {
            return Err(bad("names no experts".into()));
        }
        Ok(reg)
    }

    pub fn write(&self, root: &Path) -> Result<()> {
        let text = serde_json::to_string_pretty(self).expect("registry serializes");
        crate::experts::card::write_atomic(&Self::path(root), format!("{text}\n").as_bytes())
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
        let reg = RegistryFile {
            schema: 1,
            experts: [("Travel".to_string(), "travel--x".to_string())].into(),
            gate: GateSpec::default(),
            history: BTreeMap::new(),
        };
        reg.write(&dir).unwrap();
        assert_eq!(RegistryFile::read(&dir).unwrap(), reg);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
