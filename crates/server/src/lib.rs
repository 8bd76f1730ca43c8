//! moe-server: the HTTP service on top of `moe-core`. Layers point one way (checked by
//! `tests/layers.rs`):
//! 2. `http`: router, wire types (`http::dto`), validation into typed values, the one error →
//!    status map
//! 1. `control`: swaps, shadows, selection jobs, uploads, online training, feedback, the fleet
//! 0. `etcd`: the shared registry store (`moe_core::store::RegistryStore` on etcd)
//!
//! It never depends on `moe-tools`.

pub mod control;
pub mod etcd;
pub mod http;
