//! The `portcullis.io/v1alpha1` custom resources: `Route` (namespaced) and `ProxyConfig`
//! (cluster-scoped). Their fields are PRODUCT.md's route and global keys in camelCase, so the
//! translation layer can hand them to the same validator as the standalone file.
//!
//! Schema rules the API server can check itself live here (bounded lengths, formats, CEL
//! rules), so that most mistakes are refused at `kubectl apply` time; everything else is
//! reported on the object's status by the controller.

// Several printer columns share `type_ = "string"`, which this lint mistakes for a repeat.
#![allow(clippy::duplicated_attributes)]

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

/// Go duration strings as PRODUCT.md fixes them (`0`, `300ms`, `1h45m`).
const DURATION_PATTERN: &str = r"^(0|([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+)$";

/// A route: which requests (`from` plus a path matcher) go where (`to`), and how.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "portcullis.io",
    version = "v1alpha1",
    kind = "Route",
    namespaced,
    status = "RouteStatus",
    shortname = "pcroute",
    category = "portcullis",
    doc = "A Portcullis route: requests matching from and a path go to the upstreams in to.",
    printcolumn(name = "From", type_ = "string", json_path = ".spec.from"),
    printcolumn(name = "Ready", type_ = "string", json_path = ".status.conditions[?(@.type==\"Programmed\")].status"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[x_kube(validation = Rule::new("[has(self.prefix), has(self.path), has(self.regex)].filter(x, x).size() <= 1").message("set only one of prefix, path and regex"))]
#[x_kube(validation = Rule::new("has(self.regexRewritePattern) == has(self.regexRewriteSubstitution)").message("regexRewritePattern and regexRewriteSubstitution go together"))]
#[x_kube(validation = Rule::new("!(has(self.preserveHostHeader) && self.preserveHostHeader && has(self.hostRewrite))").message("hostRewrite cannot be combined with preserveHostHeader"))]
#[x_kube(validation = Rule::new("!(has(self.prefixRewrite) && has(self.regexRewritePattern))").message("prefixRewrite cannot be combined with regexRewritePattern"))]
#[serde(rename_all = "camelCase")]
pub struct RouteSpec {
    /// `https://host`, `https://*.example.com` or `https://*`; `tcp+https://host:port` or
    /// `udp+https://host:port` for a tunnel (the port the client asks for).
    #[schemars(length(min = 1, max = 300), regex(pattern = r"^((tcp|udp)\+)?https?://[^/?#@]+/?$"))]
    pub from: String,
    /// Whole-path-element prefix.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024), regex(pattern = r"^/"))]
    pub prefix: Option<String>,
    /// Exact path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024), regex(pattern = r"^/"))]
    pub path: Option<String>,
    /// Whole-path regular expression (RE2 syntax).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub regex: Option<String>,
    /// Upstreams: `http://`, `https://` or `h2c://` URLs (`tcp://` or `udp://` on a tunnel),
    /// optionally `,weight`. A host that names a Service (`name`, `name.namespace`,
    /// `name.namespace.svc[.cluster.local]`) is resolved to that Service's ready endpoints.
    #[schemars(length(min = 1, max = 64), inner(length(min = 1, max = 300)))]
    pub to: Vec<String>,
    /// Upstream timeout (Go duration; `0` disables).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub timeout: Option<String>,
    /// Stream idle timeout (Go duration; `0` disables; capped at `timeoutIdle`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub idle_timeout: Option<String>,
    /// Allow WebSocket upgrades.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_websockets: Option<bool>,
    /// Send the client's Host upstream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preserve_host_header: Option<bool>,
    /// Send this Host upstream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 300))]
    pub host_rewrite: Option<String>,
    /// Replace the matched prefix.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub prefix_rewrite: Option<String>,
    /// Regex path rewrite: pattern.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub regex_rewrite_pattern: Option<String>,
    /// Regex path rewrite: substitution (`$1` for groups).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub regex_rewrite_substitution: Option<String>,
    /// Headers set on the upstream request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("maxProperties" = 64))]
    pub set_request_headers: Option<BTreeMap<String, String>>,
    /// Headers removed from the upstream request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64), inner(length(max = 256)))]
    pub remove_request_headers: Option<Vec<String>>,
    /// Headers set on the response.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("maxProperties" = 64))]
    pub set_response_headers: Option<BTreeMap<String, String>>,
    /// Accept any upstream certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_skip_verify: Option<bool>,
    /// SNI and verification name for https upstreams.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub tls_server_name: Option<String>,
    /// Secret in this namespace whose `ca.crt` is trusted for https upstreams.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub tls_custom_ca_secret: Option<String>,
    /// `kubernetes.io/tls` Secret in this namespace presented to upstreams.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub tls_client_secret: Option<String>,
    /// `ROUND_ROBIN`, `RANDOM`, `LEAST_REQUEST`, `RING_HASH` or `MAGLEV`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_balancing_policy: Option<LoadBalancingPolicy>,
    /// `RING_HASH`/`MAGLEV`: hash this request header's value (the source IP when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    pub lb_hash_header: Option<String>,
    /// `RING_HASH`/`MAGLEV`: hash this cookie, set by the proxy when the client has none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lb_hash_cookie: Option<LbHashCookie>,
    /// `RING_HASH`: bounds on the ring's size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ring_hash_lb_config: Option<RingHashLbConfig>,
    /// Below this percent of available endpoints, balance over all of them (default 50; 0
    /// turns panic mode off).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100))]
    pub healthy_panic_threshold: Option<u32>,
    /// Passive ejection of endpoints that keep failing; `{}` gives the defaults.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outlier_detection: Option<OutlierDetectionSpec>,
    /// Attempts after the first on another endpoint (default 1; 0 disables).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 5))]
    pub retries: Option<u32>,
    /// What else an idempotent request is retried on: `5xx`, `gateway-error`, `reset`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 3))]
    pub retry_on: Option<Vec<RetryOn>>,
    /// Active health checks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 4))]
    pub health_checks: Option<Vec<HealthCheckSpec>>,
    /// The certificate served for this route's host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<RouteTls>,
    /// Who may use the route: Pomerium's Policy Language (PPL), a list of `allow`/`deny`
    /// rules, each with `and`, `or`, `not` or `nor` lists of criteria; deny wins. A route with
    /// neither a policy nor an `allow*` key is public.
    // The API server checks the shape (`policy_schema`), the controller the criteria.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "policy_schema")]
    pub policy: Option<serde_json::Value>,
    /// Everyone may use the route, signed in or not (one more allow rule).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_public_unauthenticated_access: Option<bool>,
    /// Anyone with a verified identity may use the route.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_any_authenticated_user: Option<bool>,
    /// Users (`sub` or email address) allowed in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256), inner(length(min = 1, max = 320)))]
    pub allowed_users: Option<Vec<String>>,
    /// Email domains allowed in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256), inner(length(min = 1, max = 253)))]
    pub allowed_domains: Option<Vec<String>>,
    /// Identity-provider claims: a claim name and the values, any one of which admits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("maxProperties" = 32), inner(length(max = 64)))]
    pub allowed_idp_claims: Option<BTreeMap<String, Vec<String>>>,
    /// Send the signed-in identity upstream (`X-Portcullis-Jwt-Assertion`); default: the
    /// ProxyConfig's `passIdentityHeaders`, else on for a route with a policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pass_identity_headers: Option<bool>,
    /// Headers set upstream from the identity's claims (header name: claim name); replaces
    /// the ProxyConfig's `jwtClaimsHeaders` for this route.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("maxProperties" = 32), inner(length(min = 1, max = 256)))]
    pub jwt_claims_headers: Option<BTreeMap<String, String>>,
}

/// Most rules in a policy, and most criteria under one operator: far beyond any hand-written
/// policy, and what keeps the API server's CEL cost estimate bounded.
const POLICY_MAX_ITEMS: u32 = 64;

/// The OpenAPI schema of `spec.policy`, written by hand because a structural schema cannot
/// come from a free-form `serde_json::Value`. The rule level is typed (a list of objects
/// with `allow`/`deny`, each with `and`/`or`/`not`/`nor` lists), so the API server refuses a
/// misspelt action or operator at `kubectl apply` time. A criterion is an object with exactly
/// one key whose name is open-ended (`claim/<name>`) and whose value is a string, list or
/// matcher object; it keeps its unknown fields and is checked by the controller, whose
/// errors name `spec.policy[i].allow.and[j]...`.
///
/// "Exactly one key" is `minProperties`/`maxProperties` rather than CEL: CEL sees an object
/// without declared properties as an empty message type, on which `size()` is undefined.
/// PPL also accepts one bare rule where a list is expected; a structural schema cannot say
/// "object or array", so the CRD takes the list only.
fn policy_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    let criteria = serde_json::json!({
        "description": "Criteria, each an object with exactly one key: accept, reject, authenticated_user, email, domain, user, claim/<name>, groups, http_method, http_path, source_ip, client_certificate, invalid_client_certificate, cors_preflight, date, day_of_week or time_of_day.",
        "type": "array",
        "maxItems": POLICY_MAX_ITEMS,
        "items": {
            "type": "object",
            "minProperties": 1,
            "maxProperties": 1,
            "x-kubernetes-preserve-unknown-fields": true,
        },
    });
    let operators = |action: &str| {
        serde_json::json!({
            "description": format!("When the request matches, {action} it: and (all), or (any), not (none matches), nor (not all match)."),
            "type": "object",
            "properties": {"and": criteria, "or": criteria, "not": criteria, "nor": criteria},
            "x-kubernetes-validations": [{
                "rule": "has(self.and) || has(self.or) || has(self.not) || has(self.nor)",
                "message": "give and, or, not or nor",
            }],
        })
    };
    // The description is the field's doc comment.
    schemars::json_schema!({
        "type": "array",
        "maxItems": POLICY_MAX_ITEMS,
        "items": {
            "type": "object",
            "properties": {"allow": operators("allow"), "deny": operators("deny")},
            "x-kubernetes-validations": [{
                "rule": "has(self.allow) || has(self.deny)",
                "message": "a rule needs allow or deny",
            }],
        },
    })
}

