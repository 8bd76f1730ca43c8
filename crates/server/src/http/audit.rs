//! Logs an operator can use: one audit line per admin action, accepted or refused (who: a
//! fingerprint of the bearer token presented, never the token; what: method and path; result:
//! status), and overload answers summarised as one rate-limited WARN per second with counts
//! instead of a line per request.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::Request;
use axum::http::Method;
use axum::http::header::AUTHORIZATION;
use axum::middleware::Next;
use axum::response::Response;
use sha2::{Digest, Sha256};

use moe_core::error::lock;

/// First 8 hex digits of SHA-256 of the bearer token presented ("none" without one).
pub fn fingerprint(req: &Request) -> String {
    fingerprint_of(req.headers())
}

pub fn fingerprint_of(headers: &axum::http::HeaderMap) -> String {
    match headers.get(AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer ")) {
        Some(t) => hex::encode(&Sha256::digest(t.as_bytes())[..4]),
        None => "none".into(),
    }
}

/// Mutating routes are admin actions; `POST /classify` and `POST /feedback` are not.
fn is_admin(method: &Method, path: &str) -> bool {
    !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS) && path != "/classify" && path != "/feedback"
}

pub async fn audit(req: Request, next: Next) -> Response {
    let (method, path) = (req.method().clone(), req.uri().path().to_string());
    if !is_admin(&method, &path) {
        return next.run(req).await;
    }
    let who = fingerprint(&req);
    let started = Instant::now();
    let res = next.run(req).await;
    let status = res.status().as_u16();
    tracing::info!(target: "audit", who, %method, path, status, accepted = res.status().is_success(),
        took_ms = started.elapsed().as_secs_f64() * 1e3, "admin action");
    res
}

/// Counts overload answers and logs them at most once per `every`.
pub struct RateLimitedWarn {
    every: Duration,
    state: Mutex<(Option<Instant>, u64)>,
}

impl RateLimitedWarn {
    pub const fn new(every: Duration) -> RateLimitedWarn {
        RateLimitedWarn { every, state: Mutex::new((None, 0)) }
    }

    /// Count one event; returns the count to log when a line is due (events since the last line).
    pub fn hit(&self, now: Instant) -> Option<u64> {
        let mut s = lock(&self.state);
        s.1 += 1;
        match s.0 {
            Some(last) if now.duration_since(last) < self.every => None,
            _ => {
                let n = s.1;
                *s = (Some(now), 0);
                Some(n)
            }
        }
    }
}

static OVERLOAD: RateLimitedWarn = RateLimitedWarn::new(Duration::from_secs(1));

/// Record a 503 answer (overloaded, timeout, not ready); logs a WARN at most once a second.
pub fn overloaded(code: &str) {
    if let Some(n) = OVERLOAD.hit(Instant::now()) {
        tracing::warn!(
            answers_503 = n,
            last_code = code,
            "answering 503: overloaded, not ready or past the deadline (counted since the last line)"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_most_one_line_per_period_with_the_count_since_the_last() {
        let w = RateLimitedWarn::new(Duration::from_secs(1));
        let t0 = Instant::now();
        assert_eq!(w.hit(t0), Some(1), "the first event is logged");
        for k in 1..=99 {
            assert_eq!(w.hit(t0 + Duration::from_millis(k * 5)), None);
        }
        assert_eq!(w.hit(t0 + Duration::from_millis(1001)), Some(100), "99 silent events and this one");
        assert_eq!(w.hit(t0 + Duration::from_millis(1002)), None);
    }

    /// A writer for the test subscriber that keeps what was logged.
    #[derive(Clone, Default)]
    struct Captured(std::sync::Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            lock(&self.0).extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn refused_and_accepted_admin_actions_leave_one_line_without_the_token() {
        use axum::body::Body;
        use axum::http::StatusCode;
        use tower::ServiceExt;
        let out = Captured::default();
        let w = out.clone();
        let sub = tracing_subscriber::fmt().with_writer(move || w.clone()).with_ansi(false).finish();
        let router = axum::Router::new()
            .route("/experts/{class}", axum::routing::put(|| async { StatusCode::UNAUTHORIZED }))
            .route("/classify", axum::routing::post(|| async { StatusCode::OK }))
            .layer(axum::middleware::from_fn(audit));
        tracing::subscriber::with_default(sub, || {
            let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
            rt.block_on(async {
                let put = Request::put("/experts/Travel").header("authorization", "Bearer s3cret").body(Body::empty());
                router.clone().oneshot(put.unwrap()).await.unwrap();
                router.oneshot(Request::post("/classify").body(Body::empty()).unwrap()).await.unwrap();
            });
        });
        let log = String::from_utf8(lock(&out.0).clone()).unwrap();
        let lines: Vec<&str> = log.lines().filter(|l| l.contains("admin action")).collect();
        assert_eq!(lines.len(), 1, "{log}");
        let want_who = hex::encode(&Sha256::digest(b"s3cret")[..4]);
        for needle in [format!("who=\"{want_who}\""), "method=PUT".into(), "status=401".into(), "accepted=false".into()]
        {
            assert!(lines[0].contains(&needle), "{} lacks {needle}", lines[0]);
        }
        assert!(!log.contains("s3cret"), "the token itself is never logged");
    }

    #[test]
    fn admin_actions_are_the_mutating_routes_but_classify() {
        assert!(is_admin(&Method::PUT, "/experts/Travel"));
        assert!(is_admin(&Method::POST, "/experts/Travel/rollback"));
        assert!(is_admin(&Method::DELETE, "/experts/Travel/shadow"));
        assert!(!is_admin(&Method::POST, "/classify"));
        assert!(!is_admin(&Method::GET, "/experts"));
    }
}
