//! `portcullis tunnel`, the real binary, against a real proxy: TCP through a local port over
//! HTTP/1.1, HTTP/2 and HTTP/3 (and HTTP/3 learnt from Alt-Svc), stdin/stdout, UDP over
//! HTTP/3 datagrams and HTTP/1.1 capsules, and the errors a user reads.

#![allow(clippy::disallowed_types, clippy::disallowed_methods)]

mod common;

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::process::{Child, Command};

async fn tcp_echo() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.into_split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    addr
}

async fn udp_echo() -> SocketAddr {
    let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = s.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65_536];
        while let Ok((n, from)) = s.recv_from(&mut buf).await {
            let _ = s.send_to(&buf[..n], from).await;
        }
    });
    addr
}

struct Setup {
    r: portcullis::server::Running,
    pki: Pki,
    ca: std::path::PathBuf,
}

async fn setup(extra: &str) -> Setup {
    let (tcp, udp) = (tcp_echo().await, udp_echo().await);
    let pki = Pki::new();
    pki.leaf("server", &["localhost"]);
    let ca = pki.ca_file();
    let r = start_in(
        pki.dir.path(),
        &format!(
            "codec_type: http3
certificates: [{{cert_file: server.pem, key_file: server-key.pem}}]
{extra}
routes:
  - from: tcp+https://db.tunnel.test:5432
    to: tcp://{tcp}
  - from: udp+https://dns.tunnel.test:53
    to: udp://{udp}
  - from: tcp+https://private.tunnel.test:22
    to: tcp://{tcp}
    policy: {{allow: {{or: [{{client_certificate: {{san_dns: {{is: alice}}}}}}]}}}}
"
        ),
    )
    .await;
    Setup { r, pki, ca }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn client(s: &Setup, args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_portcullis"));
    c.arg("tunnel")
        .args(args)
        .arg("--proxy-url")
        .arg(format!("https://localhost:{}", s.r.main.port()))
        .arg("--ca-file")
        .arg(&s.ca)
        .arg("--token-dir")
        .arg(s.pki.dir.path().join("tokens"))
        .env_remove("PORTCULLIS_TOKEN")
        .kill_on_drop(true);
    c
}

/// Starts a `--listen` client and waits until its port answers.
async fn listening(s: &Setup, args: &[&str]) -> (Child, SocketAddr) {
    let port = free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut all = args.to_vec();
    let listen = addr.to_string();
    all.extend(["--listen", &listen]);
    let child = client(s, &all).stderr(Stdio::null()).spawn().unwrap();
    for _ in 0..100 {
        if args[0] == "udp" || TcpStream::connect(addr).await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    (child, addr)
}

/// 4 MiB through the local port, both ways, checked byte for byte; the half-close travels.
async fn bulk(addr: SocketAddr) {
    let data: Vec<u8> = (0..4 * 1024 * 1024u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8).collect();
    let s = TcpStream::connect(addr).await.unwrap();
    let (mut r, mut w) = s.into_split();
    let writer = {
        let data = data.clone();
        tokio::spawn(async move {
            w.write_all(&data).await.unwrap();
            w.shutdown().await.unwrap();
        })
    };
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), r.read_to_end(&mut got)).await.expect("end of stream").unwrap();
    writer.await.unwrap();
    assert_eq!(got.len(), data.len());
    assert!(got == data, "the bytes came back changed");
}

