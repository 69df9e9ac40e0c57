//! Real programs through real tunnels (issue 17): OpenSSH reached with `ssh -o
//! ProxyCommand='portcullis tunnel tcp %h:%p --listen -'`, dnsmasq queried with dig through
//! `portcullis tunnel udp` over HTTP/3 datagrams and over the HTTP/1.1 capsule fallback,
//! curl as an independent HTTP/1.1 CONNECT client (`--proxytunnel`), and 100 MiB copied both
//! ways at once, checked with SHA-256, through the client on HTTP/1.1, HTTP/2 and HTTP/3 and
//! through a raw HTTP/1.1 CONNECT written here.
//!
//! The proxy runs in this process (tests/common `start`), with a certificate from a test CA
//! for 127.0.0.1 (the clients are given `--proxy-url https://127.0.0.1:PORT`); the programs
//! are Debian's, installed with apt-get when missing (tests/tunnel_support), all on loopback.
//! The tunnel targets (`ssh.tunnel.test`, ...) resolve nowhere: only the proxy's routes can
//! reach them.

#![allow(clippy::disallowed_types, clippy::disallowed_methods)]

mod common;

use std::fmt::Write as _;
mod tunnel_support;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::Command;
use tunnel_support::*;

/// The client binary (`portcullis tunnel ...`), built by cargo for this test.
const PORTCULLIS: &str = env!("CARGO_BIN_EXE_portcullis");

/// Bytes each way of the bulk copies: 100 MiB, or `TUNNEL_BULK_MIB`.
fn bulk_len() -> u64 {
    std::env::var("TUNNEL_BULK_MIB").ok().and_then(|v| v.parse::<u64>().ok()).unwrap_or(100) << 20
}

/// The bulk copies are the heaviest tests; one at a time, so that each has the machine.
static BULK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The time one bulk copy may take: a debug build, both directions at once, on a shared CI
/// machine; far above what it needs (a few seconds in release), but bounded.
const BULK_LIMIT: Duration = Duration::from_secs(300);

/// A proxy with TLS for 127.0.0.1 from a test CA, HTTP/3 enabled, and the tunnel routes given
/// as `(from, to)`.
struct Proxy {
    r: portcullis::server::Running,
    ca: PathBuf,
    pki: Pki,
    _dir: tempfile::TempDir,
}

impl Proxy {
    async fn start(routes: &[(&str, String)]) -> Self {
        let pki = Pki::new();
        let (cert, key) = pki.leaf("proxy", &["127.0.0.1", "localhost", "proxy.tunnel.test"]);
        let ca = pki.ca_file();
        let mut yaml = format!(
            "codec_type: http3\ncertificates:\n  - cert_file: \"{}\"\n    key_file: \"{}\"\nroutes:\n",
            cert.display(),
            key.display()
        );
        for (from, to) in routes {
            let _ = writeln!(yaml, "  - from: {from}\n    to: {to}");
        }
        let (r, dir) = start(&yaml).await;
        Self { r, ca, pki, _dir: dir }
    }

    fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.r.main.port())
    }

    /// `portcullis tunnel <proto> <target> --listen <listen> --proxy-url ... --ca-file ...`
    /// plus `extra`, as one shell-quoted line (for ssh's ProxyCommand).
    fn client_line(&self, proto: &str, target: &str, listen: &str, extra: &[&str]) -> String {
        let mut line = format!(
            "{PORTCULLIS} tunnel {proto} {target} --listen {listen} --proxy-url {} --ca-file {}",
            self.url(),
            self.ca.display()
        );
        for e in extra {
            line.push(' ');
            line.push_str(e);
        }
        line
    }

    /// Starts `portcullis tunnel <proto> <target> --listen <listen> ...` in the background.
    fn client(&self, proto: &str, target: &str, listen: SocketAddr, extra: &[&str]) -> Daemon {
        let mut cmd = Command::new(PORTCULLIS);
        cmd.args(["tunnel", proto, target, "--listen", &listen.to_string(), "--proxy-url", &self.url()])
            .arg("--ca-file")
            .arg(&self.ca)
            .args(extra)
            .env("RUST_LOG", "info");
        Daemon::spawn("portcullis tunnel", &mut cmd).unwrap_or_else(|e| panic!("starting {PORTCULLIS}: {e}"))
    }

    async fn tunnel_bytes(&self, route: &str, direction: &str) -> u64 {
        let m = metrics(&self.r).await;
        let prefix = format!(r#"portcullis_tunnel_bytes_total{{route="{route}",direction="{direction}"}} "#);
        m.lines().find_map(|l| l.strip_prefix(&prefix)).and_then(|v| v.trim().parse().ok()).unwrap_or(0)
    }
}

