//! moe: a mixture-of-experts text classifier served over HTTP.
//!
//! Layers: `http` (router, thin handlers, the JSON error shape) → `core` (the expert set, one
//! classify call) → `experts` (bundles, registry), `inference` (ONNX Runtime sessions owned by
//! batching executors, tokenization), `gate` (pure decision rule), `eval` (ROC/EER, calibration,
//! selection).

pub mod admin;
pub mod bench;
pub mod config;
pub mod core;
pub mod error;
pub mod eval;
pub mod experts;
pub mod gate;
pub mod http;
pub mod inference;
pub mod jobs;
pub mod shadow;
pub mod upload;

pub use error::{Error, Result};
