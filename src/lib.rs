//! moe: a mixture-of-experts text classifier served over HTTP.
//!
//! Layers point one way (checked by `tests/layers.rs`); a module uses only those below it:
//! 7. `http`: router, DTOs, validation into typed values, the one error → status map
//! 6. `control`: swaps, shadows, selection jobs, uploads (parts that *use* the core); `bench`
//! 5. `eval`: ROC/EER, calibration, gate fitting, selection, the report
//! 4. `core`: the active expert set, one classify call, the one change function
//! 3. `expert`: a loaded bundle (load, self-test, probabilities)
//! 2. `inference` (ONNX Runtime sessions owned by batching executors, tokenizers), `experts`
//!    (bundle cards, the metrics vocabulary, registry files)
//! 1. `gate`: the pure decision rule
//! 0. `config`, `error`, `clock`
//!
//! The command line lives in `main.rs`.

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
