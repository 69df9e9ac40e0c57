//! Listener generations and drains under load: certificate rotations and route edits while
//! real HTTP/1.1 and HTTP/2 clients keep sending, WebSockets that must (or must not) survive,
//! GOAWAY and `Connection: close` on in-flight responses.

// Test code measures wall time and may lock as it likes: the clippy.toml rules are for src/.
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use futures_util::{SinkExt, StreamExt};
use hyper_util::rt::{TokioExecutor, TokioIo};
use portcullis::server::Running;
use portcullis::source::file::{self, FileSource};
use rustls_pki_types::CertificateDer;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;

/// Whether a client error means the request was never taken by the server, so that HTTP lets
/// a client send it again (RFC 9112 section 9.3.1, RFC 9113 section 8.7).
fn retryable(e: &hyper::Error) -> bool {
    use std::error::Error as _;
    if e.is_canceled() || e.is_incomplete_message() {
        return true;
    }
    let mut source = e.source();
    while let Some(s) = source {
        if let Some(h2) = s.downcast_ref::<h2::Error>() {
            return h2.reason() == Some(h2::Reason::REFUSED_STREAM) || h2.is_go_away();
        }
        source = s.source();
    }
    false
}

async fn connect(
    addr: std::net::SocketAddr,
    host: &str,
    roots: &[CertificateDer<'static>],
    alpn: &[u8],
    t: &Tally,
) -> Option<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    match tls_connect(addr, host, client_config(roots, &[alpn])).await {
        Ok(s) => {
            t.connections.fetch_add(1, Ordering::Relaxed);
            Some(s)
        }
        Err(e) => {
            t.resets.fetch_add(1, Ordering::Relaxed);
            t.fail(format!("connect: {e}"));
            tokio::time::sleep(ms(20)).await;
            None
        }
    }
}

/// An HTTP/1.1 keep-alive client: one request at a time, a new connection when a response
/// says `Connection: close` (or the connection is gone).
async fn h1_load(
    addr: std::net::SocketAddr,
    host: String,
    roots: Vec<CertificateDer<'static>>,
    stop: CancellationToken,
    t: Arc<Tally>,
) {
    // Set when the request in hand is being sent again on a new connection.
    let mut retry = false;
    'connection: while !stop.is_cancelled() {
        let Some(tls) = connect(addr, &host, &roots, b"http/1.1", &t).await else { continue };
        let Ok((mut send, conn)) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await else { continue };
        tokio::spawn(conn);
        while !stop.is_cancelled() {
            if send.ready().await.is_err() {
                continue 'connection;
            }
            if !retry {
                t.sent.fetch_add(1, Ordering::Relaxed);
            }
            match send.send_request(get(&host, "/status/200")).await {
                Ok(resp) => {
                    retry = false;
                    let close = resp.headers().get(http::header::CONNECTION).is_some_and(|v| v == "close");
                    let (status, body) = text(resp).await;
                    if status == 200 {
                        t.ok.fetch_add(1, Ordering::Relaxed);
                    } else {
                        t.fail(format!("h1 {status}: {body}"));
                    }
                    if close {
                        continue 'connection;
                    }
                }
                Err(e) if retryable(&e) && !retry => {
                    t.retried.fetch_add(1, Ordering::Relaxed);
                    retry = true;
                    continue 'connection;
                }
                Err(e) => {
                    retry = false;
                    t.fail(format!("h1: {e:?}"));
                    continue 'connection;
                }
            }
        }
    }
}

