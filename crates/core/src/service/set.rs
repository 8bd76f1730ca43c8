//! An immutable expert set: the experts of one generation, the gate resolved against them, the
//! shadows scoring beside them, and the plan of one request (which tokenizers and which trunk /
//! full graphs run, computed once when the set is built).
//!
//! Invariants: experts are sorted by class, class names are unique, every expert has a threshold;
//! a set is never modified after it is built (a change builds a new set with a new generation), so
//! a request that holds one snapshot never mixes versions.

use std::path::Path;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex, OnceLock};

use crate::bundle::registry::RegistryFile;
use crate::config::RuntimeConfig;
use crate::error::lock;
use crate::expert::{Expert, Head, positive_probabilities};
use crate::gate::{self, ExpertOutput, Gate, GateSpec};
use crate::inference::executor::Input;
use crate::inference::{Encoded, Executor, ExecutorPool, LinearHead, Matrix, TokenizerHandle};
use crate::linalg::dot;
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

/// Per distinct tokenizer the texts' tokens, and per text whether any tokenizer truncated it.
type Encodings = (Vec<Arc<Vec<Encoded>>>, Vec<bool>);

/// Distinct work of one request: tokenizers and first-stage graphs, each run once per request.
struct Plan {
    tokenizers: Vec<Arc<TokenizerHandle>>,
    /// Distinct (trunk or full graph, tokenizer index).
    stages: Vec<(Arc<Executor>, usize)>,
    /// Per expert: index into `stages`.
    stage_of: Vec<usize>,
}

impl Plan {
    fn new(experts: &[Arc<Expert>]) -> Plan {
        let mut tokenizers: Vec<Arc<TokenizerHandle>> = Vec::new();
        let mut stages: Vec<(Arc<Executor>, usize)> = Vec::new();
        let mut stage_of = Vec::with_capacity(experts.len());
        for e in experts {
            let t = match tokenizers.iter().position(|t| t.same_pipeline(&e.tokenizer)) {
                Some(i) => i,
                None => {
                    tokenizers.push(e.tokenizer.clone());
                    tokenizers.len() - 1
                }
            };
            let s = match stages.iter().position(|(x, ti)| x.sha256 == e.stage1.sha256 && *ti == t) {
                Some(i) => i,
                None => {
                    stages.push((e.stage1.clone(), t));
                    stages.len() - 1
                }
            };
            stage_of.push(s);
        }
        Plan { tokenizers, stages, stage_of }
    }

    /// Whether any tokenizer corrects spelling first (more work per byte).
    fn spells(&self) -> bool {
        self.tokenizers.iter().any(|t| t.speller.is_some())
    }

    /// Tokenize every text once per distinct tokenizer (CPU work: call from a blocking thread).
    fn encode(&self, texts: &[String]) -> Result<Encodings> {
        let mut truncated = vec![false; texts.len()];
        let mut out = Vec::with_capacity(self.tokenizers.len());
        for t in &self.tokenizers {
            let enc = texts.iter().map(|x| t.encode(x)).collect::<Result<Vec<_>>>()?;
            for (flag, e) in truncated.iter_mut().zip(&enc) {
                *flag |= e.truncated;
            }
            out.push(Arc::new(enc));
        }
        Ok((out, truncated))
    }
}

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

/// Every expert's probabilities for a batch (expert-major), whether each text was truncated, and
/// each text's best centroid similarity (for a `blend` open-world rule).
pub struct Scored {
    /// Text-major: row i holds text i's probability from every expert (set order).
    pub probs: Matrix,
    pub truncated: Vec<bool>,
    pub nearest: Vec<Option<f32>>,
    /// The trunk id and embeddings of the stage most heads run on (None: no expert runs on a trunk).
    pub embeddings: Option<(String, Arc<Matrix>)>,
}

impl Scored {
    /// Keep each declined text, with its trunk embedding, in its answer (for the unknowns store).
    pub fn attach_declined(&self, texts: &[String], results: &mut [TextResult]) {
        for (i, r) in results.iter_mut().enumerate().filter(|(_, r)| r.abstained) {
            let embedding =
                self.embeddings.as_ref().map(|(trunk, m)| Embedded { trunk: trunk.clone(), vector: m.row(i).to_vec() });
            r.declined = Some(Declined { text: texts[i].clone(), embedding });
        }
    }
}

