//! Reads the loosely typed YAML tree of a standalone config into the validator's typed
//! inputs: each mapping through a [`MappingReader`], which records the keys it was asked
//! for so that the rest are reported as unknown, with a "did you mean" suggestion.
//!
//! Type errors (a list where a string belongs) are found here; what a value *means* is the
//! validator's business (`config::validate`). Files that fields refer to (`cert_file`, ...)
//! are read through a [`Material`], so that the PEM the validator gets was read by the source.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value};

use crate::config::fields::{KeyPath, RouteNames, ROUTE_OPTION_KEYS};
use crate::config::input::{
    CertificateInput, Destinations, Given, GrpcProbeInput, HashCookieInput, HealthCheckInput, HttpProbeInput,
    MtlsInput, OutlierInput, PayloadInput, Pem, Problems, RingSizeInput, RouteInput, SettingsInput, StatusRangeInput,
    TcpProbeInput, UpstreamInput, UNKNOWN_KEYS,
};
use crate::config::validate::{self, check_route_set, ConfigErrors, Errors};
use crate::config::{Config, Route};

/// Reads the material that config fields refer to (`cert_file`, `tls_custom_ca_file`, ...).
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

/// Parses YAML into the JSON-like tree the reader walks. YAML-only constructs (non-string
/// keys, tags) are reported rather than guessed at.
pub fn yaml_to_value(text: &str) -> Result<Value, String> {
    let yaml: serde_yaml_ng::Value = serde_yaml_ng::from_str(text).map_err(|e| format!("invalid YAML: {e}"))?;
    serde_json::to_value(yaml).map_err(|e| format!("unsupported YAML: {e}"))
}

/// A view of one mapping that remembers which keys were read, so that the rest can be
/// reported as unknown (with a suggestion) when it is finished.
pub struct MappingReader<'a> {
    path: KeyPath,
    map: &'a Map<String, Value>,
    known: Vec<&'static str>,
}

impl<'a> MappingReader<'a> {
    /// Starts reading `value` at `path`; records an error when it is not a mapping.
    pub fn new(path: &str, value: &'a Value, errs: &mut Errors) -> Option<Self> {
        match value {
            Value::Object(map) => Some(Self { path: KeyPath(path.to_owned()), map, known: Vec::new() }),
            other => {
                errs.push(path, format!("expected a mapping, found {}", kind_of(other)));
                None
            }
        }
    }

    /// Path of a child field.
    pub fn at(&self, key: &str) -> String {
        self.path.join(key)
    }

    /// Raw value of `key` (null counts as absent) and marks it known.
    pub fn get(&mut self, key: &'static str) -> Option<&'a Value> {
        self.known.push(key);
        self.map.get(key).filter(|v| !v.is_null())
    }

    /// Reads `key` with `read`, recording what is wrong with it in `problems` under the key.
    fn keyed<T>(
        &mut self,
        key: &'static str,
        problems: &mut Problems,
        read: impl FnOnce(&'a Value, &str, &mut Errors) -> Option<T>,
    ) -> Option<T> {
        let v = self.get(key)?;
        let mut found = Errors::default();
        let out = read(v, &self.at(key), &mut found);
        problems.add(key, None, found);
        out
    }

    /// A string field.
    pub fn string(&mut self, key: &'static str, problems: &mut Problems) -> Option<String> {
        self.keyed(key, problems, string)
    }

    /// A boolean field; the strings `"true"`/`"false"` are accepted (environment, annotations).
    pub fn boolean(&mut self, key: &'static str, problems: &mut Problems) -> Option<bool> {
        self.keyed(key, problems, boolean)
    }

    /// An unsigned integer field; numeric strings are accepted.
    pub fn uint(&mut self, key: &'static str, problems: &mut Problems) -> Option<u64> {
        self.keyed(key, problems, uint)
    }

    /// A Go duration field, as text for the validator (a YAML `0` is already a duration).
    pub fn duration(&mut self, key: &'static str, problems: &mut Problems) -> Option<Given<Duration>> {
        self.keyed(key, problems, duration)
    }

    /// A list field; a single scalar is accepted as a list of one.
    pub fn list(&mut self, key: &'static str, problems: &mut Problems) -> Option<Vec<&'a Value>> {
        self.keyed(key, problems, list)
    }

    /// A list of strings; a single string is a list of one.
    pub fn strings(&mut self, key: &'static str, problems: &mut Problems) -> Option<Vec<String>> {
        self.keyed(key, problems, |v, at, errs| Some(strings(v, at, errs)))
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

    /// As [`Self::finish`], into an input's problems (reported after its known fields).
    pub fn finish_into(self, problems: &mut Problems) {
        let mut found = Errors::default();
        self.finish(&mut found);
        problems.add(UNKNOWN_KEYS, None, found);
    }
}

fn string(v: &Value, at: &str, errs: &mut Errors) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        other => {
            errs.push(at, format!("expected a string, found {}", kind_of(other)));
            None
        }
    }
}

fn boolean(v: &Value, at: &str, errs: &mut Errors) -> Option<bool> {
    match v {
        Value::Bool(b) => Some(*b),
        Value::String(s) if s.eq_ignore_ascii_case("true") => Some(true),
        Value::String(s) if s.eq_ignore_ascii_case("false") => Some(false),
        other => {
            errs.push(at, format!("expected true or false, found {}", describe(other)));
            None
        }
    }
}

fn uint(v: &Value, at: &str, errs: &mut Errors) -> Option<u64> {
    let n = match v {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    };
    if n.is_none() {
        errs.push(at, format!("expected a non-negative integer, found {}", describe(v)));
    }
    n
}

fn duration(v: &Value, at: &str, errs: &mut Errors) -> Option<Given<Duration>> {
    match v {
        Value::String(s) => Some(Given::Text(s.clone())),
        Value::Number(n) if n.as_u64() == Some(0) => Some(Given::Parsed(Duration::ZERO)),
        other => {
            errs.push(at, format!("expected a Go duration string such as \"30s\", found {}", describe(other)));
            None
        }
    }
}

fn list<'a>(v: &'a Value, at: &str, errs: &mut Errors) -> Option<Vec<&'a Value>> {
    match v {
        Value::Array(items) => Some(items.iter().collect()),
        Value::Object(_) => {
            errs.push(at, "expected a list");
            None
        }
        scalar => Some(vec![scalar]),
    }
}

