//! `moe fit`: a labelled CSV becomes a served, calibrated expert set, in Rust, with no Python.
//!
//! One frozen trunk embeds every distinct text once (the serving executor, so the embeddings are
//! the ones the service will compute; kept between runs in `embed_cache`); one one-vs-all logistic
//! head per class is fitted on train, all classes together (`stats::ovr`: the online trainer's
//! objective on standardized features, folded back into heads on the raw embedding), at each C of
//! a small grid, the set's C chosen by val best-guess accuracy; each head's threshold is its val
//! EER and its Platt map is fitted on val; the gate is chosen on val; test is only reported. The
//! model root is written into a temporary folder beside `--out`, loaded and self-tested like any
//! served set, and renamed into place: an interrupted run leaves no root.
//!
//! Invariants: every refusal (bad file, columns, labels, classes, trunk) happens before anything is
//! written; nothing is chosen on test.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use serde_json::{Value, json};

use crate::embed_cache::EmbeddingCache;
use crate::open_world::{self, ScoreChoice, TradeOff};
use crate::select::choose_gate;
use moe_core::bundle::card::{
    CARD_SCHEMA, Card, FileRef, Kind, SelfTest, Threshold, TrunkCard, TrunkRef, check_class, check_name, slug,
};
use moe_core::bundle::quality::SplitMetrics;
use moe_core::bundle::registry::RegistryFile;
use moe_core::clock::now_rfc3339;
use moe_core::config::RuntimeConfig;
use moe_core::evaluation::{Scorer, platt_calibration, trunk_outputs};
use moe_core::expert::positive_probabilities;
use moe_core::files::{sha256_file, write_atomic};
use moe_core::gate::{GateKind, GateSpec, IDENTITY, sigmoid};
use moe_core::inference::executor::Expect;
use moe_core::inference::{Executor, ExecutorPool, LinearHead, Matrix, TokenizerHandle};
use moe_core::service::ExpertSet;
use moe_core::stats::gating::GateData;
use moe_core::stats::logreg::{shuffle, splitmix64};
use moe_core::stats::ovr::{Fitted, Options, Standardizer, fit_one_vs_rest};
use moe_core::stats::roc::{binary_report, multiclass};
use moe_core::{Error, Result};

/// Fewest train rows a class needs (5-fold cross-validation needs 5 positives).
pub const MIN_TRAIN_ROWS: usize = 5;
/// Above this many classes the gate search skips the fitted gates (length, stacking), whose fit
/// grows with classes² × rows; the uniform gate's score modes are still compared.
pub const FITTED_GATES_UP_TO: usize = 40;
/// The C values (scikit-learn's, on standardized features) the heads are fitted at.
pub const FIT_C_GRID: [f64; 5] = [0.01, 0.03, 0.1, 0.3, 1.0];
const SPLITS: [&str; 3] = ["train", "val", "test"];

/// What `moe fit` reads and writes.
#[derive(Debug, Clone, clap::Args)]
pub struct FitOptions {
    /// Labelled CSV with a header row (UTF-8).
    #[arg(long)]
    pub data: PathBuf,
    /// Model root to write; must not exist yet (or be an empty folder).
    #[arg(long)]
    pub out: PathBuf,
    /// Column holding the texts.
    #[arg(long, default_value = "text")]
    pub text_col: String,
    /// Column holding each text's class.
    #[arg(long, default_value = "label")]
    pub label_col: String,
    /// Column holding each row's split (train / val / test).
    ///
    /// When the file has no such column, a stratified 80/10/10 split is made with --seed and
    /// written to <out>/splits.csv (reuse it with --data <out>/splits.csv).
    #[arg(long, default_value = "split")]
    pub split_col: String,
    /// Seed of the stratified split (files without a split column).
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// The frozen trunk: an id under <models>/trunks, or a folder with trunk.json.
    #[arg(long, default_value = "minilm-l6-int8-afcff58dcf96")]
    pub trunk: String,
    /// Model root whose trunks/ holds the trunk ids.
    #[arg(long, default_value = "models")]
    pub models: PathBuf,
    /// Drop classes with fewer train rows than this (at least 5) instead of refusing.
    #[arg(long)]
    pub min_rows: Option<usize>,
    /// Leave out texts labelled two ways instead of refusing the file.
    #[arg(long)]
    pub drop_conflicts: bool,
    /// Rows with this label are out of scope: not a class, a negative for every head.
    ///
    /// Their val rows set the open-world rule (--max-in-scope-abstain or --min-oos-recall); test
    /// rows are reported.
    #[arg(long)]
    pub oos_label: Option<String>,
    /// Folder of embeddings kept between runs.
    ///
    /// Default: $XDG_CACHE_HOME/moe, else ~/.cache/moe.
    #[arg(long, env = "MOE_CACHE")]
    pub cache: Option<PathBuf>,
    /// Embed every text again and keep nothing between runs.
    #[arg(long)]
    pub no_cache: bool,
    /// Share of in-scope val texts the set may decline (open-world cut-off; 0: none).
    ///
    /// The label rule, the in-scope score and its cut-off are chosen on val within this budget:
    /// the best val accuracy, a declined --oos-label row counting as right.
    #[arg(long, default_value_t = 0.03, value_parser = budget)]
    pub max_in_scope_abstain: f64,
    /// Share of out-of-scope texts the set must decline, instead of an in-scope budget.
    ///
    /// Needs --oos-label rows in val. The cut-off is chosen so that the one-sided 95 % lower bound
    /// of the val out-of-scope recall reaches this share, declining as few in-scope val texts as
    /// that allows (the label rule and score with the best in-scope val accuracy).
    #[arg(long, value_parser = recall_share, conflicts_with = "max_in_scope_abstain", requires = "oos_label")]
    pub min_oos_recall: Option<f64>,
    /// In-scope score of the open-world rule (auto: top probability or blend, on val).
    ///
    /// softmax (the top share of a softmax over the experts' logits) ranks right best guesses above
    /// wrong ones best, so the answers kept at a given coverage are the most accurate; the top
    /// probability and the blend catch unseen classes and out-of-scope texts better
    /// (docs/TRAINING.md, "Coverage").
    #[arg(long, value_enum, default_value_t = ScoreChoice::Auto)]
    pub in_scope_score: ScoreChoice,
    /// Keep at most N rows per class and split (a seeded uniform sample; at least 5).
    ///
    /// The file is read once, row by row, whatever its size; memory then grows with classes, not
    /// rows. Default: every row.
    #[arg(long, value_parser = at_least_min_rows)]
    pub max_rows_per_class: Option<usize>,
}

fn at_least_min_rows(v: &str) -> std::result::Result<usize, String> {
    match v.parse::<usize>() {
        Ok(n) if n >= MIN_TRAIN_ROWS => Ok(n),
        _ => Err(format!("{v:?}: a whole number of rows, at least {MIN_TRAIN_ROWS}")),
    }
}

