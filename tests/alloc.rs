//! A route lookup, a balancer's pick and a policy decision allocate nothing, however large the table or the
//! policy (counted by a real global allocator, not assumed).

// Test code measures wall time and may lock as it likes: the clippy.toml rules are for src/.
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]

use std::fmt::Write as _;

use portcullis::proxy::table::RouteTable;
use portcullis::source::yaml::{parse_config, NoMaterial};

#[path = "../benches/support/policy_fixture.rs"]
mod policy_fixture;

#[path = "../benches/support/balancer_fixture.rs"]
mod balancer_fixture;

#[test]
fn a_pick_does_not_allocate_under_any_policy() {
    for policy in balancer_fixture::POLICIES {
        // 1,000 endpoints, one in ten unhealthy: picks that fall back included.
        let (b, _reg) = balancer_fixture::balancer(policy, 1000, 10);
        let keys: Vec<u64> = (0..1000u64).map(|k| k.wrapping_mul(0x9E37_79B9_7F4A_7C15)).collect();
        // Warm up (the thread's random generator is made on first use).
        b.pick(0, None);
        let info = allocation_counter::measure(|| {
            for (i, &k) in keys.iter().enumerate() {
                let first = b.pick(k, None).unwrap();
                assert!(b.targets()[first].state.available(), "{policy:?}");
                if i % 10 == 0 {
                    assert_ne!(b.pick(k, Some(first)), Some(first));
                }
            }
        });
        assert_eq!(info.count_total, 0, "{policy:?} picks allocated {} times", info.count_total);
    }
}

#[test]
fn route_lookup_does_not_allocate() {
    let mut yaml = String::from("routes:\n");
    for i in 0..1000 {
        let _ = writeln!(yaml, " - {{from: https://host{i}.example.com, prefix: /api/v{i}, to: http://10.0.0.1:80}}");
        let _ = writeln!(yaml, " - {{from: https://host{i}.example.com, path: /exact/{i}, to: http://10.0.0.1:80}}");
        let _ = writeln!(
            yaml,
            " - {{from: \"https://*.w{i}.example.com\", regex: \"/items/[0-9]+/{i}\", to: http://10.0.0.1:80}}"
        );
    }
    yaml.push_str(" - {from: \"https://*\", to: http://10.0.0.1:80}\n");
    let root = portcullis::source::yaml::yaml_to_value(&yaml).unwrap();
    let config = parse_config(&root, &NoMaterial).unwrap();
    let table = RouteTable::new(config.routes, |r| (&r.host, &r.path));
    let cases = [
        ("host500.example.com", "/api/v500/users", Some("host500.example.com/api/v500")),
        ("HOST7.Example.com:8443", "/exact/7", Some("host7.example.com=/exact/7")),
        ("a.w9.example.com", "/items/42/9", Some("*.w9.example.com~/items/[0-9]+/9")),
        ("unknown.org", "/anything", Some("*")),
    ];
    // Warm up (the regex engine fills its per-thread cache once).
    for (h, p, _) in cases {
        table.lookup(h, p);
    }
    let info = allocation_counter::measure(|| {
        for _ in 0..100 {
            for (h, p, want) in cases {
                assert_eq!(table.lookup(h, p).map(|r| r.name.as_str()), want);
            }
        }
    });
    assert_eq!(info.count_total, 0, "route lookups allocated {} times", info.count_total);
}

#[test]
fn policy_decision_does_not_allocate() {
    use portcullis::policy::eval::Decision;
    let policy = policy_fixture::policy();
    let identity = policy_fixture::identity();
    let now = "2026-12-01T12:30:00Z".parse().unwrap();
    let facts = |method, path| policy_fixture::facts(&identity, method, path, now);
    let cases = [
        (facts("GET", "/api/items"), Decision::Allow { rule: 0 }),
        (facts("DELETE", "/api/items"), Decision::Deny { rule: 1 }),
        (facts("GET", "/other"), Decision::NoMatch),
    ];
    for (f, want) in &cases {
        assert_eq!(policy.decide(f), *want);
    }
    let info = allocation_counter::measure(|| {
        for _ in 0..100 {
            for (f, want) in &cases {
                assert_eq!(policy.decide(f), *want);
            }
        }
    });
    assert_eq!(info.count_total, 0, "policy decisions allocated {} times", info.count_total);
}
