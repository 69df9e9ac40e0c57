//! Cluster behaviour against a real kube-apiserver and etcd (started by `cargo xtask e2e`):
//! real objects through the API, the real controller binary, real HTTPS through its proxy.
//!
//! One sequential scenario: the steps share one cluster, one controller and port 8443, and
//! build on each other (objects made in `setup` are used throughout). Each step is a
//! function below, in the order the scenario runs them; e2e/README.md lists what they assert.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::Version;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{Ingress, IngressClass};
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt};
use portcullis::k8s::crd::{ProxyConfig, Route};
use portcullis::proxy::upstream::HttpClient;
use portcullis_e2e::{
    client, client_from, closed_within, echoes, eventually, eventually_or, fetch, get, has_event, http_get_plain,
    https, https_h1, https_sni, metric, pod, send, served_leaf, service_account_kubeconfig, tunnel_tcp, tunnel_udp,
    upstream_of, warning_event, websocket, ApiServer, Controller, Program, WebSocket,
};
use rustls_pki_types::CertificateDer;
use serde_json::{json, Value};

// The sign-in tests' harness (tests/signin_support): node's oidc-provider and a scripted user
// agent. It is written for the portcullis crate's lints, which do not ask for
// `Duration::from_mins`.
#[path = "../../tests/signin_support/mod.rs"]
#[allow(clippy::duration_suboptimal_units)]
mod signin_support;

const NS: &str = "e2e-shop";
const SOON: Duration = Duration::from_secs(15);
/// The ProxyConfig's `drainTimeout` (set in e2e/chart-values.yaml): short, so that the
/// scenario sees a drained WebSocket closed (and controller restarts end their drains quickly).
const DRAIN_TIMEOUT: &str = "3s";
/// The controller's flags in every start.
const CONTROLLER_ARGS: &[&str] = &["--publish-address", "203.0.113.10"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingress_and_route_lifecycle_against_a_real_api_server() {
    let started = Instant::now();
    let kube = client().await;
    let k = Kube::new(&kube);
    setup(&k).await;

    // The controller runs as the chart's ServiceAccount, with exactly the chart's RBAC.
    let sa = service_account_kubeconfig(&kube).await;
    rbac_is_exactly_the_list(&sa).await;
    let mut controller = Controller::start(&sa, CONTROLLER_ARGS);
    let h2 = https();
    let h1 = https_h1();
    let both = [(&h2, Version::HTTP_2), (&h1, Version::HTTP_11)];

    step("host and path rules over HTTP/2 and HTTP/1.1", host_and_path_table(&both)).await;
    step("Kubernetes path semantics", path_rules(&both)).await;
    // After traffic, so that every metric family has a series.
    Box::pin(step("the Helm chart's objects in the API", chart_objects(&kube))).await;
    step("Ingress status.loadBalancer", load_balancer_status(&k)).await;
    step("IngressClass selection", class_selection(&k, &h2)).await;
    step("resource backends", resource_backend(&k, &h2)).await;
    step("ExternalName Services", external_name(&h2)).await;
    step("endpoints scale up and down", endpoints_scale(&k, &h2)).await;
    step("endpoints scaled down under load with outlier detection on: zero failed requests", scale_down_under_load(&k))
        .await;
    step("spec.defaultBackend", default_backend(&k, &h2)).await;
    step("bad Ingress edits", bad_ingress_edits(&k, &h2)).await;
    step("conflicting routes", conflicts(&k, &h2)).await;
    step("Route resources", route_resources(&k, &h2)).await;
    step("access policy on Routes and Ingresses", access_policy(&k, &h2)).await;
    step("an Ingress with tcp_upstream reaches sshd on a pod IP", ssh_through_an_ingress_tunnel(&k)).await;
    step("a UDP Route reaches dnsmasq", dns_through_a_udp_route(&k)).await;
    // Boxed: with its WebSockets and load generators this step is a large future.
    let tls = Box::pin(step("TLS from Secrets and rotation", tls_secrets(&k, &h2))).await;
    step("ProxyConfig status", proxy_config_status(&k, &h2)).await;
    step("sign-outs reach every replica through the ConfigMap", shared_sign_outs(&k, &sa)).await;
    // After the step above, which sees the sign-out ConfigMap created by its first sign-out.
    Box::pin(step("browser sign-in with settings from ProxyConfig and Secrets", browser_sign_in(&k))).await;

    step("a bad edit stores the last good version", store_last_good(&k)).await;
    // A controller restart resyncs from the API and serves the same config, including the
    // stored last good version of the object that is bad now.
    drop(controller);
    controller = Controller::start(&sa, CONTROLLER_ARGS);
    step("controller restart", after_controller_restart(&https(), &tls)).await;
    step("a fixed object leaves the store", release_last_good(&k)).await;

    step("kube-apiserver restart", apiserver_restart(&k, &https(), &tls)).await;
    drop(controller);
    eprintln!("e2e scenario passed in {:.1?}", started.elapsed());
}

/// Runs one step and prints how long it took (the CI budget is tight; this shows where it goes).
async fn step<T>(name: &str, f: impl std::future::Future<Output = T>) -> T {
    let t = Instant::now();
    let out = f.await;
    eprintln!("step {name}: ok in {:.2?}", t.elapsed());
    out
}

/// API handles for the scenario's namespace.
struct Kube {
    client: Client,
    ingresses: Api<Ingress>,
    services: Api<Service>,
    slices: Api<EndpointSlice>,
    secrets: Api<Secret>,
    routes: Api<Route>,
    configs: Api<ProxyConfig>,
}

impl Kube {
    fn new(client: &Client) -> Self {
        Self {
            client: client.clone(),
            ingresses: Api::namespaced(client.clone(), NS),
            services: Api::namespaced(client.clone(), NS),
            slices: Api::namespaced(client.clone(), NS),
            secrets: Api::namespaced(client.clone(), NS),
            routes: Api::namespaced(client.clone(), NS),
            configs: Api::all(client.clone()),
        }
    }

    async fn create_ingress(&self, v: Value) {
        let name = v["metadata"]["name"].as_str().unwrap_or_default().to_owned();
        self.ingresses.create(&PostParams::default(), &obj(v)).await.unwrap_or_else(|e| panic!("Ingress {name}: {e}"));
    }

    async fn patch_ingress(&self, name: &str, patch: Value) {
        self.ingresses
            .patch(name, &PatchParams::default(), &Patch::Merge(patch))
            .await
            .unwrap_or_else(|e| panic!("patching Ingress {name}: {e}"));
    }

    async fn delete_ingress(&self, name: &str) {
        self.ingresses.delete(name, &DeleteParams::default()).await.unwrap_or_else(|e| panic!("deleting {name}: {e}"));
    }

    async fn warning(&self, name: &str, reason: &str, needles: &[&str]) -> String {
        warning_event(&self.client, NS, name, reason, needles).await
    }
}

fn obj<T: serde::de::DeserializeOwned>(v: Value) -> T {
    serde_json::from_value(v).expect("a valid object")
}

/// A Service backend reference on port `http`.
fn backend(service: &str) -> Value {
    json!({"service": {"name": service, "port": {"name": "http"}}})
}

/// An HTTP path of an Ingress rule.
fn path(p: &str, path_type: &str, service: &str) -> Value {
    json!({"path": p, "pathType": path_type, "backend": backend(service)})
}

/// An Ingress of class `portcullis` with one rule.
fn ingress(name: &str, host: &str, paths: &[Value]) -> Value {
    json!({
        "metadata": {"name": name},
        "spec": {"ingressClassName": "portcullis", "rules": [{"host": host, "http": {"paths": paths}}]},
    })
}

fn slice(service: &str, ready: &[(&str, bool)]) -> EndpointSlice {
    obj(json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": format!("{service}-1"), "namespace": NS, "labels": {"kubernetes.io/service-name": service}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": ready.iter().map(|(ip, r)| json!({"addresses": [ip], "conditions": {"ready": r}})).collect::<Vec<_>>(),
    }))
}

/// Service `name` (port `http` 80 -> 8080) with one ready endpoint `ip`, where a demo
/// upstream named `pod-<name>` listens.
async fn backed_service(k: &Kube, name: &str, ip: &str) {
    let pp = PostParams::default();
    k.services
        .create(&pp, &obj(json!({"metadata": {"name": name}, "spec": {"ports": [{"name": "http", "port": 80, "targetPort": 8080}]}})))
        .await
        .expect("service");
    k.slices.create(&pp, &slice(name, &[(ip, true)])).await.expect("endpoint slice");
    pod(&format!("{ip}:8080"), &format!("pod-{name}")).await;
}

/// GETs every (host, path) with every client and checks the status, the HTTP version the
/// answer came on, and which pod answered ("" for none).
async fn expect_table(clients: &[(&HttpClient, Version)], table: &[(&str, &str, u16, &str)]) {
    for (c, version) in clients {
        for (host, path, status, upstream) in table {
            let r = fetch(c, host, path).await;
            assert_eq!(r.status, *status, "{host}{path} over {version:?}: {}", r.body);
            assert_eq!(r.version, *version, "{host}{path}: the response's HTTP version");
            assert_eq!(upstream_of(&r.body), *upstream, "{host}{path} over {version:?}: which pod answered");
        }
    }
}

/// Polls until `host/path` answers `status` from `upstream` ("" for none).
async fn serves(c: &HttpClient, host: &str, path: &str, status: u16, upstream: &str) {
    let what = format!("{host}{path} answers {status} from {upstream:?}");
    eventually(&what, SOON, || async {
        let (s, body) = get(c, host, path).await;
        (s == status && upstream_of(&body) == upstream).then_some(())
    })
    .await;
}

/// Objects that no step breaks, checked after each bad input: "every other object is unaffected".
async fn others_unaffected(c: &HttpClient) {
    expect_table(
        &[(c, Version::HTTP_2)],
        &[
            ("paths.test", "/a/b", 200, "pod-two"),
            ("default.test", "/", 200, "pod-8"),
            ("ext.test", "/", 200, "pod-ext"),
        ],
    )
    .await;
}

/// Everything the controller finds when it starts: the class, the ProxyConfig, Services with
/// pods behind them, and the Ingresses most steps look at.
async fn setup(k: &Kube) {
    let pp = PostParams::default();
    Api::<Namespace>::all(k.client.clone())
        .create(&pp, &obj(json!({"metadata": {"name": NS}})))
        .await
        .expect("namespace");
    // The IngressClass (our default) and the ProxyConfig are the Helm chart's, installed by
    // `cargo xtask e2e` with e2e/chart-values.yaml.
    let class = Api::<IngressClass>::all(k.client.clone()).get("portcullis").await.expect("the chart's IngressClass");
    assert_eq!(
        class.annotations().get("ingressclass.kubernetes.io/is-default-class").map(String::as_str),
        Some("true")
    );
    let global = k.configs.get("global").await.expect("the chart's ProxyConfig");
    assert_eq!(global.spec.drain_timeout.as_deref(), Some(DRAIN_TIMEOUT), "drainTimeout from the chart's values");

    // `app` has two pods (only pod-7 ready for now); `one` and `two` one each.
    k.services
        .create(&pp, &obj(json!({"metadata": {"name": "app"}, "spec": {"ports": [{"name": "http", "port": 80, "targetPort": 8080}]}})))
        .await
        .expect("service");
    k.slices.create(&pp, &slice("app", &[("10.244.1.7", true)])).await.expect("endpoint slice");
    pod("10.244.1.7:8080", "pod-7").await;
    pod("10.244.1.8:8080", "pod-8").await;
    backed_service(k, "one", "10.244.2.1").await;
    backed_service(k, "two", "10.244.2.2").await;
    // There is no DNS in the namespace, but /etc/hosts is shared: `localhost` resolves.
    k.services
        .create(&pp, &obj(json!({"metadata": {"name": "ext"}, "spec": {"type": "ExternalName", "externalName": "localhost", "ports": [{"name": "http", "port": 18181}]}})))
        .await
        .expect("ExternalName service");
    pod("127.0.0.1:18181", "pod-ext").await;

    k.create_ingress(json!({
        "metadata": {"name": "shop", "annotations": {"portcullis.io/timeout": "7s"}},
        "spec": {"ingressClassName": "portcullis", "rules": [
            {"host": "shop.test", "http": {"paths": [path("/exact", "Exact", "app"), path("/foo", "Prefix", "app")]}},
            {"host": "*.wild.test", "http": {"paths": [path("/", "Prefix", "app")]}},
        ]},
    }))
    .await;
    k.create_ingress(json!({
        "metadata": {"name": "other-class"},
        "spec": {"ingressClassName": "nginx", "rules": [{"host": "other.test", "http": {"paths": [path("/", "Prefix", "app")]}}]},
    }))
    .await;
    k.create_ingress(json!({
        "metadata": {"name": "no-class"},
        "spec": {"rules": [{"host": "default.test", "http": {"paths": [path("/", "Prefix", "app")]}}]},
    }))
    .await;
    // Declared shortest first and Prefix before Exact, so that declaration order would
    // give the wrong answers.
    k.create_ingress(json!({
        "metadata": {"name": "paths"},
        "spec": {"ingressClassName": "portcullis", "rules": [
            {"host": "paths.test", "http": {"paths": [
                path("/a", "Prefix", "one"),
                path("/a/b", "Prefix", "two"),
                path("/x", "Prefix", "one"),
                path("/x", "Exact", "two"),
            ]}},
            {"host": "slash.test", "http": {"paths": [path("/foo/", "Prefix", "one"), path("/bar", "Exact", "two")]}},
        ]},
    }))
    .await;
    for (name, class, host) in [("legacy", "portcullis", "legacy.test"), ("legacy-nginx", "nginx", "legacy-nginx.test")]
    {
        k.create_ingress(json!({
            "metadata": {"name": name, "annotations": {"kubernetes.io/ingress.class": class}},
            "spec": {"rules": [{"host": host, "http": {"paths": [path("/", "Prefix", "one")]}}]},
        }))
        .await;
    }
    k.create_ingress(ingress(
        "mixed",
        "mixed.test",
        &[
            path("/svc", "Prefix", "one"),
            json!({"path": "/bucket", "pathType": "Prefix", "backend": {"resource": {"apiGroup": "k8s.example.com", "kind": "StorageBucket", "name": "static-assets"}}}),
        ],
    ))
    .await;
    k.create_ingress(ingress("external", "ext.test", &[path("/", "Prefix", "ext")])).await;
    // Good objects that `bad_ingress_edits` later breaks, one bad-input kind each.
    k.create_ingress(json!({
        "metadata": {"name": "annotated", "annotations": {"portcullis.io/idle_timeout": "1m"}},
        "spec": {"ingressClassName": "portcullis", "rules": [{"host": "annotated.test", "http": {"paths": [path("/", "Prefix", "two")]}}]},
    }))
    .await;
    k.create_ingress(json!({
        "metadata": {"name": "items", "annotations": {"portcullis.io/path_regex": "true"}},
        "spec": {"ingressClassName": "portcullis", "rules": [{"host": "regex.test", "http": {"paths": [path("/items/[0-9]+", "ImplementationSpecific", "one")]}}]},
    }))
    .await;
    k.create_ingress(ingress("moving", "moving.test", &[path("/", "Prefix", "one")])).await;
    // The older of two Ingresses claiming dup.test/same (see `conflicts`).
    k.create_ingress(ingress("dup-old", "dup.test", &[path("/same", "Prefix", "one")])).await;
}

