//! The one validator: turns typed inputs ([`super::input`]) into the domain model,
//! collecting *every* error with the path of the field that caused it, in the source's own
//! spelling ([`super::fields`]).
//!
//! Everything that reaches the data plane passes through here, so the rules live in one
//! place: the standalone file, `portcullis check` and the Kubernetes translation all agree.
//! No I/O happens here: sources read files and Secrets and hand over PEM.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use http::{HeaderName, HeaderValue};
use regex::Regex;

pub use super::errors::{ConfigErrors, Errors, FieldError};

use super::claims::Claims;
use super::duration;
use super::fields::{HealthCheckField, RouteField, RouteNames, SettingsField, SettingsNames};
use super::input::{
    CertificateInput, Destinations, Given, HealthCheckInput, MtlsInput, OutlierInput, PayloadInput, RouteInput,
    SettingsInput, UpstreamInput, UNKNOWN_KEYS,
};
use super::model::{
    Certificate, ClientCert, CodecType, DownstreamMtls, DrainScope, HashCookie, HashOn, HealthCheck, HealthCheckKind,
    HostMatch, IdentityHeaders, IdentityProvider, LbPolicy, MtlsEnforcement, OutlierDetection, PathMatch, Retries,
    RingSize, Route, Secret, ServiceUrl, Settings, SignIn, Tunnel, TunnelProtocol, Upstream, UpstreamScheme,
    UpstreamTls,
};
use crate::pki::{build_certificate, parse_certs, parse_crls, parse_private_key};

/// A duration as set: `None` when not set, `Some(None)` for an explicit `0` (disabled), the
/// convention of [`Route::timeout`].
#[allow(clippy::option_option)]
fn duration_of(
    given: Option<&Given<Duration>>,
    at: impl FnOnce() -> String,
    errs: &mut Errors,
) -> Option<Option<Duration>> {
    let d = match given? {
        Given::Parsed(d) => *d,
        Given::Text(s) => match duration::parse(s) {
            Ok(d) => d,
            Err(e) => {
                errs.push(at(), e.to_string());
                return None;
            }
        },
    };
    Some((!d.is_zero()).then_some(d))
}

/// A typed choice, or its text parsed by `parse` (which says what is allowed).
fn choice<T: Copy>(
    given: Option<&Given<T>>,
    parse: impl FnOnce(&str) -> Result<T, String>,
    at: impl FnOnce() -> String,
    errs: &mut Errors,
) -> Option<T> {
    match given? {
        Given::Parsed(v) => Some(*v),
        Given::Text(s) => parse(s).map_err(|e| errs.push(at(), e)).ok(),
    }
}

/// Validates the global settings. Unset fields keep their defaults.
pub fn settings(input: &SettingsInput, names: &dyn SettingsNames, errs: &mut Errors) -> Settings {
    let mut s = Settings::default();
    let found = |key, errs: &mut Errors| errs.extend(input.problems.about(key, None));
    found("address", errs);
    if let Some(v) = &input.address {
        match parse_listen_addr(v) {
            Ok(Some(a)) => s.address = a,
            Ok(None) => errs.push(names.name(SettingsField::Address), "must not be empty"),
            Err(e) => errs.push(names.name(SettingsField::Address), e),
        }
    }
    for (key, field, value, slot) in [
        (
            "http_redirect_address",
            SettingsField::HttpRedirectAddress,
            &input.http_redirect_address,
            &mut s.http_redirect_address,
        ),
        ("metrics_address", SettingsField::MetricsAddress, &input.metrics_address, &mut s.metrics_address),
        ("admin_address", SettingsField::AdminAddress, &input.admin_address, &mut s.admin_address),
    ] {
        found(key, errs);
        if let Some(v) = value {
            match parse_listen_addr(v) {
                Ok(a) => *slot = a,
                Err(e) => errs.push(names.name(field), e),
            }
        }
    }
    found("insecure_server", errs);
    if let Some(b) = input.insecure_server {
        s.insecure_server = b;
    }
    found("codec_type", errs);
    if let Some(c) = choice(input.codec_type.as_ref(), parse_codec, || names.name(SettingsField::CodecType), errs) {
        s.codec_type = c;
    }
    found("http3_advertised_port", errs);
    if let Some(p) = input.http3_advertised_port {
        match u16::try_from(p) {
            Ok(p) if p > 0 => s.http3_advertised_port = Some(p),
            _ => errs.push(names.name(SettingsField::Http3AdvertisedPort), format!("{p} is not a port (1-65535)")),
        }
    }
    let timeout = |key, given: &Option<Given<Duration>>, field, errs: &mut Errors| {
        found(key, errs);
        duration_of(given.as_ref(), || names.name(field), errs)
    };
    if let Some(d) = timeout("timeout_read", &input.timeout_read, SettingsField::TimeoutRead, errs) {
        s.timeouts.read = d;
    }
    if let Some(d) = timeout("timeout_write", &input.timeout_write, SettingsField::TimeoutWrite, errs) {
        s.timeouts.write = d;
    }
    if let Some(d) = timeout("timeout_idle", &input.timeout_idle, SettingsField::TimeoutIdle, errs) {
        s.timeouts.idle = d;
    }
    if let (Some(r), Some(w)) = (s.timeouts.read, s.timeouts.write) {
        if w <= r {
            errs.push(
                names.name(SettingsField::TimeoutWrite),
                format!(
                    "must be greater than timeout_read ({}) because it covers the whole request and response; use 0 to disable it",
                    duration::format(r)
                ),
            );
        }
    }
    if let Some(d) = timeout(
        "default_upstream_timeout",
        &input.default_upstream_timeout,
        SettingsField::DefaultUpstreamTimeout,
        errs,
    ) {
        s.default_upstream_timeout = d;
    }
    if let Some(d) = timeout("drain_timeout", &input.drain_timeout, SettingsField::DrainTimeout, errs) {
        s.drain_timeout = d.unwrap_or(Duration::ZERO);
    }
    found("drain_scope", errs);
    if let Some(d) =
        choice(input.drain_scope.as_ref(), parse_drain_scope, || names.name(SettingsField::DrainScope), errs)
    {
        s.drain_scope = d;
    }
    found("certificates", errs);
    for (i, c) in input.certificates.iter().enumerate() {
        errs.extend(input.problems.about("certificates", Some(i)));
        if let Some(c) = c.as_ref().and_then(|c| certificate(c, &names.name(SettingsField::Certificate(i)), errs)) {
            s.certificates.push(c);
        }
    }
    found("downstream_mtls", errs);
    if let Some(m) = &input.downstream_mtls {
        s.downstream_mtls = mtls(m, names, errs);
    }
    s.identity_provider = identity_provider(input, names, errs);
    s.identity_headers = identity_headers(input, names, errs);
    s
}

/// `signing_key`, `pass_identity_headers` and `jwt_claims_headers`.
fn identity_headers(input: &SettingsInput, names: &dyn SettingsNames, errs: &mut Errors) -> IdentityHeaders {
    for key in ["signing_key", "pass_identity_headers", "jwt_claims_headers"] {
        errs.extend(input.problems.about(key, None));
    }
    let signing_key = input.signing_key.as_ref().and_then(|pem| match signing_key(&pem.bytes) {
        Ok(der) => Some(Secret(der)),
        Err(e) => {
            errs.push(names.name(SettingsField::SigningKey), e);
            None
        }
    });
    let mut claims_headers = Vec::new();
    for (header, claim) in input.jwt_claims_headers.iter().flatten() {
        let at = || format!("{}.{header}", names.name(SettingsField::JwtClaimsHeaders));
        if let Some(h) = claims_header(header, claim, at, errs) {
            claims_headers.push(h);
        }
    }
    IdentityHeaders { signing_key, pass: input.pass_identity_headers, claims_headers }
}

