//! Unknowns: the texts the service declined, kept so that what no expert knows can become a class.
//! `<state>/unknowns.jsonl` holds each distinct declined text once (how often, first and last
//! seen, the latest reason and best guess) with its embedding on the trunk most heads of the set
//! run on; `GET /unknowns` groups them on those embeddings (`stats::groups`, densest first) and
//! `POST /unknowns/{group}/teach` trains a group as a new class through the online trainer.
//!
//! Invariants:
//! * A classify never waits for this: its declined texts are queued to the writer thread (at most
//!   `QUEUE` waiting; past that they are dropped and counted in `moe_unknowns_dropped_total`). The
//!   writer gathers what arrives within `BATCH_WINDOW` of a batch's first sighting, appends it and
//!   fsyncs once, so a crash loses at most the batch in flight.
//! * Bounded: at most `cap` distinct texts (the least recently seen go first). A text's first
//!   sighting (or one with a new embedding) writes its whole state; a later one a short `again`
//!   line (counts, last seen, reason, best guess: ~150 bytes where a 384-float embedding takes 3
//!   KB; with a full line and an fsync per sighting the store cost a 1,000-expert server 7-14 % of
//!   its requests/s under out-of-scope load, docs/BENCHMARKS.md). Once the file is twice what a
//!   rewrite would hold (at least `COMPACT_FLOOR` bytes) it is rewritten whole (temp file, fsync,
//!   rename), like the feedback log. Cap 0 keeps nothing.
//! * Readers take no lock: the writer publishes an immutable snapshot after each batch.
//! * Texts taught as a class leave the store (a `taught` line) once the class is installed.
//! * Only embeddings of one trunk are grouped together: the trunk the served set's heads run on.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, OnceLock};

use arc_swap::ArcSwap;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::jobs::{Job, Jobs};
use super::train::{Mode, TrainRequest, start_then};
use moe_core::clock::now_rfc3339;
use moe_core::files::{append_synced, write_atomic};
use moe_core::service::{Core, TextResult};
use moe_core::stats::groups::communities;
use moe_core::{Error, Result};

/// Cosine similarity at which two declined texts are neighbours (MiniLM trunk). Chosen on
/// CLINC150 val (held-out intents + out-of-scope queries): docs/TRAINING.md.
pub const DEFAULT_SIMILARITY: f32 = 0.65;
/// Fewest texts in a group (the online trainer needs 5 positives).
pub const DEFAULT_MIN_SIZE: usize = 5;
/// Texts shown per group.
pub const DEFAULT_EXAMPLES: usize = 5;
/// Declined texts waiting for the writer before more are dropped.
pub const QUEUE: usize = 4096;
/// How long the writer gathers sightings into one append and fsync.
pub const BATCH_WINDOW: std::time::Duration = std::time::Duration::from_millis(25);
/// The file is not compacted below this size (so a few kept texts are not rewritten every batch).
pub const COMPACT_FLOOR: u64 = 64 * 1024;

/// One distinct declined text.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Unknown {
    /// Order of first sighting (a group's id is its centre's).
    pub id: u64,
    pub text: String,
    pub first_seen: String,
    pub last_seen: String,
    /// Times it was declined.
    pub count: u64,
    /// The latest reason (`no_expert_passed`, `out_of_scope`).
    pub reason: String,
    /// The latest best guess.
    pub best_guess: String,
    /// The trunk of the embedding.
    pub trunk: Option<String>,
    /// Little-endian f32s in hex.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "hex_f32")]
    pub embedding: Option<Vec<f32>>,
}

/// A line of the log: a text's state after a sighting, or texts taught as a class.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum Line {
    Seen(Unknown),
    /// A later sighting of kept text `id` on the same trunk, with the same embedding.
    Again {
        id: u64,
        last_seen: String,
        count: u64,
        reason: String,
        best_guess: String,
    },
    Taught {
        ids: Vec<u64>,
        class: String,
        at: String,
    },
}

