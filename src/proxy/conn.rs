//! What every downstream connection (TCP or QUIC) shares with the requests on it: activity for
//! the idle watchdog, the premature-reset rule's counts, whether the proxy is closing it, and
//! how many bytes it has written (the stall watch's measure of progress).

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::body::now_ms;

/// Per-connection counters shared by the watchdog, the IO wrapper and request guards.
///
/// Nothing here wakes the watchdog: it never sleeps past the earliest deadline a later event
/// could create (see [`watchdog`]), so the request path pays a few atomics and no wake-up.
#[derive(Default)]
pub struct ConnState {
    pub(super) active: AtomicUsize,
    pub(super) idle_since: AtomicU64,
    /// First byte of a request head read while no request was active (0 = none).
    pub(super) pending_since: AtomicU64,
    /// HTTP/2 and HTTP/3 requests of this connection sent upstream, and those of them the
    /// client cancelled within [`PREMATURE_RESET_LIFETIME`]: the premature-reset rule
    /// ([`ConnState::note_cancelled`]).
    requests: AtomicU32,
    cancelled: AtomicU32,
    /// The proxy itself is closing the connection (`drain_timeout` ended, a stalled HTTP/1.1
    /// response): requests that end with it are not the client's cancellations.
    pub(crate) closed_by_proxy: AtomicBool,
    /// Successful writes to the client (TCP: counted by the IO wrapper under hyper): a stream
    /// blocked on the client is still progressing while this moves.
    pub(crate) written: AtomicU64,
    /// The premature-reset rule tripped: the connection is to be closed. On TCP (HTTP/2)
    /// [`Metered`] writes a GOAWAY with ENHANCE_YOUR_CALM at its next read or write, which an
    /// attacking client's next frame brings at once; QUIC checks it at its next request.
    pub(crate) abort: AtomicBool,
}

/// The premature-reset rule (Envoy's): a connection on which more than half of at least this
/// many requests were cancelled by the client before their response completed is closed.
/// Browsers cancel streams too (navigation, aborted fetches), but not most of hundreds; an
/// attacker that has the proxy start upstream requests and resets them at once does.
pub const PREMATURE_RESET_MIN_REQUESTS: u32 = 200;
/// Only a request cancelled this soon after it began counts (Envoy's
/// `premature_reset_min_stream_lifetime`): a gRPC client whose deadlines fire while an
/// upstream is slow cancels many calls, but not within a second of sending them.
pub const PREMATURE_RESET_LIFETIME: Duration = Duration::from_secs(1);

impl ConnState {
    /// A connection that has just opened: idle, nothing pending.
    pub fn new() -> Arc<Self> {
        let s = Self::default();
        s.idle_since.store(now_ms(), Ordering::Relaxed);
        Arc::new(s)
    }

    /// Marks a request active until the returned guard drops (after its response body).
    /// Returns the guard and when the request began arriving (ms, see [`now_ms`]).
    pub fn begin_request(self: &Arc<Self>) -> (RequestGuard, u64) {
        let started = match self.pending_since.swap(0, Ordering::AcqRel) {
            0 => now_ms(),
            t => t,
        };
        self.active.fetch_add(1, Ordering::AcqRel);
        (RequestGuard(self.clone()), started)
    }

    /// Counts a request the client cancelled; marks the connection for closing when the
    /// premature-reset rule ([`PREMATURE_RESET_MIN_REQUESTS`]) trips.
    fn note_cancelled(&self) {
        let cancelled = self.cancelled.fetch_add(1, Ordering::Relaxed) + 1;
        let requests = self.requests.load(Ordering::Relaxed);
        if requests >= PREMATURE_RESET_MIN_REQUESTS && u64::from(cancelled) * 2 > u64::from(requests) {
            self.abort.store(true, Ordering::Release);
        }
    }

    /// A read brought bytes: the first byte of a request head starts its `timeout_read`.
    pub(super) fn note_read(&self) {
        if self.active.load(Ordering::Acquire) == 0 && self.pending_since.load(Ordering::Relaxed) == 0 {
            let _ = self.pending_since.compare_exchange(0, now_ms().max(1), Ordering::AcqRel, Ordering::Relaxed);
        }
    }
}

/// Keeps a connection "active" for the idle timeout while a request or tunnel lives.
pub struct RequestGuard(Arc<ConnState>);

impl RequestGuard {
    /// This HTTP/2 or HTTP/3 request is being sent upstream (the premature-reset rule's
    /// denominator: requests that cost the upstream something, not cheap local answers).
    pub fn forwarded(&self) {
        self.0.requests.fetch_add(1, Ordering::Relaxed);
    }

    /// The client cancelled this forwarded HTTP/2 or HTTP/3 request within
    /// [`PREMATURE_RESET_LIFETIME`] of its start.
    pub fn cancelled(&self) {
        self.0.note_cancelled();
    }

    /// Whether the proxy is closing the connection under this request.
    pub fn closed_by_proxy(&self) -> bool {
        self.0.closed_by_proxy.load(Ordering::Acquire)
    }
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        if self.0.active.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle_since.store(now_ms(), Ordering::Release);
        }
    }
}
