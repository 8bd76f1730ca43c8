//! `moe bench`: the in-process limit. The expert set runs through the same executors and ONNX
//! Runtime sessions as the service, with no HTTP, at several batch sizes; prints JSON lines.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Args;
use serde_json::json;

use moe_core::bundle::RegistryFile;
use moe_core::config::RuntimeConfig;
use moe_core::data::DataArgs;
use moe_core::inference::ExecutorPool;
use moe_core::service::ExpertSet;
use moe_core::{Error, Result};

/// What `moe bench` measures.
#[derive(Debug, Clone, Args)]
pub struct BenchOptions {
    /// Model root whose registry set is timed.
    #[arg(long, default_value = "models")]
    pub models: PathBuf,
    /// Texts come from this split, in file order (a fixed input set).
    #[arg(long, default_value = "test")]
    pub split: String,
    /// Batch sizes to time, one after the other.
    #[arg(long, value_delimiter = ',', default_value = "1,8,32,64")]
    pub batch: Vec<usize>,
    /// Seconds per batch size.
    #[arg(long, default_value_t = 5.0)]
    pub seconds: f64,
    /// Texts one per line, instead of --data / --split.
    ///
    /// E.g. docs/bench/texts.txt on a host without the data.
    #[arg(long)]
    pub texts: Option<PathBuf>,
    /// In-flight calls at once (batches overlap across graphs as in the service).
    #[arg(long, default_value_t = 1)]
    pub concurrency: usize,
}

/// Load the model root's registry set (as the service does, without its state folder) and time
/// `ExpertSet::probabilities`, the service's inference path, at each batch size.
pub async fn run(a: &BenchOptions, data: &DataArgs, runtime: &RuntimeConfig) -> Result<()> {
    let (models, runtime) = (a.models.clone(), runtime.clone());
    let set = tokio::task::spawn_blocking(move || {
        let pool = ExecutorPool::default();
        ExpertSet::load(&pool, &runtime, &models, &RegistryFile::read(&models)?)
    })
    .await??;
    let set = std::sync::Arc::new(set);
    let texts = match &a.texts {
        Some(p) => std::fs::read_to_string(p)
            .map_err(|e| Error::io(p, e))?
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(str::to_string)
            .collect(),
        None => data.read(&a.split)?.texts,
    };
    if texts.is_empty() {
        return Err(Error::BadRequest("no texts to benchmark".into()));
    }
    for &b in &a.batch {
        let batch: Vec<String> = texts.iter().cycle().take(b).cloned().collect();
        set.probabilities(&batch).await?; // warm this shape
        let deadline = Instant::now() + Duration::from_secs_f64(a.seconds);
        let started = Instant::now();
        let mut lat = Vec::new();
        let mut tasks = tokio::task::JoinSet::new();
        for w in 0..a.concurrency.max(1) {
            let (set, texts) = (set.clone(), texts.clone());
            tasks.spawn(async move {
                let mut lat = Vec::new();
                let mut i = w * b;
                while Instant::now() < deadline {
                    let batch: Vec<String> = (0..b).map(|k| texts[(i + k) % texts.len()].clone()).collect();
                    i += b;
                    let t = Instant::now();
                    set.probabilities(&batch).await?;
                    lat.push(t.elapsed().as_secs_f64() * 1e3);
                }
                Ok::<_, Error>(lat)
            });
        }
        while let Some(r) = tasks.join_next().await {
            lat.extend(r??);
        }
        let secs = started.elapsed().as_secs_f64();
        lat.sort_by(f64::total_cmp);
        let pct = |p: f64| lat[((lat.len() as f64 - 1.0) * p).round() as usize];
        println!(
            "{}",
            json!({"batch": b, "concurrency": a.concurrency, "calls": lat.len(), "seconds": secs,
                   "texts_per_s": (lat.len() * b) as f64 / secs, "calls_per_s": lat.len() as f64 / secs,
                   "p50_ms": pct(0.5), "p95_ms": pct(0.95), "p99_ms": pct(0.99),
                   "experts": set.experts.len()})
        );
    }
    Ok(())
}