/// A declined text as the unknowns store keeps it.
#[derive(Debug, Clone, PartialEq)]
pub struct Declined {
    pub text: String,
    /// On the trunk most heads run on (None: no expert runs on a trunk).
    pub embedding: Option<Embedded>,
}

/// A text's embedding on a trunk (`trunk` is the trunk's id).
#[derive(Debug, Clone, PartialEq)]
pub struct Embedded {
    pub trunk: String,
    pub vector: Vec<f32>,
}

/// The linear heads of one stage as one `k x dim` matrix, so a request scores all of them in one
/// pass over contiguous weights with one allocation instead of `k` (the 1,000-expert profile,
/// docs/BENCHMARKS.md). The probability is the per-head path's: 1 / (1 + e^-(w·x + b)).
struct Stacked {
    stage: usize,
    /// Set indices of the experts, in row order of `weights`.
    experts: Vec<usize>,
    dim: usize,
    weights: Vec<f32>,
    bias: Vec<f32>,
    /// The heads' class centroids, `k x dim` in the same order, when every head has one.
    centroids: Option<Vec<f32>>,
}

impl Stacked {
    /// One per stage with at least two linear heads (one head gains nothing from a product).
    fn build(experts: &[Arc<Expert>], plan: &Plan) -> Vec<Stacked> {
        let mut out: Vec<Stacked> = Vec::new();
        for (stage, _) in plan.stages.iter().enumerate() {
            let heads: Vec<(usize, &LinearHead)> = experts
                .iter()
                .enumerate()
                .filter(|(i, _)| plan.stage_of[*i] == stage)
                .filter_map(|(i, e)| match &e.head {
                    Some(Head::Linear(l)) => Some((i, l.as_ref())),
                    _ => None,
                })
                .collect();
            let Some(dim) = heads.first().map(|(_, l)| l.weights.len()) else { continue };
            if heads.len() < 2 || heads.iter().any(|(_, l)| l.weights.len() != dim) {
                continue;
            }
            out.push(Stacked {
                stage,
                experts: heads.iter().map(|(i, _)| *i).collect(),
                dim,
                weights: heads.iter().flat_map(|(_, l)| l.weights.iter().copied()).collect(),
                bias: heads.iter().map(|(_, l)| l.bias).collect(),
                centroids: heads
                    .iter()
                    .map(|(_, l)| l.centroid.as_deref())
                    .collect::<Option<Vec<&[f32]>>>()
                    .map(|cs| cs.concat()),
            });
        }
        out
    }

    /// Raise each row's best centroid similarity (`LinearHead::similarity`, bit for bit) with these
    /// heads' centroids; false (nothing done) when they have none or `x` has another width.
    fn nearest(&self, x: &Matrix, best: &mut [Option<f32>]) -> bool {
        let Some(cs) = self.centroids.as_ref().filter(|_| x.cols == self.dim) else { return false };
        for c in cs.chunks(self.dim) {
            for (r, b) in best.iter_mut().enumerate().take(x.rows) {
                raise(b, dot(c, x.row(r)));
            }
        }
        true
    }

    /// Each stacked expert's positive probabilities on `x` (rows x dim), into its column of `out`
    /// (texts x experts, set order).
    fn probabilities(&self, x: &Matrix, out: &mut Matrix) -> Result<()> {
        if x.cols != self.dim {
            return Err(Error::Internal(format!(
                "linear heads of {} weights got an embedding of {}",
                self.dim, x.cols
            )));
        }
        // One dot product per (text, head), each summed in the same order whatever the number of
        // rows: a text's probabilities must not depend on its batch (a matrix product sums in blocks
        // that change with the shape, ~1e-6 apart).
        // Weights outer, so a head's row stays in cache.
        for ((w, &b), &e) in self.weights.chunks(self.dim).zip(&self.bias).zip(&self.experts) {
            for r in 0..x.rows {
                out.data[r * out.cols + e] = 1.0 / (1.0 + (0.0 - (dot(x.row(r), w) + b)).exp());
            }
        }
        Ok(())
    }
}

/// Of `k` experts, the `TIMED_EXPERTS` from `start` on (modulo `k`, wrapping), or all of them.
fn timed_window(k: usize, start: usize) -> impl Fn(usize) -> bool {
    let start = start % k.max(1);
    move |i| k <= TIMED_EXPERTS || (i + k - start) % k < TIMED_EXPERTS
}

