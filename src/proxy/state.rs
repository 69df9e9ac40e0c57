//! The running data plane ([`Proxy`]): the current snapshot and listener generation behind
//! `ArcSwap`s (the request path loads them and takes no lock), and what a reload does:
//! build the next snapshot, start a new listener generation when what a listener holds
//! changed, move sockets, start and stop health checkers.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use arc_swap::ArcSwap;
use tokio_util::sync::CancellationToken;

use super::assertion::Signer;
use super::drain::{Affected, Drains};
use super::generation::{self, cert_ids, ListenerGeneration, ListenerSettings};
use super::idp::{provider_tls, Idp};
use super::revocations::Revocations;
use super::signin::SignIn;
use super::snapshot::{CompiledRoute, RouteLife, Snapshot};
use super::table::RouteTable;
use super::upstream::ClientCache;
use super::{balance, endpoints, health};
use crate::config::{Certificate, CodecType, Config, DrainScope, HostMatch, Settings};
use crate::metrics::Metrics;

/// A bound listener, for `/listeners`.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ListenerInfo {
    /// `https-ingress`, `http-ingress`, `admin`, `metrics-ingress`.
    pub name: &'static str,
    /// Bound address.
    pub address: std::net::SocketAddr,
    /// `tcp`.
    pub protocol: &'static str,
}

/// The running data plane: current snapshot, certificates, upstream clients, metrics.
pub struct Proxy {
    snapshot: ArcSwap<Snapshot>,
    listener_generation: ArcSwap<ListenerGeneration>,
    lifetimes: RouteLifetimes,
    clients: ClientCache,
    health: health::Registry,
    endpoints: endpoints::Registry,
    tables: balance::Tables,
    default_cert: Certificate,
    /// Prometheus metrics.
    pub metrics: Arc<Metrics>,
    ready: AtomicBool,
    version: AtomicU64,
    /// Every live connection and drain.
    pub drains: Arc<Drains>,
    /// Cancelled at shutdown: every accept loop stops.
    pub stop_accepting: CancellationToken,
    listeners: Mutex<Vec<ListenerInfo>>,
    sockets: std::sync::OnceLock<Arc<dyn Sockets>>,
    /// `Alt-Svc` for TCP responses while `quic-ingress` listens.
    alt_svc: arc_swap::ArcSwapOption<http::HeaderValue>,
    /// Signed-out sessions, kept across reloads.
    pub revocations: Arc<Revocations>,
}

/// What [`Proxy::apply`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum Applied {
    /// Everything is in force.
    Swapped,
    /// Swapped, but a listener could not move to its new address (it stays where it was).
    SwappedWithListenerErrors(Vec<String>),
}

/// Opens and closes listener sockets when their addresses change. The server layer
/// implements it (it knows every plane, admin and metrics included); the proxy only says
/// when.
pub trait Sockets: Send + Sync {
    /// Moves the listeners to `new`'s addresses: binds each new socket first, then stops the
    /// old one (which hands its accept queue to the drain). Returns what could not be bound.
    fn update(&self, new: &Settings) -> Vec<String>;
}

