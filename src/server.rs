//! Starts the data plane for a config: binds every listener of the reference, then serves
//! until told to shut down. Used by `serve`, `demo` and the integration tests alike.

use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::admin::{self, Plane};
use crate::config::{CodecType, Config, Settings};
use crate::metrics::Metrics;
use crate::proxy::accept::{quic, tcp};
use crate::proxy::conn::ListenerKind;
use crate::proxy::{ListenerInfo, Proxy, Sockets};

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
    /// `quic-ingress` (UDP) when `codec_type` is `http3`.
    pub quic: Option<SocketAddr>,
}

/// What a listener socket serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    /// `address`: https-ingress, or the plain routes listener with `insecure_server`.
    Main(ListenerKind),
    /// `http_redirect_address`.
    Redirect,
    /// `admin_address`.
    Admin,
    /// `metrics_address`.
    Metrics,
    /// `quic-ingress`: UDP on the main listener's port, with `codec_type: http3`.
    Quic,
}

impl Role {
    fn name(self) -> &'static str {
        match self {
            Role::Main(kind) => kind.name(),
            Role::Redirect => "http-ingress",
            Role::Admin => "admin",
            Role::Metrics => "metrics-ingress",
            Role::Quic => "quic-ingress",
        }
    }

    /// Whether `self` and `other` fill the same socket slot: the main listener keeps its
    /// slot (and so its socket is moved, not added) when its kind changes.
    fn same_slot(self, other: Role) -> bool {
        std::mem::discriminant(&self) == std::mem::discriminant(&other)
    }

    /// Whether it follows the main listener's port (so it moves when that port does).
    fn follows_https_port(self) -> bool {
        matches!(self, Role::Redirect | Role::Quic)
    }
}

/// One open listener socket and its accept loop.
struct Slot {
    role: Role,
    /// The configured address (port 0 stays 0 here; `bound` has the real one).
    addr: SocketAddr,
    bound: SocketAddr,
    /// For the redirect listener: the https port its redirects point to; for `quic-ingress`
    /// the port it binds (the same number as the https listener's, on UDP).
    https_port: u16,
    stop: CancellationToken,
}

/// The listener sockets, moved when their addresses change (see [`crate::proxy::Sockets`]).
struct ServerSockets {
    proxy: Weak<Proxy>,
    slots: Mutex<Vec<Slot>>,
}

/// The listeners `s` asks for, the main one first (its port feeds the redirects).
fn wanted(s: &Settings) -> Vec<(Role, SocketAddr)> {
    let kind = if s.insecure_server { ListenerKind::Insecure } else { ListenerKind::Https };
    let mut out = vec![(Role::Main(kind), s.address)];
    if let (false, Some(a)) = (s.insecure_server, s.http_redirect_address) {
        out.push((Role::Redirect, a));
    }
    if let Some(a) = s.admin_address {
        out.push((Role::Admin, a));
    }
    if let Some(a) = s.metrics_address {
        out.push((Role::Metrics, a));
    }
    if !s.insecure_server && s.codec_type == CodecType::Http3 {
        out.push((Role::Quic, s.address));
    }
    out
}

fn open(proxy: &Arc<Proxy>, role: Role, addr: SocketAddr, https_port: u16) -> io::Result<Slot> {
    // Routes listeners stop at shutdown (children of the proxy's token); admin and metrics
    // keep answering during the drain (`/readyz` says 503, scrapes see the drain).
    let stop = match role {
        Role::Main(_) | Role::Redirect | Role::Quic => proxy.stop_accepting.child_token(),
        Role::Admin | Role::Metrics => CancellationToken::new(),
    };
    if role == Role::Quic {
        let generation = proxy.listener_generation();
        let config =
            generation.quic.as_ref().ok_or_else(|| io::Error::other("the listener generation has no QUIC config"))?;
        let endpoint = quic::bind(SocketAddr::new(addr.ip(), https_port), config)?;
        let bound = endpoint.local_addr()?;
        tokio::spawn(quic::run(endpoint, proxy.clone(), stop.clone()));
        return Ok(Slot { role, addr, bound, https_port, stop });
    }
    let l = tcp::bind(addr)?;
    let bound = l.local_addr()?;
    let https_port = if let Role::Main(_) = role { bound.port() } else { https_port };
    match role {
        Role::Main(kind) => {
            tokio::spawn(tcp::run(kind, l, proxy.clone(), bound.port(), stop.clone()));
        }
        Role::Redirect => {
            tokio::spawn(tcp::run(ListenerKind::Redirect, l, proxy.clone(), https_port, stop.clone()));
        }
        Role::Admin => {
            tokio::spawn(admin::run(Plane::Admin, l, proxy.clone(), stop.clone()));
        }
        Role::Metrics => {
            tokio::spawn(admin::run(Plane::Metrics, l, proxy.clone(), stop.clone()));
        }
        Role::Quic => unreachable!("opened above"),
    }
    Ok(Slot { role, addr, bound, https_port, stop })
}

