//! Test support: real listeners on loopback, real TLS, real HTTP/1.1 and HTTP/2 clients.
#![allow(dead_code, missing_docs)]

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Once};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use portcullis::server::Running;
use portcullis::source::file::FileSource;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::client::TlsStream;

pub fn init() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let _ = tracing_subscriber::fmt()
            .with_env_filter(std::env::var("TEST_LOG").unwrap_or_else(|_| "warn".into()))
            .with_test_writer()
            .try_init();
    });
}

/// A demo upstream on an ephemeral loopback port.
pub async fn upstream(name: &str) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(portcullis::demo::serve(l, name.to_owned()));
    addr
}

/// A test certificate authority and leaf certificates it signs, as PEM files in a temp dir.
pub struct Pki {
    pub dir: tempfile::TempDir,
    ca: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
    pub ca_der: CertificateDer<'static>,
}

impl Pki {
    pub fn new() -> Self {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        p.distinguished_name.push(rcgen::DnType::CommonName, "portcullis test CA");
        let ca = rcgen::CertifiedIssuer::self_signed(p, ca_key).unwrap();
        let ca_der = ca.der().clone();
        Self { dir: tempfile::tempdir().unwrap(), ca, ca_der }
    }

    /// Writes `<file>.pem` and `<file>-key.pem` for `names`; returns the two paths.
    pub fn leaf(&self, file: &str, names: &[&str]) -> (PathBuf, PathBuf) {
        self.leaf_with(file, names, |_| {})
    }

    /// A client certificate (clientAuth usage) and its key, as rustls types.
    pub fn client(&self, name: &str) -> (Vec<CertificateDer<'static>>, rustls_pki_types::PrivateKeyDer<'static>) {
        use rustls_pki_types::pem::PemObject;
        let (c, k) =
            self.leaf_with(name, &[name], |p| p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth]);
        let chain = CertificateDer::pem_file_iter(c).unwrap().map(Result::unwrap).collect();
        (chain, rustls_pki_types::PrivateKeyDer::from_pem_file(k).unwrap())
    }

    /// A client certificate and key as PEM files (`<name>.pem`, `<name>-key.pem`).
    pub fn leaf_client_files(&self, name: &str) -> (String, String) {
        let (c, k) =
            self.leaf_with(name, &[name], |p| p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth]);
        (c.display().to_string(), k.display().to_string())
    }

    /// The CA certificate as a PEM file named `ca.pem`.
    pub fn ca_file(&self) -> PathBuf {
        let p = self.dir.path().join("ca.pem");
        std::fs::write(&p, self.ca.pem()).unwrap();
        p
    }

    fn leaf_with(
        &self,
        file: &str,
        names: &[&str],
        tweak: impl FnOnce(&mut rcgen::CertificateParams),
    ) -> (PathBuf, PathBuf) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p =
            rcgen::CertificateParams::new(names.iter().map(std::string::ToString::to_string).collect::<Vec<_>>())
                .unwrap();
        tweak(&mut p);
        p.distinguished_name.push(rcgen::DnType::CommonName, file);
        let cert = p.signed_by(&key, &self.ca).unwrap();
        let cp = self.dir.path().join(format!("{file}.pem"));
        let kp = self.dir.path().join(format!("{file}-key.pem"));
        std::fs::write(&cp, cert.pem()).unwrap();
        std::fs::write(&kp, key.serialize_pem()).unwrap();
        (cp, kp)
    }
}

/// Listener addresses default to ephemeral loopback ports unless the YAML sets them.
pub fn with_ports(yaml: &str) -> String {
    let mut out = String::new();
    for key in ["address", "http_redirect_address", "admin_address", "metrics_address"] {
        if !yaml.lines().any(|l| l.starts_with(&format!("{key}:"))) {
            let _ = writeln!(out, "{key}: \"127.0.0.1:0\"");
        }
    }
    out.push_str(yaml);
    out
}

/// Starts the data plane from YAML (written to `dir`, so relative cert paths resolve there).
pub async fn start_in(dir: &std::path::Path, yaml: &str) -> Running {
    init();
    let path = dir.join("portcullis.yaml");
    std::fs::write(&path, with_ports(yaml)).unwrap();
    let loaded = FileSource::new(&path).load_with_env(&|_| None).unwrap_or_else(|e| panic!("bad test config:\n{e}"));
    portcullis::server::start(loaded.config).await.unwrap()
}

pub async fn start(yaml: &str) -> (Running, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let r = start_in(dir.path(), yaml).await;
    (r, dir)
}

/// The certificate the proxy presents by default (self-signed when none is configured).
pub fn default_cert(r: &Running) -> CertificateDer<'static> {
    r.proxy.certificates()[0].key.cert[0].clone()
}

