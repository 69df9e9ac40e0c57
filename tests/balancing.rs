//! Load balancing with real upstreams: outlier detection ejects a dead endpoint and lets it
//! back, retries move requests that never left onto another endpoint within the retry
//! budget, and hashing policies keep a client on its endpoint.

// Test code measures wall time and may lock as it likes: the clippy.toml rules are for src/.
#![allow(clippy::disallowed_types, clippy::disallowed_methods, clippy::many_single_char_names)]

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;

use common::*;
use http::Request;
use portcullis::source::file::FileSource;

/// A demo upstream on `addr` (or a fresh port) that can be stopped: its listener closes, so
/// new connections are refused.
async fn killable(name: &'static str, addr: Option<SocketAddr>) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let l = tokio::net::TcpListener::bind(addr.unwrap_or_else(|| "127.0.0.1:0".parse().unwrap())).await.unwrap();
    let a = l.local_addr().unwrap();
    (a, tokio::spawn(async move { portcullis::demo::serve(l, name).await }))
}

fn metric(m: &str, prefix: &str) -> u64 {
    m.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

/// Sends `n` GETs on one HTTP/1.1 connection (a new one after a failure); tallies by
/// upstream name, `status N` for failures.
async fn tally(r: &portcullis::server::Running, host: &str, path: &str, n: usize) -> HashMap<String, usize> {
    let roots = [default_cert(r)];
    let mut c = h1_tls(r.main, "localhost", &roots).await;
    let mut seen = HashMap::new();
    for _ in 0..n {
        let (status, v) = json(c.send_request(get(host, path)).await.unwrap()).await;
        let key =
            if status == 200 { v["upstream"].as_str().unwrap_or("?").to_owned() } else { format!("status {status}") };
        *seen.entry(key).or_default() += 1;
    }
    seen
}

#[tokio::test]
async fn a_dead_endpoint_is_ejected_after_its_failures_and_returns_after_its_ejection_time() {
    let (a, _a) = killable("a", None).await;
    let (b, b_task) = killable("b", None).await;
    let (r, _d) = start(&format!(
        "routes:
 - from: https://a.test
   to: [http://{a}, http://{b}]
   retries: 0
   outlier_detection: {{consecutive_gateway_failure: 3, base_ejection_time: 1s, interval: 1s}}
"
    ))
    .await;
    assert_eq!(tally(&r, "a.test", "/", 10).await, HashMap::from([("a".into(), 5), ("b".into(), 5)]));
    b_task.abort();
    let _ = b_task.await;
    // Round robin sends every other request to b: three fail, then b is out.
    let seen = tally(&r, "a.test", "/", 20).await;
    assert_eq!(seen.get("status 503"), Some(&3), "exactly the configured failures: {seen:?}");
    assert_eq!(seen.get("a"), Some(&17), "{seen:?}");
    let m = metrics(&r).await;
    let labels = format!("{{route=\"a.test\",upstream=\"{b}\"}}");
    assert_eq!(metric(&m, &format!("portcullis_upstream_ejections_total{labels}")), 1, "{m}");
    assert_eq!(metric(&m, &format!("portcullis_upstream_ejected{labels}")), 1, "{m}");
    // b comes back; after its ejection time it gets its share again.
    let (_, _b) = killable("b", Some(b)).await;
    tokio::time::sleep(ms(1_300)).await;
    let seen = tally(&r, "a.test", "/", 10).await;
    assert_eq!(seen, HashMap::from([("a".into(), 5), ("b".into(), 5)]));
    assert_eq!(metric(&metrics(&r).await, &format!("portcullis_upstream_ejected{labels}")), 0);
}

#[tokio::test]
async fn connect_refused_requests_are_retried_on_another_endpoint_and_succeed() {
    let (a, _a) = killable("a", None).await;
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let b = dead.local_addr().unwrap();
    drop(dead);
    let (c, _c) = killable("c", None).await;
    // One plain-HTTP pair (the request comes back from the pool, body and all) and one h2c
    // pair (the general client: bodiless requests are copied).
    let (r, _d) = start(&format!(
        "routes:
 - from: https://a.test
   to: [http://{a}, http://{b}]
 - from: https://c.test
   to: [h2c://{c}, h2c://{b}]
"
    ))
    .await;
    let seen = tally(&r, "a.test", "/", 40).await;
    assert_eq!(seen, HashMap::from([("a".into(), 40)]), "no request failed");
    let seen = tally(&r, "c.test", "/", 10).await;
    assert_eq!(seen, HashMap::from([("c".into(), 10)]), "no request failed");
    // A request with a body is retried too: it never left, so its body was never read.
    let roots = [default_cert(&r)];
    let mut h = h1_tls(r.main, "localhost", &roots).await;
    for _ in 0..4 {
        let req = Request::post("/echo").header("host", "a.test").body(full("the body")).unwrap();
        let (status, body) = text(h.send_request(req).await.unwrap()).await;
        assert_eq!((status, body.as_str()), (200, "the body"));
    }
    let m = metrics(&r).await;
    let retried = metric(&m, "portcullis_upstream_retries_total{route=\"a.test\",outcome=\"retried\"}");
    assert!((20..=22).contains(&retried), "every other request went to the dead one first: {retried}\n{m}");
    assert!(metric(&m, "portcullis_upstream_retries_total{route=\"c.test\",outcome=\"retried\"}") >= 5, "{m}");
}

#[tokio::test]
async fn the_retry_budget_caps_retries() {
    let (a, _a) = killable("a", None).await;
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let b = dead.local_addr().unwrap();
    drop(dead);
    let (r, _d) = start(&format!("routes:\n - {{from: https://a.test, to: [http://{a}, http://{b}]}}\n")).await;
    let roots = [default_cert(&r)];
    // 60 slow requests at once: the 30 sent to the dead endpoint all want a retry, but
    // retries in flight stay under 20 % of the route's requests (or 3).
    let h = h2_tls(r.main, "localhost", &roots).await;
    let mut all = Vec::new();
    for _ in 0..60 {
        let mut h = h.clone();
        all.push(tokio::spawn(async move {
            let resp = h.send_request(get2("a.test", "/delay?ms=1500")).await.unwrap();
            text(resp).await.0
        }));
    }
    let mut statuses = HashMap::<u16, usize>::new();
    for t in all {
        *statuses.entry(t.await.unwrap()).or_default() += 1;
    }
    let m = metrics(&r).await;
    let retried = metric(&m, "portcullis_upstream_retries_total{route=\"a.test\",outcome=\"retried\"}");
    let refused = metric(&m, "portcullis_upstream_retries_total{route=\"a.test\",outcome=\"budget_exhausted\"}");
    assert_eq!(retried + refused, 30, "{statuses:?}\n{m}");
    assert!((3..=12).contains(&retried), "capped: {retried} retried, {refused} refused, {statuses:?}");
    assert_eq!(statuses.get(&503).copied().unwrap_or(0) as u64, refused, "{statuses:?}");
    assert_eq!(statuses.get(&200).copied().unwrap_or(0) as u64, 30 + retried, "{statuses:?}");
}

#[tokio::test]
async fn a_sticky_cookie_keeps_a_client_on_one_endpoint_across_requests_and_a_reload() {
    let mut ups = Vec::new();
    for name in ["a", "b", "c"] {
        ups.push(killable(name, None).await);
    }
    let to = ups.iter().map(|(a, _)| format!("http://{a}")).collect::<Vec<_>>().join(", ");
    let dir = tempfile::tempdir().unwrap();
    let yaml = |extra: &str| {
        format!(
            "routes:
 - from: https://a.test
   to: [{to}]
   load_balancing_policy: RING_HASH
   lb_hash_cookie: {{name: sticky, ttl: 1h}}
 - from: https://m.test
   to: [{to}]
   load_balancing_policy: MAGLEV
   lb_hash_header: X-User
{extra}"
        )
    };
    let r = start_in(dir.path(), &yaml("")).await;
    let roots = [default_cert(&r)];
    let mut c = h1_tls(r.main, "localhost", &roots).await;
    let resp = c.send_request(get("a.test", "/")).await.unwrap();
    let set = resp.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(set.starts_with("sticky=") && set.contains("Max-Age=3600") && set.contains("Secure"), "{set}");
    let (_, first) = json(resp).await;
    let cookie = set.split(';').next().unwrap().to_owned();
    let with_cookie =
        |cookie: &str| Request::get("/").header("host", "a.test").header("cookie", cookie).body(empty()).unwrap();
    let mut upstreams = HashMap::<String, usize>::new();
    for i in 0..1_000 {
        if i == 500 {
            // A reload that changes another route keeps the ring, and so the endpoint.
            let path = dir.path().join("portcullis.yaml");
            std::fs::write(&path, with_ports(&yaml(&format!(" - {{from: https://x.test, to: [{to}]}}\n")))).unwrap();
            r.proxy.apply(FileSource::new(&path).load_with_env(&|_| None).unwrap().config);
        }
        let resp = c.send_request(with_cookie(&format!("other=1; {cookie}"))).await.unwrap();
        assert!(resp.headers().get("set-cookie").is_none(), "a client with the cookie gets no new one");
        let (_, v) = json(resp).await;
        *upstreams.entry(v["upstream"].as_str().unwrap().to_owned()).or_default() += 1;
    }
    assert_eq!(upstreams, HashMap::from([(first["upstream"].as_str().unwrap().to_owned(), 1_000)]));
    // Other clients (other cookies, other users) spread over the endpoints.
    let mut spread = HashMap::<String, usize>::new();
    for i in 0..60 {
        let (_, v) = json(c.send_request(with_cookie(&format!("sticky=client{i}"))).await.unwrap()).await;
        *spread.entry(v["upstream"].as_str().unwrap().to_owned()).or_default() += 1;
        let req = Request::get("/").header("host", "m.test").header("x-user", format!("user{}", i % 7)).body(empty());
        let (_, v) = json(c.send_request(req.unwrap()).await.unwrap()).await;
        *spread.entry(format!("m-{}", v["upstream"].as_str().unwrap())).or_default() += 1;
    }
    assert_eq!(spread.keys().filter(|k| !k.starts_with("m-")).count(), 3, "{spread:?}");
    assert!(spread.keys().filter(|k| k.starts_with("m-")).count() >= 2, "{spread:?}");
    // One user, one endpoint (MAGLEV on X-User)...
    let mut one = HashMap::<String, usize>::new();
    for _ in 0..50 {
        let req = Request::get("/").header("host", "m.test").header("x-user", "alice").body(empty()).unwrap();
        let (_, v) = json(c.send_request(req).await.unwrap()).await;
        *one.entry(v["upstream"].as_str().unwrap().to_owned()).or_default() += 1;
    }
    assert_eq!(one.len(), 1, "{one:?}");
    // ...until that endpoint dies: then the next one on the table, and no failed request.
    let alice = one.keys().next().unwrap().clone();
    let (_, task) = ups.iter().zip(["a", "b", "c"]).find(|(_, n)| *n == alice).map(|(u, _)| u).unwrap();
    task.abort();
    let mut after = HashMap::<String, usize>::new();
    for _ in 0..20 {
        let req = Request::get("/").header("host", "m.test").header("x-user", "alice").body(empty()).unwrap();
        let (status, v) = json(c.send_request(req).await.unwrap()).await;
        assert_eq!(status, 200, "the retry takes it to the next endpoint");
        *after.entry(v["upstream"].as_str().unwrap().to_owned()).or_default() += 1;
    }
    assert_eq!(after.len(), 1, "still one endpoint: {after:?}");
    assert!(!after.contains_key(&alice), "{after:?}");
}
