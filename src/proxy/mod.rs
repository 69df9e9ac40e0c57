//! The data plane. One module per stage: [`listener`] accepts and serves connections,
//! [`crate::tls`] terminates TLS, [`route`] finds the route, [`forward`] applies the route's
//! policy and headers and talks to the [`upstream`], [`websocket`] carries upgraded streams,
//! [`body`] enforces timeouts while bytes flow.
//!
//! The request path takes no lock: it loads the current [`Snapshot`] from an `ArcSwap`.

pub mod body;
pub mod error;
pub mod forward;
pub mod health;
pub mod listener;
pub mod route;
pub mod upstream;
pub mod websocket;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{Certificate, Config, HostMatch, Route, Settings};
use crate::metrics::Metrics;
use crate::tls::CertStore;
use route::RouteTable;
use upstream::{Balancer, ClientCache};

/// A route ready to serve: the domain route plus its effective timeouts and balancer.
pub struct CompiledRoute {
    /// The validated route.
    pub route: Route,
    /// Upstream timeout after defaults and the WebSocket adjustment; `None` = disabled.
    pub upstream_timeout: Option<Duration>,
    /// Stream idle timeout after defaults, the `timeout_idle` cap and the WebSocket
    /// adjustment; `None` = disabled.
    pub stream_idle: Option<Duration>,
    /// Upstream selection.
    pub balancer: Balancer,
}

impl CompiledRoute {
    fn new(route: Route, settings: &Settings, clients: &ClientCache, health: &health::Registry) -> Self {
        // Pomerium: a WebSocket route gets no upstream timeout and no stream idle timeout
        // unless the route sets them; a route can disable the idle timeout but not raise it
        // above timeout_idle.
        let upstream_timeout = match route.timeout {
            Some(t) => t,
            None if route.allow_websockets => None,
            None => settings.default_upstream_timeout,
        };
        let stream_idle = match route.idle_timeout {
            Some(None) => None,
            Some(Some(t)) => Some(settings.timeouts.idle.map_or(t, |cap| t.min(cap))),
            None if route.allow_websockets => None,
            None => settings.timeouts.idle,
        };
        let name = route.name.clone();
        let balancer = Balancer::new(&route.to, &route.tls, route.load_balancing_policy, clients, |u| {
            health.flag(&name, &u.authority)
        });
        Self { route, upstream_timeout, stream_idle, balancer }
    }
}

/// One immutable, validated serving state. Reloads build a new one and swap it in.
pub struct Snapshot {
    /// Increases by one per applied config.
    pub version: u64,
    /// The config it was built from (settings are read per connection and per request).
    pub settings: Settings,
    /// Compiled routes.
    pub routes: RouteTable<CompiledRoute>,
    /// When it was applied.
    pub applied_at: SystemTime,
}

/// Signals for one listener generation: stop accepting, drain gracefully, close for good.
#[derive(Clone, Default)]
pub struct Generation {
    /// Cancelled when listeners must stop accepting.
    pub stop_accepting: CancellationToken,
    /// Cancelled when connections must finish in-flight work and close.
    pub drain: CancellationToken,
    /// Cancelled when every remaining connection must close now.
    pub close: CancellationToken,
    /// Every connection task, to wait for the drain.
    pub tracker: TaskTracker,
}

/// A bound listener, for `/listeners`.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ListenerInfo {
    /// `https-ingress`, `http-ingress`, `admin`, `metrics-ingress`.
    pub name: &'static str,
    /// Bound address.
    pub address: std::net::SocketAddr,
    /// `tcp`.
    pub protocol: &'static str,
    /// Listener generation (0 for the first).
    pub generation: u64,
}

/// The running data plane: current snapshot, certificates, upstream clients, metrics.
pub struct Proxy {
    snapshot: ArcSwap<Snapshot>,
    certs: Arc<ArcSwap<CertStore>>,
    clients: ClientCache,
    health: health::Registry,
    default_cert: Certificate,
    /// Prometheus metrics.
    pub metrics: Arc<Metrics>,
    ready: AtomicBool,
    version: AtomicU64,
    /// The current listener generation.
    pub generation: Generation,
    listeners: Mutex<Vec<ListenerInfo>>,
}

/// What [`Proxy::apply`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum Applied {
    /// Routes (and certificates) swapped in; no connection touched.
    Swapped,
    /// Swapped, but listener addresses or codec changed and need a restart to take effect.
    SwappedNeedsRestart(Vec<&'static str>),
}

