//! Request limits fixed by the HTTP layer (the configurable ones are `moe_core::config::Limits`);
//! `head_limits` in `http/mod.rs` enforces the head limits before routing.

/// Longest request target (path and query) answered; longer ones get a JSON 414.
pub const MAX_URI_BYTES: usize = 8 * 1024;
/// Most header fields, and most bytes of all header names and values, answered; more get a JSON
/// 431. The HTTP/1 parser lets up to `server::PARSER_MAX_HEADERS` fields through so that these
/// answers come from here, in the error shape, not from hyper (an empty body). Beyond the parser's
/// own limits (that many fields, or a head over hyper's ~400 KB buffer) hyper still answers 431
/// with no body: the one answer that is not JSON.
pub const MAX_HEADERS: usize = 100;
pub const MAX_HEADER_BYTES: usize = 32 * 1024;

/// Largest `POST /experts/{class}/train` body: 20,000 titles of ~100 bytes with JSON quoting.
pub const TRAIN_BODY_BYTES: usize = 8 << 20;
