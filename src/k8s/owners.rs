//! Who serves each host and path among the cluster's objects, kept between assemblies so
//! that an edit settles the claims it touches instead of every claim of the cluster.
//!
//! The rule is the assembler's: when objects claim the same host and path, the oldest one
//! (creation time, then kind, namespace and name) serves it and the others are told of the
//! conflict; one object may repeat a claim of its own.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::hash::Hash;
use std::sync::Arc;

use super::translate::Translated;
use crate::config::claims::ClaimKey;
use crate::config::{Certificate, Route};

/// The order in which objects claim: the older first, then by key.
type Age<K> = (Option<k8s_openapi::jiff::Timestamp>, K);

/// One object's translation and what of it is served.
struct Held<K> {
    translated: Arc<Translated>,
    /// The routes this object wins, in its own order.
    served: Vec<Arc<Route>>,
    /// Its routes that an older object wins, with the winner.
    lost: Vec<(String, K)>,
}

/// Every serving object by age, and every claimant of each host and path. `K` names an
/// object (the assembler's `ObjectKey`).
pub struct Owners<K> {
    held: BTreeMap<Age<K>, Held<K>>,
    age: HashMap<K, Age<K>>,
    claimants: HashMap<ClaimKey, BTreeSet<Age<K>>>,
}

impl<K> Default for Owners<K> {
    fn default() -> Self {
        Self { held: BTreeMap::new(), age: HashMap::new(), claimants: HashMap::new() }
    }
}

impl<K: Clone + Ord + Hash> Owners<K> {
    /// Makes `key` serve `translated` (`None`: nothing) and settles the claims that changes.
    /// Returns the objects whose conflicts may have changed (`key` among them).
    pub fn set(
        &mut self,
        key: &K,
        created: Option<k8s_openapi::jiff::Timestamp>,
        translated: Option<Arc<Translated>>,
    ) -> HashSet<K> {
        let mut touched: HashSet<ClaimKey> = HashSet::new();
        if let Some(old_age) = self.age.remove(key) {
            if let Some(old) = self.held.remove(&old_age) {
                if translated.as_ref().is_some_and(|t| Arc::ptr_eq(t, &old.translated)) && old_age.0 == created {
                    // The same translation again (a memoized one): nothing moves.
                    self.age.insert(key.clone(), old_age.clone());
                    self.held.insert(old_age, old);
                    return HashSet::from([key.clone()]);
                }
                for route in &old.translated.routes {
                    let claim = ClaimKey::of(route);
                    if let Some(set) = self.claimants.get_mut(&claim) {
                        set.remove(&old_age);
                        if set.is_empty() {
                            self.claimants.remove(&claim);
                        }
                    }
                    touched.insert(claim);
                }
            }
        }
        if let Some(t) = translated {
            let age: Age<K> = (created, key.clone());
            for route in &t.routes {
                let claim = ClaimKey::of(route);
                self.claimants.entry(claim.clone()).or_default().insert(age.clone());
                touched.insert(claim);
            }
            self.age.insert(key.clone(), age.clone());
            self.held.insert(age, Held { translated: t, served: Vec::new(), lost: Vec::new() });
        }
        let mut affected: HashSet<K> = HashSet::from([key.clone()]);
        for claim in &touched {
            if let Some(set) = self.claimants.get(claim) {
                affected.extend(set.iter().map(|(_, k)| k.clone()));
            }
        }
        for k in &affected {
            self.settle(k);
        }
        affected
    }

    /// Recomputes what `key` wins and loses.
    fn settle(&mut self, key: &K) {
        let Some(age) = self.age.get(key) else { return };
        let Some(held) = self.held.get(age) else { return };
        let mut served = Vec::with_capacity(held.translated.routes.len());
        let mut lost = Vec::new();
        for route in &held.translated.routes {
            match self.claimants.get(&ClaimKey::of(route)).and_then(BTreeSet::first) {
                Some((_, winner)) if winner != key => lost.push((route.name.clone(), winner.clone())),
                _ => served.push(route.clone()),
            }
        }
        if let Some(held) = self.held.get_mut(age) {
            held.served = served;
            held.lost = lost;
        }
    }

    /// The routes of `key` that an older object serves instead: (route name, that object).
    pub fn conflicts(&self, key: &K) -> &[(String, K)] {
        self.age.get(key).and_then(|a| self.held.get(a)).map_or(&[], |h| h.lost.as_slice())
    }

    /// Every served route (older objects' first) and every object's certificates.
    pub fn serve(&self, routes_hint: usize) -> (Vec<Arc<Route>>, Vec<Certificate>) {
        let mut routes = Vec::with_capacity(routes_hint);
        let mut certificates = Vec::new();
        for held in self.held.values() {
            routes.extend(held.served.iter().cloned());
            certificates.extend(held.translated.certificates.iter().cloned());
        }
        (routes, certificates)
    }
}
