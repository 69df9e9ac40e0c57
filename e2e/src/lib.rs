//! Support for the end-to-end tests: the cluster that `cargo xtask e2e` started (its
//! kubeconfig), the controller process under test, upstreams on "pod IPs" and an HTTPS client.
//!
//! These tests only make sense inside the network namespace the harness creates, where
//! 127.0.0.1:6443 is a real kube-apiserver and 10.244.0.0/16 is local; outside it they fail
//! with a message saying so rather than skipping.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
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

/// Applies `deploy/rbac.yaml` (the controller's exact permissions) and returns a kubeconfig
/// that authenticates as its ServiceAccount with a token minted by the TokenRequest API.
pub async fn service_account_kubeconfig(admin: &Client) -> std::path::PathBuf {
    use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
    use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
    use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
    use kube::api::PostParams;
    use kube::Api;
    let pp = PostParams::default();
    let ns: Namespace =
        serde_json::from_value(serde_json::json!({"metadata": {"name": "portcullis"}})).expect("namespace");
    Api::<Namespace>::all(admin.clone()).create(&pp, &ns).await.expect("namespace portcullis");
    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/rbac.yaml")).expect("deploy/rbac.yaml");
    for doc in text.split("\n---").filter(|d| d.contains("kind:")) {
        let v: serde_json::Value = serde_yaml_ng::from_str(doc).expect("RBAC YAML");
        let ns = v["metadata"]["namespace"].as_str().unwrap_or("portcullis").to_owned();
        let c = admin.clone();
        let created = match v["kind"].as_str().unwrap_or_default() {
            "ServiceAccount" => Api::<ServiceAccount>::namespaced(c, &ns)
                .create(&pp, &serde_json::from_value(v).expect("sa"))
                .await
                .map(drop),
            "ClusterRole" => {
                Api::<ClusterRole>::all(c).create(&pp, &serde_json::from_value(v).expect("cr")).await.map(drop)
            }
            "ClusterRoleBinding" => {
                Api::<ClusterRoleBinding>::all(c).create(&pp, &serde_json::from_value(v).expect("crb")).await.map(drop)
            }
            "Role" => {
                Api::<Role>::namespaced(c, &ns).create(&pp, &serde_json::from_value(v).expect("role")).await.map(drop)
            }
            "RoleBinding" => Api::<RoleBinding>::namespaced(c, &ns)
                .create(&pp, &serde_json::from_value(v).expect("rb"))
                .await
                .map(drop),
            other => panic!("unexpected kind {other} in deploy/rbac.yaml"),
        };
        created.expect("creating an RBAC object from deploy/rbac.yaml");
    }
    let request = TokenRequest {
        spec: Some(TokenRequestSpec { expiration_seconds: Some(3600), ..Default::default() }),
        ..Default::default()
    };
    let token = Api::<ServiceAccount>::namespaced(admin.clone(), "portcullis")
        .create_token_request("portcullis", &pp, &request)
        .await
        .expect("TokenRequest for the portcullis ServiceAccount")
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

fn http_get_plain(addr: &str, path: &str) -> Option<String> {
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

/// An HTTPS client to the proxy on 127.0.0.1:8443 that accepts its certificate.
pub fn https() -> HttpClient {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let target = portcullis::config::parse::parse_upstream(&serde_json::json!("https://127.0.0.1:8443")).expect("url");
    ClientCache::default().get(&target, &UpstreamTls { skip_verify: true, ..UpstreamTls::default() }, false)
}

/// GET `https://host/path` through the proxy: status and body.
pub async fn get(client: &HttpClient, host: &str, path: &str) -> (u16, String) {
    let req = http::Request::get(format!("https://{host}{path}"))
        .header(http::header::HOST, host)
        .body(Empty::<Bytes>::new().map_err(|n| match n {}).boxed_unsync())
        .expect("request");
    match client.request(req).await {
        Ok(resp) => {
            let status = resp.status().as_u16();
            let body = resp.into_body().collect().await.map(http_body_util::Collected::to_bytes).unwrap_or_default();
            (status, String::from_utf8_lossy(&body).into_owned())
        }
        Err(e) => (0, e.to_string()),
    }
}

/// Polls `check` until it returns `Some` or `limit` passes; panics with `what` on timeout.
pub async fn eventually<T, F, Fut>(what: &str, limit: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let t = Instant::now();
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(t.elapsed() < limit, "timed out after {limit:?} waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
