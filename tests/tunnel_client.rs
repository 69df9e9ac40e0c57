//! `portcullis tunnel`, the real binary, against a real proxy: TCP through a local port over
//! HTTP/1.1, HTTP/2 and HTTP/3 (and HTTP/3 learnt from Alt-Svc), stdin/stdout, UDP over
//! HTTP/3 datagrams and HTTP/1.1 capsules, the errors a user reads, the browser sign-in's
//! loopback hand-off and token cache, and (with node's `oidc-provider`, as tests/signin.rs)
//! a whole sign-in whose token the next run reuses.

#![allow(clippy::disallowed_types, clippy::disallowed_methods)]

mod common;
#[path = "signin_support/mod.rs"]
mod signin_support;

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::process::{Child, Command};

struct Setup {
    r: portcullis::server::Running,
    pki: Pki,
    ca: std::path::PathBuf,
}

async fn setup(extra: &str) -> Setup {
    let (tcp, udp) = (tcp_echo().await, udp_echo().await);
    // A port nothing listens on: the upstream of down.tunnel.test refuses.
    let down = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let banner = banner_echo().await;
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
  - from: tcp+https://down.tunnel.test:5432
    to: tcp://{down}
  - from: tcp+https://banner.tunnel.test:22
    to: tcp://{banner}
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

/// An upstream that speaks first (as sshd does), then echoes.
async fn banner_echo() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.into_split();
                // A line, then binary with no newline (an SSH server's version line and its
                // key exchange, in one segment).
                let _ = w.write_all(b"SSH-2.0-banner\r\n\x00\x00\x01\x0c\x0b\x14kexinit").await;
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn over_stdin_and_stdout_the_upstream_may_speak_first_on_every_transport() {
    let s = setup("").await;
    for version in ["--http1", "--http2", "--http3"] {
        let mut child = client(&s, &["tcp", "banner.tunnel.test:22", "--listen", "-", version])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdout = child.stdout.take().unwrap();
        let mut got = vec![0u8; 29];
        let read = tokio::time::timeout(Duration::from_secs(10), stdout.read_exact(&mut got)).await;
        if !matches!(read, Ok(Ok(_))) {
            child.kill().await.unwrap();
            let mut err = String::new();
            child.stderr.take().unwrap().read_to_string(&mut err).await.unwrap();
            panic!("{version}: no banner before the client wrote anything: {read:?}\n{err}");
        }
        assert_eq!(&got, b"SSH-2.0-banner\r\n\x00\x00\x01\x0c\x0b\x14kexinit", "{version}");
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(b"then the client\n").await.unwrap();
        drop(stdin);
        let mut rest = String::new();
        tokio::time::timeout(Duration::from_secs(10), stdout.read_to_string(&mut rest)).await.unwrap().unwrap();
        assert_eq!(rest, "then the client\n", "{version}");
        assert!(child.wait().await.unwrap().success(), "{version}");
    }
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
    assert!(err.contains("the token was refused: 401"), "{err}");
    assert!(!err.contains("/.portcullis/api/v1/login"), "no sign-in with --token: {err}");
    // The upstream refuses: 503 with the proxy's reason, on every transport.
    for version in ["--http1", "--http2", "--http3"] {
        let mut args = base("down.tunnel.test:5432");
        args[4] = version.into();
        let err = run(args).await;
        assert!(
            err.contains("the proxy refused the tunnel to down.tunnel.test:5432 (503)") && err.contains("refused"),
            "{version}: {err}"
        );
    }
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
    assert!(!out.status.success());
    // A certificate the system does not trust (no --ca-file): a TLS error naming the host,
    // over TCP and over QUIC.
    for version in ["--http2", "--http3"] {
        let out = Command::new(env!("CARGO_BIN_EXE_portcullis"))
            .args(["tunnel", "tcp", "db.tunnel.test:5432", "--listen", "-", version, "--proxy-url"])
            .arg(format!("https://localhost:{}", s.r.main.port()))
            .stdin(Stdio::null())
            .output()
            .await
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("TLS with localhost failed"), "{version}: {err}");
        assert!(!out.status.success());
    }
}

#[tokio::test]
async fn the_command_line_is_checked_before_anything_is_opened() {
    let cases: [(&[&str], &str); 5] = [
        (&["tcp", "db.example.com:5432", "--http1", "--http2"], "cannot be used with"),
        (&["tcp", "db.example.com"], "must be host:port"),
        (&["udp", "dns.example.com:53"], "needs --listen ADDRESS"),
        (&["udp", "dns.example.com:53", "--listen", "127.0.0.1:0", "--http2"], "not --http2"),
        (&["tcp", "db.example.com:5432", "--proxy-url", "http://ingress.example.com"], "must start with https://"),
    ];
    for (args, expected) in cases {
        let out = Command::new(env!("CARGO_BIN_EXE_portcullis")).arg("tunnel").args(args).output().await.unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?}");
        assert!(err.contains(expected), "{args:?}: {err}");
    }
}

