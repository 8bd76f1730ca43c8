//! The plan of one request, computed once per set: which tokenizers and which trunk / full graphs
//! run (each once per request, whatever the number of experts on it), and the trunk most heads run
//! on.

use std::sync::Arc;

use crate::Result;
use crate::expert::Expert;
use crate::inference::{Encoded, Executor, TokenizerHandle};

/// Per distinct tokenizer the texts' tokens, and per text whether any tokenizer truncated it.
pub(super) type Encodings = (Vec<Arc<Vec<Encoded>>>, Vec<bool>);

/// Distinct work of one request: tokenizers and first-stage graphs, each run once per request.
pub(super) struct Plan {
    pub(super) tokenizers: Vec<Arc<TokenizerHandle>>,
    /// Distinct (trunk or full graph, tokenizer index).
    pub(super) stages: Vec<(Arc<Executor>, usize)>,
    /// Per expert: index into `stages`.
    pub(super) stage_of: Vec<usize>,
}

impl Plan {
    pub(super) fn new(experts: &[Arc<Expert>]) -> Plan {
        let mut tokenizers: Vec<Arc<TokenizerHandle>> = Vec::new();
        let mut stages: Vec<(Arc<Executor>, usize)> = Vec::new();
        let mut stage_of = Vec::with_capacity(experts.len());
        for e in experts {
            let t = match tokenizers.iter().position(|t| t.same_pipeline(&e.tokenizer)) {
                Some(i) => i,
                None => {
                    tokenizers.push(e.tokenizer.clone());
                    tokenizers.len() - 1
                }
            };
            let s = match stages.iter().position(|(x, ti)| x.sha256 == e.stage1.sha256 && *ti == t) {
                Some(i) => i,
                None => {
                    stages.push((e.stage1.clone(), t));
                    stages.len() - 1
                }
            };
            stage_of.push(s);
        }
        Plan { tokenizers, stages, stage_of }
    }

    /// Whether any tokenizer corrects spelling first (more work per byte).
    pub(super) fn spells(&self) -> bool {
        self.tokenizers.iter().any(|t| t.speller.is_some())
    }

    /// Tokenize every text once per distinct tokenizer (CPU work: call from a blocking thread).
    pub(super) fn encode(&self, texts: &[String]) -> Result<Encodings> {
        let mut truncated = vec![false; texts.len()];
        let mut out = Vec::with_capacity(self.tokenizers.len());
        for t in &self.tokenizers {
            let enc = texts.iter().map(|x| t.encode(x)).collect::<Result<Vec<_>>>()?;
            for (flag, e) in truncated.iter_mut().zip(&enc) {
                *flag |= e.truncated;
            }
            out.push(Arc::new(enc));
        }
        Ok((out, truncated))
    }
}

/// The stage most experts with a head run on, and that trunk's id.
pub(super) fn primary_trunk(experts: &[Arc<Expert>], plan: &Plan) -> Option<(usize, String)> {
    let mut counts = vec![0usize; plan.stages.len()];
    for (e, &s) in experts.iter().zip(&plan.stage_of) {
        if e.head.is_some() && e.card.trunk.is_some() {
            counts[s] += 1;
        }
    }
    let (stage, _) = counts.iter().enumerate().filter(|(_, n)| **n > 0).max_by_key(|(i, n)| (**n, usize::MAX - i))?;
    let expert = experts.iter().zip(&plan.stage_of).find(|(e, s)| **s == stage && e.card.trunk.is_some())?.0;
    Some((stage, expert.card.trunk.as_ref()?.id.clone()))
}
