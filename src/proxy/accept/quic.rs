//! `quic-ingress`: HTTP/3 over QUIC (quinn, h3, h3-quinn) on the UDP port of `address`.
//!
//! Everything after the handshake is the TCP listeners' path: the request goes through
//! [`crate::proxy::http::handle`] (routing, policy, headers, timeouts, metrics with
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
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use http::Request;
use http_body_util::BodyExt;
use tokio_util::sync::CancellationToken;

use super::driver::{self, Ended, Served};
use super::h3body::{content_length, H3RequestBody};
use super::{count_connection, handshake};
use crate::proxy::body::Stalled;
use crate::proxy::conn::{Alpn, ClientChain, Conn, ConnFacts, ConnState, ListenerKind, MAX_HEAD_BYTES};
use crate::proxy::drain::ConnHandle;
use crate::proxy::generation::{ListenerGeneration, MAX_CONCURRENT_STREAMS};
use crate::proxy::stall;
use crate::proxy::state::Proxy;
use crate::proxy::tunnel::{Datagrams, H3Stream};

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
    registration: ConnHandle,
    local: SocketAddr,
) {
    let peer = incoming.remote_address();
    let _counted = count_connection(&proxy, ListenerKind::Quic);
    let timeouts = generation.settings.timeouts;
    let connecting = match incoming.accept_with(config) {
        Ok(c) => c,
        Err(e) => {
            tracing::debug!(%peer, error = %e, "QUIC connection refused");
            return;
        }
    };
    let Some(connection) = handshake("QUIC", peer, timeouts, &registration.signals.close, connecting).await else {
        return;
    };
    let sni = connection
        .handshake_data()
        .and_then(|d| d.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
        .and_then(|d| d.server_name);
    let chain =
        connection.peer_identity().and_then(|p| p.downcast::<Vec<rustls_pki_types::CertificateDer<'static>>>().ok());
    let fingerprint = generation.certs.fingerprint_for(sni.as_deref()).map(str::to_owned);
    registration.handshake_done(sni.clone(), fingerprint);
    let facts = ConnFacts {
        listener: ListenerKind::Quic,
        peer,
        local,
        generation: generation.id,
        sni,
        alpn: Alpn::H3,
        client_chain: ClientChain::from_handshake(chain.as_deref().map(Vec::as_slice)),
    };
    let conn = Arc::new(Conn::new(facts, timeouts, ConnState::new(), registration, local.port(), None));
    drop(generation);
    // CONNECT-UDP (RFC 9298) is an extended CONNECT whose payloads are HTTP/3 datagrams.
    let datagrams = Datagrams::new(connection.clone());
    tokio::spawn(datagrams.clone().run());
    let h3 = h3::server::builder()
        .max_field_section_size(MAX_HEAD_BYTES as u64)
        .enable_extended_connect(true)
        .enable_datagram(true)
        .build::<_, Bytes>(h3_quinn::Connection::new(connection.clone()))
        .await;
    let h3 = match h3 {
        Ok(h3) => h3,
        Err(e) => {
            tracing::debug!(%peer, error = %e, "HTTP/3 connection setup failed");
            return;
        }
    };
    let mut served = H3 { server: h3, conn: conn.clone(), proxy, datagrams };
    let code = match driver::drive(&mut served, &conn).await {
        // HTTP/3 streams are watched one by one (`serve_request`), never the connection.
        Ended::Done | Ended::Stalled(_) => h3::error::Code::H3_NO_ERROR,
        Ended::Failed(e) => {
            tracing::debug!(%peer, error = %e, "HTTP/3 connection ended with an error");
            h3::error::Code::H3_NO_ERROR
        }
        Ended::Aborted => {
            tracing::warn!(
                %peer,
                "closing HTTP/3 connection with H3_EXCESSIVE_LOAD: most of its requests were cancelled by the client"
            );
            h3::error::Code::H3_EXCESSIVE_LOAD
        }
        Ended::Closed(why) => {
            tracing::debug!(%peer, "closing HTTP/3 connection: {why}");
            h3::error::Code::H3_NO_ERROR
        }
    };
    connection.close(code.value().try_into().unwrap_or_default(), b"");
}

type H3Connection = h3::server::Connection<h3_quinn::Connection, Bytes>;

/// An HTTP/3 connection as the driver serves it: it accepts request streams and spawns each.
struct H3 {
    server: H3Connection,
    conn: Arc<Conn>,
    proxy: Arc<Proxy>,
    datagrams: Arc<Datagrams>,
}

impl Served for H3 {
    async fn serve(&mut self) -> Ended {
        loop {
            match self.server.accept().await {
                Ok(Some(resolver)) => {
                    // The premature-reset rule of the TCP listeners, checked per request.
                    if self.conn.state.abort.load(Ordering::Acquire) {
                        return Ended::Aborted;
                    }
                    tokio::spawn(stall::scope(serve_request(
                        resolver,
                        self.proxy.clone(),
                        self.conn.clone(),
                        self.datagrams.clone(),
                    )));
                }
                Ok(None) => return Ended::Done,
                Err(e) if e.is_h3_no_error() => return Ended::Done,
                Err(e) => return Ended::Failed(e.to_string()),
            }
        }
    }

    /// After a GOAWAY (drain or idle), requests the client sent before it saw the GOAWAY
    /// still arrive and are served.
    fn begin_close(&mut self, _drain: bool) -> impl std::future::Future<Output = ()> + Send + '_ {
        goaway(&mut self.server, &self.conn)
    }

    fn is_h1(&self) -> bool {
        false
    }

    fn label(&self) -> &'static str {
        "HTTP/3 connection"
    }
}

