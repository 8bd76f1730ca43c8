//! `moe select`: the best calibrated candidate per class by a validation metric (ties to the
//! cheaper graph), installed with its trunk into a model root with registry.json and the evidence
//! (selection.json); then the gate and score mode are chosen on the validation split.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::json;

use moe_core::bundle::bundle_names;
use moe_core::bundle::card::{Card, check_name};
use moe_core::bundle::registry::RegistryFile;
use moe_core::bundle::{BundleFiles, Metric};
use moe_core::config::RuntimeConfig;
use moe_core::data::DataArgs;
use moe_core::evaluation::Scorer;
use moe_core::gate::{Gate, GateKind, GateSpec, GateWeights, IDENTITY, LengthGate, ScoreMode, StackingGate};
use moe_core::inference::ExecutorPool;
use moe_core::service::ExpertSet;
use moe_core::stats::gating::{GateData, accuracy, cv_predictions, fit_gate, predictions};
use moe_core::{Error, Result};

/// What `moe select` reads and writes.
#[derive(Debug, Clone, clap::Args)]
pub struct SelectOptions {
    /// Model root holding calibrated candidate bundles.
    #[arg(long)]
    pub candidates: PathBuf,
    /// Model root to write: selected bundles, trunks, registry.json, selection.json.
    #[arg(long, default_value = "models")]
    pub out: PathBuf,
    /// Validation metric the candidates of a class are ranked by.
    #[arg(long, value_enum, default_value_t = Metric::Eer)]
    pub metric: Metric,
    /// Only these algorithms compete (default: all found).
    #[arg(long, value_delimiter = ',')]
    pub algorithms: Vec<String>,
}

/// A calibrated card's validation metric, oriented so that higher is better.
fn rank_of(card: &Card, metric: Metric) -> Option<f64> {
    card.report("val").map(|r| metric.rank(r))
}

fn copy_dir(src: &Path, dst: &Path) -> Result<()> {
    if dst.exists() {
        std::fs::remove_dir_all(dst).map_err(|e| Error::io(dst, e))?;
    }
    std::fs::create_dir_all(dst).map_err(|e| Error::io(dst, e))?;
    for e in std::fs::read_dir(src).map_err(|e| Error::io(src, e))?.flatten() {
        let to = dst.join(e.file_name());
        std::fs::copy(e.path(), &to).map_err(|err| Error::io(&to, err))?;
    }
    Ok(())
}

/// A candidate: bundle name, card, graph bytes (the cost that breaks ties).
type Candidate = (String, Card, u64);

pub fn select(a: &SelectOptions, data: &DataArgs, runtime: &RuntimeConfig) -> Result<()> {
    std::fs::create_dir_all(&a.out).map_err(|e| Error::io(&a.out, e))?;
    if a.candidates.canonicalize().ok() == a.out.canonicalize().ok() {
        return Err(Error::BadRequest("--candidates and --out must be different folders".into()));
    }
    let mut by_class = candidates_by_class(a)?;
    let (winners, evidence) = rank(&mut by_class, a.metric);
    install_winners(a, &winners)?;
    let mut reg = RegistryFile { experts: winners.clone(), ..RegistryFile::empty() };
    reg.write(&a.out)?;
    let acc = choose_gate_on_val(&mut reg, &a.out, data, runtime)?;
    reg.write(&a.out)?;
    let selection = json!({"metric": a.metric, "classes": evidence, "gate": reg.gate.selected_by});
    moe_core::files::write_atomic(
        &a.out.join("selection.json"),
        format!("{}\n", serde_json::to_string_pretty(&selection).expect("json")).as_bytes(),
    )?;
    let (kind, mode) = (reg.gate.kind, reg.gate.score);
    println!(
        "selected {} experts into {}; gate {kind:?}/{mode:?} (val accuracy {acc:.4})",
        winners.len(),
        a.out.display()
    );
    Ok(())
}

