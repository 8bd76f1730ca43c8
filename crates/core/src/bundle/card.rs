//! Bundle cards (`card.json`), trunk cards (`trunk.json`) and the checks made before anything is
//! loaded into ONNX Runtime: required fields, files present inside the model root, SHA-256 hashes.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::quality::{BinaryReport, SplitMetrics};
use crate::files::{sha256_file, write_atomic};
use crate::{Error, Result};

pub const CARD_SCHEMA: u32 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// tokens -> logits [batch, 2]
    Full,
    /// embedding of a shared trunk -> logits [batch, 2]
    Head,
    /// embedding of a shared trunk -> [0, w·x + b], computed in Rust from `head.json`
    Linear,
}

impl Kind {
    /// Runs on a shared trunk's embedding (needs `trunk` and `embedding_dim`).
    pub fn on_trunk(self) -> bool {
        matches!(self, Kind::Head | Kind::Linear)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileRef {
    pub file: String,
    pub sha256: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrunkRef {
    pub id: String,
    pub sha256: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Threshold {
    pub value: f32,
    /// How it was set, e.g. "eer" (interpolated equal-error-rate point).
    pub method: String,
    pub split: String,
}

/// An expert's Platt calibration q = sigmoid(a logit(p) + b), fitted by `moe calibrate` (the
/// gate's `calibrated` score mode uses it; pass / fail stays p against the threshold).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Calibration {
    /// "platt"
    pub method: String,
    pub a: f32,
    pub b: f32,
    pub split: String,
    /// Out-of-sample evidence: log-loss of the raw and the cross-fitted calibrated probabilities.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cross_validated: Option<serde_json::Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SelfTest {
    pub text: String,
    pub probability: f32,
}

/// `card.json` of one bundle. Unknown fields are kept (flattened) so tools can round-trip it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Card {
    pub schema: u32,
    pub class: String,
    pub algorithm: String,
    pub kind: Kind,
    pub version: String,
    pub graph: FileRef,
    pub max_seq_len: usize,
    pub threshold: Option<Threshold>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calibration: Option<Calibration>,
    /// Per split (e.g. "val"), what `moe calibrate` measured in the serving runtime.
    #[serde(default)]
    pub metrics: BTreeMap<String, SplitMetrics>,
    #[serde(default)]
    pub provenance: serde_json::Value,
    #[serde(default)]
    pub selftest: Vec<SelfTest>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokenizer: Option<FileRef>,
    /// Full models: the lexicon that corrects texts before the tokenizer (heads: their trunk's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spelling: Option<FileRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trunk: Option<TrunkRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub embedding_dim: Option<usize>,
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

/// `trunks/<id>/trunk.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrunkCard {
    pub schema: u32,
    pub id: String,
    pub graph: FileRef,
    pub tokenizer: FileRef,
    /// The lexicon that corrects texts before the tokenizer (inference/tokenize.rs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spelling: Option<FileRef>,
    pub embedding_dim: usize,
    pub max_seq_len: usize,
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

/// Everything a bundle needs, resolved to checked paths inside the model root.
#[derive(Debug, Clone)]
pub struct BundleFiles {
    pub name: String,
    pub dir: PathBuf,
    pub card: Card,
    pub graph: PathBuf,
    pub tokenizer: PathBuf,
    pub tokenizer_sha256: String,
    /// The spelling lexicon (checked path, SHA-256) of the trunk or full model, if it names one.
    pub spelling: Option<(PathBuf, String)>,
    pub max_seq_len: usize,
    /// For heads: the trunk's card and graph path.
    pub trunk: Option<(TrunkCard, PathBuf)>,
}

/// Longest bundle or trunk folder name, in bytes (file systems stop at 255; uploads and training
/// add prefixes and suffixes).
pub const MAX_NAME_BYTES: usize = 200;
/// Longest class name, in characters.
pub const MAX_CLASS_CHARS: usize = 100;
/// Longest bundle version, in characters.
pub const MAX_VERSION_CHARS: usize = 128;

/// `Travel & Tours` → `travel-tours`.
pub fn slug(class: &str) -> String {
    let mut s = String::new();
    for c in class.chars() {
        if c.is_ascii_alphanumeric() {
            s.push(c.to_ascii_lowercase());
        } else if !s.ends_with('-') && !s.is_empty() {
            s.push('-');
        }
    }
    s.trim_end_matches('-').to_string()
}

/// A character that draws nothing: a control character, or an invisible format character (soft
/// hyphen, zero-width space / joiners / marks, bidirectional embeddings, overrides and isolates,
/// word joiner, BOM). Texts may not consist of these only; names may not hold any of them
/// (openapi.yaml's `Text` and `Name` patterns list the same set).
pub fn invisible(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{00AD}' | '\u{034F}' | '\u{180E}' | '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2060}'..='\u{2069}' | '\u{FEFF}')
}

/// The one rule for a name that people type and read back (class names, bundle and file names,
/// feedback labels): not empty, no invisible character anywhere (so `Travel\u{200B}` or
/// `\u{202E}Travel` cannot stand beside `Travel`), no surrounding whitespace, not starting with
/// `.` (such names are kept for the service's temporary files). Lengths are each kind's own.
pub fn check_shown(name: &str) -> std::result::Result<(), String> {
    if name.trim().is_empty() {
        return Err("the name is empty".into());
    }
    if let Some(c) = name.chars().find(|c| invisible(*c)) {
        return Err(format!("{name:?} holds an invisible or control character (U+{:04X})", c as u32));
    }
    if name.trim() != name {
        return Err(format!("{name:?} starts or ends with whitespace"));
    }
    if name.starts_with('.') {
        return Err(format!("{name:?} starts with '.': such names are kept for the service's temporary files"));
    }
    Ok(())
}

/// A bundle or trunk name: one plain path component (no `..`, no separators, no absolute path),
/// at most `MAX_NAME_BYTES`, and a shown name (`check_shown`).
pub fn check_name(name: &str) -> std::result::Result<(), String> {
    let mut comps = Path::new(name).components();
    let plain = matches!((comps.next(), comps.next()), (Some(Component::Normal(_)), None))
        && !name.contains('/')
        && !name.contains('\\');
    if !plain {
        return Err(format!("{name:?} is not a plain folder name inside the model root"));
    }
    if name.len() > MAX_NAME_BYTES {
        return Err(format!("a folder name of {} bytes is longer than {MAX_NAME_BYTES}", name.len()));
    }
    check_shown(name)
}

/// A class name: a shown name (`check_shown`) of at most `MAX_CLASS_CHARS` characters.
pub fn check_class(class: &str) -> std::result::Result<(), String> {
    let n = class.chars().count();
    if n > MAX_CLASS_CHARS {
        return Err(format!("a class name of {n} characters is longer than {MAX_CLASS_CHARS}"));
    }
    check_shown(class).map_err(|e| format!("class name: {e}"))
}

/// Join `name` to `dir` and require the canonical result to stay inside `root` (no symlink escape).
fn confined(root: &Path, dir: &Path, name: &str) -> Result<PathBuf> {
    check_name(name).map_err(|r| Error::bundle(dir, r))?;
    let path = dir.join(name);
    let canon = path.canonicalize().map_err(|e| Error::bundle(&path, format!("cannot open: {e}")))?;
    let root = root.canonicalize().map_err(|e| Error::io(root, e))?;
    if !canon.starts_with(&root) {
        return Err(Error::bundle(&path, "resolves outside the model root (symlink?)"));
    }
    Ok(canon)
}

fn check_hash(path: &Path, expected: &str) -> Result<()> {
    let got = sha256_file(path)?;
    if !got.eq_ignore_ascii_case(expected) {
        return Err(Error::bundle(path, format!("sha256 mismatch: card says {expected}, file is {got}")));
    }
    Ok(())
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::bundle(path, format!("cannot read: {e}")))?;
    serde_json::from_str(&text).map_err(|e| Error::bundle(path, format!("bad JSON: {e}")))
}

impl Card {
    pub fn read(path: &Path) -> Result<Card> {
        let card: Card = read_json(path)?;
        card.check(path)?;
        Ok(card)
    }

