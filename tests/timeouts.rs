//! Every timeout of the reference fires when it should and not before, and 0 disables it.
//! Real sockets, real TLS, real HTTP/1.1 and HTTP/2. Margins are generous: CI has 2 cores.

// Test code measures wall time and may lock as it likes: the clippy.toml rules are for src/.
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http::Request;
use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn assert_between(elapsed: Duration, lo: u64, hi: u64, what: &str) {
    assert!(elapsed >= ms(lo) && elapsed <= ms(hi), "{what}: took {elapsed:?}, expected between {lo}ms and {hi}ms");
}

/// A request whose body sends half at once and the other half after `delay`.
fn slow_body(delay: Duration) -> Body {
    let (tx, rx) =
        tokio::sync::mpsc::channel::<Result<hyper::body::Frame<Bytes>, Box<dyn std::error::Error + Send + Sync>>>(2);
    tokio::spawn(async move {
        let _ = tx.send(Ok(hyper::body::Frame::data(Bytes::from_static(b"hello")))).await;
        tokio::time::sleep(delay).await;
        let _ = tx.send(Ok(hyper::body::Frame::data(Bytes::from_static(b"world")))).await;
    });
    http_body_util::StreamBody::new(tokio_stream(rx)).boxed_unsync()
}

fn tokio_stream<T>(mut rx: tokio::sync::mpsc::Receiver<T>) -> impl futures_util::Stream<Item = T> {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

async fn post_slow(r: &portcullis::server::Running, delay: Duration) -> (u16, Duration) {
    let mut c = h1_tls(r.main, "a.test", &[default_cert(r)]).await;
    let req = Request::post("/upload")
        .header("host", "a.test")
        .header("content-length", "10")
        .body(slow_body(delay))
        .unwrap();
    let t = Instant::now();
    let resp = c.send_request(req).await.unwrap();
    let status = resp.status().as_u16();
    let _ = resp.into_body().collect().await;
    (status, t.elapsed())
}

#[tokio::test]
async fn timeout_read_covers_the_body_408() {
    let up = upstream("u").await;
    let (r, _d) = start(&format!("timeout_read: 600ms\nroutes:\n - from: https://a.test\n   to: http://{up}\n")).await;
    let (status, took) = post_slow(&r, ms(2000)).await;
    assert_eq!(status, 408, "a body that does not arrive within timeout_read gets 408");
    assert_between(took, 550, 1800, "timeout_read");
    let (status, _) = post_slow(&r, ms(150)).await;
    assert_eq!(status, 200, "a body that arrives in time is not cut");
}

#[tokio::test]
async fn timeout_read_zero_disables_it() {
    let up = upstream("u").await;
    let (r, _d) = start(&format!("timeout_read: 0\nroutes:\n - from: https://a.test\n   to: http://{up}\n")).await;
    let (status, took) = post_slow(&r, ms(1200)).await;
    assert_eq!(status, 200);
    assert!(took >= ms(1150));
}

#[tokio::test]
async fn timeout_read_closes_a_connection_whose_head_never_completes() {
    let up = upstream("u").await;
    let (r, _d) = start(&format!("timeout_read: 500ms\nroutes:\n - from: https://a.test\n   to: http://{up}\n")).await;
    let mut tls = tls_connect(r.main, "a.test", client_config(&[default_cert(&r)], &[b"http/1.1"])).await.unwrap();
    tls.write_all(b"GET / HTTP/1.1\r\nHost: a.test\r\n").await.unwrap();
    let t = Instant::now();
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(ms(5000), tls.read(&mut buf)).await.expect("connection must be closed").unwrap_or(0);
    assert_eq!(n, 0, "no response for a head that never completed");
    assert_between(t.elapsed(), 450, 1800, "header read timeout");
}

async fn wait_closed<F: Fn() -> bool>(closed: F, limit: Duration) -> Option<Duration> {
    let t = Instant::now();
    while t.elapsed() < limit {
        if closed() {
            return Some(t.elapsed());
        }
        tokio::time::sleep(ms(20)).await;
    }
    None
}

#[tokio::test]
async fn timeout_idle_closes_idle_http1_and_http2_connections() {
    let up = upstream("u").await;
    let (r, _d) = start(&format!("timeout_idle: 700ms\nroutes:\n - from: https://a.test\n   to: http://{up}\n")).await;
    let roots = [default_cert(&r)];

    let mut h1 = h1_tls(r.main, "a.test", &roots).await;
    assert_eq!(text(h1.send_request(get("a.test", "/")).await.unwrap()).await.0, 200);
    // Activity resets the clock: a request at 400ms keeps the connection.
    tokio::time::sleep(ms(400)).await;
    assert_eq!(text(h1.send_request(get("a.test", "/")).await.unwrap()).await.0, 200);
    let took = wait_closed(|| h1.is_closed(), ms(4000)).await.expect("idle HTTP/1.1 connection closed");
    assert_between(took, 600, 2000, "HTTP/1.1 idle");

    let mut h2 = h2_tls(r.main, "a.test", &roots).await;
    assert_eq!(text(h2.send_request(get2("a.test", "/")).await.unwrap()).await.0, 200);
    let took = wait_closed(|| h2.is_closed(), ms(4000)).await.expect("idle HTTP/2 connection closed");
    assert_between(took, 600, 2000, "HTTP/2 idle");
}

#[tokio::test]
async fn timeout_idle_does_not_close_a_connection_with_an_active_request() {
    let up = upstream("u").await;
    let (r, _d) = start(&format!(
        "timeout_idle: 400ms\nroutes:\n - {{from: https://a.test, prefix: /quiet, to: http://{up}, timeout: 5s, idle_timeout: 0, prefix_rewrite: /}}\n - {{from: https://a.test, to: http://{up}, timeout: 5s}}\n"
    ))
    .await;
    let mut h1 = h1_tls(r.main, "a.test", &[default_cert(&r)]).await;
    // The upstream takes 1.2 s to answer: the connection is busy, not idle (the route
    // disables the stream idle timeout, so only the connection rule is in play).
    let t = Instant::now();
    let (status, _) = text(h1.send_request(get("a.test", "/quiet/delay?ms=1200")).await.unwrap()).await;
    assert_eq!(status, 200);
    assert!(t.elapsed() >= ms(1150));
    // Without idle_timeout: 0 the stream idle timeout (timeout_idle) applies while the
    // upstream is silent, as Envoy's stream_idle_timeout does.
    let t = Instant::now();
    let (status, body) = text(h1.send_request(get("a.test", "/delay?ms=1200")).await.unwrap()).await;
    assert_eq!(status, 504, "{body}");
    assert!(body.contains("stream idle timeout"), "{body}");
    assert_between(t.elapsed(), 350, 1100, "stream idle while waiting");
}

#[tokio::test]
async fn timeout_idle_zero_keeps_idle_connections() {
    let up = upstream("u").await;
    let (r, _d) = start(&format!("timeout_idle: 0\nroutes:\n - from: https://a.test\n   to: http://{up}\n")).await;
    let mut h1 = h1_tls(r.main, "a.test", &[default_cert(&r)]).await;
    assert_eq!(text(h1.send_request(get("a.test", "/")).await.unwrap()).await.0, 200);
    assert!(wait_closed(|| h1.is_closed(), ms(1500)).await.is_none());
    assert_eq!(text(h1.send_request(get("a.test", "/")).await.unwrap()).await.0, 200);
}

#[tokio::test]
async fn route_timeout_504_default_and_zero() {
    let up = upstream("u").await;
    let (r, _d) = start(&format!(
        "default_upstream_timeout: 400ms
routes:
 - {{from: https://a.test, prefix: /route, to: http://{up}, timeout: 300ms, prefix_rewrite: /}}
 - {{from: https://a.test, prefix: /default, to: http://{up}, prefix_rewrite: /}}
 - {{from: https://a.test, prefix: /off, to: http://{up}, timeout: 0, prefix_rewrite: /}}
"
    ))
    .await;
    let t = Instant::now();
    let (status, body) = https_get(&r, "a.test", "/route/delay?ms=3000").await;
    assert_eq!(status, 504, "{body}");
    assert!(body.contains("upstream timeout") && body.contains("request id:"), "{body}");
    assert_between(t.elapsed(), 280, 1500, "route timeout");

    let t = Instant::now();
    assert_eq!(https_get(&r, "a.test", "/default/delay?ms=3000").await.0, 504);
    assert_between(t.elapsed(), 380, 1600, "default_upstream_timeout");

    assert_eq!(https_get(&r, "a.test", "/route/delay?ms=50").await.0, 200, "fast answers are not cut");
    let t = Instant::now();
    assert_eq!(https_get(&r, "a.test", "/off/delay?ms=900").await.0, 200, "timeout: 0 disables it");
    assert!(t.elapsed() >= ms(850));
}

async fn stream_result(r: &portcullis::server::Running, path: &str) -> (u16, Result<usize, String>, Duration) {
    let mut c = h1_tls(r.main, "a.test", &[default_cert(r)]).await;
    let t = Instant::now();
    let resp = c.send_request(get("a.test", path)).await.unwrap();
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.map(|b| b.to_bytes().len()).map_err(|e| e.to_string());
    (status, body, t.elapsed())
}

#[tokio::test]
async fn timeout_write_bounds_the_whole_cycle_and_zero_disables_it() {
    let up = upstream("u").await;
    let (r, _d) = start(&format!(
        "timeout_read: 200ms\ntimeout_write: 700ms\nroutes:\n - from: https://a.test\n   to: http://{up}\n"
    ))
    .await;
    // 10 chunks 150 ms apart: 1.35 s, longer than timeout_write.
    let (status, body, took) = stream_result(&r, "/stream?count=10&interval_ms=150").await;
    assert_eq!(status, 200, "the response had started");
    assert!(body.is_err(), "the body must be cut by timeout_write, got {body:?}");
    assert_between(took, 650, 1300, "timeout_write");
    let (status, _) = https_get(&r, "a.test", "/delay?ms=1500").await;
    assert_eq!(status, 504, "timeout_write before the response starts is a 504");

    let (r2, _d2) = start(&format!("timeout_write: 0\nroutes:\n - from: https://a.test\n   to: http://{up}\n")).await;
    let (_, body, _) = stream_result(&r2, "/stream?count=10&interval_ms=150").await;
    assert_eq!(body, Ok(80), "timeout_write: 0 lets a long response finish");
}

#[tokio::test]
async fn route_idle_timeout_cuts_a_silent_stream_zero_disables_and_it_never_exceeds_timeout_idle() {
    let up = upstream("u").await;
    let (r, _d) = start(&format!(
        "timeout_idle: 500ms
routes:
 - {{from: https://a.test, prefix: /short, to: http://{up}, idle_timeout: 300ms, prefix_rewrite: /}}
 - {{from: https://a.test, prefix: /off, to: http://{up}, idle_timeout: 0, prefix_rewrite: /}}
 - {{from: https://a.test, prefix: /capped, to: http://{up}, idle_timeout: 1h, prefix_rewrite: /}}
"
    ))
    .await;
    // First chunk at once, the next 900 ms later.
    let (status, body, took) = stream_result(&r, "/short/stream?count=3&interval_ms=900").await;
    assert_eq!(status, 200);
    assert!(body.is_err(), "silent stream must be cut: {body:?}");
    assert_between(took, 250, 880, "route idle_timeout");

    let (_, body, took) = stream_result(&r, "/off/stream?count=3&interval_ms=700").await;
    assert_eq!(body, Ok(24), "idle_timeout: 0 lets a slow stream (SSE) live");
    assert!(took >= ms(1350));

    let (_, body, took) = stream_result(&r, "/capped/stream?count=3&interval_ms=900").await;
    assert!(body.is_err(), "a route idle_timeout above timeout_idle is capped at timeout_idle: {body:?}");
    assert_between(took, 450, 880, "capped idle");
}

#[tokio::test]
async fn upstream_failures_map_to_502_503() {
    init();
    // 503: nothing listens there.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    // 502: accepts, then resets without answering.
    let resetter = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let reset_addr = resetter.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            if let Ok((mut s, _)) = resetter.accept().await {
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await;
                drop(s);
            }
        }
    });
    let (r, _d) = start(&format!(
        "routes:\n - {{from: https://refused.test, to: http://{closed}}}\n - {{from: https://reset.test, to: http://{reset_addr}}}\n"
    ))
    .await;
    let (status, body) = https_get(&r, "refused.test", "/").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("upstream unreachable"), "{body}");
    let (status, body) = https_get(&r, "reset.test", "/").await;
    assert_eq!(status, 502, "{body}");
    let m = metrics(&r).await;
    assert!(m.contains("outcome=\"connect_failure\""), "{m}");
    assert!(m.contains("outcome=\"reset\""), "{m}");
}

#[tokio::test]
async fn upstream_connect_timeout_is_10s_and_includes_the_tls_handshake() {
    init();
    // Accepts TCP but never answers the TLS ClientHello.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = silent.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            held.push(s);
        }
    });
    let (r, _d) = start(&format!("routes:\n - {{from: https://a.test, to: https://{addr}, timeout: 60s}}\n")).await;
    let t = Instant::now();
    let (status, body) = https_get(&r, "a.test", "/").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("timed out"), "{body}");
    assert_between(t.elapsed(), 9_800, 12_500, "upstream connect timeout");
}
