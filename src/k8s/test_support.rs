//! Small builders for Kubernetes objects, shared by the translation and assembly tests.
#![allow(missing_docs)]

use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::api::networking::v1::{
    HTTPIngressPath, HTTPIngressRuleValue, Ingress, IngressBackend, IngressRule, IngressServiceBackend, IngressSpec,
    ServiceBackendPort,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::objects::Objects;
use crate::config::Route;

/// An Opaque Secret with these keys.
pub fn secret(ns: &str, name: &str, data: &[(&str, &[u8])]) -> k8s_openapi::api::core::v1::Secret {
    k8s_openapi::api::core::v1::Secret {
        metadata: meta(ns, name),
        data: Some(data.iter().map(|(k, v)| ((*k).to_owned(), k8s_openapi::ByteString(v.to_vec()))).collect()),
        ..Default::default()
    }
}

pub fn meta(ns: &str, name: &str) -> ObjectMeta {
    ObjectMeta { namespace: Some(ns.into()), name: Some(name.into()), ..Default::default() }
}

pub fn backend(svc: &str, port: ServiceBackendPort) -> IngressBackend {
    IngressBackend { service: Some(IngressServiceBackend { name: svc.into(), port: Some(port) }), resource: None }
}

pub fn num(n: i32) -> ServiceBackendPort {
    ServiceBackendPort { number: Some(n), name: None }
}

pub fn named(n: &str) -> ServiceBackendPort {
    ServiceBackendPort { number: None, name: Some(n.into()) }
}

/// An Ingress with one rule per (host, path, pathType, backend).
pub fn ingress(annotations: &[(&str, &str)], paths: &[(&str, &str, &str, IngressBackend)]) -> Ingress {
    let mut m = meta("web", "shop");
    m.annotations = Some(annotations.iter().map(|(k, v)| ((*k).into(), (*v).into())).collect());
    let rules = paths
        .iter()
        .map(|(host, path, ty, b)| IngressRule {
            host: (!host.is_empty()).then(|| (*host).into()),
            http: Some(HTTPIngressRuleValue {
                paths: vec![HTTPIngressPath {
                    path: Some((*path).into()),
                    path_type: (*ty).into(),
                    backend: b.clone(),
                }],
            }),
        })
        .collect();
    Ingress { metadata: m, spec: Some(IngressSpec { rules: Some(rules), ..Default::default() }), status: None }
}

/// Service `web/app` with ports http:80 and grpc:9000 (h2c), endpoints on 8080 and 9090.
pub fn objects() -> Objects {
    let mut o = Objects::default();
    let svc = Service {
        metadata: meta("web", "app"),
        spec: Some(ServiceSpec {
            ports: Some(vec![
                ServicePort { name: Some("http".into()), port: 80, ..Default::default() },
                ServicePort {
                    name: Some("grpc".into()),
                    port: 9000,
                    app_protocol: Some("kubernetes.io/h2c".into()),
                    ..Default::default()
                },
            ]),
            ..Default::default()
        }),
        status: None,
    };
    o.services.insert(("web".into(), "app".into()), svc.into());
    let ext = Service {
        metadata: meta("web", "ext"),
        spec: Some(ServiceSpec {
            type_: Some("ExternalName".into()),
            external_name: Some("api.example.org".into()),
            ..Default::default()
        }),
        status: None,
    };
    o.services.insert(("web".into(), "ext".into()), ext.into());
    let ep = |ip: &str, ready: bool, serving: bool, terminating: bool| Endpoint {
        addresses: vec![ip.into()],
        conditions: Some(EndpointConditions {
            ready: Some(ready),
            serving: Some(serving),
            terminating: Some(terminating),
        }),
        ..Default::default()
    };
    let mut m = meta("web", "app-abc");
    m.labels = Some([("kubernetes.io/service-name".to_owned(), "app".to_owned())].into());
    o.add_slice(EndpointSlice {
        metadata: m,
        address_type: "IPv4".into(),
        endpoints: Some(vec![
            ep("10.244.1.7", true, true, false),
            ep("10.244.1.8", false, true, true),
            ep("10.244.1.9", false, false, false),
        ]),
        ports: Some(vec![
            EndpointPort { name: Some("http".into()), port: Some(8080), ..Default::default() },
            EndpointPort { name: Some("grpc".into()), port: Some(9090), ..Default::default() },
        ]),
    });
    o
}

pub fn upstreams(r: &Route) -> Vec<String> {
    r.to.iter().map(|u| format!("{:?}://{}", u.scheme, u.authority)).collect()
}

pub fn route_cr(spec: serde_json::Value) -> crate::k8s::crd::Route {
    let spec: crate::k8s::crd::RouteSpec = serde_json::from_value(spec).unwrap();
    let mut r = crate::k8s::crd::Route::new("api", spec);
    r.metadata.namespace = Some("web".into());
    r
}

/// A request with `method` on `/`, from 10.0.0.1, without an identity or a client certificate:
/// what identity-free policies decide on.
pub fn anonymous(method: &str) -> crate::policy::eval::Facts<'_> {
    crate::policy::eval::Facts {
        identity: None,
        method,
        path: "/",
        source_ip: std::net::Ipv4Addr::new(10, 0, 0, 1).into(),
        client_cert: None,
        invalid_client_cert: false,
        cors_preflight: false,
        now: jiff::Timestamp::UNIX_EPOCH,
    }
}

/// Whether `route`'s policy lets `facts` in (a route without a policy is public).
pub fn admits(route: &Route, facts: &crate::policy::eval::Facts<'_>) -> bool {
    route.policy.as_ref().is_none_or(|p| matches!(p.decide(facts), crate::policy::eval::Decision::Allow { .. }))
}

/// [`objects`] plus the backends of tunnels: Service `web/ssh` (port `ssh` 22, endpoints on
/// 2222) and Service `web/dns` with port 53 twice, `dns-tcp` (TCP, endpoints on 5300) and
/// `dns` (UDP, endpoints on 5353), as DNS Services are written.
pub fn tunnel_objects() -> Objects {
    let mut o = objects();
    let port = |name: &str, port: i32, protocol: &str| ServicePort {
        name: Some(name.into()),
        port,
        protocol: Some(protocol.into()),
        ..Default::default()
    };
    let slice_port = |name: &str, port: i32, protocol: &str| EndpointPort {
        name: Some(name.into()),
        port: Some(port),
        protocol: Some(protocol.into()),
        ..Default::default()
    };
    for (svc, ip, ports, slice_ports) in [
        ("ssh", "10.244.2.5", vec![port("ssh", 22, "TCP")], vec![slice_port("ssh", 2222, "TCP")]),
        (
            "dns",
            "10.244.3.5",
            vec![port("dns-tcp", 53, "TCP"), port("dns", 53, "UDP")],
            vec![slice_port("dns-tcp", 5300, "TCP"), slice_port("dns", 5353, "UDP")],
        ),
    ] {
        let service = Service {
            metadata: meta("web", svc),
            spec: Some(ServiceSpec { ports: Some(ports), ..Default::default() }),
            status: None,
        };
        o.services.insert(("web".into(), svc.into()), service.into());
        let mut m = meta("web", &format!("{svc}-1"));
        m.labels = Some([("kubernetes.io/service-name".to_owned(), svc.to_owned())].into());
        o.add_slice(EndpointSlice {
            metadata: m,
            address_type: "IPv4".into(),
            endpoints: Some(vec![Endpoint { addresses: vec![ip.into()], ..Default::default() }]),
            ports: Some(slice_ports),
        });
    }
    o
}
