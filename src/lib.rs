//! moe: a mixture-of-experts text classifier served over HTTP.
//!
//! Layers point one way (checked by `tests/layers.rs`):
//! `http` (router, DTOs, validation, the one error → status map)
//!   → `control` (swaps, shadows, selection jobs, uploads: parts that *use* the core)
//!   → `core` (the active expert set, one classify call, the one change function)
//!   → `expert` (a loaded bundle: load, self-test, probabilities)
//!   → `inference` (ONNX Runtime sessions owned by batching executors, tokenizers),
//!     `experts` (bundle cards, metrics vocabulary, registry files), `gate` (pure decision rule).
//! `eval` (ROC/EER, calibration, selection, report) and `bench` sit beside `control`: they use
//! `core` and `expert`, never `http`. `config`, `error` and `clock` are leaves. The command line
//! lives in `main.rs`.

pub mod bench;
pub mod clock;
pub mod config;
pub mod control;
pub mod core;
pub mod error;
pub mod eval;
pub mod expert;
pub mod experts;
pub mod gate;
pub mod http;
pub mod inference;

pub use error::{Error, Result};
