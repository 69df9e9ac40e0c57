//! One driver for every downstream connection, TCP (HTTP/1.1, HTTP/2) and QUIC (HTTP/3)
//! alike: it runs the protocol's server and owns the connection's idle, drain and close
//! logic, so the two listeners differ only in how they start a graceful close.
//!
//! A connection is open, then closing: once its graceful close began (after `timeout_idle`,
//! or a drain: a GOAWAY, or for HTTP/1.1 `Connection: close` on its next response) it lives
//! while it has requests, plus a short linger, then it is closed. `drain_timeout`
//! closes it at once whatever it is doing.

use std::future::Future;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::super::body::{now_ms, Stalled};
use super::super::conn::{Conn, ConnState};
use crate::config::Timeouts;

/// How a connection's server ended, as the driver reports it to its listener.
pub(crate) enum Ended {
    /// The client closed it, or it closed after its graceful close.
    Done,
    /// The protocol's server failed (the client broke the protocol or the IO failed).
    Failed(String),
    /// The stall watch closed it: the client stopped reading a response (HTTP/1.1).
    Stalled(Stalled),
    /// The premature-reset rule tripped: most of its requests were cancelled by the client.
    Aborted,
    /// Closed by the driver: idle after its graceful close, a request head too slow, or
    /// `drain_timeout` ended.
    Closed(&'static str),
}

/// A protocol server on one connection, as the driver runs it.
pub(crate) trait Served {
    /// Serves until the connection ends. Dropped and called again after each event the
    /// driver handles, so it must resume where it was.
    fn serve(&mut self) -> impl Future<Output = Ended> + Send + '_;

    /// Begins the graceful close: an HTTP/2 or HTTP/3 GOAWAY, or an HTTP/1.1 connection
    /// that takes no further request. `drain`: a drain asked for it (an HTTP/1.1 connection
    /// then ends with its next response's `Connection: close` instead).
    fn begin_close(&mut self, drain: bool) -> impl Future<Output = ()> + Send + '_;

    /// Whether this is HTTP/1: the header part of `timeout_read` applies.
    fn is_h1(&self) -> bool;

    /// What the logs call it (`connection`, `HTTP/3 connection`).
    fn label(&self) -> &'static str;
}

/// How long a connection may stay idle after its graceful close began (an HTTP/2 or HTTP/3
/// GOAWAY, or an HTTP/1.1 connection being drained) before it is closed, counted from that
/// moment or from its last request, whichever is later. Not zero: a keep-alive client may be
/// sending its next request at the very moment the connection is closed, and that request
/// fails (the keep-alive race); HTTP/2 and HTTP/3 requests already in flight when the client
/// sees the GOAWAY still arrive. A busy HTTP/1.1 connection gets its next response with
/// `Connection: close` instead. Bounded, so that a client that never answers the GOAWAY's
/// PING (or stops in the middle of a header block) cannot hold the connection open.
pub(crate) const DRAIN_LINGER: Duration = Duration::from_secs(1);

/// The linger of a connection whose graceful close began: [`DRAIN_LINGER`], never more
/// than `timeout_idle`.
pub(crate) fn linger(timeouts: Timeouts) -> Timeouts {
    Timeouts { idle: Some(timeouts.idle.map_or(DRAIN_LINGER, |t| t.min(DRAIN_LINGER))), ..timeouts }
}
/// Runs a connection to its end: closes it gracefully on `timeout_idle` or a drain, and at
/// once on the HTTP/1 header timeout or when `drain_timeout` ends. The stall watch and the
/// premature-reset rule end it through its server ([`Ended::Stalled`], [`Ended::Aborted`]).
pub(crate) async fn drive<S: Served>(served: &mut S, conn: &Conn) -> Ended {
    // Set when the graceful close began (GOAWAY sent, or HTTP/1.1 drain): from then on the
    // connection lives only while it has requests, plus the linger.
    let mut closing_since: Option<u64> = None;
    let is_h1 = served.is_h1();
    let signals = &conn.registration.signals;
    loop {
        let (timeouts, since) = match closing_since {
            Some(at) => (linger(conn.timeouts), at),
            None => (conn.timeouts, 0),
        };
        tokio::select! {
            ended = served.serve() => {
                if matches!(ended, Ended::Stalled(_)) {
                    conn.state.closed_by_proxy.store(true, Ordering::Release);
                }
                return ended;
            }
            reason = watchdog(&conn.state, timeouts, since, is_h1) => match reason {
                _ if closing_since.is_some() => return Ended::Closed("idle after its graceful close began"),
                Watch::Idle => {
                    tracing::debug!(peer = %conn.peer(), "closing idle {} (timeout_idle)", served.label());
                    served.begin_close(false).await;
                    closing_since = Some(now_ms());
                }
                Watch::HeaderTimeout => return Ended::Closed("request head not received within timeout_read"),
            },
            () = signals.drain.cancelled(), if closing_since.is_none() => {
                conn.draining.store(true, Ordering::Release);
                served.begin_close(true).await;
                closing_since = Some(now_ms());
            }
            () = signals.close.cancelled() => {
                conn.state.closed_by_proxy.store(true, Ordering::Release);
                return Ended::Closed("drain_timeout ended");
            }
        }
    }
}

/// Why the watchdog fired.
pub(crate) enum Watch {
    Idle,
    HeaderTimeout,
}

/// Resolves when the connection has been idle (no active request) for `timeout_idle`, counted
/// from its last request or from `since` (ms, see [`now_ms`]) whichever is later, or (HTTP/1)
/// a request head has been arriving for longer than `timeout_read`.
///
/// Requests starting and ending do not wake it. Instead it never sleeps longer than the
/// shortest of those timeouts: any deadline an event after it went to sleep can create
/// (the event's time plus one of the timeouts) is then no earlier than its wake-up, where it
/// looks at the state again. A busy connection costs one timer wake-up per that timeout.
pub(crate) async fn watchdog(state: &ConnState, timeouts: Timeouts, since: u64, is_h1: bool) -> Watch {
    let header_read = timeouts.read.filter(|_| is_h1);
    let recheck = match (timeouts.idle, header_read) {
        (None, None) => return std::future::pending().await,
        (Some(a), Some(b)) => a.min(b),
        (Some(a), None) | (None, Some(a)) => a,
    };
    let recheck = (recheck.as_millis() as u64).max(1);
    let sleep = tokio::time::sleep(Duration::ZERO);
    tokio::pin!(sleep);
    loop {
        let mut deadline: Option<(u64, bool)> = None;
        if state.active.load(Ordering::Acquire) == 0 {
            if let Some(idle) = timeouts.idle {
                let idle_since = state.idle_since.load(Ordering::Acquire).max(since);
                deadline = Some((idle_since + idle.as_millis() as u64, false));
            }
            let pending = state.pending_since.load(Ordering::Acquire);
            if let (Some(read), true) = (header_read, pending != 0) {
                let d = pending + read.as_millis() as u64;
                if deadline.is_none_or(|(cur, _)| d < cur) {
                    deadline = Some((d, true));
                }
            }
        }
        let now = now_ms();
        if let Some((at, header)) = deadline {
            if at <= now {
                if state.active.load(Ordering::Acquire) == 0 {
                    return if header { Watch::HeaderTimeout } else { Watch::Idle };
                }
                continue;
            }
        }
        let wake = deadline.map_or(now + recheck, |(at, _)| at.min(now + recheck));
        sleep.as_mut().reset(tokio::time::Instant::now() + Duration::from_millis(wake - now));
        sleep.as_mut().await;
    }
}
