//! Opening one tunnel to the proxy: TLS (or QUIC), the CONNECT (or CONNECT-UDP) request,
//! the answer; then carrying the local side's bytes or datagrams over it.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use bytes::{Buf, Bytes, BytesMut};
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::mpsc;

use super::options::{Ctx, Options, Token, Transport};
use crate::masque;

/// Why a tunnel did not open, as the user reads it.
#[derive(Debug, thiserror::Error)]
pub enum TunnelError {
    /// The proxy cannot be reached (DNS, TCP, QUIC).
    #[error("cannot reach the proxy at {addr}: {reason}")]
    Unreachable {
        /// `host:port` tried.
        addr: String,
        /// What failed.
        reason: String,
    },
    /// TLS with the proxy failed.
    #[error("TLS with {host} failed: {reason}")]
    Tls {
        /// The name verified.
        host: String,
        /// What failed.
        reason: String,
    },
    /// The proxy answered, but not with a tunnel.
    #[error("{}", refused_message(*status, route, reason))]
    Refused {
        /// Its status.
        status: u16,
        /// The tunnel asked for.
        route: String,
        /// The first line of its page (the reason it gave).
        reason: String,
    },
    /// HTTP with the proxy failed.
    #[error("HTTP with the proxy failed: {0}")]
    Protocol(String),
    /// The proxy refused the token with a 401: the one given (`--token`), or the one the
    /// sign-in just brought.
    #[error("{}", token_refused_message(reason, *signed_in))]
    TokenRefused {
        /// The first line of its page.
        reason: String,
        /// Whether the token came from a sign-in of this run.
        signed_in: bool,
    },
    /// The browser sign-in failed.
    #[error("sign-in failed: {0}")]
    Login(String),
}

fn token_refused_message(reason: &str, signed_in: bool) -> String {
    let reason = if reason.is_empty() { "401 Unauthorized" } else { reason };
    if signed_in {
        format!("the token of the sign-in that just finished was refused: {reason}")
    } else {
        format!("the token was refused: {reason}")
    }
}

fn refused_message(status: u16, route: &str, reason: &str) -> String {
    match status {
        403 => format!("denied by policy of route {route} (403): {reason}"),
        401 => format!("the proxy wants an identity for {route} (401): {reason}; sign in, or pass --token"),
        404 => format!("the proxy has no tunnel route for {route} (404)"),
        _ => format!("the proxy refused the tunnel to {route} ({status}): {reason}"),
    }
}

/// The TLS client config: the given CAs or the system's, ALPN set per connection.
pub(crate) fn tls_config(opts: &Options) -> anyhow::Result<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder =
        rustls::ClientConfig::builder_with_provider(provider.clone()).with_safe_default_protocol_versions()?;
    let builder = if opts.insecure {
        builder.dangerous().with_custom_certificate_verifier(Arc::new(crate::proxy::upstream::NoVerify(provider)))
    } else {
        let mut roots = rustls::RootCertStore::empty();
        if let Some(path) = &opts.ca_file {
            for cert in
                CertificateDer::pem_file_iter(path).with_context(|| format!("reading --ca-file {}", path.display()))?
            {
                roots.add(cert.with_context(|| format!("--ca-file {}", path.display()))?)?;
            }
        } else {
            let (added, _) = roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
            if added == 0 {
                roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
            }
        }
        builder.with_root_certificates(roots)
    };
    Ok(match (&opts.client_cert, &opts.client_key) {
        (Some(c), Some(k)) => {
            let chain = CertificateDer::pem_file_iter(c)
                .with_context(|| format!("reading --client-cert {}", c.display()))?
                .collect::<Result<Vec<_>, _>>()
                .with_context(|| format!("--client-cert {}", c.display()))?;
            let key =
                PrivateKeyDer::from_pem_file(k).with_context(|| format!("reading --client-key {}", k.display()))?;
            builder.with_client_auth_cert(chain, key).context("--client-cert and --client-key do not match")?
        }
        (None, None) => builder.with_no_client_auth(),
        _ => anyhow::bail!("--client-cert and --client-key go together"),
    })
}

