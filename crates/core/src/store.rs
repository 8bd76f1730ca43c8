//! Where the live registry is kept, as the core sees it: a `RegistryStore` (the state folder's
//! file here; etcd for a fleet, in `moe-server`).
//!
//! Invariants:
//! * The registry document is one value (`RegistryFile`). A write is a compare-and-swap on the
//!   document the writer based its change on: it lands whole, or answers `Lost` with the document
//!   that won; never a half-written registry.
//! * No lock is held across a network call or an fsync: the file store writes and fsyncs a temp
//!   file first and holds its lock only for the comparison and the rename.
//! * `landed` runs once per landed write, before any later write of this store can land, so a
//!   caller that installs there installs in write order.
//! * Every call blocks: call from blocking threads (the loader, `Core::commit_blocking`).

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::bundle::RegistryFile;
use crate::error::lock;
use crate::files::{Staged, sync_parent};
use crate::{Error, Result};

/// The registry document with the revision it was read or written at (`None` for the file store,
/// which has no revisions).
#[derive(Debug, Clone, PartialEq)]
pub struct Stored {
    pub doc: RegistryFile,
    pub revision: Option<i64>,
}

/// The outcome of a compare-and-swap write.
#[derive(Debug)]
pub enum Written {
    /// The write landed at this revision.
    At(Option<i64>),
    /// Another writer changed the registry since `base`: this is what it holds now.
    Lost(Box<Stored>),
}

/// The live registry's home.
pub trait RegistryStore: Send + Sync {
    /// "file" or "etcd".
    fn kind(&self) -> &'static str;
    /// Where the live registry is, for errors and logs.
    fn location(&self) -> PathBuf;
    /// The live registry, seeding it from the model root's shipped one on the first start.
    fn open(&self, models: &Path) -> Result<Stored>;
    /// The latest document of a shared registry; `None` when this process is the only writer (its
    /// served document is the latest).
    fn latest(&self) -> Result<Option<Stored>>;
    /// Write `next` if the registry still holds `base`; `landed` gets the written document.
    fn write(&self, next: &RegistryFile, base: &Stored, landed: &mut dyn FnMut(Stored)) -> Result<Written>;
}

/// `<state>/registry.json`, seeded from `<models>/registry.json`; this process is its one writer.
pub struct FileStore {
    state: PathBuf,
    /// The document on disk (after `open`): the compare of the compare-and-swap.
    current: Mutex<Option<RegistryFile>>,
    /// Names the temp files of concurrent writes apart.
    writes: AtomicU64,
}

impl FileStore {
    pub fn new(state: impl Into<PathBuf>) -> FileStore {
        FileStore { state: state.into(), current: Mutex::new(None), writes: AtomicU64::new(0) }
    }
}

impl RegistryStore for FileStore {
    fn kind(&self) -> &'static str {
        "file"
    }

    fn location(&self) -> PathBuf {
        RegistryFile::path(&self.state)
    }

    fn open(&self, models: &Path) -> Result<Stored> {
        let doc = RegistryFile::open_state(&self.state, models)?;
        *lock(&self.current) = Some(doc.clone());
        Ok(Stored { doc, revision: None })
    }

    fn latest(&self) -> Result<Option<Stored>> {
        Ok(None)
    }

    fn write(&self, next: &RegistryFile, base: &Stored, landed: &mut dyn FnMut(Stored)) -> Result<Written> {
        let path = self.location();
        let suffix = format!("-{}", self.writes.fetch_add(1, Ordering::Relaxed));
        let staged = Staged::write(&path, &suffix, next.to_json().as_bytes())?;
        {
            let mut current = lock(&self.current);
            let Some(on_disk) = current.as_ref() else {
                return Err(Error::Internal("the file registry was written before it was opened".into()));
            };
            if *on_disk != base.doc {
                return Ok(Written::Lost(Box::new(Stored { doc: on_disk.clone(), revision: None })));
            }
            staged.rename()?;
            *current = Some(next.clone());
            landed(Stored { doc: next.clone(), revision: None });
        }
        sync_parent(&path);
        Ok(Written::At(None))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_write_based_on_an_old_document_is_lost_and_changes_nothing() {
        let dir = std::env::temp_dir().join(format!("moe-store-{}", std::process::id()));
        let (models, state) = (dir.join("models"), dir.join("state"));
        std::fs::create_dir_all(&models).unwrap();
        let shipped = RegistryFile { experts: [("a".into(), "a-v1".into())].into(), ..RegistryFile::empty() };
        shipped.write(&models).unwrap();
        let store = FileStore::new(&state);
        let base = store.open(&models).unwrap();
        let mut next = base.doc.clone();
        next.experts.insert("a".into(), "a-v2".into());
        let mut landed = Vec::new();
        assert!(matches!(store.write(&next, &base, &mut |s| landed.push(s)).unwrap(), Written::At(None)));
        assert_eq!(landed.len(), 1);
        let mut other = base.doc.clone();
        other.experts.insert("b".into(), "b-bundle".into());
        match store.write(&other, &base, &mut |s| landed.push(s)).unwrap() {
            Written::Lost(now) => assert_eq!(now.doc, next),
            Written::At(_) => panic!("a write based on a replaced document landed"),
        }
        assert_eq!(landed.len(), 1);
        assert_eq!(RegistryFile::read(&state).unwrap(), next);
        let names: Vec<_> = std::fs::read_dir(&state).unwrap().flatten().map(|e| e.file_name()).collect();
        assert_eq!(names, ["registry.json"], "no temp file is left");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