impl Proxy {
    /// Builds the first snapshot. When no certificate is configured, a self-signed one for
    /// `localhost` and the routes' hosts is made now and kept for the process lifetime.
    pub fn new(config: Config, metrics: Arc<Metrics>) -> Arc<Self> {
        let mut names = vec!["localhost".to_owned()];
        names.extend(config.routes.iter().filter_map(|r| match &r.host {
            HostMatch::Exact(h) => Some(h.clone()),
            HostMatch::Wildcard(s) => Some(format!("*.{s}")),
            HostMatch::Any => None,
        }));
        names.sort();
        names.dedup();
        let default_cert = crate::tls::self_signed(&names);
        let clients = ClientCache::default();
        let health = health::Registry::default();
        let certs = Arc::new(ArcSwap::from_pointee(CertStore::new(&effective_certs(&config.settings, &default_cert))));
        let first = Arc::new(build_snapshot(config, 1, &clients, &health));
        health.restart(&first, &metrics.upstream_healthy);
        let snapshot = ArcSwap::new(first);
        metrics.reload_success.set(1);
        metrics.reload_success_timestamp.set(unix_now());
        Arc::new(Self {
            snapshot,
            certs,
            clients,
            health,
            default_cert,
            metrics,
            ready: AtomicBool::new(false),
            version: AtomicU64::new(1),
            generation: Generation::default(),
            listeners: Mutex::new(Vec::new()),
        })
    }

    /// The current snapshot. Cheap: one atomic increment.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    /// The certificate store the TLS resolver reads.
    pub fn cert_store(&self) -> Arc<ArcSwap<CertStore>> {
        self.certs.clone()
    }

    /// Swaps in a new config atomically. In-flight requests keep the snapshot they started
    /// with; upstream connection pools are reused.
    pub fn apply(&self, config: Config) -> Applied {
        let old = self.snapshot();
        let mut restart = Vec::new();
        let (a, b) = (&old.settings, &config.settings);
        if a.address != b.address || a.insecure_server != b.insecure_server {
            restart.push("address");
        }
        if a.http_redirect_address != b.http_redirect_address {
            restart.push("http_redirect_address");
        }
        if a.metrics_address != b.metrics_address {
            restart.push("metrics_address");
        }
        if a.admin_address != b.admin_address {
            restart.push("admin_address");
        }
        if a.codec_type != b.codec_type {
            restart.push("codec_type");
        }
        if a.downstream_mtls.is_some() != b.downstream_mtls.is_some() {
            restart.push("downstream_mtls");
        }
        let version = self.version.fetch_add(1, Ordering::Relaxed) + 1;
        self.certs.store(Arc::new(CertStore::new(&effective_certs(&config.settings, &self.default_cert))));
        let snap = Arc::new(build_snapshot(config, version, &self.clients, &self.health));
        self.snapshot.store(snap.clone());
        self.health.restart(&snap, &self.metrics.upstream_healthy);
        self.metrics.reload_success.set(1);
        self.metrics.reload_success_timestamp.set(unix_now());
        if restart.is_empty() {
            Applied::Swapped
        } else {
            Applied::SwappedNeedsRestart(restart)
        }
    }

    /// Records a rejected reload: the metric drops to 0, the snapshot stays.
    pub fn reject(&self) {
        self.metrics.reload_success.set(0);
    }

    /// Readiness for `/readyz`.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// Flips readiness (on once listeners are bound, off at shutdown).
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Release);
    }

    /// Registers a bound listener for `/listeners`.
    pub fn add_listener(&self, info: ListenerInfo) {
        self.listeners.lock().expect("listeners poisoned").push(info);
    }

    /// Bound listeners.
    pub fn listeners(&self) -> Vec<ListenerInfo> {
        self.listeners.lock().expect("listeners poisoned").clone()
    }

    /// The certificates in force (configured, or the self-signed default).
    pub fn certificates(&self) -> Vec<Certificate> {
        effective_certs(&self.snapshot().settings, &self.default_cert)
    }
}

fn effective_certs(settings: &Settings, default_cert: &Certificate) -> Vec<Certificate> {
    if settings.certificates.is_empty() {
        vec![default_cert.clone()]
    } else {
        settings.certificates.clone()
    }
}

fn build_snapshot(config: Config, version: u64, clients: &ClientCache, health: &health::Registry) -> Snapshot {
    let Config { settings, routes } = config;
    let compiled = routes.into_iter().map(|r| CompiledRoute::new(r, &settings, clients, health)).collect();
    Snapshot {
        version,
        routes: RouteTable::new(compiled, |r: &CompiledRoute| (&r.route.host, &r.route.path)),
        settings,
        applied_at: SystemTime::now(),
    }
}

fn unix_now() -> f64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}
