//! TCP and UDP tunnels (`tcp+` and `udp+` routes) with real clients over real sockets and
//! TLS: CONNECT on HTTP/1.1 (hyper), HTTP/2 (hyper) and HTTP/3 (quinn + h3), CONNECT-UDP
//! with HTTP/3 datagrams and with HTTP/1.1 capsules; half-close, refusals, limits, policy
//! and reloads. Real programs through tunnels (ssh, dig, curl) are in tests/tunnel_programs.rs.

#![allow(clippy::disallowed_types, clippy::disallowed_methods)]

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use common::*;
use http::Request;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// A port nothing listens on.
async fn closed_port() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap()
}

fn config(tcp: SocketAddr, udp: SocketAddr, extra: &str) -> String {
    format!(
        "codec_type: http3
routes:
  - from: tcp+https://db.tunnel.test:5432
    to: tcp://{tcp}
{extra}
  - from: udp+https://dns.tunnel.test:53
    to: udp://{udp}
"
    )
}

/// Writes `data`, closes the write side, and reads until the tunnel's end of stream.
async fn round_trip<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(io: &mut S, data: &[u8]) -> Vec<u8> {
    io.write_all(data).await.unwrap();
    io.shutdown().await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), io.read_to_end(&mut out)).await.expect("end of stream").unwrap();
    out
}

async fn h1_connect(r: &portcullis::server::Running, authority: &str) -> http::Response<hyper::body::Incoming> {
    let mut c = h1_tls(r.main, "localhost", &[default_cert(r)]).await;
    c.send_request(Request::connect(authority).body(empty()).unwrap()).await.unwrap()
}

