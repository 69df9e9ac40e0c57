//! Deciding a request against a 20-criterion policy (benches/policy_20.yaml):
//! `cargo bench --bench policy_eval`. Issue 15's target is under 1 µs per decision, and a
//! decision allocates nothing (tests/alloc.rs counts it). Not part of the test command.

// Test code measures wall time and may lock as it likes: the clippy.toml rules are for src/.
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]
// criterion_group! defines an undocumented public function.
#![allow(missing_docs)]

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
#[path = "support/policy_fixture.rs"]
mod policy_fixture;

fn bench(c: &mut Criterion) {
    let policy = policy_fixture::policy();
    let identity = policy_fixture::identity();
    let facts = |method, path| policy_fixture::facts(&identity, method, path, jiff::Timestamp::now());
    let allowed = facts("GET", "/api/items");
    let denied = facts("DELETE", "/api/items");
    let unmatched = facts("GET", "/other");
    let mut g = c.benchmark_group("policy_20_criteria");
    g.bench_function("allow (every criterion checked)", |b| b.iter(|| black_box(&policy).decide(black_box(&allowed))));
    g.bench_function("deny", |b| b.iter(|| black_box(&policy).decide(black_box(&denied))));
    g.bench_function("no match", |b| b.iter(|| black_box(&policy).decide(black_box(&unmatched))));
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