/// What the writer is asked to do.
enum Msg {
    Seen(Sighting),
    Taught { ids: Vec<u64>, class: String, done: tokio::sync::oneshot::Sender<Result<usize>> },
}

/// One declined text as the classify path saw it.
struct Sighting {
    text: String,
    reason: String,
    best_guess: String,
    trunk: Option<String>,
    embedding: Option<Vec<f32>>,
}

/// How `GET /unknowns` groups (validated by the HTTP layer).
#[derive(Debug, Clone, Copy)]
pub struct GroupParams {
    pub similarity: f32,
    pub min_size: usize,
    pub examples: usize,
}

impl Default for GroupParams {
    fn default() -> Self {
        GroupParams { similarity: DEFAULT_SIMILARITY, min_size: DEFAULT_MIN_SIZE, examples: DEFAULT_EXAMPLES }
    }
}

/// `GET /unknowns`.
#[derive(Debug, Serialize)]
pub struct Listing {
    /// Distinct declined texts kept.
    pub kept: usize,
    /// Times the kept texts were declined.
    pub seen: u64,
    /// The trunk whose embeddings were grouped (the one the set's heads run on).
    pub trunk: Option<String>,
    /// Kept texts embedded on another trunk (before a swap) or on none: not grouped.
    pub not_comparable: usize,
    pub ungrouped: usize,
    pub similarity: f32,
    pub min_size: usize,
    pub groups: Vec<GroupView>,
}

/// One candidate class.
#[derive(Debug, Serialize)]
pub struct GroupView {
    /// `g<id of its centre text>`: what `POST /unknowns/{group}/teach` names.
    pub id: String,
    /// Distinct texts.
    pub size: usize,
    /// Times its texts were declined.
    pub seen: u64,
    /// Mean cosine similarity of its texts to the centre.
    pub cohesion: f32,
    pub first_seen: String,
    pub last_seen: String,
    /// The class the set guessed most often for its texts, with how many.
    pub best_guess: String,
    pub best_guess_texts: usize,
    /// Texts by the reason they were declined.
    pub reasons: BTreeMap<String, usize>,
    /// The centre first, then the texts closest to it.
    pub examples: Vec<String>,
}

pub struct Unknowns {
    path: PathBuf,
    cap: usize,
    /// Kept texts by id, replaced whole by the writer after each batch.
    published: Arc<ArcSwap<Vec<Arc<Unknown>>>>,
    /// The file's size when opened (the writer's compaction starts from it).
    bytes_at_open: u64,
    next_id: u64,
    queued: Arc<AtomicUsize>,
    writer: OnceLock<Sender<Msg>>,
}