/// Every calibrated candidate of `--candidates` (of the `--algorithms` asked for), by class.
fn candidates_by_class(a: &SelectOptions) -> Result<BTreeMap<String, Vec<Candidate>>> {
    let mut by_class: BTreeMap<String, Vec<Candidate>> = BTreeMap::new();
    for name in bundle_names(&a.candidates)? {
        let files = BundleFiles::open(&a.candidates, &name)?;
        if !a.algorithms.is_empty() && !a.algorithms.contains(&files.card.algorithm) {
            continue;
        }
        if files.card.threshold.is_none() || rank_of(&files.card, a.metric).is_none() {
            return Err(Error::bundle(files.dir, "not calibrated on val: run `moe calibrate` first"));
        }
        let cost = std::fs::metadata(&files.graph).map(|m| m.len()).unwrap_or(u64::MAX);
        by_class.entry(files.card.class.clone()).or_default().push((name, files.card, cost));
    }
    if by_class.is_empty() {
        return Err(Error::BadRequest(format!("no candidate bundles in {}", a.candidates.display())));
    }
    Ok(by_class)
}

/// The winner of each class (best metric, rounded to 1e-4 so noise does not beat cost, then the
/// cheaper graph) and the evidence: every candidate's validation figures.
fn rank(
    by_class: &mut BTreeMap<String, Vec<Candidate>>,
    metric: Metric,
) -> (BTreeMap<String, String>, BTreeMap<String, serde_json::Value>) {
    let mut evidence = BTreeMap::new();
    let mut winners = BTreeMap::new();
    for (class, cands) in by_class {
        cands.sort_by(|x, y| {
            let (mx, my) = (rank_of(&x.1, metric).unwrap_or(f64::MIN), rank_of(&y.1, metric).unwrap_or(f64::MIN));
            ((my * 1e4).round()).total_cmp(&((mx * 1e4).round())).then(x.2.cmp(&y.2))
        });
        winners.insert(class.clone(), cands[0].0.clone());
        let rows: Vec<_> = cands
            .iter()
            .map(|(n, c, cost)| {
                let r = c.report("val");
                json!({"bundle": n, "algorithm": c.algorithm, "eer": r.map(|r| r.eer), "auc": r.map(|r| r.auc),
                       "f1_at_eer": r.map(|r| r.at_eer.f1), "accuracy_at_eer": r.map(|r| r.at_eer.accuracy),
                       "threshold": c.threshold.as_ref().map(|t| t.value), "graph_bytes": cost})
            })
            .collect();
        evidence.insert(class.clone(), json!({"winner": cands[0].0, "candidates": rows}));
    }
    (winners, evidence)
}

/// Copy the winners and the trunks they use into `--out`; drop bundles and trunks no longer
/// selected.
fn install_winners(a: &SelectOptions, winners: &BTreeMap<String, String>) -> Result<()> {
    std::fs::create_dir_all(a.out.join("trunks")).map_err(|e| Error::io(&a.out, e))?;
    let mut trunks = std::collections::BTreeSet::new();
    for bundle in winners.values() {
        check_name(bundle).map_err(|r| Error::bundle(&a.candidates, r))?;
        let files = BundleFiles::open(&a.candidates, bundle)?;
        if let Some((t, _)) = &files.trunk {
            trunks.insert(t.id.clone());
        }
        copy_dir(&files.dir, &a.out.join(bundle))?;
    }
    for t in &trunks {
        let dst = a.out.join("trunks").join(t);
        if !dst.exists() {
            copy_dir(&a.candidates.join("trunks").join(t), &dst)?;
        }
    }
    for old in bundle_names(&a.out)? {
        if !winners.values().any(|w| *w == old) {
            std::fs::remove_dir_all(a.out.join(&old)).map_err(|e| Error::io(a.out.join(&old), e))?;
        }
    }
    for e in std::fs::read_dir(a.out.join("trunks")).map_err(|e| Error::io(&a.out, e))?.flatten() {
        if !trunks.contains(&e.file_name().to_string_lossy().to_string()) {
            std::fs::remove_dir_all(e.path()).map_err(|err| Error::io(e.path(), err))?;
        }
    }
    Ok(())
}

