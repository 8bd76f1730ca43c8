//! Trunk embeddings kept between runs of `moe fit`, so a rerun (a fixed label, another
//! `--min-rows`) embeds only the texts it has not seen. One file per trunk and text pipeline,
//! named by the SHA-256 of the graph's, tokenizer's and lexicon's hashes and the length limit, so
//! an embedding is only ever reused for the pipeline that computed it.
//!
//! File: the magic `MOEEMB01`, the dimension (u32 LE), then records `[text length u32 LE][UTF-8
//! text][dimension × f32 LE]`. A file is replaced whole (written beside it, then renamed); a
//! damaged tail (a record cut short) is ignored. Fits that share a cache take turns to write it
//! (an exclusive lock on `<file>.lock`), each merging what the others wrote since it was read, so
//! concurrent fits lose none of each other's rows. The cache is an accelerator: any failure to
//! read or write it is reported and the fit goes on without it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use moe_core::bundle::card::TrunkCard;
use moe_core::files::write_atomic;
use moe_core::inference::Matrix;
use sha2::{Digest, Sha256};

const MAGIC: &[u8; 8] = b"MOEEMB01";

/// The embeddings of one trunk and text pipeline, by text.
pub struct EmbeddingCache {
    path: PathBuf,
    dim: usize,
    rows: HashMap<String, Vec<f32>>,
}

impl EmbeddingCache {
    /// The cache file for this trunk under `dir`, read if it exists (empty otherwise).
    pub fn open(dir: &Path, trunk: &TrunkCard) -> EmbeddingCache {
        let spelling = trunk.spelling.as_ref().map_or("", |s| s.sha256.as_str());
        let key = format!(
            "moe-embeddings-v1|{}|{}|{}|{spelling}",
            trunk.graph.sha256, trunk.tokenizer.sha256, trunk.max_seq_len
        );
        let name = hex::encode(&Sha256::digest(key.as_bytes())[..16]);
        let path = dir.join(format!("{name}.emb"));
        let rows = match std::fs::read(&path) {
            Ok(bytes) => parse(&bytes, trunk.embedding_dim).unwrap_or_else(|why| {
                eprintln!("moe fit: embedding cache {}: {why}; starting it again", path.display());
                HashMap::new()
            }),
            Err(_) => HashMap::new(),
        };
        EmbeddingCache { path, dim: trunk.embedding_dim, rows }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn get(&self, text: &str) -> Option<&[f32]> {
        self.rows.get(text).map(Vec::as_slice)
    }

    /// Add `texts` with their embeddings (row i of `m`) and rewrite the file, with the rows other
    /// fits have written since it was read.
    pub fn add_and_save(&mut self, texts: &[&str], m: &Matrix) -> moe_core::Result<()> {
        for (i, t) in texts.iter().enumerate() {
            self.rows.insert(t.to_string(), m.row(i).to_vec());
        }
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| moe_core::Error::io(dir, e))?;
        }
        let lock_path = self.path.with_extension("emb.lock");
        let lock = std::fs::File::create(&lock_path).map_err(|e| moe_core::Error::io(&lock_path, e))?;
        lock.lock().map_err(|e| moe_core::Error::io(&lock_path, e))?;
        if let Ok(Ok(theirs)) = std::fs::read(&self.path).map(|b| parse(&b, self.dim)) {
            for (t, v) in theirs {
                self.rows.entry(t).or_insert(v);
            }
        }
        let mut out = Vec::with_capacity(12 + self.rows.len() * (self.dim * 4 + 64));
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&(self.dim as u32).to_le_bytes());
        let mut texts: Vec<&String> = self.rows.keys().collect();
        texts.sort();
        for t in texts {
            out.extend_from_slice(&(t.len() as u32).to_le_bytes());
            out.extend_from_slice(t.as_bytes());
            for v in &self.rows[t] {
                out.extend_from_slice(&v.to_le_bytes());
            }
        }
        // The lock is released when `lock` is dropped, after the rename.
        write_atomic(&self.path, &out)
    }
}

/// The records of a cache file (a record cut short ends the list).
fn parse(bytes: &[u8], dim: usize) -> Result<HashMap<String, Vec<f32>>, String> {
    if bytes.len() < 12 || &bytes[..8] != MAGIC {
        return Err("not an embedding cache file".into());
    }
    let have = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes")) as usize;
    if have != dim {
        return Err(format!("holds {have}-value embeddings, the trunk makes {dim}"));
    }
    let mut rows = HashMap::new();
    let mut at = 12;
    while at + 4 <= bytes.len() {
        let len = u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes")) as usize;
        let end = at + 4 + len + 4 * dim;
        if end > bytes.len() {
            break;
        }
        let Ok(text) = std::str::from_utf8(&bytes[at + 4..at + 4 + len]) else { break };
        let values =
            bytes[at + 4 + len..end].chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")));
        rows.insert(text.to_string(), values.collect());
        at = end;
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cut_tail_is_dropped_and_the_rest_kept() {
        let mut bytes = MAGIC.to_vec();
        bytes.extend_from_slice(&2u32.to_le_bytes());
        for (t, v) in [("a", [1.0f32, 2.0]), ("bc", [3.0, 4.0])] {
            bytes.extend_from_slice(&(t.len() as u32).to_le_bytes());
            bytes.extend_from_slice(t.as_bytes());
            v.iter().for_each(|x| bytes.extend_from_slice(&x.to_le_bytes()));
        }
        let full = parse(&bytes, 2).unwrap();
        assert_eq!(full["bc"], vec![3.0, 4.0]);
        let cut = parse(&bytes[..bytes.len() - 3], 2).unwrap();
        assert_eq!((cut.len(), cut["a"].clone()), (1, vec![1.0, 2.0]));
        assert!(parse(&bytes, 3).is_err(), "another dimension is refused");
        assert!(parse(b"garbage!", 2).is_err());
    }

    /// Two fits that read the cache before either wrote it: the second write keeps the first's rows.
    #[test]
    fn fits_sharing_a_cache_keep_each_others_rows() {
        let dir = std::env::temp_dir().join(format!("moe-emb-cache-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("x.emb");
        let open = || EmbeddingCache { path: path.clone(), dim: 2, rows: HashMap::new() };
        let (mut a, mut b) = (open(), open());
        a.add_and_save(&["one"], &Matrix { rows: 1, cols: 2, data: vec![1.0, 2.0] }).unwrap();
        b.add_and_save(&["two"], &Matrix { rows: 1, cols: 2, data: vec![3.0, 4.0] }).unwrap();
        let both = parse(&std::fs::read(&path).unwrap(), 2).unwrap();
        assert_eq!((both["one"].clone(), both["two"].clone()), (vec![1.0, 2.0], vec![3.0, 4.0]));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
