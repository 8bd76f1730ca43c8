//! What scoring a batch gives: every expert's probabilities ([`Scored`]), and one text's decision
//! as the service answers it ([`TextResult`]), with the declined texts kept for the unknowns store.

use std::sync::Arc;

use crate::gate;
use crate::inference::Matrix;

/// Every expert's probabilities for a batch (expert-major), whether each text was truncated, and
/// each text's best centroid similarity (for a `blend` open-world rule).
pub struct Scored {
    /// Text-major: row i holds text i's probability from every expert (set order).
    pub probs: Matrix,
    pub truncated: Vec<bool>,
    pub nearest: Vec<Option<f32>>,
    /// The trunk id and embeddings of the stage most heads run on (None: no expert runs on a trunk).
    pub embeddings: Option<(String, Arc<Matrix>)>,
}

impl Scored {
    /// Keep each declined text, with its trunk embedding, in its answer (for the unknowns store).
    pub fn attach_declined(&self, texts: &[String], results: &mut [TextResult]) {
        for (i, r) in results.iter_mut().enumerate().filter(|(_, r)| r.abstained) {
            let embedding =
                self.embeddings.as_ref().map(|(trunk, m)| Embedded { trunk: trunk.clone(), vector: m.row(i).to_vec() });
            r.declined = Some(Declined { text: texts[i].clone(), embedding });
        }
    }
}

/// A declined text as the unknowns store keeps it.
#[derive(Debug, Clone, PartialEq)]
pub struct Declined {
    pub text: String,
    /// On the trunk most heads run on (None: no expert runs on a trunk).
    pub embedding: Option<Embedded>,
}

/// A text's embedding on a trunk (`trunk` is the trunk's id).
#[derive(Debug, Clone, PartialEq)]
pub struct Embedded {
    pub trunk: String,
    pub vector: Vec<f32>,
}

/// One expert's part in one text's decision (its names: `TextResult::name`).
#[derive(Debug, Clone)]
pub struct ExpertResult {
    /// The expert's place in the set (class order).
    pub index: usize,
    pub probability: f32,
    pub threshold: f32,
    pub passed: bool,
    pub gate_weight: f32,
    pub score: f32,
}

/// What names an expert in an answer.
#[derive(Debug, Clone, PartialEq)]
pub struct ExpertName {
    pub class: String,
    pub algorithm: String,
    pub bundle: String,
    pub version: String,
}

/// One text's decision: the label (or an abstention), the best guess, every expert's part.
#[derive(Debug, Clone)]
pub struct TextResult {
    pub label: Option<String>,
    pub abstained: bool,
    /// Why it abstained (None with a label).
    pub reason: Option<gate::AbstainReason>,
    /// How far out of scope (0.5 at the cut-off, above it declined), with a rule in force.
    pub out_of_scope_score: Option<f32>,
    pub best_guess: String,
    pub truncated: bool,
    /// The text and its trunk embedding, set by the service for abstentions only.
    pub declined: Option<Declined>,
    pub experts: Vec<ExpertResult>,
    /// The set's expert names, shared (one pointer per answer, not four strings per expert).
    pub names: Arc<Vec<ExpertName>>,
}

impl TextResult {
    /// The names of the expert behind a row of `experts`.
    pub fn name(&self, e: &ExpertResult) -> &ExpertName {
        &self.names[e.index]
    }
}
