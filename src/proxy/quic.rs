//! `quic-ingress`: HTTP/3 over QUIC (quinn, h3, h3-quinn) on the UDP port of `address`.
//!
//! Everything after the handshake is the TCP listeners' path: the request goes through
//! [`super::forward::handle`] (routing, policy, headers, timeouts, metrics with
//! `listener="quic-ingress"`, the access log), its body streams in both directions, and the
//! upstream side stays HTTP/1.1 or HTTP/2.
//!
//! Listener generations share the one UDP socket: every QUIC connection is accepted with the
//! config of the generation current at that moment ([`quinn::Incoming::accept_with`]), so a
//! certificate change reaches the next handshake while older connections keep theirs. A
//! drained connection gets an HTTP/3 GOAWAY that still admits the requests the client may
//! already have sent, finishes them, and closes once it has been idle for a moment; when
//! `drain_timeout` ends it is closed whatever it is doing.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes};
use http::header::{self, HeaderMap};
use http::Request;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use tokio_util::sync::CancellationToken;

use super::body::now_ms;
use super::drain::{ConnHandle, ListenerGeneration};
use super::listener::{self, ConnInfo, ConnState, ListenerKind, CONNECTION_BUFFER, MAX_HEAD_BYTES};
use super::stall;
use super::Proxy;
use crate::config::Timeouts;

/// Request streams a client may have open at once: the same as HTTP/2's
/// `SETTINGS_MAX_CONCURRENT_STREAMS` on the TCP listener.
pub const MAX_CONCURRENT_STREAMS: u32 = 128;
/// Unidirectional streams a client may open: HTTP/3 needs three (control, QPACK encoder and
/// decoder); the rest leaves room for reserved (grease) stream types, which clients send.
const MAX_UNI_STREAMS: u32 = 8;
/// Unacknowledged bytes the proxy keeps in flight toward one client: the role the kernel's
/// TCP send buffer plays for HTTP/1.1 and HTTP/2. Bounds memory per connection and caps a
/// download at this much per round trip.
const SEND_WINDOW: u64 = 1024 * 1024;
/// The transport idle timeout when `timeout_idle` is disabled: live clients answer the
/// proxy's keep-alives, so this only ever ends connections whose client is gone.
const DEAD_PEER_TIMEOUT: Duration = Duration::from_secs(600);
/// The longest interval between the proxy's keep-alive PINGs.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// quinn's server config for a listener generation: `tls` (from
/// [`crate::tls::quic_server_config`]) plus the QUIC limits.
///
/// Flow control toward the proxy matches HTTP/2 on TCP (32 KiB per stream, the per-connection
/// buffer limit, and four of those per connection). The transport idle timeout is
/// `timeout_idle`; the proxy sends a PING at least every 15 s, so a silent but live stream
/// (a long poll, a quiet upstream) never reaches it, while a connection with no request for
/// `timeout_idle` is closed by the same watchdog as TCP's.
pub fn server_config(tls: rustls::ServerConfig, timeouts: Timeouts) -> Result<quinn::ServerConfig, String> {
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls).map_err(|e| format!("QUIC TLS setup: {e}"))?;
    let mut transport = quinn::TransportConfig::default();
    let idle = timeouts.idle.unwrap_or(DEAD_PEER_TIMEOUT);
    transport
        .max_concurrent_bidi_streams(MAX_CONCURRENT_STREAMS.into())
        .max_concurrent_uni_streams(MAX_UNI_STREAMS.into())
        .stream_receive_window(quinn::VarInt::from_u32(CONNECTION_BUFFER as u32))
        .receive_window(quinn::VarInt::from_u32(4 * CONNECTION_BUFFER as u32))
        .send_window(SEND_WINDOW)
        .datagram_receive_buffer_size(None)
        .max_idle_timeout(Some(
            quinn::IdleTimeout::try_from(idle).map_err(|_| format!("timeout_idle {idle:?} is too long for QUIC"))?,
        ))
        .keep_alive_interval(Some((idle / 2).min(KEEP_ALIVE)));
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    config.transport_config(Arc::new(transport));
    Ok(config)
}

