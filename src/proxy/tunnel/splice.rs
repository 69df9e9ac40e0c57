//! What every tunnel shares: its limits (idle timeout, drain, route deletion, policy), its
//! meters, its close reasons, its log record, and the splice of two byte streams.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::sync::CancellationToken;

use crate::config::TunnelProtocol;
use crate::metrics::{Metrics, TunnelBytesLabels, TunnelLabels};
use crate::proxy::body::{OnFinish, StreamState};
use crate::proxy::conn::Conn;
use crate::proxy::drain::ConnHandle;
use crate::proxy::http::authz::{Admission, Revoked};
use crate::proxy::log::RequestLog;
use crate::proxy::snapshot::CompiledRoute;

/// Marks a response whose request continues as a tunnel (logged when the tunnel ends).
#[derive(Clone, Copy)]
pub struct Tunnelled;

/// Counts one direction of a tunnel: its own total for the access log, and its route's
/// `portcullis_tunnel_bytes_total` as the bytes move (a tunnel may live for days).
pub(super) struct Meter {
    count: std::sync::atomic::AtomicU64,
    route: Counter,
}

impl Meter {
    fn new(metrics: &Metrics, route: &str, direction: &'static str) -> Arc<Self> {
        let route =
            metrics.tunnel_bytes.get_or_create(&TunnelBytesLabels { route: route.to_owned(), direction }).clone();
        Arc::new(Self { count: std::sync::atomic::AtomicU64::new(0), route })
    }

    pub(super) fn add(&self, n: usize) {
        self.count.fetch_add(n as u64, Ordering::Relaxed);
        self.route.inc_by(n as u64);
    }

    fn get(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }
}

/// What every tunnel shares: its limits, its log record, its meters.
pub(super) struct Tunnel {
    pub(super) limits: Limits,
    pub(super) record: Box<RequestLog>,
    /// From the client to the upstream (bytes, or UDP payload bytes).
    pub(super) to_upstream: Arc<Meter>,
    /// From the upstream to the client.
    pub(super) to_client: Arc<Meter>,
    /// `portcullis_tunnels_active` of its route and protocol while it lives (`None` for a
    /// WebSocket, which is a request).
    active: Option<prometheus_client::metrics::gauge::Gauge>,
    /// The activity clock of the idle timeout.
    pub(super) state: Arc<StreamState>,
}

impl Tunnel {
    pub(super) fn new(
        conn: &Conn,
        route: &CompiledRoute,
        admission: Admission,
        record: Box<RequestLog>,
        protocol: Option<TunnelProtocol>,
    ) -> Self {
        let name = &route.route.name;
        let metrics: &Metrics = &record.metrics;
        let to_upstream = Meter::new(metrics, name, "to_upstream");
        let to_client = Meter::new(metrics, name, "to_client");
        let active = protocol.map(|p| {
            let g =
                metrics.tunnels_active.get_or_create(&TunnelLabels { route: name.clone(), protocol: p.name() }).clone();
            g.inc();
            g
        });
        let limits = Limits {
            idle: route.stream_idle,
            registration: conn.registration.clone(),
            route_closed: route.life.closed.clone(),
            route_name: name.clone(),
            admission,
        };
        Self { limits, record, to_upstream, to_client, active, state: Arc::new(StreamState::default()) }
    }

