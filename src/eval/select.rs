//! `moe eval`, `moe calibrate`, `moe select`, `moe report`: evaluation on the served artefacts, in
//! the serving runtime, through the service's own loading and inference code.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use clap::Args;
use serde_json::json;

use super::data::{DataArgs, Rows};
use super::fit::fit_softmax;
use super::metrics::{BinaryReport, binary_report};
use crate::config::RuntimeConfig;
use crate::core::{Expert, ExpertSet};
use crate::experts::card::{Threshold, check_name};
use crate::experts::registry::{REGISTRY_SCHEMA, RegistryFile};
use crate::gate::{self, ExpertOutput, Gate, GateKind, GateSpec, GateWeights, LengthGate, ScoreMode, StackingGate};
use crate::inference::ExecutorPool;
use crate::{Error, Result};

#[derive(Debug, Args)]
pub struct EvalArgs {
    /// Model root holding the bundle (and trunks/).
    #[arg(long, default_value = "models")]
    pub models: PathBuf,
    /// Bundle folder name under the model root.
    #[arg(long)]
    pub bundle: String,
    #[arg(long, default_value = "val")]
    pub split: String,
    #[command(flatten)]
    pub data: DataArgs,
    #[command(flatten)]
    pub runtime: RuntimeConfig,
}

#[derive(Debug, Args)]
pub struct CalibrateArgs {
    #[arg(long, default_value = "models")]
    pub models: PathBuf,
    /// Bundles to calibrate (default: every bundle folder in the model root).
    #[arg(long, value_delimiter = ',')]
    pub bundles: Vec<String>,
    /// Thresholds are set on this split; never on test.
    #[arg(long, default_value = "val", value_parser = ["val", "train"])]
    pub split: String,
    #[command(flatten)]
    pub data: DataArgs,
    #[command(flatten)]
    pub runtime: RuntimeConfig,
}

#[derive(Debug, Args)]
pub struct SelectArgs {
    /// Model root holding calibrated candidate bundles.
    #[arg(long)]
    pub candidates: PathBuf,
    /// Model root to write (selected bundles, their trunks, registry.json, selection.json).
    #[arg(long, default_value = "models")]
    pub out: PathBuf,
    #[arg(long, default_value = "eer", value_parser = ["eer", "f1", "accuracy"])]
    pub metric: String,
    /// Only these algorithms compete (default: all found).
    #[arg(long, value_delimiter = ',')]
    pub algorithms: Vec<String>,
    #[command(flatten)]
    pub data: DataArgs,
    #[command(flatten)]
    pub runtime: RuntimeConfig,
}

pub(crate) fn probabilities(expert: &Expert, texts: &[String]) -> Result<Vec<f32>> {
    let mut out = Vec::with_capacity(texts.len());
    for chunk in texts.chunks(64) {
        out.extend(expert.probabilities_blocking(chunk)?);
    }
    Ok(out)
}

/// Probabilities of one expert on a split and its binary report (shared with the selection jobs).
pub(crate) fn evaluate(expert: &Expert, rows: &Rows) -> Result<BinaryReport> {
    let scores = probabilities(expert, &rows.texts)?;
    let labels: Vec<bool> = rows.labels.iter().map(|l| *l == expert.class).collect();
    if !labels.iter().any(|&y| y) || labels.iter().all(|&y| y) {
        return Err(Error::BadRequest(format!("split has no positive or no negative rows for {:?}", expert.class)));
    }
    Ok(binary_report(&scores, &labels))
}

pub fn eval(a: EvalArgs) -> Result<()> {
    let pool = ExecutorPool::default();
    let expert = Expert::load(&pool, &a.runtime, &a.models, &a.bundle, false)?;
    let report = evaluate(&expert, &a.data.read(&a.split)?)?;
    let out = json!({"bundle": a.bundle, "class": expert.class, "split": a.split, "report": report});
    println!("{}", serde_json::to_string_pretty(&out).expect("json"));
    Ok(())
}

/// Bundle folders (holding a card.json) directly under a model root.
pub fn bundle_names(root: &Path) -> Result<Vec<String>> {
    let mut names = Vec::new();
    for e in std::fs::read_dir(root).map_err(|e| Error::io(root, e))?.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        if name != "trunks" && e.path().join("card.json").is_file() {
            names.push(name);
        }
    }
    names.sort();
    Ok(names)
}

