//! End-to-end over a real socket, with the real ONNX Runtime and the shipped default experts.

mod common;

use std::sync::atomic::Ordering::Relaxed;

use moe_core::config::Limits;
use serde_json::{Value, json};

/// Every expert's row (`?experts=all`): these tests compare experts one by one.
async fn classify(client: &reqwest::Client, base: &str, body: Value) -> (u16, Value) {
    let res = client.post(format!("{base}/classify?experts=all")).json(&body).send().await.unwrap();
    (res.status().as_u16(), res.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_set_classifies_over_http() {
    let core = common::loaded_core(&common::default_models(), Limits::default()).await;
    let base = common::serve(core).await;
    let client = reqwest::Client::new();

    let ready: Value = common::json_of(client.get(format!("{base}/readyz"))).await;
    assert_eq!(ready["experts"], 19);

    let (s, v) = classify(&client, &base, json!({"text": "How to cook pasta like a chef"})).await;
    assert_eq!(s, 200, "{v}");
    let r = &v["results"][0];
    assert_eq!(r["label"], "Food and Entertaining", "{r}");
    assert_eq!(r["abstained"], false);
    assert_eq!(r["experts"].as_array().unwrap().len(), 19);
    // The default answer (`top`): the passed experts and the 5 best scores, best first.
    let res = client.post(format!("{base}/classify")).json(&json!({"text": "How to cook pasta like a chef"}));
    let top = common::json_of(res).await;
    let rows = top["results"][0]["experts"].as_array().unwrap();
    let scores: Vec<f64> = rows.iter().map(|e| e["score"].as_f64().unwrap()).collect();
    assert!(scores.windows(2).all(|w| w[0] >= w[1]), "best first: {scores:?}");
    assert_eq!(rows[0]["class"], "Food and Entertaining");
    let passed = r["experts"].as_array().unwrap().iter().filter(|e| e["passed"] == true).count();
    assert_eq!(rows.iter().filter(|e| e["passed"] == true).count(), passed, "every passed expert is listed");
    assert!(rows.len() >= 5 && rows.len() <= 5 + passed && rows.len() < 19, "{} rows", rows.len());

    let texts = ["how to change a flat tire", "how to meditate", "how to house train a puppy"];
    let (s, v) = classify(&client, &base, json!({"texts": texts})).await;
    assert_eq!(s, 200);
    let labels: Vec<&str> =
        v["results"].as_array().unwrap().iter().map(|r| r["best_guess"].as_str().unwrap()).collect();
    assert_eq!(labels, ["Cars & Other Vehicles", "Philosophy and Religion", "Pets and Animals"]);

    // Long texts are truncated to the model's max length and said so, never refused for length.
    let long = "how to plan a long trip across europe by train ".repeat(40);
    let (s, v) = classify(&client, &base, json!({"text": long})).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["results"][0]["truncated"], true);
    let (_, v) = classify(&client, &base, json!({"text": "how to travel light"})).await;
    assert_eq!(v["results"][0]["truncated"], false);

    // Errors over the socket keep the shape and status.
    let res = client
        .post(format!("{base}/classify"))
        .header("content-type", "application/json")
        .body("{")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 400);
    let e: Value = res.json().await.unwrap();
    assert_eq!(e["error"]["code"], "bad_request");

    // Metrics: per-route counters and latency histograms, per-expert latency, batch sizes, queue depth, errors.
    let m = client.get(format!("{base}/metrics")).send().await.unwrap().text().await.unwrap();
    for needle in [
        "moe_http_requests_total{route=\"/classify\",method=\"POST\",status=\"200\"}",
        "moe_http_request_duration_seconds_bucket{route=\"/classify\"",
        "moe_expert_seconds_bucket{class=\"Travel\"",
        "moe_batch_size_bucket",
        "moe_queue_depth",
        "moe_errors_total{code=\"bad_request\"}",
    ] {
        assert!(m.contains(needle), "metrics lack {needle}");
    }
}

