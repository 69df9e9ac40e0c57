//! Turns a loosely typed tree (YAML file, CRD spec, Ingress annotations) into a [`Config`],
//! collecting *every* error with the path of the field that caused it.
//!
//! Everything that reaches the data plane passes through here, so the rules live in one
//! place: the standalone file, `portcullis check` and the Kubernetes translation all agree.

use std::collections::HashSet;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use http::{HeaderName, HeaderValue};
use regex::Regex;
use serde_json::{Map, Value};

use super::duration;
use super::model::{
    Certificate, ClientCert, CodecType, Config, DownstreamMtls, DrainScope, HealthCheck, HealthCheckKind, HostMatch,
    LbPolicy, MtlsEnforcement, PathMatch, Route, Settings, Upstream, UpstreamScheme, UpstreamTls,
};
pub use crate::pki::build_certificate;
use crate::pki::{parse_certs, parse_crls, parse_private_key};

/// One problem with one field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    /// Dotted path such as `routes[3].timeout`.
    pub path: String,
    /// What is wrong and, where possible, what would be right.
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// Every problem found in one config; never empty.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors(pub Vec<FieldError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

/// Reads the material that config fields refer to (`cert_file`, `tls_custom_ca_file`, ...).
/// The standalone loader reads files; the controller will resolve Secrets instead.
pub trait Material {
    /// Returns the bytes behind `reference`, or a message saying why they are not there.
    fn read(&self, reference: &str) -> Result<Vec<u8>, String>;
}

/// A [`Material`] that has nothing: every reference is an error. For trees with no files.
pub struct NoMaterial;

impl Material for NoMaterial {
    fn read(&self, reference: &str) -> Result<Vec<u8>, String> {
        Err(format!("cannot read {reference:?}: no files can be referenced here"))
    }
}

/// Accumulates errors while a tree is walked.
#[derive(Default)]
pub struct Errors(Vec<FieldError>);

impl Errors {
    /// Records one error.
    pub fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(FieldError { path: path.into(), message: message.into() });
    }

    /// True when nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The collected errors.
    pub fn into_vec(self) -> Vec<FieldError> {
        self.0
    }
}

/// A view of one mapping that remembers which keys were read, so that the rest can be
/// reported as unknown (with a suggestion) when it is finished.
pub struct Obj<'a> {
    path: String,
    map: &'a Map<String, Value>,
    known: Vec<&'static str>,
}

impl<'a> Obj<'a> {
    /// Starts reading `value` at `path`; records an error when it is not a mapping.
    pub fn new(path: &str, value: &'a Value, errs: &mut Errors) -> Option<Self> {
        match value {
            Value::Object(map) => Some(Self { path: path.to_owned(), map, known: Vec::new() }),
            other => {
                errs.push(path, format!("expected a mapping, found {}", kind(other)));
                None
            }
        }
    }

