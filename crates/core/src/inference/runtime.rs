//! The one ONNX Runtime environment of the process, found from the onnxruntime wheel, and
//! session creation with the configured execution provider.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;

use crate::config::RuntimeConfig;
use crate::{Error, Result};

static ENV: OnceLock<Result<ort::environment::Environment>> = OnceLock::new();

/// Where libonnxruntime is looked for when ORT_DYLIB_PATH / --ort-lib is not given: the project's
/// own venv (made by `scripts/setup.sh`) relative to the working directory, the executable and the
/// crate, and /opt/onnxruntime (the Docker image).
fn candidates() -> Vec<PathBuf> {
    let mut roots = vec![PathBuf::from(".")];
    if let Ok(exe) = std::env::current_exe() {
        roots.extend(exe.ancestors().skip(1).take(4).map(Path::to_path_buf));
    }
    roots.push(PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../..")));
    let mut out = vec![PathBuf::from("/opt/onnxruntime/libonnxruntime.so")];
    for r in roots {
        let lib = r.join(".venv/lib");
        if let Ok(entries) = std::fs::read_dir(&lib) {
            for e in entries.flatten() {
                let capi = e.path().join("site-packages/onnxruntime/capi");
                if let Ok(files) = std::fs::read_dir(&capi) {
                    let mut libs: Vec<PathBuf> = files
                        .flatten()
                        .map(|f| f.path())
                        .filter(|p| {
                            p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("libonnxruntime.so"))
                        })
                        .collect();
                    libs.sort();
                    out.extend(libs.into_iter().rev());
                }
            }
        }
    }
    out
}

pub fn find_library(explicit: Option<&Path>) -> Result<PathBuf> {
    if let Some(p) = explicit {
        return if p.is_file() {
            Ok(p.to_path_buf())
        } else {
            Err(Error::Internal(format!("ORT_DYLIB_PATH / --ort-lib {} is not a file", p.display())))
        };
    }
    candidates().into_iter().find(|p| p.is_file()).ok_or_else(|| {
        Error::Internal(
            "libonnxruntime not found: set ORT_DYLIB_PATH, or run scripts/setup.sh \
             (python3 -m venv .venv && .venv/bin/pip install onnxruntime==1.32.0)"
                .into(),
        )
    })
}

/// Load ONNX Runtime once per process (ort allows one environment per process). A failure is
/// remembered and answered the same way to every later caller.
pub fn environment(cfg: &RuntimeConfig) -> Result<&'static ort::environment::Environment> {
    ENV.get_or_init(|| {
        let lib = find_library(cfg.ort_lib.as_deref())?;
        let builder = ort::init_from(&lib).map_err(|e| Error::Internal(format!("loading ONNX Runtime: {e}")))?;
        let env = builder.with_name("moe").build().map_err(|e| Error::ort("creating the environment", e))?;
        tracing::info!(library = %lib.display(), "ONNX Runtime loaded");
        Ok(env)
    })
    .as_ref()
    .map_err(Error::share)
}

/// A committed session and the provider it runs on.
pub struct LoadedSession {
    pub session: Session,
    pub provider: &'static str,
}

/// How a session's intra-op threads wait for work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Spin {
    /// Block at once (no CPU burnt while idle; a wake-up per parallel section).
    Never,
    /// ONNX Runtime's default: spin a while before blocking, within and between runs.
    Always,
    /// Spin at most this many µs waiting for work within a run, and stop spinning when a run
    /// ends (`session.intra_op.spin_duration_us`, `session.force_spinning_stop`): a run gets the
    /// spinning latency, idle time burns nothing.
    WithinRuns(u64),
}

fn builder(
    env: &ort::environment::Environment,
    threads: usize,
    spin: Spin,
) -> ort::Result<ort::session::builder::SessionBuilder> {
    let b = Session::builder(env)?
        .with_optimization_level(GraphOptimizationLevel::All)?
        .with_intra_threads(threads)?
        .with_inter_threads(1)?
        .with_intra_op_spinning(spin != Spin::Never)?;
    match spin {
        Spin::WithinRuns(us) => Ok(b
            .with_config_entry("session.intra_op.spin_duration_us", us.to_string())?
            .with_config_entry("session.force_spinning_stop", "1")?),
        _ => Ok(b),
    }
}

#[cfg(feature = "cuda")]
fn commit_cuda(env: &ort::environment::Environment, threads: usize, spin: Spin, path: &Path) -> ort::Result<Session> {
    use ort::ep::ExecutionProvider;
    if !ort::ep::CUDA::is_available()? {
        return Err(ort::Error::new("this ONNX Runtime library has no CUDA execution provider"));
    }
    builder(env, threads, spin)?
        .with_execution_providers([ort::ep::CUDA::default().build().error_on_failure()])?
        .commit_from_file(path)
}

/// Create a session for `path`. With provider `auto` and the `cuda` feature, CUDA is tried first and
/// CPU is the logged fallback; with `cuda` a CUDA failure is an error.
pub fn load_session(cfg: &RuntimeConfig, path: &Path, threads: usize) -> Result<LoadedSession> {
    load_session_spinning(cfg, path, threads, if cfg.intra_op_spinning { Spin::Always } else { Spin::Never })
}

/// `load_session` with the intra-op spinning chosen here (the solo session's is its own).
pub fn load_session_spinning(cfg: &RuntimeConfig, path: &Path, threads: usize, spin: Spin) -> Result<LoadedSession> {
    let env = environment(cfg)?;
    let err = |e: ort::Error| Error::InvalidGraph { path: path.to_path_buf(), source: std::sync::Arc::new(e) };
    #[cfg(feature = "cuda")]
    if cfg.provider != "cpu" {
        match commit_cuda(env, threads, spin, path) {
            Ok(session) => {
                return Ok(LoadedSession { session, provider: "CUDA" });
            }
            Err(e) if cfg.provider == "cuda" => {
                return Err(Error::ort(format!("{}: CUDA execution provider", path.display()), e));
            }
            Err(e) => {
                tracing::warn!(graph = %path.display(), error = %e, "CUDA unavailable, falling back to CPU")
            }
        }
    }
    #[cfg(not(feature = "cuda"))]
    if cfg.provider == "cuda" {
        return Err(Error::Internal("--provider cuda needs a build with `--features cuda`".into()));
    }
    let session = builder(env, threads, spin).and_then(|mut b| b.commit_from_file(path)).map_err(err)?;
    Ok(LoadedSession { session, provider: "CPU" })
}
