//! Runtime configuration shared by the server and the offline commands: how graphs run
//! (`RuntimeConfig`) and what one request may ask (`Limits`). Every flag has an env fallback. The
//! command line itself (`Cli`, the subcommands) lives in `main.rs`.

use std::path::PathBuf;

use clap::{Args, Command, FromArgMatches};

/// Runtime settings shared by the server and the evaluation commands.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Performance tuning")]
pub struct RuntimeConfig {
    /// Path of libonnxruntime.so (default: the onnxruntime wheel in .venv).
    #[arg(long, env = "ORT_DYLIB_PATH")]
    pub ort_lib: Option<PathBuf>,
    /// Execution provider: auto (CUDA when built with it and available, else CPU).
    #[arg(long, env = "MOE_PROVIDER", default_value = "auto", value_parser = ["auto", "cpu", "cuda"])]
    pub provider: String,
    /// Intra-op threads of each trunk / full-model session (default: cores / sessions).
    #[arg(long, env = "MOE_INTRA_THREADS")]
    pub intra_threads: Option<usize>,
    /// Sessions per trunk / full-model graph, sharing one queue (default: cores).
    ///
    /// Each session runs on its own thread.
    // Why 2 x 1 on 2 cores: docs/BENCHMARKS.md (docs/bench/ab-sessions.jsonl).
    #[arg(long, env = "MOE_SESSIONS")]
    pub sessions: Option<usize>,
    /// Threads of the extra session that runs a lone text (default: cores; 0 or 1: off).
    ///
    /// With more than one session per trunk, this session runs a single text when the queue is
    /// empty and no other run is in progress. It spins only within its runs (`--solo-spin-us`),
    /// so it takes no core from loaded runs.
    // Measured: docs/BENCHMARKS.md (ab-solo.jsonl).
    #[arg(long, env = "MOE_SOLO_THREADS")]
    pub solo_threads: Option<usize>,
    /// How long the solo session's threads spin for work in a run, in µs (0: never).
    ///
    /// They stop spinning when the run ends, so idle spinning takes no core from loaded runs.
    // Measured: docs/BENCHMARKS.md (ab-solo-spinning.jsonl, ab-solo-spin-within-runs.jsonl).
    #[arg(long, env = "MOE_SOLO_SPIN_US", default_value_t = 100)]
    pub solo_spin_us: u64,
    /// Intra-op threads of each small head session.
    #[arg(long, env = "MOE_HEAD_THREADS", default_value_t = 1)]
    pub head_threads: usize,
    /// Run small head graphs on the calling thread instead of their executor threads.
    ///
    /// One session per core, locked while it runs: 19 thread hand-offs less per request.
    #[arg(long, env = "MOE_INLINE_HEADS", default_value_t = true, action = clap::ArgAction::Set)]
    pub inline_heads: bool,
    /// Let ONNX Runtime's intra-op threads spin between runs.
    ///
    /// Lower latency when idle cores exist; burns CPU that other executors and the HTTP layer
    /// need on small machines.
    #[arg(long, env = "MOE_INTRA_OP_SPINNING", default_value_t = true, action = clap::ArgAction::Set)]
    pub intra_op_spinning: bool,
    /// Largest batch (texts) one graph run takes.
    ///
    /// With several sessions and no waiting (`--max-wait-us 0`), a worker takes at most its share
    /// of the jobs queued when it looks (queued / sessions).
    // Measured: docs/BENCHMARKS.md (ab-fair.jsonl).
    #[arg(long, env = "MOE_MAX_BATCH", default_value_t = 64)]
    pub max_batch: usize,
    /// How long an executor waits for more work before running a batch, in µs.
    ///
    /// 0: run what is queued at once (requests that arrive while a batch runs still batch).
    #[arg(long, env = "MOE_MAX_WAIT_US", default_value_t = 0)]
    pub max_wait_us: u64,
    /// Jobs queued per executor before requests are refused with 503.
    #[arg(long, env = "MOE_QUEUE_CAPACITY", default_value_t = 1024)]
    pub queue_capacity: usize,
    /// Largest |p_service - p_card| accepted in the warm-up self-test of a bundle.
    #[arg(long, env = "MOE_SELFTEST_TOLERANCE", default_value_t = 0.02, help_heading = "Experts")]
    pub selftest_tolerance: f32,
    /// Correct misspelt words before tokenizing where a trunk names a spelling lexicon.
    ///
    /// false: every text reaches its tokenizer unchanged (the thresholds were calibrated with
    /// correction, so expect small shifts). The rule: crates/core/src/inference/tokenize.rs.
    #[arg(long, env = "MOE_SPELLING", default_value_t = true, action = clap::ArgAction::Set, help_heading = "Experts")]
    pub spelling: bool,
}