/// A P-256 private key (SEC1 `EC PRIVATE KEY` or PKCS#8), PEM or base64 of PEM as
/// Pomerium's `signing_key`, as PKCS#8 DER. The message never quotes the key.
pub fn signing_key(bytes: &[u8]) -> Result<Vec<u8>, String> {
    use aws_lc_rs::signature::{EcdsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
    use rustls_pki_types::pem::PemObject as _;
    let pem = decode_secret_text(bytes);
    let der = rustls_pki_types::PrivateKeyDer::from_pem_slice(&pem)
        .map_err(|_| "is not a PEM private key (nor base64 of one)".to_owned())?;
    let pair = EcdsaKeyPair::from_private_key_der(&ECDSA_P256_SHA256_FIXED_SIGNING, der.secret_der())
        .map_err(|_| "is not a P-256 (prime256v1) ECDSA key: make one with `openssl ecparam -genkey -name prime256v1 -noout | base64 -w0`".to_owned())?;
    let pkcs8 = pair.to_pkcs8v1().map_err(|_| "cannot be encoded as PKCS#8".to_owned())?;
    Ok(pkcs8.as_ref().to_vec())
}

/// PEM text as given, or decoded from base64 when it is not PEM yet.
fn decode_secret_text(bytes: &[u8]) -> Vec<u8> {
    use base64::Engine as _;
    let trimmed = bytes.trim_ascii();
    if trimmed.starts_with(b"-----") {
        return trimmed.to_vec();
    }
    let compact: Vec<u8> = trimmed.iter().copied().filter(|b| !b.is_ascii_whitespace()).collect();
    base64::engine::general_purpose::STANDARD.decode(&compact).unwrap_or_else(|_| trimmed.to_vec())
}

/// `cookie_secret`: base64 (standard or URL-safe, padded or not) of exactly 32 bytes.
pub fn cookie_secret(bytes: &[u8]) -> Result<[u8; 32], String> {
    use base64::Engine as _;
    let text: Vec<u8> = bytes.iter().copied().filter(|b| !b.is_ascii_whitespace()).collect();
    let engines = [
        &base64::engine::general_purpose::STANDARD,
        &base64::engine::general_purpose::STANDARD_NO_PAD,
        &base64::engine::general_purpose::URL_SAFE,
        &base64::engine::general_purpose::URL_SAFE_NO_PAD,
    ];
    let decoded = engines.iter().find_map(|e| e.decode(&text).ok());
    match decoded {
        Some(key) if key.len() == 32 => Ok(key.try_into().expect("checked length")),
        Some(key) => Err(format!(
            "must be 32 random bytes in base64, not {} bytes: make one with `head -c32 /dev/urandom | base64`",
            key.len()
        )),
        None => Err("is not base64: make one with `head -c32 /dev/urandom | base64`".to_owned()),
    }
}

/// The default `idp_scopes`: refresh tokens (`offline_access`) let a session outlive its ID
/// token without sending the user to the provider again.
pub const DEFAULT_SCOPES: &[&str] = &["openid", "profile", "email", "offline_access"];
/// The default `cookie_expire`, as Pomerium's.
pub const DEFAULT_COOKIE_EXPIRE: Duration = Duration::from_secs(14 * 3600);
/// The default `cookie_name`.
pub const DEFAULT_COOKIE_NAME: &str = "_portcullis";

/// Browser sign-in: on with `idp_client_secret`, which needs `idp_client_id` and a
/// `cookie_secret`; the cookie and sign-in keys alone are mistakes.
fn sign_in(input: &SettingsInput, names: &dyn SettingsNames, has_client_id: bool, errs: &mut Errors) -> Option<SignIn> {
    let name = |f| names.name(f);
    let Some(secret) = &input.idp_client_secret else {
        for (set, field) in [
            (input.idp_scopes.is_some(), SettingsField::IdpScopes),
            (input.authenticate_service_url.is_some(), SettingsField::AuthenticateServiceUrl),
            (input.cookie_secret.is_some(), SettingsField::CookieSecret),
        ] {
            if set {
                errs.push(
                    name(field),
                    format!("needs {}: browser sign-in is off without it", name(SettingsField::IdpClientSecret)),
                );
            }
        }
        return None;
    };
    let before = errs.len();
    let client_secret = String::from_utf8_lossy(secret.bytes.trim_ascii()).into_owned();
    if client_secret.is_empty() {
        errs.push(name(SettingsField::IdpClientSecret), "is empty");
    }
    if !has_client_id {
        errs.push(name(SettingsField::IdpClientId), "is required for sign-in: it names this client to the provider");
    }
    let mut scopes: Vec<String> = Vec::new();
    for (i, sc) in input.idp_scopes.iter().flatten().enumerate() {
        let sc = sc.trim();
        if sc.is_empty() || sc.contains(char::is_whitespace) {
            errs.push(format!("{}[{i}]", name(SettingsField::IdpScopes)), format!("{sc:?} is not a scope"));
        } else if !scopes.iter().any(|s| s == sc) {
            scopes.push(sc.to_owned());
        }
    }
    if input.idp_scopes.is_none() {
        scopes = DEFAULT_SCOPES.iter().map(|s| (*s).to_owned()).collect();
    } else if !scopes.iter().any(|s| s == "openid") {
        scopes.insert(0, "openid".to_owned());
    }
    let authenticate_url = input
        .authenticate_service_url
        .as_deref()
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .and_then(|v| service_url(v).map_err(|e| errs.push(name(SettingsField::AuthenticateServiceUrl), e)).ok());
    let cookie_name = match input.cookie_name.as_deref().map(str::trim) {
        None | Some("") => DEFAULT_COOKIE_NAME.to_owned(),
        Some(n) if n.bytes().all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b)) => n.to_owned(),
        Some(n) => {
            errs.push(name(SettingsField::CookieName), format!("{n:?}: use letters, digits, '_', '-' and '.' only"));
            String::new()
        }
    };
    let cookie_secret = if let Some(pem) = &input.cookie_secret {
        cookie_secret(&pem.bytes).map_err(|e| errs.push(name(SettingsField::CookieSecret), e)).ok()
    } else {
        errs.push(
            name(SettingsField::CookieSecret),
            "is required for sign-in: sessions are encrypted with it (make one with `head -c32 /dev/urandom | base64`)",
        );
        None
    };
    let cookie_expire = match duration_of(input.cookie_expire.as_ref(), || name(SettingsField::CookieExpire), errs) {
        None => DEFAULT_COOKIE_EXPIRE,
        Some(Some(d)) => d,
        Some(None) => {
            errs.push(name(SettingsField::CookieExpire), "must be more than 0");
            DEFAULT_COOKIE_EXPIRE
        }
    };
    (errs.len() == before).then(|| SignIn {
        client_secret: Secret(client_secret),
        scopes,
        authenticate_url,
        cookie_name,
        cookie_secret: Secret(cookie_secret.expect("no error, so set")),
        cookie_expire,
    })
}

/// `authenticate_service_url`: `https://host[:port]`, nothing after the authority.
fn service_url(v: &str) -> Result<ServiceUrl, String> {
    let uri: http::Uri = v.parse().map_err(|_| format!("{v:?} is not a URL"))?;
    if uri.scheme_str() != Some("https") {
        return Err(format!("{v:?}: must be https:// (the session cookie is Secure)"));
    }
    if uri.path_and_query().is_some_and(|pq| pq.as_str() != "/") {
        return Err(format!("{v:?}: give the origin only, without a path"));
    }
    let host = uri.host().unwrap_or_default().to_ascii_lowercase();
    if host.is_empty() || host.starts_with('*') {
        return Err(format!("{v:?} names no host"));
    }
    let port = uri.port_u16().filter(|p| *p != 443);
    Ok(ServiceUrl { host, port })
}

