//! Helpers of the hardening suite: memory and time bounds, a normal client, raw HTTP/1.1
//! exchanges, and upstreams that record or count exactly what reaches them.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use portcullis::server::Running;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::client::TlsStream;

use crate::common;

/// Tests whose memory bound is measured take this lock so that they run one at a time (the
/// others of the binary run beside them on other threads, so bounds stay generous).
pub static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Resident set size of this process, KiB.
pub fn rss_kib() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/self/status")
}

/// The RSS when a test's attack starts; `check` asserts it grew by at most `mib`.
pub struct Rss(u64);

impl Rss {
    pub fn now() -> Self {
        Self(rss_kib())
    }

    pub fn check(&self, mib: u64, what: &str) {
        let now = rss_kib();
        let grew = now.saturating_sub(self.0) / 1024;
        assert!(grew <= mib, "{what}: RSS grew by {grew} MiB ({} -> {now} KiB), bound {mib} MiB", self.0);
    }
}

/// An ordinary HTTPS/1.1 GET through the proxy must answer 200 within 10 s.
pub async fn normal_client_ok(r: &Running, host: &str, what: &str) {
    let got = tokio::time::timeout(Duration::from_secs(10), common::https_get(r, host, "/"))
        .await
        .unwrap_or_else(|_| panic!("{what}: a normal client got no answer within 10 s"));
    assert_eq!(got.0, 200, "{what}: a normal client got {}: {}", got.0, got.1);
}

/// The sum of every sample of `name` whose label set contains all of `labels`.
pub fn metric_sum(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with('{'))
        .filter(|l| labels.iter().all(|want| l.contains(want)))
        .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
        .sum()
}

/// A TLS connection to the proxy (SNI `localhost`, the default certificate) with `alpn`.
pub async fn tls(r: &Running, alpn: &[u8]) -> TlsStream<TcpStream> {
    let cfg = common::client_config(&[common::default_cert(r)], &[alpn]);
    common::tls_connect(r.main, "localhost", cfg).await.expect("TLS handshake with the proxy")
}

/// What a raw HTTP/1.1 exchange got back.
#[derive(Debug)]
pub struct Reply {
    /// The status of the first response, when one was read.
    pub status: Option<u16>,
    /// Everything read.
    pub raw: Vec<u8>,
    /// The connection ended (EOF or error) before or right after the response.
    pub closed: bool,
}

impl Reply {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.raw[..self.raw.len().min(2000)]).into_owned()
    }
}

/// Whether `buf` holds one complete response (head and content-length body), and its status.
fn parse_response(buf: &[u8]) -> Option<u16> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut resp = httparse::Response::new(&mut headers);
    let httparse::Status::Complete(head) = resp.parse(buf).ok()? else { return None };
    let status = resp.code?;
    let len = resp
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
        .and_then(|h| std::str::from_utf8(h.value).ok()?.trim().parse::<usize>().ok())
        .unwrap_or(0);
    (buf.len() >= head + len).then_some(status)
}

/// Writes `req` (a write error is not fatal: the server may refuse before reading it all),
/// then reads until one whole response has come, the connection ends, or `limit` passes.
pub async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S, req: &[u8], limit: Duration) -> Reply {
    let deadline = tokio::time::Instant::now() + limit;
    let _ = tokio::time::timeout_at(deadline, async {
        s.write_all(req).await?;
        s.flush().await
    })
    .await;
    let mut raw = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    let mut closed = false;
    loop {
        if let Some(status) = parse_response(&raw) {
            // Is the connection closed right after? (Connection: close, or an error answer.)
            if let Ok(Ok(0) | Err(_)) = tokio::time::timeout(Duration::from_millis(200), s.read(&mut buf)).await {
                closed = true;
            }
            return Reply { status: Some(status), raw, closed };
        }
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => {
                closed = true;
                break;
            }
            Ok(Ok(n)) => raw.extend_from_slice(&buf[..n]),
            Err(_) => break,
        }
    }
    let status = {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut resp = httparse::Response::new(&mut headers);
        resp.parse(&raw).ok().and(resp.code)
    };
    Reply { status, raw, closed }
}

