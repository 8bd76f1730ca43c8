//! Hot swap: atomic installs under load, refusals that change nothing, persistence, rollback.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use moe_core::config::Limits;
use moe_core::service::Core;
use moe_server::control::swap::{Swap, swap};
use moe_server::http::AppState;
use serde_json::{Value, json};

const TOKEN: &str = "s3cret-token";

async fn serve_admin(core: Arc<Core>, token: Option<&str>) -> String {
    serve_with(AppState::new(core).with_admin_token(token.map(str::to_string))).await
}

async fn serve_with(state: AppState) -> String {
    common::serve_state(state).await
}

async fn put(c: &reqwest::Client, base: &str, class: &str, body: Value, token: Option<&str>) -> (u16, Value) {
    let mut r = c.put(format!("{base}/experts/{class}")).json(&body);
    if let Some(t) = token {
        r = r.bearer_auth(t);
    }
    let res = r.send().await.unwrap();
    (res.status().as_u16(), res.json().await.unwrap())
}

async fn active_bundle(c: &reqwest::Client, base: &str, class: &str) -> String {
    let v: Value = c
        .get(format!("{base}/experts/{class}"))
        .send()
        .await
        .map_err(|e| format!("{e:?}"))
        .unwrap()
        .json()
        .await
        .unwrap();
    v["bundle"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn swaps_under_load_never_fail_or_mix_versions() {
    let root = common::copy_root(&common::fixture_models(), "swap-load");
    let core = common::loaded_core(&root, Limits::default()).await;
    let baseline = core.pool.live_executors();
    let base = serve_admin(core.clone(), Some(TOKEN)).await;
    let client = reqwest::Client::new();
    let done = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for k in 0..6 {
        let (client, base, done) = (client.clone(), base.clone(), done.clone());
        clients.push(tokio::spawn(async move {
            let mut seen: Vec<(u64, HashMap<String, String>)> = Vec::new();
            let mut failures = 0;
            for i in 0..5000 {
                if done.load(Ordering::Relaxed) {
                    break;
                }
                let body = json!({"texts": [format!("how to plan a trip {k} {i}"), "how to cure a cold"]});
                let res = client.post(format!("{base}/classify?experts=all")).json(&body).send().await.unwrap();
                if !res.status().is_success() {
                    failures += 1;
                    continue;
                }
                let v: Value = res.json().await.unwrap();
                for r in v["results"].as_array().unwrap() {
                    let versions = r["experts"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|e| (e["class"].as_str().unwrap().to_string(), e["version"].as_str().unwrap().to_string()))
                        .collect();
                    seen.push((v["generation"].as_u64().unwrap(), versions));
                }
            }
            (failures, seen)
        }));
    }
    // 120 swaps, alternating bundles, two classes.
    let mut expected: HashMap<u64, (String, String)> = HashMap::new();
    for i in 0..120 {
        let class = if i % 2 == 0 { "Travel" } else { "Health" };
        let slug = class.to_lowercase();
        let bundle = if (i / 2) % 2 == 0 { format!("{slug}--tokenbag-b") } else { format!("{slug}--tokenbag") };
        let (s, v) = put(&client, &base, class, json!({"bundle": bundle}), Some(TOKEN)).await;
        assert_eq!(s, 200, "swap {i}: {v}");
        expected.insert(v["generation"].as_u64().unwrap(), (class.to_string(), v["version"].as_str().unwrap().into()));
    }
    done.store(true, Ordering::Relaxed);
    let mut by_generation: HashMap<u64, HashMap<String, String>> = HashMap::new();
    let mut answers = 0;
    for c in clients {
        let (failures, seen) = c.await.unwrap();
        assert_eq!(failures, 0, "non-2xx answers during swaps");
        for (g, versions) in seen {
            answers += 1;
            // Every answer of one generation shows exactly the same versions: no mixing.
            let first = by_generation.entry(g).or_insert_with(|| versions.clone());
            assert_eq!(*first, versions, "generation {g} answered with two different expert sets");
            if let Some((class, version)) = expected.get(&g) {
                assert_eq!(&versions[class], version, "generation {g} must carry the swapped version");
            }
        }
    }
    assert!(answers > 100, "clients ran during the swaps ({answers} answers)");
    assert!(by_generation.len() > 5, "answers came from many generations");
    // After an even number of swaps per class the set is the original one; the swapped-out
    // sessions are gone once no request holds their set.
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert_eq!(core.pool.live_executors(), baseline, "sessions leaked");
    std::fs::remove_dir_all(root).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_swaps_change_nothing() {
    let root = common::copy_root(&common::fixture_models(), "swap-refuse");
    // broken candidates, each a copy of a good bundle with one defect
    let good = root.join("travel--tokenbag-b");
    let mk = |name: &str| {
        let d = root.join(name);
        std::fs::create_dir_all(&d).unwrap();
        for f in ["card.json", "model.onnx", "tokenizer.json"] {
            std::fs::copy(good.join(f), d.join(f)).unwrap();
        }
        d
    };
    common::replace_file(&mk("travel--bad-hash").join("model.onnx"), b"not onnx");
    std::fs::remove_file(mk("travel--no-tokenizer").join("tokenizer.json")).unwrap();
    let sig = mk("travel--bad-signature");
    let head = std::fs::read(common::default_models().join("travel--global-ft19-logreg/head.onnx")).unwrap();
    common::replace_file(&sig.join("model.onnx"), &head);
    let sha = moe_core::files::sha256_file(&sig.join("model.onnx")).unwrap();
    common::edit_json(&sig.join("card.json"), |c| c["graph"]["sha256"] = sha.into());

    let core = common::loaded_core(&root, Limits::default()).await;
    let base = serve_admin(core.clone(), Some(TOKEN)).await;
    let c = reqwest::Client::new();
    let live = moe_core::bundle::RegistryFile::path(&core.paths.state);
    let (shipped_before, registry_before) =
        (std::fs::read(root.join("registry.json")).unwrap(), std::fs::read(&live).unwrap());
    let version: Value = common::json_of(c.get(format!("{base}/experts/Travel"))).await;
    let version = version["version"].as_str().unwrap().to_string();
    let cases: Vec<(Value, Option<&str>, u16, &str)> = vec![
        (json!({"bundle": "travel--tokenbag-b"}), None, 401, "unauthorized"),
        (json!({"bundle": "travel--tokenbag-b"}), Some("wrong"), 401, "unauthorized"),
        (json!({"bundle": "../travel--tokenbag-b"}), Some(TOKEN), 422, "invalid_bundle"),
        (json!({"bundle": "/etc"}), Some(TOKEN), 422, "invalid_bundle"),
        (json!({"bundle": "no-such-bundle"}), Some(TOKEN), 422, "invalid_bundle"),
        (json!({"bundle": "travel--bad-hash"}), Some(TOKEN), 422, "invalid_bundle"),
        (json!({"bundle": "travel--no-tokenizer"}), Some(TOKEN), 422, "invalid_bundle"),
        (json!({"bundle": "travel--bad-signature"}), Some(TOKEN), 422, "invalid_bundle"),
        (json!({"bundle": "health--tokenbag"}), Some(TOKEN), 422, "invalid_bundle"),
        (json!({"bundle": "travel--tokenbag-b", "expected_version": "nope"}), Some(TOKEN), 409, "conflict"),
        (
            json!({"bundle": "travel--tokenbag-b", "min_metric": {"metric": "auc", "value": 0.99999}}),
            Some(TOKEN),
            422,
            "quality_gate_failed",
        ),
        (json!({"bundel": "travel--tokenbag-b"}), Some(TOKEN), 400, "bad_request"),
    ];
    for (body, token, status, code) in cases {
        let (s, v) = put(&c, &base, "Travel", body.clone(), token).await;
        assert_eq!((s, v["error"]["code"].as_str().unwrap()), (status, code), "{body}: {v}");
        assert_eq!(active_bundle(&c, &base, "Travel").await, "travel--tokenbag", "{body} changed the expert");
    }
    // Two swaps of the same class at once: one wins, the other gets 409.
    let (a, b) = tokio::join!(
        swap(&core, "Travel", Swap { bundle: "travel--tokenbag-b".into(), ..Default::default() }),
        swap(&core, "Travel", Swap { bundle: "travel--tokenbag-b".into(), ..Default::default() }),
    );
    assert!(a.is_ok());
    assert!(matches!(b, Err(moe_core::Error::Conflict(_))), "{b:?}");
    // ... and a swap with the right expected_version passes.
    let (s, v) =
        put(&c, &base, "Travel", json!({"bundle": "travel--tokenbag", "expected_version": "x"}), Some(TOKEN)).await;
    assert_eq!(s, 409, "{v}");
    let now: Value = common::json_of(c.get(format!("{base}/experts/Travel"))).await;
    let (s, _) = put(
        &c,
        &base,
        "Travel",
        json!({"bundle": "travel--tokenbag", "expected_version": now["version"]}),
        Some(TOKEN),
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(common::json_of(c.get(format!("{base}/experts/Travel"))).await["version"], version.as_str());
    assert_ne!(std::fs::read(&live).unwrap(), registry_before, "history was recorded in the state folder");
    assert_eq!(std::fs::read(root.join("registry.json")).unwrap(), shipped_before, "the shipped registry is untouched");

    // Without a configured token the admin routes are disabled.
    let closed = serve_admin(core, None).await;
    let (s, v) = put(&c, &closed, "Travel", json!({"bundle": "travel--tokenbag-b"}), Some(TOKEN)).await;
    assert_eq!((s, v["error"]["code"].as_str().unwrap()), (403, "admin_disabled"));
    std::fs::remove_dir_all(root).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_rollback_delete_and_new_slots() {
    let root = common::copy_root(&common::fixture_models(), "swap-persist");
    let core = common::loaded_core(&root, Limits::default()).await;
    let base = serve_admin(core.clone(), Some(TOKEN)).await;
    let c = reqwest::Client::new();
    let (s, v) = put(&c, &base, "Travel", json!({"bundle": "travel--tokenbag-b"}), Some(TOKEN)).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["previous_bundle"], "travel--tokenbag");

    // A restart (same state folder) serves exactly what was active.
    let restarted = moe_core::service::Core::new(core.paths.clone(), common::runtime(), Limits::default());
    let r = restarted.clone();
    tokio::task::spawn_blocking(move || r.load_registry()).await.unwrap().unwrap();
    assert_eq!(restarted.snapshot().unwrap().get("Travel").unwrap().bundle, "travel--tokenbag-b");

    // Rollback restores the previous bundle; history records every step.
    let res = c.post(format!("{base}/experts/Travel/rollback")).bearer_auth(TOKEN).send().await.unwrap();
    assert_eq!(res.status().as_u16(), 200);
    assert_eq!(active_bundle(&c, &base, "Travel").await, "travel--tokenbag");
    let h: Value = common::json_of(c.get(format!("{base}/experts/Travel/history"))).await;
    let actions: Vec<&str> = h["history"].as_array().unwrap().iter().map(|e| e["action"].as_str().unwrap()).collect();
    assert_eq!(actions, ["loaded", "swap", "rollback"]);

    // Delete a class, then add it back as a new slot.
    let res = c.delete(format!("{base}/experts/Health")).bearer_auth(TOKEN).send().await.unwrap();
    assert_eq!(res.status().as_u16(), 200);
    let list: Value = common::json_of(c.get(format!("{base}/experts"))).await;
    assert_eq!(list["experts"].as_array().unwrap().len(), 1);
    let res = c.post(format!("{base}/classify")).json(&json!({"text": "how to pack"})).send().await.unwrap();
    assert_eq!(res.status().as_u16(), 200);
    let res = c.delete(format!("{base}/experts/Travel")).bearer_auth(TOKEN).send().await.unwrap();
    assert_eq!(res.status().as_u16(), 409, "the last expert cannot be removed");
    let (s, _) = put(&c, &base, "Health", json!({"bundle": "health--tokenbag-b"}), Some(TOKEN)).await;
    assert_eq!(s, 200);
    let list: Value = common::json_of(c.get(format!("{base}/experts"))).await;
    assert_eq!(list["experts"].as_array().unwrap().len(), 2);
    let res = c.get(format!("{base}/experts/Nope/history")).send().await.unwrap();
    assert_eq!(res.status().as_u16(), 404);
    std::fs::remove_dir_all(root).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fitted_gate_that_no_longer_matches_is_disabled() {
    let root = common::copy_root(&common::fixture_models(), "swap-gate");
    let versions: HashMap<String, String> = ["travel--tokenbag", "health--tokenbag"]
        .iter()
        .map(|b| {
            let card: Value =
                serde_json::from_str(&std::fs::read_to_string(root.join(b).join("card.json")).unwrap()).unwrap();
            (card["class"].as_str().unwrap().to_string(), card["version"].as_str().unwrap().to_string())
        })
        .collect();
    common::edit_json(&root.join("registry.json"), |r| {
        r["gate"] = json!({"kind": "stacking", "score": "probability", "stacking": {
            "classes": ["Health", "Travel"], "versions": versions,
            "weights": [[1.0, 0.0], [0.0, 1.0]], "bias": [0.0, 0.0]}});
    });
    let core = common::loaded_core(&root, Limits::default()).await;
    let base = serve_admin(core, Some(TOKEN)).await;
    let c = reqwest::Client::new();
    let gate = |v: Value| v["gate"].clone();
    let before = gate(common::json_of(c.get(format!("{base}/experts"))).await);
    assert_eq!(before["active"], "stacking");
    let (s, _) = put(&c, &base, "Travel", json!({"bundle": "travel--tokenbag-b"}), Some(TOKEN)).await;
    assert_eq!(s, 200);
    let after = gate(common::json_of(c.get(format!("{base}/experts"))).await);
    assert_eq!(after["configured"], "stacking");
    assert_eq!(after["active"], "uniform");
    assert!(after["disabled_reason"].as_str().unwrap().contains("version"), "{after}");
    std::fs::remove_dir_all(root).unwrap();
}

async fn wait_job(c: &reqwest::Client, base: &str, id: u64) -> Value {
    for _ in 0..600 {
        let v: Value = common::json_of(c.get(format!("{base}/jobs/{id}"))).await;
        if v["state"] != "running" {
            return v;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("job {id} did not finish");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn automatic_selection_swaps_to_the_better_bundle() {
    let root = common::copy_root(&common::fixture_models(), "swap-select");
    // Start on the worse Travel expert (validation EER 0.58 against 0.52 for travel--tokenbag).
    common::edit_json(&root.join("registry.json"), |r| r["experts"]["Travel"] = "travel--tokenbag-b".into());
    let core = common::loaded_core(&root, Limits::default()).await;
    let state = AppState::new(core).with_data(Some(common::data())).with_admin_token(Some(TOKEN.into()));
    let base = serve_with(state).await;
    let c = reqwest::Client::new();
    let res = c.post(format!("{base}/experts/Travel/select")).bearer_auth(TOKEN).json(&json!({})).send().await.unwrap();
    assert_eq!(res.status().as_u16(), 202);
    let job: Value = res.json().await.unwrap();
    // One running selection per class: a second one at once is refused.
    let second =
        c.post(format!("{base}/experts/Travel/select")).bearer_auth(TOKEN).json(&json!({})).send().await.unwrap();
    assert_eq!(second.status().as_u16(), 409);
    let done = wait_job(&c, &base, job["id"].as_u64().unwrap()).await;
    assert_eq!(done["state"], "succeeded", "{done}");
    let r = &done["result"];
    assert_eq!(r["winner"], "travel--tokenbag", "{r}");
    assert_eq!(r["active_before"], "travel--tokenbag-b");
    assert_eq!(r["swapped"]["bundle"], "travel--tokenbag");
    assert_eq!(r["candidates"].as_array().unwrap().len(), 2);
    assert_eq!(active_bundle(&c, &base, "Travel").await, "travel--tokenbag");
    // Run again: the active expert is already the best, nothing changes.
    let job: Value = c
        .post(format!("{base}/experts/Travel/select"))
        .bearer_auth(TOKEN)
        .json(&json!({"metric": "eer"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let done = wait_job(&c, &base, job["id"].as_u64().unwrap()).await;
    assert!(done["result"]["swapped"].is_null(), "{done}");
    // Refusals: unknown metric, unknown job.
    let res = c
        .post(format!("{base}/experts/Travel/select"))
        .bearer_auth(TOKEN)
        .json(&json!({"metric": "speed"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 400);
    assert_eq!(c.get(format!("{base}/jobs/999")).send().await.unwrap().status().as_u16(), 404);
    std::fs::remove_dir_all(root).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shadow_scores_live_traffic_without_changing_answers() {
    let root = common::copy_root(&common::fixture_models(), "swap-shadow");
    let core = common::loaded_core(&root, Limits::default()).await;
    let base = serve_admin(core, Some(TOKEN)).await;
    let c = reqwest::Client::new();
    let texts =
        json!({"texts": ["how to visit rome", "how to treat a cold", "how to pack light", "how to stop a cough"]});
    let before: Value = common::json_of(c.post(format!("{base}/classify")).json(&texts)).await;

    let res = c
        .put(format!("{base}/experts/Travel/shadow"))
        .bearer_auth(TOKEN)
        .json(&json!({"bundle": "travel--tokenbag-b"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 200);
    let res = c
        .put(format!("{base}/experts/Travel/shadow"))
        .bearer_auth(TOKEN)
        .json(&json!({"bundle": "health--tokenbag"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 422, "a shadow must be for its class");
    for _ in 0..5 {
        let after: Value = common::json_of(c.post(format!("{base}/classify")).json(&texts)).await;
        assert_eq!(before["results"], after["results"], "a shadow never changes an answer");
    }
    // Shadow scoring runs off the response path: wait for it to catch up.
    let mut info = Value::Null;
    for _ in 0..100 {
        info = common::json_of(c.get(format!("{base}/experts/Travel"))).await["shadow"].clone();
        if info["texts"] == 20 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(info["bundle"], "travel--tokenbag-b");
    assert_eq!(info["texts"], 20, "{info}");
    let rate = info["agreement_rate"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&rate));
    assert_eq!(info["probability_histogram"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).sum::<u64>(), 20);
    let m = c.get(format!("{base}/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(m.contains("moe_shadow_agreement_rate{class=\"Travel\"}"), "shadow metrics exported");

    // Promote: the shadow becomes the active expert and the shadow slot is empty.
    let res = c.post(format!("{base}/experts/Travel/shadow/promote")).bearer_auth(TOKEN).send().await.unwrap();
    assert_eq!(res.status().as_u16(), 200);
    assert_eq!(active_bundle(&c, &base, "Travel").await, "travel--tokenbag-b");
    let e: Value = common::json_of(c.get(format!("{base}/experts/Travel"))).await;
    assert!(e["shadow"].is_null());
    // Attach and drop.
    let res = c
        .put(format!("{base}/experts/Health/shadow"))
        .bearer_auth(TOKEN)
        .json(&json!({"bundle": "health--tokenbag-b"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 200);
    let res = c.delete(format!("{base}/experts/Health/shadow")).bearer_auth(TOKEN).send().await.unwrap();
    assert_eq!(res.status().as_u16(), 200);
    let res = c.delete(format!("{base}/experts/Health/shadow")).bearer_auth(TOKEN).send().await.unwrap();
    assert_eq!(res.status().as_u16(), 404);
    let res = c
        .put(format!("{base}/experts/Health/shadow"))
        .json(&json!({"bundle": "health--tokenbag-b"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 401);
    std::fs::remove_dir_all(root).unwrap();
}

/// A .tar.gz of `files` (name, bytes) under the folder `dir`; `extra` entries are added raw.
fn archive(dir: &str, files: &[(&str, Vec<u8>)], symlink: Option<(&str, &str)>) -> Vec<u8> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut tar = tar::Builder::new(gz);
    for (name, bytes) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(bytes.len() as u64);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        // set_path refuses "..": write the raw name to test the server's own check
        let path = format!("{dir}/{name}");
        h.as_old_mut().name[..path.len()].copy_from_slice(path.as_bytes());
        h.set_cksum();
        tar.append(&h, bytes.as_slice()).unwrap();
    }
    if let Some((name, target)) = symlink {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        tar.append_link(&mut h, format!("{dir}/{name}"), target).unwrap();
    }
    tar.into_inner().unwrap().finish().unwrap()
}

/// An archive whose PAX headers declare each entry's real size while the classic headers say
/// 10 bytes: a size limit summed from the classic headers would let every entry through.
fn pax_bomb(dir: &str, entries: usize, bytes_each: usize) -> Vec<u8> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    let mut tar = tar::Builder::new(gz);
    let zeros = vec![0u8; bytes_each];
    for i in 0..entries {
        let size = bytes_each.to_string();
        tar.append_pax_extensions([("size", size.as_bytes())]).unwrap();
        let mut h = tar::Header::new_ustar();
        h.set_path(format!("{dir}/f{i}")).unwrap();
        h.set_size(10);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        h.set_cksum();
        tar.append(&h, zeros.as_slice()).unwrap();
    }
    tar.into_inner().unwrap().finish().unwrap()
}

/// An archive with one file under a folder name of any length (GNU long names).
fn long_archive(dir: &str, files: &[(&str, Vec<u8>)]) -> Vec<u8> {
    let mut tar = tar::Builder::new(flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast()));
    for (name, bytes) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(bytes.len() as u64);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        tar.append_data(&mut h, format!("{dir}/{name}"), bytes.as_slice()).unwrap();
    }
    tar.into_inner().unwrap().finish().unwrap()
}

/// The bundle's files with its card edited.
fn with_card(files: &[(&'static str, Vec<u8>)], f: impl FnOnce(&mut Value)) -> Vec<(&'static str, Vec<u8>)> {
    let mut files = files.to_vec();
    let mut card: Value = serde_json::from_slice(&files[0].1).unwrap();
    f(&mut card);
    files[0].1 = serde_json::to_vec(&card).unwrap();
    files
}

fn bundle_files(root: &std::path::Path, bundle: &str) -> Vec<(&'static str, Vec<u8>)> {
    ["card.json", "model.onnx", "tokenizer.json"]
        .iter()
        .map(|f| (*f, std::fs::read(root.join(bundle).join(f)).unwrap()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploaded_archives_are_checked_then_swapped_in() {
    let root = common::copy_root(&common::fixture_models(), "swap-upload");
    let files = bundle_files(&root, "travel--tokenbag-b");
    let core = common::loaded_core(&root, Limits { max_upload_bytes: 4 << 20, ..Limits::default() }).await;
    let base = serve_admin(core, Some(TOKEN)).await;
    // No pooled connections: the server may close one after answering an upload it did not read
    // to the end (413), and a request reusing it then fails on the client side.
    let c = reqwest::Client::builder().pool_max_idle_per_host(0).build().unwrap();
    let upload = |body: Vec<u8>| {
        c.put(format!("{base}/experts/Travel"))
            .bearer_auth(TOKEN)
            .header("content-type", "application/gzip")
            .body(body)
            .send()
    };
    let mut corrupt = files.clone();
    corrupt[1].1 = b"not a model".to_vec();
    let health = bundle_files(&root, "health--tokenbag-b");
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        ("not gzip", b"hello".to_vec(), 422),
        ("traversal", archive("../escape", &files, None), 422),
        ("nested", archive("up1/sub", &files, None), 422),
        ("symlink", archive("up2", &files, Some(("link", "/etc/passwd"))), 422),
        ("bad hash", archive("up3", &corrupt, None), 422),
        ("wrong class", archive("up4", &health, None), 422),
        ("exists", archive("travel--tokenbag", &files, None), 409),
        ("too large", vec![0u8; 5 << 20], 413),
        // Names the start-up sweep would take for its own, or that no file system holds.
        ("temp prefix", archive(".upload-evil", &files, None), 422),
        ("hidden", archive(".travel", &files, None), 422),
        ("300-character name", long_archive(&"t".repeat(300), &files), 422),
        ("trailing garbage", [archive("up7", &files, None), b"garbage".to_vec()].concat(), 422),
        ("no self-test", archive("up8", &with_card(&files, |c| c["selftest"] = json!([])), None), 422),
        ("huge version", archive("up9", &with_card(&files, |c| c["version"] = "v".repeat(100_000).into()), None), 422),
        ("control in version", archive("up10", &with_card(&files, |c| c["version"] = "v1\u{7}".into()), None), 422),
    ];
    for (what, body, status) in cases {
        let res = upload(body).await.unwrap();
        let s = res.status().as_u16();
        let v: Value = res.json().await.unwrap();
        assert_eq!(s, status, "{what}: {v}");
        assert!(v["error"]["code"].is_string(), "{what}: {v}");
        let message = v["error"]["message"].as_str().unwrap();
        assert!(!message.contains(root.to_str().unwrap()), "{what}: the server's folder shows: {message}");
        if status == 413 {
            assert!(v["error"]["message"].as_str().unwrap().contains("--max-upload-bytes"), "{what}: {v}");
        }
        assert_eq!(active_bundle(&c, &base, "Travel").await, "travel--tokenbag", "{what} changed the expert");
    }
    for gone in ["up3", "up4", "escape", ".upload-evil", ".travel", "up7", "up8", "up9", "up10"] {
        assert!(!root.join(gone).exists(), "a refused upload left {gone} behind");
    }
    assert!(
        !std::fs::read_dir(&root).unwrap().flatten().any(|e| e.file_name().to_string_lossy().starts_with(".upload"))
    );
    // Headers that lie about sizes: the bytes really written are counted (5 x 2 MB of zeros
    // compress to a few KB; the cap is 20 x the archive).
    let bomb = pax_bomb("up5", 5, 2 << 20);
    assert!(bomb.len() < 100 << 10, "the bomb is small: {} bytes", bomb.len());
    let res = upload(bomb).await.unwrap();
    let (s, v): (u16, Value) = (res.status().as_u16(), res.json().await.unwrap());
    assert_eq!(s, 422, "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("unpacks to more than"), "{v}");
    // Too many entries.
    let many: Vec<(&str, Vec<u8>)> = (0..70).map(|_| ("card.json", b"{}".to_vec())).collect();
    let res = upload(archive("up6", &many, None)).await.unwrap();
    let v: Value = res.json().await.unwrap();
    assert!(v["error"]["message"].as_str().unwrap().contains("more than 64 entries"), "{v}");
    for gone in ["up5", "up6"] {
        assert!(!root.join(gone).exists(), "a refused upload left {gone} behind");
    }
    assert!(
        !std::fs::read_dir(&root).unwrap().flatten().any(|e| e.file_name().to_string_lossy().starts_with(".upload")),
        "temporary files are removed"
    );
    // A good archive is unpacked under its folder name and swapped in.
    let res = upload(archive("travel--uploaded", &files, None)).await.unwrap();
    assert_eq!(res.status().as_u16(), 200);
    assert_eq!(active_bundle(&c, &base, "Travel").await, "travel--uploaded");
    // The same archive again (a retry after a crash between unpacking and the registry write) is
    // accepted: the bundle in the model root has the same files.
    let res = upload(archive("travel--uploaded", &files, None)).await.unwrap();
    assert_eq!(res.status().as_u16(), 200);
    assert_eq!(active_bundle(&c, &base, "Travel").await, "travel--uploaded");
    std::fs::remove_dir_all(root).unwrap();
}

#[test]
fn leftovers_of_interrupted_uploads_are_removed_at_start() {
    let root = common::copy_root(&common::fixture_models(), "upload-leftovers");
    std::fs::create_dir_all(root.join(".upload-123-0/travel--half")).unwrap();
    std::fs::write(root.join(".upload-123-0/travel--half/card.json"), b"{").unwrap();
    std::fs::write(root.join(".upload-123-1.tar.gz"), b"partial").unwrap();
    let removed = moe_server::control::upload::remove_leftovers(&root).unwrap();
    assert_eq!(removed.len(), 2, "{removed:?}");
    assert!(!root.join(".upload-123-0").exists() && !root.join(".upload-123-1.tar.gz").exists());
    assert!(root.join("travel--tokenbag/card.json").is_file(), "bundles are untouched");
    // Only names an upload makes are swept: a folder of another name stays (and a bundle cannot
    // be named so: names starting with '.' are refused).
    std::fs::create_dir_all(root.join(".upload-evil")).unwrap();
    std::fs::create_dir_all(root.join(".upload-1-2-3")).unwrap();
    assert!(moe_server::control::upload::remove_leftovers(&root).unwrap().is_empty());
    assert!(root.join(".upload-evil").is_dir() && root.join(".upload-1-2-3").is_dir());
    assert!(root.join("registry.json").is_file());
    std::fs::remove_dir_all(root).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_is_bounded_per_class() {
    let root = common::copy_root(&common::fixture_models(), "swap-history");
    let core = common::loaded_core(&root, Limits { history_per_class: 2, ..Limits::default() }).await;
    for bundle in ["travel--tokenbag-b", "travel--tokenbag", "travel--tokenbag-b"] {
        swap(&core, "Travel", Swap { bundle: bundle.into(), ..Default::default() }).await.unwrap();
    }
    let h = core.history("Travel").unwrap();
    let kept: Vec<(&str, &str)> = h.iter().map(|e| (e.action.as_str(), e.bundle.as_deref().unwrap())).collect();
    assert_eq!(kept, [("swap", "travel--tokenbag"), ("swap", "travel--tokenbag-b")]);
    let live = moe_core::bundle::RegistryFile::read(&core.paths.state).unwrap();
    assert_eq!(live.history["Travel"].len(), 2, "the file is bounded too");
    // Rollback still works with what is kept.
    moe_server::control::swap::rollback(&core, "Travel").await.unwrap();
    assert_eq!(core.snapshot().unwrap().get("Travel").unwrap().bundle, "travel--tokenbag");
    std::fs::remove_dir_all(root).unwrap();
}

/// Two uploads of the same new bundle at once, one of which fails its guard: the failing one never
/// removes the folder the other is loading (it did in 8 of 120 rounds before uploads of one name
/// were serialised). After the attempts, the root restarts cleanly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_uploads_of_one_bundle_never_remove_each_others_folder() {
    let root = common::copy_root(&common::fixture_models(), "swap-upload-race");
    let files = bundle_files(&root, "travel--tokenbag-b");
    let core = common::loaded_core_in(&root, "upload-race", Limits::default()).await;
    let base = serve_admin(core, Some(TOKEN)).await;
    let c = reqwest::Client::new();
    let upload = |query: &'static str, body: Vec<u8>| {
        c.put(format!("{base}/experts/Travel{query}"))
            .bearer_auth(TOKEN)
            .header("content-type", "application/gzip")
            .body(body)
            .send()
    };
    for i in 0..12 {
        let a = archive(&format!("travel--race-{i}"), &files, None);
        let (failing, good) = tokio::join!(upload("?expected_version=nope", a.clone()), upload("", a));
        let (failing, good) = (failing.unwrap(), good.unwrap());
        assert_eq!(failing.status().as_u16(), 409, "round {i}");
        let status = good.status().as_u16();
        assert_eq!(status, 200, "round {i}: {}", good.text().await.unwrap());
        assert!(root.join(format!("travel--race-{i}/card.json")).is_file(), "round {i}: the installed bundle is gone");
    }
    // A restart of the root (sweep, then load the live registry) serves what was installed last.
    assert!(moe_server::control::upload::remove_leftovers(&root).unwrap().is_empty());
    let again = common::loaded_core_in(&root, "upload-race", Limits::default()).await;
    assert_eq!(again.snapshot().unwrap().get("Travel").unwrap().bundle, "travel--race-11");
    std::fs::remove_dir_all(root).unwrap();
}

/// Class names that cannot be classes are refused before any work: too long, hidden, blank.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_that_cannot_be_classes_are_refused_at_once() {
    let root = common::copy_root(&common::fixture_models(), "swap-class-names");
    let core = common::loaded_core(&root, Limits::default()).await;
    let base = serve_admin(core, Some(TOKEN)).await;
    let c = reqwest::Client::new();
    let long = "C".repeat(300);
    for class in [long.as_str(), ".upload-x", "%20Travel"] {
        let (s, v) = put(&c, &base, class, json!({"bundle": "travel--tokenbag"}), Some(TOKEN)).await;
        assert_eq!(s, 400, "PUT {class}: {v}");
        let res = c
            .post(format!("{base}/experts/{class}/train"))
            .bearer_auth(TOKEN)
            .json(&json!({"positives": ["a b", "c d", "e f", "g h", "i j"]}))
            .send()
            .await
            .unwrap();
        let s = res.status().as_u16();
        let v: Value = res.json().await.unwrap();
        assert_eq!(s, 400, "train {class}: {v}");
        assert_eq!(v["error"]["code"], "bad_request", "{v}");
        let res = c
            .post(format!("{base}/experts/{class}/select"))
            .bearer_auth(TOKEN)
            .json(&json!({"candidates": ["travel--tokenbag"]}))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status().as_u16(), 400, "select {class}");
        let v: Value = res.json().await.unwrap();
        assert!(
            v["error"]["message"].as_str().unwrap().contains("class"),
            "select {class}: the name is refused first: {v}"
        );
    }
    std::fs::remove_dir_all(root).unwrap();
}

/// A kill -9 at each step of an upload (the binary kills itself there: `MOE_FAILPOINT`), then a
/// restart: nothing of an uncommitted upload is left (no temp file, no orphan bundle folder, and
/// an upload of other files under the same name is installed, not a 409); a committed one stays
/// active. Before the markers, 4 kills in 20 left an orphan that made the next upload a 409.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_at_any_step_of_an_upload_leaves_no_orphan() {
    let c = reqwest::Client::builder().pool_max_idle_per_host(0).build().unwrap();
    for step in ["received", "staged", "marked", "placed", "committed"] {
        let root = common::copy_root(&common::fixture_models(), &format!("upload-kill-{step}"));
        let state = common::state_dir(&format!("upload-kill-{step}"));
        let files = bundle_files(&root, "travel--tokenbag-b");
        let (port, log) = (common::free_port(), state.join("serve.log"));
        let envs: Vec<(&str, &std::ffi::OsStr)> = vec![
            ("MOE_MODELS", root.as_os_str()),
            ("MOE_STATE", state.as_os_str()),
            ("MOE_ADMIN_TOKEN", TOKEN.as_ref()),
        ];
        let upload = |base: String, body: Vec<u8>| {
            c.put(format!("{base}/experts/Travel"))
                .bearer_auth(TOKEN)
                .header("content-type", "application/gzip")
                .body(body)
                .send()
        };
        let mut killed = envs.clone();
        killed.push(("MOE_FAILPOINT", step.as_ref()));
        let server = common::Server::spawn(port, &killed, &log);
        server.ready(Duration::from_secs(60)).await;
        let res = upload(server.base(), archive("travel--crash", &files, None)).await;
        assert!(res.is_err(), "{step}: the upload was answered, the process was not killed: {res:?}");
        drop(server);
        let server = common::Server::spawn(port, &envs, &log);
        server.ready(Duration::from_secs(60)).await;
        let temp: Vec<_> = std::fs::read_dir(&root)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().to_string())
            .filter(|n| n.starts_with(".upload"))
            .collect();
        assert!(temp.is_empty(), "{step}: left {temp:?}");
        let active = active_bundle(&c, &server.base(), "Travel").await;
        if step == "committed" {
            assert_eq!(active, "travel--crash", "{step}: the committed upload is active");
            assert!(root.join("travel--crash/card.json").is_file());
        } else {
            assert_eq!(active, "travel--tokenbag", "{step}");
            assert!(!root.join("travel--crash").exists(), "{step}: an orphan bundle is left");
            let other = with_card(&files, |c| c["version"] = "v-retry".into());
            let res = upload(server.base(), archive("travel--crash", &other, None)).await.unwrap();
            let s = res.status().as_u16();
            assert_eq!(s, 200, "{step}: the retry: {}", res.text().await.unwrap());
        }
        drop(server);
        let _ = std::fs::remove_dir_all(&root);
        let _ = std::fs::remove_dir_all(&state);
    }
}

/// One name rule: names with invisible characters (a zero-width space, a right-to-left override)
/// cannot stand beside `Travel` as other classes, bundles or feedback labels.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invisible_characters_name_nothing() {
    let root = common::copy_root(&common::fixture_models(), "swap-invisible");
    let files = bundle_files(&root, "travel--tokenbag-b");
    let core = common::loaded_core(&root, Limits::default()).await;
    let base = serve_admin(core, Some(TOKEN)).await;
    let c = reqwest::Client::builder().pool_max_idle_per_host(0).build().unwrap();
    for class in ["Travel\u{200B}", "\u{202E}Travel", "Tra\u{00AD}vel"] {
        let (s, v) = put(&c, &base, class, json!({"bundle": "travel--tokenbag-b"}), Some(TOKEN)).await;
        assert_eq!(s, 400, "class {class:?}: {v}");
        let res = c
            .post(format!("{base}/feedback"))
            .json(&json!({"text": "how to pack for a trip", "label": class}))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status().as_u16(), 400, "label {class:?}");
        // As a bundle folder inside an upload.
        let res = c
            .put(format!("{base}/experts/Travel"))
            .bearer_auth(TOKEN)
            .header("content-type", "application/gzip")
            .body(long_archive(&format!("travel{class}"), &files))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status().as_u16(), 422, "bundle named {class:?}");
    }
    let listed: Value = c.get(format!("{base}/experts")).send().await.unwrap().json().await.unwrap();
    assert_eq!(listed["experts"].as_array().unwrap().len(), 2, "{listed}");
    let res = c
        .post(format!("{base}/feedback"))
        .json(&json!({"text": "how to pack for a trip", "label": "Travel"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 200, "a plain label is still taken");
    std::fs::remove_dir_all(root).unwrap();
}

/// The token must be exactly `Bearer <token>`, in one Authorization header: two headers are a 400
/// (which one counts is up to each proxy on the way), a near miss a 401.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_match_exactly_and_once() {
    let root = common::copy_root(&common::fixture_models(), "swap-tokens");
    let core = common::loaded_core(&root, Limits::default()).await;
    let base = serve_admin(core, Some(TOKEN)).await;
    let c = reqwest::Client::new();
    let swap = |headers: Vec<String>| {
        let mut r = c.put(format!("{base}/experts/Travel")).json(&json!({"bundle": "travel--tokenbag-b"}));
        for h in headers {
            r = r.header("authorization", h);
        }
        r.send()
    };
    let good = format!("Bearer {TOKEN}");
    for (headers, status) in [
        (vec![good.clone(), "Bearer wrong".into()], 400),
        (vec!["Bearer wrong".into(), good.clone()], 400),
        (vec![good.clone(), good.clone()], 400),
        (vec![format!("bearer {TOKEN}")], 401),
        (vec![format!("Bearer  {TOKEN}")], 401),
        (vec![format!("Bearer {TOKEN}x")], 401),
        (vec![TOKEN.to_string()], 401),
    ] {
        let res = swap(headers.clone()).await.unwrap();
        assert_eq!(res.status().as_u16(), status, "{headers:?}");
    }
    // A trailing space never reaches the service: HTTP drops it from the field value (RFC 9110
    // section 5.5), so this is the exact token.
    let mut s = tokio::net::TcpStream::connect(base.trim_start_matches("http://")).await.unwrap();
    let body = r#"{"bundle": "travel--tokenbag-b"}"#;
    let head = format!(
        "PUT /experts/Travel HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN} \r\ncontent-type: application/json\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    tokio::io::AsyncWriteExt::write_all(&mut s, head.as_bytes()).await.unwrap();
    let mut answer = String::new();
    tokio::io::AsyncReadExt::read_to_string(&mut s, &mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    std::fs::remove_dir_all(root).unwrap();
}

/// A PAX record with a size that is no byte count (`size=-5`) is refused, not silently ignored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_pax_sizes_are_refused() {
    let root = common::copy_root(&common::fixture_models(), "swap-pax");
    let files = bundle_files(&root, "travel--tokenbag-b");
    let core = common::loaded_core(&root, Limits::default()).await;
    let base = serve_admin(core, Some(TOKEN)).await;
    let mut tar = tar::Builder::new(flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast()));
    for (name, bytes) in &files {
        tar.append_pax_extensions([("size", b"-5".as_slice())]).unwrap();
        let mut h = tar::Header::new_ustar();
        h.set_path(format!("up-pax/{name}")).unwrap();
        h.set_size(bytes.len() as u64);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        h.set_cksum();
        tar.append(&h, bytes.as_slice()).unwrap();
    }
    let body = tar.into_inner().unwrap().finish().unwrap();
    let res = reqwest::Client::new()
        .put(format!("{base}/experts/Travel"))
        .bearer_auth(TOKEN)
        .header("content-type", "application/gzip")
        .body(body)
        .send()
        .await
        .unwrap();
    let (s, v): (u16, Value) = (res.status().as_u16(), res.json().await.unwrap());
    assert_eq!(s, 422, "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("PAX size"), "{v}");
    assert!(!root.join("up-pax").exists());
    std::fs::remove_dir_all(root).unwrap();
}

/// A 409 names the versions in words, not as Rust values (`Some("…")` / `None`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conflicts_name_versions_in_words() {
    let root = common::copy_root(&common::fixture_models(), "swap-409-words");
    let core = common::loaded_core(&root, Limits::default()).await;
    let base = serve_admin(core, Some(TOKEN)).await;
    let c = reqwest::Client::new();
    // Active, then deleted (no version at all).
    for deleted in [false, true] {
        if deleted {
            let res = c.delete(format!("{base}/experts/Travel")).bearer_auth(TOKEN).send().await.unwrap();
            assert_eq!(res.status().as_u16(), 200);
        }
        let body = json!({"bundle": "travel--tokenbag-b", "expected_version": "nope"});
        let (s, v) = put(&c, &base, "Travel", body, Some(TOKEN)).await;
        let message = v["error"]["message"].as_str().unwrap();
        assert_eq!(s, 409, "deleted {deleted}: {v}");
        assert!(!message.contains("Some(") && !message.contains("None"), "{message}");
        assert!(message.contains("\"nope\""), "{message}");
    }
    std::fs::remove_dir_all(root).unwrap();
}
