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
//! in the model root with the same files is accepted; with different files it is a conflict.
//! Uploads of one bundle name run one at a time, so a failed one never removes a folder another is
//! loading.
//!
//! A kill at any step leaves nothing half-done behind: `remove_leftovers` clears the temporary
//! files and folders at start-up (only names this module makes, `.upload-<pid>-<n>[suffix]`, never
//! a bundle: bundle names cannot start with `.`), and a bundle renamed into place but never
//! committed is found by its marker (`Pending`) and removed by `recover_pending` once the registry
//! is loaded; committed, it stays. Removed rather than adopted as a candidate: the client never got
//! an answer, so it retries, and a retry with other files of that name must not meet a 409.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::swap::{Swap, SwapOutcome, swap};
use moe_core::bundle::RegistryFile;
use moe_core::bundle::card::check_name;
use moe_core::files::{sha256_file, sync_parent, write_atomic};
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
const TEMP_SUFFIXES: &[&str] = &["", ".tar.gz", "-train", PENDING_SUFFIX];

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

/// PAX records that set a size or a path must be well formed: a size the tar reader cannot parse
/// would be ignored silently (falling back to the header's), so such an archive is refused.
fn check_pax<R: Read>(entry: &mut tar::Entry<R>) -> Result<()> {
    let Some(exts) = entry.pax_extensions().map_err(|e| bad(format!("bad PAX header: {e}")))? else {
        return Ok(());
    };
    for ext in exts {
        let ext = ext.map_err(|e| bad(format!("bad PAX record: {e}")))?;
        let (key, value) = (ext.key().unwrap_or(""), ext.value().unwrap_or(""));
        if key == "size" && value.parse::<u64>().is_err() {
            return Err(bad(format!("PAX size {value:?} is not a byte count")));
        }
    }
    Ok(())
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
        check_pax(&mut entry)?;
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

/// Move a staged bundle to `<root>/<bundle>` (blocking). `None`: that bundle was already in the
/// model root with the same files (nothing moved); otherwise the marker of the placed bundle,
/// which stays until the change is committed or the bundle removed again.
pub fn place(root: &Path, staged: &Staged) -> Result<Option<Pending>> {
    let (name, target) = (&staged.name, root.join(&staged.name));
    if target.exists() {
        if same_files(&staged.staging.join(name), &target)? {
            tracing::info!(bundle = %name, "uploaded bundle is already in the model root with the same files");
            return Ok(None);
        }
        return Err(Error::Conflict(format!("a different bundle named {name:?} already exists in the model root")));
    }
    let pending = Pending::mark(root, name)?;
    failpoint("marked");
    std::fs::rename(staged.staging.join(name), &target).map_err(|e| Error::io(&target, e))?;
    sync_parent(&target);
    failpoint("placed");
    Ok(Some(pending))
}

/// The marker of a bundle folder placed in the model root whose change is not committed yet:
/// `.upload-<pid>-<n>-pending`, holding the bundle's name, this host's and this process's, written
/// and fsynced before the folder is renamed into place. `settle` removes it once the change is
/// committed or the folder removed again; a marker left by a killed process is resolved at its
/// next start by `recover_pending`.
pub struct Pending {
    marker: PathBuf,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Marker {
    bundle: String,
    host: String,
    process: String,
}

const PENDING_SUFFIX: &str = "-pending";

/// This process, told apart from an earlier one with the same pid (pid 1 in a container).
fn this_process() -> &'static str {
    static ID: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    ID.get_or_init(|| format!("{}-{}", std::process::id(), moe_core::clock::unix_ms()))
}

fn this_host() -> String {
    std::fs::read_to_string("/etc/hostname").map(|h| h.trim().to_string()).unwrap_or_default()
}

impl Pending {
    fn mark(root: &Path, bundle: &str) -> Result<Pending> {
        let m = Marker { bundle: bundle.into(), host: this_host(), process: this_process().into() };
        let marker = temp_path(root, PENDING_SUFFIX);
        write_atomic(&marker, &serde_json::to_vec(&m).expect("json"))?;
        Ok(Pending { marker })
    }

    /// The change is committed, or the bundle removed again: forget the marker.
    pub fn settle(self) {
        let _ = std::fs::remove_file(&self.marker);
        sync_parent(&self.marker);
    }
}

/// At start-up, before any upload of this process: resolve the markers that earlier processes of
/// this host left (`Pending`). A marked bundle that the live registry names (active or in a
/// history) was committed and stays; one it does not name is removed, so that an interrupted
/// upload leaves nothing behind and the same name can be uploaded again. Markers of another host
/// or of a process still running (replicas sharing a model root) are left alone. Returns the
/// bundles removed.
pub fn recover_pending(root: &Path, registry: &RegistryFile) -> Result<Vec<String>> {
    let named = |b: &str| {
        registry.experts.values().any(|x| x == b)
            || registry.history.values().flatten().any(|h| h.bundle.as_deref() == Some(b))
    };
    let mut removed = Vec::new();
    for e in std::fs::read_dir(root).map_err(|e| Error::io(root, e))?.flatten() {
        let file = e.file_name().to_string_lossy().to_string();
        if !(file.ends_with(PENDING_SUFFIX) && made_here(&file)) {
            continue;
        }
        let path = e.path();
        let Some(m) = std::fs::read(&path).ok().and_then(|b| serde_json::from_slice::<Marker>(&b).ok()) else {
            // Torn before its fsync: the rename it guards had not happened.
            std::fs::remove_file(&path).map_err(|err| Error::io(&path, err))?;
            continue;
        };
        if m.host != this_host() || m.process == this_process() || still_running(&m.process) {
            continue;
        }
        let dir = root.join(&m.bundle);
        if check_name(&m.bundle).is_ok() && !named(&m.bundle) && dir.is_dir() {
            std::fs::remove_dir_all(&dir).map_err(|err| Error::io(&dir, err))?;
            tracing::warn!(bundle = %m.bundle, "removed a bundle an interrupted upload placed but never committed");
            removed.push(m.bundle);
        }
        std::fs::remove_file(&path).map_err(|err| Error::io(&path, err))?;
    }
    sync_parent(&root.join("."));
    Ok(removed)
}

/// Whether the process a marker names is another live process of this host (not this one's
/// earlier self: a restarted container has the same pid).
fn still_running(process: &str) -> bool {
    let Some(pid) = process.split('-').next().and_then(|p| p.parse::<i32>().ok()) else { return false };
    if pid as u32 == std::process::id() {
        return false;
    }
    // SAFETY: kill with signal 0 sends nothing; it only checks that the process exists.
    let exists = unsafe { libc::kill(pid, 0) == 0 };
    // A killed process its parent has not reaped yet (a zombie) still exists, but runs no upload.
    let zombie = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|st| st.rsplit_once(") ").map(|(_, rest)| rest.starts_with('Z')))
        .unwrap_or(false);
    exists && !zombie
}

