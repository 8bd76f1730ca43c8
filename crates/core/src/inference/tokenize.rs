//! Text → tokens, one handle per distinct pipeline (tokenizer file, spelling lexicon and length,
//! keyed by their SHA-256s): the lexicon's correction, then the tokenizer.
//!
//! **Spelling correction.** A trunk (or a full-model bundle) may name a lexicon
//! (`spelling` in trunk.json / card.json); its tokenizer then sees every text corrected.
//!
//! Why: a typo splits a word into word pieces the trunk never learnt together ("vacum" →
//! "va ##cum"); with one letter edit in a quarter of the longer words, the shipped set lost 7.9
//! points on val titles, and this step gives back 5.0 of them at a cost of 0.3 points (2 titles)
//! on clean val titles (`docs/REPORT.md` has the test numbers).
//!
//! The rule (training/moe_training/spelling.py is the same rule in Python, the parity oracle):
//! - a *word* is a maximal run of alphanumeric characters; only the first [`MAX_WORDS`] words are
//!   looked at (the tokenizer truncates at 128 tokens anyway; this bounds a hostile text's cost);
//! - a word is left alone unless it is 3..=24 ASCII letters, not all upper case (acronyms), and
//!   its lower case is not in the lexicon;
//! - its candidates are the lexicon words one edit away (drop, swap two neighbours, replace or
//!   insert a letter a-z) with 3+ letters that were seen in the training text (count ≥ 1); the most
//!   frequent wins, ties to the smallest word; no candidate: the word stays;
//! - the correction keeps the word's case shape (Capitalised stays Capitalised).
//!
//! Cost: a word of n letters is checked against at most 53n + 25 candidates, each a hash lookup
//! into a reused buffer: microseconds per unknown word, none for known ones.

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use tokenizers::{Tokenizer, TruncationParams};

use crate::{Error, Result};

pub struct TokenizerHandle {
    pub sha256: String,
    pub max_len: usize,
    /// Corrects every text before the tokenizer sees it (the rule above).
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
            None => Cow::Borrowed(text),
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

// ---- spelling correction ----
pub const MAX_WORDS: usize = 128;
const MIN_LEN: usize = 3;
const MAX_LEN: usize = 24;

/// A loaded lexicon: lower-case words and how often the training text used them.
pub struct Speller {
    pub sha256: String,
    words: HashMap<Box<[u8]>, u32>,
}

impl Speller {
    pub fn load(path: &Path, sha256: &str) -> Result<Speller> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let words = parse(&text).map_err(|e| Error::bundle(path, e))?;
        Ok(Speller { sha256: sha256.to_lowercase(), words })
    }

    /// A lexicon from its text, for the tests (the service loads files through `load`).
    #[cfg(test)]
    fn from_text(text: &str) -> std::result::Result<Speller, String> {
        Ok(Speller { sha256: String::new(), words: parse(text)? })
    }

    pub fn len(&self) -> usize {
        self.words.len()
    }

    pub fn is_empty(&self) -> bool {
        self.words.is_empty()
    }

    /// The text with its misspelt words corrected (borrowed when nothing changed).
    pub fn correct<'a>(&self, text: &'a str) -> Cow<'a, str> {
        let mut out: Option<String> = None;
        let mut last = 0;
        let mut buf = Vec::with_capacity(MAX_LEN + 1);
        for (start, word) in words(text).take(MAX_WORDS) {
            if let Some(fixed) = self.correct_word(word, &mut buf) {
                let o = out.get_or_insert_with(|| String::with_capacity(text.len() + 8));
                o.push_str(&text[last..start]);
                o.push_str(&fixed);
                last = start + word.len();
            }
        }
        match out {
            None => Cow::Borrowed(text),
            Some(mut o) => {
                o.push_str(&text[last..]);
                Cow::Owned(o)
            }
        }
    }

    fn count(&self, w: &[u8]) -> Option<u32> {
        self.words.get(w).copied()
    }

    /// `Some(correction)` when the word is misspelt and has one.
    fn correct_word(&self, word: &str, buf: &mut Vec<u8>) -> Option<String> {
        let b = word.as_bytes();
        if !(MIN_LEN..=MAX_LEN).contains(&b.len())
            || !b.iter().all(u8::is_ascii_alphabetic)
            || b.iter().all(u8::is_ascii_uppercase)
        {
            return None;
        }
        let low: Vec<u8> = b.to_ascii_lowercase();
        if self.count(&low).is_some() {
            return None;
        }
        let mut best: Option<(u32, Vec<u8>)> = None;
        let mut consider = |cand: &[u8]| {
            if cand.len() < MIN_LEN {
                return;
            }
            let Some(n) = self.count(cand).filter(|&n| n >= 1) else { return };
            let better = match &best {
                None => true,
                Some((m, w)) => n > *m || (n == *m && cand < w.as_slice()),
            };
            if better {
                best = Some((n, cand.to_vec()));
            }
        };
        let n = low.len();
        for i in 0..n {
            // drop letter i
            buf.clear();
            buf.extend_from_slice(&low[..i]);
            buf.extend_from_slice(&low[i + 1..]);
            consider(buf);
            // swap i, i+1
            if i + 1 < n {
                buf.clear();
                buf.extend_from_slice(&low);
                buf.swap(i, i + 1);
                consider(buf);
            }
            // replace letter i
            buf.clear();
            buf.extend_from_slice(&low);
            for c in b'a'..=b'z' {
                buf[i] = c;
                consider(buf);
            }
        }
        // insert a letter at each of the n + 1 places
        for i in 0..=n {
            buf.clear();
            buf.extend_from_slice(&low[..i]);
            buf.push(b'a');
            buf.extend_from_slice(&low[i..]);
            for c in b'a'..=b'z' {
                buf[i] = c;
                consider(buf);
            }
        }
        let (_, w) = best?;
        let mut fixed = String::from_utf8(w).expect("lexicon words are ASCII");
        if b[0].is_ascii_uppercase() {
            fixed[..1].make_ascii_uppercase();
        }
        Some(fixed)
    }
}