/// Load balancing policies.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[allow(clippy::upper_case_acronyms, non_camel_case_types)]
pub enum LoadBalancingPolicy {
    /// Weighted round robin.
    ROUND_ROBIN,
    /// Weighted random.
    RANDOM,
    /// Fewest requests in flight (power of two choices).
    LEAST_REQUEST,
    /// Consistent hashing on a ring (Ketama), by the session, `lbHashHeader`, `lbHashCookie`
    /// or the source IP.
    RING_HASH,
    /// Maglev consistent hashing, by the same keys as `RING_HASH`.
    MAGLEV,
}

/// A sticky-session cookie to hash on.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct LbHashCookie {
    /// Cookie name.
    #[schemars(length(min = 1, max = 256))]
    pub name: String,
    /// `Max-Age` of a cookie the proxy sets (Go duration; `0` or absent: a session cookie).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub ttl: Option<String>,
    /// `Path` of a cookie the proxy sets (default `/`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024), regex(pattern = r"^/"))]
    pub path: Option<String>,
}

/// Envoy's bounds on a hash ring's size.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[x_kube(validation = Rule::new("!has(self.minimumRingSize) || !has(self.maximumRingSize) || self.minimumRingSize <= self.maximumRingSize").message("minimumRingSize must not exceed maximumRingSize"))]
#[serde(rename_all = "camelCase")]
pub struct RingHashLbConfig {
    /// Smallest ring (default 16384).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 8_388_608))]
    pub minimum_ring_size: Option<u64>,
    /// Largest ring (default 8388608).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 8_388_608))]
    pub maximum_ring_size: Option<u64>,
}