pub fn calibrate(a: CalibrateArgs) -> Result<()> {
    let rows = a.data.read(&a.split)?;
    let names = if a.bundles.is_empty() { bundle_names(&a.models)? } else { a.bundles.clone() };
    let pool = ExecutorPool::default();
    for name in names {
        let expert = Expert::load(&pool, &a.runtime, &a.models, &name, false)?;
        let r = evaluate(&expert, &rows)?;
        let mut card = expert.card.clone();
        card.threshold = Some(Threshold {
            value: (r.eer_threshold as f32).clamp(1e-6, 1.0 - 1e-6),
            method: "eer".into(),
            split: a.split.clone(),
        });
        let mut metrics = card.metrics.as_object().cloned().unwrap_or_default();
        metrics.insert(
            a.split.clone(),
            json!({"provider": expert.provider(), "runtime": "onnxruntime (moe)", "report": r}),
        );
        card.metrics = serde_json::Value::Object(metrics);
        card.write(&a.models.join(&name).join("card.json"))?;
        println!(
            "{name}: {} AUC {:.4} EER {:.4} threshold {:.4} F1@EER {:.4} F1@0.5 {:.4}",
            a.split, r.auc, r.eer, r.eer_threshold, r.at_eer.f1, r.at_0_5.f1
        );
    }
    Ok(())
}

fn metric_of(card: &crate::experts::Card, split: &str, metric: &str) -> Option<f64> {
    let r = card.metrics.get(split)?.get("report")?;
    match metric {
        "eer" => r.get("eer")?.as_f64().map(|v| -v),
        "f1" => r.get("at_eer")?.get("f1")?.as_f64(),
        _ => r.get("at_eer")?.get("accuracy")?.as_f64(),
    }
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

/// Predicted index per row (the label, or the best guess when the gate abstains) and whether it
/// abstained.
pub(crate) fn predictions(gate: &Gate, probs: &[Vec<f32>], thresholds: &[f32], texts: &[String]) -> Vec<(usize, bool)> {
    decisions(gate, probs, thresholds, texts)
        .iter()
        .map(|d| (d.label.unwrap_or(d.best_guess), d.label.is_none()))
        .collect()
}

/// The gate's full decision per text (`probs` is expert-major: probs[k][i]).
pub(crate) fn decisions(gate: &Gate, probs: &[Vec<f32>], thresholds: &[f32], texts: &[String]) -> Vec<gate::Decision> {
    texts
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let outs: Vec<ExpertOutput> = probs
                .iter()
                .zip(thresholds)
                .map(|(p, &threshold)| ExpertOutput { probability: p[i], threshold })
                .collect();
            gate::decide(gate, &outs, gate::words(t))
        })
        .collect()
}

fn comparable_score(mode: ScoreMode, p: f32, t: f32) -> f32 {
    match mode {
        ScoreMode::Probability => p,
        ScoreMode::Margin => gate::sigmoid(gate::logit(p) - gate::logit(t)),
    }
}

/// What gates are fitted and scored on: each expert's probabilities on a labelled split (expert-major),
/// the experts' thresholds, the texts and their class indices.
pub(crate) struct GateData<'a> {
    pub probs: &'a [Vec<f32>],
    pub thr: &'a [f32],
    pub texts: &'a [String],
    pub truth: &'a [usize],
}

/// Fit a length or stacking gate on the given rows (offset ln s so the fit targets w·s).
pub(crate) fn fit_gate(kind: GateKind, mode: ScoreMode, l2: f32, d: &GateData, rows: &[usize]) -> GateWeights {
    let GateData { probs, thr, texts, truth } = *d;
    let c = probs.len();
    let offset: Vec<Vec<f32>> = rows
        .iter()
        .map(|&i| (0..c).map(|k| comparable_score(mode, probs[k][i], thr[k]).max(1e-6).ln()).collect())
        .collect();
    let y: Vec<usize> = rows.iter().map(|&i| truth[i]).collect();
    match kind {
        GateKind::Length => {
            let x: Vec<Vec<f32>> = rows.iter().map(|&i| vec![(1.0 + gate::words(&texts[i]) as f32).ln()]).collect();
            let m = fit_softmax(&x, &offset, &y, c, l2, 300);
            GateWeights::Length((0..c).map(|k| [m.bias[k], m.weights[k][0]]).collect())
        }
        _ => {
            let x: Vec<Vec<f32>> = rows.iter().map(|&i| (0..c).map(|k| gate::logit(probs[k][i])).collect()).collect();
            let m = fit_softmax(&x, &offset, &y, c, l2, 300);
            GateWeights::Stacking { weights: m.weights, bias: m.bias }
        }
    }
}

