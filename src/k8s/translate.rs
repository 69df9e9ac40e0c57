//! Pure translation from Kubernetes objects to the domain model: no API calls, no state.
//! The controller feeds it what its reflectors hold; tests feed it hand-built objects.
//!
//! Each object becomes the validator's typed input directly (`config::input`), and goes
//! through the same validator as the standalone file (`config::validate`), so an Ingress
//! annotation and a YAML key mean exactly the same thing. Errors name the object's own field
//! (`metadata.annotations["portcullis.io/timeout"]`, `spec.rules[0]...`, `spec.idleTimeout`)
//! through the [`RouteNames`] and [`SettingsNames`] each kind of object supplies.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::sync::Arc;

use crate::config::fields::{RouteField, RouteNames, SettingsField, SettingsNames};
use crate::config::input::{
    Destinations, Given, HealthCheckInput, HttpProbeInput, MtlsInput, Pem, RouteInput, SettingsInput, UpstreamInput,
};
use crate::config::validate::{self, Errors, FieldError};
use crate::config::{Certificate, Route};
use crate::pki::build_certificate;
use crate::source::env::EnvOverrides;
use crate::source::yaml::{read_route_value, yaml_to_value};
use k8s_openapi::api::core::v1::{Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{Ingress, IngressBackend, IngressClass};
use kube::ResourceExt;

/// `spec.controller` of the IngressClasses Portcullis serves.
pub const CONTROLLER_NAME: &str = "portcullis.io/ingress-controller";
/// Prefix of the Ingress annotations Portcullis reads.
pub const ANNOTATION_PREFIX: &str = "portcullis.io/";
/// The deprecated class annotation, still honoured (and logged).
pub const CLASS_ANNOTATION: &str = "kubernetes.io/ingress.class";
const DEFAULT_CLASS_ANNOTATION: &str = "ingressclass.kubernetes.io/is-default-class";

/// Route keys that an Ingress may set as `portcullis.io/<key>` annotations. `from`, `to`
/// and the path matchers come from the Ingress spec itself.
pub const ROUTE_ANNOTATIONS: &[&str] = &[
    "timeout",
    "idle_timeout",
    "allow_websockets",
    "preserve_host_header",
    "host_rewrite",
    "prefix_rewrite",
    "regex_rewrite_pattern",
    "regex_rewrite_substitution",
    "set_request_headers",
    "remove_request_headers",
    "set_response_headers",
    "tls_skip_verify",
    "tls_server_name",
    "load_balancing_policy",
    "health_checks",
];
/// Annotations that are not route keys: how to reach the backend and Secret references.
pub const EXTRA_ANNOTATIONS: &[&str] = &["secure_upstream", "path_regex", "tls_custom_ca_secret", "tls_client_secret"];

/// The objects a translation may look at, keyed by (namespace, name). EndpointSlices are
/// keyed by the Service they belong to (their `kubernetes.io/service-name` label).
///
/// Translations read them only through [`Objects::service`], [`Objects::slices_of`] and
/// [`Objects::secret`], which record what was read and at which `resourceVersion`: the
/// assembler keeps a translation until its object or one of those reads changes, so an edit
/// in a cluster of a thousand Ingresses re-translates one object, not a thousand.
#[derive(Clone, Debug, Default)]
pub struct Objects {
    /// Services.
    pub services: BTreeMap<(String, String), Arc<Service>>,
    /// EndpointSlices by owning Service.
    pub slices: BTreeMap<(String, String), Vec<Arc<EndpointSlice>>>,
    /// Secrets.
    pub secrets: BTreeMap<(String, String), Arc<Secret>>,
    reads: RefCell<Vec<Read>>,
}

/// Which map a [`Read`] looked in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ReadKind {
    Service,
    Slices,
    Secret,
}

/// One lookup a translation made and the version it saw (`-` when the object was missing).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Read {
    kind: ReadKind,
    key: (String, String),
    version: String,
}