/// Outlier detection: every field optional, Envoy's defaults otherwise.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct OutlierDetectionSpec {
    /// Consecutive 5xx answers that eject an endpoint (default 5; 0 disables this trigger).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 1000))]
    pub consecutive_5xx: Option<u32>,
    /// Consecutive gateway failures (connect failures, resets, timeouts, 502/503/504) that
    /// eject it (default 5; 0 disables this trigger).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 1000))]
    pub consecutive_gateway_failure: Option<u32>,
    /// How often an endpoint's count of ejections decays by one (default `10s`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub interval: Option<String>,
    /// Ejection time, multiplied by the times ejected (default `30s`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub base_ejection_time: Option<String>,
    /// Cap on one ejection (default `300s`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub max_ejection_time: Option<String>,
    /// At most this percent of the endpoints are ejected at once, but always one (default 10).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100))]
    pub max_ejection_percent: Option<u32>,
}

/// Conditions a request is retried on besides a connection that could not be made.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum RetryOn {
    /// An idempotent request answered 5xx.
    #[serde(rename = "5xx")]
    FiveXx,
    /// An idempotent request answered 502, 503 or 504.
    #[serde(rename = "gateway-error")]
    GatewayError,
    /// An idempotent request whose upstream reset or closed mid-way.
    #[serde(rename = "reset")]
    Reset,
}

