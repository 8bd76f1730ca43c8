//! Online training of one class (`POST /experts/{class}/train`): labelled texts in, a real linear
//! bundle out, installed (a new class or a replacement) or attached as a shadow, without leaving
//! the service and without touching any other class.
//!
//! Steps (a background job, `GET /jobs/{id}` shows the progress):
//! 1. embed every example with a serving trunk, through the same executors live traffic uses, in
//!    chunks of `EMBED_CHUNK` texts, each queued only when no live job waits on the trunk (lower
//!    priority than traffic; after `YIELD_AT_MOST` it goes anyway, so training always progresses);
//! 2. fit (on a thread at nice 19) an L2 logistic regression with the trainer's `class_weight` rebalancing (`eval::logreg`),
//!    choosing C from `C_GRID` by stratified k-fold cross-validated AUC; the EER threshold is read
//!    off the out-of-fold probabilities of the chosen C, and so are the card's metrics ("cv"); the
//!    probabilities are moved from the balanced fit's prior (1/2) to 1 / (classes in the set), so the
//!    new expert competes in the gate on the others' scale (decisions at its threshold unchanged);
//! 3. refuse (quality gate) when the cross-validated EER is above the request's bound;
//! 4. write the bundle (`head.json` + `card.json`, in a `.upload-*` temp folder renamed into the
//!    model root: a crash leaves nothing a registry names, and start-up sweeps the temp folder);
//! 5. install it through the normal swap path (history action "train") or attach it as a shadow.
//!
//! Invariants: the new head runs on a trunk the set already serves, so no other expert's graph,
//! executor or threshold changes: every other class's probabilities stay bit-identical (tested).
//! Nothing is written unless the fit passed the gate; nothing is installed unless the bundle
//! loads and passes its self-test like any other.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::jobs::Jobs;
use super::swap::{Swap, swap_as};
use super::upload::temp_path;
use moe_core::bundle::card::{CARD_SCHEMA, Card, FileRef, Kind, SelfTest, Threshold, check_name, slug};
use moe_core::bundle::quality::{BinaryReport, SplitMetrics};
use moe_core::clock::now_rfc3339;
use moe_core::data::DataArgs;
use moe_core::expert::Expert;
use moe_core::files::{sha256_file, sync_parent, write_atomic};
use moe_core::inference::executor::Input;
use moe_core::inference::{LinearHead, Matrix};
use moe_core::service::Core;
use moe_core::stats::logreg::{Logistic, cross_validate, shuffle};
use moe_core::{Error, Result};

/// Fewest positives and negatives a head is trained from (5 folds need 5 of each).
pub const MIN_EXAMPLES: usize = 5;
/// Most examples in one request (positives + negatives).
pub const MAX_EXAMPLES: usize = 20_000;
/// Negatives drawn from the other classes' training rows when the request brings none.
pub const DEFAULT_NEGATIVES: usize = 1000;
/// L2 strengths tried (sklearn's C: larger = weaker regularisation).
pub use moe_core::stats::logreg::{C_GRID, FOLDS};
/// Texts per trunk job while embedding (a live request waits behind at most one such chunk).
pub const EMBED_CHUNK: usize = 2;
/// Longest a chunk waits for the trunk's queue to empty before it is queued anyway.
pub const YIELD_AT_MOST: std::time::Duration = std::time::Duration::from_millis(200);
/// Default quality gate: the cross-validated EER must not exceed this.
pub const DEFAULT_MAX_EER: f64 = 0.25;
const SEED: u64 = 42;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Serve it now (a new class, or a replacement of the active expert).
    #[default]
    Install,
    /// Attach it as the class's shadow (scores live traffic, answers nothing).
    Shadow,
}

/// A training request, validated by the HTTP layer (texts non-blank and within limits).
#[derive(Debug, Clone)]
pub struct TrainRequest {
    pub positives: Vec<String>,
    /// None: sample `DEFAULT_NEGATIVES` from the other classes' rows of the configured data.
    pub negatives: Option<Vec<String>>,
    pub mode: Mode,
    /// Trunk id (None: the trunk most experts of the set run on).
    pub trunk: Option<String>,
    pub max_eer: f64,
    /// Who asked (the admin token's fingerprint), for the card's provenance.
    pub who: String,
    /// The feedback log's (text, label) pairs, when the request asked to use them.
    pub feedback: Option<Vec<(String, String)>>,
}

