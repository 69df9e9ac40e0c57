//! Active health checks (`health_checks` on a route): an unhealthy upstream gets no new
//! requests until it recovers. Health survives reloads because it lives in the endpoint
//! registry (`endpoints`), keyed by route and address, not in the snapshot.
//!
//! A checker runs per (route, endpoint, check) and outlives snapshots: a reload keeps every
//! checker whose [`CheckerKey`] is still wanted, so a route edit elsewhere neither resets
//! its interval nor probes every endpoint at once, and only stops the checkers it removed.
//! A checker holds what it probes with (the endpoint's client, address, `Host`), its
//! endpoint's state and its gauge, never a snapshot, so old snapshots are freed on reload.

mod probe;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;

use self::probe::Endpoint;
use super::endpoints::EndpointState;
use super::snapshot::CompiledRoute;
use super::upstream::Target;
use crate::config::{HealthCheck, HealthCheckKind, UpstreamScheme, UpstreamTls};
use crate::metrics::UpstreamHealthLabels;

/// The running checkers and the gauge series they keep, by route.
#[derive(Default)]
pub struct Registry {
    routes: Mutex<HashMap<String, RouteHealth>>,
}

/// One route's checkers and series. A reload visits only the entries of the routes it
/// rebuilt or removed: with 10,000 routes, hashing every endpoint's labels again was most of
/// what an apply cost.
struct RouteHealth {
    series: Vec<UpstreamHealthLabels>,
    checkers: HashMap<CheckerKey, Checker>,
}

/// What makes two checkers the same: the endpoint (route, address, scheme), the check (and
/// its position, so that two equal checks on a route stay two), and what picks the client
/// the probes use, the same fields as `upstream::ClientCache`'s key.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct CheckerKey {
    route: String,
    authority: String,
    scheme: UpstreamScheme,
    index: usize,
    check: HealthCheck,
    tls: TlsKey,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct TlsKey {
    skip_verify: bool,
    server_name: Option<String>,
    custom_ca: Option<Vec<Vec<u8>>>,
    client_cert: Option<Vec<Vec<u8>>>,
}

impl TlsKey {
    fn of(tls: &UpstreamTls) -> Self {
        Self {
            skip_verify: tls.skip_verify,
            server_name: tls.server_name.clone(),
            custom_ca: tls.custom_ca.as_ref().map(|c| c.iter().map(|d| d.to_vec()).collect()),
            client_cert: tls.client_cert.as_ref().map(|c| c.chain.iter().map(|d| d.to_vec()).collect()),
        }
    }
}

struct Checker {
    task: tokio::task::JoinHandle<()>,
    /// The state it flips: a snapshot that gives the endpoint another state (it left and
    /// came back) needs a new checker.
    state: Arc<EndpointState>,
}