async fn rbac_is_exactly_the_list(sa: &std::path::Path) {
    let sa_client = client_from(sa).await;
    let forbidden =
        Api::<k8s_openapi::api::core::v1::Pod>::all(sa_client.clone()).list(&kube::api::ListParams::default()).await;
    assert!(
        matches!(&forbidden, Err(kube::Error::Api(s)) if s.code == 403),
        "listing Pods is not in the list: {forbidden:?}"
    );
    let forbidden = Api::<Secret>::namespaced(sa_client, NS)
        .create(&PostParams::default(), &obj(json!({"metadata": {"name": "nope"}, "stringData": {"a": "b"}})))
        .await;
    assert!(
        matches!(&forbidden, Err(kube::Error::Api(s)) if s.code == 403),
        "creating Secrets is not in the list: {forbidden:?}"
    );
}

/// What `helm install` put into the API server (e2e/chart-values.yaml), checked as the
/// cluster sees it: the Deployment's pod template is admitted by the real PodSecurity
/// admission in a namespace that enforces "restricted" (and a privileged variant of it is
/// refused, so the check can fail); the ServiceMonitor selects the metrics Service and its
/// port; the metrics port serves the PRODUCT.md names; the alerts and dashboard exist.
async fn chart_objects(kube: &Client) {
    use k8s_openapi::api::apps::v1::Deployment;
    use k8s_openapi::api::core::v1::Pod;
    use kube::api::{ApiResource, DynamicObject, GroupVersionKind, ListParams};
    const CHART_NS: &str = "portcullis";
    let deployment = Api::<Deployment>::namespaced(kube.clone(), CHART_NS).get("portcullis").await.expect("Deployment");
    let template = deployment.spec.expect("spec").template;
    let pods = Api::<Pod>::namespaced(kube.clone(), CHART_NS);
    let pod = |name: &str, privileged: bool| {
        let mut spec = serde_json::to_value(template.spec.clone().expect("pod spec")).expect("json");
        if privileged {
            spec["containers"][0]["securityContext"]["allowPrivilegeEscalation"] = json!(true);
        }
        obj::<Pod>(
            json!({"metadata": {"name": name, "labels": template.metadata.as_ref().and_then(|m| m.labels.clone())}, "spec": spec}),
        )
    };
    pods.create(&PostParams::default(), &pod("chart-pod-restricted", false))
        .await
        .expect("the chart's pod template passes the restricted Pod Security Standard");
    pods.delete("chart-pod-restricted", &DeleteParams::default()).await.expect("delete the pod");
    let refused = pods.create(&PostParams::default(), &pod("chart-pod-escalating", true)).await;
    assert!(
        matches!(&refused, Err(kube::Error::Api(s)) if s.code == 403 && s.message.contains("PodSecurity")),
        "the namespace enforces restricted: {refused:?}"
    );

    let gvk = |kind: &str| GroupVersionKind::gvk("monitoring.coreos.com", "v1", kind);
    let monitors: Api<DynamicObject> =
        Api::namespaced_with(kube.clone(), CHART_NS, &ApiResource::from_gvk(&gvk("ServiceMonitor")));
    let monitor = monitors.get("portcullis").await.expect("the chart's ServiceMonitor (the API exists here)");
    let selector = monitor.data["spec"]["selector"]["matchLabels"].as_object().expect("matchLabels").clone();
    let labels: Vec<String> = selector.iter().map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default())).collect();
    let selected = Api::<Service>::namespaced(kube.clone(), CHART_NS)
        .list(&ListParams::default().labels(&labels.join(",")))
        .await
        .expect("list Services");
    let names: Vec<String> = selected.items.iter().map(ResourceExt::name_any).collect();
    assert_eq!(names, ["portcullis-metrics"], "the ServiceMonitor selects exactly the metrics Service");
    let endpoint_port = monitor.data["spec"]["endpoints"][0]["port"].as_str().expect("endpoint port");
    let svc_port = selected.items[0]
        .spec
        .as_ref()
        .and_then(|s| s.ports.as_ref())
        .and_then(|ports| ports.iter().find(|p| p.name.as_deref() == Some(endpoint_port)).cloned());
    let svc_port = svc_port.expect("the endpoint names a port of the metrics Service");
    let target = match svc_port.target_port {
        Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String(name)) => name,
        other => panic!("targetPort by name: {other:?}"),
    };
    let container = &template.spec.as_ref().expect("pod spec").containers[0];
    let container_port = container.ports.iter().flatten().find(|p| p.name.as_deref() == Some(&target)).expect("port");
    assert_eq!(container_port.container_port, 9902, "the metrics Service reaches the metrics listener");
    // The controller under test listens where the pod would (the chart's METRICS_ADDRESS is
    // the default), and serves every PRODUCT.md name there.
    let text = portcullis_e2e::http_get_plain("127.0.0.1:9902", "/metrics").expect("/metrics");
    for name in [
        "portcullis_http_requests_total",
        "portcullis_http_request_duration_seconds_bucket",
        "portcullis_downstream_connections_active",
        "portcullis_downstream_connections_total",
        "portcullis_upstream_requests_total",
        "portcullis_listener_manager_total_filter_chains_draining",
        "portcullis_config_last_reload_success",
        "portcullis_config_last_reload_success_timestamp_seconds",
        "portcullis_build_info",
    ] {
        assert!(
            text.lines().any(|l| l.strip_prefix(name).is_some_and(|r| r.starts_with(['{', ' ']))),
            "/metrics has no sample of {name}"
        );
    }

    let rules: Api<DynamicObject> =
        Api::namespaced_with(kube.clone(), CHART_NS, &ApiResource::from_gvk(&gvk("PrometheusRule")));
    let rule = rules.get("portcullis").await.expect("the chart's PrometheusRule");
    assert!(rule.data["spec"].to_string().contains("PortcullisConfigRejected"), "alerts: {}", rule.data["spec"]);
    let dashboard = Api::<ConfigMap>::namespaced(kube.clone(), CHART_NS)
        .get("portcullis-dashboard")
        .await
        .expect("the dashboard ConfigMap");
    let json = dashboard.data.as_ref().and_then(|d| d.get("portcullis.json")).expect("dashboard JSON");
    serde_json::from_str::<Value>(json).expect("the dashboard is JSON");
}

/// PRODUCT.md's host table, over both HTTP versions: ALPN `h2` gets HTTP/2 answers,
/// `http/1.1` gets HTTP/1.1 answers, and the routing is the same.
async fn host_and_path_table(clients: &[(&HttpClient, Version)]) {
    expect_table(
        clients,
        &[
            ("shop.test", "/exact", 200, "pod-7"),
            ("shop.test", "/exact/", 404, ""),
            ("shop.test", "/foo", 200, "pod-7"),
            ("shop.test", "/foo/bar", 200, "pod-7"),
            ("shop.test", "/foobar", 404, ""),
            ("shop.test", "/FOO", 404, ""),
            ("SHOP.test", "/foo", 200, "pod-7"),
            ("a.wild.test", "/x", 200, "pod-7"),
            ("wild.test", "/", 404, ""),
            ("a.b.wild.test", "/", 404, ""),
            ("nobody.test", "/", 404, ""),
            ("other.test", "/", 404, ""),
            ("default.test", "/", 200, "pod-7"),
        ],
    )
    .await;
    // The backend sees the client's Host, not its pod IP (the Ingress conformance suite's
    // "the request host must be foo.bar.com"); the demo upstream echoes what it received.
    for (c, version) in clients {
        let r = fetch(c, "shop.test", "/foo").await;
        let echo: serde_json::Value = serde_json::from_str(&r.body).expect("the upstream's JSON echo");
        assert_eq!(echo["headers"]["host"], "shop.test", "the Host an Ingress backend sees over {version:?}");
    }
}

/// Kubernetes path semantics with two Services behind different pods, over both versions:
/// trailing slashes, longest Prefix wins, Exact beats Prefix of the same path.
async fn path_rules(clients: &[(&HttpClient, Version)]) {
    expect_table(
        clients,
        &[
            // Prefix `/foo/` is the path elements ["foo"]: it matches /foo, /foo/, /foo/bar.
            ("slash.test", "/foo", 200, "pod-one"),
            ("slash.test", "/foo/", 200, "pod-one"),
            ("slash.test", "/foo/bar", 200, "pod-one"),
            ("slash.test", "/foobar", 404, ""),
            // Exact `/bar` does not match `/bar/`.
            ("slash.test", "/bar", 200, "pod-two"),
            ("slash.test", "/bar/", 404, ""),
            // The longest Prefix wins, whole elements only.
            ("paths.test", "/a", 200, "pod-one"),
            ("paths.test", "/a/b", 200, "pod-two"),
            ("paths.test", "/a/b/c", 200, "pod-two"),
            ("paths.test", "/a/bc", 200, "pod-one"),
            // Exact beats the Prefix of the same path, only for that path.
            ("paths.test", "/x", 200, "pod-two"),
            ("paths.test", "/x/", 200, "pod-one"),
            ("paths.test", "/x/y", 200, "pod-one"),
        ],
    )
    .await;
}

/// Ingress status from --publish-address (the leader writes it).
async fn load_balancer_status(k: &Kube) {
    eventually("Ingress status.loadBalancer", SOON, || async {
        let ing = k.ingresses.get("shop").await.ok()?;
        let ip = ing.status?.load_balancer?.ingress?.first()?.ip.clone()?;
        (ip == "203.0.113.10").then_some(())
    })
    .await;
}

/// The deprecated `kubernetes.io/ingress.class` annotation selects the class (before our
/// default class is considered) and is reported; the class field is not.
async fn class_selection(k: &Kube, c: &HttpClient) {
    expect_table(&[(c, Version::HTTP_2)], &[("legacy.test", "/", 200, "pod-one"), ("legacy-nginx.test", "/", 404, "")])
        .await;
    let note = k.warning("legacy", "DeprecatedAnnotation", &["kubernetes.io/ingress.class"]).await;
    assert!(note.contains("spec.ingressClassName"), "says what to use instead: {note}");
    assert!(!has_event(&k.client, NS, "shop", "DeprecatedAnnotation").await, "only the annotated Ingress");
    assert!(!has_event(&k.client, NS, "legacy-nginx", "DeprecatedAnnotation").await, "not ours: no Events");
}

/// A resource backend is skipped with a Warning; the rest of that Ingress serves.
async fn resource_backend(k: &Kube, c: &HttpClient) {
    expect_table(
        &[(c, Version::HTTP_2)],
        &[("mixed.test", "/svc", 200, "pod-one"), ("mixed.test", "/bucket", 404, "")],
    )
    .await;
    let note = k.warning("mixed", "Unsupported", &["spec.rules[0].http.paths[1].backend.resource"]).await;
    assert!(note.contains("not supported"), "{note}");
}

/// An ExternalName Service is reached by its DNS name and the Service port.
async fn external_name(c: &HttpClient) {
    expect_table(&[(c, Version::HTTP_2)], &[("ext.test", "/", 200, "pod-ext")]).await;
}