fn quic_connects(m: &str) -> f64 {
    m.lines()
        .filter(|l| {
            l.starts_with("portcullis_http_requests_total{") && l.contains("quic-ingress") && l.contains("CONNECT")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test]
async fn tcp_through_a_local_port_over_each_http_version() {
    let s = setup("").await;
    for version in ["--http1", "--http2", "--http3"] {
        let (_child, addr) = listening(&s, &["tcp", "db.tunnel.test:5432", version]).await;
        bulk(addr).await;
    }
    // HTTP/3 came through quic-ingress (the tunnel's request is counted when it ends).
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(quic_connects(&metrics(&s.r).await) >= 1.0);
}

#[tokio::test]
async fn the_client_moves_to_http3_once_the_proxy_advertises_it() {
    let s = setup("").await;
    let (_child, addr) = listening(&s, &["tcp", "db.tunnel.test:5432"]).await;
    // The first tunnel goes over HTTP/2 and learns Alt-Svc; the next ones take HTTP/3.
    bulk(addr).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = quic_connects(&metrics(&s.r).await);
    bulk(addr).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(quic_connects(&metrics(&s.r).await) > before, "the second tunnel went over HTTP/3");
}

#[tokio::test]
async fn stdin_and_stdout_are_one_tunnel() {
    let s = setup("").await;
    for version in ["--http1", "--http2", "--http3"] {
        stdio(&s, version).await;
    }
}

async fn stdio(s: &Setup, version: &str) {
    let mut child = client(s, &["tcp", "db.tunnel.test:5432", "--listen", "-", version])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"through stdin and back\n").await.unwrap();
    drop(stdin);
    let out = tokio::time::timeout(Duration::from_secs(20), child.wait_with_output()).await.unwrap().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "through stdin and back\n",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success());
}

#[tokio::test]
async fn udp_through_a_local_socket_over_http3_and_http1() {
    let s = setup("").await;
    for version in ["--http3", "--http1"] {
        let (_child, addr) = listening(&s, &["udp", "dns.tunnel.test:53", version]).await;
        let local = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        local.connect(addr).await.unwrap();
        let mut buf = [0u8; 2048];
        for i in 0..10u8 {
            let msg = vec![i; 100 + usize::from(i) * 50];
            // The client may still be starting: the first datagrams are retried.
            let mut echoed = None;
            for _ in 0..20 {
                // Before the client is up, the send (or the receive) fails: port unreachable.
                let _ = local.send(&msg).await;
                match tokio::time::timeout(Duration::from_millis(500), local.recv(&mut buf)).await {
                    Ok(Ok(n)) => {
                        echoed = Some(buf[..n].to_vec());
                        break;
                    }
                    Ok(Err(_)) => tokio::time::sleep(Duration::from_millis(100)).await,
                    Err(_) => {}
                }
            }
            assert_eq!(echoed.as_deref(), Some(&msg[..]), "{version} datagram {i}");
        }
    }
}

#[tokio::test]
async fn refusals_read_as_what_happened() {
    let s = setup("downstream_mtls: {ca_file: ca.pem, enforcement: policy}").await;
    let run = |args: Vec<String>| {
        let mut c = client(&s, &args.iter().map(String::as_str).collect::<Vec<_>>());
        c.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
        async move {
            let out = tokio::time::timeout(Duration::from_secs(20), c.output()).await.unwrap().unwrap();
            assert!(!out.status.success());
            String::from_utf8_lossy(&out.stderr).into_owned()
        }
    };
    let base =
        |target: &str| vec!["tcp".to_owned(), target.to_owned(), "--listen".into(), "-".into(), "--http1".into()];
    // A certificate the route's policy refuses: 403 naming the route.
    let (bob_chain, bob_key) = s.pki.leaf_client_files("bob");
    let mut args = base("private.tunnel.test:22");
    args.extend(["--client-cert".into(), bob_chain, "--client-key".into(), bob_key]);
    let err = run(args).await;
    assert!(err.contains("denied by policy of route private.tunnel.test:22 (403)"), "{err}");
    // A token that proves nothing: 401, and no browser sign-in with --token.
    let mut args = base("private.tunnel.test:22");
    args.extend(["--token".into(), "not-a-token".into()]);
    let err = run(args).await;
    assert!(err.contains("(401)"), "{err}");
    // No such tunnel route.
    let err = run(base("db.tunnel.test:5433")).await;
    assert!(err.contains("no tunnel route for db.tunnel.test:5433 (404)"), "{err}");
    // A proxy that is not there: the address it tried.
    let mut c = Command::new(env!("CARGO_BIN_EXE_portcullis"));
    let dead = free_port();
    c.args([
        "tunnel",
        "tcp",
        "db.tunnel.test:5432",
        "--listen",
        "-",
        "--proxy-url",
        &format!("https://127.0.0.1:{dead}"),
    ]);
    let out = c.stdin(Stdio::null()).output().await.unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("cannot reach the proxy at 127.0.0.1:{dead}")), "{err}");
}
