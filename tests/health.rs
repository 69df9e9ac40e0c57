//! Active health checks take a failing upstream out of rotation and put it back.

// Test code measures wall time and may lock as it likes: the clippy.toml rules are for src/.
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]

mod common;
mod health_support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::*;
use health_support::*;
use portcullis::source::file::FileSource;

#[tokio::test]
async fn an_upstream_failing_its_checks_gets_no_traffic_until_it_recovers() {
    let a = upstream("a").await;
    let b_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let b = b_listener.local_addr().unwrap();
    let b_task = tokio::spawn(portcullis::demo::serve(b_listener, "b"));
    let (r, _d) = start(&format!(
        "routes:
 - from: https://a.test
   to: [http://{a}, http://{b}]
   health_checks:
     - {{interval: 100ms, timeout: 200ms, unhealthy_threshold: 2, healthy_threshold: 1, tcp_health_check: {{}}}}
"
    ))
    .await;
    let spread = |n| {
        let r = &r;
        async move {
            let mut seen = std::collections::HashMap::<String, usize>::new();
            for _ in 0..n {
                let (_, body) = https_get(r, "a.test", "/").await;
                let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
                *seen.entry(v["upstream"].as_str().unwrap_or("error").to_owned()).or_default() += 1;
            }
            seen
        }
    };
    let seen = spread(10).await;
    assert_eq!((seen["a"], seen["b"]), (5, 5), "{seen:?}");

    b_task.abort();
    tokio::time::sleep(ms(600)).await;
    let seen = spread(10).await;
    assert_eq!(seen.get("a"), Some(&10), "b is out of rotation: {seen:?}");
    let m = metrics(&r).await;
    assert!(m.contains(&format!("portcullis_upstream_healthy{{route=\"a.test\",upstream=\"{b}\"}} 0")), "{m}");

    let b_again = tokio::net::TcpListener::bind(b).await.unwrap();
    tokio::spawn(portcullis::demo::serve(b_again, "b"));
    tokio::time::sleep(ms(600)).await;
    let seen = spread(10).await;
    assert!(seen.get("b").copied().unwrap_or(0) >= 4, "b is back: {seen:?}");
}

/// Polls `/metrics` until it has `needle` (up to 10 s); the page when it does.
async fn wait_metric(r: &portcullis::server::Running, needle: &str) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let m = metrics(r).await;
        if m.contains(needle) {
            return m;
        }
        assert!(std::time::Instant::now() < deadline, "no {needle:?} in 10 s:\n{m}");
        tokio::time::sleep(ms(50)).await;
    }
}

fn healthy(route: &str, upstream: SocketAddr, v: u8) -> String {
    format!("portcullis_upstream_healthy{{route=\"{route}\",upstream=\"{upstream}\"}} {v}")
}

/// Who answered `n` requests to `host`: each answer's body, counted.
async fn bodies(r: &portcullis::server::Running, host: &str, n: usize) -> HashMap<String, usize> {
    let mut seen = HashMap::new();
    for _ in 0..n {
        let (_, body) = https_get(r, host, "/").await;
        *seen.entry(body).or_default() += 1;
    }
    seen
}