impl Unknowns {
    /// Open (or start) the store in the state folder; unreadable lines are skipped with a warning.
    pub fn open(state: &std::path::Path, cap: usize) -> Arc<Unknowns> {
        let path = state.join("unknowns.jsonl");
        let mut kept: BTreeMap<u64, Arc<Unknown>> = BTreeMap::new();
        let mut bytes = 0;
        if let Ok(text) = std::fs::read_to_string(&path) {
            bytes = text.len() as u64;
            for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
                match serde_json::from_str::<Line>(line) {
                    Ok(Line::Seen(u)) => {
                        kept.insert(u.id, Arc::new(u));
                    }
                    Ok(Line::Again { id, last_seen, count, reason, best_guess }) => {
                        if let Some(u) = kept.get_mut(&id) {
                            *u = Arc::new(Unknown { last_seen, count, reason, best_guess, ..Unknown::clone(u) });
                        }
                    }
                    Ok(Line::Taught { ids, .. }) => kept.retain(|id, _| !ids.contains(id)),
                    Err(e) => {
                        tracing::warn!(file = %path.display(), line = i + 1, error = %e, "skipping a bad unknowns line")
                    }
                }
            }
        }
        let next_id = kept.keys().next_back().map_or(1, |k| k + 1);
        let mut kept: Vec<Arc<Unknown>> = kept.into_values().collect();
        evict(&mut kept, cap);
        metrics::gauge!("moe_unknowns_kept").set(kept.len() as f64);
        Arc::new(Unknowns {
            path,
            cap,
            published: Arc::new(ArcSwap::from_pointee(kept)),
            bytes_at_open: bytes,
            next_id,
            queued: Arc::new(AtomicUsize::new(0)),
            writer: OnceLock::new(),
        })
    }

    /// The kept texts, by id.
    pub fn kept(&self) -> Arc<Vec<Arc<Unknown>>> {
        self.published.load_full()
    }

    /// Queue the declined texts of a classify (never waits; see the module invariants).
    pub fn observe(&self, results: &[TextResult]) {
        if self.cap == 0 {
            return;
        }
        for (r, d) in results.iter().filter_map(|r| Some((r, r.declined.as_ref()?))) {
            if self.queued.fetch_add(1, Ordering::SeqCst) >= QUEUE {
                self.queued.fetch_sub(1, Ordering::SeqCst);
                metrics::counter!("moe_unknowns_dropped_total").increment(1);
                continue;
            }
            let msg = Msg::Seen(Sighting {
                text: d.text.clone(),
                reason: r.reason.map_or("no_expert_passed", |x| x.name()).to_string(),
                best_guess: r.best_guess.clone(),
                trunk: d.embedding.as_ref().map(|e| e.trunk.clone()),
                embedding: d.embedding.as_ref().map(|e| e.vector.clone()),
            });
            if self.send(msg).is_err() {
                self.queued.fetch_sub(1, Ordering::SeqCst);
                metrics::counter!("moe_unknowns_dropped_total").increment(1);
            }
        }
    }

    /// Remove taught texts (answered once the `taught` line is on disk): how many were kept.
    pub async fn forget(&self, ids: Vec<u64>, class: String) -> Result<usize> {
        let (done, rx) = tokio::sync::oneshot::channel();
        self.send(Msg::Taught { ids, class, done })?;
        rx.await.map_err(|_| writer_gone())?
    }

    fn send(&self, msg: Msg) -> Result<()> {
        let writer = self.writer.get_or_init(|| {
            let (tx, rx) = channel();
            let w = Writer {
                path: self.path.clone(),
                cap: self.cap,
                bytes: self.bytes_at_open,
                compacted: 0,
                next_id: self.next_id,
                published: self.published.clone(),
                queued: self.queued.clone(),
            };
            if let Err(e) = std::thread::Builder::new().name("unknowns".into()).spawn(move || w.run(rx)) {
                tracing::error!(error = %e, "cannot start the unknowns writer: declined texts are not kept");
            }
            tx
        });
        writer.send(msg).map_err(|_| writer_gone())
    }

    /// The kept texts grouped on `trunk`'s embeddings (blocking: a matrix product over them).
    pub fn group(&self, trunk: Option<&str>, p: GroupParams) -> (Listing, Vec<Vec<u64>>) {
        let kept = self.kept();
        let dim = kept_dim(&kept, trunk);
        let comparable: Vec<&Arc<Unknown>> = kept
            .iter()
            .filter(|u| trunk.is_some() && u.trunk.as_deref() == trunk && u.embedding.is_some())
            .filter(|u| u.embedding.as_ref().map(Vec::len) == dim)
            .collect();
        let dim = comparable.first().and_then(|u| u.embedding.as_ref()).map_or(0, Vec::len);
        let x: Vec<f32> = comparable.iter().flat_map(|u| u.embedding.iter().flatten().copied()).collect();
        let found = communities(&x, dim, p.similarity, p.min_size);
        let mut members = Vec::with_capacity(found.len());
        let groups: Vec<GroupView> = found
            .iter()
            .map(|g| {
                let texts: Vec<&Unknown> = g.members.iter().map(|&i| comparable[i].as_ref()).collect();
                members.push(texts.iter().map(|u| u.id).collect());
                view(&texts, g.cohesion(), p.examples)
            })
            .collect();
        let grouped: usize = groups.iter().map(|g| g.size).sum();
        let listing = Listing {
            kept: kept.len(),
            seen: kept.iter().map(|u| u.count).sum(),
            trunk: trunk.map(str::to_string),
            not_comparable: kept.len() - comparable.len(),
            ungrouped: comparable.len() - grouped,
            similarity: p.similarity,
            min_size: p.min_size,
            groups,
        };
        (listing, members)
    }
}

