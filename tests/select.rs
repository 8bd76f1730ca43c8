//! `moe select`: the best calibrated candidate per class by the chosen metric, ties to the cheaper
//! graph; the registry, the bundles and the evidence are written; the result serves.

mod common;

use std::path::Path;

use moe_core::bundle::{Metric, RegistryFile};
use moe_tools::select::{SelectOptions, select};
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
        assert_eq!(moe_core::bundle::bundle_names(&out).unwrap().len(), 2, "losers are not copied");
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
    let set = moe_core::service::ExpertSet::load(
        &moe_core::inference::ExecutorPool::default(),
        &common::runtime(),
        &out,
        &reg,
    )
    .unwrap();
    assert_eq!(set.experts.len(), 2);
    // Uncalibrated candidates are refused.
    common::edit_json(&cands.join("health--tokenbag/card.json"), |c| c["threshold"] = Value::Null);
    let err = select(&options(&cands, &out, Metric::Eer), &common::data(), &common::runtime()).unwrap_err();
    assert!(err.to_string().contains("not calibrated"), "{err}");
    std::fs::remove_dir_all(cands).unwrap();
    std::fs::remove_dir_all(out).unwrap();
}

/// `moe calibrate` writes each expert's Platt map with out-of-sample evidence; `moe select` scores
/// the calibrated gate by cross-validation on val beside the others; a set whose gate is
/// `calibrated` ranks by each expert's own map, and falls back (saying why) when one has none.
#[test]
fn calibration_is_fitted_on_val_chosen_by_cross_validation_and_served() {
    use moe_core::gate::{ScoreMode, calibrated};
    let root = common::copy_root(&common::fixture_models(), "calibrate");
    let runtime = common::runtime();
    moe_core::evaluation::calibrate(&root, &[], "val", &common::data(), &runtime).unwrap();
    let mut maps = Vec::new();
    for bundle in moe_core::bundle::bundle_names(&root).unwrap() {
        let card: Value =
            serde_json::from_str(&std::fs::read_to_string(root.join(&bundle).join("card.json")).unwrap()).unwrap();
        let c = &card["calibration"];
        assert_eq!((c["method"].as_str(), c["split"].as_str()), (Some("platt"), Some("val")), "{bundle}");
        assert!(c["a"].as_f64().unwrap() > 0.0, "{bundle}: an increasing map");
        let cv = &c["cross_validated"];
        assert_eq!(cv["folds"], 5);
        assert!(cv["log_loss_raw"].as_f64().unwrap() > 0.0 && cv["log_loss_calibrated"].as_f64().unwrap() > 0.0);
        maps.push((bundle, c["a"].as_f64().unwrap(), c["b"].as_f64().unwrap()));
    }
    assert!(maps.iter().any(|(_, a, b)| (a - 1.0).abs() > 1e-3 || b.abs() > 1e-3), "the maps were fitted: {maps:?}");
    assert!(moe_core::evaluation::calibrate(&root, &[], "test", &common::data(), &runtime).is_err());

    // select: the calibrated rows are there, scored out of sample.
    let out = root.with_file_name(format!("moe-test-calibrate-out-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    std::fs::remove_file(root.join("registry.json")).unwrap();
    let mut reg = run(&root, &out, Metric::Eer);
    let table = reg.gate.selected_by.as_ref().unwrap()["table"].as_array().unwrap().clone();
    let rows: Vec<&Value> = table.iter().filter(|r| r["score"] == "calibrated").collect();
    assert_eq!(rows.len(), 1 + 4 + 4, "uniform, then length and stacking at 4 L2 strengths");
    assert!(rows.iter().all(|r| r["evaluation"] == "5-fold cross-validation on val"));

    // Served with a calibrated gate: each expert's score is its own calibrated probability / N.
    reg.gate = moe_core::gate::GateSpec { score: ScoreMode::Calibrated, ..Default::default() };
    let pool = moe_core::inference::ExecutorPool::default();
    let set = moe_core::service::ExpertSet::load(&pool, &runtime, &out, &reg).unwrap();
    assert_eq!((set.gate.score, set.gate.disabled.clone()), (ScoreMode::Calibrated, None));
    let probs: Vec<f32> = vec![0.3, 0.8][..set.experts.len()].to_vec();
    let r = set.decide("how to pack a suitcase", &probs, false, None);
    for (i, e) in r.experts.iter().enumerate() {
        let cal = set.experts[i].calibration().unwrap();
        let want = calibrated(cal, probs[i]) / set.experts.len() as f32;
        assert!((e.score - want).abs() < 1e-6, "{}: {} vs {want}", r.name(e).class, e.score);
    }
    // One expert without a map: probabilities again, and the reason is reported.
    common::edit_json(&out.join(&reg.experts["Health"]).join("card.json"), |c| c["calibration"] = Value::Null);
    let set = moe_core::service::ExpertSet::load(&pool, &runtime, &out, &reg).unwrap();
    assert_eq!(set.gate.score, ScoreMode::Probability);
    assert!(set.gate.disabled.as_deref().unwrap_or("").contains("Health has none"), "{:?}", set.gate.disabled);
    std::fs::remove_dir_all(root).unwrap();
    std::fs::remove_dir_all(out).unwrap();
}

/// The offline tools score many experts on one split: heads on one trunk share one trunk pass
/// over it, and every probability is exactly what scoring each expert alone gives.
#[test]
fn heads_on_one_trunk_share_one_trunk_pass_with_the_same_probabilities() {
    use moe_core::evaluation::{Scorer, probabilities};
    let root = common::default_models();
    let pool = moe_core::inference::ExecutorPool::default();
    let set = moe_core::service::ExpertSet::load(&pool, &common::runtime(), &root, &RegistryFile::read(&root).unwrap())
        .unwrap();
    // 150 texts: more than two of the tools' 64-text chunks.
    let texts: Vec<String> = common::data().read("val").unwrap().texts.into_iter().take(150).collect();
    let mut scorer = Scorer::new(&texts);
    for e in &set.experts {
        assert_eq!(scorer.probabilities(e).unwrap(), probabilities(e, &texts).unwrap(), "{}", e.bundle);
    }
    let trunks: std::collections::HashSet<&str> = set.experts.iter().map(|e| e.stage1.sha256.as_str()).collect();
    assert_eq!(scorer.trunk_passes(), trunks.len());
    assert!(set.experts.len() >= 19 && trunks.len() == 1, "the shipped set: 19 heads on one trunk");
}

/// `moe calibrate` scores every bundle before writing any card: one bundle that fails to load (its
/// self-test no longer matches) leaves every card as it was, and the error names that bundle.
#[test]
fn calibrate_writes_no_card_when_one_bundle_fails() {
    let root = common::copy_root(&common::fixture_models(), "calibrate-all-or-none");
    let names = moe_core::bundle::bundle_names(&root).unwrap();
    let last = names.last().unwrap().clone();
    common::edit_json(&root.join(&last).join("card.json"), |card| {
        let p = card["selftest"][0]["probability"].as_f64().unwrap();
        card["selftest"][0]["probability"] = serde_json::json!(if p > 0.5 { p - 0.5 } else { p + 0.5 });
    });
    let cards = |root: &std::path::Path| -> Vec<String> {
        names.iter().map(|n| std::fs::read_to_string(root.join(n).join("card.json")).unwrap()).collect()
    };
    let before = cards(&root);
    let err = moe_core::evaluation::calibrate(&root, &[], "val", &common::data(), &common::runtime()).unwrap_err();
    assert!(err.to_string().contains(&last), "{err}");
    assert_eq!(cards(&root), before, "a card was written although a bundle failed");
    std::fs::remove_dir_all(root).unwrap();
}
