//! HTTP/1.1 attacks with raw bytes over TLS and plain TCP: responses never read, CONNECT and
//! stray upgrades, request smuggling, oversized heads, malformed chunked bodies, slowloris.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use portcullis::server::Running;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::common::{self, ms};
use crate::support::{self, Recorder, Reply, Rss};

/// The routes of these tests: `a.test` (named `a`), `raw.test`, a WebSocket route `ws.test`
/// and `localhost`, all to `up`.
fn routes(up: SocketAddr) -> String {
    format!(
        "routes:
 - {{name: a, from: https://a.test, to: http://{up}}}
 - {{name: raw, from: https://raw.test, to: http://{up}}}
 - {{name: ws, from: https://ws.test, to: http://{up}, allow_websockets: true}}
 - {{name: local, from: https://localhost, to: http://{up}}}
"
    )
}

async fn tls_proxy(globals: &str, up: SocketAddr) -> (Running, tempfile::TempDir) {
    common::start(&format!("{globals}\n{}", routes(up))).await
}

async fn plain_proxy(globals: &str, up: SocketAddr) -> (Running, tempfile::TempDir) {
    common::start(&format!("insecure_server: true\n{globals}\n{}", routes(up))).await
}

#[derive(Clone, Copy, Debug)]
enum Via {
    Tls,
    Plain,
}

async fn send(r: &Running, via: Via, req: &[u8]) -> Reply {
    match via {
        Via::Tls => support::tls_exchange(r, req).await,
        Via::Plain => support::plain_exchange(r.main, req).await,
    }
}

/// [`send`], writing the request 16 KiB at a time with a pause between the writes.
async fn send_in_pieces(r: &Running, via: Via, req: &[u8]) -> Reply {
    async fn go<S: AsyncRead + AsyncWrite + Unpin>(mut s: S, req: &[u8]) -> Reply {
        let (head, last) = req.split_at(req.len() - 4);
        for piece in head.chunks(16 * 1024) {
            if s.write_all(piece).await.is_err() || s.flush().await.is_err() {
                break;
            }
            tokio::time::sleep(ms(5)).await;
        }
        support::exchange(&mut s, last, Duration::from_secs(5)).await
    }
    match via {
        Via::Tls => go(support::tls(r, b"http/1.1").await, req).await,
        Via::Plain => go(tokio::net::TcpStream::connect(r.main).await.unwrap(), req).await,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h1_response_never_read_is_closed_within_timeout_idle() {
    let _serial = support::SERIAL.lock().await;
    let up = common::upstream("u").await;
    let (r, _d) = tls_proxy("timeout_idle: 2s", up).await;
    let rss = Rss::now();
    let mut s = support::tls(&r, b"http/1.1").await;
    s.write_all(b"GET /bytes?n=67108864 HTTP/1.1\r\nHost: a.test\r\n\r\n").await.unwrap();
    s.flush().await.unwrap();
    // Read nothing for timeout_idle + 3 s; by then the server must have given up.
    tokio::time::sleep(ms(5000)).await;
    support::normal_client_ok(&r, "a.test", "while a response is stuck").await;
    let (got, ended) = support::read_to_end_within(&mut s, ms(10_000)).await;
    assert!(ended, "the connection was still open 15 s after the request ({got} bytes read)");
    assert!(got < 32 << 20, "the server kept sending: {got} bytes of 64 MiB were readable after the deadline");
    rss.check(150, "unread HTTP/1.1 response");
    support::normal_client_ok(&r, "a.test", "after").await;
}

/// A client that reads slowly but steadily is not taken for one that stopped: progress is
/// counted from the writes to it, not from the body frames (an upstream chunk can take
/// longer than the idle timeout to drain at this pace).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h1_slow_but_steady_reader_gets_the_whole_response() {
    let up = common::upstream("u").await;
    let (r, _d) = tls_proxy("timeout_idle: 1s", up).await;
    let mut s = support::tls(&r, b"http/1.1").await;
    let n: usize = 2 << 20;
    s.write_all(format!("GET /bytes?n={n} HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let started = Instant::now();
    let mut got = 0usize;
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        // About 160 KB/s: 13 s for 2 MiB, every read within the 1 s idle timeout.
        tokio::time::sleep(ms(100)).await;
        match tokio::time::timeout(ms(5000), s.read(&mut buf)).await {
            Ok(Ok(0)) => break,
            Ok(Ok(k)) => got += k,
            Ok(Err(e)) => panic!("read failed after {got} bytes, {:?}: {e}", started.elapsed()),
            Err(elapsed) => panic!("nothing to read for 5 s after {got} bytes ({elapsed})"),
        }
        assert!(started.elapsed() < Duration::from_secs(60), "still reading after 60 s ({got} bytes)");
    }
    assert!(got > n, "the response was cut after {got} bytes ({:?}); {n} of body expected", started.elapsed());
}

/// HEAD requests answered by the proxy itself (a 404 has a body hyper never sends for HEAD)
/// are complete responses: many of them on one keep-alive connection are served, not taken
/// for cancellations (which once made the premature-reset rule close the connection).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_heads_on_one_keep_alive_connection_are_all_served() {
    let up = common::upstream("u").await;
    let (r, _d) = tls_proxy("", up).await;
    let mut c = common::h1_tls(r.main, "localhost", &[common::default_cert(&r)]).await;
    for i in 0..300 {
        let req = http::Request::head("/").header("host", "nowhere.test").body(common::empty()).unwrap();
        c.ready().await.unwrap_or_else(|e| panic!("the connection closed before HEAD #{i}: {e}"));
        let resp = c.send_request(req).await.unwrap_or_else(|e| panic!("HEAD #{i}: {e}"));
        assert_eq!(resp.status(), 404, "HEAD #{i}");
    }
    let m = common::metrics(&r).await;
    let cancelled = support::metric_sum(&m, "portcullis_http_requests_total", &["code=\"499\""]);
    assert!(cancelled < 0.5, "no 499s, got {cancelled}:\n{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_and_stray_upgrades_are_refused() {
    let rec = Recorder::start(Duration::ZERO).await;
    let (tls, _d1) = tls_proxy("", rec.addr).await;
    let (plain, _d2) = plain_proxy("", rec.addr).await;
    let connect = b"CONNECT raw.test:443 HTTP/1.1\r\nHost: raw.test:443\r\n\r\n";
    let upgrade = b"GET /ws HTTP/1.1\r\nHost: ws.test\r\nConnection: upgrade\r\nUpgrade: foo\r\n\r\n";
    let mut failures = Vec::new();
    for (r, via) in [(&tls, Via::Tls), (&plain, Via::Plain)] {
        // A CONNECT finds only tcp+ routes: none here, so 404, and nothing is relayed.
        let reply = send(r, via, connect).await;
        if reply.status != Some(404) {
            failures.push(format!("{via:?} CONNECT: expected 404, got {:?}: {}", reply.status, reply.text()));
        }
        let reply = send(r, via, upgrade).await;
        if reply.status != Some(403) {
            failures.push(format!("{via:?} Upgrade: foo: expected 403, got {:?}: {}", reply.status, reply.text()));
        }
    }
    tokio::time::sleep(ms(200)).await;
    let contacted = rec.conns.lock().unwrap().len();
    if contacted != 0 {
        failures.push(format!("the upstream was contacted {contacted} time(s): {:?}", rec.dump()));
    }
    assert!(failures.is_empty(), "{failures:#?}");
    // The routes work.
    assert_eq!(send(&plain, Via::Plain, b"GET / HTTP/1.1\r\nHost: raw.test\r\n\r\n").await.status, Some(200));
    support::normal_client_ok(&tls, "raw.test", "CONNECT").await;
}

const SMUGGLED: &str = "GET /smuggled HTTP/1.1\r\nHost: a.test\r\n\r\n";

fn chunk(data: &str) -> String {
    format!("{:x}\r\n{data}\r\n", data.len())
}

struct Case {
    name: &'static str,
    request: String,
    /// Bodies the upstream may receive if the proxy forwards the request; empty: it must not.
    bodies: Vec<String>,
}

fn case(name: &'static str, headers: &str, body: &str, bodies: &[&str]) -> Case {
    Case {
        name,
        request: format!("POST /probe HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n{headers}\r\n{body}"),
        bodies: bodies.iter().map(|b| (*b).to_owned()).collect(),
    }
}

fn smuggling_cases() -> Vec<Case> {
    let cl_te_body = format!("0\r\n\r\n{SMUGGLED}");
    let te_cl_body = format!("{}0\r\n\r\n", chunk(SMUGGLED));
    let hello = format!("{}0\r\n\r\n", chunk("hello"));
    vec![
        case(
            "CL.TE",
            &format!("Content-Length: {}\r\nTransfer-Encoding: chunked\r\n", cl_te_body.len()),
            &cl_te_body,
            &["", &cl_te_body],
        ),
        case(
            "TE.CL",
            "Transfer-Encoding: chunked\r\nContent-Length: 3\r\n",
            &te_cl_body,
            &[SMUGGLED, &te_cl_body[..3]],
        ),
        case("TE xchunked", "Transfer-Encoding: xchunked\r\n", &hello, &[]),
        case("TE xchunked + CL", "Content-Length: 5\r\nTransfer-Encoding: xchunked\r\n", "hello", &[]),
        case("TE leading space in value", "Transfer-Encoding:  chunked\r\n", &hello, &["hello"]),
        case(
            "TE line with leading space (obs-fold)",
            " Transfer-Encoding: chunked\r\nContent-Length: 5\r\n",
            "hello",
            &["hello"],
        ),
        case("TE chunked, identity", "Transfer-Encoding: chunked, identity\r\n", &hello, &[]),
        case("TE tab", "Transfer-Encoding:\tchunked\r\n", &hello, &["hello"]),
        case("TE space before colon", "Transfer-Encoding : chunked\r\n", &hello, &[]),
        case("TE twice", "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n", &hello, &["hello"]),
        case("TE chunked + TE identity", "Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n", &hello, &[]),
        case("two differing Content-Lengths", "Content-Length: 5\r\nContent-Length: 6\r\n", "hello!", &[]),
        case("two equal Content-Lengths", "Content-Length: 5\r\nContent-Length: 5\r\n", "hello", &["hello"]),
        case("Content-Length list", "Content-Length: 5, 5\r\n", "hello", &["hello"]),
        case("chunk-size overflow", "Transfer-Encoding: chunked\r\n", "fffffffffffffffff1\r\nhello\r\n0\r\n\r\n", &[]),
        case("bare LF in chunks", "Transfer-Encoding: chunked\r\n", "5\nhello\n0\n\n", &[]),
        case("obs-fold", "X-Folded: a\r\n b\r\nContent-Length: 5\r\n", "hello", &["hello"]),
        Case {
            name: "bare LF in the head",
            request: "POST /probe HTTP/1.1\nHost: a.test\nConnection: close\nContent-Length: 5\n\nhello".into(),
            bodies: vec!["hello".into()],
        },
    ]
}

/// Sends `case` and checks the safe outcome: refused (400, or closed without an answer) with
/// nothing reaching the upstream, or exactly one cleanly framed request at the upstream with
/// an allowed body and nothing smuggled. Returns a description of the outcome.
async fn run_case(r: &Running, via: Via, rec: &Recorder, c: &Case) -> Result<String, String> {
    let before = rec.requests().len();
    let heads_before = rec.heads();
    let reply = send(r, via, c.request.as_bytes()).await;
    tokio::time::sleep(ms(250)).await;
    let new: Vec<_> = rec.requests()[before..].to_vec();
    let heads = rec.heads() - heads_before;
    let refused = reply.status == Some(400) || (reply.status.is_none() && reply.closed);
    let what = format!("{via:?} {}: client got {:?}, upstream got {new:?}", c.name, reply.status);
    if rec.saw_garbage() {
        return Err(format!("{what}: the upstream received ambiguous bytes: {}", rec.dump()));
    }
    if new.iter().any(|q| q.path.contains("smuggled")) {
        return Err(format!("{what}: SMUGGLED"));
    }
    if refused {
        return if heads == 0 {
            Ok(format!("{what}: refused"))
        } else {
            Err(format!("{what}: refused, but forwarded"))
        };
    }
    if c.bodies.is_empty() {
        return Err(format!("{what}: must be refused with 400; reply {}", reply.text()));
    }
    match new.as_slice() {
        [one]
            if one.path == "/probe"
                && c.bodies.iter().any(|b| b.as_bytes() == one.body)
                && reply.status == Some(200) =>
        {
            Ok(format!("{what}: forwarded once"))
        }
        _ => Err(format!("{what}: expected one request with a body in {:?}; reply {}", c.bodies, reply.text())),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smuggling_variants_are_refused_or_reframed() {
    let rec = Recorder::start(Duration::ZERO).await;
    let (tls, _d1) = tls_proxy("", rec.addr).await;
    let (plain, _d2) = plain_proxy("", rec.addr).await;
    let mut failures = Vec::new();
    for (r, via) in [(&tls, Via::Tls), (&plain, Via::Plain)] {
        for c in smuggling_cases() {
            match run_case(r, via, &rec, &c).await {
                Ok(o) => println!("{o}"),
                Err(e) => failures.push(e),
            }
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
    support::normal_client_ok(&tls, "a.test", "after the smuggling attempts").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_smuggling_guards() {
    let rec = Recorder::start(Duration::ZERO).await;
    let (tls, _d1) = tls_proxy("", rec.addr).await;
    let (plain, _d2) = plain_proxy("", rec.addr).await;
    let mut failures = Vec::new();
    for (r, via) in [(&tls, Via::Tls), (&plain, Via::Plain)] {
        for c in [
            Case {
                name: "two Host headers",
                request: "GET /probe HTTP/1.1\r\nHost: a.test\r\nHost: raw.test\r\nConnection: close\r\n\r\n".into(),
                bodies: vec![],
            },
            case(
                "Transfer_Encoding (underscore)",
                "Transfer_Encoding: chunked\r\n",
                &format!("{}0\r\n\r\n", chunk("hello")),
                &[],
            ),
            case("Content_Length (underscore)", "Content_Length: 5\r\n", "hello", &[]),
        ] {
            if let Err(e) = run_case(r, via, &rec, &c).await {
                failures.push(e);
            }
        }
        // Leading zeros: one unambiguous length upstream.
        let before = rec.requests().len();
        let reply = send(r, via, b"POST /probe HTTP/1.1\r\nHost: a.test\r\nContent-Length: 0004\r\n\r\nabcd").await;
        let got = rec.wait_requests(before + 1, ms(2000)).await;
        match got.get(before) {
            Some(q) if q.header("content-length") == ["4"] && q.body == b"abcd" && reply.status == Some(200) => {}
            other => failures.push(format!(
                "{via:?} Content-Length: 0004: client {:?}, upstream {other:?} (expected content-length: 4)",
                reply.status
            )),
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
    support::normal_client_ok(&tls, "a.test", "after the header guards").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_heads_get_431_and_never_reach_the_upstream() {
    let rec = Recorder::start(Duration::ZERO).await;
    let (tls, _d1) = tls_proxy("", rec.addr).await;
    let (plain, _d2) = plain_proxy("", rec.addr).await;
    let long = "A".repeat(70 * 1024);
    let method = format!("{long} / HTTP/1.1\r\nHost: a.test\r\n\r\n");
    let target = format!("GET /{} HTTP/1.1\r\nHost: a.test\r\n\r\n", "a".repeat(70 * 1024));
    let header = format!("GET / HTTP/1.1\r\nHost: a.test\r\nX-Long: {long}\r\n\r\n");
    let mut failures = Vec::new();
    for (r, via) in [(&tls, Via::Tls), (&plain, Via::Plain)] {
        // How the reads fall decides which check trips first, so each head is sent several
        // times, in one write and in 16 KiB writes.
        for (name, req, pieces) in [
            ("70 KiB method", &method, false),
            ("70 KiB target", &target, false),
            ("70 KiB header", &header, false),
            ("70 KiB method", &method, true),
            ("70 KiB target", &target, true),
        ]
        .into_iter()
        .flat_map(|c| std::iter::repeat_n(c, 6))
        {
            let reply =
                if pieces { send_in_pieces(r, via, req.as_bytes()).await } else { send(r, via, req.as_bytes()).await };
            // hyper answers a request target over 64 KiB with its own 414 when the whole line
            // is buffered before its size limit trips (it depends on how the reads fall):
            // also a refusal that never reaches the upstream.
            let ok = reply.status == Some(431)
                || (name == "70 KiB target" && reply.status == Some(414))
                || (reply.status.is_none() && reply.closed);
            if !ok {
                failures.push(format!(
                    "{via:?} {name} (16 KiB writes: {pieces}): expected 431, got {:?} (closed {}): {}",
                    reply.status,
                    reply.closed,
                    reply.text()
                ));
            }
        }
    }
    tokio::time::sleep(ms(200)).await;
    if rec.heads() != 0 {
        failures.push(format!("the upstream saw {} of them: {}", rec.heads(), rec.dump()));
    }
    assert!(failures.is_empty(), "{failures:#?}");
    support::normal_client_ok(&tls, "a.test", "after the oversized heads").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_chunked_bodies_get_400_and_do_not_blame_the_upstream() {
    let rec = Recorder::start(Duration::ZERO).await;
    let (tls, _d1) = tls_proxy("", rec.addr).await;
    let (plain, _d2) = plain_proxy("", rec.addr).await;
    let bodies = [
        ("chunk size overflow", "fffffffffffffffff1\r\nabcd\r\n0\r\n\r\n"),
        ("0x prefix", "0x4\r\nabcd\r\n0\r\n\r\n"),
        ("negative size", "-4\r\nabcd\r\n0\r\n\r\n"),
        ("bare LF", "4\nabcd\n0\n\n"),
        ("more data than the size", "4\r\nabcdefgh\r\n0\r\n\r\n"),
    ];
    let mut failures = Vec::new();
    for (r, via) in [(&tls, Via::Tls), (&plain, Via::Plain)] {
        for (name, body) in bodies {
            let req = format!("POST /probe HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n\r\n{body}");
            let reply = send(r, via, req.as_bytes()).await;
            if reply.status != Some(400) {
                failures.push(format!("{via:?} {name}: expected 400, got {:?}: {}", reply.status, reply.text()));
            }
        }
        let m = common::metrics(r).await;
        for outcome in ["reset", "connect_failure"] {
            let n = support::metric_sum(
                &m,
                "portcullis_upstream_requests_total",
                &["route=\"a\"", &format!("outcome=\"{outcome}\"")],
            );
            if n > 0.0 {
                failures.push(format!("{via:?}: the upstream was blamed: {n} outcome=\"{outcome}\""));
            }
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
    support::normal_client_ok(&tls, "a.test", "after the malformed bodies").await;
}

/// One slowloris connection: a head that never ends, a header line every 400 ms. Returns how
/// long the server took to close it after the first byte.
async fn loris<S: AsyncRead + AsyncWrite + Unpin>(mut s: S) -> Result<Duration, String> {
    s.write_all(b"GET / HTTP/1.1\r\nHost: a.test\r\n").await.map_err(|e| e.to_string())?;
    let t0 = Instant::now();
    let mut buf = [0u8; 256];
    loop {
        tokio::select! {
            r = s.read(&mut buf) => match r {
                Ok(0) | Err(_) => return Ok(t0.elapsed()),
                Ok(n) => return Err(format!("an answer to an incomplete head: {:?}", String::from_utf8_lossy(&buf[..n]))),
            },
            () = tokio::time::sleep(ms(400)) => {
                if t0.elapsed() > ms(15_000) {
                    return Err("still open after 15 s".into());
                }
                let _ = s.write_all(b"X-Slow: a\r\n").await;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_connections_are_closed_by_timeout_read() {
    let _serial = support::SERIAL.lock().await;
    let limit = support::raise_nofile();
    // Each connection costs two descriptors here (client and server side).
    let n = 2000usize.min((limit.saturating_sub(300) / 2) as usize);
    assert!(n >= 500, "RLIMIT_NOFILE {limit} is too low for this test");
    let up = common::upstream("u").await;
    let (r, _d) = tls_proxy("timeout_read: 2s", up).await;
    let (main, plain) = (r.main, r.http.expect("http-ingress"));
    let cfg = std::sync::Arc::new(common::client_config(&[common::default_cert(&r)], &[b"http/1.1"]));
    let rss = Rss::now();
    let gate = std::sync::Arc::new(tokio::sync::Semaphore::new(64));
    let mut tasks = tokio::task::JoinSet::new();
    let t0 = Instant::now();
    for i in 0..n {
        let (gate, cfg) = (gate.clone(), cfg.clone());
        tasks.spawn(async move {
            let permit = gate.acquire_owned().await.unwrap();
            let tcp = tokio::net::TcpStream::connect(if i % 2 == 0 { main } else { plain })
                .await
                .map_err(|e| format!("connect: {e}"))?;
            if i % 2 == 0 {
                let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
                let tls =
                    tokio_rustls::TlsConnector::from(cfg).connect(name, tcp).await.map_err(|e| format!("tls: {e}"))?;
                drop(permit);
                loris(tls).await
            } else {
                drop(permit);
                loris(tcp).await
            }
        });
    }
    // A normal client is served while they hang on.
    tokio::time::sleep(ms(1500)).await;
    support::normal_client_ok(&r, "a.test", "during slowloris").await;
    let peak = support::rss_kib();
    let mut worst = Duration::ZERO;
    let mut errors = Vec::new();
    let mut closed = 0;
    while let Some(res) = tasks.join_next().await {
        match res.unwrap() {
            Ok(d) => {
                closed += 1;
                worst = worst.max(d);
            }
            Err(e) => errors.push(e),
        }
    }
    let elapsed = t0.elapsed();
    println!("slowloris: {closed}/{n} closed, worst {worst:?}, all done in {elapsed:?}, peak RSS {peak} KiB");
    errors.truncate(5);
    assert_eq!(closed, n, "every slowloris connection is closed by the server: {errors:?}");
    assert!(worst <= ms(5000), "a slowloris connection lived {worst:?} after its first byte (timeout_read 2s)");
    rss.check(200, "slowloris");
    support::normal_client_ok(&r, "a.test", "after slowloris").await;
}
