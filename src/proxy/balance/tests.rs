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
    let targets: Vec<Target> =
        ups.iter().map(|u| Target::new(u, &UpstreamTls::default(), &cache, reg.endpoint("r", &u.authority))).collect();
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
