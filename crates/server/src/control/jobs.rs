//! Background jobs: automatic permutation (`POST /experts/{class}/select`) and online training
//! (`POST /experts/{class}/train`, `control::train`). The candidates of a
//! class are evaluated on the validation split in the serving runtime (`eval::evaluate`, the same
//! function `moe eval` and `moe calibrate` use); the best one replaces the active expert through the
//! normal swap path if it beats it.
//!
//! Bounded: one running job per class (409 for a second), `MAX_RUNNING` in all (429); finished jobs are kept for
//! `GET /jobs/{id}` up to `KEEP_FINISHED`, oldest dropped first.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::Serialize;
use serde_json::{Value, json};

use super::swap::{Swap, swap_as};
use moe_core::bundle::bundle_names;
use moe_core::bundle::card::Card;
use moe_core::bundle::{BinaryReport, Metric};
use moe_core::clock::now_rfc3339;
use moe_core::data::{DataArgs, Rows};
use moe_core::error::lock;
use moe_core::evaluation::evaluate;
use moe_core::expert::Expert;
use moe_core::service::Core;
use moe_core::{Error, Result};

/// Finished jobs kept for reading; older ones are dropped.
pub const KEEP_FINISHED: usize = 100;
/// Selection jobs running at once over all classes (each loads and evaluates bundles on the
/// serving cores); one more is refused with 429 and Retry-After.
pub const MAX_RUNNING: usize = 2;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    Running,
    Succeeded,
    Failed,
}

#[derive(Debug, Clone, Serialize)]
pub struct Job {
    pub id: u64,
    pub kind: &'static str,
    pub class: String,
    pub state: JobState,
    pub created: String,
    pub finished: Option<String>,
    /// What a running job is doing now (training: embedding / cross-validation / installing).
    pub progress: Option<String>,
    pub result: Option<Value>,
    pub error: Option<String>,
}

/// What a selection job evaluates, validated.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    pub metric: Metric,
    /// Bundle folders to consider (None: every bundle in the model root whose card is for the class).
    pub candidates: Option<Vec<String>>,
    /// Feedback (text, label) pairs evaluated beside the validation split, when the request asked.
    pub feedback: Option<Vec<(String, String)>>,
}

pub struct Jobs {
    core: Arc<Core>,
    /// Labelled data whose validation split the jobs evaluate on (None: selection is refused).
    data: Option<DataArgs>,
    next: AtomicU64,
    jobs: Mutex<BTreeMap<u64, Job>>,
}

impl Jobs {
    pub fn new(core: Arc<Core>, data: Option<DataArgs>) -> Arc<Jobs> {
        Arc::new(Jobs { core, data, next: AtomicU64::new(0), jobs: Mutex::new(BTreeMap::new()) })
    }

    pub fn get(&self, id: u64) -> Option<Job> {
        lock(&self.jobs).get(&id).cloned()
    }

    /// Store a job's new state, dropping the oldest finished jobs over the cap.
    fn put(&self, job: Job) {
        let mut jobs = lock(&self.jobs);
        jobs.insert(job.id, job);
        let finished: Vec<u64> = jobs.values().filter(|j| j.state != JobState::Running).map(|j| j.id).collect();
        for id in finished.iter().take(finished.len().saturating_sub(KEEP_FINISHED)) {
            jobs.remove(id);
        }
    }

    /// Start a selection job for `class`; returns at once with the job (state "running").
    pub async fn start_select(self: &Arc<Self>, class: &str, req: Selection) -> Result<Job> {
        moe_core::bundle::card::check_class(class).map_err(Error::BadRequest)?;
        let data = self.data.clone().ok_or_else(|| {
            Error::BadRequest("no validation data configured: start the service with --data / MOE_DATA".into())
        })?;
        let candidates = match req.candidates {
            Some(c) => c,
            None => {
                // Reading every card of the model root is file I/O: off the async workers.
                let (root, class) = (self.core.root().to_path_buf(), class.to_string());
                tokio::task::spawn_blocking(move || -> Result<Vec<String>> {
                    Ok(bundle_names(&root)?
                        .into_iter()
                        .filter(|b| Card::read(&root.join(b).join("card.json")).is_ok_and(|c| c.class == class))
                        .collect())
                })
                .await??
            }
        };
        if candidates.is_empty() {
            return Err(Error::NotFound(format!("no candidate bundles for {class:?} in the model root")));
        }
        let (core, class_owned) = (self.core.clone(), class.to_string());
        self.spawn("select", class, move |_| async move {
            run_select(&core, &class_owned, req.metric, candidates, data, req.feedback).await
        })
    }