/// A TLS connection to the proxy with `alpn`.
async fn tls(ctx: &Ctx, alpn: &[&[u8]]) -> Result<tokio_rustls::client::TlsStream<TcpStream>, TunnelError> {
    let addr = format!("{}:{}", ctx.proxy_host, ctx.proxy_port);
    let unreachable = |reason: String| TunnelError::Unreachable { addr: addr.clone(), reason };
    let tcp = tokio::time::timeout(Duration::from_secs(10), TcpStream::connect(&addr))
        .await
        .map_err(|_| unreachable("no answer within 10s".into()))?
        .map_err(|e| unreachable(e.to_string()))?;
    let _ = tcp.set_nodelay(true);
    let mut cfg = (*ctx.tls).clone();
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let name = ServerName::try_from(ctx.proxy_host.clone())
        .map_err(|e| TunnelError::Tls { host: ctx.proxy_host.clone(), reason: e.to_string() })?;
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(name, tcp)
        .await
        .map_err(|e| TunnelError::Tls { host: ctx.proxy_host.clone(), reason: e.to_string() })
}

type Empty0 = Empty<Bytes>;

fn bearer(req: &mut http::request::Builder, token: Option<&Token>) {
    if let Some(t) = token {
        if let Some(h) = req.headers_mut() {
            if let Ok(mut v) = http::HeaderValue::from_str(&format!("Bearer {}", t.expose())) {
                v.set_sensitive(true);
                h.insert(http::header::AUTHORIZATION, v);
            }
        }
    }
}

/// The refusal in an answer that is no tunnel: its status and the first line of its page.
async fn refused<B>(ctx: &Ctx, resp: http::Response<B>) -> TunnelError
where
    B: http_body::Body,
    B::Error: std::fmt::Display,
{
    let status = resp.status().as_u16();
    let body = match tokio::time::timeout(Duration::from_secs(5), resp.into_body().collect()).await {
        Ok(Ok(b)) => String::from_utf8_lossy(&b.to_bytes()).into_owned(),
        _ => String::new(),
    };
    let reason = body.lines().next().unwrap_or("").trim().to_owned();
    TunnelError::Refused { status, route: format!("{}:{}", ctx.opts.host, ctx.opts.port), reason }
}

/// A QUIC connection and its HTTP/3 request sender.
type H3Conn = (quinn::Connection, h3::client::SendRequest<h3_quinn::OpenStreams, Bytes>);

/// An open TCP tunnel.
pub(crate) enum TunnelIo {
    /// HTTP/1.1 or HTTP/2: hyper's upgraded stream.
    Upgraded(TokioIo<hyper::upgrade::Upgraded>),
    /// HTTP/3: the request stream.
    /// (The request sender is kept: h3 closes the connection when the last one drops.)
    H3(Box<h3::client::RequestStream<h3_quinn::BidiStream<Bytes>, Bytes>>, H3Conn),
}