/// The embedding length of the most recent text on `trunk` (all of a trunk's have one length;
/// this guards a hand-edited file).
fn kept_dim(kept: &[Arc<Unknown>], trunk: Option<&str>) -> Option<usize> {
    kept.iter().rev().find(|u| u.trunk.as_deref() == trunk).and_then(|u| u.embedding.as_ref()).map(Vec::len)
}

/// A group as listed: its texts come centre first.
fn view(texts: &[&Unknown], cohesion: f32, examples: usize) -> GroupView {
    let mut guesses: BTreeMap<&str, usize> = BTreeMap::new();
    let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
    for u in texts {
        *guesses.entry(&u.best_guess).or_default() += 1;
        *reasons.entry(u.reason.clone()).or_default() += 1;
    }
    let (best_guess, best_guess_texts) =
        guesses.iter().max_by_key(|(g, n)| (**n, std::cmp::Reverse(**g))).map_or(("", 0), |(g, n)| (*g, *n));
    GroupView {
        id: format!("g{}", texts[0].id),
        size: texts.len(),
        seen: texts.iter().map(|u| u.count).sum(),
        cohesion,
        first_seen: texts.iter().map(|u| u.first_seen.clone()).min().unwrap_or_default(),
        last_seen: texts.iter().map(|u| u.last_seen.clone()).max().unwrap_or_default(),
        best_guess: best_guess.to_string(),
        best_guess_texts,
        reasons,
        examples: texts.iter().take(examples).map(|u| u.text.clone()).collect(),
    }
}

/// Keep the `cap` most recently seen (ties: the newer id), in id order.
fn evict(kept: &mut Vec<Arc<Unknown>>, cap: usize) {
    if kept.len() <= cap {
        return;
    }
    kept.sort_by(|a, b| (&b.last_seen, b.id).cmp(&(&a.last_seen, a.id)));
    kept.truncate(cap);
    kept.sort_by_key(|u| u.id);
}

fn writer_gone() -> Error {
    Error::Internal("the unknowns writer stopped".into())
}

/// A teach request without its positives (the group gives them).
pub struct Teach {
    pub class: String,
    pub negatives: Option<Vec<String>>,
    pub max_eer: f64,
    pub who: String,
    pub params: GroupParams,
}

/// Train group `group` (as grouped now, on the set's trunk) as the new class `t.class`: a train
/// job whose positives are the group's texts; once the class is installed they leave the store.
pub async fn teach(unknowns: &Arc<Unknowns>, jobs: &Arc<Jobs>, core: &Arc<Core>, group: &str, t: Teach) -> Result<Job> {
    let set = core.snapshot()?;
    if set.get(&t.class).is_some() {
        return Err(Error::Conflict(format!(
            "{:?} is served already: teach a group as a new class (to add texts to a served class, \
             train it with its own examples and these: POST /experts/{{class}}/train)",
            t.class
        )));
    }
    let trunk = set.primary_trunk().map(str::to_string).ok_or_else(|| {
        // The request is sound; the serving set cannot take it (409, as for a served class).
        Error::Conflict("no expert of the serving set runs on a trunk: nothing to group or train on".into())
    })?;
    let params = t.params;
    let unknown_group = || {
        Error::NotFound(format!(
            "no group {group:?} among the unknowns grouped now at similarity {} and min_size {} (give the \
             listing's; GET /unknowns lists them)",
            params.similarity, params.min_size
        ))
    };
    let centre: u64 = group.strip_prefix('g').and_then(|n| n.parse().ok()).ok_or_else(unknown_group)?;
    let (store, on) = (unknowns.clone(), trunk.clone());
    let (ids, texts) = tokio::task::spawn_blocking(move || {
        let (listing, members) = store.group(Some(&on), t.params);
        let kept = store.kept();
        let text = |id: &u64| kept.iter().find(|u| u.id == *id).map(|u| u.text.clone());
        listing.groups.iter().zip(members).find(|(g, _)| g.id == format!("g{centre}")).map(|(_, ids)| {
            let texts: Vec<String> = ids.iter().filter_map(text).collect();
            (ids, texts)
        })
    })
    .await?
    .ok_or_else(unknown_group)?;
    let req = TrainRequest {
        positives: texts,
        negatives: t.negatives,
        mode: Mode::Install,
        trunk: Some(trunk),
        max_eer: t.max_eer,
        who: t.who,
        feedback: None,
    };
    let (store, class) = (unknowns.clone(), t.class.clone());
    start_then(jobs, core, &t.class, req, move |mut v: Value| async move {
        // The class is installed: a store that cannot drop the texts now says so, it fails nothing.
        match store.forget(ids, class).await {
            Ok(n) => v["unknowns_taught"] = n.into(),
            Err(e) => {
                tracing::warn!(error = %e, "taught texts stay among the unknowns");
                v["unknowns_taught"] = 0.into();
                v["unknowns_error"] = e.to_string().into();
            }
        }
        Ok(v)
    })
    .await
}