fn budget(v: &str) -> std::result::Result<f64, String> {
    match v.parse::<f64>() {
        Ok(x) if (0.0..1.0).contains(&x) => Ok(x),
        _ => Err(format!("{v:?}: a share from 0 up to (not including) 1, e.g. 0.03")),
    }
}

fn recall_share(v: &str) -> std::result::Result<f64, String> {
    match v.parse::<f64>() {
        Ok(x) if x > 0.0 && x < 1.0 => Ok(x),
        _ => Err(format!("{v:?}: a share between 0 and 1 (both excluded), e.g. 0.8")),
    }
}

impl FitOptions {
    /// Where embeddings are kept between runs, if anywhere.
    fn cache_dir(&self) -> Option<PathBuf> {
        if self.no_cache {
            return None;
        }
        let env = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from);
        self.cache
            .clone()
            .or_else(|| env("XDG_CACHE_HOME").map(|d| d.join("moe")))
            .or_else(|| env("HOME").map(|d| d.join(".cache").join("moe")))
    }

    /// The operator's open-world trade-off: a recall to reach, else the in-scope budget.
    pub fn trade_off(&self) -> TradeOff {
        self.min_oos_recall
            .map_or(TradeOff::MaxInScopeAbstain(self.max_in_scope_abstain), TradeOff::MinOutOfScopeRecall)
    }
}

/// One labelled row: text, label, split.
struct Row {
    text: String,
    label: String,
    split: &'static str,
}

/// What was read from the CSV.
struct Labelled {
    rows: Vec<Row>,
    split_source: String,
    /// Rows without a label or in another split, left out.
    ignored: usize,
    /// Rows read but not kept (`--max-rows-per-class`).
    capped: usize,
    /// Out-of-scope rows (`--oos-label`): negatives for every head (train), the open-world rule's
    /// operating point (val), reported (test).
    oos: Vec<Row>,
}

/// Fit, check, write; returns the summary printed at the end.
pub fn fit_set(o: &FitOptions, runtime: &RuntimeConfig) -> Result<Value> {
    let started = Instant::now();
    let mut stages = serde_json::Map::new();
    let mut stage = |name: &str, t: Instant| {
        stages.insert(name.to_string(), json!((t.elapsed().as_secs_f64() * 100.0).round() / 100.0));
    };
    check_out_is_free(&o.out)?;
    let t = Instant::now();
    let data = read_labelled(o)?;
    check_oos_val(o, &data)?;
    let (classes, dropped) = classes_of(&data.rows, o.min_rows)?;
    let (trunk_dir, tcard) = resolve_trunk(o)?;
    stage("read", t);
    progress(&format!(
        "{} rows ({}), {} classes, trunk {}",
        data.rows.len(),
        data.split_source,
        classes.len(),
        tcard.id
    ));

    let t = Instant::now();
    let pool = ExecutorPool::default();
    let (exec, tok) = load_trunk(&pool, runtime, &trunk_dir, &tcard)?;
    let kept: Vec<&Row> = data.rows.iter().filter(|r| classes.binary_search(&r.label).is_ok()).collect();
    let (distinct, index) = distinct_texts(&kept.iter().copied().chain(&data.oos).collect::<Vec<_>>());
    let (emb, from_cache) = embed_cached(o, &exec, &tok, &tcard, &distinct)?;
    stage("embed", t);

    let t = Instant::now();
    let split_rows = |s: &str| {
        let (m, texts, rows) = embedded(kept.iter().copied(), s, &emb, &index);
        (m, rows.iter().map(|r| classes.binary_search(&r.label).expect("kept")).collect::<Vec<_>>(), texts)
    };
    let oos_rows = |s: &str| {
        let (m, texts, _) = embedded(data.oos.iter(), s, &emb, &index);
        (Arc::new(m), texts)
    };
    let (train, train_truth, train_texts) = split_rows("train");
    let (val, val_truth, _) = split_rows("val");
    let (test, _, _) = split_rows("test");
    // Out-of-scope train rows are negatives for every head: class index `classes.len()`.
    let (oos_train, _) = oos_rows("train");
    let Heads { heads: fitted, c, grid } =
        fit_with_centroids(classes.len(), (&train, &train_truth), &oos_train, (&val, &val_truth));
    stage("fit", t);

    let t = Instant::now();
    let seen = Seen { val: Arc::new(val), test: Arc::new(test), oos_val: oos_rows("val"), oos_test: oos_rows("test") };
    let fit = FittedSet {
        data: &data,
        classes: &classes,
        dropped: &dropped,
        heads: &fitted,
        train: (&train, &train_texts, &train_truth),
        val_truth: &val_truth,
        seen: &seen,
        trunk: (&trunk_dir, &tcard, exec.provider),
    };
    let tmp = temp_root(&o.out)?;
    let (bundles, mut report) = write_set(o, runtime, &tmp, &fit).inspect_err(|_| {
        let _ = std::fs::remove_dir_all(&tmp);
    })?;
    report["heads"] = json!({"C": c, "C_chosen_by": "the set's val best-guess accuracy", "grid": grid,
        "objective": "one-vs-rest L2 logistic regression, balanced weights, standardized features, every train row"});
    stage("calibrate, gate, check", t);
    stages.insert("total".into(), json!((started.elapsed().as_secs_f64() * 100.0).round() / 100.0));
    report["seconds"] = Value::Object(stages);
    move_into_place(&tmp, &o.out, &report)?;
    Ok(summary(o, &report, (bundles.len(), classes.len()), &dropped, (distinct.len(), from_cache)))
}

/// `--min-oos-recall` is a rule on out-of-scope val rows: refused when there are none.
fn check_oos_val(o: &FitOptions, data: &Labelled) -> Result<()> {
    if o.min_oos_recall.is_some() && !data.oos.iter().any(|r| r.split == "val") {
        return Err(Error::BadRequest(format!(
            "{}: --min-oos-recall needs out-of-scope val rows (--oos-label {:?}), and there are none",
            o.data.display(),
            o.oos_label.as_deref().unwrap_or_default()
        )));
    }
    Ok(())
}

