//! An Ingress as routes: one per rule path (and the default backend), to the ready
//! endpoints of the backend Service, with the `portcullis.io/` annotations as route keys.
//! Annotation values are strings: parsing them into the typed input happens here, and
//! errors name the annotation. Certificates come from `spec.tls` Secrets.
//!
//! With `portcullis.io/tcp_upstream: "true"` (or `udp_upstream`) every rule is a tunnel
//! instead, as in Pomerium's controller: `tcp+https://<host>:<Service port>` to the
//! Service's endpoints as `tcp://` (`udp://`) upstreams, the rule's single path
//! `ImplementationSpecific` and without a path of its own.

use std::collections::BTreeMap;

use k8s_openapi::api::networking::v1::{Ingress, IngressBackend};
use kube::ResourceExt;

use super::objects::{endpoint_upstreams, secret_pem, service_port, tls_certificate, Objects};
use super::translate::{cluster_host_default, Translated};
use crate::config::fields::{RouteField, RouteNames, ROUTE_OPTION_KEYS};
use crate::config::input::{Destinations, Pem, RouteInput, UpstreamInput};
use crate::config::validate::{self, Errors};
use crate::config::{FieldError, TunnelProtocol};
use crate::source::yaml::{read_route_value, yaml_to_value};

/// Prefix of the Ingress annotations Portcullis reads.
pub const ANNOTATION_PREFIX: &str = "portcullis.io/";
/// Route keys that an Ingress may set as `portcullis.io/<key>` annotations (`from`, `to` and
/// the path matchers come from the Ingress spec itself): the route options a file may set.
pub const ROUTE_ANNOTATIONS: &[&str] = ROUTE_OPTION_KEYS;
/// Annotations that are not route keys: how to reach the backend and Secret references.
pub const EXTRA_ANNOTATIONS: &[&str] = &[
    "secure_upstream",
    "path_regex",
    "tls_custom_ca_secret",
    "tls_client_secret",
    "policy",
    "tcp_upstream",
    "udp_upstream",
];

/// An Ingress's spelling of route fields, for the route of one path (or the default
/// backend): the matcher is the path's `path`, `to` its `backend`, `from` the rule's `host`,
/// and every other key the `portcullis.io/` annotation that set it.
pub struct IngressNames {
    field: String,
}

impl IngressNames {
    /// Names for the route built at `field` (`spec.rules[i].http.paths[j]` or
    /// `spec.defaultBackend`).
    pub fn new(field: impl Into<String>) -> Self {
        Self { field: field.into() }
    }
}

impl RouteNames for IngressNames {
    fn name(&self, field: RouteField<'_>) -> String {
        match field {
            RouteField::Route => self.field.clone(),
            RouteField::Name => format!("{}.name", self.field),
            RouteField::From => {
                self.field.split_once(".http.").map_or_else(|| self.field.clone(), |(rule, _)| format!("{rule}.host"))
            }
            RouteField::Prefix | RouteField::Path | RouteField::Regex => format!("{}.path", self.field),
            RouteField::To | RouteField::ToEntry(_) => backend_field(&self.field),
            RouteField::TlsCustomCa => annotation_path("tls_custom_ca_secret"),
            RouteField::TlsClientCert | RouteField::TlsClientKey => annotation_path("tls_client_secret"),
            // A key inside a mapping annotation is named below it, as the reader names an
            // unknown one (`...["portcullis.io/outlier_detection"].interval`).
            RouteField::Sub(key, sub) => format!("{}.{sub}", annotation_path(key)),
            other => annotation_path(other.key()),
        }
    }
}

/// Translates one Ingress. `Err` holds every error; the caller keeps the last good
/// translation of this object serving.
pub fn translate_ingress(ing: &Ingress, objects: &Objects) -> Result<Translated, Vec<FieldError>> {
    let ns = ing.namespace().unwrap_or_default();
    let name = ing.name_any();
    let mut errs = Errors::default();
    let mut out = Translated::default();
    let ann = read_annotations(ing.annotations(), &ns, objects, &mut errs);
    let spec = ing.spec.clone().unwrap_or_default();

    let add_route = |field: String,
                     host: &str,
                     matcher: Option<Matcher>,
                     backend: &IngressBackend,
                     errs: &mut Errors,
                     out: &mut Translated| {
        let how = match ann.tunnel {
            Some(protocol) => Backend::Tunnel(protocol),
            None => Backend::Http { secure: ann.secure_upstream.unwrap_or(false) },
        };
        let Some((port, to)) =
            backend_upstreams(&ns, backend, &backend_field(&field), objects, how, errs, &mut out.warnings)
        else {
            return;
        };
        let mut input = ann.route_input();
        let shown_host = if host.is_empty() { "*" } else { host };
        if let Some(protocol) = ann.tunnel {
            let proto = protocol.name();
            input.name = Some(format!("{ns}/{name}:{proto}+{shown_host}:{port}"));
            input.from = Some(format!("{proto}+https://{shown_host}:{port}"));
        } else {
            let shown_path = matcher.as_ref().map_or("", |m| m.path());
            input.name = Some(format!("{ns}/{name}:{shown_host}{shown_path}"));
            input.from = Some(format!("https://{shown_host}"));
            cluster_host_default(&mut input);
        }
        match matcher {
            Some(Matcher::Exact(p)) => input.path = Some(p),
            Some(Matcher::Prefix(p)) => input.prefix = Some(p),
            Some(Matcher::Regex(p)) => input.regex = Some(p),
            None => {}
        }
        input.to = Some(Destinations::Resolved(to));
        if let Some(r) = validate::route(&input, &IngressNames::new(field), errs) {
            out.routes.push(std::sync::Arc::new(r));
        }
    };

    if let Some(protocol) = ann.tunnel {
        let what = format!("a {ANNOTATION_PREFIX}{}_upstream Ingress", protocol.name());
        for key in ["secure_upstream", "path_regex"] {
            if ing.annotations().contains_key(&format!("{ANNOTATION_PREFIX}{key}")) {
                errs.push(annotation_path(key), format!("has no meaning on {what}"));
            }
        }
        for (i, rule) in spec.rules.iter().flatten().enumerate() {
            let Some(p) = tunnel_path(i, rule, &what, &mut errs) else { continue };
            let host = rule.host.clone().unwrap_or_default();
            if host.is_empty() {
                errs.push(
                    format!("spec.rules[{i}].host"),
                    format!("is required on {what}: a tunnel is reached by its one host"),
                );
                continue;
            }
            add_route(format!("spec.rules[{i}].http.paths[0]"), &host, None, &p.backend, &mut errs, &mut out);
        }
        if spec.default_backend.is_some() {
            errs.push(
                "spec.defaultBackend",
                format!("{what} has no default backend: each tunnel is a rule with a host"),
            );
        }
    } else {
        for (i, rule) in spec.rules.iter().flatten().enumerate() {
            let host = rule.host.clone().unwrap_or_default();
            for (j, p) in rule.http.iter().flat_map(|h| h.paths.iter()).enumerate() {
                let field = format!("spec.rules[{i}].http.paths[{j}]");
                let path = p.path.clone().unwrap_or_else(|| "/".to_owned());
                let matcher = match p.path_type.as_str() {
                    "Exact" => Matcher::Exact(path),
                    // ImplementationSpecific is a prefix unless `path_regex` makes it a regex.
                    "ImplementationSpecific" if ann.path_regex == Some(true) => Matcher::Regex(path),
                    "Prefix" | "ImplementationSpecific" => Matcher::Prefix(path),
                    other => {
                        errs.push(
                            format!("{field}.pathType"),
                            format!("unknown pathType {other:?}: use Exact, Prefix or ImplementationSpecific"),
                        );
                        continue;
                    }
                };
                add_route(field, &host, Some(matcher), &p.backend, &mut errs, &mut out);
            }
        }
        if let Some(backend) = &spec.default_backend {
            add_route("spec.defaultBackend".to_owned(), "", None, backend, &mut errs, &mut out);
        }
    }
    for (k, tls) in spec.tls.iter().flatten().enumerate() {
        let field = format!("spec.tls[{k}].secretName");
        let Some(secret_name) = tls.secret_name.as_deref() else { continue };
        match tls_certificate(&ns, secret_name, objects) {
            Ok(mut cert) => {
                let hosts: Vec<String> = tls.hosts.iter().flatten().map(|h| h.to_ascii_lowercase()).collect();
                if !hosts.is_empty() {
                    cert.names = hosts;
                }
                out.certificates.push(cert);
            }
            Err(e) => errs.push(field, e),
        }
    }
    if errs.is_empty() {
        Ok(out)
    } else {
        // Every path's route reads the same annotations, so an annotation's error would be
        // reported once per path; once is enough.
        let mut all = errs.into_vec();
        let mut seen = std::collections::HashSet::new();
        all.retain(|e| seen.insert((e.path.clone(), e.message.clone())));
        Err(all)
    }
}

