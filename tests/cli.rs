//! The binary itself: `check` lists every error, `serve` drains on SIGTERM and exits 0.

// Test code measures wall time and may lock as it likes: the clippy.toml rules are for src/.
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_portcullis");

/// A child process killed when the test ends, also when it fails: a leftover child would keep
/// the test harness's output pipe open.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `portcullis serve` (plain HTTP on `main`, admin on `admin`) in front of a demo upstream,
/// ready; both processes are killed when it is dropped.
struct Served {
    proxy: Killed,
    _upstream: Killed,
    _dir: tempfile::TempDir,
    main: u16,
    admin: u16,
}

impl Served {
    fn start(extra_yaml: &str, args: &[&str], stderr: Stdio) -> Self {
        Self::start_route(extra_yaml, "", args, stderr)
    }

    /// As `start`, with `route_keys` (`, key: value` pairs) added to the route.
    fn start_route(extra_yaml: &str, route_keys: &str, args: &[&str], stderr: Stdio) -> Self {
        let upstream_port = free_port();
        let (main, admin) = (free_port(), free_port());
        let upstream = Killed(
            Command::new(BIN)
                .args(["demo-upstream", "--listen", &format!("127.0.0.1:{upstream_port}")])
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("c.yaml");
        std::fs::write(
            &cfg,
            format!(
                "insecure_server: true\naddress: 127.0.0.1:{main}\nadmin_address: 127.0.0.1:{admin}\nmetrics_address: \"\"\nhttp_redirect_address: \"\"\n{extra_yaml}routes:\n - {{from: https://a.test, to: http://127.0.0.1:{upstream_port}{route_keys}}}\n"
            ),
        )
        .unwrap();
        let proxy =
            Killed(Command::new(BIN).args(args).args(["serve", "--config"]).arg(&cfg).stderr(stderr).spawn().unwrap());
        let start = Instant::now();
        while http_get(admin, "/readyz").map_or(true, |r| !r.starts_with("HTTP/1.1 200")) {
            assert!(start.elapsed() < Duration::from_secs(20), "proxy did not become ready");
            std::thread::sleep(Duration::from_millis(50));
        }
        Self { proxy, _upstream: upstream, _dir: dir, main, admin }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[test]
fn check_lists_every_error_and_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.yaml");
    std::fs::write(
        &path,
        "timeout_read: 5 minutes
codec_type: http9
routes:
  - from: https://a.example.com
    to: [http://127.0.0.1:1]
  - from: https://b.example.com
    to: [ftp://x]
    timeout: soon
  - from: https://c.example.com
    to: http://127.0.0.1:2
    timeout: \"5 minutes\"
    allow_websocket: true
",
    )
    .unwrap();
    let out = Command::new(BIN).args(["check", "--config"]).arg(&path).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    for needle in [
        "6 error(s)",
        "timeout_read: invalid duration \"5 minutes\"",
        "codec_type: unknown codec",
        "routes[1].to[0]",
        "routes[1].timeout: invalid duration \"soon\"",
        "routes[2].timeout: invalid duration \"5 minutes\"",
        "routes[2].allow_websocket: unknown field (did you mean \"allow_websockets\"?)",
    ] {
        assert!(err.contains(needle), "missing {needle:?} in:\n{err}");
    }
    let good = dir.path().join("good.yaml");
    std::fs::write(&good, "routes:\n - {from: https://a.test, to: http://127.0.0.1:1}\n").unwrap();
    let out = Command::new(BIN).args(["check", "--config"]).arg(&good).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!String::from_utf8_lossy(&out.stdout).contains("warning"));
    // With an identity provider, a route without a policy is worth a warning (not an error).
    std::fs::write(
        &good,
        "idp_provider_url: https://idp.example.com\nidp_client_id: portcullis\nroutes:\n - {from: https://a.test, to: http://127.0.0.1:1}\n - {from: https://b.test, to: http://127.0.0.1:1, allow_public_unauthenticated_access: true}\n",
    )
    .unwrap();
    let out = Command::new(BIN).args(["check", "--config"]).arg(&good).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("warning: route \"a.test\" is public"), "{stdout}");
    assert!(!stdout.contains("\"b.test\""), "public on purpose: {stdout}");
    let out = Command::new(BIN).arg("version").output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("portcullis "));
}

fn http_get(port: u16, path: &str) -> std::io::Result<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

#[test]
fn sigterm_fails_readiness_finishes_in_flight_requests_and_exits_0() {
    let mut served = Served::start("drain_timeout: 20s\n", &["--log-format", "json"], Stdio::piped());
    let (main, admin) = (served.main, served.admin);
    // A request that takes 1.5 s upstream is in flight when SIGTERM arrives.
    let in_flight = std::thread::spawn(move || http_get(main, "/delay?ms=1500"));
    std::thread::sleep(Duration::from_millis(300));
    let status = Command::new("kill").args(["-TERM", &served.proxy.0.id().to_string()]).status().unwrap();
    assert!(status.success());
    std::thread::sleep(Duration::from_millis(200));
    let ready = http_get(admin, "/readyz").unwrap_or_default();
    assert!(ready.starts_with("HTTP/1.1 503"), "readiness fails at once during the drain: {ready}");
    assert!(http_get(main, "/").is_err(), "listeners stop accepting");
    let answer = in_flight.join().unwrap().unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "the in-flight request completes: {answer}");
    assert!(answer.to_ascii_lowercase().contains("connection: close"), "{answer}");
    let exit = served.proxy.0.wait().unwrap();
    assert_eq!(exit.code(), Some(0));
    let mut logs = String::new();
    BufReader::new(served.proxy.0.stderr.take().unwrap()).lines().map_while(Result::ok).for_each(|l| {
        logs.push_str(&l);
        logs.push('\n');
    });
    assert!(logs.contains("\"message\":\"shutdown complete\""), "JSON logs:\n{logs}");
    assert!(
        logs.contains("\"status\":200") && logs.contains("\"target\":\"access\""),
        "one access log line per request:\n{logs}"
    );
}

