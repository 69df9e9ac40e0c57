//! Route lookup and route-table build with 10,000 routes (issue 7's scale figures):
//! `cargo bench --bench route_lookup`. A lookup must not allocate (tests/alloc.rs counts it);
//! this measures what it costs. Not part of the test command.

// Test code measures wall time and may lock as it likes: the clippy.toml rules are for src/.
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]
// criterion_group! defines an undocumented public function.
#![allow(missing_docs)]

use std::fmt::Write as _;
use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use portcullis::config::Route;
use portcullis::proxy::table::RouteTable;
use portcullis::source::yaml::{parse_config, NoMaterial};

/// 10,000 routes as an operator might have them: 2,500 hosts with a prefix and an exact path
/// each, 2,500 wildcard hosts with a regex path and a prefix, and a catch-all.
fn routes_yaml() -> String {
    let mut yaml = String::from("routes:\n");
    for i in 0..2500 {
        let _ = writeln!(yaml, " - {{from: https://host{i}.example.com, prefix: /api/v{i}, to: http://10.0.0.1:80}}");
        let _ = writeln!(yaml, " - {{from: https://host{i}.example.com, path: /exact/{i}, to: http://10.0.0.1:80}}");
        let _ = writeln!(
            yaml,
            " - {{from: \"https://*.w{i}.example.com\", regex: \"/items/[0-9]+/{i}\", to: http://10.0.0.1:80}}"
        );
        let _ = writeln!(yaml, " - {{from: \"https://*.w{i}.example.com\", prefix: /static, to: http://10.0.0.1:80}}");
    }
    yaml.push_str(" - {from: \"https://*\", to: http://10.0.0.1:80}\n");
    yaml
}

fn routes() -> Vec<std::sync::Arc<Route>> {
    let root = portcullis::source::yaml::yaml_to_value(&routes_yaml()).expect("YAML");
    let routes = parse_config(&root, &NoMaterial).expect("valid config").routes;
    assert_eq!(routes.len(), 10_001);
    routes
}

fn lookup(c: &mut Criterion) {
    let table = RouteTable::new(routes(), |r| (&r.host, &r.path));
    let mut group = c.benchmark_group("route lookup, 10,001 routes");
    let cases = [
        ("exact host, prefix", "host1234.example.com", "/api/v1234/users/7"),
        ("exact host, exact path", "HOST77.Example.com:8443", "/exact/77"),
        ("wildcard host, regex", "a.w2000.example.com", "/items/42/2000"),
        ("wildcard host, prefix", "cdn.w9.example.com", "/static/app.js"),
        ("no host match, catch-all", "unknown.org", "/anything"),
    ];
    for (name, host, path) in cases {
        assert!(table.lookup(host, path).is_some(), "{name}");
        group.bench_function(name, |b| b.iter(|| table.lookup_index(black_box(host), black_box(path))));
    }
    group.finish();
}

fn build(c: &mut Criterion) {
    let yaml = routes_yaml();
    let mut group = c.benchmark_group("10,001 routes");
    group.sample_size(10);
    group.bench_function("parse and validate the YAML", |b| {
        b.iter(|| {
            let root = portcullis::source::yaml::yaml_to_value(black_box(&yaml)).expect("YAML");
            parse_config(&root, &NoMaterial).expect("valid").routes.len()
        });
    });
    let parsed = routes();
    group.bench_function("compile the route table", |b| {
        b.iter(|| RouteTable::new(black_box(parsed.clone()), |r| (&r.host, &r.path)).routes().len());
    });
    group.finish();
}

criterion_group!(benches, lookup, build);
criterion_main!(benches);