fn version_of(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> &str {
    meta.resource_version.as_deref().unwrap_or("")
}

impl Objects {
    /// Adds an EndpointSlice under the Service named by its label.
    pub fn add_slice(&mut self, slice: impl Into<Arc<EndpointSlice>>) {
        let slice = slice.into();
        let ns = slice.namespace().unwrap_or_default();
        if let Some(svc) = slice.labels().get("kubernetes.io/service-name").cloned() {
            self.slices.entry((ns, svc)).or_default().push(slice);
        }
    }

    /// A Service, recording the read.
    pub fn service(&self, key: &(String, String)) -> Option<&Service> {
        self.record(ReadKind::Service, key);
        self.services.get(key).map(AsRef::as_ref)
    }

    /// The EndpointSlices of a Service, recording the read.
    pub fn slices_of(&self, key: &(String, String)) -> impl Iterator<Item = &EndpointSlice> {
        self.record(ReadKind::Slices, key);
        self.slices.get(key).into_iter().flatten().map(AsRef::as_ref)
    }

    /// A Secret, recording the read.
    pub fn secret(&self, key: &(String, String)) -> Option<&Secret> {
        self.record(ReadKind::Secret, key);
        self.secrets.get(key).map(AsRef::as_ref)
    }

    fn record(&self, kind: ReadKind, key: &(String, String)) {
        let version = self.version(kind, key);
        self.reads.borrow_mut().push(Read { kind, key: key.clone(), version });
    }

    fn version(&self, kind: ReadKind, key: &(String, String)) -> String {
        match kind {
            ReadKind::Service => {
                self.services.get(key).map_or_else(|| "-".to_owned(), |s| version_of(&s.metadata).to_owned())
            }
            ReadKind::Secret => {
                self.secrets.get(key).map_or_else(|| "-".to_owned(), |s| version_of(&s.metadata).to_owned())
            }
            ReadKind::Slices => self.slices.get(key).map_or_else(
                || "-".to_owned(),
                |v| v.iter().map(|s| version_of(&s.metadata)).collect::<Vec<_>>().join(","),
            ),
        }
    }

    /// Hands over (and forgets) the reads recorded since the last call.
    pub fn take_reads(&self) -> Vec<Read> {
        std::mem::take(&mut *self.reads.borrow_mut())
    }

    /// Whether every read would see the same version now.
    pub fn unchanged(&self, reads: &[Read]) -> bool {
        reads.iter().all(|r| self.version(r.kind, &r.key) == r.version)
    }
}

/// Whether an Ingress is ours, and how it said so.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClassDecision {
    /// Ours; `deprecated_annotation` when chosen by `kubernetes.io/ingress.class`.
    Ours {
        /// The deprecated annotation chose the class.
        deprecated_annotation: bool,
    },
    /// Another controller's (or no class and no default of ours).
    NotOurs,
}

/// Kubernetes IngressClass resolution: `spec.ingressClassName`, else the deprecated
/// annotation, else our IngressClass marked default.
pub fn ingress_class(ing: &Ingress, classes: &[IngressClass]) -> ClassDecision {
    let ours = |name: &str| {
        classes.iter().any(|c| {
            c.name_any() == name && c.spec.as_ref().and_then(|s| s.controller.as_deref()) == Some(CONTROLLER_NAME)
        })
    };
    if let Some(name) = ing.spec.as_ref().and_then(|s| s.ingress_class_name.as_deref()) {
        return if ours(name) { ClassDecision::Ours { deprecated_annotation: false } } else { ClassDecision::NotOurs };
    }
    if let Some(name) = ing.annotations().get(CLASS_ANNOTATION) {
        return if ours(name) { ClassDecision::Ours { deprecated_annotation: true } } else { ClassDecision::NotOurs };
    }
    let default_ours = classes.iter().any(|c| {
        c.spec.as_ref().and_then(|s| s.controller.as_deref()) == Some(CONTROLLER_NAME)
            && c.annotations().get(DEFAULT_CLASS_ANNOTATION).map(String::as_str) == Some("true")
    });
    if default_ours {
        ClassDecision::Ours { deprecated_annotation: false }
    } else {
        ClassDecision::NotOurs
    }
}

/// What one object contributes to the config.
#[derive(Clone, Debug, Default)]
pub struct Translated {
    /// Its routes.
    pub routes: Vec<Route>,
    /// Its certificates (from TLS Secrets).
    pub certificates: Vec<Certificate>,
    /// Problems that do not reject the object (reported as Warning Events).
    pub warnings: Vec<FieldError>,
}

/// Routes from the cluster pass the client's `Host` to the backend unless told otherwise
/// (`preserve_host_header: false`, or a `host_rewrite`): what the Ingress conformance suite
/// expects and what every common ingress controller does, where Pomerium's standalone default
/// (kept by `serve`) is the upstream's own name. docs/configuration.md, "Host".
fn cluster_host_default(input: &mut RouteInput) {
    if input.preserve_host_header.is_none() && input.host_rewrite.is_none() {
        input.preserve_host_header = Some(true);
    }
}

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
            RouteField::Route | RouteField::Name => self.field.clone(),
            RouteField::From => {
                self.field.split_once(".http.").map_or_else(|| self.field.clone(), |(rule, _)| format!("{rule}.host"))
            }
            RouteField::Prefix | RouteField::Path | RouteField::Regex => format!("{}.path", self.field),
            RouteField::To | RouteField::ToEntry(_) => backend_field(&self.field),
            RouteField::TlsCustomCa => annotation_path("tls_custom_ca_secret"),
            RouteField::TlsClientCert | RouteField::TlsClientKey => annotation_path("tls_client_secret"),
            other => annotation_path(other.key()),
        }
    }
}