/// A string-to-string mapping, in key order; numbers and booleans are taken as their text.
fn string_map(v: &Value, at: &str, errs: &mut Errors) -> Option<Vec<(String, String)>> {
    let Value::Object(map) = v else {
        errs.push(at, format!("expected a mapping of names to values, found {}", kind_of(v)));
        return None;
    };
    let mut out = Vec::with_capacity(map.len());
    for (k, v) in map {
        match v {
            Value::String(s) => out.push((k.clone(), s.clone())),
            Value::Number(n) => out.push((k.clone(), n.to_string())),
            Value::Bool(b) => out.push((k.clone(), b.to_string())),
            other => errs.push(format!("{at}.{k}"), format!("expected a string, found {}", kind_of(other))),
        }
    }
    Some(out)
}

use crate::config::errors::value_kind as kind_of;

/// A scalar as written (strings quoted), anything else by its kind.
fn describe(v: &Value) -> String {
    match v {
        Value::String(s) => format!("{s:?}"),
        Value::Bool(_) | Value::Number(_) => v.to_string(),
        other => kind_of(other).to_owned(),
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
    "idp_provider_url",
    "idp_client_id",
    "jwks_url",
    "jwt_leeway",
    "cookie_name",
    "cookie_expire",
    "pass_identity_headers",
];

/// Parses a whole standalone-style document (global settings plus `routes`) into a config,
/// with errors named by their YAML path (`routes[3].timeout`).
pub fn parse_config(root: &Value, material: &dyn Material) -> Result<Config, ConfigErrors> {
    let mut errs = Errors::default();
    let empty = Value::Object(Map::new());
    let root = if root.is_null() { &empty } else { root };
    let Some(mut doc) = MappingReader::new("", root, &mut errs) else {
        return Err(ConfigErrors(errs.into_vec()));
    };
    let settings_input = read_settings(&mut doc, material);
    let settings = validate::settings(&settings_input, &KeyPath::default(), &mut errs);
    let mut routes: Vec<Route> = Vec::new();
    if let Some(items) = doc.get("routes").and_then(|v| list(v, "routes", &mut errs)) {
        for (i, item) in items.into_iter().enumerate() {
            if let Some(route) = parse_route(&format!("routes[{i}]"), item, material, &mut errs) {
                routes.push(route);
            }
        }
    }
    doc.finish(&mut errs);
    // Named by position among the valid routes, as the checks always have been: the same as
    // the source's index whenever these are the only errors (the config is rejected anyway
    // when some route was invalid).
    let names: Vec<KeyPath> = (0..routes.len()).map(|i| KeyPath(format!("routes[{i}]"))).collect();
    check_route_set(names.iter().map(|n| n as &dyn RouteNames).zip(&routes), &mut errs);
    if errs.is_empty() {
        Ok(Config { settings, routes: routes.into_iter().map(Arc::new).collect() })
    } else {
        Err(ConfigErrors(errs.into_vec()))
    }
}

/// Reads and validates one route mapping at `path` (the standalone `routes[i]`). `None` when
/// anything about it is wrong, every error recorded.
pub fn parse_route(path: &str, v: &Value, material: &dyn Material, errs: &mut Errors) -> Option<Route> {
    let before = errs.len();
    let mut m = MappingReader::new(path, v, errs)?;
    let input = read_route_fields(&mut m, material);
    let route = validate::route(&input, &KeyPath(path.to_owned()), errs);
    // Unknown keys come last, after what is wrong with the known ones.
    m.finish(errs);
    route.filter(|_| errs.len() == before)
}

/// Reads the global settings out of a mapping (the file root); the caller finishes it.
pub fn read_settings(m: &mut MappingReader<'_>, material: &dyn Material) -> SettingsInput {
    let mut p = Problems::default();
    let mut s = SettingsInput {
        address: m.string("address", &mut p),
        http_redirect_address: m.string("http_redirect_address", &mut p),
        metrics_address: m.string("metrics_address", &mut p),
        admin_address: m.string("admin_address", &mut p),
        insecure_server: m.boolean("insecure_server", &mut p),
        codec_type: m.string("codec_type", &mut p).map(Given::Text),
        http3_advertised_port: m.uint("http3_advertised_port", &mut p),
        timeout_read: m.duration("timeout_read", &mut p),
        timeout_write: m.duration("timeout_write", &mut p),
        timeout_idle: m.duration("timeout_idle", &mut p),
        default_upstream_timeout: m.duration("default_upstream_timeout", &mut p),
        drain_timeout: m.duration("drain_timeout", &mut p),
        drain_scope: m.string("drain_scope", &mut p).map(Given::Text),
        idp_provider_url: m.string("idp_provider_url", &mut p),
        idp_client_id: m.string("idp_client_id", &mut p),
        jwks_url: m.string("jwks_url", &mut p),
        jwt_leeway: m.duration("jwt_leeway", &mut p),
        authenticate_service_url: m.string("authenticate_service_url", &mut p),
        cookie_name: m.string("cookie_name", &mut p),
        cookie_expire: m.duration("cookie_expire", &mut p),
        pass_identity_headers: m.boolean("pass_identity_headers", &mut p),
        ..SettingsInput::default()
    };
    s.idp_scopes = m.strings("idp_scopes", &mut p);
    s.idp_client_secret = read_secret_field(m, "idp_client_secret", "idp_client_secret_file", material, &mut p);
    s.cookie_secret = read_secret_field(m, "cookie_secret", "cookie_secret_file", material, &mut p);
    s.signing_key = read_secret_field(m, "signing_key", "signing_key_file", material, &mut p);
    if let Some(v) = m.get("jwt_claims_headers") {
        let mut found = Errors::default();
        s.jwt_claims_headers = string_map(v, &m.at("jwt_claims_headers"), &mut found);
        p.add("jwt_claims_headers", None, found);
    }
    s.jwt_audiences = m.strings("jwt_audiences", &mut p);
    s.idp_ca = read_pem_field(m, "idp_ca", "idp_ca_file", material, &mut p);
    if let Some(items) = m.list("certificates", &mut p) {
        for (i, item) in items.into_iter().enumerate() {
            let mut found = Errors::default();
            s.certificates.push(read_certificate(
                &format!("{}[{i}]", m.at("certificates")),
                item,
                material,
                &mut found,
            ));
            p.add("certificates", Some(i), found);
        }
    }
    if let Some(v) = m.get("downstream_mtls") {
        let mut found = Errors::default();
        s.downstream_mtls = read_mtls(&m.at("downstream_mtls"), v, material, &mut found);
        p.add("downstream_mtls", None, found);
    }
    s.problems = p;
    s
}

fn read_certificate(path: &str, v: &Value, material: &dyn Material, errs: &mut Errors) -> Option<CertificateInput> {
    let mut m = MappingReader::new(path, v, errs)?;
    let mut input = CertificateInput::default();
    input.cert = read_pem_field(&mut m, "cert", "cert_file", material, &mut input.problems);
    input.key = read_pem_field(&mut m, "key", "key_file", material, &mut input.problems);
    m.finish_into(&mut input.problems);
    Some(input)
}

fn read_mtls(path: &str, v: &Value, material: &dyn Material, errs: &mut Errors) -> Option<MtlsInput> {
    let mut m = MappingReader::new(path, v, errs)?;
    let mut input = MtlsInput::default();
    input.ca = read_pem_field(&mut m, "ca", "ca_file", material, &mut input.problems);
    input.crl = read_pem_field(&mut m, "crl", "crl_file", material, &mut input.problems);
    input.enforcement = m.string("enforcement", &mut input.problems).map(Given::Text);
    input.max_verify_depth = m.uint("max_verify_depth", &mut input.problems);
    m.finish_into(&mut input.problems);
    Some(input)
}

/// Reads `inline_key` (PEM, or base64 of PEM) or `file_key` (a reference for [`Material`]).
/// Problems with either are recorded under `inline_key`.
/// A secret given inline (`key`) or in a file (`key_file`), as its text: never decoded,
/// never quoted in an error.
fn read_secret_field(
    m: &mut MappingReader<'_>,
    inline_key: &'static str,
    file_key: &'static str,
    material: &dyn Material,
    problems: &mut Problems,
) -> Option<Pem> {
    let mut found = Problems::default();
    let inline = m.string(inline_key, &mut found);
    let file = m.string(file_key, &mut found);
    let mut errs = Errors::default();
    let secret = match (inline, file) {
        (Some(_), Some(_)) => {
            errs.push(m.at(file_key), format!("set either {inline_key} or {file_key}, not both"));
            None
        }
        (Some(text), None) => Some(Pem { source: format!("inline {inline_key}"), bytes: text.into_bytes() }),
        (None, Some(file)) => match material.read(&file) {
            Ok(bytes) => Some(Pem { source: file, bytes }),
            Err(e) => {
                errs.push(m.at(file_key), e);
                None
            }
        },
        (None, None) => None,
    };
    let mut all = Errors::default();
    all.extend(found.about(inline_key, None).chain(found.about(file_key, None)));
    all.extend(errs.into_vec().iter());
    problems.add(inline_key, None, all);
    secret
}

fn read_pem_field(
    m: &mut MappingReader<'_>,
    inline_key: &'static str,
    file_key: &'static str,
    material: &dyn Material,
    problems: &mut Problems,
) -> Option<Pem> {
    let mut found = Problems::default();
    let inline = m.string(inline_key, &mut found);
    let file = m.string(file_key, &mut found);
    let mut errs = Errors::default();
    let pem = match (inline, file) {
        (Some(_), Some(_)) => {
            errs.push(m.at(file_key), format!("set either {inline_key} or {file_key}, not both"));
            None
        }
        (Some(text), None) => Some(Pem { source: format!("inline {inline_key}"), bytes: decode_pem_or_base64(&text) }),
        (None, Some(file)) => match material.read(&file) {
            Ok(bytes) => Some(Pem { source: file, bytes }),
            Err(e) => {
                errs.push(m.at(file_key), e);
                None
            }
        },
        (None, None) => None,
    };
    let mut all = Errors::default();
    all.extend(found.about(inline_key, None).chain(found.about(file_key, None)));
    all.extend(errs.into_vec().iter());
    problems.add(inline_key, None, all);
    pem
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

/// The route keys that hold one plain value (everything but the PEM pairs and `policy`), in
/// the order a route mapping is read: these, then [`ROUTE_OPTION_KEYS`].
const ROUTE_MATCH_KEYS: &[&str] = &["name", "from", "prefix", "path", "regex", "to"];

/// [`ROUTE_MATCH_KEYS`] and [`ROUTE_OPTION_KEYS`], in reading order.
fn route_value_keys() -> impl Iterator<Item = &'static str> {
    ROUTE_MATCH_KEYS.iter().chain(ROUTE_OPTION_KEYS).copied()
}

/// Reads one route mapping into a [`RouteInput`] (what is wrong recorded in its problems).
pub fn read_route(path: &str, v: &Value, material: &dyn Material, errs: &mut Errors) -> Option<RouteInput> {
    let mut m = MappingReader::new(path, v, errs)?;
    let mut input = read_route_fields(&mut m, material);
    m.finish_into(&mut input.problems);
    Some(input)
}

/// Reads the route keys of a mapping; the caller finishes it (reports unknown keys).
fn read_route_fields(m: &mut MappingReader<'_>, material: &dyn Material) -> RouteInput {
    let mut input = RouteInput::default();
    for key in route_value_keys() {
        if let Some(v) = m.get(key) {
            read_route_value(key, v, &m.at(key), &mut input);
        }
    }
    let mut p = std::mem::take(&mut input.problems);
    input.tls_custom_ca = read_pem_field(m, "tls_custom_ca", "tls_custom_ca_file", material, &mut p);
    input.tls_client_cert = read_pem_field(m, "tls_client_cert", "tls_client_cert_file", material, &mut p);
    input.tls_client_key = read_pem_field(m, "tls_client_key", "tls_client_key_file", material, &mut p);
    input.policy = m.get("policy").cloned();
    input.problems = p;
    input
}

/// Reads the value of one of [`route_value_keys`] into `input`, with what is wrong recorded
/// in its problems at `at`. Also what the Ingress translation uses for an annotation's value
/// (parsed from its text). Returns `false` for a key that is not one of them.
pub fn read_route_value(key: &str, v: &Value, at: &str, input: &mut RouteInput) -> bool {
    let Some(key) = route_value_keys().find(|k| *k == key) else { return false };
    let mut errs = Errors::default();
    let errs = &mut errs;
    let mut items = Problems::default();
    match key {
        "name" => input.name = string(v, at, errs),
        "from" => input.from = string(v, at, errs),
        "prefix" => input.prefix = string(v, at, errs),
        "path" => input.path = string(v, at, errs),
        "regex" => input.regex = string(v, at, errs),
        "to" => {
            input.to = list(v, at, errs).map(|entries| {
                Destinations::Listed(
                    entries
                        .iter()
                        .enumerate()
                        .map(|(i, entry)| {
                            read_upstream(entry)
                                .map_err(|e| {
                                    let mut found = Errors::default();
                                    found.push(format!("{at}[{i}]"), e);
                                    items.add(key, Some(i), found);
                                })
                                .ok()
                        })
                        .collect(),
                )
            });
        }
        "timeout" => input.timeout = duration(v, at, errs),
        "idle_timeout" => input.idle_timeout = duration(v, at, errs),
        "allow_websockets" => input.allow_websockets = boolean(v, at, errs),
        "preserve_host_header" => input.preserve_host_header = boolean(v, at, errs),
        "host_rewrite" => input.host_rewrite = string(v, at, errs),
        "prefix_rewrite" => input.prefix_rewrite = string(v, at, errs),
        "regex_rewrite_pattern" => input.regex_rewrite_pattern = string(v, at, errs),
        "regex_rewrite_substitution" => input.regex_rewrite_substitution = string(v, at, errs),
        "set_request_headers" => input.set_request_headers = string_map(v, at, errs).unwrap_or_default(),
        "set_response_headers" => input.set_response_headers = string_map(v, at, errs).unwrap_or_default(),
        "remove_request_headers" => {
            input.remove_request_headers = list(v, at, errs)
                .into_iter()
                .flatten()
                .enumerate()
                .map(|(i, item)| {
                    let name = item.as_str().map(str::to_owned);
                    if name.is_none() {
                        let mut found = Errors::default();
                        found.push(format!("{at}[{i}]"), format!("{} is not a valid header name", describe(item)));
                        items.add(key, Some(i), found);
                    }
                    name
                })
                .collect();
        }
        "tls_skip_verify" => input.tls_skip_verify = boolean(v, at, errs),
        "tls_server_name" => input.tls_server_name = string(v, at, errs),
        "load_balancing_policy" => input.load_balancing_policy = string(v, at, errs).map(Given::Text),
        "allow_public_unauthenticated_access" => {
            input.shorthand.public = boolean(v, at, errs).unwrap_or(false);
        }
        "allow_any_authenticated_user" => {
            input.shorthand.any_authenticated_user = boolean(v, at, errs).unwrap_or(false);
        }
        "pass_identity_headers" => input.pass_identity_headers = boolean(v, at, errs),
        "jwt_claims_headers" => input.jwt_claims_headers = string_map(v, at, errs),
        "allowed_users" => input.shorthand.users = strings(v, at, errs),
        "allowed_domains" => input.shorthand.domains = strings(v, at, errs),
        "allowed_idp_claims" => {
            if let Value::Object(map) = v {
                for (claim, values) in map {
                    let values = match values {
                        Value::String(s) => vec![s.clone()],
                        other => strings(other, &format!("{at}.{claim}"), errs),
                    };
                    input.shorthand.idp_claims.insert(claim.clone(), values);
                }
            } else {
                errs.push(at, format!("expected a mapping of claim names to values, found {}", kind_of(v)));
            }
        }
        "lb_hash_header" => input.lb_hash_header = string(v, at, errs),
        "lb_hash_cookie" => input.lb_hash_cookie = read_hash_cookie(at, v, errs),
        "ring_hash_lb_config" => input.ring_hash_lb_config = read_ring_size(at, v, errs),
        "healthy_panic_threshold" => input.healthy_panic_threshold = uint(v, at, errs),
        "outlier_detection" => input.outlier_detection = read_outlier(at, v, errs),
        "retries" => input.retries = uint(v, at, errs),
        "retry_on" => input.retry_on = Some(strings(v, at, errs)),
        "health_checks" => {
            input.health_checks = list(v, at, errs)
                .into_iter()
                .flatten()
                .enumerate()
                .map(|(i, item)| {
                    let mut found = Errors::default();
                    let check = read_health_check(&format!("{at}[{i}]"), item, &mut found);
                    items.add(key, Some(i), found);
                    check
                })
                .collect();
        }
        _ => unreachable!("every key of route_value_keys() is read above"),
    }
    input.problems.add(key, None, std::mem::take(errs));
    for (k, i, e) in items.into_entries() {
        let mut found = Errors::default();
        found.extend([&e]);
        input.problems.add(k, i, found);
    }
    true
}

/// A list of strings (a bare string is a list of one), each bad item reported.
fn strings(v: &Value, at: &str, errs: &mut Errors) -> Vec<String> {
    if let Value::String(s) = v {
        return vec![s.clone()];
    }
    list(v, at, errs)
        .into_iter()
        .flatten()
        .enumerate()
        .filter_map(|(i, item)| {
            let s = item.as_str().map(str::to_owned);
            if s.is_none() {
                errs.push(format!("{at}[{i}]"), format!("expected a string, found {}", kind_of(item)));
            }
            s
        })
        .collect()
}

fn read_upstream(v: &Value) -> Result<UpstreamInput, String> {
    match v {
        Value::String(s) => UpstreamInput::parse(s),
        Value::Object(m) => {
            let url = m.get("url").and_then(Value::as_str).ok_or("needs url")?.to_owned();
            let weight = match m.get("weight") {
                None => 1,
                Some(w) => w.as_u64().and_then(|w| u32::try_from(w).ok()).ok_or("weight must be a positive integer")?,
            };
            if let Some(k) = m.keys().find(|k| *k != "url" && *k != "weight") {
                return Err(format!("unknown field {k:?} (use url and weight)"));
            }
            Ok(UpstreamInput { url, weight })
        }
        other => Err(format!("expected an upstream URL, found {}", kind_of(other))),
    }
}

/// `lb_hash_cookie`: a mapping, or just the cookie's name.
fn read_hash_cookie(path: &str, v: &Value, errs: &mut Errors) -> Option<HashCookieInput> {
    if let Value::String(name) = v {
        return Some(HashCookieInput { name: Some(name.clone()), ..HashCookieInput::default() });
    }
    let mut m = MappingReader::new(path, v, errs)?;
    let mut input = HashCookieInput::default();
    let p = &mut input.problems;
    input.name = m.string("name", p);
    input.ttl = m.duration("ttl", p);
    input.path = m.string("path", p);
    m.finish_into(&mut input.problems);
    Some(input)
}

fn read_ring_size(path: &str, v: &Value, errs: &mut Errors) -> Option<RingSizeInput> {
    let mut m = MappingReader::new(path, v, errs)?;
    let mut input = RingSizeInput::default();
    let p = &mut input.problems;
    input.minimum_ring_size = m.uint("minimum_ring_size", p);
    input.maximum_ring_size = m.uint("maximum_ring_size", p);
    m.finish_into(&mut input.problems);
    Some(input)
}

fn read_outlier(path: &str, v: &Value, errs: &mut Errors) -> Option<OutlierInput> {
    let mut m = MappingReader::new(path, v, errs)?;
    let mut input = OutlierInput::default();
    let p = &mut input.problems;
    input.consecutive_5xx = m.uint("consecutive_5xx", p);
    input.consecutive_gateway_failure = m.uint("consecutive_gateway_failure", p);
    input.interval = m.duration("interval", p);
    input.base_ejection_time = m.duration("base_ejection_time", p);
    input.max_ejection_time = m.duration("max_ejection_time", p);
    input.max_ejection_percent = m.uint("max_ejection_percent", p);
    m.finish_into(&mut input.problems);
    Some(input)
}

/// One health check; `None` (the error in `errs`) when it is not a mapping. A probe that is
/// not a mapping is reported under its key and leaves the check without that probe.
#[allow(clippy::many_single_char_names)]
fn read_health_check(path: &str, v: &Value, errs: &mut Errors) -> Option<HealthCheckInput> {
    let mut m = MappingReader::new(path, v, errs)?;
    let mut input = HealthCheckInput::default();
    let p = &mut input.problems;
    input.interval = m.duration("interval", p);
    input.timeout = m.duration("timeout", p);
    input.unhealthy_threshold = m.uint("unhealthy_threshold", p);
    input.healthy_threshold = m.uint("healthy_threshold", p);
    // Each probe's own errors (paths included) are recorded under its key.
    let mut unreadable = false;
    let mut probe = |key: &'static str, read: &dyn Fn(&mut MappingReader<'_>, &mut Errors) -> ProbeInput| {
        let v = m.get(key)?;
        let mut found = Errors::default();
        let out = MappingReader::new(&m.at(key), v, &mut found).map(|mut r| {
            let out = read(&mut r, &mut found);
            r.finish(&mut found);
            out
        });
        unreadable |= out.is_none();
        input.problems.add(key, None, found);
        out
    };
    let http = probe("http_health_check", &|r, errs| {
        let mut found = Problems::default();
        let path = r.string("path", &mut found);
        let host = r.string("host", &mut found);
        let expected_statuses = r
            .list("expected_statuses", &mut found)
            .unwrap_or_default()
            .into_iter()
            .enumerate()
            .map(|(index, item)| {
                let at = format!("{}[{index}]", r.at("expected_statuses"));
                let mut entry = MappingReader::new(&at, item, errs)?;
                let mut seen = Problems::default();
                let range =
                    StatusRangeInput { start: entry.uint("start", &mut seen), end: entry.uint("end", &mut seen) };
                entry.finish_into(&mut seen);
                let ok = seen.is_empty();
                extend(errs, seen);
                ok.then_some(range)
            })
            .collect();
        extend(errs, found);
        ProbeInput::Http(HttpProbeInput { path, host, expected_statuses })
    });
    let tcp = probe("tcp_health_check", &|r, errs| {
        let send = r.get("send").and_then(|v| read_payload(&r.at("send"), v, errs));
        let mut found = Problems::default();
        let receive = r
            .list("receive", &mut found)
            .unwrap_or_default()
            .into_iter()
            .enumerate()
            .map(|(index, item)| read_payload(&format!("{}[{index}]", r.at("receive")), item, errs))
            .collect();
        extend(errs, found);
        ProbeInput::Tcp(TcpProbeInput { send, receive })
    });
    let grpc = probe("grpc_health_check", &|r, errs| {
        let mut found = Problems::default();
        let g = GrpcProbeInput {
            service_name: r.string("service_name", &mut found),
            authority: r.string("authority", &mut found),
        };
        extend(errs, found);
        ProbeInput::Grpc(g)
    });
    if unreadable {
        // A probe that is not a mapping: the check is that error alone.
        extend(errs, input.problems);
        return None;
    }
    let given = [&http, &tcp, &grpc].iter().filter(|p| p.is_some()).count();
    for p in [http, tcp, grpc].into_iter().flatten() {
        match p {
            ProbeInput::Http(h) => input.http = Some(h),
            ProbeInput::Tcp(t) => input.tcp = Some(t),
            ProbeInput::Grpc(g) => input.grpc = Some(g),
        }
    }
    // With more than one probe, or none, the validator rejects the check as a whole; its
    // other keys are not worth a second complaint.
    if given == 1 {
        m.finish_into(&mut input.problems);
    }
    Some(input)
}

