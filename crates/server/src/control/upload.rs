//! Bundle archives uploaded with `PUT /experts/{class}` (`Content-Type: application/gzip`): a
//! `.tar.gz` of one bundle folder (`tar czf b.tar.gz -C models <bundle>`).
//!
//! The body is streamed into a temporary file in the model root (`.upload-*`, never held whole in
//! memory, at most `--max-upload-bytes`), then unpacked into a fresh `.upload-*` folder there under
//! strict rules: regular files only, exactly one level below one bundle folder, plain names, at most
//! `MAX_ENTRIES` entries, at most `MAX_SECONDS` of unpacking, and a cap on the bytes *actually
//! written* (counted while copying, whatever any tar or PAX header declares). The folder is renamed
//! into place and swapped in like any bundle; a bundle that fails validation is removed again, and
//! every temporary file or folder is removed on every path. A re-upload of a bundle that is already
//! in the model root with the same files is accepted (a retry after a crash between unpacking and
//! the registry write); with different files it is a conflict. Uploads of one bundle name run one
//! at a time, so a failed one never removes a folder another is loading. `remove_leftovers` clears
//! what a killed process left behind, at start-up: only names this module makes
//! (`.upload-<pid>-<n>[suffix]`), never a bundle (bundle names cannot start with `.`).

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::swap::{Swap, SwapOutcome, swap};
use moe_core::bundle::card::check_name;
use moe_core::files::sha256_file;
use moe_core::service::Core;
use moe_core::{Error, Result};

/// Unpacked bytes may be at most this many times the archive (and at most 4 GiB).
const MAX_EXPANSION: u64 = 20;
/// A bundle is a card, a graph and a tokenizer; anything near this is not a bundle.
pub const MAX_ENTRIES: usize = 64;
/// Unpacking longer than this is refused (a slow decompression bomb).
pub const MAX_SECONDS: u64 = 60;
/// Prefix of every temporary file and folder an upload makes in the model root.
pub const TEMP_PREFIX: &str = ".upload-";

fn bad(reason: impl Into<String>) -> Error {
    Error::bundle("uploaded archive", reason.into())
}

/// A fresh temporary path in the model root (`.upload-<pid>-<n><suffix>`): unique within the
/// process, and swept at start-up with the other leftovers.
pub fn temp_path(root: &Path, suffix: &str) -> PathBuf {
    static N: AtomicU64 = AtomicU64::new(0);
    root.join(format!("{TEMP_PREFIX}{}-{}{suffix}", std::process::id(), N.fetch_add(1, Ordering::Relaxed)))
}

/// The suffixes `temp_path` is called with, so that the sweep knows every name it made.
const TEMP_SUFFIXES: &[&str] = &["", ".tar.gz", "-train"];

/// Whether `name` is one of `temp_path`'s names: `.upload-<digits>-<digits><suffix>`.
fn made_here(name: &str) -> bool {
    let Some(rest) = name.strip_prefix(TEMP_PREFIX) else { return false };
    let digits = |p: &str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit());
    TEMP_SUFFIXES.iter().any(|suffix| {
        rest.strip_suffix(suffix).and_then(|r| r.split_once('-')).is_some_and(|(pid, n)| digits(pid) && digits(n))
    })
}

/// An archive being received: a temporary file in the model root, removed when dropped.
pub struct Incoming {
    path: PathBuf,
    file: Option<std::fs::File>,
    written: u64,
    limit: u64,
}

impl Incoming {
    /// Start receiving at most `limit` bytes (blocking: creates the file).
    pub fn create(root: &Path, limit: u64) -> Result<Incoming> {
        let path = temp_path(root, ".tar.gz");
        let file = std::fs::File::create(&path).map_err(|e| Error::io(&path, e))?;
        Ok(Incoming { path, file: Some(file), written: 0, limit })
    }

    /// Append a chunk; false (nothing written) when the archive would exceed its limit.
    pub fn write(&mut self, chunk: &[u8]) -> Result<bool> {
        if self.written + chunk.len() as u64 > self.limit {
            return Ok(false);
        }
        let f = self.file.as_mut().ok_or_else(|| Error::Internal("upload file already closed".into()))?;
        f.write_all(chunk).map_err(|e| Error::io(&self.path, e))?;
        self.written += chunk.len() as u64;
        Ok(true)
    }
}

impl Drop for Incoming {
    fn drop(&mut self) {
        self.file.take();
        let _ = std::fs::remove_file(&self.path);
    }
}

/// A reader that fails once a deadline has passed (checked on every read).
struct Deadline<R> {
    inner: R,
    until: Instant,
}