/// What the fit produced, for writing: the data and its classes, the heads, the embedded splits
/// and the trunk (its folder, card and the provider that ran it).
struct FittedSet<'a> {
    data: &'a Labelled,
    classes: &'a [String],
    dropped: &'a [Value],
    heads: &'a [Head],
    train: (&'a Matrix, &'a [String], &'a [usize]),
    val_truth: &'a [usize],
    seen: &'a Seen,
    trunk: (&'a Path, &'a TrunkCard, &'a str),
}

/// Write the bundles, the trunk, the splits and the registry into `tmp`, then choose the gate on
/// the written set; returns the bundle names and the report.
fn write_set(o: &FitOptions, runtime: &RuntimeConfig, tmp: &Path, f: &FittedSet) -> Result<(Vec<String>, Value)> {
    let (trunk_dir, tcard, provider) = f.trunk;
    let bundles = write_bundles(tmp, o, f.classes, f.heads, &f.seen.val, f.val_truth, f.train, tcard, provider)?;
    copy_trunk(trunk_dir, &tmp.join("trunks").join(&tcard.id))?;
    if f.data.split_source.starts_with("stratified") {
        write_splits(&tmp.join("splits.csv"), &f.data.rows)?;
    }
    let reg = RegistryFile {
        experts: f.classes.iter().cloned().zip(bundles.iter().cloned()).collect(),
        ..RegistryFile::empty()
    };
    reg.write(tmp)?;
    let report = choose_gate_and_report(o, runtime, tmp, reg, f.data, f.classes, f.dropped, f.seen)?;
    Ok((bundles, report))
}

/// The rows of one split: their embeddings (rows of `emb` by `index`), texts, and the rows.
fn embedded<'a>(
    rows: impl Iterator<Item = &'a Row>,
    split: &str,
    emb: &Matrix,
    index: &HashMap<&str, usize>,
) -> (Matrix, Vec<String>, Vec<&'a Row>) {
    let rows: Vec<&Row> = rows.filter(|r| r.split == split).collect();
    let data = rows.iter().flat_map(|r| emb.row(index[r.text.as_str()]).to_vec()).collect();
    (Matrix { rows: rows.len(), cols: emb.cols, data }, rows.iter().map(|r| r.text.clone()).collect(), rows)
}

/// The heads fitted on train (out-of-scope train rows a negative for every head), each with its
/// class centroid.
fn fit_with_centroids(
    classes: usize,
    (train, truth): (&Matrix, &[usize]),
    oos_train: &Matrix,
    (val, val_truth): (&Matrix, &[usize]),
) -> Heads {
    let with_oos = Matrix {
        rows: train.rows + oos_train.rows,
        cols: train.cols,
        data: [train.data.as_slice(), &oos_train.data].concat(),
    };
    let truth_oos: Vec<usize> = truth.iter().copied().chain(std::iter::repeat_n(classes, oos_train.rows)).collect();
    let mut heads = fit_heads(classes, &with_oos, &truth_oos, val, val_truth);
    for (k, h) in heads.heads.iter_mut().enumerate() {
        h.head.centroid = Some(centroid(train, truth, k));
    }
    heads
}

/// What `moe fit` prints at the end: where the set is, how good, and the command that serves it.
fn summary(
    o: &FitOptions,
    report: &Value,
    (bundles, classes): (usize, usize),
    dropped: &[Value],
    (distinct, from_cache): (usize, usize),
) -> Value {
    json!({
        "out": o.out, "bundles": bundles, "classes": classes,
        "dropped_classes": dropped, "gate": report["gate"], "val": headline(&report["val"]),
        "test": headline(&report["test"]), "texts": {"distinct": distinct, "from_cache": from_cache},
        "seconds": report["seconds"], "report": o.out.join("fit-report.json"),
        "serve": format!("moe serve --models {} --state {}-state", o.out.display(), o.out.display()),
    })
}

/// `--out` must not exist or be an empty folder: a fit never mixes with other files.
fn check_out_is_free(out: &Path) -> Result<()> {
    if out.exists() && !std::fs::read_dir(out).is_ok_and(|mut d| d.next().is_none()) {
        return Err(Error::BadRequest(format!("--out {}: exists and is not empty", out.display())));
    }
    Ok(())
}

/// Write the report into the finished root `tmp` and rename it to `out` (an empty `out` goes first).
fn move_into_place(tmp: &Path, out: &Path, report: &Value) -> Result<()> {
    let text = format!("{}\n", serde_json::to_string_pretty(report).expect("json"));
    write_atomic(&tmp.join("fit-report.json"), text.as_bytes())?;
    if out.exists() {
        std::fs::remove_dir(out).map_err(|e| Error::io(out, e))?;
    }
    std::fs::rename(tmp, out).map_err(|e| Error::io(out, e))
}

/// A split's accuracy figures, without the per-class tables.
fn headline(split: &Value) -> Value {
    let keys =
        ["rows", "accuracy_best_guess", "macro_f1_best_guess", "accuracy_with_abstention", "abstained", "open_world"];
    if split.is_null() { Value::Null } else { keys.iter().map(|k| (k.to_string(), split[*k].clone())).collect() }
}

fn progress(msg: &str) {
    eprintln!("moe fit: {msg}");
}

/// Read and check the CSV: columns, UTF-8, blank texts, one label per text, the split column (or a
/// stratified split when the file has none). Streams: with `--max-rows-per-class` each class keeps
/// a seeded uniform sample of its rows per split (a reservoir), so memory grows with classes, not
/// rows; the one-label-per-text check keeps a 64-bit hash per distinct text, not the text.
fn read_labelled(o: &FitOptions) -> Result<Labelled> {
    let bad = |r: String| Error::BadRequest(format!("{}: {r}", o.data.display()));
    let mut rdr = csv::Reader::from_path(&o.data).map_err(|e| bad(e.to_string()))?;
    let header = rdr.headers().map_err(|e| bad(e.to_string()))?.clone();
    let names = header.iter().collect::<Vec<_>>().join(", ");
    let col = |name: &str| {
        header.iter().position(|h| h == name).ok_or_else(|| bad(format!("no column {name:?} (columns: {names})")))
    };
    let (t, l) = (col(&o.text_col)?, col(&o.label_col)?);
    let s = header.iter().position(|h| h == o.split_col);
    let mut kept = Reservoirs::new(o.max_rows_per_class, o.seed);
    let mut ignored = 0;
    let mut one_label = OneLabel { drop: o.drop_conflicts, ..OneLabel::default() };
    for (n, rec) in (0u64..).zip(rdr.records()) {
        let rec = rec.map_err(|e| match e.kind() {
            csv::ErrorKind::Utf8 { pos, err } => bad(format!(
                "line {}: not UTF-8 text ({err}); save the file as UTF-8",
                pos.as_ref().map_or(0, |p| p.line())
            )),
            _ => bad(e.to_string()),
        })?;
        let line = rec.position().map_or(0, |p| p.line());
        let (text, label) = (rec.get(t).unwrap_or("").trim(), rec.get(l).unwrap_or("").trim());
        let split = match s.map(|s| rec.get(s).unwrap_or("").trim()) {
            Some(v) => match SPLITS.iter().find(|x| **x == v) {
                Some(x) => Some(*x),
                None => {
                    ignored += 1;
                    continue;
                }
            },
            None => None,
        };
        if label.is_empty() {
            ignored += 1;
            continue;
        }
        if !text.chars().any(|c| !c.is_whitespace() && !c.is_control()) {
            return Err(bad(format!("line {line}: the text is blank (label {label:?})")));
        }
        let id = one_label.check(text, label, line).map_err(bad)?;
        let oos = o.oos_label.as_deref() == Some(label);
        kept.offer(oos, id, split.unwrap_or("train"), n, || Row {
            text: text.to_string(),
            label: label.to_string(),
            split: split.unwrap_or("train"),
        });
    }
    let (mut rows, mut oos, capped) = kept.into_rows();
    let conflicts = one_label.conflicts;
    if !conflicts.is_empty() {
        let before = rows.len();
        rows.retain(|r| !conflicts.contains(&text_key(&r.text)));
        oos.retain(|r: &Row| !conflicts.contains(&text_key(&r.text)));
        progress(&format!("left out {} rows of {} texts labelled two ways", before - rows.len(), conflicts.len()));
        ignored += before - rows.len();
    }
    if capped > 0 {
        progress(&format!(
            "kept a seeded sample of at most {} rows per class and split; {capped} rows read and not kept",
            o.max_rows_per_class.unwrap_or(0)
        ));
    }
    if rows.is_empty() {
        return Err(bad("no labelled rows".into()));
    }
    let split_source = if s.is_some() {
        format!("column:{}", o.split_col)
    } else {
        stratify(&mut rows, o.seed);
        stratify(&mut oos, o.seed);
        format!("stratified-80-10-10-seed-{}", o.seed)
    };
    Ok(Labelled { rows, split_source, ignored, capped, oos })
}

