//! One Ingress edit among 10,000, inside the process (issue 19's controller figures):
//! `cargo bench --bench reload`. `cargo xtask bench controller` measures the same edit from
//! the outside against a real API server; this splits it into the controller's assembly and
//! the data plane's apply, so that each can be worked on without a cluster. The objects are
//! the ones that benchmark creates: per Ingress one host, one Service and one EndpointSlice.
//! Not part of the test command.

// Test code measures wall time and may lock as it likes: the clippy.toml rules are for src/.
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]
// criterion_group! defines an undocumented public function.
#![allow(missing_docs)]

use std::collections::BTreeMap;
use std::hint::black_box;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{Ingress, IngressClass};
use portcullis::k8s::assemble::{Assembler, Kind, Object, ObjectKey, World};
use portcullis::k8s::objects::Objects;
use serde_json::json;

const OBJECTS: usize = 10_000;

fn obj<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> T {
    serde_json::from_value(v).expect("a valid object")
}

fn meta(i: usize, name: &str) -> serde_json::Value {
    json!({
        "name": name, "namespace": format!("scale-{}", i % 10), "uid": format!("uid-{name}-{i}"),
        "resourceVersion": format!("{}", 1000 + i), "generation": 1,
        "creationTimestamp": "2026-12-01T00:00:00Z",
    })
}

fn ingress(i: usize, hosts: usize) -> Ingress {
    let mut m = meta(i, &format!("ing-{i}"));
    m["annotations"] = json!({"portcullis.io/timeout": "30s"});
    m["generation"] = json!(hosts);
    let rules: Vec<_> = (0..hosts)
        .map(|h| {
            let host = if h == 0 { format!("h{i}.scale.test") } else { format!("edit-{h}-{i}.scale.test") };
            json!({"host": host, "http": {"paths": [{"path": "/", "pathType": "Prefix",
                "backend": {"service": {"name": format!("app-{i}"), "port": {"name": "http"}}}}]}})
        })
        .collect();
    obj(json!({"metadata": m, "spec": {"ingressClassName": "portcullis", "rules": rules}}))
}

struct Cluster {
    ingresses: Vec<Arc<Ingress>>,
    classes: Vec<IngressClass>,
    services: Vec<Arc<Service>>,
    slices: Vec<Arc<EndpointSlice>>,
}

fn cluster() -> Cluster {
    let services = (0..OBJECTS)
        .map(|i| {
            let s: Service = obj(json!({"metadata": meta(i, &format!("app-{i}")),
                "spec": {"ports": [{"name": "http", "port": 80, "targetPort": 8080}]}}));
            Arc::new(s)
        })
        .collect();
    let slices = (0..OBJECTS)
        .map(|i| {
            let mut m = meta(i, &format!("app-{i}-1"));
            m["labels"] = json!({"kubernetes.io/service-name": format!("app-{i}")});
            let s: EndpointSlice = obj(json!({"metadata": m, "addressType": "IPv4",
                "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
                "endpoints": [{"addresses": [format!("10.244.{}.{}", 10 + i / 200, i % 200 + 1)], "conditions": {"ready": true}}]}));
            Arc::new(s)
        })
        .collect();
    let ingresses = (0..OBJECTS).map(|i| Arc::new(ingress(i, 1))).collect();
    let classes = vec![obj(json!({"metadata": {"name": "portcullis"},
        "spec": {"controller": "portcullis.io/ingress-controller"}}))];
    Cluster { ingresses, classes, services, slices }
}

/// What the controller does with its stores' contents before assembling.
fn objects(c: &Cluster) -> Objects {
    let key = |m: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta| {
        (m.namespace.clone().unwrap_or_default(), m.name.clone().unwrap_or_default())
    };
    let mut objects = Objects::default();
    objects.services = c.services.iter().map(|x| (key(&x.metadata), x.clone())).collect::<BTreeMap<_, _>>();
    for slice in &c.slices {
        objects.add_slice(slice.clone());
    }
    objects
}

/// A full assembly (`edited` is `None`), or of the one Ingress edited.
fn assemble(a: &mut Assembler, c: &Cluster, objects: &Objects, edited: Option<usize>) -> portcullis::config::Config {
    let stored = BTreeMap::new();
    let world = World {
        ingresses: &c.ingresses,
        classes: &c.classes,
        routes: &[],
        proxy_config: None,
        stored: &stored,
        objects,
        controller_namespace: "portcullis",
    };
    match edited {
        None => a.assemble(&world).0,
        Some(i) => {
            let ing = c.ingresses[i].clone();
            let key = ObjectKey {
                kind: Kind::Ingress,
                namespace: ing.metadata.namespace.clone().unwrap_or_default(),
                name: format!("ing-{i}"),
            };
            a.assemble_changes(&world, vec![(key, Some(Object::Ingress(ing)))], &[]).0
        }
    }
}

/// Edit `n` of the benchmark: another host on another Ingress, as the scale benchmark's
/// edits do.
fn edit(cluster: &mut Cluster, n: usize) -> usize {
    let i = (n * 37) % OBJECTS;
    cluster.ingresses[i] = Arc::new(ingress(i, 2 + n / OBJECTS));
    i
}

fn reload(c: &mut Criterion) {
    let mut cluster = cluster();
    let mut group = c.benchmark_group("one Ingress edit among 10,000");
    group.sample_size(10);
    group.bench_function("the stores' contents into maps", |b| b.iter(|| objects(black_box(&cluster))));

    let objects = objects(&cluster);
    let mut assembler = Assembler::default();
    let config = assemble(&mut assembler, &cluster, &objects, None);
    assert_eq!(config.routes.len(), OBJECTS);
    let mut edits = 0;
    group.bench_function("assemble everything", |b| {
        b.iter(|| {
            edits += 1;
            edit(&mut cluster, edits);
            assemble(&mut assembler, &cluster, &objects, None).routes.len()
        });
    });
    group.bench_function("assemble the change", |b| {
        b.iter(|| {
            edits += 1;
            let i = edit(&mut cluster, edits);
            assemble(&mut assembler, &cluster, &objects, Some(i)).routes.len()
        });
    });

    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("runtime");
    let _guard = runtime.enter();
    let metrics = Arc::new(portcullis::metrics::Metrics::new());
    let proxy =
        portcullis::proxy::Proxy::new(assemble(&mut assembler, &cluster, &objects, None), metrics).expect("proxy");
    group.bench_function("apply", |b| {
        b.iter_batched(
            || {
                edits += 1;
                let i = edit(&mut cluster, edits);
                assemble(&mut assembler, &cluster, &objects, Some(i))
            },
            |config| proxy.apply(config),
            criterion::BatchSize::PerIteration,
        );
    });
    group.finish();
}

criterion_group!(benches, reload);
criterion_main!(benches);
