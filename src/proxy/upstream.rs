//! Upstream side: pooled hyper clients (one per distinct TLS setup, reused across config
//! reloads so that a route edit never drops upstream keep-alive connections) and the
//! targets the balancer (`balance`) picks from.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use http::Uri;
use hyper_rustls::{FixedServerNameResolver, HttpsConnector};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::ClientConfig;

use crate::config::{Upstream, UpstreamScheme, UpstreamTls};
use crate::proxy::body::ProxyBody;
use crate::proxy::endpoints::EndpointState;

/// PRODUCT.md: connecting to an upstream, TLS handshake included, takes at most this.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The client type every route uses.
pub type HttpClient = Client<TimeoutConnector, ProxyBody>;

/// Connects to one upstream address whatever the request URI says, under the 10 s limit
/// that covers TCP connect *and* TLS handshake (`set_connect_timeout` alone would not).
///
/// Pinning the address lets the request URI carry the `Host` the route wants: HTTP/2
/// upstreams read `:authority` from it, so `host_rewrite` and `preserve_host_header` work
/// on both HTTP versions, while the pool stays per upstream.
#[derive(Clone)]
pub struct TimeoutConnector {
    inner: HttpsConnector<HttpConnector>,
    target: Uri,
}

/// Why a connection attempt failed; `Timeout` lets the proxy say so in its 503.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The connect + handshake deadline passed.
    #[error("upstream connect timed out after {0:?}")]
    Timeout(Duration),
    /// Refused, unreachable, DNS or TLS failure.
    #[error("{0}")]
    Failed(Box<dyn std::error::Error + Send + Sync>),
}

impl tower_service::Service<Uri> for TimeoutConnector {
    type Response = <HttpsConnector<HttpConnector> as tower_service::Service<Uri>>::Response;
    type Error = ConnectError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, ConnectError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ConnectError>> {
        self.inner.poll_ready(cx).map_err(ConnectError::Failed)
    }

    fn call(&mut self, _uri: Uri) -> Self::Future {
        let fut = self.inner.call(self.target.clone());
        Box::pin(async move {
            match tokio::time::timeout(CONNECT_TIMEOUT, fut).await {
                Ok(r) => r.map_err(ConnectError::Failed),
                Err(_) => Err(ConnectError::Timeout(CONNECT_TIMEOUT)),
            }
        })
    }
}

/// How long an idle pooled connection is kept (as hyper_util's pool).
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// Idle connections kept per upstream.
const POOL_MAX_IDLE: usize = 256;
/// How long a pooled connection stays idle before it rests: its hyper connection (an 8 KiB
/// read and an 8 KiB write buffer, its task) ends and the pool keeps only the socket, on
/// which the next request that takes it builds a new one, as downstream connections rest
/// (`accept/rest.rs`). A proxy in front of thousands of pods holds an idle connection to
/// most of them. Longer than downstream's 50 ms: an upstream that gets a request every few
/// hundred milliseconds would otherwise build a connection per request.
const POOL_REST_AFTER: Duration = Duration::from_secs(1);

/// What the connector gives: a plain socket for the `http` upstreams this pool serves.
type Io = <HttpsConnector<HttpConnector> as tower_service::Service<Uri>>::Response;
type SendRequest = hyper::client::conn::http1::SendRequest<ProxyBody>;
/// The socket of a plain one, the only kind that rests.
type Plain = hyper_util::rt::TokioIo<tokio::net::TcpStream>;

/// HTTP/1.1 to a plain `http` upstream on a small pool of our own: the same connector
/// (10 s connect limit, TCP_NODELAY, keep-alive), the same HTTP/1.1 client settings and the
/// same pool rules as the general client (idle connections expire after 90 s, at most 256
/// kept, the most recently used first, a request refused by a reused connection before it
/// was sent is retried on another), without hashing a pool key and moving large futures
/// around per request, and with idle connections that rest ([`POOL_REST_AFTER`]). HTTPS
/// (ALPN may pick HTTP/2), h2c, upgrades and health checks keep using [`HttpClient`].
#[derive(Clone)]
pub struct H1Pool {
    inner: Arc<H1PoolInner>,
}

