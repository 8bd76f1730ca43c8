//! Runtime configuration shared by the server and the offline commands: how graphs run
//! (`RuntimeConfig`) and what one request may ask (`Limits`). Every flag has an env fallback. The
//! command line itself (`Cli`, the subcommands) lives in `main.rs`.

use std::path::PathBuf;

use clap::Args;

/// Runtime settings shared by the server and the evaluation commands.
#[derive(Debug, Clone, Args)]
pub struct RuntimeConfig {
    /// Path of libonnxruntime.so; default: the project's .venv (onnxruntime wheel).
    #[arg(long, env = "ORT_DYLIB_PATH")]
    pub ort_lib: Option<PathBuf>,
    /// Execution provider: auto (CUDA when built with it and available, else CPU), cpu, cuda.
    #[arg(long, env = "MOE_PROVIDER", default_value = "auto", value_parser = ["auto", "cpu", "cuda"])]
    pub provider: String,
    /// Intra-op threads of each trunk / full-model session (default: cores / sessions).
    #[arg(long, env = "MOE_INTRA_THREADS")]
    pub intra_threads: Option<usize>,
    /// Sessions (each with its own thread) per trunk / full-model graph, sharing one queue
    /// (default: available cores). On 2 cores, 1 session x 2 threads answers a lone request in about
    /// half the time but varied more under load (docs/bench/ab-sessions.jsonl: 668-1346 req/s at
    /// concurrency 16 against 1081-1365 for 2 sessions x 1 thread), so 2 x 1 stays the default.
    #[arg(long, env = "MOE_SESSIONS")]
    pub sessions: Option<usize>,
    /// A lone request may use every core: with more than one session per trunk, one extra
    /// session with this many intra-op threads (default: every core) runs a single text when the
    /// queue is empty and no other run is in progress (0 or 1: off). It spins only within its runs
    /// (`--solo-spin-us`), so it takes no core from loaded runs. Measured on 2 cores (docs/bench/ab-solo.jsonl, 3 interleaved
    /// rounds): p50 at concurrency 1 2.00 -> 1.71 ms, requests/s at 16 unchanged within noise.
    #[arg(long, env = "MOE_SOLO_THREADS")]
    pub solo_threads: Option<usize>,
    /// The solo session's threads spin up to this many µs waiting for work within a run and stop
    /// spinning when the run ends (0: they never spin). Spinning between runs too halved the lone
    /// latency but took cores from loaded runs (docs/bench/ab-solo-spinning.jsonl: p99 at 16
    /// 27 -> 38 ms); within runs only (docs/bench/ab-solo-spin-within-runs.jsonl, 3 interleaved
    /// rounds): p50 at concurrency 1 1.63 -> 1.13 ms, requests/s at 16 1208 -> 1259 (noise); 2 ms
    /// windows were no better alone and worse under load.
    #[arg(long, env = "MOE_SOLO_SPIN_US", default_value_t = 100)]
    pub solo_spin_us: u64,
    /// Intra-op threads of each small head session.
    #[arg(long, env = "MOE_HEAD_THREADS", default_value_t = 1)]
    pub head_threads: usize,
    /// Run small head graphs on the calling thread (one session per core, locked while it runs)
    /// instead of handing each head to its executor thread: 19 thread hand-offs less per request.
    #[arg(long, env = "MOE_INLINE_HEADS", default_value_t = true, action = clap::ArgAction::Set)]
    pub inline_heads: bool,
    /// Let ONNX Runtime's intra-op threads spin between runs (lower latency when idle cores
    /// exist; burns CPU that other executors and the HTTP layer need on small machines).
    #[arg(long, env = "MOE_INTRA_OP_SPINNING", default_value_t = true, action = clap::ArgAction::Set)]
    pub intra_op_spinning: bool,
    /// Largest batch (texts) one graph run takes.
    #[arg(long, env = "MOE_MAX_BATCH", default_value_t = 64)]
    pub max_batch: usize,
    /// How long an executor waits for more work before running a batch (µs); 0 = run what is
    /// queued at once (requests that arrive while a batch runs still batch together).
    #[arg(long, env = "MOE_MAX_WAIT_US", default_value_t = 0)]
    pub max_wait_us: u64,
    /// Jobs queued per executor before requests are refused with 503.
    #[arg(long, env = "MOE_QUEUE_CAPACITY", default_value_t = 1024)]
    pub queue_capacity: usize,
    /// Largest |p_service - p_card| accepted in the warm-up self-test of a bundle.
    #[arg(long, env = "MOE_SELFTEST_TOLERANCE", default_value_t = 0.02)]
    pub selftest_tolerance: f32,
    /// Correct misspelt words before tokenizing wherever a trunk or bundle names a spelling
    /// lexicon (inference/spelling.rs); false: every text reaches its tokenizer unchanged (the
    /// thresholds were calibrated with correction, so expect small shifts).
    #[arg(long, env = "MOE_SPELLING", default_value_t = true, action = clap::ArgAction::Set)]
    pub spelling: bool,
}

