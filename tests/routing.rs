//! The PRODUCT.md matching table and the header rules, through real HTTPS requests.

// Test code measures wall time and may lock as it likes: the clippy.toml rules are for src/.
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]

mod common;

use common::*;
use http::Request;

async fn served_by(r: &portcullis::server::Running, host: &str, path: &str) -> String {
    let mut c = h1_tls(r.main, "localhost", &[default_cert(r)]).await;
    let (status, v) = json(c.send_request(get(host, path)).await.unwrap()).await;
    if status == 404 {
        return "404".to_owned();
    }
    v["upstream"].as_str().unwrap_or("?").to_owned()
}

#[tokio::test]
async fn host_and_path_matching_table() {
    let names = ["exact", "prefix", "longer", "wild", "any", "re", "exactcase"];
    let mut ups = std::collections::HashMap::new();
    for n in names {
        ups.insert(n, upstream(n).await);
    }
    let (r, _d) = start(&format!(
        "routes:
 - {{from: https://foo.test, path: /foo, to: http://{exact}}}
 - {{from: https://foo.test, prefix: /foo, to: http://{prefix}}}
 - {{from: https://foo.test, prefix: /foo/bar/, to: http://{longer}}}
 - {{from: https://foo.test, path: /Case, to: http://{exactcase}}}
 - {{from: https://foo.test, regex: \"/items/[0-9]+\", to: http://{re}}}
 - {{from: \"https://*.wild.test\", to: http://{wild}}}
 - {{from: \"https://*\", path: /fallback, to: http://{any}}}
",
        exact = ups["exact"],
        prefix = ups["prefix"],
        longer = ups["longer"],
        exactcase = ups["exactcase"],
        re = ups["re"],
        wild = ups["wild"],
        any = ups["any"],
    ))
    .await;
    let cases = [
        ("foo.test", "/foo", "exact"),
        ("foo.test", "/foo/", "prefix"),
        ("foo.test", "/foo/x", "prefix"),
        ("foo.test", "/foobar", "404"),
        ("foo.test", "/foo/bar", "longer"),
        ("foo.test", "/foo/bar/baz", "longer"),
        ("FOO.test", "/foo?q=1", "exact"),
        ("foo.test", "/case", "404"),
        ("foo.test", "/Case", "exactcase"),
        ("foo.test", "/items/42", "re"),
        ("foo.test", "/items/4x", "404"),
        ("a.wild.test", "/anything", "wild"),
        ("wild.test", "/", "404"),
        ("a.b.wild.test", "/", "404"),
        ("other.test", "/fallback", "any"),
        ("other.test", "/", "404"),
    ];
    for (host, path, want) in cases {
        assert_eq!(served_by(&r, host, path).await, want, "{host}{path}");
    }
}

#[tokio::test]
async fn forwarding_headers_are_set_from_the_connection_and_hop_by_hop_removed() {
    let up = upstream("u").await;
    let (r, _d) = start(&format!(
        "routes:
 - from: https://a.test
   to: http://{up}
   set_request_headers: {{X-Added: yes, X-Replaced: new}}
   remove_request_headers: [x-secret]
   set_response_headers: {{Strict-Transport-Security: max-age=31536000}}
 - {{from: https://keep.test, to: http://{up}, preserve_host_header: true}}
 - {{from: https://rewrite.test, to: http://{up}, host_rewrite: internal.svc}}
"
    ))
    .await;
    let mut c = h1_tls(r.main, "a.test", &[default_cert(&r)]).await;
    let req = Request::get("/path")
        .header("host", "a.test")
        .header("x-forwarded-for", "6.6.6.6")
        .header("x-forwarded-proto", "gopher")
        .header("x-request-id", "forged")
        .header("x-replaced", "old")
        .header("x-secret", "s3cret")
        .header("connection", "keep-alive, x-hop")
        .header("x-hop", "1")
        .body(empty())
        .unwrap();
    let resp = c.send_request(req).await.unwrap();
    assert_eq!(resp.headers()["strict-transport-security"], "max-age=31536000");
    let (_, v) = json(resp).await;
    let h = &v["headers"];
    assert_eq!(h["x-forwarded-for"], "127.0.0.1", "incoming X-Forwarded-For is not trusted");
    assert_eq!(h["x-forwarded-proto"], "https");
    assert_eq!(h["x-forwarded-host"], "a.test");
    assert_ne!(h["x-request-id"], "forged");
    assert_eq!(h["x-request-id"].as_str().unwrap().len(), 24);
    assert_eq!(h["x-added"], "yes");
    assert_eq!(h["x-replaced"], "new");
    assert!(h.get("x-secret").is_none() && h.get("x-hop").is_none(), "{h}");
    assert_eq!(h["host"], up.to_string(), "default Host is the upstream's");

    let (_, v) =
        json(h1_tls(r.main, "keep.test", &[default_cert(&r)]).await.send_request(get("keep.test", "/")).await.unwrap())
            .await;
    assert_eq!(v["headers"]["host"], "keep.test");
    let (_, v) = json(
        h1_tls(r.main, "rewrite.test", &[default_cert(&r)]).await.send_request(get("rewrite.test", "/")).await.unwrap(),
    )
    .await;
    assert_eq!(v["headers"]["host"], "internal.svc");
}

#[tokio::test]
async fn oversized_headers_get_431_with_a_body_and_request_id() {
    let up = upstream("u").await;
    let (r, _d) = start(&format!("routes:\n - {{from: https://a.test, to: http://{up}}}\n")).await;
    let mut c = h1_tls(r.main, "a.test", &[default_cert(&r)]).await;
    let req = Request::get("/").header("host", "a.test").header("x-big", "a".repeat(40 * 1024)).body(empty()).unwrap();
    let (status, body) = text(c.send_request(req).await.unwrap()).await;
    assert_eq!(status, 431);
    assert!(body.contains("exceed 32 KiB") && body.contains("request id:"), "{body}");
    let mut c = h1_tls(r.main, "a.test", &[default_cert(&r)]).await;
    let mut req = get("a.test", "/");
    for i in 0..120 {
        req.headers_mut()
            .insert(http::HeaderName::try_from(format!("x-h{i}")).unwrap(), http::HeaderValue::from_static("v"));
    }
    let (status, body) = text(c.send_request(req).await.unwrap()).await;
    assert_eq!(status, 431, "{body}");
    // The proxy survives and keeps serving.
    assert_eq!(https_get(&r, "a.test", "/").await.0, 200);
}

#[tokio::test]
#[allow(clippy::many_single_char_names)]
async fn weighted_round_robin_spreads_by_weight_and_reuses_upstream_connections() {
    let a = upstream("a").await;
    let b = upstream("b").await;
    let (r, _d) =
        start(&format!("routes:\n - {{from: https://a.test, to: [\"http://{a},3\", \"http://{b},1\"]}}\n")).await;
    let mut c = h1_tls(r.main, "a.test", &[default_cert(&r)]).await;
    let mut counts = std::collections::HashMap::<String, usize>::new();
    let mut conns = std::collections::HashSet::new();
    for _ in 0..40 {
        let (_, v) = json(c.send_request(get("a.test", "/")).await.unwrap()).await;
        *counts.entry(v["upstream"].as_str().unwrap().to_owned()).or_default() += 1;
        conns.insert((v["upstream"].as_str().unwrap().to_owned(), v["connection"].as_u64().unwrap()));
    }
    assert_eq!(counts["a"], 30, "{counts:?}");
    assert_eq!(counts["b"], 10, "{counts:?}");
    assert_eq!(conns.len(), 2, "sequential requests reuse one keep-alive connection per upstream: {conns:?}");
}

#[tokio::test]
async fn http_ingress_redirects_to_https_except_acme_challenges() {
    let up = upstream("acme").await;
    let (r, _d) = start(&format!(
        "routes:\n - {{from: https://a.test, prefix: /.well-known/acme-challenge/, to: http://{up}}}\n"
    ))
    .await;
    let http = r.http.unwrap();
    let mut c = h1_plain(http).await;
    let resp = c.send_request(get("a.test", "/some/path?x=1")).await.unwrap();
    assert_eq!(resp.status(), 308);
    assert_eq!(resp.headers()["location"], "https://a.test/some/path?x=1");
    let resp = c.send_request(get(&format!("a.test:{}", http.port()), "/p")).await.unwrap();
    assert_eq!(resp.headers()["location"], format!("https://a.test:{}/p", r.main.port()).as_str());
    let (status, v) = json(c.send_request(get("a.test", "/.well-known/acme-challenge/token")).await.unwrap()).await;
    assert_eq!(status, 200);
    assert_eq!(v["upstream"], "acme");
}

#[tokio::test]
async fn insecure_server_serves_routes_in_plain_http() {
    let up = upstream("u").await;
    let (r, _d) =
        start(&format!("insecure_server: true\nroutes:\n - {{from: https://a.test, to: http://{up}}}\n")).await;
    assert!(r.http.is_none(), "no redirect listener with insecure_server");
    let mut c = h1_plain(r.main).await;
    let (status, v) = json(c.send_request(get("a.test", "/")).await.unwrap()).await;
    assert_eq!(status, 200);
    assert_eq!(v["headers"]["x-forwarded-proto"], "http");
}

#[tokio::test]
async fn metrics_have_the_contract_names_and_bounded_labels() {
    let up = upstream("u").await;
    let (r, _d) = start(&format!("routes:\n - {{name: app, from: https://a.test, to: http://{up}}}\n")).await;
    for p in ["/x/1", "/x/2", "/y"] {
        https_get(&r, "a.test", p).await;
    }
    https_get(&r, "nope.test", "/secret/path").await;
    let m = metrics(&r).await;
    for name in [
        "portcullis_http_requests_total{listener=\"https-ingress\",route=\"app\",method=\"GET\",code=\"200\"} 3",
        "portcullis_http_requests_total{listener=\"https-ingress\",route=\"none\",method=\"GET\",code=\"404\"} 1",
        "portcullis_http_request_duration_seconds_bucket",
        "portcullis_downstream_connections_active{listener=\"https-ingress\"}",
        "portcullis_downstream_connections_total{listener=\"https-ingress\"}",
        "portcullis_upstream_requests_total{route=\"app\",upstream=",
        "portcullis_listener_manager_total_filter_chains_draining 0",
        "portcullis_config_last_reload_success 1",
        "portcullis_config_last_reload_success_timestamp_seconds",
        "portcullis_build_info",
    ] {
        assert!(m.contains(name), "missing {name}:\n{m}");
    }
    assert!(!m.contains("/secret/path") && !m.contains("/x/1"), "raw paths must never be labels");
}

#[tokio::test]
async fn admin_endpoints() {
    let up = upstream("u").await;
    let pki = Pki::new();
    pki.leaf("c", &["a.test"]);
    let r = start_in(pki.dir.path(), &format!("certificates: [{{cert_file: c.pem, key_file: c-key.pem}}]\nroutes:\n - {{from: https://a.test, to: http://{up}}}\n")).await;
    let mut c = h1_plain(r.admin.unwrap()).await;
    assert_eq!(text(c.send_request(get("x", "/healthz")).await.unwrap()).await.0, 200);
    assert_eq!(text(c.send_request(get("x", "/readyz")).await.unwrap()).await.0, 200);
    let (_, dump) = text(c.send_request(get("x", "/config_dump")).await.unwrap()).await;
    assert!(dump.contains("\"timeout_idle\": \"5m0s\"") && dump.contains("a.test"), "{dump}");
    let key_pem = std::fs::read_to_string(pki.dir.path().join("c-key.pem")).unwrap();
    let key_body = key_pem.lines().nth(1).unwrap();
    assert!(!dump.contains(key_body) && !dump.contains("PRIVATE KEY"), "no key material in /config_dump");
    let (_, l) = text(c.send_request(get("x", "/listeners")).await.unwrap()).await;
    for n in ["https-ingress", "http-ingress", "admin", "metrics-ingress"] {
        assert!(l.contains(n), "{l}");
    }
}

#[tokio::test]
async fn a_route_whose_service_has_no_ready_endpoints_answers_503() {
    use portcullis::config::fields::KeyPath;
    use portcullis::config::input::{Destinations, RouteInput};
    use portcullis::config::validate::{self, Errors};
    use portcullis::source::yaml::NoMaterial;
    init();
    // What the cluster translation builds for a Service without ready endpoints.
    let cluster = RouteInput {
        from: Some("https://a.test".into()),
        to: Some(Destinations::Resolved(Vec::new())),
        name: Some("web/shop".into()),
        ..RouteInput::default()
    };
    let tree = serde_json::json!({"from": "https://a.test", "to": [], "name": "web/shop"});
    let mut errs = Errors::default();
    let route = validate::route(&cluster, &KeyPath("r".into()), &mut errs).expect("empty to is allowed for clusters");
    let yaml = with_ports("routes: []\n");
    let root = portcullis::source::yaml::yaml_to_value(&yaml).unwrap();
    let mut config = portcullis::source::yaml::parse_config(&root, &NoMaterial).unwrap();
    config.routes.push(std::sync::Arc::new(route));
    let r = portcullis::server::start(config).await.unwrap();
    let (status, body) = https_get(&r, "a.test", "/").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("no ready endpoints"), "{body}");
    let mut errs = Errors::default();
    assert!(
        portcullis::source::yaml::parse_route("r", &tree, &NoMaterial, &mut errs).is_none(),
        "a file must name an upstream"
    );
}