/// The one writer of the file (its own thread, for the life of the store).
struct Writer {
    path: PathBuf,
    cap: usize,
    /// The file's size (kept texts' latest lines plus older ones not yet compacted away).
    bytes: u64,
    /// Its size after the last compaction (0: none since the store opened).
    compacted: u64,
    next_id: u64,
    published: Arc<ArcSwap<Vec<Arc<Unknown>>>>,
    queued: Arc<AtomicUsize>,
}

/// The writer's view of the kept texts, by id and by text.
struct Kept {
    by_id: BTreeMap<u64, Arc<Unknown>>,
    by_text: HashMap<String, u64>,
}

impl Kept {
    fn of(list: &[Arc<Unknown>]) -> Kept {
        let by_id: BTreeMap<u64, Arc<Unknown>> = list.iter().map(|u| (u.id, u.clone())).collect();
        let by_text = by_id.values().map(|u| (u.text.clone(), u.id)).collect();
        Kept { by_id, by_text }
    }

    /// Count a sighting (a new text takes `next_id`); returns its log line, a short `Again` when the
    /// text was kept with the same embedding.
    fn see(&mut self, next_id: &mut u64, now: &str, s: Sighting) -> Line {
        let Sighting { text, reason, best_guess, trunk, embedding } = s;
        let old = self.by_text.get(&text).and_then(|id| self.by_id.get(id));
        let same = old.is_some_and(|o| o.trunk == trunk && o.embedding == embedding);
        let u = match old {
            Some(old) => Unknown {
                last_seen: now.to_string(),
                count: old.count + 1,
                reason,
                best_guess,
                trunk,
                embedding,
                ..Unknown::clone(old)
            },
            None => {
                *next_id += 1;
                let at = now.to_string();
                Unknown {
                    id: *next_id - 1,
                    text: text.clone(),
                    first_seen: at.clone(),
                    last_seen: at,
                    count: 1,
                    reason,
                    best_guess,
                    trunk,
                    embedding,
                }
            }
        };
        self.by_text.insert(text, u.id);
        let line = if same {
            Line::Again {
                id: u.id,
                last_seen: u.last_seen.clone(),
                count: u.count,
                reason: u.reason.clone(),
                best_guess: u.best_guess.clone(),
            }
        } else {
            Line::Seen(u.clone())
        };
        self.by_id.insert(u.id, Arc::new(u));
        line
    }

    /// Drop taught texts; returns how many were kept.
    fn forget(&mut self, ids: &[u64]) -> usize {
        let mut gone = 0;
        for u in ids.iter().filter_map(|id| self.by_id.remove(id)) {
            self.by_text.remove(&u.text);
            gone += 1;
        }
        gone
    }
}

