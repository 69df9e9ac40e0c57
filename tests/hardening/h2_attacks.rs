//! HTTP/2 attacks with raw frames: silent clients, responses never read (flow control),
//! rapid cancels (paced and classic), CONTINUATION floods, HPACK bombs, PING and SETTINGS
//! floods, and CONNECT.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use portcullis::server::Running;
use tokio::io::AsyncWriteExt;

use crate::common::{self, ms};
use crate::h2raw::{self, hpack, Raw};
use crate::support::{self, Recorder, Rss};

async fn proxy(globals: &str, up: SocketAddr) -> (Running, tempfile::TempDir) {
    common::start(&format!(
        "{globals}\nroutes:\n - {{name: a, from: https://a.test, to: http://{up}}}\n - {{name: local, from: https://localhost, to: http://{up}}}\n"
    ))
    .await
}

async fn raw_h2(r: &Running, settings: &[(u16, u32)]) -> Raw<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let tls = support::tls(r, b"h2").await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    Raw::handshake(tls, settings).await
}

/// An ordinary HTTP/2 GET on a new connection answers 200.
async fn h2_get_ok(r: &Running, what: &str) {
    let got = tokio::time::timeout(Duration::from_secs(10), async {
        let mut c = common::h2_tls(r.main, "localhost", &[common::default_cert(r)]).await;
        common::text(c.send_request(common::get2("a.test", "/")).await.unwrap()).await
    })
    .await;
    assert!(matches!(got, Ok((200, _))), "{what}: an HTTP/2 GET on a new connection: {got:?}");
}

