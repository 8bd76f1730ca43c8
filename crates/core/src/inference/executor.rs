//! One executor per distinct graph: a dedicated thread owns the ONNX Runtime session
//! (`Session::run` needs `&mut self`) and runs batches of the jobs queued to it. Requests talk to
//! it through a bounded channel with a oneshot reply; when the queue is full they get 503.
//! A job whose requester has gone (timed out, disconnected: its reply receiver is dropped) is
//! skipped when its batch is collected, so an overloaded service does not spend CPU on answers
//! nobody will read.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError, TrySendError};
use std::time::{Duration, Instant};

use ort::session::Session;
use ort::value::{Tensor, TensorElementType, ValueType};
use tokio::sync::oneshot;

use super::runtime::{Spin, load_session, load_session_spinning};
use super::tokenize::Encoded;
use crate::config::RuntimeConfig;
use crate::error::lock;
use crate::linalg::Matrix;
use crate::{Error, Result};

pub const TOKEN_INPUTS: [&str; 3] = ["input_ids", "attention_mask", "token_type_ids"];

/// What a graph consumes, checked against its declared inputs when it is loaded.
#[derive(Debug, Clone, PartialEq)]
pub enum GraphRole {
    /// Token inputs (a subset of TOKEN_INPUTS, with input_ids and attention_mask) -> [batch, out].
    Tokens { inputs: Vec<String> },
    /// One float input [batch, dim] -> [batch, out].
    Embedding { input: String, dim: usize },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    Tokens,
    Embedding(usize),
}

pub enum Input {
    Tokens(Arc<Vec<Encoded>>),
    Embedding(Arc<Matrix>),
}

impl Input {
    fn rows(&self) -> usize {
        match self {
            Input::Tokens(t) => t.len(),
            Input::Embedding(m) => m.rows,
        }
    }
}

struct Job {
    input: Input,
    reply: oneshot::Sender<Result<Matrix>>,
}

pub struct Executor {
    pub sha256: String,
    pub path: PathBuf,
    pub role: GraphRole,
    pub out_dim: usize,
    pub provider: &'static str,
    /// Short label for metrics: the first 12 hex digits of the graph hash.
    pub label: String,
    /// The queue to the worker threads; None when the graph runs inline.
    tx: Option<SyncSender<Job>>,
    /// Inline graphs (heads, see `RuntimeConfig::inline_heads`): sessions the caller locks and runs.
    inline: Vec<std::sync::Mutex<Worker>>,
    next: AtomicUsize,
    depth: Arc<AtomicUsize>,
    /// Set when batching would change a text's result (see `probe`): texts then run one at a time.
    row_by_row: Arc<AtomicBool>,
    probed: std::sync::Once,
    stats: Arc<Stats>,
}

/// Counters of what an executor's threads did (read by tests and the benchmark harness).
#[derive(Debug, Default)]
pub struct Stats {
    /// Batches collected from the queue and run.
    pub batches: AtomicUsize,
    /// Texts (or embedding rows) in those batches.
    pub rows: AtomicUsize,
    /// The most rows one collected batch held.
    pub largest: AtomicUsize,
    /// Jobs dropped uncomputed because their requester had gone.
    pub skipped: AtomicUsize,
    /// Batches run on the solo session (a lone text with every core, `RuntimeConfig::solo_threads`).
    pub solo: AtomicUsize,
}

fn dims(vt: &ValueType) -> Option<(TensorElementType, Vec<i64>)> {
    Some((vt.tensor_type()?, vt.tensor_shape()?.iter().copied().collect()))
}