/// An Ingress path's matcher by its `pathType`.
enum Matcher {
    Exact(String),
    Prefix(String),
    Regex(String),
}

impl Matcher {
    fn path(&self) -> &str {
        match self {
            Self::Exact(p) | Self::Prefix(p) | Self::Regex(p) => p,
        }
    }
}

/// The one path of a tunnel rule, as Pomerium's controller requires it: a single path of
/// pathType `ImplementationSpecific`, with no path of its own (a tunnel has none; `/` is
/// accepted as the same thing). `None` when the rule cannot be a tunnel (error recorded).
fn tunnel_path<'a>(
    i: usize,
    rule: &'a k8s_openapi::api::networking::v1::IngressRule,
    what: &str,
    errs: &mut Errors,
) -> Option<&'a k8s_openapi::api::networking::v1::HTTPIngressPath> {
    let paths = rule.http.as_ref().map_or(&[][..], |h| h.paths.as_slice());
    let [p] = paths else {
        errs.push(
            format!("spec.rules[{i}].http.paths"),
            format!(
                "{what} needs exactly one path (pathType ImplementationSpecific, no path) per rule; found {}",
                paths.len()
            ),
        );
        return None;
    };
    if p.path_type != "ImplementationSpecific" {
        errs.push(
            format!("spec.rules[{i}].http.paths"),
            format!("{what} needs its path to be pathType ImplementationSpecific, not {:?}", p.path_type),
        );
        return None;
    }
    if !matches!(p.path.as_deref(), None | Some("" | "/")) {
        errs.push(
            format!("spec.rules[{i}].http.paths[0].path"),
            format!("a tunnel has no path: leave it out on {what}"),
        );
        return None;
    }
    Some(p)
}

/// How a backend's endpoints are reached: HTTP (the scheme from `appProtocol` or
/// `secure_upstream`), or the bytes or datagrams of a tunnel.
#[derive(Clone, Copy)]
enum Backend {
    Http { secure: bool },
    Tunnel(TunnelProtocol),
}

/// Where the backend of a translated route lives: `spec.rules[i].http.paths[j].backend`, or
/// `spec.defaultBackend` itself (which *is* a backend).
fn backend_field(route_field: &str) -> String {
    if route_field == "spec.defaultBackend" {
        route_field.to_owned()
    } else {
        format!("{route_field}.backend")
    }
}

/// The `portcullis.io/` annotations of one Ingress: route keys (as written; each route parses
/// them, so each route's errors are complete), the extras, and the Secrets' PEM.
struct Annotations {
    route: Vec<(String, String)>,
    /// `Some` when the annotation was written (even as `"false"`).
    secure_upstream: Option<bool>,
    path_regex: Option<bool>,
    /// `tcp_upstream` or `udp_upstream`: every rule is a tunnel.
    tunnel: Option<TunnelProtocol>,
    tls_custom_ca: Option<Pem>,
    tls_client: Option<(Pem, Pem)>,
    /// `portcullis.io/policy`, parsed from YAML (or JSON) but not yet checked: the validator
    /// checks it with the route, naming the annotation.
    policy: Option<serde_json::Value>,
}

impl Annotations {
    /// A route input with every route annotation parsed into it. An annotation's value is a
    /// string; maps and lists are written as YAML/JSON (`{X-A: b}`). What is wrong with one
    /// is reported by the validator in the key's place, naming the annotation.
    fn route_input(&self) -> RouteInput {
        let mut input = RouteInput::default();
        for (key, value) in &self.route {
            let at = annotation_path(key);
            let start = input.problems.len();
            read_route_value(key, &annotation_value(value), &at, &mut input);
            // A nested key (a header of `set_request_headers`, a key of a health check) is
            // still that annotation.
            input.problems.rename_since(start, &at);
            if key == "health_checks" {
                for check in input.health_checks.iter_mut().flatten() {
                    check.problems.rename_since(0, &at);
                }
            }
        }
        input.policy.clone_from(&self.policy);
        input.tls_custom_ca.clone_from(&self.tls_custom_ca);
        if let Some((cert, key)) = &self.tls_client {
            input.tls_client_cert = Some(cert.clone());
            input.tls_client_key = Some(key.clone());
        }
        input
    }
}