/// The service's probabilities equal onnxruntime's Python results for the same bundles within 1e-4:
/// a head on the shared trunk (default set, whose trunk corrects spelling first: the Python side
/// corrects with moe_training.spelling) and a full model (fixture).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probabilities_match_python_onnxruntime() {
    let texts = [
        "how to pack a suitcase",
        "how to bake sourdough bread",
        "How to Calm Down When You're ANGRY!",
        "How to Pakc a Suitcsae for a lnog trip",
    ];
    for (root, class, bundle) in [
        (common::default_models(), "Travel", "travel--kd19-logreg"),
        (common::default_models(), "Health", "health--kd19-logreg"),
        (common::fixture_models(), "Travel", "travel--tokenbag"),
    ] {
        let core = common::loaded_core(&root, Limits::default()).await;
        let base = common::serve(core).await;
        let (s, v) = classify(&reqwest::Client::new(), &base, json!({"texts": texts})).await;
        assert_eq!(s, 200);
        let want = common::reference_probabilities(&root, bundle, &texts);
        let listed: serde_json::Value =
            reqwest::get(format!("{base}/experts/{class}")).await.unwrap().json().await.unwrap();
        let words = listed["spelling"]["words"].as_u64();
        assert_eq!(words.is_some(), bundle.contains("kd19"), "spelling of {bundle}: {listed}");
        for (i, r) in v["results"].as_array().unwrap().iter().enumerate() {
            let e = r["experts"].as_array().unwrap().iter().find(|e| e["class"] == class).unwrap();
            assert_eq!(e["bundle"], bundle);
            let got = e["probability"].as_f64().unwrap();
            assert!((got - want[i]).abs() < 1e-4, "{bundle} on {:?}: service {got}, python {}", texts[i], want[i]);
        }
    }
}

