//! ONNX Runtime: the process environment, sessions (CPU / CUDA), the batching executors that own
//! them, and tokenization.

pub mod executor;
pub mod pool;
pub mod runtime;
pub mod tokenize;

pub use executor::{Executor, GraphRole, Matrix};
pub use pool::ExecutorPool;
pub use tokenize::{Encoded, TokenizerHandle};
