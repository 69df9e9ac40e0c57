//! Controller scale benchmark (issues 3 and 19): with 10,000 Ingresses, 10,000 Services and
//! their EndpointSlices in a real kube-apiserver (`cargo xtask bench controller --objects N`
//! for another count), how long the controller takes from process start
//! to serving the full config, and how long one Ingress edit takes to reach the data plane.
//!
//! Run it with `cargo xtask bench controller`, which starts the e2e cluster (real etcd and
//! kube-apiserver in a private network namespace) and runs this inside that namespace with the
//! release binary. Everything is measured from the outside, the way a user would see it: the
//! clock starts when the process is spawned or the PATCH is sent, and stops when a real HTTPS
//! request through the proxy gets the answer that proves the new config is served.
//!
//! Targets (issue 19, at 10,000): every host served within 15 s of start; every edit served
//! within 100 ms (the p99 of 30 edits is the slowest); the controller's RSS under 500 MB.

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::{stream, StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Namespace, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{Ingress, IngressClass};
use kube::api::{Patch, PatchParams, PostParams};
use kube::Api;
use portcullis::k8s::crd::ProxyConfig;
use portcullis_e2e::{client, get, https, kubeconfig};
use serde_json::json;

/// Ingresses (each with its own Service, EndpointSlice and pod) unless
/// `PORTCULLIS_SCALE_OBJECTS` says otherwise.
const DEFAULT_OBJECTS: usize = 10_000;
/// Namespaces the objects are spread over.
const NAMESPACES: usize = 10;
/// Hosts asked through one client (and so one pool of connections, one per host).
const HOSTS_PER_CLIENT: usize = 1000;
/// Measured edits.
const EDITS: usize = 30;
/// Concurrent API calls while creating the objects (setup only, not measured).
const CREATE_CONCURRENCY: usize = 16;
/// Targets from the issue.
const FULL_CONFIG_TARGET: Duration = Duration::from_secs(15);
const EDIT_TARGET: Duration = Duration::from_millis(100);
const RSS_TARGET_KIB: u64 = 500 * 1000;

fn objects() -> usize {
    std::env::var("PORTCULLIS_SCALE_OBJECTS").ok().and_then(|n| n.parse().ok()).unwrap_or(DEFAULT_OBJECTS)
}

fn obj<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> T {
    serde_json::from_value(v).expect("a valid object")
}

fn namespace(i: usize) -> String {
    format!("scale-{}", i % NAMESPACES)
}

/// Pod address of object `i`: 10.244.(10 + i / 200).(i % 200 + 1), port 8080.
fn pod_ip(i: usize) -> String {
    format!("10.244.{}.{}", 10 + i / 200, i % 200 + 1)
}

fn host(i: usize) -> String {
    format!("h{i}.scale.test")
}

async fn setup(kube: &kube::Client, objects: usize) {
    let pp = PostParams::default();
    Api::<IngressClass>::all(kube.clone())
        .create(&pp, &obj(json!({
            "metadata": {"name": "portcullis", "annotations": {"ingressclass.kubernetes.io/is-default-class": "true"}},
            "spec": {"controller": "portcullis.io/ingress-controller"},
        })))
        .await
        .expect("ingress class");
    Api::<ProxyConfig>::all(kube.clone())
        .create(&pp, &obj(json!({"apiVersion": "portcullis.io/v1alpha1", "kind": "ProxyConfig", "metadata": {"name": "global"}, "spec": {"httpRedirectAddress": ":18080"}})))
        .await
        .expect("proxy config");
    for n in 0..NAMESPACES {
        Api::<Namespace>::all(kube.clone())
            .create(&pp, &obj(json!({"metadata": {"name": namespace(n)}})))
            .await
            .expect("namespace");
    }
    let t = Instant::now();
    stream::iter(0..objects)
        .map(|i| {
            let kube = kube.clone();
            async move {
                let ns = namespace(i);
                let pp = PostParams::default();
                let name = format!("app-{i}");
                Api::<Service>::namespaced(kube.clone(), &ns)
                    .create(&pp, &obj(json!({"metadata": {"name": name}, "spec": {"ports": [{"name": "http", "port": 80, "targetPort": 8080}]}})))
                    .await?;
                Api::<EndpointSlice>::namespaced(kube.clone(), &ns)
                    .create(&pp, &obj(json!({
                        "metadata": {"name": format!("{name}-1"), "labels": {"kubernetes.io/service-name": name}},
                        "addressType": "IPv4",
                        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
                        "endpoints": [{"addresses": [pod_ip(i)], "conditions": {"ready": true}}],
                    })))
                    .await?;
                Api::<Ingress>::namespaced(kube, &ns)
                    .create(&pp, &obj(json!({
                        "metadata": {"name": format!("ing-{i}"), "annotations": {"portcullis.io/timeout": "30s"}},
                        "spec": {"rules": [{"host": host(i), "http": {"paths": [
                            {"path": "/", "pathType": "Prefix", "backend": {"service": {"name": name, "port": {"name": "http"}}}},
                        ]}}]},
                    })))
                    .await?;
                Ok::<_, kube::Error>(())
            }
        })
        .buffer_unordered(CREATE_CONCURRENCY)
        .try_collect::<Vec<()>>()
        .await
        .expect("creating the objects");
    eprintln!("scale: created {objects} Services, EndpointSlices and Ingresses in {:.1?}", t.elapsed());
    pods().await;
}

/// Every pod at once: one listener on port 8080 of every address (the pod range is routed
/// as local in the cluster's network namespace), answering as the pod whose address the
/// connection came to. 10,000 listeners of their own, plus the proxy's connection to each,
/// would pass the 20,000 file descriptors a process may hold here.
async fn pods() {
    use hyper::service::service_fn;
    let listener = tokio::net::TcpListener::bind("0.0.0.0:8080").await.expect("binding the pods' port");
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            };
            let Ok(std::net::SocketAddr::V4(local)) = stream.local_addr() else { continue };
            let [_, _, third, fourth] = local.ip().octets();
            let Some(i) =
                usize::from(third).checked_sub(10).zip(usize::from(fourth).checked_sub(1)).map(|(a, b)| a * 200 + b)
            else {
                continue;
            };
            tokio::spawn(async move {
                let body = bytes::Bytes::from(format!("{{\"pod\": \"pod-{i}\"}}"));
                let svc = service_fn(move |_req| {
                    let body = body.clone();
                    async move { Ok::<_, std::convert::Infallible>(hyper::Response::new(http_body_util::Full::new(body))) }
                });
                let io = hyper_util::rt::TokioIo::new(stream);
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, svc).await;
            });
        }
    });
}