pub fn client_config(roots: &[CertificateDer<'static>], alpn: &[&[u8]]) -> rustls::ClientConfig {
    let mut store = rustls::RootCertStore::empty();
    for r in roots {
        store.add(r.clone()).unwrap();
    }
    let mut c = rustls::ClientConfig::builder().with_root_certificates(store).with_no_client_auth();
    c.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    c
}

pub async fn tls_connect(
    addr: SocketAddr,
    sni: &str,
    cfg: rustls::ClientConfig,
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(cfg));
    connector.connect(ServerName::try_from(sni.to_owned()).unwrap(), tcp).await
}

pub type Body = http_body_util::combinators::UnsyncBoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

pub fn empty() -> Body {
    Empty::new().map_err(|n| match n {}).boxed_unsync()
}

pub fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).map_err(|n| match n {}).boxed_unsync()
}

/// An HTTP/1.1 connection over TLS to the proxy.
pub async fn h1_tls(
    addr: SocketAddr,
    sni: &str,
    roots: &[CertificateDer<'static>],
) -> hyper::client::conn::http1::SendRequest<Body> {
    let tls = tls_connect(addr, sni, client_config(roots, &[b"http/1.1"])).await.unwrap();
    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await.unwrap();
    tokio::spawn(async move {
        let _ = conn.with_upgrades().await;
    });
    send
}

/// An HTTP/1.1 connection over plain TCP.
pub async fn h1_plain(addr: SocketAddr) -> hyper::client::conn::http1::SendRequest<Body> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await.unwrap();
    tokio::spawn(async move {
        let _ = conn.with_upgrades().await;
    });
    send
}

/// An HTTP/2 connection over TLS (ALPN h2) to the proxy.
pub async fn h2_tls(
    addr: SocketAddr,
    sni: &str,
    roots: &[CertificateDer<'static>],
) -> hyper::client::conn::http2::SendRequest<Body> {
    let tls = tls_connect(addr, sni, client_config(roots, &[b"h2"])).await.unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]), "server must negotiate h2");
    let (send, conn) =
        hyper::client::conn::http2::Builder::new(TokioExecutor::new()).handshake(TokioIo::new(tls)).await.unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    send
}

/// An HTTP/1.1 WebSocket handshake (RFC 6455's example key) for `/ws` on `host`.
pub fn ws_upgrade(host: &str) -> Request<Body> {
    Request::get("/ws")
        .header("host", host)
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-version", "13")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
        .body(empty())
        .unwrap()
}

pub fn get(host: &str, path: &str) -> Request<Body> {
    Request::get(path).header("host", host).body(empty()).unwrap()
}

/// `get` for HTTP/2, where the authority goes in the URI.
pub fn get2(host: &str, path: &str) -> Request<Body> {
    Request::get(format!("https://{host}{path}")).body(empty()).unwrap()
}

pub async fn text(resp: Response<Incoming>) -> (u16, String) {
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.map(http_body_util::Collected::to_bytes).unwrap_or_default();
    (status, String::from_utf8_lossy(&body).into_owned())
}

pub async fn json(resp: Response<Incoming>) -> (u16, serde_json::Value) {
    let (s, t) = text(resp).await;
    (s, serde_json::from_str(&t).unwrap_or(serde_json::Value::String(t)))
}

/// One HTTPS/1.1 GET on a fresh connection; status and body.
pub async fn https_get(r: &Running, host: &str, path: &str) -> (u16, String) {
    // SNI "localhost" is always in the self-signed default; the Host header picks the route.
    let mut c = h1_tls(r.main, "localhost", &[default_cert(r)]).await;
    text(c.send_request(get(host, path)).await.unwrap()).await
}

/// Scrapes `/metrics`.
pub async fn metrics(r: &Running) -> String {
    let mut c = h1_plain(r.metrics.unwrap()).await;
    text(c.send_request(get("m", "/metrics")).await.unwrap()).await.1
}

pub fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// An HTTP/3 connection to the proxy's `quic-ingress` (quinn + h3, the same crates as the
/// server, but the client side of them).
pub struct H3 {
    pub conn: quinn::Connection,
    pub send: h3::client::SendRequest<h3_quinn::OpenStreams, Bytes>,
    /// The connection driver; ends with the error that closed the connection.
    pub closed: tokio::task::JoinHandle<h3::error::ConnectionError>,
    _endpoint: quinn::Endpoint,
}

/// A QUIC client endpoint on loopback with `tls` (ALPN set to `h3`).
pub fn h3_endpoint(mut tls: rustls::ClientConfig) -> quinn::Endpoint {
    tls.alpn_protocols = vec![b"h3".to_vec()];
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
    let mut endpoint = quinn::Endpoint::client(SocketAddr::from(([127, 0, 0, 1], 0))).unwrap();
    endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(quic)));
    endpoint
}