/// Examples checked and resolved before the job starts: every refusal here is a 4xx at once.
struct Prepared {
    class: String,
    positives: Vec<String>,
    negatives: Vec<String>,
    negatives_source: String,
    /// An expert of the set on the chosen trunk: its trunk executor, tokenizer and card.
    on_trunk: Arc<Expert>,
    req: TrainRequest,
}

/// Check the request against the set and the data, then start the job.
pub async fn start(
    jobs: &Arc<Jobs>,
    core: &Arc<Core>,
    class: &str,
    req: TrainRequest,
) -> Result<crate::control::jobs::Job> {
    start_then(jobs, core, class, req, |v| async { Ok(v) }).await
}

/// `start`, with `after` run on the job's result once the head is installed (the job succeeds
/// with what `after` returns).
pub async fn start_then<F, Fut>(
    jobs: &Arc<Jobs>,
    core: &Arc<Core>,
    class: &str,
    req: TrainRequest,
    after: F,
) -> Result<crate::control::jobs::Job>
where
    F: FnOnce(Value) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<Value>> + Send + 'static,
{
    moe_core::bundle::card::check_class(class).map_err(Error::BadRequest)?;
    check_name(&slug(class)).map_err(|e| Error::BadRequest(format!("class {class:?} cannot name a bundle: {e}")))?;
    let set = core.snapshot()?;
    if req.mode == Mode::Shadow && set.get(class).is_none() {
        return Err(Error::Conflict(format!(
            "{class:?} has no active expert to shadow: train with \"mode\": \"install\""
        )));
    }
    let on_trunk = pick_trunk(&set.experts, req.trunk.as_deref())?;
    let data = jobs.data().cloned();
    let (class_owned, r) = (class.to_string(), req);
    let prepared = tokio::task::spawn_blocking(move || prepare(class_owned, r, on_trunk, data.as_ref())).await??;
    let (core, jobs2) = (core.clone(), jobs.clone());
    jobs.spawn("train", class, move |id| async move { after(run(&core, &jobs2, id, prepared).await?).await })
}

/// The expert whose trunk the head will run on.
fn pick_trunk(experts: &[Arc<Expert>], wanted: Option<&str>) -> Result<Arc<Expert>> {
    let on_trunks: Vec<&Arc<Expert>> = experts.iter().filter(|e| e.head.is_some() && e.card.trunk.is_some()).collect();
    let id = |e: &Arc<Expert>| e.card.trunk.as_ref().map(|t| t.id.clone()).unwrap_or_default();
    if let Some(w) = wanted {
        return on_trunks.into_iter().find(|e| id(e) == w).cloned().ok_or_else(|| {
            let served: Vec<String> =
                experts.iter().filter_map(|e| e.card.trunk.as_ref().map(|t| t.id.clone())).collect();
            Error::NotFound(format!("trunk {w:?} is not served by this set (served: {served:?})"))
        });
    }
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for e in &on_trunks {
        *counts.entry(id(e)).or_default() += 1;
    }
    let best = counts.iter().max_by_key(|(_, n)| **n).map(|(t, _)| t.clone());
    best.and_then(|t| on_trunks.into_iter().find(|e| id(e) == t).cloned()).ok_or_else(|| {
        Error::Conflict("no expert of the serving set runs on a trunk: nothing to train a head on".into())
    })
}

/// Duplicates, overlaps, counts and the default negatives (reads the data file: blocking).
fn prepare(class: String, req: TrainRequest, on_trunk: Arc<Expert>, data: Option<&DataArgs>) -> Result<Prepared> {
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for (i, t) in req.positives.iter().enumerate() {
        if let Some(j) = seen.insert(t.as_str(), i) {
            return Err(Error::BadRequest(format!("positive {i} repeats positive {j}: send each example once")));
        }
    }
    let (negatives, source) = match &req.negatives {
        Some(n) => (checked_negatives(n, &seen)?, "the request".to_string()),
        None => sampled_negatives(&class, &seen, data)?,
    };
    // Feedback, when asked for: its texts of the class join the positives, the others the negatives.
    let (mut positives, mut negatives) = (req.positives.clone(), negatives);
    let (mut fb_pos, mut fb_neg) = (0, 0);
    if let Some(fb) = &req.feedback {
        let mut known: std::collections::HashSet<String> = positives.iter().chain(&negatives).cloned().collect();
        for (text, label) in fb.iter().filter(|(text, _)| known.insert(text.clone())) {
            if *label == class {
                positives.push(text.clone());
                fb_pos += 1;
            } else {
                negatives.push(text.clone());
                fb_neg += 1;
            }
        }
    }
    let source = if req.feedback.is_some() {
        format!("{source}; plus {fb_neg} negatives and {fb_pos} positives from the feedback log")
    } else {
        source
    };
    check_counts(positives.len(), negatives.len())?;
    Ok(Prepared { positives, negatives, negatives_source: source, on_trunk, class, req })
}