/// Endpoints scale up, then the first pod stops being ready.
async fn endpoints_scale(k: &Kube, c: &HttpClient) {
    let pp = PostParams::default();
    // The HTTP/2 client below keeps one connection to the proxy; endpoint changes must not
    // close it (they swap the upstream set only), so no new connection is accepted meanwhile.
    get(c, "shop.test", "/foo").await;
    let accepted = || metric("portcullis_downstream_connections_total{listener=\"https-ingress\"}");
    let before = accepted();
    k.slices
        .replace("app-1", &pp, &slice("app", &[("10.244.1.7", true), ("10.244.1.8", true)]))
        .await
        .expect("scale up");
    eventually("both pods serve", SOON, || async {
        let mut seen = BTreeSet::new();
        for _ in 0..8 {
            seen.insert(upstream_of(&get(c, "shop.test", "/foo").await.1));
        }
        (seen.len() == 2).then_some(())
    })
    .await;
    k.slices
        .replace("app-1", &pp, &slice("app", &[("10.244.1.7", false), ("10.244.1.8", true)]))
        .await
        .expect("scale down");
    eventually("only the ready pod serves", SOON, || async {
        for _ in 0..8 {
            if upstream_of(&get(c, "shop.test", "/foo").await.1) != "pod-8" {
                return None;
            }
        }
        Some(())
    })
    .await;
    assert_eq!(accepted(), before, "the client's connection to the proxy survived every endpoint change");
}

/// The sum of the proxy's samples of metric `name` whose labels contain each of `labels` (0
/// when it has none yet: a counter appears with its first increment).
fn samples(name: &str, labels: &[&str]) -> u64 {
    let text = http_get_plain("127.0.0.1:9902", "/metrics").expect("the proxy's /metrics answers");
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) && labels.iter().all(|want| l.contains(want)))
        .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<u64>().ok()))
        .sum()
}

/// Three pods behind Service `lb`, each a `portcullis demo-upstream` process (so that
/// stopping one closes its connections as a pod's death does), an Ingress with
/// `portcullis.io/outlier_detection: "{}"`, the default retries and `retry_on: [reset]` (a GET
/// in flight on a kept-alive connection when its pod dies is reset, not refused: only
/// `retry_on` lets an idempotent request that may have arrived go elsewhere), and a bounded load while
/// two pods go as a scale-down takes them: `lb-1` dies and the EndpointSlice catches up a
/// little later (meanwhile outlier detection ejects it and the requests it refused are
/// retried on the others); `lb-2` leaves the slice first and stops once no request goes to it
/// (the graceful order). Not one request fails, every answer comes from a live pod, and all
/// traffic ends on `lb-3`.
async fn scale_down_under_load(k: &Kube) {
    const REQUESTS: u64 = 2_000;
    const WORKERS: usize = 4;
    const PODS: [&str; 3] = ["10.244.6.1", "10.244.6.2", "10.244.6.3"];
    let pp = PostParams::default();
    let dir = tunnel_dir("scale-down");
    let bin = portcullis_bin();
    let mut pods: Vec<Option<Program>> = PODS
        .iter()
        .enumerate()
        .map(|(i, ip)| {
            let (listen, name) = (format!("{ip}:8080"), format!("lb-{}", i + 1));
            let argv = [bin.as_str(), "demo-upstream", "--listen", &listen, "--name", &name];
            Some(Program::start(&argv, &dir.join(format!("{name}.log"))))
        })
        .collect();
    for ip in PODS {
        let addr = format!("{ip}:8080");
        eventually(&format!("pod {addr} listens"), SOON, || async {
            tokio::net::TcpStream::connect(&addr).await.ok().map(drop)
        })
        .await;
    }
    let ready = |ips: &[&str]| slice("lb", &ips.iter().map(|ip| (*ip, true)).collect::<Vec<_>>());
    k.services
        .create(&pp, &obj(json!({"metadata": {"name": "lb"}, "spec": {"ports": [{"name": "http", "port": 80, "targetPort": 8080}]}})))
        .await
        .expect("service lb");
    k.slices.create(&pp, &ready(&PODS)).await.expect("endpoint slice lb-1");
    let mut ing = ingress("lb", "lb.test", &[path("/", "Prefix", "lb")]);
    ing["metadata"]["annotations"] =
        json!({"portcullis.io/outlier_detection": "{}", "portcullis.io/retry_on": "[reset]"});
    k.create_ingress(ing).await;
    let c = https();
    eventually("all three pods serve lb.test", SOON, || async {
        let mut seen = BTreeSet::new();
        for _ in 0..12 {
            seen.insert(upstream_of(&get(&c, "lb.test", "/").await.1));
        }
        (seen.len() == 3 && !seen.contains("")).then_some(())
    })
    .await;

    // The load: WORKERS clients (HTTP/2 and HTTP/1.1), REQUESTS in all, paced so that the
    // scale-down happens while it runs. Each answer is recorded with the request's number.
    let next = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let answers: Arc<Mutex<Vec<(u64, String)>>> = Arc::default();
    let failed: Arc<Mutex<Vec<String>>> = Arc::default();
    let started = Instant::now();
    let tasks: Vec<_> = (0..WORKERS)
        .map(|w| {
            let client = if w % 2 == 0 { https() } else { https_h1() };
            let (next, done, answers, failed) = (next.clone(), done.clone(), answers.clone(), failed.clone());
            tokio::spawn(async move {
                loop {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    if n >= REQUESTS {
                        break;
                    }
                    let r = fetch(&client, "lb.test", "/").await;
                    let pod = upstream_of(&r.body);
                    if r.status != 200 || pod.is_empty() {
                        failed.lock().unwrap().push(format!("request {n}: {} {}", r.status, r.body));
                    }
                    answers.lock().unwrap().push((n, pod));
                    done.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(8)).await;
                }
            })
        })
        .collect();
    let reach = |count: u64, what: &'static str| {
        let done = done.clone();
        async move {
            eventually(what, Duration::from_secs(20), || async {
                (done.load(Ordering::Relaxed) >= count).then_some(())
            })
            .await;
            assert!(done.load(Ordering::Relaxed) < REQUESTS, "the load ended before {what}");
        }
    };
    let ejections = |ip: &str| samples("portcullis_upstream_ejections_total", &[&format!("upstream=\"{ip}:8080\"")]);

    // (a) lb-1 dies; its endpoint stays in the slice until outlier detection has ejected it.
    reach(300, "300 requests before lb-1 dies").await;
    drop(pods[0].take());
    let died = Instant::now();
    eventually("outlier detection ejects the dead lb-1", Duration::from_secs(10), || async {
        (ejections(PODS[0]) >= 1).then_some(())
    })
    .await;
    eprintln!("lb-1 ejected {:.0?} after it died", died.elapsed());
    k.slices.replace("lb-1", &pp, &ready(&PODS[1..])).await.expect("slice without lb-1");

    // (b) lb-2 leaves the slice first, and stops once 100 requests in a row went elsewhere.
    reach(900, "900 requests before lb-2 leaves the slice").await;
    k.slices.replace("lb-1", &pp, &ready(&PODS[2..])).await.expect("slice without lb-2");
    eventually("no request goes to lb-2 any more", SOON, || async {
        let answers = answers.lock().unwrap();
        let last = answers.iter().filter(|(_, p)| p == "lb-2").map(|(n, _)| *n).max().unwrap_or(0);
        (answers.iter().filter(|(n, _)| *n > last).count() >= 100).then_some(())
    })
    .await;
    drop(pods[1].take());
    assert!(done.load(Ordering::Relaxed) < REQUESTS, "the load ended before lb-2 stopped");

    for t in tasks {
        t.await.expect("load task");
    }
    let took = started.elapsed();
    let failed = failed.lock().unwrap().clone();
    let answers = answers.lock().unwrap().clone();
    let count = |pod: &str| answers.iter().filter(|(_, p)| p == pod).count();
    let retried = samples("portcullis_upstream_retries_total", &["route=\"e2e-shop/lb:", "outcome=\"retried\""]);
    // Which pod's connections were reset mid-request (a request in flight when it died).
    let resets = |ip: &str| {
        samples("portcullis_upstream_requests_total", &[&format!("upstream=\"{ip}:8080\""), "outcome=\"reset\""])
    };
    eprintln!(
        "{REQUESTS} requests in {took:.1?} while two of three pods went: {} failed; answered by lb-1 {}, lb-2 {}, \
         lb-3 {}; {retried} retries on another endpoint; ejections lb-1 {}, lb-2 {}; resets lb-1 {}, lb-2 {}",
        failed.len(),
        count("lb-1"),
        count("lb-2"),
        count("lb-3"),
        ejections(PODS[0]),
        ejections(PODS[1]),
        resets(PODS[0]),
        resets(PODS[1]),
    );
    assert!(failed.is_empty(), "{} of {REQUESTS} requests failed: {:?}", failed.len(), &failed[..failed.len().min(5)]);
    assert_eq!(answers.len() as u64, REQUESTS, "every request answered");
    assert!(took < Duration::from_secs(30), "the load is bounded: {took:?}");
    assert!(count("lb-1") > 0 && count("lb-2") > 0, "the load reached every pod before they went");
    assert!(retried > 0, "requests refused by the dead lb-1 were retried on another endpoint");
    for _ in 0..50 {
        let (status, body) = get(&c, "lb.test", "/").await;
        assert_eq!((status, upstream_of(&body).as_str()), (200, "lb-3"), "afterwards all traffic goes to lb-3");
    }
    k.delete_ingress("lb").await;
}

/// `spec.defaultBackend` catches every request no rule matched (any host; a known host
/// whose paths miss), and when it is deleted those are 404 again.
async fn default_backend(k: &Kube, c: &HttpClient) {
    k.create_ingress(json!({
        "metadata": {"name": "fallback"},
        "spec": {"ingressClassName": "portcullis", "defaultBackend": backend("two")},
    }))
    .await;
    serves(c, "nobody.test", "/", 200, "pod-two").await;
    expect_table(
        &[(c, Version::HTTP_2)],
        &[
            ("nobody.test", "/any/path", 200, "pod-two"),
            ("shop.test", "/foobar", 200, "pod-two"),
            ("other.test", "/", 200, "pod-two"),
            ("shop.test", "/foo", 200, "pod-8"),
            ("paths.test", "/a", 200, "pod-one"),
        ],
    )
    .await;
    k.delete_ingress("fallback").await;
    serves(c, "nobody.test", "/", 404, "").await;
    expect_table(&[(c, Version::HTTP_2)], &[("shop.test", "/foobar", 404, ""), ("other.test", "/", 404, "")]).await;
}

/// Every bad-input kind on an Ingress that was serving: a Warning Event naming the field,
/// the last good version keeps serving, nothing else changes; fixing it is picked up.
async fn bad_ingress_edits(k: &Kube, c: &HttpClient) {
    let reload_success = |want: u64| async move {
        let what = format!("portcullis_config_last_reload_success {want}");
        eventually(&what, SOON, move || async move {
            (metric("portcullis_config_last_reload_success") == want).then_some(())
        })
        .await;
    };
    reload_success(1).await;
    expect_table(
        &[(c, Version::HTTP_2)],
        &[
            ("annotated.test", "/", 200, "pod-two"),
            ("regex.test", "/items/42", 200, "pod-one"),
            ("regex.test", "/items/x", 404, ""),
            ("moving.test", "/", 200, "pod-one"),
        ],
    )
    .await;
    let regex_rule = |p: &str| json!({"spec": {"rules": [{"host": "regex.test", "http": {"paths": [path(p, "ImplementationSpecific", "one")]}}]}});
    let moving_rule = |svc: &str| json!({"spec": {"rules": [{"host": "moving.test", "http": {"paths": [path("/", "Prefix", svc)]}}]}});
    // All four edits at once: each object must be judged on its own.
    k.patch_ingress("shop", json!({"metadata": {"annotations": {"portcullis.io/timeout": "soon"}}})).await;
    k.patch_ingress("annotated", json!({"metadata": {"annotations": {"portcullis.io/bogus": "1"}}})).await;
    k.patch_ingress("items", regex_rule("/items/[0-9+")).await;
    k.patch_ingress("moving", moving_rule("nope")).await;

    let kept = "The last good version keeps serving";
    k.warning(
        "shop",
        "InvalidConfig",
        &["metadata.annotations[\"portcullis.io/timeout\"]: invalid duration \"soon\"", kept],
    )
    .await;
    k.warning(
        "annotated",
        "InvalidConfig",
        &["metadata.annotations[\"portcullis.io/bogus\"]: unknown annotation", kept],
    )
    .await;
    k.warning("items", "InvalidConfig", &["spec.rules[0].http.paths[0].path: invalid regular expression", kept]).await;
    k.warning(
        "moving",
        "InvalidConfig",
        &["spec.rules[0].http.paths[0].backend.service.name: Service e2e-shop/nope not found", kept],
    )
    .await;
    expect_table(
        &[(c, Version::HTTP_2)],
        &[
            ("shop.test", "/foo", 200, "pod-8"),
            ("annotated.test", "/", 200, "pod-two"),
            ("regex.test", "/items/42", 200, "pod-one"),
            ("moving.test", "/", 200, "pod-one"),
        ],
    )
    .await;
    others_unaffected(c).await;
    // What the chart's PortcullisConfigRejected alert watches.
    reload_success(0).await;

    // Fixing each edit is picked up like any other edit (`moving` now goes to `two`).
    k.patch_ingress("shop", json!({"metadata": {"annotations": {"portcullis.io/timeout": "9s"}}})).await;
    k.patch_ingress("annotated", json!({"metadata": {"annotations": {"portcullis.io/bogus": null}}})).await;
    k.patch_ingress("items", regex_rule("/items/[a-z]+")).await;
    k.patch_ingress("moving", moving_rule("two")).await;
    serves(c, "moving.test", "/", 200, "pod-two").await;
    serves(c, "regex.test", "/items/x", 200, "pod-one").await;
    expect_table(&[(c, Version::HTTP_2)], &[("regex.test", "/items/42", 404, ""), ("shop.test", "/foo", 200, "pod-8")])
        .await;
    reload_success(1).await;
}