impl<R: Read> Read for Deadline<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if Instant::now() > self.until {
            return Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "unpacking took too long"));
        }
        self.inner.read(buf)
    }
}

/// The folder and file an entry names: exactly `folder/file` (a regular file) or `folder` (a dir).
fn entry_place(path: &Path, is_dir: bool, is_file: bool) -> Result<(String, Option<String>)> {
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
    match (parts.as_slice(), is_dir, is_file) {
        ([d], true, _) => Ok((d.clone(), None)),
        ([d, f], _, true) => Ok((d.clone(), Some(f.clone()))),
        _ => Err(bad(format!("entry {} is not a file directly in the bundle folder", path.display()))),
    }
}

/// Unpack the archive into `staging/<bundle>`; returns the bundle's folder name.
fn unpack_into(archive: &Path, staging: &Path, limit: u64) -> Result<String> {
    let file = std::fs::File::open(archive).map_err(|e| Error::io(archive, e))?;
    // bufread's decoder reads no byte past its gzip member: what is left is trailing data.
    let reader = Deadline {
        inner: flate2::bufread::GzDecoder::new(BufReader::new(file)),
        until: Instant::now() + Duration::from_secs(MAX_SECONDS),
    };
    let mut tar = tar::Archive::new(reader);
    let mut name: Option<String> = None;
    let (mut total, mut entries) = (0u64, 0usize);
    for entry in tar.entries().map_err(|e| bad(format!("not a .tar.gz: {e}")))? {
        let mut entry = entry.map_err(|e| bad(format!("not a .tar.gz: {e}")))?;
        entries += 1;
        if entries > MAX_ENTRIES {
            return Err(bad(format!("more than {MAX_ENTRIES} entries")));
        }
        let path = entry.path().map_err(|e| bad(format!("bad entry name: {e}")))?.into_owned();
        let kind = entry.header().entry_type();
        let (folder, file) = entry_place(&path, kind.is_dir(), kind.is_file())?;
        check_name(&folder).map_err(bad)?;
        if name.get_or_insert_with(|| folder.clone()) != &folder {
            return Err(bad("the archive holds more than one bundle folder"));
        }
        let Some(file) = file else { continue };
        check_name(&file).map_err(bad)?;
        let dst = staging.join(&folder);
        std::fs::create_dir_all(&dst).map_err(|e| Error::io(&dst, e))?;
        let out_path = dst.join(&file);
        let mut out = std::fs::File::create(&out_path).map_err(|e| Error::io(&out_path, e))?;
        // Count what is really written, one byte past the budget at most: headers can lie.
        let budget = limit - total;
        let n =
            std::io::copy(&mut entry.by_ref().take(budget + 1), &mut out).map_err(|e| bad(format!("{file}: {e}")))?;
        total += n;
        if total > limit {
            return Err(bad(format!("unpacks to more than {limit} bytes")));
        }
    }
    let name = name.ok_or_else(|| bad("the archive is empty"))?;
    // After the tar's end: only its zero padding, then the end of the gzip member and of the file.
    let mut rest = tar.into_inner();
    let mut pad = [0u8; 8192];
    loop {
        let n = rest.read(&mut pad).map_err(|e| bad(format!("not a .tar.gz: {e}")))?;
        if n == 0 {
            break;
        }
        if pad[..n].iter().any(|&b| b != 0) {
            return Err(bad("data after the end of the tar archive"));
        }
    }
    let mut file = rest.inner.into_inner();
    if !file.fill_buf().map_err(|e| Error::io(archive, e))?.is_empty() {
        return Err(bad("data after the end of the gzip stream"));
    }
    Ok(name)
}

/// Whether two bundle folders hold the same files with the same bytes.
fn same_files(a: &Path, b: &Path) -> Result<bool> {
    let list = |d: &Path| -> Result<Vec<String>> {
        let mut v: Vec<String> = std::fs::read_dir(d)
            .map_err(|e| Error::io(d, e))?
            .flatten()
            .map(|e| e.file_name().to_string_lossy().to_string())
            .collect();
        v.sort();
        Ok(v)
    };
    let names = list(a)?;
    if names != list(b)? {
        return Ok(false);
    }
    for n in &names {
        if sha256_file(&a.join(n))? != sha256_file(&b.join(n))? {
            return Ok(false);
        }
    }
    Ok(true)
}

/// An archive unpacked into a staging folder of the model root (removed when dropped).
pub struct Staged {
    staging: PathBuf,
    pub name: String,
}

