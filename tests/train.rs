//! Online training (`POST /experts/{class}/train`) over a real socket, real ONNX Runtime and the
//! shipped experts: a new class goes live with every other class's answers bit-identical, a shadow
//! is attached without changing what is served, and every refusal changes nothing.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use moe_core::config::Limits;
use moe_server::http::AppState;
use serde_json::{Value, json};

const TOKEN: &str = "train-token";

const CRYPTO: [&str; 12] = [
    "How to buy bitcoin safely",
    "How to set up a crypto wallet",
    "How to mine cryptocurrency at home",
    "How to store your private keys offline",
    "How to trade ethereum on an exchange",
    "How to read a blockchain explorer",
    "How to avoid crypto scams",
    "How to stake coins for rewards",
    "How to transfer bitcoin to a hardware wallet",
    "How to choose a cryptocurrency exchange",
    "How to pay taxes on crypto gains",
    "How to recover a lost crypto wallet seed phrase",
];

async fn serve(root: &std::path::Path, state: &str) -> String {
    let core = common::loaded_core_in(root, state, Limits::default()).await;
    common::serve_state(AppState::new(core).with_data(Some(common::data())).with_admin_token(Some(TOKEN.into()))).await
}

async fn train(c: &reqwest::Client, base: &str, class: &str, body: Value, token: Option<&str>) -> (u16, Value) {
    let r = c.post(format!("{base}/experts/{class}/train")).json(&body);
    let res = match token {
        Some(t) => r.bearer_auth(t),
        None => r,
    }
    .send()
    .await
    .unwrap();
    (res.status().as_u16(), res.json().await.unwrap())
}

