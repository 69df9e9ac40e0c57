//! Load balancing: a route's [`Balancer`] picks one of its endpoints per request without a
//! lock or an allocation. ROUND_ROBIN walks a precomputed smooth weighted schedule with one
//! atomic counter; RANDOM draws from it; LEAST_REQUEST draws two and takes the one with fewer
//! requests in flight; RING_HASH ([`ring`]) and MAGLEV ([`maglev`]) look the request's hash
//! key up in a table built once per set of endpoints ([`Tables`]).
//!
//! Every policy picks among *available* endpoints (healthy and not ejected) and falls back
//! the same way (after pingora's selection with fallbacks): round robin walks on, random
//! draws again, the hash tables walk to the next entry. Below `healthy_panic_threshold`
//! percent of endpoints available the route is in panic, as Envoy's: it balances over all
//! of them rather than pile everything onto the few. With none available at all it still
//! picks one (failing open beats refusing every request on a bad health check).

pub mod hash;
pub mod maglev;
pub mod ring;
pub mod schedule;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crate::config::{LbPolicy, RingSize, Upstream};
use crate::proxy::upstream::Target;
use maglev::Maglev;
use ring::Ring;

/// A hashing policy's lookup table, shared by the snapshots whose route has the same
/// endpoints and weights.
pub enum HashTable {
    /// RING_HASH.
    Ring(Ring),
    /// MAGLEV.
    Maglev(Maglev),
}

/// What a table was built from: rebuilt only when this changes.
#[derive(PartialEq, Eq)]
struct TableKey {
    policy: LbPolicy,
    ring: RingSize,
    endpoints: Vec<(String, u32)>,
}

/// Hash tables by route name, kept across snapshots (as the endpoint states are).
#[derive(Default)]
pub struct Tables {
    tables: Mutex<HashMap<String, (TableKey, Arc<HashTable>)>>,
}

impl Tables {
    /// The table of a hashing route with these upstreams, built only if it changed.
    /// Called while building a snapshot.
    pub fn get(&self, route: &str, policy: LbPolicy, ring: RingSize, upstreams: &[Upstream]) -> Option<Arc<HashTable>> {
        if !policy.hashes() {
            return None;
        }
        let key =
            TableKey { policy, ring, endpoints: upstreams.iter().map(|u| (u.authority.clone(), u.weight)).collect() };
        let mut tables = crate::sync::lock(&self.tables);
        if let Some((k, t)) = tables.get(route) {
            if *k == key {
                return Some(t.clone());
            }
        }
        let eps: Vec<(&str, u32)> = key.endpoints.iter().map(|(a, w)| (a.as_str(), *w)).collect();
        let table = Arc::new(match policy {
            LbPolicy::RingHash => HashTable::Ring(Ring::new(&eps, ring.min, ring.max)),
            _ => HashTable::Maglev(Maglev::new(&eps)),
        });
        tables.insert(route.to_owned(), (key, table.clone()));
        Some(table)
    }

    /// Forgets the tables of the `removed` routes.
    pub fn forget(&self, removed: &[String]) {
        let mut tables = crate::sync::lock(&self.tables);
        for name in removed {
            tables.remove(name);
        }
    }

    /// Forgets the tables of routes that are gone.
    pub fn retain(&self, live: &std::collections::HashSet<&str>) {
        crate::sync::lock(&self.tables).retain(|route, _| live.contains(route.as_str()));
    }
}

/// Picks a target per request.
pub struct Balancer {
    targets: Vec<Target>,
    /// The weighted schedule (round robin, and the weighted draws of the others).
    schedule: Vec<u32>,
    next: AtomicUsize,
    policy: LbPolicy,
    table: Option<Arc<HashTable>>,
    panic_threshold: u8,
}

impl Balancer {
    /// A balancer over `targets` (built from the route's upstreams, in order); `table` is the
    /// hashing policies' (from [`Tables`]).
    pub fn new(targets: Vec<Target>, policy: LbPolicy, table: Option<Arc<HashTable>>, panic_threshold: u8) -> Self {
        let policy = if table.is_none() && policy.hashes() { LbPolicy::RoundRobin } else { policy };
        Self {
            schedule: schedule::smooth(targets.iter().map(|t| t.upstream.weight).collect()),
            targets,
            next: AtomicUsize::new(0),
            policy,
            table,
            panic_threshold,
        }
    }

    /// All targets (for health checks and the admin API).
    pub fn targets(&self) -> &[Target] {
        &self.targets
    }

    /// The policy in force.
    pub fn policy(&self) -> LbPolicy {
        self.policy
    }

    /// Chooses a target for a request whose hash key is `key` (read by RING_HASH and MAGLEV
    /// only), other than `avoid` (the endpoint a retry leaves). `None` when the route has no
    /// upstream at all (a Service with no ready endpoints), or only `avoid`.
    #[inline]
    pub fn pick(&self, key: u64, avoid: Option<usize>) -> Option<usize> {
        match (self.targets.len(), avoid) {
            (0, _) | (1, Some(0)) => None,
            (1, _) => Some(0),
            _ => Some(self.pick_of_many(key, avoid)),
        }
    }