/// One raw request over a new plain TCP connection.
pub async fn plain_exchange(addr: SocketAddr, req: &[u8]) -> Reply {
    let mut s = TcpStream::connect(addr).await.unwrap();
    exchange(&mut s, req, Duration::from_secs(5)).await
}

/// One raw request over a new TLS connection (ALPN http/1.1).
pub async fn tls_exchange(r: &Running, req: &[u8]) -> Reply {
    let mut s = tls(r, b"http/1.1").await;
    exchange(&mut s, req, Duration::from_secs(5)).await
}

/// Reads from `s` until EOF or an error, for at most `limit`: `(bytes read, ended)`.
pub async fn read_to_end_within<S: AsyncRead + Unpin>(s: &mut S, limit: Duration) -> (u64, bool) {
    let deadline = tokio::time::Instant::now() + limit;
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0u64;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => return (total, true),
            Ok(Ok(n)) => total += n as u64,
            Err(_) => return (total, false),
        }
    }
}

/// A request as an upstream received it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Vec<&str> {
        self.headers.iter().filter(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str()).collect()
    }
}

/// A raw TCP upstream: parses what it receives strictly (content-length or chunked
/// framing), records every request and the exact bytes of every connection, and answers
/// each request `200 ok` (after `delay`).
#[derive(Clone)]
pub struct Recorder {
    pub addr: SocketAddr,
    /// Requests whose head arrived (counted before the body is read).
    pub heads: Arc<AtomicU64>,
    pub requests: Arc<Mutex<Vec<Recorded>>>,
    /// The bytes of each connection, and whether the recorder could not parse them.
    pub conns: Arc<Mutex<Vec<ConnLog>>>,
}

/// The bytes of one upstream connection, and whether they did not parse.
pub type ConnLog = Arc<Mutex<(Vec<u8>, bool)>>;

enum Parsed {
    Need,
    Bad,
    Done(Recorded, usize),
}

fn parse_chunked(b: &[u8]) -> Result<Option<(Vec<u8>, usize)>, ()> {
    let mut pos = 0;
    let mut body = Vec::new();
    loop {
        let Some(eol) = b[pos..].windows(2).position(|w| w == b"\r\n") else { return Ok(None) };
        let line = std::str::from_utf8(&b[pos..pos + eol]).map_err(|_| ())?;
        let size_str = line.split(';').next().unwrap_or("");
        if size_str.is_empty() || size_str.len() > 8 || !size_str.bytes().all(|c| c.is_ascii_hexdigit()) {
            return Err(());
        }
        let size = usize::from_str_radix(size_str, 16).map_err(|_| ())?;
        pos += eol + 2;
        if size == 0 {
            // Trailers, then an empty line.
            loop {
                let Some(eol) = b[pos..].windows(2).position(|w| w == b"\r\n") else { return Ok(None) };
                pos += eol + 2;
                if eol == 0 {
                    return Ok(Some((body, pos)));
                }
            }
        }
        if b.len() < pos + size + 2 {
            return Ok(None);
        }
        body.extend_from_slice(&b[pos..pos + size]);
        if &b[pos + size..pos + size + 2] != b"\r\n" {
            return Err(());
        }
        pos += size + 2;
    }
}

