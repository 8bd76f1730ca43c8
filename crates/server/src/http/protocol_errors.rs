//! hyper answers a request it cannot parse by itself, before any router sees it: a request line or
//! header that is not HTTP/1.1 (400), more header fields than its parser holds (431), a target
//! over its 64 KiB limit (414). That answer is a bare head — `connection: close`,
//! `content-length: 0`, an optional `date` — and hyper has no hook to change it (hyper 1.x
//! `Server::on_error`). [`JsonProtocolErrors`] wraps a connection's socket, recognises exactly
//! that head in what hyper writes, and writes the same status with the service's JSON error body
//! instead, so every answer the server gives has the one error shape.
//!
//! A request target with a `#fragment` is not valid HTTP/1.1 (RFC 9112 3.2), and the URI parser
//! would drop the fragment silently (`DELETE /experts/Travel#x` deleted Travel): the wrapper
//! watches the request line of each request it reads (the first bytes of a connection and the
//! first read after each final answer) and turns a `#` in its target into a byte the parser
//! refuses, so such a request gets the JSON 400 below and nothing is routed.
//!
//! Invariants: only a write that is *one whole canned head* is replaced (status line 400 / 414 /
//! 431, no header but those three, length 0): every answer of the router carries a content type
//! and so never matches, and any other write passes through byte for byte. The replacement is
//! written out completely before any later write, flush or shutdown goes through.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::limits::{MAX_HEADER_BYTES, MAX_HEADERS, MAX_URI_BYTES};

/// A socket whose protocol-error answers from hyper carry the JSON error shape.
pub struct JsonProtocolErrors<S> {
    inner: S,
    /// Where the reader is in the current request line.
    line: Line,
    /// A replacement answer and how much of it is written.
    pending: Vec<u8>,
    sent: usize,
}

impl<S> JsonProtocolErrors<S> {
    pub fn new(inner: S) -> Self {
        JsonProtocolErrors { inner, line: Line::Method, pending: Vec::new(), sent: 0 }
    }
}

/// The part of a request line the next byte read belongs to.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Line {
    Method,
    Target,
    /// Past the target: the rest of the head and the body are never changed.
    Done,
}

/// A byte the HTTP/1 parser refuses in a request target (DEL).
const REFUSED: u8 = 0x7f;

impl Line {
    /// Scan freshly read bytes: a `#` in the target becomes `REFUSED`.
    fn scan(mut self, bytes: &mut [u8]) -> Line {
        for b in bytes {
            self = match (self, *b) {
                (Line::Done, _) => return Line::Done,
                (Line::Method, b' ') => Line::Target,
                (Line::Method, b'\r' | b'\n') => Line::Done,
                (Line::Target, b' ' | b'\r' | b'\n') => Line::Done,
                (Line::Target, b'#') => {
                    *b = REFUSED;
                    Line::Target
                }
                (state, _) => state,
            };
        }
        self
    }
}

/// Whether a write is an answer after which the next read starts a request (not an interim
/// `100 Continue`, after which the body follows).
fn ends_an_exchange(buf: &[u8]) -> bool {
    !buf.starts_with(b"HTTP/1.1 100 ")
}

/// The status, code and message for a write that is exactly one of hyper's canned heads.
fn canned(buf: &[u8]) -> Option<(&'static str, &'static str, String)> {
    // Cheap refusals first: this runs on every write of every connection.
    if buf.len() > 256 || !buf.starts_with(b"HTTP/1.1 4") || !buf.ends_with(b"\r\n\r\n") {
        return None;
    }
    let head = std::str::from_utf8(buf).ok()?.strip_suffix("\r\n\r\n")?;
    let mut lines = head.split("\r\n");
    let (status, code, message) = match lines.next()? {
        "HTTP/1.1 400 Bad Request" => (
            "400 Bad Request",
            "bad_request",
            "the request is not valid HTTP/1.1: its request line or a header field could not be parsed".to_string(),
        ),
        "HTTP/1.1 414 URI Too Long" => (
            "414 URI Too Long",
            "uri_too_long",
            format!(
                "the request target is longer than the HTTP parser holds (at most {MAX_URI_BYTES} bytes are served)"
            ),
        ),
        "HTTP/1.1 431 Request Header Fields Too Large" => (
            "431 Request Header Fields Too Large",
            "headers_too_large",
            format!(
                "the request head is larger than the HTTP parser holds (at most {MAX_HEADERS} fields and \
                 {MAX_HEADER_BYTES} bytes are served)"
            ),
        ),
        _ => return None,
    };
    let mut closes = false;
    let mut empty = false;
    for line in lines {
        let (name, value) = line.split_once(": ")?;
        match name.to_ascii_lowercase().as_str() {
            "connection" if value == "close" => closes = true,
            "content-length" if value == "0" => empty = true,
            "date" => {}
            _ => return None,
        }
    }
    (closes && empty).then_some((status, code, message))
}