/// One label per text: each distinct text's first label and line, by the text's 64-bit key.
#[derive(Default)]
struct OneLabel {
    drop: bool,
    labels: Vec<String>,
    ids: HashMap<String, u32>,
    first: HashMap<u64, (u32, u64)>,
    /// Texts seen under two labels (with --drop-conflicts; else the first one is refused).
    conflicts: HashSet<u64>,
}

impl OneLabel {
    /// The label's id, after checking the text was not seen under another label.
    fn check(&mut self, text: &str, label: &str, line: u64) -> std::result::Result<u32, String> {
        let id = match self.ids.get(label) {
            Some(&id) => id,
            None => {
                let id = u32::try_from(self.labels.len()).map_err(|_| "more than 4 billion labels".to_string())?;
                self.labels.push(label.to_string());
                self.ids.insert(label.to_string(), id);
                id
            }
        };
        let key = text_key(text);
        match self.first.get(&key) {
            Some(&(other, at)) if other != id => {
                if !self.drop {
                    return Err(format!(
                        "line {line}: the text {text:?} is labelled {label:?} here and {:?} on line {at}; one text, \
                         one label (or leave such texts out with --drop-conflicts)",
                        self.labels[other as usize]
                    ));
                }
                self.conflicts.insert(key);
            }
            Some(_) => {}
            None => {
                self.first.insert(key, (id, line));
            }
        }
        Ok(id)
    }
}

/// A text's key for the one-label-per-text check (SipHash with fixed keys; only compared within
/// one run).
fn text_key(text: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::hash::DefaultHasher::new();
    text.hash(&mut h);
    h.finish()
}

