//! moe-core: everything the service computes, nothing it speaks. The layers inside point one way
//! (checked by `tests/layers.rs`); a module uses only those below it:
//! 5. `service`: the active expert set, one classify call, the one change function (`Core`)
//! 4. `evaluation`: a bundle on a labelled split (the selection jobs, `moe eval`, `moe calibrate`)
//! 3. `expert`: a loaded bundle (load, self-test, probabilities); `store`: where the live
//!    registry is kept (the trait, and the state-folder file)
//! 2. `inference` (ONNX Runtime sessions owned by batching executors, tokenizers), `bundle`
//!    (cards, the quality vocabulary, the registry document), `data` (labelled CSV splits)
//! 1. `gate` (the decision rule), `stats` (ROC, logistic fits, Platt maps, gate fitting), `files`,
//!    `linalg` (dense matrices, dot products, linear heads: under both `inference` and `stats`)
//! 0. `config`, `error`, `clock`
//!
//! The HTTP service (`moe-server`) and the offline commands (`moe-tools`) are built on this crate;
//! it depends on neither.

pub mod bundle;
pub mod clock;
pub mod config;
pub mod data;
pub mod error;
pub mod evaluation;
pub mod expert;
pub mod files;
pub mod gate;
pub mod inference;
pub mod linalg;
pub mod service;
pub mod stats;
pub mod store;

pub use error::{Error, Result};