/// The JSON answer that replaces a canned head.
fn replacement(buf: &[u8]) -> Option<Vec<u8>> {
    let (status, code, message) = canned(buf)?;
    metrics::counter!("moe_errors_total", "code" => code).increment(1);
    let body = serde_json::json!({"error": {"code": code, "message": message}}).to_string();
    Some(
        format!(
            "HTTP/1.1 {status}\r\ncontent-type: application/json\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes(),
    )
}

impl<S: AsyncWrite + Unpin> JsonProtocolErrors<S> {
    /// Write out a pending replacement; ready once nothing is pending.
    fn poll_pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.sent < self.pending.len() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.pending[self.sent..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.sent += n;
        }
        self.pending = Vec::new();
        self.sent = 0;
        Poll::Ready(Ok(()))
    }

    /// Take `buf` as written if it is a canned head (its replacement is then pending).
    fn intercept(&mut self, cx: &mut Context<'_>, buf: &[u8]) -> Option<Poll<io::Result<usize>>> {
        let answer = replacement(buf)?;
        self.pending = answer;
        self.sent = 0;
        // Start writing now; whatever is left goes out on the next write, flush or shutdown.
        Some(match self.poll_pending(cx) {
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            _ => Poll::Ready(Ok(buf.len())),
        })
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for JsonProtocolErrors<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
        if this.line != Line::Done {
            this.line = this.line.scan(&mut buf.filled_mut()[before..]);
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for JsonProtocolErrors<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.poll_pending(cx))?;
        if let Some(done) = this.intercept(cx, buf) {
            return done;
        }
        if ends_an_exchange(buf) {
            this.line = Line::Method;
        }
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.poll_pending(cx))?;
        // A canned head is hyper's head buffer alone: one non-empty slice.
        let mut filled = bufs.iter().filter(|b| !b.is_empty());
        if let (Some(only), None) = (filled.next(), filled.next())
            && let Some(done) = this.intercept(cx, only)
        {
            return done;
        }
        if bufs.iter().find(|b| !b.is_empty()).is_some_and(|b| ends_an_exchange(b)) {
            this.line = Line::Method;
        }
        Pin::new(&mut this.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_pending(cx))?;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_pending(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fragment_in_the_target_is_made_unparseable_and_nothing_else_changes() {
        let mut req = b"DELETE /experts/Travel#x HTTP/1.1\r\nHost: a#b\r\n\r\n{\"text\": \"#tag\"}".to_vec();
        assert_eq!(Line::Method.scan(&mut req), Line::Done);
        assert_eq!(&req[..25], b"DELETE /experts/Travel\x7fx ");
        assert!(req.ends_with(b"Host: a#b\r\n\r\n{\"text\": \"#tag\"}"));
        // A request line split across reads is followed across them.
        let (mut a, mut b) = (b"GET /x".to_vec(), b"#y HTTP/1.1\r\n".to_vec());
        let state = Line::Method.scan(&mut a);
        assert_eq!(state, Line::Target);
        assert_eq!(state.scan(&mut b), Line::Done);
        assert_eq!(b[0], REFUSED);
        assert!(!ends_an_exchange(b"HTTP/1.1 100 Continue\r\n\r\n"));
        assert!(ends_an_exchange(b"HTTP/1.1 200 OK\r\n"));
    }

    #[test]
    fn only_whole_canned_heads_are_replaced() {
        let head = b"HTTP/1.1 400 Bad Request\r\nconnection: close\r\ncontent-length: 0\r\ndate: Fri, 27 Nov 2026 16:21:53 GMT\r\n\r\n";
        let answer = String::from_utf8(replacement(head).unwrap()).unwrap();
        assert!(answer.starts_with("HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\n"));
        let body: serde_json::Value = serde_json::from_str(answer.split("\r\n\r\n").nth(1).unwrap()).unwrap();
        assert_eq!(body["error"]["code"], "bad_request");
        assert!(
            canned(b"HTTP/1.1 431 Request Header Fields Too Large\r\nconnection: close\r\ncontent-length: 0\r\n\r\n")
                .is_some()
        );
        // The router's own answers, a body after the head, a partial head: untouched.
        for other in [
            &b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"[..],
            b"HTTP/1.1 400 Bad Request\r\nconnection: close\r\ncontent-length: 0\r\n\r\nx",
            b"HTTP/1.1 400 Bad Request\r\nconnection: close\r\ncontent-length: 0\r\n",
            b"HTTP/1.1 400 Bad Request\r\nconnection: keep-alive\r\ncontent-length: 0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 0\r\n\r\n",
            b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n",
        ] {
            assert!(canned(other).is_none(), "{}", String::from_utf8_lossy(other));
        }
    }
}