struct H1PoolInner {
    connector: TimeoutConnector,
    idle: Mutex<Vec<IdleConn>>,
    reaper: std::sync::Once,
    /// Names connections, so that a connection's task finds its own entry in `idle`.
    next_id: std::sync::atomic::AtomicU64,
    rest_after: Duration,
}

/// A connection in the pool, most recently used last.
struct IdleConn {
    id: u64,
    conn: Idle,
    since: tokio::time::Instant,
}

enum Idle {
    /// A hyper connection (its task running), ready for a request.
    Live(SendRequest),
    /// Only the socket: whoever takes it builds a hyper connection on it.
    Resting(Plain),
}

/// Why a request through an [`H1Pool`] failed.
#[derive(Debug)]
pub enum H1Error {
    /// Connecting (or the connect deadline) failed; the request, never sent, comes back
    /// (its body unread) for a retry elsewhere.
    Connect(ConnectError, Option<Box<http::Request<ProxyBody>>>),
    /// A new connection closed before the request was written: the request comes back.
    Unsent(hyper::Error, Box<http::Request<ProxyBody>>),
    /// The connection failed around the request; `kind` is hyper_util's name for it, so
    /// that the message reads as the general client's does.
    Request {
        /// `SendRequest` or `Canceled`.
        kind: &'static str,
        /// What hyper said.
        error: hyper::Error,
    },
}

impl H1Pool {
    fn new(connector: TimeoutConnector) -> Self {
        Self::with_rest(connector, POOL_REST_AFTER)
    }

    fn with_rest(connector: TimeoutConnector, rest_after: Duration) -> Self {
        Self {
            inner: Arc::new(H1PoolInner {
                connector,
                idle: Mutex::new(Vec::new()),
                reaper: std::sync::Once::new(),
                next_id: std::sync::atomic::AtomicU64::new(0),
                rest_after,
            }),
        }
    }

    /// Sends `req` (absolute-form URI) upstream on a pooled or new connection.
    pub async fn send(
        &self,
        mut req: http::Request<ProxyBody>,
    ) -> Result<http::Response<hyper::body::Incoming>, H1Error> {
        let uri = req.uri().clone();
        loop {
            let (id, mut tx, reused) = match self.checkout() {
                Some((id, Idle::Live(tx))) => (id, tx, true),
                // A socket the upstream may have closed since: as a reused connection, a
                // request it refuses unsent is retried.
                Some((id, Idle::Resting(io))) => {
                    match Box::pin(self.start(id, hyper_rustls::MaybeHttpsStream::Http(io))).await {
                        Ok(tx) => (id, tx, true),
                        Err(_) => continue,
                    }
                }
                // Boxed: connecting is rare and its future large; this one is moved per request.
                None => match Box::pin(self.connect()).await {
                    Ok((id, tx)) => (id, tx, false),
                    Err(H1Error::Connect(e, _)) => return Err(H1Error::Connect(e, Some(Box::new(req)))),
                    Err(e) => return Err(e),
                },
            };
            origin_form(req.uri_mut());
            match tx.try_send_request(req).await {
                Ok(resp) => {
                    self.put_back_when_ready(id, tx);
                    return Ok(resp);
                }
                Err(mut e) => match e.take_message() {
                    Some(r) if reused => {
                        req = r;
                        *req.uri_mut() = uri.clone();
                    }
                    Some(mut r) => {
                        *r.uri_mut() = uri.clone();
                        return Err(H1Error::Unsent(e.into_error(), Box::new(r)));
                    }
                    None => return Err(H1Error::Request { kind: "SendRequest", error: e.into_error() }),
                },
            }
        }
    }