    /// Whether the route is in panic: too few endpoints available to trust the flags.
    #[inline]
    fn panicking(&self) -> bool {
        if self.panic_threshold == 0 {
            return false;
        }
        let counts = self.targets[0].state.route();
        let unavailable = counts.unavailable.load(Ordering::Relaxed);
        if unavailable == 0 {
            return false;
        }
        let n = self.targets.len();
        (n.saturating_sub(unavailable)) * 100 < usize::from(self.panic_threshold) * n
    }

    fn pick_of_many(&self, key: u64, avoid: Option<usize>) -> usize {
        let panic = self.panicking();
        let usable = |i: usize| Some(i) != avoid && (panic || self.targets[i].state.available());
        let found = match self.policy {
            LbPolicy::RoundRobin => self.round_robin(&usable, avoid.is_none()),
            LbPolicy::Random => self.random(&usable),
            LbPolicy::LeastRequest => self.random(&usable).map(|a| match self.random(&usable) {
                Some(b) if self.load(b) < self.load(a) => b,
                _ => a,
            }),
            LbPolicy::RingHash | LbPolicy::Maglev => match self.table.as_deref() {
                Some(HashTable::Ring(r)) => r.pick(key, usable),
                Some(HashTable::Maglev(m)) => m.pick(key, usable),
                None => self.round_robin(&usable, true),
            },
        };
        // None available (and no panic threshold to say so): any but `avoid`.
        found.unwrap_or_else(|| {
            let start = self.next.fetch_add(1, Ordering::Relaxed);
            (0..self.targets.len()).map(|i| (start + i) % self.targets.len()).find(|&i| Some(i) != avoid).unwrap_or(0)
        })
    }

    fn load(&self, i: usize) -> usize {
        self.targets[i].state.in_flight.load(Ordering::Relaxed)
    }

    /// The next usable target of the schedule. A retry (`advance` false) looks on from the
    /// schedule's place without moving it: otherwise a dead endpoint's retries would shift
    /// the rotation so that it came first for the next request again.
    fn round_robin(&self, usable: &impl Fn(usize) -> bool, advance: bool) -> Option<usize> {
        let n = self.schedule.len();
        if advance {
            (0..n).map(|_| self.schedule[self.next.fetch_add(1, Ordering::Relaxed) % n] as usize).find(|&t| usable(t))
        } else {
            let start = self.next.load(Ordering::Relaxed);
            (0..n).map(|i| self.schedule[(start + i) % n] as usize).find(|&t| usable(t))
        }
    }