impl ServerSockets {
    /// Opens what `s` wants and is not open yet (or open elsewhere), then closes what it no
    /// longer wants. A socket that cannot be bound leaves the old one in place.
    fn apply(&self, s: &Settings) -> Vec<(&'static str, SocketAddr, io::Error)> {
        let Some(proxy) = self.proxy.upgrade() else { return Vec::new() };
        let mut slots = crate::sync::lock(&self.slots);
        let mut errors = Vec::new();
        let mut next: Vec<Slot> = Vec::new();
        let mut https_port = slots.iter().find(|x| matches!(x.role, Role::Main(_))).map_or(0, |x| x.bound.port());
        for (role, addr) in wanted(s) {
            let existing = slots.iter().position(|x| x.role.same_slot(role));
            let unchanged = existing.is_some_and(|i| {
                let x = &slots[i];
                x.role == role && x.addr == addr && (!role.follows_https_port() || x.https_port == https_port)
            });
            let slot = if unchanged {
                slots.remove(existing.expect("checked"))
            } else {
                match open(&proxy, role, addr, https_port) {
                    Ok(slot) => {
                        if let Some(old) = existing.map(|i| slots.remove(i)) {
                            tracing::info!(listener = role.name(), from = %old.bound, to = %slot.bound, "listener moved");
                            old.stop.cancel();
                        }
                        slot
                    }
                    Err(e) => {
                        errors.push((role.name(), addr, e));
                        match existing {
                            Some(i) => slots.remove(i),
                            None => continue,
                        }
                    }
                }
            };
            if matches!(slot.role, Role::Main(_)) {
                https_port = slot.bound.port();
            }
            next.push(slot);
        }
        for old in slots.drain(..) {
            tracing::info!(listener = old.role.name(), address = %old.bound, "listener closed");
            old.stop.cancel();
        }
        proxy.set_listeners(
            next.iter()
                .map(|x| ListenerInfo {
                    name: x.role.name(),
                    address: x.bound,
                    protocol: if x.role == Role::Quic { "udp" } else { "tcp" },
                })
                .collect(),
        );
        proxy.set_quic_port(
            next.iter().find(|x| x.role == Role::Quic).map(|x| s.http3_advertised_port.unwrap_or(x.bound.port())),
        );
        *slots = next;
        errors
    }

    /// Where the listener in `role`'s slot is bound.
    fn bound(&self, role: Role) -> Option<SocketAddr> {
        let slots = crate::sync::lock(&self.slots);
        slots.iter().find(|x| x.role.same_slot(role)).map(|x| x.bound)
    }
}

impl Sockets for ServerSockets {
    fn update(&self, new: &Settings) -> Vec<String> {
        self.apply(new).into_iter().map(|(name, addr, e)| format!("{name} on {addr}: {e}")).collect()
    }
}

/// Binds and starts every listener for `config`. Async although nothing awaits yet: it
/// spawns tasks, so it must only be called from inside the runtime.
#[allow(clippy::unused_async)]
pub async fn start(config: Config) -> io::Result<Running> {
    let proxy =
        Proxy::new(config, Arc::new(Metrics::new())).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let sockets = Arc::new(ServerSockets { proxy: Arc::downgrade(&proxy), slots: Mutex::new(Vec::new()) });
    if let Some((name, addr, e)) = sockets.apply(&proxy.snapshot().settings).into_iter().next() {
        proxy.stop_accepting.cancel();
        return Err(io::Error::new(e.kind(), format!("binding {name} on {addr}: {e}")));
    }
    let running = Running {
        main: sockets.bound(Role::Main(ListenerKind::Https)).expect("the main listener is always bound"),
        http: sockets.bound(Role::Redirect),
        admin: sockets.bound(Role::Admin),
        metrics: sockets.bound(Role::Metrics),
        quic: sockets.bound(Role::Quic),
        proxy: proxy.clone(),
    };
    proxy.set_sockets(sockets);
    proxy.set_ready(true);
    for l in proxy.listeners() {
        tracing::info!(listener = l.name, address = %l.address, "listening");
    }
    Ok(running)
}

/// The controller's snapshots go to the in-process proxy.
impl crate::k8s::Sink for Proxy {
    fn apply(&self, config: Config) -> crate::k8s::SinkOutcome {
        match Proxy::apply(self, config) {
            crate::proxy::Applied::Swapped => crate::k8s::SinkOutcome::Applied,
            crate::proxy::Applied::SwappedWithListenerErrors(errors) => {
                crate::k8s::SinkOutcome::AppliedWithListenerErrors(errors)
            }
        }
    }

    fn reject(&self) {
        Proxy::reject(self);
    }

    fn route_count(&self) -> usize {
        self.snapshot().routes.routes().len()
    }

    fn revocations(&self) -> Option<Arc<crate::proxy::revocations::Revocations>> {
        Some(self.revocations.clone())
    }
}

impl Running {
    /// Graceful shutdown: `/readyz` fails at once, listeners stop accepting, connections
    /// finish in-flight work (HTTP/1.1 gets `Connection: close`, HTTP/2 a GOAWAY), and
    /// whatever is still open after `grace` is closed. Returns how many connections had to
    /// be closed by force.
    pub async fn shutdown(self, grace: Duration) -> usize {
        self.proxy.set_ready(false);
        self.proxy.stop_accepting.cancel();
        self.proxy.drains.drain_all(grace).await
    }
}