impl Writer {
    fn run(mut self, rx: Receiver<Msg>) {
        let mut kept = Kept::of(&self.published.load());
        while let Ok(first) = rx.recv() {
            std::thread::sleep(BATCH_WINDOW);
            let mut lines = Vec::new();
            let mut answers = Vec::new();
            let mut seen = 0;
            let now = now_rfc3339();
            for msg in std::iter::once(first).chain(rx.try_iter()) {
                match msg {
                    Msg::Seen(s) => {
                        seen += 1;
                        lines.push(kept.see(&mut self.next_id, &now, s));
                    }
                    Msg::Taught { ids, class, done } => {
                        answers.push((done, kept.forget(&ids)));
                        lines.push(Line::Taught { ids, class, at: now.clone() });
                    }
                }
            }
            let mut list: Vec<Arc<Unknown>> = kept.by_id.values().cloned().collect();
            if list.len() > self.cap {
                evict(&mut list, self.cap);
                kept = Kept::of(&list);
            }
            let written = self.write(&lines, &list);
            if written.is_ok() {
                metrics::gauge!("moe_unknowns_kept").set(list.len() as f64);
                self.published.store(Arc::new(list));
            } else if let Err(e) = &written {
                tracing::warn!(error = %e, "cannot keep declined texts");
            }
            // Counted out only once published, so `queued == 0` means every sighting is visible.
            self.queued.fetch_sub(seen, Ordering::SeqCst);
            for (done, n) in answers {
                let _ = done.send(written.as_ref().map(|_| n).map_err(Error::share));
            }
        }
    }

    /// Append the lines with one fsync; once the file is twice its last compacted size (and past
    /// `COMPACT_FLOOR`) rewrite it with what is kept.
    fn write(&mut self, lines: &[Line], kept: &[Arc<Unknown>]) -> Result<()> {
        let text: String = lines.iter().map(|l| serde_json::to_string(l).expect("line serializes") + "\n").collect();
        append_synced(&self.path, text.as_bytes())?;
        self.bytes += text.len() as u64;
        if self.bytes > 2 * self.compacted.max(COMPACT_FLOOR) {
            let whole: String = kept
                .iter()
                .map(|u| serde_json::to_string(&Line::Seen(Unknown::clone(u))).expect("line serializes") + "\n")
                .collect();
            match write_atomic(&self.path, whole.as_bytes()) {
                Ok(()) => (self.bytes, self.compacted) = (whole.len() as u64, whole.len() as u64),
                Err(e) => tracing::warn!(error = %e, "unknowns compaction failed; retrying after the next batch"),
            }
        }
        Ok(())
    }
}

