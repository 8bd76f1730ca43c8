//! The connection table behind `--max-connections`: who is open, from which address, and how far
//! each connection's current request has come, so that a full table makes room by closing the
//! connection that costs the most and gives the least.
//!
//! A connection's standing, from most to least evictable:
//! 1. **No request in the service** (`Progress::busy == 0`): before its first complete head (silent,
//!    or half a head), or between keep-alive requests. Nothing is lost by closing it.
//! 2. **A slow body**: a request whose head arrived more than `--slow-body-grace-ms` ago and whose
//!    body has come in slower than `--min-body-rate` bytes a second on average since.
//! 3. **A young body**: a body still arriving, its head younger than the grace (not judged yet).
//! 4. **Serving**: a request being handled or answered, or a body that arrived at the floor rate
//!    past its grace. Never evicted.
//!
//! When the table is full, one evictable connection is closed at once (no graceful close: it has
//! nothing in flight worth finishing): from the address that holds the most connections, the most
//! evictable standing, oldest first, and only of an address that holds more than the newcomer's
//! or, with no request, of the newcomer's own (`victim`). With none evictable the new connection is refused (JSON 503).
//!
//! Invariant: every open connection is in the table or counted in `closing` (evicted, its task not
//! yet ended); `closing` is bounded by `max` too, so evictions cannot pile up closing sockets.

use std::collections::HashMap;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes, HttpBody};
use http_body::{Frame, SizeHint};
use tokio::sync::Notify;

/// How far one connection's current request has come (written by its task, read at admission).
#[derive(Default)]
pub struct Progress {
    /// Requests of this connection inside the service: from a complete head until its answer's
    /// body has been sent (or dropped).
    busy: AtomicUsize,
    /// While a request body is being received: when its head arrived, in ms since the table's
    /// epoch plus one (0: no body pending).
    body_since: AtomicU64,
    /// Body bytes received since `body_since`.
    body_bytes: AtomicU64,
}

/// When a request body counts as slow.
#[derive(Debug, Clone, Copy)]
pub struct SlowBody {
    /// A body is never slow before this much time has passed since its head.
    pub grace: Duration,
    /// Bytes a second a body must average after that (0: bodies are never slow).
    pub min_rate: u64,
}

/// A connection's standing at admission (lower: evicted first).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Standing {
    NoRequest,
    SlowBody,
    /// A body still arriving, younger than the grace: not judged yet.
    YoungBody,
    Serving,
}

impl Progress {
    fn standing(&self, now_ms: u64, slow: SlowBody) -> Standing {
        if self.busy.load(Ordering::Acquire) == 0 {
            return Standing::NoRequest;
        }
        let since = self.body_since.load(Ordering::Acquire);
        if since == 0 || slow.min_rate == 0 {
            return Standing::Serving;
        }
        let elapsed = now_ms.saturating_sub(since - 1);
        if elapsed <= slow.grace.as_millis() as u64 {
            return Standing::YoungBody;
        }
        // bytes / seconds < min_rate, in integers.
        let bytes = self.body_bytes.load(Ordering::Acquire);
        if bytes.saturating_mul(1000) < slow.min_rate.saturating_mul(elapsed) {
            Standing::SlowBody
        } else {
            Standing::Serving
        }
    }
}

