//! How a tunnel reaches its client. HTTP/1.1 and HTTP/2 hand hyper's upgraded stream over
//! (`hyper::upgrade::on`); HTTP/3 has no upgrade, so there the tunnel reads the request
//! body and writes the response body ([`BodyIo`]), which `accept/quic.rs` streams as it
//! does any response. CONNECT-UDP over HTTP/3 also sends and receives QUIC datagrams, which
//! one task per connection reads and hands to the tunnel of their stream ([`Datagrams`]).

use std::collections::HashMap;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use arc_swap::ArcSwap;
use bytes::{Buf, Bytes};
use http::Request;
use http_body::{Body, Frame};
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::mpsc;
use tokio_util::sync::PollSender;

use crate::proxy::body::{self, BoxError, ProxyBody};

/// The HTTP/3 request stream a CONNECT or CONNECT-UDP arrived on, put in the request's
/// extensions by `accept/quic.rs` (for CONNECT only, so other requests allocate no
/// extension map).
#[derive(Clone)]
pub struct H3Stream {
    /// The request stream's id: an HTTP/3 datagram names it (RFC 9297).
    pub id: u64,
    /// The connection's datagrams.
    pub datagrams: Arc<Datagrams>,
}

/// The QUIC datagrams of one HTTP/3 connection, demultiplexed by request stream. The map of
/// open flows is replaced whole when a UDP tunnel opens or closes (rare) and read without a
/// lock for every datagram.
pub struct Datagrams {
    connection: quinn::Connection,
    flows: ArcSwap<HashMap<u64, mpsc::Sender<Bytes>>>,
}

/// Datagrams waiting for their tunnel: past this many a flow's datagrams are dropped (UDP
/// may drop; a slow upstream socket must not hold memory).
const FLOW_BACKLOG: usize = 256;

impl Datagrams {
    /// The datagrams of `connection`; [`Datagrams::run`] must read them.
    pub fn new(connection: quinn::Connection) -> Arc<Self> {
        Arc::new(Self { connection, flows: ArcSwap::from_pointee(HashMap::new()) })
    }

    /// Reads the connection's datagrams until it ends, handing each to the tunnel of its
    /// stream; a datagram for no open tunnel, or malformed, is dropped (RFC 9297 section 2.1).
    pub async fn run(self: Arc<Self>) {
        while let Ok(datagram) = self.connection.read_datagram().await {
            let Some((id, value)) = crate::masque::split_h3_datagram(datagram) else { continue };
            if let Some(tx) = self.flows.load().get(&id) {
                // Full: the datagram is dropped, as the network would.
                let _ = tx.try_send(value);
            }
        }
    }

    /// Opens the flow of stream `id`: its datagrams' values arrive on the receiver until the
    /// guard drops.
    pub(super) fn open(self: &Arc<Self>, id: u64) -> (mpsc::Receiver<Bytes>, FlowGuard) {
        let (tx, rx) = mpsc::channel(FLOW_BACKLOG);
        self.flows.rcu(|flows| {
            let mut flows = HashMap::clone(flows);
            flows.insert(id, tx.clone());
            flows
        });
        (rx, FlowGuard { datagrams: self.clone(), id })
    }

    /// Sends `datagram` (already framed); `false` when it is larger than the path carries
    /// or the peer takes no datagrams.
    pub(super) fn send(&self, datagram: Bytes) -> bool {
        self.connection.send_datagram(datagram).is_ok()
    }

    /// The largest datagram the path carries now, if the peer takes datagrams at all.
    pub(super) fn max_size(&self) -> Option<usize> {
        self.connection.max_datagram_size()
    }
}

/// Closes a flow when its tunnel ends.
pub(super) struct FlowGuard {
    datagrams: Arc<Datagrams>,
    id: u64,
}

impl Drop for FlowGuard {
    fn drop(&mut self) {
        let id = self.id;
        self.datagrams.flows.rcu(|flows| {
            let mut flows = HashMap::clone(flows);
            flows.remove(&id);
            flows
        });
    }
}

