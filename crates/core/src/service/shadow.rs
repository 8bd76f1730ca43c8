//! A shadow: a candidate scoring live traffic beside the active expert of its class, with its
//! agreement statistics; answers never change.

use std::sync::{Arc, Mutex};

use crate::Result;
use crate::error::lock;
use crate::expert::Expert;

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