/// The request's negatives, each once and none also a positive (`positives`: text -> index).
fn checked_negatives(negatives: &[String], positives: &HashMap<&str, usize>) -> Result<Vec<String>> {
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for (i, t) in negatives.iter().enumerate() {
        if let Some(j) = positives.get(t.as_str()) {
            return Err(Error::BadRequest(format!("negative {i} is also positive {j}")));
        }
        if let Some(j) = seen.insert(t.as_str(), i) {
            return Err(Error::BadRequest(format!("negative {i} repeats negative {j}: send each example once")));
        }
    }
    Ok(negatives.to_vec())
}

/// At most `DEFAULT_NEGATIVES` distinct train texts of other classes (seeded), and where they came from.
fn sampled_negatives(
    class: &str,
    positives: &HashMap<&str, usize>,
    data: Option<&DataArgs>,
) -> Result<(Vec<String>, String)> {
    let d = data.filter(|d| d.available()).ok_or_else(|| {
        Error::BadRequest(
            "no \"negatives\" given and no labelled data configured (--data / MOE_DATA) to sample them from".into(),
        )
    })?;
    let rows = d.read("train")?;
    let mut pool: Vec<&String> = rows
        .texts
        .iter()
        .zip(&rows.labels)
        .filter(|(t, l)| *l != class && !positives.contains_key(t.as_str()))
        .map(|(t, _)| t)
        .collect();
    pool.sort();
    pool.dedup();
    let classes: std::collections::BTreeSet<&String> = rows.labels.iter().filter(|l| *l != class).collect();
    shuffle(&mut pool, SEED);
    pool.truncate(DEFAULT_NEGATIVES);
    let source = format!(
        "{} rows sampled (seed {SEED}) from the train split of {} ({} other classes)",
        pool.len(),
        d.data.display(),
        classes.len()
    );
    Ok((pool.into_iter().cloned().collect(), source))
}

fn check_counts(positives: usize, negatives: usize) -> Result<()> {
    if positives < MIN_EXAMPLES {
        return Err(Error::BadRequest(format!(
            "{positives} positives given: at least {MIN_EXAMPLES} are needed ({FOLDS}-fold cross-validation)"
        )));
    }
    if negatives < MIN_EXAMPLES {
        return Err(Error::BadRequest(format!("{negatives} negatives: at least {MIN_EXAMPLES} are needed")));
    }
    if positives + negatives > MAX_EXAMPLES {
        return Err(Error::BadRequest(format!(
            "{} examples: at most {MAX_EXAMPLES} per request",
            positives + negatives
        )));
    }
    Ok(())
}

/// Embed texts with the trunk, chunk by chunk, through its shared executor, at a lower priority
/// than live traffic: a chunk is queued only once no live job waits on the trunk (or after
/// `YIELD_AT_MOST`, so a saturated service still trains), so a live request waits behind at most
/// one chunk of `EMBED_CHUNK` texts.
async fn embed(jobs: &Jobs, id: u64, e: &Arc<Expert>, texts: &[String]) -> Result<Vec<Vec<f32>>> {
    let mut out = Vec::with_capacity(texts.len());
    for (k, chunk) in texts.chunks(EMBED_CHUNK).enumerate() {
        let waiting = Instant::now();
        while e.stage1.queue_depth() > 0 && waiting.elapsed() < YIELD_AT_MOST {
            tokio::time::sleep(std::time::Duration::from_micros(500)).await;
        }
        let (tok, owned) = (e.tokenizer.clone(), chunk.to_vec());
        let enc = tokio::task::spawn_blocking(move || owned.iter().map(|t| tok.encode(t)).collect::<Result<Vec<_>>>())
            .await??;
        let m: Matrix = e
            .stage1
            .submit(Input::Tokens(Arc::new(enc)))?
            .await
            .map_err(|_| Error::Internal("the trunk dropped a training job".into()))??;
        out.extend((0..m.rows).map(|i| m.row(i).to_vec()));
        if k % 16 == 0 {
            jobs.progress(id, format!("embedding: {}/{} texts", out.len(), texts.len()));
        }
    }
    Ok(out)
}

