//! What the repository carries stays modest and its own: the bundles in `models/` under 150 MB,
//! no other tracked file over 10 MB (scratch files that tools leave in the working directory, such
//! as ONNX Runtime's `sym_shape_infer_temp.onnx` and its `<uuid>.data`, or a build output), and no
//! tracked file that names the shared folder beside the checkout, which nothing may read at build,
//! test or run time.

use std::path::Path;
use std::process::Command;

const MODELS_LIMIT: u64 = 150_000_000;
const FILE_LIMIT: u64 = 10_000_000;

/// Every tracked file with its size in the working tree (0 when deleted there).
fn tracked() -> Vec<(String, u64)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new("git").args(["ls-files", "-z"]).current_dir(root).output().expect("git runs");
    assert!(out.status.success(), "git ls-files: {}", String::from_utf8_lossy(&out.stderr));
    out.stdout
        .split(|b| *b == 0)
        .filter(|p| !p.is_empty())
        .map(|p| {
            let path = String::from_utf8_lossy(p).into_owned();
            let len = std::fs::metadata(root.join(&path)).map_or(0, |m| m.len());
            (path, len)
        })
        .collect()
}

#[test]
fn the_repository_carries_modest_files() {
    let files = tracked();
    assert!(files.len() > 100, "git ls-files listed only {} files", files.len());
    let models: u64 = files.iter().filter(|(p, _)| p.starts_with("models/")).map(|(_, n)| n).sum();
    assert!(models > 0 && models < MODELS_LIMIT, "models/ holds {models} bytes (limit {MODELS_LIMIT})");
    let big: Vec<_> = files.iter().filter(|(p, n)| !p.starts_with("models/") && *n > FILE_LIMIT).collect();
    assert!(big.is_empty(), "tracked files over {FILE_LIMIT} bytes outside models/: {big:?}");
}

#[test]
fn no_tracked_file_names_the_shared_folder() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    // Spelled in two pieces so that this file does not name it.
    let needle = format!("{}/{}", "..", "shared");
    let naming: Vec<_> = tracked()
        .into_iter()
        .filter(|(_, n)| *n <= FILE_LIMIT)
        .filter(|(p, _)| {
            let bytes = std::fs::read(root.join(p)).unwrap_or_default();
            bytes.windows(needle.len()).any(|w| w == needle.as_bytes())
        })
        .map(|(p, _)| p)
        .collect();
    assert!(naming.is_empty(), "tracked files name {needle}: {naming:?}");
}