/// Many concurrent clients: every answer is 200 and the executors ran them in shared batches (one
/// session per graph that waits up to 20 ms for more work, so 64 concurrent requests must share).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_are_batched() {
    let runtime = moe_core::config::RuntimeConfig { max_wait_us: 20_000, ..common::runtime() };
    let core = common::loaded_core_with(&common::fixture_models(), "batched", runtime, Limits::default()).await;
    let set = core.snapshot().unwrap();
    let before: Vec<(usize, usize)> = set
        .experts
        .iter()
        .map(|e| (e.stage1.stats().batches.load(Relaxed), e.stage1.stats().rows.load(Relaxed)))
        .collect();
    let base = common::serve(core).await;
    let client = reqwest::Client::new();
    let mut tasks = Vec::new();
    for i in 0..64 {
        let (client, base) = (client.clone(), base.clone());
        tasks.push(tokio::spawn(async move {
            classify(&client, &base, json!({"text": format!("how to visit rome on day {i}")})).await.0
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
    for (e, (b0, r0)) in set.experts.iter().zip(before) {
        let s = e.stage1.stats();
        let (batches, rows) = (s.batches.load(Relaxed) - b0, s.rows.load(Relaxed) - r0);
        assert_eq!(rows, 64, "{}: every text ran once", e.class);
        assert!(batches < 64, "{}: 64 requests ran in {batches} batches (no batching)", e.class);
        assert!(s.largest.load(Relaxed) > 1, "{}: no batch held more than one text", e.class);
    }
}

/// A text gets the same probabilities alone and batched with others, even on the int8 trunk whose
/// dynamic quantisation makes batched outputs depend on the batch (the executor probes for that
/// and then runs such a graph one text at a time).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_do_not_depend_on_the_batch() {
    let core = common::loaded_core(&common::default_models(), Limits::default()).await;
    let set = core.snapshot().unwrap();
    assert!(set.experts[0].stage1.row_by_row(), "the int8 trunk was detected as batch-dependent");
    let base = common::serve(core).await;
    let client = reqwest::Client::new();
    let text = "how to go clubbing";
    let (_, alone) = classify(&client, &base, json!({"text": text})).await;
    let others = ["a much longer title about planning a trip across the whole of europe by train", "how to knit"];
    let (_, batched) = classify(&client, &base, json!({"texts": [others[0], text, others[1]]})).await;
    let a = alone["results"][0]["experts"].as_array().unwrap();
    let b = batched["results"][1]["experts"].as_array().unwrap();
    for (x, y) in a.iter().zip(b) {
        let (px, py) = (x["probability"].as_f64().unwrap(), y["probability"].as_f64().unwrap());
        assert!((px - py).abs() < 1e-5, "{}: alone {px}, batched {py}", x["class"]);
    }
}

/// A graph run one text at a time takes one job per batch: concurrent requests, even with 20 ms
/// of waiting for more work, each run as their own batch, so no reply waits for other requests'
/// texts to be computed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_by_row_trunk_runs_one_job_per_batch() {
    let runtime = moe_core::config::RuntimeConfig {
        max_wait_us: 20_000,
        sessions: Some(1),
        solo_threads: Some(0),
        ..common::runtime()
    };
    let core = common::loaded_core_with(&common::default_models(), "one-job", runtime, Limits::default()).await;
    let set = core.snapshot().unwrap();
    let trunk = set.experts[0].stage1.clone();
    assert!(trunk.row_by_row(), "the shipped int8 trunk is batch-dependent");
    let (b0, r0) = (trunk.stats().batches.load(Relaxed), trunk.stats().rows.load(Relaxed));
    let mut tasks = Vec::new();
    for i in 0..24 {
        let core = core.clone();
        // Every fourth request carries three texts: a job's own texts stay one batch.
        let texts: Vec<String> =
            (0..if i % 4 == 0 { 3 } else { 1 }).map(|k| format!("how to paint wall {i} {k}")).collect();
        tasks.push(tokio::spawn(async move { core.classify(texts).await.map(|(r, _)| r.len()) }));
    }
    let mut texts = 0;
    for t in tasks {
        texts += t.await.unwrap().unwrap();
    }
    let (batches, rows) = (trunk.stats().batches.load(Relaxed) - b0, trunk.stats().rows.load(Relaxed) - r0);
    assert_eq!((batches, rows), (24, texts), "24 jobs ({texts} texts) ran as {batches} batches of {rows} rows");
}

/// A lone request runs on the solo session (every core) and gets the probabilities the ordinary
/// single-thread sessions give; requests that arrive together do not use it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_request_uses_the_solo_session_with_the_same_answer() {
    let texts = ["how to cook pasta like a chef", "how to visit rome in winter", "how to fix a flat bike tyre"];
    let answers = |solo_threads: Option<usize>, solo_spin_us: u64| async move {
        let runtime =
            moe_core::config::RuntimeConfig { sessions: Some(2), solo_threads, solo_spin_us, ..common::runtime() };
        let core = common::loaded_core_with(&common::default_models(), "solo", runtime, Limits::default()).await;
        let set = core.snapshot().unwrap();
        let trunk = set.experts[0].stage1.clone();
        let solo_before = trunk.stats().solo.load(Relaxed);
        let mut probs = Vec::new();
        for t in texts {
            let (results, _) = core.classify(vec![t.to_string()]).await.unwrap();
            probs.push(results[0].experts.iter().map(|e| e.probability).collect::<Vec<f32>>());
        }
        (probs, trunk.stats().solo.load(Relaxed) - solo_before)
    };
    let (plain, none) = answers(Some(0), 0).await;
    assert_eq!(none, 0, "no solo session when it is off");
    // Blocking at once, or spinning within runs (ONNX Runtime's spin settings): same answers.
    for spin_us in [0, 200] {
        let (solo, used) = answers(Some(2), spin_us).await;
        assert_eq!(used, texts.len(), "each lone request ran on the solo session");
        for (a, b) in plain.iter().zip(&solo) {
            for (x, y) in a.iter().zip(b) {
                assert!((x - y).abs() < 1e-4, "the solo session changed a probability: {x} vs {y}");
            }
        }
    }
}