/// Keep the larger similarity.
fn raise(best: &mut Option<f32>, sim: f32) {
    *best = Some(best.map_or(sim, |v| v.max(sim)));
}

/// The stage most experts with a head run on, and that trunk's id.
fn primary_trunk(experts: &[Arc<Expert>], plan: &Plan) -> Option<(usize, String)> {
    let mut counts = vec![0usize; plan.stages.len()];
    for (e, &s) in experts.iter().zip(&plan.stage_of) {
        if e.head.is_some() && e.card.trunk.is_some() {
            counts[s] += 1;
        }
    }
    let (stage, _) = counts.iter().enumerate().filter(|(_, n)| **n > 0).max_by_key(|(i, n)| (**n, usize::MAX - i))?;
    let expert = experts.iter().zip(&plan.stage_of).find(|(e, s)| **s == stage && e.card.trunk.is_some())?.0;
    Some((stage, expert.card.trunk.as_ref()?.id.clone()))
}

/// One expert's part in one text's decision (its names: `TextResult::name`).
#[derive(Debug, Clone)]
pub struct ExpertResult {
    /// The expert's place in the set (class order).
    pub index: usize,
    pub probability: f32,
    pub threshold: f32,
    pub passed: bool,
    pub gate_weight: f32,
    pub score: f32,
}

/// What names an expert in an answer.
#[derive(Debug, Clone, PartialEq)]
pub struct ExpertName {
    pub class: String,
    pub algorithm: String,
    pub bundle: String,
    pub version: String,
}

/// One text's decision: the label (or an abstention), the best guess, every expert's part.
#[derive(Debug, Clone)]
pub struct TextResult {
    pub label: Option<String>,
    pub abstained: bool,
    /// Why it abstained (None with a label).
    pub reason: Option<gate::AbstainReason>,
    /// How far out of scope (0.5 at the cut-off, above it declined), with a rule in force.
    pub out_of_scope_score: Option<f32>,
    pub best_guess: String,
    pub truncated: bool,
    /// The text and its trunk embedding, set by the service for abstentions only.
    pub declined: Option<Declined>,
    pub experts: Vec<ExpertResult>,
    /// The set's expert names, shared (one pointer per answer, not four strings per expert).
    pub names: Arc<Vec<ExpertName>>,
}

impl TextResult {
    /// The names of the expert behind a row of `experts`.
    pub fn name(&self, e: &ExpertResult) -> &ExpertName {
        &self.names[e.index]
    }
}

pub const SHADOW_BUCKETS: usize = 10;

#[derive(Debug, Default, Clone)]
pub struct ShadowStats {
    pub texts: u64,
    /// Texts where the shadow and the active expert made the same pass/fail decision.
    pub agreements: u64,
    pub sum_abs_probability_diff: f64,
    /// Counts of the shadow's probabilities in [0, 0.1), [0.1, 0.2), ... [0.9, 1].
    pub probability_histogram: [u64; SHADOW_BUCKETS],
}

/// A candidate scoring live traffic beside the active expert of its class (answers unchanged).
pub struct Shadow {
    pub class: String,
    pub expert: Arc<Expert>,
    pub threshold: f32,
    stats: Mutex<ShadowStats>,
}

impl Shadow {
    /// A shadow needs a calibrated expert of the class it shadows.
    pub fn new(expert: Expert) -> Result<Shadow> {
        let threshold = expert.served_threshold()?;
        Ok(Shadow { class: expert.class.clone(), expert: Arc::new(expert), threshold, stats: Default::default() })
    }

    pub fn stats(&self) -> ShadowStats {
        lock(&self.stats).clone()
    }