/// Binds the UDP socket of `quic-ingress` and starts a QUIC endpoint on it, accepting with
/// `config` until [`run`] hands each connection its generation's.
pub fn bind(addr: SocketAddr, config: &quinn::ServerConfig) -> io::Result<quinn::Endpoint> {
    let socket = std::net::UdpSocket::bind(addr)?;
    quinn::Endpoint::new(quinn::EndpointConfig::default(), Some(config.clone()), socket, Arc::new(quinn::TokioRuntime))
}

/// Accepts QUIC connections until `stop`, then refuses new ones; established connections
/// carry on (they drain with their generation).
pub async fn run(endpoint: quinn::Endpoint, proxy: Arc<Proxy>, stop: CancellationToken) {
    let local = endpoint.local_addr().unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
    loop {
        let incoming = tokio::select! {
            () = stop.cancelled() => break,
            i = endpoint.accept() => i,
        };
        let Some(incoming) = incoming else { break };
        let generation = proxy.listener_generation();
        let Some(config) = generation.quic.clone() else {
            // HTTP/3 was just turned off; this socket is about to close.
            incoming.refuse();
            continue;
        };
        let conn = proxy.drains.register(ListenerKind::Quic.name(), generation.id, true);
        tokio::spawn(serve_connection(incoming, config, proxy.clone(), generation, conn, local));
    }
    endpoint.set_server_config(None);
    tracing::info!(listener = ListenerKind::Quic.name(), address = %local, "listener stopped accepting");
}

