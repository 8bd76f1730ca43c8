//! Shadow mode: a candidate bundle scores live traffic beside the active expert of its class,
//! off the response path, without changing any answer. Its agreement with the active expert
//! (same pass/fail decision) and its score distribution are reported; it can be promoted (a normal
//! swap) or dropped. Shadows live in memory only: a restart drops them.

use std::sync::{Arc, Mutex};

use serde::Serialize;

use crate::core::{Core, Expert, ExpertSet};
use crate::{Error, Result};

pub const BUCKETS: usize = 10;

#[derive(Debug, Default, Clone, Serialize)]
pub struct ShadowStats {
    pub texts: u64,
    /// Texts where the shadow and the active expert made the same pass/fail decision.
    pub agreements: u64,
    pub sum_abs_probability_diff: f64,
    /// Counts of the shadow's probabilities in [0, 0.1), [0.1, 0.2), ... [0.9, 1].
    pub probability_histogram: [u64; BUCKETS],
}

pub struct Shadow {
    pub class: String,
    pub expert: Arc<Expert>,
    pub stats: Mutex<ShadowStats>,
}

#[derive(Debug, Serialize)]
pub struct ShadowInfo {
    pub bundle: String,
    pub version: String,
    pub algorithm: String,
    pub threshold: Option<f32>,
    pub loaded_at: String,
    pub texts: u64,
    pub agreement_rate: Option<f64>,
    pub mean_abs_probability_diff: Option<f64>,
    pub probability_histogram: [u64; BUCKETS],
}

impl Shadow {
    pub fn info(&self) -> ShadowInfo {
        let s = self.stats.lock().expect("shadow stats").clone();
        let n = s.texts as f64;
        ShadowInfo {
            bundle: self.expert.bundle.clone(),
            version: self.expert.card.version.clone(),
            algorithm: self.expert.card.algorithm.clone(),
            threshold: self.expert.threshold,
            loaded_at: self.expert.loaded_at.clone(),
            texts: s.texts,
            agreement_rate: (s.texts > 0).then(|| s.agreements as f64 / n),
            mean_abs_probability_diff: (s.texts > 0).then(|| s.sum_abs_probability_diff / n),
            probability_histogram: s.probability_histogram,
        }
    }

    /// Record one batch: the shadow's probabilities against the active expert's (same texts).
    pub fn record(&self, shadow: &[f32], active: &[f32], active_threshold: f32) {
        let t = self.expert.threshold.unwrap_or(0.5);
        let mut s = self.stats.lock().expect("shadow stats");
        for (&p, &q) in shadow.iter().zip(active) {
            s.texts += 1;
            s.agreements += u64::from((p >= t) == (q >= active_threshold));
            s.sum_abs_probability_diff += f64::from((p - q).abs());
            s.probability_histogram[((p * BUCKETS as f32) as usize).min(BUCKETS - 1)] += 1;
            metrics::histogram!("moe_shadow_probability", "class" => self.class.clone()).record(f64::from(p));
        }
        metrics::gauge!("moe_shadow_agreement_rate", "class" => self.class.clone())
            .set(s.agreements as f64 / s.texts.max(1) as f64);
        metrics::counter!("moe_shadow_texts_total", "class" => self.class.clone()).increment(shadow.len() as u64);
    }
}

impl ExpertSet {
    /// Score the texts with every shadow and record the comparison (called off the response path).
    pub async fn run_shadows(&self, texts: &[String], active: &[Vec<f32>]) {
        for sh in &self.shadows {
            let Some(i) = self.experts.iter().position(|e| e.class == sh.class) else { continue };
            match sh.expert.probabilities(texts).await {
                Ok(p) => sh.record(&p, &active[i], self.experts[i].threshold.unwrap_or(0.5)),
                Err(e) => tracing::warn!(class = %sh.class, error = %e, "shadow scoring failed"),
            }
        }
    }

    pub fn shadow(&self, class: &str) -> Option<&Arc<Shadow>> {
        self.shadows.iter().find(|s| s.class == class)
    }
}

impl Core {
    /// `PUT /experts/{class}/shadow`: load, validate and warm the candidate, then attach it.
    pub async fn attach_shadow(self: &Arc<Self>, class: &str, bundle: &str) -> Result<ShadowInfo> {
        if self.snapshot()?.get(class).is_none() {
            return Err(Error::UnknownClass(class.to_string()));
        }
        let expert = self.load_expert(bundle).await?;
        if expert.class != class {
            return Err(Error::bundle(
                self.root.join(bundle).join("card.json"),
                format!("is an expert for {:?}, not {class:?}", expert.class),
            ));
        }
        let shadow = Arc::new(Shadow {
            class: class.to_string(),
            expert: Arc::new(expert),
            stats: Mutex::new(ShadowStats::default()),
        });
        let info = shadow.info();
        self.replace_shadow(class, Some(shadow))?;
        Ok(info)
    }

    /// `DELETE /experts/{class}/shadow`.
    pub fn drop_shadow(&self, class: &str) -> Result<ShadowInfo> {
        let old = self
            .snapshot()?
            .shadow(class)
            .cloned()
            .ok_or_else(|| Error::NotFound(format!("no shadow for {class:?}")))?;
        self.replace_shadow(class, None)?;
        Ok(old.info())
    }

    /// `POST /experts/{class}/shadow/promote`: swap the shadow in as the active expert.
    pub async fn promote_shadow(self: &Arc<Self>, class: &str) -> Result<crate::admin::SwapOutcome> {
        let sh = self
            .snapshot()?
            .shadow(class)
            .cloned()
            .ok_or_else(|| Error::NotFound(format!("no shadow for {class:?}")))?;
        let out = self
            .swap(class, crate::admin::SwapRequest { bundle: sh.expert.bundle.clone(), ..Default::default() })
            .await?;
        self.replace_shadow(class, None)?;
        Ok(out)
    }
}