fn parse_request(b: &[u8], heads: &AtomicU64, counted: &mut bool) -> Parsed {
    let mut hs = [httparse::EMPTY_HEADER; 128];
    let mut req = httparse::Request::new(&mut hs);
    let head = match req.parse(b) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Parsed::Need,
        Err(_) => return Parsed::Bad,
    };
    if !*counted {
        heads.fetch_add(1, Ordering::SeqCst);
        *counted = true;
    }
    let headers: Vec<(String, String)> = req
        .headers
        .iter()
        .map(|h| (h.name.to_ascii_lowercase(), String::from_utf8_lossy(h.value).into_owned()))
        .collect();
    let te: Vec<&str> = headers.iter().filter(|(n, _)| n == "transfer-encoding").map(|(_, v)| v.as_str()).collect();
    let cl: Vec<&str> = headers.iter().filter(|(n, _)| n == "content-length").map(|(_, v)| v.as_str()).collect();
    let mk = |body: Vec<u8>| Recorded {
        method: req.method.unwrap_or("").to_owned(),
        path: req.path.unwrap_or("").to_owned(),
        headers: headers.clone(),
        body,
    };
    // Strict: an upstream that sees both, or either twice, calls it ambiguous.
    if (!te.is_empty() && !cl.is_empty()) || te.len() > 1 || cl.len() > 1 {
        return Parsed::Bad;
    }
    if let Some(te) = te.first() {
        if !te.eq_ignore_ascii_case("chunked") {
            return Parsed::Bad;
        }
        return match parse_chunked(&b[head..]) {
            Err(()) => Parsed::Bad,
            Ok(None) => Parsed::Need,
            Ok(Some((body, n))) => Parsed::Done(mk(body), head + n),
        };
    }
    let len = match cl.first() {
        None => 0,
        Some(v) if !v.is_empty() && v.bytes().all(|c| c.is_ascii_digit()) && v.len() < 12 => v.parse().unwrap(),
        Some(_) => return Parsed::Bad,
    };
    if b.len() < head + len {
        return Parsed::Need;
    }
    Parsed::Done(mk(b[head..head + len].to_vec()), head + len)
}

impl Recorder {
    pub async fn start(delay: Duration) -> Self {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let rec = Self {
            addr: l.local_addr().unwrap(),
            heads: Arc::default(),
            requests: Arc::default(),
            conns: Arc::default(),
        };
        let r = rec.clone();
        tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                tokio::spawn(r.clone().serve(s, delay));
            }
        });
        rec
    }

    async fn serve(self, mut s: TcpStream, delay: Duration) {
        let log = Arc::new(Mutex::new((Vec::new(), false)));
        self.conns.lock().unwrap().push(log.clone());
        let mut pending: Vec<u8> = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        let mut counted = false;
        loop {
            loop {
                match parse_request(&pending, &self.heads, &mut counted) {
                    Parsed::Need => break,
                    Parsed::Bad => {
                        log.lock().unwrap().1 = true;
                        let _ = s.write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n").await;
                        return;
                    }
                    Parsed::Done(req, used) => {
                        counted = false;
                        self.requests.lock().unwrap().push(req);
                        pending.drain(..used);
                        if !delay.is_zero() {
                            tokio::time::sleep(delay).await;
                        }
                        if s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await.is_err() {
                            return;
                        }
                    }
                }
            }
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    log.lock().unwrap().0.extend_from_slice(&buf[..n]);
                    pending.extend_from_slice(&buf[..n]);
                }
            }
        }
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.requests.lock().unwrap().clone()
    }

    pub fn heads(&self) -> u64 {
        self.heads.load(Ordering::SeqCst)
    }

    /// Whether some connection carried bytes the recorder could not parse.
    pub fn saw_garbage(&self) -> bool {
        self.conns.lock().unwrap().iter().any(|c| c.lock().unwrap().1)
    }

    /// Everything received, every connection, for failure messages.
    pub fn dump(&self) -> String {
        let conns = self.conns.lock().unwrap();
        conns
            .iter()
            .map(|c| String::from_utf8_lossy(&c.lock().unwrap().0).into_owned())
            .collect::<Vec<_>>()
            .join("\n----\n")
    }

    /// Waits up to `limit` for `n` complete requests.
    pub async fn wait_requests(&self, n: usize, limit: Duration) -> Vec<Recorded> {
        let t = Instant::now();
        loop {
            let got = self.requests();
            if got.len() >= n || t.elapsed() > limit {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Raises RLIMIT_NOFILE's soft limit as far as the hard limit allows; returns the new one.
pub fn raise_nofile() -> u64 {
    rlimit::increase_nofile_limit(u64::MAX).unwrap_or(1024)
}
