//! Shared helpers: real model roots, a loaded core, a server on a real socket.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use moe_core::config::{Limits, RuntimeConfig};
use moe_core::service::{Core, Paths};
use moe_server::http::{AppState, app};

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The shipped default set (19 heads on a shared MiniLM trunk).
pub fn default_models() -> PathBuf {
    repo().join("models")
}

/// Two small full-model experts made by scripts/make-fixtures.sh.
pub fn fixture_models() -> PathBuf {
    repo().join("tests/fixtures/models")
}

pub fn runtime() -> RuntimeConfig {
    RuntimeConfig { intra_threads: Some(1), sessions: Some(1), ..RuntimeConfig::default() }
}

/// A fresh, empty state folder for one core (the live registry is seeded there).
pub fn state_dir(tag: &str) -> PathBuf {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("moe-state-{tag}-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// A core serving `root` with its own fresh state folder (not loaded yet).
pub fn core(root: &Path, limits: Limits) -> Arc<Core> {
    Core::new(Paths::new(root, state_dir("core")), runtime(), limits)
}

/// A core with the registry of `root` loaded (loading blocks, so it runs off the async workers).
pub async fn loaded_core(root: &Path, limits: Limits) -> Arc<Core> {
    loaded_core_with(root, "core", runtime(), limits).await
}

/// `loaded_core` with its own runtime settings, in a fresh state folder named after `tag`.
pub async fn loaded_core_with(root: &Path, tag: &str, runtime: RuntimeConfig, limits: Limits) -> Arc<Core> {
    let core = Core::new(Paths::new(root, state_dir(tag)), runtime, limits);
    let c = core.clone();
    tokio::task::spawn_blocking(move || c.load_registry()).await.unwrap().expect("registry loads");
    core
}

/// A loaded core on `root` with the state folder `state` under the temp dir, kept between calls
/// with the same name (a restart on the same state).
pub async fn loaded_core_in(root: &Path, state: &str, limits: Limits) -> Arc<Core> {
    let dir = std::env::temp_dir().join(format!("moe-state-{state}-{}", std::process::id()));
    let core = Core::new(Paths::new(root, dir), runtime(), limits);
    let c = core.clone();
    tokio::task::spawn_blocking(move || c.load_registry()).await.unwrap().expect("registry loads");
    core
}

/// Serve an app state on 127.0.0.1:<ephemeral>; returns the base URL.
pub async fn serve_state(state: moe_server::http::AppState) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, moe_server::http::app(state)).await.unwrap() });
    format!("http://{addr}")
}

/// Serve `core` on 127.0.0.1:<ephemeral>; returns the base URL.
pub async fn serve(core: Arc<Core>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app(AppState::new(core))).await.unwrap() });
    format!("http://{addr}")
}

/// Copy a model root into a fresh temp folder (files are hard-linked when possible; edit_json
/// breaks the link before writing so the source is never modified).
pub fn copy_root(src: &Path, tag: &str) -> PathBuf {
    let dst = std::env::temp_dir().join(format!("moe-test-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dst);
    copy_tree(src, &dst);
    dst
}

fn copy_tree(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).unwrap();
    for e in std::fs::read_dir(src).unwrap().flatten() {
        let to = dst.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_tree(&e.path(), &to);
        } else if std::fs::hard_link(e.path(), &to).is_err() {
            std::fs::copy(e.path(), &to).unwrap();
        }
    }
}

/// Replace a file's bytes without touching the file it may be hard-linked to.
pub fn replace_file(path: &Path, bytes: &[u8]) {
    let _ = std::fs::remove_file(path);
    std::fs::write(path, bytes).unwrap();
}

/// Rewrite a JSON file in place (unlinked first, see replace_file).
pub fn edit_json(path: &Path, f: impl FnOnce(&mut serde_json::Value)) {
    let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    f(&mut v);
    replace_file(path, serde_json::to_string_pretty(&v).unwrap().as_bytes());
}