/// Check the graph's signature against what the bundle says it is.
fn signature(session: &Session, path: &Path, expect: Expect, out_dim: Option<usize>) -> Result<(GraphRole, usize)> {
    let bad = |r: String| Err(Error::bundle(path, r));
    let outs = session.outputs();
    let Some(out) = outs.first() else {
        return bad("graph has no outputs".into());
    };
    let Some((oty, oshape)) = dims(out.dtype()) else {
        return bad(format!("output {:?} is not a tensor", out.name()));
    };
    if oty != TensorElementType::Float32 || oshape.len() != 2 {
        return bad(format!("output {:?} must be float32 [batch, n], is {oty:?} {oshape:?}", out.name()));
    }
    let declared = oshape[1];
    let out_dim = match (out_dim, declared) {
        (Some(want), d) if d >= 0 && d as usize != want => {
            return bad(format!("output {:?} has {d} columns, expected {want}", out.name()));
        }
        (Some(want), _) => want,
        (None, d) if d > 0 => d as usize,
        (None, _) => return bad(format!("output {:?} has no fixed width", out.name())),
    };
    let ins = session.inputs();
    let role = match expect {
        Expect::Tokens => {
            let mut names = Vec::new();
            for i in ins {
                if !TOKEN_INPUTS.contains(&i.name()) {
                    return bad(format!("unexpected input {:?} (token graphs take {TOKEN_INPUTS:?})", i.name()));
                }
                match dims(i.dtype()) {
                    Some((TensorElementType::Int64, s)) if s.len() == 2 => names.push(i.name().to_string()),
                    other => {
                        return bad(format!("input {:?} must be int64 [batch, seq], is {other:?}", i.name()));
                    }
                }
            }
            for need in &TOKEN_INPUTS[..2] {
                if !names.iter().any(|n| n == need) {
                    return bad(format!("missing input {need:?}"));
                }
            }
            GraphRole::Tokens { inputs: names }
        }
        Expect::Embedding(dim) => {
            if ins.len() != 1 {
                return bad(format!("a head takes one embedding input, this graph has {}", ins.len()));
            }
            match dims(ins[0].dtype()) {
                Some((TensorElementType::Float32, s)) if s.len() == 2 && (s[1] < 0 || s[1] as usize == dim) => {
                    GraphRole::Embedding { input: ins[0].name().to_string(), dim }
                }
                other => {
                    return bad(format!("input {:?} must be float32 [batch, {dim}], is {other:?}", ins[0].name()));
                }
            }
        }
    };
    Ok((role, out_dim))
}

impl Executor {
    /// Load the graph (blocking: call from a blocking thread), check its signature, and start the
    /// thread that owns its session.
    /// `sessions` workers (each owning one session) share the queue.
    pub fn start(
        cfg: &RuntimeConfig,
        path: &Path,
        sha256: &str,
        expect: Expect,
        out_dim: Option<usize>,
        threads: usize,
        sessions: usize,
    ) -> Result<Arc<Executor>> {
        let mut loaded = (0..sessions.max(1)).map(|_| load_session(cfg, path, threads)).collect::<Result<Vec<_>>>()?;
        let (role, out_dim) = signature(&loaded[0].session, path, expect, out_dim)?;
        let provider = loaded[0].provider;
        let (tx, rx) = std::sync::mpsc::sync_channel::<Job>(cfg.queue_capacity.max(1));
        let rx = Arc::new(std::sync::Mutex::new(rx));
        let depth = Arc::new(AtomicUsize::new(0));
        let row_by_row = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(Stats::default());
        let label = sha256.chars().take(12).collect::<String>();
        let run_inline = cfg.inline_heads && matches!(role, GraphRole::Embedding { .. });
        // The solo session: only for token graphs served by several single-purpose sessions.
        let solo = if matches!(role, GraphRole::Tokens { .. }) && cfg.solo_threads() > 1 && loaded.len() > 1 {
            let spin = if cfg.solo_spin_us > 0 { Spin::WithinRuns(cfg.solo_spin_us) } else { Spin::Never };
            let l = load_session_spinning(cfg, path, cfg.solo_threads(), spin)?;
            Some(Arc::new(std::sync::Mutex::new(l.session)))
        } else {
            None
        };
        let running = Arc::new(AtomicUsize::new(0));
        let mut inline = Vec::new();
        let workers = loaded.len();
        for (i, l) in loaded.drain(..).enumerate() {
            let worker = Worker {
                session: l.session,
                solo: solo.clone(),
                running: running.clone(),
                shape: Shape { role: role.clone(), out_dim, label: label.clone(), row_by_row: row_by_row.clone() },
                max_batch: cfg.max_batch.max(1),
                max_wait: Duration::from_micros(cfg.max_wait_us),
                workers,
                depth: depth.clone(),
                stats: stats.clone(),
            };
            if run_inline {
                inline.push(std::sync::Mutex::new(worker));
                continue;
            }
            let rx = rx.clone();
            std::thread::Builder::new()
                .name(format!("exec-{label}-{i}"))
                .spawn(move || worker.run(&rx))
                .map_err(|e| Error::Internal(format!("cannot start executor thread: {e}")))?;
        }
        let solo_threads = if solo.is_some() { cfg.solo_threads() } else { 0 };
        tracing::info!(graph = %path.display(), provider, threads, sessions, solo_threads, inline = run_inline,
            "graph loaded");
        Ok(Arc::new(Executor {
            sha256: sha256.to_string(),
            path: path.to_path_buf(),
            role,
            out_dim,
            provider,
            label,
            tx: if run_inline { None } else { Some(tx) },
            inline,
            next: AtomicUsize::new(0),
            depth,
            row_by_row,
            stats,
            probed: std::sync::Once::new(),
        }))
    }