    /// Labelled data the jobs read (selection: its validation split; training: default negatives).
    pub fn data(&self) -> Option<&DataArgs> {
        self.data.as_ref()
    }

    /// Record what a running job is doing (shown by `GET /jobs/{id}`).
    pub fn progress(&self, id: u64, what: impl Into<String>) {
        if let Some(j) = lock(&self.jobs).get_mut(&id).filter(|j| j.state == JobState::Running) {
            j.progress = Some(what.into());
        }
    }

    /// Register a job of `kind` for `class` and run `work` in the background; at most one running
    /// job per class (409) and `MAX_RUNNING` in all (429). `work` gets the job's id.
    pub fn spawn<F, Fut>(self: &Arc<Self>, kind: &'static str, class: &str, work: F) -> Result<Job>
    where
        F: FnOnce(u64) -> Fut,
        Fut: std::future::Future<Output = Result<Value>> + Send + 'static,
    {
        let job = {
            let mut jobs = lock(&self.jobs);
            if let Some(j) = jobs.values().find(|j| j.class == class && j.state == JobState::Running) {
                return Err(Error::Conflict(format!(
                    "a {} job for {class:?} is already running (job {})",
                    j.kind, j.id
                )));
            }
            if jobs.values().filter(|j| j.state == JobState::Running).count() >= MAX_RUNNING {
                return Err(Error::TooMany(format!("{MAX_RUNNING} jobs are already running")));
            }
            let job = Job {
                id: self.next.fetch_add(1, Ordering::SeqCst) + 1,
                kind,
                class: class.to_string(),
                state: JobState::Running,
                created: now_rfc3339(),
                finished: None,
                progress: None,
                result: None,
                error: None,
            };
            jobs.insert(job.id, job.clone());
            job
        };
        let fut = work(job.id);
        let (jobs, mut done) = (self.clone(), job.clone());
        tokio::spawn(async move {
            let r = fut.await;
            done.finished = Some(now_rfc3339());
            match r {
                Ok(v) => (done.state, done.result) = (JobState::Succeeded, Some(v)),
                Err(e) => (done.state, done.error) = (JobState::Failed, Some(e.to_string())),
            }
            jobs.put(done);
        });
        Ok(job)
    }
}

/// Load a bundle and evaluate it on the rows (blocking thread).
async fn evaluate_bundle(core: &Arc<Core>, bundle: String, rows: Arc<Rows>) -> Result<(String, String, BinaryReport)> {
    let core = core.clone();
    tokio::task::spawn_blocking(move || {
        let e = Expert::load(&core.pool, &core.runtime, core.root(), &bundle, true)?;
        let report = evaluate(&e, &rows)?;
        Ok((bundle, e.card.version.clone(), report))
    })
    .await?
}

async fn run_select(
    core: &Arc<Core>,
    class: &str,
    metric: Metric,
    candidates: Vec<String>,
    data: DataArgs,
    feedback: Option<Vec<(String, String)>>,
) -> Result<Value> {
    let mut rows = tokio::task::spawn_blocking(move || data.read("val")).await??;
    let from_feedback = feedback.as_ref().map_or(0, Vec::len);
    for (text, label) in feedback.unwrap_or_default() {
        rows.texts.push(text);
        rows.labels.push(label);
    }
    let rows = Arc::new(rows);
    let current = core.snapshot()?.get(class).cloned();
    let mut names = candidates;
    if let Some(c) = &current
        && !names.contains(&c.bundle)
    {
        names.push(c.bundle.clone());
    }
    // A candidate that fails to load or validate is reported, not fatal.
    let mut table = Vec::new();
    let mut best: Option<(f64, String)> = None;
    let mut current_score = None;
    for b in names {
        match evaluate_bundle(core, b.clone(), rows.clone()).await {
            Ok((bundle, version, r)) => {
                let rank = metric.rank(&r);
                table.push(json!({"bundle": bundle, "version": version, metric.name(): metric.of(&r), "auc": r.auc,
                                  "eer": r.eer, "f1_at_eer": r.at_eer.f1}));
                if current.as_ref().is_some_and(|c| c.bundle == bundle) {
                    current_score = Some(rank);
                }
                if best.as_ref().is_none_or(|(s, _)| rank > *s) {
                    best = Some((rank, bundle));
                }
            }
            Err(e) => table.push(json!({"bundle": b, "error": e.to_string()})),
        }
    }
    let (rank, bundle) = best.ok_or_else(|| Error::BadRequest("no candidate could be evaluated".into()))?;
    let beats = current_score.is_none_or(|c| rank > c);
    let mut swapped = None;
    if beats && current.as_ref().is_none_or(|c| c.bundle != bundle) {
        let req = Swap {
            bundle: bundle.clone(),
            expected_version: current.as_ref().map(|c| c.card.version.clone()),
            ..Default::default()
        };
        swapped = Some(serde_json::to_value(swap_as(core, class, req, "select").await?).expect("json"));
    }
    let split = if from_feedback > 0 { format!("val + {from_feedback} feedback texts") } else { "val".into() };
    Ok(json!({"metric": metric, "split": split, "candidates": table, "winner": bundle,
              "active_before": current.as_ref().map(|c| c.bundle.clone()), "swapped": swapped}))
}

#[cfg(test)]
mod tests {
    use super::*;
    use moe_core::config::{Limits, RuntimeConfig};
    use moe_core::service::Paths;