/// Opens a TCP tunnel over the transport in force.
pub(crate) async fn tcp(ctx: &Arc<Ctx>, token: Option<Token>) -> Result<TunnelIo, TunnelError> {
    let authority = format!("{}:{}", authority_host(&ctx.opts.host), ctx.opts.port);
    if let Some((conn, mut send)) = h3_or_fallback(ctx).await? {
        let mut req = Request::connect(authority.as_str());
        bearer(&mut req, token.as_ref());
        let req = req.body(()).map_err(|e| TunnelError::Protocol(e.to_string()))?;
        let mut stream = send.send_request(req).await.map_err(|e| TunnelError::Protocol(e.to_string()))?;
        let resp = stream.recv_response().await.map_err(|e| TunnelError::Protocol(e.to_string()))?;
        if resp.status() != StatusCode::OK {
            return Err(refused_h3(ctx, resp.status().as_u16(), &mut stream).await);
        }
        return Ok(TunnelIo::H3(Box::new(stream), (conn, send)));
    }
    let alpn: &[&[u8]] = match ctx.opts.transport {
        Transport::Http1 => &[b"http/1.1"],
        Transport::Http2 => &[b"h2"],
        _ => &[b"h2", b"http/1.1"],
    };
    let tls = tls(ctx, alpn).await?;
    let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
    if ctx.opts.transport == Transport::Http2 && !h2 {
        return Err(TunnelError::Protocol("the proxy does not speak HTTP/2 (ALPN)".into()));
    }
    let mut req = Request::connect(authority.as_str());
    if !h2 {
        // RFC 9112 section 3.2: a CONNECT's Host is its authority (HTTP/2 has none).
        req = req.header(http::header::HOST, authority.as_str());
    }
    bearer(&mut req, token.as_ref());
    let req = req.body(Empty0::new()).map_err(|e| TunnelError::Protocol(e.to_string()))?;
    let resp = if h2 {
        let (mut send, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .handshake(TokioIo::new(tls))
            .await
            .map_err(|e| TunnelError::Protocol(e.to_string()))?;
        tokio::spawn(conn);
        send.send_request(req).await
    } else {
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| TunnelError::Protocol(e.to_string()))?;
        tokio::spawn(conn.with_upgrades());
        send.send_request(req).await
    }
    .map_err(|e| TunnelError::Protocol(e.to_string()))?;
    ctx.learn_alt_svc(resp.headers());
    if resp.status() != StatusCode::OK {
        return Err(refused(ctx, resp).await);
    }
    let upgraded = hyper::upgrade::on(resp).await.map_err(|e| TunnelError::Protocol(e.to_string()))?;
    Ok(TunnelIo::Upgraded(TokioIo::new(upgraded)))
}

/// The host as an authority writes it (an IPv6 literal in brackets).
fn authority_host(host: &str) -> String {
    if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_owned()
    }
}

impl TunnelIo {
    /// Carries bytes both ways between `local` and the tunnel until both sides end; each
    /// side's end of stream is passed on as a half-close.
    pub(crate) async fn pump<L: AsyncRead + AsyncWrite + Unpin>(self, mut local: L) -> std::io::Result<()> {
        match self {
            Self::Upgraded(mut io) => tokio::io::copy_bidirectional(&mut local, &mut io).await.map(|_| ()),
            Self::H3(stream, (conn, _send)) => {
                let (mut send, mut recv) = stream.split();
                let (mut lr, mut lw) = tokio::io::split(local);
                let up = async {
                    let mut buf = vec![0u8; 32 * 1024];
                    loop {
                        let n = lr.read(&mut buf).await?;
                        if n == 0 {
                            break;
                        }
                        send.send_data(Bytes::copy_from_slice(&buf[..n])).await.map_err(std::io::Error::other)?;
                    }
                    send.finish().await.map_err(std::io::Error::other)
                };
                let down = async {
                    while let Some(mut chunk) = recv.recv_data().await.map_err(std::io::Error::other)? {
                        let bytes = chunk.copy_to_bytes(chunk.remaining());
                        lw.write_all(&bytes).await?;
                        // Standard output is line-buffered: a protocol's bytes must not wait
                        // for a newline.
                        lw.flush().await?;
                    }
                    lw.shutdown().await
                };
                let (a, b) = tokio::join!(up, down);
                drained(&conn).await;
                a.and(b)
            }
        }
    }
}

/// How long a QUIC handshake may take with `--http3`; HTTP/3 learnt from `Alt-Svc` gets
/// less before the client goes back to TCP (UDP is often blocked where TCP is not).
const QUIC_HANDSHAKE: Duration = Duration::from_secs(10);
const QUIC_HANDSHAKE_LEARNT: Duration = Duration::from_secs(3);