    /// Queue a job; the receiver resolves when its batch has run.
    pub fn submit(&self, input: Input) -> Result<oneshot::Receiver<Result<Matrix>>> {
        let (reply, rx) = oneshot::channel();
        let Some(tx) = &self.tx else {
            let _ = reply.send(self.run_inline(&input));
            return Ok(rx);
        };
        self.depth.fetch_add(1, Ordering::Relaxed);
        match tx.try_send(Job { input, reply }) {
            Ok(()) => {
                metrics::gauge!("moe_queue_depth", "graph" => self.label.clone())
                    .set(self.depth.load(Ordering::Relaxed) as f64);
                Ok(rx)
            }
            Err(e) => {
                self.depth.fetch_sub(1, Ordering::Relaxed);
                Err(match e {
                    TrySendError::Full(_) => Error::Overloaded(format!("graph {} queue is full", self.label)),
                    TrySendError::Disconnected(_) => Error::Internal(format!("graph {} stopped", self.label)),
                })
            }
        }
    }

    /// Run on the calling thread with the first free session (or wait for one): heads are a
    /// few microseconds of work, less than handing them to another thread and back.
    fn run_inline(&self, input: &Input) -> Result<Matrix> {
        let n = self.inline.len();
        let first = self.next.fetch_add(1, Ordering::Relaxed) % n;
        let free = (0..n).find_map(|i| self.inline[(first + i) % n].try_lock().ok());
        let mut worker = free.unwrap_or_else(|| lock(&self.inline[first]));
        let started = Instant::now();
        let rows = input.rows();
        let Worker { session, shape, .. } = &mut *worker;
        let out = shape.run_batch(session, &[input], rows);
        metrics::histogram!("moe_batch_size", "graph" => self.label.clone()).record(rows as f64);
        metrics::histogram!("moe_graph_run_seconds", "graph" => self.label.clone())
            .record(started.elapsed().as_secs_f64());
        out
    }

    /// For command-line tools outside an async runtime.
    pub fn run_blocking(&self, input: Input) -> Result<Matrix> {
        let rx = self.submit(input)?;
        rx.blocking_recv().map_err(|_| Error::Internal(format!("graph {} dropped the job", self.label)))?
    }

