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
mod tests;