    /// A weighted random draw among usable targets: eight draws, then a walk of the schedule
    /// from a random place (so that many unusable endpoints cost a bounded walk, not luck).
    fn random(&self, usable: &impl Fn(usize) -> bool) -> Option<usize> {
        let n = self.schedule.len();
        for _ in 0..8 {
            let t = self.schedule[rand::random_range(0..n)] as usize;
            if usable(t) {
                return Some(t);
            }
        }
        let start = rand::random_range(0..n);
        (0..n).map(|i| self.schedule[(start + i) % n] as usize).find(|&t| usable(t))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::atomic::Ordering;
    use std::sync::Arc;

    use super::*;
    use crate::config::{UpstreamScheme, UpstreamTls};
    use crate::proxy::endpoints::Registry;
    use crate::proxy::upstream::ClientCache;

    fn upstreams(weights: &[u32]) -> Vec<Upstream> {
        weights
            .iter()
            .enumerate()
            .map(|(i, &weight)| Upstream {
                scheme: UpstreamScheme::Http,
                authority: format!("10.0.0.{i}:80"),
                host: format!("10.0.0.{i}"),
                weight,
            })
            .collect()
    }

    fn balancer(policy: LbPolicy, weights: &[u32], panic: u8) -> (Balancer, Registry) {
        let reg = Registry::default();
        let ups = upstreams(weights);
        let cache = ClientCache::default();
        let targets: Vec<Target> = ups
            .iter()
            .map(|u| Target::new(u, &UpstreamTls::default(), &cache, reg.endpoint("r", &u.authority)))
            .collect();
        reg.retain(&ups.iter().map(|u| ("r", u.authority.as_str())).collect());
        let table = Tables::default().get("r", policy, RingSize::default(), &ups);
        (Balancer::new(targets, policy, table, panic), reg)
    }

    const ALL: [LbPolicy; 5] =
        [LbPolicy::RoundRobin, LbPolicy::Random, LbPolicy::LeastRequest, LbPolicy::RingHash, LbPolicy::Maglev];

    fn spread(b: &Balancer, n: u64) -> HashMap<usize, usize> {
        let mut seen = HashMap::new();
        for k in 0..n {
            *seen.entry(b.pick(hash::hash(&k.to_le_bytes()), None).unwrap()).or_default() += 1;
        }
        seen
    }

    #[test]
    fn every_policy_skips_unavailable_endpoints() {
        for policy in ALL {
            let (b, _reg) = balancer(policy, &[1, 1, 1, 1], 50);
            b.targets()[1].state.set_healthy(false);
            let seen = spread(&b, 2_000);
            assert!(!seen.contains_key(&1), "{policy:?}: {seen:?}");
            assert_eq!(seen.len(), 3, "{policy:?} still uses the others: {seen:?}");
        }
    }

    #[test]
    fn below_the_panic_threshold_every_endpoint_is_used() {
        for policy in ALL {
            let (b, _reg) = balancer(policy, &[1, 1, 1, 1], 50);
            for t in &b.targets()[1..] {
                t.state.set_healthy(false);
            }
            // 25 % available < 50 %: panic, all four get traffic.
            let seen = spread(&b, 4_000);
            assert_eq!(seen.len(), 4, "{policy:?}: {seen:?}");
            // Threshold 0 never panics: the one healthy endpoint takes it all.
            let (b, _reg) = balancer(policy, &[1, 1, 1, 1], 0);
            for t in &b.targets()[1..] {
                t.state.set_healthy(false);
            }
            assert_eq!(spread(&b, 1_000).keys().copied().collect::<Vec<_>>(), [0], "{policy:?}");
        }
    }

    #[test]
    fn with_none_available_a_pick_still_fails_open() {
        for policy in ALL {
            let (b, _reg) = balancer(policy, &[1, 1], 0);
            for t in b.targets() {
                t.state.set_healthy(false);
            }
            assert!(b.pick(7, None).is_some(), "{policy:?}");
        }
    }

    #[test]
    fn a_retry_avoids_the_endpoint_it_leaves() {
        for policy in ALL {
            let (b, _reg) = balancer(policy, &[1, 1, 1], 50);
            for k in 0..300u64 {
                let key = hash::hash(&k.to_le_bytes());
                let first = b.pick(key, None).unwrap();
                let second = b.pick(key, Some(first)).unwrap();
                assert_ne!(first, second, "{policy:?}");
            }
            let (one, _reg) = balancer(policy, &[1], 50);
            assert_eq!(one.pick(1, None), Some(0));
            assert_eq!(one.pick(1, Some(0)), None, "{policy:?}: nowhere else to go");
        }
    }

    #[test]
    fn least_request_prefers_the_idler_endpoint() {
        let (b, _reg) = balancer(LbPolicy::LeastRequest, &[1, 1], 50);
        b.targets()[0].state.in_flight.store(10, Ordering::Relaxed);
        let seen = spread(&b, 1_000);
        // Power of two choices: the busy one wins only when both draws are it (1/4).
        let busy = seen.get(&0).copied().unwrap_or(0);
        assert!((150..=350).contains(&busy), "{seen:?}");
    }

    #[test]
    fn hashing_policies_keep_a_key_on_its_endpoint_and_weights_hold() {
        for policy in [LbPolicy::RingHash, LbPolicy::Maglev] {
            let (b, _reg) = balancer(policy, &[1, 1, 1, 2], 50);
            for k in 0..100u64 {
                let key = hash::hash(&k.to_le_bytes());
                assert_eq!(b.pick(key, None), b.pick(key, None), "{policy:?}");
            }
            let seen = spread(&b, 100_000);
            for (i, want) in [(0, 0.2), (1, 0.2), (2, 0.2), (3, 0.4)] {
                let got = seen[&i] as f64 / 100_000.0;
                assert!((got - want).abs() / want < 0.05, "{policy:?}: endpoint {i} got {got}, want {want}");
            }
        }
    }

    #[test]
    #[allow(clippy::many_single_char_names)]
    fn tables_are_rebuilt_only_when_endpoints_or_weights_change() {
        let tables = Tables::default();
        let ups = upstreams(&[1, 1, 1]);
        let a = tables.get("r", LbPolicy::Maglev, RingSize::default(), &ups).unwrap();
        let b = tables.get("r", LbPolicy::Maglev, RingSize::default(), &ups).unwrap();
        assert!(Arc::ptr_eq(&a, &b), "same endpoints: same table");
        let c = tables.get("r", LbPolicy::Maglev, RingSize::default(), &upstreams(&[1, 1, 2])).unwrap();
        assert!(!Arc::ptr_eq(&a, &c), "a weight changed");
        let d = tables.get("r", LbPolicy::RingHash, RingSize::default(), &upstreams(&[1, 1, 2])).unwrap();
        assert!(matches!(*d, HashTable::Ring(_)));
        assert!(tables.get("r", LbPolicy::RoundRobin, RingSize::default(), &ups).is_none());
        tables.retain(&std::collections::HashSet::new());
        let e = tables.get("r", LbPolicy::RingHash, RingSize::default(), &upstreams(&[1, 1, 2])).unwrap();
        assert!(!Arc::ptr_eq(&d, &e), "forgotten with its route");
    }
}