/// Predictions of a fitted gate by 5-fold cross-validation (row i is in fold i % 5).
pub(crate) fn cv_predictions(kind: GateKind, mode: ScoreMode, l2: f32, d: &GateData) -> Vec<(usize, bool)> {
    let texts = d.texts;
    let all: Vec<usize> = (0..texts.len()).collect();
    let mut preds = vec![(0usize, false); texts.len()];
    for fold in 0..5 {
        let train: Vec<usize> = all.iter().copied().filter(|i| i % 5 != fold).collect();
        let weights = fit_gate(kind, mode, l2, d, &train);
        let p = predictions(&Gate { score: mode, weights, disabled: None }, d.probs, d.thr, texts);
        for i in all.iter().copied().filter(|i| i % 5 == fold) {
            preds[i] = p[i];
        }
    }
    preds
}

pub(crate) fn accuracy(preds: &[(usize, bool)], truth: &[usize]) -> f64 {
    preds.iter().zip(truth).filter(|(p, t)| p.0 == **t).count() as f64 / truth.len().max(1) as f64
}

pub fn select(a: SelectArgs) -> Result<()> {
    let names = bundle_names(&a.candidates)?;
    std::fs::create_dir_all(&a.out).map_err(|e| Error::io(&a.out, e))?;
    if a.candidates.canonicalize().ok() == a.out.canonicalize().ok() {
        return Err(Error::BadRequest("--candidates and --out must be different folders".into()));
    }
    let pool = ExecutorPool::default();
    let mut by_class: BTreeMap<String, Vec<(String, crate::experts::Card, u64)>> = BTreeMap::new();
    for name in names {
        let files = crate::experts::BundleFiles::open(&a.candidates, &name)?;
        if !a.algorithms.is_empty() && !a.algorithms.contains(&files.card.algorithm) {
            continue;
        }
        if files.card.threshold.is_none() || metric_of(&files.card, "val", &a.metric).is_none() {
            return Err(Error::bundle(files.dir, "not calibrated on val: run `moe calibrate` first"));
        }
        let cost = std::fs::metadata(&files.graph).map(|m| m.len()).unwrap_or(u64::MAX);
        by_class.entry(files.card.class.clone()).or_default().push((name, files.card, cost));
    }
    if by_class.is_empty() {
        return Err(Error::BadRequest(format!("no candidate bundles in {}", a.candidates.display())));
    }
    let mut evidence = BTreeMap::new();
    let mut winners = BTreeMap::new();
    for (class, cands) in &mut by_class {
        // Best metric first (rounded to 1e-4 so noise does not beat cost), then the cheaper graph.
        cands.sort_by(|x, y| {
            let (mx, my) = (metric_of(&x.1, "val", &a.metric).unwrap(), metric_of(&y.1, "val", &a.metric).unwrap());
            ((my * 1e4).round()).total_cmp(&((mx * 1e4).round())).then(x.2.cmp(&y.2))
        });
        winners.insert(class.clone(), cands[0].0.clone());
        let rows: Vec<_> = cands
            .iter()
            .map(|(n, c, cost)| {
                let r = &c.metrics["val"]["report"];
                json!({"bundle": n, "algorithm": c.algorithm, "eer": r["eer"], "auc": r["auc"],
                       "f1_at_eer": r["at_eer"]["f1"], "accuracy_at_eer": r["at_eer"]["accuracy"],
                       "threshold": c.threshold.as_ref().map(|t| t.value), "graph_bytes": cost})
            })
            .collect();
        evidence.insert(class.clone(), json!({"winner": cands[0].0, "candidates": rows}));
    }
    // Install the winners and the trunks they use; drop bundles and trunks no longer selected.
    std::fs::create_dir_all(a.out.join("trunks")).map_err(|e| Error::io(&a.out, e))?;
    let mut trunks = std::collections::BTreeSet::new();
    for bundle in winners.values() {
        check_name(bundle).map_err(|r| Error::bundle(&a.candidates, r))?;
        let files = crate::experts::BundleFiles::open(&a.candidates, bundle)?;
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
    let mut reg = RegistryFile {
        schema: REGISTRY_SCHEMA,
        experts: winners.clone(),
        gate: GateSpec::default(),
        history: BTreeMap::new(),
    };
    reg.write(&a.out)?;

    // Choose the gate and score mode by validation accuracy; fitted gates are scored by 5-fold
    // cross-validation on val (fitting and scoring on the same rows would flatter them).
    let set = ExpertSet::load(&pool, &a.runtime, &a.out, 0)?;
    let classes: Vec<String> = set.experts.iter().map(|e| e.class.clone()).collect();
    let (texts, truth) = a.data.read("val")?.labelled(&classes);
    let probs: Vec<Vec<f32>> = set.experts.iter().map(|e| probabilities(e, &texts)).collect::<Result<_>>()?;
    let thr: Vec<f32> = set.experts.iter().map(|e| e.threshold.unwrap_or(0.5)).collect();
    let all: Vec<usize> = (0..texts.len()).collect();
    let data = GateData { probs: &probs, thr: &thr, texts: &texts, truth: &truth };
    let mut table = Vec::new();
    let mut best: Option<(f64, GateKind, ScoreMode, f32)> = None;
    for kind in [GateKind::Uniform, GateKind::Length, GateKind::Stacking] {
        for mode in [ScoreMode::Probability, ScoreMode::Margin] {
            let l2s: &[f32] = if kind == GateKind::Uniform { &[0.0] } else { &[0.001, 0.01, 0.1, 1.0] };
            for &l2 in l2s {
                let preds = if kind == GateKind::Uniform {
                    predictions(&Gate::uniform(mode), &probs, &thr, &texts)
                } else {
                    cv_predictions(kind, mode, l2, &data)
                };
                let acc = accuracy(&preds, &truth);
                let abstain = preds.iter().filter(|p| p.1).count();
                table.push(json!({"gate": format!("{kind:?}").to_lowercase(), "score": format!("{mode:?}").to_lowercase(),
                                  "l2": l2, "val_accuracy": acc, "val_abstained": abstain,
                                  "evaluation": if kind == GateKind::Uniform { "val" } else { "5-fold cross-validation on val" }}));
                println!("gate {kind:?}/{mode:?} l2 {l2}: val accuracy {acc:.4}, abstained {abstain}");
                // Ties keep the simpler gate (evaluated first).
                if best.is_none_or(|(b, ..)| acc > b + 1e-9) {
                    best = Some((acc, kind, mode, l2));
                }
            }
        }
    }
    let (acc, kind, mode, l2) = best.expect("evaluated");
    let mut spec = GateSpec { kind, score: mode, ..Default::default() };
    match fit_gate(kind, mode, l2, &data, &all) {
        GateWeights::Length(ab) if kind == GateKind::Length => {
            spec.length = Some(LengthGate { params: classes.iter().cloned().zip(ab).collect() });
        }
        GateWeights::Stacking { weights, bias } if kind == GateKind::Stacking => {
            spec.stacking = Some(StackingGate {
                classes: classes.clone(),
                versions: set.experts.iter().map(|e| (e.class.clone(), e.card.version.clone())).collect(),
                weights,
                bias,
            });
        }
        _ => {}
    }
    spec.selected_by = Some(json!({"metric": "val accuracy", "chosen_val_accuracy": acc, "table": table}));
    reg.gate = spec;
    reg.write(&a.out)?;
    let selection = json!({"metric": a.metric, "classes": evidence, "gate": reg.gate.selected_by});
    crate::experts::card::write_atomic(
        &a.out.join("selection.json"),
        format!("{}\n", serde_json::to_string_pretty(&selection).expect("json")).as_bytes(),
    )?;
    println!(
        "selected {} experts into {}; gate {kind:?}/{mode:?} (val accuracy {acc:.4})",
        winners.len(),
        a.out.display()
    );
    Ok(())
}