/// The repository's labelled data (data/README.md).
pub fn data() -> moe_core::data::DataArgs {
    moe_core::data::DataArgs {
        data: repo().join("data/wikihow19_titles.csv"),
        text_col: "title".into(),
        label_col: "label".into(),
        split_col: "split".into(),
    }
}

pub fn python() -> PathBuf {
    repo().join(".venv/bin/python")
}

/// onnxruntime (Python) probabilities of one bundle: the parity oracle.
pub fn reference_probabilities(root: &Path, bundle: &str, texts: &[&str]) -> Vec<f64> {
    let out = std::process::Command::new(python())
        .current_dir(repo().join("training"))
        .args(["-m", "moe_training", "reference", "--root"])
        .arg(root)
        .args(["--bundle", bundle])
        .args(texts)
        .output()
        .expect("run the Python reference (scripts/setup.sh installs it)");
    assert!(out.status.success(), "reference failed: {}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["probabilities"].as_array().unwrap().iter().map(|p| p.as_f64().unwrap()).collect()
}

/// A free loopback port (bound and released: another process could take it first, rarely).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// `moe serve` — this build's binary — as a child process on a loopback port, with the given
/// environment (every flag has one); stderr goes to `log`. Killed (SIGKILL) when dropped.
pub struct Server {
    child: std::process::Child,
    pub port: u16,
}

impl Server {
    /// `moe serve` on the fixture models with a state folder of its own (`state_dir(tag)`, returned
    /// for the test to remove) and `extra` env variables on top, on a free port.
    pub fn on_fixture(tag: &str, extra: &[(&str, &str)]) -> (Server, PathBuf) {
        let (state, root) = (state_dir(tag), fixture_models());
        let mut envs: Vec<(&str, &std::ffi::OsStr)> =
            vec![("MOE_MODELS", root.as_os_str()), ("MOE_STATE", state.as_os_str())];
        envs.extend(extra.iter().map(|(k, v)| (*k, std::ffi::OsStr::new(*v))));
        let server = Server::spawn(free_port(), &envs, &state.join("serve.log"));
        (server, state)
    }

    pub fn spawn(port: u16, envs: &[(&str, &std::ffi::OsStr)], log: &Path) -> Server {
        std::fs::create_dir_all(log.parent().unwrap()).unwrap();
        let log = std::fs::OpenOptions::new().create(true).append(true).open(log).unwrap();
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_moe"));
        cmd.arg("serve").env("MOE_HOST", "127.0.0.1").env("MOE_PORT", port.to_string());
        // Light sessions: several servers share this machine's cores in the tests.
        for (k, v) in [("MOE_SESSIONS", "1"), ("MOE_INTRA_THREADS", "1"), ("MOE_SOLO_THREADS", "0")] {
            cmd.env(k, v);
        }
        cmd.env("MOE_INTRA_OP_SPINNING", "false");
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let child = cmd.stdout(std::process::Stdio::null()).stderr(log).spawn().expect("start moe serve");
        Server { child, port }
    }

    /// Send SIGTERM (the service drains and exits).
    pub fn terminate(&self) {
        // SAFETY: kill(2) on our own child's pid has no memory effects.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
    }

    pub fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Wait until `/readyz` answers 200.
    pub async fn ready(&self, within: std::time::Duration) {
        let deadline = std::time::Instant::now() + within;
        let c = reqwest::Client::new();
        loop {
            if let Ok(r) = c.get(format!("{}/readyz", self.base())).send().await
                && r.status().is_success()
            {
                return;
            }
            assert!(std::time::Instant::now() < deadline, "moe serve on port {} not ready after {within:?}", self.port);
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// This process's resident memory in MB (Linux).
pub fn rss_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kb: f64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap();
    kb / 1024.0
}

/// Send a request that must answer JSON; its body.
pub async fn json_of(req: reqwest::RequestBuilder) -> serde_json::Value {
    let res = req.send().await.unwrap();
    let status = res.status();
    let text = res.text().await.unwrap();
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{status}: not JSON ({e}): {text}"))
}
