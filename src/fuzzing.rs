//! Fuzz targets, one function per target, each taking arbitrary bytes.
//!
//! They live in the library (rather than in `fuzz/`) for two reasons: the cargo-fuzz project
//! under `fuzz/` is built with the nightly toolchain and sanitizer flags, and the committed
//! corpus must also be replayed by the ordinary test command on the stable toolchain
//! (`tests/fuzz_corpus.rs`); both call exactly these functions. Each function must never
//! panic on any input while the code under test is correct; the functions themselves assert
//! invariants (a route lookup consistent with the precedence rules, a proxy that still
//! answers after any input). Run them with `cargo xtask fuzz`. Not part of the public API.

use std::collections::BTreeMap;
use std::io::{ErrorKind, Read as _, Write as _};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use tokio::time::Instant;

use k8s_openapi::api::core::v1::{Secret, Service, ServicePort, ServiceSpec};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::api::networking::v1::{
    HTTPIngressPath, HTTPIngressRuleValue, Ingress, IngressBackend, IngressRule, IngressServiceBackend, IngressSpec,
    IngressTLS, ServiceBackendPort,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::ByteString;

use crate::config::validate::parse_host;
use crate::config::{HostMatch, PathMatch};
use crate::k8s::ingress::{translate_ingress, ANNOTATION_PREFIX};
use crate::k8s::objects::Objects;
use crate::proxy::table::{prefix_matches, RouteTable};
use crate::source::yaml::{parse_config, yaml_to_value, NoMaterial};

// ---------------------------------------------------------------------------------------------
// config

/// `config`: the input as a standalone YAML config, through the same parser and validator as
/// `serve --config` (`FileSource::load` minus the file system: referenced files are refused,
/// as `NoMaterial` does, and no environment overrides).
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(root) = yaml_to_value(text) else { return };
    match parse_config(&root, &NoMaterial) {
        Ok(config) => {
            // What the data plane does with a valid config first: compile the route table.
            let table = RouteTable::new(config.routes, |r| (&r.host, &r.path));
            for r in table.routes() {
                if let (HostMatch::Exact(h), PathMatch::Exact(p)) = (&r.host, &r.path) {
                    assert!(table.lookup(h, p).is_some(), "route {:?} is not found by its own host and path", r.name);
                }
            }
        }
        Err(errs) => {
            assert!(!errs.0.is_empty(), "a rejected config must say why");
            let _ = errs.to_string();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// annotations

/// The Objects an annotation may refer to: Service `web/app` (port `http` 80, one ready
/// endpoint), and Secrets `web/ca` (a CA certificate), `web/client` (a client certificate
/// and key), `web/tls` (a `kubernetes.io/tls` pair) and `web/bad` (garbage).
/// (Per thread: `Objects` records its reads in a `RefCell`.)
fn objects() -> Objects {
    let meta = |name: &str| ObjectMeta {
        namespace: Some("web".into()),
        name: Some(name.into()),
        resource_version: Some("1".into()),
        ..Default::default()
    };
    let mut o = Objects::default();
    let svc = Service {
        metadata: meta("app"),
        spec: Some(ServiceSpec {
            ports: Some(vec![ServicePort { name: Some("http".into()), port: 80, ..Default::default() }]),
            ..Default::default()
        }),
        status: None,
    };
    o.services.insert(("web".into(), "app".into()), Arc::new(svc));
    let mut slice_meta = meta("app-abc");
    slice_meta.labels = Some([("kubernetes.io/service-name".to_owned(), "app".to_owned())].into());
    o.add_slice(EndpointSlice {
        metadata: slice_meta,
        address_type: "IPv4".into(),
        endpoints: Some(vec![Endpoint {
            addresses: vec!["10.244.1.7".into()],
            conditions: Some(EndpointConditions { ready: Some(true), serving: Some(true), terminating: Some(false) }),
            ..Default::default()
        }]),
        ports: Some(vec![EndpointPort { name: Some("http".into()), port: Some(8080), ..Default::default() }]),
    });
    let key = rcgen::KeyPair::generate().expect("key generation");
    let cert = rcgen::CertificateParams::new(vec!["app.example.com".to_owned()])
        .expect("certificate parameters")
        .self_signed(&key)
        .expect("self-signed certificate");
    let secret = |name: &str, data: &[(&str, &str)]| Secret {
        metadata: meta(name),
        data: Some(data.iter().map(|(k, v)| ((*k).to_owned(), ByteString(v.as_bytes().to_vec()))).collect()),
        type_: Some("kubernetes.io/tls".into()),
        ..Default::default()
    };
    let (cert_pem, key_pem) = (cert.pem(), key.serialize_pem());
    for s in [
        secret("ca", &[("ca.crt", &cert_pem)]),
        secret("client", &[("tls.crt", &cert_pem), ("tls.key", &key_pem)]),
        secret("tls", &[("tls.crt", &cert_pem), ("tls.key", &key_pem)]),
        secret("bad", &[("ca.crt", "not PEM"), ("tls.crt", "-----BEGIN CERTIFICATE-----\nAAAA\n"), ("tls.key", "")]),
    ] {
        o.secrets.insert(("web".into(), s.metadata.name.clone().unwrap_or_default()), Arc::new(s));
    }
    o
}

thread_local! {
    static OBJECTS: Objects = objects();
}

/// `annotations`: an Ingress `web/shop` built from the input, through the translation the
/// controller runs (`translate_ingress`).
///
/// The input is lines of `key=value`. A key without `/` is a `portcullis.io/<key>` annotation
/// (a key with `/` is used as it is); the special keys `@host`, `@path`, `@pathType`,
/// `@service`, `@port` and `@tls` set the one rule's host, path, path type, backend Service,
/// backend port (a number or a name) and a `spec.tls` Secret. A value may use `\n` for a
/// newline (YAML maps and lists in annotations).
pub fn annotations(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let mut annotations = BTreeMap::new();
    let (mut host, mut path, mut path_type) = (Some("app.example.com".to_owned()), Some("/".to_owned()), "Prefix");
    let (mut service, mut port) = ("app".to_owned(), ServiceBackendPort { name: None, number: Some(80) });
    let mut tls = None;
    let path_types = ["Prefix", "Exact", "ImplementationSpecific"];
    for line in text.lines() {
        let (key, value) = line.split_once('=').unwrap_or((line, ""));
        let value = value.replace("\\n", "\n");
        match key {
            "@host" => host = (!value.is_empty()).then_some(value),
            "@path" => path = (!value.is_empty()).then_some(value),
            "@pathType" => path_type = path_types.iter().find(|t| **t == value).copied().unwrap_or("Bogus"),
            "@service" => service = value,
            "@port" => {
                port = match value.parse::<i32>() {
                    Ok(n) => ServiceBackendPort { name: None, number: Some(n) },
                    Err(_) => ServiceBackendPort { name: Some(value), number: None },
                }
            }
            "@tls" => tls = Some(value),
            k if k.contains('/') => {
                annotations.insert(k.to_owned(), value);
            }
            k => {
                annotations.insert(format!("{ANNOTATION_PREFIX}{k}"), value);
            }
        }
    }
    let backend =
        IngressBackend { service: Some(IngressServiceBackend { name: service, port: Some(port) }), resource: None };
    let ingress = Ingress {
        metadata: ObjectMeta {
            namespace: Some("web".into()),
            name: Some("shop".into()),
            annotations: Some(annotations),
            ..Default::default()
        },
        spec: Some(IngressSpec {
            rules: Some(vec![IngressRule {
                host,
                http: Some(HTTPIngressRuleValue {
                    paths: vec![HTTPIngressPath { path, path_type: path_type.into(), backend: backend.clone() }],
                }),
            }]),
            default_backend: Some(backend),
            tls: tls.map(|secret| vec![IngressTLS { hosts: None, secret_name: Some(secret) }]),
            ..Default::default()
        }),
        status: None,
    };
    OBJECTS.with(|objects| {
        match translate_ingress(&ingress, objects) {
            Ok(translated) => {
                // The same validated routes the controller assembles; compile them as it would.
                let table = RouteTable::new(translated.routes, |r| (&r.host, &r.path));
                assert!(!table.routes().is_empty(), "a translated Ingress with a default backend has routes");
            }
            Err(errs) => assert!(!errs.is_empty(), "a rejected Ingress must say why"),
        }
        // Translations keep no state between calls except the read log; drop it.
        objects.take_reads();
    });
}

// ---------------------------------------------------------------------------------------------
// route_match

/// One fixed route: its matchers and its declaration index.
struct Fixed {
    host: HostMatch,
    path: PathMatch,
}

/// The fixed routes the `route_match` table is built from (the input picks a subset).
static FIXED: LazyLock<Vec<Fixed>> = LazyLock::new(|| {
    let spec: &[(&str, &str)] = &[
        ("foo.com", "/api"),
        ("foo.com", "=/api"),
        ("foo.com", "/api/v1"),
        ("foo.com", "~/api/v[0-9]+/users"),
        ("foo.com", ""),
        ("*.foo.com", "/api"),
        ("*.foo.com", "~/img/[a-z0-9]+\\.png"),
        ("*.foo.com", ""),
        ("*", "/"),
        ("*", "/static"),
        ("*", "=/healthz"),
        ("*", "~/(a|b)+"),
        ("bar.example.org", "=/"),
        ("bar.example.org", "/x/y/z"),
        ("*.example.org", "/x"),
        ("xn--bcher-kva.example", "/"),
    ];
    spec.iter()
        .map(|(host, path)| {
            let host = if *host == "*" { HostMatch::Any } else { parse_host(host).expect("fixed host") };
            let path = if let Some(p) = path.strip_prefix('=') {
                PathMatch::Exact(p.to_owned())
            } else if let Some(r) = path.strip_prefix('~') {
                PathMatch::Regex(regex::Regex::new(&format!("^(?:{r})$")).expect("fixed regex"))
            } else if path.is_empty() || *path == "/" {
                PathMatch::Any
            } else {
                PathMatch::Prefix((*path).to_owned())
            };
            Fixed { host, path }
        })
        .collect()
});

/// The host as the table compares it: no port, no trailing dot, ASCII lower case; `None`
/// for an IPv6 literal or a name over 256 bytes (those only match "any host" routes).
fn reference_host(host: &str) -> Option<String> {
    if host.starts_with('[') {
        return None;
    }
    let host = match host.rfind(':') {
        Some(i) => &host[..i],
        None => host,
    };
    let host = host.strip_suffix('.').unwrap_or(host);
    (host.len() <= 256).then(|| host.to_ascii_lowercase())
}

/// How specific a matching route is, bigger first: host class, then path class, then the
/// length of a prefix or regex; `None` if the route does not match at all.
fn rank(route: &Fixed, host: Option<&str>, path: &str) -> Option<(u8, u8, usize)> {
    let host_rank = match (&route.host, host) {
        (HostMatch::Any, _) => 0,
        (HostMatch::Exact(h), Some(n)) if h == n => 2,
        (HostMatch::Wildcard(s), Some(n)) if n.split_once('.').is_some_and(|(_, rest)| rest == s) => 1,
        _ => return None,
    };
    let (path_rank, weight) = match &route.path {
        PathMatch::Any => (0, 0),
        PathMatch::Exact(p) if p == path => (2, 0),
        PathMatch::Prefix(p) if prefix_matches(p, path) => (1, p.len()),
        PathMatch::Regex(r) if r.is_match(path) => (1, r.as_str().len() - "^(?:)$".len()),
        _ => return None,
    };
    Some((host_rank, path_rank, weight))
}

/// `route_match`: a table of some of the fixed routes (chosen by the first two bytes, one bit
/// per route), looked up with host and path from the rest of the input (split at the first
/// newline). The answer must be the most specific matching route (exact host, then wildcard,
/// then any; exact path, then the longest prefix or regex, then the host's catch-all; ties in
/// declaration order), and no answer only when no route matches.
pub fn route_match(data: &[u8]) {
    let (mask, rest) = match data {
        [a, b, rest @ ..] => (u16::from_le_bytes([*a, *b]), rest),
        _ => (u16::MAX, data),
    };
    let text = String::from_utf8_lossy(rest);
    let (host, path) = text.split_once('\n').unwrap_or((&text, "/"));
    let chosen: Vec<&Fixed> = FIXED.iter().enumerate().filter(|(i, _)| mask & (1 << i) != 0).map(|(_, r)| r).collect();
    let table = RouteTable::new(chosen.clone(), |r| (&r.host, &r.path));

    let normalized = reference_host(host);
    let expected = chosen
        .iter()
        .enumerate()
        .filter_map(|(i, r)| rank(r, normalized.as_deref(), path).map(|rank| (rank, i)))
        // Highest rank; among equals, the first declared.
        .min_by_key(|&((h, p, w), i)| (std::cmp::Reverse((h, p, w)), i))
        .map(|(_, i)| i);
    let got = table.lookup_index(host, path);
    assert_eq!(got, expected, "lookup({host:?}, {path:?}) in a table of routes {mask:#06x}");
    if let Some(i) = got {
        assert!(std::ptr::eq(*table.lookup(host, path).expect("same lookup"), chosen[i]));
    }
}

// ---------------------------------------------------------------------------------------------
// http1

/// How long one input's connection is read at most before it is closed.
const HTTP1_READ: Duration = Duration::from_millis(200);
/// How long an input's connection waits for its first answer byte before it half-closes,
/// and how long a flowing answer may pause before the connection is closed.
const HTTP1_QUIET: Duration = Duration::from_millis(40);
/// The proxy is checked with a normal request after every this many inputs.
const HTTP1_CHECK_EVERY: u64 = 16;

/// The proxy under test, started once per process.
struct Served {
    /// The plain HTTP listener (`insecure_server: true`).
    main: SocketAddr,
    /// The runtime serving it; kept alive for the process.
    _runtime: tokio::runtime::Runtime,
}

/// Panics on the proxy's own threads (a panicking connection task is caught by tokio, so it
/// would otherwise go unnoticed outside libFuzzer, whose panic hook aborts).
static SERVER_PANICS: AtomicUsize = AtomicUsize::new(0);
/// The proxy runtime's thread name, to tell its panics from the caller's.
const RUNTIME_THREAD: &str = "portcullis-fuzz";

static SERVED: LazyLock<Served> = LazyLock::new(|| {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if std::thread::current().name().is_some_and(|n| n.starts_with(RUNTIME_THREAD)) {
            SERVER_PANICS.fetch_add(1, Ordering::SeqCst);
        }
        previous(info);
    }));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name(RUNTIME_THREAD)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let main = runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind the upstream");
        let upstream = listener.local_addr().expect("upstream address");
        tokio::spawn(crate::demo::serve(listener, "fuzz-upstream"));
        let yaml = format!(
            "address: \"127.0.0.1:0\"\nhttp_redirect_address: \"\"\nadmin_address: \"\"\nmetrics_address: \"\"\n\
             insecure_server: true\ntimeout_idle: 2s\ntimeout_read: 2s\ndefault_upstream_timeout: 2s\nroutes:\n\
             \x20 - from: https://a.test\n    to: [http://{upstream}]\n    set_response_headers: {{X-Fuzz: yes}}\n\
             \x20 - from: https://a.test\n    prefix: /api\n    prefix_rewrite: /v2\n    to: [http://{upstream}]\n\
             \x20   remove_request_headers: [x-secret]\n    set_request_headers: {{X-Added: '1'}}\n\
             \x20 - from: https://*.b.test\n    path: /ws\n    allow_websockets: true\n    to: [http://{upstream}]\n\
             \x20 - from: https://*\n    regex: /r/([0-9]+)\n    regex_rewrite_pattern: /r/([0-9]+)\n\
             \x20   regex_rewrite_substitution: /n/$1\n    preserve_host_header: true\n    to: [http://{upstream}]\n"
        );
        let root = yaml_to_value(&yaml).expect("fuzz config YAML");
        let config = parse_config(&root, &NoMaterial).unwrap_or_else(|e| panic!("fuzz config:\n{e}"));
        let running = crate::server::start(config).await.expect("start the proxy");
        let main = running.main;
        // The proxy serves for as long as the process lives.
        std::mem::forget(running);
        main
    });
    let served = Served { main, _runtime: runtime };
    assert_proxy_answers(&served);
    served
});

