//! Tokenization: one handle per distinct text → tokens pipeline (tokenizer file, spelling lexicon
//! and length, keyed by their SHA-256s): the lexicon's correction, then the tokenizer.

use std::path::Path;
use std::sync::Arc;

use tokenizers::{Tokenizer, TruncationParams};

use super::spelling::Speller;
use crate::{Error, Result};

pub struct TokenizerHandle {
    pub sha256: String,
    pub max_len: usize,
    /// Corrects every text before the tokenizer sees it (see `spelling`).
    pub speller: Option<Arc<Speller>>,
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
    pub fn load(path: &Path, sha256: &str, max_len: usize, speller: Option<Arc<Speller>>) -> Result<TokenizerHandle> {
        let mut tokenizer =
            Tokenizer::from_file(path).map_err(|e| Error::bundle(path, format!("not a tokenizer.json: {e}")))?;
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(Some(TruncationParams { max_length: max_len, ..Default::default() }))
            .map_err(|e| Error::bundle(path, format!("truncation: {e}")))?;
        let handle = TokenizerHandle { sha256: sha256.to_string(), max_len, speller, tokenizer };
        handle.encode("tokenizer check").map_err(|e| Error::bundle(path, e.to_string()))?;
        Ok(handle)
    }

    /// Two handles that turn every text into the same tokens.
    pub fn same_pipeline(&self, other: &TokenizerHandle) -> bool {
        fn lexicon(t: &TokenizerHandle) -> Option<&str> {
            t.speller.as_ref().map(|s| s.sha256.as_str())
        }
        self.sha256 == other.sha256 && self.max_len == other.max_len && lexicon(self) == lexicon(other)
    }

    pub fn encode(&self, text: &str) -> Result<Encoded> {
        let text = match &self.speller {
            Some(s) => s.correct(text),
            None => std::borrow::Cow::Borrowed(text),
        };
        let enc = self.tokenizer.encode(text.as_ref(), true).map_err(|e| Error::Tokenizer(e.into()))?;
        let conv = |v: &[u32]| v.iter().map(|&x| x as i64).collect::<Vec<i64>>();
        Ok(Encoded {
            ids: conv(enc.get_ids()),
            mask: conv(enc.get_attention_mask()),
            type_ids: conv(enc.get_type_ids()),
            truncated: !enc.get_overflowing().is_empty(),
        })
    }
}