async fn serve_connection(
    incoming: quinn::Incoming,
    config: Arc<quinn::ServerConfig>,
    proxy: Arc<Proxy>,
    generation: Arc<ListenerGeneration>,
    conn: ConnHandle,
    local: SocketAddr,
) {
    let peer = incoming.remote_address();
    let _counted = listener::count_connection(&proxy, ListenerKind::Quic);
    let timeouts = generation.settings.timeouts;
    let connecting = match incoming.accept_with(config) {
        Ok(c) => c,
        Err(e) => {
            tracing::debug!(%peer, error = %e, "QUIC connection refused");
            return;
        }
    };
    let connection = tokio::select! {
        r = tokio::time::timeout(listener::handshake_limit(timeouts), connecting) => match r {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => {
                tracing::debug!(%peer, error = %e, "QUIC handshake failed");
                return;
            }
            Err(_) => {
                tracing::debug!(%peer, "QUIC handshake timed out");
                return;
            }
        },
        () = conn.signals.close.cancelled() => return,
    };
    let sni = connection
        .handshake_data()
        .and_then(|d| d.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
        .and_then(|d| d.server_name);
    let client_cert = connection
        .peer_identity()
        .and_then(|p| p.downcast::<Vec<rustls_pki_types::CertificateDer<'static>>>().ok())
        .is_some_and(|c| !c.is_empty());
    let fingerprint = generation.certs.fingerprint_for(sni.as_deref()).map(str::to_owned);
    conn.handshake_done(sni.clone(), fingerprint);
    let info = Arc::new(ConnInfo {
        kind: ListenerKind::Quic,
        peer,
        forwarded_for: listener::forwarded_for(peer),
        local,
        sni,
        client_cert,
        timeouts,
        state: ConnState::new(),
        draining: AtomicBool::new(false),
        conn: Arc::new(conn),
        generation: generation.id,
        https_port: local.port(),
        alt_svc: None,
    });
    drop(generation);
    let h3 = h3::server::builder()
        .max_field_section_size(MAX_HEAD_BYTES as u64)
        .build::<_, Bytes>(h3_quinn::Connection::new(connection.clone()))
        .await;
    match h3 {
        Ok(h3) => drive(h3, &connection, &info, &proxy).await,
        Err(e) => tracing::debug!(%peer, error = %e, "HTTP/3 connection setup failed"),
    }
}

type H3Connection = h3::server::Connection<h3_quinn::Connection, Bytes>;

/// Accepts requests until the connection ends: closes it on `timeout_idle`, after a drain's
/// GOAWAY once its requests are done, at once when `drain_timeout` ends, and with
/// H3_EXCESSIVE_LOAD when most of its requests were cancelled (the premature-reset rule of
/// the TCP listeners).
async fn drive(mut h3: H3Connection, connection: &quinn::Connection, info: &Arc<ConnInfo>, proxy: &Arc<Proxy>) {
    // After a GOAWAY (drain or idle): requests the client sent before it saw the GOAWAY still
    // arrive and are served; the connection closes once it has had none for the linger,
    // counted from the GOAWAY (so that the client has the time to read it) or from its last
    // request, whichever is later.
    let mut closing_since: Option<u64> = None;
    let mut code = h3::error::Code::H3_NO_ERROR;
    loop {
        let (timeouts, since) = match closing_since {
            Some(at) => (Timeouts { read: None, ..listener::linger(info.timeouts) }, at),
            None => (info.timeouts, 0),
        };
        tokio::select! {
            accepted = h3.accept() => match accepted {
                Ok(Some(resolver)) => {
                    if info.state.abort.load(Ordering::Acquire) {
                        tracing::warn!(
                            peer = %info.peer,
                            "closing HTTP/3 connection with H3_EXCESSIVE_LOAD: most of its requests were cancelled by the client"
                        );
                        code = h3::error::Code::H3_EXCESSIVE_LOAD;
                        break;
                    }
                    tokio::spawn(stall::scope(serve_request(resolver, proxy.clone(), info.clone())));
                }
                Ok(None) => break,
                Err(e) => {
                    if !e.is_h3_no_error() {
                        tracing::debug!(peer = %info.peer, error = %e, "HTTP/3 connection ended with an error");
                    }
                    break;
                }
            },
            _ = listener::watchdog(&info.state, timeouts, since, false) => {
                if closing_since.is_some() {
                    break;
                }
                tracing::debug!(peer = %info.peer, "closing idle HTTP/3 connection (timeout_idle)");
                goaway(&mut h3, info).await;
                closing_since = Some(now_ms());
            }
            () = info.conn.signals.drain.cancelled(), if closing_since.is_none() => {
                info.draining.store(true, Ordering::Release);
                goaway(&mut h3, info).await;
                closing_since = Some(now_ms());
            }
            () = info.conn.signals.close.cancelled() => {
                info.state.closed_by_proxy.store(true, Ordering::Release);
                tracing::debug!(peer = %info.peer, "closing HTTP/3 connection: drain_timeout ended");
                break;
            }
        }
    }
    connection.close(code.value().try_into().unwrap_or_default(), b"");
}

/// Sends the GOAWAY of a graceful close. It admits every request stream the client may
/// already have opened (up to the stream limit past the last one seen), as HTTP/2's first
/// GOAWAY does, so no request in flight is refused; the client opens no new one.
async fn goaway(h3: &mut H3Connection, info: &ConnInfo) {
    if let Err(e) = h3.shutdown(MAX_CONCURRENT_STREAMS as usize).await {
        tracing::debug!(peer = %info.peer, error = %e, "sending HTTP/3 GOAWAY failed");
    }
}

/// Serves one request stream: the request through the shared forwarding path, then the
/// response streamed frame by frame.
async fn serve_request(
    resolver: h3::server::RequestResolver<h3_quinn::Connection, Bytes>,
    proxy: Arc<Proxy>,
    info: Arc<ConnInfo>,
) {
    let (req, stream) = match resolver.resolve_request().await {
        Ok(r) => r,
        Err(e) => {
            tracing::debug!(peer = %info.peer, error = %e, "bad HTTP/3 request");
            return;
        }
    };
    let (mut send, recv) = stream.split();
    let hint = content_length(req.headers());
    let mut body = RequestBody::new(recv, hint);
    body.probe();
    let req: Request<RequestBody> = req.map(|()| body);
    let resp = super::forward::handle(&proxy, &info, req).await;
    let (mut parts, mut body) = resp.into_parts();
    // Connection-specific fields are malformed in HTTP/3 (RFC 9114 section 4.2).
    for name in [header::CONNECTION, header::TRANSFER_ENCODING, header::UPGRADE] {
        parts.headers.remove(name);
    }
    parts.headers.remove("keep-alive");
    parts.headers.remove("proxy-connection");
    // The stream's idle and write deadlines, for sends that flow control holds up (the
    // client stopped reading): see `super::stall`.
    let watch = stall::current();
    match stall::bounded(send.send_response(http::Response::from_parts(parts, ())), watch.as_ref()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            tracing::debug!(peer = %info.peer, error = %e, "sending an HTTP/3 response failed");
            return;
        }
        Err(reason) => {
            tracing::debug!(peer = %info.peer, ?reason, "resetting an HTTP/3 stream: the client gives no room for the response");
            send.stop_stream(h3::error::Code::H3_REQUEST_CANCELLED);
            return;
        }
    }
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else {
            // The upstream (or a timeout) cut the body short: reset the stream so the client
            // does not take a truncated body for a whole one.
            send.stop_stream(h3::error::Code::H3_INTERNAL_ERROR);
            return;
        };
        let sent = match frame.into_data() {
            Ok(data) => send_pieces(&mut send, data, watch.as_ref()).await,
            Err(frame) => match frame.into_trailers() {
                Ok(trailers) => stall::bounded(send.send_trailers(trailers), watch.as_ref()).await,
                Err(_) => Ok(Ok(())),
            },
        };
        match sent {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return,
            Err(reason) => {
                tracing::debug!(peer = %info.peer, ?reason, "resetting an HTTP/3 stream: the client stopped reading its response");
                send.stop_stream(h3::error::Code::H3_REQUEST_CANCELLED);
                return;
            }
        }
    }
    let _ = send.finish().await;
}

