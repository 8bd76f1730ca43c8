//! An immutable expert set: the experts of one generation, the gate resolved against them, the
//! shadows scoring beside them (`shadow.rs`), the plan of one request (`plan.rs`: which
//! tokenizers and which trunk / full graphs run, computed once when the set is built) and its
//! stacked linear heads (`stacked.rs`); what it gives back is in `results.rs`.
//!
//! Invariants: experts are sorted by class, class names are unique, every expert has a threshold;
//! a set is never modified after it is built (a change builds a new set with a new generation), so
//! a request that holds one snapshot never mixes versions.

use std::path::Path;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, OnceLock};

use super::plan::{Plan, primary_trunk};
use super::results::{ExpertName, ExpertResult, Scored, TextResult};
use super::shadow::Shadow;
use super::stacked::{Stacked, raise};
use crate::bundle::registry::RegistryFile;
use crate::config::RuntimeConfig;
use crate::expert::{Expert, Head, positive_probabilities};
use crate::gate::{self, ExpertOutput, Gate, GateSpec};
use crate::inference::executor::Input;
use crate::inference::{ExecutorPool, Matrix};
use crate::{Error, Result};

/// Requests up to this many bytes of text are tokenized on the calling async worker, larger ones on
/// a blocking thread: a title tokenizes in tens of µs, within what an async task may run between
/// awaits, while a 64 x 10,000-character batch (milliseconds) never holds a worker.
/// Measured (bench/ab.sh, 3 interleaved rounds of 8 s, docs/bench/ab-relayering.jsonl): every request
/// on a blocking thread gave 1280 req/s at concurrency 16 against 1402 inline (medians; rounds
/// overlap: 1247-1335 vs 1183-1440) and the same p50 at concurrency 1 (1.76 vs 1.79 ms).
pub const INLINE_TOKENIZE_BYTES: usize = 2048;
/// The same with spelling correction in the pipeline: a misspelt word costs microseconds (7 µs for
/// a title with two typos), but 2 KB of unknown 24-letter words cost 2.2 ms (measured on this
/// machine), too long for an async worker; 256 bytes of that worst case cost about 0.3 ms.
pub const INLINE_SPELLING_BYTES: usize = 256;
/// Experts timed per request in `moe_expert_seconds` (`ExpertSet::timed_experts`).
pub const TIMED_EXPERTS: usize = 64;

pub struct ExpertSet {
    /// Sorted by class.
    pub experts: Vec<Arc<Expert>>,
    /// Each expert's decision threshold (same order as `experts`).
    pub thresholds: Vec<f32>,
    pub gate_spec: GateSpec,
    pub gate: Gate,
    pub generation: u64,
    /// Revision of the shared registry this set serves (etcd; `None` with the file registry).
    pub revision: Option<i64>,
    /// Candidates scoring live traffic beside the active expert of their class.
    pub shadows: Vec<Arc<Shadow>>,
    plan: Plan,
    /// The stage (plan index) and trunk id most heads run on: declined texts keep its embedding.
    primary: Option<(usize, String)>,
    /// Per stage, its linear heads stacked: one pass over their weights scores them all.
    stacked: Vec<Stacked>,
    /// The experts' names (set order), shared by every answer instead of copied into each.
    names: Arc<Vec<ExpertName>>,
    /// Each expert's `moe_expert_seconds{class}` histogram, looked up once per set (on its first
    /// request, when the service's recorder is installed) instead of once per expert per request.
    timers: OnceLock<Vec<metrics::Histogram>>,
    /// Where the next request's window of timed experts starts (`timed_experts`).
    timer_cursor: AtomicUsize,
}