    /// Path of a child field.
    pub fn at(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_owned()
        } else {
            format!("{}.{key}", self.path)
        }
    }

    /// Raw value of `key` (null counts as absent) and marks it known.
    pub fn get(&mut self, key: &'static str) -> Option<&'a Value> {
        self.known.push(key);
        self.map.get(key).filter(|v| !v.is_null())
    }

    /// A string field.
    pub fn string(&mut self, key: &'static str, errs: &mut Errors) -> Option<String> {
        let v = self.get(key)?;
        match v {
            Value::String(s) => Some(s.clone()),
            other => {
                errs.push(self.at(key), format!("expected a string, found {}", kind(other)));
                None
            }
        }
    }

    /// A boolean field; the strings `"true"`/`"false"` are accepted (environment, annotations).
    pub fn boolean(&mut self, key: &'static str, errs: &mut Errors) -> Option<bool> {
        let v = self.get(key)?;
        match v {
            Value::Bool(b) => Some(*b),
            Value::String(s) if s.eq_ignore_ascii_case("true") => Some(true),
            Value::String(s) if s.eq_ignore_ascii_case("false") => Some(false),
            other => {
                errs.push(self.at(key), format!("expected true or false, found {}", show(other)));
                None
            }
        }
    }

    /// An unsigned integer field; numeric strings are accepted.
    pub fn uint(&mut self, key: &'static str, errs: &mut Errors) -> Option<u64> {
        let v = self.get(key)?;
        let n = match v {
            Value::Number(n) => n.as_u64(),
            Value::String(s) => s.trim().parse().ok(),
            _ => None,
        };
        if n.is_none() {
            errs.push(self.at(key), format!("expected a non-negative integer, found {}", show(v)));
        }
        n
    }

    /// A Go duration field. `Some(None)` is an explicit `0` (disabled).
    pub fn duration(&mut self, key: &'static str, errs: &mut Errors) -> Option<Option<Duration>> {
        let v = self.get(key)?;
        let parsed = match v {
            Value::String(s) => duration::parse(s).map_err(|e| e.to_string()),
            Value::Number(n) if n.as_u64() == Some(0) => Ok(Duration::ZERO),
            other => Err(format!("expected a Go duration string such as \"30s\", found {}", show(other))),
        };
        match parsed {
            Ok(d) => Some((!d.is_zero()).then_some(d)),
            Err(message) => {
                errs.push(self.at(key), message);
                None
            }
        }
    }

    /// A list field; a single scalar is accepted as a list of one.
    pub fn list(&mut self, key: &'static str, errs: &mut Errors) -> Option<Vec<&'a Value>> {
        match self.get(key)? {
            Value::Array(items) => Some(items.iter().collect()),
            Value::Object(_) => {
                errs.push(self.at(key), "expected a list");
                None
            }
            scalar => Some(vec![scalar]),
        }
    }

    /// A string-to-string mapping field, in key order.
    pub fn string_map(&mut self, key: &'static str, errs: &mut Errors) -> Option<Vec<(String, String)>> {
        let v = self.get(key)?;
        let Value::Object(map) = v else {
            errs.push(self.at(key), format!("expected a mapping of names to values, found {}", kind(v)));
            return None;
        };
        let mut out = Vec::with_capacity(map.len());
        for (k, v) in map {
            match v {
                Value::String(s) => out.push((k.clone(), s.clone())),
                Value::Number(n) => out.push((k.clone(), n.to_string())),
                Value::Bool(b) => out.push((k.clone(), b.to_string())),
                other => {
                    errs.push(format!("{}.{k}", self.at(key)), format!("expected a string, found {}", kind(other)));
                }
            }
        }
        Some(out)
    }

    /// Reports every key that no getter asked for.
    pub fn finish(self, errs: &mut Errors) {
        for key in self.map.keys() {
            if !self.known.contains(&key.as_str()) {
                let hint = closest(key, &self.known).map(|k| format!(" (did you mean {k:?}?)")).unwrap_or_default();
                errs.push(self.at(key), format!("unknown field{hint}"));
            }
        }
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "nothing",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}

fn show(v: &Value) -> String {
    match v {
        Value::String(s) => format!("{s:?}"),
        Value::Bool(_) | Value::Number(_) => v.to_string(),
        other => kind(other).to_owned(),
    }
}

/// The known key nearest to a typo, if it is near enough to be a plausible intent.
fn closest<'k>(key: &str, known: &[&'k str]) -> Option<&'k str> {
    let norm = key.to_ascii_lowercase().replace('-', "_");
    known.iter().map(|k| (levenshtein(&norm, k), *k)).filter(|(d, k)| *d <= 2.max(k.len() / 4)).min().map(|(_, k)| k)
}