    /// Field-level checks that need no other file.
    pub fn check(&self, path: &Path) -> Result<()> {
        let bad = |r: String| Err(Error::bundle(path, r));
        if self.schema != CARD_SCHEMA {
            return bad(format!("schema {} is not supported (expected {CARD_SCHEMA})", self.schema));
        }
        check_class(&self.class).or_else(bad)?;
        if self.version.trim().is_empty() || self.algorithm.trim().is_empty() {
            return bad("version and algorithm must be set".into());
        }
        let v = self.version.chars().count();
        if v > MAX_VERSION_CHARS || self.version.chars().any(char::is_control) {
            return bad(format!("version: at most {MAX_VERSION_CHARS} characters, no control characters (got {v})"));
        }
        if self.selftest.is_empty() {
            return bad("selftest is empty: a bundle records at least one text with its probability, which the \
                        service checks at load"
                .into());
        }
        if self.max_seq_len == 0 {
            return bad("max_seq_len must be > 0".into());
        }
        match self.kind {
            k if k.on_trunk() && (self.trunk.is_none() || self.embedding_dim.is_none()) => {
                bad("a head bundle needs `trunk` and `embedding_dim`".into())
            }
            Kind::Full if self.tokenizer.is_none() => bad("a full-model bundle needs `tokenizer`".into()),
            k if k.on_trunk() && self.spelling.is_some() => {
                bad("a head bundle's `spelling` is its trunk's (name it in trunk.json)".into())
            }
            _ => Ok(()),
        }?;
        if let Some(t) = &self.threshold
            && !(t.value.is_finite() && t.value > 0.0 && t.value < 1.0)
        {
            return bad(format!("threshold {} is not in (0, 1)", t.value));
        }
        if let Some(c) = &self.calibration
            && !(c.method == "platt" && c.a.is_finite() && c.a > 0.0 && c.b.is_finite())
        {
            return bad(format!("calibration {:?} a={} b={}: only platt with a > 0 and finite b", c.method, c.a, c.b));
        }
        Ok(())
    }