impl ExpertSet {
    /// A set for serving: every expert must carry a calibrated threshold, one expert per class.
    pub fn new(
        mut experts: Vec<Arc<Expert>>,
        gate_spec: GateSpec,
        (generation, revision): (u64, Option<i64>),
        shadows: Vec<Arc<Shadow>>,
    ) -> Result<ExpertSet> {
        if experts.is_empty() {
            return Err(Error::Conflict("an expert set needs at least one expert".into()));
        }
        experts.sort_by(|a, b| a.class.cmp(&b.class));
        if let Some(w) = experts.windows(2).find(|w| w[0].class == w[1].class) {
            return Err(Error::Conflict(format!("two experts for class {:?}", w[0].class)));
        }
        let thresholds = experts.iter().map(|e| e.served_threshold()).collect::<Result<Vec<f32>>>()?;
        let ids: Vec<(String, String)> = experts.iter().map(|e| (e.class.clone(), e.card.version.clone())).collect();
        let calibrations: Vec<Option<[f32; 2]>> = experts.iter().map(|e| e.calibration()).collect();
        let mut gate = Gate::resolve(&gate_spec, &ids, &calibrations);
        let blend = gate.blends();
        if let Some(e) =
            experts.iter().find(|e| blend && !matches!(&e.head, Some(Head::Linear(l)) if l.centroid.is_some()))
        {
            gate.open_world = None;
            gate.disabled = Some(format!(
                "the open-world rule blends in each class's centroid similarity; {} has no centroid (a head \
                 fitted by `moe fit` has one), so nothing is declined as out of scope",
                e.class
            ));
        }
        if let Some(why) = &gate.disabled {
            tracing::warn!(reason = %why, "configured gate disabled, using uniform");
        }
        let shadows = shadows.into_iter().filter(|s| experts.iter().any(|e| e.class == s.class)).collect();
        let plan = Plan::new(&experts);
        let primary = primary_trunk(&experts, &plan);
        let stacked = Stacked::build(&experts, &plan);
        let names = Arc::new(
            experts
                .iter()
                .map(|e| ExpertName {
                    class: e.class.clone(),
                    algorithm: e.card.algorithm.clone(),
                    bundle: e.bundle.clone(),
                    version: e.card.version.clone(),
                })
                .collect(),
        );
        Ok(ExpertSet {
            experts,
            thresholds,
            gate_spec,
            gate,
            generation,
            revision,
            shadows,
            plan,
            primary,
            stacked,
            names,
            timers: OnceLock::new(),
            timer_cursor: AtomicUsize::new(0),
        })
    }

    /// Every expert's Platt map (set order), if each card has one: the `calibrated` score mode
    /// needs all of them.
    pub fn calibrations(&self) -> Option<Vec<[f32; 2]>> {
        self.experts.iter().map(|e| e.calibration()).collect()
    }

    /// Load every bundle a registry names from the model root (blocking), each checked against
    /// the class the registry gives it. An expert in `have` with the same class and bundle is
    /// reused instead of loaded again (a follower of a shared registry loads only what changed).
    pub fn load_experts(
        pool: &ExecutorPool,
        cfg: &RuntimeConfig,
        root: &Path,
        reg: &RegistryFile,
        registry_path: &Path,
        have: &[Arc<Expert>],
    ) -> Result<Vec<Arc<Expert>>> {
        let mut experts = Vec::with_capacity(reg.experts.len());
        for (class, bundle) in &reg.experts {
            if let Some(e) = have.iter().find(|e| &e.class == class && &e.bundle == bundle) {
                experts.push(e.clone());
                continue;
            }
            let e = Expert::load(pool, cfg, root, bundle, true)?;
            if &e.class != class {
                return Err(Error::InvalidRegistry {
                    path: registry_path.to_path_buf(),
                    reason: format!("names bundle {bundle} for class {class:?}, but its card is for {:?}", e.class),
                });
            }
            experts.push(Arc::new(e));
        }
        Ok(experts)
    }

    /// A set for the offline tools: the experts and gate of a model root's registry (blocking).
    pub fn load(pool: &ExecutorPool, cfg: &RuntimeConfig, root: &Path, reg: &RegistryFile) -> Result<ExpertSet> {
        let experts = Self::load_experts(pool, cfg, root, reg, &RegistryFile::path(root), &[])?;
        ExpertSet::new(experts, reg.gate.clone(), (0, None), Vec::new())
    }

    /// The id of the trunk most heads run on (declined texts are kept with its embedding).
    pub fn primary_trunk(&self) -> Option<&str> {
        self.primary.as_ref().map(|(_, id)| id.as_str())
    }

    pub fn get(&self, class: &str) -> Option<&Arc<Expert>> {
        self.experts.iter().find(|e| e.class == class)
    }

    pub fn position(&self, class: &str) -> Option<usize> {
        self.experts.iter().position(|e| e.class == class)
    }

    /// Each expert's class and bundle version, in set order (what a gate or an open-world rule
    /// was chosen with).
    pub fn versions(&self) -> Vec<(String, String)> {
        self.experts.iter().map(|e| (e.class.clone(), e.card.version.clone())).collect()
    }

    pub fn shadow(&self, class: &str) -> Option<&Arc<Shadow>> {
        self.shadows.iter().find(|s| s.class == class)
    }