/// The client's side of a tunnel, before the response that opens it has been sent.
pub(super) enum Downstream<B> {
    /// HTTP/1.1 and HTTP/2: hyper hands the connection (or stream) over once the response
    /// is out.
    Upgrade(hyper::upgrade::OnUpgrade),
    /// HTTP/3: the request body in, the response body out.
    Body(BodyIo<B>),
}

/// Either kind of client side, once open.
pub(super) enum Open<B> {
    Upgraded(TokioIo<hyper::upgrade::Upgraded>),
    Body(BodyIo<B>),
}

impl<B> Downstream<B>
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    /// Takes the client's side out of `req`; returns it and the body of the response that
    /// opens the tunnel (the tunnel's bytes, for HTTP/3).
    pub(super) fn of(mut req: Request<B>) -> (Self, ProxyBody) {
        if let Some(upgrade) = req.extensions_mut().remove::<hyper::upgrade::OnUpgrade>() {
            return (Self::Upgrade(upgrade), body::empty());
        }
        let (tx, rx) = mpsc::channel(8);
        let io =
            BodyIo { body: Box::pin(req.into_body()), pending: Bytes::new(), ended: false, tx: PollSender::new(tx) };
        (Self::Body(io), ChannelBody(rx).boxed_unsync())
    }

    /// Waits for the response to be out (HTTP/1.1, HTTP/2) and returns the open side.
    pub(super) async fn open(self) -> Result<Open<B>, hyper::Error> {
        match self {
            Self::Upgrade(u) => Ok(Open::Upgraded(TokioIo::new(u.await?))),
            Self::Body(b) => Ok(Open::Body(b)),
        }
    }
}

/// A response body fed by the tunnel: it ends when the tunnel drops its sender, which
/// HTTP/3 carries as the stream's FIN (the half-close of an upstream's end of stream).
struct ChannelBody(mpsc::Receiver<Bytes>);

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.0.poll_recv(cx).map(|b| b.map(|b| Ok(Frame::data(b))))
    }
}

/// An HTTP/3 tunnel's client side as a byte stream: reads the request body's data, writes
/// into the response body.
pub(super) struct BodyIo<B> {
    body: Pin<Box<B>>,
    pending: Bytes,
    ended: bool,
    tx: PollSender<Bytes>,
}

impl<B> AsyncRead for BodyIo<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        while this.pending.is_empty() && !this.ended {
            match ready!(this.body.as_mut().poll_frame(cx)) {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        this.pending = data;
                    }
                }
                Some(Err(e)) => return Poll::Ready(Err(io::Error::other(e.into()))),
                None => this.ended = true,
            }
        }
        let n = this.pending.len().min(buf.remaining());
        buf.put_slice(&this.pending[..n]);
        this.pending.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl<B> AsyncWrite for BodyIo<B> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let closed = || io::Error::new(io::ErrorKind::BrokenPipe, "the client's stream is gone");
        ready!(self.tx.poll_reserve(cx)).map_err(|_| closed())?;
        self.tx.send_item(Bytes::copy_from_slice(buf)).map_err(|_| closed())?;
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.tx.close();
        Poll::Ready(Ok(()))
    }
}

impl<B> AsyncRead for Open<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Upgraded(u) => Pin::new(u).poll_read(cx, buf),
            Self::Body(b) => Pin::new(b).poll_read(cx, buf),
        }
    }
}

impl<B> AsyncWrite for Open<B> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Upgraded(u) => Pin::new(u).poll_write(cx, buf),
            Self::Body(b) => Pin::new(b).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Upgraded(u) => Pin::new(u).poll_flush(cx),
            Self::Body(b) => Pin::new(b).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Upgraded(u) => Pin::new(u).poll_shutdown(cx),
            Self::Body(b) => Pin::new(b).poll_shutdown(cx),
        }
    }
}