/// Connects to a `portcullis tunnel tcp --listen` port once the client listens (bounded).
async fn connect_local(client: &mut Daemon, addr: SocketAddr) -> TcpStream {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(s) = TcpStream::connect(addr).await {
            return s;
        }
        if let Some(status) = client.exited() {
            tokio::time::sleep(ms(100)).await;
            panic!("the tunnel client exited ({status}):\n{}", client.log());
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the tunnel client never listened on {addr}:\n{}",
            client.log()
        );
        tokio::time::sleep(ms(50)).await;
    }
}

// ---------------------------------------------------------------------------------------
// The launchers on their own (no tunnel): if these fail, the tunnel tests below say nothing.

#[tokio::test]
async fn support_programs_answer_directly() {
    let sshd = Sshd::start().await;
    let (status, out, err) = sshd.ssh(None, "127.0.0.1", sshd.addr.port(), "echo direct-$((6*7))").await.unwrap();
    assert!(status.success(), "ssh direct: {status} {err}\nsshd:\n{}", sshd.daemon.log());
    assert_eq!(out.trim(), "direct-42");

    let dns = Dnsmasq::start().await;
    assert_eq!(dig(dns.addr, "a.tunnel.test").await.unwrap().trim(), DNS_ANSWER);
    // Nothing but its one name: no upstream servers to ask.
    assert_eq!(dig(dns.addr, "example.com").await.unwrap().trim(), "");

    let mut bulk = Bulk::start(7, 3 << 20).await;
    let s = TcpStream::connect(bulk.addr).await.unwrap();
    let got = bulk_exchange(s, 8, 2 << 20, Duration::from_secs(60)).await.unwrap();
    assert_eq!(got, Received { bytes: 3 << 20, sha256: noise_sha256(7, 3 << 20) });
    let theirs = bulk.next(Duration::from_secs(10)).await.unwrap();
    assert_eq!(theirs, Received { bytes: 2 << 20, sha256: noise_sha256(8, 2 << 20) });
    assert_ne!(noise_sha256(7, 1000), noise_sha256(8, 1000), "different seeds, different streams");
}

// ---------------------------------------------------------------------------------------
// OpenSSH

#[tokio::test]
async fn ssh_runs_a_command_through_a_tcp_tunnel_on_each_transport() {
    let sshd = Sshd::start().await;
    let p = Proxy::start(&[("tcp+https://ssh.tunnel.test:22", format!("tcp://{}", sshd.addr))]).await;
    for transport in ["", "--http1", "--http2", "--http3"] {
        let pc = p.client_line("tcp", "%h:%p", "-", &[transport]);
        let (status, out, err) =
            sshd.ssh(Some(&pc), "ssh.tunnel.test", 22, "echo through-the-tunnel; whoami").await.unwrap();
        assert!(
            status.success(),
            "ssh through the tunnel ({transport:?}): {status}\nssh stderr: {err}\nsshd:\n{}",
            sshd.daemon.log()
        );
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines, ["through-the-tunnel", sshd.user.as_str()], "({transport:?})");
    }
    assert!(p.tunnel_bytes("tcp+ssh.tunnel.test:22", "to_upstream").await > 0);
    assert!(p.tunnel_bytes("tcp+ssh.tunnel.test:22", "to_client").await > 0);
}