async fn run(core: &Arc<Core>, jobs: &Arc<Jobs>, id: u64, p: Prepared) -> Result<Value> {
    let started = Instant::now();
    let texts: Vec<String> = p.positives.iter().chain(&p.negatives).cloned().collect();
    let y: Vec<bool> = (0..texts.len()).map(|i| i < p.positives.len()).collect();
    let x = embed(jobs, id, &p.on_trunk, &texts).await?;
    let embed_ms = started.elapsed().as_secs_f64() * 1e3;
    jobs.progress(id, format!("cross-validating C over {C_GRID:?} ({FOLDS} folds)"));
    let t = Instant::now();
    // The class's expected share of traffic: one of the set's classes (with this one), uniformly.
    let set = core.snapshot()?;
    let classes = set.experts.len() + usize::from(set.get(&p.class).is_none());
    let prior = 1.0 / classes.max(2) as f64;
    let logit_shift = (prior / (1.0 - prior)).ln();
    let x = Arc::new(x); // the self-test below reads the embeddings again
    let fitted = {
        let x = x.clone();
        in_background(move || cross_validate(&x, &y, logit_shift)).await?
    };
    let fit_ms = t.elapsed().as_secs_f64() * 1e3;
    // The class's centroid, as `moe fit` writes one, so an open-world rule that blends in the
    // nearest-centroid similarity stays in force with the new class.
    let mut fitted = fitted;
    let dim = x.first().map_or(0, Vec::len);
    fitted.model.head.centroid = Some(LinearHead::centroid_of(x[..p.positives.len()].iter().map(Vec::as_slice), dim));
    let cv = json!({"folds": fitted.folds, "C": fitted.c, "grid": fitted.grid, "auc": fitted.report.auc,
                    "eer": fitted.report.eer, "threshold": fitted.report.eer_threshold,
                    "f1_at_eer": fitted.report.at_eer.f1, "precision_at_eer": fitted.report.at_eer.precision,
                    "recall_at_eer": fitted.report.at_eer.recall});
    if fitted.report.eer > p.req.max_eer {
        return Err(Error::QualityGate(format!(
            "cross-validated EER {:.4} is above the bound {} (max_eer): nothing was written or installed; cv: {cv}",
            fitted.report.eer, p.req.max_eer
        )));
    }
    jobs.progress(id, "writing the bundle");
    let t = Instant::now();
    let selftest = selftest_of(&texts, p.positives.len(), &fitted.model, &x);
    let bundle = {
        let (root, class, on_trunk) = (core.root().to_path_buf(), p.class.clone(), p.on_trunk.clone());
        let provenance = json!({
            "trained_by": "moe online training (POST /experts/{class}/train)",
            "who": p.req.who, "created": now_rfc3339(),
            "examples": {"positives": p.positives.len(), "negatives": p.negatives.len(),
                         "negatives_source": p.negatives_source},
            "rebalance": {"method": "class_weight"}, "solver": "newton (eval::logreg)",
            "prior_correction": {"prior": prior, "logit_shift": logit_shift,
                                 "why": "balanced weights imply a prior of 1/2; shifted to 1 / classes in the set"},
            "iterations": fitted.model.iterations, "cv": cv,
        });
        let (model, report) = (fitted.model.clone(), fitted.report.clone());
        tokio::task::spawn_blocking(move || {
            write_bundle(&root, &class, &on_trunk, &model, &report, provenance, selftest)
        })
        .await??
    };
    let write_ms = t.elapsed().as_secs_f64() * 1e3;
    jobs.progress(id, format!("installing {bundle} ({:?})", p.req.mode));
    let t = Instant::now();
    let installed = install(core, &p, &bundle).await?;
    let install_ms = t.elapsed().as_secs_f64() * 1e3;
    Ok(json!({
        "bundle": bundle, "mode": p.req.mode, "class": p.class,
        "trunk": p.on_trunk.card.trunk.as_ref().map(|t| t.id.clone()),
        "examples": {"positives": p.positives.len(), "negatives": p.negatives.len(), "negatives_source": p.negatives_source},
        "cv": cv, "installed": installed,
        "timings_ms": {"embed": embed_ms, "fit": fit_ms, "write": write_ms, "install": install_ms,
                       "total": started.elapsed().as_secs_f64() * 1e3},
    }))
}