/// Asserts the server sent GOAWAY and closed the connection within `bound` of `since`.
async fn assert_goaway_and_close<S>(c: &mut Raw<S>, since: Instant, bound: Duration, what: &str)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + 'static,
{
    let closed = c.wait_closed((since + bound + ms(1000)).saturating_duration_since(Instant::now())).await;
    let took = closed.map(|t| t - since);
    assert!(c.goaway().is_some(), "{what}: no GOAWAY; seen {:?}, closed after {took:?}", c.seen);
    assert!(
        took.is_some_and(|t| t <= bound),
        "{what}: the server did not close the connection within {bound:?} (closed after {took:?}); seen {:?}",
        c.seen
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_idle_close_is_bounded_when_the_client_never_acks_the_goaway_ping() {
    let up = common::upstream("u").await;
    let (r, _d) = proxy("timeout_idle: 2s", up).await;
    let mut c = raw_h2(&r, &[]).await;
    let t0 = Instant::now();
    // Silent from here on: no PING ACK, nothing.
    assert_goaway_and_close(&mut c, t0, ms(5000), "idle HTTP/2 client that never answers").await;
    support::normal_client_ok(&r, "a.test", "after the idle close").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_idle_close_is_bounded_for_a_header_block_that_never_ends() {
    let up = common::upstream("u").await;
    let (r, _d) = proxy("timeout_idle: 2s", up).await;
    let mut c = raw_h2(&r, &[]).await;
    c.send(&h2raw::headers(1, &h2raw::get_block("a.test", "/"), true, false)).await.unwrap();
    let t0 = Instant::now();
    assert_goaway_and_close(&mut c, t0, ms(5000), "HEADERS without END_HEADERS, then silence").await;
    support::normal_client_ok(&r, "a.test", "after the close").await;
}

/// A 64 MiB response on a stream whose window the client keeps at 0: the proxy must give up
/// on the stream (RST_STREAM) within `bound` of the response headers.
async fn unread_h2_response_is_reset(globals: &str, bound: Duration) {
    unread_h2_path_is_reset(globals, "/bytes?n=67108864", bound).await;
}

/// As [`unread_h2_response_is_reset`] for any path.
async fn unread_h2_path_is_reset(globals: &str, path: &str, bound: Duration) {
    let up = common::upstream("u").await;
    let (r, _d) = proxy(globals, up).await;
    let rss = Rss::now();
    let mut c = raw_h2(&r, &[(h2raw::SETTINGS_INITIAL_WINDOW_SIZE, 0)]).await;
    c.send(&h2raw::headers(1, &h2raw::get_block("a.test", path), true, true)).await.unwrap();
    let head = c.wait_for(ms(5000), |f| f.kind == h2raw::HEADERS && f.stream == 1).await;
    let t0 = Instant::now();
    let head = head.unwrap_or_else(|| panic!("no response HEADERS: {:?} {:?}", c.seen, c.closed));
    assert_eq!(head.status(), Some(200), "{head:?}");
    let rst = c.wait_for(bound + ms(1000), |f| f.kind == h2raw::RST_STREAM && f.stream == 1).await;
    let took = t0.elapsed();
    let closed = c.closed.as_ref().map(|(t, e)| (*t - t0, e.clone()));
    assert!(
        rst.is_some() || closed.is_some(),
        "{globals}: no RST_STREAM for the unread response within {took:?}; seen {:?}",
        c.seen
    );
    assert!(took <= bound, "{globals}: RST_STREAM came only after {took:?} (bound {bound:?}); closed {closed:?}");
    rss.check(200, "unread HTTP/2 response");
    h2_get_ok(&r, globals).await;
    support::normal_client_ok(&r, "a.test", globals).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_response_with_zero_window_is_reset_by_the_stream_idle_timeout() {
    unread_h2_response_is_reset("timeout_idle: 2s", ms(5000)).await;
}

/// A response small enough to be one chunk: the body has ended as far as it knows, but hyper
/// still holds that chunk for the client's window. It is reset all the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_short_response_with_zero_window_is_reset_too() {
    unread_h2_path_is_reset("timeout_idle: 2s", "/bytes?n=1000", ms(5000)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_response_with_zero_window_is_reset_by_timeout_write() {
    unread_h2_response_is_reset("timeout_read: 1s\ntimeout_write: 2s\ntimeout_idle: 30s", ms(5000)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_paced_rapid_cancel_gets_enhance_your_calm() {
    let _serial = support::SERIAL.lock().await;
    let rec = Recorder::start(ms(2000)).await;
    let (r, _d) = proxy("", rec.addr).await;
    let rss = Rss::now();
    let mut c = raw_h2(&r, &[]).await;
    let block = h2raw::get_block("a.test", "/delay?ms=2000");
    let (mut next, mut sent) = (1u32, 0u32);
    let t = Instant::now();
    while sent < 1000 && c.closed.is_none() && c.goaway().is_none() && t.elapsed() < ms(20_000) {
        let batch: Vec<u32> = (0..20).map(|i| next + 2 * i).collect();
        next += 40;
        let heads: Vec<u8> = batch.iter().flat_map(|s| h2raw::headers(*s, &block, true, true)).collect();
        if c.send(&heads).await.is_err() {
            break;
        }
        // Long enough for the proxy to accept the streams and start forwarding them.
        tokio::time::sleep(ms(25)).await;
        let rsts: Vec<u8> = batch.iter().flat_map(|s| h2raw::rst_stream(*s, h2raw::CANCEL)).collect();
        if c.send(&rsts).await.is_err() {
            break;
        }
        sent += 20;
        tokio::time::sleep(ms(10)).await;
        c.drain();
    }
    let since = Instant::now();
    let _ = c.wait_closed(ms(5000)).await;
    let goaway = c.goaway();
    let upstream = rec.heads();
    println!("paced rapid cancel: {sent} streams cancelled, GOAWAY {goaway:?}, {upstream} reached the upstream");
    assert_eq!(
        goaway.map(|g| g.1),
        Some(h2raw::ENHANCE_YOUR_CALM),
        "GOAWAY(ENHANCE_YOUR_CALM) after {sent} cancelled streams; got {goaway:?}, closed {:?}, {upstream} reached the upstream",
        c.closed
    );
    assert!(c.closed.is_some_and(|(at, _)| at <= since + ms(5000)), "connection closed after the GOAWAY");
    assert!(upstream < 400, "{upstream} requests reached the upstream");
    let m = common::metrics(&r).await;
    assert!(
        support::metric_sum(&m, "portcullis_http_requests_total", &["code=\"499\""]) > 0.0,
        "cancelled requests are counted as 499:\n{m}"
    );
    rss.check(150, "paced rapid cancel");
    support::normal_client_ok(&r, "a.test", "after the rapid cancels").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_classic_rapid_reset_gets_goaway() {
    let _serial = support::SERIAL.lock().await;
    let rec = Recorder::start(ms(2000)).await;
    let (r, _d) = proxy("", rec.addr).await;
    let rss = Rss::now();
    let mut c = raw_h2(&r, &[]).await;
    let block = h2raw::get_block("a.test", "/delay?ms=2000");
    let t0 = Instant::now();
    let mut stream = 1u32;
    'flood: for _ in 0..50 {
        let mut chunk = Vec::new();
        for _ in 0..200 {
            chunk.extend(h2raw::headers(stream, &block, true, true));
            chunk.extend(h2raw::rst_stream(stream, h2raw::CANCEL));
            stream += 2;
        }
        match tokio::time::timeout(ms(3000), c.send(&chunk)).await {
            Ok(Ok(())) => {}
            _ => break 'flood,
        }
        c.drain();
        if c.closed.is_some() {
            break;
        }
    }
    let _ = c.wait_closed(ms(5000)).await;
    let took = c.closed.as_ref().map(|(t, _)| *t - t0);
    assert_eq!(c.goaway().map(|g| g.1), Some(h2raw::ENHANCE_YOUR_CALM), "{:?}", c.goaway());
    assert!(took.is_some_and(|t| t < ms(15_000)), "closed after {took:?}");
    assert!(rec.heads() < 1000, "{} reached the upstream", rec.heads());
    rss.check(150, "classic rapid reset");
    support::normal_client_ok(&r, "a.test", "after the rapid reset").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_continuation_flood_is_cut() {
    let _serial = support::SERIAL.lock().await;
    let rec = Recorder::start(Duration::ZERO).await;
    let (r, _d) = proxy("", rec.addr).await;
    let rss = Rss::now();
    let mut c = raw_h2(&r, &[]).await;
    c.send(&h2raw::headers(1, &h2raw::get_block("a.test", "/"), true, false)).await.unwrap();
    let mut piece = Vec::new();
    let mut i = 0;
    while piece.len() < 16_000 {
        hpack::literal(&mut piece, format!("x-flood-{i}").as_bytes(), &[b'v'; 90]);
        i += 1;
    }
    let frame = h2raw::continuation(1, &piece, false);
    let t0 = Instant::now();
    let mut frames = 0;
    while frames < 4000 && c.closed.is_none() && t0.elapsed() < ms(10_000) {
        let chunk: Vec<u8> = std::iter::repeat_n(frame.as_slice(), 8).flatten().copied().collect();
        match tokio::time::timeout(ms(2000), c.send(&chunk)).await {
            Ok(Ok(())) => frames += 8,
            _ => break,
        }
        c.drain();
    }
    let closed = c.wait_closed(ms(5000)).await.map(|t| t - t0);
    assert!(closed.is_some(), "still open after {frames} CONTINUATION frames ({} MiB)", frames * 16 / 1024);
    assert!(frames < 4000, "the server read all {frames} frames");
    assert_eq!(rec.heads(), 0, "nothing reaches the upstream");
    rss.check(100, "CONTINUATION flood");
    support::normal_client_ok(&r, "a.test", "after the CONTINUATION flood").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_hpack_bomb_is_refused() {
    let _serial = support::SERIAL.lock().await;
    let rec = Recorder::start(Duration::ZERO).await;
    let (r, _d) = proxy("", rec.addr).await;
    let rss = Rss::now();
    let mut c = raw_h2(&r, &[]).await;
    // A 4,000-byte entry in the dynamic table (index 62), then one-byte references to it:
    // each block decodes to ~64 MB against a 64 KiB max_header_list_size.
    let refs = |out: &mut Vec<u8>, n: usize| {
        for _ in 0..n {
            hpack::indexed(out, 62);
        }
    };
    let mut answered = 0;
    for n in 0..10u32 {
        let stream = 1 + 2 * n;
        let mut first = h2raw::get_block("a.test", "/");
        if n == 0 {
            hpack::literal_indexed(&mut first, b"x-bomb", &[b'b'; 4000]);
        }
        let fill = 16_000 - first.len();
        refs(&mut first, fill);
        let mut more = Vec::new();
        refs(&mut more, 16_000);
        let mut bytes = h2raw::headers(stream, &first, true, false);
        bytes.extend(h2raw::continuation(stream, &more, false));
        bytes.extend(h2raw::continuation(stream, &more, false));
        bytes.extend(h2raw::continuation(stream, &more, true));
        if tokio::time::timeout(ms(3000), c.send(&bytes)).await.map_or(true, |r| r.is_err()) {
            break;
        }
        let reply =
            c.wait_for(ms(3000), |f| f.stream == stream && matches!(f.kind, h2raw::HEADERS | h2raw::RST_STREAM)).await;
        match reply {
            Some(f) => {
                assert!(f.status() != Some(200), "a bombed request was answered 200: {f:?}");
                answered += 1;
            }
            None => break,
        }
    }
    let _ = c.wait_closed(ms(500)).await;
    assert!(answered == 10 || c.closed.is_some(), "every bomb refused or the connection closed: {:?}", c.seen);
    assert_eq!(rec.heads(), 0, "no bombed request reaches the upstream");
    rss.check(100, "HPACK bomb");
    support::normal_client_ok(&r, "a.test", "after the HPACK bomb").await;
}

/// Writes `frames` copies of `frame` without ever reading; returns how many were written
/// before the server stopped reading or closed (each write bounded in time).
async fn flood_without_reading(r: &Running, frame: &[u8], frames: usize) -> (usize, u64, bool) {
    let mut tls = support::tls(r, b"h2").await;
    let mut hello = h2raw::PREFACE.to_vec();
    hello.extend(h2raw::settings(&[]));
    hello.extend(h2raw::settings_ack());
    tls.write_all(&hello).await.unwrap();
    let per_chunk = 1000;
    let chunk: Vec<u8> = std::iter::repeat_n(frame, per_chunk).flatten().copied().collect();
    let mut written = 0;
    let t0 = Instant::now();
    while written < frames && t0.elapsed() < ms(10_000) {
        match tokio::time::timeout(ms(2000), tls.write_all(&chunk)).await {
            Ok(Ok(())) => written += per_chunk,
            _ => break,
        }
    }
    // Now read what came back, bounded.
    let (got, ended) = support::read_to_end_within(&mut tls, ms(2000)).await;
    (written, got, ended)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_ping_flood_is_bounded() {
    let _serial = support::SERIAL.lock().await;
    let up = common::upstream("u").await;
    let (r, _d) = proxy("", up).await;
    let rss = Rss::now();
    let (written, got, ended) = flood_without_reading(&r, &h2raw::ping(*b"flooding", false), 100_000).await;
    // Each reply is 17 bytes: the server may answer every PING it read, never more.
    assert!(got <= (written as u64 + 10) * 17 + 4096, "{got} bytes back for {written} PINGs");
    println!("PING flood: {written} written, {got} bytes back, closed: {ended}");
    rss.check(100, "PING flood");
    support::normal_client_ok(&r, "a.test", "after the PING flood").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_settings_flood_is_bounded() {
    let _serial = support::SERIAL.lock().await;
    let up = common::upstream("u").await;
    let (r, _d) = proxy("", up).await;
    let rss = Rss::now();
    let frame = h2raw::settings(&[(h2raw::SETTINGS_ENABLE_PUSH, 0), (h2raw::SETTINGS_HEADER_TABLE_SIZE, 4096)]);
    let (written, got, ended) = flood_without_reading(&r, &frame, 100_000).await;
    assert!(got <= (written as u64 + 10) * 9 + 4096, "{got} bytes back for {written} SETTINGS");
    println!("SETTINGS flood: {written} written, {got} bytes back, closed: {ended}");
    rss.check(100, "SETTINGS flood");
    support::normal_client_ok(&r, "a.test", "after the SETTINGS flood").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_connect_without_a_tunnel_route_is_refused_404() {
    let rec = Recorder::start(Duration::ZERO).await;
    let (r, _d) = common::start(&format!(
        "routes:\n - {{name: raw, from: https://raw.test, to: http://{}}}\n - {{name: local, from: https://localhost, to: http://{}}}\n",
        rec.addr, rec.addr
    ))
    .await;
    let tls = support::tls(&r, b"h2").await;
    let (mut client, conn) = h2::client::handshake(tls).await.unwrap();
    tokio::spawn(conn);
    let req = http::Request::builder().method(http::Method::CONNECT).uri("raw.test:443").body(()).unwrap();
    let (resp, _body) = client.send_request(req, false).unwrap();
    let resp = tokio::time::timeout(ms(5000), resp).await.expect("an answer to CONNECT");
    assert_eq!(
        resp.as_ref().map(http::Response::status).ok(),
        Some(http::StatusCode::NOT_FOUND),
        "HTTP/2 CONNECT to a host with web routes only (CONNECT finds tcp+ routes): {resp:?}"
    );
    tokio::time::sleep(ms(200)).await;
    assert_eq!(rec.conns.lock().unwrap().len(), 0, "the upstream must not be contacted: {}", rec.dump());
    // The route itself works.
    assert_eq!(common::https_get(&r, "raw.test", "/").await.0, 200);
}
