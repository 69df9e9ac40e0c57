//! Support for the end-to-end tests: the cluster that `cargo xtask e2e` started (its
//! kubeconfig, and a handle to restart its apiserver), the controller process under test,
//! upstreams on "pod IPs", HTTPS clients for both HTTP versions, a strict TLS client that
//! reports the certificate served, and polling helpers for Events and eventual state.
//!
//! These tests only make sense inside the network namespace the harness creates, where
//! 127.0.0.1:6443 is a real kube-apiserver and 10.244.0.0/16 is local; outside it they fail
//! with a message saying so rather than skipping.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use kube::Client;
use portcullis::config::UpstreamTls;
use portcullis::proxy::upstream::{ClientCache, HttpClient};

/// The admin kubeconfig of the e2e cluster.
pub fn kubeconfig() -> String {
    std::env::var("PORTCULLIS_E2E_KUBECONFIG")
        .expect("PORTCULLIS_E2E_KUBECONFIG is not set: run the end-to-end tests with `cargo xtask e2e`")
}

/// A client for the e2e cluster.
pub async fn client() -> Client {
    let kc = kube::config::Kubeconfig::read_from(kubeconfig()).expect("reading the e2e kubeconfig");
    let cfg = kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
        .await
        .expect("kubeconfig");
    Client::try_from(cfg).expect("kube client")
}

/// A kubeconfig that authenticates as the Helm chart's ServiceAccount (`portcullis` in
/// namespace `portcullis`, installed by `cargo xtask e2e`) with a token minted by the
/// TokenRequest API: the controller gets exactly the chart's RBAC, nothing more.
pub async fn service_account_kubeconfig(admin: &Client) -> std::path::PathBuf {
    use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
    use k8s_openapi::api::core::v1::ServiceAccount;
    use kube::api::PostParams;
    use kube::Api;
    let pp = PostParams::default();
    let request = TokenRequest {
        spec: Some(TokenRequestSpec { expiration_seconds: Some(3600), ..Default::default() }),
        ..Default::default()
    };
    let token = Api::<ServiceAccount>::namespaced(admin.clone(), "portcullis")
        .create_token_request("portcullis", &pp, &request)
        .await
        .expect("TokenRequest for the chart's portcullis ServiceAccount (is the chart installed?)")
        .status
        .and_then(|s| s.token)
        .expect("a token");
    let mut kc = kube::config::Kubeconfig::read_from(kubeconfig()).expect("admin kubeconfig");
    for named in &mut kc.auth_infos {
        named.auth_info = Some(kube::config::AuthInfo { token: Some(token.clone().into()), ..Default::default() });
    }
    let path = std::env::temp_dir().join("portcullis-e2e-serviceaccount.kubeconfig");
    std::fs::write(&path, serde_yaml_ng::to_string(&kc).expect("kubeconfig YAML")).expect("writing the kubeconfig");
    path
}

/// A client from a kubeconfig file.
pub async fn client_from(path: &std::path::Path) -> Client {
    let kc = kube::config::Kubeconfig::read_from(path).expect("kubeconfig");
    let cfg = kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
        .await
        .expect("kubeconfig");
    Client::try_from(cfg).expect("kube client")
}

/// A running `portcullis controller`; killed on drop.
pub struct Controller(Child);

impl Controller {
    /// Starts the controller binary with `kubeconfig` and waits for `/readyz`.
    pub fn start(kubeconfig: &std::path::Path, extra: &[&str]) -> Self {
        let bin = std::env::var("PORTCULLIS_BIN").expect("PORTCULLIS_BIN is not set: run with `cargo xtask e2e`");
        let log = std::fs::File::create(std::env::temp_dir().join("portcullis-e2e-controller.log")).expect("log file");
        let child = Command::new(bin)
            .args(["--log-level", "info,access=warn", "controller", "--namespace", "portcullis", "--identity", "e2e-a"])
            .args(extra)
            .env("KUBECONFIG", kubeconfig)
            // The pods' port 8080 is taken on the "pod IPs": the environment moves the
            // redirect listener, over whatever the chart's ProxyConfig says (as the chart's
            // Deployment pins its ports).
            .env("HTTP_REDIRECT_ADDRESS", ":18080")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starting portcullis controller");
        // Constructed first, so that a panic while waiting still kills the process.
        let controller = Self(child);
        wait_ready();
        controller
    }
}