/// The identity provider keys: `idp_provider_url` is the issuer and the root of discovery;
/// `jwks_url` skips discovery; `idp_client_id` and `jwt_audiences` are what `aud` may say.
fn identity_provider(input: &SettingsInput, names: &dyn SettingsNames, errs: &mut Errors) -> Option<IdentityProvider> {
    for key in [
        "idp_provider_url",
        "idp_client_id",
        "jwks_url",
        "jwt_audiences",
        "jwt_leeway",
        "idp_ca",
        "idp_client_secret",
        "idp_scopes",
        "authenticate_service_url",
        "cookie_name",
        "cookie_secret",
        "cookie_expire",
    ] {
        errs.extend(input.problems.about(key, None));
    }
    let name = |f| names.name(f);
    let nonempty = |v: &Option<String>| v.as_deref().map(str::trim).filter(|v| !v.is_empty()).map(str::to_owned);
    let issuer = nonempty(&input.idp_provider_url);
    let client_id = nonempty(&input.idp_client_id);
    let jwks = nonempty(&input.jwks_url);
    let leeway = duration_of(input.jwt_leeway.as_ref(), || name(SettingsField::JwtLeeway), errs);
    let Some(issuer) = issuer else {
        // Everything else describes the provider: alone it is a mistake, not a no-op.
        for (set, field) in [
            (client_id.is_some(), SettingsField::IdpClientId),
            (jwks.is_some(), SettingsField::JwksUrl),
            (input.jwt_audiences.as_ref().is_some_and(|a| !a.is_empty()), SettingsField::JwtAudiences),
            (input.idp_ca.is_some(), SettingsField::IdpCa),
            (input.idp_client_secret.is_some(), SettingsField::IdpClientSecret),
            (input.cookie_secret.is_some(), SettingsField::CookieSecret),
            (input.authenticate_service_url.is_some(), SettingsField::AuthenticateServiceUrl),
        ] {
            if set {
                errs.push(
                    name(field),
                    format!("needs {}: the issuer whose tokens are accepted", name(SettingsField::IdpProviderUrl)),
                );
            }
        }
        return None;
    };
    let before = errs.len();
    if let Err(e) = provider_url(&issuer) {
        errs.push(name(SettingsField::IdpProviderUrl), e);
    }
    let jwks_url = jwks.and_then(|u| match provider_url(&u) {
        Ok(uri) => Some(uri),
        Err(e) => {
            errs.push(name(SettingsField::JwksUrl), e);
            None
        }
    });
    let mut audiences: Vec<String> = client_id.iter().cloned().collect();
    for (i, a) in input.jwt_audiences.iter().flatten().enumerate() {
        if a.trim().is_empty() {
            errs.push(format!("{}[{i}]", name(SettingsField::JwtAudiences)), "must not be empty");
        } else if !audiences.contains(a) {
            audiences.push(a.clone());
        }
    }
    if audiences.is_empty() {
        errs.push(
            name(SettingsField::IdpClientId),
            "is required with idp_provider_url (or set jwt_audiences): a token is accepted only when its aud names this client",
        );
    }
    let ca = match &input.idp_ca {
        Some(pem) => parse_certs(&pem.bytes).map_err(|e| errs.push(name(SettingsField::IdpCa), e)).unwrap_or_default(),
        None => Vec::new(),
    };
    let sign_in = sign_in(input, names, client_id.is_some(), errs);
    (errs.len() == before).then(|| IdentityProvider {
        issuer,
        jwks_url,
        client_id,
        audiences,
        leeway: leeway.map_or(DEFAULT_JWT_LEEWAY, |d| d.unwrap_or(Duration::ZERO)),
        ca,
        sign_in,
    })
}

/// Clock skew allowed on a token's `exp` and `nbf` unless `jwt_leeway` says otherwise.
pub const DEFAULT_JWT_LEEWAY: Duration = Duration::from_secs(30);

/// An identity provider's URL: absolute `https://`, or `http://` to a loopback address only
/// (keys fetched in clear text from anywhere else could be replaced on the way).
pub fn provider_url(v: &str) -> Result<http::Uri, String> {
    let uri: http::Uri = v.parse().map_err(|_| format!("{v:?} is not a URL"))?;
    let host = uri.host().unwrap_or_default();
    match uri.scheme_str() {
        Some("https") if !host.is_empty() => Ok(uri),
        Some("http") if is_loopback_host(host) => Ok(uri),
        Some("http") => Err(format!("{v:?}: use https:// (plain http:// only to a loopback address)")),
        _ => Err(format!("{v:?} is not an absolute https:// URL")),
    }
}

