//! Typed inputs to the validator: what a source (the YAML file, the environment, a
//! Kubernetes object) says, already split into fields but not yet checked.
//!
//! Every field is optional: whether it is required, and what it may hold, is the validator's
//! decision ([`super::validate`]), so that every source gets the same rules and the same
//! messages. Sources do their own I/O (files, Secrets) and hand over PEM bytes; values a
//! source holds as text (a duration string, a policy name) stay text, so that the validator
//! says what is wrong with them.
//!
//! What a source could not read at all (a list where a string belongs, an unknown key, a
//! missing file) travels with the input as [`Problems`], keyed by the field, and the
//! validator reports it in its place among its own findings: errors come in field order
//! whichever stage found them. In lists, `None` is an entry the source could not read (its
//! problem is recorded); it keeps the later entries' positions (`to[2]`).

use std::time::Duration;

use super::errors::{Errors, FieldError};
use super::model::{CodecType, DrainScope, LbPolicy, MtlsEnforcement};

/// The key under which a mapping's unknown keys are recorded: they are reported last.
pub const UNKNOWN_KEYS: &str = "*";

/// Errors a source found while reading an input, each with the key it concerns (and the
/// list position, for list entries), for the validator to report in field order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Problems(Vec<(&'static str, Option<usize>, FieldError)>);

impl Problems {
    /// Records what was found reading `key` (entry `index` of it, for a list).
    pub fn add(&mut self, key: &'static str, index: Option<usize>, found: Errors) {
        self.0.extend(found.into_vec().into_iter().map(|e| (key, index, e)));
    }

    /// How many are recorded.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True when the source found nothing wrong.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Reports the problems recorded since `start` at `path` instead of their own paths: an
    /// Ingress annotation is one field however deeply its value nests.
    pub fn rename_since(&mut self, start: usize, path: &str) {
        for (_, _, e) in self.0.iter_mut().skip(start) {
            path.clone_into(&mut e.path);
        }
    }

    /// Every problem with its key and index, in the order recorded.
    pub fn into_entries(self) -> Vec<(&'static str, Option<usize>, FieldError)> {
        self.0
    }

    /// The problems about `key` (entry `index`).
    pub fn about<'a>(&'a self, key: &'a str, index: Option<usize>) -> impl Iterator<Item = &'a FieldError> + 'a {
        self.0.iter().filter(move |(k, i, _)| *k == key && *i == index).map(|(_, _, e)| e)
    }
}

/// A value a source either has already typed (a CRD enum, a YAML `0`) or holds as text that
/// the validator must parse (a duration string, an annotation).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Given<T> {
    /// Already the value.
    Parsed(T),
    /// Text to parse, reported as written when it does not parse.
    Text(String),
}

/// PEM bytes and where they came from (a file path, `inline cert`, a Secret).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pem {
    /// Shown in logs and `/config_dump` as the certificate's source.
    pub source: String,
    /// The PEM text.
    pub bytes: Vec<u8>,
}

/// One upstream as written: a URL and its weight (checked by the validator: at least 1).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UpstreamInput {
    /// `http://`, `https://` or `h2c://` plus host and optional port.
    pub url: String,
    /// Relative share.
    pub weight: u32,
}

impl UpstreamInput {
    /// The string form of a `to` entry: `"http://host:port"` or `"http://host:port,weight"`.
    pub fn parse(text: &str) -> Result<Self, String> {
        match text.rsplit_once(',') {
            Some((u, w)) => Ok(Self {
                url: u.trim().to_owned(),
                weight: w
                    .trim()
                    .parse::<u32>()
                    .map_err(|_| format!("{text:?}: weight {w:?} is not a positive integer"))?,
            }),
            None => Ok(Self { url: text.trim().to_owned(), weight: 1 }),
        }
    }
}