    /// The most recently used idle connection that is still usable.
    fn checkout(&self) -> Option<(u64, Idle)> {
        let mut idle = crate::sync::lock(&self.inner.idle);
        while let Some(c) = idle.pop() {
            if c.since.elapsed() > POOL_IDLE_TIMEOUT {
                continue;
            }
            match c.conn {
                Idle::Live(tx) if tx.is_ready() => return Some((c.id, Idle::Live(tx))),
                Idle::Resting(io) if still_open(&io) => return Some((c.id, Idle::Resting(io))),
                _ => {}
            }
        }
        None
    }

    async fn connect(&self) -> Result<(u64, SendRequest), H1Error> {
        use tower_service::Service as _;
        let mut connector = self.inner.connector.clone();
        let io = connector.call(connector.target.clone()).await.map_err(|e| H1Error::Connect(e, None))?;
        let id = self.inner.next_id.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok((id, self.start(id, io).await?))
    }

    /// A hyper connection on `io`, its task spawned, ready for a request.
    async fn start(&self, id: u64, io: Io) -> Result<SendRequest, H1Error> {
        // Only a plain socket can rest: whether it is still open is then a non-blocking read.
        let can_rest = matches!(io, hyper_rustls::MaybeHttpsStream::Http(_));
        let (mut tx, conn) = hyper::client::conn::http1::Builder::new()
            .handshake(io)
            .await
            .map_err(|error| H1Error::Request { kind: "SendRequest", error })?;
        tokio::spawn(drive(conn, Arc::downgrade(&self.inner), id, can_rest));
        tx.ready().await.map_err(|error| H1Error::Request { kind: "SendRequest", error })?;
        Ok(tx)
    }

    /// Returns the connection to the pool once it can take the next request (at once when
    /// the response came whole; after its body otherwise).
    fn put_back_when_ready(&self, id: u64, mut tx: SendRequest) {
        if tx.is_closed() {
            return;
        }
        if tx.is_ready() {
            self.put(id, tx);
        } else {
            let pool = self.clone();
            tokio::spawn(async move {
                if tx.ready().await.is_ok() {
                    pool.put(id, tx);
                }
            });
        }
    }

    fn put(&self, id: u64, tx: SendRequest) {
        self.inner.reaper.call_once(|| self.spawn_reaper());
        let mut idle = crate::sync::lock(&self.inner.idle);
        if idle.len() < POOL_MAX_IDLE {
            idle.push(IdleConn { id, conn: Idle::Live(tx), since: tokio::time::Instant::now() });
        }
    }

    /// Closes idle connections once they expire (and resting sockets the upstream closed),
    /// as long as the pool exists.
    fn spawn_reaper(&self) {
        let weak = Arc::downgrade(&self.inner);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(POOL_IDLE_TIMEOUT);
            tick.tick().await;
            loop {
                tick.tick().await;
                let Some(inner) = weak.upgrade() else { return };
                let mut idle = crate::sync::lock(&inner.idle);
                idle.retain(|c| {
                    c.since.elapsed() <= POOL_IDLE_TIMEOUT
                        && match &c.conn {
                            Idle::Live(tx) => !tx.is_closed(),
                            Idle::Resting(io) => still_open(io),
                        }
                });
            }
        });
    }
}

impl H1PoolInner {
    /// Takes connection `id` out of the pool if it has been idle there for `rest_after`.
    /// `Err`: when to look again.
    fn take_rested(&self, id: u64) -> Result<(SendRequest, tokio::time::Instant), tokio::time::Instant> {
        let now = tokio::time::Instant::now();
        let mut idle = crate::sync::lock(&self.idle);
        let Some(at) = idle.iter().position(|c| c.id == id && matches!(c.conn, Idle::Live(_))) else {
            // In use: it is back in the pool, at the earliest, after that long.
            return Err(now + self.rest_after);
        };
        let due = idle[at].since + self.rest_after;
        if due > now {
            return Err(due);
        }
        let c = idle.remove(at);
        let Idle::Live(tx) = c.conn else { unreachable!("matched above") };
        Ok((tx, c.since))
    }