/// An HTTP/2 client with `streams` requests in flight on one connection; a new connection
/// after GOAWAY.
async fn h2_load(
    addr: std::net::SocketAddr,
    host: String,
    roots: Vec<CertificateDer<'static>>,
    streams: usize,
    stop: CancellationToken,
    t: Arc<Tally>,
) {
    while !stop.is_cancelled() {
        let Some(tls) = connect(addr, &host, &roots, b"h2", &t).await else { continue };
        let Ok((send, conn)) =
            hyper::client::conn::http2::Builder::new(TokioExecutor::new()).handshake(TokioIo::new(tls)).await
        else {
            continue;
        };
        let conn = tokio::spawn(conn);
        let workers: Vec<_> = (0..streams)
            .map(|_| {
                let (mut send, host, stop, t) = (send.clone(), host.clone(), stop.clone(), t.clone());
                tokio::spawn(async move {
                    let mut retry = false;
                    while !stop.is_cancelled() {
                        if send.ready().await.is_err() {
                            return retry;
                        }
                        if !retry {
                            t.sent.fetch_add(1, Ordering::Relaxed);
                        }
                        match send.send_request(get2(&host, "/status/200")).await {
                            Ok(resp) => {
                                retry = false;
                                let (status, body) = text(resp).await;
                                if status == 200 {
                                    t.ok.fetch_add(1, Ordering::Relaxed);
                                } else {
                                    t.fail(format!("h2 {status}: {body}"));
                                }
                            }
                            Err(e) if retryable(&e) && !retry => {
                                t.retried.fetch_add(1, Ordering::Relaxed);
                                return true;
                            }
                            Err(e) => {
                                t.fail(format!("h2: {e:?}"));
                                return false;
                            }
                        }
                    }
                    false
                })
            })
            .collect();
        drop(send);
        for w in workers {
            // A retried request is counted once: the new connection's worker sends it.
            if w.await.unwrap_or(false) {
                t.sent.fetch_sub(1, Ordering::Relaxed);
            }
        }
        conn.abort();
    }
}

/// An HTTP/1.1 WebSocket (echo) on `host`.
async fn websocket(
    r: &Running,
    host: &str,
    roots: &[CertificateDer<'static>],
) -> WebSocketStream<TokioIo<hyper::upgrade::Upgraded>> {
    let mut c = h1_tls(r.main, host, roots).await;
    let resp = c.send_request(ws_upgrade(host)).await.unwrap();
    assert_eq!(resp.status(), 101);
    let upgraded = hyper::upgrade::on(resp).await.unwrap();
    WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Client, None).await
}

async fn echoes<S>(ws: &mut WebSocketStream<S>, what: &str) -> bool
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    if ws.send(Message::text(what.to_owned())).await.is_err() {
        return false;
    }
    matches!(tokio::time::timeout(ms(2000), ws.next()).await, Ok(Some(Ok(m))) if m.to_text().ok() == Some(what))
}

/// The leaf certificate a fresh handshake for `sni` gets.
async fn served(r: &Running, sni: &str, roots: &[CertificateDer<'static>]) -> Option<CertificateDer<'static>> {
    let tls = tls_connect(r.main, sni, client_config(roots, &[b"http/1.1"])).await.ok()?;
    tls.get_ref().1.peer_certificates()?.first().cloned()
}

fn metric(text: &str, series: &str) -> u64 {
    text.lines().find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok())).unwrap_or(0)
}

/// Starts the proxy from `yaml` in `pki`'s directory with the file watcher on (100 ms).
async fn serve_watched(pki: &Pki, yaml: &str) -> (Running, tokio::task::JoinHandle<()>) {
    let r = start_in(pki.dir.path(), yaml).await;
    let path = pki.dir.path().join("portcullis.yaml");
    let source = FileSource::new(&path);
    let loaded = source.load_with_env(&|_| None).unwrap();
    let proxy = r.proxy.clone();
    let watcher = file::watch(source, loaded.inputs, loaded.fingerprint, ms(100), move |res| {
        if let Ok(l) = res {
            proxy.apply(l.config);
        }
    });
    (r, watcher)
}

/// Waits (3 s at most) for every drain to end: the server notices a closed connection a
/// moment after the client does.
async fn drains_end(r: &Running) {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let m = metrics(r).await;
        if metric(&m, "portcullis_listener_manager_total_filter_chains_draining") == 0 {
            return;
        }
        assert!(Instant::now() < deadline, "the drain did not end:\n{m}");
        tokio::time::sleep(ms(50)).await;
    }
}