/// A route's destinations, and whether an empty list is acceptable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Destinations {
    /// Written by a person (a file's `to`): at least one is required (an unreadable entry,
    /// `None`, counts: the list was not empty).
    Listed(Vec<Option<UpstreamInput>>),
    /// Resolved from a cluster (a Service's ready endpoints): may be empty right now, and the
    /// route then answers 503 instead of vanishing into a 404.
    Resolved(Vec<UpstreamInput>),
}

/// An HTTP health probe.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HttpProbeInput {
    /// Request path (default `/`).
    pub path: Option<String>,
    /// `Host` of the probe (default: the upstream's).
    pub host: Option<String>,
    /// `expected_statuses`; `None` entries were unreadable (reported by the source).
    pub expected_statuses: Vec<Option<StatusRangeInput>>,
}

/// One `expected_statuses` entry, an Envoy `Int64Range`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StatusRangeInput {
    /// First status (inclusive).
    pub start: Option<u64>,
    /// End (exclusive).
    pub end: Option<u64>,
}

/// An Envoy `Payload`: exactly one of `text` (hex) and `binary` (base64), decoded by the
/// validator.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PayloadInput {
    /// Hex digits.
    pub text: Option<String>,
    /// Base64.
    pub binary: Option<String>,
}

/// A TCP health probe (`{}`: connect only).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TcpProbeInput {
    /// Written once connected.
    pub send: Option<PayloadInput>,
    /// Expected in the answer, in order; `None` entries were unreadable.
    pub receive: Vec<Option<PayloadInput>>,
}

/// A gRPC health probe.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GrpcProbeInput {
    /// `service_name` (default empty: the whole server).
    pub service_name: Option<String>,
    /// `authority` (default: the upstream's).
    pub authority: Option<String>,
}

/// One active health check.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HealthCheckInput {
    /// Time between checks (default 10s).
    pub interval: Option<Given<Duration>>,
    /// A slower check fails (default 5s).
    pub timeout: Option<Given<Duration>>,
    /// Failures before an upstream is taken out (default 3, clamped to 1..=100).
    pub unhealthy_threshold: Option<u64>,
    /// Successes before it is put back (default 2, clamped to 1..=100).
    pub healthy_threshold: Option<u64>,
    /// `http_health_check`.
    pub http: Option<HttpProbeInput>,
    /// `tcp_health_check`.
    pub tcp: Option<TcpProbeInput>,
    /// `grpc_health_check`.
    pub grpc: Option<GrpcProbeInput>,
    /// What the source could not read.
    pub problems: Problems,
}

/// `lb_hash_cookie`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HashCookieInput {
    /// Cookie name (required).
    pub name: Option<String>,
    /// `Max-Age` of a cookie the proxy sets (`0` or absent: a session cookie).
    pub ttl: Option<Given<Duration>>,
    /// `Path` of a cookie the proxy sets (default `/`).
    pub path: Option<String>,
    /// What the source could not read.
    pub problems: Problems,
}

/// `ring_hash_lb_config`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RingSizeInput {
    /// `minimum_ring_size`.
    pub minimum_ring_size: Option<u64>,
    /// `maximum_ring_size`.
    pub maximum_ring_size: Option<u64>,
    /// What the source could not read.
    pub problems: Problems,
}

/// `outlier_detection` (every key optional: `{}` gives Envoy's defaults).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OutlierInput {
    /// `consecutive_5xx`.
    pub consecutive_5xx: Option<u64>,
    /// `consecutive_gateway_failure`.
    pub consecutive_gateway_failure: Option<u64>,
    /// `interval`.
    pub interval: Option<Given<Duration>>,
    /// `base_ejection_time`.
    pub base_ejection_time: Option<Given<Duration>>,
    /// `max_ejection_time`.
    pub max_ejection_time: Option<Given<Duration>>,
    /// `max_ejection_percent`.
    pub max_ejection_percent: Option<u64>,
    /// What the source could not read.
    pub problems: Problems,
}