/// Connects over QUIC to `addr` with SNI `sni`, verifying against `roots`, and sets up HTTP/3.
pub async fn h3_connect(addr: SocketAddr, sni: &str, roots: &[CertificateDer<'static>]) -> Result<H3, String> {
    h3_connect_with(addr, sni, client_config(roots, &[])).await
}

/// [`h3_connect`] with a TLS config of the caller's (a client certificate, say).
pub async fn h3_connect_with(addr: SocketAddr, sni: &str, tls: rustls::ClientConfig) -> Result<H3, String> {
    let endpoint = h3_endpoint(tls);
    let conn = endpoint
        .connect(addr, sni)
        .map_err(|e| format!("connect: {e}"))?
        .await
        .map_err(|e| format!("QUIC handshake: {e}"))?;
    let (mut driver, send) =
        h3::client::new(h3_quinn::Connection::new(conn.clone())).await.map_err(|e| format!("HTTP/3 setup: {e}"))?;
    let closed = tokio::spawn(async move { std::future::poll_fn(|cx| driver.poll_close(cx)).await });
    Ok(H3 { conn, send, closed, _endpoint: endpoint })
}

impl H3 {
    /// An HTTP/3 connection set up by the caller (other client settings).
    pub fn from_parts(
        conn: quinn::Connection,
        send: h3::client::SendRequest<h3_quinn::OpenStreams, Bytes>,
        closed: tokio::task::JoinHandle<h3::error::ConnectionError>,
        endpoint: quinn::Endpoint,
    ) -> Self {
        Self { conn, send, closed, _endpoint: endpoint }
    }

    /// The leaf certificate the server presented.
    pub fn peer_cert(&self) -> Option<CertificateDer<'static>> {
        let certs = self.conn.peer_identity()?.downcast::<Vec<CertificateDer<'static>>>().ok()?;
        certs.first().cloned()
    }
}

/// One HTTP/3 response, read to the end.
#[derive(Debug)]
pub struct H3Reply {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl H3Reply {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Sends `req` on `send` with `body` (streamed in 64 KiB chunks) and reads the whole answer.
pub async fn h3_request(
    send: &mut h3::client::SendRequest<h3_quinn::OpenStreams, Bytes>,
    req: Request<()>,
    body: Option<Bytes>,
) -> Result<H3Reply, h3::error::StreamError> {
    use bytes::Buf as _;
    let mut stream = send.send_request(req).await?;
    if let Some(mut body) = body {
        while !body.is_empty() {
            let chunk = body.split_to(body.len().min(64 * 1024));
            stream.send_data(chunk).await?;
        }
    }
    // A server that answers before reading the whole request may stop it with H3_NO_ERROR;
    // the response still comes (RFC 9114 section 4.1.1).
    if let Err(e) = stream.finish().await {
        if !e.is_h3_no_error() {
            return Err(e);
        }
    }
    let resp = stream.recv_response().await?;
    let mut out = bytes::BytesMut::new();
    while let Some(mut chunk) = stream.recv_data().await? {
        out.extend_from_slice(&chunk.copy_to_bytes(chunk.remaining()));
    }
    Ok(H3Reply { status: resp.status().as_u16(), headers: resp.headers().clone(), body: out.freeze() })
}

/// `GET https://{host}{path}` over HTTP/3.
pub fn get3(host: &str, path: &str) -> Request<()> {
    Request::get(format!("https://{host}{path}")).body(()).unwrap()
}

/// What the load clients of the drain tests (HTTP/1.1, HTTP/2, HTTP/3) saw.
#[derive(Default)]
pub struct Tally {
    pub sent: AtomicU64,
    pub ok: AtomicU64,
    pub failed: AtomicU64,
    /// Requests retried as HTTP allows: the connection closed before the request was taken
    /// (an idle keep-alive connection closed by a drain, a stream refused after GOAWAY, an
    /// HTTP/3 request not sent because GOAWAY had come).
    pub retried: AtomicU64,
    /// Connections refused or reset while connecting or mid-response.
    pub resets: AtomicU64,
    pub connections: AtomicU64,
    pub errors: Mutex<Vec<String>>,
}

impl Tally {
    pub fn fail(&self, what: String) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        let mut e = self.errors.lock().unwrap();
        if e.len() < 10 {
            e.push(what);
        }
    }

    pub fn summary(&self) -> String {
        format!(
            "sent {} ok {} failed {} retried {} resets {} connections {} errors {:?}",
            self.sent.load(Ordering::Relaxed),
            self.ok.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
            self.retried.load(Ordering::Relaxed),
            self.resets.load(Ordering::Relaxed),
            self.connections.load(Ordering::Relaxed),
            self.errors.lock().unwrap()
        )
    }
}

/// A TCP upstream that echoes everything and closes its side after the client closed its
/// own: a half-close must cross a tunnel both ways for the client to see the end.
pub async fn tcp_echo() -> SocketAddr {
    use tokio::io::AsyncWriteExt as _;
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.into_split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    addr
}

/// A UDP upstream that answers every datagram with itself.
pub async fn udp_echo() -> SocketAddr {
    let s = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = s.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65_536];
        while let Ok((n, from)) = s.recv_from(&mut buf).await {
            let _ = s.send_to(&buf[..n], from).await;
        }
    });
    addr
}