/// The same through the client's local port (`--listen 127.0.0.1:P`), ssh connecting to it.
#[tokio::test]
async fn ssh_runs_a_command_through_the_clients_local_port_on_each_transport() {
    let sshd = Sshd::start().await;
    let p = Proxy::start(&[("tcp+https://ssh.tunnel.test:22", format!("tcp://{}", sshd.addr))]).await;
    for transport in ["--http1", "--http2", "--http3"] {
        let listen = SocketAddr::from(([127, 0, 0, 1], free_tcp_port()));
        let mut client = p.client("tcp", "ssh.tunnel.test:22", listen, &[transport]);
        drop(connect_local(&mut client, listen).await);
        let (status, out, err) = sshd.ssh(None, "127.0.0.1", listen.port(), "echo via-local-port").await.unwrap();
        assert!(
            status.success(),
            "ssh through the client's port ({transport}): {status}\nssh stderr: {err}\nclient:\n{}\nsshd:\n{}",
            client.log(),
            sshd.daemon.log()
        );
        assert_eq!(out.trim(), "via-local-port", "({transport})");
    }
}

// ---------------------------------------------------------------------------------------
// dnsmasq and dig

async fn dig_through_udp_tunnel(transport: &str) {
    let dns = Dnsmasq::start().await;
    let p = Proxy::start(&[("udp+https://dns.tunnel.test:53", format!("udp://{}", dns.addr))]).await;
    let listen = SocketAddr::from(([127, 0, 0, 1], free_udp_port()));
    let mut client = p.client("udp", "dns.tunnel.test:53", listen, &[transport]);
    // The client needs a moment to listen and set up its tunnel; dig tries once per call.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let last = match dig(listen, "www.tunnel.test").await {
            Ok(a) if a.trim() == DNS_ANSWER => break,
            Ok(a) => format!("answer {a:?}"),
            Err(e) => e,
        };
        if let Some(status) = client.exited() {
            tokio::time::sleep(ms(100)).await;
            panic!("the tunnel client exited ({status}):\n{}", client.log());
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no answer through the UDP tunnel ({transport}): {last}\nclient:\n{}\ndnsmasq:\n{}",
            client.log(),
            dns.daemon.log()
        );
        tokio::time::sleep(ms(200)).await;
    }
    // Then several in a row, each answered, including a name dnsmasq does not know.
    for i in 0..10 {
        assert_eq!(dig(listen, &format!("n{i}.tunnel.test")).await.unwrap().trim(), DNS_ANSWER, "query {i}");
    }
    assert_eq!(dig(listen, "unknown.example").await.unwrap().trim(), "");
    assert!(dns.daemon.log().contains("query[A] n9.tunnel.test from 127.0.0.1"), "{}", dns.daemon.log());
    assert!(p.tunnel_bytes("udp+dns.tunnel.test:53", "to_upstream").await > 0);
    assert!(p.tunnel_bytes("udp+dns.tunnel.test:53", "to_client").await > 0);
}

#[tokio::test]
async fn dig_through_a_udp_tunnel_over_http3_datagrams() {
    dig_through_udp_tunnel("--http3").await;
}

#[tokio::test]
async fn dig_through_a_udp_tunnel_over_http1_capsules() {
    dig_through_udp_tunnel("--http1").await;
}

// ---------------------------------------------------------------------------------------
// curl, an HTTP/1.1 CONNECT client of its own