/// A flag group with every value at its clap default: env variables are ignored, so a library
/// default never depends on the environment of the process.
pub fn clap_defaults<T: Args + FromArgMatches>() -> T {
    let cmd = T::augment_args(Command::new("defaults")).mut_args(|a| a.env(None::<&'static str>));
    let m = cmd.try_get_matches_from(["defaults"]).expect("every flag has a default or is optional");
    T::from_arg_matches(&m).expect("the defaults parse")
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
    /// The flags' own defaults (written once, in the `#[arg]` attributes), env variables ignored.
    fn default() -> Self {
        clap_defaults()
    }
}

/// What one request, and the service as a whole, may take.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Limits")]
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
    /// Most characters of one text (400 above).
    ///
    /// Texts within it are truncated to the model's max sequence length, never refused.
    #[arg(long, env = "MOE_MAX_TEXT_CHARS", default_value_t = 10_000)]
    pub max_text_chars: usize,
    /// Deadline for one classify request, in milliseconds (503 after it).
    #[arg(long, env = "MOE_REQUEST_TIMEOUT_MS", default_value_t = 10_000)]
    pub request_timeout_ms: u64,
    /// Longest wait for the next frame of a request body, in ms (408 after it).
    #[arg(long, env = "MOE_BODY_TIMEOUT_MS", default_value_t = 10_000)]
    pub body_timeout_ms: u64,
    /// Longest time to receive a whole request body, in ms (408 after it).
    ///
    /// Counted from the request head; a client that trickles a byte now and then is cut off
    /// here. Uploads of --max-upload-bytes need that size over this time as bandwidth.
    #[arg(long, env = "MOE_BODY_DEADLINE_MS", default_value_t = 60_000)]
    pub body_deadline_ms: u64,
    /// Most texts being classified at once, over all requests (503 above).
    ///
    /// A request that would go over is refused at once (503 with Retry-After), before any
    /// tokenization. At least --max-texts: the service refuses to start below it, since a request
    /// of --max-texts texts could then never pass.
    #[arg(long, env = "MOE_MAX_IN_FLIGHT_TEXTS", default_value_t = 1024)]
    pub max_in_flight_texts: usize,
    /// History entries kept per class in the live registry (oldest dropped).
    #[arg(long, env = "MOE_HISTORY_PER_CLASS", default_value_t = 100)]
    pub history_per_class: usize,
    /// Requests waiting to be scored by shadow candidates.
    ///
    /// When full, shadow scoring of a request is skipped (counted in moe_shadow_dropped_total),
    /// never the answer delayed.
    #[arg(long, env = "MOE_SHADOW_QUEUE", default_value_t = 256)]
    pub shadow_queue: usize,
    /// Feedback entries kept in `<state>/feedback.jsonl` (oldest dropped).
    #[arg(long, env = "MOE_FEEDBACK_CAP", default_value_t = 10_000)]
    pub feedback_cap: usize,
    /// Declined texts kept in `<state>/unknowns.jsonl` for `GET /unknowns` (0: none).
    ///
    /// Each distinct text once, with its trunk embedding, counts and first/last seen; past the
    /// cap the least recently seen go. Grouping costs about cap² x 384 multiply-adds per listing.
    #[arg(long, env = "MOE_UNKNOWNS_CAP", default_value_t = 2_000)]
    pub unknowns_cap: usize,
}

impl Limits {
    /// Limits that cannot all hold for one request are refused before the service starts.
    pub fn check(&self) -> Result<(), String> {
        if self.max_in_flight_texts < self.max_texts {
            return Err(format!(
                "--max-in-flight-texts ({}) is below --max-texts ({}): a request of --max-texts texts \
                 could never be admitted; raise --max-in-flight-texts or lower --max-texts",
                self.max_in_flight_texts, self.max_texts
            ));
        }
        if self.max_texts == 0 {
            return Err("--max-texts is 0: no classify request could pass".into());
        }
        Ok(())
    }
}

impl Default for Limits {
    /// The flags' own defaults (written once, in the `#[arg]` attributes), env variables ignored.
    fn default() -> Self {
        clap_defaults()
    }
}