/// Two objects claiming the same host and path: the older keeps it, the newer gets a
/// `Conflict` Warning (an Ingress) or `Accepted=False, Conflicted` (a Route), and serves
/// the rest of what it declares.
async fn conflicts(k: &Kube, c: &HttpClient) {
    // creationTimestamp has one-second resolution: make "older" unambiguous. "dup-new" sorts
    // before "dup-old", so a name tie-break would pick the wrong one.
    let old = k.ingresses.get("dup-old").await.expect("dup-old").metadata.creation_timestamp.expect("created").0;
    let since = k8s_openapi::jiff::Timestamp::now().duration_since(old);
    if let Ok(wait) = Duration::try_from(k8s_openapi::jiff::SignedDuration::from_millis(1100) - since) {
        tokio::time::sleep(wait).await;
    }
    k.create_ingress(ingress(
        "dup-new",
        "dup.test",
        &[path("/same", "Prefix", "two"), path("/only-new", "Prefix", "two")],
    ))
    .await;
    k.routes
        .create(&PostParams::default(), &obj(json!({"apiVersion": "portcullis.io/v1alpha1", "kind": "Route", "metadata": {"name": "dup-route"}, "spec": {"from": "https://dup.test", "prefix": "/same", "to": ["http://app:80"]}})))
        .await
        .expect("route");
    serves(c, "dup.test", "/only-new", 200, "pod-two").await;
    let note = k.warning("dup-new", "Conflict", &["Ingress e2e-shop/dup-old"]).await;
    assert!(note.contains("dup.test/same"), "names the contested route: {note}");
    expect_table(&[(c, Version::HTTP_2)], &[("dup.test", "/same", 200, "pod-one")]).await;
    let (accepted, programmed) = eventually("Route dup-route reports Conflicted", SOON, || async {
        let conditions = k.routes.get("dup-route").await.ok()?.status?.conditions;
        let accepted = conditions.iter().find(|c| c.type_ == "Accepted" && c.reason == "Conflicted")?.clone();
        let programmed = conditions.iter().find(|c| c.type_ == "Programmed")?.clone();
        Some((accepted, programmed))
    })
    .await;
    assert_eq!(accepted.status, "False", "{accepted:?}");
    assert!(accepted.message.contains("Ingress e2e-shop/dup-old"), "{accepted:?}");
    assert_eq!(programmed.status, "True", "the rest of the Route serves: {programmed:?}");
    assert!(!has_event(&k.client, NS, "dup-old", "Conflict").await, "the older object is not blamed");

    // When the owner goes, the next oldest claimant gets it (dup-new, not the Route to `app`).
    k.delete_ingress("dup-old").await;
    serves(c, "dup.test", "/same", 200, "pod-two").await;
}

/// Route resources: a good one serves; a broken one is reported on its status; the API
/// server itself enforces the CRD's CEL rules.
async fn route_resources(k: &Kube, c: &HttpClient) {
    let pp = PostParams::default();
    let route = |name: &str, spec: Value| -> Route {
        obj(json!({"apiVersion": "portcullis.io/v1alpha1", "kind": "Route", "metadata": {"name": name}, "spec": spec}))
    };
    k.routes
        .create(&pp, &route("api", json!({"from": "https://api.test", "to": ["http://app:80"]})))
        .await
        .expect("route");
    k.routes
        .create(&pp, &route("broken", json!({"from": "https://broken.test", "to": ["http://missing:80"]})))
        .await
        .expect("broken route");
    let rejected = k
        .routes
        .create(
            &pp,
            &route("cel", json!({"from": "https://x.test", "to": ["http://app:80"], "prefix": "/a", "path": "/b"})),
        )
        .await
        .expect_err("the API server enforces the CRD's CEL rule");
    assert!(rejected.to_string().contains("set only one of prefix, path and regex"), "{rejected}");
    serves(c, "api.test", "/", 200, "pod-8").await;
    let condition = eventually("Route broken reports Accepted=False", SOON, || async {
        let r = k.routes.get("broken").await.ok()?;
        let c = r.status?.conditions.into_iter().find(|c| c.type_ == "Accepted" && c.status == "False")?;
        Some(c.message)
    })
    .await;
    assert!(condition.contains("spec.to[0]: Service e2e-shop/missing not found"), "{condition}");
}

/// Polls until `method host/` answers `status` (from `upstream` when it is served, "" when
/// the proxy refuses it).
async fn answers(c: &HttpClient, method: http::Method, host: &str, status: u16, upstream: &str) {
    let what = format!("{method} {host}/ answers {status} from {upstream:?}");
    eventually(&what, SOON, || {
        let method = method.clone();
        async move {
            let r = send(c, method, host, "/").await;
            (r.status == status && upstream_of(&r.body) == upstream).then_some(())
        }
    })
    .await;
}

/// Access policy (PPL) from a Route's `spec.policy` and an Ingress's `portcullis.io/policy`,
/// with identity-free criteria (the method) so that no identity provider is needed: the
/// allowed method is served, another is refused with 401 (no identity, so signing in could
/// change the answer). The API server refuses what the CRD's schema can judge; a policy only
/// the controller can judge (an unknown matcher operator) gets a Warning Event and, on the
/// Route, `Accepted=False`, both naming the field, while the last good policy keeps deciding.
async fn access_policy(k: &Kube, c: &HttpClient) {
    use http::Method;
    let pp = PostParams::default();
    let get_only = |op: &str| json!([{"allow": {"and": [{"http_method": {op: "GET"}}]}}]);
    let route = |name: &str, spec: Value| -> Route {
        obj(json!({"apiVersion": "portcullis.io/v1alpha1", "kind": "Route", "metadata": {"name": name}, "spec": spec}))
    };
    k.routes
        .create(
            &pp,
            &route("ppl", json!({"from": "https://ppl-route.test", "to": ["http://two:80"], "policy": get_only("is")})),
        )
        .await
        .expect("route with a policy");
    let mut ing = ingress("ppl", "ppl-ingress.test", &[path("/", "Prefix", "two")]);
    ing["metadata"]["annotations"] =
        json!({"portcullis.io/policy": "allow:\n  or:\n    - http_method: GET\n    - http_method: HEAD\n"});
    k.create_ingress(ing).await;
    for host in ["ppl-route.test", "ppl-ingress.test"] {
        answers(c, Method::GET, host, 200, "pod-two").await;
        answers(c, Method::POST, host, 401, "").await;
    }

    // What the schema can judge is refused at the door, with the CRD's message.
    for (bad, says) in [
        (json!([{}]), "a rule needs allow or deny"),
        (json!([{"allow": {}}]), "give and, or, not or nor"),
        (json!([{"allow": {"and": [{"http_method": "GET", "http_path": "/"}]}}]), "must have at most 1"),
        (json!({"allow": {"and": [{"http_method": "GET"}]}}), "must be of type array"),
    ] {
        let spec = json!({"from": "https://ppl-bad.test", "to": ["http://two:80"], "policy": bad});
        let refused = k.routes.create(&pp, &route("ppl-bad", spec)).await.expect_err("the schema refuses it");
        assert!(refused.to_string().contains(says), "{says}: {refused}");
    }

    // An unknown operator is the controller's to find.
    k.routes
        .patch("ppl", &PatchParams::default(), &Patch::Merge(json!({"spec": {"policy": get_only("eq")}})))
        .await
        .expect("patching Route ppl");
    k.patch_ingress(
        "ppl",
        json!({"metadata": {"annotations": {"portcullis.io/policy": "allow: {and: [{http_method: {eq: GET}}]}"}}}),
    )
    .await;
    let kept = "The last good version keeps serving";
    let route_error = "spec.policy[0].allow.and[0].http_method: unknown operator \"eq\"";
    k.warning("ppl", "InvalidConfig", &[route_error, kept]).await;
    k.warning(
        "ppl",
        "InvalidConfig",
        &["metadata.annotations[\"portcullis.io/policy\"].allow.and[0].http_method: unknown operator \"eq\"", kept],
    )
    .await;
    let condition = eventually("Route ppl reports Accepted=False", SOON, || async {
        let r = k.routes.get("ppl").await.ok()?;
        let c = r.status?.conditions.into_iter().find(|c| c.type_ == "Accepted" && c.status == "False")?;
        Some(c.message)
    })
    .await;
    assert!(condition.contains(route_error), "{condition}");
    for host in ["ppl-route.test", "ppl-ingress.test"] {
        answers(c, Method::GET, host, 200, "pod-two").await;
        answers(c, Method::POST, host, 401, "").await;
    }
    others_unaffected(c).await;

    // Fixed: the new policy (POST only on the Route, HEAD only on the Ingress) decides.
    k.routes
        .patch(
            "ppl",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"policy": [{"allow": {"or": [{"http_method": "POST"}]}}]}})),
        )
        .await
        .expect("fixing Route ppl");
    k.patch_ingress(
        "ppl",
        json!({"metadata": {"annotations": {"portcullis.io/policy": "allow: {or: [{http_method: HEAD}]}"}}}),
    )
    .await;
    answers(c, Method::POST, "ppl-route.test", 200, "pod-two").await;
    answers(c, Method::GET, "ppl-route.test", 401, "").await;
    answers(c, Method::GET, "ppl-ingress.test", 401, "").await;
    eventually("Route ppl is Accepted again", SOON, || async {
        let r = k.routes.get("ppl").await.ok()?;
        r.status?.conditions.into_iter().any(|c| c.type_ == "Accepted" && c.status == "True").then_some(())
    })
    .await;

    // The ProxyConfig's identity provider fields pass the real schema (a dry run: the
    // scenario's `global` stays without a provider), and a bad leeway is refused by it.
    let dry = PostParams { dry_run: true, ..PostParams::default() };
    let idp = |leeway: &str| -> ProxyConfig {
        obj(json!({
            "apiVersion": "portcullis.io/v1alpha1", "kind": "ProxyConfig", "metadata": {"name": "idp-dry-run"},
            "spec": {
                "idpProviderUrl": "https://idp.example.com/realms/r", "idpClientId": "portcullis",
                "jwksUrl": "https://idp.example.com/keys", "jwtAudiences": ["api"], "jwtLeeway": leeway,
                "idpCaSecret": {"name": "idp-ca", "namespace": "portcullis"},
            },
        }))
    };
    let accepted = k.configs.create(&dry, &idp("45s")).await.expect("the identity provider fields are in the schema");
    assert_eq!(accepted.spec.jwt_audiences.as_deref(), Some(&["api".to_owned()][..]), "not pruned");
    assert_eq!(accepted.spec.idp_ca_secret.map(|s| s.name).as_deref(), Some("idp-ca"), "not pruned");
    let refused = k.configs.create(&dry, &idp("soon")).await.expect_err("jwtLeeway is a duration");
    assert!(refused.to_string().contains("jwtLeeway"), "{refused}");
}

/// A test CA and leaf certificates for `secure.test`, as PEM for Secrets and DER to compare.
struct Pki {
    ca: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
}

/// One leaf certificate: PEM for the Secret, DER to compare with what the proxy serves.
#[derive(Clone)]
struct Leaf {
    cert_pem: String,
    key_pem: String,
    der: CertificateDer<'static>,
}

impl Pki {
    fn new() -> Self {
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        p.distinguished_name.push(rcgen::DnType::CommonName, "portcullis e2e CA");
        Self { ca: rcgen::CertifiedIssuer::self_signed(p, rcgen::KeyPair::generate().expect("key")).expect("CA") }
    }

    fn root(&self) -> CertificateDer<'static> {
        self.ca.der().clone()
    }

    fn leaf(&self, name: &str, serial: u64) -> Leaf {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut p = rcgen::CertificateParams::new(vec![name.to_owned()]).expect("leaf params");
        p.serial_number = Some(serial.into());
        let cert = p.signed_by(&key, &self.ca).expect("leaf");
        Leaf { cert_pem: cert.pem(), key_pem: key.serialize_pem(), der: cert.der().clone() }
    }
}