    /// A text's result must not depend on what it is batched with. Graphs with dynamic int8
    /// quantisation break that (activation scales are computed over the whole batch, padding
    /// included), so once per token graph two texts of different lengths are run together and
    /// alone; if the rows differ, the executor runs that graph one text at a time from then on.
    /// (Blocking: call outside the async runtime.)
    pub fn probe(&self, tokens: Vec<Encoded>) -> Result<()> {
        if !matches!(self.role, GraphRole::Tokens { .. }) || tokens.len() < 2 {
            return Ok(());
        }
        let mut result = Ok(());
        self.probed.call_once(|| {
            result = (|| {
                let together = self.run_blocking(Input::Tokens(Arc::new(tokens.clone())))?;
                let mut diff = 0f32;
                for (i, e) in tokens.iter().enumerate() {
                    let alone = self.run_blocking(Input::Tokens(Arc::new(vec![e.clone()])))?;
                    diff = together.row(i).iter().zip(alone.row(0)).map(|(a, b)| (a - b).abs()).fold(diff, f32::max);
                }
                if diff > 1e-4 {
                    tracing::info!(graph = %self.path.display(), max_diff = diff,
                        "outputs depend on batch composition (dynamic quantisation?): running one text at a time");
                    self.row_by_row.store(true, Ordering::Relaxed);
                }
                Ok(())
            })();
        });
        result
    }

    /// Whether this graph runs on the caller's thread (see `RuntimeConfig::inline_heads`).
    pub fn inline(&self) -> bool {
        self.tx.is_none()
    }

    pub fn row_by_row(&self) -> bool {
        self.row_by_row.load(Ordering::Relaxed)
    }

    /// What this executor's threads have done so far.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Jobs queued and not yet taken by a worker (0 for inline graphs).
    pub fn queue_depth(&self) -> usize {
        self.depth.load(Ordering::Relaxed)
    }
}

struct Worker {
    session: Session,
    /// The executor's shared solo session (more intra-op threads), if any.
    solo: Option<Arc<std::sync::Mutex<Session>>>,
    /// Workers of this executor running a batch now.
    running: Arc<AtomicUsize>,
    shape: Shape,
    max_batch: usize,
    max_wait: Duration,
    /// Workers sharing this executor's queue.
    workers: usize,
    depth: Arc<AtomicUsize>,
    stats: Arc<Stats>,
}

/// What a graph takes and gives, and how to run it on any of its sessions.
struct Shape {
    role: GraphRole,
    out_dim: usize,
    label: String,
    row_by_row: Arc<AtomicBool>,
}

impl Worker {
    /// Takes the next batch from the shared queue (holding its lock only while collecting). Jobs
    /// whose requester has gone are dropped here, uncomputed.
    fn next_batch(&self, rx: &std::sync::Mutex<Receiver<Job>>) -> Option<(Vec<Job>, usize)> {
        let rx = lock(rx);
        let mut jobs = Vec::new();
        let mut rows = 0;
        let mut deadline = None;
        let mut cap = self.max_batch;
        while rows < cap {
            let next = if jobs.is_empty() {
                Some(rx.recv().ok()?)
            } else {
                match rx.try_recv() {
                    Ok(j) => Some(j),
                    Err(TryRecvError::Disconnected) => None,
                    Err(TryRecvError::Empty) => {
                        let now = Instant::now();
                        let until = *deadline.get_or_insert(now + self.max_wait);
                        if now >= until { None } else { rx.recv_timeout(until - now).ok() }
                    }
                }
            };
            let Some(j) = next else { break };
            let queued = self.depth.fetch_sub(1, Ordering::Relaxed);
            if jobs.is_empty() {
                cap = fair_share(self.max_batch, self.max_wait, queued, self.workers);
            }
            if j.reply.is_closed() {
                self.stats.skipped.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("moe_jobs_skipped_total", "graph" => self.shape.label.clone()).increment(1);
                continue;
            }
            rows += j.input.rows();
            jobs.push(j);
            // A graph run one text at a time gains nothing from a batch, and every job of a batch
            // waits for the last: take one job, so each reply goes out when its rows are done and
            // the other workers take the next ones (docs/BENCHMARKS.md, ab-tail.jsonl).
            if self.shape.row_by_row.load(Ordering::Relaxed) {
                break;
            }
        }
        Some((jobs, rows))
    }