fn wait_ready() {
    let deadline = Instant::now() + Duration::from_mins(1);
    while Instant::now() < deadline {
        if http_get_plain("127.0.0.1:9901", "/readyz").is_some_and(|s| s.starts_with("HTTP/1.1 200")) {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!(
        "the controller did not become ready in 60 s; see {}",
        std::env::temp_dir().join("portcullis-e2e-controller.log").display()
    );
}

impl Drop for Controller {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One sample from the proxy's `/metrics` (on 127.0.0.1:9902): the line that starts with
/// `series` (name and labels exactly as exposed). Used to show that something did *not*
/// happen, such as a downstream connection being opened again. Counters and gauges of
/// connections are whole numbers.
pub fn metric(series: &str) -> u64 {
    let text = http_get_plain("127.0.0.1:9902", "/metrics").expect("the proxy's /metrics answers");
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.trim().parse().ok()))
        .unwrap_or_else(|| panic!("no sample {series} in /metrics"))
}

/// One plain HTTP/1.1 GET to `addr` (metrics, admin): the whole response, head and body.
pub fn http_get_plain(addr: &str, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}

/// Starts a demo upstream named `name` on a pod IP such as `10.244.1.7:8080`.
pub async fn pod(addr: &str, name: &str) -> SocketAddr {
    let l = tokio::net::TcpListener::bind(addr).await.unwrap_or_else(|e| panic!("binding pod address {addr}: {e}"));
    let a = l.local_addr().expect("bound");
    tokio::spawn(portcullis::demo::serve(l, name.to_owned()));
    a
}

/// An HTTPS client to the proxy on 127.0.0.1:8443 that accepts its certificate. It offers
/// `h2` and `http/1.1` in ALPN (the proxy's own upstream client, all versions enabled), so
/// against the default `codec_type: auto` it speaks HTTP/2.
pub fn https() -> HttpClient {
    proxy_client(false)
}

/// Like [`https`], but offering only `http/1.1` in ALPN: browsers and many tools still
/// connect this way, and it takes a different server code path than HTTP/2.
pub fn https_h1() -> HttpClient {
    proxy_client(true)
}

/// A pooled client that sends SNI `sni` (the other clients send none, and so get the default
/// certificate): what a browser does, and what a certificate rotation for that host affects.
/// Like any pooling client it opens a new connection after `Connection: close` or GOAWAY.
pub fn https_sni(sni: &str, h1_only: bool) -> HttpClient {
    proxy_client_with(
        &UpstreamTls { skip_verify: true, server_name: Some(sni.to_owned()), ..UpstreamTls::default() },
        h1_only,
    )
}

fn proxy_client(h1_only: bool) -> HttpClient {
    proxy_client_with(&UpstreamTls { skip_verify: true, ..UpstreamTls::default() }, h1_only)
}

fn proxy_client_with(tls: &UpstreamTls, h1_only: bool) -> HttpClient {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let target = portcullis::config::validate::parse_upstream("https://127.0.0.1:8443").expect("url");
    ClientCache::default().get(&target, tls, h1_only)
}

/// One answer from the proxy. `status` is 0 (and `body` the error) when no response came.
#[derive(Debug)]
pub struct Reply {
    /// HTTP status.
    pub status: u16,
    /// The HTTP version the response came on (what ALPN negotiated).
    pub version: http::Version,
    /// The body as text.
    pub body: String,
    /// No response came, and the request never reached the server: the connection it was
    /// given had just been closed (HTTP/1.1's keep-alive race, RFC 9112 section 9.3.1) or
    /// the stream was refused after GOAWAY. Browsers send such a request again.
    pub retryable: bool,
}

/// GET `https://host/path` through the proxy: status and body.
pub async fn get(client: &HttpClient, host: &str, path: &str) -> (u16, String) {
    let r = fetch(client, host, path).await;
    (r.status, r.body)
}

/// GET `https://host/path` through the proxy, keeping the response's HTTP version.
pub async fn fetch(client: &HttpClient, host: &str, path: &str) -> Reply {
    send(client, http::Method::GET, host, path).await
}

/// `method https://host/path` (no body) through the proxy: what a policy on the method sees.
pub async fn send(client: &HttpClient, method: http::Method, host: &str, path: &str) -> Reply {
    let req = http::Request::builder()
        .method(method)
        .uri(format!("https://{host}{path}"))
        .header(http::header::HOST, host)
        .body(Empty::<Bytes>::new().map_err(|n| match n {}).boxed_unsync())
        .expect("request");
    match client.request(req).await {
        Ok(resp) => {
            let (status, version) = (resp.status().as_u16(), resp.version());
            let body = resp.into_body().collect().await.map(http_body_util::Collected::to_bytes).unwrap_or_default();
            Reply { status, version, body: String::from_utf8_lossy(&body).into_owned(), retryable: false }
        }
        Err(e) => {
            let mut body = e.to_string();
            let mut retryable = false;
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                body.push_str(": ");
                body.push_str(&s.to_string());
                if let Some(h) = s.downcast_ref::<hyper::Error>() {
                    retryable |= h.is_incomplete_message() || h.is_canceled();
                }
                if let Some(h2) = s.downcast_ref::<h2::Error>() {
                    retryable |= h2.reason() == Some(h2::Reason::REFUSED_STREAM) || h2.is_go_away();
                }
                source = s.source();
            }
            Reply { status: 0, version: http::Version::default(), body, retryable }
        }
    }
}