fn levenshtein(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

/// The global keys a root mapping may hold, besides `routes`; also the environment variables
/// (upper-cased) that override them.
pub const GLOBAL_SCALAR_KEYS: &[&str] = &[
    "address",
    "http_redirect_address",
    "insecure_server",
    "codec_type",
    "http3_advertised_port",
    "timeout_read",
    "timeout_write",
    "timeout_idle",
    "default_upstream_timeout",
    "drain_timeout",
    "drain_scope",
    "metrics_address",
    "admin_address",
];

/// Parses a whole standalone-style document: global settings plus `routes`.
pub fn parse_config(root: &Value, material: &dyn Material) -> Result<Config, ConfigErrors> {
    let mut errs = Errors::default();
    let empty = Value::Object(Map::new());
    let root = if root.is_null() { &empty } else { root };
    let Some(mut obj) = Obj::new("", root, &mut errs) else {
        return Err(ConfigErrors(errs.into_vec()));
    };
    let settings = parse_settings(&mut obj, material, &mut errs);
    let mut routes = Vec::new();
    if let Some(items) = obj.list("routes", &mut errs) {
        for (i, item) in items.into_iter().enumerate() {
            if let Some(route) = parse_route(&format!("routes[{i}]"), item, material, &mut errs) {
                routes.push(route);
            }
        }
    }
    obj.finish(&mut errs);
    check_route_set(&routes, &mut errs);
    if errs.is_empty() {
        Ok(Config { settings, routes })
    } else {
        Err(ConfigErrors(errs.into_vec()))
    }
}

/// Reads the global settings out of a mapping (the file root or a ProxyConfig spec).
pub fn parse_settings(obj: &mut Obj<'_>, material: &dyn Material, errs: &mut Errors) -> Settings {
    let mut s = Settings::default();
    if let Some(v) = obj.string("address", errs) {
        match parse_listen_addr(&v) {
            Ok(Some(a)) => s.address = a,
            Ok(None) => errs.push(obj.at("address"), "must not be empty"),
            Err(e) => errs.push(obj.at("address"), e),
        }
    }
    for (key, slot) in [
        ("http_redirect_address", &mut s.http_redirect_address),
        ("metrics_address", &mut s.metrics_address),
        ("admin_address", &mut s.admin_address),
    ] {
        if let Some(v) = obj.string(key, errs) {
            match parse_listen_addr(&v) {
                Ok(a) => *slot = a,
                Err(e) => errs.push(obj.at(key), e),
            }
        }
    }
    if let Some(b) = obj.boolean("insecure_server", errs) {
        s.insecure_server = b;
    }
    if let Some(v) = obj.string("codec_type", errs) {
        match v.to_ascii_lowercase().as_str() {
            "auto" | "" => s.codec_type = CodecType::Auto,
            "http1" => s.codec_type = CodecType::Http1,
            "http2" => s.codec_type = CodecType::Http2,
            "http3" => s.codec_type = CodecType::Http3,
            _ => errs.push(obj.at("codec_type"), format!("unknown codec {v:?}: use auto, http1, http2 or http3")),
        }
    }
    if let Some(p) = obj.uint("http3_advertised_port", errs) {
        match u16::try_from(p) {
            Ok(p) if p > 0 => s.http3_advertised_port = Some(p),
            _ => errs.push(obj.at("http3_advertised_port"), format!("{p} is not a port (1-65535)")),
        }
    }
    if let Some(d) = obj.duration("timeout_read", errs) {
        s.timeouts.read = d;
    }
    if let Some(d) = obj.duration("timeout_write", errs) {
        s.timeouts.write = d;
    }
    if let Some(d) = obj.duration("timeout_idle", errs) {
        s.timeouts.idle = d;
    }
    if let (Some(r), Some(w)) = (s.timeouts.read, s.timeouts.write) {
        if w <= r {
            errs.push(
                obj.at("timeout_write"),
                format!(
                    "must be greater than timeout_read ({}) because it covers the whole request and response; use 0 to disable it",
                    duration::format(r)
                ),
            );
        }
    }
    if let Some(d) = obj.duration("default_upstream_timeout", errs) {
        s.default_upstream_timeout = d;
    }
    if let Some(d) = obj.duration("drain_timeout", errs) {
        s.drain_timeout = d.unwrap_or(Duration::ZERO);
    }
    if let Some(v) = obj.string("drain_scope", errs) {
        match v.as_str() {
            "affected" => s.drain_scope = DrainScope::Affected,
            "all" => s.drain_scope = DrainScope::All,
            _ => errs.push(obj.at("drain_scope"), format!("unknown drain scope {v:?}: use affected or all")),
        }
    }
    if let Some(items) = obj.list("certificates", errs) {
        for (i, item) in items.into_iter().enumerate() {
            if let Some(c) = parse_certificate(&format!("{}[{i}]", obj.at("certificates")), item, material, errs) {
                s.certificates.push(c);
            }
        }
    }
    if let Some(v) = obj.get("downstream_mtls") {
        let path = obj.at("downstream_mtls");
        s.downstream_mtls = parse_mtls(&path, v, material, errs);
    }
    s
}

/// Parses `":8443"`, `"127.0.0.1:9901"`, `"[::1]:443"`, `"localhost:80"`. Empty disables.
pub fn parse_listen_addr(v: &str) -> Result<Option<SocketAddr>, String> {
    let v = v.trim();
    if v.is_empty() {
        return Ok(None);
    }
    let (host, port) =
        v.rsplit_once(':').ok_or_else(|| format!("invalid address {v:?}: expected host:port or :port"))?;
    let port: u16 = port.parse().map_err(|_| format!("invalid address {v:?}: bad port {port:?}"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let ip: IpAddr = match host {
        "" | "0.0.0.0" | "*" => IpAddr::from([0, 0, 0, 0]),
        "localhost" => IpAddr::from([127, 0, 0, 1]),
        other => other.parse().map_err(|_| format!("invalid address {v:?}: {other:?} is not an IP address"))?,
    };
    Ok(Some(SocketAddr::new(ip, port)))
}

fn parse_certificate(path: &str, v: &Value, material: &dyn Material, errs: &mut Errors) -> Option<Certificate> {
    let mut obj = Obj::new(path, v, errs)?;
    let cert = read_pem_field(&mut obj, "cert", "cert_file", material, errs);
    let key = read_pem_field(&mut obj, "key", "key_file", material, errs);
    obj.finish(errs);
    let (Some(cert), Some(key)) = (cert, key) else {
        if errs.is_empty() {
            errs.push(path, "needs cert_file and key_file (or inline cert and key)");
        }
        return None;
    };
    match build_certificate(&cert.1, &key.1, &cert.0) {
        Ok(c) => Some(c),
        Err(e) => {
            errs.push(path, e);
            None
        }
    }
}

/// Reads `inline_key` (PEM, or base64 of PEM) or `file_key` (a reference for [`Material`]).
/// Returns the source description and the PEM bytes.
fn read_pem_field(
    obj: &mut Obj<'_>,
    inline_key: &'static str,
    file_key: &'static str,
    material: &dyn Material,
    errs: &mut Errors,
) -> Option<(String, Vec<u8>)> {
    let inline = obj.string(inline_key, errs);
    let file = obj.string(file_key, errs);
    match (inline, file) {
        (Some(_), Some(_)) => {
            errs.push(obj.at(file_key), format!("set either {inline_key} or {file_key}, not both"));
            None
        }
        (Some(text), None) => Some((format!("inline {inline_key}"), decode_pem_or_base64(&text))),
        (None, Some(file)) => match material.read(&file) {
            Ok(bytes) => Some((file, bytes)),
            Err(e) => {
                errs.push(obj.at(file_key), e);
                None
            }
        },
        (None, None) => None,
    }
}

/// Pomerium accepts base64-encoded PEM inline; plain PEM is friendlier, so both work.
fn decode_pem_or_base64(text: &str) -> Vec<u8> {
    use base64::Engine as _;
    if text.contains("-----BEGIN") {
        return text.as_bytes().to_vec();
    }
    let compact: String = text.chars().filter(|c| !c.is_whitespace()).collect();
    base64::engine::general_purpose::STANDARD.decode(compact).unwrap_or_else(|_| text.as_bytes().to_vec())
}

fn parse_mtls(path: &str, v: &Value, material: &dyn Material, errs: &mut Errors) -> Option<DownstreamMtls> {
    let mut obj = Obj::new(path, v, errs)?;
    let ca = read_pem_field(&mut obj, "ca", "ca_file", material, errs);
    let crl = read_pem_field(&mut obj, "crl", "crl_file", material, errs);
    let enforcement = match obj.string("enforcement", errs).as_deref() {
        None | Some("policy_with_default_deny") => MtlsEnforcement::PolicyWithDefaultDeny,
        Some("policy") => MtlsEnforcement::Policy,
        Some("reject_connection") => MtlsEnforcement::RejectConnection,
        Some(other) => {
            errs.push(
                obj.at("enforcement"),
                format!("unknown mode {other:?}: use policy_with_default_deny, policy or reject_connection"),
            );
            MtlsEnforcement::PolicyWithDefaultDeny
        }
    };
    let max_verify_depth = obj.uint("max_verify_depth", errs).map_or(1, |d| d.min(100) as u32);
    obj.finish(errs);
    let Some((_, ca)) = ca else {
        errs.push(path, "needs ca (or ca_file): the CA that signs client certificates");
        return None;
    };
    let ca = match parse_certs(&ca) {
        Ok(c) => c,
        Err(e) => {
            errs.push(format!("{path}.ca"), e);
            return None;
        }
    };
    let mut crls = Vec::new();
    if let Some((_, crl)) = crl {
        for item in parse_crls(&crl) {
            match item {
                Ok(c) => crls.push(c),
                Err(e) => errs.push(format!("{path}.crl"), e),
            }
        }
    }
    Some(DownstreamMtls { ca, crls, enforcement, max_verify_depth })
}

/// Parses one route mapping (the standalone `routes[i]`). `to` must list at least one upstream.
pub fn parse_route(path: &str, v: &Value, material: &dyn Material, errs: &mut Errors) -> Option<Route> {
    parse_route_with(path, v, material, errs, false)
}

/// As [`parse_route`]; with `allow_empty_to` an explicitly empty `to` is valid. The cluster
/// translation uses it for a Service that has no ready endpoints right now: the route still
/// exists and answers 503 instead of vanishing into a 404.
pub fn parse_route_with(
    path: &str,
    v: &Value,
    material: &dyn Material,
    errs: &mut Errors,
    allow_empty_to: bool,
) -> Option<Route> {
    let before = errs.0.len();
    let mut obj = Obj::new(path, v, errs)?;
    let name = obj.string("name", errs);
    let from = obj.string("from", errs);
    let host = if let Some(f) = from.as_deref() {
        parse_from(f).map_err(|e| errs.push(obj.at("from"), e)).ok()
    } else {
        errs.push(obj.at("from"), "is required (for example https://app.example.com)");
        None
    };
    let prefix = obj.string("prefix", errs);
    let exact = obj.string("path", errs);
    let regex = obj.string("regex", errs);
    let path_match = match (prefix, exact, regex) {
        (None, None, None) => Some(PathMatch::Any),
        (Some(p), None, None) => parse_prefix(&p).map_err(|e| errs.push(obj.at("prefix"), e)).ok(),
        (None, Some(p), None) => {
            if p.starts_with('/') {
                Some(PathMatch::Exact(p))
            } else {
                errs.push(obj.at("path"), format!("{p:?} must start with /"));
                None
            }
        }
        (None, None, Some(r)) => match Regex::new(&format!("^(?:{r})$")) {
            Ok(re) => Some(PathMatch::Regex(re)),
            Err(e) => {
                errs.push(obj.at("regex"), format!("invalid regular expression: {}", first_line(&e.to_string())));
                None
            }
        },
        _ => {
            errs.push(path, "set only one of prefix, path and regex");
            None
        }
    };
    let to = match obj.list("to", errs) {
        Some(items) if !items.is_empty() || allow_empty_to => {
            let mut out = Vec::new();
            for (i, item) in items.into_iter().enumerate() {
                match parse_upstream(item) {
                    Ok(u) => out.push(u),
                    Err(e) => errs.push(format!("{}[{i}]", obj.at("to")), e),
                }
            }
            Some(out)
        }
        _ => {
            errs.push(obj.at("to"), "is required: one or more upstream URLs such as http://10.0.0.1:8080");
            None
        }
    };
    let timeout = obj.duration("timeout", errs);
    let idle_timeout = obj.duration("idle_timeout", errs);
    let allow_websockets = obj.boolean("allow_websockets", errs).unwrap_or(false);
    let preserve_host_header = obj.boolean("preserve_host_header", errs).unwrap_or(false);
    let host_rewrite = obj.string("host_rewrite", errs);
    if let Some(h) = &host_rewrite {
        if HeaderValue::from_str(h).is_err() || h.is_empty() {
            errs.push(obj.at("host_rewrite"), format!("{h:?} is not a valid Host header value"));
        }
    }
    if preserve_host_header && host_rewrite.is_some() {
        errs.push(obj.at("host_rewrite"), "cannot be combined with preserve_host_header");
    }
    let prefix_rewrite = obj.string("prefix_rewrite", errs);
    let pattern = obj.string("regex_rewrite_pattern", errs);
    let substitution = obj.string("regex_rewrite_substitution", errs);
    let regex_rewrite = match (pattern, substitution) {
        (Some(p), Some(s)) => match Regex::new(&p) {
            Ok(re) => Some((re, s)),
            Err(e) => {
                errs.push(
                    obj.at("regex_rewrite_pattern"),
                    format!("invalid regular expression: {}", first_line(&e.to_string())),
                );
                None
            }
        },
        (Some(_), None) => {
            errs.push(obj.at("regex_rewrite_substitution"), "is required with regex_rewrite_pattern");
            None
        }
        (None, Some(_)) => {
            errs.push(obj.at("regex_rewrite_pattern"), "is required with regex_rewrite_substitution");
            None
        }
        (None, None) => None,
    };
    if prefix_rewrite.is_some() && regex_rewrite.is_some() {
        errs.push(obj.at("prefix_rewrite"), "cannot be combined with regex_rewrite_pattern");
    }
    let set_request_headers = header_pairs(&mut obj, "set_request_headers", errs);
    let remove_request_headers = obj
        .list("remove_request_headers", errs)
        .map(|items| {
            items
                .into_iter()
                .enumerate()
                .filter_map(|(i, item)| {
                    if let Some(Ok(n)) = item.as_str().map(HeaderName::try_from) {
                        Some(n)
                    } else {
                        errs.push(
                            format!("{}[{i}]", obj.at("remove_request_headers")),
                            format!("{} is not a valid header name", show(item)),
                        );
                        None
                    }
                })
                .collect()
        })
        .unwrap_or_default();
    let set_response_headers = header_pairs(&mut obj, "set_response_headers", errs);
    let tls = parse_upstream_tls(&mut obj, material, errs);
    let load_balancing_policy = match obj.string("load_balancing_policy", errs).as_deref() {
        None | Some("ROUND_ROBIN") => LbPolicy::RoundRobin,
        Some("RANDOM") => LbPolicy::Random,
        Some("LEAST_REQUEST") => LbPolicy::LeastRequest,
        Some(other) => {
            errs.push(
                obj.at("load_balancing_policy"),
                format!("unsupported policy {other:?}: use ROUND_ROBIN, RANDOM or LEAST_REQUEST"),
            );
            LbPolicy::RoundRobin
        }
    };
    let health_checks = obj
        .list("health_checks", errs)
        .map(|items| {
            items
                .into_iter()
                .enumerate()
                .filter_map(|(i, item)| parse_health_check(&format!("{}[{i}]", obj.at("health_checks")), item, errs))
                .collect()
        })
        .unwrap_or_default();
    if obj.get("policy").is_some() {
        errs.push(obj.at("policy"), "authorization policies are not supported by this version of Portcullis");
    }
    obj.finish(errs);
    if errs.0.len() > before {
        return None;
    }
    let host = host?;
    let path_match = path_match?;
    let name = name.unwrap_or_else(|| default_route_name(&host, &path_match));
    Some(Route {
        name,
        host,
        path: path_match,
        to: to?,
        timeout,
        idle_timeout,
        allow_websockets,
        preserve_host_header,
        host_rewrite,
        prefix_rewrite,
        regex_rewrite,
        set_request_headers,
        remove_request_headers,
        set_response_headers,
        tls,
        load_balancing_policy,
        health_checks,
    })
}

fn first_line(s: &str) -> String {
    s.lines().rfind(|l| !l.trim().is_empty()).unwrap_or(s).trim().to_owned()
}

/// A readable, bounded name for routes that have none: `host/path`.
fn default_route_name(host: &HostMatch, path: &PathMatch) -> String {
    let host = match host {
        HostMatch::Any => "*".to_owned(),
        HostMatch::Exact(h) => h.clone(),
        HostMatch::Wildcard(s) => format!("*.{s}"),
    };
    match path {
        PathMatch::Any => host,
        PathMatch::Prefix(p) => format!("{host}{p}"),
        PathMatch::Exact(p) => format!("{host}={p}"),
        PathMatch::Regex(r) => format!("{host}~{}", r.as_str().trim_start_matches("^(?:").trim_end_matches(")$")),
    }
}

/// Parses `from`: `https://host`, `https://*.example.com`, `https://*`.
pub fn parse_from(from: &str) -> Result<HostMatch, String> {
    let rest = if let Some(r) = from.strip_prefix("https://") {
        r
    } else if let Some(r) = from.strip_prefix("http://") {
        r
    } else if from.starts_with("tcp+") || from.starts_with("udp+") {
        return Err(format!("{from:?}: TCP and UDP tunnel routes are not supported by this version"));
    } else {
        return Err(format!("{from:?} must start with https:// (for example https://app.example.com)"));
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.contains(['/', '?', '#', '@']) {
        return Err(format!("{from:?} must be a scheme and host only; put paths in prefix, path or regex"));
    }
    let host = match rest.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') && p.parse::<u16>().is_ok() => h,
        _ => rest,
    };
    parse_host(host).map_err(|e| format!("{from:?}: {e}"))
}

/// Parses a host pattern as used by `from` and Ingress rules.
pub fn parse_host(host: &str) -> Result<HostMatch, String> {
    let host = host.to_ascii_lowercase();
    if host.is_empty() || host == "*" {
        return Ok(HostMatch::Any);
    }
    if let Some(suffix) = host.strip_prefix("*.") {
        check_dns_name(suffix)?;
        return Ok(HostMatch::Wildcard(suffix.to_owned()));
    }
    if host.contains('*') {
        return Err("a wildcard must be a whole first label, as in *.example.com".to_owned());
    }
    check_dns_name(&host)?;
    Ok(HostMatch::Exact(host))
}

fn check_dns_name(name: &str) -> Result<(), String> {
    if name.len() > 253 {
        return Err("host name longer than 253 characters".to_owned());
    }
    for label in name.split('.') {
        let ok = !label.is_empty()
            && label.len() <= 63
            && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-');
        if !ok {
            return Err(format!("{name:?} is not a valid host name"));
        }
    }
    Ok(())
}

fn parse_prefix(p: &str) -> Result<PathMatch, String> {
    if !p.starts_with('/') {
        return Err(format!("{p:?} must start with /"));
    }
    let trimmed = p.trim_end_matches('/');
    Ok(if trimmed.is_empty() { PathMatch::Any } else { PathMatch::Prefix(trimmed.to_owned()) })
}

/// Parses one `to` entry: `"http://host:port"`, `"http://host:port,weight"`, or
/// `{url: ..., weight: N}`.
pub fn parse_upstream(v: &Value) -> Result<Upstream, String> {
    let (url, weight) = match v {
        Value::String(s) => match s.rsplit_once(',') {
            Some((u, w)) => (
                u.trim().to_owned(),
                w.trim().parse::<u32>().map_err(|_| format!("{s:?}: weight {w:?} is not a positive integer"))?,
            ),
            None => (s.trim().to_owned(), 1),
        },
        Value::Object(m) => {
            let url = m.get("url").and_then(Value::as_str).ok_or("needs url")?.to_owned();
            let weight = match m.get("weight") {
                None => 1,
                Some(w) => w.as_u64().and_then(|w| u32::try_from(w).ok()).ok_or("weight must be a positive integer")?,
            };
            if let Some(k) = m.keys().find(|k| *k != "url" && *k != "weight") {
                return Err(format!("unknown field {k:?} (use url and weight)"));
            }
            (url, weight)
        }
        other => return Err(format!("expected an upstream URL, found {}", kind(other))),
    };
    if weight == 0 {
        return Err(format!("{url:?}: weight must be at least 1"));
    }
    let (scheme, rest, default_port) = if let Some(r) = url.strip_prefix("http://") {
        (UpstreamScheme::Http, r, 80)
    } else if let Some(r) = url.strip_prefix("https://") {
        (UpstreamScheme::Https, r, 443)
    } else if let Some(r) = url.strip_prefix("h2c://") {
        (UpstreamScheme::H2c, r, 80)
    } else {
        return Err(format!("{url:?} must start with http://, https:// or h2c://"));
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.contains(['/', '?', '#', '@']) {
        return Err(format!("{url:?}: an upstream URL is a scheme, host and port only; use prefix_rewrite for paths"));
    }
    let (host, port) = if let Some(stripped) = rest.strip_prefix('[') {
        let (h, tail) = stripped.split_once(']').ok_or_else(|| format!("{url:?}: unterminated IPv6 address"))?;
        let port = match tail.strip_prefix(':') {
            Some(p) => p.parse::<u16>().map_err(|_| format!("{url:?}: bad port {p:?}"))?,
            None if tail.is_empty() => default_port,
            None => return Err(format!("{url:?}: garbage after IPv6 address")),
        };
        (format!("[{h}]"), port)
    } else {
        match rest.rsplit_once(':') {
            Some((h, p)) => (h.to_owned(), p.parse::<u16>().map_err(|_| format!("{url:?}: bad port {p:?}"))?),
            None => (rest.to_owned(), default_port),
        }
    };
    if host.is_empty() {
        return Err(format!("{url:?}: missing host"));
    }
    if !host.starts_with('[') && host.parse::<IpAddr>().is_err() {
        check_dns_name(&host.to_ascii_lowercase()).map_err(|e| format!("{url:?}: {e}"))?;
    }
    Ok(Upstream { scheme, authority: format!("{host}:{port}"), host, weight })
}

fn header_pairs(obj: &mut Obj<'_>, key: &'static str, errs: &mut Errors) -> Vec<(HeaderName, HeaderValue)> {
    let Some(pairs) = obj.string_map(key, errs) else {
        return Vec::new();
    };
    let mut out = Vec::with_capacity(pairs.len());
    for (name, value) in pairs {
        let path = format!("{}.{name}", obj.at(key));
        match (HeaderName::try_from(name.as_str()), HeaderValue::try_from(value.as_str())) {
            (Ok(n), Ok(v)) => out.push((n, v)),
            (Err(_), _) => errs.push(path, "is not a valid header name"),
            (_, Err(_)) => errs.push(path, "value contains characters not allowed in a header"),
        }
    }
    out
}

fn parse_upstream_tls(obj: &mut Obj<'_>, material: &dyn Material, errs: &mut Errors) -> UpstreamTls {
    let skip_verify = obj.boolean("tls_skip_verify", errs).unwrap_or(false);
    let server_name = obj.string("tls_server_name", errs);
    if let Some(n) = &server_name {
        if rustls_pki_types::ServerName::try_from(n.as_str()).is_err() {
            errs.push(obj.at("tls_server_name"), format!("{n:?} is not a valid server name"));
        }
    }
    let custom_ca = read_pem_field(obj, "tls_custom_ca", "tls_custom_ca_file", material, errs)
        .and_then(|(_, pem)| parse_certs(&pem).map_err(|e| errs.push(obj.at("tls_custom_ca"), e)).ok());
    let cert = read_pem_field(obj, "tls_client_cert", "tls_client_cert_file", material, errs);
    let key = read_pem_field(obj, "tls_client_key", "tls_client_key_file", material, errs);
    let client_cert = match (cert, key) {
        (Some((_, c)), Some((_, k))) => {
            let chain = parse_certs(&c).map_err(|e| errs.push(obj.at("tls_client_cert"), e)).ok();
            let key = parse_private_key(&k)
                .map_err(|e| errs.push(obj.at("tls_client_key"), format!("no usable PEM private key ({e})")))
                .ok();
            chain.zip(key).map(|(chain, key)| ClientCert { chain, key })
        }
        (Some(_), None) => {
            errs.push(obj.at("tls_client_key"), "is required with tls_client_cert");
            None
        }
        (None, Some(_)) => {
            errs.push(obj.at("tls_client_cert"), "is required with tls_client_key");
            None
        }
        (None, None) => None,
    };
    UpstreamTls { skip_verify, server_name, custom_ca, client_cert }
}

fn parse_health_check(path: &str, v: &Value, errs: &mut Errors) -> Option<HealthCheck> {
    let mut obj = Obj::new(path, v, errs)?;
    let interval = obj.duration("interval", errs).flatten().unwrap_or(Duration::from_secs(10));
    let timeout = obj.duration("timeout", errs).flatten().unwrap_or(Duration::from_secs(5));
    let unhealthy_threshold = obj.uint("unhealthy_threshold", errs).unwrap_or(3).clamp(1, 100) as u32;
    let healthy_threshold = obj.uint("healthy_threshold", errs).unwrap_or(2).clamp(1, 100) as u32;
    let http = obj.get("http_health_check");
    let tcp = obj.get("tcp_health_check");
    let kind = match (http, tcp) {
        (Some(h), None) => {
            let hp = obj.at("http_health_check");
            let mut h = Obj::new(&hp, h, errs)?;
            let path = h.string("path", errs).unwrap_or_else(|| "/".to_owned());
            h.finish(errs);
            if !path.starts_with('/') {
                errs.push(format!("{hp}.path"), "must start with /");
            }
            HealthCheckKind::Http { path }
        }
        (None, Some(_)) => HealthCheckKind::Tcp,
        _ => {
            errs.push(path, "set exactly one of http_health_check and tcp_health_check");
            return None;
        }
    };
    obj.finish(errs);
    Some(HealthCheck { interval, timeout, unhealthy_threshold, healthy_threshold, kind })
}

/// Cross-route checks: unique names, no two routes with the same host and path.
fn check_route_set(routes: &[Route], errs: &mut Errors) {
    let mut names = HashSet::new();
    let mut keys: Vec<(String, &HostMatch, String)> = Vec::new();
    for (i, r) in routes.iter().enumerate() {
        if !names.insert(r.name.as_str()) {
            errs.push(format!("routes[{i}].name"), format!("duplicate route name {:?}", r.name));
        }
        let key = path_key(&r.path);
        if let Some((other, _, _)) = keys.iter().find(|(_, h, k)| **h == r.host && *k == key) {
            errs.push(
                format!("routes[{i}]"),
                format!("matches the same host and path as {other}; the second could never be reached"),
            );
        }
        keys.push((format!("routes[{i}]"), &r.host, key));
    }
}

/// A comparable key for a path matcher: two routes with the same host and key conflict.
pub fn path_key(p: &PathMatch) -> String {
    match p {
        PathMatch::Any => "any".to_owned(),
        PathMatch::Prefix(p) => format!("prefix:{p}"),
        PathMatch::Exact(p) => format!("exact:{p}"),
        PathMatch::Regex(r) => format!("regex:{}", r.as_str()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> Result<Config, ConfigErrors> {
        let v: Value = serde_yaml_ng::from_str(yaml).unwrap();
        parse_config(&v, &NoMaterial)
    }

    #[test]
    fn defaults_follow_pomerium() {
        let c = parse("routes: []").unwrap();
        let s = &c.settings;
        assert_eq!(s.address.port(), 8443);
        assert_eq!(s.timeouts.read, Some(Duration::from_secs(30)));
        assert_eq!(s.timeouts.write, None);
        assert_eq!(s.timeouts.idle, Some(Duration::from_secs(300)));
        assert_eq!(s.default_upstream_timeout, Some(Duration::from_secs(30)));
        assert_eq!(s.drain_timeout, Duration::from_secs(600));
        assert_eq!(s.drain_scope, DrainScope::Affected);
        assert_eq!(s.admin_address.unwrap().to_string(), "127.0.0.1:9901");
        assert_eq!(s.metrics_address.unwrap().port(), 9902);
    }

    #[test]
    fn reports_every_error_with_its_path() {
        let errs = parse(
            r#"
timeout_read: 5 minutes
codec_type: http9
drain_scope: some
routes:
  - from: https://a.example.com
    to: [http://127.0.0.1:1]
  - from: https://b.example.com
    to: [ftp://x]
    timeout: soon
    timout: 1s
  - to: [http://127.0.0.1:2]
    regex: "(unclosed"
"#,
        )
        .unwrap_err();
        let text = errs.to_string();
        for needle in [
            "timeout_read: invalid duration \"5 minutes\"",
            "codec_type: unknown codec \"http9\"",
            "drain_scope: unknown drain scope \"some\": use affected or all",
            "routes[1].to[0]: \"ftp://x\" must start with",
            "routes[1].timeout: invalid duration \"soon\"",
            "routes[1].timout: unknown field (did you mean \"timeout\"?)",
            "routes[2].from: is required",
            "routes[2].regex: invalid regular expression",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
        }
        assert_eq!(errs.0.len(), 8, "{text}");
    }

    #[test]
    fn route_keys_parse() {
        let c = parse(
            r#"
routes:
  - from: https://*.Example.com
    prefix: /api/
    to: ["http://10.0.0.1:80,3", {url: "h2c://svc:9000", weight: 2}, "https://[::1]"]
    timeout: 0
    idle_timeout: 1m
    allow_websockets: "true"
    set_request_headers: {X-A: b}
    remove_request_headers: [cookie]
    set_response_headers: {Strict-Transport-Security: max-age=1}
    regex_rewrite_pattern: "^/api/(.*)"
    regex_rewrite_substitution: "/\\1"
    load_balancing_policy: LEAST_REQUEST
"#,
        )
        .unwrap();
        let r = &c.routes[0];
        assert_eq!(r.host, HostMatch::Wildcard("example.com".into()));
        assert!(matches!(&r.path, PathMatch::Prefix(p) if p == "/api"));
        assert_eq!(r.to.len(), 3);
        assert_eq!(r.to[0].weight, 3);
        assert_eq!(r.to[1].scheme, UpstreamScheme::H2c);
        assert_eq!(r.to[2].authority, "[::1]:443");
        assert_eq!(r.timeout, Some(None));
        assert_eq!(r.idle_timeout, Some(Some(Duration::from_secs(60))));
        assert!(r.allow_websockets);
        assert_eq!(r.name, "*.example.com/api");
        assert_eq!(r.load_balancing_policy, LbPolicy::LeastRequest);
    }

    #[test]
    fn write_must_exceed_read() {
        let e = parse("timeout_read: 30s\ntimeout_write: 10s").unwrap_err();
        assert!(e.to_string().contains("timeout_write: must be greater than timeout_read (30s)"));
        assert!(parse("timeout_read: 30s\ntimeout_write: 0").is_ok());
    }

    #[test]
    fn duplicate_routes_are_rejected() {
        let e = parse(
            "routes:\n - {from: https://a.b, prefix: /x, to: http://h}\n - {from: https://A.b, prefix: /x/, to: http://h, name: other}",
        )
        .unwrap_err();
        assert!(e.to_string().contains("routes[1]: matches the same host and path as routes[0]"), "{e}");
    }

    #[test]
    fn hosts_and_addresses() {
        assert!(parse_from("https://a..b").is_err());
        assert!(parse_from("https://a.*.b").is_err());
        assert!(parse_from("https://a.b/path").is_err());
        assert_eq!(parse_from("https://a.b:8443").unwrap(), HostMatch::Exact("a.b".into()));
        assert_eq!(parse_listen_addr(":8443").unwrap().unwrap().to_string(), "0.0.0.0:8443");
        assert_eq!(parse_listen_addr("[::1]:80").unwrap().unwrap().to_string(), "[::1]:80");
        assert_eq!(parse_listen_addr("").unwrap(), None);
        assert!(parse_listen_addr("nope").is_err());
    }

    #[test]
    fn non_mapping_root_is_an_error_not_a_panic() {
        for doc in ["[1,2]", "42", "routes: 5", "routes: [5]", "certificates: [{cert_file: x}]"] {
            let v: Value = serde_yaml_ng::from_str(doc).unwrap();
            assert!(parse_config(&v, &NoMaterial).is_err(), "{doc}");
        }
    }
}
