//! `moe report`: the numbers of the mixture-vs-global comparison, every score computed by the
//! serving runtime through the service's own expert sets (a global classifier is served as 19
//! column heads, see training/moe_training/candidates.py `write_column_head`). The JSON it writes
//! is drawn into docs/REPORT.md and its figures by `python -m moe_training report`;
//! `scripts/report.sh` runs both.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use clap::Args;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use moe_core::bundle::bundle_names;
use moe_core::bundle::registry::RegistryFile;
use moe_core::config::RuntimeConfig;
use moe_core::data::{DataArgs, MultiRows, read_multi};
use moe_core::gate::{self, Decision, Gate, GateKind, GateSpec, IDENTITY, ScoreMode};
use moe_core::inference::ExecutorPool;
use moe_core::service::ExpertSet;
use moe_core::stats::gating::{GateData, cv_predictions, decisions, fit_gate, predictions};
use moe_core::stats::roc::{at_threshold, auc, eer, multiclass, roc};
use moe_core::{Error, Result};

/// What `moe report` compares and where it writes.
#[derive(Debug, Clone, Args)]
pub struct ReportOptions {
    /// The served model root: its registry is "the served MoE", its bundles families.
    #[arg(long, default_value = "models")]
    pub models: PathBuf,
    /// More model roots (skipped when absent): more MoE systems and algorithm families.
    ///
    /// Their registries are more MoE systems and their bundles more algorithm families (the
    /// candidate pool `scripts/rebuild-models.sh` builds).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "build/models-all,build/candidates,build/fp32,build/minilm-ft19-set,build/kd19-set,build/no-spelling-set,build/accurate-set,build/accurate-no-spelling-set,build/accurate-fp32-set"
    )]
    pub extra_roots: Vec<PathBuf>,
    /// Split the comparison is measured on (gates are fitted on val, so not val).
    #[arg(long, default_value = "test")]
    pub split: String,
    /// Multi-label rows: this split, with every label `|`-separated in --all-labels-col.
    #[arg(long, default_value = "ambiguous")]
    pub ambiguous_split: String,
    /// Column of the multi-label rows holding every label, `|`-separated.
    #[arg(long, default_value = "all_labels")]
    pub all_labels_col: String,
    /// Seed of the robustness perturbations.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Where to write the JSON report.
    #[arg(long, default_value = "docs/report/report.json")]
    pub out: PathBuf,
}

/// One classifier under comparison: a class -> bundle mapping in a model root, and its gate.
struct System {
    name: String,
    /// "moe" (one-vs-all experts, abstain by per-class thresholds) or "global" (one multi-class
    /// model as column heads, reject by maximum probability).
    kind: &'static str,
    root: PathBuf,
    experts: BTreeMap<String, String>,
    gate: GateSpec,
    source: String,
    /// What it computes (see `signature`): two systems with the same one are the same system.
    signature: Vec<(String, String)>,
}

fn card_of(root: &Path, bundle: &str) -> Result<Value> {
    let p = root.join(bundle).join("card.json");
    let text = std::fs::read_to_string(&p).map_err(|e| Error::io(&p, e))?;
    serde_json::from_str(&text).map_err(|e| Error::bundle(root.join(bundle), e.to_string()))
}

/// What a class -> bundle mapping computes: each bundle's graph hash, trunk id and spelling
/// lexicon (the bundle's or its trunk's).
fn signature(root: &Path, experts: &BTreeMap<String, String>) -> Vec<(String, String)> {
    experts
        .values()
        .map(|b| {
            let card = card_of(root, b).unwrap_or(Value::Null);
            let trunk = card["trunk"]["id"].as_str().map(|id| root.join("trunks").join(id).join("trunk.json"));
            let trunk: Value = trunk
                .and_then(|p| std::fs::read_to_string(p).ok())
                .and_then(|t| serde_json::from_str(&t).ok())
                .unwrap_or(Value::Null);
            let lexicon = card["spelling"]["sha256"].as_str().or(trunk["spelling"]["sha256"].as_str());
            let graph = card["graph"]["sha256"].as_str().unwrap_or(b).to_string();
            (graph, format!("{} {}", card["trunk"]["id"], lexicon.unwrap_or("-")))
        })
        .collect()
}

