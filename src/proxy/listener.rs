//! Accepting and serving downstream connections: SO_REUSEPORT sockets, the TLS handshake
//! under a deadline, hyper's HTTP/1.1 and HTTP/2 servers, and a per-connection watchdog
//! that enforces `timeout_idle` (no active request) and the header part of `timeout_read`.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use super::body::now_ms;
pub use super::conn::{ConnState, RequestGuard, PREMATURE_RESET_LIFETIME, PREMATURE_RESET_MIN_REQUESTS};
use super::drain::{ConnHandle, ListenerGeneration};
use super::stall::{StreamExecutor, Watched};
use super::Proxy;
use crate::config::{CodecType, Timeouts};
use crate::metrics::ListenerLabels;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

/// PRODUCT.md: per-connection buffer limit.
pub const CONNECTION_BUFFER: usize = 32 * 1024;
/// Largest HTTP/1 head hyper will parse; the proxy's own (lower) limits answer 431 with a
/// body before this is reached.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;

/// What a listener does with requests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ListenerKind {
    /// TLS, routes served.
    Https,
    /// Plain HTTP, routes served (`insecure_server`).
    Insecure,
    /// Plain HTTP: ACME HTTP-01 paths routed, everything else redirected to https.
    Redirect,
    /// HTTP/3 over QUIC (`codec_type: http3`), routes served (see [`super::quic`]).
    Quic,
}

impl ListenerKind {
    /// The listener name of the reference (and the metrics label).
    pub fn name(self) -> &'static str {
        match self {
            ListenerKind::Https => "https-ingress",
            ListenerKind::Insecure | ListenerKind::Redirect => "http-ingress",
            ListenerKind::Quic => "quic-ingress",
        }
    }

    /// Whether its clients came over TLS (`X-Forwarded-Proto: https`, client certificates).
    pub fn is_tls(self) -> bool {
        matches!(self, ListenerKind::Https | ListenerKind::Quic)
    }
}

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

/// Facts about a downstream connection that requests need.
pub struct ConnInfo {
    /// Which listener accepted it.
    pub kind: ListenerKind,
    /// Client address (the source of X-Forwarded-For).
    pub peer: SocketAddr,
    /// `X-Forwarded-For` for its requests: the client IP (see [`forwarded_for`]).
    pub forwarded_for: http::HeaderValue,
    /// Local port, for redirects.
    pub local: SocketAddr,
    /// TLS server name the client asked for.
    pub sni: Option<String>,
    /// A client certificate was presented and verified.
    pub client_cert: bool,
    /// The timeouts in force when the connection was accepted.
    pub timeouts: Timeouts,
    /// Activity and request counting.
    pub state: Arc<ConnState>,
    /// Set when the connection is draining: HTTP/1 responses get `Connection: close`.
    pub draining: AtomicBool,
    /// Its registration with the drains: the drain and close signals, held by tunnels too so
    /// that an upgraded connection stays accounted for until it ends.
    pub conn: Arc<ConnHandle>,
    /// The listener generation that accepted it.
    pub generation: u64,
    /// The https listener's port, for redirects from `http-ingress`.
    pub https_port: u16,
    /// `Alt-Svc` for every response on this TCP connection while `quic-ingress` listens
    /// (`codec_type: http3`): how browsers find HTTP/3.
    pub alt_svc: Option<http::HeaderValue>,
}

/// The `X-Forwarded-For` value of a client: its IP, IPv4-mapped addresses as IPv4.
pub fn forwarded_for(peer: SocketAddr) -> http::HeaderValue {
    http::HeaderValue::from_str(&peer.ip().to_canonical().to_string()).expect("an IP is a valid header value")
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
    conn: ConnHandle,
    https_port: u16,
) {
    let _counted = count_connection(&proxy, kind);
    let _ = stream.set_nodelay(true);
    let local = stream.local_addr().unwrap_or(peer);
    let timeouts = generation.settings.timeouts;
    let codec = generation.settings.codec_type;
    let state = ConnState::new();
    let mut info = ConnInfo {
        kind,
        peer,
        forwarded_for: forwarded_for(peer),
        local,
        sni: None,
        client_cert: false,
        timeouts,
        state: state.clone(),
        draining: AtomicBool::new(false),
        conn: Arc::new(conn),
        generation: generation.id,
        https_port,
        alt_svc: if kind == ListenerKind::Https { proxy.alt_svc() } else { None },
    };
    if kind == ListenerKind::Https {
        let accept = generation.tls.accept(stream);
        let tls_stream = tokio::select! {
            r = tokio::time::timeout(handshake_limit(timeouts), accept) => match r {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "TLS handshake timed out");
                    return;
                }
            },
            () = info.conn.signals.close.cancelled() => return,
        };
        let (_, tls) = tls_stream.get_ref();
        info.sni = tls.server_name().map(str::to_owned);
        info.client_cert = tls.peer_certificates().is_some_and(|c| !c.is_empty());
        let h2 = tls.alpn_protocol() == Some(b"h2");
        let fingerprint = generation.certs.fingerprint_for(info.sni.as_deref()).map(str::to_owned);
        info.conn.handshake_done(info.sni.clone(), fingerprint);
        drop(generation);
        serve_http(Metered::new(tls_stream, state), Some(h2), info, proxy).await;
    } else {
        drop(generation);
        let only = (codec == CodecType::Http1).then_some(false);
        serve_http(Metered::new(stream, state), only, info, proxy).await;
    }
}

