//! Feedback (`POST /feedback`): a text with its true label, scored by the set that serves now and
//! kept in a bounded, durable log (`<state>/feedback.jsonl`), from which each active expert gets
//! live precision, recall, AUC and EER (`GET /experts/{class}`, `/metrics`), and which a training
//! job may use as extra examples when its request says so (`"use_feedback": true`).
//!
//! Invariants:
//! * An entry is answered only after it is on disk. One writer thread owns the file: it appends
//!   what is queued, fsyncs once for the lot, publishes the next state, then answers; nobody holds
//!   a lock across the fsync, the recompute or a compaction.
//! * Readers (`GET /experts`, `/feedback`) take no lock: the writer publishes a new immutable state.
//! * At most `cap` entries are kept: past `compact_at(cap)` lines (a tenth over the cap) the file is
//!   rewritten (temp file, fsync, rename) with the newest `cap`, so the file stays within 10 % of
//!   the cap (one rewrite per cap/10 appends) and a crash leaves either file.
//! * Live metrics of an expert count only the entries scored by that expert's version, so a swap
//!   starts its numbers afresh instead of mixing two models.

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, OnceLock};

use arc_swap::ArcSwap;
use serde::{Deserialize, Serialize};

use moe_core::clock::now_rfc3339;
use moe_core::files::{append_synced, write_atomic};
use moe_core::service::{Core, TextResult};
use moe_core::stats::roc::binary_report;
use moe_core::{Error, Result};

/// One expert's view of one feedback text.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Scored {
    pub class: String,
    pub version: String,
    pub probability: f32,
    pub passed: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Entry {
    pub at: String,
    pub text: String,
    pub label: String,
    /// The set's answer when the feedback arrived (None: it abstained).
    pub predicted: Option<String>,
    pub generation: u64,
    pub experts: Vec<Scored>,
}

/// Live numbers of one expert version on the feedback it scored.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct LiveMetrics {
    pub version: String,
    pub texts: usize,
    pub positives: usize,
    /// At the expert's threshold (None when it passed nothing / there were no positives).
    pub precision: Option<f64>,
    pub recall: Option<f64>,
    /// Threshold-free, once both labels were seen.
    pub auc: Option<f64>,
    pub eer: Option<f64>,
}

pub struct FeedbackLog {
    path: PathBuf,
    cap: usize,
    /// What readers see: replaced whole by the writer after each append, so `GET /experts` and
    /// `/feedback` read it without waiting for an fsync or a recompute.
    published: Arc<ArcSwap<State>>,
    /// Lines already in the file when it was opened (the writer counts on from there).
    lines_at_open: usize,
    /// The queue to the writer thread, started with the first entry.
    writer: OnceLock<Sender<Queued>>,
}

/// An entry waiting for the writer, and where its answer goes (after the fsync).
type Queued = (Entry, tokio::sync::oneshot::Sender<Result<()>>);

/// The entries kept and, per (class, version) that scored any of them, its live metrics: built by
/// `append` (on a blocking thread) so that reading them is a lookup. Entries are shared between
/// successive states, so the next state costs a pointer copy per entry, not a deep copy.
#[derive(Default, Clone)]
struct State {
    entries: VecDeque<Arc<Entry>>,
    live: HashMap<(String, String), LiveMetrics>,
}

impl State {
    /// Recompute the live metrics of these (class, version) pairs from the entries.
    fn refresh<'a>(&mut self, pairs: impl IntoIterator<Item = (&'a str, &'a str)>) {
        for (class, version) in pairs {
            let m = compute(&self.entries, class, version);
            if m.texts == 0 {
                self.live.remove(&(class.to_string(), version.to_string()));
            } else {
                self.live.insert((class.to_string(), version.to_string()), m);
            }
        }
    }
}

