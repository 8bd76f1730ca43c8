//! Overload and deadlines over real sockets with the real runtime: admission control refuses before
//! any work, a full executor queue answers 503, a request past its deadline answers 503, and work
//! whose requester has gone is skipped by the executor instead of being computed.

mod common;

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use moe_core::config::{Limits, RuntimeConfig};
use moe_core::service::Core;
use serde_json::{Value, json};

/// The shipped set (int8 trunk, one text per session run: ~2 ms a text) on one session.
async fn slow_core(limits: Limits, runtime: RuntimeConfig) -> Arc<Core> {
    common::loaded_core_with(&common::default_models(), "overload", runtime, limits).await
}

/// 64 distinct titles: one request's worth of work, ~130 ms on one core.
fn batch(k: usize) -> Value {
    json!({"texts": (0..64).map(|i| format!("how to plan a long trip number {k} {i} across europe")).collect::<Vec<_>>()})
}

/// Fire `n` batch requests at once; returns (status, error code) of each.
async fn burst(base: &str, n: usize) -> Vec<(u16, String)> {
    let client = reqwest::Client::new();
    let calls: Vec<_> = (0..n)
        .map(|k| {
            let (client, url) = (client.clone(), format!("{base}/classify"));
            tokio::spawn(async move {
                let res = client.post(url).json(&batch(k)).send().await.unwrap();
                let status = res.status().as_u16();
                let retry = res.headers().get("retry-after").is_some();
                let v: Value = res.json().await.unwrap();
                if status == 503 {
                    assert!(retry, "503 without Retry-After: {v}");
                }
                (status, v["error"]["code"].as_str().unwrap_or("").to_string())
            })
        })
        .collect();
    let mut out = Vec::new();
    for c in calls {
        out.push(c.await.unwrap());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admission_control_refuses_before_any_work() {
    let limits = Limits { max_in_flight_texts: 64, ..Limits::default() };
    let core = slow_core(limits, common::runtime()).await;
    let trunk = core.snapshot().unwrap().experts[0].stage1.clone();
    let rows_before = trunk.stats().rows.load(Relaxed);
    let base = common::serve(core.clone()).await;
    let answers = burst(&base, 4).await;
    let ok = answers.iter().filter(|a| a.0 == 200).count();
    let refused = answers.iter().filter(|a| *a == &(503, "overloaded".to_string())).count();
    assert!(ok >= 1 && refused >= 1 && ok + refused == 4, "{answers:?}");
    assert_eq!(trunk.stats().rows.load(Relaxed) - rows_before, 64 * ok, "refused requests reached the trunk");
    assert_eq!(core.texts_in_flight(), 0, "permits are returned");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_answers_503() {
    let runtime = RuntimeConfig { queue_capacity: 1, ..common::runtime() };
    let core = slow_core(Limits::default(), runtime).await;
    let base = common::serve(core).await;
    let answers = burst(&base, 6).await;
    assert!(answers.iter().any(|a| a.0 == 200), "{answers:?}");
    assert!(answers.iter().any(|a| *a == (503, "overloaded".to_string())), "{answers:?}");
    assert!(answers.iter().all(|a| a.0 == 200 || a.1 == "overloaded"), "{answers:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_deadline_answers_503_and_abandoned_work_is_skipped() {
    let limits = Limits { request_timeout_ms: 30, ..Limits::default() };
    let core = slow_core(limits, common::runtime()).await;
    let trunk = core.snapshot().unwrap().experts[0].stage1.clone();
    let skipped_before = trunk.stats().skipped.load(Relaxed);
    let base = common::serve(core).await;
    // Each request needs ~130 ms of trunk time; with one session the later ones wait in the queue
    // past their 30 ms deadline, so their requesters are gone before the worker reaches them.
    let answers = burst(&base, 6).await;
    assert!(answers.iter().all(|a| *a == (503, "timeout".to_string())), "{answers:?}");
    // The worker drains the queue: give it the time the first job needs, then look.
    for _ in 0..100 {
        if trunk.queue_depth() == 0 && trunk.stats().skipped.load(Relaxed) > skipped_before {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let skipped = trunk.stats().skipped.load(Relaxed) - skipped_before;
    assert!(skipped >= 1, "no abandoned job was skipped");
}

/// A request with more texts than --max-in-flight-texts admits could never pass: 400 at once,
/// without Retry-After (it was a 503 with Retry-After: 1 for ever), also on an idle server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_can_never_pass_is_a_400() {
    let limits = Limits { max_in_flight_texts: 4, ..Limits::default() };
    let core = common::loaded_core(&common::fixture_models(), limits).await;
    let base = common::serve(core).await;
    let c = reqwest::Client::new();
    let texts: Vec<String> = (0..5).map(|i| format!("how to pack for trip {i}")).collect();
    let res = c.post(format!("{base}/classify")).json(&json!({"texts": texts})).send().await.unwrap();
    assert_eq!(res.status().as_u16(), 400);
    assert!(res.headers().get("retry-after").is_none());
    let v: Value = res.json().await.unwrap();
    assert!(v["error"]["message"].as_str().unwrap().contains("--max-in-flight-texts"), "{v}");
    let res = c.post(format!("{base}/classify")).json(&json!({"texts": &texts[..4]})).send().await.unwrap();
    assert_eq!(res.status().as_u16(), 200, "four texts pass");
}