    /// Puts a rested socket back, behind every live connection: those are taken first.
    fn put_resting(&self, id: u64, io: Plain, since: tokio::time::Instant) {
        let mut idle = crate::sync::lock(&self.idle);
        if idle.len() < POOL_MAX_IDLE {
            idle.insert(0, IdleConn { id, conn: Idle::Resting(io), since });
        }
    }
}

/// A pooled connection's task: runs hyper's connection until it ends or, idle in the pool
/// for `rest_after`, rests: the pool's handle to it is dropped, which ends hyper's
/// connection without shutting the socket down, and the socket (when hyper had read
/// nothing more from it) goes back to the pool.
async fn drive(
    conn: hyper::client::conn::http1::Connection<Io, ProxyBody>,
    pool: std::sync::Weak<H1PoolInner>,
    id: u64,
    can_rest: bool,
) {
    let conn = conn.without_shutdown();
    tokio::pin!(conn);
    let Some(rest_after) = pool.upgrade().map(|p| p.rest_after).filter(|_| can_rest) else {
        if let Err(e) = conn.await {
            tracing::debug!("client connection error: {e:?}");
        }
        return;
    };
    let timer = tokio::time::sleep(rest_after);
    tokio::pin!(timer);
    let mut rested = None;
    let mut watching = true;
    loop {
        tokio::select! {
            ended = &mut conn => {
                match ended {
                    Ok(parts) => {
                        if let (Some(since), Some(pool), hyper_rustls::MaybeHttpsStream::Http(io), true) =
                            (rested, pool.upgrade(), parts.io, parts.read_buf.is_empty())
                        {
                            pool.put_resting(id, io, since);
                        }
                    }
                    Err(e) => tracing::debug!("client connection error: {e:?}"),
                }
                return;
            }
            () = &mut timer, if watching && rested.is_none() => {
                // The pool is gone: its handle went with it, and this connection ends.
                let Some(p) = pool.upgrade() else {
                    watching = false;
                    continue;
                };
                match p.take_rested(id) {
                    Ok((tx, since)) => {
                        rested = Some(since);
                        drop(tx);
                    }
                    Err(at) => timer.as_mut().reset(at),
                }
            }
        }
    }
}