/// A custom resource's spelling: `spec.` and the key in camelCase (`spec.idleTimeout`,
/// `spec.healthChecks[0].httpHealthCheck.path`); header names stay as written, and TLS
/// material is named by the Secret field that supplied it.
pub struct SpecNames;

impl RouteNames for SpecNames {
    fn name(&self, field: RouteField<'_>) -> String {
        match field {
            RouteField::Route => "spec".to_owned(),
            RouteField::SetRequestHeader(h) => format!("spec.setRequestHeaders.{h}"),
            RouteField::SetResponseHeader(h) => format!("spec.setResponseHeaders.{h}"),
            RouteField::TlsCustomCa => "spec.tlsCustomCaSecret".to_owned(),
            RouteField::TlsClientCert | RouteField::TlsClientKey => "spec.tlsClientSecret".to_owned(),
            other => format!("spec.{}", camel(&other.key_path())),
        }
    }
}

impl SettingsNames for SpecNames {
    fn name(&self, field: SettingsField) -> String {
        format!("spec.{}", camel(&field.key_path()))
    }
}

/// snake_case key path to camelCase (`health_checks[0].http_health_check` to
/// `healthChecks[0].httpHealthCheck`).
fn camel(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut upper = false;
    for c in s.chars() {
        if c == '_' {
            upper = true;
        } else if upper {
            out.push(c.to_ascii_uppercase());
            upper = false;
        } else {
            out.push(c);
        }
    }
    out
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
        let Some(to) =
            backend_urls(&ns, backend, &backend_field(&field), objects, ann.secure_upstream, errs, &mut out.warnings)
        else {
            return;
        };
        let mut input = ann.route_input(errs);
        let shown_host = if host.is_empty() { "*" } else { host };
        let shown_path = matcher.as_ref().map_or("", |m| m.path());
        input.name = Some(format!("{ns}/{name}:{shown_host}{shown_path}"));
        input.from = Some(format!("https://{shown_host}"));
        match matcher {
            Some(Matcher::Exact(p)) => input.path = Some(p),
            Some(Matcher::Prefix(p)) => input.prefix = Some(p),
            Some(Matcher::Regex(p)) => input.regex = Some(p),
            None => {}
        }
        input.to = Some(Destinations::Resolved(to));
        cluster_host_default(&mut input);
        if let Some(r) = validate::route(&input, &IngressNames::new(field), errs) {
            out.routes.push(r);
        }
    };

    for (i, rule) in spec.rules.iter().flatten().enumerate() {
        let host = rule.host.clone().unwrap_or_default();
        for (j, p) in rule.http.iter().flat_map(|h| h.paths.iter()).enumerate() {
            let field = format!("spec.rules[{i}].http.paths[{j}]");
            let path = p.path.clone().unwrap_or_else(|| "/".to_owned());
            let matcher = match p.path_type.as_str() {
                "Exact" => Matcher::Exact(path),
                // ImplementationSpecific is a prefix unless `path_regex` makes it a regex.
                "ImplementationSpecific" if ann.path_regex => Matcher::Regex(path),
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
        Err(errs.into_vec())
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
    secure_upstream: bool,
    path_regex: bool,
    tls_custom_ca: Option<Pem>,
    tls_client: Option<(Pem, Pem)>,
}

impl Annotations {
    /// A route input with every route annotation parsed into it. An annotation's value is a
    /// string; maps and lists are written as YAML/JSON (`{X-A: b}`). Errors name the
    /// annotation.
    fn route_input(&self, errs: &mut Errors) -> RouteInput {
        let mut input = RouteInput::default();
        for (key, value) in &self.route {
            let at = annotation_path(key);
            let mut found = Errors::default();
            read_route_value(key, &annotation_value(value), &at, &mut input, &mut found);
            for e in found.into_vec() {
                // A nested key (a header of `set_request_headers`) is still that annotation.
                errs.push(at.clone(), e.message);
            }
        }
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
        secure_upstream: false,
        path_regex: false,
        tls_custom_ca: None,
        tls_client: None,
    };
    for (full, value) in all {
        let Some(key) = full.strip_prefix(ANNOTATION_PREFIX) else { continue };
        let field = annotation_path(key);
        match key {
            "secure_upstream" | "path_regex" => match value.trim() {
                "true" => *(if key == "secure_upstream" { &mut a.secure_upstream } else { &mut a.path_regex }) = true,
                "false" => {}
                other => errs.push(field, format!("expected \"true\" or \"false\", found {other:?}")),
            },
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

fn secret_key(ns: &str, name: &str, key: &str, objects: &Objects) -> Result<String, String> {
    let secret =
        objects.secret(&(ns.to_owned(), name.to_owned())).ok_or_else(|| format!("Secret {ns}/{name} not found"))?;
    let bytes = secret
        .data
        .as_ref()
        .and_then(|d| d.get(key))
        .ok_or_else(|| format!("Secret {ns}/{name} has no {key:?} key"))?;
    String::from_utf8(bytes.0.clone()).map_err(|_| format!("Secret {ns}/{name} key {key:?} is not PEM text"))
}

/// One key of a Secret as PEM for the validator.
fn secret_pem(ns: &str, name: &str, key: &str, objects: &Objects) -> Result<Pem, String> {
    let text = secret_key(ns, name, key, objects)?;
    Ok(Pem { source: format!("secret {ns}/{name} {key}"), bytes: text.into_bytes() })
}

/// A `kubernetes.io/tls` Secret as a certificate.
pub fn tls_certificate(ns: &str, name: &str, objects: &Objects) -> Result<Certificate, String> {
    let secret =
        objects.secret(&(ns.to_owned(), name.to_owned())).ok_or_else(|| format!("Secret {ns}/{name} not found"))?;
    if secret.type_.as_deref() != Some("kubernetes.io/tls") {
        return Err(format!(
            "Secret {ns}/{name} has type {:?}; a kubernetes.io/tls Secret is required",
            secret.type_.as_deref().unwrap_or("Opaque")
        ));
    }
    let cert = secret_key(ns, name, "tls.crt", objects)?;
    let key = secret_key(ns, name, "tls.key", objects)?;
    build_certificate(cert.as_bytes(), key.as_bytes(), &format!("secret {ns}/{name}"))
        .map_err(|e| format!("Secret {ns}/{name}: {e}"))
}

/// Upstreams for a backend: the ready endpoints of its Service (or the ExternalName).
/// `None` when the backend cannot be used at all (error or warning recorded).
fn backend_urls(
    ns: &str,
    backend: &IngressBackend,
    field: &str,
    objects: &Objects,
    secure: bool,
    errs: &mut Errors,
    warnings: &mut Vec<FieldError>,
) -> Option<Vec<UpstreamInput>> {
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
    let svc_port = spec.ports.iter().flatten().find(|p| match (&port_ref.name, port_ref.number) {
        (Some(n), _) => p.name.as_deref() == Some(n.as_str()),
        (None, Some(num)) => p.port == num,
        (None, None) => false,
    });
    let scheme = |app_protocol: Option<&str>| match app_protocol {
        Some("kubernetes.io/h2c") => "h2c",
        Some("https" | "kubernetes.io/https") => "https",
        _ if secure => "https",
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
        return Some(vec![UpstreamInput { url: format!("{scheme}://{host}:{port}"), weight: 1 }]);
    }
    let Some(svc_port) = svc_port else {
        let wanted = port_ref.name.clone().unwrap_or_else(|| port_ref.number.unwrap_or_default().to_string());
        errs.push(format!("{field}.service.port"), format!("Service {ns}/{} has no port {wanted}", svc_ref.name));
        return None;
    };
    let scheme = scheme(svc_port.app_protocol.as_deref());
    Some(endpoint_urls(&key, svc_port, scheme, objects, 1))
}

/// `scheme://ip:port` with `weight` for the endpoints behind one Service port: ready
/// endpoints, or, when none is ready, those still serving while terminating (as kube-proxy
/// does).
fn endpoint_urls(
    service: &(String, String),
    svc_port: &k8s_openapi::api::core::v1::ServicePort,
    scheme: &str,
    objects: &Objects,
    weight: u32,
) -> Vec<UpstreamInput> {
    // EndpointSlice ports carry the Service port's name and the resolved target port.
    let mut ready = Vec::new();
    let mut terminating = Vec::new();
    for slice in objects.slices_of(service) {
        let wanted = svc_port.name.as_deref().unwrap_or("");
        let Some(port) =
            slice.ports.iter().flatten().find(|p| p.name.as_deref().unwrap_or("") == wanted).and_then(|p| p.port)
        else {
            continue;
        };
        for ep in slice.endpoints.iter().flatten() {
            let c = ep.conditions.clone().unwrap_or_default();
            let bucket = if c.ready.unwrap_or(true) {
                &mut ready
            } else if c.serving.unwrap_or(false) && c.terminating.unwrap_or(false) {
                &mut terminating
            } else {
                continue;
            };
            for addr in &ep.addresses {
                let host = if addr.contains(':') { format!("[{addr}]") } else { addr.clone() };
                bucket.push(format!("{scheme}://{host}:{port}"));
            }
        }
    }
    let mut urls = if ready.is_empty() { terminating } else { ready };
    urls.sort();
    urls.dedup();
    urls.into_iter().map(|url| UpstreamInput { url, weight }).collect()
}

/// Translates a `Route` custom resource: its typed spec becomes the route input field by
/// field, `to` hosts that name Services are resolved to endpoints, and Secrets to PEM.
pub fn translate_route(route: &crate::k8s::crd::Route, objects: &Objects) -> Result<Translated, Vec<FieldError>> {
    let ns = route.namespace().unwrap_or_default();
    let mut errs = Errors::default();
    let mut out = Translated::default();
    let spec = &route.spec;
    let mut input = route_input(spec);
    input.name = Some(format!("{ns}/{}", route.name_any()));
    let mut to = Vec::new();
    for (i, entry) in spec.to.iter().enumerate() {
        match resolve_to(&ns, entry, objects) {
            Ok(urls) => to.extend(urls),
            Err(e) => errs.push(format!("spec.to[{i}]"), e),
        }
    }
    input.to = Some(Destinations::Resolved(to));
    cluster_host_default(&mut input);
    if let Some(name) = &spec.tls_custom_ca_secret {
        match secret_pem(&ns, name, "ca.crt", objects) {
            Ok(pem) => input.tls_custom_ca = Some(pem),
            Err(e) => errs.push("spec.tlsCustomCaSecret", e),
        }
    }
    if let Some(name) = &spec.tls_client_secret {
        for (slot, key) in [(&mut input.tls_client_cert, "tls.crt"), (&mut input.tls_client_key, "tls.key")] {
            match secret_pem(&ns, name, key, objects) {
                Ok(pem) => *slot = Some(pem),
                Err(e) => errs.push("spec.tlsClientSecret", e),
            }
        }
    }
    if let Some(tls) = &spec.tls {
        match tls_certificate(&ns, &tls.secret_name, objects) {
            Ok(c) => {
                if let Ok(crate::config::HostMatch::Exact(h) | crate::config::HostMatch::Wildcard(h)) =
                    validate::parse_from(&spec.from)
                {
                    if !c.names.iter().any(|n| *n == h || n.strip_prefix("*.") == h.split_once('.').map(|x| x.1)) {
                        out.warnings.push(FieldError {
                            path: "spec.tls.secretName".into(),
                            message: format!("the certificate does not name {h}; clients that verify it will fail"),
                        });
                    }
                }
                out.certificates.push(c);
            }
            Err(e) => errs.push("spec.tls.secretName", e),
        }
    }
    if errs.is_empty() {
        if let Some(r) = validate::route(&input, &SpecNames, &mut errs) {
            out.routes.push(r);
        }
    }
    if errs.is_empty() {
        Ok(out)
    } else {
        Err(errs.into_vec())
    }
}

/// The route keys of a Route spec, typed as the CRD already types them.
fn route_input(spec: &crate::k8s::crd::RouteSpec) -> RouteInput {
    use crate::config::LbPolicy;
    use crate::k8s::crd::LoadBalancingPolicy;
    let headers = |h: &Option<BTreeMap<String, String>>| {
        h.iter().flatten().map(|(k, v)| (k.clone(), v.clone())).collect::<Vec<_>>()
    };
    RouteInput {
        from: Some(spec.from.clone()),
        prefix: spec.prefix.clone(),
        path: spec.path.clone(),
        regex: spec.regex.clone(),
        timeout: spec.timeout.clone().map(Given::Text),
        idle_timeout: spec.idle_timeout.clone().map(Given::Text),
        allow_websockets: spec.allow_websockets,
        preserve_host_header: spec.preserve_host_header,
        host_rewrite: spec.host_rewrite.clone(),
        prefix_rewrite: spec.prefix_rewrite.clone(),
        regex_rewrite_pattern: spec.regex_rewrite_pattern.clone(),
        regex_rewrite_substitution: spec.regex_rewrite_substitution.clone(),
        set_request_headers: headers(&spec.set_request_headers),
        remove_request_headers: spec.remove_request_headers.clone().unwrap_or_default(),
        set_response_headers: headers(&spec.set_response_headers),
        tls_skip_verify: spec.tls_skip_verify,
        tls_server_name: spec.tls_server_name.clone(),
        load_balancing_policy: spec.load_balancing_policy.map(|p| {
            Given::Parsed(match p {
                LoadBalancingPolicy::ROUND_ROBIN => LbPolicy::RoundRobin,
                LoadBalancingPolicy::RANDOM => LbPolicy::Random,
                LoadBalancingPolicy::LEAST_REQUEST => LbPolicy::LeastRequest,
            })
        }),
        health_checks: spec
            .health_checks
            .iter()
            .flatten()
            .map(|h| HealthCheckInput {
                interval: h.interval.clone().map(Given::Text),
                timeout: h.timeout.clone().map(Given::Text),
                unhealthy_threshold: h.unhealthy_threshold.map(u64::from),
                healthy_threshold: h.healthy_threshold.map(u64::from),
                http: h.http_health_check.as_ref().map(|p| HttpProbeInput { path: p.path.clone() }),
                tcp: h.tcp_health_check.is_some(),
            })
            .collect(),
        ..RouteInput::default()
    }
}

/// Translates the `ProxyConfig` into global settings; certificate and CA Secrets default to
/// the controller's namespace. `overrides` (from the environment) replace the spec's values.
pub fn translate_proxy_config(
    pc: &crate::k8s::crd::ProxyConfig,
    objects: &Objects,
    default_ns: &str,
    overrides: &EnvOverrides,
) -> Result<crate::config::Settings, Vec<FieldError>> {
    let mut errs = Errors::default();
    let mut input = settings_input(&pc.spec);
    // The environment's settings win (see `source::env`); they were validated at start, so
    // they cannot be the cause of an error reported on the ProxyConfig.
    input.overlay(overrides.settings());
    // Secret references are resolved here; the validator sees PEM.
    let mut certificates = Vec::new();
    for (i, c) in pc.spec.certificates.iter().flatten().enumerate() {
        let ns = c.namespace.as_deref().unwrap_or(default_ns);
        match tls_certificate(ns, &c.name, objects) {
            Ok(cert) => certificates.push(cert),
            Err(e) => errs.push(format!("spec.certificates[{i}]"), e),
        }
    }
    if let Some(m) = &pc.spec.downstream_mtls {
        use crate::config::MtlsEnforcement as Mode;
        use crate::k8s::crd::MtlsEnforcement;
        let ns = m.ca_secret.namespace.as_deref().unwrap_or(default_ns);
        let ca = secret_pem(ns, &m.ca_secret.name, "ca.crt", objects)
            .map_err(|e| errs.push("spec.downstreamMtls.caSecret", e))
            .ok();
        input.downstream_mtls = Some(MtlsInput {
            ca,
            crl: secret_pem(ns, &m.ca_secret.name, "ca.crl", objects).ok(),
            enforcement: m.enforcement.map(|e| {
                Given::Parsed(match e {
                    MtlsEnforcement::PolicyWithDefaultDeny => Mode::PolicyWithDefaultDeny,
                    MtlsEnforcement::Policy => Mode::Policy,
                    MtlsEnforcement::RejectConnection => Mode::RejectConnection,
                })
            }),
            max_verify_depth: m.max_verify_depth.map(u64::from),
        });
    }
    let mut settings = validate::settings(&input, &SpecNames, &mut errs);
    settings.certificates = certificates;
    if errs.is_empty() {
        Ok(settings)
    } else {
        Err(errs.into_vec())
    }
}

/// The scalar global settings of a ProxyConfig spec, typed as the CRD already types them.
fn settings_input(spec: &crate::k8s::crd::ProxyConfigSpec) -> SettingsInput {
    use crate::config::{CodecType, DrainScope};
    use crate::k8s::crd;
    let text = |v: &Option<String>| v.clone().map(Given::Text);
    SettingsInput {
        address: spec.address.clone(),
        http_redirect_address: spec.http_redirect_address.clone(),
        metrics_address: spec.metrics_address.clone(),
        admin_address: spec.admin_address.clone(),
        insecure_server: spec.insecure_server,
        codec_type: spec.codec_type.map(|c| {
            Given::Parsed(match c {
                crd::CodecType::Auto => CodecType::Auto,
                crd::CodecType::Http1 => CodecType::Http1,
                crd::CodecType::Http2 => CodecType::Http2,
                crd::CodecType::Http3 => CodecType::Http3,
            })
        }),
        http3_advertised_port: spec.http3_advertised_port.map(u64::from),
        timeout_read: text(&spec.timeout_read),
        timeout_write: text(&spec.timeout_write),
        timeout_idle: text(&spec.timeout_idle),
        default_upstream_timeout: text(&spec.default_upstream_timeout),
        drain_timeout: text(&spec.drain_timeout),
        drain_scope: spec.drain_scope.map(|d| {
            Given::Parsed(match d {
                crd::DrainScope::Affected => DrainScope::Affected,
                crd::DrainScope::All => DrainScope::All,
            })
        }),
        certificates: Vec::new(),
        downstream_mtls: None,
    }
}

/// Resolves one `to` entry of a Route: a URL whose host names a Service becomes that
/// Service's ready endpoints (with the entry's weight each); other hosts stay as written.
fn resolve_to(ns: &str, entry: &str, objects: &Objects) -> Result<Vec<UpstreamInput>, String> {
    let written = UpstreamInput::parse(entry)?;
    let up = validate::upstream(&written)?;
    let host = up.host.to_ascii_lowercase();
    let labels: Vec<&str> = host.split('.').collect();
    let (svc_ns, name, must_exist) = match labels.as_slice() {
        [name] => (ns.to_owned(), (*name).to_owned(), true),
        [name, n] => ((*n).to_owned(), (*name).to_owned(), false),
        [name, n, "svc"] | [name, n, "svc", "cluster", "local"] => ((*n).to_owned(), (*name).to_owned(), true),
        _ => return Ok(vec![written]),
    };
    let key = (svc_ns.clone(), name.clone());
    let Some(svc) = objects.service(&key) else {
        return if must_exist { Err(format!("Service {svc_ns}/{name} not found")) } else { Ok(vec![written]) };
    };
    let spec = svc.spec.clone().unwrap_or_default();
    let port: i32 = up.authority.rsplit_once(':').and_then(|(_, p)| p.parse().ok()).unwrap_or(80);
    let Some(svc_port) = spec.ports.iter().flatten().find(|p| p.port == port) else {
        return Err(format!("Service {svc_ns}/{name} has no port {port}"));
    };
    let scheme = match up.scheme {
        crate::config::UpstreamScheme::Http => "http",
        crate::config::UpstreamScheme::Https => "https",
        crate::config::UpstreamScheme::H2c => "h2c",
    };
    if spec.type_.as_deref() == Some("ExternalName") {
        let ext = spec.external_name.unwrap_or_default();
        return Ok(vec![UpstreamInput { url: format!("{scheme}://{ext}:{port}"), weight: up.weight }]);
    }
    Ok(endpoint_urls(&key, svc_port, scheme, objects, up.weight))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::k8s::test_support::*;
    use k8s_openapi::api::networking::v1::{IngressClassSpec, IngressTLS};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    use k8s_openapi::ByteString;

    use crate::config::{HostMatch, PathMatch, UpstreamScheme};

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
    fn cluster_routes_preserve_host_unless_told_otherwise() {
        let rule = [("a.test", "/", "Prefix", backend("app", num(80)))];
        let t = translate_ingress(&ingress(&[], &rule), &objects()).unwrap();
        assert!(t.routes[0].preserve_host_header, "an Ingress backend sees the client's Host by default");
        let off = [("portcullis.io/preserve_host_header", "false")];
        let t = translate_ingress(&ingress(&off, &rule), &objects()).unwrap();
        assert!(!t.routes[0].preserve_host_header);
        let rewrite = [("portcullis.io/host_rewrite", "backend.internal")];
        let t = translate_ingress(&ingress(&rewrite, &rule), &objects()).unwrap();
        assert!(!t.routes[0].preserve_host_header, "host_rewrite wins over the default");
        assert_eq!(t.routes[0].host_rewrite.as_deref(), Some("backend.internal"));
        let r = route_cr(serde_json::json!({"from": "https://a.test", "to": ["http://app:80"]}));
        assert!(translate_route(&r, &objects()).unwrap().routes[0].preserve_host_header, "a Route too");
        let r = route_cr(
            serde_json::json!({"from": "https://a.test", "to": ["http://app:80"], "preserveHostHeader": false}),
        );
        assert!(!translate_route(&r, &objects()).unwrap().routes[0].preserve_host_header);
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

    #[test]
    fn ingress_class_resolution() {
        let class = |name: &str, controller: &str, default: bool| {
            let mut m = ObjectMeta { name: Some(name.into()), ..Default::default() };
            if default {
                m.annotations = Some([(DEFAULT_CLASS_ANNOTATION.to_owned(), "true".to_owned())].into());
            }
            IngressClass {
                metadata: m,
                spec: Some(IngressClassSpec { controller: Some(controller.into()), parameters: None }),
            }
        };
        let ours = class("portcullis", CONTROLLER_NAME, false);
        let nginx = class("nginx", "k8s.io/ingress-nginx", true);
        let mut ing = ingress(&[], &[]);
        assert_eq!(
            ingress_class(&ing, &[ours.clone(), nginx.clone()]),
            ClassDecision::NotOurs,
            "no class, default is nginx"
        );
        assert_eq!(
            ingress_class(&ing, &[class("portcullis", CONTROLLER_NAME, true)]),
            ClassDecision::Ours { deprecated_annotation: false },
            "our default class"
        );
        ing.metadata.annotations = Some([(CLASS_ANNOTATION.to_owned(), "portcullis".to_owned())].into());
        assert_eq!(
            ingress_class(&ing, std::slice::from_ref(&ours)),
            ClassDecision::Ours { deprecated_annotation: true }
        );
        ing.spec.as_mut().unwrap().ingress_class_name = Some("nginx".into());
        assert_eq!(ingress_class(&ing, &[ours.clone(), nginx]), ClassDecision::NotOurs, "spec.ingressClassName wins");
        ing.spec.as_mut().unwrap().ingress_class_name = Some("portcullis".into());
        assert_eq!(ingress_class(&ing, &[ours]), ClassDecision::Ours { deprecated_annotation: false });
    }

    fn route_cr(spec: serde_json::Value) -> crate::k8s::crd::Route {
        let spec: crate::k8s::crd::RouteSpec = serde_json::from_value(spec).unwrap();
        let mut r = crate::k8s::crd::Route::new("api", spec);
        r.metadata.namespace = Some("web".into());
        r
    }

    #[test]
    fn route_resources_use_the_same_validator_and_resolve_services() {
        let r = route_cr(serde_json::json!({
            "from": "https://api.example.com",
            "prefix": "/v1",
            "to": ["http://app:80,3", "h2c://app.web.svc.cluster.local:9000", "https://api.example.org"],
            "idleTimeout": "0",
            "setRequestHeaders": {"X-Mixed-Case": "1"},
            "healthChecks": [{"interval": "5s", "httpHealthCheck": {"path": "/healthz"}}],
        }));
        let t = translate_route(&r, &objects()).unwrap();
        let route = &t.routes[0];
        assert_eq!(route.name, "web/api");
        assert_eq!(
            upstreams(route),
            vec!["Http://10.244.1.7:8080", "H2c://10.244.1.7:9090", "Https://api.example.org:443"]
        );
        assert_eq!(route.to[0].weight, 3);
        assert_eq!(route.idle_timeout, Some(None));
        assert_eq!(route.set_request_headers[0].0, "x-mixed-case");
        assert_eq!(route.health_checks[0].interval, std::time::Duration::from_secs(5));
    }

    #[test]
    fn route_errors_use_the_crd_spelling() {
        let r =
            route_cr(serde_json::json!({"from": "https://a.test", "to": ["http://missing:80"], "idleTimeout": "soon"}));
        let errs = translate_route(&r, &objects()).unwrap_err();
        assert_eq!(errs[0].to_string(), "spec.to[0]: Service web/missing not found");
        let r = route_cr(serde_json::json!({"from": "https://a.test", "to": ["http://app:80"], "idleTimeout": "soon"}));
        let errs = translate_route(&r, &objects()).unwrap_err();
        assert!(errs[0].to_string().starts_with("spec.idleTimeout: invalid duration \"soon\""), "{errs:?}");
        let r = route_cr(serde_json::json!({"from": "https://a.test", "to": ["http://app:81"]}));
        assert_eq!(
            translate_route(&r, &objects()).unwrap_err()[0].to_string(),
            "spec.to[0]: Service web/app has no port 81"
        );
    }

    #[test]
    fn proxy_config_becomes_settings() {
        let spec: crate::k8s::crd::ProxyConfigSpec = serde_json::from_value(
            serde_json::json!({"timeoutIdle": "1m", "codecType": "http1", "address": ":9443", "drainScope": "all"}),
        )
        .unwrap();
        let pc = crate::k8s::crd::ProxyConfig::new("global", spec);
        let s = translate_proxy_config(&pc, &objects(), "portcullis", &EnvOverrides::default()).unwrap();
        assert_eq!(s.timeouts.idle, Some(std::time::Duration::from_secs(60)));
        assert_eq!(s.address.port(), 9443);
        assert_eq!(s.codec_type, crate::config::CodecType::Http1);
        assert_eq!(s.drain_scope, crate::config::DrainScope::All);
        let spec: crate::k8s::crd::ProxyConfigSpec = serde_json::from_value(serde_json::json!({
            "timeoutRead": "10x",
            "certificates": [{"name": "nope"}],
        }))
        .unwrap();
        let errs = translate_proxy_config(
            &crate::k8s::crd::ProxyConfig::new("global", spec),
            &objects(),
            "portcullis",
            &EnvOverrides::default(),
        )
        .unwrap_err();
        let text: Vec<String> = errs.iter().map(ToString::to_string).collect();
        assert!(text.contains(&"spec.certificates[0]: Secret portcullis/nope not found".to_owned()), "{text:?}");
        assert!(text.iter().any(|e| e.starts_with("spec.timeoutRead: invalid duration")), "{text:?}");
    }

    #[test]
    fn environment_overrides_win_over_the_spec() {
        let spec: crate::k8s::crd::ProxyConfigSpec = serde_json::from_value(
            serde_json::json!({"address": ":9443", "adminAddress": "127.0.0.1:1", "timeoutIdle": "1m"}),
        )
        .unwrap();
        let pc = crate::k8s::crd::ProxyConfig::new("global", spec);
        let overrides = crate::source::env::env_overrides(&|k| match k {
            "ADDRESS" => Some(":8443".into()),
            "ADMIN_ADDRESS" => Some(":9901".into()),
            _ => None,
        })
        .unwrap();
        let s = translate_proxy_config(&pc, &objects(), "portcullis", &overrides).unwrap();
        assert_eq!(s.address.port(), 8443);
        assert_eq!(s.admin_address.map(|a| a.to_string()), Some("0.0.0.0:9901".to_owned()));
        assert_eq!(s.timeouts.idle, Some(std::time::Duration::from_secs(60)), "the rest of the spec still applies");
        let errs =
            crate::source::env::env_overrides(&|k| (k == "METRICS_ADDRESS").then(|| "nowhere".into())).unwrap_err();
        assert_eq!(errs.0[0].path, "METRICS_ADDRESS", "{errs}");
        assert!(errs.0[0].message.starts_with("environment variable: "), "{errs}");
    }
}
