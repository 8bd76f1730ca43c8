//! Background jobs: automatic permutation (`POST /experts/{class}/select`). The candidates of a
//! class are evaluated on the validation split in the serving runtime; the best one replaces the
//! active expert through the normal swap path if it beats it.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::admin::SwapRequest;
use crate::core::{Core, Expert, now_rfc3339};
use crate::eval::metrics::BinaryReport;
use crate::experts::card::Card;
use crate::{Error, Result};

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SelectRequest {
    /// "eer" (default, lower is better), "f1" or "accuracy" (at the EER threshold, higher is better).
    #[serde(default)]
    pub metric: Option<String>,
    /// Bundle folders to consider (default: every bundle in the model root whose card is for the class).
    #[serde(default)]
    pub candidates: Option<Vec<String>>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Job {
    pub id: u64,
    pub kind: &'static str,
    pub class: String,
    pub state: &'static str,
    pub created: String,
    pub finished: Option<String>,
    pub result: Option<Value>,
    pub error: Option<String>,
}

#[derive(Default)]
pub struct Jobs {
    next: AtomicU64,
    jobs: std::sync::Mutex<HashMap<u64, Job>>,
}

impl Jobs {
    pub fn get(&self, id: u64) -> Option<Job> {
        self.jobs.lock().expect("jobs").get(&id).cloned()
    }

    fn put(&self, job: Job) {
        self.jobs.lock().expect("jobs").insert(job.id, job);
    }
}

/// (value used for ranking: higher is better, value as reported)
fn score(r: &BinaryReport, metric: &str) -> (f64, f64) {
    match metric {
        "f1" => (r.at_eer.f1, r.at_eer.f1),
        "accuracy" => (r.at_eer.accuracy, r.at_eer.accuracy),
        _ => (-r.eer, r.eer),
    }
}

impl Core {
    /// Start a selection job for `class`; returns at once with the job (state "running").
    pub fn start_select(self: &Arc<Self>, class: &str, req: SelectRequest) -> Result<Job> {
        let metric = req.metric.clone().unwrap_or_else(|| "eer".into());
        if !["eer", "f1", "accuracy"].contains(&metric.as_str()) {
            return Err(Error::BadRequest(format!("unknown metric {metric:?} (eer, f1, accuracy)")));
        }
        let data = self.data.get().cloned().ok_or_else(|| {
            Error::BadRequest("no validation data configured: start the service with --data / MOE_DATA".into())
        })?;
        let candidates = match req.candidates {
            Some(c) => c,
            None => crate::eval::cli::bundle_names(&self.root)?
                .into_iter()
                .filter(|b| Card::read(&self.root.join(b).join("card.json")).is_ok_and(|c| c.class == class))
                .collect(),
        };
        if candidates.is_empty() {
            return Err(Error::BadRequest(format!("no candidate bundles for {class:?} in the model root")));
        }
        let job = Job {
            id: self.jobs.next.fetch_add(1, Ordering::SeqCst) + 1,
            kind: "select",
            class: class.to_string(),
            state: "running",
            created: now_rfc3339(),
            finished: None,
            result: None,
            error: None,
        };
        self.jobs.put(job.clone());
        let (core, mut done, class) = (self.clone(), job.clone(), class.to_string());
        tokio::spawn(async move {
            let r = core.run_select(&class, &metric, candidates, data).await;
            done.finished = Some(now_rfc3339());
            match r {
                Ok(v) => {
                    done.state = "succeeded";
                    done.result = Some(v);
                }
                Err(e) => {
                    done.state = "failed";
                    done.error = Some(e.to_string());
                }
            }
            core.jobs.put(done);
        });
        Ok(job)
    }

    async fn evaluate(
        self: &Arc<Self>,
        bundle: String,
        rows: Arc<crate::eval::data::Rows>,
    ) -> Result<(String, String, BinaryReport)> {
        let core = self.clone();
        tokio::task::spawn_blocking(move || {
            let e = Expert::load(&core.pool, &core.runtime, &core.root, &bundle, true)?;
            let report = crate::eval::cli::evaluate(&e, &rows)?;
            Ok((bundle, e.card.version.clone(), report))
        })
        .await
        .map_err(|e| Error::Runtime(format!("evaluation panicked: {e}")))?
    }

    async fn run_select(
        self: &Arc<Self>,
        class: &str,
        metric: &str,
        candidates: Vec<String>,
        data: crate::eval::data::DataArgs,
    ) -> Result<Value> {
        let rows = Arc::new(
            tokio::task::spawn_blocking(move || data.read("val"))
                .await
                .map_err(|e| Error::Runtime(e.to_string()))??,
        );
        let current = self.snapshot()?.get(class).cloned();
        let mut names = candidates;
        if let Some(c) = &current
            && !names.contains(&c.bundle)
        {
            names.push(c.bundle.clone());
        }
        // A candidate that fails to load or validate is reported, not fatal.
        let mut table = Vec::new();
        let mut best: Option<(f64, String, String)> = None;
        let mut current_score = None;
        for b in names {
            match self.evaluate(b.clone(), rows.clone()).await {
                Ok((bundle, version, r)) => {
                    let (rank, shown) = score(&r, metric);
                    table.push(json!({"bundle": bundle, "version": version, metric: shown, "auc": r.auc,
                                      "eer": r.eer, "f1_at_eer": r.at_eer.f1}));
                    if current.as_ref().is_some_and(|c| c.bundle == bundle) {
                        current_score = Some(rank);
                    }
                    if best.as_ref().is_none_or(|(s, ..)| rank > *s) {
                        best = Some((rank, bundle, version));
                    }
                }
                Err(e) => table.push(json!({"bundle": b, "error": e.to_string()})),
            }
        }
        let (rank, bundle, _) = best.ok_or_else(|| Error::BadRequest("no candidate could be evaluated".into()))?;
        let beats = current_score.is_none_or(|c| rank > c);
        let mut swapped = None;
        if beats && current.as_ref().is_none_or(|c| c.bundle != bundle) {
            let req = SwapRequest {
                bundle: bundle.clone(),
                expected_version: current.as_ref().map(|c| c.card.version.clone()),
                ..Default::default()
            };
            swapped = Some(serde_json::to_value(self.swap(class, req).await?).expect("json"));
        }
        Ok(json!({"metric": metric, "split": "val", "candidates": table, "winner": bundle,
                  "active_before": current.as_ref().map(|c| c.bundle.clone()), "swapped": swapped}))
    }
}
