//! Starts the data plane for a config: binds every listener of the reference, then serves
//! until told to shut down. Used by `serve`, `demo` and the integration tests alike.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

use crate::admin::{self, Plane};
use crate::config::{CodecType, Config};
use crate::metrics::Metrics;
use crate::proxy::listener::{self, ListenerKind};
use crate::proxy::{ListenerInfo, Proxy};
use crate::tls::{server_config, SniResolver};

/// A started data plane and the addresses it actually bound (ports may have been 0).
pub struct Running {
    /// The data plane.
    pub proxy: Arc<Proxy>,
    /// `https-ingress` (or the plain routes listener with `insecure_server`).
    pub main: SocketAddr,
    /// `http-ingress` redirect listener.
    pub http: Option<SocketAddr>,
    /// `admin`.
    pub admin: Option<SocketAddr>,
    /// `metrics-ingress`.
    pub metrics: Option<SocketAddr>,
    tasks: Vec<JoinHandle<()>>,
}

/// ALPN offered for a codec. `http2` prefers HTTP/2 but still accepts HTTP/1.1 clients:
/// an h2-only listener breaks cert-manager's HTTP-01 self-check and old clients.
pub fn alpn_for(codec: CodecType) -> &'static [&'static [u8]] {
    match codec {
        CodecType::Http1 => &[b"http/1.1"],
        CodecType::Auto | CodecType::Http2 | CodecType::Http3 => &[b"h2", b"http/1.1"],
    }
}

/// Binds and starts every listener for `config`. Async although nothing awaits yet: it
/// spawns tasks, so it must only be called from inside the runtime.
#[allow(clippy::unused_async)]
pub async fn start(config: Config) -> io::Result<Running> {
    let proxy = Proxy::new(config, Arc::new(Metrics::new()));
    let snap = proxy.snapshot();
    let s = &snap.settings;
    let mut tasks = Vec::new();

    let main_listener = listener::bind(s.address)?;
    let main = main_listener.local_addr()?;
    let (kind, acceptor) = if s.insecure_server {
        (ListenerKind::Insecure, None)
    } else {
        let resolver = Arc::new(SniResolver(proxy.cert_store()));
        let cfg = server_config(resolver, alpn_for(s.codec_type), s.downstream_mtls.as_ref())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("TLS setup: {e}")))?;
        (ListenerKind::Https, Some(TlsAcceptor::from(Arc::new(cfg))))
    };
    proxy.add_listener(ListenerInfo { name: kind.name(), address: main, protocol: "tcp", generation: 0 });
    tasks.push(tokio::spawn(listener::run(kind, main_listener, proxy.clone(), acceptor, main.port())));

    let mut http = None;
    if let (false, Some(addr)) = (s.insecure_server, s.http_redirect_address) {
        let l = listener::bind(addr)?;
        let bound = l.local_addr()?;
        http = Some(bound);
        proxy.add_listener(ListenerInfo { name: "http-ingress", address: bound, protocol: "tcp", generation: 0 });
        tasks.push(tokio::spawn(listener::run(ListenerKind::Redirect, l, proxy.clone(), None, main.port())));
    }
    let mut side = |addr: Option<SocketAddr>, plane: Plane, name: &'static str| -> io::Result<Option<SocketAddr>> {
        let Some(addr) = addr else { return Ok(None) };
        let l = listener::bind(addr)?;
        let bound = l.local_addr()?;
        proxy.add_listener(ListenerInfo { name, address: bound, protocol: "tcp", generation: 0 });
        tasks.push(tokio::spawn(admin::run(plane, l, proxy.clone())));
        Ok(Some(bound))
    };
    let admin = side(s.admin_address, Plane::Admin, "admin")?;
    let metrics = side(s.metrics_address, Plane::Metrics, "metrics-ingress")?;
    drop(snap);
    proxy.set_ready(true);
    for l in proxy.listeners() {
        tracing::info!(listener = l.name, address = %l.address, "listening");
    }
    Ok(Running { proxy, main, http, admin, metrics, tasks })
}

impl Running {
    /// Graceful shutdown: `/readyz` fails at once, listeners stop accepting, connections
    /// finish in-flight work (HTTP/1.1 gets `Connection: close`, HTTP/2 a GOAWAY), and
    /// whatever is still open after `grace` is closed. Returns how many connections had to
    /// be closed by force.
    pub async fn shutdown(self, grace: Duration) -> usize {
        let g = self.proxy.generation.clone();
        self.proxy.set_ready(false);
        g.stop_accepting.cancel();
        g.drain.cancel();
        g.tracker.close();
        let forced = if tokio::time::timeout(grace, g.tracker.wait()).await.is_err() {
            let left = g.tracker.len();
            tracing::warn!(connections = left, "drain_timeout ended; closing the remaining connections");
            g.close.cancel();
            let _ = tokio::time::timeout(Duration::from_secs(5), g.tracker.wait()).await;
            left
        } else {
            0
        };
        for t in self.tasks {
            t.abort();
        }
        forced
    }
}