/// One open connection as the table sees it.
struct Entry {
    ip: IpAddr,
    opened: Instant,
    progress: Arc<Progress>,
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
pub enum Admit {
    In(Ticket),
    Refused(&'static str),
}

/// An admitted connection's handles: its id in the table, its progress, its eviction notice.
pub struct Ticket {
    pub id: u64,
    pub progress: Arc<Progress>,
    pub evict: Arc<Notify>,
}

pub const FULL: &str = "too many open connections (--max-connections / MOE_MAX_CONNECTIONS)";
pub const CLIENT_FULL: &str =
    "too many open connections from this client (--max-connections-per-client / MOE_MAX_CONNECTIONS_PER_CLIENT)";

pub struct Slots {
    table: Mutex<Table>,
    /// Told when an evicted connection has finished closing.
    drained: Notify,
    max: usize,
    per_client: usize,
    slow: SlowBody,
    epoch: Instant,
}

impl Slots {
    pub fn new(max: usize, per_client: usize, slow: SlowBody) -> Slots {
        Slots {
            table: Mutex::default(),
            drained: Notify::new(),
            max: max.max(1),
            per_client,
            slow,
            epoch: Instant::now(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        moe_core::error::lock(&self.table)
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Admit a connection from `ip`, evicting the most evictable one when the table is full.
    pub fn admit(&self, ip: IpAddr) -> Admit {
        let mut t = self.lock();
        if self.per_client > 0 && t.per_ip.get(&ip).copied().unwrap_or(0) >= self.per_client {
            return Admit::Refused(CLIENT_FULL);
        }
        if t.open.len() >= self.max {
            let Some(victim) = self.victim(&t, ip).filter(|_| t.closing < self.max) else {
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
        let (progress, evict) = (Arc::new(Progress::default()), Arc::new(Notify::new()));
        t.open.insert(id, Entry { ip, opened: Instant::now(), progress: progress.clone(), evict: evict.clone() });
        *t.per_ip.entry(ip).or_default() += 1;
        Admit::In(Ticket { id, progress, evict })
    }

    /// Wait (at most `within`) while as many evicted connections are still closing as the table
    /// holds: the accept loop stops taking new ones meanwhile (they wait in the listen backlog)
    /// rather than refusing them while their slots are being freed.
    pub async fn wait_for_closing(&self, within: Duration) {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let drained = self.drained.notified();
            if self.lock().closing < self.max {
                return;
            }
            if tokio::time::timeout_at(deadline, drained).await.is_err() {
                return;
            }
        }
    }

    /// The connection to close for a newcomer from `ip`, if any is evictable: from the address
    /// holding the most connections, the most evictable standing, oldest first. A newcomer may
    /// close a connection of an address that, once it is admitted, still holds more than its own
    /// does (no request, a slow body, or a body still within its grace), or one of its own address
    /// with no request (a client behind one proxy address makes room among its own idle ones);
    /// never a body of its own address. So slow clients reconnecting cannot close a real client's
    /// fresh connection (it holds fewer), nor close each other's bodies, nor hold the table with
    /// bodies kept young by reconnecting within the grace.
    fn victim(&self, t: &Table, ip: IpAddr) -> Option<u64> {
        let now = self.now_ms();
        let mine = t.per_ip.get(&ip).copied().unwrap_or(0);
        t.open
            .iter()
            .filter_map(|(id, e)| {
                let held = t.per_ip.get(&e.ip).copied().unwrap_or(0);
                let standing = e.progress.standing(now, self.slow);
                let heavier = held > mine + 1;
                let evictable = match standing {
                    Standing::NoRequest => heavier || e.ip == ip,
                    Standing::SlowBody | Standing::YoungBody => heavier,
                    Standing::Serving => false,
                };
                evictable.then_some((std::cmp::Reverse(held), standing, e.opened, *id))
            })
            .min()
            .map(|(.., id)| id)
    }

    /// Whether a connection told to close may be cut at once: it is still evictable (a request
    /// that started since the notice is let finish instead).
    pub fn still_evictable(&self, progress: &Progress) -> bool {
        progress.standing(self.now_ms(), self.slow) != Standing::Serving
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
    pub fn closed(&self, id: u64, evicted: bool) {
        let mut t = self.lock();
        if evicted {
            t.closing -= 1;
            self.drained.notify_one();
        } else if let Some(e) = t.open.remove(&id) {
            Self::forget_ip(&mut t, e.ip);
        }
    }

    /// A request head of this connection arrived: it is inside the service until the returned
    /// guard (moved into its answer's body) is dropped; its body, counted, is returned.
    pub fn request(&self, progress: &Arc<Progress>, body: Body) -> (Busy, Body) {
        progress.busy.fetch_add(1, Ordering::AcqRel);
        let busy = Busy(progress.clone());
        if body.is_end_stream() {
            return (busy, body);
        }
        progress.body_bytes.store(0, Ordering::Release);
        progress.body_since.store(self.now_ms() + 1, Ordering::Release);
        (busy, Body::new(Counted { inner: body, progress: progress.clone() }))
    }
}

/// Counts a request as inside the service for as long as it lives (also when cancelled).
pub struct Busy(Arc<Progress>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.busy.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A request body that records the bytes received; the body is no longer pending once it ends,
/// fails or is dropped.
struct Counted {
    inner: Body,
    progress: Arc<Progress>,
}

impl Counted {
    fn done(&self) {
        self.progress.body_since.store(0, Ordering::Release);
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.done();
    }
}

impl HttpBody for Counted {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    self.progress.body_bytes.fetch_add(data.len() as u64, Ordering::AcqRel);
                }
                if self.inner.is_end_stream() {
                    self.done();
                }
            }
            Poll::Ready(_) => self.done(),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// An answer's body that keeps its request counted as inside the service until it is sent.
pub struct Answering {
    pub inner: Body,
    pub busy: Busy,
}

impl HttpBody for Answering {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SLOW: SlowBody = SlowBody { grace: Duration::from_millis(1000), min_rate: 100 };

    fn with(busy: usize, since: u64, bytes: u64) -> Progress {
        let p = Progress::default();
        p.busy.store(busy, Ordering::Release);
        p.body_since.store(since, Ordering::Release);
        p.body_bytes.store(bytes, Ordering::Release);
        p
    }

    #[test]
    fn standings_follow_the_request_and_its_body_rate() {
        // No request: idle or half a head.
        assert_eq!(with(0, 0, 0).standing(5_000, SLOW), Standing::NoRequest);
        // A request with no body pending is served.
        assert_eq!(with(1, 0, 0).standing(5_000, SLOW), Standing::Serving);
        // Head at 1 000 ms (stored +1): within the grace a body is young, not judged.
        assert_eq!(with(1, 1_001, 0).standing(2_000, SLOW), Standing::YoungBody);
        // 3 s after the head, 299 bytes is under 100 B/s, 300 is not.
        assert_eq!(with(1, 1_001, 299).standing(4_000, SLOW), Standing::SlowBody);
        assert_eq!(with(1, 1_001, 300).standing(4_000, SLOW), Standing::Serving);
        // A rate of 0 turns the floor off.
        assert_eq!(with(1, 1_001, 0).standing(9_000, SlowBody { min_rate: 0, ..SLOW }), Standing::Serving);
    }

    #[test]
    fn a_full_table_evicts_no_request_first_then_slow_bodies_then_refuses() {
        let slots = Slots::new(3, 0, SlowBody { grace: Duration::ZERO, min_rate: 1_000_000 });
        let (slow_ip, new_ip): (IpAddr, IpAddr) = ([127, 0, 0, 1].into(), [127, 0, 0, 2].into());
        let admit = |ip| match slots.admit(ip) {
            Admit::In(t) => t,
            Admit::Refused(w) => panic!("refused: {w}"),
        };
        let t: Vec<Ticket> = (0..3).map(|_| admit(slow_ip)).collect();
        // 0: serving (no body pending), 1: a slow body, 2: no request.
        t[0].progress.busy.store(1, Ordering::Release);
        t[1].progress.busy.store(1, Ordering::Release);
        t[1].progress.body_since.store(1, Ordering::Release);
        std::thread::sleep(Duration::from_millis(5));
        let open = |id: u64| slots.lock().open.contains_key(&id);
        // The slow body's own address holds the whole table: it takes no body's slot.
        let own = admit(slow_ip);
        own.progress.busy.store(1, Ordering::Release);
        assert!(!open(t[2].id) && open(t[1].id), "its own idle connection made room, not the body");
        assert!(matches!(slots.admit(slow_ip), Admit::Refused(FULL)), "no idle left for the slow address");
        // Another address, holding fewer, takes the slow body's slot; then nothing is left.
        admit(new_ip).progress.busy.store(1, Ordering::Release);
        assert!(!open(t[1].id), "the slow body made room for another address");
        assert!(matches!(slots.admit(new_ip), Admit::Refused(FULL)), "all serving: refused");
    }

    #[test]
    fn the_address_holding_most_connections_gives_up_a_slot_first() {
        let slots = Slots::new(4, 0, SlowBody { grace: Duration::ZERO, min_rate: 0 });
        let ips: [IpAddr; 3] = [[127, 0, 0, 1].into(), [127, 0, 0, 2].into(), [127, 0, 0, 3].into()];
        let mut held = Vec::new();
        for ip in [ips[0], ips[1], ips[1], ips[1]] {
            let Admit::In(t) = slots.admit(ip) else { panic!("refused") };
            held.push(t);
        }
        // All idle; the oldest is ips[0]'s, but ips[1] holds three.
        let Admit::In(_) = slots.admit(ips[2]) else { panic!("refused") };
        let t = slots.lock();
        assert!(t.open.contains_key(&held[0].id), "the lone client's connection was closed");
        assert!(!t.open.contains_key(&held[1].id), "the heavy address's oldest stays");
    }
}