/// The HTTP/3 connection of the next tunnel when it goes over HTTP/3; `None` when it goes
/// over TCP, including when HTTP/3 learnt from `Alt-Svc` cannot be reached.
async fn h3_or_fallback(ctx: &Ctx) -> Result<Option<H3Conn>, TunnelError> {
    if !ctx.use_h3() {
        return Ok(None);
    }
    match h3_connection(ctx).await {
        Ok(c) => Ok(Some(c)),
        Err(e @ TunnelError::Unreachable { .. }) => {
            if ctx.h3_unreachable() {
                eprintln!("portcullis tunnel: HTTP/3 advertised by the proxy but {e}; using TCP");
                Ok(None)
            } else {
                Err(e)
            }
        }
        Err(e) => Err(e),
    }
}

/// A QUIC connection failure as the user reads it: a handshake the proxy's certificate
/// failed (or that TLS refused) is a TLS error naming the host; anything else, the address.
fn quic_error(ctx: &Ctx, addr: &str, e: &quinn::ConnectionError) -> TunnelError {
    // QUIC carries TLS alerts as the error codes 0x100-0x1ff (RFC 9001 section 4.8).
    let crypto = |code: quinn::TransportErrorCode| (0x100..0x200).contains(&u64::from(code));
    match e {
        quinn::ConnectionError::TransportError(t) if crypto(t.code) => {
            TunnelError::Tls { host: ctx.proxy_host.clone(), reason: t.to_string() }
        }
        quinn::ConnectionError::ConnectionClosed(c) if crypto(c.error_code) => {
            TunnelError::Tls { host: ctx.proxy_host.clone(), reason: c.to_string() }
        }
        _ => TunnelError::Unreachable { addr: addr.to_owned(), reason: format!("QUIC: {e}") },
    }
}

/// Waits (at most 10 s) until the connection has nothing left to send: the stream's FIN is
/// queued, not delivered, and closing the connection (dropping it) would lose what is still
/// in flight. Quinn sends nothing once every byte is acknowledged, and retransmits until
/// then, so a short quiet spell means the data arrived.
async fn drained(conn: &quinn::Connection) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut last = conn.stats().udp_tx.datagrams;
    let mut quiet = 0;
    while quiet < 6 && tokio::time::Instant::now() < deadline && conn.close_reason().is_none() {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = conn.stats().udp_tx.datagrams;
        quiet = if now == last { quiet + 1 } else { 0 };
        last = now;
    }
}

/// A new QUIC connection to the proxy's HTTP/3, taking datagrams and extended CONNECT.
async fn h3_connection(ctx: &Ctx) -> Result<H3Conn, TunnelError> {
    let port = match ctx.h3_port.load(Ordering::Relaxed) {
        0 => ctx.proxy_port,
        p => p,
    };
    let addr_text = format!("{}:{port}", ctx.proxy_host);
    let unreachable = |reason: String| TunnelError::Unreachable { addr: addr_text.clone(), reason };
    let addr: SocketAddr = tokio::net::lookup_host(&addr_text)
        .await
        .map_err(|e| unreachable(e.to_string()))?
        .next()
        .ok_or_else(|| unreachable("no address".into()))?;
    let endpoint = if let Some(e) = ctx.quic.get() {
        e.clone()
    } else {
        {
            let mut tls = (*ctx.tls).clone();
            tls.alpn_protocols = vec![b"h3".to_vec()];
            let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
                .map_err(|e| TunnelError::Tls { host: ctx.proxy_host.clone(), reason: e.to_string() })?;
            let bind: SocketAddr =
                if addr.is_ipv6() { "[::]:0".parse().expect("address") } else { "0.0.0.0:0".parse().expect("address") };
            let mut endpoint = quinn::Endpoint::client(bind).map_err(|e| unreachable(e.to_string()))?;
            let mut client = quinn::ClientConfig::new(Arc::new(quic));
            let mut transport = quinn::TransportConfig::default();
            transport.keep_alive_interval(Some(Duration::from_secs(15)));
            client.transport_config(Arc::new(transport));
            endpoint.set_default_client_config(client);
            ctx.quic.get_or_init(|| endpoint).clone()
        }
    };
    let connecting = endpoint.connect(addr, &ctx.proxy_host).map_err(|e| unreachable(e.to_string()))?;
    let limit = if ctx.opts.transport == Transport::Auto { QUIC_HANDSHAKE_LEARNT } else { QUIC_HANDSHAKE };
    let conn = tokio::time::timeout(limit, connecting)
        .await
        .map_err(|_| unreachable(format!("no QUIC answer within {}s", limit.as_secs())))?
        .map_err(|e| quic_error(ctx, &addr_text, &e))?;
    let (mut driver, send) = h3::client::builder()
        .enable_datagram(true)
        .enable_extended_connect(true)
        .build::<_, _, Bytes>(h3_quinn::Connection::new(conn.clone()))
        .await
        .map_err(|e| TunnelError::Protocol(e.to_string()))?;
    tokio::spawn(async move { std::future::poll_fn(|cx| driver.poll_close(cx)).await });
    Ok((conn, send))
}

