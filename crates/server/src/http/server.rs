//! The accept loop, with connection hygiene that `axum::serve` does not offer:
//! * at most `--max-connections` open; when full, the longest-open *idle* connection (no request
//!   of it in the service: before its first head, or between keep-alive requests) is closed to
//!   make room, and only with none idle is the new one answered a JSON 503 and closed;
//! * at most `--max-connections-per-client` from one address (JSON 503 above), so one client
//!   cannot take every slot;
//! * a deadline for a request's headers that also bounds idle keep-alive connections (hyper closes
//!   the connection), and body deadlines between frames and in all (`deadline`, JSON 408);
//! * a graceful shutdown: requests in flight finish (at most `--shutdown-drain-ms`) while new
//!   connections are answered a JSON 503 with `Connection: close`, never reset.
//!
//! hyper's own answers to requests it cannot parse get the JSON error shape (`canned`).
//!
//! Invariant: every open connection is in the table or being closed after an eviction; the
//! evicted ones still closing are bounded by `max_connections` too (a new connection that would
//! go over both is refused).

use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::Request;
use axum::response::IntoResponse;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, watch};
use tokio::task::JoinSet;
use tower::ServiceExt;

use super::canned::JsonProtocolErrors;
use moe_core::config::Connections;

/// Header fields the HTTP/1 parser accepts (hyper's default is 100): above `super::limits::MAX_HEADERS`
/// the router answers a JSON 431 itself; above this, hyper answers 431 (given the JSON error body by
/// `canned`).
pub const PARSER_MAX_HEADERS: usize = 400;

/// A JSON 503 written raw (the router never sees it), then the connection is closed.
fn refusal(message: &str) -> Vec<u8> {
    let body = format!(r#"{{"error":{{"code":"overloaded","message":"{message}"}}}}"#);
    format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

const FULL: &str = "too many open connections (--max-connections / MOE_MAX_CONNECTIONS)";
const CLIENT_FULL: &str =
    "too many open connections from this client (--max-connections-per-client / MOE_MAX_CONNECTIONS_PER_CLIENT)";
const SHUTTING_DOWN: &str = "the service is shutting down";

/// One open connection as the table sees it.
struct Entry {
    ip: IpAddr,
    opened: Instant,
    /// Requests of this connection inside the service right now.
    busy: Arc<AtomicUsize>,
    /// Told when the connection must close to make room.
    evict: Arc<Notify>,
}

#[derive(Default)]
struct Table {
    open: HashMap<u64, Entry>,
    per_ip: HashMap<IpAddr, usize>,
    /// Connections evicted and still closing.
    closing: usize,
    next: u64,
}

/// What a new connection gets.
enum Admit {
    In { id: u64, busy: Arc<AtomicUsize>, evict: Arc<Notify> },
    Refused(&'static str),
}

struct Slots {
    table: Mutex<Table>,
    max: usize,
    per_client: usize,
}

impl Slots {
    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn admit(&self, ip: IpAddr) -> Admit {
        let mut t = self.lock();
        if self.per_client > 0 && t.per_ip.get(&ip).copied().unwrap_or(0) >= self.per_client {
            return Admit::Refused(CLIENT_FULL);
        }
        if t.open.len() >= self.max {
            // Make room by closing the longest-open idle connection, if any (and if the ones
            // already closing leave room for one more).
            let idle = t.open.iter().filter(|(_, e)| e.busy.load(Ordering::Acquire) == 0).min_by_key(|(_, e)| e.opened);
            let Some(victim) = idle.map(|(id, _)| *id).filter(|_| t.closing < self.max) else {
                return Admit::Refused(FULL);
            };
            let e = t.open.remove(&victim).expect("chosen from the table");
            Self::forget_ip(&mut t, e.ip);
            t.closing += 1;
            e.evict.notify_one();
            metrics::counter!("moe_connections_evicted_total").increment(1);
        }
        let id = t.next;
        t.next += 1;
        let (busy, evict) = (Arc::new(AtomicUsize::new(0)), Arc::new(Notify::new()));
        t.open.insert(id, Entry { ip, opened: Instant::now(), busy: busy.clone(), evict: evict.clone() });
        *t.per_ip.entry(ip).or_default() += 1;
        Admit::In { id, busy, evict }
    }

    fn forget_ip(t: &mut Table, ip: IpAddr) {
        if let Some(n) = t.per_ip.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                t.per_ip.remove(&ip);
            }
        }
    }

    /// The connection `id` has closed (`evicted`: it had been taken out of the table already).
    fn closed(&self, id: u64, evicted: bool) {
        let mut t = self.lock();
        if evicted {
            t.closing -= 1;
        } else if let Some(e) = t.open.remove(&id) {
            Self::forget_ip(&mut t, e.ip);
        }
    }
}

/// Counts a request as inside the service for as long as it lives (also when cancelled).
struct Busy(Arc<AtomicUsize>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Write a refusal and close, without holding the accept loop.
fn refuse(tasks: &mut JoinSet<()>, mut stream: TcpStream, why: &'static str) {
    tasks.spawn(async move {
        let _ = tokio::time::timeout(Duration::from_secs(1), stream.write_all(&refusal(why))).await;
        let _ = stream.shutdown().await;
    });
}

/// Serve `router` on `listener` until `shutdown` resolves, then wait (at most `drain`) for the
/// connections still open to finish their requests, answering new ones 503 meanwhile.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: Connections,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let slots = Arc::new(Slots {
        table: Mutex::default(),
        max: limits.max_connections.max(1),
        per_client: limits.max_connections_per_client,
    });
    // The runtime's worker count (`moe serve --http-threads`), for operators sizing it.
    metrics::gauge!("moe_http_threads").set(tokio::runtime::Handle::current().metrics().num_workers() as f64);
    let (stop_tx, stop_rx) = watch::channel(false);
    // HTTP/1 only: protocol detection would wait for a first byte with no deadline at all.
    let mut builder = auto::Builder::new(TokioExecutor::new()).http1_only();
    builder
        .http1()
        .max_headers(PARSER_MAX_HEADERS)
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_millis(limits.header_read_timeout_ms.max(1)));
    let builder = Arc::new(builder);
    let header_timeout = Duration::from_millis(limits.header_read_timeout_ms.max(1));
    let mut tasks = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        while tasks.try_join_next().is_some() {}
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning, keep serving the open ones.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let (id, busy, evict) = match slots.admit(peer.ip().to_canonical()) {
            Admit::In { id, busy, evict } => (id, busy, evict),
            Admit::Refused(why) => {
                metrics::counter!("moe_connections_refused_total").increment(1);
                refuse(&mut tasks, stream, why);
                continue;
            }
        };
        let (builder, router, slots, stop) = (builder.clone(), router.clone(), slots.clone(), stop_rx.clone());
        tasks.spawn(async move {
            let evicted = connection(stream, &builder, router, busy, evict, stop, header_timeout).await;
            slots.closed(id, evicted);
        });
    }
    let _ = stop_tx.send(true);
    drain(&listener, &mut tasks, Duration::from_millis(limits.drain_ms)).await;
    Ok(())
}