/// The most of a response body handed to one send. A send completes only once all of it is
/// in quinn's buffer, and the stall watch sees progress per completed send: a client that
/// reads slowly but steadily must show progress well within the stream idle timeout however
/// large the upstream's chunks are.
const SEND_PIECE: usize = 16 * 1024;

/// Sends `data` in pieces of at most [`SEND_PIECE`] (zero-copy), each bounded by the stall
/// watch and counted as stream activity.
async fn send_pieces(
    send: &mut h3::server::RequestStream<h3_quinn::SendStream<Bytes>, Bytes>,
    mut data: Bytes,
    watch: Option<&stall::StallInfo>,
) -> Result<Result<(), h3::error::StreamError>, stall::Stalled> {
    while !data.is_empty() {
        let piece = data.split_to(data.len().min(SEND_PIECE));
        match stall::bounded(send.send_data(piece), watch).await? {
            Ok(()) => {}
            Err(e) => return Ok(Err(e)),
        }
        if let Some(w) = watch {
            w.state.touch();
        }
    }
    Ok(Ok(()))
}

/// `Content-Length` of an HTTP/3 request: one value of digits only (`+4` or `4, 4` is no
/// length, and the upstream request is framed by the body itself).
fn content_length(headers: &HeaderMap) -> SizeHint {
    let mut values = headers.get_all(header::CONTENT_LENGTH).iter();
    match (values.next(), values.next()) {
        (Some(v), None) if !v.is_empty() && v.as_bytes().iter().all(u8::is_ascii_digit) => {
            v.to_str().ok().and_then(|v| v.parse::<u64>().ok()).map_or_else(SizeHint::default, SizeHint::with_exact)
        }
        _ => SizeHint::default(),
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Read {
    Data,
    Trailers,
    Done,
}

type RecvStream = h3::server::RequestStream<h3_quinn::RecvStream, Bytes>;

/// A request body read from an HTTP/3 request stream, frame by frame as it arrives.
pub struct RequestBody {
    /// Always `Some` until dropped.
    stream: Option<RecvStream>,
    state: Read,
    hint: SizeHint,
    /// A frame read by [`RequestBody::probe`], handed out first.
    early: Option<Frame<Bytes>>,
    /// The last read returned `Pending`: h3-quinn holds the QUIC stream inside that read
    /// until it completes (and panics if asked to stop the stream meanwhile).
    read_pending: bool,
}

impl RequestBody {
    fn new(stream: RecvStream, hint: SizeHint) -> Self {
        Self { stream: Some(stream), state: Read::Data, hint, early: None, read_pending: false }
    }

    /// Reads what has already arrived without waiting, so that a request whose stream ended
    /// with its headers (a GET) is known to have no body: the upstream request then carries
    /// no body framing, as it would from HTTP/1.1 or HTTP/2.
    fn probe(&mut self) {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        match Pin::new(&mut *self).poll_frame(&mut cx) {
            Poll::Ready(Some(Ok(frame))) => self.early = Some(frame),
            // An error now will be an error again on the next read.
            Poll::Ready(Some(Err(_)) | None) | Poll::Pending => {}
        }
    }
}

impl Drop for RequestBody {
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

impl Body for RequestBody {
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