async fn refused_h3<S: h3::quic::RecvStream>(
    ctx: &Ctx,
    status: u16,
    stream: &mut h3::client::RequestStream<S, Bytes>,
) -> TunnelError {
    let mut body = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        while let Ok(Some(mut chunk)) = stream.recv_data().await {
            body.extend_from_slice(&chunk.copy_to_bytes(chunk.remaining()));
        }
    })
    .await;
    let text = String::from_utf8_lossy(&body);
    let reason = text.lines().next().unwrap_or("").trim().to_owned();
    TunnelError::Refused { status, route: format!("{}:{}", ctx.opts.host, ctx.opts.port), reason }
}

/// An open UDP tunnel.
pub(crate) enum UdpFlow {
    /// HTTP/3: datagrams naming the request stream (kept open while the tunnel lives).
    H3 { conn: H3Conn, stream: Box<h3::client::RequestStream<h3_quinn::BidiStream<Bytes>, Bytes>>, id: u64 },
    /// HTTP/1.1: DATAGRAM capsules on the upgraded stream.
    Capsules(TokioIo<hyper::upgrade::Upgraded>),
}

/// Opens a UDP tunnel: HTTP/3 when in force, else HTTP/1.1's capsules.
pub(crate) async fn udp(ctx: &Arc<Ctx>, token: Option<Token>) -> Result<UdpFlow, TunnelError> {
    let path = masque::udp_path(&ctx.opts.host, ctx.opts.port);
    let proxy = authority_host(&ctx.proxy_host);
    if let Some((conn, mut send)) = h3_or_fallback(ctx).await? {
        let mut req =
            Request::connect(format!("https://{proxy}:{}{path}", ctx.proxy_port)).header("capsule-protocol", "?1");
        bearer(&mut req, token.as_ref());
        let mut req = req.body(()).map_err(|e| TunnelError::Protocol(e.to_string()))?;
        req.extensions_mut().insert(h3::ext::Protocol::CONNECT_UDP);
        let mut stream = send.send_request(req).await.map_err(|e| TunnelError::Protocol(e.to_string()))?;
        let resp = stream.recv_response().await.map_err(|e| TunnelError::Protocol(e.to_string()))?;
        if resp.status() != StatusCode::OK {
            return Err(refused_h3(ctx, resp.status().as_u16(), &mut stream).await);
        }
        let id = stream.id().into_inner();
        return Ok(UdpFlow::H3 { conn: (conn, send), stream: Box::new(stream), id });
    }
    let tls = tls(ctx, &[b"http/1.1"]).await?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(|e| TunnelError::Protocol(e.to_string()))?;
    tokio::spawn(conn.with_upgrades());
    let mut req = Request::get(path.as_str())
        .header(http::header::HOST, format!("{proxy}:{}", ctx.proxy_port))
        .header(http::header::CONNECTION, "upgrade")
        .header(http::header::UPGRADE, "connect-udp")
        .header("capsule-protocol", "?1");
    bearer(&mut req, token.as_ref());
    let req = req.body(Empty0::new()).map_err(|e| TunnelError::Protocol(e.to_string()))?;
    let resp = send.send_request(req).await.map_err(|e| TunnelError::Protocol(e.to_string()))?;
    ctx.learn_alt_svc(resp.headers());
    if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        return Err(refused(ctx, resp).await);
    }
    let upgraded = hyper::upgrade::on(resp).await.map_err(|e| TunnelError::Protocol(e.to_string()))?;
    Ok(UdpFlow::Capsules(TokioIo::new(upgraded)))
}