/// Whether a resting socket is still open and quiet: a non-blocking read sees the
/// upstream's FIN (or bytes it should not have sent) that arrived while it rested.
fn still_open(io: &Plain) -> bool {
    let mut byte = [0u8; 1];
    matches!(io.inner().try_read(&mut byte), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
}

/// The request target as an HTTP/1.1 client sends it to an origin (as hyper_util does).
fn origin_form(uri: &mut Uri) {
    let path = match uri.path_and_query() {
        Some(path) if path.as_str() != "/" => {
            let mut parts = http::uri::Parts::default();
            parts.path_and_query = Some(path.clone());
            Uri::from_parts(parts).expect("path is valid uri")
        }
        _ => Uri::default(),
    };
    *uri = path;
}

/// What makes two upstream clients interchangeable.
#[derive(Clone, PartialEq, Eq, Hash)]
struct ClientKey {
    target: String,
    h2c: bool,
    h1_only: bool,
    skip_verify: bool,
    server_name: Option<String>,
    custom_ca: Option<Vec<Vec<u8>>>,
    client_cert: Option<Vec<Vec<u8>>>,
}

/// Keeps upstream clients (and so their connection pools) alive across snapshots.
#[derive(Default)]
pub struct ClientCache {
    clients: Mutex<HashMap<ClientKey, HttpClient>>,
    h1_pools: Mutex<HashMap<String, H1Pool>>,
}

impl ClientCache {
    /// The client for an upstream scheme and TLS setup, creating it on first use. Called
    /// while building a snapshot, never on the request path.
    ///
    /// `h1_only` clients never negotiate HTTP/2: WebSocket upgrades need HTTP/1.1 upstream.
    pub fn get(&self, upstream: &Upstream, tls: &UpstreamTls, h1_only: bool) -> HttpClient {
        let scheme = upstream.scheme;
        let key = ClientKey {
            target: format!("{}://{}", scheme_str(scheme), upstream.authority),
            h2c: scheme == UpstreamScheme::H2c && !h1_only,
            h1_only,
            skip_verify: tls.skip_verify,
            server_name: tls.server_name.clone(),
            custom_ca: tls.custom_ca.as_ref().map(|c| c.iter().map(|d| d.to_vec()).collect()),
            client_cert: tls.client_cert.as_ref().map(|c| c.chain.iter().map(|d| d.to_vec()).collect()),
        };
        let mut clients = crate::sync::lock(&self.clients);
        clients.entry(key.clone()).or_insert_with(|| build_client(&key.target, key.h2c, key.h1_only, tls)).clone()
    }

    /// The own HTTP/1.1 pool of a plain `http` upstream (`None` for h2c and https ones),
    /// shared across snapshots like the clients.
    pub fn h1_pool(&self, upstream: &Upstream) -> Option<H1Pool> {
        if upstream.scheme != UpstreamScheme::Http {
            return None;
        }
        let target = format!("http://{}", upstream.authority);
        let mut pools = crate::sync::lock(&self.h1_pools);
        Some(
            pools
                .entry(target)
                .or_insert_with_key(|t| H1Pool::new(timeout_connector(t, true, &UpstreamTls::default())))
                .clone(),
        )
    }
}

/// `http` or `https`: h2c is plain HTTP on the wire.
pub fn scheme_str(scheme: UpstreamScheme) -> &'static str {
    if scheme == UpstreamScheme::Https {
        "https"
    } else {
        "http"
    }
}

