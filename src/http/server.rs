//! The accept loop, with connection hygiene that `axum::serve` does not offer: a cap on open
//! connections (one over it gets a JSON 503 and is closed), a deadline for reading a request's
//! headers that also bounds idle keep-alive connections (hyper closes the connection), a per-frame
//! deadline for reading a body (JSON 408, see `app`), and a graceful shutdown that lets requests in
//! flight finish. hyper's own answers to requests it cannot parse get the JSON error shape
//! (`canned`).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use super::canned::JsonProtocolErrors;
use crate::config::Connections;

/// Header fields the HTTP/1 parser accepts (hyper's default is 100): above `super::MAX_HEADERS`
/// the router answers a JSON 431 itself; above this, hyper answers 431 (given the JSON error body by
/// `canned`).
pub const PARSER_MAX_HEADERS: usize = 400;

/// The answer to a connection over `--max-connections`, written raw: the router never sees it.
fn over_capacity() -> Vec<u8> {
    let body = r#"{"error":{"code":"overloaded","message":"too many open connections (--max-connections / MOE_MAX_CONNECTIONS)"}}"#;
    format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Serve `router` on `listener` until `shutdown` resolves, then wait (at most `drain`) for the
/// connections still open to finish their requests.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: Connections,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let graceful = GracefulShutdown::new();
    // HTTP/1 only: protocol detection would wait for a first byte with no deadline at all.
    let mut builder = auto::Builder::new(TokioExecutor::new()).http1_only();
    builder
        .http1()
        .max_headers(PARSER_MAX_HEADERS)
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_millis(limits.header_read_timeout_ms.max(1)));
    let builder = Arc::new(builder);
    tokio::pin!(shutdown);
    loop {
        let (stream, _peer) = tokio::select! {
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
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            metrics::counter!("moe_connections_refused_total").increment(1);
            tokio::spawn(async move {
                let mut stream = stream;
                let _ = tokio::time::timeout(Duration::from_secs(1), stream.write_all(&over_capacity())).await;
                let _ = stream.shutdown().await;
            });
            continue;
        };
        let service = TowerToHyperService::new(router.clone());
        let conn = builder.serve_connection(TokioIo::new(JsonProtocolErrors::new(stream)), service).into_owned();
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            let _ = conn.await;
            drop(slot);
        });
    }
    let drain = Duration::from_millis(limits.drain_ms);
    if tokio::time::timeout(drain, graceful.shutdown()).await.is_err() {
        tracing::warn!(after_ms = limits.drain_ms, "connections still open at shutdown were closed");
    }
    Ok(())
}
