//! Responses the client stops reading.
//!
//! The stream idle timeout and `timeout_write` live in the response body
//! ([`super::body::ResponseBody`]), but hyper polls that body only when it can send what it
//! gets: while HTTP/2 flow control (a client that advertises a zero window) or a full socket
//! (an HTTP/1.1 client that never reads) blocks the stream, nobody polls the body, its timers
//! never run, and the stream and its upstream connection stay pinned forever.
//!
//! So the task that drives a stream watches it from outside: after every poll that ends
//! `Pending`, [`Watched`] looks at the stream's phase. If hyper's last call into the body got
//! a frame (the body is not waiting for the upstream, hyper is waiting for the client), the
//! stream is blocked on the client and a timer is armed for the earlier of the stream idle
//! deadline and the write deadline. "Idle" counts from the last body frame or the last write
//! to the client seen on the connection, whichever is later: a slow client that keeps
//! reading a large chunk is not idle. When it fires with the
//! stream still blocked, the driver ends the stream: an HTTP/2 stream task is dropped (h2
//! resets the stream), an HTTP/1.1 connection is closed, an HTTP/3 stream is reset.
//!
//! The request path pays for none of this when nothing blocks: the stream registers its
//! [`StallInfo`] in a task-local slot (no allocation, no lock), and a timer exists only once a
//! stream has been seen blocked.

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::{Instant, Sleep};

use super::body::{instant_at_ms, now_ms, poll_timer, Stalled, StreamState, BODY_READY};
use super::conn::ConnState;

tokio::task_local! {
    static STALL: RefCell<Option<StallInfo>>;
}

/// What the driver of a stream needs to know to end it when the client stops reading.
#[derive(Clone)]
pub struct StallInfo {
    /// The stream's phase and activity clock.
    pub state: Arc<StreamState>,
    /// Its connection: bytes written to the client there are progress too. A client that
    /// reads slowly but steadily takes a while to drain one large chunk, and the body sees no
    /// new frame meanwhile.
    pub conn: Arc<ConnState>,
    /// The stream idle timeout of the route (`idle_timeout`, else `timeout_idle`).
    pub idle: Option<Duration>,
    /// When `timeout_write` ends the request/response cycle.
    pub write_deadline: Option<Instant>,
}

impl StallInfo {
    /// When the blocked stream is to be ended: the earlier of the write deadline and the idle
    /// timeout after the last activity (a body frame, or `progress_ms`: writes seen moving on
    /// the connection, see [`now_ms`]). An absolute instant, the same at every call while
    /// nothing moves, so a timer armed for it is not reset on every wake-up.
    pub fn deadline(&self, progress_ms: u64) -> Option<Instant> {
        let idle = self.idle.map(|d| {
            let last = self.state.last_activity.load(Ordering::Relaxed).max(progress_ms);
            instant_at_ms(last) + d
        });
        match (idle, self.write_deadline) {
            (Some(i), Some(w)) => Some(i.min(w)),
            (i, w) => i.or(w),
        }
    }

    /// Whether a deadline has passed with nothing moved since; records why on the stream
    /// (for its access-log line).
    fn expired(&self, progress_ms: u64) -> Option<Stalled> {
        let reason = if self.write_deadline.is_some_and(|w| w <= Instant::now()) {
            Stalled::Write
        } else if self.idle.is_some_and(|d| {
            let last = self.state.last_activity.load(Ordering::Relaxed).max(progress_ms);
            Duration::from_millis(now_ms().saturating_sub(last)) >= d
        }) {
            Stalled::Idle
        } else {
            return None;
        };
        self.state.stalled.store(reason as u8, Ordering::Release);
        Some(reason)
    }

    /// Whether hyper is waiting for the client rather than for the body.
    fn blocked(&self) -> bool {
        self.state.body_phase.load(Ordering::Acquire) == BODY_READY
    }
}

/// Registers the stream being served by the current task (a no-op outside a [`Watched`]).
pub fn register(info: StallInfo) {
    let _ = STALL.try_with(|slot| *slot.borrow_mut() = Some(info));
}

/// The stream registered in the current task, if any (HTTP/3 bounds its own sends by it;
/// its task is a [`scope`], not a [`Watched`]).
pub fn current() -> Option<StallInfo> {
    STALL.try_with(|slot| slot.borrow().clone()).ok().flatten()
}

/// Runs `fut` with a stall slot of its own (HTTP/3 request tasks).
pub fn scope<F: Future>(fut: F) -> impl Future<Output = F::Output> {
    STALL.scope(RefCell::new(None), fut)
}