    /// Record one batch: the shadow's probabilities against the active expert's (same texts).
    pub fn record(&self, shadow: &[f32], active: &[f32], active_threshold: f32) {
        let mut s = lock(&self.stats);
        for (&p, &q) in shadow.iter().zip(active) {
            s.texts += 1;
            s.agreements += u64::from((p >= self.threshold) == (q >= active_threshold));
            s.sum_abs_probability_diff += f64::from((p - q).abs());
            s.probability_histogram[((p * SHADOW_BUCKETS as f32) as usize).min(SHADOW_BUCKETS - 1)] += 1;
            metrics::histogram!("moe_shadow_probability", "class" => self.class.clone()).record(f64::from(p));
        }
        metrics::gauge!("moe_shadow_agreement_rate", "class" => self.class.clone())
            .set(s.agreements as f64 / s.texts.max(1) as f64);
        metrics::counter!("moe_shadow_texts_total", "class" => self.class.clone()).increment(shadow.len() as u64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Stacked heads give each head's own probabilities (its `logits`, as served one by one), and
    /// a text's are bit for bit the same alone and inside batches of any size.
    #[test]
    fn stacked_heads_match_each_head_alone() {
        let (dim, k) = (37, 6);
        let mut s = 11u64;
        let mut next = || {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((s >> 33) as f32 / (1u64 << 31) as f32) - 0.5
        };
        let heads: Vec<LinearHead> =
            (0..k).map(|_| LinearHead::new((0..dim).map(|_| next()).collect(), next())).collect();
        let stacked = Stacked {
            stage: 0,
            experts: (0..k).collect(),
            dim,
            weights: heads.iter().flat_map(|h| h.weights.clone()).collect(),
            bias: heads.iter().map(|h| h.bias).collect(),
            centroids: None,
        };
        let probabilities = |x: &Matrix| {
            let mut out = Matrix { rows: x.rows, cols: k, data: vec![f32::NAN; x.rows * k] };
            stacked.probabilities(x, &mut out).unwrap();
            (0..k).map(|h| (0..x.rows).map(|r| out.row(r)[h]).collect()).collect::<Vec<Vec<f32>>>()
        };
        for rows in [1, 4, 7, 64] {
            let x = Matrix { rows, cols: dim, data: (0..rows * dim).map(|_| next()).collect() };
            let got = probabilities(&x);
            for (h, got) in heads.iter().zip(&got) {
                let want = positive_probabilities(&h.logits(&x).unwrap());
                assert!(want.iter().zip(got).all(|(a, b)| (a - b).abs() < 1e-6), "{rows} rows: {want:?} vs {got:?}");
            }
            for r in 0..rows {
                let alone = Matrix { rows: 1, cols: dim, data: x.row(r).to_vec() };
                let alone = probabilities(&alone);
                assert!(got.iter().zip(&alone).all(|(b, a)| b[r].to_bits() == a[0].to_bits()), "row {r} of {rows}");
            }
        }
        let wrong = Matrix { rows: 1, cols: dim + 1, data: vec![0.0; dim + 1] };
        assert!(stacked.probabilities(&wrong, &mut Matrix { rows: 1, cols: k, data: vec![0.0; k] }).is_err());
    }

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

    /// Stacked centroids give each row the best of the heads' own similarities, bit for bit, and
    /// decline (false) without centroids or on another width.
    #[test]
    fn stacked_centroids_give_the_best_head_similarity() {
        let (dim, k, rows) = (37, 7, 6);
        let mut s = 7u64;
        let mut next = || {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((s >> 33) as f32 / (1u64 << 31) as f32) - 0.5
        };
        let heads: Vec<LinearHead> = (0..k)
            .map(|_| {
                let mut h = LinearHead::new(vec![0.0; dim], 0.0);
                h.centroid = Some((0..dim).map(|_| next()).collect());
                h
            })
            .collect();
        let mut stacked = Stacked {
            stage: 0,
            experts: (0..k).collect(),
            dim,
            weights: vec![0.0; k * dim],
            bias: vec![0.0; k],
            centroids: Some(heads.iter().flat_map(|h| h.centroid.clone().unwrap()).collect()),
        };
        let x = Matrix { rows, cols: dim, data: (0..rows * dim).map(|_| next()).collect() };
        let mut best = vec![None; rows];
        assert!(stacked.nearest(&x, &mut best));
        for (r, b) in best.iter().enumerate() {
            let want = heads.iter().map(|h| h.similarity(x.row(r)).unwrap()).fold(f32::MIN, f32::max);
            assert_eq!(b.unwrap().to_bits(), want.to_bits(), "row {r}");
        }
        let wrong = Matrix { rows: 1, cols: dim + 1, data: vec![0.0; dim + 1] };
        assert!(!stacked.nearest(&wrong, &mut [None]));
        stacked.centroids = None;
        assert!(!stacked.nearest(&x, &mut best));
    }
}