fn discover(a: &ReportOptions) -> Result<Vec<System>> {
    let served = RegistryFile::read(&a.models)?;
    let classes: BTreeSet<String> = served.experts.keys().cloned().collect();
    let mut systems = vec![System {
        name: "moe-served".into(),
        kind: "moe",
        root: a.models.clone(),
        experts: served.experts.clone(),
        gate: served.gate.clone(),
        source: RegistryFile::path(&a.models).display().to_string(),
        signature: signature(&a.models, &served.experts),
    }];
    let mut roots = vec![a.models.clone()];
    for r in &a.extra_roots {
        if r.is_dir() {
            roots.push(r.clone());
        } else {
            eprintln!("report: {} absent, skipped (scripts/rebuild-models.sh builds it)", r.display());
        }
    }
    for r in roots.iter().skip(1).filter(|r| RegistryFile::path(r).is_file()) {
        let reg = RegistryFile::read(r)?;
        if reg.experts.keys().cloned().collect::<BTreeSet<_>>() == classes {
            let name = r.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
            systems.push(System {
                name: format!("moe-{name}"),
                kind: "moe",
                root: r.clone(),
                signature: signature(r, &reg.experts),
                experts: reg.experts,
                gate: reg.gate,
                source: RegistryFile::path(r).display().to_string(),
            });
        }
    }
    // Families: every algorithm with a bundle for each class in one root (first root wins).
    let mut families: Vec<System> = Vec::new();
    for r in &roots {
        let mut by_algo: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
        for name in bundle_names(r)? {
            let card = card_of(r, &name)?;
            let (Some(class), Some(algo)) = (card["class"].as_str(), card["algorithm"].as_str()) else {
                continue;
            };
            if classes.contains(class) {
                by_algo.entry(algo.to_string()).or_default().insert(class.to_string(), name);
            }
        }
        for (algo, experts) in by_algo {
            let complete = experts.len() == classes.len();
            // The same graphs (e.g. the served set's bundles, copied from the candidates) are not
            // a new system; the same bundle names over other graphs (an fp32 build) are.
            let sig = signature(r, &experts);
            let same_set = families.iter().chain(&systems).any(|s| s.signature == sig);
            if complete && !same_set {
                // The same algorithm from another root (e.g. an fp32 build) is named after its root.
                let taken = families.iter().any(|s| s.name == algo);
                let dir = r.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
                families.push(System {
                    kind: if algo.starts_with("global-") { "global" } else { "moe" },
                    name: if taken { format!("{algo}@{dir}") } else { algo },
                    root: r.clone(),
                    experts,
                    gate: GateSpec::default(),
                    source: r.display().to_string(),
                    signature: sig,
                });
            }
        }
    }
    families.sort_by_key(|s| (s.kind == "global", s.name.clone()));
    systems.extend(families);
    Ok(systems)
}

/// Per expert (sorted by class), the probabilities for each text.
fn score(set: &ExpertSet, texts: &[String]) -> Result<Vec<Vec<f32>>> {
    let mut out = vec![Vec::with_capacity(texts.len()); set.experts.len()];
    for chunk in texts.chunks(64) {
        let p = set.probabilities_blocking(chunk)?;
        for (k, v) in p.into_iter().enumerate() {
            out[k].extend(v);
        }
    }
    Ok(out)
}

/// How a system trades coverage for accuracy: each row's confidence, and its answer when
/// answering at confidence cut `delta`.
struct Abstention<'a> {
    conf: Vec<f32>,
    answer: Box<dyn Fn(usize, f32) -> usize + 'a>,
}

/// The MoE abstains when no expert passes its own threshold: shifting every threshold by `delta`
/// in logit space gives the curve (delta = 0 is the calibrated operating point); the answer is the
/// best gate score among the experts that pass. A global model rejects by its top probability.
fn abstention<'a>(kind: &str, probs: &'a [Vec<f32>], thr: &'a [f32], dec: &'a [Decision]) -> Abstention<'a> {
    let n = dec.len();
    let margin = move |i: usize, k: usize| gate::logit(probs[k][i]) - gate::logit(thr[k]);
    if kind == "moe" {
        let conf = (0..n).map(|i| (0..probs.len()).map(|k| margin(i, k)).fold(f32::MIN, f32::max)).collect();
        let answer = move |i: usize, delta: f32| {
            let keep = (0..probs.len()).filter(|&k| margin(i, k) >= delta);
            keep.fold(None, |b: Option<usize>, k| match b {
                Some(b) if dec[i].scores[b] >= dec[i].scores[k] => Some(b),
                _ => Some(k),
            })
            .unwrap_or(dec[i].best_guess)
        };
        Abstention { conf, answer: Box::new(answer) }
    } else {
        let top = move |i: usize| (0..probs.len()).max_by(|&a, &b| probs[a][i].total_cmp(&probs[b][i])).unwrap_or(0);
        let conf = (0..n).map(|i| probs[top(i)][i]).collect();
        Abstention { conf, answer: Box::new(move |i, _| top(i)) }
    }
}