impl Proxy {
    /// Builds the first snapshot. When no certificate is configured, a self-signed one for
    /// `localhost` and the routes' hosts is made now and kept for the process lifetime.
    pub fn new(config: Config, metrics: Arc<Metrics>) -> Result<Arc<Self>, String> {
        let mut names = vec!["localhost".to_owned()];
        names.extend(config.routes.iter().filter_map(|r| match &r.host {
            HostMatch::Exact(h) => Some(h.clone()),
            HostMatch::Wildcard(s) => Some(format!("*.{s}")),
            HostMatch::Any => None,
        }));
        names.sort();
        names.dedup();
        let default_cert = crate::pki::self_signed(&names);
        let clients = ClientCache::default();
        let health = health::Registry::default();
        let endpoints = endpoints::Registry::default();
        let tables = balance::Tables::default();
        let generation = generation::build(1, &config.settings, &effective_certs(&config.settings, &default_cert))?;
        let lifetimes = RouteLifetimes::default();
        let idp = config.settings.identity_provider.clone().map(Idp::start);
        let signin = idp.as_ref().and_then(|i| SignIn::new(&i.config, provider_tls(&i.config)).map(Arc::new));
        let revocations = Arc::new(Revocations::default());
        let signer = signer_for(None, &config);
        let identity = Identity { idp, signin, signer, revocations: revocations.clone() };
        let (first, delta) = build_snapshot(config, None, 1, &clients, &endpoints, &tables, &lifetimes, identity);
        let first = Arc::new(first);
        health.apply_changes(&delta.rebuilt, &delta.removed, &metrics.upstream_healthy);
        let snapshot = ArcSwap::new(first);
        metrics.reload_success.set(1);
        metrics.reload_success_timestamp.set(unix_now());
        Ok(Arc::new(Self {
            snapshot,
            listener_generation: ArcSwap::from_pointee(generation),
            lifetimes,
            clients,
            health,
            endpoints,
            tables,
            default_cert,
            ready: AtomicBool::new(false),
            version: AtomicU64::new(1),
            drains: Drains::new(metrics.clone()),
            metrics,
            stop_accepting: CancellationToken::new(),
            listeners: Mutex::new(Vec::new()),
            sockets: std::sync::OnceLock::new(),
            alt_svc: arc_swap::ArcSwapOption::empty(),
            revocations,
        }))
    }

    /// The current snapshot. Cheap: one atomic increment.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    /// The current listener generation: what a connection accepted now is served with.
    pub fn listener_generation(&self) -> Arc<ListenerGeneration> {
        self.listener_generation.load_full()
    }

    /// Swaps in a new config atomically. In-flight requests keep the snapshot they started
    /// with; upstream connection pools are reused.
    pub fn apply(&self, config: Config) -> Applied {
        let started = tokio::time::Instant::now();
        let old = self.snapshot();
        let (a, b) = (&old.settings, &config.settings);
        let main_moved = a.address != b.address || a.insecure_server != b.insecure_server;
        let http3 = |s: &Settings| s.codec_type == CodecType::Http3;
        let any_moved = main_moved
            || a.http_redirect_address != b.http_redirect_address
            || a.metrics_address != b.metrics_address
            || a.admin_address != b.admin_address
            || http3(a) != http3(b)
            // Alt-Svc follows the sockets, so a new advertised port goes through them too.
            || a.http3_advertised_port != b.http3_advertised_port;
        // The generation first: a QUIC socket opened for `codec_type: http3` takes its config.
        self.new_listener_generation(&config.settings, main_moved);
        let mut listener_errors = Vec::new();
        if any_moved {
            match self.sockets.get() {
                Some(sockets) => listener_errors = sockets.update(b),
                None => listener_errors.push("no listener sockets to move (not started by server::start)".to_owned()),
            }
        }
        let version = self.version.fetch_add(1, Ordering::Relaxed) + 1;
        // The same provider settings keep the running provider (and its keys).
        let idp = match (&old.idp, &config.settings.identity_provider) {
            (Some(running), Some(wanted)) if running.config == *wanted => Some(running.clone()),
            (_, wanted) => wanted.clone().map(Idp::start),
        };
        let signin = match (&old.signin, &idp) {
            (Some(running), Some(i)) if old.idp.as_ref().is_some_and(|o| Arc::ptr_eq(o, i)) => Some(running.clone()),
            (_, Some(i)) => SignIn::new(&i.config, provider_tls(&i.config)).map(Arc::new),
            (_, None) => None,
        };
        let signer = signer_for(old.signer.as_ref(), &config);
        let identity = Identity { idp, signin, signer, revocations: self.revocations.clone() };
        let listeners = started.elapsed();
        let (snap, delta) = build_snapshot(
            config,
            Some(&old),
            version,
            &self.clients,
            &self.endpoints,
            &self.tables,
            &self.lifetimes,
            identity,
        );
        let snap = Arc::new(snap);
        let built = started.elapsed();
        self.snapshot.store(snap.clone());
        self.lifetimes.forget(&delta.removed);
        let retained = started.elapsed();
        self.health.apply_changes(&delta.rebuilt, &delta.removed, &self.metrics.upstream_healthy);
        self.metrics.reload_success.set(1);
        self.metrics.reload_success_timestamp.set(unix_now());
        // What a reload of many routes spends where (the controller scale benchmark reads it).
        tracing::debug!(
            routes = snap.routes.routes().len(),
            ?listeners,
            snapshot = ?built.saturating_sub(listeners),
            lifetimes = ?retained.saturating_sub(built),
            health = ?started.elapsed().saturating_sub(retained),
            "snapshot applied"
        );
        if listener_errors.is_empty() {
            Applied::Swapped
        } else {
            Applied::SwappedWithListenerErrors(listener_errors)
        }
    }

