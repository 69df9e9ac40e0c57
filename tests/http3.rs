//! HTTP/3 over QUIC (`codec_type: http3`) with a real quinn/h3 client, and `codec_type` on
//! TCP: the routing table, streamed bodies both ways, timeouts, `Alt-Svc`, certificate
//! rotations under HTTP/3 load, GOAWAY with in-flight requests, and `drain_timeout`.

// Test code measures wall time and may lock as it likes: the clippy.toml rules are for src/.
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]

mod common;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http::Request;
use portcullis::server::Running;
use portcullis::source::file::FileSource;
use rustls_pki_types::CertificateDer;
use tokio_util::sync::CancellationToken;

/// Applies the YAML now in `dir`'s portcullis.yaml (after the test rewrote it or a
/// certificate file), as the file watcher would.
fn reload(r: &Running, dir: &std::path::Path) {
    let loaded = FileSource::new(dir.join("portcullis.yaml")).load_with_env(&|_| None).unwrap();
    assert_eq!(r.proxy.apply(loaded.config), portcullis::proxy::Applied::Swapped);
}

fn quic(r: &Running) -> SocketAddr {
    r.quic.expect("codec_type http3 binds quic-ingress")
}

fn metric(text: &str, series: &str) -> u64 {
    text.lines().find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok())).unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http3_serves_the_routing_table_with_streamed_bodies_and_tcp_advertises_it() {
    let (up_u, up_v) = (upstream("u").await, upstream("v").await);
    let pki = Pki::new();
    pki.leaf("a", &["a.test", "b.test"]);
    let r = start_in(
        pki.dir.path(),
        &format!(
            "codec_type: http3
certificates: [{{cert_file: a.pem, key_file: a-key.pem}}]
routes:
 - {{from: https://a.test, to: http://{up_u}}}
 - {{from: https://a.test, prefix: /v/, to: http://{up_v}}}
 - {{from: https://b.test, path: /exact, to: http://{up_v}, set_response_headers: {{x-route: b-exact}}}}
"
        ),
    )
    .await;
    let roots = [pki.ca_der.clone()];
    assert_eq!(quic(&r).port(), r.main.port(), "quic-ingress is the UDP port of address");
    let mut c = h3_connect(quic(&r), "a.test", &roots).await.unwrap();

    // The routing table, as on TCP.
    for (host, path, status, upstream) in [
        ("a.test", "/", 200, "u"),
        ("a.test", "/v/x", 200, "v"),
        ("a.test", "/vx", 200, "u"),
        ("b.test", "/exact", 200, "v"),
        ("b.test", "/exact/no", 404, ""),
        ("c.test", "/", 404, ""),
    ] {
        let reply = h3_request(&mut c.send, get3(host, path), None).await.unwrap();
        assert_eq!(reply.status, status, "{host}{path}: {}", reply.text());
        let body: serde_json::Value = serde_json::from_slice(&reply.body).unwrap_or_default();
        assert_eq!(body["upstream"].as_str().unwrap_or(""), upstream, "{host}{path}");
        if status == 200 {
            // Upstreams stay HTTP/1.1 and see the forwarding headers of a TLS client.
            assert_eq!(body["version"], "HTTP/1.1", "{body}");
            assert_eq!(body["headers"]["x-forwarded-proto"], "https", "{body}");
            assert_eq!(body["headers"]["x-forwarded-host"], host, "{body}");
        }
    }
    let reply = h3_request(&mut c.send, get3("b.test", "/exact"), None).await.unwrap();
    assert_eq!(reply.headers["x-route"], "b-exact", "response headers of the route");

    // A GET carries no body upstream (no chunked framing on a request that has none).
    let reply = h3_request(&mut c.send, get3("a.test", "/"), None).await.unwrap();
    let body: serde_json::Value = serde_json::from_slice(&reply.body).unwrap();
    assert!(body["headers"].get("transfer-encoding").is_none(), "{body}");
    assert_eq!(body["body_bytes"], 0);

    // A large POST body streams up and back (the upstream echoes it as it arrives).
    let upload: Bytes = (0..8 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect::<Vec<u8>>().into();
    let req = Request::post("https://a.test/echo").header("content-length", upload.len()).body(()).unwrap();
    let reply = h3_request(&mut c.send, req, Some(upload.clone())).await.unwrap();
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body.len(), upload.len(), "the whole body came back");
    assert!(reply.body == upload, "byte for byte");
    // And a large response streams down.
    let reply = h3_request(&mut c.send, get3("a.test", "/bytes?n=5242880"), None).await.unwrap();
    assert_eq!(reply.body.len(), 5 * 1024 * 1024);

    // Several requests at once on one connection.
    let mut tasks = Vec::new();
    for i in 0..20 {
        let mut send = c.send.clone();
        tasks.push(tokio::spawn(async move {
            h3_request(&mut send, get3("a.test", &format!("/v/{i}")), None).await.map(|r| r.status)
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap(), 200);
    }

    // TCP responses advertise HTTP/3, over both HTTP versions.
    let alt_svc = format!("h3=\":{}\"; ma=86400", r.main.port());
    let mut h1 = h1_tls(r.main, "a.test", &roots).await;
    let resp = h1.send_request(get("a.test", "/")).await.unwrap();
    assert_eq!(resp.headers()["alt-svc"], alt_svc.as_str());
    let mut h2 = h2_tls(r.main, "a.test", &roots).await;
    let resp = h2.send_request(get2("c.test", "/")).await.unwrap();
    assert_eq!(resp.status(), 404);
    assert_eq!(resp.headers()["alt-svc"], alt_svc.as_str(), "error responses too");

    // Metrics and /listeners name the listener.
    let m = metrics(&r).await;
    assert_eq!(metric(&m, "portcullis_downstream_connections_total{listener=\"quic-ingress\"}"), 1, "{m}");
    assert!(
        m.lines().any(|l| l.starts_with("portcullis_http_requests_total{listener=\"quic-ingress\",route=")
            && l.contains("code=\"200\"")),
        "{m}"
    );
    let listeners = r.proxy.listeners();
    assert!(listeners.iter().any(|l| l.name == "quic-ingress" && l.protocol == "udp" && l.address == quic(&r)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http3_honours_route_timeouts_and_timeout_idle() {
    let up = upstream("u").await;
    let (r, _d) = start(&format!(
        "codec_type: http3\ntimeout_idle: 1s\nroutes:\n - {{from: https://a.test, to: http://{up}, timeout: 300ms}}\n"
    ))
    .await;
    let roots = [default_cert(&r)];
    let mut c = h3_connect(quic(&r), "localhost", &roots).await.unwrap();
    let t = Instant::now();
    let reply = h3_request(&mut c.send, get3("a.test", "/delay?ms=3000"), None).await.unwrap();
    assert_eq!(reply.status, 504, "{}", reply.text());
    assert!(reply.text().contains("300ms"), "{}", reply.text());
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    // The same when the request's end of stream comes after its headers (a separate QUIC
    // frame): a GET carries no body upstream, so the upstream timeout starts at once.
    let t = Instant::now();
    let mut stream = c.send.send_request(get3("a.test", "/delay?ms=3000")).await.unwrap();
    tokio::time::sleep(ms(100)).await;
    let _ = stream.finish().await;
    assert_eq!(stream.recv_response().await.unwrap().status(), 504);
    assert!(t.elapsed() < Duration::from_secs(2), "late end of stream: {:?}", t.elapsed());

    // A connection with no request for timeout_idle is closed gracefully (GOAWAY, then
    // H3_NO_ERROR).
    let idle_since = Instant::now();
    let closed = tokio::time::timeout(Duration::from_secs(5), c.closed).await.expect("closed by timeout_idle").unwrap();
    assert!(closed.is_h3_no_error(), "{closed}");
    assert!(idle_since.elapsed() >= Duration::from_millis(900), "{:?}", idle_since.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn codec_type_decides_the_tcp_protocols_and_turns_quic_on_and_off_live() {
    let up = upstream("u").await;
    let dir = tempfile::tempdir().unwrap();
    let yaml = |codec: &str| format!("codec_type: {codec}\nroutes:\n - {{from: https://a.test, to: http://{up}}}\n");
    let r = start_in(dir.path(), &yaml("auto")).await;
    let roots = [default_cert(&r)];
    let alpn = |offer: &'static [&'static [u8]]| {
        let roots = roots.clone();
        let addr = r.main;
        async move {
            let tls = tls_connect(addr, "localhost", client_config(&roots, offer)).await;
            tls.map(|t| t.get_ref().1.alpn_protocol().map(<[u8]>::to_vec))
        }
    };
    let write = |codec: &str| std::fs::write(dir.path().join("portcullis.yaml"), with_ports_of(&r, &yaml(codec)));
    assert!(r.quic.is_none(), "no UDP listener without http3");
    for codec in ["auto", "http2", "http1", "http3"] {
        write(codec).unwrap();
        reload(&r, dir.path());
        let h2_first = alpn(&[b"h2", b"http/1.1"]).await.unwrap();
        let h1_only = alpn(&[b"http/1.1"]).await.unwrap();
        let none = alpn(&[]).await.unwrap();
        let h2_only = alpn(&[b"h2"]).await;
        match codec {
            // http2 prefers HTTP/2 and still serves HTTP/1.1 clients (documented): an
            // h2-only listener breaks cert-manager's self-check, health checkers and old
            // clients. http3 keeps TCP as auto.
            "auto" | "http2" | "http3" => {
                assert_eq!(h2_first.as_deref(), Some(&b"h2"[..]), "{codec}");
                assert_eq!(h2_only.unwrap().as_deref(), Some(&b"h2"[..]), "{codec}");
            }
            "http1" => {
                assert_eq!(h2_first.as_deref(), Some(&b"http/1.1"[..]), "{codec}");
                assert!(h2_only.is_err(), "{codec}: an h2-only client is refused in the handshake");
            }
            _ => unreachable!(),
        }
        assert_eq!(h1_only.as_deref(), Some(&b"http/1.1"[..]), "{codec}: HTTP/1.1 clients are served");
        assert_eq!(none, None, "{codec}: clients without ALPN get HTTP/1.1");
        // And an HTTP/1.1 client gets its answer.
        let mut h1 = h1_tls(r.main, "localhost", &roots).await;
        let resp = h1.send_request(get("a.test", "/")).await.unwrap();
        assert_eq!(resp.status(), 200, "{codec}");
        assert_eq!(resp.headers().contains_key("alt-svc"), codec == "http3", "{codec}: Alt-Svc only with http3");
    }

    // http3 is on now: quic-ingress listens on the https port.
    let udp = SocketAddr::new(r.main.ip(), r.main.port());
    let mut c = h3_connect(udp, "localhost", &roots).await.expect("HTTP/3 after turning it on live");
    assert_eq!(h3_request(&mut c.send, get3("a.test", "/"), None).await.unwrap().status, 200);
    // Behind a Service that maps 443 to this port, Alt-Svc must name 443 (the Helm chart
    // sets it): a route-less reload changes only the header, the socket stays.
    std::fs::write(dir.path().join("portcullis.yaml"), with_ports_of(&r, &yaml("http3\nhttp3_advertised_port: 443")))
        .unwrap();
    reload(&r, dir.path());
    let mut h1 = h1_tls(r.main, "localhost", &roots).await;
    let resp = h1.send_request(get("a.test", "/")).await.unwrap();
    assert_eq!(resp.headers()["alt-svc"], "h3=\":443\"; ma=86400");
    assert_eq!(h3_request(&mut c.send, get3("a.test", "/"), None).await.unwrap().status, 200, "same QUIC connection");
    // Off again: the UDP socket closes and TCP stops advertising it.
    write("auto").unwrap();
    reload(&r, dir.path());
    let refused = tokio::time::timeout(Duration::from_secs(3), h3_connect(udp, "localhost", &roots)).await;
    assert!(!matches!(refused, Ok(Ok(_))), "no HTTP/3 once it is off");
    assert!(r.proxy.listeners().iter().all(|l| l.protocol == "tcp"));
}

/// `with_ports` for a reload: the listeners keep the ports they were given at start.
fn with_ports_of(r: &Running, yaml: &str) -> String {
    format!(
        "address: \"{}\"\nhttp_redirect_address: \"{}\"\nadmin_address: \"{}\"\nmetrics_address: \"{}\"\n{yaml}",
        r.main,
        r.http.unwrap(),
        r.admin.unwrap(),
        r.metrics.unwrap()
    )
}

/// Whether an HTTP/3 request error means the server never processed it.
fn not_processed(e: &h3::error::StreamError) -> bool {
    use h3::error::{Code, StreamError};
    matches!(e, StreamError::RemoteClosing { .. })
        || matches!(e, StreamError::RemoteTerminate { code, .. } if *code == Code::H3_REQUEST_REJECTED)
}

/// One HTTP/3 client: sequential GETs on one connection, a new connection after a GOAWAY.
async fn h3_load(addr: SocketAddr, roots: Vec<CertificateDer<'static>>, stop: CancellationToken, t: Arc<Tally>) {
    let mut conn: Option<H3> = None;
    while !stop.is_cancelled() {
        let c = match &mut conn {
            Some(c) => c,
            None => match h3_connect(addr, "a.test", &roots).await {
                Ok(c) => {
                    t.connections.fetch_add(1, Ordering::Relaxed);
                    conn.insert(c)
                }
                Err(e) => {
                    t.fail(format!("connect: {e}"));
                    tokio::time::sleep(ms(20)).await;
                    continue;
                }
            },
        };
        t.sent.fetch_add(1, Ordering::Relaxed);
        match h3_request(&mut c.send, get3("a.test", "/"), None).await {
            Ok(reply) if reply.status == 200 => {
                t.ok.fetch_add(1, Ordering::Relaxed);
            }
            Ok(reply) => t.fail(format!("status {}: {}", reply.status, reply.text())),
            Err(e) if not_processed(&e) => {
                t.retried.fetch_add(1, Ordering::Relaxed);
                t.sent.fetch_sub(1, Ordering::Relaxed);
                conn = None;
            }
            Err(e) => {
                t.fail(format!("request: {e}"));
                conn = None;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_rotations_under_http3_load_fail_no_request() {
    const ROTATIONS: usize = 10;
    let up = upstream("u").await;
    let pki = Pki::new();
    pki.leaf("a", &["a.test"]);
    let r = start_in(
        pki.dir.path(),
        &format!(
            "codec_type: http3\ndrain_timeout: 3s\ncertificates: [{{cert_file: a.pem, key_file: a-key.pem}}]\nroutes:\n - {{from: https://a.test, to: http://{up}}}\n"
        ),
    )
    .await;
    let roots = vec![pki.ca_der.clone()];
    let stop = CancellationToken::new();
    let tally = Arc::new(Tally::default());
    let load: Vec<_> =
        (0..4).map(|_| tokio::spawn(h3_load(quic(&r), roots.clone(), stop.clone(), tally.clone()))).collect();
    tokio::time::sleep(ms(300)).await;
    let started = Instant::now();
    let mut slowest = Duration::ZERO;
    let mut draining_seen = false;
    for i in 0..ROTATIONS {
        pki.leaf("a", &["a.test"]);
        let expected = {
            use rustls_pki_types::pem::PemObject;
            CertificateDer::from_pem_file(pki.dir.path().join("a.pem")).unwrap()
        };
        reload(&r, pki.dir.path());
        let t = Instant::now();
        let c = h3_connect(quic(&r), "a.test", &roots).await.unwrap();
        assert_eq!(c.peer_cert().as_ref(), Some(&expected), "rotation {i}: the next QUIC handshake sees it");
        slowest = slowest.max(t.elapsed());
        draining_seen |= metric(&metrics(&r).await, "portcullis_listener_manager_total_filter_chains_draining") > 0;
        tokio::time::sleep(ms(200)).await;
    }
    let secs = started.elapsed().as_secs_f64();
    stop.cancel();
    for l in load {
        l.await.unwrap();
    }
    eprintln!(
        "{ROTATIONS} rotations under HTTP/3 load in {secs:.1} s: {}; slowest new-certificate handshake {slowest:?}",
        tally.summary()
    );
    assert_eq!(tally.failed.load(Ordering::Relaxed), 0, "{}", tally.summary());
    assert!(
        tally.retried.load(Ordering::Relaxed) > 0,
        "the clients saw GOAWAYs (requests not sent, sent again): {}",
        tally.summary()
    );
    assert!(tally.connections.load(Ordering::Relaxed) > ROTATIONS as u64, "{}", tally.summary());
    assert!(tally.ok.load(Ordering::Relaxed) as f64 / secs > 100.0, "real load: {}", tally.summary());
    assert!(draining_seen, "the draining gauge went up");
    let deadline = Instant::now() + Duration::from_secs(5);
    while metric(&metrics(&r).await, "portcullis_listener_manager_total_filter_chains_draining") > 0 {
        assert!(Instant::now() < deadline, "the drains end");
        tokio::time::sleep(ms(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_http3_connection_gets_goaway_finishes_in_flight_requests_and_is_closed_at_drain_timeout() {
    let up = upstream("u").await;
    let pki = Pki::new();
    pki.leaf("a", &["a.test"]);
    let yaml = format!(
        "codec_type: http3\ndrain_timeout: 2s\ncertificates: [{{cert_file: a.pem, key_file: a-key.pem}}]\nroutes:\n - {{from: https://a.test, to: http://{up}}}\n"
    );
    let r = start_in(pki.dir.path(), &yaml).await;
    let roots = vec![pki.ca_der.clone()];

    // In flight across the rotation: finishes, and the connection then closes by itself.
    let mut c = h3_connect(quic(&r), "a.test", &roots).await.unwrap();
    let mut send = c.send.clone();
    let in_flight = tokio::spawn(async move { h3_request(&mut send, get3("a.test", "/delay?ms=1000"), None).await });
    tokio::time::sleep(ms(200)).await;
    pki.leaf("a", &["a.test"]);
    reload(&r, pki.dir.path());
    tokio::time::sleep(ms(200)).await;
    let refused = h3_request(&mut c.send, get3("a.test", "/"), None).await;
    assert!(matches!(&refused, Err(e) if not_processed(e)), "after GOAWAY no new request goes out: {refused:?}");
    let reply = in_flight.await.unwrap().expect("the in-flight request completes after GOAWAY");
    assert_eq!(reply.status, 200);
    let closed = tokio::time::timeout(Duration::from_secs(3), c.closed).await.expect("closed after its last request");
    assert!(closed.unwrap().is_h3_no_error());

    // A long response on a drained connection is cut when drain_timeout (2 s) ends.
    let mut c = h3_connect(quic(&r), "a.test", &roots).await.unwrap();
    let mut stream = c.send.send_request(get3("a.test", "/stream?count=100&interval_ms=100")).await.unwrap();
    stream.finish().await.unwrap();
    assert_eq!(stream.recv_response().await.unwrap().status(), 200);
    pki.leaf("a", &["a.test"]);
    reload(&r, pki.dir.path());
    let rotated = Instant::now();
    let mut chunks = 0;
    let ended = loop {
        match stream.recv_data().await {
            Ok(Some(_)) => chunks += 1,
            Ok(None) => break "the stream ended normally",
            Err(_) => break "cut",
        }
    };
    let after = rotated.elapsed();
    assert_eq!(ended, "cut", "{chunks} chunks");
    assert!(after >= Duration::from_millis(1900) && after < Duration::from_secs(4), "cut at drain_timeout: {after:?}");
    assert!(chunks > 15, "it kept streaming while draining: {chunks} chunks");
}