/// One active health check.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[x_kube(validation = Rule::new("has(self.httpHealthCheck) != has(self.tcpHealthCheck)").message("set exactly one of httpHealthCheck and tcpHealthCheck"))]
#[serde(rename_all = "camelCase")]
pub struct HealthCheckSpec {
    /// Time between checks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub interval: Option<String>,
    /// A slower check fails.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub timeout: Option<String>,
    /// Failures before an upstream is taken out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    pub unhealthy_threshold: Option<u32>,
    /// Successes before it is put back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    pub healthy_threshold: Option<u32>,
    /// `GET path`; 2xx is healthy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_health_check: Option<HttpHealthCheck>,
    /// A TCP connect.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp_health_check: Option<TcpHealthCheck>,
}

/// HTTP probe.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct HttpHealthCheck {
    /// Request path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024), regex(pattern = r"^/"))]
    pub path: Option<String>,
}

/// TCP probe (no settings).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct TcpHealthCheck {}

/// TLS for a route's host.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RouteTls {
    /// `kubernetes.io/tls` Secret in the route's namespace.
    #[schemars(length(min = 1, max = 253))]
    pub secret_name: String,
}

/// What the controller made of an object.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RouteStatus {
    /// The `metadata.generation` these conditions describe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Accepted`, `ResolvedRefs`, `Programmed`.
    #[serde(default)]
    #[schemars(length(max = 8))]
    pub conditions: Vec<Condition>,
}

