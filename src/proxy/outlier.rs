//! Passive outlier detection (`outlier_detection` on a route), after Envoy's consecutive-5xx
//! and consecutive-gateway-failure detectors: every upstream attempt's outcome is recorded
//! against its endpoint; an endpoint that fails too many times in a row is ejected (gets no
//! new requests) for `base_ejection_time` × the times it has been ejected, capped by
//! `max_ejection_time`, and then returns on its own.
//!
//! A small state machine per endpoint, all atomics on [`EndpointState`] (after linkerd's
//! breaker): *serving* → (threshold reached, and the route is under its ejection cap) →
//! *ejected* → (timer) → *serving*, with `times_ejected` decaying by one per `interval` the
//! endpoint spends serving. The timer is a task spawned at ejection: ejections are rare, and
//! the request path never reads a clock for them.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;

use super::body::now_ms;
use super::endpoints::EndpointState;
use crate::config::OutlierDetection;

/// What one upstream attempt said about its endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// An answer below 500.
    Success,
    /// A 5xx answer other than a gateway failure.
    ServerError,
    /// 502, 503, 504 from the upstream, or no answer at all: connect failure, reset,
    /// timeout.
    GatewayFailure,
}

impl Outcome {
    /// The outcome of an upstream answer's status.
    pub fn of_status(status: http::StatusCode) -> Self {
        match status.as_u16() {
            502..=504 => Self::GatewayFailure,
            500..=599 => Self::ServerError,
            _ => Self::Success,
        }
    }
}

/// The metric series an ejection updates for one endpoint.
pub struct Series {
    /// `portcullis_upstream_ejections_total{route,upstream}`.
    pub ejections: Counter,
    /// `portcullis_upstream_ejected{route,upstream}`.
    pub ejected: Gauge,
}