/// (out of scope?, label id, split).
type BinKey = (bool, u32, &'static str);
/// (rows seen, kept rows with their record number).
type Bin = (u64, Vec<(u64, Row)>);

/// The rows kept while reading: all of them, or per (out of scope?, label, split) a uniform
/// sample of at most `cap` (reservoir sampling, seeded: the same file and seed keep the same rows).
/// Either way they come out in file order.
struct Reservoirs {
    cap: Option<usize>,
    seed: u64,
    bins: HashMap<BinKey, Bin>,
    capped: usize,
}

impl Reservoirs {
    fn new(cap: Option<usize>, seed: u64) -> Reservoirs {
        Reservoirs { cap, seed, bins: HashMap::new(), capped: 0 }
    }

    /// Offer the `n`-th record's row; `row` is built only when it is kept.
    fn offer(&mut self, oos: bool, label: u32, split: &'static str, n: u64, row: impl FnOnce() -> Row) {
        let (seen, bin) = self.bins.entry((oos, label, split)).or_default();
        *seen += 1;
        match self.cap {
            Some(cap) if bin.len() >= cap => {
                self.capped += 1;
                let j = (splitmix64(&mut (self.seed ^ (u64::from(label) << 32) ^ *seen)) % *seen) as usize;
                if j < cap {
                    bin[j] = (n, row());
                }
            }
            _ => bin.push((n, row())),
        }
    }

    /// In-scope rows and out-of-scope rows, in file order, and how many rows were not kept.
    fn into_rows(self) -> (Vec<Row>, Vec<Row>, usize) {
        let mut all: Vec<(u64, bool, Row)> = self
            .bins
            .into_iter()
            .flat_map(|((oos, _, _), (_, bin))| bin.into_iter().map(move |(l, r)| (l, oos, r)))
            .collect();
        all.sort_by_key(|(n, _, _)| *n);
        let (oos, rows): (Vec<_>, Vec<_>) = all.into_iter().partition(|(_, oos, _)| *oos);
        (rows.into_iter().map(|x| x.2).collect(), oos.into_iter().map(|x| x.2).collect(), self.capped)
    }
}

/// A seeded stratified 80/10/10 split: per class, at least one val and one test row once it has 3.
fn stratify(rows: &mut [Row], seed: u64) {
    let mut by_class: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for (i, r) in rows.iter().enumerate() {
        by_class.entry(r.label.clone()).or_default().push(i);
    }
    for idx in by_class.values_mut() {
        shuffle(idx, seed);
        let n = idx.len();
        let held = if n >= 3 { ((n as f64 * 0.1).round() as usize).max(1) } else { 0 };
        for (k, &i) in idx.iter().enumerate() {
            rows[i].split = if k < held {
                "val"
            } else if k < 2 * held {
                "test"
            } else {
                "train"
            };
        }
    }
}

/// The classes (sorted) and the ones dropped for too few rows (only with `--min-rows`).
fn classes_of(rows: &[Row], min_rows: Option<usize>) -> Result<(Vec<String>, Vec<Value>)> {
    let mut count: BTreeMap<&str, [usize; 3]> = BTreeMap::new();
    for r in rows {
        let k = SPLITS.iter().position(|s| *s == r.split).expect("known split");
        count.entry(r.label.as_str()).or_default()[k] += 1;
    }
    let need = min_rows.unwrap_or(MIN_TRAIN_ROWS).max(MIN_TRAIN_ROWS);
    let (mut classes, mut short) = (Vec::new(), Vec::new());
    for (class, [train, val, _]) in &count {
        check_class(class).map_err(|e| Error::BadRequest(format!("label {class:?} cannot be a class: {e}")))?;
        if *train < need || *val == 0 {
            short.push(json!({"class": class, "train_rows": train, "val_rows": val}));
        } else {
            classes.push(class.to_string());
        }
    }
    if !short.is_empty() && min_rows.is_none() {
        return Err(Error::BadRequest(format!(
            "{} classes have fewer than {need} train rows or no val row: {}; add rows, or drop them with --min-rows",
            short.len(),
            serde_json::to_string(&short).expect("json")
        )));
    }
    for s in &short {
        progress(&format!("dropping class {} (too few rows: {s})", s["class"]));
    }
    if classes.len() < 2 {
        return Err(Error::BadRequest(format!("need at least two classes with enough rows, found {}", classes.len())));
    }
    let mut slugs: HashMap<String, &str> = HashMap::new();
    for c in &classes {
        let name = format!("{}--fit-logreg", slug(c));
        check_name(&name).map_err(|e| Error::BadRequest(format!("class {c:?} cannot name a bundle: {e}")))?;
        if slug(c).is_empty() {
            return Err(Error::BadRequest(format!("class {c:?} has no letter or digit to name its bundle")));
        }
        if let Some(other) = slugs.insert(slug(c), c) {
            return Err(Error::BadRequest(format!("classes {other:?} and {c:?} would share the bundle name {name:?}")));
        }
    }
    Ok((classes, short))
}

/// The trunk folder and card named by `--trunk` (an id under <models>/trunks, or a folder).
fn resolve_trunk(o: &FitOptions) -> Result<(PathBuf, TrunkCard)> {
    let as_dir = PathBuf::from(&o.trunk);
    let dir = if as_dir.join("trunk.json").is_file() {
        as_dir
    } else {
        let under = o.models.join("trunks");
        let known = || {
            std::fs::read_dir(&under)
                .map(|d| {
                    d.flatten().map(|e| e.file_name().to_string_lossy().to_string()).collect::<Vec<_>>().join(", ")
                })
                .unwrap_or_default()
        };
        if check_name(&o.trunk).is_err() || !under.join(&o.trunk).join("trunk.json").is_file() {
            return Err(Error::BadRequest(format!(
                "unknown trunk {:?}: neither a folder with trunk.json nor an id under {} (ids: {})",
                o.trunk,
                under.display(),
                known()
            )));
        }
        under.join(&o.trunk)
    };
    let path = dir.join("trunk.json");
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    let card: TrunkCard = serde_json::from_str(&text).map_err(|e| Error::bundle(&path, format!("bad JSON: {e}")))?;
    for f in [Some(&card.graph), Some(&card.tokenizer), card.spelling.as_ref()].into_iter().flatten() {
        check_name(&f.file).map_err(|e| Error::bundle(&path, format!("file {:?}: {e}", f.file)))?;
        let have = sha256_file(&dir.join(&f.file))?;
        if !have.eq_ignore_ascii_case(&f.sha256) {
            return Err(Error::bundle(
                dir.join(&f.file),
                format!("sha256 {have} differs from trunk.json's {}", f.sha256),
            ));
        }
    }
    Ok((dir, card))
}

/// The trunk's executor (probed for batch dependence, as the service does) and tokenizer.
fn load_trunk(
    pool: &ExecutorPool,
    runtime: &RuntimeConfig,
    dir: &Path,
    card: &TrunkCard,
) -> Result<(Arc<Executor>, Arc<TokenizerHandle>)> {
    let graph = dir.join(&card.graph.file);
    let exec = pool.executor(
        runtime,
        &graph,
        &card.graph.sha256,
        Expect::Tokens,
        Some(card.embedding_dim),
        runtime.intra_threads(),
    )?;
    let lexicon = card.spelling.as_ref().filter(|_| runtime.spelling).map(|f| (dir.join(&f.file), f.sha256.clone()));
    let tok = pool.tokenizer(
        &dir.join(&card.tokenizer.file),
        &card.tokenizer.sha256,
        card.max_seq_len,
        lexicon.as_ref().map(|(p, h)| (p.as_path(), h.as_str())),
    )?;
    let probe = ["warm-up", "how to check that a text gets the same answer in any batch"];
    exec.probe(probe.iter().map(|t| tok.encode(t)).collect::<Result<Vec<_>>>()?)?;
    Ok((exec, tok))
}

/// Every distinct text once, and each text's row.
fn distinct_texts<'a>(rows: &[&'a Row]) -> (Vec<&'a str>, HashMap<&'a str, usize>) {
    let (mut texts, mut index) = (Vec::new(), HashMap::new());
    for r in rows {
        index.entry(r.text.as_str()).or_insert_with(|| {
            texts.push(r.text.as_str());
            texts.len() - 1
        });
    }
    (texts, index)
}

/// The trunk's embedding of each text, from the cache where it has them (the rest embedded and
/// added to it); also how many came from the cache.
fn embed_cached(
    o: &FitOptions,
    exec: &Executor,
    tok: &TokenizerHandle,
    tcard: &TrunkCard,
    texts: &[&str],
) -> Result<(Matrix, usize)> {
    let Some(dir) = o.cache_dir() else { return Ok((embed(exec, tok, texts)?, 0)) };
    let mut cache = EmbeddingCache::open(&dir, tcard);
    let missing: Vec<&str> = texts.iter().copied().filter(|t| cache.get(t).is_none()).collect();
    let found = texts.len() - missing.len();
    progress(&format!("{found} of {} texts embedded before ({})", texts.len(), cache.path().display()));
    if !missing.is_empty() {
        let new = embed(exec, tok, &missing)?;
        // The rows are added before the file is written, so a failed write only costs the next run.
        if let Err(e) = cache.add_and_save(&missing, &new) {
            progress(&format!("could not keep the embeddings for next time: {e}"));
        }
    }
    let mut data = Vec::with_capacity(texts.len() * tcard.embedding_dim);
    for t in texts {
        data.extend_from_slice(cache.get(t).expect("every text is in the cache now"));
    }
    Ok((Matrix { rows: texts.len(), cols: tcard.embedding_dim, data }, found))
}

/// The trunk's embedding of each text, with a progress line every tenth.
fn embed(exec: &Executor, tok: &TokenizerHandle, texts: &[&str]) -> Result<Matrix> {
    let started = Instant::now();
    let mut next_report = texts.len() / 10;
    trunk_outputs(exec, tok, texts, |rows| {
        if rows >= next_report {
            let rate = rows as f64 / started.elapsed().as_secs_f64().max(1e-3);
            progress(&format!("embedded {rows}/{} texts ({rate:.0}/s)", texts.len()));
            next_report += texts.len() / 10;
        }
    })
}

