//! File helpers for every writer of a model root or a state folder: content hashes, writes that
//! readers see whole or not at all (temp file, fsync, rename, fsync of the folder), and fsynced
//! appends to the state folder's logs.
//!
//! `Staged` splits such a write so that the slow part (writing and fsyncing the temp file) runs
//! before a caller takes its lock and only the rename runs under it (the file registry store).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::{Error, Result};

pub fn sha256_file(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(|e| Error::io(path, e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

/// Write a file so that readers see the old or the new content, never a mix.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    Staged::write(path, "", bytes)?.rename()?;
    sync_parent(path);
    Ok(())
}

/// Bytes written and fsynced to `.NAME.tmpSUFFIX` beside `path`, not yet visible there. Dropped
/// without `rename`, the temp file is removed.
pub struct Staged {
    tmp: PathBuf,
    path: PathBuf,
    renamed: bool,
}

impl Staged {
    pub fn write(path: &Path, suffix: &str, bytes: &[u8]) -> Result<Staged> {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
        let tmp = path.with_file_name(format!(".{name}.tmp{suffix}"));
        let staged = Staged { tmp, path: path.to_path_buf(), renamed: false };
        let mut f = std::fs::File::create(&staged.tmp).map_err(|e| Error::io(&staged.tmp, e))?;
        f.write_all(bytes).map_err(|e| Error::io(&staged.tmp, e))?;
        f.sync_all().map_err(|e| Error::io(&staged.tmp, e))?;
        Ok(staged)
    }

    /// Make the content visible at the path (one rename; `sync_parent` makes it durable).
    pub fn rename(mut self) -> Result<()> {
        std::fs::rename(&self.tmp, &self.path).map_err(|e| Error::io(&self.path, e))?;
        self.renamed = true;
        Ok(())
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        if !self.renamed {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// fsync the folder holding `path`, so that a rename into it survives a crash (best effort: some
/// file systems refuse to open a folder for syncing).
/// Append `bytes` to a log file (created with its folder if missing) and fsync its data: the
/// lines are on disk when this returns.
pub fn append_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    let mut f = std::fs::OpenOptions::new().create(true).append(true).open(path).map_err(|e| Error::io(path, e))?;
    f.write_all(bytes).map_err(|e| Error::io(path, e))?;
    f.sync_data().map_err(|e| Error::io(path, e))
}

/// Make a rename or creation under `path`'s folder durable: fsync the folder (best effort).
pub fn sync_parent(path: &Path) {
    if let Ok(d) = std::fs::File::open(path.parent().unwrap_or(Path::new("."))) {
        let _ = d.sync_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_staged_write_is_invisible_until_renamed_and_leaves_nothing_when_dropped() {
        let dir = std::env::temp_dir().join(format!("moe-files-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("doc.json");
        write_atomic(&path, b"old").unwrap();
        let staged = Staged::write(&path, "-1", b"new").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"old");
        drop(staged);
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1, "the dropped temp file is gone");
        Staged::write(&path, "-2", b"new").unwrap().rename().unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"new");
        assert_eq!(sha256_file(&path).unwrap(), hex::encode(Sha256::digest(b"new")));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