    /// Run every expert on the texts: tokenization on a blocking thread (once per distinct
    /// tokenizer), every distinct trunk / full graph queued at once, then the heads on their
    /// trunk's embedding. Returns per expert the positive probabilities, and per text whether it
    /// was truncated.
    pub async fn probabilities(self: &Arc<Self>, texts: &[String]) -> Result<Scored> {
        let started = std::time::Instant::now();
        let chars: usize = texts.iter().map(String::len).sum();
        let inline = if self.plan.spells() { INLINE_SPELLING_BYTES } else { INLINE_TOKENIZE_BYTES };
        let (encoded, truncated) = if chars <= inline {
            self.plan.encode(texts)?
        } else {
            let (set, owned) = (self.clone(), texts.to_vec());
            tokio::task::spawn_blocking(move || set.plan.encode(&owned)).await??
        };
        let mut pending = Vec::with_capacity(self.plan.stages.len());
        for (exec, t) in &self.plan.stages {
            pending.push(exec.submit(Input::Tokens(encoded[*t].clone()))?);
        }
        let mut first = Vec::with_capacity(pending.len());
        for (rx, (exec, _)) in pending.into_iter().zip(&self.plan.stages) {
            let m = rx.await.map_err(|_| Error::Internal(format!("graph {} dropped a job", exec.label)))??;
            first.push(Arc::new(m));
        }
        // Stage 2: heads on their stage's embedding, all queued before any is awaited.
        // Linear heads are a dot product per row: computed here, after the graph heads are queued.
        let mut pending = Vec::with_capacity(self.experts.len());
        for (e, &s) in self.experts.iter().zip(&self.plan.stage_of) {
            pending.push(match &e.head {
                Some(Head::Graph(h)) => Some(h.submit(Input::Embedding(first[s].clone()))?),
                Some(Head::Linear(_)) | None => None,
            });
        }
        let timers = self.timers.get_or_init(|| {
            self.experts.iter().map(|e| metrics::histogram!("moe_expert_seconds", "class" => e.class.clone())).collect()
        });
        let timed = self.timed_experts();
        let k = self.experts.len();
        let mut probs = Matrix { rows: texts.len(), cols: k, data: vec![0.0; texts.len() * k] };
        let mut stacked = vec![false; k];
        for st in &self.stacked {
            st.probabilities(&first[st.stage], &mut probs)?;
            let took = started.elapsed().as_secs_f64();
            for &e in &st.experts {
                stacked[e] = true;
                if timed(e) {
                    timers[e].record(took);
                }
            }
        }
        for (i, ((e, rx), &s)) in self.experts.iter().zip(pending).zip(&self.plan.stage_of).enumerate() {
            if stacked[i] {
                continue;
            }
            let p = match (rx, &e.head) {
                (Some(rx), _) => positive_probabilities(
                    &rx.await.map_err(|_| Error::Internal(format!("head of {} dropped a job", e.class)))??,
                ),
                (None, Some(Head::Linear(l))) => positive_probabilities(&l.logits(&first[s])?),
                (None, _) => positive_probabilities(&first[s]),
            };
            for (r, v) in p.into_iter().enumerate() {
                probs.data[r * k + i] = v;
            }
            if timed(i) {
                timers[i].record(started.elapsed().as_secs_f64());
            }
        }
        let nearest = if self.gate.blends() { self.nearest_on(&first) } else { vec![None; texts.len()] };
        let embeddings = self.primary.as_ref().map(|(s, trunk)| (trunk.clone(), first[*s].clone()));
        Ok(Scored { probs, truncated, nearest, embeddings })
    }

    /// Which experts this request times in `moe_expert_seconds`: all of them up to `TIMED_EXPERTS`,
    /// else the next `TIMED_EXPERTS` in rotation (one histogram record per expert was 5 % of a
    /// 1,000-expert server's CPU, docs/BENCHMARKS.md), so each class's histogram samples requests.
    fn timed_experts(&self) -> impl Fn(usize) -> bool {
        let k = self.experts.len();
        timed_window(k, if k <= TIMED_EXPERTS { 0 } else { self.timer_cursor.fetch_add(TIMED_EXPERTS, Relaxed) })
    }

    /// Each text's best similarity to a class centroid, over the experts whose linear head has
    /// one, on their stage's embedding (`stages` in plan order; one stage for a fitted set); None
    /// for every text when no expert has a centroid. The service computes it only when the
    /// open-world rule blends it in.
    pub fn nearest_on(&self, stages: &[Arc<Matrix>]) -> Vec<Option<f32>> {
        let rows = stages.first().map_or(0, |m| m.rows);
        let mut best: Vec<Option<f32>> = vec![None; rows];
        // Stacked centroids in one pass over contiguous rows; the other heads one by one.
        let mut done = vec![false; self.experts.len()];
        for st in &self.stacked {
            if let Some(m) = stages.get(st.stage)
                && st.nearest(m, &mut best)
            {
                st.experts.iter().for_each(|&e| done[e] = true);
            }
        }
        for ((e, &s), _) in self.experts.iter().zip(&self.plan.stage_of).zip(&done).filter(|(_, d)| !**d) {
            let (Some(Head::Linear(l)), Some(m)) = (&e.head, stages.get(s)) else { continue };
            for (i, b) in best.iter_mut().enumerate() {
                if let Some(sim) = l.similarity(m.row(i)) {
                    raise(b, sim);
                }
            }
        }
        best
    }