/// One class's head and how it was chosen.
struct Head {
    head: LinearHead,
    c: f64,
    /// L-BFGS steps at the chosen C.
    iterations: usize,
    /// Val AUC per C tried.
    grid: Vec<Value>,
}

/// What the C search saw: per C, the set's val best-guess accuracy and the steps taken.
struct Heads {
    heads: Vec<Head>,
    c: f64,
    grid: Vec<Value>,
}

/// Every class's head, fitted together on standardized embeddings ([`fit_one_vs_rest`]: the
/// online trainer's objective, balanced weights, every train row), for each C of `FIT_C_GRID`
/// (warm-started from the previous C); the C whose heads give the best val best-guess accuracy
/// is kept (ties: the smaller C), the same C for every class because the heads compete in one
/// argmax. Standardizing then folding back into the served heads (which read raw embeddings)
/// gained ~0.5 points of CLINC150 val accuracy over raw features (docs/TRAINING.md). The bias is
/// moved from the balanced fit's prior (1/2) to the class's share of train, so probabilities are
/// on the data's scale.
fn fit_heads(classes: usize, train: &Matrix, truth: &[usize], val: &Matrix, val_truth: &[usize]) -> Heads {
    let scaler = Standardizer::fit(train);
    let z = scaler.apply(train);
    let shares: Vec<f64> =
        (0..classes).map(|k| truth.iter().filter(|&&t| t == k).count() as f64 / truth.len() as f64).collect();
    let mut previous: Option<Vec<Fitted>> = None;
    let mut best: Option<(f64, f64, Vec<LinearHead>, Vec<usize>)> = None;
    let mut grid = Vec::new();
    let mut per_class: Vec<Vec<Value>> = vec![Vec::new(); classes];
    for &c in &FIT_C_GRID {
        let t = Instant::now();
        let fitted = fit_one_vs_rest(&z, truth, classes, Options::new(c), previous.as_deref());
        let heads: Vec<LinearHead> = fitted
            .iter()
            .zip(&shares)
            .map(|(f, share)| {
                let mut h = scaler.fold(&f.head);
                h.bias += (share / (1.0 - share)).ln() as f32;
                h
            })
            .collect();
        let scores: Vec<Vec<f32>> =
            heads.iter().map(|h| (0..val.rows).map(|i| h.score(val.row(i))).collect()).collect();
        let correct = (0..val.rows)
            .filter(|&i| {
                (0..classes).max_by(|&a, &b| scores[a][i].total_cmp(&scores[b][i]).then(b.cmp(&a)))
                    == Some(val_truth[i])
            })
            .count();
        let acc = correct as f64 / val.rows.max(1) as f64;
        let steps: Vec<usize> = fitted.iter().map(|f| f.iterations).collect();
        progress(&format!(
            "C={c}: val best-guess accuracy {:.2} %, {} L-BFGS steps at most ({:.1} s)",
            acc * 100.0,
            steps.iter().max().unwrap_or(&0),
            t.elapsed().as_secs_f64()
        ));
        for (k, s) in scores.iter().enumerate() {
            let labels: Vec<bool> = val_truth.iter().map(|&v| v == k).collect();
            let probs: Vec<f32> = s.iter().map(|&l| sigmoid(l)).collect();
            per_class[k].push(json!({"C": c, "val_auc": binary_report(&probs, &labels).auc, "lbfgs_steps": steps[k]}));
        }
        grid.push(json!({"C": c, "val_accuracy": acc, "max_lbfgs_steps": steps.iter().max()}));
        if best.as_ref().is_none_or(|(b, ..)| acc > *b) {
            best = Some((acc, c, heads, steps));
        }
        previous = Some(fitted);
    }
    let (_, c, heads, steps) = best.expect("FIT_C_GRID is not empty");
    let heads = heads
        .into_iter()
        .zip(steps)
        .zip(per_class)
        .map(|((head, iterations), grid)| Head { head, c, iterations, grid })
        .collect();
    Heads { heads, c, grid }
}

/// Class `k`'s mean train embedding at unit length (the open-world rule's centroid).
fn centroid(train: &Matrix, truth: &[usize], k: usize) -> Vec<f32> {
    LinearHead::centroid_of((0..train.rows).filter(|&i| truth[i] == k).map(|i| train.row(i)), train.cols)
}

/// Positive-class probabilities of a linear head, computed as the service computes them.
fn head_probabilities(f: &Head, x: &Matrix) -> Result<Vec<f32>> {
    Ok(positive_probabilities(&f.head.logits(x)?))
}

/// Each class's bundle (head.json + card.json with its val threshold, Platt map, metrics,
/// provenance and self-test rows); returns the bundle names in class order.
#[allow(clippy::too_many_arguments)]
fn write_bundles(
    root: &Path,
    o: &FitOptions,
    classes: &[String],
    fitted: &[Head],
    val: &Matrix,
    val_truth: &[usize],
    (train, train_texts, train_truth): (&Matrix, &[String], &[usize]),
    tcard: &TrunkCard,
    provider: &str,
) -> Result<Vec<String>> {
    let data_sha = sha256_file(&o.data)?;
    let created = now_rfc3339();
    let mut names = Vec::new();
    for (k, (class, f)) in classes.iter().zip(fitted).enumerate() {
        let labels: Vec<bool> = val_truth.iter().map(|&t| t == k).collect();
        let scores = head_probabilities(f, val)?;
        let r = binary_report(&scores, &labels);
        let name = format!("{}--fit-logreg", slug(class));
        let dir = root.join(&name);
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        let head_path = dir.join("head.json");
        write_atomic(&head_path, &serde_json::to_vec(&f.head).expect("json"))?;
        let sha = sha256_file(&head_path)?;
        // Self-test rows: the first train text of the class and the first of another.
        let picks: Vec<usize> =
            [true, false].iter().filter_map(|&pos| (0..train.rows).find(|&i| (train_truth[i] == k) == pos)).collect();
        let sel = Matrix {
            rows: picks.len(),
            cols: train.cols,
            data: picks.iter().flat_map(|&i| train.row(i).to_vec()).collect(),
        };
        let probs = head_probabilities(f, &sel)?;
        let selftest =
            picks.iter().zip(probs).map(|(&i, p)| SelfTest { text: train_texts[i].clone(), probability: p }).collect();
        let metrics =
            |report, runtime: &str| SplitMetrics { provider: provider.into(), runtime: runtime.into(), report };
        let card = Card {
            schema: CARD_SCHEMA,
            class: class.clone(),
            algorithm: "fit-logreg".into(),
            kind: Kind::Linear,
            version: format!("fit-{}", &sha[..12]),
            graph: FileRef { file: "head.json".into(), sha256: sha },
            max_seq_len: tcard.max_seq_len,
            threshold: Some(Threshold {
                value: (r.eer_threshold as f32).clamp(1e-6, 1.0 - 1e-6),
                method: "eer".into(),
                split: "val".into(),
            }),
            calibration: Some(platt_calibration(&scores, &labels, "val")),
            metrics: BTreeMap::from([("val".to_string(), metrics(r, "onnxruntime (moe)"))]),
            provenance: json!({
                "tool": "moe fit", "created": created, "data": o.data, "data_sha256": data_sha,
                "text_column": o.text_col, "label_column": o.label_col, "trunk": tcard.id,
                "C": f.c, "C_chosen_by": "the set's val best-guess accuracy", "features": "standardized on train",
                "lbfgs_steps": f.iterations, "grid": f.grid, "train_rows": train.rows,
            }),
            selftest,
            tokenizer: None,
            spelling: None,
            trunk: Some(TrunkRef { id: tcard.id.clone(), sha256: tcard.graph.sha256.clone() }),
            embedding_dim: Some(tcard.embedding_dim),
            extra: BTreeMap::new(),
        };
        card.write(&dir.join("card.json"))?;
        names.push(name);
    }
    Ok(names)
}

