//! Bundle and registry validation: every bad bundle is refused with a message naming the file and
//! the problem, before it could serve.

mod common;

use std::path::Path;

use moe::core::{Expert, ExpertSet};
use moe::inference::ExecutorPool;

fn load(root: &Path, bundle: &str) -> Result<Expert, String> {
    Expert::load(&ExecutorPool::default(), &common::runtime(), root, bundle, true).map_err(|e| e.to_string())
}

#[test]
fn good_bundles_load() {
    let root = common::fixture_models();
    let e = load(&root, "travel--tokenbag").unwrap();
    assert_eq!(e.class, "Travel");
    assert!(e.threshold.unwrap() > 0.0);
    let d = load(&common::default_models(), "travel--ft19-logreg").unwrap();
    assert!(d.head.is_some(), "a head bundle runs on a trunk");
}

#[test]
fn refusals_name_the_file_and_the_problem() {
    let src = common::fixture_models();
    let head = common::default_models().join("travel--ft19-logreg/head.onnx");
    type Breaker = Box<dyn Fn(&Path)>;
    let cases: Vec<(&str, Breaker, &str)> = vec![
        ("hash", Box::new(|d| common::replace_file(&d.join("model.onnx"), b"garbage")), "sha256 mismatch"),
        (
            "no-tokenizer",
            Box::new(|d| std::fs::remove_file(d.join("tokenizer.json")).unwrap()),
            "tokenizer.json: cannot open",
        ),
        ("bad-card", Box::new(|d| common::replace_file(&d.join("card.json"), b"{")), "bad JSON"),
        (
            "uncalibrated",
            Box::new(|d| common::edit_json(&d.join("card.json"), |c| c["threshold"] = serde_json::Value::Null)),
            "no calibrated threshold",
        ),
        (
            "selftest",
            Box::new(|d| common::edit_json(&d.join("card.json"), |c| c["selftest"][0]["probability"] = 0.999.into())),
            "self-test failed",
        ),
        (
            "traversal",
            Box::new(|d| common::edit_json(&d.join("card.json"), |c| c["graph"]["file"] = "../../etc/passwd".into())),
            "not a plain folder name",
        ),
        (
            // A real head graph in place of the full model, with a matching hash: wrong signature.
            "signature",
            Box::new(move |d| {
                let bytes = std::fs::read(&head).unwrap();
                common::replace_file(&d.join("model.onnx"), &bytes);
                let sha = moe::experts::card::sha256_file(&d.join("model.onnx")).unwrap();
                common::edit_json(&d.join("card.json"), |c| c["graph"]["sha256"] = sha.into());
            }),
            "unexpected input \"embedding\"",
        ),
    ];
    for (tag, breaker, expect) in cases {
        let root = common::copy_root(&src, tag);
        breaker(&root.join("travel--tokenbag"));
        let err = load(&root, "travel--tokenbag").err().unwrap_or_else(|| panic!("{tag}: bad bundle accepted"));
        assert!(err.contains(expect), "{tag}: {err}");
        assert!(err.contains("travel--tokenbag"), "{tag}: message must name the file: {err}");
        std::fs::remove_dir_all(root).unwrap();
    }
}

#[test]
fn symlinks_out_of_the_root_are_refused() {
    let root = common::copy_root(&common::fixture_models(), "symlink");
    let outside = common::copy_root(&common::fixture_models(), "outside");
    std::os::unix::fs::symlink(outside.join("travel--tokenbag"), root.join("escape")).unwrap();
    let err = load(&root, "escape").err().unwrap();
    assert!(err.contains("outside the model root"), "{err}");
    for bad in ["..", "../x", "/etc"] {
        assert!(load(&root, bad).is_err(), "{bad}");
    }
    std::fs::remove_dir_all(root).unwrap();
    std::fs::remove_dir_all(outside).unwrap();
}

#[test]
fn registry_must_match_the_cards() {
    let root = common::copy_root(&common::fixture_models(), "registry");
    common::edit_json(&root.join("registry.json"), |r| {
        r["experts"]["Travel"] = "health--tokenbag".into();
    });
    let err = ExpertSet::load(&ExecutorPool::default(), &common::runtime(), &root, 1).err().unwrap().to_string();
    assert!(err.contains("registry.json") && err.contains("\"Travel\""), "{err}");
    common::replace_file(&root.join("registry.json"), b"[]");
    let err = ExpertSet::load(&ExecutorPool::default(), &common::runtime(), &root, 1).err().unwrap().to_string();
    assert!(err.contains("registry.json") && err.contains("bad JSON"), "{err}");
    std::fs::remove_dir_all(root).unwrap();
}

#[test]
fn sessions_are_released_with_their_last_expert() {
    let pool = ExecutorPool::default();
    let root = common::fixture_models();
    let a = Expert::load(&pool, &common::runtime(), &root, "travel--tokenbag", true).unwrap();
    let b = Expert::load(&pool, &common::runtime(), &root, "travel--tokenbag", true).unwrap();
    assert!(std::sync::Arc::ptr_eq(&a.stage1, &b.stage1), "same graph hash shares one executor");
    assert_eq!(pool.live_executors(), 1);
    drop(a);
    assert_eq!(pool.live_executors(), 1);
    drop(b);
    assert_eq!(pool.live_executors(), 0);
}