    fn job(id: u64, state: JobState) -> Job {
        Job {
            id,
            kind: "select",
            class: "Travel".into(),
            state,
            created: now_rfc3339(),
            finished: None,
            progress: None,
            result: None,
            error: None,
        }
    }

    #[tokio::test]
    async fn at_most_one_running_job_per_class_and_max_running_in_all() {
        let core = Core::new(Paths::new("models", "state"), RuntimeConfig::default(), Limits::default());
        let data = moe_core::data::DataArgs {
            data: "data/wikihow19_titles.csv".into(),
            text_col: "title".into(),
            label_col: "label".into(),
            split_col: "split".into(),
        };
        let jobs = Jobs::new(core, Some(data));
        let req = || Selection { metric: Metric::Eer, candidates: Some(vec!["x".into()]), feedback: None };
        jobs.put(job(1, JobState::Running)); // Travel
        let e = jobs.start_select("Travel", req()).await.unwrap_err();
        assert!(matches!(e, Error::Conflict(_)), "{e}");
        jobs.put(Job { class: "Health".into(), ..job(2, JobState::Running) });
        let e = jobs.start_select("Youth", req()).await.unwrap_err();
        assert!(matches!(e, Error::TooMany(_)), "{e}");
    }

    #[test]
    fn finished_jobs_are_pruned_oldest_first_and_running_ones_kept() {
        let core = Core::new(Paths::new("models", "state"), RuntimeConfig::default(), Limits::default());
        let jobs = Jobs::new(core, None);
        jobs.put(job(1, JobState::Running));
        for id in 2..=(KEEP_FINISHED as u64 + 51) {
            jobs.put(job(id, JobState::Succeeded));
        }
        assert!(jobs.get(1).is_some(), "a running job is never dropped");
        assert!(jobs.get(2).is_none() && jobs.get(51).is_none(), "the oldest finished jobs went");
        assert!(jobs.get(52).is_some() && jobs.get(KEEP_FINISHED as u64 + 51).is_some());
        assert_eq!(lock(&jobs.jobs).len(), KEEP_FINISHED + 1);
    }
}
