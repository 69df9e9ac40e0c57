//! Cluster behaviour against a real kube-apiserver and etcd (started by `cargo xtask e2e`):
//! real objects through the API, the real controller binary, real HTTPS through its proxy.
//! One sequential scenario: the steps build on each other and share one controller.

use std::collections::BTreeSet;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::api::networking::v1::{Ingress, IngressClass};
use kube::api::{Patch, PatchParams, PostParams};
use kube::Api;
use portcullis::k8s::crd::{ProxyConfig, Route};
use portcullis_e2e::{client, client_from, eventually, get, https, pod, service_account_kubeconfig, Controller};
use serde_json::json;

const NS: &str = "e2e-shop";
const SOON: Duration = Duration::from_secs(15);

fn obj<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> T {
    serde_json::from_value(v).expect("a valid object")
}

fn slice(ready: &[(&str, bool)]) -> EndpointSlice {
    obj(json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "app-1", "namespace": NS, "labels": {"kubernetes.io/service-name": "app"}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": ready.iter().map(|(ip, r)| json!({"addresses": [ip], "conditions": {"ready": r}})).collect::<Vec<_>>(),
    }))
}

fn upstream_of(body: &str) -> String {
    serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["upstream"].as_str().map(str::to_owned))
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingress_and_route_lifecycle_against_a_real_api_server() {
    let kube = client().await;
    let pp = PostParams::default();
    Api::<Namespace>::all(kube.clone()).create(&pp, &obj(json!({"metadata": {"name": NS}}))).await.expect("namespace");
    Api::<IngressClass>::all(kube.clone())
        .create(&pp, &obj(json!({
            "metadata": {"name": "portcullis", "annotations": {"ingressclass.kubernetes.io/is-default-class": "true"}},
            "spec": {"controller": "portcullis.io/ingress-controller"},
        })))
        .await
        .expect("ingress class");
    Api::<ProxyConfig>::all(kube.clone())
        .create(&pp, &obj(json!({"apiVersion": "portcullis.io/v1alpha1", "kind": "ProxyConfig", "metadata": {"name": "global"}, "spec": {"httpRedirectAddress": ":18080"}})))
        .await
        .expect("proxy config");
    let services = Api::<Service>::namespaced(kube.clone(), NS);
    services
        .create(&pp, &obj(json!({"metadata": {"name": "app"}, "spec": {"ports": [{"name": "http", "port": 80, "targetPort": 8080}]}})))
        .await
        .expect("service");
    let slices = Api::<EndpointSlice>::namespaced(kube.clone(), NS);
    slices.create(&pp, &slice(&[("10.244.1.7", true)])).await.expect("endpoint slice");
    pod("10.244.1.7:8080", "pod-7").await;
    pod("10.244.1.8:8080", "pod-8").await;

    let ingresses = Api::<Ingress>::namespaced(kube.clone(), NS);
    let backend = json!({"service": {"name": "app", "port": {"name": "http"}}});
    ingresses
        .create(&pp, &obj(json!({
            "metadata": {"name": "shop", "annotations": {"portcullis.io/timeout": "7s"}},
            "spec": {"ingressClassName": "portcullis", "rules": [
                {"host": "shop.test", "http": {"paths": [
                    {"path": "/exact", "pathType": "Exact", "backend": backend},
                    {"path": "/foo", "pathType": "Prefix", "backend": backend},
                ]}},
                {"host": "*.wild.test", "http": {"paths": [{"path": "/", "pathType": "Prefix", "backend": backend}]}},
            ]},
        })))
        .await
        .expect("ingress");
    ingresses
        .create(&pp, &obj(json!({
            "metadata": {"name": "other-class"},
            "spec": {"ingressClassName": "nginx", "rules": [{"host": "other.test", "http": {"paths": [{"path": "/", "pathType": "Prefix", "backend": backend}]}}]},
        })))
        .await
        .expect("ingress of another class");
    ingresses
        .create(&pp, &obj(json!({
            "metadata": {"name": "no-class"},
            "spec": {"rules": [{"host": "default.test", "http": {"paths": [{"path": "/", "pathType": "Prefix", "backend": backend}]}}]},
        })))
        .await
        .expect("ingress without a class");

    // The controller runs as its ServiceAccount with exactly deploy/rbac.yaml's permissions.
    let sa = service_account_kubeconfig(&kube).await;
    let sa_client = client_from(&sa).await;
    let forbidden =
        Api::<k8s_openapi::api::core::v1::Pod>::all(sa_client.clone()).list(&kube::api::ListParams::default()).await;
    assert!(
        matches!(&forbidden, Err(kube::Error::Api(s)) if s.code == 403),
        "listing Pods is not in the list: {forbidden:?}"
    );
    let forbidden = Api::<k8s_openapi::api::core::v1::Secret>::namespaced(sa_client, NS)
        .create(&pp, &obj(json!({"metadata": {"name": "nope"}, "stringData": {"a": "b"}})))
        .await;
    assert!(
        matches!(&forbidden, Err(kube::Error::Api(s)) if s.code == 403),
        "creating Secrets is not in the list: {forbidden:?}"
    );
    let mut controller = Controller::start(&sa, &["--publish-address", "203.0.113.10"]);
    let c = https();

    // Host and path rules, PRODUCT.md's table.
    for (host, path, want) in [
        ("shop.test", "/exact", 200),
        ("shop.test", "/exact/", 404),
        ("shop.test", "/foo", 200),
        ("shop.test", "/foo/bar", 200),
        ("shop.test", "/foobar", 404),
        ("shop.test", "/FOO", 404),
        ("a.wild.test", "/x", 200),
        ("wild.test", "/", 404),
        ("a.b.wild.test", "/", 404),
        ("nobody.test", "/", 404),
        ("other.test", "/", 404),
        ("default.test", "/", 200),
    ] {
        let (status, body) = get(&c, host, path).await;
        assert_eq!(status, want, "{host}{path}: {body}");
        if want == 200 {
            assert_eq!(upstream_of(&body), "pod-7", "{host}{path} reaches the pod behind the Service");
        }
    }

    // Ingress status from --publish-address (the leader writes it).
    eventually("Ingress status.loadBalancer", SOON, || {
        let ingresses = ingresses.clone();
        async move {
            let ing = ingresses.get("shop").await.ok()?;
            let ip = ing.status?.load_balancer?.ingress?.first()?.ip.clone()?;
            (ip == "203.0.113.10").then_some(())
        }
    })
    .await;

    // Endpoints scale up, then the first pod stops being ready.
    slices.replace("app-1", &pp, &slice(&[("10.244.1.7", true), ("10.244.1.8", true)])).await.expect("scale up");
    eventually("both pods serve", SOON, || {
        let c = c.clone();
        async move {
            let mut seen = BTreeSet::new();
            for _ in 0..8 {
                seen.insert(upstream_of(&get(&c, "shop.test", "/foo").await.1));
            }
            (seen.len() == 2).then_some(())
        }
    })
    .await;
    slices.replace("app-1", &pp, &slice(&[("10.244.1.7", false), ("10.244.1.8", true)])).await.expect("scale down");
    eventually("only the ready pod serves", SOON, || {
        let c = c.clone();
        async move {
            for _ in 0..8 {
                if upstream_of(&get(&c, "shop.test", "/foo").await.1) != "pod-8" {
                    return None;
                }
            }
            Some(())
        }
    })
    .await;

    // Bad input: a Warning Event, and the last good version keeps serving.
    ingresses
        .patch(
            "shop",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {"portcullis.io/timeout": "soon"}}})),
        )
        .await
        .expect("bad edit accepted by the API (it is our annotation)");
    let events = Api::<Event>::namespaced(kube.clone(), NS);
    let note = eventually("a Warning Event for the bad annotation", SOON, || {
        let events = events.clone();
        async move {
            let list = events.list(&kube::api::ListParams::default()).await.ok()?;
            list.items
                .into_iter()
                .find(|e| {
                    e.reason.as_deref() == Some("InvalidConfig")
                        && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("shop")
                })?
                .note
        }
    })
    .await;
    assert!(note.contains("metadata.annotations[\"portcullis.io/timeout\"]: invalid duration \"soon\""), "{note}");
    assert!(note.contains("The last good version keeps serving"), "{note}");
    assert_eq!(get(&c, "shop.test", "/foo").await.0, 200, "the last good version keeps serving");
    assert_eq!(get(&c, "default.test", "/").await.0, 200, "other objects are unaffected");

    // Route resources: a good one serves; a broken one is reported on its status.
    let routes = Api::<Route>::namespaced(kube.clone(), NS);
    routes
        .create(&pp, &obj(json!({"apiVersion": "portcullis.io/v1alpha1", "kind": "Route", "metadata": {"name": "api"}, "spec": {"from": "https://api.test", "to": ["http://app:80"]}})))
        .await
        .expect("route");
    routes
        .create(&pp, &obj(json!({"apiVersion": "portcullis.io/v1alpha1", "kind": "Route", "metadata": {"name": "broken"}, "spec": {"from": "https://broken.test", "to": ["http://missing:80"]}})))
        .await
        .expect("broken route");
    let rejected = routes
        .create(&pp, &obj(json!({"apiVersion": "portcullis.io/v1alpha1", "kind": "Route", "metadata": {"name": "cel"}, "spec": {"from": "https://x.test", "to": ["http://app:80"], "prefix": "/a", "path": "/b"}})))
        .await
        .expect_err("the API server enforces the CRD's CEL rule");
    assert!(rejected.to_string().contains("set only one of prefix, path and regex"), "{rejected}");
    eventually("Route api serves", SOON, || {
        let c = c.clone();
        async move { (get(&c, "api.test", "/").await.0 == 200).then_some(()) }
    })
    .await;
    let condition = eventually("Route broken reports Accepted=False", SOON, || {
        let routes = routes.clone();
        async move {
            let r = routes.get("broken").await.ok()?;
            let c = r.status?.conditions.into_iter().find(|c| c.type_ == "Accepted" && c.status == "False")?;
            Some(c.message)
        }
    })
    .await;
    assert!(condition.contains("spec.to[0]: Service e2e-shop/missing not found"), "{condition}");

    // Fixing the annotation is picked up like any other edit.
    ingresses
        .patch(
            "shop",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {"portcullis.io/timeout": "9s"}}})),
        )
        .await
        .expect("fixed edit");
    eventually("Ingress shop is accepted again", SOON, || {
        let c = c.clone();
        async move { (get(&c, "shop.test", "/foo").await.0 == 200).then_some(()) }
    })
    .await;

    // A controller restart resyncs from the API and serves the same config.
    drop(controller);
    controller = Controller::start(&sa, &["--publish-address", "203.0.113.10"]);
    let c = https();
    assert_eq!(get(&c, "shop.test", "/foo").await.0, 200, "after a restart");
    assert_eq!(get(&c, "api.test", "/").await.0, 200, "after a restart");
    assert_eq!(get(&c, "default.test", "/").await.0, 200, "after a restart");
    assert_eq!(get(&c, "broken.test", "/").await.0, 404, "a broken object never served");
    drop(controller);
}
