//! Per-row int8 trunks (training/moe_training/rowquant.py) in the service's own runtime: the load
//! probe finds the shipped per-tensor trunk batch-dependent (run one text at a time) and its
//! rewrite batch-invariant (batched), and through the rewrite every expert's probability for a text
//! is the same alone and inside batches of other texts and lengths (so other padding), to 1e-6.

mod common;

use std::path::Path;

use moe_core::expert::Expert;
use moe_core::inference::ExecutorPool;

const BUNDLES: [&str; 2] = ["travel--kd19-logreg", "health--kd19-logreg"];

/// A root with two of the shipped bundles and their trunk, and its `rowquant` rewrite.
fn roots() -> (std::path::PathBuf, std::path::PathBuf) {
    let src = std::env::temp_dir().join(format!("moe-test-rowq-src-{}", std::process::id()));
    let out = src.with_file_name(format!("moe-test-rowq-out-{}", std::process::id()));
    for d in [&src, &out] {
        let _ = std::fs::remove_dir_all(d);
    }
    let shipped = common::default_models();
    let card: serde_json::Value =
        serde_json::from_slice(&std::fs::read(shipped.join(BUNDLES[0]).join("card.json")).unwrap()).unwrap();
    let trunk = format!("trunks/{}", card["trunk"]["id"].as_str().unwrap());
    for part in BUNDLES.iter().map(|b| b.to_string()).chain([trunk]) {
        let to = src.join(&part);
        std::fs::create_dir_all(&to).unwrap();
        for f in std::fs::read_dir(shipped.join(&part)).unwrap().flatten() {
            std::fs::copy(f.path(), to.join(f.file_name())).unwrap();
        }
    }
    let done = std::process::Command::new(common::python())
        .current_dir(common::repo().join("training"))
        .args(["-m", "moe_training", "rowquant"])
        .args([&src, &out])
        .output()
        .expect("run the trainer (scripts/setup.sh installs it)");
    assert!(done.status.success(), "{}", String::from_utf8_lossy(&done.stderr));
    (src, out)
}

fn load(root: &Path, bundle: &str) -> Expert {
    Expert::load(&ExecutorPool::default(), &common::runtime(), root, bundle, true).unwrap()
}

#[test]
fn a_per_row_trunk_is_batched_and_answers_each_text_as_it_does_alone() {
    let (src, out) = roots();
    assert!(load(&src, BUNDLES[0]).stage1.row_by_row(), "the per-tensor trunk depends on its batch");
    let texts: Vec<String> = common::data().read("test").unwrap().texts.into_iter().take(40).collect();
    for bundle in BUNDLES {
        let e = load(&out, bundle);
        assert!(!e.stage1.row_by_row(), "{bundle}: the per-row trunk is probed batch-invariant");
        let alone: Vec<f32> =
            texts.iter().map(|t| e.probabilities_blocking(std::slice::from_ref(t)).unwrap()[0]).collect();
        let mut worst = 0f32;
        for chunk in [3, 7, 40] {
            for (i, batch) in texts.chunks(chunk).enumerate() {
                let got = e.probabilities_blocking(batch).unwrap();
                for (j, p) in got.iter().enumerate() {
                    worst = worst.max((p - alone[i * chunk + j]).abs());
                }
            }
        }
        assert!(worst <= 1e-6, "{bundle}: {worst}");
    }
    for d in [src, out] {
        std::fs::remove_dir_all(d).unwrap();
    }
}
