//! Real upstreams for the health check tests: a gRPC server (Python grpcio with the standard
//! health service, from PyPI into a venv under the target dir, installed once) driven over
//! stdin, an HTTP server that records the `Host` of each request and answers a set status,
//! and TCP servers that answer a fixed payload. Include it with `mod health_support;`.
#![allow(dead_code, missing_docs)]
// Test code measures wall time and may lock as it likes: the clippy.toml rules are for src/.
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

/// The PyPI releases the venv holds.
const GRPCIO: &str = "grpcio==1.85.1";
const GRPCIO_HEALTH: &str = "grpcio-health-checking==1.85.1";

/// The venv's python, with grpcio and its health service: made under the target dir on first
/// use (built in a scratch dir renamed into place, so an interrupted install is never taken
/// for a finished one), then reused by later runs. Panics with pip's reason if it fails.
pub fn grpc_python() -> PathBuf {
    static PYTHON: OnceLock<PathBuf> = OnceLock::new();
    PYTHON
        .get_or_init(|| install().unwrap_or_else(|e| panic!("installing grpcio for the gRPC health tests: {e}")))
        .clone()
}

fn install() -> Result<PathBuf, String> {
    let root = Path::new(env!("CARGO_TARGET_TMPDIR")).join("grpc-health-venv");
    let python = root.join("bin/python");
    let works = |python: &Path| {
        std::process::Command::new(python)
            .args(["-c", "import grpc, grpc_health.v1.health"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if works(&python) {
        return Ok(python);
    }
    let _ = std::fs::remove_dir_all(&root);
    let scratch = root.with_extension(format!("{}.tmp", std::process::id()));
    let _ = std::fs::remove_dir_all(&scratch);
    eprintln!("health tests: installing {GRPCIO} {GRPCIO_HEALTH} into {}", root.display());
    let run = |cmd: &mut std::process::Command, what: &str| {
        let out = cmd.output().map_err(|e| format!("{what}: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "{what} failed ({}):\n{}\n{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    };
    run(
        std::process::Command::new("python3").args(["-m", "venv"]).arg(&scratch),
        "python3 -m venv (Python 3 with venv is needed)",
    )?;
    run(
        std::process::Command::new(scratch.join("bin/python")).args([
            "-m",
            "pip",
            "install",
            "--disable-pip-version-check",
            "--no-input",
            "-q",
            GRPCIO,
            GRPCIO_HEALTH,
        ]),
        &format!("pip install {GRPCIO} {GRPCIO_HEALTH}"),
    )?;
    // Another test binary may have finished first; its venv is the same one.
    if std::fs::rename(&scratch, &root).is_err() {
        let _ = std::fs::remove_dir_all(&scratch);
    }
    if works(&python) {
        Ok(python)
    } else {
        Err(format!("{} cannot import grpc_health after pip install", python.display()))
    }
}

/// The gRPC server (tests/health_support/grpc_health_server.py), killed when dropped.
pub struct GrpcServer {
    pub addr: SocketAddr,
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl GrpcServer {
    pub async fn start() -> Self {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/health_support/grpc_health_server.py");
        let mut child = Command::new(grpc_python())
            .arg(script)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("start the gRPC health server");
        let stdin = child.stdin.take().unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let line = read_line(&mut stdout).await;
        let port: u16 = line
            .strip_prefix("PORT ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("the gRPC server said {line:?}"));
        Self { addr: SocketAddr::from(([127, 0, 0, 1], port)), child, stdin, stdout }
    }

    /// Sets the status of the server and of service `app`: `SERVING` or `NOT_SERVING`.
    pub async fn set(&mut self, status: &str) {
        self.stdin.write_all(format!("{status}\n").as_bytes()).await.unwrap();
        self.stdin.flush().await.unwrap();
        assert_eq!(read_line(&mut self.stdout).await, format!("OK {status}"));
    }
}

impl Drop for GrpcServer {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

async fn read_line(r: &mut BufReader<ChildStdout>) -> String {
    let mut line = String::new();
    tokio::time::timeout(Duration::from_secs(30), r.read_line(&mut line))
        .await
        .expect("the gRPC server answers within 30 s")
        .expect("read the gRPC server's stdout");
    line.trim().to_owned()
}

/// An HTTP/1.1 server answering every request with `status` (changeable), recording each
/// request's `Host`.
pub struct StatusServer {
    pub addr: SocketAddr,
    pub status: Arc<AtomicU16>,
    pub hosts: Arc<Mutex<Vec<String>>>,
}

impl StatusServer {
    pub async fn start(status: u16) -> Self {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let status = Arc::new(AtomicU16::new(status));
        let hosts = Arc::new(Mutex::new(Vec::new()));
        let (st, h) = (status.clone(), hosts.clone());
        tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                let (st, h) = (st.clone(), h.clone());
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let host = req.headers().get(http::header::HOST).map(|v| v.to_str().unwrap_or("?").to_owned());
                        h.lock().unwrap().push(host.unwrap_or_default());
                        let code = st.load(Ordering::SeqCst);
                        async move {
                            Ok::<_, std::convert::Infallible>(
                                http::Response::builder()
                                    .status(code)
                                    .body(http_body_util::Full::new(bytes::Bytes::from_static(b"status")))
                                    .unwrap(),
                            )
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                        .await;
                });
            }
        });
        Self { addr, status, hosts }
    }
}

/// A TCP server that reads `expect`, then writes `answer` and closes; counts connections.
pub async fn tcp_answering(expect: &'static [u8], answer: &'static [u8]) -> (SocketAddr, Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let count = Arc::new(AtomicUsize::new(0));
    let c = count.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            c.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut got = vec![0u8; expect.len()];
                if s.read_exact(&mut got).await.is_ok() && got == expect {
                    let _ = s.write_all(answer).await;
                }
            });
        }
    });
    (addr, count)
}

/// A TCP server that accepts and closes, counting connections (a connect-only check's
/// probes).
pub async fn tcp_counting() -> (SocketAddr, Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let count = Arc::new(AtomicUsize::new(0));
    let c = count.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            c.fetch_add(1, Ordering::SeqCst);
            drop(s);
        }
    });
    (addr, count)
}

/// An h2c (HTTP/2 prior knowledge) upstream that passes gRPC health checks (always
/// `SERVING`, with `grpc-status: 0` in trailers) and answers anything else with `name`: the
/// second upstream beside the real gRPC server, telling which one served a request.
pub async fn h2c_serving(name: &'static str) -> SocketAddr {
    use http_body_util::BodyExt as _;
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| async move {
                    let body = if req.uri().path() == "/grpc.health.v1.Health/Check" {
                        let mut trailers = http::HeaderMap::new();
                        trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
                        let frames = vec![
                            Ok::<_, std::convert::Infallible>(hyper::body::Frame::data(bytes::Bytes::from_static(&[
                                0, 0, 0, 0, 2, 0x08, 1,
                            ]))),
                            Ok(hyper::body::Frame::trailers(trailers)),
                        ];
                        http_body_util::StreamBody::new(futures_util::stream::iter(frames)).boxed()
                    } else {
                        http_body_util::Full::new(bytes::Bytes::from_static(name.as_bytes())).boxed()
                    };
                    let mut resp = http::Response::new(body);
                    if req.uri().path().starts_with("/grpc.") {
                        resp.headers_mut().insert("content-type", http::HeaderValue::from_static("application/grpc"));
                    }
                    Ok::<_, std::convert::Infallible>(resp)
                });
                let _ = hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                    .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    addr
}
