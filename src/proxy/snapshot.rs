//! One immutable, validated serving state ([`Snapshot`]) and the compiled form of each of its
//! routes ([`CompiledRoute`]): what a request is served with, from its route lookup to its
//! access-log line, however many reloads happen meanwhile.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::Histogram;
use tokio_util::sync::CancellationToken;

use super::table::RouteTable;
use super::upstream::{Balancer, ClientCache};
use crate::config::{Route, Settings, Upstream};
use crate::metrics::SeriesCache;

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
    /// Cancelled when the route is deleted: its long-lived connections (tunnels) end. The
    /// same token is carried into every snapshot that still has a route of this name.
    pub closed: CancellationToken,
    /// Its per-request metric series, looked up once.
    pub(crate) series: RouteSeries,
}

/// The series a route's requests update, keyed by the addresses of the `&'static str`
/// label values (equal addresses mean equal values; two addresses of one value just make
/// two handles on the same series) and the status code.
pub(crate) struct RouteSeries {
    /// `portcullis_http_requests_total` by (listener, method, code).
    pub requests: SeriesCache<(usize, usize, usize, usize, u16), Counter>,
    /// `portcullis_http_request_duration_seconds` by (listener, method).
    pub duration: SeriesCache<(usize, usize, usize, usize), Histogram>,
    /// `portcullis_upstream_requests_total` of each target (by index), by outcome.
    pub upstream: Box<[SeriesCache<(usize, usize), Counter>]>,
}

impl RouteSeries {
    /// Empty caches for a route with `targets` upstream targets.
    fn new(targets: usize) -> Self {
        Self {
            requests: SeriesCache::default(),
            duration: SeriesCache::default(),
            upstream: (0..targets).map(|_| SeriesCache::default()).collect(),
        }
    }
}

/// The key of a `&'static str` label value in a [`RouteSeries`] cache.
pub(crate) fn label_key(s: &'static str) -> (usize, usize) {
    (s.as_ptr() as usize, s.len())
}

impl CompiledRoute {
    /// Compiles `route`; `health` gives the health flag of each of its upstreams (kept
    /// across reloads by the health registry).
    pub(crate) fn new(
        route: Route,
        settings: &Settings,
        clients: &ClientCache,
        health: impl Fn(&Upstream) -> Arc<AtomicBool>,
        closed: CancellationToken,
    ) -> Self {
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
        let balancer = Balancer::new(&route.to, &route.tls, route.load_balancing_policy, clients, health);
        let series = RouteSeries::new(balancer.targets().len());
        Self { route, upstream_timeout, stream_idle, balancer, closed, series }
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
