//! Starts the data plane for a config: binds every listener of the reference, then serves
//! until told to shut down. Used by `serve`, `demo` and the integration tests alike.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;

use crate::admin::{self, Plane};
use crate::config::Config;
use crate::metrics::Metrics;
use crate::proxy::listener::{self, ListenerKind};
use crate::proxy::{ListenerInfo, Proxy};

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

/// Binds and starts every listener for `config`. Async although nothing awaits yet: it
/// spawns tasks, so it must only be called from inside the runtime.
#[allow(clippy::unused_async)]
pub async fn start(config: Config) -> io::Result<Running> {
    let proxy =
        Proxy::new(config, Arc::new(Metrics::new())).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let snap = proxy.snapshot();
    let s = &snap.settings;
    let mut tasks = Vec::new();

    let main_listener = listener::bind(s.address)?;
    let main = main_listener.local_addr()?;
    let kind = if s.insecure_server { ListenerKind::Insecure } else { ListenerKind::Https };
    proxy.add_listener(ListenerInfo { name: kind.name(), address: main, protocol: "tcp" });
    tasks.push(tokio::spawn(listener::run(kind, main_listener, proxy.clone(), main.port())));

    let mut http = None;
    if let (false, Some(addr)) = (s.insecure_server, s.http_redirect_address) {
        let l = listener::bind(addr)?;
        let bound = l.local_addr()?;
        http = Some(bound);
        proxy.add_listener(ListenerInfo { name: "http-ingress", address: bound, protocol: "tcp" });
        tasks.push(tokio::spawn(listener::run(ListenerKind::Redirect, l, proxy.clone(), main.port())));
    }
    let mut side = |addr: Option<SocketAddr>, plane: Plane, name: &'static str| -> io::Result<Option<SocketAddr>> {
        let Some(addr) = addr else { return Ok(None) };
        let l = listener::bind(addr)?;
        let bound = l.local_addr()?;
        proxy.add_listener(ListenerInfo { name, address: bound, protocol: "tcp" });
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
        self.proxy.set_ready(false);
        self.proxy.stop_accepting.cancel();
        let forced = self.proxy.drains.drain_all(grace).await;
        for t in self.tasks {
            t.abort();
        }
        forced
    }
}