/// Set `reg.gate` to the gate and score mode with the best validation accuracy (returned); fitted
/// gates are scored by 5-fold cross-validation on val (fitting and scoring on the same rows would
/// flatter them).
fn choose_gate_on_val(reg: &mut RegistryFile, root: &Path, data: &DataArgs, runtime: &RuntimeConfig) -> Result<f64> {
    let set = ExpertSet::load(&ExecutorPool::default(), runtime, root, reg)?;
    let classes: Vec<String> = set.experts.iter().map(|e| e.class.clone()).collect();
    let (texts, truth) = data.read("val")?.labelled(&classes);
    let mut scorer = Scorer::new(&texts);
    let probs: Vec<Vec<f32>> = set.experts.iter().map(|e| scorer.probabilities(e)).collect::<Result<_>>()?;
    let thr = set.thresholds.clone();
    // Calibrated scores compete only when every expert's card has its Platt map.
    let cards = set.calibrations();
    let cal = cards.clone().unwrap_or_else(|| vec![IDENTITY; probs.len()]);
    let gd = GateData { probs: &probs, thr: &thr, cal: &cal, texts: &texts, truth: &truth };
    let versions = set.versions().into_iter().collect();
    let all_kinds = [GateKind::Uniform, GateKind::Length, GateKind::Stacking];
    let (acc, mut spec, table) = choose_gate(&gd, &classes, versions, &all_kinds, cards.is_some());
    spec.selected_by = Some(json!({"metric": "val accuracy", "chosen_val_accuracy": acc, "table": table}));
    // The label rule and the open-world rule (chosen by `moe fit`) stay: selection chooses the
    // gate's weights and score mode only. A blend rule disables itself if a selected bundle has no
    // class centroid (ExpertSet::new says why).
    spec.label = reg.gate.label;
    spec.open_world = reg.gate.open_world.take();
    reg.gate = spec;
    Ok(acc)
}

/// The gate with the best validation accuracy among `kinds` (each with every score mode; the
/// calibrated mode only when every expert has its Platt map), fitted on all of `d`, with the table
/// of what was scored. Parameter-free gates are scored on the rows; anything fitted (gate weights,
/// the calibrations) by 5-fold cross-validation on them. Ties keep the simpler gate.
pub fn choose_gate(
    d: &GateData,
    classes: &[String],
    versions: BTreeMap<String, String>,
    kinds: &[GateKind],
    calibrated: bool,
) -> (f64, GateSpec, Vec<serde_json::Value>) {
    let mut modes = vec![ScoreMode::Probability, ScoreMode::Margin];
    if calibrated {
        modes.push(ScoreMode::Calibrated);
    }
    let mut table = Vec::new();
    let mut best: Option<(f64, GateKind, ScoreMode, f32)> = None;
    for &kind in kinds {
        for &mode in &modes {
            let l2s: &[f32] = if kind == GateKind::Uniform { &[0.0] } else { &[0.001, 0.01, 0.1, 1.0] };
            for &l2 in l2s {
                let in_sample = kind == GateKind::Uniform && mode != ScoreMode::Calibrated;
                let preds = if in_sample {
                    predictions(&Gate::uniform(mode), d.probs, d.thr, d.texts)
                } else {
                    cv_predictions(kind, mode, l2, d)
                };
                let acc = accuracy(&preds, d.truth);
                let abstain = preds.iter().filter(|p| p.1).count();
                table.push(
                    json!({"gate": format!("{kind:?}").to_lowercase(), "score": format!("{mode:?}").to_lowercase(),
                    "l2": l2, "val_accuracy": acc, "val_abstained": abstain,
                    "evaluation": if in_sample { "val" } else { "5-fold cross-validation on val" }}),
                );
                eprintln!("gate {kind:?}/{mode:?} l2 {l2}: val accuracy {acc:.4}, abstained {abstain}");
                if best.is_none_or(|(b, ..)| acc > b + 1e-9) {
                    best = Some((acc, kind, mode, l2));
                }
            }
        }
    }
    let (acc, kind, mode, l2) = best.expect("at least one gate kind");
    let all: Vec<usize> = (0..d.texts.len()).collect();
    let mut spec = GateSpec { kind, score: mode, ..Default::default() };
    match fit_gate(kind, mode, l2, d, &all) {
        GateWeights::Length(ab) if kind == GateKind::Length => {
            spec.length = Some(LengthGate { params: classes.iter().cloned().zip(ab).collect() });
        }
        GateWeights::Stacking { weights, bias } if kind == GateKind::Stacking => {
            spec.stacking = Some(StackingGate { classes: classes.to_vec(), versions, weights, bias });
        }
        _ => {}
    }
    (acc, spec, table)
}