    /// Hands the proxy the server layer's listener sockets, so that address changes move
    /// them (once, at start).
    pub fn set_sockets(&self, sockets: Arc<dyn Sockets>) {
        let _ = self.sockets.set(sockets);
    }

    /// Records the UDP port `quic-ingress` listens on (`None`: not listening), which TCP
    /// responses advertise in `Alt-Svc`.
    pub fn set_quic_port(&self, port: Option<u16>) {
        // A day, as large sites advertise: clients that find QUIC blocked fall back to TCP by
        // themselves, and one that turns HTTP/3 off costs them one failed attempt each.
        self.alt_svc.store(port.map(|p| {
            Arc::new(http::HeaderValue::try_from(format!("h3=\":{p}\"; ma=86400")).expect("a valid header value"))
        }));
    }

    /// `Alt-Svc` for a TCP connection accepted now, while HTTP/3 is on.
    pub fn alt_svc(&self) -> Option<http::HeaderValue> {
        self.alt_svc.load().as_deref().cloned()
    }

    /// Replaces the bound listeners shown by `/listeners`.
    pub fn set_listeners(&self, infos: Vec<ListenerInfo>) {
        *crate::sync::lock(&self.listeners) = infos;
    }

    /// Starts a new listener generation when what a listener holds changed, and drains the
    /// old one (see [`super::drain`]). Route-only changes never get here.
    fn new_listener_generation(&self, settings: &Settings, moved: bool) {
        let current = self.listener_generation();
        let next = ListenerSettings::of(settings);
        let mut changes = current.settings.changes(&next);
        if moved {
            changes.push("address");
        }
        let certs = effective_certs(settings, &self.default_cert);
        if cert_ids(&certs) != current.cert_ids {
            changes.push("certificates");
        }
        if changes.is_empty() {
            return;
        }
        let generation = match generation::build(current.id + 1, settings, &certs) {
            Ok(g) => Arc::new(g),
            Err(e) => {
                // Validated configs build; if rustls still refuses, keep serving what works.
                tracing::error!(error = %e, "new listener generation refused; the current one keeps serving");
                return;
            }
        };
        let affected = if changes == ["certificates"] && settings.drain_scope == DrainScope::Affected {
            Affected::CertificateChanged(generation.certs.clone())
        } else {
            Affected::All
        };
        self.listener_generation.store(generation.clone());
        self.drains.retire(current.id, generation.id, &affected, settings.drain_timeout, &changes.join(", "));
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
        crate::sync::lock(&self.listeners).push(info);
    }