/// A probe as read, before it goes into its field.
enum ProbeInput {
    Http(HttpProbeInput),
    Tcp(TcpProbeInput),
    Grpc(GrpcProbeInput),
}

/// An Envoy payload, `{text: HEX}` or `{binary: BASE64}` (which one is the validator's
/// business); `None` (the error in `errs`) when it is not a mapping or has a bad key.
fn read_payload(path: &str, v: &Value, errs: &mut Errors) -> Option<PayloadInput> {
    let mut m = MappingReader::new(path, v, errs)?;
    let mut found = Problems::default();
    let p = PayloadInput { text: m.string("text", &mut found), binary: m.string("binary", &mut found) };
    m.finish_into(&mut found);
    let ok = found.is_empty();
    extend(errs, found);
    ok.then_some(p)
}

/// Moves what a nested reader recorded into `errs`.
fn extend(errs: &mut Errors, found: Problems) {
    for (_, _, e) in found.into_entries() {
        errs.extend([&e]);
    }
}

#[cfg(test)]
#[allow(clippy::single_range_in_vec_init)]
mod tests {
    use super::*;
    use crate::config::{DrainScope, HostMatch, LbPolicy, PathMatch, Retries, UpstreamScheme};

    fn parse(yaml: &str) -> Result<Config, ConfigErrors> {
        let v: Value = serde_yaml_ng::from_str(yaml).unwrap();
        parse_config(&v, &NoMaterial)
    }