/// The start of an HTTP/2 connection (its preface): this server speaks HTTP/1.1 only.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0";

/// Serve one connection until it closes; true when it was evicted to make room.
async fn connection(
    stream: TcpStream,
    builder: &auto::Builder<TokioExecutor>,
    router: Router,
    busy: Arc<AtomicUsize>,
    evict: Arc<Notify>,
    mut stop: watch::Receiver<bool>,
    header_timeout: Duration,
) -> bool {
    // An HTTP/2 preface would get no answer from the HTTP/1 parser: look at the first bytes.
    let mut first = [0u8; H2_PREFACE.len()];
    let peeked = tokio::select! {
        n = tokio::time::timeout(header_timeout, stream.peek(&mut first)) => match n {
            Ok(Ok(n)) => n,
            // Nothing arrived within the header deadline (or the socket failed): close it.
            _ => return false,
        },
        _ = evict.notified() => return true,
        _ = stop.wait_for(|s| *s) => return false,
    };
    if peeked == first.len() && first == H2_PREFACE {
        let mut stream = stream;
        let body = r#"{"error":{"code":"http_version_not_supported","message":"this server speaks HTTP/1.1 only"}}"#;
        let answer = format!(
            "HTTP/1.1 505 HTTP Version Not Supported\r\ncontent-type: application/json\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        let _ = tokio::time::timeout(Duration::from_secs(1), stream.write_all(answer.as_bytes())).await;
        let _ = stream.shutdown().await;
        return false;
    }
    let service = tower::service_fn(move |req: Request<hyper::body::Incoming>| {
        busy.fetch_add(1, Ordering::AcqRel);
        let guard = Busy(busy.clone());
        let router = router.clone();
        async move {
            // HTTP/1.1 requires a Host header (RFC 9112 3.2).
            if req.version() == axum::http::Version::HTTP_11 && !req.headers().contains_key(axum::http::header::HOST) {
                return Ok(
                    super::error::ApiError::bad_request("an HTTP/1.1 request needs a Host header").into_response()
                );
            }
            let answer = router.oneshot(req.map(axum::body::Body::new)).await;
            drop(guard);
            answer
        }
    });
    let conn =
        builder.serve_connection(TokioIo::new(JsonProtocolErrors::new(stream)), TowerToHyperService::new(service));
    tokio::pin!(conn);
    let evicted = tokio::select! {
        _ = conn.as_mut() => return false,
        _ = evict.notified() => true,
        _ = stop.wait_for(|s| *s) => false,
    };
    // Let a request in progress finish; an idle connection closes at once.
    conn.as_mut().graceful_shutdown();
    let _ = conn.await;
    evicted
}

/// Until every connection has finished (or `within` passed): keep accepting, and answer each new
/// connection 503 with `Connection: close` instead of leaving it to be reset at exit.
async fn drain(listener: &TcpListener, tasks: &mut JoinSet<()>, within: Duration) {
    let deadline = tokio::time::Instant::now() + within;
    let mut refusals = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => if let Ok((stream, _)) = accepted {
                refuse(&mut refusals, stream, SHUTTING_DOWN);
            },
            done = tasks.join_next() => if done.is_none() { break },
            _ = tokio::time::sleep_until(deadline) => {
                tracing::warn!(after_ms = within.as_millis() as u64, "connections still open at shutdown were closed");
                break;
            }
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), async { while refusals.join_next().await.is_some() {} }).await;
}
