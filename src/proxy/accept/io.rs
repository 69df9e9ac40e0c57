//! The IO wrapper under hyper on every TCP connection: it tells the watchdog when a request
//! head starts arriving, counts writes as the stall watch's progress, and ends an HTTP/2
//! connection with a GOAWAY ENHANCE_YOUR_CALM once the premature-reset rule tripped.

use std::io;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::super::conn::ConnState;

pin_project_lite::pin_project! {
    /// Notes the first byte of each request head for the watchdog, and closes an HTTP/2
    /// connection with ENHANCE_YOUR_CALM once the premature-reset rule tripped
    /// ([`ConnState::abort`]).
    pub struct Metered<T> {
        #[pin]
        inner: T,
        state: Arc<ConnState>,
        // hyper's HTTP/2 writer flushes only once its buffer is empty, so after a flush the
        // next write starts a frame: the only place another frame may go.
        at_frame_start: bool,
        // Bytes of our GOAWAY already written (`abort`).
        goaway_sent: usize,
    }
}

impl<T> Metered<T> {
    /// Wraps the IO of a connection whose state is `state`.
    pub fn new(inner: T, state: Arc<ConnState>) -> Self {
        Self { inner, state, at_frame_start: true, goaway_sent: 0 }
    }
}

/// GOAWAY (type 7) on stream 0: last stream id 2^31-1 (every stream may have been
/// processed, so the client retries none), error ENHANCE_YOUR_CALM (0xb).
const GOAWAY_ENHANCE_YOUR_CALM: [u8; 17] = [0, 0, 8, 7, 0, 0, 0, 0, 0, 0x7f, 0xff, 0xff, 0xff, 0, 0, 0, 0x0b];

impl<T: AsyncWrite> Metered<T> {
    /// In place of a read or write after `abort`: our GOAWAY if a frame may start here, then
    /// an error that ends hyper's connection.
    fn poll_abort(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Error> {
        let mut this = self.project();
        if *this.at_frame_start {
            while *this.goaway_sent < GOAWAY_ENHANCE_YOUR_CALM.len() {
                match std::task::ready!(this
                    .inner
                    .as_mut()
                    .poll_write(cx, &GOAWAY_ENHANCE_YOUR_CALM[*this.goaway_sent..]))
                {
                    Ok(0) | Err(_) => break,
                    Ok(n) => *this.goaway_sent += n,
                }
            }
            // Best effort: the connection is closed whatever the flush says.
            let _ = std::task::ready!(this.inner.as_mut().poll_flush(cx));
        }
        Poll::Ready(io::Error::new(io::ErrorKind::ConnectionAborted, "closed with ENHANCE_YOUR_CALM"))
    }
}

impl<T: AsyncRead + AsyncWrite> AsyncRead for Metered<T> {
    #[inline]
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if self.state.abort.load(Ordering::Relaxed) {
            return self.poll_abort(cx).map(Err);
        }
        let this = self.project();
        let before = buf.filled().len();
        let r = this.inner.poll_read(cx, buf);
        if buf.filled().len() > before {
            this.state.note_read();
        }
        r
    }
}

impl<T: AsyncWrite> AsyncWrite for Metered<T> {
    #[inline]
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        if self.state.abort.load(Ordering::Relaxed) {
            return self.poll_abort(cx).map(Err);
        }
        let this = self.project();
        let r = this.inner.poll_write(cx, buf);
        wrote(&r, this.at_frame_start, this.state);
        r
    }
    #[inline]
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.project();
        let r = this.inner.poll_flush(cx);
        if matches!(r, Poll::Ready(Ok(()))) {
            *this.at_frame_start = true;
            this.state.flushed.store(true, Ordering::Relaxed);
        }
        r
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // A resting HTTP/1.1 connection ends hyper's codec, not the socket.
        if self.state.resting.load(Ordering::Acquire) {
            return Poll::Ready(Ok(()));
        }
        self.project().inner.poll_shutdown(cx)
    }
    #[inline]
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if self.state.abort.load(Ordering::Relaxed) {
            return self.poll_abort(cx).map(Err);
        }
        let this = self.project();
        let r = this.inner.poll_write_vectored(cx, bufs);
        wrote(&r, this.at_frame_start, this.state);
        r
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// After a write: bytes went out, so the next write is inside a frame, and the stall watch
/// sees progress.
fn wrote(r: &Poll<io::Result<usize>>, at_frame_start: &mut bool, state: &ConnState) {
    if matches!(r, Poll::Ready(Ok(n)) if *n > 0) {
        *at_frame_start = false;
        state.flushed.store(false, Ordering::Relaxed);
        state.written.fetch_add(1, Ordering::Relaxed);
    }
}
