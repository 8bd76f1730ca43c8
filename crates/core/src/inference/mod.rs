//! ONNX Runtime: the process environment, sessions (CPU / CUDA), the batching executors that own
//! them, and tokenization (with its optional spelling correction); and linear heads, computed
//! without ONNX Runtime.

pub mod executor;
pub mod pool;
pub mod runtime;
pub mod tokenize;

pub use crate::linalg::{LinearHead, Matrix};
pub use executor::{Executor, GraphRole};
pub use pool::ExecutorPool;
pub use tokenize::{Encoded, Speller, TokenizerHandle};