/// One route as a source states it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RouteInput {
    /// Stable name (default `host/path`).
    pub name: Option<String>,
    /// `https://host`.
    pub from: Option<String>,
    /// Whole-path-element prefix.
    pub prefix: Option<String>,
    /// Exact path.
    pub path: Option<String>,
    /// Whole-path regular expression.
    pub regex: Option<String>,
    /// Upstreams; `None` when the source names none.
    pub to: Option<Destinations>,
    /// Upstream timeout (`0` disables).
    pub timeout: Option<Given<Duration>>,
    /// Stream idle timeout (`0` disables).
    pub idle_timeout: Option<Given<Duration>>,
    /// WebSocket upgrades allowed.
    pub allow_websockets: Option<bool>,
    /// Send the client's Host upstream.
    pub preserve_host_header: Option<bool>,
    /// Send this Host upstream.
    pub host_rewrite: Option<String>,
    /// Replace the matched prefix.
    pub prefix_rewrite: Option<String>,
    /// Regex path rewrite: pattern.
    pub regex_rewrite_pattern: Option<String>,
    /// Regex path rewrite: substitution.
    pub regex_rewrite_substitution: Option<String>,
    /// Request headers to set, as (name, value) in source order.
    pub set_request_headers: Vec<(String, String)>,
    /// Request headers to remove.
    pub remove_request_headers: Vec<Option<String>>,
    /// Response headers to set.
    pub set_response_headers: Vec<(String, String)>,
    /// Accept any upstream certificate.
    pub tls_skip_verify: Option<bool>,
    /// SNI and verification name for https upstreams.
    pub tls_server_name: Option<String>,
    /// CAs trusted for https upstreams.
    pub tls_custom_ca: Option<Pem>,
    /// Client certificate chain presented to upstreams.
    pub tls_client_cert: Option<Pem>,
    /// Its key.
    pub tls_client_key: Option<Pem>,
    /// Load balancing policy.
    pub load_balancing_policy: Option<Given<LbPolicy>>,
    /// Active health checks.
    pub health_checks: Vec<Option<HealthCheckInput>>,
    /// `lb_hash_header`.
    pub lb_hash_header: Option<String>,
    /// `lb_hash_cookie`.
    pub lb_hash_cookie: Option<HashCookieInput>,
    /// `ring_hash_lb_config`.
    pub ring_hash_lb_config: Option<RingSizeInput>,
    /// `healthy_panic_threshold` (percent).
    pub healthy_panic_threshold: Option<u64>,
    /// `outlier_detection`.
    pub outlier_detection: Option<OutlierInput>,
    /// `retries`.
    pub retries: Option<u64>,
    /// `retry_on`.
    pub retry_on: Option<Vec<String>>,
    /// The policy's tree (PPL), checked by the validator.
    pub policy: Option<serde_json::Value>,
    /// Pomerium's shorthand policy keys.
    pub shorthand: crate::policy::shorthand::Shorthand,
    /// `pass_identity_headers`.
    pub pass_identity_headers: Option<bool>,
    /// `jwt_claims_headers`: (header, claim) in source order.
    pub jwt_claims_headers: Option<Vec<(String, String)>>,
    /// What the source could not read.
    pub problems: Problems,
}

/// A server certificate as PEM.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CertificateInput {
    /// The chain, leaf first.
    pub cert: Option<Pem>,
    /// The leaf's key.
    pub key: Option<Pem>,
    /// What the source could not read.
    pub problems: Problems,
}

/// Client-certificate verification.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MtlsInput {
    /// Trust anchors (required).
    pub ca: Option<Pem>,
    /// Revocation lists.
    pub crl: Option<Pem>,
    /// Enforcement mode (default `policy_with_default_deny`).
    pub enforcement: Option<Given<MtlsEnforcement>>,
    /// Intermediates allowed between leaf and CA (default 1, at most 100).
    pub max_verify_depth: Option<u64>,
    /// What the source could not read.
    pub problems: Problems,
}

