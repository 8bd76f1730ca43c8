//! The web console (`GET /`): one HTML page, its script and its style sheet, compiled into the
//! binary (no build step, no external request: the page works with no network beyond this
//! service). It only calls the public JSON API, so it can do nothing a curl user cannot.
//!
//! Invariants:
//! * Every console answer carries a Content-Security-Policy that allows only this origin's script,
//!   style and `fetch` (no inline script, no eval, no framing), plus `nosniff` and `no-referrer`.
//! * The admin token lives in the page's memory only: the page never writes it to storage, cookies
//!   or the URL, and the server never logs it (the audit log keeps a fingerprint).

use axum::http::header;
use axum::response::IntoResponse;

/// What the console's pages may load and call: this origin only; images may be inline SVG data.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
                       img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

const INDEX: &str = include_str!("console/index.html");
const SCRIPT: &str = include_str!("console/console.js");
const STYLE: &str = include_str!("console/console.css");

fn page(content_type: &'static str, body: &'static str) -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
}

pub async fn index() -> impl IntoResponse {
    page("text/html; charset=utf-8", INDEX)
}

pub async fn script() -> impl IntoResponse {
    page("text/javascript; charset=utf-8", SCRIPT)
}

pub async fn style() -> impl IntoResponse {
    page("text/css; charset=utf-8", STYLE)
}