    /// Probabilities outside the async runtime (evaluation tools): same plan, blocking waits.
    pub fn probabilities_blocking(&self, texts: &[String]) -> Result<Vec<Vec<f32>>> {
        let (encoded, _) = self.plan.encode(texts)?;
        let first = self
            .plan
            .stages
            .iter()
            .map(|(exec, t)| exec.run_blocking(Input::Tokens(encoded[*t].clone())).map(Arc::new))
            .collect::<Result<Vec<_>>>()?;
        self.experts
            .iter()
            .zip(&self.plan.stage_of)
            .map(|(e, &s)| {
                let logits = match &e.head {
                    Some(h) => h.run_blocking(first[s].clone())?,
                    None => (*first[s]).clone(),
                };
                Ok(positive_probabilities(&logits))
            })
            .collect()
    }

    /// The gate's decision for each text given each expert's probabilities (expert-major).
    /// `nearest` may be empty (no centroid similarities: a `blend` rule then declines nothing).
    pub fn decide_all(
        &self,
        texts: &[String],
        probs: &[Vec<f32>],
        truncated: &[bool],
        nearest: &[Option<f32>],
    ) -> Vec<TextResult> {
        let data = (0..texts.len()).flat_map(|i| probs.iter().map(move |p| p[i])).collect();
        self.decide_rows(texts, &Matrix { rows: texts.len(), cols: probs.len(), data }, truncated, nearest)
    }

    /// `decide_all` on text-major probabilities (row i: text i's probability from every expert).
    pub fn decide_rows(
        &self,
        texts: &[String],
        probs: &Matrix,
        truncated: &[bool],
        nearest: &[Option<f32>],
    ) -> Vec<TextResult> {
        texts
            .iter()
            .enumerate()
            .map(|(i, text)| self.decide(text, probs.row(i), truncated[i], nearest.get(i).copied().flatten()))
            .collect()
    }

    /// The gate's decision for one text given each expert's probability (same order as `experts`).
    pub fn decide(&self, text: &str, probs: &[f32], truncated: bool, nearest: Option<f32>) -> TextResult {
        let outs: Vec<ExpertOutput> = probs
            .iter()
            .zip(&self.thresholds)
            .map(|(&probability, &threshold)| ExpertOutput { probability, threshold })
            .collect();
        let d = gate::decide(&self.gate, &outs, gate::words(text), nearest);
        TextResult {
            label: d.label.map(|i| self.experts[i].class.clone()),
            abstained: d.label.is_none(),
            reason: d.reason,
            out_of_scope_score: d.out_of_scope,
            best_guess: self.experts[d.best_guess].class.clone(),
            truncated,
            declined: None,
            experts: (0..self.experts.len())
                .map(|i| ExpertResult {
                    index: i,
                    probability: outs[i].probability,
                    threshold: outs[i].threshold,
                    passed: d.passed[i],
                    gate_weight: d.weights[i],
                    score: d.scores[i],
                })
                .collect(),
            names: self.names.clone(),
        }
    }

    /// Score texts with every shadow and record the comparison with the active expert
    /// (blocking: runs on the shadow worker thread, never on the response path).
    /// `active`: the set's probabilities for the texts, text-major (`Scored::probs`).
    pub fn score_shadows(&self, texts: &[String], active: &Matrix) {
        for sh in &self.shadows {
            let Some(i) = self.position(&sh.class) else { continue };
            let column: Vec<f32> = (0..active.rows).map(|r| active.row(r)[i]).collect();
            match sh.expert.probabilities_blocking(texts) {
                Ok(p) => sh.record(&p, &column, self.thresholds[i]),
                Err(e) => tracing::warn!(class = %sh.class, error = %e, "shadow scoring failed"),
            }
        }
    }
}

/// Of `k` experts, the `TIMED_EXPERTS` from `start` on (modulo `k`, wrapping), or all of them.
fn timed_window(k: usize, start: usize) -> impl Fn(usize) -> bool {
    let start = start % k.max(1);
    move |i| k <= TIMED_EXPERTS || (i + k - start) % k < TIMED_EXPERTS
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Up to TIMED_EXPERTS every expert is timed; past it each window holds TIMED_EXPERTS of them,
    /// and consecutive windows time every expert equally often.
    #[test]
    fn timed_windows_rotate_over_every_expert() {
        assert!((0..TIMED_EXPERTS).all(timed_window(TIMED_EXPERTS, 5)));
        let k = 150;
        let mut counts = vec![0; k];
        for call in 0..k {
            let timed = timed_window(k, call * TIMED_EXPERTS);
            let window: Vec<usize> = (0..k).filter(|&i| timed(i)).collect();
            assert_eq!(window.len(), TIMED_EXPERTS);
            window.iter().for_each(|&i| counts[i] += 1);
        }
        assert!(counts.iter().all(|&c| c == TIMED_EXPERTS), "{counts:?}");
    }
}