#[test]
fn access_log_lines_say_what_the_policy_decided() {
    let mut served = Served::start_route(
        "",
        ", policy: [{allow: {or: [{http_method: GET}]}}, {deny: {or: [{http_path: /secret}]}}]",
        &["--log-format", "json"],
        Stdio::piped(),
    );
    let main = served.main;
    assert!(http_get(main, "/").unwrap().starts_with("HTTP/1.1 200"));
    let post = {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", main)).unwrap();
        s.write_all(b"POST / HTTP/1.1\r\nHost: a.test\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").unwrap();
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out
    };
    assert!(post.starts_with("HTTP/1.1 401"), "{post}");
    assert!(http_get(main, "/secret").unwrap().starts_with("HTTP/1.1 401"));
    assert!(Command::new("kill").args(["-TERM", &served.proxy.0.id().to_string()]).status().unwrap().success());
    served.proxy.0.wait().unwrap();
    let logs: Vec<serde_json::Value> = BufReader::new(served.proxy.0.stderr.take().unwrap())
        .lines()
        .map_while(Result::ok)
        .filter_map(|l| serde_json::from_str(&l).ok())
        .filter(|v: &serde_json::Value| v["target"] == "access")
        .collect();
    let decided: Vec<(String, String, i64)> = logs
        .iter()
        .map(|v| {
            (
                v["path"].as_str().unwrap().to_owned(),
                v["authz"].as_str().unwrap().to_owned(),
                v["authz_rule"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        decided,
        [
            ("/".to_owned(), "allow".to_owned(), 0),
            ("/".to_owned(), "unauthenticated".to_owned(), -1),
            ("/secret".to_owned(), "unauthenticated".to_owned(), 1)
        ],
        "{logs:?}"
    );
}

/// Keep-alive HTTP/1.1 requests until the proxy stops taking connections; returns
/// (answered 200, failed). A request fails when it was taken (written) and no full answer came.
async fn keep_alive_load(port: u16) -> (u64, u64) {
    use http_body_util::{BodyExt, Empty};
    let (mut ok, mut failed) = (0, 0);
    loop {
        let Ok(tcp) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
            return (ok, failed); // the listener is closed: the load is over
        };
        let Ok((mut send, conn)) =
            hyper::client::conn::http1::handshake::<_, Empty<bytes::Bytes>>(hyper_util::rt::TokioIo::new(tcp)).await
        else {
            return (ok, failed);
        };
        tokio::spawn(conn);
        loop {
            if send.ready().await.is_err() {
                break;
            }
            let req = http::Request::get("/status/200").header("host", "a.test").body(Empty::new()).unwrap();
            match send.send_request(req).await {
                Ok(resp) => {
                    let close = resp.headers().get("connection").is_some_and(|v| v == "close");
                    let status = resp.status();
                    if resp.into_body().collect().await.is_ok() && status == 200 {
                        ok += 1;
                    } else {
                        failed += 1;
                    }
                    if close {
                        break;
                    }
                }
                Err(e) if e.is_canceled() => break, // never sent
                Err(e) => {
                    eprintln!("load: {e:?}");
                    failed += 1;
                    break;
                }
            }
        }
    }
}

#[test]
fn sigterm_under_load_answers_every_request_it_took_and_exits_0() {
    let mut served = Served::start("", &["--log-level", "warn", "--termination-grace-period", "10s"], Stdio::null());
    let main = served.main;
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let load: Vec<_> = (0..4).map(|_| rt.spawn(keep_alive_load(main))).collect();
    std::thread::sleep(Duration::from_millis(700));
    let term = Instant::now();
    assert!(Command::new("kill").args(["-TERM", &served.proxy.0.id().to_string()]).status().unwrap().success());
    let (mut ok, mut failed) = (0, 0);
    for l in load {
        let (o, f) = rt.block_on(l).unwrap();
        ok += o;
        failed += f;
    }
    let exit = served.proxy.0.wait().unwrap();
    let took = term.elapsed();
    eprintln!("SIGTERM under load: {ok} answered, {failed} failed; exited {exit} {took:?} after SIGTERM");
    assert_eq!(failed, 0, "every request the proxy took was answered");
    assert!(ok > 100, "the load was real: {ok}");
    assert_eq!(exit.code(), Some(0));
    assert!(took < Duration::from_secs(10), "exited within --termination-grace-period");
}
