//! The request body of an HTTP/3 request stream, read frame by frame as it arrives, for the
//! pipeline (which takes any body: hyper's for HTTP/1.1 and HTTP/2, this one for HTTP/3).

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes};
use http::header::HeaderMap;
use http_body::{Body, Frame, SizeHint};

/// `Content-Length` of an HTTP/3 request: one value of digits only (`+4` or `4, 4` is no
/// length, and the upstream request is framed by the body itself).
pub(super) fn content_length(headers: &HeaderMap) -> SizeHint {
    crate::proxy::headers::decimal_content_length(headers)
        .and_then(|b| std::str::from_utf8(b).ok()?.parse::<u64>().ok())
        .map_or_else(SizeHint::default, SizeHint::with_exact)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Read {
    Data,
    Trailers,
    Done,
}

type RecvStream = h3::server::RequestStream<h3_quinn::RecvStream, Bytes>;

/// A request body read from an HTTP/3 request stream, frame by frame as it arrives.
pub struct H3RequestBody {
    /// Always `Some` until dropped.
    stream: Option<RecvStream>,
    state: Read,
    hint: SizeHint,
    /// A frame read by [`H3RequestBody::probe`], handed out first.
    early: Option<Frame<Bytes>>,
    /// The last read returned `Pending`: h3-quinn holds the QUIC stream inside that read
    /// until it completes (and panics if asked to stop the stream meanwhile).
    read_pending: bool,
}

impl H3RequestBody {
    /// The body of `stream`, whose `Content-Length` is `hint`.
    pub(super) fn new(stream: RecvStream, hint: SizeHint) -> Self {
        Self { stream: Some(stream), state: Read::Data, hint, early: None, read_pending: false }
    }

    /// Reads what has already arrived without waiting, so that a request whose stream ended
    /// with its headers (a GET) is known to have no body: the upstream request then carries
    /// no body framing, as it would from HTTP/1.1 or HTTP/2.
    pub(super) fn probe(&mut self) {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        match Pin::new(&mut *self).poll_frame(&mut cx) {
            Poll::Ready(Some(Ok(frame))) => self.early = Some(frame),
            // An error now will be an error again on the next read.
            Poll::Ready(Some(Err(_)) | None) | Poll::Pending => {}
        }
    }
}

impl Drop for H3RequestBody {
    /// A body nobody read to its end (the response came first, the request was refused, or a
    /// GET's end of stream arrived after its headers): ask the client to stop sending with
    /// H3_NO_ERROR, which tells it to keep reading the response (RFC 9114 section 4.1.1),
    /// rather than quinn's bare code 0 for a stream dropped unread.
    fn drop(&mut self) {
        let (Some(mut stream), false) = (self.stream.take(), self.state == Read::Done) else { return };
        if !self.read_pending {
            stream.stop_sending(h3::error::Code::H3_NO_ERROR);
            return;
        }
        // A read is in flight: let it complete (usually at once: the end of a GET), then stop
        // the stream if it has not ended. Bounded, so an idle client cannot hold the task.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
        runtime.spawn(async move {
            if let Ok(Ok(Some(_))) = tokio::time::timeout(Duration::from_secs(5), stream.recv_data()).await {
                stream.stop_sending(h3::error::Code::H3_NO_ERROR);
            }
        });
    }
}

impl Body for H3RequestBody {
    type Data = Bytes;
    type Error = h3::error::StreamError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if let Some(frame) = self.early.take() {
            return Poll::Ready(Some(Ok(frame)));
        }
        let this = &mut *self;
        let Some(stream) = this.stream.as_mut() else { return Poll::Ready(None) };
        loop {
            match this.state {
                Read::Data => {
                    let polled = stream.poll_recv_data(cx);
                    this.read_pending = polled.is_pending();
                    match std::task::ready!(polled) {
                        Ok(Some(mut buf)) => {
                            let bytes = buf.copy_to_bytes(buf.remaining());
                            return Poll::Ready(Some(Ok(Frame::data(bytes))));
                        }
                        Ok(None) => this.state = Read::Trailers,
                        Err(e) => {
                            this.state = Read::Done;
                            return Poll::Ready(Some(Err(e)));
                        }
                    }
                }
                Read::Trailers => {
                    let polled = stream.poll_recv_trailers(cx);
                    this.read_pending = polled.is_pending();
                    let r = std::task::ready!(polled);
                    this.state = Read::Done;
                    return Poll::Ready(match r {
                        Ok(Some(trailers)) => Some(Ok(Frame::trailers(trailers))),
                        Ok(None) => None,
                        Err(e) => Some(Err(e)),
                    });
                }
                Read::Done => return Poll::Ready(None),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.state == Read::Done && self.early.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        if self.is_end_stream() {
            SizeHint::with_exact(0)
        } else {
            self.hint
        }
    }
}