/// The global settings as a source states them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SettingsInput {
    /// `address`.
    pub address: Option<String>,
    /// `http_redirect_address` (empty disables).
    pub http_redirect_address: Option<String>,
    /// `metrics_address` (empty disables).
    pub metrics_address: Option<String>,
    /// `admin_address` (empty disables).
    pub admin_address: Option<String>,
    /// `insecure_server`.
    pub insecure_server: Option<bool>,
    /// `codec_type`.
    pub codec_type: Option<Given<CodecType>>,
    /// `http3_advertised_port`.
    pub http3_advertised_port: Option<u64>,
    /// `timeout_read`.
    pub timeout_read: Option<Given<Duration>>,
    /// `timeout_write`.
    pub timeout_write: Option<Given<Duration>>,
    /// `timeout_idle`.
    pub timeout_idle: Option<Given<Duration>>,
    /// `default_upstream_timeout`.
    pub default_upstream_timeout: Option<Given<Duration>>,
    /// `drain_timeout`.
    pub drain_timeout: Option<Given<Duration>>,
    /// `drain_scope`.
    pub drain_scope: Option<Given<DrainScope>>,
    /// `certificates`.
    pub certificates: Vec<Option<CertificateInput>>,
    /// `downstream_mtls`.
    pub downstream_mtls: Option<MtlsInput>,
    /// `idp_provider_url`.
    pub idp_provider_url: Option<String>,
    /// `idp_client_id`.
    pub idp_client_id: Option<String>,
    /// `jwks_url`.
    pub jwks_url: Option<String>,
    /// `jwt_audiences`.
    pub jwt_audiences: Option<Vec<String>>,
    /// `jwt_leeway`.
    pub jwt_leeway: Option<Given<Duration>>,
    /// `idp_ca` (or `idp_ca_file`): trust anchors for the provider's TLS.
    pub idp_ca: Option<Pem>,
    /// `idp_client_secret` (or `idp_client_secret_file`): turns browser sign-in on.
    pub idp_client_secret: Option<Pem>,
    /// `idp_scopes`.
    pub idp_scopes: Option<Vec<String>>,
    /// `authenticate_service_url`.
    pub authenticate_service_url: Option<String>,
    /// `cookie_name`.
    pub cookie_name: Option<String>,
    /// `cookie_secret` (or `cookie_secret_file`): base64 of 32 random bytes.
    pub cookie_secret: Option<Pem>,
    /// `cookie_expire`.
    pub cookie_expire: Option<Given<Duration>>,
    /// `signing_key` (or `signing_key_file`): a P-256 private key, PEM or base64 of PEM.
    pub signing_key: Option<Pem>,
    /// `pass_identity_headers`.
    pub pass_identity_headers: Option<bool>,
    /// `jwt_claims_headers`: (header, claim) in source order.
    pub jwt_claims_headers: Option<Vec<(String, String)>>,
    /// What the source could not read.
    pub problems: Problems,
}

impl SettingsInput {
    /// Replaces every scalar setting `over` states (the environment's overrides; they never
    /// hold certificates or mTLS material, and were validated on their own, so their
    /// problems are not carried over).
    pub fn overlay(&mut self, over: &SettingsInput) {
        macro_rules! take {
            ($($field:ident),*) => {$(
                if over.$field.is_some() {
                    self.$field.clone_from(&over.$field);
                }
            )*};
        }
        take!(
            address,
            http_redirect_address,
            metrics_address,
            admin_address,
            insecure_server,
            codec_type,
            http3_advertised_port,
            timeout_read,
            timeout_write,
            timeout_idle,
            default_upstream_timeout,
            drain_timeout,
            drain_scope,
            idp_provider_url,
            idp_client_id,
            jwks_url,
            jwt_leeway,
            cookie_name,
            cookie_expire,
            pass_identity_headers
        );
    }
}