/// The controller process under measurement; killed on drop.
struct ControllerProcess(Child);

impl Drop for ControllerProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn_controller() -> ControllerProcess {
    let bin =
        std::env::var("PORTCULLIS_BIN").expect("PORTCULLIS_BIN is not set: run with `cargo xtask bench controller`");
    let log = std::fs::File::create(std::env::temp_dir().join("portcullis-scale-controller.log")).expect("log file");
    let child = Command::new(bin)
        .args([
            "--log-level",
            "info,access=warn,portcullis::k8s::controller=debug",
            "controller",
            "--namespace",
            "default",
            "--identity",
            "scale",
        ])
        .args(["--publish-address", "203.0.113.10"])
        .env("KUBECONFIG", kubeconfig())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("starting portcullis controller");
    ControllerProcess(child)
}

fn readyz() -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect("127.0.0.1:9901") else { return false };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").is_err() {
        return false;
    }
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out.starts_with("HTTP/1.1 200")
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let kube = client().await;
    let objects = objects();
    setup(&kube, objects).await;

    // Start: spawn to /readyz, then every host answered by its own pod.
    let t0 = Instant::now();
    let controller = spawn_controller();
    let perf = std::env::var("PORTCULLIS_SCALE_PERF").ok().map(|out| {
        Command::new("perf")
            .args(["record", "-g", "-o", &out, "-p", &controller.0.id().to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("perf")
    });
    while !readyz() {
        assert!(t0.elapsed() < Duration::from_mins(2), "the controller did not become ready in 2 min");
        std::thread::sleep(Duration::from_millis(5));
    }
    let ready = t0.elapsed();
    // The client pools a connection per host, as browsers do; a pool per 1,000 hosts, closed
    // after them, keeps the proxy's descriptors (10,000 upstream connections, one per pod,
    // plus these) under the 20,000 a process may hold here.
    let mut wrong: Vec<String> = Vec::new();
    for first in (0..objects).step_by(HOSTS_PER_CLIENT) {
        let c = https();
        let missed: Vec<String> = stream::iter(first..objects.min(first + HOSTS_PER_CLIENT))
            .map(|i| {
                let c = c.clone();
                async move {
                    let (status, body) = get(&c, &host(i), "/").await;
                    (status == 200 && body.contains(&format!("\"pod-{i}\"")))
                        .then_some(())
                        .ok_or(format!("{}: {status}", host(i)))
                }
            })
            .buffer_unordered(32)
            .filter_map(|r| async move { r.err() })
            .collect()
            .await;
        wrong.extend(missed);
    }
    let full = t0.elapsed();
    let c = https();
    assert!(
        wrong.is_empty(),
        "{} of {objects} hosts not served after start: {:?}",
        wrong.len(),
        &wrong[..wrong.len().min(5)]
    );
    let rss_start = rss_kib(controller.0.id());
    eprintln!("scale: /readyz after {ready:.2?}; all {objects} hosts answered by their pods after {full:.2?}; RSS {rss_start} KiB");

    // Edits: each adds a new host to an existing Ingress; the clock runs from sending the PATCH
    // to the first request through the proxy that the new rule answers. The first edits land
    // while the leader is still writing the Ingress statuses.
    let mut latencies = Vec::with_capacity(EDITS);
    for n in 0..EDITS {
        let i = (n * 37) % objects;
        let api = Api::<Ingress>::namespaced(kube.clone(), &namespace(i));
        let new_host = format!("edit-{n}.scale.test");
        assert_eq!(get(&c, &new_host, "/").await.0, 404, "{new_host} is not served before the edit");
        let rules = json!([
            {"host": host(i), "http": {"paths": [{"path": "/", "pathType": "Prefix", "backend": {"service": {"name": format!("app-{i}"), "port": {"name": "http"}}}}]}},
            {"host": new_host, "http": {"paths": [{"path": "/", "pathType": "Prefix", "backend": {"service": {"name": format!("app-{i}"), "port": {"name": "http"}}}}]}},
        ]);
        let t = Instant::now();
        api.patch(&format!("ing-{i}"), &PatchParams::default(), &Patch::Merge(json!({"spec": {"rules": rules}})))
            .await
            .expect("edit");
        loop {
            if get(&c, &new_host, "/").await.0 == 200 {
                break;
            }
            assert!(t.elapsed() < Duration::from_secs(30), "edit {n} not served after 30 s");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        latencies.push(t.elapsed());
    }
    let rss_end = rss_kib(controller.0.id());
    if let Some(mut p) = perf {
        let _ = Command::new("kill").args(["-INT", &p.id().to_string()]).status();
        let _ = p.wait();
    }
    drop(controller);
    let mut sorted = latencies.clone();
    sorted.sort();
    let (p50, p90, max) = (percentile(&sorted, 0.5), percentile(&sorted, 0.9), *sorted.last().expect("edits"));

    let every = latencies.iter().map(|d| format!("{:.1}", ms(*d))).collect::<Vec<_>>().join(", ");
    let report = format!(
        "# Controller scale benchmark\n\n\
         {objects} Ingresses, {objects} Services, {objects} EndpointSlices in {NAMESPACES} namespaces; real \
         kube-apiserver and etcd; release build; `cargo xtask bench controller`.\n\n\
         | measure | value | target | ratio to target |\n|---|---:|---:|---:|\n\
         | start to /readyz | {:.2} s | | |\n\
         | start to all {objects} hosts answered | {:.2} s | 15 s | {:.2} |\n\
         | one Ingress edit to served, p50 of {EDITS} | {:.1} ms | 100 ms | {:.2} |\n\
         | p90 | {:.1} ms | 100 ms | {:.2} |\n\
         | max (p99 of {EDITS}) | {:.1} ms | 100 ms | {:.2} |\n\
         | controller RSS after start / after edits | {rss_start} KiB / {rss_end} KiB | 500,000 KiB | {:.2} |\n\n\
         Every edit, in order (ms): {every}\n",
        ready.as_secs_f64(),
        full.as_secs_f64(),
        full.as_secs_f64() / FULL_CONFIG_TARGET.as_secs_f64(),
        ms(p50),
        ms(p50) / ms(EDIT_TARGET),
        ms(p90),
        ms(p90) / ms(EDIT_TARGET),
        ms(max),
        ms(max) / ms(EDIT_TARGET),
        rss_start.max(rss_end) as f64 / RSS_TARGET_KIB as f64,
    );
    println!("{report}");
    let out = std::env::var("PORTCULLIS_BENCH_OUT").unwrap_or_else(|_| "bench/results".into());
    let json = json!({
        "objects": objects, "namespaces": NAMESPACES, "edits": EDITS,
        "ready_s": ready.as_secs_f64(), "full_config_s": full.as_secs_f64(),
        "edit_ms": latencies.iter().map(|d| ms(*d)).collect::<Vec<_>>(),
        "edit_p50_ms": ms(p50), "edit_p90_ms": ms(p90), "edit_max_ms": ms(max),
        "rss_kib": BTreeMap::from([("after_start", rss_start), ("after_edits", rss_end)]),
    });
    std::fs::create_dir_all(&out).expect("results directory");
    std::fs::write(format!("{out}/controller-scale.md"), &report).expect("writing the report");
    std::fs::write(format!("{out}/controller-scale.json"), serde_json::to_string_pretty(&json).expect("json"))
        .expect("writing the json");
    let mut failed = Vec::new();
    if full > FULL_CONFIG_TARGET {
        failed.push(format!("full config after {full:.2?} (target {FULL_CONFIG_TARGET:?})"));
    }
    if max > EDIT_TARGET {
        failed.push(format!("slowest edit {max:.2?} (target {EDIT_TARGET:?})"));
    }
    if rss_start.max(rss_end) > RSS_TARGET_KIB {
        failed.push(format!("controller RSS {} KiB (target {RSS_TARGET_KIB} KiB)", rss_start.max(rss_end)));
    }
    assert!(failed.is_empty(), "scale targets missed: {}", failed.join("; "));
}