    #[test]
    fn a_route_policy_and_its_shorthand_keys_become_one_policy() {
        let c = parse(
            "
routes:
  - from: https://public.test
    to: [http://127.0.0.1:1]
  - from: https://app.test
    to: [http://127.0.0.1:1]
    policy:
      - allow: {and: [{domain: example.com}]}
      - deny: {or: [{http_method: DELETE}]}
    allowed_users: [alice@example.com]
    allowed_idp_claims: {org: acme, tier: [gold, silver]}
",
        )
        .unwrap();
        assert!(c.routes[0].policy.is_none(), "no policy: public");
        let p = c.routes[1].policy.as_ref().unwrap();
        assert_eq!(p.rules.len(), 4, "two rules, then one per shorthand key: {p:?}");
        assert_eq!(p.rules[1].action, crate::policy::Action::Deny);
    }

    #[test]
    fn policy_errors_name_their_path() {
        let e = parse(
            "
routes:
  - from: https://a.test
    to: [http://127.0.0.1:1]
  - from: https://b.test
    to: [http://127.0.0.1:1]
    policy:
      - allow: {and: [{email: {eq: x}}]}
    allowed_users: [1]
    allow_any_authenticated_user: yes please
",
        )
        .unwrap_err();
        let shown: Vec<String> = e.0.iter().map(ToString::to_string).collect();
        assert_eq!(
            shown,
            [
                r#"routes[1].allow_any_authenticated_user: expected true or false, found "yes please""#,
                "routes[1].allowed_users[0]: expected a string, found a number",
                r#"routes[1].policy[0].allow.and[0].email: unknown operator "eq": use is, not, starts_with, ends_with, contains, in or not_in"#,
            ],
        );
    }

    #[test]
    fn sign_in_settings_and_their_errors() {
        let base = "idp_provider_url: https://idp.example.com\nidp_client_id: app\nidp_client_secret: s3cret\n";
        let key = "KioqKioqKioqKioqKioqKioqKioqKioqKioqKioqKio=";
        let c = parse(&format!(
            "{base}cookie_secret: {key}\nroutes:\n - from: https://wiki.example.com\n   to: http://127.0.0.1:1\n"
        ))
        .unwrap();
        let sign_in = c.settings.identity_provider.as_ref().unwrap().sign_in.clone().unwrap();
        assert_eq!(sign_in.scopes, ["openid", "profile", "email", "offline_access"]);
        assert_eq!(
            (sign_in.cookie_name.as_str(), sign_in.cookie_expire),
            ("_portcullis", Duration::from_secs(14 * 3600))
        );
        assert_eq!(sign_in.cookie_secret.0, [42; 32]);
        assert_eq!(format!("{:?}", sign_in.client_secret), "<redacted>", "a secret never prints");
        assert!(!format!("{c:?}").contains("s3cret"), "nor does the whole config");
        let auth = c.authenticate_url().unwrap();
        assert_eq!(
            auth.origin(),
            "https://authenticate.example.com:8443",
            "Pomerium's default, on the listener's port"
        );
        let errs = |yaml: &str| parse(yaml).unwrap_err().0.iter().map(ToString::to_string).collect::<Vec<_>>();
        assert_eq!(
            errs(&format!("{base}routes: []")),
            ["cookie_secret: is required for sign-in: sessions are encrypted with it (make one with `head -c32 /dev/urandom | base64`)"]
        );
        assert_eq!(
            errs(&format!("{base}cookie_secret: c2hvcnQ=\nauthenticate_service_url: http://auth.example.com\ncookie_expire: 0\nroutes: []")),
            [
                "authenticate_service_url: \"http://auth.example.com\": must be https:// (the session cookie is Secure)",
                "cookie_secret: must be 32 random bytes in base64, not 5 bytes: make one with `head -c32 /dev/urandom | base64`",
                "cookie_expire: must be more than 0",
            ]
        );
        assert_eq!(
            errs("cookie_secret: x\nroutes: []"),
            ["cookie_secret: needs idp_provider_url: the issuer whose tokens are accepted"]
        );
        // The signing key: PEM or base64 of PEM, P-256 only; the message never quotes it.
        let errs_key = errs(&format!("{base}cookie_secret: {key}\nsigning_key: bm90IGEga2V5\nroutes: []"));
        assert_eq!(errs_key, ["signing_key: is not a PEM private key (nor base64 of one)"]);
        let c = parse(&format!("{base}cookie_secret: {key}\njwt_claims_headers: {{X-Email: email}}\npass_identity_headers: false\nroutes:\n - from: https://a.example.com\n   to: http://127.0.0.1:1\n   jwt_claims_headers: {{X-Groups: groups, Host: sub}}\n")).unwrap_err();
        assert_eq!(
            c.0.iter().map(ToString::to_string).collect::<Vec<_>>(),
            ["routes[0].jwt_claims_headers.Host: \"Host\" cannot carry a claim"]
        );
    }

    #[test]
    fn identity_provider_settings() {
        let c = parse(
            "idp_provider_url: https://idp.example.com/\nidp_client_id: app\njwt_audiences: [api, app]\nroutes: []",
        )
        .unwrap();
        let idp = c.settings.identity_provider.unwrap();
        assert_eq!(idp.issuer, "https://idp.example.com/");
        assert_eq!(idp.audiences, ["app", "api"], "client id first, no duplicates");
        assert_eq!(idp.leeway, Duration::from_secs(30));
        assert!(idp.jwks_url.is_none(), "discovery");
        let c = parse("idp_provider_url: http://127.0.0.1:5556\njwks_url: http://[::1]:5556/keys\njwt_audiences: api\njwt_leeway: 0s\nroutes: []").unwrap();
        let idp = c.settings.identity_provider.unwrap();
        assert_eq!((idp.client_id, idp.leeway), (None, Duration::ZERO));
        assert_eq!(idp.jwks_url.unwrap().to_string(), "http://[::1]:5556/keys");
        assert!(parse("routes: []").unwrap().settings.identity_provider.is_none());
        let errs = |yaml: &str| parse(yaml).unwrap_err().0.iter().map(ToString::to_string).collect::<Vec<_>>();
        assert_eq!(
            errs("jwks_url: https://idp.example.com/keys\nidp_client_id: app\nroutes: []"),
            [
                "idp_client_id: needs idp_provider_url: the issuer whose tokens are accepted",
                "jwks_url: needs idp_provider_url: the issuer whose tokens are accepted"
            ]
        );
        assert_eq!(
            errs("idp_provider_url: http://idp.example.com\nroutes: []"),
            [
                r#"idp_provider_url: "http://idp.example.com": use https:// (plain http:// only to a loopback address)"#,
                "idp_client_id: is required with idp_provider_url (or set jwt_audiences): a token is accepted only when its aud names this client"
            ]
        );
        assert_eq!(
            errs("idp_provider_url: idp.example.com\nidp_client_id: a\njwt_audiences: ['']\nroutes: []"),
            [
                r#"idp_provider_url: "idp.example.com" is not an absolute https:// URL"#,
                "jwt_audiences[0]: must not be empty"
            ]
        );
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
    fn load_balancing_keys_parse_with_envoy_defaults() {
        let c = parse(
            r"
routes:
  - from: https://a.example.com
    to: [http://127.0.0.1:1, http://127.0.0.1:2]
    load_balancing_policy: RING_HASH
    lb_hash_cookie: {name: sticky, ttl: 1h}
    ring_hash_lb_config: {minimum_ring_size: 1024}
    healthy_panic_threshold: 20
    outlier_detection: {}
    retries: 2
    retry_on: [5xx, reset]
  - from: https://b.example.com
    to: [http://127.0.0.1:1]
    load_balancing_policy: MAGLEV
    lb_hash_header: X-User
    outlier_detection: {consecutive_5xx: 0, base_ejection_time: 1s, max_ejection_percent: 50}
  - from: https://c.example.com
    to: [http://127.0.0.1:1]
",
        )
        .unwrap();
        let [a, b, c] = &c.routes[..] else { panic!("three routes") };
        assert_eq!(a.load_balancing_policy, LbPolicy::RingHash);
        assert_eq!(
            a.hash_on,
            crate::config::HashOn::Cookie(crate::config::HashCookie {
                name: "sticky".into(),
                ttl: Some(Duration::from_secs(3600)),
                path: "/".into()
            })
        );
        assert_eq!(a.ring_size, crate::config::RingSize { min: 1024, max: 8_388_608 });
        assert_eq!(a.healthy_panic_threshold, 20);
        assert_eq!(a.outlier_detection, Some(crate::config::OutlierDetection::default()));
        assert_eq!((a.retries.attempts, a.retries.on_5xx, a.retries.on_reset), (2, true, true));
        assert_eq!(b.hash_on, crate::config::HashOn::Header(http::HeaderName::from_static("x-user")));
        let o = b.outlier_detection.unwrap();
        assert_eq!((o.consecutive_5xx, o.consecutive_gateway_failure), (0, 5));
        assert_eq!((o.base_ejection_time, o.max_ejection_percent), (Duration::from_secs(1), 50));
        // Defaults: no outlier detection, one retry of what never left, panic below 50 %.
        assert_eq!((c.outlier_detection, c.retries, c.healthy_panic_threshold), (None, Retries::default(), 50));
        assert_eq!(c.hash_on, crate::config::HashOn::SourceIp);
    }

    #[test]
    fn load_balancing_errors_name_their_keys() {
        let errs = parse(
            r"
routes:
  - from: https://a.example.com
    to: [http://127.0.0.1:1]
    load_balancing_policy: CONSISTENT
  - from: https://b.example.com
    to: [http://127.0.0.1:1]
    lb_hash_header: X-User
    ring_hash_lb_config: {minimum_ring_size: 10}
    healthy_panic_threshold: 101
    retries: 9
    retry_on: [5xx, always]
  - from: https://c.example.com
    to: [http://127.0.0.1:1]
    load_balancing_policy: RING_HASH
    lb_hash_cookie: {ttl: soon, path: nope, colour: red}
    ring_hash_lb_config: {minimum_ring_size: 2048, maximum_ring_size: 1024}
    outlier_detection: {interval: 0, max_ejection_time: 1s, max_ejection_percent: 200, consecutive5xx: 1}
  - from: tcp+https://d.example.com:22
    to: [tcp://127.0.0.1:22]
    load_balancing_policy: MAGLEV
    lb_hash_cookie: sticky
    retry_on: [reset]
",
        )
        .unwrap_err();
        let text = errs.to_string();
        for needle in [
            "routes[0].load_balancing_policy: unsupported policy \"CONSISTENT\": use ROUND_ROBIN, RANDOM, LEAST_REQUEST, RING_HASH or MAGLEV",
            "routes[1].lb_hash_header: has effect only with load_balancing_policy RING_HASH or MAGLEV",
            "routes[1].ring_hash_lb_config: has effect only with load_balancing_policy RING_HASH",
            "routes[1].healthy_panic_threshold: 101 is not a percentage (0 to 100)",
            "routes[1].retries: 9 is more than 5",
            "routes[1].retry_on[1]: unknown retry condition \"always\": use 5xx, gateway-error or reset",
            "routes[2].lb_hash_cookie.ttl: invalid duration \"soon\"",
            "routes[2].lb_hash_cookie.path: \"nope\" is not a cookie path",
            "routes[2].lb_hash_cookie.colour: unknown field",
            "routes[2].lb_hash_cookie.name: is required",
            "routes[2].ring_hash_lb_config: minimum_ring_size 2048 exceeds maximum_ring_size 1024",
            "routes[2].outlier_detection.interval: must be more than 0",
            "routes[2].outlier_detection.max_ejection_time: 1s is less than base_ejection_time 30s",
            "routes[2].outlier_detection.max_ejection_percent: 200 is not a percentage",
            "routes[2].outlier_detection.consecutive5xx: unknown field (did you mean \"consecutive_5xx\"?)",
            "routes[3].lb_hash_cookie: has no meaning on a tcp+ tunnel route",
            "routes[3].retry_on: has no meaning on a tcp+ tunnel route",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
        }
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
    fn health_checks_read_in_envoy_shapes() {
        use crate::config::HealthCheckKind;
        let c = parse(
            "routes:
 - from: https://a.test
   to: [h2c://10.0.0.1:50051, https://10.0.0.2:443]
   health_checks:
     - {interval: 1s, timeout: 500ms, http_health_check: {path: /healthz, host: health.internal, expected_statuses: [{start: 200, end: 300}, {start: 418, end: \"419\"}]}}
     - {http_health_check: {}}
     - tcp_health_check: {send: {text: \"50494e47\"}, receive: [{text: 504f4e47}, {binary: T0s=}]}
     - {tcp_health_check: {}}
     - {grpc_health_check: {service_name: app, authority: grpc.internal:50051}}
     - {grpc_health_check: {}}
",
        )
        .unwrap();
        let kinds: Vec<&HealthCheckKind> = c.routes[0].health_checks.iter().map(|h| &h.kind).collect();
        assert_eq!(c.routes[0].health_checks[0].interval, Duration::from_secs(1));
        assert_eq!(
            kinds,
            [
                &HealthCheckKind::Http {
                    path: "/healthz".into(),
                    host: Some("health.internal".into()),
                    expected_statuses: vec![200..300, 418..419]
                },
                &HealthCheckKind::Http {
                    path: "/".into(),
                    host: None,
                    expected_statuses: vec![crate::config::DEFAULT_EXPECTED_STATUSES]
                },
                &HealthCheckKind::Tcp { send: Some(b"PING".to_vec()), receive: vec![b"PONG".to_vec(), b"OK".to_vec()] },
                &HealthCheckKind::Tcp { send: None, receive: vec![] },
                &HealthCheckKind::Grpc { service_name: "app".into(), authority: Some("grpc.internal:50051".into()) },
                &HealthCheckKind::Grpc { service_name: String::new(), authority: None },
            ]
        );
    }

    #[test]
    fn health_check_errors_are_named_and_reported_together() {
        let errs = parse(
            "routes:
 - from: https://a.test
   to: [http://10.0.0.1:80]
   health_checks:
     - {http_health_check: {path: x, host: \"a b\", expected_statuses: [{start: 300, end: 200}, {start: 99, end: 200}, {start: 200}, {begin: 1}]}}
     - {tcp_health_check: {send: {text: 5g}, receive: [{binary: \"!!\"}, {text: ab, binary: qw==}, {}, x]}}
     - {grpc_health_check: {service_name: app, authority: \"user@host\", extra: 1}}
     - {http_health_check: {}, grpc_health_check: {}}
     - {}
     - {tcp_health_check: 1}
 - from: tcp+https://db.test:5432
   to: tcp://10.0.0.5:5432
   health_checks: [{grpc_health_check: {}}, {tcp_health_check: {}}]
",
        )
        .unwrap_err();
        let got: Vec<String> = errs.0.iter().map(ToString::to_string).collect();
        let h = "routes[0].health_checks";
        let expected = [
            format!("{h}[0].http_health_check.expected_statuses[3].begin: unknown field"),
            format!("{h}[0].http_health_check.path: must start with /"),
            format!("{h}[0].http_health_check.host: \"a b\" is not a valid authority (host or host:port)"),
            format!("{h}[0].http_health_check.expected_statuses[0]: start 300 must be below end 200 (the end is exclusive)"),
            format!("{h}[0].http_health_check.expected_statuses[1]: 99..200 is outside the HTTP statuses (start 100 to 599, end up to 600)"),
            format!("{h}[0].http_health_check.expected_statuses[2]: needs start and end"),
            format!("{h}[1].tcp_health_check.receive[3]: expected a mapping, found a string"),
            format!("{h}[1].tcp_health_check.send.text: \"5g\" is not hex"),
            format!("{h}[1].tcp_health_check.receive[0].binary: is not base64"),
            format!("{h}[1].tcp_health_check.receive[1]: set exactly one of text (hex) and binary (base64)"),
            format!("{h}[1].tcp_health_check.receive[2]: set exactly one of text (hex) and binary (base64)"),
            format!("{h}[2].grpc_health_check.extra: unknown field"),
            format!("{h}[2].grpc_health_check.authority: \"user@host\" is not a valid authority"),
            format!("{h}[2].grpc_health_check: grpc_health_check needs h2c:// or https:// upstreams"),
            format!("{h}[3]: set exactly one of http_health_check, tcp_health_check and grpc_health_check"),
            format!("{h}[4]: set exactly one of http_health_check, tcp_health_check and grpc_health_check"),
            format!("{h}[5].tcp_health_check: expected a mapping, found a number"),
            "routes[1].health_checks[0]: a gRPC check cannot probe a tunnel's upstream; use tcp_health_check".to_owned(),
        ];
        for e in &expected {
            assert!(got.iter().any(|g| g.starts_with(e.as_str())), "{e:?} in {got:#?}");
        }
        assert_eq!(got.len(), expected.len(), "{got:#?}");
    }

    #[test]
    fn non_mapping_root_is_an_error_not_a_panic() {
        for doc in ["[1,2]", "42", "routes: 5", "routes: [5]", "certificates: [{cert_file: x}]"] {
            let v: Value = serde_yaml_ng::from_str(doc).unwrap();
            assert!(parse_config(&v, &NoMaterial).is_err(), "{doc}");
        }
    }
}