/// Counts a connection in `portcullis_downstream_connections_total` and `_active` of its
/// listener; the active gauge goes down when the guard drops, however the connection ends.
pub(crate) fn count_connection(proxy: &Proxy, kind: ListenerKind) -> impl Drop {
    let labels = ListenerLabels { listener: kind.name() };
    proxy.metrics.connections_total.get_or_create(&labels).inc();
    let active = proxy.metrics.connections_active.get_or_create(&labels).clone();
    active.inc();
    scopeguard(move || {
        active.dec();
    })
}

/// How long a TLS (or QUIC) handshake may take: `timeout_read`, at most 10 s.
pub(crate) fn handshake_limit(timeouts: Timeouts) -> Duration {
    timeouts.read.unwrap_or(Duration::from_secs(10)).min(Duration::from_secs(10))
}

/// Serves HTTP on an established connection. `h2`: `Some(true)` HTTP/2 only (ALPN `h2`),
/// `Some(false)` HTTP/1.1 only (ALPN `http/1.1` or none on TLS, or `codec_type: http1`),
/// `None` detect (plain listeners also accept h2c prior knowledge).
async fn serve_http<I>(io: I, h2: Option<bool>, info: ConnInfo, proxy: Arc<Proxy>)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let info = Arc::new(info);
    let mut builder = auto::Builder::new(StreamExecutor);
    configure_http1(&mut builder.http1());
    builder
        .http2()
        .timer(TokioTimer::new())
        .enable_connect_protocol()
        .initial_stream_window_size(CONNECTION_BUFFER as u32)
        .initial_connection_window_size(65_535)
        .max_send_buf_size(CONNECTION_BUFFER)
        .max_concurrent_streams(128)
        .max_header_list_size(MAX_HEAD_BYTES as u32)
        .keep_alive_interval(None);
    let svc_info = info.clone();
    let service = hyper::service::service_fn(move |req| {
        let (proxy, info) = (proxy.clone(), svc_info.clone());
        async move { Ok::<_, std::convert::Infallible>(super::forward::handle(&proxy, &info, req).await) }
    });
    let io = TokioIo::new(io);
    // hyper-util's `serve_connection_with_upgrades` ignores `http2_only`/`http1_only` (it
    // documents this) and sniffs for the HTTP/2 preface. When ALPN (or `codec_type`) has
    // decided the protocol, that protocol's own server is used, so that an h2 connection
    // without the preface fails with PROTOCOL_ERROR (RFC 9113 section 3.4) and an HTTP/1.1
    // connection never turns into HTTP/2. HTTP/2 needs no `with_upgrades`: hyper's h2 server
    // hands out CONNECT (and extended CONNECT) upgrades itself.
    match h2 {
        Some(true) => {
            let builder = builder.http2_only();
            // HTTP/2 streams are tasks of their own, each watched (`StreamExecutor`).
            let conn = Box::pin(Watched::unwatched(builder.serve_connection(io, service)));
            drive(conn, auto::Connection::graceful_shutdown, &info, false).await;
        }
        Some(false) => {
            let mut h1 = hyper::server::conn::http1::Builder::new();
            h1.timer(TokioTimer::new())
                .header_read_timeout(None)
                .max_buf_size(MAX_HEAD_BYTES)
                .max_headers(1000)
                .keep_alive(true);
            let conn = Box::pin(Watched::new(h1.serve_connection(io, service).with_upgrades()));
            drive(conn, hyper::server::conn::http1::UpgradeableConnection::graceful_shutdown, &info, true).await;
        }
        None => {
            let conn = Box::pin(Watched::new(builder.serve_connection_with_upgrades(io, service)));
            drive(conn, auto::UpgradeableConnection::graceful_shutdown, &info, true).await;
        }
    }
}

