//! `https-ingress` and `http-ingress`: SO_REUSEPORT sockets, the TLS handshake under a
//! deadline, and hyper's HTTP/1.1 and HTTP/2 servers, run to their end by the connection
//! driver ([`super::driver`]).

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};

use super::driver::{self, Ended, Served};
use super::io::Metered;
use super::rest::Resting;
use super::{count_connection, handshake};
use crate::config::CodecType;
use crate::proxy::body::Stalled;
use crate::proxy::conn::{
    Alpn, ClientChain, Conn, ConnFacts, ConnState, ListenerKind, CONNECTION_BUFFER, MAX_HEAD_BYTES,
};
use crate::proxy::drain::ConnHandle;
use crate::proxy::generation::ListenerGeneration;
use crate::proxy::stall::{StreamExecutor, Watched};
use crate::proxy::state::Proxy;

/// Binds a TCP listener with SO_REUSEPORT (PRODUCT.md: every TCP listener), which also lets
/// a new listener generation bind the same port before the old one closes.
pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_tcp_nodelay(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(4096)?;
    TcpListener::from_std(socket.into())
}

/// Accepts connections until shutdown. The socket stays the same across listener
/// generations: each connection is stamped with the generation current when it is accepted,
/// so a new generation refuses no connection attempt.
pub async fn run(
    kind: ListenerKind,
    listener: TcpListener,
    proxy: Arc<Proxy>,
    https_port: u16,
    stop: tokio_util::sync::CancellationToken,
) {
    loop {
        let accepted = tokio::select! {
            () = stop.cancelled() => break,
            r = listener.accept() => r,
        };
        match accepted {
            Ok((stream, peer)) => spawn_connection(kind, stream, peer, &proxy, https_port),
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(listener = kind.name(), error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    // Connections the kernel has completed but nobody accepted would be reset when the socket
    // closes: take them too, to be drained like the rest (their requests get answers with
    // `Connection: close`).
    let mut late = 0;
    if let Ok(std_listener) = listener.into_std() {
        while let Ok((stream, peer)) = std_listener.accept() {
            let Ok(stream) = stream.set_nonblocking(true).and_then(|()| TcpStream::from_std(stream)) else { continue };
            spawn_connection(kind, stream, peer, &proxy, https_port);
            late += 1;
        }
    }
    tracing::info!(listener = kind.name(), accepted_from_queue = late, "listener stopped accepting");
}

/// Registers an accepted connection under the current listener generation and serves it.
fn spawn_connection(kind: ListenerKind, stream: TcpStream, peer: SocketAddr, proxy: &Arc<Proxy>, https_port: u16) {
    let generation = proxy.listener_generation();
    let conn = proxy.drains.register(kind.name(), generation.id, kind.is_tls());
    tokio::spawn(serve_connection(kind, stream, peer, proxy.clone(), generation, conn, https_port));
}

async fn serve_connection(
    kind: ListenerKind,
    stream: TcpStream,
    peer: SocketAddr,
    proxy: Arc<Proxy>,
    generation: Arc<ListenerGeneration>,
    registration: ConnHandle,
    https_port: u16,
) {
    let _counted = count_connection(&proxy, kind);
    let _ = stream.set_nodelay(true);
    let local = stream.local_addr().unwrap_or(peer);
    let timeouts = generation.settings.timeouts;
    let codec = generation.settings.codec_type;
    let state = ConnState::new();
    let mut facts = ConnFacts {
        listener: kind,
        peer,
        local,
        generation: generation.id,
        sni: None,
        alpn: Alpn::None,
        client_chain: None,
    };
    let alt_svc = if kind == ListenerKind::Https { proxy.alt_svc() } else { None };
    if kind == ListenerKind::Https {
        // The handshake and the stream it gives are boxed: rustls's connection state is
        // 1.2 KiB, and held inline it would be laid out several times over in this task's
        // future (as the handshake's argument, its timeout's, the result and the server's
        // IO), which every connection pays for its whole life, idle or not (`size_of_val`:
        // 6,480 bytes of future per connection before, 1,712 after).
        let accept = Box::pin(generation.tls.accept(stream));
        let Some(tls_stream) =
            handshake("TLS", peer, timeouts, &registration.signals.close, accept).await.map(Box::new)
        else {
            return;
        };
        let (_, tls) = tls_stream.get_ref();
        facts.sni = tls.server_name().map(str::to_owned);
        facts.client_chain = ClientChain::from_handshake(tls.peer_certificates());
        facts.alpn = Alpn::from_protocol(tls.alpn_protocol());
        let fingerprint = generation.certs.fingerprint_for(facts.sni.as_deref()).map(str::to_owned);
        registration.handshake_done(facts.sni.clone(), fingerprint);
        drop(generation);
        let h2 = facts.alpn == Alpn::H2;
        let conn = Conn::new(facts, timeouts, state.clone(), registration, https_port, alt_svc);
        serve_http(Metered::new(tls_stream, state), Some(h2), conn, proxy).await;
    } else {
        drop(generation);
        let only = (codec == CodecType::Http1).then_some(false);
        let conn = Conn::new(facts, timeouts, state.clone(), registration, https_port, alt_svc);
        serve_http(Metered::new(stream, state), only, conn, proxy).await;
    }
}

/// Serves HTTP on an established connection. `h2`: `Some(true)` HTTP/2 only (ALPN `h2`),
/// `Some(false)` HTTP/1.1 only (ALPN `http/1.1` or none on TLS, or `codec_type: http1`),
/// `None` detect (plain listeners also accept h2c prior knowledge).
async fn serve_http<I>(io: I, h2: Option<bool>, conn: Conn, proxy: Arc<Proxy>)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let conn = Arc::new(conn);
    let svc_conn = conn.clone();
    let service = hyper::service::service_fn(move |req| {
        let (proxy, conn) = (proxy.clone(), svc_conn.clone());
        async move { Ok::<_, std::convert::Infallible>(crate::proxy::http::handle(&proxy, &conn, req).await) }
    });
    // When ALPN (or `codec_type`) has decided the protocol, that protocol's own server is
    // used, so that an h2 connection without the preface fails with PROTOCOL_ERROR (RFC 9113
    // section 3.4) and an HTTP/1.1 connection never turns into HTTP/2. HTTP/2 needs no
    // `with_upgrades`: hyper's h2 server hands out CONNECT (and extended CONNECT) upgrades
    // itself. HTTP/1.1 connections rest while idle ([`rest`]).
    match h2 {
        Some(true) => {
            // HTTP/2 streams are tasks of their own, each watched (`StreamExecutor`).
            let served = Watched::unwatched(http2_builder().serve_connection(TokioIo::new(io), service));
            run_to_end(hyper(served, http2::Connection::graceful_shutdown, false, &conn), &conn).await;
        }
        Some(false) => {
            let served = Resting::new(io, http1_builder(), None, service, conn.state.clone());
            run_to_end(served, &conn).await;
        }
        None => {
            let served = Resting::new(io, http1_builder(), Some(http2_builder()), service, conn.state.clone());
            run_to_end(served, &conn).await;
        }
    }
}

/// The HTTP/1.1 server: our own watchdog replaces hyper's header timer (which also counts
/// keep-alive idle time).
fn http1_builder() -> http1::Builder {
    let mut b = http1::Builder::new();
    b.timer(TokioTimer::new())
        .header_read_timeout(None)
        .max_buf_size(MAX_HEAD_BYTES)
        .max_headers(1000)
        .keep_alive(true);
    b
}

/// The HTTP/2 server (ALPN `h2`, or h2c with prior knowledge on a plain listener).
fn http2_builder() -> http2::Builder<StreamExecutor> {
    let mut b = http2::Builder::new(StreamExecutor);
    b.timer(TokioTimer::new())
        .enable_connect_protocol()
        .initial_stream_window_size(CONNECTION_BUFFER as u32)
        .initial_connection_window_size(65_535)
        .max_send_buf_size(CONNECTION_BUFFER)
        .max_concurrent_streams(128)
        .max_header_list_size(MAX_HEAD_BYTES as u32)
        .keep_alive_interval(None);
    b
}

/// Runs a connection to its end with the driver and logs how it ended.
async fn run_to_end<S: Served>(mut served: S, conn: &Conn) {
    let peer = conn.peer();
    match driver::drive(&mut served, conn).await {
        Ended::Done => {}
        Ended::Failed(e) => tracing::debug!(%peer, error = %e, "connection ended with an error"),
        Ended::Aborted => tracing::warn!(
            %peer,
            "closed connection with ENHANCE_YOUR_CALM: most of its requests were cancelled by the client"
        ),
        Ended::Stalled(reason) => {
            tracing::debug!(%peer, ?reason, "closing connection: the client stopped reading its response");
        }
        Ended::Closed(why) => tracing::debug!(%peer, "closing connection: {why}"),
    }
}

/// A step of a hyper connection: its poll, with its error as text.
type Step = Poll<Result<Result<(), String>, Stalled>>;

/// A hyper connection as the driver serves it: one closure over the pinned connection that
/// polls it (`Some(cx)`) or begins its graceful shutdown (`None`), so that the three kinds of
/// hyper connection (HTTP/2, HTTP/1.1, auto-detected) share one [`Served`] impl. A closure
/// rather than a trait over the connection types: the compiler proves `Send` for a closure
/// from what it captures, where for a trait impl over hyper's connection types it must
/// re-prove their `Future` impls under erased lifetimes, which it cannot
/// (rust-lang/rust#64552). The connection is boxed: held inline, hyper's connection state
/// (several KiB) was laid out more than once in the task's future, and every idle connection
/// paid for the copies.
struct Hyper<F> {
    step: F,
    is_h1: bool,
    state: Arc<ConnState>,
}

/// `conn` as the driver serves it; `graceful_shutdown` is hyper's for its type.
fn hyper<C, E>(
    conn: Watched<C>,
    graceful_shutdown: fn(Pin<&mut C>),
    is_h1: bool,
    on: &Conn,
) -> Hyper<impl FnMut(Option<&mut Context<'_>>) -> Step + Send>
where
    C: Future<Output = Result<(), E>> + Send,
    E: std::fmt::Display,
{
    let mut conn = Box::pin(conn);
    let step = move |cx: Option<&mut Context<'_>>| {
        if let Some(cx) = cx {
            conn.as_mut().poll(cx).map(|r| r.map(|r| r.map_err(|e| e.to_string())))
        } else {
            graceful_shutdown(conn.as_mut().inner());
            Poll::Pending
        }
    };
    Hyper { step, is_h1, state: on.state.clone() }
}

impl<F> Served for Hyper<F>
where
    F: FnMut(Option<&mut Context<'_>>) -> Step + Send,
{
    fn serve(&mut self) -> impl Future<Output = Ended> + Send + '_ {
        std::future::poll_fn(|cx| {
            let ended = match std::task::ready!((self.step)(Some(cx))) {
                Ok(Ok(())) => Ended::Done,
                // The IO wrapper failed the connection after its ENHANCE_YOUR_CALM GOAWAY.
                Ok(Err(_)) if self.state.abort.load(Ordering::Acquire) => Ended::Aborted,
                Ok(Err(e)) => Ended::Failed(e),
                Err(reason) => Ended::Stalled(reason),
            };
            Poll::Ready(ended)
        })
    }

    fn begin_close(&mut self, drain: bool) -> impl Future<Output = ()> + Send + '_ {
        // A drained HTTP/1.1 connection ends with its next response (`Connection: close`):
        // shutting it down now could close it under a request already on the wire.
        if !(drain && self.is_h1) {
            let _ = (self.step)(None);
        }
        std::future::ready(())
    }

    fn is_h1(&self) -> bool {
        self.is_h1
    }

    fn label(&self) -> &'static str {
        "connection"
    }
}
