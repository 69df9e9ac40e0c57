//! Body wrappers that enforce the timeouts of the reference while bytes stream through,
//! without buffering: the read deadline on the request body, the write deadline and the
//! stream idle timeout on the response body. Both feed a shared activity clock so that a
//! bidirectional stream (gRPC, SSE with uploads) counts traffic in either direction.

use std::future::Future as _;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::BodyExt;
use tokio::sync::Notify;
use tokio::time::{Instant, Sleep};

/// Error type of every body the proxy handles.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The one body type of the data plane, in both directions.
pub type ProxyBody = UnsyncBoxBody<Bytes, BoxError>;

/// A body with fixed contents (error pages, redirects, admin answers).
pub fn full(bytes: impl Into<Bytes>) -> ProxyBody {
    http_body_util::Full::new(bytes.into()).map_err(|never| match never {}).boxed_unsync()
}

/// An empty body.
pub fn empty() -> ProxyBody {
    http_body_util::Empty::new().map_err(|never| match never {}).boxed_unsync()
}

fn start() -> Instant {
    static START: OnceLock<Instant> = OnceLock::new();
    *START.get_or_init(Instant::now)
}

/// Milliseconds since the process started: a cheap, monotonic clock for atomics.
pub fn now_ms() -> u64 {
    start().elapsed().as_millis() as u64
}

/// The instant `ms` (see [`now_ms`]) stands for, for timers.
pub fn instant_at_ms(ms: u64) -> Instant {
    start() + Duration::from_millis(ms)
}

/// Polls the timer in `slot` for `deadline`: armed on the first poll that needs it (most
/// streams never do), reset when the deadline moved. Every lazily armed timer of the request
/// path (the bodies', the upstream wait's, the stall watch's) goes through here.
pub fn poll_timer(slot: &mut Option<Pin<Box<Sleep>>>, deadline: Instant, cx: &mut Context<'_>) -> Poll<()> {
    let timer = match slot {
        Some(t) => {
            if t.deadline() != deadline {
                t.as_mut().reset(deadline);
            }
            t
        }
        None => slot.insert(Box::pin(tokio::time::sleep_until(deadline))),
    };
    timer.as_mut().poll(cx)
}

/// Shared per-request state between the two body wrappers and the forwarding code.
#[derive(Default)]
pub struct StreamState {
    /// Last time a body frame moved in either direction (see [`now_ms`]).
    pub last_activity: AtomicU64,
    /// The request body has ended: the upstream timeout may start.
    pub request_done: AtomicBool,
    /// Wakes the forwarder when `request_done` flips.
    pub request_done_notify: Notify,
    /// The read deadline fired while the request body was still arriving.
    pub read_timed_out: AtomicBool,
    /// Reading the downstream request body failed (malformed chunked encoding, the client
    /// reset its stream): the client's fault, whatever the upstream send then reports.
    pub request_failed: AtomicBool,
    /// Where the response body is (`BODY_*`), for the stall watch ([`super::stall`]).
    pub body_phase: AtomicU8,
    /// Set by the stall watch when it ended the stream ([`Stalled`]).
    pub stalled: AtomicU8,
}

/// Why the stall watch ([`super::stall`]) ended a stream: kept here, with the stream's
/// state, so that the body's access-log line can say it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Stalled {
    /// No byte moved for the stream idle timeout.
    Idle = 1,
    /// `timeout_write` ended while the client was not reading.
    Write = 2,
}

impl Stalled {
    /// The access log's error text for a stream ended this way (`code` from
    /// [`StreamState::stalled`]).
    pub fn message(code: u8) -> Option<&'static str> {
        match code {
            1 => Some("client stopped reading the response: no progress for the stream idle timeout"),
            2 => Some("client stopped reading the response: timeout_write ended"),
            _ => None,
        }
    }
}

/// The response head has not been handed to hyper yet.
pub const BODY_NOT_STARTED: u8 = 0;
/// hyper has the head or the last frame it asked for: it will poll again once the client
/// can take more. Blocked here means blocked on the client.
pub const BODY_READY: u8 = 1;
/// The body is waiting for the upstream (its own timers run).
pub const BODY_WAITING: u8 = 2;
/// The body ended.
pub const BODY_DONE: u8 = 3;