/// HTTP/1 settings shared by the auto-detecting and the HTTP/1-only servers: our own
/// watchdog replaces hyper's header timer (which also counts keep-alive idle time).
fn configure_http1(b: &mut auto::Http1Builder<'_, StreamExecutor>) {
    b.timer(TokioTimer::new())
        .header_read_timeout(None)
        .max_buf_size(MAX_HEAD_BYTES)
        .max_headers(1000)
        .keep_alive(true);
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
/// once on the HTTP/1 header timeout, when `drain_timeout` ends, or when the client stopped
/// reading a response (HTTP/1.1; an HTTP/2 stream is reset by its own task, see
/// [`super::stall`]). The premature-reset rule ends an HTTP/2 connection through its IO
/// ([`Metered`]).
///
/// The connection comes boxed: held inline, hyper's connection state (several KiB) was laid
/// out more than once in this task's future, and every idle connection paid for the copies.
async fn drive<C, E>(mut conn: Pin<Box<Watched<C>>>, graceful_shutdown: fn(Pin<&mut C>), info: &ConnInfo, is_h1: bool)
where
    C: std::future::Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    // Set when the graceful close began (GOAWAY sent, or HTTP/1.1 drain): from then on the
    // connection lives only while it has requests, plus the linger.
    let mut closing_since: Option<u64> = None;
    loop {
        let (timeouts, since) = match closing_since {
            Some(at) => (linger(info.timeouts), at),
            None => (info.timeouts, 0),
        };
        tokio::select! {
            res = conn.as_mut() => {
                match res {
                    Ok(Err(_)) if info.state.abort.load(Ordering::Acquire) => tracing::warn!(
                        peer = %info.peer,
                        "closed connection with ENHANCE_YOUR_CALM: most of its requests were cancelled by the client"
                    ),
                    Ok(Err(e)) => tracing::debug!(peer = %info.peer, error = %e, "connection ended with an error"),
                    Err(reason) => {
                        info.state.closed_by_proxy.store(true, Ordering::Release);
                        tracing::debug!(peer = %info.peer, ?reason, "closing connection: the client stopped reading its response");
                    }
                    Ok(Ok(())) => {}
                }
                break;
            }
            reason = watchdog(&info.state, timeouts, since, is_h1) => {
                match reason {
                    _ if closing_since.is_some() => {
                        tracing::debug!(peer = %info.peer, "closing connection: idle after its graceful close began");
                        break;
                    }
                    Watch::Idle => {
                        tracing::debug!(peer = %info.peer, "closing idle connection (timeout_idle)");
                        graceful_shutdown(conn.as_mut().inner());
                        closing_since = Some(now_ms());
                    }
                    Watch::HeaderTimeout => {
                        tracing::debug!(peer = %info.peer, "closing connection: request head not received within timeout_read");
                        break;
                    }
                }
            }
            () = info.conn.signals.drain.cancelled(), if closing_since.is_none() => {
                info.draining.store(true, Ordering::Release);
                if !is_h1 {
                    graceful_shutdown(conn.as_mut().inner());
                }
                closing_since = Some(now_ms());
            }
            () = info.conn.signals.close.cancelled() => {
                info.state.closed_by_proxy.store(true, Ordering::Release);
                tracing::debug!(peer = %info.peer, "closing connection: drain_timeout ended");
                break;
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
    fn new(inner: T, state: Arc<ConnState>) -> Self {
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
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        if self.state.abort.load(Ordering::Relaxed) {
            return self.poll_abort(cx).map(Err);
        }
        let this = self.project();
        let r = this.inner.poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            *this.at_frame_start = false;
            this.state.written.fetch_add(1, Ordering::Relaxed);
        }
        r
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.project();
        let r = this.inner.poll_flush(cx);
        if matches!(r, Poll::Ready(Ok(()))) {
            *this.at_frame_start = true;
        }
        r
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_shutdown(cx)
    }
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
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            *this.at_frame_start = false;
            this.state.written.fetch_add(1, Ordering::Relaxed);
        }
        r
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Runs a closure on drop (gauges that must go down however a task ends).
fn scopeguard<F: FnOnce()>(f: F) -> impl Drop {
    struct Guard<F: FnOnce()>(Option<F>);
    impl<F: FnOnce()> Drop for Guard<F> {
        fn drop(&mut self) {
            if let Some(f) = self.0.take() {
                f();
            }
        }
    }
    Guard(Some(f))
}
