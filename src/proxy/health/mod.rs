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
use super::snapshot::Snapshot;
use super::upstream::Target;
use crate::config::{HealthCheck, HealthCheckKind, UpstreamScheme, UpstreamTls};
use crate::metrics::UpstreamHealthLabels;

/// The running checkers and the gauge series they keep.
#[derive(Default)]
pub struct Registry {
    checkers: Mutex<HashMap<CheckerKey, Checker>>,
    series: Mutex<HashSet<UpstreamHealthLabels>>,
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
    /// Runs the checkers `snap` wants: keeps the running ones it still wants, stops the
    /// others, starts the new ones; sets every endpoint's `portcullis_upstream_healthy` and
    /// removes the series of endpoints it no longer has. Needs a tokio runtime to start
    /// checkers; without one (unit tests building snapshots) none run.
    pub fn apply(&self, snap: &Snapshot, gauge: &Family<UpstreamHealthLabels, Gauge>) {
        let rt = tokio::runtime::Handle::try_current().ok();
        let mut live = HashSet::new();
        let mut checkers = crate::sync::lock(&self.checkers);
        let mut running = std::mem::take(&mut *checkers);
        for route in snap.routes.routes() {
            let r = &route.route;
            let tls = TlsKey::of(&r.tls);
            for target in route.balancer.targets() {
                let labels =
                    UpstreamHealthLabels { route: r.name.clone(), upstream: target.upstream.authority.clone() };
                if r.health_checks.is_empty() {
                    // Its checks were removed: nothing may keep it out any longer.
                    target.state.set_healthy(true);
                }
                let series = gauge.get_or_create_owned(&labels);
                series.set(i64::from(target.state.healthy()));
                live.insert(labels);
                for (index, check) in r.health_checks.iter().enumerate() {
                    let key = CheckerKey {
                        route: r.name.clone(),
                        authority: target.upstream.authority.clone(),
                        scheme: target.upstream.scheme,
                        index,
                        check: check.clone(),
                        tls: tls.clone(),
                    };
                    let kept =
                        running.remove(&key).filter(|c| Arc::ptr_eq(&c.state, &target.state) && !c.task.is_finished());
                    let checker = match (kept, &rt) {
                        (Some(c), _) => c,
                        (None, Some(rt)) => Checker {
                            task: rt.spawn(run(
                                r.name.clone(),
                                endpoint(target),
                                check.clone(),
                                target.state.clone(),
                                series.clone(),
                            )),
                            state: target.state.clone(),
                        },
                        (None, None) => continue,
                    };
                    checkers.insert(key, checker);
                }
            }
        }
        // Dropping the rest stops them.
        drop(running);
        drop(checkers);
        let mut series = crate::sync::lock(&self.series);
        for gone in series.difference(&live) {
            gauge.remove(gone);
        }
        *series = live;
    }
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