/// The name of the demo upstream that answered (its JSON body's `upstream`), or "" when the
/// body is not the demo's (a 404 from the proxy, an error).
pub fn upstream_of(body: &str) -> String {
    serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["upstream"].as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// A strict TLS connection to the proxy on 127.0.0.1:8443: sends `sni`, offers `alpn`,
/// verifies the chain against `roots` and the name against `sni`. The proxy's HTTP client
/// above skips verification and sends no SNI (it connects to an IP), so certificate
/// selection, and anything that must ride on one host's certificate, needs this one.
pub async fn tls_to_proxy(
    sni: &str,
    roots: &[rustls_pki_types::CertificateDer<'static>],
    alpn: &[&[u8]],
) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>, String> {
    let mut store = rustls::RootCertStore::empty();
    for r in roots {
        store.add(r.clone()).map_err(|e| format!("adding a root: {e}"))?;
    }
    let mut config =
        rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(store)
            .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let name = rustls_pki_types::ServerName::try_from(sni.to_owned()).map_err(|e| e.to_string())?;
    let tcp = tokio::net::TcpStream::connect("127.0.0.1:8443").await.map_err(|e| format!("connect: {e}"))?;
    tokio::time::timeout(Duration::from_secs(5), tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp))
        .await
        .map_err(|_| "TLS handshake timed out".to_owned())?
        .map_err(|e| format!("TLS handshake: {e}"))
}

/// Completes a TLS handshake with the proxy sending `sni` (see [`tls_to_proxy`]) and returns
/// the leaf certificate it presented.
pub async fn served_leaf(
    sni: &str,
    roots: &[rustls_pki_types::CertificateDer<'static>],
) -> Result<rustls_pki_types::CertificateDer<'static>, String> {
    let tls = tls_to_proxy(sni, roots, &[]).await?;
    tls.get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.clone().into_owned())
        .ok_or_else(|| "no certificate presented".to_owned())
}

/// A WebSocket through the proxy to a demo upstream's echo (`/ws`) on `host`, over HTTP/1.1
/// on a TLS connection that negotiated `host`'s certificate: the long-lived connection that
/// a certificate rotation of that host drains and nothing else may touch.
pub async fn websocket(host: &str, roots: &[rustls_pki_types::CertificateDer<'static>]) -> WebSocket {
    let tls = tls_to_proxy(host, roots, &[b"http/1.1"]).await.unwrap_or_else(|e| panic!("TLS to {host}: {e}"));
    let (ws, response) = tokio_tungstenite::client_async(format!("ws://{host}/ws"), tls)
        .await
        .unwrap_or_else(|e| panic!("WebSocket handshake with {host}: {e}"));
    assert_eq!(response.status(), 101, "WebSocket upgrade on {host}");
    ws
}

/// A WebSocket made by [`websocket`].
pub type WebSocket = tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>;

/// Whether `ws` echoes `text` within two seconds: the WebSocket is still up end to end.
pub async fn echoes(ws: &mut WebSocket, text: &str) -> bool {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    if ws.send(Message::text(text.to_owned())).await.is_err() {
        return false;
    }
    matches!(
        tokio::time::timeout(Duration::from_secs(2), ws.next()).await,
        Ok(Some(Ok(m))) if m.to_text().ok() == Some(text)
    )
}

/// Waits up to `limit` for the proxy to close `ws` (a close frame, an error or the end of
/// the stream), and returns whether it did.
pub async fn closed_within(ws: &mut WebSocket, limit: Duration) -> bool {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    tokio::time::timeout(limit, async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Close(_)) | Err(_)) | None => return,
                Some(Ok(_)) => {}
            }
        }
    })
    .await
    .is_ok()
}

