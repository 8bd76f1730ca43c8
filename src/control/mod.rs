//! The parts that *use* the core to change what is served: swaps, deletes and rollbacks
//! (`swap`), shadow candidates (`shadow`), automatic selection jobs (`jobs`) and bundle archive
//! uploads (`upload`), online training (`train`) and the feedback log (`feedback`). Each takes validated input, loads and checks what it needs off the hot path,
//! and changes the active set only through `Core::commit`. The core never imports this module.

pub mod feedback;
pub mod jobs;
pub mod shadow;
pub mod swap;
pub mod train;
pub mod upload;