/// The self-test texts of a trained bundle: the first three positives and two negatives, with the
/// probabilities the fitted model gives them.
fn selftest_of(texts: &[String], positives: usize, model: &Logistic, x: &[Vec<f32>]) -> Vec<SelfTest> {
    [0, 1, 2]
        .into_iter()
        .chain([positives, positives + 1])
        .filter(|&i| i < texts.len())
        .map(|i| SelfTest { text: texts[i].clone(), probability: model.probability(&x[i]) })
        .collect()
}

/// Serve the written bundle as the request asked: swapped in, or attached as the class's shadow.
async fn install(core: &Arc<Core>, p: &Prepared, bundle: &str) -> Result<Value> {
    Ok(match p.req.mode {
        Mode::Install => {
            let out =
                swap_as(core, &p.class, Swap { bundle: bundle.to_string(), ..Default::default() }, "train").await?;
            serde_json::to_value(out).expect("json")
        }
        Mode::Shadow => {
            let sh = super::shadow::attach(core, &p.class, bundle).await?;
            json!({"shadow": sh.expert.bundle, "version": sh.expert.card.version})
        }
    })
}

/// Run CPU-heavy work on its own thread at the lowest scheduling priority (nice 19: Linux keeps a
/// nice value per thread), so the fit takes the cores live traffic leaves idle. Measured with
/// bench/train-load.sh (docs/bench/train-load-chunk8-nice.jsonl): see docs/BENCHMARKS.md.
async fn in_background<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> Result<T> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("train-fit".into())
        .spawn(move || {
            #[cfg(target_os = "linux")]
            // SAFETY: setpriority only reads its arguments; the id is this thread's own.
            unsafe {
                let tid = libc::gettid();
                libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, 19);
            }
            let _ = tx.send(work());
        })
        .map_err(|e| Error::Internal(format!("cannot start the training thread: {e}")))?;
    rx.await.map_err(|_| Error::Internal("the training thread stopped".into()))
}

/// Write `<slug>--online-<time>-<sha8>/{head.json, card.json}` into the model root via a temp
/// folder and one rename; returns the bundle's name.
fn write_bundle(
    root: &std::path::Path,
    class: &str,
    on_trunk: &Expert,
    model: &Logistic,
    report: &BinaryReport,
    provenance: Value,
    selftest: Vec<SelfTest>,
) -> Result<String> {
    let tmp = temp_path(root, "-train");
    std::fs::create_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    let result = (|| {
        let head_path = tmp.join("head.json");
        write_atomic(&head_path, &serde_json::to_vec(&model.head).expect("json"))?;
        let sha = sha256_file(&head_path)?;
        let stamp = now_rfc3339().replace(['-', ':'], "");
        let stamp = stamp.split('.').next().unwrap_or(&stamp).trim_end_matches('Z').to_string() + "Z";
        let name = format!("{}--online-{}-{}", slug(class), stamp.to_lowercase(), &sha[..8]);
        let threshold = (report.eer_threshold as f32).clamp(1e-6, 1.0 - 1e-6);
        let card = Card {
            schema: CARD_SCHEMA,
            class: class.to_string(),
            algorithm: "online-logreg".into(),
            kind: Kind::Linear,
            version: format!("{stamp}-{}", &sha[..8]),
            graph: FileRef { file: "head.json".into(), sha256: sha },
            max_seq_len: on_trunk.card.max_seq_len,
            threshold: Some(Threshold { value: threshold, method: "eer".into(), split: format!("cv{}", FOLDS) }),
            // Its examples are not a sample of traffic, so no Platt map is fitted on them: under a
            // `calibrated` gate the set falls back to probabilities until `moe calibrate` runs.
            calibration: None,
            metrics: BTreeMap::from([(
                "cv".to_string(),
                SplitMetrics {
                    provider: on_trunk.provider().into(),
                    runtime: "moe online training".into(),
                    report: report.clone(),
                },
            )]),
            provenance,
            selftest,
            tokenizer: None,
            spelling: None,
            trunk: on_trunk.card.trunk.clone(),
            embedding_dim: on_trunk.card.embedding_dim,
            extra: BTreeMap::new(),
        };
        card.write(&tmp.join("card.json"))?;
        let dest = root.join(&name);
        std::fs::rename(&tmp, &dest).map_err(|e| Error::io(&dest, e))?;
        sync_parent(&dest);
        Ok(name)
    })();
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    result
}