fn read_annotations(all: &BTreeMap<String, String>, ns: &str, objects: &Objects, errs: &mut Errors) -> Annotations {
    let mut a = Annotations {
        route: Vec::new(),
        secure_upstream: None,
        path_regex: None,
        tunnel: None,
        tls_custom_ca: None,
        tls_client: None,
        policy: None,
    };
    for (full, value) in all {
        let Some(key) = full.strip_prefix(ANNOTATION_PREFIX) else { continue };
        let field = annotation_path(key);
        match key {
            "secure_upstream" | "path_regex" | "tcp_upstream" | "udp_upstream" => {
                let on = match value.trim() {
                    "true" => true,
                    "false" => false,
                    other => {
                        errs.push(field, format!("expected \"true\" or \"false\", found {other:?}"));
                        continue;
                    }
                };
                match key {
                    "secure_upstream" => a.secure_upstream = Some(on),
                    "path_regex" => a.path_regex = Some(on),
                    _ if !on => {}
                    _ => {
                        let protocol = if key == "tcp_upstream" { TunnelProtocol::Tcp } else { TunnelProtocol::Udp };
                        if a.tunnel.is_some_and(|t| t != protocol) {
                            // The map is sorted: this is udp_upstream, and tcp_upstream was "true".
                            errs.push(
                                field,
                                format!("cannot be combined with {ANNOTATION_PREFIX}tcp_upstream: a tunnel carries TCP or UDP"),
                            );
                        } else {
                            a.tunnel = Some(protocol);
                        }
                    }
                }
            }
            "tls_custom_ca_secret" => match secret_pem(ns, value, "ca.crt", objects) {
                Ok(pem) => a.tls_custom_ca = Some(pem),
                Err(e) => errs.push(field, e),
            },
            "tls_client_secret" => {
                let cert = secret_pem(ns, value, "tls.crt", objects);
                let key_pem = secret_pem(ns, value, "tls.key", objects);
                match (cert, key_pem) {
                    (Ok(c), Ok(k)) => a.tls_client = Some((c, k)),
                    (Err(e), _) | (_, Err(e)) => errs.push(field, e),
                }
            }
            // A policy is a tree, written as a YAML block (or JSON) whatever it starts with;
            // a syntax error is one error naming the annotation, not one per path.
            "policy" => match yaml_to_value(value) {
                Ok(tree) => a.policy = Some(tree),
                Err(e) => errs.push(field, e),
            },
            k if ROUTE_ANNOTATIONS.contains(&k) => a.route.push((k.to_owned(), value.clone())),
            _ => errs.push(
                field,
                format!(
                    "unknown annotation; Portcullis reads {}",
                    ROUTE_ANNOTATIONS
                        .iter()
                        .chain(EXTRA_ANNOTATIONS)
                        .map(|k| format!("{ANNOTATION_PREFIX}{k}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ),
        }
    }
    a
}

fn annotation_path(key: &str) -> String {
    format!("metadata.annotations[\"{ANNOTATION_PREFIX}{key}\"]")
}

/// An annotation's text as the value the file reader would see: YAML/JSON for maps and lists,
/// the string itself otherwise.
fn annotation_value(v: &str) -> serde_json::Value {
    let t = v.trim();
    if t.starts_with('{') || t.starts_with('[') {
        if let Ok(parsed) = yaml_to_value(t) {
            return parsed;
        }
    }
    serde_json::Value::String(v.to_owned())
}

/// Upstreams for a backend: the ready endpoints of its Service (or the ExternalName), with
/// the Service port's number (a tunnel's port). `None` when the backend cannot be used at
/// all (error or warning recorded).
fn backend_upstreams(
    ns: &str,
    backend: &IngressBackend,
    field: &str,
    objects: &Objects,
    how: Backend,
    errs: &mut Errors,
    warnings: &mut Vec<FieldError>,
) -> Option<(i32, Vec<UpstreamInput>)> {
    if backend.resource.is_some() {
        warnings.push(FieldError {
            path: format!("{field}.resource"),
            message: "resource backends are not supported; this path is skipped".into(),
        });
        return None;
    }
    let Some(svc_ref) = &backend.service else {
        errs.push(field, "needs a service backend");
        return None;
    };
    let key = (ns.to_owned(), svc_ref.name.clone());
    let Some(svc) = objects.service(&key) else {
        errs.push(format!("{field}.service.name"), format!("Service {ns}/{} not found", svc_ref.name));
        return None;
    };
    let spec = svc.spec.clone().unwrap_or_default();
    let port_ref = svc_ref.port.clone().unwrap_or_default();
    let protocol = match how {
        Backend::Tunnel(p) => Some(p),
        Backend::Http { .. } => None,
    };
    let svc_port = service_port(&spec, protocol, |p| match (&port_ref.name, port_ref.number) {
        (Some(n), _) => p.name.as_deref() == Some(n.as_str()),
        (None, Some(num)) => p.port == num,
        (None, None) => false,
    });
    if let (Some(p), Some(want)) = (svc_port, protocol) {
        let has = p.protocol.as_deref().unwrap_or("TCP");
        if !has.eq_ignore_ascii_case(want.name()) {
            warnings.push(FieldError {
                path: format!("{field}.service.port"),
                message: format!(
                    "Service {ns}/{} port {} is {has}; a {} tunnel sends {} to it",
                    svc_ref.name,
                    p.port,
                    want.name(),
                    if want == TunnelProtocol::Udp { "datagrams" } else { "a byte stream" },
                ),
            });
        }
    }
    let scheme = |app_protocol: Option<&str>| match (how, app_protocol) {
        (Backend::Tunnel(p), _) => p.name(),
        (_, Some("kubernetes.io/h2c")) => "h2c",
        (_, Some("https" | "kubernetes.io/https")) | (Backend::Http { secure: true }, _) => "https",
        _ => "http",
    };
    if spec.type_.as_deref() == Some("ExternalName") {
        let host = spec.external_name.clone().unwrap_or_default();
        let port = svc_port.map(|p| p.port).or(port_ref.number);
        let Some(port) = port else {
            errs.push(
                format!("{field}.service.port"),
                format!("Service {ns}/{} has no port {:?}", svc_ref.name, port_ref.name.unwrap_or_default()),
            );
            return None;
        };
        let scheme = scheme(svc_port.and_then(|p| p.app_protocol.as_deref()));
        return Some((port, vec![UpstreamInput { url: format!("{scheme}://{host}:{port}"), weight: 1 }]));
    }
    let Some(svc_port) = svc_port else {
        let wanted = port_ref.name.clone().unwrap_or_else(|| port_ref.number.unwrap_or_default().to_string());
        errs.push(format!("{field}.service.port"), format!("Service {ns}/{} has no port {wanted}", svc_ref.name));
        return None;
    };
    let scheme = scheme(svc_port.app_protocol.as_deref());
    Some((svc_port.port, endpoint_upstreams(&key, svc_port, scheme, objects, 1)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::k8s::test_support::*;
    use k8s_openapi::api::core::v1::Secret;
    use k8s_openapi::api::networking::v1::IngressTLS;
    use k8s_openapi::ByteString;
    use std::sync::Arc;

    use crate::config::{HostMatch, PathMatch, Route, UpstreamScheme};
    use crate::k8s::route::translate_route;

    #[test]
    fn rules_become_routes_with_kubernetes_path_types() {
        let ing = ingress(
            &[],
            &[
                ("a.example.com", "/exact", "Exact", backend("app", num(80))),
                ("a.example.com", "/api/", "Prefix", backend("app", named("http"))),
                ("*.example.com", "/", "ImplementationSpecific", backend("app", named("grpc"))),
            ],
        );
        let t = translate_ingress(&ing, &objects()).unwrap();
        assert_eq!(t.routes.len(), 3);
        assert!(matches!(&t.routes[0].path, PathMatch::Exact(p) if p == "/exact"));
        assert!(matches!(&t.routes[1].path, PathMatch::Prefix(p) if p == "/api"));
        assert_eq!(t.routes[2].host, HostMatch::Wildcard("example.com".into()));
        assert_eq!(
            upstreams(&t.routes[0]),
            vec!["Http://10.244.1.7:8080"],
            "only ready endpoints, target port resolved"
        );
        assert_eq!(t.routes[2].to[0].scheme, UpstreamScheme::H2c, "appProtocol kubernetes.io/h2c");
        assert_eq!(t.routes[2].to[0].authority, "10.244.1.7:9090");
        assert_eq!(t.routes[0].name, "web/shop:a.example.com/exact");
    }

    #[test]
    fn terminating_serving_endpoints_are_used_only_when_none_is_ready() {
        let mut o = objects();
        for s in o.slices.values_mut().flatten() {
            Arc::make_mut(s).endpoints.as_mut().unwrap().retain(|e| e.addresses[0] != "10.244.1.7");
        }
        let t = translate_ingress(&ingress(&[], &[("a.test", "/", "Prefix", backend("app", num(80)))]), &o).unwrap();
        assert_eq!(upstreams(&t.routes[0]), vec!["Http://10.244.1.8:8080"]);
        o.slices.clear();
        let t = translate_ingress(&ingress(&[], &[("a.test", "/", "Prefix", backend("app", num(80)))]), &o).unwrap();
        assert!(t.routes[0].to.is_empty(), "no endpoints: the route stays and answers 503");
    }

    /// The proxy keys each endpoint's state (health, ejection, requests in flight) by route
    /// name and upstream authority: an EndpointSlice update that drops one endpoint must leave
    /// the others' authorities, and the route's name, exactly as they were, or their state is
    /// lost with every scale-down.
    #[test]
    fn an_endpoint_slice_update_keeps_the_other_endpoints_identical() {
        use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions};
        let ready = |ip: &str| Endpoint {
            addresses: vec![ip.into()],
            conditions: Some(EndpointConditions { ready: Some(true), serving: Some(true), terminating: Some(false) }),
            ..Default::default()
        };
        let mut o = objects();
        let set = |o: &mut Objects, ips: &[&str]| {
            for s in o.slices.values_mut().flatten() {
                Arc::make_mut(s).endpoints = Some(ips.iter().map(|ip| ready(ip)).collect());
            }
        };
        set(&mut o, &["10.244.1.9", "10.244.1.7", "10.244.1.8"]);
        let ing = ingress(
            &[("portcullis.io/outlier_detection", "{}")],
            &[("a.test", "/", "Prefix", backend("app", num(80)))],
        );
        let route = |o: &Objects| translate_ingress(&ing, o).unwrap().routes.remove(0);
        let cr =
            route_cr(serde_json::json!({"from": "https://b.test", "to": ["http://app:80"], "outlierDetection": {}}));
        let cr_route = |o: &Objects| translate_route(&cr, o).unwrap().routes.remove(0);
        let authorities = |r: &Route| r.to.iter().map(|u| u.authority.clone()).collect::<Vec<_>>();
        let (before, cr_before) = (route(&o), cr_route(&o));
        assert_eq!(authorities(&before), ["10.244.1.7:8080", "10.244.1.8:8080", "10.244.1.9:8080"]);
        assert_eq!(authorities(&cr_before), authorities(&before));
        // A pod goes: its endpoint leaves the slice, the rest of the slice is rewritten.
        set(&mut o, &["10.244.1.9", "10.244.1.7"]);
        for (before, after) in [(&before, route(&o)), (&cr_before, cr_route(&o))] {
            assert_eq!(after.name, before.name, "the route's name is part of the state's key");
            assert_eq!(authorities(&after), ["10.244.1.7:8080", "10.244.1.9:8080"]);
            for u in &after.to {
                let old = before.to.iter().find(|b| b.authority == u.authority).expect("kept");
                assert_eq!((u.scheme, &u.authority, u.weight), (old.scheme, &old.authority, old.weight));
            }
        }
    }

    #[test]
    fn annotations_are_parsed_by_the_route_validator() {
        let ing = ingress(
            &[
                ("portcullis.io/timeout", "10s"),
                ("portcullis.io/allow_websockets", "true"),
                ("portcullis.io/set_request_headers", "{X-A: b}"),
                ("portcullis.io/secure_upstream", "true"),
                ("portcullis.io/path_regex", "true"),
                ("other.io/ignored", "x"),
            ],
            &[("a.test", "/items/[0-9]+", "ImplementationSpecific", backend("app", num(80)))],
        );
        let r = &translate_ingress(&ing, &objects()).unwrap().routes[0];
        assert_eq!(r.timeout, Some(Some(std::time::Duration::from_secs(10))));
        assert!(r.allow_websockets);
        assert_eq!(r.set_request_headers[0].0, "x-a");
        assert_eq!(r.to[0].scheme, UpstreamScheme::Https);
        assert!(matches!(&r.path, PathMatch::Regex(_)));
    }

    #[test]
    fn a_grpc_health_check_annotation_parses_and_needs_an_h2c_backend() {
        use crate::config::HealthCheckKind;
        let checks = ("portcullis.io/health_checks", "[{interval: 5s, grpc_health_check: {service_name: app}}]");
        let ing = ingress(&[checks], &[("a.test", "/", "Prefix", backend("app", named("grpc")))]);
        let r = &translate_ingress(&ing, &objects()).unwrap().routes[0];
        assert_eq!(r.health_checks[0].interval, std::time::Duration::from_secs(5));
        assert_eq!(r.health_checks[0].kind, HealthCheckKind::Grpc { service_name: "app".into(), authority: None });
        // The http port's endpoints are plain HTTP/1.1: the annotation is at fault.
        let ing = ingress(&[checks], &[("a.test", "/", "Prefix", backend("app", num(80)))]);
        let errs = translate_ingress(&ing, &objects()).unwrap_err();
        assert_eq!(
            errs[0].to_string(),
            "metadata.annotations[\"portcullis.io/health_checks\"]: grpc_health_check needs h2c:// or https:// upstreams (the route has http:// ones)"
        );
    }

    #[test]
    fn bad_annotations_name_the_annotation() {
        let ing = ingress(
            &[
                ("portcullis.io/timeout", "5 minutes"),
                ("portcullis.io/timout", "5s"),
                ("portcullis.io/secure_upstream", "yes"),
            ],
            &[("a.test", "/", "Prefix", backend("app", num(80)))],
        );
        let errs = translate_ingress(&ing, &objects()).unwrap_err();
        let text: Vec<String> = errs.iter().map(ToString::to_string).collect();
        assert!(
            text.iter()
                .any(|e| e
                    .starts_with("metadata.annotations[\"portcullis.io/timeout\"]: invalid duration \"5 minutes\"")),
            "{text:?}"
        );
        assert!(
            text.iter().any(|e| e.starts_with("metadata.annotations[\"portcullis.io/timout\"]: unknown annotation")),
            "{text:?}"
        );
        assert!(
            text.iter().any(|e| e.starts_with("metadata.annotations[\"portcullis.io/secure_upstream\"]")),
            "{text:?}"
        );
    }

    #[test]
    fn load_balancing_annotations_are_route_keys() {
        use crate::config::{HashCookie, HashOn, LbPolicy, OutlierDetection};
        let rule = [("a.test", "/", "Prefix", backend("app", num(80)))];
        let route = |annotations: &[(&str, &str)]| translate_ingress(&ingress(annotations, &rule), &objects());
        let t = route(&[("portcullis.io/load_balancing_policy", "MAGLEV")]).unwrap();
        assert_eq!(t.routes[0].load_balancing_policy, LbPolicy::Maglev);
        assert_eq!(t.routes[0].hash_on, HashOn::SourceIp, "no key given: the source IP");
        let t = route(&[
            ("portcullis.io/load_balancing_policy", "RING_HASH"),
            ("portcullis.io/lb_hash_cookie", "{name: sticky, ttl: 1h}"),
            ("portcullis.io/ring_hash_lb_config", "{minimum_ring_size: 1024}"),
        ])
        .unwrap();
        let cookie =
            HashCookie { name: "sticky".into(), ttl: Some(std::time::Duration::from_secs(3600)), path: "/".into() };
        assert_eq!(t.routes[0].hash_on, HashOn::Cookie(cookie));
        assert_eq!(t.routes[0].ring_size.min, 1024);
        let t = route(&[
            ("portcullis.io/outlier_detection", "{}"),
            ("portcullis.io/healthy_panic_threshold", "30"),
            ("portcullis.io/retries", "2"),
            ("portcullis.io/retry_on", "[5xx, reset]"),
        ])
        .unwrap();
        let r = &t.routes[0];
        assert_eq!(r.outlier_detection, Some(OutlierDetection::default()), "{{}}: Envoy's defaults");
        assert_eq!(r.healthy_panic_threshold, 30);
        assert_eq!(r.retries.attempts, 2);
        assert!(r.retries.on_5xx && r.retries.on_reset && !r.retries.on_gateway_error);
        let t = route(&[("portcullis.io/lb_hash_header", "X-User"), ("portcullis.io/load_balancing_policy", "MAGLEV")])
            .unwrap();
        assert!(matches!(&t.routes[0].hash_on, HashOn::Header(h) if h == "x-user"));
    }

    /// Errors inside a mapping annotation are named below the annotation, whether the reader
    /// or the validator finds them.
    #[test]
    fn bad_load_balancing_annotations_name_the_annotation() {
        let rule = [("a.test", "/", "Prefix", backend("app", num(80)))];
        let errs = |annotations: &[(&str, &str)]| {
            texts(&translate_ingress(&ingress(annotations, &rule), &objects()).unwrap_err())
        };
        let od = "metadata.annotations[\"portcullis.io/outlier_detection\"]";
        let e = errs(&[("portcullis.io/outlier_detection", "{interval: soon, consecutive_5xx: 2000}")]);
        assert!(e.contains(&format!("{od}.consecutive_5xx: 2000 is more than 1000")), "{e:?}");
        assert!(e.iter().any(|e| e.starts_with(&format!("{od}.interval: invalid duration \"soon\""))), "{e:?}");
        let e = errs(&[("portcullis.io/outlier_detection", "{intervall: 5s}")]);
        assert_eq!(e, [format!("{od}.intervall: unknown field (did you mean \"interval\"?)")]);
        let e = errs(&[("portcullis.io/outlier_detection", "5s")]);
        assert!(e.len() == 1 && e[0].starts_with(&format!("{od}: expected a mapping")), "{e:?}");
        let e = errs(&[("portcullis.io/load_balancing_policy", "STICKY")]);
        assert!(e[0].starts_with("metadata.annotations[\"portcullis.io/load_balancing_policy\"]: "), "{e:?}");
        let e = errs(&[("portcullis.io/lb_hash_cookie", "{name: sticky}")]);
        assert_eq!(
            e,
            ["metadata.annotations[\"portcullis.io/lb_hash_cookie\"]: has effect only with load_balancing_policy RING_HASH or MAGLEV"]
        );
        let e = errs(&[("portcullis.io/retry_on", "[5xx, timeout]")]);
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(
            e[0].starts_with("metadata.annotations[\"portcullis.io/retry_on\"][1]: unknown retry condition"),
            "{e:?}"
        );
    }

    #[test]
    fn the_policy_annotation_is_a_yaml_policy() {
        let rules =
            [("a.test", "/", "Prefix", backend("app", num(80))), ("a.test", "/api", "Prefix", backend("app", num(80)))];
        let block =
            "- allow:\n    or:\n      - http_method: GET\n- deny:\n    and: [{http_path: {starts_with: /admin}}]\n";
        let t = translate_ingress(&ingress(&[("portcullis.io/policy", block)], &rules), &objects()).unwrap();
        for r in &t.routes {
            assert!(admits(r, &anonymous("GET")), "{}", r.name);
            assert!(!admits(r, &anonymous("POST")), "{}", r.name);
            assert!(!admits(r, &crate::policy::eval::Facts { path: "/admin", ..anonymous("GET") }), "{}", r.name);
        }
        let json = r#"{"allow": {"and": [{"http_method": {"in": ["GET", "HEAD"]}}]}}"#;
        let t = translate_ingress(&ingress(&[("portcullis.io/policy", json)], &rules), &objects()).unwrap();
        assert!(admits(&t.routes[0], &anonymous("HEAD")) && !admits(&t.routes[0], &anonymous("PUT")), "JSON too");
    }

    #[test]
    fn policy_annotation_errors_name_the_annotation_once() {
        let rules =
            [("a.test", "/", "Prefix", backend("app", num(80))), ("a.test", "/api", "Prefix", backend("app", num(80)))];
        let errs =
            translate_ingress(&ingress(&[("portcullis.io/policy", "allow: {or: [")], &rules), &objects()).unwrap_err();
        assert_eq!(errs.len(), 1, "a syntax error is one error: {errs:?}");
        assert_eq!(errs[0].path, "metadata.annotations[\"portcullis.io/policy\"]");
        assert!(errs[0].message.starts_with("invalid YAML"), "{errs:?}");
        let bad = "allow:\n  and:\n    - http_method: GET\n    - email: {eq: alice@example.com}\n";
        let errs = translate_ingress(&ingress(&[("portcullis.io/policy", bad)], &rules), &objects()).unwrap_err();
        assert_eq!(errs.len(), 1, "reported once, not once per path: {errs:?}");
        assert_eq!(errs[0].path, "metadata.annotations[\"portcullis.io/policy\"].allow.and[1].email");
        assert!(errs[0].message.starts_with("unknown operator \"eq\""), "{errs:?}");
    }

    /// Annotations are anyone's input: hostile YAML is an error, never a panic or a hang.
    #[test]
    fn hostile_policy_yaml_is_an_error() {
        let rule = [("a.test", "/", "Prefix", backend("app", num(80)))];
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        let laughs = "a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\n\
                      c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]\n\
                      e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]\nf: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]\n\
                      g: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f]\nh: [*g, *g, *g, *g, *g, *g, *g, *g, *g]\n";
        for (what, text) in [("deep", deep.as_str()), ("aliases", laughs), ("empty", ""), ("scalar", "allow")] {
            let errs = translate_ingress(&ingress(&[("portcullis.io/policy", text)], &rule), &objects()).unwrap_err();
            assert!(errs[0].path.starts_with("metadata.annotations[\"portcullis.io/policy\"]"), "{what}: {errs:?}");
        }
    }

    #[test]
    fn shorthand_annotations_are_route_keys() {
        let rule = [("a.test", "/", "Prefix", backend("app", num(80)))];
        let ing = ingress(
            &[
                ("portcullis.io/allowed_users", "[alice@example.com, u-2]"),
                ("portcullis.io/allowed_domains", "example.com"),
                ("portcullis.io/allowed_idp_claims", "{org: [acme], tier: gold}"),
                ("portcullis.io/allow_any_authenticated_user", "true"),
                ("portcullis.io/policy", "deny: {or: [{http_method: DELETE}]}"),
            ],
            &rule,
        );
        let r = &translate_ingress(&ing, &objects()).unwrap().routes[0];
        assert_eq!(r.policy.as_ref().unwrap().rules.len(), 5, "one deny, then four shorthand allows");
        assert!(!admits(r, &anonymous("GET")), "every shorthand key here needs an identity");
        let public = [("portcullis.io/allow_public_unauthenticated_access", "true")];
        let r = &translate_ingress(&ingress(&public, &rule), &objects()).unwrap().routes[0];
        assert!(admits(r, &anonymous("POST")));
        let bad =
            [("portcullis.io/allow_any_authenticated_user", "yes"), ("portcullis.io/allowed_idp_claims", "[acme]")];
        let errs: Vec<String> =
            translate_ingress(&ingress(&bad, &rule), &objects()).unwrap_err().iter().map(ToString::to_string).collect();
        assert!(
            errs.iter()
                .any(|e| e.starts_with("metadata.annotations[\"portcullis.io/allow_any_authenticated_user\"]: ")),
            "{errs:?}"
        );
        assert!(
            errs.iter().any(
                |e| e.starts_with("metadata.annotations[\"portcullis.io/allowed_idp_claims\"]: expected a mapping")
            ),
            "{errs:?}"
        );
    }

    /// The identity annotations are route keys like any other; a map is YAML/JSON text.
    #[test]
    fn identity_header_annotations_are_route_keys() {
        let rule = [("a.test", "/", "Prefix", backend("app", num(80)))];
        let ing = ingress(
            &[
                ("portcullis.io/pass_identity_headers", "true"),
                ("portcullis.io/jwt_claims_headers", "{X-Email: email, \"X-Groups\": groups}"),
            ],
            &rule,
        );
        let r = &translate_ingress(&ing, &objects()).unwrap().routes[0];
        assert_eq!(r.pass_identity_headers, Some(true));
        let headers: Vec<(&str, &str)> =
            r.jwt_claims_headers.iter().flatten().map(|(h, c)| (h.as_str(), c.as_str())).collect();
        assert_eq!(headers, [("x-email", "email"), ("x-groups", "groups")]);
        let bad = [("portcullis.io/pass_identity_headers", "yes"), ("portcullis.io/jwt_claims_headers", "{Host: sub}")];
        let errs: Vec<String> =
            translate_ingress(&ingress(&bad, &rule), &objects()).unwrap_err().iter().map(ToString::to_string).collect();
        for want in [
            "metadata.annotations[\"portcullis.io/pass_identity_headers\"]: ",
            "metadata.annotations[\"portcullis.io/jwt_claims_headers\"]: ",
        ] {
            assert!(errs.iter().any(|e| e.starts_with(want)), "{want}: {errs:?}");
        }
        let list = [("portcullis.io/jwt_claims_headers", "[email]")];
        let errs = translate_ingress(&ingress(&list, &rule), &objects()).unwrap_err();
        assert_eq!(errs[0].path, "metadata.annotations[\"portcullis.io/jwt_claims_headers\"]", "{errs:?}");
    }

    #[test]
    fn a_bad_regex_path_names_the_ingress_path_field() {
        let ing = ingress(
            &[("portcullis.io/path_regex", "true")],
            &[
                ("a.test", "/items/[0-9]+", "ImplementationSpecific", backend("app", num(80))),
                ("a.test", "/items/[0-9+", "ImplementationSpecific", backend("app", num(80))),
            ],
        );
        let errs = translate_ingress(&ing, &objects()).unwrap_err();
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert_eq!(errs[0].path, "spec.rules[1].http.paths[0].path", "the Ingress's own field, not the route key");
        assert!(errs[0].message.contains("invalid regular expression"), "{errs:?}");
    }

    #[test]
    fn route_keys_map_back_to_ingress_fields() {
        let f = "spec.rules[2].http.paths[1]";
        let names = IngressNames::new(f);
        assert_eq!(names.name(RouteField::Regex), format!("{f}.path"));
        assert_eq!(names.name(RouteField::Prefix), format!("{f}.path"));
        assert_eq!(names.name(RouteField::ToEntry(0)), format!("{f}.backend"));
        assert_eq!(names.name(RouteField::From), "spec.rules[2].host");
        assert_eq!(names.name(RouteField::IdleTimeout), "metadata.annotations[\"portcullis.io/idle_timeout\"]");
        assert_eq!(IngressNames::new("spec.defaultBackend").name(RouteField::ToEntry(0)), "spec.defaultBackend");
    }

    #[test]
    fn missing_service_and_port_are_errors_resource_backends_warnings() {
        let res = IngressBackend {
            service: None,
            resource: Some(k8s_openapi::api::core::v1::TypedLocalObjectReference::default()),
        };
        let ing = ingress(
            &[],
            &[
                ("a.test", "/x", "Prefix", backend("nope", num(80))),
                ("a.test", "/y", "Prefix", backend("app", num(81))),
                ("a.test", "/z", "Prefix", res.clone()),
            ],
        );
        let errs = translate_ingress(&ing, &objects()).unwrap_err();
        let text: Vec<String> = errs.iter().map(ToString::to_string).collect();
        assert!(
            text.contains(&"spec.rules[0].http.paths[0].backend.service.name: Service web/nope not found".to_owned()),
            "{text:?}"
        );
        assert!(
            text.contains(
                &"spec.rules[1].http.paths[0].backend.service.port: Service web/app has no port 81".to_owned()
            ),
            "{text:?}"
        );
        let t = translate_ingress(&ingress(&[], &[("a.test", "/z", "Prefix", res)]), &objects()).unwrap();
        assert!(t.routes.is_empty() && t.warnings[0].message.contains("resource backends"));
    }

    #[test]
    fn default_backend_errors_name_spec_default_backend() {
        let mut ing = ingress(&[], &[]);
        ing.spec.as_mut().unwrap().default_backend = Some(backend("nope", num(80)));
        let errs = translate_ingress(&ing, &objects()).unwrap_err();
        assert_eq!(errs[0].to_string(), "spec.defaultBackend.service.name: Service web/nope not found");
    }

    #[test]
    fn external_name_and_default_backend() {
        let mut ing = ingress(&[], &[]);
        ing.spec.as_mut().unwrap().default_backend = Some(backend("ext", num(443)));
        ing.metadata.annotations = Some([("portcullis.io/secure_upstream".to_owned(), "true".to_owned())].into());
        let t = translate_ingress(&ing, &objects()).unwrap();
        assert_eq!(t.routes[0].host, HostMatch::Any);
        assert!(matches!(t.routes[0].path, PathMatch::Any));
        assert_eq!(upstreams(&t.routes[0]), vec!["Https://api.example.org:443"]);
    }

    #[test]
    fn tls_secrets_become_certificates_and_wrong_types_are_errors() {
        let cert = rcgen::generate_simple_self_signed(vec!["a.test".to_owned()]).unwrap();
        let mut o = objects();
        let secret = |ty: &str| Secret {
            metadata: meta("web", "tls"),
            type_: Some(ty.into()),
            data: Some(
                [
                    ("tls.crt".to_owned(), ByteString(cert.cert.pem().into_bytes())),
                    ("tls.key".to_owned(), ByteString(cert.signing_key.serialize_pem().into_bytes())),
                ]
                .into(),
            ),
            ..Default::default()
        };
        o.secrets.insert(("web".into(), "tls".into()), secret("kubernetes.io/tls").into());
        let mut ing = ingress(&[], &[("a.test", "/", "Prefix", backend("app", num(80)))]);
        ing.spec.as_mut().unwrap().tls =
            Some(vec![IngressTLS { hosts: Some(vec!["A.test".into()]), secret_name: Some("tls".into()) }]);
        let t = translate_ingress(&ing, &o).unwrap();
        assert_eq!(t.certificates[0].names, vec!["a.test"]);
        assert_eq!(t.certificates[0].source, "secret web/tls");
        o.secrets.insert(("web".into(), "tls".into()), secret("Opaque").into());
        let errs = translate_ingress(&ing, &o).unwrap_err();
        assert!(
            errs[0].to_string().starts_with("spec.tls[0].secretName: Secret web/tls has type \"Opaque\""),
            "{errs:?}"
        );
    }

    fn texts(errs: &[FieldError]) -> Vec<String> {
        errs.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn tcp_upstream_rules_become_tunnels_to_the_service_endpoints() {
        let tcp = [("portcullis.io/tcp_upstream", "true")];
        let rules = [
            ("ssh.example.com", "", "ImplementationSpecific", backend("ssh", named("ssh"))),
            ("ssh2.example.com", "/", "ImplementationSpecific", backend("ssh", num(22))),
        ];
        let t = translate_ingress(&ingress(&tcp, &rules), &tunnel_objects()).unwrap();
        assert_eq!(t.routes.len(), 2);
        let r = &t.routes[0];
        assert_eq!(r.tunnel, Some(crate::config::Tunnel { protocol: TunnelProtocol::Tcp, port: 22 }));
        assert_eq!(r.host, HostMatch::Exact("ssh.example.com".into()));
        assert_eq!(upstreams(r), vec!["Tcp://10.244.2.5:2222"], "the endpoints' target port, as tcp://");
        assert_eq!(r.name, "web/shop:tcp+ssh.example.com:22");
        assert!(!r.preserve_host_header, "no Host default on a tunnel");
        assert_eq!(t.routes[1].tunnel.map(|t| t.port), Some(22), "a port by number: the same tunnel port");
        assert_eq!(upstreams(&t.routes[1]), vec!["Tcp://10.244.2.5:2222"]);
        let off = [("portcullis.io/tcp_upstream", "false")];
        let t = translate_ingress(&ingress(&off, &rules[1..]), &tunnel_objects()).unwrap();
        assert_eq!((t.routes[0].tunnel, t.routes[0].to[0].scheme), (None, UpstreamScheme::Http), "\"false\": HTTP");
    }

    #[test]
    fn udp_upstream_picks_the_services_udp_port() {
        let rule = [("dns.example.com", "", "ImplementationSpecific", backend("dns", num(53)))];
        let udp = [("portcullis.io/udp_upstream", "true")];
        let t = translate_ingress(&ingress(&udp, &rule), &tunnel_objects()).unwrap();
        let r = &t.routes[0];
        assert_eq!(r.tunnel, Some(crate::config::Tunnel { protocol: TunnelProtocol::Udp, port: 53 }));
        assert_eq!(upstreams(r), vec!["Udp://10.244.3.5:5353"], "port 53/UDP of the two 53s");
        assert!(t.warnings.is_empty(), "{:?}", t.warnings);
        let tcp = [("portcullis.io/tcp_upstream", "true")];
        let t = translate_ingress(&ingress(&tcp, &rule), &tunnel_objects()).unwrap();
        assert_eq!(upstreams(&t.routes[0]), vec!["Tcp://10.244.3.5:5300"], "and 53/TCP for a tcp tunnel");
        // A UDP tunnel to a TCP-only port still goes there (the endpoints are the same
        // addresses), but says so.
        let t = translate_ingress(
            &ingress(&udp, &[("ssh.example.com", "", "ImplementationSpecific", backend("ssh", num(22)))]),
            &tunnel_objects(),
        )
        .unwrap();
        assert_eq!(upstreams(&t.routes[0]), vec!["Udp://10.244.2.5:2222"]);
        assert_eq!(t.warnings[0].path, "spec.rules[0].http.paths[0].backend.service.port");
        assert!(t.warnings[0].message.contains("port 22 is TCP"), "{:?}", t.warnings);
    }

    #[test]
    fn tunnel_ingress_errors_name_the_field() {
        let tcp = [("portcullis.io/tcp_upstream", "true")];
        let ssh = || backend("ssh", num(22));
        let errs = |ann: &[(&str, &str)], rules: &[(&str, &str, &str, IngressBackend)]| {
            texts(&translate_ingress(&ingress(ann, rules), &tunnel_objects()).unwrap_err())
        };
        let both = [("portcullis.io/tcp_upstream", "true"), ("portcullis.io/udp_upstream", "true")];
        let e = errs(&both, &[("ssh.example.com", "", "ImplementationSpecific", ssh())]);
        assert_eq!(
            e,
            ["metadata.annotations[\"portcullis.io/udp_upstream\"]: cannot be combined with portcullis.io/tcp_upstream: a tunnel carries TCP or UDP"]
        );
        let e = errs(&[("portcullis.io/udp_upstream", "yes")], &[("a.test", "/", "Prefix", ssh())]);
        assert!(e[0].starts_with("metadata.annotations[\"portcullis.io/udp_upstream\"]: expected \"true\""), "{e:?}");
        let e = errs(&tcp, &[("ssh.example.com", "/", "Prefix", ssh())]);
        assert_eq!(
            e,
            ["spec.rules[0].http.paths: a portcullis.io/tcp_upstream Ingress needs its path to be pathType ImplementationSpecific, not \"Prefix\""]
        );
        let e = errs(&tcp, &[("ssh.example.com", "/ssh", "ImplementationSpecific", ssh())]);
        assert_eq!(
            e,
            ["spec.rules[0].http.paths[0].path: a tunnel has no path: leave it out on a portcullis.io/tcp_upstream Ingress"]
        );
        let e = errs(&tcp, &[("", "", "ImplementationSpecific", ssh())]);
        assert_eq!(
            e,
            ["spec.rules[0].host: is required on a portcullis.io/tcp_upstream Ingress: a tunnel is reached by its one host"]
        );
        let mut two = ingress(&tcp, &[("ssh.example.com", "", "ImplementationSpecific", ssh())]);
        let paths = &mut two.spec.as_mut().unwrap().rules.as_mut().unwrap()[0].http.as_mut().unwrap().paths;
        paths.push(paths[0].clone());
        let e = texts(&translate_ingress(&two, &tunnel_objects()).unwrap_err());
        assert_eq!(
            e,
            ["spec.rules[0].http.paths: a portcullis.io/tcp_upstream Ingress needs exactly one path (pathType ImplementationSpecific, no path) per rule; found 2"]
        );
        two.spec.as_mut().unwrap().rules.as_mut().unwrap()[0].http = None;
        two.spec.as_mut().unwrap().default_backend = Some(ssh());
        let e = texts(&translate_ingress(&two, &tunnel_objects()).unwrap_err());
        assert!(e.iter().any(|e| e.ends_with("found 0")), "{e:?}");
        assert!(
            e.iter()
                .any(|e| e
                    .starts_with("spec.defaultBackend: a portcullis.io/tcp_upstream Ingress has no default backend")),
            "{e:?}"
        );
    }

    /// The validator refuses the HTTP-only keys on a tunnel; on an Ingress they are named as
    /// the annotations that set them.
    #[test]
    fn http_only_annotations_on_a_tunnel_name_the_annotation() {
        let ann = [
            ("portcullis.io/udp_upstream", "true"),
            ("portcullis.io/allow_websockets", "true"),
            ("portcullis.io/set_request_headers", "{X-A: b}"),
            ("portcullis.io/host_rewrite", "x.internal"),
            ("portcullis.io/secure_upstream", "false"),
            ("portcullis.io/path_regex", "true"),
        ];
        let rule = [("dns.example.com", "", "ImplementationSpecific", backend("dns", num(53)))];
        let e = texts(&translate_ingress(&ingress(&ann, &rule), &tunnel_objects()).unwrap_err());
        for key in ["allow_websockets", "set_request_headers", "host_rewrite"] {
            let want = format!("metadata.annotations[\"portcullis.io/{key}\"]: has no meaning on a udp+ tunnel route");
            assert!(e.contains(&want), "{want}: {e:?}");
        }
        for key in ["secure_upstream", "path_regex"] {
            let want = format!(
                "metadata.annotations[\"portcullis.io/{key}\"]: has no meaning on a portcullis.io/udp_upstream Ingress"
            );
            assert!(e.contains(&want), "{want}: {e:?}");
        }
        assert_eq!(e.len(), 5, "each once: {e:?}");
    }
}
