//! Connection hygiene against slow and idle clients, over real sockets (`http::server`): a capped
//! number of connections (the next one gets a JSON 503), headers that must arrive in time (idle and
//! half-sent connections are closed), bodies that must arrive in time (JSON 408), and a real client
//! served again as soon as the slow ones are gone.

mod common;

use std::time::{Duration, Instant};

use moe::config::{Connections, Limits};
use moe::http::{AppState, app};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn start(limits: Limits, conns: Connections) -> String {
    let core = common::loaded_core(&common::fixture_models(), limits).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let router = app(AppState::new(core));
    tokio::spawn(moe::http::server::serve(listener, router, conns, std::future::pending()));
    addr.to_string()
}

/// Read until the server closes the connection (or `limit` passes); returns what it sent.
async fn read_to_close(s: &mut TcpStream, limit: Duration) -> Option<String> {
    let mut buf = Vec::new();
    match tokio::time::timeout(limit, s.read_to_end(&mut buf)).await {
        Ok(_) => Some(String::from_utf8_lossy(&buf).to_string()),
        Err(_) => None,
    }
}

/// Send a raw request head; the answer must be `status` with the JSON error `code`, then a close.
async fn json_error_for(addr: &str, head: &str, status: &str, code: &str) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(head.as_bytes()).await.unwrap();
    let answer = read_to_close(&mut s, Duration::from_secs(5)).await.expect("answered and closed");
    assert!(answer.starts_with(&format!("HTTP/1.1 {status}")), "{answer}");
    assert!(answer.to_lowercase().contains("content-type: application/json"), "{answer}");
    assert_eq!(json_body(&answer)["error"]["code"], code, "{answer}");
}

fn json_body(response: &str) -> Value {
    serde_json::from_str(response.split("\r\n\r\n").nth(1).unwrap_or("")).unwrap_or(Value::Null)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_cannot_hold_the_server() {
    let conns = Connections { max_connections: 4, header_read_timeout_ms: 400, drain_ms: 1000 };
    let addr = start(Limits::default(), conns).await;
    slow_clients_are_refused_then_dropped(&addr).await;
}

/// The binary itself serves through the same accept loop (it did not until the fleet work: the
/// flags were parsed and ignored, and this attack held `moe serve` open).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_enforces_the_connection_limits() {
    let state = common::state_dir("binary-conns");
    let root = common::fixture_models();
    let envs: [(&str, &std::ffi::OsStr); 4] = [
        ("MOE_MODELS", root.as_os_str()),
        ("MOE_STATE", state.as_os_str()),
        ("MOE_MAX_CONNECTIONS", "4".as_ref()),
        ("MOE_HEADER_READ_TIMEOUT_MS", "400".as_ref()),
    ];
    let server = common::Server::spawn(common::free_port(), &envs, &state.join("serve.log"));
    server.ready(Duration::from_secs(60)).await;
    tokio::time::sleep(Duration::from_millis(500)).await; // the readiness probe's connection closes
    slow_clients_are_refused_then_dropped(&format!("127.0.0.1:{}", server.port)).await;
    drop(server);
    let _ = std::fs::remove_dir_all(state);
}

async fn slow_clients_are_refused_then_dropped(addr: &str) {
    // Four clients hold every slot: two send nothing, two send half a request line.
    let mut slow = Vec::new();
    for i in 0..4 {
        let mut s = TcpStream::connect(addr).await.unwrap();
        if i % 2 == 1 {
            s.write_all(b"POST /classify HTTP/1.1\r\nHost: x\r\nContent-Le").await.unwrap();
        }
        slow.push(s);
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    // A fifth connection is answered at once with the JSON error shape and closed.
    let mut fifth = TcpStream::connect(addr).await.unwrap();
    let answer = read_to_close(&mut fifth, Duration::from_secs(2)).await.expect("the server closes it");
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.to_lowercase().contains("retry-after: 1"), "{answer}");
    assert_eq!(json_body(&answer)["error"]["code"], "overloaded", "{answer}");
    // The slow ones are closed by the header deadline (not held indefinitely).
    let started = Instant::now();
    for s in &mut slow {
        assert!(read_to_close(s, Duration::from_secs(3)).await.is_some(), "a slow client was kept open");
    }
    assert!(started.elapsed() < Duration::from_secs(3));
    // Their slots are free again: a real client is served.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let res = reqwest::Client::new()
        .post(format!("http://{addr}/classify"))
        .json(&serde_json::json!({"text": "how to pack for a trip"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 200);
}

/// Oversized request heads over a real socket: the parser lets them through to the router, which
/// answers in the JSON error shape (hyper alone would answer 431 with an empty body).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_request_heads_get_json_errors() {
    let addr = start(Limits::default(), Connections::default()).await;
    let many: String = (0..150).map(|i| format!("x-extra-{i}: v\r\n")).collect();
    let long = "a".repeat(moe::http::MAX_URI_BYTES + 1);
    for (head, status, code) in [
        (format!("GET /healthz HTTP/1.1\r\nhost: x\r\n{many}connection: close\r\n\r\n"), "431", "headers_too_large"),
        (format!("GET /experts/{long} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"), "414", "uri_too_long"),
    ] {
        json_error_for(&addr, &head, status, code).await;
    }
}

/// Requests the HTTP/1 parser itself refuses (hyper answers them before any router, with an empty
/// body of its own) get the JSON error shape too, and the connection is closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_the_parser_refuses_get_json_errors() {
    let addr = start(Limits::default(), Connections::default()).await;
    let parser_many: String =
        (0..moe::http::server::PARSER_MAX_HEADERS + 50).map(|i| format!("x-{i}: v\r\n")).collect();
    let huge = "a".repeat(70_000);
    for (head, status, code) in [
        ("GARBAGE\r\n\r\n".to_string(), "400", "bad_request"),
        ("GET /a b c HTTP/1.1\r\nhost: x\r\n\r\n".to_string(), "400", "bad_request"),
        ("GET /healthz HTTP/1.1\r\nhost: x\r\nno colon here\r\n\r\n".to_string(), "400", "bad_request"),
        ("GET /healthz HTTP/3.7\r\n\r\n".to_string(), "400", "bad_request"),
        (format!("GET /healthz HTTP/1.1\r\nhost: x\r\n{parser_many}\r\n"), "431", "headers_too_large"),
        (format!("GET /{huge} HTTP/1.1\r\nhost: x\r\n\r\n"), "414", "uri_too_long"),
    ] {
        json_error_for(&addr, &head, status, code).await;
    }
    // The connection wrapper leaves good requests alone, keep-alive included.
    let client = reqwest::Client::new();
    for _ in 0..3 {
        let res = client.get(format!("http://{addr}/healthz")).send().await.unwrap();
        assert_eq!(res.status().as_u16(), 200);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_never_comes_gets_408() {
    let limits = Limits { body_timeout_ms: 300, ..Limits::default() };
    let addr = start(limits, Connections::default()).await;
    let mut s = TcpStream::connect(&addr).await.unwrap();
    // Declares 2 MiB and sends 5 bytes.
    s.write_all(b"POST /classify HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\ncontent-length: 2097152\r\n\r\n{\"tex")
        .await
        .unwrap();
    let started = Instant::now();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await.expect("an answer").unwrap();
    let answer = String::from_utf8_lossy(&buf[..n]).to_string();
    assert!(started.elapsed() < Duration::from_secs(3), "answered after {:?}", started.elapsed());
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert_eq!(json_body(&answer)["error"]["code"], "request_timeout", "{answer}");
}