fn is_loopback_host(host: &str) -> bool {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost") || bare.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

fn parse_codec(v: &str) -> Result<CodecType, String> {
    match v.to_ascii_lowercase().as_str() {
        "auto" | "" => Ok(CodecType::Auto),
        "http1" => Ok(CodecType::Http1),
        "http2" => Ok(CodecType::Http2),
        "http3" => Ok(CodecType::Http3),
        _ => Err(format!("unknown codec {v:?}: use auto, http1, http2 or http3")),
    }
}

fn parse_drain_scope(v: &str) -> Result<DrainScope, String> {
    match v {
        "affected" => Ok(DrainScope::Affected),
        "all" => Ok(DrainScope::All),
        _ => Err(format!("unknown drain scope {v:?}: use affected or all")),
    }
}

fn parse_enforcement(v: &str) -> Result<MtlsEnforcement, String> {
    match v {
        "policy_with_default_deny" => Ok(MtlsEnforcement::PolicyWithDefaultDeny),
        "policy" => Ok(MtlsEnforcement::Policy),
        "reject_connection" => Ok(MtlsEnforcement::RejectConnection),
        other => Err(format!("unknown mode {other:?}: use policy_with_default_deny, policy or reject_connection")),
    }
}

fn parse_lb_policy(v: &str) -> Result<LbPolicy, String> {
    match v {
        "ROUND_ROBIN" => Ok(LbPolicy::RoundRobin),
        "RANDOM" => Ok(LbPolicy::Random),
        "LEAST_REQUEST" => Ok(LbPolicy::LeastRequest),
        "RING_HASH" => Ok(LbPolicy::RingHash),
        "MAGLEV" => Ok(LbPolicy::Maglev),
        other => {
            Err(format!("unsupported policy {other:?}: use ROUND_ROBIN, RANDOM, LEAST_REQUEST, RING_HASH or MAGLEV"))
        }
    }
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

fn certificate(input: &CertificateInput, at: &str, errs: &mut Errors) -> Option<Certificate> {
    for key in ["cert", "key", UNKNOWN_KEYS] {
        errs.extend(input.problems.about(key, None));
    }
    let (Some(cert), Some(key)) = (&input.cert, &input.key) else {
        // A half that failed to load was reported already.
        if errs.is_empty() {
            errs.push(at, "needs cert_file and key_file (or inline cert and key)");
        }
        return None;
    };
    build_certificate(&cert.bytes, &key.bytes, &cert.source).map_err(|e| errs.push(at, e)).ok()
}

fn mtls(input: &MtlsInput, names: &dyn SettingsNames, errs: &mut Errors) -> Option<DownstreamMtls> {
    for key in ["ca", "crl", "enforcement"] {
        errs.extend(input.problems.about(key, None));
    }
    let enforcement =
        choice(input.enforcement.as_ref(), parse_enforcement, || names.name(SettingsField::MtlsEnforcement), errs)
            .unwrap_or(MtlsEnforcement::PolicyWithDefaultDeny);
    for key in ["max_verify_depth", UNKNOWN_KEYS] {
        errs.extend(input.problems.about(key, None));
    }
    let max_verify_depth = input.max_verify_depth.map_or(1, |d| d.min(100) as u32);
    let Some(ca) = &input.ca else {
        errs.push(
            names.name(SettingsField::DownstreamMtls),
            "needs ca (or ca_file): the CA that signs client certificates",
        );
        return None;
    };
    let ca = parse_certs(&ca.bytes).map_err(|e| errs.push(names.name(SettingsField::MtlsCa), e)).ok()?;
    let mut crls = Vec::new();
    for item in input.crl.iter().flat_map(|crl| parse_crls(&crl.bytes)) {
        match item {
            Ok(c) => crls.push(c),
            Err(e) => errs.push(names.name(SettingsField::MtlsCrl), e),
        }
    }
    Some(DownstreamMtls { ca, crls, enforcement, max_verify_depth })
}

/// Validates one route. `None` when anything about it is wrong (every error recorded).
pub fn route(input: &RouteInput, names: &dyn RouteNames, errs: &mut Errors) -> Option<Route> {
    let before = errs.len();
    let found = |key, errs: &mut Errors| errs.extend(input.problems.about(key, None));
    found("name", errs);
    found("from", errs);
    let (host, tunnel) = if let Some(f) = input.from.as_deref() {
        match parse_route_from(f) {
            Ok((h, t)) => (Some(h), t),
            Err(e) => {
                errs.push(names.name(RouteField::From), e);
                (None, None)
            }
        }
    } else {
        errs.push(names.name(RouteField::From), "is required (for example https://app.example.com)");
        (None, None)
    };
    if let Some(t) = tunnel {
        http_only_keys(input, t, names, errs);
    }
    for key in ["prefix", "path", "regex"] {
        found(key, errs);
    }
    let path_match = match (&input.prefix, &input.path, &input.regex) {
        (None, None, None) => Some(PathMatch::Any),
        (Some(p), None, None) => parse_prefix(p).map_err(|e| errs.push(names.name(RouteField::Prefix), e)).ok(),
        (None, Some(p), None) => {
            if p.starts_with('/') {
                Some(PathMatch::Exact(p.clone()))
            } else {
                errs.push(names.name(RouteField::Path), format!("{p:?} must start with /"));
                None
            }
        }
        (None, None, Some(r)) => match Regex::new(&format!("^(?:{r})$")) {
            Ok(re) => Some(PathMatch::Regex(re)),
            Err(e) => {
                errs.push(names.name(RouteField::Regex), regex_error(&e));
                None
            }
        },
        _ => {
            errs.push(names.name(RouteField::Route), "set only one of prefix, path and regex");
            None
        }
    };
    found("to", errs);
    let to = match &input.to {
        Some(Destinations::Resolved(items)) => Some(upstreams(items.iter().map(Some), input, names, errs)),
        Some(Destinations::Listed(items)) if !items.is_empty() => {
            Some(upstreams(items.iter().map(Option::as_ref), input, names, errs))
        }
        _ => {
            errs.push(
                names.name(RouteField::To),
                "is required: one or more upstream URLs such as http://10.0.0.1:8080",
            );
            None
        }
    };
    found("timeout", errs);
    let timeout = duration_of(input.timeout.as_ref(), || names.name(RouteField::Timeout), errs);
    found("idle_timeout", errs);
    let idle_timeout = duration_of(input.idle_timeout.as_ref(), || names.name(RouteField::IdleTimeout), errs);
    for key in ["allow_websockets", "preserve_host_header", "host_rewrite"] {
        found(key, errs);
    }
    let preserve_host_header = input.preserve_host_header.unwrap_or(false);
    let host_rewrite = input.host_rewrite.clone();
    if let Some(h) = &host_rewrite {
        if HeaderValue::from_str(h).is_err() || h.is_empty() {
            errs.push(names.name(RouteField::HostRewrite), format!("{h:?} is not a valid Host header value"));
        }
    }
    if preserve_host_header && host_rewrite.is_some() {
        errs.push(names.name(RouteField::HostRewrite), "cannot be combined with preserve_host_header");
    }
    for key in ["prefix_rewrite", "regex_rewrite_pattern", "regex_rewrite_substitution"] {
        found(key, errs);
    }
    let regex_rewrite = match (&input.regex_rewrite_pattern, &input.regex_rewrite_substitution) {
        (Some(p), Some(s)) => match Regex::new(p) {
            Ok(re) => Some((re, s.clone())),
            Err(e) => {
                errs.push(names.name(RouteField::RegexRewritePattern), regex_error(&e));
                None
            }
        },
        (Some(_), None) => {
            errs.push(names.name(RouteField::RegexRewriteSubstitution), "is required with regex_rewrite_pattern");
            None
        }
        (None, Some(_)) => {
            errs.push(names.name(RouteField::RegexRewritePattern), "is required with regex_rewrite_substitution");
            None
        }
        (None, None) => None,
    };
    if input.prefix_rewrite.is_some() && regex_rewrite.is_some() {
        errs.push(names.name(RouteField::PrefixRewrite), "cannot be combined with regex_rewrite_pattern");
    }
    found("set_request_headers", errs);
    let set_request_headers = header_pairs(&input.set_request_headers, RouteField::SetRequestHeader, names, errs);
    found("remove_request_headers", errs);
    let mut remove_request_headers = Vec::with_capacity(input.remove_request_headers.len());
    for (i, name) in input.remove_request_headers.iter().enumerate() {
        errs.extend(input.problems.about("remove_request_headers", Some(i)));
        let Some(name) = name else { continue };
        match HeaderName::try_from(name.as_str()) {
            Ok(n) => remove_request_headers.push(n),
            Err(_) => errs
                .push(names.name(RouteField::RemoveRequestHeader(i)), format!("{name:?} is not a valid header name")),
        }
    }
    found("set_response_headers", errs);
    let set_response_headers = header_pairs(&input.set_response_headers, RouteField::SetResponseHeader, names, errs);
    let tls = upstream_tls(input, names, errs);
    found("load_balancing_policy", errs);
    let load_balancing_policy = choice(
        input.load_balancing_policy.as_ref(),
        parse_lb_policy,
        || names.name(RouteField::LoadBalancingPolicy),
        errs,
    )
    .unwrap_or(LbPolicy::RoundRobin);
    let balancing = balancing(input, load_balancing_policy, names, errs);
    found("health_checks", errs);
    let mut health_checks = Vec::with_capacity(input.health_checks.len());
    for (i, h) in input.health_checks.iter().enumerate() {
        errs.extend(input.problems.about("health_checks", Some(i)));
        if let Some(h) = h.as_ref().and_then(|h| health_check(h, i, to.as_deref().unwrap_or_default(), names, errs)) {
            health_checks.push(h);
        }
    }
    found("policy", errs);
    for key in [
        "allow_public_unauthenticated_access",
        "allow_any_authenticated_user",
        "allowed_users",
        "allowed_domains",
        "allowed_idp_claims",
    ] {
        found(key, errs);
    }
    let policy = route_policy(input, names, errs);
    found("pass_identity_headers", errs);
    found("jwt_claims_headers", errs);
    let jwt_claims_headers = input.jwt_claims_headers.as_ref().map(|pairs| {
        let mut out = Vec::with_capacity(pairs.len());
        for (header, claim) in pairs {
            if let Some(h) = claims_header(header, claim, || names.name(RouteField::JwtClaimsHeader(header)), errs) {
                out.push(h);
            }
        }
        out
    });
    // Only when `from` was read: a bad `from` is the error, not its upstreams' schemes.
    for (i, u) in to.iter().flatten().enumerate().filter(|_| host.is_some()) {
        let wanted = match tunnel.map(|t| t.protocol) {
            None if matches!(u.scheme, UpstreamScheme::Tcp | UpstreamScheme::Udp) => {
                Some("http://, https:// or h2c:// (tcp:// and udp:// are for tcp+ and udp+ routes)")
            }
            Some(TunnelProtocol::Tcp) if u.scheme != UpstreamScheme::Tcp => Some("tcp:// on a tcp+ route"),
            Some(TunnelProtocol::Udp) if u.scheme != UpstreamScheme::Udp => Some("udp:// on a udp+ route"),
            _ => None,
        };
        if let Some(wanted) = wanted {
            errs.push(names.name(RouteField::ToEntry(i)), format!("must be {wanted}"));
        }
    }
    if errs.len() > before {
        return None;
    }
    let host = host?;
    let path_match = path_match?;
    let to = to?;
    let name = input.name.clone().unwrap_or_else(|| match tunnel {
        Some(t) => format!("{}+{}:{}", t.protocol.name(), default_route_name(&host, &path_match), t.port),
        None => default_route_name(&host, &path_match),
    });
    Some(Route {
        name,
        host,
        path: path_match,
        to,
        timeout,
        idle_timeout,
        allow_websockets: input.allow_websockets.unwrap_or(false),
        preserve_host_header,
        host_rewrite,
        prefix_rewrite: input.prefix_rewrite.clone(),
        regex_rewrite,
        set_request_headers,
        remove_request_headers,
        set_response_headers,
        tls,
        load_balancing_policy,
        hash_on: balancing.hash_on,
        ring_size: balancing.ring_size,
        healthy_panic_threshold: balancing.panic_threshold,
        outlier_detection: balancing.outlier,
        retries: balancing.retries,
        health_checks,
        policy,
        pass_identity_headers: input.pass_identity_headers,
        jwt_claims_headers,
        tunnel,
    })
}

/// The load-balancing keys beside the policy, validated together.
struct Balancing {
    hash_on: HashOn,
    ring_size: RingSize,
    panic_threshold: u8,
    outlier: Option<OutlierDetection>,
    retries: Retries,
}

fn balancing(input: &RouteInput, policy: LbPolicy, names: &dyn RouteNames, errs: &mut Errors) -> Balancing {
    let found = |key, errs: &mut Errors| errs.extend(input.problems.about(key, None));
    let at = |key| names.name(RouteField::Key(key));
    let sub = |key, field| names.name(RouteField::Sub(key, field));
    let hashing_only = |key, errs: &mut Errors| {
        if !policy.hashes() {
            errs.push(at(key), "has effect only with load_balancing_policy RING_HASH or MAGLEV");
        }
    };
    found("lb_hash_header", errs);
    found("lb_hash_cookie", errs);
    let mut hash_on = HashOn::SourceIp;
    if let Some(h) = &input.lb_hash_header {
        hashing_only("lb_hash_header", errs);
        match HeaderName::try_from(h.as_str()) {
            Ok(name) => hash_on = HashOn::Header(name),
            Err(_) => errs.push(at("lb_hash_header"), format!("{h:?} is not a valid header name")),
        }
    }
    if let Some(c) = &input.lb_hash_cookie {
        hashing_only("lb_hash_cookie", errs);
        if input.lb_hash_header.is_some() {
            errs.push(at("lb_hash_cookie"), "cannot be combined with lb_hash_header: hash on one of them");
        }
        for key in ["name", "ttl", "path", UNKNOWN_KEYS] {
            errs.extend(c.problems.about(key, None));
        }
        let ttl = duration_of(c.ttl.as_ref(), || sub("lb_hash_cookie", "ttl"), errs).flatten();
        let path = c.path.clone().unwrap_or_else(|| "/".to_owned());
        if !path.starts_with('/') || !path.bytes().all(|b| b.is_ascii_graphic() && b != b';') {
            errs.push(sub("lb_hash_cookie", "path"), format!("{path:?} is not a cookie path (it starts with /)"));
        }
        match c.name.as_deref() {
            None => errs.push(sub("lb_hash_cookie", "name"), "is required"),
            Some(n) if !is_cookie_name(n) => {
                errs.push(sub("lb_hash_cookie", "name"), format!("{n:?} is not a valid cookie name"));
            }
            Some(n) => hash_on = HashOn::Cookie(HashCookie { name: n.to_owned(), ttl, path }),
        }
    }
    found("ring_hash_lb_config", errs);
    let mut ring_size = RingSize::default();
    if let Some(r) = &input.ring_hash_lb_config {
        if policy != LbPolicy::RingHash {
            errs.push(at("ring_hash_lb_config"), "has effect only with load_balancing_policy RING_HASH");
        }
        for key in ["minimum_ring_size", "maximum_ring_size", UNKNOWN_KEYS] {
            errs.extend(r.problems.about(key, None));
        }
        // Envoy's bounds: a ring of more than 8M entries is memory for nothing.
        let limit = 8_388_608;
        for (key, value, slot) in [
            ("minimum_ring_size", r.minimum_ring_size, &mut ring_size.min),
            ("maximum_ring_size", r.maximum_ring_size, &mut ring_size.max),
        ] {
            match value {
                Some(v) if (1..=limit).contains(&v) => *slot = v,
                Some(v) => errs.push(sub("ring_hash_lb_config", key), format!("{v} is not in 1..={limit}")),
                None => {}
            }
        }
        if ring_size.min > ring_size.max {
            errs.push(
                at("ring_hash_lb_config"),
                format!("minimum_ring_size {} exceeds maximum_ring_size {}", ring_size.min, ring_size.max),
            );
        }
    }
    found("healthy_panic_threshold", errs);
    let panic_threshold = match input.healthy_panic_threshold {
        None => 50,
        Some(p) if p <= 100 => p as u8,
        Some(p) => {
            errs.push(at("healthy_panic_threshold"), format!("{p} is not a percentage (0 to 100)"));
            50
        }
    };
    found("outlier_detection", errs);
    let outlier = input.outlier_detection.as_ref().map(|o| outlier_detection(o, names, errs));
    found("retries", errs);
    found("retry_on", errs);
    let mut retries = Retries::default();
    match input.retries {
        Some(n) if n <= 5 => retries.attempts = n as u32,
        Some(n) => errs.push(at("retries"), format!("{n} is more than 5 (a retry storm is no cure)")),
        None => {}
    }
    for (i, what) in input.retry_on.iter().flatten().enumerate() {
        match what.as_str() {
            "5xx" => retries.on_5xx = true,
            "gateway-error" => retries.on_gateway_error = true,
            "reset" => retries.on_reset = true,
            other => errs.push(
                format!("{}[{i}]", at("retry_on")),
                format!("unknown retry condition {other:?}: use 5xx, gateway-error or reset"),
            ),
        }
    }
    Balancing { hash_on, ring_size, panic_threshold, outlier, retries }
}

fn outlier_detection(o: &OutlierInput, names: &dyn RouteNames, errs: &mut Errors) -> OutlierDetection {
    let sub = |field| names.name(RouteField::Sub("outlier_detection", field));
    for key in [
        "consecutive_5xx",
        "consecutive_gateway_failure",
        "interval",
        "base_ejection_time",
        "max_ejection_time",
        "max_ejection_percent",
        UNKNOWN_KEYS,
    ] {
        errs.extend(o.problems.about(key, None));
    }
    let mut out = OutlierDetection::default();
    for (key, value, slot) in [
        ("consecutive_5xx", o.consecutive_5xx, &mut out.consecutive_5xx),
        ("consecutive_gateway_failure", o.consecutive_gateway_failure, &mut out.consecutive_gateway_failure),
    ] {
        match value {
            Some(v) if v <= 1000 => *slot = v as u32,
            Some(v) => errs.push(sub(key), format!("{v} is more than 1000")),
            None => {}
        }
    }
    for (key, value, slot) in [
        ("interval", &o.interval, &mut out.interval),
        ("base_ejection_time", &o.base_ejection_time, &mut out.base_ejection_time),
        ("max_ejection_time", &o.max_ejection_time, &mut out.max_ejection_time),
    ] {
        match duration_of(value.as_ref(), || sub(key), errs) {
            Some(Some(d)) => *slot = d,
            Some(None) => errs.push(sub(key), "must be more than 0"),
            None => {}
        }
    }
    if out.max_ejection_time < out.base_ejection_time {
        errs.push(
            sub("max_ejection_time"),
            format!(
                "{} is less than base_ejection_time {}",
                duration::format(out.max_ejection_time),
                duration::format(out.base_ejection_time)
            ),
        );
    }
    match o.max_ejection_percent {
        Some(p) if p <= 100 => out.max_ejection_percent = p as u8,
        Some(p) => errs.push(sub("max_ejection_percent"), format!("{p} is not a percentage (0 to 100)")),
        None => {}
    }
    out
}

/// RFC 6265 token characters.
fn is_cookie_name(n: &str) -> bool {
    !n.is_empty() && n.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// The keys that mean something only to HTTP requests, each an error on a tunnel route
/// (all named at once): a tunnel has no path, headers or upstream TLS.
fn http_only_keys(input: &RouteInput, tunnel: Tunnel, names: &dyn RouteNames, errs: &mut Errors) {
    let set: [(RouteField<'_>, bool); 20] = [
        (RouteField::Prefix, input.prefix.is_some()),
        (RouteField::Path, input.path.is_some()),
        (RouteField::Regex, input.regex.is_some()),
        (RouteField::Key("allow_websockets"), input.allow_websockets.is_some()),
        (RouteField::Key("preserve_host_header"), input.preserve_host_header.is_some()),
        (RouteField::HostRewrite, input.host_rewrite.is_some()),
        (RouteField::PrefixRewrite, input.prefix_rewrite.is_some()),
        (RouteField::RegexRewritePattern, input.regex_rewrite_pattern.is_some()),
        (RouteField::RegexRewriteSubstitution, input.regex_rewrite_substitution.is_some()),
        (RouteField::Key("set_request_headers"), !input.set_request_headers.is_empty()),
        (RouteField::Key("remove_request_headers"), !input.remove_request_headers.is_empty()),
        (RouteField::Key("set_response_headers"), !input.set_response_headers.is_empty()),
        (RouteField::Key("tls_skip_verify"), input.tls_skip_verify.is_some()),
        (RouteField::TlsServerName, input.tls_server_name.is_some()),
        (RouteField::TlsCustomCa, input.tls_custom_ca.is_some()),
        (RouteField::TlsClientCert, input.tls_client_cert.is_some() || input.tls_client_key.is_some()),
        (RouteField::Key("pass_identity_headers"), input.pass_identity_headers.is_some()),
        (RouteField::Key("lb_hash_header"), input.lb_hash_header.is_some()),
        (RouteField::Key("lb_hash_cookie"), input.lb_hash_cookie.is_some()),
        (RouteField::Key("retry_on"), input.retry_on.is_some()),
    ];
    let proto = tunnel.protocol.name();
    for (field, present) in set {
        if present {
            errs.push(names.name(field), format!("has no meaning on a {proto}+ tunnel route"));
        }
    }
    if input.jwt_claims_headers.is_some() {
        errs.push(
            names.name(RouteField::Key("jwt_claims_headers")),
            format!("has no meaning on a {proto}+ tunnel route"),
        );
    }
    for (i, h) in input.health_checks.iter().enumerate() {
        let kind = match h {
            Some(HealthCheckInput { http: Some(_), .. }) => "an HTTP",
            Some(HealthCheckInput { grpc: Some(_), .. }) => "a gRPC",
            _ => continue,
        };
        errs.push(
            names.name(RouteField::HealthCheck(i, HealthCheckField::Check)),
            format!("{kind} check cannot probe a tunnel's upstream; use tcp_health_check"),
        );
    }
}

/// One `jwt_claims_headers` entry: a header name the proxy may set (not one of its own or a
/// hop-by-hop one) and a claim name.
fn claims_header(
    header: &str,
    claim: &str,
    at: impl Fn() -> String,
    errs: &mut Errors,
) -> Option<(HeaderName, String)> {
    let Ok(name) = HeaderName::try_from(header) else {
        errs.push(at(), format!("{header:?} is not a valid header name"));
        return None;
    };
    if matches!(name.as_str(), "host" | "connection" | "content-length" | "transfer-encoding" | "te" | "upgrade")
        || name.as_str() == "x-portcullis-jwt-assertion"
    {
        errs.push(at(), format!("{header:?} cannot carry a claim"));
        return None;
    }
    if claim.trim().is_empty() {
        errs.push(at(), "names no claim");
        return None;
    }
    Some((name, claim.trim().to_owned()))
}

/// The route's policy: its `policy` rules, then the rules of its shorthand keys. `None` when
/// it has neither (a public route).
fn route_policy(
    input: &RouteInput,
    names: &dyn RouteNames,
    errs: &mut Errors,
) -> Option<std::sync::Arc<crate::policy::Policy>> {
    let mut rules = match &input.policy {
        Some(tree) => crate::policy::parse::policy(&names.name(RouteField::Policy), tree, errs)?.rules,
        None => Vec::new(),
    };
    rules.extend(input.shorthand.rules());
    (!rules.is_empty()).then(|| std::sync::Arc::new(crate::policy::Policy { rules }))
}

/// The valid upstreams among `items`, each bad one reported at its position; `None` entries
/// were reported by the source.
fn upstreams<'a>(
    items: impl Iterator<Item = Option<&'a UpstreamInput>>,
    input: &RouteInput,
    names: &dyn RouteNames,
    errs: &mut Errors,
) -> Vec<Upstream> {
    let mut out = Vec::new();
    for (i, item) in items.enumerate() {
        errs.extend(input.problems.about("to", Some(i)));
        match item.map(upstream) {
            Some(Ok(u)) => out.push(u),
            Some(Err(e)) => errs.push(names.name(RouteField::ToEntry(i)), e),
            None => {}
        }
    }
    out
}

/// A regex error's last non-empty line: the `regex` crate explains with a multi-line
/// drawing of the pattern, and its final line is the reason.
fn regex_error(e: &regex::Error) -> String {
    let text = e.to_string();
    format!("invalid regular expression: {}", last_line(&text))
}

/// The last non-empty line, trimmed (the whole text when there is none).
fn last_line(s: &str) -> String {
    s.lines().rfind(|l| !l.trim().is_empty()).unwrap_or(s).trim().to_owned()
}

fn header_pairs<'a>(
    pairs: &'a [(String, String)],
    field: fn(&'a str) -> RouteField<'a>,
    names: &dyn RouteNames,
    errs: &mut Errors,
) -> Vec<(HeaderName, HeaderValue)> {
    let mut out = Vec::with_capacity(pairs.len());
    for (name, value) in pairs {
        match (HeaderName::try_from(name.as_str()), HeaderValue::try_from(value.as_str())) {
            (Ok(n), Ok(v)) => out.push((n, v)),
            (Err(_), _) => errs.push(names.name(field(name)), "is not a valid header name"),
            (_, Err(_)) => errs.push(names.name(field(name)), "value contains characters not allowed in a header"),
        }
    }
    out
}

fn upstream_tls(input: &RouteInput, names: &dyn RouteNames, errs: &mut Errors) -> UpstreamTls {
    let found = |key, errs: &mut Errors| errs.extend(input.problems.about(key, None));
    found("tls_skip_verify", errs);
    found("tls_server_name", errs);
    let server_name = input.tls_server_name.clone();
    if let Some(n) = &server_name {
        if rustls_pki_types::ServerName::try_from(n.as_str()).is_err() {
            errs.push(names.name(RouteField::TlsServerName), format!("{n:?} is not a valid server name"));
        }
    }
    found("tls_custom_ca", errs);
    let custom_ca = input
        .tls_custom_ca
        .as_ref()
        .and_then(|pem| parse_certs(&pem.bytes).map_err(|e| errs.push(names.name(RouteField::TlsCustomCa), e)).ok());
    found("tls_client_cert", errs);
    found("tls_client_key", errs);
    let client_cert = match (&input.tls_client_cert, &input.tls_client_key) {
        (Some(c), Some(k)) => {
            let chain = parse_certs(&c.bytes).map_err(|e| errs.push(names.name(RouteField::TlsClientCert), e)).ok();
            let key = parse_private_key(&k.bytes)
                .map_err(|e| {
                    errs.push(names.name(RouteField::TlsClientKey), format!("no usable PEM private key ({e})"));
                })
                .ok();
            chain.zip(key).map(|(chain, key)| ClientCert { chain, key })
        }
        (Some(_), None) => {
            errs.push(names.name(RouteField::TlsClientKey), "is required with tls_client_cert");
            None
        }
        (None, Some(_)) => {
            errs.push(names.name(RouteField::TlsClientCert), "is required with tls_client_key");
            None
        }
        (None, None) => None,
    };
    UpstreamTls { skip_verify: input.tls_skip_verify.unwrap_or(false), server_name, custom_ca, client_cert }
}

fn health_check(
    input: &HealthCheckInput,
    i: usize,
    to: &[Upstream],
    names: &dyn RouteNames,
    errs: &mut Errors,
) -> Option<HealthCheck> {
    let at = |f| names.name(RouteField::HealthCheck(i, f));
    let found = |key, errs: &mut Errors| errs.extend(input.problems.about(key, None));
    found("interval", errs);
    let interval = duration_of(input.interval.as_ref(), || at(HealthCheckField::Interval), errs)
        .flatten()
        .unwrap_or(Duration::from_secs(10));
    found("timeout", errs);
    let timeout = duration_of(input.timeout.as_ref(), || at(HealthCheckField::Timeout), errs)
        .flatten()
        .unwrap_or(Duration::from_secs(5));
    found("unhealthy_threshold", errs);
    found("healthy_threshold", errs);
    let unhealthy_threshold = input.unhealthy_threshold.unwrap_or(3).clamp(1, 100) as u32;
    let healthy_threshold = input.healthy_threshold.unwrap_or(2).clamp(1, 100) as u32;
    for key in ["http_health_check", "tcp_health_check", "grpc_health_check"] {
        found(key, errs);
    }
    let before = errs.len();
    let kind = match (&input.http, &input.tcp, &input.grpc) {
        (Some(h), None, None) => {
            let path = h.path.clone().unwrap_or_else(|| "/".to_owned());
            if !path.starts_with('/') {
                errs.push(at(HealthCheckField::HttpPath), "must start with /");
            }
            if let Some(host) = &h.host {
                if let Err(e) = authority(host) {
                    errs.push(at(HealthCheckField::HttpHost), e);
                }
            }
            let mut expected_statuses = Vec::with_capacity(h.expected_statuses.len());
            for (j, r) in h.expected_statuses.iter().enumerate() {
                let Some(r) = r else { continue };
                match status_range(r.start, r.end) {
                    Ok(r) => expected_statuses.push(r),
                    Err(e) => errs.push(at(HealthCheckField::HttpExpectedStatus(j)), e),
                }
            }
            if h.expected_statuses.is_empty() {
                expected_statuses.push(super::model::DEFAULT_EXPECTED_STATUSES);
            }
            HealthCheckKind::Http { path, host: h.host.clone(), expected_statuses }
        }
        (None, Some(t), None) => {
            let send = t.send.as_ref().and_then(|p| payload(p, |k| at(HealthCheckField::TcpSend(k)), errs));
            let receive = t
                .receive
                .iter()
                .enumerate()
                .filter_map(|(j, p)| payload(p.as_ref()?, |k| at(HealthCheckField::TcpReceive(j, k)), errs))
                .collect();
            HealthCheckKind::Tcp { send, receive }
        }
        (None, None, Some(g)) => {
            if let Some(a) = &g.authority {
                if let Err(e) = authority(a) {
                    errs.push(at(HealthCheckField::GrpcAuthority), e);
                }
            }
            let service_name = g.service_name.clone().unwrap_or_default();
            if service_name.chars().any(char::is_control) {
                errs.push(
                    at(HealthCheckField::GrpcServiceName),
                    format!("{service_name:?} contains control characters"),
                );
            }
            if to.iter().any(|u| u.scheme == UpstreamScheme::Http) {
                errs.push(
                    at(HealthCheckField::Grpc),
                    "grpc_health_check needs h2c:// or https:// upstreams (the route has http:// ones)",
                );
            }
            HealthCheckKind::Grpc { service_name, authority: g.authority.clone() }
        }
        _ => {
            errs.push(
                at(HealthCheckField::Check),
                "set exactly one of http_health_check, tcp_health_check and grpc_health_check",
            );
            return None;
        }
    };
    found(UNKNOWN_KEYS, errs);
    (errs.len() == before).then_some(HealthCheck { interval, timeout, unhealthy_threshold, healthy_threshold, kind })
}

/// A `host` or `authority` a probe sends: `host[:port]`, no user info, a valid header value.
fn authority(text: &str) -> Result<(), String> {
    // `Authority` parsing leaves the port unchecked until asked for it.
    let has_port = text.rsplit(']').next().is_some_and(|host| host.contains(':'));
    let ok = !text.is_empty()
        && !text.contains('@')
        && text.parse::<http::uri::Authority>().is_ok_and(|a| a.port().is_some() || !has_port)
        && HeaderValue::from_str(text).is_ok();
    if ok {
        Ok(())
    } else {
        Err(format!("{text:?} is not a valid authority (host or host:port)"))
    }
}

/// An Envoy `Int64Range` of HTTP statuses: start inclusive, end exclusive, within 100..=599.
fn status_range(start: Option<u64>, end: Option<u64>) -> Result<std::ops::Range<u16>, String> {
    let (Some(start), Some(end)) = (start, end) else {
        return Err("needs start and end (start inclusive, end exclusive: {start: 200, end: 300})".to_owned());
    };
    if !(100..=599).contains(&start) || !(101..=600).contains(&end) {
        return Err(format!("{start}..{end} is outside the HTTP statuses (start 100 to 599, end up to 600)"));
    }
    if start >= end {
        return Err(format!("start {start} must be below end {end} (the end is exclusive)"));
    }
    Ok(start as u16..end as u16)
}

/// An Envoy `Payload`'s bytes; errors name the `text` or `binary` key (`at(None)`: the
/// payload itself).
fn payload(input: &PayloadInput, at: impl Fn(Option<&'static str>) -> String, errs: &mut Errors) -> Option<Vec<u8>> {
    use base64::Engine as _;
    match (&input.text, &input.binary) {
        (Some(hex), None) => match decode_hex(hex) {
            Ok(b) if !b.is_empty() => Some(b),
            Ok(_) => {
                errs.push(at(Some("text")), "is empty");
                None
            }
            Err(e) => {
                errs.push(at(Some("text")), e);
                None
            }
        },
        (None, Some(b64)) => match base64::engine::general_purpose::STANDARD.decode(b64.trim()) {
            Ok(b) if !b.is_empty() => Some(b),
            Ok(_) => {
                errs.push(at(Some("binary")), "is empty");
                None
            }
            Err(e) => {
                errs.push(at(Some("binary")), format!("is not base64 ({e})"));
                None
            }
        },
        _ => {
            errs.push(at(None), "set exactly one of text (hex) and binary (base64)");
            None
        }
    }
}

/// Hex digits (either case) to bytes.
fn decode_hex(text: &str) -> Result<Vec<u8>, String> {
    let t = text.trim();
    if t.len() % 2 != 0 {
        return Err(format!("{t:?} is not hex: an odd number of digits"));
    }
    let digit = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    t.as_bytes()
        .chunks(2)
        .map(|p| match (digit(p[0]), digit(p[1])) {
            (Some(h), Some(l)) => Ok(h << 4 | l),
            _ => Err(format!("{t:?} is not hex (text is hex digits; use binary for base64)")),
        })
        .collect()
}

/// Cross-route checks of one source: unique names, no two routes with the same host and
/// path (the second could never be reached). Each route comes with its source's names.
pub fn check_route_set<'a>(routes: impl IntoIterator<Item = (&'a dyn RouteNames, &'a Route)>, errs: &mut Errors) {
    let mut seen_names = HashSet::new();
    let mut claims = Claims::default();
    for (names, r) in routes {
        if !seen_names.insert(r.name.as_str()) {
            errs.push(names.name(RouteField::Name), format!("duplicate route name {:?}", r.name));
        }
        if let Err(other) = claims.claim(r, names) {
            errs.push(
                names.name(RouteField::Route),
                format!(
                    "matches the same host and path as {}; the second could never be reached",
                    other.name(RouteField::Route)
                ),
            );
        }
    }
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

/// Parses `from` of a route that may be a tunnel: `tcp+https://host:port` and
/// `udp+https://host:port` name one host and the port a client asks for; anything else is
/// an HTTP route's `from` ([`parse_from`]).
pub fn parse_route_from(from: &str) -> Result<(HostMatch, Option<Tunnel>), String> {
    let (protocol, rest) = if let Some(r) = from.strip_prefix("tcp+") {
        (TunnelProtocol::Tcp, r)
    } else if let Some(r) = from.strip_prefix("udp+") {
        (TunnelProtocol::Udp, r)
    } else {
        return parse_from(from).map(|h| (h, None));
    };
    let proto = protocol.name();
    let example = match protocol {
        TunnelProtocol::Tcp => "tcp+https://db.example.com:5432",
        TunnelProtocol::Udp => "udp+https://dns.example.com:53",
    };
    let Some(rest) = rest.strip_prefix("https://").or_else(|| rest.strip_prefix("http://")) else {
        return Err(format!("{from:?} must start with {proto}+https:// (for example {example})"));
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.contains(['/', '?', '#', '@']) {
        return Err(format!("{from:?}: a tunnel route's from is a host and port only"));
    }
    let Some((host, port)) = rest.rsplit_once(':').filter(|(h, _)| !h.ends_with(']') || h.starts_with('[')) else {
        return Err(format!("{from:?} needs the port clients ask for (for example {example})"));
    };
    let port = port
        .parse::<u16>()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| format!("{from:?}: {port:?} is not a port (1 to 65535)"))?;
    let host @ HostMatch::Exact(_) = parse_host(host).map_err(|e| format!("{from:?}: {e}"))? else {
        return Err(format!("{from:?}: a tunnel route names one host, not a wildcard"));
    };
    Ok((host, Some(Tunnel { protocol, port })))
}

/// Parses `from`: `https://host`, `https://*.example.com`, `https://*`.
pub fn parse_from(from: &str) -> Result<HostMatch, String> {
    let rest = if let Some(r) = from.strip_prefix("https://") {
        r
    } else if let Some(r) = from.strip_prefix("http://") {
        r
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

/// Parses the string form of a `to` entry (`"http://host:port"` or
/// `"http://host:port,weight"`) into an upstream.
pub fn parse_upstream(text: &str) -> Result<Upstream, String> {
    upstream(&UpstreamInput::parse(text)?)
}

/// Validates one upstream: scheme, host and port, weight at least 1.
pub fn upstream(input: &UpstreamInput) -> Result<Upstream, String> {
    let UpstreamInput { url, weight } = input;
    if *weight == 0 {
        return Err(format!("{url:?}: weight must be at least 1"));
    }
    let (scheme, rest, default_port) = if let Some(r) = url.strip_prefix("http://") {
        (UpstreamScheme::Http, r, 80)
    } else if let Some(r) = url.strip_prefix("https://") {
        (UpstreamScheme::Https, r, 443)
    } else if let Some(r) = url.strip_prefix("h2c://") {
        (UpstreamScheme::H2c, r, 80)
    } else if let Some(r) = url.strip_prefix("tcp://") {
        (UpstreamScheme::Tcp, r, 0)
    } else if let Some(r) = url.strip_prefix("udp://") {
        (UpstreamScheme::Udp, r, 0)
    } else {
        return Err(format!("{url:?} must start with http://, https://, h2c://, tcp:// or udp://"));
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
    if port == 0 {
        return Err(format!("{url:?}: a tcp:// or udp:// upstream needs its port (for example tcp://10.0.0.5:5432)"));
    }
    if !host.starts_with('[') && host.parse::<IpAddr>().is_err() {
        check_dns_name(&host.to_ascii_lowercase()).map_err(|e| format!("{url:?}: {e}"))?;
    }
    Ok(Upstream { scheme, authority: format!("{host}:{port}"), host, weight: *weight })
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn an_empty_to_is_valid_only_when_resolved() {
        let mut input = RouteInput { from: Some("https://a.test".into()), ..RouteInput::default() };
        input.to = Some(Destinations::Resolved(Vec::new()));
        let mut errs = Errors::default();
        assert!(route(&input, &crate::config::fields::KeyPath("r".into()), &mut errs).is_some_and(|r| r.to.is_empty()));
        input.to = Some(Destinations::Listed(Vec::new()));
        assert!(route(&input, &crate::config::fields::KeyPath("r".into()), &mut errs).is_none());
        assert_eq!(errs.into_vec()[0].path, "r.to");
    }

    #[test]
    fn tunnel_routes_name_one_host_and_a_port() {
        let t = |p, port| Some(Tunnel { protocol: p, port });
        assert_eq!(
            parse_route_from("tcp+https://DB.example.com:5432").unwrap(),
            (HostMatch::Exact("db.example.com".into()), t(TunnelProtocol::Tcp, 5432))
        );
        assert_eq!(parse_route_from("udp+https://dns.example.com:53/").unwrap().1, t(TunnelProtocol::Udp, 53));
        assert_eq!(parse_route_from("https://app.example.com").unwrap().1, None);
        for (bad, says) in [
            ("tcp+https://db.example.com", "needs the port"),
            ("tcp+https://db.example.com:0", "is not a port"),
            ("tcp+https://db.example.com:99999", "is not a port"),
            ("tcp+https://*.example.com:22", "not a wildcard"),
            ("tcp+ssh://db.example.com:22", "must start with tcp+https://"),
            ("udp+https://dns.example.com:53/path", "host and port only"),
        ] {
            let e = parse_route_from(bad).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn a_tunnel_route_refuses_http_keys_and_other_schemes_all_at_once() {
        let names = crate::config::fields::KeyPath("routes[0]".into());
        let mut input = RouteInput {
            from: Some("tcp+https://db.example.com:5432".into()),
            to: Some(Destinations::Listed(vec![Some(UpstreamInput::parse("http://10.0.0.5:5432").unwrap())])),
            prefix: Some("/x".into()),
            allow_websockets: Some(true),
            set_request_headers: vec![("x-a".into(), "b".into())],
            ..RouteInput::default()
        };
        let mut errs = Errors::default();
        assert!(route(&input, &names, &mut errs).is_none());
        let paths: Vec<String> = errs.into_vec().into_iter().map(|e| format!("{}: {}", e.path, e.message)).collect();
        for expected in [
            "routes[0].prefix: has no meaning on a tcp+ tunnel route",
            "routes[0].allow_websockets: has no meaning",
            "routes[0].set_request_headers: has no meaning",
            "routes[0].to[0]: must be tcp:// on a tcp+ route",
        ] {
            assert!(paths.iter().any(|p| p.starts_with(expected)), "{expected} in {paths:#?}");
        }
        // The same route, right: a TCP upstream, a name of protocol, host and port.
        input.prefix = None;
        input.allow_websockets = None;
        input.set_request_headers.clear();
        input.to = Some(Destinations::Listed(vec![Some(UpstreamInput::parse("tcp://10.0.0.5:5432").unwrap())]));
        let mut errs = Errors::default();
        let r = route(&input, &names, &mut errs).unwrap();
        assert_eq!(r.name, "tcp+db.example.com:5432");
        assert_eq!(r.tunnel, Some(Tunnel { protocol: TunnelProtocol::Tcp, port: 5432 }));
        assert_eq!(r.to[0].scheme, UpstreamScheme::Tcp);
        // A TCP upstream on an HTTP route, and one without a port, are errors.
        input.from = Some("https://app.example.com".into());
        let mut errs = Errors::default();
        assert!(route(&input, &names, &mut errs).is_none());
        assert!(parse_upstream("tcp://10.0.0.5").unwrap_err().contains("needs its port"));
    }

    #[test]
    fn health_check_values_follow_envoy() {
        assert_eq!(status_range(Some(200), Some(201)), Ok(200..201));
        assert_eq!(status_range(Some(100), Some(600)), Ok(100..600));
        for (start, end, says) in [
            (Some(200), Some(200), "must be below end"),
            (Some(99), Some(200), "outside the HTTP statuses"),
            (Some(200), Some(601), "outside the HTTP statuses"),
            (Some(600), Some(601), "outside the HTTP statuses"),
            (None, Some(300), "needs start and end"),
        ] {
            let e = status_range(start, end).unwrap_err();
            assert!(e.contains(says), "{start:?}..{end:?}: {e}");
        }
        assert_eq!(decode_hex("50494E47"), Ok(b"PING".to_vec()));
        assert_eq!(decode_hex(" 00ff "), Ok(vec![0, 255]));
        assert!(decode_hex("abc").unwrap_err().contains("odd number"));
        assert!(decode_hex("zz").unwrap_err().contains("is not hex"));
        assert!(decode_hex("éé").is_err(), "a multi-byte character is not a digit, not a panic");
        for ok in ["health.internal", "10.0.0.1:8080", "[::1]:50051", "a"] {
            assert_eq!(authority(ok), Ok(()), "{ok}");
        }
        for bad in ["", "a b", "user@host", "host/path", "host:port", "host:", "host:70000", "[::1]:x"] {
            assert!(authority(bad).is_err(), "{bad}");
        }
        let mut errs = Errors::default();
        let at = |k: Option<&str>| format!("send{}", k.map(|k| format!(".{k}")).unwrap_or_default());
        let p = |text: Option<&str>, binary: Option<&str>| PayloadInput {
            text: text.map(str::to_owned),
            binary: binary.map(str::to_owned),
        };
        assert_eq!(payload(&p(None, Some("UElORw==")), at, &mut errs), Some(b"PING".to_vec()));
        assert_eq!(payload(&p(Some(""), None), at, &mut errs), None);
        assert_eq!(payload(&p(None, Some("***")), at, &mut errs), None);
        assert_eq!(payload(&p(None, None), at, &mut errs), None);
        let found: Vec<String> = errs.into_vec().iter().map(ToString::to_string).collect();
        assert_eq!(found.len(), 3, "{found:?}");
        assert_eq!(found[0], "send.text: is empty");
        assert!(found[1].starts_with("send.binary: is not base64"), "{found:?}");
        assert_eq!(found[2], "send: set exactly one of text (hex) and binary (base64)");
    }
}