fn tls_secret(name: &str, type_: &str, data: &[(&str, &str)]) -> Secret {
    let data: serde_json::Map<String, Value> = data.iter().map(|(k, v)| ((*k).to_owned(), json!(v))).collect();
    obj(json!({"metadata": {"name": name}, "type": type_, "stringData": data}))
}

/// What the TLS step leaves serving, for the restart steps to check again.
struct ServedCert {
    root: CertificateDer<'static>,
    leaf: CertificateDer<'static>,
}

/// HTTP/1.1 and HTTP/2 clients with SNI `secure.test` sending `GET /` (answered by pod-one)
/// as fast as they can, two tasks each, until [`Load::finish`]: the traffic that listener
/// changes and route edits must not fail.
struct Load {
    stop: tokio_util::sync::CancellationToken,
    sent: Arc<AtomicU64>,
    /// Requests sent once more because the first attempt never reached the server (see
    /// `Reply::retryable`), as a browser does.
    retried: Arc<AtomicU64>,
    failed: Arc<Mutex<Vec<String>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    async fn start() -> Self {
        let stop = tokio_util::sync::CancellationToken::new();
        let (sent, retried, failed) =
            (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)), Arc::new(Mutex::new(Vec::new())));
        let mut tasks = Vec::new();
        for h1_only in [false, true] {
            let client = https_sni("secure.test", h1_only);
            for _ in 0..2 {
                let (client, stop, sent, retried, failed) =
                    (client.clone(), stop.clone(), sent.clone(), retried.clone(), failed.clone());
                tasks.push(tokio::spawn(async move {
                    while !stop.is_cancelled() {
                        sent.fetch_add(1, Ordering::Relaxed);
                        let mut r = fetch(&client, "secure.test", "/").await;
                        if r.retryable {
                            retried.fetch_add(1, Ordering::Relaxed);
                            r = fetch(&client, "secure.test", "/").await;
                        }
                        if r.status != 200 || upstream_of(&r.body) != "pod-one" {
                            failed.lock().unwrap().push(format!("{} {}", r.status, r.body));
                        }
                    }
                }));
            }
        }
        // Let every client open its connections before anything changes.
        tokio::time::sleep(Duration::from_millis(300)).await;
        Self { stop, sent, retried, failed, tasks }
    }

    /// Stops the load and asserts it was real and that not one request failed; returns a
    /// summary for the log and how many requests were sent again.
    async fn finish(self, what: &str) -> (String, u64) {
        self.stop.cancel();
        for t in self.tasks {
            t.await.expect("load task");
        }
        let sent = self.sent.load(Ordering::Relaxed);
        let retried = self.retried.load(Ordering::Relaxed);
        let failed = self.failed.lock().unwrap().clone();
        assert!(failed.is_empty(), "{what}: requests failed: {:?}", &failed[..failed.len().min(5)]);
        assert!(sent > 100, "{what}: the load was real: {sent} requests");
        assert!(retried * 100 <= sent, "{what}: at most 1% sent again: {retried} of {sent}");
        (format!("{sent} requests, {} failed, {retried} sent again (never reached the server)", failed.len()), retried)
    }
}

