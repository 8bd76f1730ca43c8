//! Bundle archives uploaded with `PUT /experts/{class}` (`Content-Type: application/gzip`): a
//! `.tar.gz` of one bundle folder (`tar czf b.tar.gz -C models <bundle>`). The archive is unpacked
//! into a fresh folder inside the model root under strict rules (regular files only, one level,
//! plain names, a size cap), renamed into place, then swapped in like any bundle; a bundle that
//! fails validation is removed again, so a bad upload leaves nothing behind.

use std::io::Read;
use std::path::{Component, Path};
use std::sync::Arc;

use bytes::Bytes;

use super::swap::{Swap, SwapOutcome, swap};
use crate::clock::now_rfc3339;
use crate::core::Core;
use crate::experts::card::check_name;
use crate::{Error, Result};

/// Unpacked bytes may be at most this many times the archive (and at most 4 GiB).
const MAX_EXPANSION: u64 = 20;

fn bad(reason: impl Into<String>) -> Error {
    Error::bundle("uploaded archive", reason.into())
}

/// Unpack into `<root>/<bundle>`; returns the bundle's folder name.
pub fn unpack(root: &Path, archive: &[u8]) -> Result<String> {
    let limit = (archive.len() as u64 * MAX_EXPANSION).min(4 << 30);
    let staging = root.join(format!(".upload-{}-{}", std::process::id(), now_rfc3339().replace(':', "")));
    let staging = tempdir_unique(staging)?;
    let result = (|| {
        let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(archive));
        let mut name: Option<String> = None;
        let mut total = 0u64;
        for entry in tar.entries().map_err(|e| bad(format!("not a .tar.gz: {e}")))? {
            let mut entry = entry.map_err(|e| bad(format!("not a .tar.gz: {e}")))?;
            let path = entry.path().map_err(|e| bad(format!("bad entry name: {e}")))?.into_owned();
            let parts: Vec<String> = path
                .components()
                .map(|c| match c {
                    Component::Normal(p) => Ok(p.to_string_lossy().to_string()),
                    Component::CurDir => Ok(String::new()),
                    _ => Err(bad(format!("entry {} leaves the bundle folder", path.display()))),
                })
                .collect::<Result<Vec<_>>>()?
                .into_iter()
                .filter(|p| !p.is_empty())
                .collect();
            let kind = entry.header().entry_type();
            let (folder, file) = match (parts.as_slice(), kind.is_dir(), kind.is_file()) {
                ([d], true, _) => (d.clone(), None),
                ([d, f], _, true) => (d.clone(), Some(f.clone())),
                _ => return Err(bad(format!("entry {} is not a file directly in the bundle folder", path.display()))),
            };
            check_name(&folder).map_err(bad)?;
            if name.get_or_insert_with(|| folder.clone()) != &folder {
                return Err(bad("the archive holds more than one bundle folder"));
            }
            let Some(file) = file else { continue };
            check_name(&file).map_err(bad)?;
            total += entry.header().size().unwrap_or(u64::MAX);
            if total > limit {
                return Err(bad(format!("unpacks to more than {limit} bytes")));
            }
            let dst = staging.join(&folder);
            std::fs::create_dir_all(&dst).map_err(|e| Error::io(&dst, e))?;
            let mut bytes = Vec::new();
            entry.by_ref().take(limit).read_to_end(&mut bytes).map_err(|e| bad(format!("{file}: {e}")))?;
            std::fs::write(dst.join(&file), bytes).map_err(|e| Error::io(dst.join(&file), e))?;
        }
        let name = name.ok_or_else(|| bad("the archive is empty"))?;
        let target = root.join(&name);
        if target.exists() {
            return Err(Error::Conflict(format!("a bundle named {name:?} already exists in the model root")));
        }
        std::fs::rename(staging.join(&name), &target).map_err(|e| Error::io(&target, e))?;
        Ok(name)
    })();
    let _ = std::fs::remove_dir_all(&staging);
    result
}

fn tempdir_unique(base: std::path::PathBuf) -> Result<std::path::PathBuf> {
    for i in 0..1000 {
        let p = base.with_extension(i.to_string());
        if std::fs::create_dir(&p).is_ok() {
            return Ok(p);
        }
    }
    Err(Error::Internal("cannot create an upload folder in the model root".into()))
}

/// Unpack an uploaded bundle into the model root and swap it in; a bundle that fails is removed
/// again (on a blocking thread, like the unpacking).
pub async fn swap_archive(core: &Arc<Core>, class: &str, archive: Bytes, guards: Swap) -> Result<SwapOutcome> {
    let root = core.root().to_path_buf();
    let name = tokio::task::spawn_blocking(move || unpack(&root, &archive)).await??;
    let result = swap(core, class, Swap { bundle: name.clone(), ..guards }).await;
    if result.is_err() {
        let dir = core.root().join(&name);
        tokio::task::spawn_blocking(move || std::fs::remove_dir_all(dir)).await?.ok();
    }
    result
}
