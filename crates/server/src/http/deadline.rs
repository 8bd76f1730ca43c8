//! Deadlines for reading a request body: one between frames (`--body-timeout-ms`) and one for the
//! whole body from the request head on (`--body-deadline-ms`), so that a client trickling a byte
//! now and then cannot hold a request open. A missed deadline is a `BodyTimedOut` error, which the
//! error mapping recognises by its type (408).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes, HttpBody};
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use http_body::{Frame, SizeHint};
use tokio::time::{Instant, Sleep};

/// Which deadline a body missed.
#[derive(Debug, thiserror::Error)]
pub enum BodyTimedOut {
    #[error("no body frame within {0:?}")]
    Frame(Duration),
    #[error("the whole body did not arrive within {0:?}")]
    Total(Duration),
}

/// A body that fails with `BodyTimedOut` once either deadline passes.
pub struct DeadlineBody {
    inner: Body,
    frame: Duration,
    total: Duration,
    next_frame: Pin<Box<Sleep>>,
    all: Pin<Box<Sleep>>,
}

impl DeadlineBody {
    pub fn new(inner: Body, frame: Duration, total: Duration) -> DeadlineBody {
        let now = Instant::now();
        DeadlineBody {
            inner,
            frame,
            total,
            next_frame: Box::pin(tokio::time::sleep_until(now + frame)),
            all: Box::pin(tokio::time::sleep_until(now + total)),
        }
    }
}

impl HttpBody for DeadlineBody {
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        if this.all.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Some(Err(Box::new(BodyTimedOut::Total(this.total)))));
        }
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            let next = Instant::now() + this.frame;
            this.next_frame.as_mut().reset(next);
            return Poll::Ready(frame.map(|r| r.map_err(Into::into)));
        }
        if this.next_frame.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Some(Err(Box::new(BodyTimedOut::Frame(this.frame)))));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Middleware: every request body gets both deadlines (state: between frames, in all).
pub async fn body_deadlines(State((frame, total)): State<(Duration, Duration)>, req: Request, next: Next) -> Response {
    next.run(req.map(|b| Body::new(DeadlineBody::new(b, frame, total)))).await
}

/// Whether an error, or one of its causes, is a missed body deadline.
pub fn is_body_timeout(e: &(dyn std::error::Error + 'static)) -> bool {
    caused_by::<BodyTimedOut>(e)
}

/// Whether an error, or one of its causes, is of type `E` (errors are matched by type, never by
/// their message).
pub fn caused_by<E: std::error::Error + 'static>(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(x) = cur {
        if x.is::<E>() {
            return true;
        }
        cur = x.source();
    }
    false
}