/// Reads the child's stderr until the sign-in URL appears; the URL and the loopback port.
async fn sign_in_url(lines: &mut tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStderr>>) -> (String, u16) {
    let mut seen = String::new();
    let found = tokio::time::timeout(Duration::from_secs(20), async {
        while let Ok(Some(line)) = lines.next_line().await {
            seen.push_str(&line);
            seen.push('\n');
            if let Some(i) = line.find("https://") {
                let url = line[i..].trim().to_owned();
                if let Some(port) = url.split("redirect_uri=http://127.0.0.1:").nth(1) {
                    return Some((url.clone(), port.trim_end_matches('/').parse().unwrap()));
                }
            }
        }
        None
    })
    .await;
    match found {
        Ok(Some(found)) => found,
        _ => panic!("no sign-in URL on stderr:\n{seen}"),
    }
}

/// A JWT-shaped token (not signed by anyone) that expires in an hour.
fn unsigned_jwt() -> String {
    use base64::Engine as _;
    let b = |v: serde_json::Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    let exp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() + 3600;
    format!("{}.{}.c2ln", b(serde_json::json!({"alg": "ES256"})), b(serde_json::json!({"exp": exp})))
}

/// One HTTP/1.1 GET to the client's loopback port, as the browser makes at the end of the
/// sign-in; the whole answer.
async fn browser_get(port: u16, target: &str) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    s.write_all(format!("GET {target} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n").as_bytes()).await.unwrap();
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_string(&mut answer)).await.unwrap().unwrap();
    answer
}

#[tokio::test]
async fn a_401_prints_the_sign_in_url_and_caches_what_the_browser_brings_back() {
    use std::os::unix::fs::PermissionsExt as _;
    use tokio::io::AsyncBufReadExt as _;
    let s = setup("").await;
    let cache = s.pki.dir.path().join("tokens").join("private.tunnel.test");
    let spawn = || {
        let mut c = client(&s, &["tcp", "private.tunnel.test:22", "--listen", "-", "--http2"]);
        c.stdin(Stdio::piped()).stdout(Stdio::null()).stderr(Stdio::piped());
        // No desktop: xdg-open (if installed) must not open anything.
        c.env_remove("DISPLAY").env_remove("WAYLAND_DISPLAY");
        let mut child = c.spawn().unwrap();
        let lines = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
        (child, lines)
    };
    let (mut child, mut lines) = spawn();
    let (url, port) = sign_in_url(&mut lines).await;
    assert_eq!(
        url,
        format!(
            "https://private.tunnel.test:{}/.portcullis/api/v1/login?redirect_uri=http://127.0.0.1:{port}/",
            s.r.main.port()
        )
    );
    // The browser's redirect brings the token; the page tells the user they are done.
    let token = unsigned_jwt();
    let answer = browser_get(port, &format!("/?portcullis_jwt={token}")).await;
    assert!(answer.starts_with("HTTP/1.1 200") && answer.contains("You can close this tab"), "{answer}");
    // The proxy refuses this token (nobody signed it): the client says so and gives up.
    let status = tokio::time::timeout(Duration::from_secs(20), child.wait()).await.unwrap().unwrap();
    assert!(!status.success());
    let mut rest = String::new();
    while let Ok(Some(l)) = lines.next_line().await {
        rest.push_str(&l);
        rest.push('\n');
    }
    assert!(rest.contains("the token of the sign-in that just finished was refused"), "{rest}");
    // It was cached for the host, readable by the user only.
    assert_eq!(std::fs::read_to_string(&cache).unwrap(), token);
    assert_eq!(std::fs::metadata(&cache).unwrap().permissions().mode() & 0o777, 0o600);
    assert_eq!(std::fs::metadata(cache.parent().unwrap()).unwrap().permissions().mode() & 0o777, 0o700);
    // The next run sends the cached token; refused, it is forgotten and a sign-in starts.
    let (mut child, mut lines) = spawn();
    let _ = sign_in_url(&mut lines).await;
    assert!(!cache.exists(), "a refused cached token is removed");
    child.kill().await.unwrap();
}