async fn finish(c: &reqwest::Client, base: &str, job: &Value) -> Value {
    for _ in 0..600 {
        let j: Value = common::json_of(c.get(format!("{base}/jobs/{}", job["id"]))).await;
        if j["state"] != "running" {
            return j;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("job {} did not finish", job["id"]);
}

/// Per class, the probability of each text (as f32 bits: "unchanged" means bit-identical).
async fn probabilities(c: &reqwest::Client, base: &str, texts: &[&str]) -> BTreeMap<String, Vec<u32>> {
    let v: Value = common::json_of(c.post(format!("{base}/classify?experts=all")).json(&json!({"texts": texts}))).await;
    let mut out: BTreeMap<String, Vec<u32>> = BTreeMap::new();
    for r in v["results"].as_array().unwrap() {
        for e in r["experts"].as_array().unwrap() {
            let p = e["probability"].as_f64().unwrap() as f32;
            out.entry(e["class"].as_str().unwrap().to_string()).or_default().push(p.to_bits());
        }
    }
    out
}

fn bundles(root: &std::path::Path) -> Vec<String> {
    let mut v: Vec<String> =
        std::fs::read_dir(root).unwrap().flatten().map(|e| e.file_name().to_string_lossy().to_string()).collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_class_taught_online_serves_and_leaves_every_other_class_bit_identical() {
    let root = common::copy_root(&common::default_models(), "train-new");
    let base = serve(&root, "train-new").await;
    let c = reqwest::Client::new();
    let probe = ["How to buy ethereum with a credit card", "How to bake sourdough bread", "How to plan a trip to Rome"];
    let before = probabilities(&c, &base, &probe).await;
    assert_eq!(before.len(), 19);

    let (s, job) = train(&c, &base, "Crypto", json!({"positives": CRYPTO}), Some(TOKEN)).await;
    assert_eq!(s, 202, "{job}");
    assert_eq!(job["kind"], "train");
    let done = finish(&c, &base, &job).await;
    assert_eq!(done["state"], "succeeded", "{done}");
    let r = &done["result"];
    assert_eq!(r["examples"]["positives"], 12);
    assert_eq!(r["examples"]["negatives"], 1000, "the default negatives: a sample of the other classes");
    assert!(r["examples"]["negatives_source"].as_str().unwrap().contains("train split"), "{r}");
    let bundle = r["bundle"].as_str().unwrap();
    assert!(bundle.starts_with("crypto--online-"), "{bundle}");

    let after = probabilities(&c, &base, &probe).await;
    assert_eq!(after.len(), 20, "the new class answers");
    for (class, p) in &before {
        assert_eq!(&after[class], p, "{class}'s probabilities changed");
    }
    let v: Value = c
        .post(format!("{base}/classify?experts=all"))
        .json(&json!({"texts": ["How to buy bitcoin with cash", "How to bake sourdough bread"]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let crypto =
        |i: usize| v["results"][i]["experts"].as_array().unwrap().iter().find(|e| e["class"] == "Crypto").cloned();
    assert_eq!(crypto(0).unwrap()["passed"], true, "{v}");
    assert_eq!(crypto(1).unwrap()["passed"], false, "{v}");

    // A real bundle: linear head, threshold and metrics from cross-validation, provenance without the token.
    let card: Value =
        serde_json::from_str(&std::fs::read_to_string(root.join(bundle).join("card.json")).unwrap()).unwrap();
    assert_eq!(card["kind"], "linear");
    assert_eq!(card["threshold"]["split"], "cv5");
    assert!(card["metrics"]["cv"]["report"]["auc"].as_f64().unwrap() > 0.9, "{card}");
    assert!(!card.to_string().contains(TOKEN), "the token is not in the card");
    assert_eq!(card["provenance"]["examples"]["positives"], 12);
    let h: Value = common::json_of(c.get(format!("{base}/experts/Crypto/history"))).await;
    assert_eq!(h["history"].as_array().unwrap().last().unwrap()["action"], "train");

    // It survives a restart: a new process on the same model root and state serves it.
    let again = serve(&root, "train-new").await;
    let e: Value = common::json_of(c.get(format!("{again}/experts/Crypto"))).await;
    assert_eq!(e["bundle"], bundle);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shadow_is_trained_beside_the_active_expert_and_refusals_change_nothing() {
    let root = common::copy_root(&common::default_models(), "train-refuse");
    let base = serve(&root, "train-refuse").await;
    let c = reqwest::Client::new();
    let listing = bundles(&root);
    let generation = |v: &Value| v["generation"].as_u64().unwrap();
    let g0 = generation(&common::json_of(c.get(format!("{base}/experts"))).await);
    let five = &CRYPTO[..5];
    let repeated = [five, &five[..1]].concat();
    let blank = [five, &[" \u{200B}"]].concat();
    for (class, body, token, status, why) in [
        ("Crypto", json!({"positives": CRYPTO}), None, 401, "bearer token"),
        ("Crypto", json!({"positives": &CRYPTO[..3]}), Some(TOKEN), 400, "at least 5"),
        ("Crypto", json!({"positives": repeated}), Some(TOKEN), 400, "repeats positive 0"),
        ("Crypto", json!({"positives": blank}), Some(TOKEN), 400, "no visible characters"),
        (
            "Crypto",
            json!({"positives": five, "negatives": [five[0], "a", "b", "c", "d"]}),
            Some(TOKEN),
            400,
            "also positive",
        ),
        ("Crypto", json!({"positives": five, "negatives": ["a", "b"]}), Some(TOKEN), 400, "at least 5"),
        ("Crypto", json!({"positives": five, "trunk": "no-such-trunk"}), Some(TOKEN), 404, "not served"),
        ("Crypto", json!({"positives": five, "mode": "shadow"}), Some(TOKEN), 409, "no active expert"),
        ("Crypto", json!({"positives": five, "mode": "live"}), Some(TOKEN), 400, "unknown variant"),
        ("Crypto", json!({"positives": five, "max_eer": 2}), Some(TOKEN), 400, "max_eer"),
        ("Crypto", json!({"positives": five, "extra": 1}), Some(TOKEN), 400, "unknown field"),
    ] {
        let (s, v) = train(&c, &base, class, body, token).await;
        assert_eq!(s, status, "{why}: {v}");
        assert!(v["error"]["message"].as_str().unwrap().contains(why), "{why}: {v}");
    }
    // The quality gate refuses after the fit: the job fails, nothing is written or installed.
    let (s, job) = train(&c, &base, "Crypto", json!({"positives": CRYPTO, "max_eer": 0.0}), Some(TOKEN)).await;
    assert_eq!(s, 202, "{job}");
    let done = finish(&c, &base, &job).await;
    assert_eq!(done["state"], "failed", "{done}");
    assert!(done["error"].as_str().unwrap().contains("above the bound"), "{done}");
    assert_eq!(bundles(&root), listing, "a refused training wrote nothing (no bundle, no temp folder)");
    let g1 = generation(&common::json_of(c.get(format!("{base}/experts"))).await);
    assert_eq!(g0, g1, "nothing was installed");

    // Shadow mode: the trained head scores beside Travel's active expert, which keeps serving.
    let active: Value = common::json_of(c.get(format!("{base}/experts/Travel"))).await;
    let travel: Vec<String> = common::data()
        .read("train")
        .unwrap()
        .texts
        .into_iter()
        .zip(common::data().read("train").unwrap().labels)
        .filter(|(_, l)| l == "Travel")
        .map(|(t, _)| t)
        .take(60)
        .collect();
    let (s, job) = train(&c, &base, "Travel", json!({"positives": travel, "mode": "shadow"}), Some(TOKEN)).await;
    assert_eq!(s, 202, "{job}");
    // A second job for the class while the first runs is refused.
    let (s2, v2) = train(&c, &base, "Travel", json!({"positives": CRYPTO, "mode": "shadow"}), Some(TOKEN)).await;
    let done = finish(&c, &base, &job).await;
    assert_eq!(done["state"], "succeeded", "{done}");
    assert!(s2 == 409 || s2 == 202, "{v2}");
    if s2 == 202 {
        finish(&c, &base, &v2).await; // the first one had already finished
    }
    let now: Value = common::json_of(c.get(format!("{base}/experts/Travel"))).await;
    assert_eq!(now["bundle"], active["bundle"], "a shadow does not replace the active expert");
    assert!(now["shadow"]["bundle"].as_str().unwrap().starts_with("travel--online-"), "{now}");
}

async fn feedback(c: &reqwest::Client, base: &str, body: Value) -> (u16, Value) {
    let res = c.post(format!("{base}/feedback")).json(&body).send().await.unwrap();
    (res.status().as_u16(), res.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feedback_is_kept_durably_gives_live_metrics_and_trains_when_asked() {
    let root = common::copy_root(&common::default_models(), "train-feedback");
    let base = serve(&root, "train-feedback").await;
    let c = reqwest::Client::new();
    let labelled = [
        ("How to pack a carry-on bag for a week", "Travel"),
        ("How to find cheap flights to Japan", "Travel"),
        ("How to bake sourdough bread", "Food and Entertaining"),
        ("How to buy bitcoin with a debit card", "Crypto"),
        ("How to keep a seed phrase safe", "Crypto"),
    ];
    for (i, (text, label)) in labelled.iter().enumerate() {
        let (s, v) = feedback(&c, &base, json!({"text": text, "label": label})).await;
        assert_eq!(s, 200, "{v}");
        assert_eq!(v["entries"], i + 1);
        assert_eq!(v["served_label"], *label != "Crypto", "{v}");
        assert_eq!(v["correct"], v["predicted"] == json!(label), "{v}");
    }
    for (body, why) in [
        (json!({"text": "x", "label": " "}), "label"),
        (json!({"text": "\u{200B}", "label": "Travel"}), "no visible characters"),
        (json!({"text": "x", "label": "Travel", "id": 1}), "unknown field"),
    ] {
        let (s, v) = feedback(&c, &base, body).await;
        assert_eq!(s, 400, "{why}: {v}");
        assert!(v["error"]["message"].as_str().unwrap().contains(why), "{why}: {v}");
    }
    // Live metrics of the active Travel expert on the feedback it scored: 5 texts, 2 positives.
    let e: Value = common::json_of(c.get(format!("{base}/experts/Travel"))).await;
    assert_eq!(e["live"]["texts"], 5, "{e}");
    assert_eq!(e["live"]["positives"], 2);
    assert_eq!(e["live"]["version"], e["version"]);
    assert!(e["live"]["auc"].is_f64(), "{e}");
    let m = c.get(format!("{base}/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(m.contains("moe_feedback_texts{class=\"Travel\"} 5"), "gauges on /metrics");

    // Durable: a restart on the same state folder has the log.
    let again = serve(&root, "train-feedback").await;
    let e: Value = common::json_of(c.get(format!("{again}/experts/Travel"))).await;
    assert_eq!(e["live"]["texts"], 5, "{e}");

    // Training uses the feedback only when asked, and says so.
    let body = json!({"positives": &CRYPTO[..5], "use_feedback": true});
    let (s, job) = train(&c, &again, "Crypto", body, Some(TOKEN)).await;
    assert_eq!(s, 202, "{job}");
    let done = finish(&c, &again, &job).await;
    assert_eq!(done["state"], "succeeded", "{done}");
    assert_eq!(done["result"]["examples"]["positives"], 7, "5 sent + 2 from the feedback");
    assert!(
        done["result"]["examples"]["negatives_source"]
            .as_str()
            .unwrap()
            .contains("3 negatives and 2 positives from the feedback log")
    );

    // A selection job evaluates on the feedback too when asked, and says so.
    let res = c
        .post(format!("{again}/experts/Travel/select"))
        .bearer_auth(TOKEN)
        .json(&json!({"candidates": ["travel--global-ft19-logreg"], "use_feedback": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 202);
    let done = finish(&c, &again, &res.json().await.unwrap()).await;
    assert_eq!(done["state"], "succeeded", "{done}");
    assert_eq!(done["result"]["split"], "val + 5 feedback texts", "{done}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_csv_of_text_and_label_trains_a_class_with_the_options_in_the_query() {
    let root = common::copy_root(&common::default_models(), "train-csv");
    let base = serve(&root, "train-csv").await;
    let c = reqwest::Client::new();
    let mut csv = String::from("text,label\n");
    for t in CRYPTO {
        csv += &format!("\"{t}\",Crypto\n");
    }
    let others = [
        "How to bake bread",
        "How to plan a trip",
        "How to train a puppy",
        "How to fix a bike",
        "How to knit",
        "How to write a CV",
    ];
    for t in others {
        csv += &format!("{t},Other\n");
    }
    let post = |body: String, ct: &'static str, query: &'static str| {
        c.post(format!("{base}/experts/Crypto/train{query}"))
            .bearer_auth(TOKEN)
            .header("content-type", ct)
            .body(body)
            .send()
    };
    let res = post(csv.clone(), "text/csv", "?max_eer=1").await.unwrap();
    assert_eq!(res.status().as_u16(), 202);
    let done = finish(&c, &base, &res.json().await.unwrap()).await;
    assert_eq!(done["state"], "succeeded", "{done}");
    assert_eq!(done["result"]["examples"]["positives"], 12);
    assert_eq!(done["result"]["examples"]["negatives"], 6);
    assert_eq!(done["result"]["examples"]["negatives_source"], "the request");
    for (body, ct, status, why) in [
        ("words,label\nx,y\n".to_string(), "text/csv", 400, "no \"text\" column"),
        (csv.clone(), "text/plain", 415, "text/csv"),
    ] {
        let res = post(body, ct, "").await.unwrap();
        assert_eq!(res.status().as_u16(), status, "{why}");
        let v: Value = res.json().await.unwrap();
        assert!(v["error"]["message"].as_str().unwrap().contains(why), "{why}: {v}");
    }
}