/// Global settings of the proxy. The controller reads the one named by `--config-name`
/// (default `global`).
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "portcullis.io",
    version = "v1alpha1",
    kind = "ProxyConfig",
    status = "ProxyConfigStatus",
    shortname = "pcconfig",
    category = "portcullis",
    doc = "Portcullis global settings (listeners, timeouts, certificates).",
    printcolumn(name = "Ready", type_ = "string", json_path = ".status.conditions[?(@.type==\"Programmed\")].status"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[x_kube(validation = Rule::new("!has(self.timeoutWrite) || self.timeoutWrite == '0' || !has(self.timeoutRead) || self.timeoutRead == '0' || duration(self.timeoutWrite) > duration(self.timeoutRead)").message("timeoutWrite must be greater than timeoutRead (or 0)"))]
#[serde(rename_all = "camelCase")]
pub struct ProxyConfigSpec {
    /// HTTPS listener (`:8443`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub address: Option<String>,
    /// Redirect listener (`:8080`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub http_redirect_address: Option<String>,
    /// Serve routes without TLS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub insecure_server: Option<bool>,
    /// `auto`, `http1`, `http2`, `http3`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub codec_type: Option<CodecType>,
    /// The UDP port `Alt-Svc` advertises for HTTP/3 when clients reach the pod through a
    /// Service port other than the one it binds (443 in front of 8443).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub http3_advertised_port: Option<u16>,
    /// Whole downstream request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub timeout_read: Option<String>,
    /// Whole request/response cycle.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub timeout_write: Option<String>,
    /// Idle connections and streams.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub timeout_idle: Option<String>,
    /// Upstream timeout of routes that set none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub default_upstream_timeout: Option<String>,
    /// Grace period of a draining listener generation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub drain_timeout: Option<String>,
    /// Which connections a certificate change drains: `affected` (those that negotiated a
    /// certificate that changed; the default) or `all` (every connection, as Pomerium does).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drain_scope: Option<DrainScope>,
    /// Default certificates (`kubernetes.io/tls` Secrets); the first is the default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub certificates: Option<Vec<SecretRef>>,
    /// Client certificate verification.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub downstream_mtls: Option<DownstreamMtlsSpec>,
    /// Prometheus listener (`:9902`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub metrics_address: Option<String>,
    /// Admin listener (`127.0.0.1:9901`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub admin_address: Option<String>,
    /// The OpenID provider: the issuer whose tokens are accepted, and the root of discovery.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2048))]
    pub idp_provider_url: Option<String>,
    /// This client's id at the provider: a token's `aud` must name it (or a `jwtAudiences`
    /// entry).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256))]
    pub idp_client_id: Option<String>,
    /// The provider's keys, when they are not where discovery says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2048))]
    pub jwks_url: Option<String>,
    /// More audiences a token may name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 16), inner(length(min = 1, max = 256)))]
    pub jwt_audiences: Option<Vec<String>>,
    /// Clock skew allowed on `exp` and `nbf` (Go duration; default `30s`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub jwt_leeway: Option<String>,
    /// Secret whose `ca.crt` is trusted for the provider's TLS (discovery and keys).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idp_ca_secret: Option<SecretRef>,
    /// Secret holding this client's secret at the provider (key `client-secret` unless
    /// `key` says otherwise): turns browser sign-in on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idp_client_secret_ref: Option<SecretKeyRef>,
    /// Scopes asked of the provider (default `openid profile email offline_access`;
    /// `openid` is always asked).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32), inner(length(min = 1, max = 256)))]
    pub idp_scopes: Option<Vec<String>>,
    /// The sign-in host, `https://host[:port]` (default `authenticate.<domain of the first
    /// route>` on the listener's port). Register `<this>/.portcullis/callback` as the
    /// redirect URI and `<this>/.portcullis/signed_out` as the post-logout redirect URI.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 300), regex(pattern = r"^https://[^/?#@]+/?$"))]
    pub authenticate_service_url: Option<String>,
    /// The session cookie's name (default `_portcullis`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64), regex(pattern = r"^[A-Za-z0-9_.-]+$"))]
    pub cookie_name: Option<String>,
    /// Secret holding the key sessions are sealed with, base64 of 32 random bytes (key
    /// `cookie-secret` unless `key` says otherwise); required for sign-in, and the same for
    /// every replica.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cookie_secret_ref: Option<SecretKeyRef>,
    /// A session's lifetime from sign-in (Go duration; default `14h`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub cookie_expire: Option<String>,
    /// Secret holding the P-256 key that signs `X-Portcullis-Jwt-Assertion`, PEM or base64
    /// of PEM (key `signing-key` unless `key` says otherwise). Without it each replica makes
    /// its own at start, and upstreams see keys change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signing_key_secret_ref: Option<SecretKeyRef>,
    /// Send the identity upstream on every route that does not say (default: on for routes
    /// with a policy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pass_identity_headers: Option<bool>,
    /// Headers set upstream from the identity's claims (header name: claim name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("maxProperties" = 32), inner(length(min = 1, max = 256)))]
    pub jwt_claims_headers: Option<BTreeMap<String, String>>,
}

/// Downstream HTTP versions.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum CodecType {
    /// ALPN chooses.
    Auto,
    /// HTTP/1.1 only.
    Http1,
    /// HTTP/2 preferred.
    Http2,
    /// HTTP/3 as well.
    Http3,
}

/// Which connections a certificate change drains.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum DrainScope {
    /// Only connections whose certificate changed.
    Affected,
    /// Every connection of the old listener generation.
    All,
}

/// A Secret by namespace and name.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct SecretRef {
    /// Namespace (the controller's own when empty).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 63))]
    pub namespace: Option<String>,
    /// Name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// One key of a Secret, by namespace, name and key.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct SecretKeyRef {
    /// Namespace (the controller's own when empty).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 63))]
    pub namespace: Option<String>,
    /// Name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// The key in the Secret's data (each field names its default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253), regex(pattern = r"^[-._a-zA-Z0-9]+$"))]
    pub key: Option<String>,
}