    /// Runs until every sender is gone (the executor was dropped); queued jobs are finished first.
    fn run(mut self, rx: &std::sync::Mutex<Receiver<Job>>) {
        while let Some((jobs, rows)) = self.next_batch(rx) {
            let started = Instant::now();
            let inputs: Vec<&Input> = jobs.iter().map(|j| &j.input).collect();
            let result = self.run_jobs(&inputs, rows);
            let graph = self.shape.label.clone();
            self.stats.batches.fetch_add(1, Ordering::Relaxed);
            self.stats.rows.fetch_add(rows, Ordering::Relaxed);
            self.stats.largest.fetch_max(rows, Ordering::Relaxed);
            metrics::histogram!("moe_batch_size", "graph" => graph.clone()).record(rows as f64);
            metrics::histogram!("moe_graph_run_seconds", "graph" => graph.clone())
                .record(started.elapsed().as_secs_f64());
            metrics::gauge!("moe_queue_depth", "graph" => graph).set(self.depth.load(Ordering::Relaxed) as f64);
            match result {
                Ok(out) => {
                    let mut offset = 0;
                    for job in jobs {
                        let n = job.input.rows();
                        let data = out.data[offset * out.cols..(offset + n) * out.cols].to_vec();
                        offset += n;
                        let _ = job.reply.send(Ok(Matrix { rows: n, cols: out.cols, data }));
                    }
                }
                Err(e) => {
                    for job in jobs {
                        let _ = job.reply.send(Err(e.share()));
                    }
                }
            }
        }
        // The executor is gone: free the session here, then hand the freed heap back to the OS.
        drop(self);
        release_freed_memory();
    }

    /// A lone text (one row, nothing queued, no other run in progress) runs on the solo session
    /// when there is one and it is free; everything else on this worker's own session.
    fn run_jobs(&mut self, jobs: &[&Input], rows: usize) -> Result<Matrix> {
        let others = self.running.fetch_add(1, Ordering::AcqRel);
        let lone = rows == 1 && others == 0 && self.depth.load(Ordering::Relaxed) == 0;
        let solo = if lone { self.solo.as_ref().and_then(|s| s.try_lock().ok()) } else { None };
        let out = match solo {
            Some(mut session) => {
                self.stats.solo.fetch_add(1, Ordering::Relaxed);
                self.shape.run_batch(&mut session, jobs, rows)
            }
            None => self.shape.run_batch(&mut self.session, jobs, rows),
        };
        self.running.fetch_sub(1, Ordering::AcqRel);
        out
    }
}

/// The most rows a worker takes when it finds `queued` jobs (its first one included) and shares the
/// queue with `workers - 1` others: its share of them, so one worker does not run a long batch while
/// another idles with nothing left to take (per-row trunk, 2 cores, concurrency 16: 2,044 against
/// 1,865 requests/s and p99 13.6 against 18.3 ms taking all, docs/BENCHMARKS.md, ab-fair.jsonl).
/// An executor told to wait for more work (`max_wait` > 0) fills batches up to `max_batch` as asked.
fn fair_share(max_batch: usize, max_wait: Duration, queued: usize, workers: usize) -> usize {
    if workers <= 1 || !max_wait.is_zero() {
        return max_batch;
    }
    queued.div_ceil(workers).clamp(1, max_batch)
}