impl StreamState {
    /// Records traffic now.
    pub fn touch(&self) {
        self.last_activity.store(now_ms(), Ordering::Relaxed);
    }

    fn finish_request(&self) {
        if !self.request_done.swap(true, Ordering::AcqRel) {
            self.request_done_notify.notify_waiters();
        }
    }

    /// How long until the stream has been idle for `dur`; `None` once it has.
    pub fn idle_left(&self, dur: Duration) -> Option<Duration> {
        let last = self.last_activity.load(Ordering::Relaxed);
        let idle_for = Duration::from_millis(now_ms().saturating_sub(last));
        dur.checked_sub(idle_for).filter(|left| !left.is_zero())
    }

    /// Resolves when the stream has seen no traffic for `dur` (a tunnel's idle timeout).
    pub async fn wait_idle(&self, dur: Duration) {
        self.touch();
        while let Some(left) = self.idle_left(dur) {
            tokio::time::sleep(left).await;
        }
    }

    /// Resolves once the downstream request body has been read completely.
    pub async fn request_finished(&self) {
        loop {
            let notified = self.request_done_notify.notified();
            if self.request_done.load(Ordering::Acquire) {
                return;
            }
            notified.await;
        }
    }
}

/// Why a body stopped early; the message is what the access log shows.
#[derive(Debug, thiserror::Error)]
pub enum BodyTimeout {
    /// `timeout_read` passed before the request body arrived.
    #[error("timeout_read: the request body did not arrive in time")]
    Read,
    /// `timeout_write` passed before the response was sent.
    #[error("timeout_write: the request/response cycle took too long")]
    Write,
    /// The stream saw no traffic for its idle timeout.
    #[error("idle timeout: no traffic on the stream")]
    Idle,
}

pin_project_lite::pin_project! {
    /// The downstream request body on its way upstream.
    pub struct RequestBody<B> {
        #[pin]
        inner: B,
        deadline: Option<Pin<Box<Sleep>>>,
        state: Arc<StreamState>,
        done: bool,
    }
}

impl<B> RequestBody<B> {
    /// Wraps `inner`; `deadline` is when `timeout_read` expires for this request.
    pub fn new(inner: B, deadline: Option<Instant>, state: Arc<StreamState>) -> Self {
        Self { inner, deadline: deadline.map(|d| Box::pin(tokio::time::sleep_until(d))), state, done: false }
    }
}

impl<B> Body for RequestBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        if *this.done {
            return Poll::Ready(None);
        }
        match this.inner.poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                this.state.touch();
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.state.request_failed.store(true, Ordering::Release);
                Poll::Ready(Some(Err(e.into())))
            }
            Poll::Ready(None) => {
                *this.done = true;
                this.state.finish_request();
                Poll::Ready(None)
            }
            Poll::Pending => {
                if let Some(d) = this.deadline {
                    if d.as_mut().poll(cx).is_ready() {
                        this.state.read_timed_out.store(true, Ordering::Release);
                        *this.done = true;
                        return Poll::Ready(Some(Err(Box::new(BodyTimeout::Read))));
                    }
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The access log's error when the client went away before the response was complete (an
/// HTTP/2 or HTTP/3 stream reset, a closed connection).
pub const CLIENT_GONE: &str = "downstream closed before the response was complete";

/// Called once when a response body is finished or dropped: metrics, access log, counters.
pub trait OnFinish: Send + 'static {
    /// `bytes` sent downstream; `error` if the body ended abnormally.
    fn finish(self: Box<Self>, bytes: u64, error: Option<&str>);
}

pin_project_lite::pin_project! {
    /// A response body on its way downstream.
    pub struct ResponseBody {
        #[pin]
        inner: ProxyBody,
        write_deadline: Option<Instant>,
        idle: Option<Duration>,
        // Armed for the earliest of the write deadline and the idle check the first time
        // the body has to wait: most responses never do, and never pay for a timer.
        timer: Option<Pin<Box<Sleep>>>,
        idle_at: Option<Instant>,
        state: Option<Arc<StreamState>>,
        bytes: u64,
        // The body's length when it was known at the start: a body dropped once it was all
        // sent is complete even if it never said so (hyper stops at the length).
        expected: Option<u64>,
        error: Option<String>,
        on_finish: Option<Box<dyn OnFinish>>,
    }

    impl PinnedDrop for ResponseBody {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if let Some(s) = this.state.as_ref() {
                s.body_phase.store(BODY_DONE, Ordering::Release);
            }
            if let Some(f) = this.on_finish.take() {
                let stalled = this.state.as_ref().and_then(|s| Stalled::message(s.stalled.load(Ordering::Acquire)));
                let err = match this.error.as_deref() {
                    Some(e) => Some(e),
                    None if this.inner.is_end_stream() || *this.expected == Some(*this.bytes) => None,
                    None => Some(stalled.unwrap_or(CLIENT_GONE)),
                };
                f.finish(*this.bytes, err);
            }
        }
    }
}