#[tokio::test]
async fn connect_over_http1_and_http2_carries_bytes_and_half_closes() {
    let (tcp, udp) = (tcp_echo().await, udp_echo().await);
    let (r, _d) = start(&config(tcp, udp, "")).await;
    let payload: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();

    let resp = h1_connect(&r, "db.tunnel.test:5432").await;
    assert_eq!(resp.status(), 200);
    let mut io = TokioIo::new(hyper::upgrade::on(resp).await.unwrap());
    assert_eq!(round_trip(&mut io, &payload).await, payload, "HTTP/1.1");

    let mut c = h2_tls(r.main, "localhost", &[default_cert(&r)]).await;
    let resp = c.send_request(Request::connect("db.tunnel.test:5432").body(empty()).unwrap()).await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut io = TokioIo::new(hyper::upgrade::on(resp).await.unwrap());
    assert_eq!(round_trip(&mut io, &payload).await, payload, "HTTP/2");

    // The tunnels ended: none active; their bytes counted both ways.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let m = metrics(&r).await;
    assert!(m.contains(r#"portcullis_tunnels_active{route="tcp+db.tunnel.test:5432",protocol="tcp"} 0"#), "{m}");
    let bytes = |dir: &str| {
        let line = format!(r#"portcullis_tunnel_bytes_total{{route="tcp+db.tunnel.test:5432",direction="{dir}"}} "#);
        m.lines().find_map(|l| l.strip_prefix(&line)).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
    };
    assert_eq!(bytes("to_upstream"), 2 * payload.len() as u64, "{m}");
    assert_eq!(bytes("to_client"), 2 * payload.len() as u64, "{m}");
}

#[tokio::test]
async fn connect_over_http3_carries_bytes_and_half_closes() {
    let (tcp, udp) = (tcp_echo().await, udp_echo().await);
    let (r, _d) = start(&config(tcp, udp, "")).await;
    let mut h3 = h3_connect(r.quic.unwrap(), "localhost", &[default_cert(&r)]).await.unwrap();
    let req = Request::connect("db.tunnel.test:5432").body(()).unwrap();
    let stream = h3.send.send_request(req).await.unwrap();
    let (mut send, mut recv) = stream.split();
    let resp = recv.recv_response().await.unwrap();
    assert_eq!(resp.status(), 200);
    let payload: Vec<u8> = (0..300_000u32).map(|i| (i % 241) as u8).collect();
    let writer = {
        let payload = payload.clone();
        tokio::spawn(async move {
            for chunk in payload.chunks(16 * 1024) {
                send.send_data(Bytes::copy_from_slice(chunk)).await.unwrap();
            }
            // The client's FIN: the upstream must see its end of stream and close its side.
            send.finish().await.unwrap();
        })
    };
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(mut chunk) = recv.recv_data().await.unwrap() {
            got.extend_from_slice(&chunk.copy_to_bytes(chunk.remaining()));
        }
    })
    .await
    .expect("the upstream's close arrives as the stream's end");
    writer.await.unwrap();
    assert_eq!(got, payload);
}

#[tokio::test]
async fn refusals_come_before_any_byte() {
    let (udp, dead) = (udp_echo().await, closed_port().await);
    let (r, _d) = start(&format!(
        "{}  - from: tcp+https://closed.tunnel.test:22
    to: tcp://{dead}
  - from: tcp+https://private.tunnel.test:22
    to: tcp://{dead}
    policy:
      deny:
        and:
          - source_ip: 127.0.0.0/8
",
        config(dead, udp, "")
    ))
    .await;
    // Upstream refused: 503 with the reason, no tunnel.
    let resp = h1_connect(&r, "closed.tunnel.test:22").await;
    assert_eq!(resp.status(), 503);
    let (_, text) = common::text(resp).await;
    assert!(text.contains("upstream unreachable: connection refused"), "{text}");
    assert!(!text.contains(&dead.to_string()), "the upstream's address stays in the log: {text}");
    // No route for that port, or that host: 404.
    assert_eq!(h1_connect(&r, "db.tunnel.test:5433").await.status(), 404);
    assert_eq!(h1_connect(&r, "nowhere.tunnel.test:5432").await.status(), 404);
    // A UDP route is no TCP route.
    assert_eq!(h1_connect(&r, "dns.tunnel.test:53").await.status(), 404);
    // The policy refuses: before the upstream is tried, naming the route; 401 for a client
    // without identity, as for HTTP (a client with an identity gets 403: below).
    let resp = h1_connect(&r, "private.tunnel.test:22").await;
    assert_eq!(resp.status(), 401);
    let (_, text) = common::text(resp).await;
    assert!(text.contains("tcp+private.tunnel.test:22"), "{text}");
    // An HTTP request never reaches a tunnel route.
    assert_eq!(https_get(&r, "db.tunnel.test", "/").await.0, 404);
}

#[tokio::test]
async fn a_silent_tunnel_ends_at_its_idle_timeout() {
    let (tcp, udp) = (tcp_echo().await, udp_echo().await);
    let (r, _d) = start(&config(tcp, udp, "    idle_timeout: 400ms")).await;
    let resp = h1_connect(&r, "db.tunnel.test:5432").await;
    assert_eq!(resp.status(), 200);
    let mut io = TokioIo::new(hyper::upgrade::on(resp).await.unwrap());
    // Traffic keeps it open past the timeout...
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        io.write_all(b"ping").await.unwrap();
        let mut buf = [0u8; 4];
        io.read_exact(&mut buf).await.unwrap();
    }
    // ...silence ends it.
    let started = tokio::time::Instant::now();
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(5), io.read(&mut buf)).await.expect("closed by the proxy");
    assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
    assert!(started.elapsed() >= Duration::from_millis(300), "{:?}", started.elapsed());
}

fn apply(r: &portcullis::server::Running, dir: &std::path::Path, yaml: &str) {
    let path = dir.join("portcullis.yaml");
    std::fs::write(&path, with_ports(yaml)).unwrap();
    let loaded = portcullis::source::file::FileSource::new(&path).load_with_env(&|_| None).unwrap();
    r.proxy.apply(loaded.config);
}

/// Whether the tunnel still echoes.
async fn echoes<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(io: &mut S) -> bool {
    if io.write_all(b"ping").await.is_err() {
        return false;
    }
    let mut buf = [0u8; 4];
    matches!(tokio::time::timeout(Duration::from_secs(3), io.read_exact(&mut buf)).await, Ok(Ok(_)))
}

