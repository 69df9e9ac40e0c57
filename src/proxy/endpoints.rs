//! The live state of every endpoint of every route: health (active checks), ejection
//! (outlier detection), requests in flight. It lives here rather than in a snapshot so that
//! a reload, or an EndpointSlice update that keeps an address, keeps it: a snapshot's
//! targets hold `Arc`s into this registry, and a new snapshot gets the same `Arc` for the
//! same route and address.
//!
//! Each route also keeps counts of its endpoints that are out (unhealthy or ejected) and
//! ejected, kept exact by whichever thread flips an endpoint's state. The balancer reads
//! them to decide on the panic threshold and the ejection cap without looking at every
//! endpoint per request.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// Flag: the last active checks failed.
const UNHEALTHY: u8 = 1;
/// Flag: outlier detection ejected it.
const EJECTED: u8 = 2;

/// Counts over the endpoints of one route, shared by its endpoints' states.
#[derive(Debug, Default)]
pub struct RouteCounters {
    /// Endpoints the route has now.
    pub endpoints: AtomicUsize,
    /// Of those, unhealthy or ejected.
    pub unavailable: AtomicUsize,
    /// Of those, ejected.
    pub ejected: AtomicUsize,
    /// Requests of the route in flight (the retry budget's denominator).
    pub in_flight: AtomicUsize,
    /// Of those, retries in flight.
    pub retries: AtomicUsize,
}

/// One endpoint of one route.
#[derive(Debug)]
pub struct EndpointState {
    flags: AtomicU8,
    /// Requests in flight to it, for LEAST_REQUEST.
    pub in_flight: AtomicUsize,
    /// Outlier detection's counters (see `outlier`).
    pub(crate) consecutive_5xx: AtomicU32,
    pub(crate) consecutive_gateway: AtomicU32,
    pub(crate) times_ejected: AtomicU32,
    /// Bumped by each ejection, so that a stale un-ejection timer does nothing.
    pub(crate) ejection: AtomicU64,
    /// When it last came back (ms since the Unix epoch), for decaying `times_ejected`.
    pub(crate) returned_ms: AtomicU64,
    /// Whether the registry still lists it; a state an old snapshot still holds changes no
    /// counts once its address is gone.
    member: std::sync::atomic::AtomicBool,
    route: Arc<RouteCounters>,
}

impl EndpointState {
    fn new(route: Arc<RouteCounters>) -> Self {
        Self {
            flags: AtomicU8::new(0),
            in_flight: AtomicUsize::new(0),
            consecutive_5xx: AtomicU32::new(0),
            consecutive_gateway: AtomicU32::new(0),
            times_ejected: AtomicU32::new(0),
            ejection: AtomicU64::new(0),
            returned_ms: AtomicU64::new(0),
            member: std::sync::atomic::AtomicBool::new(true),
            route,
        }
    }

    /// Neither unhealthy nor ejected: it may get new requests.
    #[inline]
    pub fn available(&self) -> bool {
        self.flags.load(Ordering::Relaxed) == 0
    }

    /// Whether its active checks pass (or it has none).
    pub fn healthy(&self) -> bool {
        self.flags.load(Ordering::Relaxed) & UNHEALTHY == 0
    }

    /// Whether outlier detection has it out.
    pub fn ejected(&self) -> bool {
        self.flags.load(Ordering::Relaxed) & EJECTED != 0
    }

    /// The counts of its route.
    pub fn route(&self) -> &RouteCounters {
        &self.route
    }

    /// Records the active checks' verdict; true when that changed it.
    pub fn set_healthy(&self, healthy: bool) -> bool {
        self.set_flag(UNHEALTHY, !healthy)
    }

    /// Ejects it or brings it back; true when that changed it.
    pub(crate) fn set_ejected(&self, ejected: bool) -> bool {
        let changed = self.set_flag(EJECTED, ejected);
        if changed && self.member.load(Ordering::Relaxed) {
            if ejected {
                self.route.ejected.fetch_add(1, Ordering::Relaxed);
            } else {
                self.route.ejected.fetch_sub(1, Ordering::Relaxed);
            }
        }
        changed
    }

    fn set_flag(&self, flag: u8, on: bool) -> bool {
        let before = if on {
            self.flags.fetch_or(flag, Ordering::AcqRel)
        } else {
            self.flags.fetch_and(!flag, Ordering::AcqRel)
        };
        let after = if on { before | flag } else { before & !flag };
        if before == after {
            return false;
        }
        if (before == 0) != (after == 0) && self.member.load(Ordering::Relaxed) {
            if after == 0 {
                self.route.unavailable.fetch_sub(1, Ordering::Relaxed);
            } else {
                self.route.unavailable.fetch_add(1, Ordering::Relaxed);
            }
        }
        true
    }
}