/// Runs a send that the client's flow control may hold up (HTTP/3), ending it with `Err`
/// when it is still held at the stream's deadline. No timer unless the send has to wait.
pub async fn bounded<F: Future>(send: F, watch: Option<&StallInfo>) -> Result<F::Output, Stalled> {
    let mut send = std::pin::pin!(send);
    if let Poll::Ready(out) = futures_util::poll!(send.as_mut()) {
        return Ok(out);
    }
    let Some(info) = watch else { return Ok(send.await) };
    loop {
        if let Some(reason) = info.expired(0) {
            return Err(reason);
        }
        let Some(deadline) = info.deadline(0) else { return Ok(send.await) };
        if let Ok(out) = tokio::time::timeout_at(deadline, send.as_mut()).await {
            return Ok(out);
        }
    }
}

pin_project_lite::pin_project! {
    /// A future that serves streams (an HTTP/2 stream task, an HTTP/1.1 connection), with the
    /// stall watch around it: it resolves with `Err` once the stream it serves has been
    /// blocked on the client past its deadline.
    pub struct Watched<F> {
        #[pin]
        inner: F,
        // Off for futures that serve no stream themselves (an HTTP/2 connection, whose streams
        // are tasks of their own): they are polled as they are.
        enabled: bool,
        info: Option<StallInfo>,
        timer: Option<Pin<Box<Sleep>>>,
        // The connection's write count when last looked at, and when it was seen to move.
        seen_written: u64,
        progress_ms: u64,
    }
}

impl<F> Watched<F> {
    /// Watches `inner`.
    pub fn new(inner: F) -> Self {
        Self { inner, enabled: true, info: None, timer: None, seen_written: 0, progress_ms: 0 }
    }

    /// `inner`, not watched (the same type, so that one connection driver serves both).
    pub fn unwatched(inner: F) -> Self {
        Self { inner, enabled: false, info: None, timer: None, seen_written: 0, progress_ms: 0 }
    }

    /// The watched future (for hyper's `graceful_shutdown`).
    pub fn inner(self: Pin<&mut Self>) -> Pin<&mut F> {
        self.project().inner
    }

    /// The watched future itself (for hyper's `into_parts`).
    pub fn into_inner(self) -> F {
        self.inner
    }
}

impl<F: Future> Future for Watched<F> {
    type Output = Result<F::Output, Stalled>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if !*this.enabled {
            return this.inner.poll(cx).map(Ok);
        }
        let inner = this.inner;
        // The slot is empty on entry; a stream that registers during this poll replaces the
        // one kept (HTTP/1.1: the next request on the connection).
        let (polled, registered) = STALL.sync_scope(RefCell::new(None), || {
            let polled = inner.poll(cx);
            (polled, STALL.with(|slot| slot.borrow_mut().take()))
        });
        if registered.is_some() {
            *this.info = registered;
        }
        if let Poll::Ready(out) = polled {
            return Poll::Ready(Ok(out));
        }
        let Some(info) = this.info.as_ref().filter(|i| i.blocked()) else {
            return Poll::Pending;
        };
        let written = info.conn.written.load(Ordering::Relaxed);
        if written != *this.seen_written {
            *this.seen_written = written;
            *this.progress_ms = now_ms();
        }
        loop {
            if let Some(reason) = info.expired(*this.progress_ms) {
                return Poll::Ready(Err(reason));
            }
            let Some(deadline) = info.deadline(*this.progress_ms) else { return Poll::Pending };
            if poll_timer(this.timer, deadline, cx).is_pending() {
                return Poll::Pending;
            }
            // The timer fired: expired now, or something moved since it was armed (then it
            // is armed again from the activity clock).
            let written = info.conn.written.load(Ordering::Relaxed);
            if written != *this.seen_written {
                *this.seen_written = written;
                *this.progress_ms = now_ms();
            }
        }
    }
}

/// hyper's executor for HTTP/2 stream tasks: each runs inside a [`Watched`], and a stream
/// whose client stopped reading is dropped, which makes h2 reset it (RST_STREAM CANCEL) and
/// releases its upstream connection.
#[derive(Clone, Copy, Debug, Default)]
pub struct StreamExecutor;

impl<F> hyper::rt::Executor<F> for StreamExecutor
where
    F: Future<Output = ()> + Send + 'static,
{
    fn execute(&self, fut: F) {
        // Spawned as it is built: an `async` block around it would move hyper's stream future
        // (several KiB) once more on its first poll.
        tokio::spawn(StreamTask { watched: Watched::new(fut) });
    }
}

pin_project_lite::pin_project! {
    /// An HTTP/2 stream task: ends (dropping the stream) when the watch says so.
    struct StreamTask<F> {
        #[pin]
        watched: Watched<F>,
    }
}

impl<F: Future<Output = ()>> Future for StreamTask<F> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        self.project().watched.poll(cx).map(|r| {
            if let Err(reason) = r {
                tracing::debug!(?reason, "resetting an HTTP/2 stream: the client stopped reading its response");
            }
        })
    }
}
