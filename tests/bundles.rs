//! Bundle and registry validation: every bad bundle is refused with a message naming the file and
//! the problem, before it could serve.

mod common;

use std::path::Path;

use moe_core::expert::Expert;
use moe_core::inference::ExecutorPool;
use moe_core::service::ExpertSet;

fn load(root: &Path, bundle: &str) -> Result<Expert, String> {
    Expert::load(&ExecutorPool::default(), &common::runtime(), root, bundle, true).map_err(|e| e.to_string())
}

#[test]
fn good_bundles_load() {
    let root = common::fixture_models();
    let e = load(&root, "travel--tokenbag").unwrap();
    assert_eq!(e.class, "Travel");
    let card: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(root.join("travel--tokenbag/card.json")).unwrap()).unwrap();
    assert_eq!(e.threshold.map(f64::from), card["threshold"]["value"].as_f64().map(|t| t as f32 as f64));
    let d = load(&common::default_models(), "travel--kd19-logreg").unwrap();
    assert!(matches!(d.head, Some(moe_core::expert::Head::Linear(_))), "the shipped heads are linear, on a trunk");
    let g = load(&common::default_models(), "travel--global-ft19-logreg").unwrap();
    assert!(matches!(g.head, Some(moe_core::expert::Head::Graph(_))), "a column head is an ONNX graph on a trunk");
}

#[test]
fn refusals_name_the_file_and_the_problem() {
    let src = common::fixture_models();
    let head = common::default_models().join("travel--global-ft19-logreg/head.onnx");
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
            "calibration",
            Box::new(|d| {
                common::edit_json(&d.join("card.json"), |c| {
                    c["calibration"] = serde_json::json!({"method": "platt", "a": -1.0, "b": 0.0, "split": "val"})
                })
            }),
            "calibration",
        ),
        (
            "lexicon-hash",
            Box::new(|d| {
                std::fs::write(d.join("lexicon.txt"), "how\t1\n").unwrap();
                common::edit_json(&d.join("card.json"), |c| {
                    c["spelling"] = serde_json::json!({"file": "lexicon.txt", "sha256": "00"})
                })
            }),
            "sha256 mismatch",
        ),
        (
            "lexicon-format",
            Box::new(|d| {
                std::fs::write(d.join("lexicon.txt"), "how\t1\nHow 2\n").unwrap();
                let sha = moe_core::files::sha256_file(&d.join("lexicon.txt")).unwrap();
                common::edit_json(&d.join("card.json"), |c| {
                    c["spelling"] = serde_json::json!({"file": "lexicon.txt", "sha256": sha})
                })
            }),
            "line 2: expected `word<TAB>count`",
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
                let sha = moe_core::files::sha256_file(&d.join("model.onnx")).unwrap();
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

/// The set a model root's registry names, as the offline tools load it.
fn load_set(cfg: &moe_core::config::RuntimeConfig, root: &std::path::Path) -> moe_core::Result<ExpertSet> {
    ExpertSet::load(&ExecutorPool::default(), cfg, root, &moe_core::bundle::RegistryFile::read(root)?)
}

#[test]
fn registry_must_match_the_cards() {
    let root = common::copy_root(&common::fixture_models(), "registry");
    common::edit_json(&root.join("registry.json"), |r| {
        r["experts"]["Travel"] = "health--tokenbag".into();
    });
    let err = load_set(&common::runtime(), &root).err().unwrap().to_string();
    assert!(err.contains("registry.json") && err.contains("\"Travel\""), "{err}");
    common::replace_file(&root.join("registry.json"), b"[]");
    let err = load_set(&common::runtime(), &root).err().unwrap().to_string();
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

/// ONNX heads run inline on the caller's thread (the default) or on their executor threads: the
/// same probabilities either way, for the 19 column heads of the global model on the shipped trunk,
/// from several threads at once.
#[test]
fn inline_and_threaded_heads_agree() {
    let root = common::copy_root(&common::default_models(), "inline-heads");
    common::edit_json(&root.join("registry.json"), |r| {
        for (_, b) in r["experts"].as_object_mut().unwrap() {
            *b = b.as_str().unwrap().replace("--kd19-logreg", "--global-ft19-logreg").into();
        }
        r["gate"] = serde_json::json!({});
    });
    let texts: Vec<String> =
        ["how to pack a suitcase", "how to bake sourdough bread", "how to train a puppy"].map(String::from).to_vec();
    let run = |inline_heads: bool| {
        let cfg = moe_core::config::RuntimeConfig { inline_heads, sessions: Some(2), ..common::runtime() };
        let set = std::sync::Arc::new(load_set(&cfg, &root).unwrap());
        let Some(moe_core::expert::Head::Graph(head)) = set.experts[0].head.as_ref() else {
            panic!("the column heads are ONNX heads")
        };
        assert_eq!(head.inline(), inline_heads);
        assert!(!set.experts[0].stage1.inline(), "trunks keep their executor threads");
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).build().unwrap();
        rt.block_on(async {
            let calls: Vec<_> = (0..4)
                .map(|_| {
                    let (set, texts) = (set.clone(), texts.clone());
                    tokio::spawn(async move { set.probabilities(&texts).await.unwrap().probs })
                })
                .collect();
            let mut out = Vec::new();
            for c in calls {
                out.push(c.await.unwrap());
            }
            out
        })
    };
    let (inline, threaded) = (run(true), run(false));
    assert_eq!(inline.len(), 4);
    for (a, b) in inline.iter().zip(&threaded) {
        assert_eq!((a.rows, a.cols), (texts.len(), 19));
        for (p, q) in a.data.iter().zip(&b.data) {
            assert!((p - q).abs() < 1e-6, "inline {p} vs threaded {q}");
        }
    }
    assert_eq!(inline[0], inline[3], "concurrent inline calls agree");
    std::fs::remove_dir_all(root).unwrap();
}