/// Downstream mTLS settings.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DownstreamMtlsSpec {
    /// Secret whose `ca.crt` signs client certificates (and optional `ca.crl`).
    pub ca_secret: SecretRef,
    /// `policy_with_default_deny` (default), `policy`, `reject_connection`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enforcement: Option<MtlsEnforcement>,
    /// Intermediates allowed between leaf and CA (default 1; 0 = no limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 16))]
    pub max_verify_depth: Option<u32>,
}

/// mTLS enforcement modes.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum MtlsEnforcement {
    /// Deny requests without a client certificate.
    PolicyWithDefaultDeny,
    /// Verify when present.
    Policy,
    /// Require one in the handshake.
    RejectConnection,
}

/// Whether the settings are in force, and what is wrong with them.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ProxyConfigStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Accepted`, `ResolvedRefs`, `Programmed`.
    #[serde(default)]
    #[schemars(length(max = 8))]
    pub conditions: Vec<Condition>,
    /// Every error found, with the field it concerns.
    #[serde(default)]
    #[schemars(length(max = 100), inner(length(max = 1024)))]
    pub errors: Vec<String>,
}

/// The CRDs as a multi-document YAML stream (what `portcullis crds` prints and `crds/` holds).
pub fn crds_yaml() -> String {
    use kube::CustomResourceExt;
    let mut out = String::new();
    for crd in [Route::crd(), ProxyConfig::crd()] {
        out.push_str("---\n");
        out.push_str(&serde_yaml_ng::to_string(&crd).expect("a CRD serialises"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    /// `crds/` is what users apply and what the Helm chart ships; it must match the types.
    #[test]
    fn crds_directory_is_up_to_date() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/crds/portcullis.io.yaml");
        let committed = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            committed == crds_yaml(),
            "crds/portcullis.io.yaml is stale: run `cargo run -- crds > crds/portcullis.io.yaml`"
        );
    }

    #[test]
    fn schemas_carry_the_server_side_rules() {
        let yaml = crds_yaml();
        for needle in [
            "set only one of prefix, path and regex",
            "timeoutWrite must be greater than timeoutRead",
            "set exactly one of httpHealthCheck and tcpHealthCheck",
            "maxItems: 64",
            "maxLength: 300",
            "subresources:\n      status: {}",
            "name: From",
            "shortNames:\n    - pcroute",
            "scope: Namespaced",
            "scope: Cluster",
        ] {
            assert!(yaml.contains(needle), "missing {needle:?}");
        }
        assert!(!yaml.contains("anyOf") && !yaml.contains("oneOf"), "schemas must stay structural");
    }

    /// `spec.policy` is structural down to the criteria (what the API server insists on) and
    /// carries its shape rules; criteria keep their open-ended keys.
    #[test]
    fn the_policy_schema_is_structural_at_the_rule_level() {
        use kube::CustomResourceExt;
        let crd = serde_json::to_value(Route::crd()).unwrap();
        let spec = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"];
        let policy = &spec["policy"];
        assert_eq!(policy["type"], "array");
        let rule = &policy["items"];
        assert_eq!(rule["type"], "object");
        assert_eq!(rule["x-kubernetes-validations"][0]["rule"], "has(self.allow) || has(self.deny)");
        for action in ["allow", "deny"] {
            let ops = &rule["properties"][action];
            assert_eq!(ops["type"], "object", "{action}");
            for op in ["and", "or", "not", "nor"] {
                let criteria = &ops["properties"][op];
                assert_eq!(criteria["type"], "array", "{action}.{op}");
                assert!(criteria["maxItems"].is_number(), "bounded, for CEL's cost estimate");
                let c = &criteria["items"];
                assert_eq!(c["type"], "object", "a preserve-unknown-fields node is still an object");
                assert_eq!(c["x-kubernetes-preserve-unknown-fields"], true);
                assert_eq!((c["minProperties"].as_u64(), c["maxProperties"].as_u64()), (Some(1), Some(1)));
            }
        }
        assert_eq!(spec["allowedIdpClaims"]["additionalProperties"]["items"]["type"], "string");
        assert_eq!(spec["allowPublicUnauthenticatedAccess"]["type"], "boolean");
        let pc = serde_json::to_value(ProxyConfig::crd()).unwrap();
        let pc = &pc["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"];
        assert_eq!(pc["idpCaSecret"]["properties"]["name"]["type"], "string");
        assert_eq!(pc["jwtAudiences"]["items"]["type"], "string");
        for reference in ["idpClientSecretRef", "cookieSecretRef", "signingKeySecretRef"] {
            let props = &pc[reference]["properties"];
            assert_eq!(
                (props["name"]["type"].as_str(), props["key"]["type"].as_str()),
                (Some("string"), Some("string"))
            );
            assert_eq!(pc[reference]["required"], serde_json::json!(["name"]), "{reference}");
        }
        assert_eq!(pc["jwtClaimsHeaders"]["additionalProperties"]["type"], "string");
        assert!(pc["cookieExpire"]["pattern"].is_string() && pc["authenticateServiceUrl"]["pattern"].is_string());
        assert_eq!(spec["jwtClaimsHeaders"]["additionalProperties"]["type"], "string");
        assert_eq!(spec["passIdentityHeaders"]["type"], "boolean");
    }

    /// The load-balancing fields: the bounds and enums the API server enforces itself.
    #[test]
    fn the_load_balancing_schema_is_bounded() {
        use kube::CustomResourceExt;
        let crd = serde_json::to_value(Route::crd()).unwrap();
        let spec = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"];
        let policies = spec["loadBalancingPolicy"]["enum"].as_array().unwrap();
        for p in ["ROUND_ROBIN", "RANDOM", "LEAST_REQUEST", "RING_HASH", "MAGLEV"] {
            assert!(policies.contains(&serde_json::json!(p)), "{p}");
        }
        // schemars writes the bounds as floats (`maximum: 100.0`).
        let bounds = |v: &Value| (v["minimum"].as_f64(), v["maximum"].as_f64());
        assert_eq!(bounds(&spec["healthyPanicThreshold"]), (Some(0.0), Some(100.0)));
        assert_eq!(bounds(&spec["retries"]), (Some(0.0), Some(5.0)));
        assert_eq!(spec["retryOn"]["items"]["enum"], serde_json::json!(["5xx", "gateway-error", "reset"]));
        let outlier = &spec["outlierDetection"]["properties"];
        assert_eq!(bounds(&outlier["consecutive5xx"]), (Some(0.0), Some(1000.0)));
        assert_eq!(bounds(&outlier["maxEjectionPercent"]), (Some(0.0), Some(100.0)));
        for d in ["interval", "baseEjectionTime", "maxEjectionTime"] {
            assert_eq!(outlier[d]["pattern"], DURATION_PATTERN, "{d}");
        }
        assert_eq!(spec["lbHashCookie"]["required"], serde_json::json!(["name"]));
        assert_eq!(spec["lbHashCookie"]["properties"]["ttl"]["pattern"], DURATION_PATTERN);
        let ring = &spec["ringHashLbConfig"];
        assert_eq!(bounds(&ring["properties"]["maximumRingSize"]), (Some(1.0), Some(8_388_608.0)));
        assert_eq!(ring["x-kubernetes-validations"][0]["message"], "minimumRingSize must not exceed maximumRingSize");
    }

    #[test]
    fn spec_round_trips_in_camel_case() {
        let spec: RouteSpec = serde_json::from_value(serde_json::json!({
            "from": "https://a.example.com",
            "to": ["http://svc:80"],
            "idleTimeout": "0",
            "allowWebsockets": true,
            "loadBalancingPolicy": "LEAST_REQUEST",
            "outlierDetection": {"consecutive5xx": 3},
            "retryOn": ["gateway-error"],
        }))
        .unwrap();
        assert_eq!(spec.idle_timeout.as_deref(), Some("0"));
        assert_eq!(spec.load_balancing_policy, Some(LoadBalancingPolicy::LEAST_REQUEST));
        assert_eq!(spec.outlier_detection.as_ref().and_then(|o| o.consecutive_5xx), Some(3));
        assert_eq!(spec.retry_on, Some(vec![RetryOn::GatewayError]));
        let back = serde_json::to_value(&spec).unwrap();
        assert_eq!(back["outlierDetection"], serde_json::json!({"consecutive5xx": 3}));
    }
}