/// Waits for a Warning Event with `reason` about the object `name` in `namespace` whose note
/// contains every one of `needles`, and returns that note. Events are the only place a bad
/// Ingress is reported (Ingress has no status conditions), so most bad-input steps end here.
/// Matching on the note, not just the reason, keeps an earlier Event about the same object
/// from satisfying a later check.
pub async fn warning_event(kube: &Client, namespace: &str, name: &str, reason: &str, needles: &[&str]) -> String {
    use k8s_openapi::api::events::v1::Event;
    let events = kube::Api::<Event>::namespaced(kube.clone(), namespace);
    let what = format!("a Warning Event {reason} on {namespace}/{name} saying {needles:?}");
    let last_seen = std::sync::Mutex::new(Vec::<String>::new());
    let found = eventually_or(Duration::from_secs(15), || {
        let events = events.clone();
        let last_seen = &last_seen;
        async move {
            let list = events.list(&kube::api::ListParams::default()).await.ok()?;
            let about: Vec<Event> = list
                .items
                .into_iter()
                .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
                .collect();
            *last_seen.lock().expect("lock") =
                about.iter().map(|e| format!("{:?} {:?}: {:?}", e.type_, e.reason, e.note)).collect();
            about
                .into_iter()
                .filter(|e| e.type_.as_deref() == Some("Warning") && e.reason.as_deref() == Some(reason))
                .filter_map(|e| e.note)
                .find(|note| needles.iter().all(|n| note.contains(n)))
        }
    })
    .await;
    found.unwrap_or_else(|| {
        panic!("timed out waiting for {what}; Events about {name}: {:#?}", last_seen.lock().expect("lock"))
    })
}

/// Whether some Event with `reason` exists about `name` (for asserting one was *not* sent).
pub async fn has_event(kube: &Client, namespace: &str, name: &str, reason: &str) -> bool {
    use k8s_openapi::api::events::v1::Event;
    let list = kube::Api::<Event>::namespaced(kube.clone(), namespace)
        .list(&kube::api::ListParams::default())
        .await
        .expect("listing Events");
    list.items.iter().any(|e| {
        e.reason.as_deref() == Some(reason) && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name)
    })
}

/// Polls `check` until it returns `Some` or `limit` passes; panics with `what` on timeout.
pub async fn eventually<T, F, Fut>(what: &str, limit: Duration, check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    match eventually_or(limit, check).await {
        Some(v) => v,
        None => panic!("timed out after {limit:?} waiting for: {what}"),
    }
}