/// Rotations of the TLS Secret while [`Load`] keeps sending: no request fails, each new
/// certificate reaches new handshakes within a second, and the drains of the old listener
/// generations end. A WebSocket on secure.test opened before the first rotation keeps
/// working while its generation drains and is closed when `drainTimeout` ends; `other`, a
/// WebSocket on a host whose certificate did not change, is never touched (`drainScope:
/// affected`, the default). The last rotation puts `last` back.
async fn rotations_under_load(k: &Kube, pki: &Pki, last: &Leaf, other: &mut WebSocket) {
    const ROTATIONS: u64 = 5;
    let roots = [pki.root()];
    let mut drained = websocket("secure.test", &roots).await;
    assert!(echoes(&mut drained, "before").await, "the WebSocket on secure.test works");
    let load = Load::start().await;
    let started = Instant::now();
    let mut slowest = Duration::ZERO;
    let mut first_rotation = None;
    for i in 0..ROTATIONS {
        let next = if i + 1 == ROTATIONS { last.clone() } else { pki.leaf("secure.test", 10 + i) };
        let mut replacement =
            tls_secret("secure-tls", "kubernetes.io/tls", &[("tls.crt", &next.cert_pem), ("tls.key", &next.key_pem)]);
        replacement.metadata.resource_version = None;
        k.secrets.replace("secure-tls", &PostParams::default(), &replacement).await.expect("rotating the Secret");
        let t = Instant::now();
        while served_leaf("secure.test", &roots).await.ok().as_ref() != Some(&next.der) {
            assert!(
                t.elapsed() < Duration::from_secs(1),
                "rotation {i}: new handshakes see the new certificate within 1 s"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        slowest = slowest.max(t.elapsed());
        if first_rotation.is_none() {
            first_rotation = Some(t);
            assert!(echoes(&mut drained, "draining").await, "a WebSocket keeps working while its generation drains");
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let (summary, _) = load.finish("certificate rotations").await;
    eprintln!(
        "{ROTATIONS} Secret rotations in {:.1?} under load: {summary}, slowest rotation {slowest:.1?}",
        started.elapsed()
    );

    let first_rotation = first_rotation.expect("rotated");
    assert!(closed_within(&mut drained, Duration::from_secs(10)).await, "drainTimeout closes the drained WebSocket");
    let closed_after = first_rotation.elapsed();
    eprintln!(
        "the drained WebSocket was closed {closed_after:.1?} after the first rotation (drainTimeout {DRAIN_TIMEOUT})"
    );
    assert!(closed_after >= Duration::from_millis(2900), "closed before drainTimeout ended: {closed_after:?}");
    assert!(echoes(other, "after the rotations").await, "the WebSocket on another host is never closed");
    eventually("the drains of the rotated generations end", SOON, || async {
        (metric("portcullis_listener_manager_total_filter_chains_draining") == 0).then_some(())
    })
    .await;
}

/// 100 edits of the Ingress that serves [`Load`] and both WebSockets (its annotations and
/// paths change each time, and each edit is waited for until served): not one request fails,
/// no connection is opened or closed, nothing drains, and both WebSockets still echo.
async fn route_edits_under_load(k: &Kube, c: &HttpClient, roots: &[CertificateDer<'static>], other: &mut WebSocket) {
    const EDITS: u32 = 100;
    let mut on_edited = websocket("secure.test", roots).await;
    let load = Load::start().await;
    get(c, "secure.test", "/").await;
    let accepted = || metric("portcullis_downstream_connections_total{listener=\"https-ingress\"}");
    let before = accepted();
    let started = Instant::now();
    for n in 1..=EDITS {
        let (service, pod) = if n % 2 == 0 { ("one", "pod-one") } else { ("two", "pod-two") };
        let edit = format!("/edit-{n}");
        k.patch_ingress(
            "secure",
            json!({
                "metadata": {"annotations": {"portcullis.io/timeout": format!("{}s", 10 + n)}},
                "spec": {"rules": [{"host": "secure.test", "http": {"paths": [
                    path("/", "Prefix", "one"),
                    path(&edit, "Exact", service),
                ]}}]},
            }),
        )
        .await;
        serves(c, "secure.test", &edit, 200, pod).await;
    }
    let took = started.elapsed();
    let (summary, retried) = load.finish("route edits").await;
    eprintln!("{EDITS} Ingress edits, each served, in {took:.1?} under load: {summary}");
    assert_eq!(retried, 0, "no connection closes, so no request needs sending again");
    assert_eq!(accepted(), before, "route edits open or close no downstream connection");
    assert_eq!(metric("portcullis_listener_manager_total_filter_chains_draining"), 0, "a route edit drains nothing");
    assert!(echoes(&mut on_edited, "after the edits").await, "the edited route's WebSocket is untouched");
    assert!(echoes(other, "after the edits").await, "the other host's WebSocket is untouched");
    k.patch_ingress(
        "secure",
        json!({
            "metadata": {"annotations": {"portcullis.io/timeout": null}},
            "spec": {"rules": [{"host": "secure.test", "http": {"paths": [path("/", "Prefix", "one")]}}]},
        }),
    )
    .await;
}

/// A second TLS host, wss.test, with its own Secret and a WebSocket route: the connection
/// that rotations of secure.test's certificate must leave alone.
async fn other_tls_host(k: &Kube, pki: &Pki) -> WebSocket {
    let leaf = pki.leaf("wss.test", 100);
    k.secrets
        .create(
            &PostParams::default(),
            &tls_secret("wss-tls", "kubernetes.io/tls", &[("tls.crt", &leaf.cert_pem), ("tls.key", &leaf.key_pem)]),
        )
        .await
        .expect("TLS Secret");
    let mut wss = ingress("wss", "wss.test", &[path("/", "Prefix", "two")]);
    wss["metadata"]["annotations"] = json!({"portcullis.io/allow_websockets": "true"});
    wss["spec"]["tls"] = json!([{"hosts": ["wss.test"], "secretName": "wss-tls"}]);
    k.create_ingress(wss).await;
    let roots = [pki.root()];
    eventually("the proxy presents wss.test's certificate", SOON, || async {
        (served_leaf("wss.test", &roots).await.ok()? == leaf.der).then_some(())
    })
    .await;
    let mut ws = websocket("wss.test", &roots).await;
    assert!(echoes(&mut ws, "hello").await, "the WebSocket on wss.test works");
    ws
}

/// TLS from a `kubernetes.io/tls` Secret: the proxy presents it for the Ingress's host,
/// replacing the Secret rotates it within a second, and bad Secret references are reported
/// while the last good certificate keeps serving.
async fn tls_secrets(k: &Kube, c: &HttpClient) -> ServedCert {
    let pp = PostParams::default();
    let pki = Pki::new();
    let roots = [pki.root()];
    let (first, second) = (pki.leaf("secure.test", 1), pki.leaf("secure.test", 2));
    let secret = |leaf: &Leaf| {
        tls_secret("secure-tls", "kubernetes.io/tls", &[("tls.crt", &leaf.cert_pem), ("tls.key", &leaf.key_pem)])
    };
    k.secrets.create(&pp, &secret(&first)).await.expect("TLS Secret");
    let mut secure = ingress("secure", "secure.test", &[path("/", "Prefix", "one")]);
    secure["metadata"]["annotations"] = json!({"portcullis.io/allow_websockets": "true"});
    secure["spec"]["tls"] = json!([{"hosts": ["secure.test"], "secretName": "secure-tls"}]);
    k.create_ingress(secure).await;
    eventually("the proxy presents the Secret's certificate for secure.test", SOON, || async {
        (served_leaf("secure.test", &roots).await.ok()? == first.der).then_some(())
    })
    .await;
    expect_table(&[(c, Version::HTTP_2)], &[("secure.test", "/", 200, "pod-one")]).await;

    // Rotation: replace the Secret and time the first handshake that presents the new one.
    let mut replacement = secret(&second);
    replacement.metadata.resource_version = None;
    k.secrets.replace("secure-tls", &pp, &replacement).await.expect("replacing the TLS Secret");
    let replaced = Instant::now();
    let mut handshakes = 0u32;
    let rotated = loop {
        handshakes += 1;
        let leaf = served_leaf("secure.test", &roots).await;
        if leaf.as_ref().ok() == Some(&second.der) {
            break replaced.elapsed();
        }
        assert!(
            leaf.as_ref().ok() == Some(&first.der),
            "during rotation only the old or the new certificate: {leaf:?}"
        );
        assert!(replaced.elapsed() < Duration::from_secs(10), "the rotated certificate is not served after 10 s");
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    eprintln!("TLS Secret rotation: the new certificate was served {rotated:.1?} after the replace call returned ({handshakes} handshakes)");
    assert!(rotated < Duration::from_secs(2), "the issue requires rotation within a second; took {rotated:?}");

    let mut other = other_tls_host(k, &pki).await;
    rotations_under_load(k, &pki, &second, &mut other).await;
    route_edits_under_load(k, c, &roots, &mut other).await;

    // A missing Secret on an edit: reported; the last good certificate and routes stay.
    k.patch_ingress("secure", json!({"spec": {"tls": [{"hosts": ["secure.test"], "secretName": "missing-tls"}]}}))
        .await;
    k.warning(
        "secure",
        "InvalidConfig",
        &["spec.tls[0].secretName: Secret e2e-shop/missing-tls not found", "The last good version keeps serving"],
    )
    .await;
    assert_eq!(served_leaf("secure.test", &roots).await.as_ref().ok(), Some(&second.der), "last good certificate");
    expect_table(&[(c, Version::HTTP_2)], &[("secure.test", "/", 200, "pod-one")]).await;

    // The API server itself refuses a kubernetes.io/tls Secret without tls.crt ...
    let refused = k
        .secrets
        .create(&pp, &tls_secret("no-crt", "kubernetes.io/tls", &[("tls.key", &first.key_pem)]))
        .await
        .expect_err("the API server requires tls.crt in a kubernetes.io/tls Secret");
    assert!(refused.to_string().contains("tls.crt"), "{refused}");
    // ... so what reaches the controller is a Secret of the wrong type, or an unusable tls.crt.
    k.secrets
        .create(&pp, &tls_secret("opaque-tls", "Opaque", &[("tls.crt", &first.cert_pem), ("tls.key", &first.key_pem)]))
        .await
        .expect("Opaque Secret");
    k.secrets
        .create(
            &pp,
            &tls_secret(
                "garbage-tls",
                "kubernetes.io/tls",
                &[("tls.crt", "not a certificate"), ("tls.key", &first.key_pem)],
            ),
        )
        .await
        .expect("TLS Secret with a garbage certificate");
    for (name, host, secret) in
        [("tls-opaque", "opaque.test", "opaque-tls"), ("tls-garbage", "garbage.test", "garbage-tls")]
    {
        let mut ing = ingress(name, host, &[path("/", "Prefix", "two")]);
        ing["spec"]["tls"] = json!([{"hosts": [host], "secretName": secret}]);
        k.create_ingress(ing).await;
    }
    k.warning(
        "tls-opaque",
        "InvalidConfig",
        &["spec.tls[0].secretName: Secret e2e-shop/opaque-tls has type \"Opaque\"", "Nothing is served"],
    )
    .await;
    k.warning("tls-garbage", "InvalidConfig", &["spec.tls[0].secretName: Secret e2e-shop/garbage-tls: certificate"])
        .await;
    expect_table(&[(c, Version::HTTP_2)], &[("opaque.test", "/", 404, ""), ("garbage.test", "/", 404, "")]).await;
    assert_eq!(served_leaf("secure.test", &roots).await.as_ref().ok(), Some(&second.der), "other objects unaffected");
    others_unaffected(c).await;

    // The object stays the same while its error changes (the Secret appears, with the wrong
    // type): the Warning must say what is wrong now, not repeat the first message.
    let mut later = ingress("tls-later", "later.test", &[path("/", "Prefix", "two")]);
    later["spec"]["tls"] = json!([{"hosts": ["later.test"], "secretName": "later-tls"}]);
    k.create_ingress(later).await;
    k.warning("tls-later", "InvalidConfig", &["spec.tls[0].secretName: Secret e2e-shop/later-tls not found"]).await;
    k.secrets
        .create(&pp, &tls_secret("later-tls", "Opaque", &[("tls.crt", &first.cert_pem), ("tls.key", &first.key_pem)]))
        .await
        .expect("Opaque Secret");
    k.warning("tls-later", "InvalidConfig", &["Secret e2e-shop/later-tls has type \"Opaque\""]).await;

    // Fixed again.
    k.patch_ingress("secure", json!({"spec": {"tls": [{"hosts": ["secure.test"], "secretName": "secure-tls"}]}})).await;
    ServedCert { root: pki.root(), leaf: second.der }
}

/// The global ProxyConfig reports Accepted/Programmed; a value the CRD schema allows but
/// the validator rejects is listed in `status.errors` while the proxy keeps serving.
async fn proxy_config_status(k: &Kube, c: &HttpClient) {
    let status = |accepted: &'static str| {
        let configs = k.configs.clone();
        move || {
            let configs = configs.clone();
            async move {
                let s = configs.get("global").await.ok()?.status?;
                let is = |t: &str, v: &str| s.conditions.iter().any(|c| c.type_ == t && c.status == v);
                (is("Accepted", accepted) && is("Programmed", "True")).then_some(s)
            }
        }
    };
    let s = eventually("ProxyConfig global Accepted and Programmed", SOON, status("True")).await;
    assert!(s.errors.is_empty(), "{:?}", s.errors);

    let patch = |v: Value| Patch::Merge(json!({"spec": {"metricsAddress": v}}));
    k.configs.patch("global", &PatchParams::default(), &patch(json!("nope"))).await.expect("the schema allows it");
    let s = eventually("ProxyConfig global Accepted=False", SOON, status("False")).await;
    assert!(
        s.errors.iter().any(|e| e.starts_with("spec.metricsAddress: invalid address \"nope\"")),
        "status.errors lists the error: {:?}",
        s.errors
    );
    let programmed = s.conditions.iter().find(|c| c.type_ == "Programmed").expect("Programmed");
    assert_eq!(programmed.reason, "LastGoodServing", "{programmed:?}");
    expect_table(&[(c, Version::HTTP_2)], &[("shop.test", "/foo", 200, "pod-8")]).await;
    others_unaffected(c).await;

    k.configs.patch("global", &PatchParams::default(), &patch(Value::Null)).await.expect("fixed");
    let s = eventually("ProxyConfig global Accepted again", SOON, status("True")).await;
    assert!(s.errors.is_empty(), "{:?}", s.errors);
}

/// After a controller restart, everything it serves comes from the API again.
async fn after_controller_restart(c: &HttpClient, tls: &ServedCert) {
    expect_table(
        &[(c, Version::HTTP_2)],
        &[
            ("shop.test", "/foo", 200, "pod-8"),
            ("api.test", "/", 200, "pod-8"),
            ("default.test", "/", 200, "pod-8"),
            ("paths.test", "/x", 200, "pod-two"),
            ("dup.test", "/same", 200, "pod-two"),
            ("secure.test", "/", 200, "pod-one"),
            ("broken.test", "/", 404, ""),
        ],
    )
    .await;
    let leaf = served_leaf("secure.test", std::slice::from_ref(&tls.root)).await;
    assert_eq!(leaf.as_ref().ok(), Some(&tls.leaf), "the Secret's certificate after a restart");
}

/// The stored last good versions, as the leader keeps them in its ConfigMap.
/// Sign-outs shared between replicas (`k8s::revocations`), with the chart's RBAC: three
/// in-process data planes' lists stand for three replicas, beside the running controller
/// (which watches the same ConfigMap). A sign-out on one is refused by another within 2 s
/// (the ConfigMap is created by the first one); a replica that starts later lists it too; the
/// leader prunes an expired entry when it takes the lead.
async fn shared_sign_outs(k: &Kube, sa: &std::path::Path) {
    use portcullis::k8s::revocations::{share, DEFAULT_CONFIGMAP};
    use portcullis::proxy::revocations::Revocations;
    let client = client_from(sa).await;
    let (lead, leader) = tokio::sync::watch::channel(false);
    let follower = || tokio::sync::watch::channel(false).1;
    let replica_a = Arc::new(Revocations::default());
    let replica_b = Arc::new(Revocations::default());
    let _shared_a = share(client.clone(), "portcullis", DEFAULT_CONFIGMAP, replica_a.clone(), leader);
    let _shared_b = share(client.clone(), "portcullis", DEFAULT_CONFIGMAP, replica_b.clone(), follower());
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    // Let both watches start before the sign-out (a controller's replicas run long before).
    tokio::time::sleep(Duration::from_millis(300)).await;
    let t = Instant::now();
    replica_a.revoke("e2e-session-1", now + 600);
    assert!(replica_a.is_revoked("e2e-session-1"), "at once where it happened");
    eventually("the sign-out on replica a refused by replica b", Duration::from_secs(2), || async {
        replica_b.is_revoked("e2e-session-1").then_some(())
    })
    .await;
    eprintln!("  a sign-out reached the other replica in {:.0?}", t.elapsed());
    let configmaps = Api::<ConfigMap>::namespaced(k.client.clone(), "portcullis");
    let cm = configmaps.get(DEFAULT_CONFIGMAP).await.expect("the ConfigMap the first sign-out created");
    let until = (now + 600).to_string();
    assert_eq!(cm.data.unwrap_or_default().get("e2e-session-1"), Some(&until), "sid -> until");
    replica_b.revoke("e2e-session-2", now + 600);
    let late = Arc::new(Revocations::default());
    let _shared_late = share(client.clone(), "portcullis", DEFAULT_CONFIGMAP, late.clone(), follower());
    eventually("a replica started later lists both sign-outs", SOON, || async {
        (late.is_revoked("e2e-session-1") && late.is_revoked("e2e-session-2")).then_some(())
    })
    .await;
    // An entry whose time has passed: removed by the leader, once it leads.
    configmaps
        .patch(DEFAULT_CONFIGMAP, &PatchParams::default(), &Patch::Merge(json!({"data": {"e2e-ended": "1"}})))
        .await
        .expect("adding an expired entry");
    assert!(!late.is_revoked("e2e-ended"), "an ended session needs no listing");
    lead.send_replace(true);
    eventually("the leader prunes the expired entry", SOON, || async {
        let cm = configmaps.get(DEFAULT_CONFIGMAP).await.ok()?;
        let data = cm.data.unwrap_or_default();
        (!data.contains_key("e2e-ended") && data.contains_key("e2e-session-1")).then_some(())
    })
    .await;
}

/// Browser sign-in configured the Kubernetes way: node's `oidc-provider` on loopback inside the
/// namespace (the proxy takes `http://` issuers on loopback only), the ProxyConfig's
/// `idpProviderUrl`, `idpClientId` and `authenticateServiceUrl`, and the client secret, cookie
/// secret and signing key from Secrets in the controller's namespace (default keys). A Route
/// allowing only alice: the scripted user agent is sent through the sign-in host to the
/// provider, signs in and lands on the route with 200 from `pod-two`, which received an
/// `X-Portcullis-Jwt-Assertion` signed with the Secret's key and naming alice. Signing out goes
/// through the provider's logout and back to the sign-in host; the old cookie replayed is sent
/// to sign in again, and the sign-out is listed in the shared ConfigMap. The ProxyConfig, the
/// Route and the Secrets are removed again, and the ProxyConfig is `Accepted` afterwards.
async fn browser_sign_in(k: &Kube) {
    use base64::Engine as _;
    use portcullis::k8s::revocations::DEFAULT_CONFIGMAP;
    use signin_support::{describe, Agent, OidcProvider, ProviderOptions, ALICE, CLIENT_ID, CLIENT_SECRET};
    let b64url = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let auth = "https://authenticate.signin.test:8443";
    let app = "https://app.signin.test:8443";
    let provider = tokio::time::timeout(SOON * 3, OidcProvider::start(ProviderOptions::for_auth(auth)))
        .await
        .expect("the OpenID Provider starts within 45 s");

    let pp = PostParams::default();
    let secrets = Api::<Secret>::namespaced(k.client.clone(), "portcullis");
    let mut cookie_secret = [0u8; 32];
    aws_lc_rs::rand::fill(&mut cookie_secret).expect("random bytes");
    let signing_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("a P-256 key");
    let secret = |name: &str, data: Value| -> Secret { obj(json!({"metadata": {"name": name}, "stringData": data})) };
    secrets
        .create(&pp, &secret("e2e-oidc-client", json!({"client-secret": CLIENT_SECRET})))
        .await
        .expect("the client secret's Secret");
    secrets
        .create(
            &pp,
            &secret(
                "e2e-sign-in-keys",
                json!({
                    "cookie-secret": base64::engine::general_purpose::STANDARD.encode(cookie_secret),
                    "signing-key": signing_key.serialize_pem(),
                }),
            ),
        )
        .await
        .expect("the cookie secret's and signing key's Secret");
    let sign_in_fields = |on: bool| {
        let v = |x: Value| if on { x } else { Value::Null };
        json!({"spec": {
            "idpProviderUrl": v(json!(provider.issuer())),
            "idpClientId": v(json!(CLIENT_ID)),
            "idpClientSecretRef": v(json!({"name": "e2e-oidc-client"})),
            "cookieSecretRef": v(json!({"name": "e2e-sign-in-keys"})),
            "signingKeySecretRef": v(json!({"name": "e2e-sign-in-keys"})),
            "authenticateServiceUrl": v(json!(auth)),
        }})
    };
    k.configs
        .patch("global", &PatchParams::default(), &Patch::Merge(sign_in_fields(true)))
        .await
        .expect("the sign-in fields on ProxyConfig global");
    let route: Route = obj(json!({
        "apiVersion": "portcullis.io/v1alpha1", "kind": "Route", "metadata": {"name": "signin"},
        "spec": {"from": "https://app.signin.test", "to": ["http://two:80"], "allowedUsers": [ALICE.email]},
    }));
    k.routes.create(&pp, &route).await.expect("the signed-in Route");
    let accepted = || async {
        let s = k.configs.get("global").await.ok()?.status?;
        let is = |t: &str, v: &str| s.conditions.iter().any(|c| c.type_ == t && c.status == v);
        (is("Accepted", "True") && is("Programmed", "True") && s.errors.is_empty()).then_some(())
    };
    eventually("ProxyConfig global with sign-in Accepted and Programmed", SOON, accepted).await;
    // Programmed: a browser without a session is sent to the sign-in host.
    let sign_in_at = format!("{auth}/.portcullis/sign_in");
    eventually("the Route sends a browser to the sign-in host", SOON, || async {
        let mut fresh = Agent::new();
        fresh.timeout = Duration::from_secs(5);
        let hop = fresh.try_request("GET", &format!("{app}/"), &[], None).await.ok()?;
        (hop.status == 302 && hop.location()?.starts_with(&sign_in_at)).then_some(())
    })
    .await;

    // Signing in: the sign-in host, the provider's login and consent forms, the callback and
    // the hand-off back to the route host.
    let mut agent = Agent::new();
    agent.timeout = Duration::from_secs(10);
    let wanted = format!("{app}/hello?x=1");
    let mut hops = agent.follow(&wanted, 10).await;
    let login = hops.last().expect("a hop").clone();
    assert!(login.url.starts_with(provider.issuer()), "sent to the provider:\n{}", describe(&hops));
    hops.extend(agent.sign_in_at_provider(&login, ALICE.login, ALICE.password).await);
    let last = hops.last().expect("a hop").clone();
    assert_eq!((last.status, last.url.as_str()), (200, wanted.as_str()), "back where it started:\n{}", describe(&hops));
    for way in [
        format!("{sign_in_at}?state="),
        format!("{auth}/.portcullis/callback?"),
        format!("{app}/.portcullis/callback?handoff="),
    ] {
        assert!(hops.iter().any(|h| h.url.starts_with(&way)), "through {way}:\n{}", describe(&hops));
    }
    assert_eq!(upstream_of(&last.body), "pod-two", "{}", last.body);
    let seen: Value = serde_json::from_str(&last.body).expect("the demo's JSON");
    let jwt = seen["headers"]["x-portcullis-jwt-assertion"].as_str().unwrap_or_else(|| panic!("no assertion: {seen}"));
    // Signed (ES256) with the key from the Secret, for alice.
    let (signed, signature) = jwt.rsplit_once('.').expect("a JWT");
    let signature = b64url.decode(signature).expect("base64url signature");
    aws_lc_rs::signature::UnparsedPublicKey::new(
        &aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED,
        signing_key.public_key_raw(),
    )
    .verify(signed.as_bytes(), &signature)
    .expect("the assertion is signed with the Secret's signing key");
    let claims: Value =
        serde_json::from_slice(&b64url.decode(signed.split('.').nth(1).expect("claims")).expect("base64url"))
            .expect("JSON claims");
    assert_eq!((claims["email"].as_str(), claims["sub"].as_str()), (Some(ALICE.email), Some(ALICE.sub)), "{claims}");

    // Signing out: the provider's logout, then back to the sign-in host's signed-out page.
    let configmaps = Api::<ConfigMap>::namespaced(k.client.clone(), "portcullis");
    let listed = || async {
        configmaps.get_opt(DEFAULT_CONFIGMAP).await.ok().flatten().and_then(|cm| cm.data).unwrap_or_default().len()
    };
    let before = listed().await;
    let cookie = agent.cookie("_portcullis", "app.signin.test").expect("a session cookie").to_owned();
    let out = agent.get(&format!("{app}/.portcullis/sign_out")).await;
    assert_eq!(out.status, 302, "{out}: {}", out.body);
    assert!(out.location().is_some_and(|l| l.starts_with(&provider.end_session_endpoint())), "{out}");
    let back = agent.confirm_provider_logout(&out).await;
    let landed = back.last().expect("a hop");
    assert_eq!(landed.status, 200, "{}", describe(&back));
    assert!(landed.url.starts_with(&format!("{auth}/.portcullis/signed_out")), "{}", describe(&back));
    assert!(agent.cookie("_portcullis", "app.signin.test").is_none(), "the cookie is cleared");
    agent.set_cookie("_portcullis", "app.signin.test", &cookie);
    let replay = agent.get(&format!("{app}/")).await;
    assert_eq!(replay.status, 302, "a signed-out session is no session: {replay}: {}", replay.body);
    assert!(replay.location().is_some_and(|l| l.starts_with(&sign_in_at)), "{replay}");
    eventually("the sign-out is listed in the shared ConfigMap", SOON, || async {
        (listed().await > before).then_some(())
    })
    .await;

    // Removed again: later steps run without a provider.
    k.routes.delete("signin", &DeleteParams::default()).await.expect("deleting Route signin");
    k.configs
        .patch("global", &PatchParams::default(), &Patch::Merge(sign_in_fields(false)))
        .await
        .expect("removing the sign-in fields");
    for name in ["e2e-oidc-client", "e2e-sign-in-keys"] {
        secrets.delete(name, &DeleteParams::default()).await.unwrap_or_else(|e| panic!("deleting Secret {name}: {e}"));
    }
    eventually("ProxyConfig global without sign-in Accepted and Programmed", SOON, accepted).await;
    serves(&https(), "app.signin.test", "/", 404, "").await;
    let global = k.configs.get("global").await.expect("ProxyConfig global");
    assert!(global.spec.idp_provider_url.is_none() && global.spec.cookie_secret_ref.is_none(), "restored");
}

async fn stored_last_good(k: &Kube) -> std::collections::BTreeMap<String, String> {
    Api::<ConfigMap>::namespaced(k.client.clone(), "portcullis")
        .get_opt("portcullis-last-good")
        .await
        .expect("reading the last good ConfigMap")
        .and_then(|cm| cm.data)
        .unwrap_or_default()
}

/// Breaking `shop` again: the leader stores its last good version (the whole object as it
/// was when good), so that the restart below can serve it although no process remembers it.
async fn store_last_good(k: &Kube) {
    k.patch_ingress("shop", json!({"metadata": {"annotations": {"portcullis.io/timeout": "soon"}}})).await;
    let stored =
        eventually("the last good version of shop in ConfigMap portcullis/portcullis-last-good", SOON, || async {
            stored_last_good(k).await.remove("ingress.e2e-shop.shop")
        })
        .await;
    let good: Ingress = serde_json::from_str(&stored).expect("the stored value is the Ingress as JSON");
    assert_eq!(
        good.metadata.annotations.unwrap_or_default().get("portcullis.io/timeout").map(String::as_str),
        Some("9s"),
        "the version stored is the last good one"
    );
}

/// Fixing `shop` removes its entry: only objects that are bad now are stored.
async fn release_last_good(k: &Kube) {
    k.patch_ingress("shop", json!({"metadata": {"annotations": {"portcullis.io/timeout": "9s"}}})).await;
    eventually("shop leaves the last good ConfigMap", SOON, || async {
        (!stored_last_good(k).await.contains_key("ingress.e2e-shop.shop")).then_some(())
    })
    .await;
}

/// kube-apiserver goes away: the proxy keeps serving what it has. It comes back (same etcd):
/// the controller's watches resume and a new Ingress is served.
async fn apiserver_restart(k: &Kube, c: &HttpClient, tls: &ServedCert) {
    let apiserver = ApiServer::from_env();
    let down = Instant::now();
    let stopped = apiserver.stop().await;
    eprintln!("kube-apiserver {stopped}");
    assert!(k.client.apiserver_version().await.is_err(), "the API is really gone");
    expect_table(
        &[(c, Version::HTTP_2), (&https_h1(), Version::HTTP_11)],
        &[("shop.test", "/foo", 200, "pod-8"), ("paths.test", "/a/b", 200, "pod-two"), ("nobody.test", "/", 404, "")],
    )
    .await;
    let leaf = served_leaf("secure.test", std::slice::from_ref(&tls.root)).await;
    assert_eq!(leaf.as_ref().ok(), Some(&tls.leaf), "TLS keeps working without the API");

    let mut restarted = apiserver.start_again();
    let ready = restarted.wait_ready(&k.client).await;
    eprintln!("kube-apiserver ready again {ready:.1?} after starting it ({:.1?} without an API)", down.elapsed());
    k.create_ingress(ingress("after-restart", "restart.test", &[path("/", "Prefix", "one")])).await;
    let t = Instant::now();
    let resynced = Duration::from_secs(90);
    eventually("an Ingress created after the apiserver restart is served", resynced, || async {
        (get(c, "restart.test", "/").await.0 == 200).then_some(())
    })
    .await;
    eprintln!("controller resynced: the new Ingress served {:.1?} after it was created", t.elapsed());
    expect_table(
        &[(c, Version::HTTP_2)],
        &[("restart.test", "/", 200, "pod-one"), ("shop.test", "/foo", 200, "pod-8")],
    )
    .await;
    drop(restarted);
}

/// Where a tunnel step keeps its programs' keys, configuration and logs.
fn tunnel_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("portcullis-e2e-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("tunnel step dir");
    dir
}

/// `cargo xtask e2e` installs the programs the tunnel steps run (the namespace has no network).
fn require_program(path: &str) {
    assert!(
        std::path::Path::new(path).exists(),
        "{path} is missing: `cargo xtask e2e` installs openssh-server, dnsmasq and bind9-dnsutils before the tests"
    );
}

fn run(argv: &[&str]) {
    let out = std::process::Command::new(argv[0]).args(&argv[1..]).output().expect("running a tool");
    assert!(out.status.success(), "{argv:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// A TLS Secret and its CA (DER, and PEM for `portcullis tunnel --ca-file`) for one tunnel
/// host: tunnels are reached with SNI = their host and a verified certificate.
async fn tunnel_certificate(k: &Kube, name: &str, host: &str) -> (CertificateDer<'static>, String) {
    let pki = Pki::new();
    let leaf = pki.leaf(host, 1);
    k.secrets
        .create(
            &PostParams::default(),
            &tls_secret(name, "kubernetes.io/tls", &[("tls.crt", &leaf.cert_pem), ("tls.key", &leaf.key_pem)]),
        )
        .await
        .expect("tunnel TLS Secret");
    (pki.root(), pki.ca.pem())
}

/// Runs `argv` in a mount namespace of its own where `/etc/hosts` is `hosts` (bind-mounted,
/// private: nothing outside sees it), so that `portcullis tunnel` reaches the proxy at the
/// tunnel hosts' names (SNI and verification as in production) although the namespace has
/// no DNS. The process execs through (unshare, sh, then `argv`), so killing it kills `argv`.
fn with_hosts(hosts: &std::path::Path, argv: &[&str]) -> Vec<String> {
    let mut out: Vec<String> =
        ["unshare", "--mount", "sh", "-c", "mount --bind \"$0\" /etc/hosts && exec \"$@\""].map(str::to_owned).to_vec();
    out.push(hosts.to_string_lossy().into_owned());
    out.extend(argv.iter().map(|a| (*a).to_owned()));
    out
}

/// The `portcullis` binary under test (the controller's).
fn portcullis_bin() -> String {
    std::env::var("PORTCULLIS_BIN").expect("PORTCULLIS_BIN is not set: run with `cargo xtask e2e`")
}

/// An /etc/hosts naming the tunnel hosts 127.0.0.1 (where the proxy listens), in `dir`.
fn tunnel_hosts(dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("hosts");
    std::fs::write(&path, "127.0.0.1 localhost\n::1 localhost\n127.0.0.1 ssh.tunnel.test dns.tunnel.test\n")
        .expect("hosts file");
    path
}

/// An Ingress with `portcullis.io/tcp_upstream` to a Service whose EndpointSlice points at a
/// real OpenSSH sshd on a pod IP: an HTTP/1.1 CONNECT to `ssh.tunnel.test:22` (the Service
/// port, not the target port 2222) through the proxy gets 200 and sshd's banner, another
/// port is 404, and a tunnel Ingress with a `Prefix` path gets a Warning naming the paths.
async fn ssh_through_an_ingress_tunnel(k: &Kube) {
    require_program("/usr/sbin/sshd");
    let dir = tunnel_dir("sshd");
    let d = |f: &str| dir.join(f).to_string_lossy().into_owned();
    run(&["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", &d("host_key")]);
    run(&["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", &d("id_ed25519")]);
    std::fs::copy(d("id_ed25519.pub"), d("authorized_keys")).expect("authorized_keys");
    // sshd's privilege separation directory (the package makes it at boot, not at install).
    std::fs::create_dir_all("/run/sshd").expect("/run/sshd");
    let config = format!(
        "ListenAddress 10.244.5.1:2222\nHostKey {}\nAuthorizedKeysFile {}\nPidFile {}\nPermitRootLogin prohibit-password\n\
         PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\nLogLevel VERBOSE\n",
        d("host_key"),
        d("authorized_keys"),
        d("sshd.pid")
    );
    std::fs::write(d("sshd_config"), config).expect("sshd_config");
    let sshd =
        portcullis_e2e::Program::start(&["/usr/sbin/sshd", "-D", "-e", "-f", &d("sshd_config")], &dir.join("sshd.log"));
    eventually_or(SOON, || async { tokio::net::TcpStream::connect("10.244.5.1:2222").await.ok() })
        .await
        .unwrap_or_else(|| panic!("sshd did not listen on 10.244.5.1:2222:\n{}", sshd.output()));

    let pp = PostParams::default();
    k.services
        .create(&pp, &obj(json!({"metadata": {"name": "sshd"}, "spec": {"ports": [{"name": "ssh", "port": 22, "targetPort": 2222, "protocol": "TCP"}]}})))
        .await
        .expect("sshd Service");
    k.slices
        .create(
            &pp,
            &obj(json!({
                "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                "metadata": {"name": "sshd-1", "namespace": NS, "labels": {"kubernetes.io/service-name": "sshd"}},
                "addressType": "IPv4",
                "ports": [{"name": "ssh", "port": 2222, "protocol": "TCP"}],
                "endpoints": [{"addresses": ["10.244.5.1"], "conditions": {"ready": true}}],
            })),
        )
        .await
        .expect("sshd EndpointSlice");
    let (root, ca_pem) = tunnel_certificate(k, "ssh-tls", "ssh.tunnel.test").await;
    let roots = [root];
    let tunnel = |name: &str, path_type: &str| {
        json!({
            "metadata": {"name": name, "annotations": {"portcullis.io/tcp_upstream": "true"}},
            "spec": {
                "ingressClassName": "portcullis",
                "tls": [{"hosts": ["ssh.tunnel.test"], "secretName": "ssh-tls"}],
                "rules": [{"host": "ssh.tunnel.test", "http": {"paths": [
                    {"pathType": path_type, "backend": {"service": {"name": "sshd", "port": {"number": 22}}}},
                ]}}],
            },
        })
    };
    k.create_ingress(tunnel("ssh", "ImplementationSpecific")).await;
    let banner = eventually("CONNECT ssh.tunnel.test:22 reaches sshd", SOON, || async {
        let (status, _, mut tls, mut first) = tunnel_tcp("ssh.tunnel.test", &roots, "ssh.tunnel.test:22").await.ok()?;
        if status != 200 {
            return None;
        }
        // The server speaks first: its identification line (RFC 4253 section 4.2).
        let read = async {
            while !first.contains(&b'\n') && first.len() < 255 {
                let mut chunk = [0u8; 256];
                let n = tokio::io::AsyncReadExt::read(&mut tls, &mut chunk).await.ok()?;
                if n == 0 {
                    return None;
                }
                first.extend_from_slice(&chunk[..n]);
            }
            Some(String::from_utf8_lossy(&first).into_owned())
        };
        tokio::time::timeout(Duration::from_secs(5), read).await.ok().flatten()
    })
    .await;
    assert!(banner.starts_with("SSH-2.0-OpenSSH"), "sshd's banner through the tunnel: {banner:?}");
    let (status, head, _, _) = tunnel_tcp("ssh.tunnel.test", &roots, "ssh.tunnel.test:2222").await.expect("CONNECT");
    assert_eq!(status, 404, "the target port is not the tunnel port: {head}");
    let log = sshd.output();
    assert!(log.contains("Connection from 10.244."), "sshd saw the proxy's connection:\n{log}");

    // The real ssh client through `portcullis tunnel` as its ProxyCommand (stdin/stdout),
    // verifying both the proxy's certificate (--ca-file) and sshd's host key.
    std::fs::write(d("ca.pem"), &ca_pem).expect("CA file");
    let host_key = std::fs::read_to_string(d("host_key.pub")).expect("host key");
    std::fs::write(d("known_hosts"), format!("ssh.tunnel.test {host_key}")).expect("known_hosts");
    let proxy_command = format!(
        "{} tunnel tcp %h:%p --listen - --proxy-url https://ssh.tunnel.test:8443 --ca-file {} --token-dir {}",
        portcullis_bin(),
        d("ca.pem"),
        d("tokens")
    );
    let hosts = tunnel_hosts(&dir);
    let argv = with_hosts(
        &hosts,
        &[
            "ssh",
            "-F",
            "/dev/null",
            "-i",
            &d("id_ed25519"),
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            &format!("UserKnownHostsFile={}", d("known_hosts")),
            "-o",
            &format!("ProxyCommand={proxy_command}"),
            "-l",
            "root",
            "ssh.tunnel.test",
            "echo hello",
        ],
    );
    let out = tokio::time::timeout(
        Duration::from_secs(30),
        tokio::process::Command::new(&argv[0]).args(&argv[1..]).kill_on_drop(true).output(),
    )
    .await
    .expect("ssh finished within 30 s")
    .expect("running ssh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout == "hello\n",
        "ssh through portcullis tunnel ran the command ({}): stdout {stdout:?}, stderr {}\nsshd:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        sshd.output()
    );
    assert!(sshd.output().contains("Accepted publickey for root"), "sshd authenticated the key:\n{}", sshd.output());

    // A tunnel Ingress whose path is not ImplementationSpecific is refused, naming the field.
    let mut bad = tunnel("ssh-prefix", "Prefix");
    bad["spec"]["rules"][0]["host"] = json!("ssh2.tunnel.test");
    bad["spec"]["rules"][0]["http"]["paths"][0]["path"] = json!("/");
    k.create_ingress(bad).await;
    k.warning("ssh-prefix", "InvalidConfig", &["spec.rules[0].http.paths", "ImplementationSpecific"]).await;
    k.delete_ingress("ssh-prefix").await;
}

/// A DNS query for `name` (type A, recursion desired) with id `id`: RFC 1035 section 4.1.
fn dns_query(id: u16, name: &str) -> Vec<u8> {
    let mut q = id.to_be_bytes().to_vec();
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.split('.') {
        q.push(u8::try_from(label.len()).expect("a short label"));
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    q
}

/// The addresses of the A records in the answer section of a reply to [`dns_query`] with
/// `id`; `None` when it is not one (another id, an error code, a malformed reply).
fn dns_answers(reply: &[u8], id: u16) -> Option<Vec<std::net::Ipv4Addr>> {
    let u16_at = |i: usize| Some(u16::from_be_bytes([*reply.get(i)?, *reply.get(i + 1)?]));
    if u16_at(0)? != id || reply.get(3)? & 0x0f != 0 || u16_at(4)? != 1 {
        return None;
    }
    let answers = u16_at(6)?;
    // Skip the question: its name's labels, then type and class.
    let mut i = 12;
    while *reply.get(i)? != 0 {
        i += 1 + usize::from(*reply.get(i)?);
    }
    i += 5;
    let mut out = Vec::new();
    for _ in 0..answers {
        // The answer's name: a compression pointer, or labels.
        if reply.get(i)? & 0xc0 == 0xc0 {
            i += 2;
        } else {
            while *reply.get(i)? != 0 {
                i += 1 + usize::from(*reply.get(i)?);
            }
            i += 1;
        }
        let (kind, len) = (u16_at(i)?, usize::from(u16_at(i + 8)?));
        let data = reply.get(i + 10..i + 10 + len)?;
        if kind == 1 && len == 4 {
            out.push(std::net::Ipv4Addr::new(data[0], data[1], data[2], data[3]));
        }
        i += 10 + len;
    }
    Some(out)
}

/// A Route `udp+https://dns.tunnel.test:53` to `udp://dnsmasq:53`, a Service with 53/TCP and
/// 53/UDP (the UDP one is taken) in front of a real dnsmasq on a pod IP: a DNS query through
/// the HTTP/1.1 CONNECT-UDP fallback (DATAGRAM capsules) gets dnsmasq's A record, and the
/// Route is `Accepted`.
async fn dns_through_a_udp_route(k: &Kube) {
    require_program("/usr/sbin/dnsmasq");
    let dir = tunnel_dir("dnsmasq");
    let pid = dir.join("dnsmasq.pid").to_string_lossy().into_owned();
    let dnsmasq = portcullis_e2e::Program::start(
        &[
            "/usr/sbin/dnsmasq",
            "--keep-in-foreground",
            "--conf-file=/dev/null",
            "--no-resolv",
            "--no-hosts",
            "--port=5353",
            "--listen-address=10.244.5.2",
            "--bind-interfaces",
            "--address=/tunnel.test/10.9.8.7",
            "--log-queries",
            "--log-facility=-",
            &format!("--pid-file={pid}"),
        ],
        &dir.join("dnsmasq.log"),
    );
    // Answers directly first, so that a failure below is the tunnel's.
    let direct = eventually_or(SOON, || async {
        let s = tokio::net::UdpSocket::bind("10.244.5.2:0").await.ok()?;
        s.send_to(&dns_query(7, "direct.tunnel.test"), "10.244.5.2:5353").await.ok()?;
        let mut buf = [0u8; 512];
        let n = tokio::time::timeout(Duration::from_millis(500), s.recv(&mut buf)).await.ok()?.ok()?;
        dns_answers(&buf[..n], 7)
    })
    .await
    .unwrap_or_else(|| panic!("dnsmasq did not answer on 10.244.5.2:5353:\n{}", dnsmasq.output()));
    assert_eq!(direct, [std::net::Ipv4Addr::new(10, 9, 8, 7)]);

    let pp = PostParams::default();
    k.services
        .create(
            &pp,
            &obj(json!({"metadata": {"name": "dnsmasq"}, "spec": {"ports": [
                {"name": "dns-tcp", "port": 53, "targetPort": 5300, "protocol": "TCP"},
                {"name": "dns", "port": 53, "targetPort": 5353, "protocol": "UDP"},
            ]}})),
        )
        .await
        .expect("dnsmasq Service");
    k.slices
        .create(&pp, &obj(json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "dnsmasq-1", "namespace": NS, "labels": {"kubernetes.io/service-name": "dnsmasq"}},
            "addressType": "IPv4",
            "ports": [{"name": "dns-tcp", "port": 5300, "protocol": "TCP"}, {"name": "dns", "port": 5353, "protocol": "UDP"}],
            "endpoints": [{"addresses": ["10.244.5.2"], "conditions": {"ready": true}}],
        })))
        .await
        .expect("dnsmasq EndpointSlice");
    let (root, ca_pem) = tunnel_certificate(k, "dns-tls", "dns.tunnel.test").await;
    let roots = [root];
    let route: Route = obj(json!({
        "apiVersion": "portcullis.io/v1alpha1", "kind": "Route", "metadata": {"name": "dns"},
        "spec": {"from": "udp+https://dns.tunnel.test:53", "to": ["udp://dnsmasq:53"], "tls": {"secretName": "dns-tls"}},
    }));
    k.routes.create(&pp, &route).await.expect("dns Route");
    let mut id = 100u16;
    let answers = eventually("a DNS query through CONNECT-UDP (HTTP/1.1 capsules) is answered", SOON, || {
        id += 1;
        let id = id;
        let roots = roots.clone();
        async move {
            let (status, _, mut tls, rest) = tunnel_udp("dns.tunnel.test", &roots, "dns.tunnel.test", 53).await.ok()?;
            if status != 101 {
                return None;
            }
            let reply = portcullis_e2e::udp_round_trip(&mut tls, rest, &dns_query(id, "tunnel.test")).await.ok()?;
            dns_answers(&reply, id)
        }
    })
    .await;
    assert_eq!(answers, [std::net::Ipv4Addr::new(10, 9, 8, 7)], "dnsmasq's record through the tunnel");
    let log = dnsmasq.output();
    assert!(log.contains("query[A] tunnel.test from 10.244."), "dnsmasq saw the proxy's query:\n{log}");

    // dig through `portcullis tunnel udp` on a local UDP socket, over HTTP/3 (QUIC
    // datagrams) and over the HTTP/1.1 fallback (capsules).
    require_program("/usr/bin/dig");
    let ca = dir.join("ca.pem");
    std::fs::write(&ca, &ca_pem).expect("CA file");
    let hosts = tunnel_hosts(&dir);
    let bin = portcullis_bin();
    // HTTP/3 needs `quic-ingress`, which `codecType: http3` opens (the chart's is `auto`);
    // put back afterwards.
    let codec = k.configs.get("global").await.expect("ProxyConfig global").spec.codec_type;
    let set_codec = |v: Value| async move {
        k.configs
            .patch("global", &PatchParams::default(), &Patch::Merge(json!({"spec": {"codecType": v}})))
            .await
            .expect("patching the ProxyConfig's codecType");
    };
    set_codec(json!("http3")).await;
    for (transport, listen) in [("--http3", "127.0.0.1:15353"), ("--http1", "127.0.0.1:15354")] {
        let argv = with_hosts(
            &hosts,
            &[
                &bin,
                "tunnel",
                "udp",
                "dns.tunnel.test:53",
                "--listen",
                listen,
                transport,
                "--proxy-url",
                "https://dns.tunnel.test:8443",
                "--ca-file",
                &ca.to_string_lossy(),
                "--token-dir",
                &dir.join("tokens").to_string_lossy(),
            ],
        );
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        let client = portcullis_e2e::Program::start(&argv, &dir.join(format!("tunnel{transport}.log")));
        let (ip, port) = listen.split_once(':').expect("listen address");
        let answer = eventually_or(SOON, || async {
            let out = tokio::process::Command::new("dig")
                .args([&format!("@{ip}"), "-p", port, "+short", "+tries=1", "+time=2", "name.tunnel.test", "A"])
                .kill_on_drop(true)
                .output()
                .await
                .ok()?;
            let text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
            (out.status.success() && !text.is_empty() && !text.starts_with(';')).then_some(text)
        })
        .await
        .unwrap_or_else(|| panic!("dig through portcullis tunnel {transport} got no answer:\n{}", client.output()));
        assert_eq!(answer, "10.9.8.7", "dig through portcullis tunnel udp {transport}");
    }
    set_codec(serde_json::to_value(codec).expect("codecType")).await;
    let log = dnsmasq.output();
    assert!(log.contains("query[A] name.tunnel.test from 10.244."), "dnsmasq saw dig's query:\n{log}");
    let (status, head, _, _) = tunnel_udp("dns.tunnel.test", &roots, "dns.tunnel.test", 54).await.expect("CONNECT-UDP");
    assert_eq!(status, 404, "no tunnel on port 54: {head}");
    let accepted = eventually("Route dns reports Accepted=True", SOON, || async {
        let r = k.routes.get("dns").await.ok()?;
        r.status?.conditions.into_iter().find(|c| c.type_ == "Accepted" && c.status == "True")
    })
    .await;
    assert_eq!(accepted.status, "True");
}