impl ResponseBody {
    /// Wraps a response body with the request's deadlines.
    pub fn new(
        inner: ProxyBody,
        write_deadline: Option<Instant>,
        idle: Option<Duration>,
        state: Option<Arc<StreamState>>,
        on_finish: Box<dyn OnFinish>,
    ) -> Self {
        if let Some(s) = &state {
            s.touch();
            s.body_phase.store(BODY_READY, Ordering::Release);
        }
        Self {
            expected: inner.size_hint().exact(),
            inner,
            write_deadline,
            idle,
            timer: None,
            idle_at: idle.map(|d| Instant::now() + d),
            state,
            bytes: 0,
            error: None,
            on_finish: Some(on_finish),
        }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        if this.error.is_some() {
            return Poll::Ready(None);
        }
        let polled = this.inner.poll_frame(cx);
        if let Some(s) = this.state {
            let phase = match &polled {
                // Also for a frame that ends the body: hyper may still be holding it for
                // the client (HTTP/2 flow control). The body is done when dropped.
                Poll::Ready(Some(Ok(_))) => BODY_READY,
                Poll::Pending => BODY_WAITING,
                Poll::Ready(_) => BODY_DONE,
            };
            s.body_phase.store(phase, Ordering::Release);
        }
        match polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(d) = frame.data_ref() {
                    *this.bytes += d.len() as u64;
                }
                if let Some(s) = this.state {
                    s.touch();
                }
                return Poll::Ready(Some(Ok(frame)));
            }
            Poll::Ready(Some(Err(e))) => {
                *this.error = Some(format!("upstream body error: {e}"));
                return Poll::Ready(Some(Err(e)));
            }
            Poll::Ready(None) => {
                if let Some(f) = this.on_finish.take() {
                    f.finish(*this.bytes, None);
                }
                return Poll::Ready(None);
            }
            Poll::Pending => {}
        }
        let timeout =
            poll_timers(this.timer, *this.write_deadline, *this.idle, this.idle_at, this.state.as_deref(), cx);
        match timeout {
            Some(t) => {
                *this.error = Some(t.to_string());
                Poll::Ready(Some(Err(Box::new(t))))
            }
            None => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The write deadline and the idle timeout on one timer, created on first use. The idle
/// check re-arms lazily from the shared activity clock instead of being reset on every
/// frame, so a busy stream costs no timer operations.
fn poll_timers(
    timer: &mut Option<Pin<Box<Sleep>>>,
    write_deadline: Option<Instant>,
    idle: Option<Duration>,
    idle_at: &mut Option<Instant>,
    state: Option<&StreamState>,
    cx: &mut Context<'_>,
) -> Option<BodyTimeout> {
    loop {
        let next = match (write_deadline, *idle_at) {
            (Some(w), Some(i)) => w.min(i),
            (Some(w), None) => w,
            (None, Some(i)) => i,
            (None, None) => return None,
        };
        if poll_timer(timer, next, cx).is_pending() {
            return None;
        }
        let now = Instant::now().max(next);
        if write_deadline.is_some_and(|w| w <= now) {
            return Some(BodyTimeout::Write);
        }
        if let (Some(dur), Some(at)) = (idle, *idle_at) {
            if at <= now {
                let last = state.map_or(0, |s| s.last_activity.load(Ordering::Relaxed));
                let idle_for = Duration::from_millis(now_ms().saturating_sub(last));
                if idle_for >= dur {
                    return Some(BodyTimeout::Idle);
                }
                *idle_at = Some(Instant::now() + dur.checked_sub(idle_for).unwrap());
            }
        }
    }
}