fn cores() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2)
}

impl RuntimeConfig {
    pub fn sessions(&self) -> usize {
        self.sessions.unwrap_or_else(cores).max(1)
    }

    pub fn solo_threads(&self) -> usize {
        self.solo_threads.unwrap_or_else(cores)
    }

    pub fn intra_threads(&self) -> usize {
        self.intra_threads.unwrap_or_else(|| (cores() / self.sessions()).max(1))
    }
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            ort_lib: None,
            provider: "auto".into(),
            intra_threads: None,
            head_threads: 1,
            solo_threads: None,
            solo_spin_us: 100,
            inline_heads: true,
            intra_op_spinning: true,
            sessions: None,
            max_batch: 64,
            max_wait_us: 0,
            queue_capacity: 1024,
            selftest_tolerance: 0.02,
            spelling: true,
        }
    }
}

#[derive(Debug, Clone, Args)]
pub struct Limits {
    /// Largest request body in bytes (413 above).
    #[arg(long, env = "MOE_MAX_BODY_BYTES", default_value_t = 1 << 20)]
    pub max_body_bytes: usize,
    /// Largest bundle archive accepted by `PUT /experts/{class}` (413 above).
    #[arg(long, env = "MOE_MAX_UPLOAD_BYTES", default_value_t = 128 << 20)]
    pub max_upload_bytes: usize,
    /// Most texts in one classify request (400 above).
    #[arg(long, env = "MOE_MAX_TEXTS", default_value_t = 64)]
    pub max_texts: usize,
    /// Most characters of one text (400 above); texts within it are truncated to the model's
    /// max sequence length, never refused for length.
    #[arg(long, env = "MOE_MAX_TEXT_CHARS", default_value_t = 10_000)]
    pub max_text_chars: usize,
    /// Deadline for one classify request, in milliseconds (503 after it).
    #[arg(long, env = "MOE_REQUEST_TIMEOUT_MS", default_value_t = 10_000)]
    pub request_timeout_ms: u64,
    /// Longest wait for the next frame of a request body, in milliseconds (408 after it).
    #[arg(long, env = "MOE_BODY_TIMEOUT_MS", default_value_t = 10_000)]
    pub body_timeout_ms: u64,
    /// Admission control: most texts being classified at once, over all requests. A request that
    /// would go over is refused at once (503 with Retry-After) before any tokenization.
    #[arg(long, env = "MOE_MAX_IN_FLIGHT_TEXTS", default_value_t = 1024)]
    pub max_in_flight_texts: usize,
    /// History entries kept per class in the live registry (oldest dropped; rollback needs 2).
    #[arg(long, env = "MOE_HISTORY_PER_CLASS", default_value_t = 100)]
    pub history_per_class: usize,
    /// Requests waiting to be scored by shadow candidates; when full, shadow scoring of a request
    /// is skipped (counted in moe_shadow_dropped_total), never the answer delayed.
    #[arg(long, env = "MOE_SHADOW_QUEUE", default_value_t = 256)]
    pub shadow_queue: usize,
    /// Feedback entries kept (`<state>/feedback.jsonl`, oldest dropped; POST /feedback).
    #[arg(long, env = "MOE_FEEDBACK_CAP", default_value_t = 10_000)]
    pub feedback_cap: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body_bytes: 1 << 20,
            max_upload_bytes: 128 << 20,
            max_texts: 64,
            max_text_chars: 10_000,
            request_timeout_ms: 10_000,
            body_timeout_ms: 10_000,
            max_in_flight_texts: 1024,
            history_per_class: 100,
            shadow_queue: 256,
            feedback_cap: 10_000,
        }
    }
}

/// Connection hygiene of the server (see `http::server`).
#[derive(Debug, Clone, Args)]
pub struct Connections {
    /// Most connections open at once; one more is answered 503 and closed.
    #[arg(long, env = "MOE_MAX_CONNECTIONS", default_value_t = 1024)]
    pub max_connections: usize,
    /// Deadline for a request's headers, in milliseconds, also the longest a keep-alive
    /// connection may sit idle: the connection is closed after it.
    #[arg(long, env = "MOE_HEADER_READ_TIMEOUT_MS", default_value_t = 10_000)]
    pub header_read_timeout_ms: u64,
    /// At shutdown, how long requests in flight may take to finish, in milliseconds.
    #[arg(long, env = "MOE_SHUTDOWN_DRAIN_MS", default_value_t = 10_000)]
    pub drain_ms: u64,
}

impl Default for Connections {
    fn default() -> Self {
        Connections { max_connections: 1024, header_read_timeout_ms: 10_000, drain_ms: 10_000 }
    }
}