/// Test hook: with `MOE_FAILPOINT=<step>` in the environment the process kills itself (SIGKILL)
/// at that step of an upload, so that tests prove what a kill -9 at each step leaves behind.
/// Steps: received, staged, marked, placed, committed.
fn failpoint(step: &str) {
    static AT: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    if AT.get_or_init(|| std::env::var("MOE_FAILPOINT").ok()).as_deref() == Some(step) {
        // SAFETY: kill(2) on this process's own pid; it does not return.
        unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
    }
}

/// One lock per bundle name being uploaded: a second upload of the same name waits for the first
/// to be installed or removed.
fn name_lock(name: &str) -> Arc<tokio::sync::Mutex<()>> {
    static LOCKS: Mutex<Option<HashMap<String, Arc<tokio::sync::Mutex<()>>>>> = Mutex::new(None);
    let mut locks = moe_core::error::lock(&LOCKS);
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
        let file = e.file_name().to_string_lossy().to_string();
        if !file.starts_with(TEMP_PREFIX) || file.ends_with(PENDING_SUFFIX) {
            // Markers of placed bundles are `recover_pending`'s, once the registry is known.
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
    failpoint("received");
    let root = core.root().to_path_buf();
    let staged = {
        let root = root.clone();
        tokio::task::spawn_blocking(move || stage(&root, &archive.path)).await??
    };
    failpoint("staged");
    let name = staged.name.clone();
    let lock = name_lock(&name);
    let _held = lock.lock().await;
    // `None`: the bundle was there before this upload, so a failed swap must not remove it.
    let pending = {
        let root = root.clone();
        tokio::task::spawn_blocking(move || place(&root, &staged)).await??
    };
    let result = swap(core, class, Swap { bundle: name.clone(), ..guards }).await;
    if result.is_ok() {
        failpoint("committed");
    }
    if let Some(pending) = pending {
        let (dir, failed) = (root.join(&name), result.is_err());
        tokio::task::spawn_blocking(move || {
            if failed {
                let _ = std::fs::remove_dir_all(dir);
            }
            pending.settle();
        })
        .await?;
    }
    result
}