fn build_client(target: &str, h2c: bool, h1_only: bool, tls: &UpstreamTls) -> HttpClient {
    let connector = timeout_connector(target, h1_only, tls);
    let mut b = Client::builder(TokioExecutor::new());
    b.timer(TokioTimer::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(POOL_IDLE_TIMEOUT)
        .pool_max_idle_per_host(POOL_MAX_IDLE)
        .http2_initial_stream_window_size(1 << 20)
        .http2_initial_connection_window_size(4 << 20)
        .http2_adaptive_window(false)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .http2_keep_alive_while_idle(false)
        .set_host(false);
    if h2c {
        b.http2_only(true);
    }
    b.build(connector)
}

fn timeout_connector(target: &str, h1_only: bool, tls: &UpstreamTls) -> TimeoutConnector {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_keepalive(Some(Duration::from_secs(60)));
    let builder = hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(client_tls(tls)).https_or_http();
    let builder = match &tls.server_name {
        Some(name) => match rustls_pki_types::ServerName::try_from(name.clone()) {
            Ok(n) => builder.with_server_name_resolver(FixedServerNameResolver::new(n)),
            Err(_) => builder,
        },
        None => builder,
    };
    let https = if h1_only {
        builder.enable_http1().wrap_connector(http)
    } else {
        builder.enable_all_versions().wrap_connector(http)
    };
    TimeoutConnector { inner: https, target: target.parse().expect("validated upstream authority") }
}

fn client_tls(tls: &UpstreamTls) -> ClientConfig {
    let provider = crate::pki::provider();
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("the default provider supports the default versions");
    let builder = if tls.skip_verify {
        builder.dangerous().with_custom_certificate_verifier(Arc::new(NoVerify(provider)))
    } else {
        let roots = if let Some(cas) = &tls.custom_ca {
            let mut roots = rustls::RootCertStore::empty();
            for ca in cas {
                let _ = roots.add(ca.clone());
            }
            Arc::new(roots)
        } else {
            system_roots()
        };
        builder.with_root_certificates(roots)
    };
    match &tls.client_cert {
        Some(c) => builder
            .with_client_auth_cert(c.chain.clone(), c.key.clone_key())
            .unwrap_or_else(|_| unreachable_client_auth()),
        None => builder.with_no_client_auth(),
    }
}

/// The system's trust store (webpki's roots when it has none), read once per process: every
/// upstream client needs a TLS config, and reading and parsing /etc/ssl/certs per client cost
/// ~8 ms and ~300 KiB each, which made a 1,000-Service cluster take seconds to load.
pub(crate) fn system_roots() -> Arc<rustls::RootCertStore> {
    static ROOTS: std::sync::OnceLock<Arc<rustls::RootCertStore>> = std::sync::OnceLock::new();
    ROOTS
        .get_or_init(|| {
            let mut roots = rustls::RootCertStore::empty();
            let (added, _) = roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
            if added == 0 {
                roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
            }
            Arc::new(roots)
        })
        .clone()
}

/// Client keys were validated when the config was parsed; if rustls still refuses one we
/// fall back to no client certificate and let the upstream reject us visibly.
fn unreachable_client_auth() -> ClientConfig {
    tracing::error!("upstream client certificate rejected by rustls; connecting without one");
    ClientConfig::builder_with_provider(crate::pki::provider())
        .with_safe_default_protocol_versions()
        .expect("default versions")
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth()
}

/// `tls_skip_verify`: accepts any certificate but still checks handshake signatures.
#[derive(Debug)]
pub(crate) struct NoVerify(pub(crate) Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _: &rustls_pki_types::CertificateDer<'_>,
        _: &[rustls_pki_types::CertificateDer<'_>],
        _: &rustls_pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls_pki_types::UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// One upstream of a route with its live state.
pub struct Target {
    /// Where and how.
    pub upstream: Upstream,
    /// The pooled client for its scheme and TLS settings.
    pub client: HttpClient,
    /// HTTP/1.1-only client for WebSocket upgrades.
    pub upgrade_client: HttpClient,
    /// The own HTTP/1.1 pool of a plain `http` upstream, which proxied requests use.
    pub h1: Option<H1Pool>,
    /// `http` or `https`.
    pub scheme: &'static str,
    /// `scheme://authority` of the upstream itself.
    pub base: String,
    /// `Host` sent upstream by default: the authority, without a default port.
    pub host_header: String,
    /// `host_header` as a header value, if it is a valid one.
    pub host_value: Option<http::HeaderValue>,
    /// `host_header` as a URI authority, if it is a valid one.
    pub authority: Option<http::uri::Authority>,
    /// Health, ejection and requests in flight, shared across snapshots so that a reload
    /// does not forget them.
    pub state: Arc<EndpointState>,
}

impl Target {
    /// The target for upstream `u` of a route with TLS settings `tls`; `state` is its live
    /// state from the endpoint registry.
    pub fn new(u: &Upstream, tls: &UpstreamTls, cache: &ClientCache, state: Arc<EndpointState>) -> Self {
        let host_header = match u.authority.rsplit_once(':') {
            Some((h, "80")) if u.scheme != UpstreamScheme::Https => h.to_owned(),
            Some((h, "443")) if u.scheme == UpstreamScheme::Https => h.to_owned(),
            _ => u.authority.clone(),
        };
        Target {
            scheme: scheme_str(u.scheme),
            base: format!("{}://{}", scheme_str(u.scheme), u.authority),
            client: cache.get(u, tls, false),
            upgrade_client: cache.get(u, tls, true),
            h1: cache.h1_pool(u),
            host_value: http::HeaderValue::from_str(&host_header).ok(),
            authority: host_header.parse().ok(),
            host_header,
            upstream: u.clone(),
            state,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// An upstream answering `ok` to every request; `close_after_one` closes each connection
    /// after its first answer without saying so (a keep-alive race). Counts connections.
    async fn upstream(close_after_one: bool) -> (String, Arc<AtomicUsize>) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = l.accept().await.unwrap();
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 1024];
                    loop {
                        let Ok(n) = s.read(&mut chunk).await else { return };
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            buf.drain(..end + 4);
                            let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await;
                            if close_after_one {
                                return;
                            }
                        }
                    }
                });
            }
        });
        (format!("http://{addr}"), accepted)
    }

    async fn get(pool: &H1Pool, base: &str) -> http::StatusCode {
        let req = http::Request::get(format!("{base}/x")).body(crate::proxy::body::empty()).unwrap();
        let resp = pool.send(req).await.map_err(|e| format!("{e:?}")).unwrap();
        let status = resp.status();
        http_body_util::BodyExt::collect(resp.into_body()).await.unwrap();
        status
    }

    #[tokio::test]
    async fn h1_pool_reuses_connections() {
        let (base, accepted) = upstream(false).await;
        let pool = H1Pool::new(timeout_connector(&base, true, &UpstreamTls::default()));
        for _ in 0..3 {
            assert_eq!(get(&pool, &base).await, http::StatusCode::OK);
            tokio::task::yield_now().await;
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn h1_pool_survives_upstream_closing_idle_connections() {
        let (base, accepted) = upstream(true).await;
        let pool = H1Pool::new(timeout_connector(&base, true, &UpstreamTls::default()));
        for _ in 0..3 {
            assert_eq!(get(&pool, &base).await, http::StatusCode::OK);
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 3);
    }

    /// Which of the pool's idle connections rest, least recently used first.
    fn resting(pool: &H1Pool) -> Vec<bool> {
        crate::sync::lock(&pool.inner.idle).iter().map(|c| matches!(c.conn, Idle::Resting(_))).collect()
    }

    #[tokio::test]
    async fn h1_pool_rests_idle_connections_and_serves_on_their_socket() {
        let (base, accepted) = upstream(false).await;
        let connector = timeout_connector(&base, true, &UpstreamTls::default());
        let pool = H1Pool::with_rest(connector, Duration::from_millis(100));
        assert_eq!(get(&pool, &base).await, http::StatusCode::OK);
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(resting(&pool), [false], "not before rest_after");
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(resting(&pool), [true], "rested: only the socket is kept");
        for _ in 0..2 {
            assert_eq!(get(&pool, &base).await, http::StatusCode::OK);
            tokio::task::yield_now().await;
        }
        assert_eq!(resting(&pool), [false], "a live connection again");
        assert_eq!(accepted.load(Ordering::SeqCst), 1, "the same socket throughout");
    }

    #[tokio::test]
    async fn h1_pool_drops_a_resting_socket_the_upstream_closed() {
        // An upstream that closes connections idle for 200 ms, as servers with a keep-alive
        // timeout do.
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", l.local_addr().unwrap());
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = l.accept().await.unwrap();
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut chunk = [0u8; 1024];
                    while let Ok(Ok(n)) = tokio::time::timeout(Duration::from_millis(200), s.read(&mut chunk)).await {
                        if n == 0 {
                            return;
                        }
                        let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await;
                    }
                });
            }
        });
        let connector = timeout_connector(&base, true, &UpstreamTls::default());
        let pool = H1Pool::with_rest(connector, Duration::from_millis(50));
        assert_eq!(get(&pool, &base).await, http::StatusCode::OK);
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(resting(&pool), [true]);
        assert!(pool.checkout().is_none(), "the upstream's FIN is seen at checkout");
        assert_eq!(get(&pool, &base).await, http::StatusCode::OK);
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn h1_pool_reports_refused_connections_as_connect_errors() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", l.local_addr().unwrap());
        drop(l);
        let pool = H1Pool::new(timeout_connector(&base, true, &UpstreamTls::default()));
        let req = http::Request::get(format!("{base}/")).body(crate::proxy::body::empty()).unwrap();
        assert!(matches!(pool.send(req).await, Err(H1Error::Connect(ConnectError::Failed(_), Some(_)))));
    }
}