impl FeedbackLog {
    /// Open (or start) the log in the state folder; unreadable lines are skipped with a warning.
    pub fn open(state: &std::path::Path, cap: usize) -> Arc<FeedbackLog> {
        let path = state.join("feedback.jsonl");
        let mut st = State::default();
        let mut lines = 0;
        if let Ok(text) = std::fs::read_to_string(&path) {
            for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
                lines += 1;
                match serde_json::from_str::<Entry>(line) {
                    Ok(e) => st.entries.push_back(Arc::new(e)),
                    Err(e) => {
                        tracing::warn!(file = %path.display(), line = i + 1, error = %e, "skipping a bad feedback line")
                    }
                }
            }
        }
        while st.entries.len() > cap.max(1) {
            st.entries.pop_front();
        }
        let pairs: HashSet<(String, String)> =
            st.entries.iter().flat_map(|e| e.experts.iter().map(|s| (s.class.clone(), s.version.clone()))).collect();
        st.refresh(pairs.iter().map(|(c, v)| (c.as_str(), v.as_str())));
        Arc::new(FeedbackLog {
            path,
            cap: cap.max(1),
            published: Arc::new(ArcSwap::from_pointee(st)),
            lines_at_open: lines,
            writer: OnceLock::new(),
        })
    }

    pub fn len(&self) -> usize {
        self.published.load().entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Score the text with the current set (each expert's version is the one that answered),
    /// append it durably and refresh the live metrics and gauges, off the async workers.
    pub async fn record(self: &Arc<Self>, core: &Arc<Core>, text: String, label: String) -> Result<Entry> {
        let (results, generation) = core.classify(vec![text.clone()]).await?;
        let r: &TextResult = results.first().ok_or_else(|| Error::Internal("classify returned nothing".into()))?;
        let experts = r
            .experts
            .iter()
            .map(|e| Scored {
                class: r.name(e).class.clone(),
                version: r.name(e).version.clone(),
                probability: e.probability,
                passed: e.passed,
            })
            .collect();
        let entry = Entry { at: now_rfc3339(), text, label, predicted: r.label.clone(), generation, experts };
        self.append(entry.clone())?.await.map_err(|_| writer_gone())??;
        Ok(entry)
    }

    /// Queue one entry for the writer thread (started on first use); the answer comes after its
    /// fsync.
    fn append(&self, entry: Entry) -> Result<tokio::sync::oneshot::Receiver<Result<()>>> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let writer = match self.writer.get() {
            Some(w) => w,
            None => {
                let (queue, jobs) = channel();
                let w = Writer {
                    path: self.path.clone(),
                    cap: self.cap,
                    lines: self.lines_at_open,
                    published: self.published.clone(),
                };
                std::thread::Builder::new()
                    .name("feedback".into())
                    .spawn(move || w.run(jobs))
                    .map_err(|e| Error::Internal(format!("cannot start the feedback writer: {e}")))?;
                // A racing first call may have set it: its thread then gets no work and ends.
                self.writer.get_or_init(|| queue)
            }
        };
        writer.send((entry, tx)).map_err(|_| writer_gone())?;
        Ok(rx)
    }

    /// Live metrics of `class`'s expert at `version` over the entries it scored.
    pub fn metrics(&self, class: &str, version: &str) -> LiveMetrics {
        self.published
            .load()
            .live
            .get(&(class.to_string(), version.to_string()))
            .cloned()
            .unwrap_or_else(|| compute(&VecDeque::new(), class, version))
    }

    /// Texts with their labels, for a training job that asked for them.
    pub fn labelled(&self) -> Vec<(String, String)> {
        self.published.load().entries.iter().map(|e| (e.text.clone(), e.label.clone())).collect()
    }
}

fn writer_gone() -> Error {
    Error::Internal("the feedback writer stopped".into())
}

/// The one writer of the log file (its own thread, for the life of the log).
struct Writer {
    path: PathBuf,
    cap: usize,
    /// Lines in the file (entries kept + those past the cap not yet compacted away).
    lines: usize,
    published: Arc<ArcSwap<State>>,
}

impl Writer {
    /// Until the log is dropped: take every queued entry, append them, fsync once, publish, answer.
    fn run(mut self, jobs: Receiver<Queued>) {
        while let Ok(first) = jobs.recv() {
            let (entries, answers): (Vec<Entry>, Vec<_>) = std::iter::once(first).chain(jobs.try_iter()).unzip();
            let written = self.write(&entries);
            if written.is_ok() {
                self.publish(entries);
            }
            for answer in answers {
                let _ = answer.send(written.as_ref().map(|_| ()).map_err(Error::share));
            }
        }
    }

    /// Append the lines and fsync them.
    fn write(&mut self, entries: &[Entry]) -> Result<()> {
        let text: String = entries.iter().map(|e| serde_json::to_string(e).expect("entry serializes") + "\n").collect();
        append_synced(&self.path, text.as_bytes())?;
        self.lines += entries.len();
        Ok(())
    }

