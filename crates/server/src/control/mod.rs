//! The parts that *use* the core to change what is served: swaps, deletes and rollbacks
//! (`swap`), shadow candidates (`shadow`), automatic selection jobs (`jobs`) and bundle archive
//! uploads (`upload`), online training (`train`), the feedback log (`feedback`), and following a
//! shared registry as one replica of a fleet (`fleet`). Each takes validated input, loads and
//! checks what it needs off the hot path, and changes the active set only through `Core::commit`.

pub mod feedback;
pub mod fleet;
pub mod jobs;
pub mod shadow;
pub mod swap;
pub mod train;
pub mod unknowns;
pub mod upload;