/// Maximal runs of alphanumeric characters, with their byte offsets.
fn words(text: &str) -> impl Iterator<Item = (usize, &str)> {
    let mut it = text.char_indices().peekable();
    std::iter::from_fn(move || {
        while it.next_if(|(_, c)| !c.is_alphanumeric()).is_some() {}
        let (start, _) = it.next()?;
        let mut end = text.len();
        while let Some(&(i, c)) = it.peek() {
            if !c.is_alphanumeric() {
                end = i;
                break;
            }
            it.next();
        }
        Some((start, &text[start..end]))
    })
}

fn parse(text: &str) -> std::result::Result<HashMap<Box<[u8]>, u32>, String> {
    let mut words = HashMap::new();
    for (n, line) in text.lines().enumerate() {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let parsed = line.split_once('\t').and_then(|(w, c)| {
            let ok = !w.is_empty() && w.bytes().all(|b| b.is_ascii_lowercase());
            ok.then_some(w).zip(c.parse::<u32>().ok())
        });
        let Some((w, c)) = parsed else {
            return Err(format!("line {}: expected `word<TAB>count` (a-z word), got {line:?}", n + 1));
        };
        words.insert(w.as_bytes().into(), c);
    }
    if words.is_empty() {
        return Err("no words".into());
    }
    Ok(words)
}

#[cfg(test)]
mod spelling_tests {
    use super::*;

    fn speller() -> Speller {
        Speller::from_text("# test\nhow\t9\nto\t9\nwater\t5\nwaiter\t5\nplants\t3\nplanets\t1\nknown\t0\nvacuum\t2\n")
            .unwrap()
    }

    #[test]
    fn corrects_one_edit_and_keeps_case_and_separators() {
        let s = speller();
        assert_eq!(s.correct("how to watre air plnats"), "how to water air plants");
        assert_eq!(s.correct("How to Vacum, Plants?"), "How to Vacuum, Plants?");
        assert_eq!(s.correct("wate"), "water");
        assert_eq!(s.correct("hwo"), "how");
        // known words (count 0 too), acronyms, short words, digits and non-ASCII stay
        for t in ["knwn known", "PLNTS", "hw", "plnts2", "plnätes", "", "  ,  "] {
            let want = if t.starts_with("knwn") { "knwn known" } else { t };
            assert_eq!(s.correct(t), want, "{t}");
        }
        assert!(matches!(s.correct("how to water plants"), Cow::Borrowed(_)));
    }

    #[test]
    fn ties_go_to_the_smallest_word_and_only_the_first_words_are_looked_at() {
        let s = Speller::from_text("cart\t2\ncard\t2\n").unwrap();
        assert_eq!(s.correct("carx"), "card");
        let long = format!("{}carx", "x1 ".repeat(MAX_WORDS));
        assert_eq!(s.correct(&long), long);
    }

    #[test]
    fn bad_lexicons_are_refused_with_the_line() {
        for (t, want) in
            [("Word\t1\n", "line 1"), ("ok\t1\nword 1\n", "line 2"), ("w\tx\n", "line 1"), ("# x\n", "no words")]
        {
            let e = Speller::from_text(t).err().unwrap();
            assert!(e.contains(want), "{t:?}: {e}");
        }
    }
}