#[tokio::test]
async fn curl_proxytunnel_reaches_a_web_upstream_through_connect() {
    tokio::task::spawn_blocking(|| require(&[CURL])).await.unwrap();
    let web = upstream("web-behind-tunnel").await;
    let p = Proxy::start(&[("tcp+https://web.tunnel.test:8080", format!("tcp://{web}"))]).await;
    let (status, out, err) = run(
        Command::new(CURL.0)
            .args(["-sS", "--max-time", "20", "--proxytunnel", "--proxy", &p.url(), "--proxy-cacert"])
            .arg(&p.ca)
            .args(["-w", "\nconnect=%{http_connect} status=%{http_code}\n", "http://web.tunnel.test:8080/hello?x=1"]),
        Duration::from_secs(30),
    )
    .await
    .unwrap();
    assert!(status.success(), "curl: {status} {err}");
    assert!(out.contains(r#""upstream": "web-behind-tunnel""#), "{out}");
    assert!(out.contains(r#""uri": "/hello?x=1""#), "{out}");
    assert!(out.trim_end().ends_with("connect=200 status=200"), "{out}");

    // A target with no route: curl reports the proxy's 404 to its CONNECT.
    let (status, out, _) = run(
        Command::new(CURL.0)
            .args(["-sS", "--max-time", "20", "--proxytunnel", "--proxy", &p.url(), "--proxy-cacert"])
            .arg(&p.ca)
            .args(["-w", "connect=%{http_connect}", "http://web.tunnel.test:8081/"]),
        Duration::from_secs(30),
    )
    .await
    .unwrap();
    assert!(!status.success());
    assert!(out.contains("connect=404"), "{out}");
}

// ---------------------------------------------------------------------------------------
// 100 MiB both ways, checked with SHA-256

/// Sends `len` bytes each way at once over `io` to the bulk server and checks both streams.
async fn check_bulk<S>(bulk: &mut Bulk, io: S, what: &str)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send,
{
    let len = bulk.len;
    let started = tokio::time::Instant::now();
    let got = bulk_exchange(io, 1234, len, BULK_LIMIT).await.unwrap_or_else(|e| panic!("{what}: {e}"));
    let secs = started.elapsed().as_secs_f64();
    assert_eq!(got.bytes, len, "{what}: bytes from the server");
    assert_eq!(got.sha256, noise_sha256(bulk.seed, len), "{what}: the server's stream arrived altered");
    let theirs = bulk.next(Duration::from_secs(30)).await.unwrap_or_else(|e| panic!("{what}: {e}"));
    assert_eq!(theirs, Received { bytes: len, sha256: noise_sha256(1234, len) }, "{what}: the client's stream");
    eprintln!("{what}: {} MiB each way in {secs:.1} s ({:.0} MiB/s each way)", len >> 20, (len >> 20) as f64 / secs);
}

async fn bulk_through_client(transport: &str) {
    let _one = BULK.lock().await;
    let mut bulk = Bulk::start(99, bulk_len()).await;
    let p = Proxy::start(&[("tcp+https://bulk.tunnel.test:9000", format!("tcp://{}", bulk.addr))]).await;
    let listen = SocketAddr::from(([127, 0, 0, 1], free_tcp_port()));
    let mut client = p.client("tcp", "bulk.tunnel.test:9000", listen, &[transport]);
    let s = connect_local(&mut client, listen).await;
    check_bulk(&mut bulk, s, &format!("portcullis tunnel {transport}")).await;
    let up = p.tunnel_bytes("tcp+bulk.tunnel.test:9000", "to_upstream").await;
    assert_eq!(up, bulk.len, "the proxy counted what went upstream");
}

#[tokio::test]
async fn bulk_100mib_both_ways_through_the_client_over_http1() {
    bulk_through_client("--http1").await;
}

#[tokio::test]
async fn bulk_100mib_both_ways_through_the_client_over_http2() {
    bulk_through_client("--http2").await;
}

#[tokio::test]
async fn bulk_100mib_both_ways_through_the_client_over_http3() {
    bulk_through_client("--http3").await;
}

/// The same copy through an HTTP/1.1 CONNECT written by hand on a TLS connection, so the
/// proxy is checked apart from the client.
#[tokio::test]
async fn bulk_100mib_both_ways_through_a_raw_http1_connect() {
    let _one = BULK.lock().await;
    let mut bulk = Bulk::start(5, bulk_len()).await;
    let p = Proxy::start(&[("tcp+https://bulk.tunnel.test:9000", format!("tcp://{}", bulk.addr))]).await;
    let mut tls =
        tls_connect(p.r.main, "proxy.tunnel.test", client_config(std::slice::from_ref(&p.pki.ca_der), &[b"http/1.1"]))
            .await
            .unwrap();
    tls.write_all(b"CONNECT bulk.tunnel.test:9000 HTTP/1.1\r\nHost: bulk.tunnel.test:9000\r\n\r\n").await.unwrap();
    // The head, byte by byte: the tunnel's bytes follow it at once.
    let mut head = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), async {
        while !head.ends_with(b"\r\n\r\n") {
            assert!(head.len() < 8192, "response head too long");
            head.push(tls.read_u8().await.unwrap());
        }
    })
    .await
    .expect("CONNECT answered");
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    check_bulk(&mut bulk, tls, "raw HTTP/1.1 CONNECT").await;
}

/// The same copy over a raw HTTP/3 CONNECT (quinn + h3 written here), the connection held
/// open until the bulk server has seen the end of the client's stream, so the proxy's
/// HTTP/3 side is checked apart from the client's.
#[tokio::test]
async fn bulk_100mib_both_ways_through_a_raw_http3_connect() {
    use bytes::Buf as _;
    let _one = BULK.lock().await;
    let mut bulk = Bulk::start(6, bulk_len()).await;
    let p = Proxy::start(&[("tcp+https://bulk.tunnel.test:9000", format!("tcp://{}", bulk.addr))]).await;
    let mut h3 = h3_connect(p.r.quic.unwrap(), "proxy.tunnel.test", std::slice::from_ref(&p.pki.ca_der)).await.unwrap();
    let req = http::Request::connect("bulk.tunnel.test:9000").body(()).unwrap();
    let stream = h3.send.send_request(req).await.unwrap();
    let (mut send, mut recv) = stream.split();
    let resp = tokio::time::timeout(Duration::from_secs(10), recv.recv_response()).await.expect("answered").unwrap();
    assert_eq!(resp.status(), 200);
    let len = bulk.len;
    let up = async {
        let mut n = Noise::new(4321);
        let mut left = len;
        while left > 0 {
            let take = left.min(64 * 1024);
            let mut buf = vec![0u8; take as usize];
            n.fill(&mut buf);
            send.send_data(bytes::Bytes::from(buf)).await.map_err(|e| format!("send_data: {e}"))?;
            left -= take;
        }
        send.finish().await.map_err(|e| format!("finish: {e}"))
    };
    let down = async {
        let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
        let mut bytes = 0u64;
        while let Some(mut chunk) = recv.recv_data().await.map_err(|e| format!("recv_data: {e}"))? {
            let b = chunk.copy_to_bytes(chunk.remaining());
            ctx.update(&b);
            bytes += b.len() as u64;
        }
        Ok::<_, String>(Received { bytes, sha256: hex(ctx.finish().as_ref()) })
    };
    let (sent, got) = tokio::time::timeout(BULK_LIMIT, async { tokio::join!(up, down) }).await.expect("in time");
    sent.unwrap();
    assert_eq!(got.unwrap(), Received { bytes: len, sha256: noise_sha256(6, len) }, "the server's stream");
    // The connection is still open here: whatever the client sent is delivered.
    let theirs = bulk.next(Duration::from_secs(30)).await.unwrap();
    assert_eq!(theirs, Received { bytes: len, sha256: noise_sha256(4321, len) }, "the client's stream");
    drop(h3);
}