/// The trunk's embeddings of the val and test rows (the fit's, in row order) and of the
/// out-of-scope val and test rows with their texts, so no text goes through the trunk twice.
struct Seen {
    val: Arc<Matrix>,
    test: Arc<Matrix>,
    oos_val: (Arc<Matrix>, Vec<String>),
    oos_test: (Arc<Matrix>, Vec<String>),
}

/// Every expert's probabilities (expert-major) on `texts`, from their seeded embeddings.
fn score_seeded(set: &ExpertSet, texts: &[String], embedding: &Arc<Matrix>) -> Result<Vec<Vec<f32>>> {
    let mut scorer = Scorer::new(texts);
    if let Some(e) = set.experts.first() {
        scorer.seed(e, embedding.clone())?;
    }
    set.experts.iter().map(|e| scorer.probabilities(e)).collect()
}

/// A split's in-class rows: texts and class indices.
fn split_of(data: &Labelled, classes: &[String], s: &str) -> (Vec<String>, Vec<usize>) {
    data.rows
        .iter()
        .filter(|r| r.split == s)
        .filter_map(|r| classes.binary_search(&r.label).ok().map(|k| (r.text.clone(), k)))
        .unzip()
}

/// The gate chosen on val among the kinds this many classes afford; its val accuracy and the spec.
fn choose_val_gate(classes: &[String], val: GateData, versions: BTreeMap<String, String>) -> (f64, GateSpec) {
    let kinds: &[GateKind] = if classes.len() <= FITTED_GATES_UP_TO {
        &[GateKind::Uniform, GateKind::Length, GateKind::Stacking]
    } else {
        progress(&format!("{} classes: fitted gates skipped (over {FITTED_GATES_UP_TO})", classes.len()));
        &[GateKind::Uniform]
    };
    let (acc, mut spec, table) = choose_gate(&val, classes, versions, kinds, true);
    spec.selected_by = Some(json!({"metric": "val accuracy", "chosen_val_accuracy": acc, "table": table,
        "fitted_gates_skipped": classes.len() > FITTED_GATES_UP_TO}));
    (acc, spec)
}

/// Load the written set as the service would (self-tests included), choose the gate, the label
/// rule and the open-world cut-off on val, and score val and test through the set's own decisions.
#[allow(clippy::too_many_arguments)]
fn choose_gate_and_report(
    o: &FitOptions,
    runtime: &RuntimeConfig,
    root: &Path,
    mut reg: RegistryFile,
    data: &Labelled,
    classes: &[String],
    dropped: &[Value],
    seen: &Seen,
) -> Result<Value> {
    let pool = ExecutorPool::default();
    let set = ExpertSet::load(&pool, runtime, root, &reg)?;
    let (texts, truth) = split_of(data, classes, "val");
    let probs = score_seeded(&set, &texts, &seen.val)?;
    let cal = set.calibrations().unwrap_or_else(|| vec![IDENTITY; probs.len()]);
    let gd = GateData { probs: &probs, thr: &set.thresholds, cal: &cal, texts: &texts, truth: &truth };
    let versions: BTreeMap<String, String> = set.versions().into_iter().collect();
    let (acc, mut spec) = choose_val_gate(classes, gd, versions.clone());
    let oos_val = &seen.oos_val;
    let oos_probs = score_seeded(&set, &oos_val.1, &oos_val.0)?;
    let (near, oos_near) =
        (set.nearest_on(std::slice::from_ref(&seen.val)), set.nearest_on(std::slice::from_ref(&oos_val.0)));
    let experts = set.experts.clone();
    let (label, open_world, chosen_by) = open_world::choose(
        &|spec: &GateSpec| ExpertSet::new(experts.clone(), spec.clone(), (0, None), Vec::new()),
        &spec,
        versions,
        (&texts, &truth, &probs, &near),
        (&oos_val.1, &oos_probs, &oos_near),
        o.trade_off(),
        o.in_scope_score,
    )?;
    spec.label = label;
    spec.open_world = open_world;
    if let Some(Value::Object(m)) = spec.selected_by.as_mut() {
        m.insert("label_rule_and_open_world".into(), chosen_by);
    }
    reg.gate = spec;
    reg.write(root)?;
    // The same loaded experts under the chosen gate (they passed their self-tests above).
    let set = ExpertSet::new(set.experts.clone(), reg.gate.clone(), (0, None), Vec::new())?;
    let mut report = json!({
        "data": {"file": o.data, "rows": data.rows.len(), "split": data.split_source, "ignored_rows": data.ignored, "rows_not_kept": data.capped,
                 "out_of_scope_rows": data.oos.len(), "dropped_classes": dropped},
        "classes": classes, "trunk": o.trunk,
        "gate": {"kind": format!("{:?}", reg.gate.kind).to_lowercase(), "score": format!("{:?}", reg.gate.score).to_lowercase(),
                 "val_accuracy": acc, "label_rule": reg.gate.label, "open_world": reg.gate.open_world},
    });
    report["val"] = split_report(&set, classes, &texts, &truth, &probs, &near)?;
    report["val"]["open_world"] =
        open_world::measure(&set, classes, (&texts, &truth, &probs, &near), (&oos_val.1, &oos_probs, &oos_near));
    report["test"] = test_report(&set, classes, data, seen)?;
    Ok(report)
}