    /// Resolves when a limit ends the tunnel: its idle timeout, the end of its generation's
    /// drain, its route's deletion, its admission's revocation.
    pub(super) async fn limited(&mut self) -> Closed {
        let idle_wait = async {
            match self.limits.idle {
                Some(d) => self.state.wait_idle(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = idle_wait => Closed::Idle,
            () = self.limits.registration.signals.close.cancelled() => Closed::DrainTimeout,
            () = self.limits.route_closed.cancelled() => {
                tracing::info!(route = %self.limits.route_name, "closing a tunnel: its route was deleted");
                Closed::RouteDeleted
            }
            why = self.limits.admission.revoked() => {
                self.limits.admission.record(&self.record.metrics, why, "tunnel");
                Closed::Revoked(why)
            }
        }
    }

    /// Writes the log record: bytes each way and why it ended (`clean` when both sides
    /// closed it).
    pub(super) fn finish(mut self, closed: Option<&Closed>, clean: &'static str) {
        if let Some(g) = self.active.take() {
            g.dec();
        }
        self.state.request_done.store(true, Ordering::Relaxed);
        self.record.error = closed.map(Closed::message);
        self.record.close_reason = Some(closed.map_or(clean, Closed::reason));
        self.record.bytes_received = self.to_upstream.get();
        let sent = self.to_client.get();
        self.record.finish(sent, None);
    }
}

/// What ends a tunnel besides its two sides: its idle timeout, the end of its listener
/// generation's drain, the deletion of its route.
pub(super) struct Limits {
    idle: Option<Duration>,
    registration: Arc<ConnHandle>,
    route_closed: CancellationToken,
    pub(super) route_name: String,
    /// What it was authorized with: it ends when its route's policy stops admitting it.
    admission: Admission,
}

/// Why a tunnel ended before both sides closed it (the access log's error).
pub(super) enum Closed {
    /// Copying failed (a side reset its connection).
    Broken(std::io::Error),
    /// No byte moved either way for the stream idle timeout.
    Idle,
    /// `drain_timeout` of its listener generation ended.
    DrainTimeout,
    /// Its route was deleted.
    RouteDeleted,
    /// Its route's policy no longer admits it.
    Revoked(Revoked),
    /// The client broke the tunnel's framing (a capsule too long to be a datagram).
    Malformed(crate::masque::CapsuleError),
}

impl Closed {
    fn message(&self) -> String {
        match self {
            Closed::Broken(e) => format!("tunnel ended: {e}"),
            Closed::Idle => "tunnel closed: stream idle timeout".to_owned(),
            Closed::DrainTimeout => "tunnel closed: drain_timeout of its listener generation ended".to_owned(),
            Closed::RouteDeleted => "tunnel closed: its route was deleted".to_owned(),
            Closed::Revoked(Revoked::PolicyChanged) => {
                "tunnel closed: its route's policy changed and no longer admits it".to_owned()
            }
            Closed::Revoked(Revoked::TokenExpired) => {
                "tunnel closed: the token it was admitted with expired".to_owned()
            }
            Closed::Revoked(Revoked::SignedOut) => {
                "tunnel closed: the session it was admitted with was signed out".to_owned()
            }
            Closed::Malformed(e) => format!("tunnel closed: {e}"),
        }
    }

    /// The access log's `close_reason`: one word per cause.
    fn reason(&self) -> &'static str {
        match self {
            Closed::Broken(_) => "reset",
            Closed::Idle => "idle_timeout",
            Closed::DrainTimeout => "drain_timeout",
            Closed::RouteDeleted => "route_deleted",
            Closed::Revoked(why) => why.as_str(),
            Closed::Malformed(_) => "malformed",
        }
    }
}

/// Copies bytes both ways between the client's side and the upstream's until both close
/// (each side's end of stream is carried to the other as a half-close) or a limit ends the
/// tunnel, then writes the request's log record.
pub(super) async fn splice<D, U>(down: D, up: U, mut tunnel: Tunnel)
where
    D: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let mut down = Activity { inner: down, state: tunnel.state.clone(), meter: tunnel.to_upstream.clone() };
    let mut up = Activity { inner: up, state: tunnel.state.clone(), meter: tunnel.to_client.clone() };
    let closed = tokio::select! {
        r = tokio::io::copy_bidirectional(&mut down, &mut up) => r.err().map(Closed::Broken),
        why = tunnel.limited() => Some(why),
    };
    tunnel.finish(closed.as_ref(), "closed");
}

pin_project_lite::pin_project! {
    /// Counts what is read from one side: the activity clock of the idle timeout, and the
    /// bytes that side sent.
    struct Activity<T> {
        #[pin]
        inner: T,
        state: Arc<StreamState>,
        meter: Arc<Meter>,
    }
}

impl<T: AsyncRead> AsyncRead for Activity<T> {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let this = self.project();
        let before = buf.filled().len();
        let r = this.inner.poll_read(cx, buf);
        if r.is_ready() {
            this.state.touch();
            this.meter.add(buf.filled().len() - before);
        }
        r
    }
}

impl<T: AsyncWrite> AsyncWrite for Activity<T> {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        self.project().inner.poll_write(cx, buf)
    }
    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        self.project().inner.poll_flush(cx)
    }
    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        self.project().inner.poll_shutdown(cx)
    }
}
