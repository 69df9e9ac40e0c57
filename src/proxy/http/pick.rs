//! Phase 6, pick the upstream: the route's balancer chooses a healthy endpoint, which is then
//! counted in flight (LEAST_REQUEST) until the request's log record is written. RING_HASH,
//! MAGLEV and outlier ejection change the balancer, not this phase.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use http::Version;

use crate::proxy::error::{Error, Kind, Result};
use crate::proxy::log::{InFlight, RequestLog};
use crate::proxy::snapshot::Snapshot;

/// Picks an endpoint of route `route` in `snap` and records it in `log`; returns its index in
/// the route's balancer.
#[inline]
pub(crate) fn pick(snap: &Arc<Snapshot>, route: usize, log: &mut RequestLog) -> Result<usize> {
    let compiled = &snap.routes.routes()[route];
    let target = compiled.balancer.pick(0, None).ok_or_else(|| Error::new(Kind::NoEndpoints))?;
    compiled.balancer.targets()[target].state.in_flight.fetch_add(1, Ordering::Relaxed);
    log.in_flight = Some(InFlight(snap.clone(), route, target));
    log.upstream = Some(target);
    // The premature-reset rule's denominator: HTTP/2 and HTTP/3 requests that cost the
    // upstream something.
    if log.version >= Version::HTTP_2 {
        if let Some(g) = &log.guard {
            g.forwarded();
        }
    }
    Ok(target)
}
