//! The accept loop, with connection hygiene that `axum::serve` does not offer:
//! * at most `--max-connections` open; when full, the connection that costs most and gives least
//!   is closed at once to make room (no request in the service: silent, half a head, or idle
//!   between keep-alive requests; then a body slower than `--min-body-rate` after
//!   `--slow-body-grace-ms`; the table and its rule are `slots`), and only with none of those is
//!   the new one answered a JSON 503 and closed;
//! * at most `--max-connections-per-client` from one address (JSON 503 above), so one client
//!   cannot take every slot;
//! * a deadline for a request's headers that also bounds idle keep-alive connections (hyper closes
//!   the connection), and body deadlines between frames and in all (`deadline`, JSON 408);
//! * a graceful shutdown: requests in flight finish (at most `--shutdown-drain-ms`) with
//!   `Connection: close`, a request sent on a kept-alive connection meanwhile gets a JSON 503 with
//!   `Connection: close`, new connections too; none is reset.
//!
//! hyper's own answers to requests it cannot parse get the JSON error shape (`protocol_errors`).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tower::ServiceExt;

use super::error::ApiError;
use super::protocol_errors::JsonProtocolErrors;
use super::slots::{Admit, Answering, Progress, Slots, SlowBody, Ticket};
use clap::Args;
use moe_core::config::clap_defaults;

/// Header fields the HTTP/1 parser accepts (hyper's default is 100): above `super::limits::MAX_HEADERS`
/// the router answers a JSON 431 itself; above this, hyper answers 431 (given the JSON error body by
/// `protocol_errors`).
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

const SHUTTING_DOWN: &str = "the service is shutting down";

/// After a shutdown signal, how long a kept-alive connection with no request stays open, so that
/// a request its client sends meanwhile is answered 503 with `Connection: close` instead of
/// meeting a closed socket.
const LINGER_AT_SHUTDOWN: Duration = Duration::from_millis(1000);

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
    let slow = SlowBody { grace: Duration::from_millis(limits.slow_body_grace_ms), min_rate: limits.min_body_rate };
    let slots = Arc::new(Slots::new(limits.max_connections, limits.max_connections_per_client, slow));
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
        slots.wait_for_closing(Duration::from_millis(100)).await;
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
        let ticket = match slots.admit(peer.ip().to_canonical()) {
            Admit::In(ticket) => ticket,
            Admit::Refused(why) => {
                metrics::counter!("moe_connections_refused_total").increment(1);
                refuse(&mut tasks, stream, why);
                continue;
            }
        };
        let (builder, router, slots, stop) = (builder.clone(), router.clone(), slots.clone(), stop_rx.clone());
        tasks.spawn(async move {
            let id = ticket.id;
            let evicted = connection(stream, &builder, router, &slots, ticket, stop, header_timeout).await;
            slots.closed(id, evicted);
        });
    }
    let _ = stop_tx.send(true);
    drain(&listener, &mut tasks, Duration::from_millis(limits.drain_ms)).await;
    Ok(())
}

/// The start of an HTTP/2 connection (its preface): this server speaks HTTP/1.1 only.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0";

/// What a connection's first bytes say, before the HTTP/1 parser sees them.
enum Opening {
    Http1,
    Http2Preface,
    /// Nothing within the header deadline, a failed socket, an eviction (true) or shutdown.
    Closed(bool),
}

async fn opening(stream: &TcpStream, ticket: &Ticket, stop: &mut watch::Receiver<bool>, within: Duration) -> Opening {
    let mut first = [0u8; H2_PREFACE.len()];
    tokio::select! {
        n = tokio::time::timeout(within, stream.peek(&mut first)) => match n {
            Ok(Ok(n)) if n == first.len() && first == H2_PREFACE => Opening::Http2Preface,
            Ok(Ok(_)) => Opening::Http1,
            _ => Opening::Closed(false),
        },
        _ = ticket.evict.notified() => Opening::Closed(true),
        _ = stop.wait_for(|s| *s) => Opening::Closed(false),
    }
}

