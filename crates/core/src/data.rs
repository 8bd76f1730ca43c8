//! Reading a labelled split from a CSV (the trainer's data): text, label and split columns.

use std::path::{Path, PathBuf};

use clap::Args;

use crate::{Error, Result};

#[derive(Debug, Clone, Args)]
pub struct DataArgs {
    /// Labelled CSV with a header row (default: the repository's copy, data/README.md).
    #[arg(long, env = "MOE_DATA", default_value = "data/wikihow19_titles.csv")]
    pub data: PathBuf,
    /// Column holding the texts.
    #[arg(long, default_value = "title")]
    pub text_col: String,
    /// Column holding each text's class.
    #[arg(long, default_value = "label")]
    pub label_col: String,
    /// Column holding each row's split (train / val / test).
    ///
    /// A CSV without one: let the trainer write one first (`python -m moe_training split`).
    #[arg(long, default_value = "split")]
    pub split_col: String,
}

#[derive(Debug, Clone, Default)]
pub struct Rows {
    pub texts: Vec<String>,
    pub labels: Vec<String>,
}

impl Rows {
    /// The rows whose label is one of `classes`: their texts and class indices.
    pub fn labelled(self, classes: &[String]) -> (Vec<String>, Vec<usize>) {
        self.texts
            .into_iter()
            .zip(self.labels)
            .filter_map(|(t, l)| classes.iter().position(|c| *c == l).map(|k| (t, k)))
            .unzip()
    }
}

impl DataArgs {
    /// Rows of one split; rows with an empty label (multi-label / ambiguous) are skipped.
    pub fn read(&self, split: &str) -> Result<Rows> {
        read_split(&self.data, &self.text_col, &self.label_col, &self.split_col, split)
    }
}

/// Open a labelled CSV; a missing file says which flag names it.
fn open(path: &Path) -> Result<csv::Reader<std::fs::File>> {
    csv::Reader::from_path(path).map_err(|e| {
        Error::BadRequest(format!("{}: {e} (labelled data is named by --data / MOE_DATA)", path.display()))
    })
}

impl DataArgs {
    /// Whether the data file exists (the service starts without it; selection jobs then refuse).
    pub fn available(&self) -> bool {
        self.data.is_file()
    }
}

pub fn read_split(path: &Path, text_col: &str, label_col: &str, split_col: &str, split: &str) -> Result<Rows> {
    let bad = |r: String| Error::BadRequest(format!("{}: {r}", path.display()));
    let mut rdr = open(path)?;
    let header = rdr.headers().map_err(|e| bad(e.to_string()))?.clone();
    let col = |name: &str| header.iter().position(|h| h == name).ok_or_else(|| bad(format!("no column {name:?}")));
    let (t, l, s) = (col(text_col)?, col(label_col)?, col(split_col)?);
    let mut rows = Rows::default();
    for rec in rdr.records() {
        let rec = rec.map_err(|e| bad(e.to_string()))?;
        let (text, label) = (rec.get(t).unwrap_or("").trim(), rec.get(l).unwrap_or("").trim());
        if rec.get(s).map(str::trim) == Some(split) && !label.is_empty() && !text.is_empty() {
            rows.texts.push(text.to_string());
            rows.labels.push(label.to_string());
        }
    }
    if rows.texts.is_empty() {
        return Err(bad(format!("no labelled rows in split {split:?}")));
    }
    Ok(rows)
}

/// Multi-label rows of one split (e.g. `ambiguous`): each text with every label in a
/// `|`-separated column. An absent column or split gives no rows (the caller reports it).
pub fn read_multi(path: &Path, text_col: &str, labels_col: &str, split_col: &str, split: &str) -> Result<MultiRows> {
    let bad = |r: String| Error::BadRequest(format!("{}: {r}", path.display()));
    let mut rdr = open(path)?;
    let header = rdr.headers().map_err(|e| bad(e.to_string()))?.clone();
    let col = |name: &str| header.iter().position(|h| h == name);
    let mut rows = MultiRows::default();
    let (Some(t), Some(l), Some(s)) = (col(text_col), col(labels_col), col(split_col)) else {
        return Ok(rows);
    };
    for rec in rdr.records() {
        let rec = rec.map_err(|e| bad(e.to_string()))?;
        let text = rec.get(t).unwrap_or("").trim();
        let labels: Vec<String> =
            rec.get(l).unwrap_or("").split('|').map(str::trim).filter(|x| !x.is_empty()).map(String::from).collect();
        if rec.get(s).map(str::trim) == Some(split) && !labels.is_empty() && !text.is_empty() {
            rows.texts.push(text.to_string());
            rows.labels.push(labels);
        }
    }
    Ok(rows)
}

#[derive(Debug, Clone, Default)]
pub struct MultiRows {
    pub texts: Vec<String>,
    pub labels: Vec<Vec<String>>,
}