/// `PORTCULLIS_FUZZ_DEBUG=1` prints the start of every answer (to see what inputs reach).
static HTTP1_DEBUG: LazyLock<bool> = LazyLock::new(|| std::env::var_os("PORTCULLIS_FUZZ_DEBUG").is_some());

/// Inputs run so far (for the periodic check).
static HTTP1_RUNS: AtomicU64 = AtomicU64::new(0);

/// `http1`: the input as raw bytes on a fresh TCP connection to the proxy's plain HTTP
/// listener (HTTP/1.1 and h2c prior knowledge, routes to the demo upstream). The answer is
/// read for up to 200 ms and the connection closed; after every 16th input (and the first)
/// the proxy must still answer a normal `GET` with 200, and no task of the proxy may have
/// panicked.
pub fn http1(data: &[u8]) {
    let served = &*SERVED;
    if let Ok(mut stream) = TcpStream::connect(served.main) {
        let _ = stream.set_nodelay(true);
        let _ = stream.set_write_timeout(Some(HTTP1_READ));
        let _ = stream.write_all(data);
        let deadline = Instant::now() + HTTP1_READ;
        let (mut answered, mut half_closed) = (false, false);
        let mut buf = [0u8; 16 * 1024];
        let mut answer = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            // Wait HTTP1_QUIET for the first byte (then half-close and wait for the rest of
            // HTTP1_READ); once the answer flows, stop after a pause of HTTP1_QUIET
            // (a keep-alive connection stays open).
            let wait = if answered || !half_closed { HTTP1_QUIET.min(left) } else { left };
            if wait.is_zero() || stream.set_read_timeout(Some(wait)).is_err() {
                break;
            }
            match stream.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    answered = true;
                    if *HTTP1_DEBUG {
                        answer.extend_from_slice(&buf[..n]);
                    }
                }
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) && !answered => {
                    if half_closed {
                        break;
                    }
                    // No answer yet: the input may be an incomplete request. Half-close so
                    // that the proxy sees its end instead of waiting for more. (Not at once:
                    // on a half-close the proxy drops a complete request it has not answered.)
                    let _ = stream.shutdown(Shutdown::Write);
                    half_closed = true;
                }
                Err(_) => break,
            }
        }
        if *HTTP1_DEBUG {
            eprintln!("http1 answer: {:?}", String::from_utf8_lossy(&answer[..answer.len().min(600)]));
        }
    }
    if HTTP1_RUNS.fetch_add(1, Ordering::Relaxed) % HTTP1_CHECK_EVERY == 0 {
        assert_proxy_answers(served);
    }
    assert_eq!(SERVER_PANICS.load(Ordering::SeqCst), 0, "a proxy task panicked (see the panic message above)");
}

/// A normal request through the proxy to the demo upstream must get a 200.
fn assert_proxy_answers(served: &Served) {
    let mut stream = TcpStream::connect(served.main).expect("the proxy accepts connections");
    stream.set_read_timeout(Some(Duration::from_secs(5))).expect("read timeout");
    stream
        .write_all(b"GET /hello HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n")
        .expect("the proxy reads a request");
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    let head = String::from_utf8_lossy(&response[..response.len().min(200)]).into_owned();
    assert!(head.starts_with("HTTP/1.1 200"), "the proxy no longer answers a normal GET: {head:?}");
}

/// A fuzz target: arbitrary bytes in, a panic only on a bug.
pub type Target = fn(&[u8]);

/// Every target by name, for the corpus replay and tools.
pub const TARGETS: &[(&str, Target)] =
    &[("config", config), ("annotations", annotations), ("route_match", route_match), ("http1", http1)];