    /// The report of one split, if the card was calibrated on it.
    pub fn report(&self, split: &str) -> Option<&BinaryReport> {
        self.metrics.get(split).map(|m| &m.report)
    }

    pub fn write(&self, path: &Path) -> Result<()> {
        let text = serde_json::to_string_pretty(self).expect("card serializes");
        write_atomic(path, format!("{text}\n").as_bytes())
    }
}

impl BundleFiles {
    /// Resolve and check a bundle folder `root/name`: card fields, files inside the root, hashes,
    /// and for heads the trunk (its card, files, hashes and embedding size).
    pub fn open(root: &Path, name: &str) -> Result<BundleFiles> {
        let dir = confined(root, root, name)?;
        if !dir.is_dir() {
            return Err(Error::bundle(&dir, "not a folder"));
        }
        let card_path = confined(root, &dir, "card.json")?;
        let card = Card::read(&card_path)?;
        let graph = confined(root, &dir, &card.graph.file)?;
        check_hash(&graph, &card.graph.sha256)?;
        let lexicon = |dir: &Path, f: &Option<FileRef>| -> Result<Option<(PathBuf, String)>> {
            let Some(f) = f else { return Ok(None) };
            let path = confined(root, dir, &f.file)?;
            check_hash(&path, &f.sha256)?;
            Ok(Some((path, f.sha256.to_lowercase())))
        };
        let (tokenizer, tokenizer_sha256, spelling, trunk, max_seq_len) = match card.kind {
            Kind::Full => {
                let t = card.tokenizer.as_ref().expect("checked");
                let path = confined(root, &dir, &t.file)?;
                check_hash(&path, &t.sha256)?;
                (path, t.sha256.to_lowercase(), lexicon(&dir, &card.spelling)?, None, card.max_seq_len)
            }
            Kind::Head | Kind::Linear => {
                let r = card.trunk.as_ref().expect("checked");
                let tdir = confined(root, &root.join("trunks"), &r.id)?;
                let tcard_path = confined(root, &tdir, "trunk.json")?;
                let tcard: TrunkCard = read_json(&tcard_path)?;
                if tcard.id != r.id {
                    return Err(Error::bundle(
                        &tcard_path,
                        format!("id {:?} differs from folder {:?}", tcard.id, r.id),
                    ));
                }
                if !tcard.graph.sha256.eq_ignore_ascii_case(&r.sha256) {
                    return Err(Error::bundle(
                        &card_path,
                        format!("names trunk sha256 {} but trunk {} has {}", r.sha256, r.id, tcard.graph.sha256),
                    ));
                }
                if Some(tcard.embedding_dim) != card.embedding_dim {
                    return Err(Error::bundle(
                        &card_path,
                        format!(
                            "embedding_dim {:?} differs from the trunk's {}",
                            card.embedding_dim, tcard.embedding_dim
                        ),
                    ));
                }
                let tgraph = confined(root, &tdir, &tcard.graph.file)?;
                check_hash(&tgraph, &tcard.graph.sha256)?;
                let tok = confined(root, &tdir, &tcard.tokenizer.file)?;
                check_hash(&tok, &tcard.tokenizer.sha256)?;
                let sha = tcard.tokenizer.sha256.to_lowercase();
                let len = tcard.max_seq_len.min(card.max_seq_len);
                let spelling = lexicon(&tdir, &tcard.spelling)?;
                (tok, sha, spelling, Some((tcard, tgraph)), len)
            }
        };
        Ok(BundleFiles {
            name: name.to_string(),
            dir,
            card,
            graph,
            tokenizer,
            tokenizer_sha256,
            spelling,
            max_seq_len,
            trunk,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs_are_bundle_names() {
        assert_eq!(slug("Cars & Other Vehicles"), "cars-other-vehicles");
        assert_eq!(slug("Crypto"), "crypto");
        assert_eq!(slug("&&"), "");
    }

    #[test]
    fn names_must_be_plain() {
        assert!(check_name("travel--trunk-logreg").is_ok());
        let long = "x".repeat(MAX_NAME_BYTES + 1);
        for bad in ["..", "../x", "/etc", "a/b", "", ".", "a\\b", ".upload-evil", ".hidden", "a\u{7}b", &long] {
            assert!(check_name(bad).is_err(), "{bad:?} accepted");
        }
        assert!(check_name(&long[1..]).is_ok());
    }

    #[test]
    fn names_hold_no_invisible_character() {
        // The probe's names: each stood beside `Travel` as a different class.
        for bad in
            ["Travel\u{200B}", "\u{202E}Travel", "Tra\u{00AD}vel", "\u{FEFF}Travel", "Tr\u{2066}avel", "Travel\u{85}"]
        {
            assert!(check_class(bad).is_err(), "class {bad:?} accepted");
            assert!(check_name(bad).is_err(), "bundle {bad:?} accepted");
            assert!(check_shown(bad).is_err(), "label {bad:?} accepted");
        }
        for good in ["Travel", "Food and Entertaining", "Café ☕", "旅行", "a.b"] {
            assert!(check_shown(good).is_ok(), "{good:?} refused");
        }
    }

    #[test]
    fn class_names_must_be_visible_and_short() {
        assert!(check_class("Cars & Other Vehicles").is_ok());
        let long = "c".repeat(MAX_CLASS_CHARS + 1);
        for bad in ["", "  ", ".upload-x", ".Travel", " Travel", "Travel ", "a\nb", "a\u{0}", &long] {
            assert!(check_class(bad).is_err(), "{bad:?} accepted");
        }
    }

    fn card_json() -> serde_json::Value {
        serde_json::json!({
            "schema": 1, "class": "Travel", "algorithm": "a", "kind": "full", "version": "v1",
            "graph": {"file": "model.onnx", "sha256": "00"}, "max_seq_len": 16, "threshold": null,
            "tokenizer": {"file": "tokenizer.json", "sha256": "00"}, "custom": 3,
            "selftest": [{"text": "a trip", "probability": 0.9}]
        })
    }

    #[test]
    fn card_checks_fields() {
        let p = Path::new("card.json");
        let c: Card = serde_json::from_value(card_json()).unwrap();
        c.check(p).unwrap();
        assert_eq!(c.extra["custom"], 3, "unknown fields are kept");
        let mut head = card_json();
        head["kind"] = "head".into();
        let c: Card = serde_json::from_value(head).unwrap();
        let e = c.check(p).unwrap_err().to_string();
        assert!(e.contains("card.json") && e.contains("trunk"), "{e}");
        let mut t = card_json();
        t["threshold"] = serde_json::json!({"value": 1.5, "method": "eer", "split": "val"});
        let c: Card = serde_json::from_value(t).unwrap();
        assert!(c.check(p).unwrap_err().to_string().contains("not in (0, 1)"));
        let mut s = card_json();
        s["schema"] = 9.into();
        let c: Card = serde_json::from_value(s).unwrap();
        assert!(c.check(p).is_err());
        for (field, value, why) in [
            ("selftest", serde_json::json!([]), "selftest is empty"),
            ("version", serde_json::json!("v".repeat(MAX_VERSION_CHARS + 1)), "version: at most"),
            ("version", serde_json::json!("v1\u{1b}"), "version: at most"),
            ("class", serde_json::json!(".Travel"), "starts with '.'"),
        ] {
            let mut bad = card_json();
            bad[field] = value;
            let c: Card = serde_json::from_value(bad).unwrap();
            let e = c.check(p).unwrap_err().to_string();
            assert!(e.contains(why), "{field}: {e}");
        }
    }

    #[test]
    fn atomic_write_replaces() {
        let dir = std::env::temp_dir().join(format!("moe-aw-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("x.json");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "two");
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1, "no temp file left");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