/// Answer the rows whose confidence reaches the cut that keeps `coverage` of them (ties kept).
fn at_coverage(ab: &Abstention, truth: &[usize], coverage: f64) -> Value {
    let n = truth.len();
    let mut sorted = ab.conf.clone();
    sorted.sort_by(|a, b| b.total_cmp(a));
    let m = ((coverage * n as f64).round() as usize).clamp(1, n);
    let cut = sorted[m - 1];
    at_cut(ab, truth, cut)
}

fn at_cut(ab: &Abstention, truth: &[usize], cut: f32) -> Value {
    let answered: Vec<usize> = (0..truth.len()).filter(|&i| ab.conf[i] >= cut).collect();
    let right = answered.iter().filter(|&&i| (ab.answer)(i, cut) == truth[i]).count();
    json!({"cut": cut, "answered": answered.len(), "coverage": answered.len() as f64 / truth.len().max(1) as f64,
           "accuracy": right as f64 / answered.len().max(1) as f64})
}

fn r4(x: f64) -> f64 {
    (x * 1e4).round() / 1e4
}

fn expert_rows(classes: &[String], probs: &[Vec<f32>], thr: &[f32], truth: &[usize], curves: bool) -> Vec<Value> {
    classes
        .iter()
        .enumerate()
        .map(|(k, class)| {
            let labels: Vec<bool> = truth.iter().map(|&t| t == k).collect();
            let r = roc(&probs[k], &labels);
            let e = eer(&r);
            let mut v = json!({"class": class, "auc": auc(&r), "eer": e.eer, "eer_threshold": e.threshold,
                               "threshold": thr[k], "at_threshold": at_threshold(&probs[k], &labels, thr[k] as f64)});
            if curves {
                v["roc"] = json!({"fpr": r.iter().map(|p| r4(p.fpr)).collect::<Vec<_>>(),
                                  "tpr": r.iter().map(|p| r4(p.tpr)).collect::<Vec<_>>()});
            }
            v
        })
        .collect()
}

fn confusion(c: usize, truth: &[usize], pred: &[usize]) -> Vec<Vec<usize>> {
    let mut m = vec![vec![0usize; c]; c];
    for (&t, &p) in truth.iter().zip(pred) {
        m[t][p] += 1;
    }
    m
}

/// Multi-label behaviour on rows listed under several categories: which experts pass.
fn multi_label(classes: &[String], probs: &[Vec<f32>], thr: &[f32], dec: &[Decision], labels: &[Vec<String>]) -> Value {
    let n = labels.len();
    let (mut hist, mut any_true, mut all_true, mut top1, mut exact) = ([0usize; 4], 0, 0, 0, 0);
    let (mut passed_total, mut passed_true, mut true_total) = (0usize, 0usize, 0usize);
    let mut examples = Vec::new();
    for i in 0..n {
        let truth: BTreeSet<usize> = labels[i].iter().filter_map(|l| classes.iter().position(|c| c == l)).collect();
        let passed: BTreeSet<usize> = (0..classes.len()).filter(|&k| probs[k][i] >= thr[k]).collect();
        let hit = passed.intersection(&truth).count();
        hist[passed.len().min(3)] += 1;
        any_true += usize::from(hit > 0);
        all_true += usize::from(!passed.is_empty() && hit == passed.len());
        exact += usize::from(passed == truth);
        top1 += usize::from(truth.contains(&dec[i].best_guess));
        passed_total += passed.len();
        passed_true += hit;
        true_total += truth.len();
        if examples.len() < 8 {
            examples.push(json!({"row": i, "labels": labels[i],
                                 "passed": passed.iter().map(|&k| classes[k].clone()).collect::<Vec<_>>()}));
        }
    }
    let f = |x: usize, d: usize| x as f64 / d.max(1) as f64;
    json!({"rows": n, "passed_histogram": {"0": hist[0], "1": hist[1], "2": hist[2], "3+": hist[3]},
           "mean_passed": f(passed_total, n), "any_true_passed": f(any_true, n), "all_passed_true": f(all_true, n),
           "exact_set": f(exact, n), "top1_in_labels": f(top1, n),
           "label_precision": f(passed_true, passed_total), "label_recall": f(passed_true, true_total),
           "examples": examples})
}

