//! Tokenization: one handle per distinct tokenizer file (keyed by its SHA-256).

use std::path::Path;

use tokenizers::{Tokenizer, TruncationParams};

use crate::{Error, Result};

pub struct TokenizerHandle {
    pub sha256: String,
    pub max_len: usize,
    tokenizer: Tokenizer,
}

/// One text's tokens (no padding: executors pad per batch).
#[derive(Debug, Clone, PartialEq)]
pub struct Encoded {
    pub ids: Vec<i64>,
    pub mask: Vec<i64>,
    pub type_ids: Vec<i64>,
    pub truncated: bool,
}

impl TokenizerHandle {
    pub fn load(path: &Path, sha256: &str, max_len: usize) -> Result<TokenizerHandle> {
        let mut tokenizer =
            Tokenizer::from_file(path).map_err(|e| Error::bundle(path, format!("not a tokenizer.json: {e}")))?;
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(Some(TruncationParams { max_length: max_len, ..Default::default() }))
            .map_err(|e| Error::bundle(path, format!("truncation: {e}")))?;
        let handle = TokenizerHandle { sha256: sha256.to_string(), max_len, tokenizer };
        handle.encode("tokenizer check").map_err(|e| Error::bundle(path, e.to_string()))?;
        Ok(handle)
    }

    pub fn encode(&self, text: &str) -> Result<Encoded> {
        let enc = self.tokenizer.encode(text, true).map_err(|e| Error::Tokenizer(e.into()))?;
        let conv = |v: &[u32]| v.iter().map(|&x| x as i64).collect::<Vec<i64>>();
        Ok(Encoded {
            ids: conv(enc.get_ids()),
            mask: conv(enc.get_attention_mask()),
            type_ids: conv(enc.get_type_ids()),
            truncated: !enc.get_overflowing().is_empty(),
        })
    }
}