/// Answer an HTTP/2 preface with a raw JSON 505 and close.
async fn refuse_http2(mut stream: TcpStream) {
    let body = r#"{"error":{"code":"http_version_not_supported","message":"this server speaks HTTP/1.1 only"}}"#;
    let answer = format!(
        "HTTP/1.1 505 HTTP Version Not Supported\r\ncontent-type: application/json\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(1), stream.write_all(answer.as_bytes())).await;
    let _ = stream.shutdown().await;
}

/// Serve one connection until it closes; true when it was evicted to make room.
async fn connection(
    stream: TcpStream,
    builder: &auto::Builder<TokioExecutor>,
    router: Router,
    slots: &Arc<Slots>,
    ticket: Ticket,
    mut stop: watch::Receiver<bool>,
    header_timeout: Duration,
) -> bool {
    // An HTTP/2 preface would get no answer from the HTTP/1 parser: look at the first bytes.
    match opening(&stream, &ticket, &mut stop, header_timeout).await {
        Opening::Http1 => {}
        Opening::Http2Preface => {
            refuse_http2(stream).await;
            return false;
        }
        Opening::Closed(evicted) => return evicted,
    }
    let (slots2, progress, stop2) = (slots.clone(), ticket.progress.clone(), stop.clone());
    let service = tower::service_fn(move |req| {
        let answer = handle(router.clone(), slots2.clone(), progress.clone(), stop2.clone(), req);
        async move { Ok::<_, std::convert::Infallible>(answer.await) }
    });
    let conn =
        builder.serve_connection(TokioIo::new(JsonProtocolErrors::new(stream)), TowerToHyperService::new(service));
    tokio::pin!(conn);
    let evicted = tokio::select! {
        _ = conn.as_mut() => return false,
        _ = ticket.evict.notified() => true,
        _ = stop.wait_for(|s| *s) => false,
    };
    if evicted && slots.still_evictable(&ticket.progress) {
        // Nothing of it is being served (no request, or a body too slow): close now. A graceful
        // close would wait for the rest of a half-sent head or body.
        return true;
    }
    if !evicted {
        // Shutting down: a request sent on this kept-alive connection meanwhile is answered 503
        // with `Connection: close` (see `request_service`); then it closes between requests.
        let _ = tokio::time::timeout(LINGER_AT_SHUTDOWN, conn.as_mut()).await;
    }
    // Let a request in progress finish; an idle connection closes at once.
    conn.as_mut().graceful_shutdown();
    let _ = conn.await;
    evicted
}

/// One request of a connection: it counts as inside the service (its body counted) until its
/// answer has been sent. Once shutdown has begun, a new request is answered 503 at once and every
/// answer closes the connection.
async fn handle(
    router: Router,
    slots: Arc<Slots>,
    progress: Arc<Progress>,
    stop: watch::Receiver<bool>,
    req: Request<hyper::body::Incoming>,
) -> Response {
    let (parts, body) = req.into_parts();
    let (busy, body) = slots.request(&progress, Body::new(body));
    let req = Request::from_parts(parts, body);
    let mut answer = if *stop.borrow() {
        ApiError::Core(moe_core::Error::Overloaded(SHUTTING_DOWN.into())).into_response()
    } else if req.version() == axum::http::Version::HTTP_11 && !req.headers().contains_key(header::HOST) {
        // HTTP/1.1 requires a Host header (RFC 9112 3.2).
        ApiError::bad_request("an HTTP/1.1 request needs a Host header").into_response()
    } else {
        router.oneshot(req).await.unwrap_or_else(|never| match never {})
    };
    if *stop.borrow() {
        answer.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    answer.map(|inner| Body::new(Answering { inner, busy }))
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

/// Connection hygiene of the server: its flags (`moe serve`), under the "Network" heading.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Network")]
pub struct Connections {
    /// Most connections open at once; when full, an idle or slow one makes room.
    ///
    /// Closed first: a connection with no request being served (nothing sent yet, half a request
    /// head, or idle between keep-alive requests); then one whose request body arrives slower than
    /// --min-body-rate after --slow-body-grace-ms, or is still within that grace; from the
    /// address holding the most connections, oldest first, and only of an address holding more
    /// than the newcomer's (or idle ones of its own). With none, the new connection is answered
    /// 503 and closed (docs/OPERATIONS.md, "What a slow client costs").
    #[arg(long, env = "MOE_MAX_CONNECTIONS", default_value_t = 1024)]
    pub max_connections: usize,
    /// Most connections open at once from one client address (0: no cap; 503 above).
    ///
    /// Behind a proxy or load balancer every request comes from its address: raise it or set 0.
    #[arg(long, env = "MOE_MAX_CONNECTIONS_PER_CLIENT", default_value_t = 128)]
    pub max_connections_per_client: usize,
    /// Deadline for a request's headers, in ms (the connection is closed after it).
    ///
    /// Also the longest a keep-alive connection may sit idle.
    #[arg(long, env = "MOE_HEADER_READ_TIMEOUT_MS", default_value_t = 10_000)]
    pub header_read_timeout_ms: u64,
    /// How long a request body may arrive before its rate is judged, in ms.
    ///
    /// Within it a body is closed to make room only for a client whose address holds fewer
    /// connections than the body's.
    #[arg(long, env = "MOE_SLOW_BODY_GRACE_MS", default_value_t = 2_000)]
    pub slow_body_grace_ms: u64,
    /// Bytes a second a body must average to keep its slot in a full table (0: any).
    ///
    /// Only when --max-connections is reached, and only after --slow-body-grace-ms: a body below
    /// this average since its request head may be closed for a new connection.
    #[arg(long, env = "MOE_MIN_BODY_RATE", default_value_t = 1_024)]
    pub min_body_rate: u64,
    /// At shutdown, how long requests in flight may take to finish, in milliseconds.
    #[arg(long, env = "MOE_SHUTDOWN_DRAIN_MS", default_value_t = 10_000)]
    pub drain_ms: u64,
}

impl Default for Connections {
    /// The flags' own defaults (written once, in the `#[arg]` attributes), env variables ignored.
    fn default() -> Self {
        clap_defaults()
    }
}