// ---------------------------------------------------------------- robustness perturbations

/// splitmix64: a seeded, portable sequence (the perturbations must be the same on every machine).
pub struct Rng(u64);

impl Rng {
    fn new(seed: u64, row: usize, variant: u64) -> Rng {
        Rng(seed ^ (row as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ variant.wrapping_mul(0xD1B5_4A32_D192_ED03))
    }
    fn next(&mut self) -> u64 {
        moe_core::stats::logreg::splitmix64(&mut self.0)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn chance(&mut self, p: f64) -> bool {
        ((self.next() >> 11) as f64 / (1u64 << 53) as f64) < p
    }
}

const SMALL_WORDS: &[&str] =
    &["a", "an", "the", "and", "or", "of", "in", "on", "at", "to", "for", "from", "with", "by"];
const PRONOUNS: &[&str] = &["i", "you", "we", "they", "he", "she", "it", "who", "that", "there"];
const PREFIXES: &[&str] = &["please tell me", "i want to know", "can you explain", "tell me"];
const SUFFIXES: &[&str] = &["step by step", "with pictures", "a simple guide", "fast and easy", "tips and tricks"];

/// Title case, apostrophes put back ("you re" -> "You're", "don t" -> "Don't"), end punctuation:
/// how a title looks before the data set's lower-casing and punctuation stripping.
pub fn cased(text: &str, rng: &mut Rng) -> String {
    let mut out: Vec<String> = Vec::new();
    for (i, w) in text.split_whitespace().enumerate() {
        if let Some(prev) = out.last_mut() {
            let p = prev.to_lowercase();
            let joins = match w {
                "s" => true,
                "t" => p.ends_with('n'),
                "re" | "ll" | "ve" | "d" | "m" => PRONOUNS.contains(&p.as_str()),
                _ => false,
            };
            if joins {
                prev.push('\'');
                prev.push_str(w);
                continue;
            }
        }
        let mut c = w.chars();
        out.push(match c.next() {
            Some(f) if i == 0 || !SMALL_WORDS.contains(&w) => f.to_uppercase().chain(c).collect(),
            _ => w.to_string(),
        });
    }
    let mut s = out.join(" ");
    s.push(['?', '!', '.'][rng.below(3)]);
    s
}

/// One edit (swap, drop, double, replace a letter) in a quarter of the words of 4+ letters.
pub fn typos(text: &str, rng: &mut Rng) -> String {
    let words: Vec<String> = text
        .split_whitespace()
        .map(|w| {
            let mut c: Vec<char> = w.chars().collect();
            if c.len() < 4 || !rng.chance(0.25) {
                return w.to_string();
            }
            let i = rng.below(c.len() - 1);
            match rng.below(4) {
                0 => c.swap(i, i + 1),
                1 => {
                    c.remove(i);
                }
                2 => c.insert(i, c[i]),
                _ => c[i] = (b'a' + rng.below(26) as u8) as char,
            }
            c.into_iter().collect()
        })
        .collect();
    words.join(" ")
}

/// Words a user adds around the question: a prefix, a suffix, or both.
pub fn extra_words(text: &str, rng: &mut Rng) -> String {
    match rng.below(3) {
        0 => format!("{} {text}", PREFIXES[rng.below(PREFIXES.len())]),
        1 => format!("{text} {}", SUFFIXES[rng.below(SUFFIXES.len())]),
        _ => format!("{} {text} {}", PREFIXES[rng.below(PREFIXES.len())], SUFFIXES[rng.below(SUFFIXES.len())]),
    }
}

fn perturbations(texts: &[String], seed: u64) -> Vec<(&'static str, &'static str, Vec<String>)> {
    let each = |v: u64, f: &dyn Fn(&str, &mut Rng) -> String| -> Vec<String> {
        texts.iter().enumerate().map(|(i, t)| f(t, &mut Rng::new(seed, i, v))).collect()
    };
    vec![
        ("cased", "title case, apostrophes restored, end punctuation", each(1, &cased)),
        ("typos", "one letter edit in a quarter of the words of 4+ letters", each(2, &typos)),
        ("extra-words", "a prefix and/or suffix phrase (\"tell me ...\", \"... step by step\")", each(3, &extra_words)),
        (
            "all",
            "extra words, then typos, then casing",
            each(4, &|t, r| {
                let e = extra_words(t, r);
                let ty = typos(&e, r);
                cased(&ty, r)
            }),
        ),
    ]
}

// ---------------------------------------------------------------- the report

/// The shared trunks a system's experts read (none for full models).
fn trunk_ids(sys: &System) -> BTreeSet<String> {
    let ids = sys.experts.values().filter_map(|b| card_of(&sys.root, b).ok());
    ids.filter_map(|card| card["trunk"]["id"].as_str().map(str::to_string)).collect()
}

fn graph_bytes(sys: &System) -> u64 {
    let size = |p: PathBuf| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    let mut trunks = BTreeSet::new();
    let mut total = 0;
    for bundle in sys.experts.values() {
        let Ok(card) = card_of(&sys.root, bundle) else { continue };
        total += size(sys.root.join(bundle).join(card["graph"]["file"].as_str().unwrap_or("")));
        if let Some(t) = card["trunk"]["id"].as_str() {
            trunks.insert(t.to_string());
        }
    }
    total + trunks.iter().map(|t| size(sys.root.join("trunks").join(t).join("trunk.onnx"))).sum::<u64>()
}

fn rows_of(v: &[Vec<f32>], rows: usize) -> Vec<Vec<f64>> {
    (0..rows).map(|i| v.iter().map(|p| p[i] as f64).collect()).collect()
}

/// Uniform vs length vs stacking gates (probability and margin scores) on the served set: fitted
/// on val with the L2 strength chosen by 5-fold cross-validation on val, measured on the split.
fn gate_table(val: &GateData, test: &GateData, classes: &[String], calibrated: bool) -> Vec<Value> {
    let mut table = Vec::new();
    let mut modes = vec![ScoreMode::Probability, ScoreMode::Margin];
    if calibrated {
        modes.push(ScoreMode::Calibrated);
    }
    for kind in [GateKind::Uniform, GateKind::Length, GateKind::Stacking] {
        for &mode in &modes {
            let (gate, l2) = if kind == GateKind::Uniform {
                (Gate::uniform(mode).calibrated(test.cal.to_vec()), None)
            } else {
                let cv_acc = |l2: f32| {
                    let p = cv_predictions(kind, mode, l2, val);
                    p.iter().zip(val.truth).filter(|(p, t)| p.0 == **t).count()
                };
                let l2 =
                    [0.001f32, 0.01, 0.1, 1.0].into_iter().max_by_key(|&l| (cv_acc(l), -(l * 1e3) as i64)).unwrap();
                let all: Vec<usize> = (0..val.texts.len()).collect();
                let weights = fit_gate(kind, mode, l2, val, &all);
                (Gate { weights, calibration: val.cal.to_vec(), ..Gate::uniform(mode) }, Some(l2))
            };
            let preds = predictions(&gate, test.probs, test.thr, test.texts);
            let forced: Vec<usize> = preds.iter().map(|p| p.0).collect();
            let m = multiclass(classes, test.truth, &forced);
            let answered: Vec<usize> = (0..forced.len()).filter(|&i| !preds[i].1).collect();
            let right = answered.iter().filter(|&&i| forced[i] == test.truth[i]).count();
            table.push(json!({"gate": format!("{kind:?}").to_lowercase(), "score": format!("{mode:?}").to_lowercase(),
                              "l2": l2,
                              "fitted_on": if l2.is_some() || mode == ScoreMode::Calibrated { "val" } else { "nothing (no parameters)" },
                              "accuracy": m.accuracy, "macro_f1": m.macro_f1,
                              "coverage": answered.len() as f64 / forced.len().max(1) as f64,
                              "accuracy_when_answered": right as f64 / answered.len().max(1) as f64,
                              "predictions": forced}));
        }
    }
    table
}

/// What every system is scored on: the split, its perturbed variants, the ambiguous texts, and
/// val (for the gate table of the served set).
struct Inputs {
    classes: Vec<String>,
    texts: Vec<String>,
    truth: Vec<usize>,
    val_texts: Vec<String>,
    val_truth: Vec<usize>,
    perturbed: Vec<(&'static str, &'static str, Vec<String>)>,
    amb: MultiRows,
}

/// `moe report` (blocking): score every system on the split and write the JSON.
pub fn report(a: &ReportOptions, data: &DataArgs, runtime: &RuntimeConfig) -> Result<()> {
    if a.split == "val" || a.split == "train" {
        return Err(Error::BadRequest(format!("--split {}: gates and thresholds are fitted there", a.split)));
    }
    let systems = discover(a)?;
    let classes: Vec<String> = systems[0].experts.keys().cloned().collect();
    let (texts, truth) = data.read(&a.split)?.labelled(&classes);
    let (val_texts, val_truth) = data.read("val")?.labelled(&classes);
    let amb = read_multi(&data.data, &data.text_col, &a.all_labels_col, &data.split_col, &a.ambiguous_split)?;
    let perturbed = perturbations(&texts, a.seed);
    let inputs = Inputs { classes, texts, truth, val_texts, val_truth, perturbed, amb };
    let pool = ExecutorPool::default();
    let mut out_systems = Vec::new();
    let mut gates = Vec::new();
    for sys in &systems {
        let reg = RegistryFile { experts: sys.experts.clone(), gate: sys.gate.clone(), ..RegistryFile::empty() };
        let set = ExpertSet::load(&pool, runtime, &sys.root, &reg)?;
        out_systems.push(score_system(sys, &set, &inputs, &mut gates)?);
    }
    let Inputs { classes, texts, truth, val_texts, perturbed, amb, .. } = inputs;
    let bytes = std::fs::read(&data.data).map_err(|e| Error::io(&data.data, e))?;
    let report = json!({
        "schema": 1, "created": moe_core::clock::now_rfc3339(), "split": a.split, "seed": a.seed,
        "data": {"file": data.data.file_name().map(|f| f.to_string_lossy().to_string()),
                 "sha256": hex::encode(Sha256::digest(&bytes)), "rows": texts.len(), "val_rows": val_texts.len()},
        "classes": classes, "truth": truth,
        "ambiguous": {"split": a.ambiguous_split, "texts": amb.texts, "labels": amb.labels},
        "perturbations": perturbed.iter().map(|(name, what, v)| json!({"name": name, "what": what,
            "examples": (0..v.len().min(4)).map(|i| json!([texts[i], v[i]])).collect::<Vec<_>>()})).collect::<Vec<_>>(),
        "gates": gates, "systems": out_systems,
    });
    if let Some(dir) = a.out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    moe_core::files::write_atomic(&a.out, format!("{}\n", serde_json::to_string(&report).expect("json")).as_bytes())?;
    eprintln!("report: wrote {}", a.out.display());
    Ok(())
}

/// One system's figures on the split (and, for the served MoE, the gate table into `gates`).
fn score_system(sys: &System, set: &ExpertSet, x: &Inputs, gates: &mut Vec<Value>) -> Result<Value> {
    let started = std::time::Instant::now();
    let (classes, texts, truth) = (&x.classes, &x.texts, &x.truth);
    let thr = set.thresholds.clone();
    let algorithms: BTreeSet<String> = set.experts.iter().map(|e| e.card.algorithm.clone()).collect();
    let probs = score(set, texts)?;
    let dec = decisions(&set.gate, &probs, &thr, texts);
    let forced: Vec<usize> = dec.iter().map(|d| d.label.unwrap_or(d.best_guess)).collect();
    let m = multiclass(classes, truth, &forced);
    let ab = abstention(sys.kind, &probs, &thr, &dec);
    let own = at_cut(&ab, truth, if sys.kind == "moe" { 0.0 } else { f32::MIN });
    let curve: Vec<Value> = (0..=35).map(|i| at_coverage(&ab, truth, 1.0 - i as f64 * 0.02)).collect();
    let single = {
        let n: usize = (0..texts.len()).map(|i| (0..classes.len()).filter(|&k| probs[k][i] >= thr[k]).count()).sum();
        n as f64 / texts.len().max(1) as f64
    };
    if sys.name == "moe-served" {
        let vp = score(set, &x.val_texts)?;
        // The cards' calibrations were fitted on val by `moe calibrate`.
        let cards = set.calibrations();
        let cal = cards.clone().unwrap_or_else(|| vec![IDENTITY; classes.len()]);
        let val = GateData { probs: &vp, thr: &thr, cal: &cal, texts: &x.val_texts, truth: &x.val_truth };
        let test = GateData { probs: &probs, thr: &thr, cal: &cal, texts, truth };
        *gates = gate_table(&val, &test, classes, cards.is_some());
    }
    let plotted = sys.name == "moe-served" || sys.kind == "global";
    let figures = json!({
        "name": sys.name, "kind": sys.kind, "source": sys.source, "algorithms": algorithms,
        "gate": {"kind": set.gate.weights.name(), "score": format!("{:?}", set.gate.score).to_lowercase()},
        "bundles": sys.experts, "trunks": trunk_ids(sys), "graph_bytes": graph_bytes(sys),
        "provider": set.experts[0].provider(),
        "spelling": set.experts.iter().any(|e| e.tokenizer.speller.is_some()),
        "accuracy": m.accuracy, "macro_f1": m.macro_f1, "per_class": m.per_class,
        "confusion": confusion(classes.len(), truth, &forced), "predictions": forced,
        "operating_point": own, "coverage_curve": curve,
        "mean_experts_passing": single,
        "experts": expert_rows(classes, &probs, &thr, truth, plotted),
        "robustness": robustness(set, x, &forced)?, "ambiguous": ambiguous(set, x)?,
        "thresholds": thr, "scores": rows_of(&probs, texts.len()),
        "seconds": started.elapsed().as_secs_f64(),
    });
    eprintln!(
        "report: {} ({}): accuracy {:.4}, macro-F1 {:.4} in {:.1}s",
        sys.name,
        sys.kind,
        m.accuracy,
        m.macro_f1,
        started.elapsed().as_secs_f64()
    );
    Ok(figures)
}

/// Accuracy on each perturbed variant of the split, and how many predictions stayed `forced`.
fn robustness(set: &ExpertSet, x: &Inputs, forced: &[usize]) -> Result<Vec<Value>> {
    let thr = &set.thresholds;
    let mut out = Vec::new();
    for (name, _, variant) in &x.perturbed {
        let p = score(set, variant)?;
        let f: Vec<usize> = predictions(&set.gate, &p, thr, variant).iter().map(|p| p.0).collect();
        let pm = multiclass(&x.classes, &x.truth, &f);
        let same = f.iter().zip(forced).filter(|(a, b)| a == b).count() as f64 / f.len().max(1) as f64;
        out.push(json!({"perturbation": name, "accuracy": pm.accuracy, "macro_f1": pm.macro_f1,
                        "unchanged_predictions": same}));
    }
    Ok(out)
}

/// Multi-label figures on the ambiguous texts (null when the data has none).
fn ambiguous(set: &ExpertSet, x: &Inputs) -> Result<Value> {
    if x.amb.texts.is_empty() {
        return Ok(Value::Null);
    }
    let p = score(set, &x.amb.texts)?;
    let d = decisions(&set.gate, &p, &set.thresholds, &x.amb.texts);
    let mut v = multi_label(&x.classes, &p, &set.thresholds, &d, &x.amb.labels);
    v["scores"] = json!(rows_of(&p, x.amb.texts.len()));
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn perturbations_are_seeded_and_do_what_they_say() {
        let t = "how to tell if you re ready and don t panic";
        assert_eq!(
            cased(t, &mut Rng::new(1, 0, 1)).trim_end_matches(['?', '!', '.']),
            "How to Tell If You're Ready and Don't Panic"
        );
        let a = typos(t, &mut Rng::new(7, 3, 2));
        assert_eq!(a, typos(t, &mut Rng::new(7, 3, 2)));
        assert_eq!(a.split_whitespace().count(), t.split_whitespace().count());
        let e = extra_words(t, &mut Rng::new(7, 3, 3));
        assert!(e.contains(t) && e.len() > t.len());
    }

    #[test]
    fn coverage_cuts_keep_the_most_confident_rows() {
        let ab = Abstention { conf: vec![0.9, 0.2, 0.5, 0.7], answer: Box::new(|i, _| [0, 0, 1, 1][i]) };
        let truth = [0, 1, 0, 1];
        let v = at_coverage(&ab, &truth, 0.5);
        assert_eq!(v["answered"], 2);
        assert_eq!(v["accuracy"], 1.0); // rows 0 and 3
        let all = at_coverage(&ab, &truth, 1.0);
        assert_eq!(all["accuracy"], 0.5);
    }
}