impl UdpFlow {
    /// Sends the local peer's datagrams (`rx`) through the tunnel and the answers back to
    /// `peer` on `socket`, until the peer has sent nothing for `idle` (answers do not keep a
    /// tunnel whose local peer went away) or the tunnel ends.
    pub(crate) async fn relay(
        self,
        mut rx: mpsc::Receiver<Bytes>,
        socket: Arc<UdpSocket>,
        peer: SocketAddr,
        idle: Duration,
    ) {
        let silent = tokio::time::sleep(idle);
        tokio::pin!(silent);
        match self {
            Self::H3 { conn: (conn, _send), mut stream, id } => loop {
                tokio::select! {
                    // The proxy ends the tunnel by ending its stream (its capsules, if any,
                    // are skipped).
                    end = stream.recv_data() => {
                        if !matches!(end, Ok(Some(_))) {
                            break;
                        }
                    }
                    () = &mut silent => break,
                    d = rx.recv() => match d {
                        Some(d) => {
                            silent.as_mut().reset(tokio::time::Instant::now() + idle);
                            // Too large for the path: dropped, as the network would.
                            let _ = conn.send_datagram(masque::h3_datagram(id, &d));
                        }
                        None => break,
                    },
                    got = conn.read_datagram() => {
                        let Ok(got) = got else { break };
                        if let Some((sid, value)) = masque::split_h3_datagram(got) {
                            if sid == id {
                                if let Some(payload) = masque::udp_payload(value) {
                                    let _ = socket.send_to(&payload, peer).await;
                                }
                            }
                        }
                    }
                }
            },
            Self::Capsules(mut io) => {
                let mut inbound = BytesMut::with_capacity(4096);
                loop {
                    tokio::select! {
                        () = &mut silent => break,
                        d = rx.recv() => match d {
                            Some(d) => {
                                silent.as_mut().reset(tokio::time::Instant::now() + idle);
                                if io.write_all(&masque::udp_capsule(&d)).await.is_err() {
                                    break;
                                }
                            }
                            None => break,
                        },
                        n = io.read_buf(&mut inbound) => {
                            if !matches!(n, Ok(n) if n > 0) {
                                break;
                            }
                            let mut malformed = false;
                            loop {
                                match masque::take_capsule(&mut inbound) {
                                    Ok(Some(c)) if c.kind == masque::DATAGRAM_CAPSULE => {
                                        if let Some(payload) = masque::udp_payload(c.value) {
                                            let _ = socket.send_to(&payload, peer).await;
                                        }
                                    }
                                    // Another capsule type: skipped (RFC 9297 section 3.2).
                                    Ok(Some(_)) => {}
                                    Ok(None) => break,
                                    Err(e) => {
                                        eprintln!("portcullis tunnel: {peer}: the proxy sent {e}; closing");
                                        malformed = true;
                                        break;
                                    }
                                }
                            }
                            if malformed {
                                break;
                            }
                        }
                    }
                }
                let _ = io.shutdown().await;
            }
        }
    }
}