/// The test split through the set's own decisions, with its out-of-scope rows (null: no test rows).
fn test_report(set: &ExpertSet, classes: &[String], data: &Labelled, seen: &Seen) -> Result<Value> {
    let (test, test_truth) = split_of(data, classes, "test");
    if test.is_empty() {
        return Ok(Value::Null);
    }
    let probs = score_seeded(set, &test, &seen.test)?;
    let near = set.nearest_on(std::slice::from_ref(&seen.test));
    let mut r = split_report(set, classes, &test, &test_truth, &probs, &near)?;
    let oos_test = &seen.oos_test;
    let oos_probs = score_seeded(set, &oos_test.1, &oos_test.0)?;
    let oos_near = set.nearest_on(std::slice::from_ref(&oos_test.0));
    r["open_world"] =
        open_world::measure(set, classes, (&test, &test_truth, &probs, &near), (&oos_test.1, &oos_probs, &oos_near));
    Ok(r)
}

/// Accuracy and macro-F1 of the set's answers on a split (best guess when it abstains, and with
/// abstentions counted wrong), per-class expert metrics and the most confused class pairs.
/// `probs` is expert-major, in the set's order.
fn split_report(
    set: &ExpertSet,
    classes: &[String],
    texts: &[String],
    truth: &[usize],
    probs: &[Vec<f32>],
    nearest: &[Option<f32>],
) -> Result<Value> {
    let results = set.decide_all(texts, probs, &vec![false; texts.len()], nearest);
    let index = |c: &str| classes.binary_search(&c.to_string()).expect("a class of the set");
    let guess: Vec<usize> = results.iter().map(|r| index(&r.best_guess)).collect();
    let answered = results.iter().zip(truth).filter(|(r, t)| r.label.as_deref() == Some(classes[**t].as_str())).count();
    let closed = multiclass(classes, truth, &guess);
    let mut pairs: BTreeMap<(usize, usize), usize> = BTreeMap::new();
    for (&t, &g) in truth.iter().zip(&guess).filter(|(t, g)| t != g) {
        *pairs.entry((t, g)).or_default() += 1;
    }
    let mut pairs: Vec<_> = pairs.into_iter().collect();
    pairs.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    let experts: Vec<Value> = set
        .experts
        .iter()
        .enumerate()
        .map(|(k, e)| {
            let labels: Vec<bool> = truth.iter().map(|&t| t == k).collect();
            let r = binary_report(&probs[k], &labels);
            json!({"class": e.class, "auc": r.auc, "eer": r.eer, "threshold": e.threshold, "f1_at_threshold": r.at_eer.f1})
        })
        .collect();
    Ok(json!({
        "rows": texts.len(),
        "accuracy_best_guess": closed.accuracy,
        "macro_f1_best_guess": closed.macro_f1,
        "accuracy_with_abstention": answered as f64 / texts.len() as f64,
        "abstained": results.iter().filter(|r| r.abstained).count(),
        "most_confused": pairs.iter().take(10).map(|((t, g), n)| json!({"true": classes[*t], "predicted": classes[*g], "texts": n})).collect::<Vec<_>>(),
        "experts": experts,
    }))
}

/// An empty temporary folder beside `out` (hidden; stale ones of earlier interrupted runs removed).
fn temp_root(out: &Path) -> Result<PathBuf> {
    let parent = out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let base = out.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_else(|| "fit".into());
    let prefix = format!(".{base}.fit-");
    if let Ok(d) = std::fs::read_dir(parent) {
        for e in d.flatten().filter(|e| e.file_name().to_string_lossy().starts_with(&prefix)) {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
    let tmp = parent.join(format!("{prefix}{}", std::process::id()));
    std::fs::create_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    Ok(tmp)
}

/// The trunk's files, hard-linked where the file system allows, else copied.
fn copy_trunk(src: &Path, dst: &Path) -> Result<()> {
    std::fs::create_dir_all(dst).map_err(|e| Error::io(dst, e))?;
    for e in std::fs::read_dir(src).map_err(|e| Error::io(src, e))?.flatten() {
        let to = dst.join(e.file_name());
        if e.path().is_file() && std::fs::hard_link(e.path(), &to).is_err() {
            std::fs::copy(e.path(), &to).map_err(|err| Error::io(&to, err))?;
        }
    }
    Ok(())
}

/// The rows with the split made for them, so a rerun (or another tool) can reuse it.
fn write_splits(path: &Path, rows: &[Row]) -> Result<()> {
    let mut w = csv::Writer::from_writer(Vec::new());
    let io = |e: csv::Error| Error::Internal(format!("writing splits.csv: {e}"));
    w.write_record(["text", "label", "split"]).map_err(io)?;
    for r in rows {
        w.write_record([r.text.as_str(), r.label.as_str(), r.split]).map_err(io)?;
    }
    let bytes = w.into_inner().map_err(|e| Error::Internal(format!("writing splits.csv: {e}")))?;
    write_atomic(path, &bytes)
}

#[cfg(test)]
mod tests {
    use super::{FitOptions, TradeOff};
    use clap::Parser;
    use clap::error::ErrorKind;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        o: FitOptions,
    }

    fn parse(extra: &[&str]) -> Result<FitOptions, clap::Error> {
        Cli::try_parse_from([&["fit", "--data", "d.csv", "--out", "o"][..], extra].concat()).map(|c| c.o)
    }

    /// `--min-oos-recall` takes a share strictly between 0 and 1, needs `--oos-label` and replaces
    /// the budget (naming both is refused, the budget's default is not a conflict).
    #[test]
    fn the_trade_off_is_one_of_two_and_a_recall_needs_out_of_scope_rows() {
        assert_eq!(parse(&[]).unwrap().trade_off(), TradeOff::MaxInScopeAbstain(0.03));
        let recall = parse(&["--oos-label", "oos", "--min-oos-recall", "0.8"]).unwrap();
        assert_eq!(recall.trade_off(), TradeOff::MinOutOfScopeRecall(0.8));
        let both = ["--oos-label", "oos", "--min-oos-recall", "0.8", "--max-in-scope-abstain", "0.05"];
        let refused: [(&[&str], ErrorKind); 6] = [
            (&["--min-oos-recall", "0.8"], ErrorKind::MissingRequiredArgument),
            (&both, ErrorKind::ArgumentConflict),
            (&["--oos-label", "oos", "--min-oos-recall", "1"], ErrorKind::ValueValidation),
            (&["--oos-label", "oos", "--min-oos-recall", "0"], ErrorKind::ValueValidation),
            (&["--oos-label", "oos", "--min-oos-recall=-0.5"], ErrorKind::ValueValidation),
            (&["--oos-label", "oos", "--min-oos-recall", "most"], ErrorKind::ValueValidation),
        ];
        for (args, kind) in refused {
            assert_eq!(parse(args).map(|o| o.trade_off()).unwrap_err().kind(), kind, "{args:?}");
        }
    }

    #[test]
    fn a_row_cap_under_five_is_refused() {
        assert_eq!(super::at_least_min_rows("5"), Ok(5));
        for bad in ["4", "0", "-1", "many"] {
            assert!(super::at_least_min_rows(bad).is_err(), "{bad}");
        }
    }
}