    /// Bound listeners.
    pub fn listeners(&self) -> Vec<ListenerInfo> {
        crate::sync::lock(&self.listeners).clone()
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

/// What a snapshot knows of identity: the provider, the assertion key, the sign-outs.
struct Identity {
    idp: Option<Arc<Idp>>,
    signin: Option<Arc<SignIn>>,
    signer: Option<Arc<Signer>>,
    revocations: Arc<Revocations>,
}

/// The assertion key for `config`: none without a provider; the running one when
/// `signing_key` did not change (a key made at start is kept until one is configured).
fn signer_for(old: Option<&Arc<Signer>>, config: &Config) -> Option<Arc<Signer>> {
    config.settings.identity_provider.as_ref()?;
    let wanted = config.settings.identity_headers.signing_key.as_ref().map(|k| k.0.as_slice());
    match old {
        Some(s) if s.configured.as_deref() == wanted => Some(s.clone()),
        _ => Some(Signer::new(wanted)),
    }
}

#[allow(clippy::too_many_arguments)]
fn build_snapshot(
    config: Config,
    old: Option<&Snapshot>,
    version: u64,
    clients: &ClientCache,
    endpoints: &endpoints::Registry,
    tables: &balance::Tables,
    lifetimes: &RouteLifetimes,
    identity: Identity,
) -> (Snapshot, Delta) {
    let authenticate = config.authenticate_url();
    let Identity { idp, signin, signer, revocations } = identity;
    let Config { settings, routes } = config;
    // Routes handed over unchanged keep their compiled form: with 10,000 routes, an edit to
    // one compiles one (the rest is a pointer comparison each).
    // Keyed by the route's address: the assembler hands an unchanged route over as the same
    // `Arc`, and hashing a pointer is cheaper than hashing a name.
    let mut previous: HashMap<*const crate::config::Route, &Arc<CompiledRoute>> =
        old.map(|s| s.routes.routes().iter().map(|r| (Arc::as_ptr(&r.route), r)).collect()).unwrap_or_default();
    let mut rebuilt = Vec::new();
    let compiled = routes
        .into_iter()
        .enumerate()
        .map(|(i, r)| {
            let reusable = previous
                .get(&Arc::as_ptr(&r))
                .is_some_and(|c| old.is_some_and(|o| c.reusable(&r, &o.settings, &settings)));
            if reusable {
                // Taken out, so that what is left at the end is what this snapshot drops.
                if let Some(c) = previous.remove(&Arc::as_ptr(&r)) {
                    return Arc::clone(c);
                }
            }
            rebuilt.push(i);
            let life = lifetimes.life(&r.name);
            // Tunnels of the route hear of a changed policy now, before the snapshot is
            // swapped in: the policy they are checked against is the one sent.
            life.set_policy(r.policy.as_ref());
            let name = r.name.clone();
            let table = tables.get(&name, r.load_balancing_policy, r.ring_size, &r.to);
            Arc::new(CompiledRoute::new(
                r,
                &settings,
                clients,
                |u| endpoints.endpoint(&name, &u.authority),
                table,
                life,
            ))
        })
        .collect::<Vec<Arc<CompiledRoute>>>();
    // Without an old snapshot every route is rebuilt and none removed.
    let delta = Delta::new(previous.into_values(), rebuilt.iter().map(|&i| &compiled[i]));
    // The registries keyed by route name visit the routes that changed.
    {
        let d = &delta;
        let affected: HashSet<&str> =
            d.rebuilt.iter().map(|r| r.route.name.as_str()).chain(d.removed.iter().map(String::as_str)).collect();
        let live = d
            .rebuilt
            .iter()
            .flat_map(|r| r.balancer.targets().iter().map(|t| (r.route.name.as_str(), t.upstream.authority.as_str())))
            .collect();
        endpoints.retain_routes(&affected, &live);
        tables.forget(&d.removed);
    }
    let snapshot = Snapshot {
        version,
        routes: RouteTable::with_tunnels(
            compiled,
            |r: &Arc<CompiledRoute>| (&r.route.host, &r.route.path),
            |r: &Arc<CompiledRoute>| r.route.tunnel.map(|t| (t.protocol, t.port)),
        ),
        settings,
        applied_at: SystemTime::now(),
        idp,
        signin,
        authenticate,
        signer,
        revocations,
    };
    (snapshot, delta)
}

/// What a reload touched: the routes rebuilt (new or changed) and the names removed. With
/// 10,000 routes and one edit, the registries keyed by route name (endpoints, hash tables,
/// lifetimes, health checkers) visit these instead of every route.
struct Delta {
    rebuilt: Vec<Arc<CompiledRoute>>,
    removed: Vec<String>,
}

impl Delta {
    /// `dropped`: the old snapshot's routes the new one does not share.
    fn new<'a>(
        dropped: impl Iterator<Item = &'a Arc<CompiledRoute>>,
        rebuilt: impl Iterator<Item = &'a Arc<CompiledRoute>>,
    ) -> Self {
        let rebuilt: Vec<Arc<CompiledRoute>> = rebuilt.cloned().collect();
        let renamed: HashSet<&str> = rebuilt.iter().map(|r| r.route.name.as_str()).collect();
        let mut removed: Vec<String> =
            dropped.filter(|r| !renamed.contains(r.route.name.as_str())).map(|r| r.route.name.clone()).collect();
        removed.sort_unstable();
        removed.dedup();
        Self { rebuilt, removed }
    }
}

/// One [`RouteLife`] per route name, alive while some snapshot has a route of this name: the
/// hooks that end long-lived connections of a deleted route, and re-check them when its
/// policy changes.
#[derive(Default)]
struct RouteLifetimes(Mutex<HashMap<String, RouteLife>>);

impl RouteLifetimes {
    fn life(&self, name: &str) -> RouteLife {
        let mut map = crate::sync::lock(&self.0);
        map.entry(name.to_owned()).or_default().clone()
    }

