//! moe-tools: the offline commands on top of `moe-core`, beside the server, never under it:
//! `moe fit` (`fit`), `moe select` (`select`), `moe report` (`report`) and `moe bench` (`bench`).
//! `moe eval` and `moe calibrate` are `moe_core::evaluation` (the selection jobs share it).

pub mod bench;
pub mod embed_cache;
pub mod fit;
pub mod open_world;
pub mod report;
pub mod select;