/// Sends the GOAWAY of a graceful close. It admits every request stream the client may
/// already have opened (up to the stream limit past the last one seen), as HTTP/2's first
/// GOAWAY does, so no request in flight is refused; the client opens no new one.
async fn goaway(h3: &mut H3Connection, conn: &Conn) {
    if let Err(e) = h3.shutdown(MAX_CONCURRENT_STREAMS as usize).await {
        tracing::debug!(peer = %conn.peer(), error = %e, "sending HTTP/3 GOAWAY failed");
    }
}

/// Serves one request stream: the request through the shared forwarding path, then the
/// response streamed frame by frame.
async fn serve_request(
    resolver: h3::server::RequestResolver<h3_quinn::Connection, Bytes>,
    proxy: Arc<Proxy>,
    conn: Arc<Conn>,
    datagrams: Arc<Datagrams>,
) {
    let (mut req, stream) = match resolver.resolve_request().await {
        Ok(r) => r,
        Err(e) => {
            tracing::debug!(peer = %conn.peer(), error = %e, "bad HTTP/3 request");
            return;
        }
    };
    if req.method() == http::Method::CONNECT {
        // A tunnel's datagrams name its stream.
        req.extensions_mut().insert(H3Stream { id: stream.id().into_inner(), datagrams });
    }
    let (mut send, recv) = stream.split();
    let hint = content_length(req.headers());
    let mut body = H3RequestBody::new(recv, hint);
    body.probe();
    let req: Request<H3RequestBody> = req.map(|()| body);
    let resp = crate::proxy::http::handle(&proxy, &conn, req).await;
    let (mut parts, mut body) = resp.into_parts();
    // Connection-specific fields are malformed in HTTP/3 (RFC 9114 section 4.2); the
    // pipeline's own answers may carry `Connection: close`.
    crate::proxy::headers::strip_connection_specific(&mut parts.headers);
    // The stream's idle and write deadlines, for sends that flow control holds up (the
    // client stopped reading): see `super::stall`.
    let watch = stall::current();
    match stall::bounded(send.send_response(http::Response::from_parts(parts, ())), watch.as_ref()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            tracing::debug!(peer = %conn.peer(), error = %e, "sending an HTTP/3 response failed");
            return;
        }
        Err(reason) => {
            tracing::debug!(peer = %conn.peer(), ?reason, "resetting an HTTP/3 stream: the client gives no room for the response");
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
                tracing::debug!(peer = %conn.peer(), ?reason, "resetting an HTTP/3 stream: the client stopped reading its response");
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
) -> Result<Result<(), h3::error::StreamError>, Stalled> {
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