impl Shape {
    fn run_batch(&self, session: &mut Session, jobs: &[&Input], rows: usize) -> Result<Matrix> {
        match self.role.clone() {
            GraphRole::Tokens { inputs } => {
                let mut all: Vec<&Encoded> = Vec::with_capacity(rows);
                for j in jobs {
                    let Input::Tokens(t) = j else {
                        return Err(Error::Internal("embedding sent to a token graph".into()));
                    };
                    all.extend(t.iter());
                }
                if !self.row_by_row.load(Ordering::Relaxed) {
                    return self.run_tokens(session, &inputs, &all);
                }
                // Batch-dependent graph: one text per run, no padding (see Executor::probe).
                let mut data = Vec::with_capacity(rows * self.out_dim);
                for e in all {
                    data.extend(self.run_tokens(session, &inputs, &[e])?.data);
                }
                Ok(Matrix { rows, cols: self.out_dim, data })
            }
            GraphRole::Embedding { input, dim } => {
                let mut buf = Vec::with_capacity(rows * dim);
                for j in jobs {
                    let Input::Embedding(m) = j else { return Err(Error::Internal("tokens sent to a head".into())) };
                    if m.cols != dim {
                        return Err(Error::Internal(format!("embedding has {} columns, head takes {dim}", m.cols)));
                    }
                    buf.extend_from_slice(&m.data);
                }
                let t = Tensor::from_array(([rows, dim], buf)).map_err(|e| self.ort_error("input tensor", e))?;
                let out = session
                    .run(vec![(input, ort::session::SessionInputValue::from(t))])
                    .map_err(|e| Error::ort(format!("running graph {}", self.label), e))?;
                extract(&out, rows, self.out_dim)
            }
        }
    }

    /// One session run over these texts, padded to the longest.
    fn ort_error(&self, what: &str, e: ort::Error) -> Error {
        Error::ort(format!("graph {}: {what}", self.label), e)
    }

    fn run_tokens(&self, session: &mut Session, inputs: &[String], rows: &[&Encoded]) -> Result<Matrix> {
        let seq = rows.iter().map(|e| e.ids.len()).max().unwrap_or(1).max(1);
        let mut feeds = Vec::with_capacity(inputs.len());
        for name in inputs {
            let mut buf = vec![0i64; rows.len() * seq];
            for (r, e) in rows.iter().enumerate() {
                let src = match name.as_str() {
                    "input_ids" => &e.ids,
                    "attention_mask" => &e.mask,
                    _ => &e.type_ids,
                };
                buf[r * seq..r * seq + src.len()].copy_from_slice(src);
            }
            let t = Tensor::from_array(([rows.len(), seq], buf)).map_err(|e| self.ort_error("input tensor", e))?;
            feeds.push((name.clone(), ort::session::SessionInputValue::from(t)));
        }
        let out = session.run(feeds).map_err(|e| Error::ort(format!("running graph {}", self.label), e))?;
        extract(&out, rows.len(), self.out_dim)
    }
}

/// Return freed heap pages to the OS. A dropped ONNX Runtime session frees many large blocks that
/// glibc keeps in its arenas; without this, a soak with a shadow on another trunk attached and
/// dropped every 20 s grew resident memory by ~55 MB a minute (docs/bench/soak-before-trim.jsonl).
pub fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks glibc's own arenas; it takes no pointers from us.
    unsafe {
        libc::malloc_trim(0);
    }
}

fn extract(out: &ort::session::SessionOutputs<'_>, rows: usize, out_dim: usize) -> Result<Matrix> {
    let (shape, data) = out[0].try_extract_tensor::<f32>().map_err(|e| Error::ort("reading the graph output", e))?;
    if shape.len() != 2 || shape[0] as usize != rows || shape[1] as usize != out_dim {
        return Err(Error::Internal(format!("graph returned shape {:?}, expected [{rows}, {out_dim}]", &shape[..])));
    }
    Ok(Matrix { rows, cols: out_dim, data: data.to_vec() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_worker_takes_its_share_of_what_is_queued() {
        let now = Duration::ZERO;
        // Two workers, 14 jobs queued: 7 each; an odd count rounds up; a lone job is taken.
        assert_eq!(fair_share(64, now, 14, 2), 7);
        assert_eq!(fair_share(64, now, 15, 2), 8);
        assert_eq!(fair_share(64, now, 1, 2), 1);
        // Never above the largest batch; one worker takes what the largest batch allows.
        assert_eq!(fair_share(4, now, 200, 2), 4);
        assert_eq!(fair_share(64, now, 14, 1), 64);
        // Told to wait for more work: batches fill up to the largest batch.
        assert_eq!(fair_share(64, Duration::from_millis(20), 1, 2), 64);
    }
}
