//! Executors, tokenizers and spelling lexicons shared by content hash: two bundles that name the
//! same graph or the same tokenizer share one session / one tokenizer, and a swap reuses what is
//! already running.
//! Entries are weak: when no expert set uses an executor any more, it drops and its thread ends.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, Weak};

use super::executor::{Executor, Expect};
use super::tokenize::{Speller, TokenizerHandle};
use crate::Result;
use crate::config::RuntimeConfig;
use crate::error::lock;

#[derive(Default)]
pub struct ExecutorPool {
    executors: Mutex<HashMap<String, Weak<Executor>>>,
    tokenizers: Mutex<HashMap<(String, String, usize), Weak<TokenizerHandle>>>,
    spellers: Mutex<HashMap<String, Weak<Speller>>>,
}

impl ExecutorPool {
    /// The running executor for this graph hash, or a new one (blocking while it loads; the lock is
    /// not held during the load, so different graphs load in parallel).
    pub fn executor(
        &self,
        cfg: &RuntimeConfig,
        path: &Path,
        sha256: &str,
        expect: Expect,
        out_dim: Option<usize>,
        threads: usize,
    ) -> Result<Arc<Executor>> {
        let key = format!("{sha256}:{expect:?}");
        if let Some(e) = lock(&self.executors).get(&key).and_then(Weak::upgrade) {
            return Ok(e);
        }
        // Big graphs (token inputs) get the configured session pool; heads one session
        // (Inline heads run on the callers' threads: one session per core so they rarely wait.)
        let sessions = if expect == Expect::Tokens || cfg.inline_heads { cfg.sessions() } else { 1 };
        let fresh = Executor::start(cfg, path, sha256, expect, out_dim, threads, sessions)?;
        let mut map = lock(&self.executors);
        map.retain(|_, w| w.strong_count() > 0);
        match map.get(&key).and_then(Weak::upgrade) {
            Some(existing) => Ok(existing),
            None => {
                map.insert(key, Arc::downgrade(&fresh));
                Ok(fresh)
            }
        }
    }

    /// The tokenizer (with the lexicon `spelling` names, if any: its path and SHA-256).
    pub fn tokenizer(
        &self,
        path: &Path,
        sha256: &str,
        max_len: usize,
        spelling: Option<(&Path, &str)>,
    ) -> Result<Arc<TokenizerHandle>> {
        let key = (sha256.to_string(), spelling.map(|(_, h)| h.to_lowercase()).unwrap_or_default(), max_len);
        // The lexicon first (its own map, shared across tokenizers), so that the tokenizer map is
        // held once from lookup to insert and two loads of the same tokenizer cannot race.
        let speller = spelling.map(|(p, h)| self.speller(p, h)).transpose()?;
        let mut map = lock(&self.tokenizers);
        if let Some(t) = map.get(&key).and_then(Weak::upgrade) {
            return Ok(t);
        }
        let t = Arc::new(TokenizerHandle::load(path, sha256, max_len, speller)?);
        map.retain(|_, w| w.strong_count() > 0);
        map.insert(key, Arc::downgrade(&t));
        Ok(t)
    }

    fn speller(&self, path: &Path, sha256: &str) -> Result<Arc<Speller>> {
        let key = sha256.to_lowercase();
        let mut map = lock(&self.spellers);
        if let Some(s) = map.get(&key).and_then(Weak::upgrade) {
            return Ok(s);
        }
        let s = Arc::new(Speller::load(path, sha256)?);
        map.retain(|_, w| w.strong_count() > 0);
        map.insert(key, Arc::downgrade(&s));
        Ok(s)
    }

    /// Executors alive now (used by tests to prove swapped-out sessions are released).
    pub fn live_executors(&self) -> usize {
        lock(&self.executors).values().filter(|w| w.strong_count() > 0).count()
    }
}