#[tokio::test]
async fn a_browser_sign_in_opens_the_tunnel_and_the_next_run_reuses_its_token() {
    use base64::Engine as _;
    use signin_support::{Agent, OidcProvider, ProviderOptions, ALICE};
    use tokio::io::AsyncBufReadExt as _;
    let port = free_port();
    let provider = OidcProvider::start(ProviderOptions::for_auth(&format!("https://authenticate.test:{port}"))).await;
    let echo = tcp_echo().await;
    let secret = base64::engine::general_purpose::STANDARD.encode([7u8; 32]);
    let (r, dir) = start(&format!(
        "address: 127.0.0.1:{port}
idp_provider_url: {issuer}
idp_client_id: portcullis
idp_client_secret: portcullis-secret
cookie_secret: {secret}
routes:
 - from: tcp+https://db.test:5432
   to: tcp://{echo}
   allowed_users: [alice@example.com]
",
        issuer = provider.issuer()
    ))
    .await;
    let tokens = dir.path().join("tokens");
    let run = || {
        let mut c = Command::new(env!("CARGO_BIN_EXE_portcullis"));
        c.args(["tunnel", "tcp", "db.test:5432", "--listen", "-", "--insecure", "--proxy-url"])
            .arg(format!("https://127.0.0.1:{port}"))
            .arg("--token-dir")
            .arg(&tokens)
            .env_remove("PORTCULLIS_TOKEN")
            .env_remove("DISPLAY")
            .env_remove("WAYLAND_DISPLAY")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = c.spawn().unwrap();
        let lines = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
        (child, lines)
    };
    let through = |mut child: Child, msg: &'static [u8]| async move {
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(msg).await.unwrap();
        drop(stdin);
        let out = tokio::time::timeout(Duration::from_secs(20), child.wait_with_output()).await.unwrap().unwrap();
        assert!(out.status.success());
        out.stdout
    };
    // First run: 401, the URL; the user signs in at the provider in "the browser".
    let (child, mut lines) = run();
    let (url, _) = sign_in_url(&mut lines).await;
    assert!(url.starts_with(&format!("https://db.test:{port}/.portcullis/api/v1/login?")), "{url}");
    let mut agent = Agent::new();
    let mut hops = agent.follow(&url, 10).await;
    let login = hops.last().unwrap().clone();
    hops.extend(agent.sign_in_at_provider(&login, ALICE.login, ALICE.password).await);
    let last = hops.last().unwrap();
    assert!(last.body.contains("You can close this tab"), "{}", signin_support::describe(&hops));
    assert_eq!(through(child, b"signed in\n").await, b"signed in\n");
    assert!(tokens.join("db.test").is_file());
    // Second run: the cached token, no sign-in.
    let (child, mut lines) = run();
    assert_eq!(through(child, b"again\n").await, b"again\n");
    let mut err = String::new();
    while let Ok(Some(l)) = lines.next_line().await {
        err.push_str(&l);
    }
    assert!(!err.contains("sign in"), "the cached token was used: {err}");
    drop(r);
}

#[tokio::test]
async fn http3_advertised_but_unreachable_falls_back_to_tcp() {
    // Alt-Svc names a UDP port nothing answers on (UDP blocked on the way, say).
    let dead = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let s = setup(&format!("http3_advertised_port: {}", dead.local_addr().unwrap().port())).await;
    let port = free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut child = client(&s, &["tcp", "db.tunnel.test:5432", "--listen", &addr.to_string()])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    for _ in 0..100 {
        if TcpStream::connect(addr).await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The first tunnel learns HTTP/3; the second finds no answer there and goes over TCP,
    // and so does the third, at once.
    bulk(addr).await;
    let started = std::time::Instant::now();
    bulk(addr).await;
    bulk(addr).await;
    assert!(started.elapsed() < Duration::from_secs(15), "{:?}", started.elapsed());
    assert!(quic_connects(&metrics(&s.r).await) < 1.0, "no tunnel went over HTTP/3");
    child.kill().await.unwrap();
    let mut err = String::new();
    child.stderr.take().unwrap().read_to_string(&mut err).await.unwrap();
    assert_eq!(err.matches("using TCP").count(), 1, "{err}");
    assert!(err.contains("no QUIC answer within 3s"), "{err}");
}

fn udp_tunnels_active(m: &str) -> u64 {
    m.lines()
        .filter(|l| l.starts_with("portcullis_tunnels_active{") && l.contains(r#"protocol="udp""#))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// One datagram to the client and its echo back (the client may still be starting).
async fn echo_once(local: &UdpSocket, msg: &[u8]) -> bool {
    let mut buf = [0u8; 2048];
    for _ in 0..20 {
        let _ = local.send(msg).await;
        match tokio::time::timeout(Duration::from_millis(500), local.recv(&mut buf)).await {
            Ok(Ok(n)) => return &buf[..n] == msg,
            Ok(Err(_)) => tokio::time::sleep(Duration::from_millis(100)).await,
            Err(_) => {}
        }
    }
    false
}

#[tokio::test]
async fn a_silent_udp_peer_is_forgotten_and_its_next_datagram_opens_a_new_tunnel() {
    for version in ["--http3", "--http1"] {
        // A proxy of its own: the tunnels of the other transport's client stay open there
        // until that QUIC connection's idle timeout.
        let s = setup("").await;
        let (_child, addr) = listening(&s, &["udp", "dns.tunnel.test:53", version, "--udp-idle-timeout", "1s"]).await;
        let local = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        local.connect(addr).await.unwrap();
        assert!(echo_once(&local, b"first").await, "{version}");
        assert_eq!(udp_tunnels_active(&metrics(&s.r).await), 1, "{version}");
        // Silent for longer than the idle timeout: the client closes the tunnel.
        let mut closed = false;
        for _ in 0..40 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if udp_tunnels_active(&metrics(&s.r).await) == 0 {
                closed = true;
                break;
            }
        }
        assert!(closed, "{version}: the silent peer's tunnel is still open");
        assert!(echo_once(&local, b"second").await, "{version}: a new tunnel for the next datagram");
        assert_eq!(udp_tunnels_active(&metrics(&s.r).await), 1, "{version}");
    }
}