/// Two hosts with a certificate each (`a.pem`, `b.pem`) and WebSocket routes to `up`.
fn two_hosts(up: std::net::SocketAddr, settings: &str) -> String {
    format!(
        "{settings}certificates:
 - {{cert_file: a.pem, key_file: a-key.pem}}
 - {{cert_file: b.pem, key_file: b-key.pem}}
routes:
 - {{from: https://a.test, to: http://{up}, allow_websockets: true}}
 - {{from: https://b.test, to: http://{up}, allow_websockets: true}}
"
    )
}

const ROTATIONS: usize = 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_rotations_under_load_fail_no_request_and_drain_only_affected_connections() {
    let up = upstream("u").await;
    let pki = Pki::new();
    pki.leaf("a", &["a.test"]);
    pki.leaf("b", &["b.test"]);
    let yaml = two_hosts(up, "drain_timeout: 3s\n");
    let (r, watcher) = serve_watched(&pki, &yaml).await;
    let roots = vec![pki.ca_der.clone()];
    let mut ws_a = websocket(&r, "a.test", &roots).await;
    let mut ws_b = websocket(&r, "b.test", &roots).await;

    let stop = CancellationToken::new();
    let tally = Arc::new(Tally::default());
    let mut load = Vec::new();
    for host in ["a.test", "b.test"] {
        load.push(tokio::spawn(h1_load(r.main, host.into(), roots.clone(), stop.clone(), tally.clone())));
        load.push(tokio::spawn(h2_load(r.main, host.into(), roots.clone(), 4, stop.clone(), tally.clone())));
    }
    // The draining gauge, sampled throughout.
    let peak = Arc::new(AtomicU64::new(0));
    let sampler = {
        let (metrics_addr, peak, stop) = (r.metrics.unwrap(), peak.clone(), stop.clone());
        tokio::spawn(async move {
            while !stop.is_cancelled() {
                let mut c = h1_plain(metrics_addr).await;
                let m = text(c.send_request(get("m", "/metrics")).await.unwrap()).await.1;
                peak.fetch_max(
                    metric(&m, "portcullis_listener_manager_total_filter_chains_draining"),
                    Ordering::Relaxed,
                );
                tokio::time::sleep(ms(50)).await;
            }
        })
    };
    tokio::time::sleep(ms(500)).await;

    let started = Instant::now();
    let mut first_rotation = None;
    let mut slowest = Duration::ZERO;
    for i in 0..ROTATIONS {
        let before = served(&r, "a.test", &roots).await.expect("a handshake");
        pki.leaf("a", &["a.test"]);
        let t = Instant::now();
        first_rotation.get_or_insert(t);
        loop {
            if served(&r, "a.test", &roots).await.is_some_and(|c| c != before) {
                break;
            }
            assert!(
                t.elapsed() < Duration::from_secs(1),
                "rotation {i}: a new handshake still sees the old certificate after 1 s"
            );
            tokio::time::sleep(ms(10)).await;
        }
        slowest = slowest.max(t.elapsed());
        if i == 2 {
            // Within drain_timeout of the first rotation: the old connection's WebSocket works.
            assert!(
                echoes(&mut ws_a, "during the drain").await,
                "a WebSocket keeps working while its generation drains"
            );
        }
        tokio::time::sleep(ms(200)).await;
    }
    let rotations_took = started.elapsed();
    // drain_timeout (3 s) after the first rotation, the WebSocket on a.test is closed...
    let first = first_rotation.unwrap();
    tokio::time::sleep((first + Duration::from_millis(3500)).saturating_duration_since(Instant::now())).await;
    assert!(!echoes(&mut ws_a, "after drain_timeout").await, "drain_timeout closes the drained WebSocket");
    // ... and the one on b.test, whose certificate never changed, was never touched.
    assert!(echoes(&mut ws_b, "still here").await, "drain_scope affected: b.test's WebSocket stays up");

    stop.cancel();
    for l in load {
        l.await.unwrap();
    }
    sampler.await.unwrap();
    watcher.abort();
    let secs = rotations_took.as_secs_f64();
    let sent = tally.sent.load(Ordering::Relaxed);
    eprintln!("{ROTATIONS} rotations in {secs:.1} s; slowest new certificate {slowest:?}; {}", tally.summary());
    assert_eq!(tally.failed.load(Ordering::Relaxed), 0, "{}", tally.summary());
    assert_eq!(tally.resets.load(Ordering::Relaxed), 0, "{}", tally.summary());
    assert!(sent as f64 / secs > 200.0, "load too light to prove anything: {}", tally.summary());
    assert!(peak.load(Ordering::Relaxed) >= 1, "the draining gauge went up");
    // Every drain ends (the last one by drain_timeout at the latest).
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let m = metrics(&r).await;
        if metric(&m, "portcullis_listener_manager_total_filter_chains_draining") == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "the draining gauge did not return to 0:\n{m}");
        tokio::time::sleep(ms(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_edits_under_load_fail_no_request_and_touch_no_connection() {
    let up = upstream("u").await;
    let other = upstream("v").await;
    let pki = Pki::new();
    pki.leaf("a", &["a.test"]);
    let yaml = |n: usize, to| {
        format!(
            "certificates:\n - {{cert_file: a.pem, key_file: a-key.pem}}\nroutes:\n - {{from: https://a.test, to: http://{to}, allow_websockets: true}}\n - {{from: https://edit-{n}.test, to: http://{to}}}\n"
        )
    };
    let r = start_in(pki.dir.path(), &yaml(0, up)).await;
    let roots = vec![pki.ca_der.clone()];
    let mut ws = websocket(&r, "a.test", &roots).await;
    let stop = CancellationToken::new();
    let tally = Arc::new(Tally::default());
    let load = vec![
        tokio::spawn(h1_load(r.main, "a.test".into(), roots.clone(), stop.clone(), tally.clone())),
        tokio::spawn(h2_load(r.main, "a.test".into(), roots.clone(), 4, stop.clone(), tally.clone())),
    ];
    tokio::time::sleep(ms(300)).await;
    let connections_before = tally.connections.load(Ordering::Relaxed);
    let path = pki.dir.path().join("portcullis.yaml");
    let started = Instant::now();
    for n in 1..=100 {
        std::fs::write(&path, with_ports(&yaml(n, if n % 2 == 0 { up } else { other }))).unwrap();
        let loaded = FileSource::new(&path).load_with_env(&|_| None).unwrap();
        assert_eq!(r.proxy.apply(loaded.config), portcullis::proxy::Applied::Swapped);
        tokio::time::sleep(ms(20)).await;
    }
    let secs = started.elapsed().as_secs_f64();
    assert!(echoes(&mut ws, "after 100 edits").await, "the WebSocket is untouched");
    stop.cancel();
    for l in load {
        l.await.unwrap();
    }
    eprintln!("100 route edits in {secs:.1} s; {}", tally.summary());
    assert_eq!(tally.failed.load(Ordering::Relaxed) + tally.retried.load(Ordering::Relaxed), 0, "{}", tally.summary());
    assert_eq!(
        tally.connections.load(Ordering::Relaxed),
        connections_before,
        "no connection was closed: {}",
        tally.summary()
    );
    assert!(tally.sent.load(Ordering::Relaxed) as f64 / secs > 200.0, "{}", tally.summary());
    let m = metrics(&r).await;
    assert_eq!(
        metric(&m, "portcullis_listener_manager_total_filter_chains_draining"),
        0,
        "a route edit drains nothing"
    );
}

/// The proxy with one TLS host, `a.test`, and `drain_timeout: 30s`.
async fn one_host() -> (Running, Pki) {
    let up = upstream("u").await;
    let pki = Pki::new();
    pki.leaf("a", &["a.test"]);
    let yaml = "drain_timeout: 30s\ncertificates:\n - {cert_file: a.pem, key_file: a-key.pem}\nroutes:\n - {from: https://a.test, to: http://UP}\n";
    let r = start_in(pki.dir.path(), &yaml.replace("UP", &up.to_string())).await;
    (r, pki)
}

/// A new certificate for `a.test`, applied: a new listener generation, the old one drains.
fn rotate(r: &Running, pki: &Pki) {
    pki.leaf("a", &["a.test"]);
    let path = pki.dir.path().join("portcullis.yaml");
    r.proxy.apply(FileSource::new(&path).load_with_env(&|_| None).unwrap().config);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_flight_requests_finish_with_goaway_or_connection_close() {
    let (r, pki) = one_host().await;
    let roots = vec![pki.ca_der.clone()];
    let mut h1 = h1_tls(r.main, "a.test", &roots).await;
    let mut h2 = h2_tls(r.main, "a.test", &roots).await;
    let slow1 = tokio::spawn(h1.send_request(get("a.test", "/delay?ms=800")));
    let slow2 = tokio::spawn(h2.send_request(get2("a.test", "/delay?ms=800")));
    tokio::time::sleep(ms(200)).await;
    // A new certificate: a new generation; both connections negotiated the old one.
    rotate(&r, &pki);
    let resp1 = slow1.await.unwrap().expect("the in-flight HTTP/1.1 request completes");
    assert_eq!(
        resp1.headers().get("connection").map(|v| v.to_str().unwrap()),
        Some("close"),
        "Connection: close on the in-flight response"
    );
    assert_eq!(text(resp1).await.0, 200);
    let resp2 = slow2.await.unwrap().expect("the in-flight HTTP/2 stream completes after GOAWAY");
    assert_eq!(text(resp2).await.0, 200);
    // The HTTP/2 client saw GOAWAY: the connection takes no new stream and closes.
    let deadline = Instant::now() + Duration::from_secs(3);
    while h2.ready().await.is_ok() && !h2.is_closed() {
        assert!(Instant::now() < deadline, "no GOAWAY seen");
        tokio::time::sleep(ms(20)).await;
    }
    let listeners = {
        let mut c = h1_plain(r.admin.unwrap()).await;
        json(c.send_request(get("x", "/listeners")).await.unwrap()).await.1
    };
    assert_eq!(listeners["generation"]["current"], 2, "{listeners}");
    // Both connections were drained and closed: generation 1's drain ends.
    drains_end(&r).await;
}

/// An HTTP/1.1 connection that has been idle for longer than the 1 s drain linger when its
/// drain begins is still given the linger, counted from the drain (a keep-alive client may be
/// sending its next request at that very moment), not closed at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_http1_connection_lingers_after_its_drain_begins() {
    let (r, pki) = one_host().await;
    let roots = vec![pki.ca_der.clone()];
    let mut h1 = h1_tls(r.main, "a.test", &roots).await;
    assert_eq!(text(h1.send_request(get("a.test", "/")).await.unwrap()).await.0, 200);
    tokio::time::sleep(ms(1500)).await;
    rotate(&r, &pki);
    let drained = Instant::now();
    while !h1.is_closed() {
        assert!(drained.elapsed() < Duration::from_secs(3), "the drained idle connection was not closed");
        tokio::time::sleep(ms(10)).await;
    }
    let lingered = drained.elapsed();
    assert!(lingered >= ms(700), "closed {lingered:?} after the drain began: the linger counts from the drain");
    drains_end(&r).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_route_closes_its_websockets_and_no_others() {
    let up = upstream("u").await;
    let pki = Pki::new();
    pki.leaf("a", &["a.test", "b.test"]);
    let both = format!(
        "certificates:\n - {{cert_file: a.pem, key_file: a-key.pem}}\nroutes:\n - {{from: https://a.test, to: http://{up}, allow_websockets: true}}\n - {{from: https://b.test, to: http://{up}, allow_websockets: true}}\n"
    );
    let r = start_in(pki.dir.path(), &both).await;
    let roots = vec![pki.ca_der.clone()];
    let mut on_a = websocket(&r, "a.test", &roots).await;
    let mut on_b = websocket(&r, "b.test", &roots).await;
    assert!(echoes(&mut on_a, "a").await && echoes(&mut on_b, "b").await);
    let path = pki.dir.path().join("portcullis.yaml");
    let only_b = both.lines().filter(|l| !l.contains("a.test, to")).collect::<Vec<_>>().join("\n");
    std::fs::write(&path, with_ports(&only_b)).unwrap();
    r.proxy.apply(FileSource::new(&path).load_with_env(&|_| None).unwrap().config);
    let closed = tokio::time::timeout(ms(2000), on_a.next()).await.expect("closed at once, not at drain_timeout");
    assert!(!matches!(closed, Some(Ok(Message::Text(_)))), "the deleted route's WebSocket ends: {closed:?}");
    assert!(echoes(&mut on_b, "b again").await, "the other route's WebSocket is untouched");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_scope_all_drains_every_connection_of_the_old_generation() {
    let up = upstream("u").await;
    let pki = Pki::new();
    pki.leaf("a", &["a.test"]);
    pki.leaf("b", &["b.test"]);
    let yaml = two_hosts(up, "drain_scope: all\ndrain_timeout: 1s\n");
    let r = start_in(pki.dir.path(), &yaml).await;
    let roots = vec![pki.ca_der.clone()];
    let mut on_a = websocket(&r, "a.test", &roots).await;
    let mut on_b = websocket(&r, "b.test", &roots).await;
    rotate(&r, &pki);
    let rotated = Instant::now();
    assert!(echoes(&mut on_b, "during").await, "draining, not closed: WebSockets run until drain_timeout");
    tokio::time::sleep((rotated + ms(1500)).saturating_duration_since(Instant::now())).await;
    assert!(!echoes(&mut on_a, "a").await, "a.test's WebSocket closed at drain_timeout");
    assert!(!echoes(&mut on_b, "b").await, "drain_scope all: b.test's too, although its certificate did not change");
    drains_end(&r).await;
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listener_addresses_move_live_and_a_failed_bind_keeps_the_old_socket() {
    let up = upstream("u").await;
    let pki = Pki::new();
    pki.leaf("a", &["a.test"]);
    let (first, second, admin1, admin2) = (free_port(), free_port(), free_port(), free_port());
    let yaml = |main: u16, admin: u16, metrics: &str| {
        format!(
            "address: 127.0.0.1:{main}\nadmin_address: 127.0.0.1:{admin}\nmetrics_address: \"{metrics}\"\ncertificates:\n - {{cert_file: a.pem, key_file: a-key.pem}}\nroutes:\n - {{from: https://a.test, to: http://{up}}}\n"
        )
    };
    let r = start_in(pki.dir.path(), &yaml(first, admin1, "127.0.0.1:0")).await;
    let metrics_addr = r.metrics.unwrap();
    let roots = vec![pki.ca_der.clone()];
    let old_addr = std::net::SocketAddr::from(([127, 0, 0, 1], first));
    let mut on_old = h1_tls(old_addr, "a.test", &roots).await;
    let slow = tokio::spawn(on_old.send_request(get("a.test", "/delay?ms=800")));
    tokio::time::sleep(ms(100)).await;

    let path = pki.dir.path().join("portcullis.yaml");
    let apply = |yaml: String| {
        std::fs::write(&path, yaml).unwrap();
        r.proxy.apply(FileSource::new(&path).load_with_env(&|_| None).unwrap().config)
    };
    assert_eq!(apply(yaml(second, admin2, &metrics_addr.to_string())), portcullis::proxy::Applied::Swapped);
    // The new address serves at once; the old one is closed.
    let new_addr = std::net::SocketAddr::from(([127, 0, 0, 1], second));
    let mut on_new = h1_tls(new_addr, "a.test", &roots).await;
    assert_eq!(text(on_new.send_request(get("a.test", "/")).await.unwrap()).await.0, 200);
    assert!(tokio::net::TcpStream::connect(old_addr).await.is_err(), "the old address is closed");
    // The request in flight on the old address finishes, with Connection: close.
    let resp = slow.await.unwrap().expect("the in-flight request completes");
    assert_eq!(resp.headers().get("connection").map(|v| v.to_str().unwrap()), Some("close"));
    assert_eq!(text(resp).await.0, 200);
    // The admin listener moved too, and /listeners says where everything is.
    let mut admin = h1_plain(std::net::SocketAddr::from(([127, 0, 0, 1], admin2))).await;
    let listeners = json(admin.send_request(get("x", "/listeners")).await.unwrap()).await.1;
    let https =
        listeners["listeners"].as_array().unwrap().iter().find(|l| l["name"] == "https-ingress").unwrap().clone();
    assert_eq!(https["address"], new_addr.to_string(), "{listeners}");
    assert!(tokio::net::TcpStream::connect(("127.0.0.1", admin1)).await.is_err(), "the old admin address is closed");

    // A port someone else holds (without SO_REUSEPORT) cannot be bound: the metrics listener
    // stays where it is and the reload says so.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy = taken.local_addr().unwrap().to_string();
    match apply(yaml(second, admin2, &busy)) {
        portcullis::proxy::Applied::SwappedWithListenerErrors(e) => {
            assert!(e[0].contains("metrics-ingress") && e[0].contains(&busy), "{e:?}");
        }
        other @ portcullis::proxy::Applied::Swapped => panic!("expected a listener error, got {other:?}"),
    }
    let m = metrics(&r).await;
    assert!(m.contains("portcullis_http_requests_total"), "metrics still served on the old address");
}