/// Records `outcome` against `state`, an endpoint of a route of `endpoints` endpoints;
/// returns the ejection time when this ejected it. `series` is asked for only then.
pub fn record(
    cfg: &OutlierDetection,
    state: &Arc<EndpointState>,
    endpoints: usize,
    outcome: Outcome,
    series: impl FnOnce() -> Series,
) -> Option<Duration> {
    let (c5xx, gateway) = match outcome {
        Outcome::Success => {
            // The common case reads before it writes: no cache-line traffic when nothing failed.
            if state.consecutive_5xx.load(Ordering::Relaxed) != 0 {
                state.consecutive_5xx.store(0, Ordering::Relaxed);
            }
            if state.consecutive_gateway.load(Ordering::Relaxed) != 0 {
                state.consecutive_gateway.store(0, Ordering::Relaxed);
            }
            return None;
        }
        // Envoy counts a gateway failure as a 5xx too.
        Outcome::GatewayFailure => (
            state.consecutive_5xx.fetch_add(1, Ordering::Relaxed) + 1,
            state.consecutive_gateway.fetch_add(1, Ordering::Relaxed) + 1,
        ),
        Outcome::ServerError => {
            state.consecutive_gateway.store(0, Ordering::Relaxed);
            (state.consecutive_5xx.fetch_add(1, Ordering::Relaxed) + 1, 0)
        }
    };
    let tripped = (cfg.consecutive_5xx > 0 && c5xx >= cfg.consecutive_5xx)
        || (cfg.consecutive_gateway_failure > 0 && gateway >= cfg.consecutive_gateway_failure);
    if !tripped || state.ejected() {
        return None;
    }
    // The cap: at most max_ejection_percent of the route's endpoints, but at least one.
    let cap = (endpoints * usize::from(cfg.max_ejection_percent) / 100).max(1);
    if state.route().ejected.load(Ordering::Relaxed) >= cap || !state.set_ejected(true) {
        return None;
    }
    state.consecutive_5xx.store(0, Ordering::Relaxed);
    state.consecutive_gateway.store(0, Ordering::Relaxed);
    let now = now_ms();
    let returned = state.returned_ms.load(Ordering::Relaxed);
    let interval_ms = (cfg.interval.as_millis() as u64).max(1);
    let decay = if returned == 0 { 0 } else { now.saturating_sub(returned) / interval_ms };
    let before = u64::from(state.times_ejected.load(Ordering::Relaxed));
    let times = before.saturating_sub(decay) + 1;
    state.times_ejected.store(times.min(u64::from(u32::MAX)) as u32, Ordering::Relaxed);
    let time = cfg.base_ejection_time.saturating_mul(times.min(1 << 16) as u32).min(cfg.max_ejection_time);
    let generation = state.ejection.fetch_add(1, Ordering::Relaxed) + 1;
    let series = series();
    series.ejections.inc();
    series.ejected.set(1);
    if let Ok(rt) = tokio::runtime::Handle::try_current() {
        let state = state.clone();
        rt.spawn(async move {
            tokio::time::sleep(time).await;
            if state.ejection.load(Ordering::Relaxed) == generation {
                state.returned_ms.store(now_ms(), Ordering::Relaxed);
                state.set_ejected(false);
                series.ejected.set(0);
            }
        });
    }
    Some(time)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::endpoints::Registry;

    fn series() -> Series {
        Series { ejections: Counter::default(), ejected: Gauge::default() }
    }

    fn route(n: usize) -> Vec<Arc<EndpointState>> {
        let reg = Registry::default();
        let all: Vec<_> = (0..n).map(|i| reg.endpoint("r", &format!("10.0.0.{i}:80"))).collect();
        let names: Vec<String> = (0..n).map(|i| format!("10.0.0.{i}:80")).collect();
        reg.retain(&names.iter().map(|a| ("r", a.as_str())).collect());
        all
    }

    #[test]
    fn consecutive_failures_eject_and_a_success_resets_the_count() {
        let cfg = OutlierDetection::default();
        let eps = route(20);
        for _ in 0..4 {
            assert_eq!(record(&cfg, &eps[0], 20, Outcome::GatewayFailure, series), None);
        }
        assert_eq!(record(&cfg, &eps[0], 20, Outcome::Success, series), None);
        for _ in 0..4 {
            assert_eq!(record(&cfg, &eps[0], 20, Outcome::ServerError, series), None);
        }
        assert!(!eps[0].ejected());
        assert_eq!(record(&cfg, &eps[0], 20, Outcome::GatewayFailure, series), Some(Duration::from_secs(30)));
        assert!(eps[0].ejected() && !eps[0].available());
        assert_eq!(eps[0].route().ejected.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn ejection_is_capped_but_one_endpoint_always_may_go() {
        let cfg = OutlierDetection { consecutive_5xx: 1, ..OutlierDetection::default() };
        // Three endpoints: 10 % is none, but one may still be ejected; not a second.
        let eps = route(3);
        assert!(record(&cfg, &eps[0], 3, Outcome::ServerError, series).is_some());
        assert!(record(&cfg, &eps[1], 3, Outcome::ServerError, series).is_none());
        assert!(!eps[1].ejected());
        // Twenty endpoints: two.
        let eps = route(20);
        let ejected = (0..5).filter(|&i| record(&cfg, &eps[i], 20, Outcome::ServerError, series).is_some()).count();
        assert_eq!(ejected, 2);
    }

    #[test]
    fn ejection_time_grows_with_each_ejection_up_to_the_cap() {
        let cfg = OutlierDetection {
            consecutive_5xx: 1,
            base_ejection_time: Duration::from_secs(100),
            max_ejection_time: Duration::from_secs(250),
            interval: Duration::from_secs(3600),
            ..OutlierDetection::default()
        };
        let eps = route(1);
        let mut times = Vec::new();
        for _ in 0..3 {
            times.push(record(&cfg, &eps[0], 1, Outcome::ServerError, series).unwrap().as_secs());
            // Back (as its timer would), straight away: no interval has passed to decay.
            eps[0].returned_ms.store(now_ms(), Ordering::Relaxed);
            eps[0].set_ejected(false);
        }
        assert_eq!(times, [100, 200, 250]);
    }

    #[tokio::test(start_paused = true)]
    async fn an_ejected_endpoint_returns_after_its_ejection_time() {
        let cfg = OutlierDetection { consecutive_gateway_failure: 2, ..OutlierDetection::default() };
        let eps = route(1);
        let s = series();
        let gauge = s.ejected.clone();
        record(&cfg, &eps[0], 1, Outcome::GatewayFailure, series);
        let mut once = Some(s);
        assert!(record(&cfg, &eps[0], 1, Outcome::GatewayFailure, || once.take().unwrap()).is_some());
        assert_eq!(gauge.get(), 1);
        tokio::time::sleep(Duration::from_secs(29)).await;
        assert!(eps[0].ejected());
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(!eps[0].ejected() && eps[0].available());
        assert_eq!(gauge.get(), 0);
        assert_eq!(eps[0].route().ejected.load(Ordering::Relaxed), 0);
    }
}