/// Route name -> its counters and its endpoints by address.
#[derive(Default)]
pub struct Registry {
    routes: Mutex<HashMap<String, RouteEntry>>,
}

#[derive(Default)]
struct RouteEntry {
    counters: Arc<RouteCounters>,
    endpoints: HashMap<String, Arc<EndpointState>>,
}

impl Registry {
    /// The state of `address` as an endpoint of `route`; a new endpoint starts available.
    /// Called while building a snapshot.
    pub fn endpoint(&self, route: &str, address: &str) -> Arc<EndpointState> {
        let mut routes = crate::sync::lock(&self.routes);
        let entry = routes.entry(route.to_owned()).or_default();
        let counters = entry.counters.clone();
        entry.endpoints.entry(address.to_owned()).or_insert_with(|| Arc::new(EndpointState::new(counters))).clone()
    }

    /// [`Self::retain`] for the `routes` named only: the others are left as they are.
    pub fn retain_routes(
        &self,
        routes: &std::collections::HashSet<&str>,
        live: &std::collections::HashSet<(&str, &str)>,
    ) {
        let mut all = crate::sync::lock(&self.routes);
        for name in routes {
            if let Some(entry) = all.get_mut(*name) {
                if !Self::retain_one(name, entry, live) {
                    all.remove(*name);
                }
            }
        }
    }

    /// Keeps the endpoints `live` lists (route, address) and forgets the others, so that an
    /// address that comes back starts afresh; then recounts every route.
    pub fn retain(&self, live: &std::collections::HashSet<(&str, &str)>) {
        let mut routes = crate::sync::lock(&self.routes);
        routes.retain(|route, entry| Self::retain_one(route, entry, live));
    }

    /// Every route and its endpoints' addresses, sorted (what the tests compare).
    #[cfg(test)]
    pub(crate) fn listing(&self) -> Vec<(String, Vec<String>)> {
        let routes = crate::sync::lock(&self.routes);
        let mut out: Vec<(String, Vec<String>)> = routes
            .iter()
            .map(|(name, e)| {
                let mut addresses: Vec<String> = e.endpoints.keys().cloned().collect();
                addresses.sort();
                (name.clone(), addresses)
            })
            .collect();
        out.sort();
        out
    }

    /// Keeps `route`'s live endpoints and recounts it; whether any is left.
    fn retain_one(route: &str, entry: &mut RouteEntry, live: &std::collections::HashSet<(&str, &str)>) -> bool {
        {
            entry.endpoints.retain(|address, state| {
                let keep = live.contains(&(route, address.as_str()));
                if !keep {
                    state.member.store(false, Ordering::Relaxed);
                }
                keep
            });
            let c = &entry.counters;
            c.endpoints.store(entry.endpoints.len(), Ordering::Relaxed);
            c.unavailable.store(entry.endpoints.values().filter(|s| !s.available()).count(), Ordering::Relaxed);
            c.ejected.store(entry.endpoints.values().filter(|s| s.ejected()).count(), Ordering::Relaxed);
            !entry.endpoints.is_empty()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_survives_while_the_address_stays_and_counts_stay_exact() {
        let reg = Registry::default();
        let a = reg.endpoint("r", "10.0.0.1:80");
        let b = reg.endpoint("r", "10.0.0.2:80");
        reg.retain(&[("r", "10.0.0.1:80"), ("r", "10.0.0.2:80")].into_iter().collect());
        assert_eq!(a.route().endpoints.load(Ordering::Relaxed), 2);
        assert!(a.set_healthy(false));
        assert!(!a.set_healthy(false), "no change");
        assert!(a.set_ejected(true));
        assert_eq!(a.route().unavailable.load(Ordering::Relaxed), 1, "out once, for two reasons");
        assert!(a.set_healthy(true));
        assert_eq!(a.route().unavailable.load(Ordering::Relaxed), 1, "still ejected");
        assert!(a.set_ejected(false));
        assert_eq!(a.route().unavailable.load(Ordering::Relaxed), 0);
        b.set_healthy(false);
        // The next snapshot keeps b's address: same state.
        assert!(Arc::ptr_eq(&b, &reg.endpoint("r", "10.0.0.2:80")));
        reg.retain(&[("r", "10.0.0.2:80")].into_iter().collect());
        assert_eq!(b.route().endpoints.load(Ordering::Relaxed), 1);
        assert_eq!(b.route().unavailable.load(Ordering::Relaxed), 1);
        // a is gone: an old snapshot flipping it changes no count; re-added, it starts afresh.
        a.set_healthy(false);
        assert_eq!(b.route().unavailable.load(Ordering::Relaxed), 1);
        assert!(reg.endpoint("r", "10.0.0.1:80").available());
        assert!(!Arc::ptr_eq(&a, &reg.endpoint("r", "10.0.0.1:80")));
    }
}
