//! One immutable, validated serving state ([`Snapshot`]) and the compiled form of each of its
//! routes ([`CompiledRoute`]): what a request is served with, from its route lookup to its
//! access-log line, however many reloads happen meanwhile.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::Histogram;
use tokio_util::sync::CancellationToken;

use super::balance::{Balancer, HashTable};
use super::endpoints::EndpointState;
use super::idp::Idp;
use super::table::RouteTable;
use super::upstream::{ClientCache, Target};
use crate::config::{Route, Settings, Upstream};
use crate::metrics::{AuthzDecision, AuthzLabels, Metrics, SeriesCache};
use crate::policy::Policy;

/// What outlives one snapshot's copy of a route: the hooks its long-lived connections
/// (tunnels) watch. One per route name, carried into every snapshot that still has a route
/// of that name.
#[derive(Clone)]
pub struct RouteLife {
    /// Cancelled when the route is deleted: its tunnels end.
    pub closed: CancellationToken,
    /// The route's policy, sent anew when a reload changes it: its tunnels are authorized
    /// again, and those it no longer admits end.
    pub policy: Arc<tokio::sync::watch::Sender<Option<Arc<Policy>>>>,
}

impl Default for RouteLife {
    fn default() -> Self {
        Self { closed: CancellationToken::new(), policy: Arc::new(tokio::sync::watch::Sender::new(None)) }
    }
}

impl RouteLife {
    /// Puts `policy` in force for the route's tunnels; they hear of it only if it differs.
    pub fn set_policy(&self, policy: Option<&Arc<Policy>>) {
        self.policy.send_if_modified(|current| {
            if current.as_deref() == policy.map(|p| &**p) {
                return false;
            }
            *current = policy.cloned();
            true
        });
    }
}

/// A route ready to serve: the domain route plus its effective timeouts and balancer.
pub struct CompiledRoute {
    /// The validated route (the config's own, shared: see [`Self::reusable`]).
    pub route: Arc<Route>,
    /// Upstream timeout after defaults and the WebSocket adjustment; `None` = disabled.
    pub upstream_timeout: Option<Duration>,
    /// Stream idle timeout after defaults, the `timeout_idle` cap and the WebSocket
    /// adjustment; `None` = disabled.
    pub stream_idle: Option<Duration>,
    /// Upstream selection.
    pub balancer: Balancer,
    /// The hooks of its long-lived connections: deletion and policy changes.
    pub life: RouteLife,
    /// Its per-request metric series, looked up once.
    pub(crate) series: RouteSeries,
    /// Whether its upstreams get `X-Portcullis-Jwt-Assertion` (`pass_identity_headers`).
    pub pass_identity: bool,
    /// Its `jwt_claims_headers` (the route's, else the global ones).
    pub claims_headers: Vec<(http::HeaderName, String)>,
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
    /// `portcullis_authz_decisions_total` by [`AuthzDecision`] (as an index).
    pub authz: [std::sync::OnceLock<Counter>; 3],
}

impl RouteSeries {
    /// Empty caches for a route with `targets` upstream targets.
    fn new(targets: usize) -> Self {
        Self {
            requests: SeriesCache::default(),
            duration: SeriesCache::default(),
            upstream: (0..targets).map(|_| SeriesCache::default()).collect(),
            authz: Default::default(),
        }
    }
}

impl CompiledRoute {
    /// Counts one access-policy decision on this route.
    pub(crate) fn count_decision(&self, metrics: &Metrics, decision: AuthzDecision) {
        self.series.authz[decision as usize]
            .get_or_init(|| {
                metrics
                    .authz_decisions
                    .get_or_create(&AuthzLabels { route: self.route.name.clone(), decision: decision.as_str() })
                    .clone()
            })
            .inc();
    }
}

/// The key of a `&'static str` label value in a [`RouteSeries`] cache.
pub(crate) fn label_key(s: &'static str) -> (usize, usize) {
    (s.as_ptr() as usize, s.len())
}

impl CompiledRoute {
    /// Compiles `route`; `state` gives the live state of each of its upstreams (kept across
    /// reloads by the endpoint registry).
    pub(crate) fn new(
        route: Arc<Route>,
        settings: &Settings,
        clients: &ClientCache,
        state: impl Fn(&Upstream) -> Arc<EndpointState>,
        table: Option<Arc<HashTable>>,
        life: RouteLife,
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
        let targets = route.to.iter().map(|u| Target::new(u, &route.tls, clients, state(u))).collect();
        let balancer = Balancer::new(targets, route.load_balancing_policy, table, route.healthy_panic_threshold);
        let series = RouteSeries::new(balancer.targets().len());
        let pass_identity =
            route.pass_identity_headers.or(settings.identity_headers.pass).unwrap_or(route.policy.is_some());
        let claims_headers =
            route.jwt_claims_headers.clone().unwrap_or_else(|| settings.identity_headers.claims_headers.clone());
        Self { route, upstream_timeout, stream_idle, balancer, life, series, pass_identity, claims_headers }
    }

    /// Whether this compiled route can serve `route` under `settings` as it is: the very
    /// route it was compiled from (the controller hands an unchanged object's routes over
    /// again), and none of the settings it read changed. Reusing it keeps its balancer,
    /// metric handles and connection hooks, and costs nothing per route.
    pub(crate) fn reusable(&self, route: &Arc<Route>, was: &Settings, now: &Settings) -> bool {
        Arc::ptr_eq(&self.route, route)
            && was.default_upstream_timeout == now.default_upstream_timeout
            && was.timeouts.idle == now.timeouts.idle
            && was.identity_headers == now.identity_headers
    }
}

/// One immutable, validated serving state. Reloads build a new one and swap it in.
pub struct Snapshot {
    /// Increases by one per applied config.
    pub version: u64,
    /// The config it was built from (settings are read per connection and per request).
    pub settings: Settings,
    /// Compiled routes (shared with the next snapshot when they do not change).
    pub routes: RouteTable<Arc<CompiledRoute>>,
    /// When it was applied.
    pub applied_at: SystemTime,
    /// The identity provider bearer tokens are verified against, when one is configured
    /// (the same one, keys and all, across reloads that keep its settings).
    pub idp: Option<Arc<Idp>>,
    /// Browser sign-in, when `idp_client_secret` is set (the same one across reloads that
    /// keep the provider's settings).
    pub signin: Option<Arc<super::signin::SignIn>>,
    /// The sign-in host, when sign-in is on.
    pub authenticate: Option<crate::config::ServiceUrl>,
    /// The key of identity assertions and programmatic tokens, when a provider is configured
    /// (kept across reloads that keep `signing_key`).
    pub signer: Option<Arc<super::assertion::Signer>>,
    /// The signed-out sessions (the process's, across reloads).
    pub revocations: Arc<super::revocations::Revocations>,
}

impl Snapshot {
    /// Whether `host` (lower case, no port) is named by a route: a redirect may go there.
    pub fn serves_host(&self, host: &str) -> bool {
        self.routes.names_host(host)
    }

    /// The sign-in of the configured provider, when on.
    pub fn sign_in(&self) -> Option<(&super::signin::SignIn, &crate::config::ServiceUrl)> {
        Some((self.signin.as_deref()?, self.authenticate.as_ref()?))
    }
}