/// Like [`eventually`], but `None` on timeout so the caller can say what it saw instead.
/// Polls every 50 ms: the controller applies a change within tens of milliseconds, so a
/// coarser interval would be most of each step's time.
pub async fn eventually_or<T, F, Fut>(limit: Duration, mut check: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let t = Instant::now();
    loop {
        if let Some(v) = check().await {
            return Some(v);
        }
        if t.elapsed() >= limit {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The kube-apiserver `cargo xtask e2e` started, as described by the JSON file named in
/// `PORTCULLIS_E2E_APISERVER`: its pid and exact command line. Lets a test stop it and start
/// an identical one against the same etcd (every object survives), to prove the controller
/// keeps serving while the API is gone and resyncs when it is back.
pub struct ApiServer {
    pid: u32,
    argv: Vec<String>,
    log: std::path::PathBuf,
}

impl ApiServer {
    /// Reads the handle xtask wrote.
    pub fn from_env() -> Self {
        let path = std::env::var("PORTCULLIS_E2E_APISERVER")
            .expect("PORTCULLIS_E2E_APISERVER is not set: run the end-to-end tests with `cargo xtask e2e`");
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).expect("reading the apiserver handle"))
                .expect("apiserver handle JSON");
        Self {
            pid: v["pid"].as_u64().and_then(|p| u32::try_from(p).ok()).expect("pid"),
            argv: v["argv"]
                .as_array()
                .expect("argv")
                .iter()
                .map(|a| a.as_str().expect("argv entries are strings").to_owned())
                .collect(),
            log: v["log"].as_str().expect("log").into(),
        }
    }

    /// Stops the running apiserver the way the kubelet stops a pod: SIGTERM, then SIGKILL if
    /// it has not exited after a short grace period. It stops listening at once, but Go's
    /// `http.Server.Shutdown` then waits up to `--request-timeout` (60 s) for connections with
    /// open watches, such as the controller's, to close; the grace period keeps the test short.
    /// Returns what happened, for the log.
    ///
    /// The apiserver is xtask's child, so it stays a zombie (state `Z`) until xtask reaps it at
    /// teardown; a zombie holds no sockets, so port 6443 is free then.
    pub async fn stop(&self) -> String {
        const GRACE: Duration = Duration::from_secs(2);
        let t = Instant::now();
        self.signal("TERM");
        let listening = || std::net::TcpStream::connect("127.0.0.1:6443").is_ok();
        let stopped_listening = eventually_or(Duration::from_secs(10), || async { (!listening()).then_some(()) }).await;
        assert!(stopped_listening.is_some(), "kube-apiserver still accepts connections 10 s after SIGTERM");
        let listening_for = t.elapsed();
        if self.wait_exited(GRACE).await {
            return format!("exited {:.1?} after SIGTERM", t.elapsed());
        }
        self.signal("KILL");
        assert!(self.wait_exited(Duration::from_secs(10)).await, "kube-apiserver survived SIGKILL");
        format!("stopped listening {listening_for:.1?} after SIGTERM, still draining connections after {GRACE:?}, then SIGKILL")
    }

    fn signal(&self, name: &str) {
        let status =
            Command::new("kill").args([&format!("-{name}"), &self.pid.to_string()]).status().expect("running kill");
        assert!(status.success(), "kill -{name} {} failed", self.pid);
    }

    /// Whether the process has exited (or become a zombie) within `limit`.
    async fn wait_exited(&self, limit: Duration) -> bool {
        let pid = self.pid;
        eventually_or(limit, move || async move {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            // `pid (comm) S ...`: the state follows the last ')'.
            let state = stat.rsplit_once(')').and_then(|(_, rest)| rest.trim_start().chars().next());
            matches!(state, None | Some('Z' | 'X')).then_some(())
        })
        .await
        .is_some()
    }

    /// Starts a new apiserver with the same command line, under `setpriv --pdeathsig KILL`
    /// (so it dies with the test even if the test is killed outright), logging to the file
    /// xtask named (xtask prints its tail on failure). The returned guard kills it on drop.
    pub fn start_again(&self) -> RestartedApiServer {
        let log = std::fs::File::create(&self.log).expect("apiserver log file");
        let child = Command::new("setpriv")
            .args(["--pdeathsig", "KILL"])
            .args(&self.argv)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .expect("starting kube-apiserver again");
        RestartedApiServer(child)
    }
}

/// A kube-apiserver started by the test; killed on drop.
pub struct RestartedApiServer(Child);

impl RestartedApiServer {
    /// Waits until `/readyz` answers 200 (through `kube`, whose broken connections to the old
    /// process are replaced transparently). Returns how long that took.
    pub async fn wait_ready(&mut self, kube: &Client) -> Duration {
        let t = Instant::now();
        loop {
            if let Ok(Some(status)) = self.0.try_wait() {
                panic!("the restarted kube-apiserver exited ({status})");
            }
            let req = http::Request::get("/readyz").body(Vec::new()).expect("request");
            if kube.request_text(req).await.is_ok_and(|t| t.trim() == "ok") {
                return t.elapsed();
            }
            assert!(
                t.elapsed() < Duration::from_mins(2),
                "the restarted kube-apiserver was not ready within 2 minutes"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for RestartedApiServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A program a step started (sshd, dnsmasq): killed and reaped when dropped, its stderr in
/// `log` for the failure message.
pub struct Program {
    child: Child,
    /// Where its stdout and stderr go.
    pub log: std::path::PathBuf,
}

impl Program {
    /// Starts `argv` with its output in `log`; panics naming the program when it cannot start.
    pub fn start(argv: &[&str], log: &std::path::Path) -> Self {
        let out = std::fs::File::create(log).expect("program log");
        let child = Command::new(argv[0])
            .args(&argv[1..])
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("log handle"))
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {argv:?}: {e}"));
        Self { child, log: log.to_owned() }
    }

    /// What it wrote so far.
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Program {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends an HTTP/1.1 request `head` (the request line and headers, without the blank line)
/// on `io` and reads the response head: its status, the head as text, and the bytes that
/// came after it (the tunnel's first bytes). Bounded: 16 KiB of head, 10 s.
pub async fn h1_exchange<S>(io: &mut S, head: &str) -> Result<(u16, String, Vec<u8>), String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    io.write_all(format!("{head}\r\n\r\n").as_bytes()).await.map_err(|e| format!("writing the request: {e}"))?;
    io.flush().await.map_err(|e| format!("writing the request: {e}"))?;
    let mut buf = Vec::new();
    let read = async {
        loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                return Ok(end);
            }
            if buf.len() > 16 * 1024 {
                return Err("a response head over 16 KiB".to_owned());
            }
            let mut chunk = [0u8; 4096];
            match io.read(&mut chunk).await {
                Ok(0) => return Err(format!("closed before a response: {:?}", String::from_utf8_lossy(&buf))),
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                Err(e) => return Err(format!("reading the response: {e}")),
            }
        }
    };
    let end =
        tokio::time::timeout(Duration::from_secs(10), read).await.map_err(|_| "no response in 10 s".to_owned())??;
    let text = String::from_utf8_lossy(&buf[..end]).into_owned();
    let status = text.split(' ').nth(1).and_then(|s| s.parse().ok()).ok_or_else(|| format!("not HTTP: {text:?}"))?;
    Ok((status, text, buf[end + 4..].to_vec()))
}

/// An HTTP/1.1 CONNECT to `authority` through the proxy on a TLS connection sending `sni`
/// (see [`tls_to_proxy`]): the status, the response head, the stream and its first bytes.
pub async fn tunnel_tcp(
    sni: &str,
    roots: &[rustls_pki_types::CertificateDer<'static>],
    authority: &str,
) -> Result<(u16, String, tokio_rustls::client::TlsStream<tokio::net::TcpStream>, Vec<u8>), String> {
    let mut tls = tls_to_proxy(sni, roots, &[b"http/1.1"]).await?;
    let (status, head, rest) =
        h1_exchange(&mut tls, &format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}")).await?;
    Ok((status, head, tls, rest))
}

/// The HTTP/1.1 form of CONNECT-UDP (RFC 9298 section 3.2: `Upgrade: connect-udp`, DATAGRAM
/// capsules on the stream) to `host:port` through the proxy, on a TLS connection sending
/// `sni`: the status and head, and on 101 the stream with its first bytes.
pub async fn tunnel_udp(
    sni: &str,
    roots: &[rustls_pki_types::CertificateDer<'static>],
    host: &str,
    port: u16,
) -> Result<(u16, String, tokio_rustls::client::TlsStream<tokio::net::TcpStream>, Vec<u8>), String> {
    let mut tls = tls_to_proxy(sni, roots, &[b"http/1.1"]).await?;
    let path = portcullis::masque::udp_path(host, port);
    let head = format!(
        "GET {path} HTTP/1.1\r\nHost: {sni}\r\nConnection: Upgrade\r\nUpgrade: connect-udp\r\nCapsule-Protocol: ?1"
    );
    let (status, head, rest) = h1_exchange(&mut tls, &head).await?;
    Ok((status, head, tls, rest))
}

/// Sends `payload` as one DATAGRAM capsule on a CONNECT-UDP stream and waits (up to 5 s) for
/// the first UDP payload that comes back. `pending` holds bytes already read after the
/// response head.
pub async fn udp_round_trip<S>(io: &mut S, pending: Vec<u8>, payload: &[u8]) -> Result<Bytes, String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    io.write_all(&portcullis::masque::udp_capsule(payload)).await.map_err(|e| format!("writing a capsule: {e}"))?;
    io.flush().await.map_err(|e| format!("writing a capsule: {e}"))?;
    let mut buf = bytes::BytesMut::from(&pending[..]);
    let read = async {
        loop {
            while let Some(c) = portcullis::masque::take_capsule(&mut buf).map_err(|e| e.to_string())? {
                if c.kind == portcullis::masque::DATAGRAM_CAPSULE {
                    if let Some(p) = portcullis::masque::udp_payload(c.value) {
                        return Ok(p);
                    }
                }
            }
            let mut chunk = [0u8; 4096];
            match io.read(&mut chunk).await {
                Ok(0) => return Err("the tunnel closed before an answer".to_owned()),
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                Err(e) => return Err(format!("reading capsules: {e}")),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(5), read).await.map_err(|_| "no datagram back in 5 s".to_owned())?
}