#[tokio::test]
async fn grpc_checks_follow_a_real_grpc_servers_health_service() {
    let mut grpc = GrpcServer::start().await;
    let g = grpc.addr;
    let b = h2c_serving("b").await;
    let check = "interval: 100ms, timeout: 2s, unhealthy_threshold: 1, healthy_threshold: 1";
    let (r, _d) = start(&format!(
        "routes:
 - from: https://g.test
   to: [h2c://{g}, h2c://{b}]
   health_checks: [{{{check}, grpc_health_check: {{}}}}]
 - from: https://app.test
   to: h2c://{g}
   health_checks: [{{{check}, grpc_health_check: {{service_name: app, authority: grpc.internal}}}}]
 - from: https://unknown.test
   to: h2c://{g}
   health_checks: [{{{check}, grpc_health_check: {{service_name: nope}}}}]
"
    ))
    .await;
    wait_metric(&r, &healthy("g.test", g, 1)).await;
    wait_metric(&r, &healthy("g.test", b, 1)).await;
    wait_metric(&r, &healthy("app.test", g, 1)).await;
    // grpcio answers NOT_FOUND for a service it was never told about.
    wait_metric(&r, &healthy("unknown.test", g, 0)).await;
    let seen = bodies(&r, "g.test", 10).await;
    assert_eq!(seen.get("b"), Some(&5), "both serve: {seen:?}");

    grpc.set("NOT_SERVING").await;
    wait_metric(&r, &healthy("g.test", g, 0)).await;
    wait_metric(&r, &healthy("app.test", g, 0)).await;
    let m = wait_metric(&r, &healthy("g.test", b, 1)).await;
    assert!(m.contains(&healthy("g.test", b, 1)), "the other upstream is still healthy");
    let seen = bodies(&r, "g.test", 10).await;
    assert_eq!(seen.get("b"), Some(&10), "traffic moved to b: {seen:?}");

    grpc.set("SERVING").await;
    wait_metric(&r, &healthy("g.test", g, 1)).await;
    wait_metric(&r, &healthy("app.test", g, 1)).await;
    let seen = bodies(&r, "g.test", 10).await;
    assert_eq!(seen.get("b"), Some(&5), "the gRPC server is back: {seen:?}");
    assert!(metrics(&r).await.contains(&healthy("unknown.test", g, 0)));
}

#[tokio::test]
async fn http_checks_send_their_host_and_accept_only_the_expected_statuses() {
    let s = StatusServer::start(204).await;
    let a = s.addr;
    let check = "interval: 100ms, timeout: 2s, unhealthy_threshold: 1, healthy_threshold: 1";
    let (r, _d) = start(&format!(
        "routes:
 - from: https://ranges.test
   to: http://{a}
   health_checks: [{{{check}, http_health_check: {{path: /hz, host: health.internal, expected_statuses: [{{start: 200, end: 205}}]}}}}]
 - from: https://default.test
   to: http://{a}
   health_checks: [{{{check}, http_health_check: {{path: /hz}}}}]
"
    ))
    .await;
    wait_metric(&r, &healthy("ranges.test", a, 1)).await;
    // Envoy's (and Pomerium's) default is 200 alone: 204 fails it.
    wait_metric(&r, &healthy("default.test", a, 0)).await;
    let hosts = s.hosts.lock().unwrap().clone();
    assert!(hosts.iter().any(|h| h == "health.internal"), "{hosts:?}");
    assert!(hosts.iter().any(|h| *h == a.to_string()), "the default Host is the upstream's: {hosts:?}");
    assert!(hosts.iter().all(|h| h == "health.internal" || *h == a.to_string()), "{hosts:?}");

    s.status.store(200, Ordering::SeqCst);
    wait_metric(&r, &healthy("default.test", a, 1)).await;
    s.status.store(205, Ordering::SeqCst);
    wait_metric(&r, &healthy("ranges.test", a, 0)).await;
    wait_metric(&r, &healthy("default.test", a, 0)).await;
}

#[tokio::test]
async fn tcp_checks_send_a_payload_and_look_for_the_expected_ones() {
    let (good, _) = tcp_answering(b"PING", b"+PONG and then OK\r\n").await;
    let (bad, _) = tcp_answering(b"PING", b"-NOPE\r\n").await;
    let (reversed, _) = tcp_answering(b"PING", b"OK PONG\r\n").await;
    let (r, _d) = start(&format!(
        "routes:
 - from: https://t.test
   to: [http://{good}, http://{bad}, http://{reversed}]
   health_checks:
     - interval: 100ms
       timeout: 1s
       unhealthy_threshold: 1
       healthy_threshold: 1
       tcp_health_check: {{send: {{text: \"50494e47\"}}, receive: [{{text: 504f4e47}}, {{binary: T0s=}}]}}
"
    ))
    .await;
    wait_metric(&r, &healthy("t.test", bad, 0)).await;
    wait_metric(&r, &healthy("t.test", reversed, 0)).await;
    let m = metrics(&r).await;
    assert!(m.contains(&healthy("t.test", good, 1)), "{m}");
    tokio::time::sleep(ms(300)).await;
    assert!(metrics(&r).await.contains(&healthy("t.test", good, 1)), "and stays healthy");
}

#[tokio::test]
#[allow(clippy::many_single_char_names)]
async fn a_reload_that_leaves_a_check_alone_does_not_restart_it() {
    let (x, probes) = tcp_counting().await;
    let y = upstream("y").await;
    let dir = tempfile::tempdir().unwrap();
    let yaml = |i: usize| {
        format!(
            "routes:
 - from: https://x.test
   to: http://{x}
   health_checks: [{{interval: 300ms, timeout: 1s, tcp_health_check: {{}}}}]
 - from: https://y.test
   prefix: /v{i}
   to: http://{y}
"
        )
    };
    let r = start_in(dir.path(), &yaml(0)).await;
    let path = dir.path().join("portcullis.yaml");
    tokio::time::sleep(ms(100)).await;
    let before = probes.load(Ordering::SeqCst);
    let started = std::time::Instant::now();
    let mut reloads = 0;
    while started.elapsed() < Duration::from_millis(1800) {
        reloads += 1;
        std::fs::write(&path, with_ports(&yaml(reloads))).unwrap();
        let loaded = FileSource::new(&path).load_with_env(&|_| None).unwrap();
        r.proxy.apply(loaded.config);
        tokio::time::sleep(ms(50)).await;
    }
    let n = probes.load(Ordering::SeqCst) - before;
    // Kept, the checker probes every 300 ms: about 6 times. Restarted on each of the ~30
    // reloads, it would probe at each (the first tick is immediate).
    assert!(reloads >= 20, "{reloads} reloads");
    assert!((3..=9).contains(&n), "{n} probes in 1.8 s over {reloads} reloads");
    assert!(https_get(&r, "y.test", &format!("/v{reloads}")).await.0 == 200, "the reloads took effect");

    // Changing the check itself restarts it (a new interval), and removing the route stops
    // it and removes its series.
    let changed = yaml(0).replace("interval: 300ms", "interval: 5s");
    std::fs::write(&path, with_ports(&changed)).unwrap();
    let before = probes.load(Ordering::SeqCst);
    r.proxy.apply(FileSource::new(&path).load_with_env(&|_| None).unwrap().config);
    tokio::time::sleep(ms(700)).await;
    assert_eq!(probes.load(Ordering::SeqCst) - before, 1, "a new checker probes at once, then waits 5 s");
    let gone = format!("routes:\n - from: https://y.test\n   to: http://{y}\n");
    std::fs::write(&path, with_ports(&gone)).unwrap();
    r.proxy.apply(FileSource::new(&path).load_with_env(&|_| None).unwrap().config);
    let m = metrics(&r).await;
    assert!(!m.contains("route=\"x.test\""), "the removed route's series is gone: {m}");
    assert!(m.contains(&healthy("y.test", y, 1)), "{m}");
}
