//! Active health checks (`health_checks` on a route): an unhealthy upstream gets no new
//! requests until it recovers. Health survives reloads because it lives in the endpoint
//! registry (`endpoints`), keyed by route and address, not in the snapshot.

use std::sync::{Arc, Mutex};

use http::Request;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;

use super::body;
use super::snapshot::Snapshot;
use crate::config::{HealthCheck, HealthCheckKind};
use crate::metrics::UpstreamHealthLabels;

/// The checker tasks of the snapshot in force.
#[derive(Default)]
pub struct Registry {
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl Registry {
    /// Replaces the running checkers with those of `snap`. Needs a tokio runtime; without
    /// one (unit tests building snapshots) no checks run.
    pub fn restart(&self, snap: &Arc<Snapshot>, gauge: &Family<UpstreamHealthLabels, Gauge>) {
        let mut tasks = crate::sync::lock(&self.tasks);
        for t in tasks.drain(..) {
            t.abort();
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else { return };
        for (ri, route) in snap.routes.routes().iter().enumerate() {
            for (ti, target) in route.balancer.targets().iter().enumerate() {
                let labels = UpstreamHealthLabels {
                    route: route.route.name.clone(),
                    upstream: target.upstream.authority.clone(),
                };
                gauge.get_or_create(&labels).set(i64::from(target.state.healthy()));
                for check in &route.route.health_checks {
                    tasks.push(rt.spawn(run(
                        snap.clone(),
                        ri,
                        ti,
                        check.clone(),
                        gauge.get_or_create(&labels).clone(),
                    )));
                }
            }
        }
    }
}

async fn run(snap: Arc<Snapshot>, route: usize, target: usize, check: HealthCheck, gauge: Gauge) {
    let r = &snap.routes.routes()[route];
    let t = &r.balancer.targets()[target];
    let (mut fails, mut oks) = (0u32, 0u32);
    let mut ticker = tokio::time::interval(check.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let ok = match tokio::time::timeout(check.timeout, probe(&check.kind, t)).await {
            Ok(Ok(())) => true,
            Ok(Err(why)) => {
                tracing::debug!(route = %r.route.name, upstream = %t.upstream.authority, %why, "health check failed");
                false
            }
            Err(_) => false,
        };
        if ok {
            (oks, fails) = (oks.saturating_add(1), 0);
        } else {
            (oks, fails) = (0, fails.saturating_add(1));
        }
        let healthy = t.state.healthy();
        if healthy && fails >= check.unhealthy_threshold {
            t.state.set_healthy(false);
            gauge.set(0);
            tracing::warn!(route = %r.route.name, upstream = %t.upstream.authority, "upstream marked unhealthy");
        } else if !healthy && oks >= check.healthy_threshold {
            t.state.set_healthy(true);
            gauge.set(1);
            tracing::info!(route = %r.route.name, upstream = %t.upstream.authority, "upstream healthy again");
        }
    }
}

async fn probe(kind: &HealthCheckKind, t: &super::upstream::Target) -> Result<(), String> {
    match kind {
        HealthCheckKind::Tcp => {
            tokio::net::TcpStream::connect(&t.upstream.authority).await.map(drop).map_err(|e| e.to_string())
        }
        HealthCheckKind::Http { path } => {
            let req = Request::get(format!("{}{path}", t.base))
                .header(http::header::HOST, &t.host_header)
                .header(http::header::USER_AGENT, "portcullis-health-check")
                .body(body::empty())
                .map_err(|e| e.to_string())?;
            let resp = t.client.request(req).await.map_err(|e| e.to_string())?;
            if resp.status().is_success() {
                Ok(())
            } else {
                Err(format!("status {}", resp.status()))
            }
        }
    }
}
