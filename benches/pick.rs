//! Picking an endpoint over 1,000 equal-weight endpoints: `cargo bench --bench pick`. The
//! target is under 100 ns a pick, for every policy; a pick must not allocate (tests/alloc.rs
//! counts it). First the whole `Balancer::pick` of each policy (availability checks, panic
//! threshold, fallback), all up and with one endpoint in ten down; then the consistent-hash
//! tables alone. Keys are hashed beforehand. Not part of the test command.

// Test code measures wall time and may lock as it likes: the clippy.toml rules are for src/.
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]
// criterion_group! defines an undocumented public function.
#![allow(missing_docs)]

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use portcullis::proxy::balance::hash::hash;
use portcullis::proxy::balance::maglev::Maglev;
use portcullis::proxy::balance::ring::{Ring, DEFAULT_MAX_RING_SIZE, DEFAULT_MIN_RING_SIZE};

#[path = "support/balancer_fixture.rs"]
mod balancer_fixture;

const ENDPOINTS: usize = 1000;
/// Enough distinct keys that the picks are not all in cache lines the last pick warmed.
const KEYS: usize = 4096;

fn addresses() -> Vec<String> {
    (0..ENDPOINTS).map(|i| format!("10.0.{}.{}:8080", i / 250, i % 250 + 1)).collect()
}

fn endpoints(addresses: &[String]) -> Vec<(&str, u32)> {
    addresses.iter().map(|a| (a.as_str(), 1)).collect()
}

fn key_hashes() -> Vec<u64> {
    (0..KEYS).map(|i| hash(format!("key-{i}").as_bytes())).collect()
}

/// Every tenth endpoint unusable (10 %).
fn tenth_down() -> Vec<bool> {
    (0..ENDPOINTS).map(|i| i % 10 != 3).collect()
}

/// Cycles through the keys, one pick an iteration.
fn bench_picks(c: &mut Criterion, name: &str, pick: impl Fn(u64) -> Option<usize>) {
    let keys = key_hashes();
    let mut at = 0;
    c.bench_function(name, |b| {
        b.iter(|| {
            at = (at + 1) % KEYS;
            pick(black_box(keys[at]))
        });
    });
}

fn ring_all_usable(c: &mut Criterion) {
    let addresses = addresses();
    let ring = Ring::new(&endpoints(&addresses), DEFAULT_MIN_RING_SIZE, DEFAULT_MAX_RING_SIZE);
    bench_picks(c, "ring_hash pick, 1,000 endpoints, all usable", |k| ring.pick(k, |_| true));
}

fn ring_tenth_unusable(c: &mut Criterion) {
    let addresses = addresses();
    let ring = Ring::new(&endpoints(&addresses), DEFAULT_MIN_RING_SIZE, DEFAULT_MAX_RING_SIZE);
    let usable = tenth_down();
    bench_picks(c, "ring_hash pick, 1,000 endpoints, 10 % unusable", |k| ring.pick(k, |i| usable[i]));
}

fn maglev_all_usable(c: &mut Criterion) {
    let addresses = addresses();
    let table = Maglev::new(&endpoints(&addresses));
    bench_picks(c, "maglev pick, 1,000 endpoints, all usable", |k| table.pick(k, |_| true));
}

fn maglev_tenth_unusable(c: &mut Criterion) {
    let addresses = addresses();
    let table = Maglev::new(&endpoints(&addresses));
    let usable = tenth_down();
    bench_picks(c, "maglev pick, 1,000 endpoints, 10 % unusable", |k| table.pick(k, |i| usable[i]));
}

/// `Balancer::pick` of every policy, all endpoints up and one in ten down.
fn balancer_policies(c: &mut Criterion) {
    for policy in balancer_fixture::POLICIES {
        for (down, what) in [(0, "all up"), (10, "10 % down")] {
            let (b, _reg) = balancer_fixture::balancer(policy, ENDPOINTS, down);
            bench_picks(c, &format!("Balancer::pick {policy:?}, 1,000 endpoints, {what}"), |k| b.pick(k, None));
        }
    }
}

criterion_group!(
    benches,
    balancer_policies,
    ring_all_usable,
    ring_tenth_unusable,
    maglev_all_usable,
    maglev_tenth_unusable
);
criterion_main!(benches);