    /// Cancels (and forgets) the tokens of the `removed` routes.
    fn forget(&self, removed: &[String]) {
        let mut map = crate::sync::lock(&self.0);
        for name in removed {
            if let Some(life) = map.remove(name) {
                tracing::info!(route = %name, "route deleted: closing its long-lived connections");
                life.closed.cancel();
            }
        }
    }
}

fn unix_now() -> f64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fmt::Write as _;

    /// Endpoints by route, health series, lifetimes.
    type ByName = (Vec<(String, Vec<String>)>, Vec<String>, Vec<String>);

    fn config(routes: &[(&str, &str)]) -> Config {
        let mut yaml = String::from("routes:\n");
        for (host, to) in routes {
            let _ = writeln!(yaml, " - {{from: https://{host}, to: [{to}]}}");
        }
        let root = crate::source::yaml::yaml_to_value(&yaml).unwrap();
        crate::source::yaml::parse_config(&root, &crate::source::yaml::NoMaterial).unwrap()
    }

    /// The state a proxy keeps by route name, as text: endpoints, health series, lifetimes.
    fn by_name(p: &Proxy) -> ByName {
        let mut series: Vec<String> = p
            .metrics
            .encode()
            .lines()
            .filter(|l| l.starts_with("portcullis_upstream_healthy{"))
            .map(str::to_owned)
            .collect();
        series.sort();
        let mut lives: Vec<String> = crate::sync::lock(&p.lifetimes.0).keys().cloned().collect();
        lives.sort();
        (p.endpoints.listing(), series, lives)
    }

    #[test]
    fn a_reload_that_visits_the_changed_routes_leaves_what_a_fresh_start_has() {
        let first = config(&[
            ("a.test", "http://10.0.0.1:80, http://10.0.0.2:80"),
            ("b.test", "http://10.0.0.3:80, http://10.0.0.4:80"),
            ("c.test", "http://10.0.0.5:80"),
        ]);
        let proxy = Proxy::new(first.clone(), Arc::new(Metrics::new())).unwrap();
        let c_name = proxy.snapshot().routes.routes()[2].route.name.clone();
        let c_life = proxy.lifetimes.life(&c_name);
        // a.test unchanged (the same `Arc`), b.test loses an endpoint, c.test goes, d.test comes.
        let mut next = config(&[("b.test", "http://10.0.0.3:80"), ("d.test", "http://10.0.0.6:80")]);
        next.routes.insert(0, first.routes[0].clone());
        let kept = proxy.snapshot().routes.routes()[0].clone();
        proxy.apply(next.clone());
        assert!(Arc::ptr_eq(&kept, &proxy.snapshot().routes.routes()[0]), "a.test was not rebuilt");
        assert!(c_life.closed.is_cancelled(), "the removed route's long-lived connections are told");
        let fresh = Proxy::new(next, Arc::new(Metrics::new())).unwrap();
        assert_eq!(by_name(&proxy), by_name(&fresh));
        assert_eq!(by_name(&proxy).0.len(), 3, "{:?}", by_name(&proxy));
    }
}