/// `Option<Vec<f32>>` as the hex of its little-endian bytes (2 KB for MiniLM's 384 floats, where
/// JSON numbers take about 4 KB).
mod hex_f32 {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &Option<Vec<f32>>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(v) => s.serialize_str(&hex::encode(v.iter().flat_map(|f| f.to_le_bytes()).collect::<Vec<u8>>())),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<f32>>, D::Error> {
        let Some(text) = Option::<String>::deserialize(d)? else { return Ok(None) };
        let bytes = hex::decode(text).map_err(serde::de::Error::custom)?;
        if bytes.len() % 4 != 0 {
            return Err(serde::de::Error::custom("an embedding is a whole number of f32s"));
        }
        Ok(Some(bytes.chunks(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use moe_core::gate::AbstainReason;
    use moe_core::service::{Declined, Embedded};

    fn declined(text: &str, direction: usize) -> TextResult {
        let mut v = vec![0.05f32; 8];
        v[direction] = 1.0;
        v[(direction + 1) % 8] = 0.01 * text.len() as f32;
        TextResult {
            label: None,
            abstained: true,
            reason: Some(AbstainReason::OutOfScope),
            out_of_scope_score: Some(0.7),
            best_guess: "Travel".into(),
            truncated: false,
            declined: Some(Declined {
                text: text.to_string(),
                embedding: Some(Embedded { trunk: "t1".into(), vector: v }),
            }),
            experts: Vec::new(),
            names: Default::default(),
        }
    }

    async fn settle(u: &Unknowns, n: usize) {
        for _ in 0..500 {
            if u.kept().len() == n && u.queued.load(Ordering::SeqCst) == 0 {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        panic!("{} kept, wanted {n}", u.kept().len());
    }

    /// Declined texts are merged by text, grouped by direction, bounded, survive a restart, and
    /// leave the store when taught.
    #[tokio::test]
    async fn declined_texts_are_kept_grouped_bounded_and_forgotten_when_taught() {
        let dir = std::env::temp_dir().join(format!("moe-unknowns-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let u = Unknowns::open(&dir, 12);
        let results: Vec<TextResult> = (0..6)
            .map(|i| declined(&format!("pay bill {i}"), 0))
            .chain((0..5).map(|i| declined(&format!("song {i}"), 4)))
            .collect();
        u.observe(&results);
        u.observe(&results[..1]); // the same text again: counted, not kept twice
        settle(&u, 11).await;
        assert_eq!(u.kept().iter().find(|x| x.text == "pay bill 0").unwrap().count, 2);
        let (listing, members) = u.group(Some("t1"), GroupParams { similarity: 0.9, ..Default::default() });
        assert_eq!(listing.groups.len(), 2, "{listing:?}");
        assert_eq!((listing.groups[0].size, listing.groups[0].seen, listing.groups[1].size), (6, 7, 5));
        assert_eq!(listing.groups[0].reasons["out_of_scope"], 6);
        assert_eq!(listing.groups[0].examples.len(), DEFAULT_EXAMPLES);
        let (other, _) = u.group(Some("t2"), GroupParams::default());
        assert_eq!((other.groups.len(), other.not_comparable), (0, 11), "another trunk's embeddings are not compared");

        let file = std::fs::read_to_string(dir.join("unknowns.jsonl")).unwrap();
        let short = file.lines().filter(|l| l.contains(r#""kind":"again""#)).collect::<Vec<_>>();
        assert_eq!(short.len(), 1, "a repeated sighting writes a short line: {file}");
        assert!(!short[0].contains("embedding") && !short[0].contains("pay bill"), "{}", short[0]);
        let again = Unknowns::open(&dir, 12);
        assert_eq!(again.kept().len(), 11, "kept across a restart");
        let restored = again.kept().iter().find(|x| x.text == "pay bill 0").unwrap().clone();
        assert_eq!((restored.count, restored.embedding.as_ref().map(Vec::len)), (2, Some(8)), "{restored:?}");
        assert_eq!(
            again.group(Some("t1"), GroupParams { similarity: 0.9, ..Default::default() }).0.groups[0].id,
            listing.groups[0].id
        );

        assert_eq!(u.forget(members[1].clone(), "Music".into()).await.unwrap(), 5);
        assert_eq!(u.kept().len(), 6);
        assert_eq!(Unknowns::open(&dir, 12).kept().len(), 6, "the taught line survives a restart");
        // Past the cap the least recently seen go; past twice COMPACT_FLOOR the file is compacted.
        let more: Vec<TextResult> = (0..1000).map(|i| declined(&format!("other {i}"), 6)).collect();
        for chunk in more.chunks(100) {
            u.observe(chunk);
        }
        settle(&u, 12).await;
        let bytes = std::fs::metadata(dir.join("unknowns.jsonl")).unwrap().len();
        assert!(bytes <= 2 * COMPACT_FLOOR, "compacted past twice the floor ({bytes} bytes)");
        let lines = std::fs::read_to_string(dir.join("unknowns.jsonl")).unwrap().lines().count();
        assert!(lines < 1000, "compacted at least once ({lines} lines)");
        let reopened = Unknowns::open(&dir, 12);
        assert_eq!(reopened.kept().len(), 12);
        assert!(reopened.kept().iter().all(|x| x.text.starts_with("other 9")), "the most recent stay");
    }
}
