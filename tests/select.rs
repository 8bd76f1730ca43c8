//! `moe select`: the best calibrated candidate per class by the chosen metric, ties to the cheaper
//! graph; the registry, the bundles and the evidence are written; the result serves.

mod common;

use std::path::Path;

use moe::eval::select::{SelectOptions, select};
use moe::experts::{Metric, RegistryFile};
use serde_json::Value;

fn options(candidates: &Path, out: &Path, metric: Metric) -> SelectOptions {
    SelectOptions { candidates: candidates.to_path_buf(), out: out.to_path_buf(), metric, algorithms: vec![] }
}

fn run(candidates: &Path, out: &Path, metric: Metric) -> RegistryFile {
    select(&options(candidates, out, metric), &common::data(), &common::runtime()).unwrap();
    RegistryFile::read(out).unwrap()
}

fn val(root: &Path, bundle: &str, path: &[&str]) -> f64 {
    let card: Value =
        serde_json::from_str(&std::fs::read_to_string(root.join(bundle).join("card.json")).unwrap()).unwrap();
    path.iter().fold(&card["metrics"]["val"]["report"], |v, k| &v[*k]).as_f64().unwrap()
}

#[test]
fn keeps_the_best_candidate_per_class() {
    let cands = common::copy_root(&common::fixture_models(), "select-cands");
    std::fs::remove_file(cands.join("registry.json")).unwrap();
    let out = std::env::temp_dir().join(format!("moe-test-select-out-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    for (metric, path, lower_is_better) in [(Metric::Eer, vec!["eer"], true), (Metric::F1, vec!["at_eer", "f1"], false)]
    {
        let reg = run(&cands, &out, metric);
        for (class, slug) in [("Travel", "travel"), ("Health", "health")] {
            let (a, b) = (format!("{slug}--tokenbag"), format!("{slug}--tokenbag-b"));
            let (va, vb) = (val(&cands, &a, &path), val(&cands, &b, &path));
            let want = if (va < vb) == lower_is_better { a } else { b };
            assert_eq!(reg.experts[class], want, "{metric}: {class} ({va} vs {vb})");
            assert!(out.join(&want).join("card.json").is_file());
        }
        assert_eq!(moe::experts::card::bundle_names(&out).unwrap().len(), 2, "losers are not copied");
        let evidence: Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("selection.json")).unwrap()).unwrap();
        assert_eq!(evidence["metric"], metric.name());
        assert_eq!(evidence["classes"]["Travel"]["candidates"].as_array().unwrap().len(), 2);
        assert!(reg.gate.selected_by.is_some(), "the gate choice is recorded");
    }
    // A tie on the metric goes to the cheaper graph (the 4-dim token bag is half the size).
    let eer = val(&cands, "travel--tokenbag", &["eer"]);
    common::edit_json(&cands.join("travel--tokenbag-b/card.json"), |c| {
        c["metrics"]["val"]["report"]["eer"] = eer.into();
    });
    let reg = run(&cands, &out, Metric::Eer);
    assert_eq!(reg.experts["Travel"], "travel--tokenbag-b");
    // The selected root serves.
    let set =
        moe::core::ExpertSet::load(&moe::inference::ExecutorPool::default(), &common::runtime(), &out, &reg).unwrap();
    assert_eq!(set.experts.len(), 2);
    // Uncalibrated candidates are refused.
    common::edit_json(&cands.join("health--tokenbag/card.json"), |c| c["threshold"] = Value::Null);
    let err = select(&options(&cands, &out, Metric::Eer), &common::data(), &common::runtime()).unwrap_err();
    assert!(err.to_string().contains("not calibrated"), "{err}");
    std::fs::remove_dir_all(cands).unwrap();
    std::fs::remove_dir_all(out).unwrap();
}