/// Whether the proxy closes the tunnel within `limit`.
async fn closed_within<S: tokio::io::AsyncRead + Unpin>(io: &mut S, limit: Duration) -> bool {
    let mut buf = [0u8; 64];
    tokio::time::timeout(limit, async {
        loop {
            match io.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .is_ok()
}

#[tokio::test]
async fn policy_edits_and_route_deletion_close_open_tunnels() {
    let (tcp, udp) = (tcp_echo().await, udp_echo().await);
    let dir = tempfile::tempdir().unwrap();
    // Admitted from 127.0.0.0/8 unless a deny rule names the address.
    let with_policy = |deny: &str| {
        config(
            tcp,
            udp,
            &format!(
                "    policy:\n      - allow:\n          and:\n            - source_ip: 127.0.0.0/8\n      - deny:\n          and:\n            - source_ip: {deny}"
            ),
        )
    };
    let r = start_in(dir.path(), &with_policy("10.0.0.0/8")).await;
    let resp = h1_connect(&r, "db.tunnel.test:5432").await;
    assert_eq!(resp.status(), 200);
    let mut io = TokioIo::new(hyper::upgrade::on(resp).await.unwrap());
    assert!(echoes(&mut io).await);
    // An edit that still admits it: the tunnel lives.
    apply(&r, dir.path(), &with_policy("192.168.0.0/16"));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(echoes(&mut io).await, "still admitted");
    // An edit that no longer admits it: closed, and counted.
    apply(&r, dir.path(), &with_policy("127.0.0.1/32"));
    assert!(closed_within(&mut io, Duration::from_secs(5)).await, "revoked");
    let m = metrics(&r).await;
    assert!(
        m.contains(
            r#"portcullis_connections_revoked_total{route="tcp+db.tunnel.test:5432",reason="policy_changed"} 1"#
        ),
        "{m}"
    );
    // And a new CONNECT is refused.
    assert_eq!(h1_connect(&r, "db.tunnel.test:5432").await.status(), 401);

    // The route deleted: its tunnels end.
    apply(&r, dir.path(), &with_policy("10.0.0.0/8"));
    let resp = h1_connect(&r, "db.tunnel.test:5432").await;
    assert_eq!(resp.status(), 200);
    let mut io = TokioIo::new(hyper::upgrade::on(resp).await.unwrap());
    assert!(echoes(&mut io).await);
    apply(&r, dir.path(), &format!("routes:\n  - from: udp+https://dns.tunnel.test:53\n    to: udp://{udp}\n"));
    assert!(closed_within(&mut io, Duration::from_secs(5)).await, "route deleted");
}

#[tokio::test]
async fn a_tunnel_outlives_a_certificate_rotation_until_drain_timeout() {
    let (tcp, udp) = (tcp_echo().await, udp_echo().await);
    let pki = Pki::new();
    let (c1, k1) = pki.leaf("one", &["localhost"]);
    let (c2, k2) = pki.leaf("two", &["localhost"]);
    let dir = tempfile::tempdir().unwrap();
    let yaml = |c: &std::path::Path, k: &std::path::Path| {
        format!(
            "drain_timeout: 1500ms\ncertificates:\n  - cert_file: {}\n    key_file: {}\n{}",
            c.display(),
            k.display(),
            config(tcp, udp, "")
        )
    };
    let r = start_in(dir.path(), &yaml(&c1, &k1)).await;
    let mut c = h1_tls(r.main, "localhost", std::slice::from_ref(&pki.ca_der)).await;
    let resp = c.send_request(Request::connect("db.tunnel.test:5432").body(empty()).unwrap()).await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut io = TokioIo::new(hyper::upgrade::on(resp).await.unwrap());
    assert!(echoes(&mut io).await);
    // The certificate changes: the connection's generation drains, the tunnel carries on...
    apply(&r, dir.path(), &yaml(&c2, &k2));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(echoes(&mut io).await, "a draining generation's tunnel lives on");
    // ...until drain_timeout ends it.
    assert!(closed_within(&mut io, Duration::from_secs(5)).await, "closed at drain_timeout");
}

/// A DNS-sized datagram with a marker, for the UDP echo.
fn datagram(i: u32) -> Vec<u8> {
    let mut d = format!("datagram {i} ").into_bytes();
    d.resize(200 + (i as usize % 300), b'x');
    d
}

#[tokio::test]
async fn connect_udp_over_http3_datagrams() {
    let (tcp, udp) = (tcp_echo().await, udp_echo().await);
    let (r, _d) = start(&config(tcp, udp, "")).await;
    let mut h3 = h3_connect_datagrams(r.quic.unwrap(), &[default_cert(&r)]).await;
    let mut req = Request::connect(format!("https://localhost{}", portcullis::masque::udp_path("dns.tunnel.test", 53)))
        .body(())
        .unwrap();
    req.extensions_mut().insert(h3::ext::Protocol::CONNECT_UDP);
    req.headers_mut().insert("capsule-protocol", "?1".parse().unwrap());
    let mut stream = h3.send.send_request(req).await.unwrap();
    let resp = stream.recv_response().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["capsule-protocol"], "?1");
    let id = stream.id().into_inner();
    for i in 0..20 {
        let d = datagram(i);
        h3.conn.send_datagram(portcullis::masque::h3_datagram(id, &d)).unwrap();
        let got = tokio::time::timeout(Duration::from_secs(3), h3.conn.read_datagram()).await.expect("echo").unwrap();
        let (sid, value) = portcullis::masque::split_h3_datagram(got).unwrap();
        assert_eq!(sid, id);
        assert_eq!(portcullis::masque::udp_payload(value).unwrap(), d, "datagram {i}");
    }
    let m = metrics(&r).await;
    assert!(m.contains(r#"portcullis_tunnels_active{route="udp+dns.tunnel.test:53",protocol="udp"} 1"#), "{m}");
    // A closed stream ends the tunnel.
    stream.finish().await.unwrap();
    drop(stream);
    let mut ended = false;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if metrics(&r).await.contains(r#"portcullis_tunnels_active{route="udp+dns.tunnel.test:53",protocol="udp"} 0"#) {
            ended = true;
            break;
        }
    }
    assert!(ended, "the tunnel ends with its stream");
}

#[tokio::test]
async fn connect_udp_over_http1_and_http2_capsules() {
    let (tcp, udp) = (tcp_echo().await, udp_echo().await);
    let (r, _d) = start(&config(tcp, udp, "")).await;
    let path = portcullis::masque::udp_path("dns.tunnel.test", 53);
    // HTTP/1.1: Upgrade: connect-udp, answered with 101.
    let mut c = h1_tls(r.main, "localhost", &[default_cert(&r)]).await;
    let req = Request::get(&path)
        .header("host", "localhost")
        .header("connection", "upgrade")
        .header("upgrade", "connect-udp")
        .header("capsule-protocol", "?1")
        .body(empty())
        .unwrap();
    let resp = c.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 101);
    assert_eq!(resp.headers()["upgrade"], "connect-udp");
    let mut io = TokioIo::new(hyper::upgrade::on(resp).await.unwrap());
    capsules_echo(&mut io).await;
    // A capsule longer than any datagram breaks the framing: the tunnel ends.
    let mut bad = BytesMut::new();
    portcullis::masque::put_varint(&mut bad, 0);
    portcullis::masque::put_varint(&mut bad, 1 << 20);
    io.write_all(&bad).await.unwrap();
    assert!(closed_within(&mut io, Duration::from_secs(5)).await);

    // HTTP/2: extended CONNECT with :protocol connect-udp, answered with 200.
    let mut c = h2_tls(r.main, "localhost", &[default_cert(&r)]).await;
    let mut req =
        Request::connect(format!("https://localhost{path}")).header("capsule-protocol", "?1").body(empty()).unwrap();
    req.extensions_mut().insert(hyper::ext::Protocol::from_static("connect-udp"));
    let resp = c.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["capsule-protocol"], "?1");
    let mut io = TokioIo::new(hyper::upgrade::on(resp).await.unwrap());
    capsules_echo(&mut io).await;
}

/// Sends 20 datagrams in DATAGRAM capsules and checks each echo.
async fn capsules_echo<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(io: &mut S) {
    let mut inbound = BytesMut::new();
    for i in 0..20 {
        let d = datagram(i);
        io.write_all(&portcullis::masque::udp_capsule(&d)).await.unwrap();
        let capsule = tokio::time::timeout(Duration::from_secs(3), async {
            loop {
                if let Some(c) = portcullis::masque::take_capsule(&mut inbound).unwrap() {
                    return c;
                }
                assert!(io.read_buf(&mut inbound).await.unwrap() > 0, "tunnel closed");
            }
        })
        .await
        .expect("echo");
        assert_eq!(capsule.kind, portcullis::masque::DATAGRAM_CAPSULE);
        assert_eq!(portcullis::masque::udp_payload(capsule.value).unwrap(), d, "datagram {i}");
    }
}

/// An HTTP/3 connection whose client takes datagrams (SETTINGS_H3_DATAGRAM, QUIC datagram
/// frames) and extended CONNECT.
async fn h3_connect_datagrams(addr: SocketAddr, roots: &[rustls_pki_types::CertificateDer<'static>]) -> H3 {
    let endpoint = h3_endpoint(client_config(roots, &[]));
    let conn = endpoint.connect(addr, "localhost").unwrap().await.unwrap();
    let (mut driver, send) = h3::client::builder()
        .enable_datagram(true)
        .enable_extended_connect(true)
        .build::<_, _, Bytes>(h3_quinn::Connection::new(conn.clone()))
        .await
        .unwrap();
    let closed = tokio::spawn(async move { std::future::poll_fn(|cx| driver.poll_close(cx)).await });
    H3::from_parts(conn, send, closed, endpoint)
}

/// A CONNECT over TLS presenting `cert` (a client certificate chain and key, or none).
async fn connect_as(
    main: SocketAddr,
    pki: &Pki,
    cert: Option<(Vec<rustls_pki_types::CertificateDer<'static>>, rustls_pki_types::PrivateKeyDer<'static>)>,
    authority: &str,
) -> (u16, String) {
    let mut store = rustls::RootCertStore::empty();
    store.add(pki.ca_der.clone()).unwrap();
    let builder = rustls::ClientConfig::builder().with_root_certificates(store);
    let mut cfg = match cert {
        Some((chain, key)) => builder.with_client_auth_cert(chain, key).unwrap(),
        None => builder.with_no_client_auth(),
    };
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tls = tls_connect(main, "localhost", cfg).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await.unwrap();
    tokio::spawn(conn.with_upgrades());
    let resp = send.send_request(Request::connect(authority).body(empty()).unwrap()).await.unwrap();
    if resp.status() == 200 {
        let mut io = TokioIo::new(hyper::upgrade::on(resp).await.unwrap());
        return (200, String::from_utf8(round_trip(&mut io, b"hello").await).unwrap());
    }
    common::text(resp).await
}

#[tokio::test]
async fn a_client_certificate_the_policy_refuses_is_403_and_one_it_admits_tunnels() {
    let (tcp, udp) = (tcp_echo().await, udp_echo().await);
    let pki = Pki::new();
    pki.leaf("server", &["localhost"]);
    pki.ca_file();
    let r = start_in(
        pki.dir.path(),
        &format!(
            "certificates: [{{cert_file: server.pem, key_file: server-key.pem}}]
downstream_mtls: {{ca_file: ca.pem, enforcement: policy}}
{}",
            config(tcp, udp, "    policy: {allow: {or: [{client_certificate: {san_dns: {is: alice}}}]}}")
        ),
    )
    .await;
    assert_eq!(connect_as(r.main, &pki, Some(pki.client("alice")), "db.tunnel.test:5432").await, (200, "hello".into()));
    let (status, page) = connect_as(r.main, &pki, Some(pki.client("bob")), "db.tunnel.test:5432").await;
    assert_eq!(status, 403, "{page}");
    assert!(page.contains("tcp+db.tunnel.test:5432"), "the page names the route: {page}");
    assert_eq!(connect_as(r.main, &pki, None, "db.tunnel.test:5432").await.0, 401);
}

#[tokio::test]
async fn an_upstream_that_speaks_first_is_heard_over_http3() {
    // A banner server (as sshd): it writes before the client does.
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let banner = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                s.write_all(b"SSH-2.0-banner\r\n").await.unwrap();
                let mut buf = [0u8; 64];
                let n = s.read(&mut buf).await.unwrap_or(0);
                let _ = s.write_all(&buf[..n]).await;
            });
        }
    });
    let udp = udp_echo().await;
    let (r, _d) = start(&config(banner, udp, "")).await;
    let mut h3 = h3_connect(r.quic.unwrap(), "localhost", &[default_cert(&r)]).await.unwrap();
    let stream = h3.send.send_request(Request::connect("db.tunnel.test:5432").body(()).unwrap()).await.unwrap();
    let (mut send, mut recv) = stream.split();
    assert_eq!(recv.recv_response().await.unwrap().status(), 200);
    let first =
        tokio::time::timeout(Duration::from_secs(5), recv.recv_data()).await.expect("the banner").unwrap().unwrap();
    assert_eq!(first.chunk(), b"SSH-2.0-banner\r\n");
    send.send_data(Bytes::from_static(b"hi")).await.unwrap();
    let back =
        tokio::time::timeout(Duration::from_secs(5), recv.recv_data()).await.expect("the echo").unwrap().unwrap();
    assert_eq!(back.chunk(), b"hi");
}