impl Drop for Staged {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.staging);
    }
}

/// Unpack a received archive into a staging folder of the model root (blocking).
pub fn stage(root: &Path, archive: &Path) -> Result<Staged> {
    let size = std::fs::metadata(archive).map_err(|e| Error::io(archive, e))?.len();
    let limit = (size * MAX_EXPANSION).min(4 << 30);
    let staging = temp_path(root, "");
    std::fs::create_dir(&staging).map_err(|e| Error::io(&staging, e))?;
    match unpack_into(archive, &staging, limit) {
        Ok(name) => Ok(Staged { staging, name }),
        Err(e) => {
            let _ = std::fs::remove_dir_all(&staging);
            Err(e)
        }
    }
}

/// Move a staged bundle to `<root>/<bundle>` (blocking); true when that bundle was already in the
/// model root with the same files (nothing moved).
pub fn place(root: &Path, staged: &Staged) -> Result<bool> {
    let (name, target) = (&staged.name, root.join(&staged.name));
    if target.exists() {
        if same_files(&staged.staging.join(name), &target)? {
            tracing::info!(bundle = %name, "uploaded bundle is already in the model root with the same files");
            return Ok(true);
        }
        return Err(Error::Conflict(format!("a different bundle named {name:?} already exists in the model root")));
    }
    std::fs::rename(staged.staging.join(name), &target).map_err(|e| Error::io(&target, e))?;
    Ok(false)
}

/// Unpack a received archive into `<root>/<bundle>` (blocking); returns the bundle's folder name
/// and whether that bundle was already in the model root with the same files.
pub fn unpack(root: &Path, archive: &Path) -> Result<(String, bool)> {
    let staged = stage(root, archive)?;
    let existed = place(root, &staged)?;
    Ok((staged.name.clone(), existed))
}

/// One lock per bundle name being uploaded: a second upload of the same name waits for the first
/// to be installed or removed.
fn name_lock(name: &str) -> Arc<tokio::sync::Mutex<()>> {
    static LOCKS: Mutex<Option<HashMap<String, Arc<tokio::sync::Mutex<()>>>>> = Mutex::new(None);
    let mut locks = LOCKS.lock().unwrap_or_else(|e| e.into_inner());
    let map = locks.get_or_insert_with(HashMap::new);
    // Forget the locks nobody holds or waits for (only the map refers to them).
    map.retain(|_, l| Arc::strong_count(l) > 1);
    map.entry(name.to_string()).or_default().clone()
}

/// Remove what interrupted uploads left in the model root (`.upload-*` files and folders); returns
/// the paths removed (each is logged).
pub fn remove_leftovers(root: &Path) -> Result<Vec<PathBuf>> {
    let mut removed = Vec::new();
    for e in std::fs::read_dir(root).map_err(|e| Error::io(root, e))?.flatten() {
        if !e.file_name().to_string_lossy().starts_with(TEMP_PREFIX) {
            continue;
        }
        let p = e.path();
        if !made_here(&e.file_name().to_string_lossy()) {
            tracing::warn!(path = %p.display(), "left in place: not a name an upload makes");
            continue;
        }
        let r = if p.is_dir() { std::fs::remove_dir_all(&p) } else { std::fs::remove_file(&p) };
        r.map_err(|err| Error::io(&p, err))?;
        tracing::warn!(path = %p.display(), "removed the leftover of an interrupted upload");
        removed.push(p);
    }
    Ok(removed)
}

/// Unpack a received archive into the model root and swap it in; a bundle this upload added and
/// that fails is removed again (blocking file work runs on blocking threads).
pub async fn swap_archive(core: &Arc<Core>, class: &str, archive: Incoming, guards: Swap) -> Result<SwapOutcome> {
    moe_core::bundle::card::check_class(class).map_err(Error::BadRequest)?;
    let root = core.root().to_path_buf();
    let staged = {
        let root = root.clone();
        tokio::task::spawn_blocking(move || stage(&root, &archive.path)).await??
    };
    let name = staged.name.clone();
    let lock = name_lock(&name);
    let _held = lock.lock().await;
    // `existed`: the bundle was there before this upload, so a failed swap must not remove it.
    let existed = {
        let root = root.clone();
        tokio::task::spawn_blocking(move || place(&root, &staged)).await??
    };
    let result = swap(core, class, Swap { bundle: name.clone(), ..guards }).await;
    if result.is_err() && !existed {
        let dir = root.join(&name);
        tokio::task::spawn_blocking(move || std::fs::remove_dir_all(dir)).await?.ok();
    }
    result
}