impl Drop for Checker {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Registry {
    /// Runs the checkers a reload wants, visiting only what it touched: the routes it
    /// `rebuilt` (new or changed; their running checkers that still apply are kept, the others
    /// stop, new ones start, every endpoint's `portcullis_upstream_healthy` is set) and the
    /// names it `removed` (their checkers stop, their series go). Routes shared with the
    /// snapshot before keep theirs untouched. Needs a tokio runtime to start checkers;
    /// without one (unit tests building snapshots) none run.
    pub fn apply_changes(
        &self,
        rebuilt: &[Arc<CompiledRoute>],
        removed: &[String],
        gauge: &Family<UpstreamHealthLabels, Gauge>,
    ) {
        let rt = tokio::runtime::Handle::try_current().ok();
        let mut routes = crate::sync::lock(&self.routes);
        for name in removed {
            for labels in routes.remove(name).map(|gone| gone.series).unwrap_or_default() {
                gauge.remove(&labels);
            }
        }
        for route in rebuilt {
            let before = routes.remove(route.route.name.as_str());
            let health = set_up(route, before, gauge, rt.as_ref());
            routes.insert(route.route.name.clone(), health);
        }
    }
}

/// A new or changed route's checkers and series: the running checkers it still wants are
/// kept (same key and endpoint state), the others stop, new ones start; every endpoint's
/// `portcullis_upstream_healthy` is set, and the series of endpoints it no longer has go.
fn set_up(
    route: &Arc<CompiledRoute>,
    before: Option<RouteHealth>,
    gauge: &Family<UpstreamHealthLabels, Gauge>,
    rt: Option<&tokio::runtime::Handle>,
) -> RouteHealth {
    let (mut running, old_series) = before.map_or_else(Default::default, |b| (b.checkers, b.series));
    let r = &route.route;
    let tls = TlsKey::of(&r.tls);
    let mut series = Vec::with_capacity(route.balancer.targets().len());
    let mut checkers = HashMap::new();
    for target in route.balancer.targets() {
        let labels = UpstreamHealthLabels { route: r.name.clone(), upstream: target.upstream.authority.clone() };
        if r.health_checks.is_empty() {
            // Its checks were removed: nothing may keep it out any longer.
            target.state.set_healthy(true);
        }
        let gauge_series = gauge.get_or_create_owned(&labels);
        gauge_series.set(i64::from(target.state.healthy()));
        series.push(labels);
        for (index, check) in r.health_checks.iter().enumerate() {
            let key = CheckerKey {
                route: r.name.clone(),
                authority: target.upstream.authority.clone(),
                scheme: target.upstream.scheme,
                index,
                check: check.clone(),
                tls: tls.clone(),
            };
            let kept = running.remove(&key).filter(|c| Arc::ptr_eq(&c.state, &target.state) && !c.task.is_finished());
            let checker = match (kept, rt) {
                (Some(c), _) => c,
                (None, Some(rt)) => Checker {
                    task: rt.spawn(run(
                        r.name.clone(),
                        endpoint(target),
                        check.clone(),
                        target.state.clone(),
                        gauge_series.clone(),
                    )),
                    state: target.state.clone(),
                },
                (None, None) => continue,
            };
            checkers.insert(key, checker);
        }
    }
    let now: HashSet<&UpstreamHealthLabels> = series.iter().collect();
    for gone in old_series.iter().filter(|l| !now.contains(l)) {
        gauge.remove(gone);
    }
    RouteHealth { series, checkers }
}

fn endpoint(t: &Target) -> Endpoint {
    Endpoint {
        client: t.client.clone(),
        scheme: t.scheme,
        address: t.upstream.authority.clone(),
        host_header: t.host_header.clone(),
    }
}

async fn run(route: String, e: Endpoint, check: HealthCheck, state: Arc<EndpointState>, gauge: Gauge) {
    let (mut fails, mut oks) = (0u32, 0u32);
    let mut ticker = tokio::time::interval(check.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let ok = match tokio::time::timeout(check.timeout, probe(&check.kind, &e)).await {
            Ok(Ok(())) => true,
            Ok(Err(why)) => {
                tracing::debug!(%route, upstream = %e.address, %why, "health check failed");
                false
            }
            Err(_) => {
                tracing::debug!(%route, upstream = %e.address, timeout = ?check.timeout, "health check timed out");
                false
            }
        };
        if ok {
            (oks, fails) = (oks.saturating_add(1), 0);
        } else {
            (oks, fails) = (0, fails.saturating_add(1));
        }
        let healthy = state.healthy();
        if healthy && fails >= check.unhealthy_threshold {
            state.set_healthy(false);
            gauge.set(0);
            tracing::warn!(%route, upstream = %e.address, "upstream marked unhealthy");
        } else if !healthy && oks >= check.healthy_threshold {
            state.set_healthy(true);
            gauge.set(1);
            tracing::info!(%route, upstream = %e.address, "upstream healthy again");
        }
    }
}

async fn probe(kind: &HealthCheckKind, e: &Endpoint) -> Result<(), String> {
    match kind {
        HealthCheckKind::Tcp { send, receive } => probe::tcp(&e.address, send.as_deref(), receive).await,
        HealthCheckKind::Http { path, host, expected_statuses } => {
            probe::http(e, path, host.as_deref(), expected_statuses).await
        }
        HealthCheckKind::Grpc { service_name, authority } => probe::grpc(e, service_name, authority.as_deref()).await,
    }
}