    /// The next state: these entries in, the oldest past the cap out, the live metrics of the
    /// versions that scored either refreshed (and the gauges of the active ones); then compact the
    /// file past `compact_at(cap)` (a failed compaction is retried on the next append: the lines are
    /// safe).
    fn publish(&mut self, entries: Vec<Entry>) {
        let mut st = State::clone(&self.published.load());
        // The versions that answered these entries: the active ones, whose gauges /metrics shows.
        let active: HashSet<(String, String)> =
            entries.iter().flat_map(|e| e.experts.iter().map(|s| (s.class.clone(), s.version.clone()))).collect();
        let mut pairs = active.clone();
        st.entries.extend(entries.into_iter().map(Arc::new));
        while st.entries.len() > self.cap {
            if let Some(old) = st.entries.pop_front() {
                pairs.extend(old.experts.iter().map(|s| (s.class.clone(), s.version.clone())));
            }
        }
        st.refresh(pairs.iter().map(|(c, v)| (c.as_str(), v.as_str())));
        for key in &active {
            export_gauges(&key.0, st.live.get(key));
        }
        let st = Arc::new(st);
        self.published.store(st.clone());
        if self.lines > compact_at(self.cap) {
            let text: String =
                st.entries.iter().map(|e| serde_json::to_string(e.as_ref()).expect("json") + "\n").collect();
            match write_atomic(&self.path, text.as_bytes()) {
                Ok(()) => self.lines = st.entries.len(),
                Err(e) => tracing::warn!(error = %e, "feedback log compaction failed; retrying on the next append"),
            }
        }
    }
}

/// Lines past which the file is compacted to the newest `cap`: a tenth over the cap, at least one.
fn compact_at(cap: usize) -> usize {
    cap + cap.div_ceil(10).max(1)
}

/// Live metrics of `class`'s expert at `version` over the entries it scored.
fn compute(entries: &VecDeque<Arc<Entry>>, class: &str, version: &str) -> LiveMetrics {
    let mut scores = Vec::new();
    let mut labels = Vec::new();
    let mut passed = Vec::new();
    for e in entries {
        if let Some(s) = e.experts.iter().find(|s| s.class == class && s.version == version) {
            scores.push(s.probability);
            labels.push(e.label == class);
            passed.push(s.passed);
        }
    }
    let positives = labels.iter().filter(|&&y| y).count();
    let tp = labels.iter().zip(&passed).filter(|(y, p)| **y && **p).count();
    let predicted = passed.iter().filter(|&&p| p).count();
    let both = positives > 0 && positives < labels.len();
    let report = both.then(|| binary_report(&scores, &labels));
    LiveMetrics {
        version: version.to_string(),
        texts: labels.len(),
        positives,
        precision: (predicted > 0).then(|| tp as f64 / predicted as f64),
        recall: (positives > 0).then(|| tp as f64 / positives as f64),
        auc: report.as_ref().map(|r| r.auc),
        eer: report.as_ref().map(|r| r.eer),
    }
}

/// `moe_feedback_*{class}` for the class's active expert version.
fn export_gauges(class: &str, m: Option<&LiveMetrics>) {
    let Some(m) = m else { return };
    metrics::gauge!("moe_feedback_texts", "class" => class.to_string()).set(m.texts as f64);
    for (name, v) in [("precision", m.precision), ("recall", m.recall), ("eer", m.eer)] {
        if let Some(v) = v {
            metrics::gauge!(format!("moe_feedback_{name}"), "class" => class.to_string()).set(v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(label: &str, p: f32, passed: bool) -> Entry {
        Entry {
            at: now_rfc3339(),
            text: format!("{label} {p}"),
            label: label.into(),
            predicted: None,
            generation: 1,
            experts: vec![Scored { class: "A".into(), version: "v1".into(), probability: p, passed }],
        }
    }

    #[test]
    fn metrics_count_one_version_and_the_log_stays_bounded_on_disk() {
        let dir = std::env::temp_dir().join(format!("moe-feedback-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let log = FeedbackLog::open(&dir, 3);
        let append = |e: Entry| log.append(e).unwrap().blocking_recv().unwrap().unwrap();
        for e in [entry("A", 0.9, true), entry("B", 0.8, true), entry("A", 0.2, false), entry("B", 0.1, false)] {
            append(e);
        }
        assert_eq!(log.len(), 3, "the oldest entry is dropped past the cap");
        let m = log.metrics("A", "v1");
        assert_eq!((m.texts, m.positives), (3, 1));
        assert_eq!((m.precision, m.recall), (Some(0.0), Some(0.0)));
        assert_eq!(log.metrics("A", "v2").texts, 0, "another version starts afresh");
        for i in 0..40 {
            append(entry("A", 0.7, true));
            let lines = std::fs::read_to_string(dir.join("feedback.jsonl")).unwrap().lines().count();
            assert!(lines <= compact_at(3), "{lines} lines after {} appends, cap 3", i + 5);
        }
        assert_eq!(compact_at(1_000), 1_100, "the probe's cap: at most 10 % over it on disk");
        let reopened = FeedbackLog::open(&dir, 3);
        assert_eq!(reopened.len(), 3, "it survives a restart");
        assert_eq!(reopened.metrics("A", "v1"), log.metrics("A", "v1"));
    }
}
