//! The validated domain model: what a config *means*, with no trace of where it came from.
//!
//! Both the standalone YAML file and (later) the Kubernetes controller produce a [`Config`];
//! the data plane compiles it into a serving snapshot. Every value here has already been
//! checked, so the data plane never re-validates and never has to handle a half-valid route.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, HeaderValue};
use regex::Regex;
use rustls::sign::CertifiedKey;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// A whole, valid configuration: global settings and the routes they serve.
#[derive(Clone, Debug)]
pub struct Config {
    /// Process-wide settings (listeners, timeouts, certificates).
    pub settings: Settings,
    /// Routes in declaration order; precedence is decided by the route table, not this order.
    /// Shared: the controller hands the same route to every config until its object changes,
    /// and the data plane keeps the compiled form of a route it has seen before, so a reload
    /// costs what changed, not the whole table.
    pub routes: Vec<Arc<Route>>,
}

/// Which HTTP versions the downstream listeners speak.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CodecType {
    /// ALPN picks HTTP/2 or HTTP/1.1.
    Auto,
    /// HTTP/1.1 only; some old clients and tools need it.
    Http1,
    /// HTTP/2 preferred; HTTP/1.1 clients are still served (see docs/timeouts.md).
    Http2,
    /// Adds the `quic-ingress` HTTP/3 listener beside `auto` on TCP.
    Http3,
}

/// The connection-level timeouts of the reference's "Global Timeouts" page.
/// `None` means disabled (the user wrote `0`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// The whole downstream request (headers and body) must arrive within this.
    pub read: Option<Duration>,
    /// The whole request/response cycle.
    pub write: Option<Duration>,
    /// A connection with no active request, or a stream with no activity, is closed.
    pub idle: Option<Duration>,
}

/// A certificate with its key, ready to be handed to rustls.
#[derive(Clone, Debug)]
pub struct Certificate {
    /// Where it came from (file path or Secret name), for logs and `/config_dump`.
    pub source: String,
    /// DNS names (and wildcards) from the leaf's subjectAltName, lower-cased.
    pub names: Vec<String>,
    /// SHA-1 fingerprint of the leaf, hex: lets a reload tell a changed certificate apart.
    pub fingerprint: String,
    /// The signing key and chain.
    pub key: Arc<CertifiedKey>,
}

/// How client certificates are checked on the https listener.
#[derive(Clone, Debug)]
pub struct DownstreamMtls {
    /// Trust anchors for client certificates.
    pub ca: Vec<CertificateDer<'static>>,
    /// Certificate revocation lists (DER).
    pub crls: Vec<rustls_pki_types::CertificateRevocationListDer<'static>>,
    /// What happens to a client without a valid certificate.
    pub enforcement: MtlsEnforcement,
    /// How many intermediates may sit between the client leaf and a trust anchor.
    pub max_verify_depth: u32,
}

/// Pomerium's three mTLS enforcement modes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MtlsEnforcement {
    /// Requests without a valid client certificate are denied (403) unless a route allows them.
    PolicyWithDefaultDeny,
    /// The certificate is verified when present; routes decide.
    Policy,
    /// The TLS handshake fails without a valid client certificate.
    RejectConnection,
}

/// Which connections a certificate change drains (`drain_scope`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DrainScope {
    /// Only connections that negotiated a certificate that changed; the rest stay up.
    Affected,
    /// Every connection of the old listener generation, as Pomerium (Envoy) does.
    All,
}

/// Process-wide settings.
#[derive(Clone, Debug)]
pub struct Settings {
    /// `https-ingress` (or plain HTTP with `insecure_server`).
    pub address: SocketAddr,
    /// `http-ingress`: ACME paths routed, everything else redirected. `None` disables it.
    pub http_redirect_address: Option<SocketAddr>,
    /// Serve routes on `address` without TLS.
    pub insecure_server: bool,
    /// Downstream HTTP versions.
    pub codec_type: CodecType,
    /// The UDP port `Alt-Svc` names when it is not the one `quic-ingress` binds: behind a
    /// Service or load balancer that maps 443 to the pod's 8443, clients must be told 443.
    /// `None`: the bound port.
    pub http3_advertised_port: Option<u16>,
    /// Connection-level timeouts.
    pub timeouts: Timeouts,
    /// Upstream timeout of a route that sets none; `None` disables it.
    pub default_upstream_timeout: Option<Duration>,
    /// Grace period of a draining listener generation (and of shutdown).
    pub drain_timeout: Duration,
    /// Which connections a certificate change drains.
    pub drain_scope: DrainScope,
    /// Server certificates; the first is the default for unknown SNI.
    pub certificates: Vec<Certificate>,
    /// Client-certificate verification, when configured.
    pub downstream_mtls: Option<DownstreamMtls>,
    /// `metrics-ingress`; `None` disables it.
    pub metrics_address: Option<SocketAddr>,
    /// `admin`; `None` disables it.
    pub admin_address: Option<SocketAddr>,
    /// The OpenID provider whose bearer tokens identify requests; `None`: no identity but
    /// client certificates (a policy that asks for a user never matches).
    pub identity_provider: Option<IdentityProvider>,
    /// What upstreams learn of the identity.
    pub identity_headers: IdentityHeaders,
}

/// The OpenID provider bearer tokens are verified against (`idp_provider_url` and friends).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdentityProvider {
    /// `idp_provider_url`, as written: the `iss` a token must name, and where OIDC discovery
    /// starts.
    pub issuer: String,
    /// `jwks_url`: where the signing keys are. `None`: the discovery document's `jwks_uri`.
    pub jwks_url: Option<http::Uri>,
    /// `idp_client_id`.
    pub client_id: Option<String>,
    /// The `aud` values a token may carry: the client id, then `jwt_audiences`, without
    /// duplicates; never empty (a token minted for another client of the same provider is
    /// no identity here).
    pub audiences: Vec<String>,
    /// `jwt_leeway`: clock skew allowed on `exp` and `nbf` (default 30 s).
    pub leeway: Duration,
    /// `idp_ca`: trust anchors for the provider's TLS; empty: the system's roots.
    pub ca: Vec<CertificateDer<'static>>,
    /// Browser sign-in with this provider; `None` (no `idp_client_secret`): bearer tokens
    /// only, and a browser without one gets the 401 page.
    pub sign_in: Option<SignIn>,
}

/// The authorization-code flow and its session cookie.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignIn {
    /// `idp_client_secret`.
    pub client_secret: Secret<String>,
    /// `idp_scopes` (default `openid profile email offline_access`); always has `openid`.
    pub scopes: Vec<String>,
    /// `authenticate_service_url`; `None`: derived from the first route
    /// ([`Config::authenticate_url`]).
    pub authenticate_url: Option<ServiceUrl>,
    /// `cookie_name` (default `_portcullis`).
    pub cookie_name: String,
    /// `cookie_secret`: the AEAD key of sessions.
    pub cookie_secret: Secret<[u8; 32]>,
    /// `cookie_expire` (default 14 h): a session's lifetime from sign-in.
    pub cookie_expire: Duration,
}

/// The sign-in host: always `https://`, no path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceUrl {
    /// Lower-cased host name.
    pub host: String,
    /// The port, when it is not 443.
    pub port: Option<u16>,
}

impl ServiceUrl {
    /// `host[:port]`, as a `Host` header names it.
    pub fn authority(&self) -> String {
        match self.port {
            Some(p) => format!("{}:{p}", self.host),
            None => self.host.clone(),
        }
    }

    /// `https://host[:port]`.
    pub fn origin(&self) -> String {
        format!("https://{}", self.authority())
    }
}

/// Identity handed to upstreams (`signing_key`, `pass_identity_headers`,
/// `jwt_claims_headers`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IdentityHeaders {
    /// `signing_key`: a P-256 key as PKCS#8 DER. `None`: one is made at start (a warning:
    /// replicas and restarts do not share it).
    pub signing_key: Option<Secret<Vec<u8>>>,
    /// `pass_identity_headers` globally; `None`: on for routes with a policy.
    pub pass: Option<bool>,
    /// `jwt_claims_headers`: header names and the claim each carries.
    pub claims_headers: Vec<(HeaderName, String)>,
}

/// A secret value: never printed (`Debug` says `<redacted>`), so it cannot reach a log or
/// `/config_dump` by accident.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret<T>(pub T);

impl<T> std::fmt::Debug for Secret<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            address: SocketAddr::from(([0, 0, 0, 0], 8443)),
            http_redirect_address: Some(SocketAddr::from(([0, 0, 0, 0], 8080))),
            insecure_server: false,
            codec_type: CodecType::Auto,
            http3_advertised_port: None,
            timeouts: Timeouts {
                read: Some(Duration::from_secs(30)),
                write: None,
                idle: Some(Duration::from_secs(300)),
            },
            default_upstream_timeout: Some(Duration::from_secs(30)),
            drain_timeout: Duration::from_secs(600),
            drain_scope: DrainScope::Affected,
            certificates: Vec::new(),
            downstream_mtls: None,
            metrics_address: Some(SocketAddr::from(([0, 0, 0, 0], 9902))),
            admin_address: Some(SocketAddr::from(([127, 0, 0, 1], 9901))),
            identity_provider: None,
            identity_headers: IdentityHeaders::default(),
        }
    }
}

/// Which hosts a route answers for.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum HostMatch {
    /// Any host (an Ingress rule without `host`, or `https://*`).
    Any,
    /// One exact, lower-cased host name.
    Exact(String),
    /// `*.suffix`: exactly one extra label before `suffix` (stored without the `*.`).
    Wildcard(String),
}

/// Which paths a route answers for. Matching is case-sensitive and ignores the query.
#[derive(Clone, Debug)]
pub enum PathMatch {
    /// Every path.
    Any,
    /// Whole path elements: `/foo` matches `/foo`, `/foo/`, `/foo/bar`, never `/foobar`.
    /// Stored without a trailing slash (except `/` itself).
    Prefix(String),
    /// The exact path.
    Exact(String),
    /// The whole path must match (anchored).
    Regex(Regex),
}

/// Upstream wire protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum UpstreamScheme {
    /// HTTP/1.1 over TCP.
    Http,
    /// TLS; ALPN chooses HTTP/2 or HTTP/1.1.
    Https,
    /// HTTP/2 with prior knowledge over plain TCP (gRPC backends).
    H2c,
    /// Bytes over TCP: the destination of a `tcp+` tunnel route.
    Tcp,
    /// Datagrams over UDP: the destination of a `udp+` tunnel route.
    Udp,
}

/// One destination of a route.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Upstream {
    /// Protocol to speak.
    pub scheme: UpstreamScheme,
    /// `host:port` as written (port defaulted from the scheme).
    pub authority: String,
    /// Host part alone, used for SNI and `Host` unless overridden.
    pub host: String,
    /// Relative share of requests in weighted round robin.
    pub weight: u32,
}

/// How a route spreads requests over its upstreams.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum LbPolicy {
    /// Weighted round robin (the default).
    RoundRobin,
    /// Uniformly random, weighted.
    Random,
    /// Of two endpoints drawn at random (weighted), the one with fewer requests in flight
    /// (power of two choices).
    LeastRequest,
    /// A consistent-hash ring over the request's hash key ([`HashOn`]).
    RingHash,
    /// Maglev's lookup table (65,537 entries) over the request's hash key.
    Maglev,
}

impl LbPolicy {
    /// RING_HASH and MAGLEV choose by a key of the request.
    pub fn hashes(self) -> bool {
        matches!(self, Self::RingHash | Self::Maglev)
    }
}

/// What a hashing policy hashes when the request has no signed-in session (a session's id
/// always comes first, as Pomerium's routing key does).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum HashOn {
    /// The client's source IP (not its port): every connection of a client lands alike.
    #[default]
    SourceIp,
    /// `lb_hash_header`: this request header's value (the source IP when it is absent).
    Header(HeaderName),
    /// `lb_hash_cookie`: this cookie, set by the proxy when the client has none.
    Cookie(HashCookie),
}

/// `lb_hash_cookie`: a sticky-session cookie.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HashCookie {
    /// Cookie name.
    pub name: String,
    /// `Max-Age` of a cookie the proxy sets; `None`: a session cookie.
    pub ttl: Option<Duration>,
    /// `Path` of a cookie the proxy sets (default `/`).
    pub path: String,
}

/// `ring_hash_lb_config`: Envoy's bounds on the ring's size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RingSize {
    /// `minimum_ring_size` (default 16,384: weights 1:1:1:2 then hold within 5 %).
    pub min: u64,
    /// `maximum_ring_size` (default 8,388,608, Envoy's).
    pub max: u64,
}

impl Default for RingSize {
    fn default() -> Self {
        Self { min: 16_384, max: 8_388_608 }
    }
}

/// `outlier_detection`: passive ejection of endpoints that keep failing, with Envoy's
/// defaults.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OutlierDetection {
    /// Consecutive 5xx answers (the proxy's own 502/503/504 for an upstream included)
    /// that eject an endpoint (default 5; 0 disables this trigger).
    pub consecutive_5xx: u32,
    /// Consecutive gateway failures (connect failures, resets, timeouts, 502/503/504) that
    /// eject it (default 5; 0 disables this trigger).
    pub consecutive_gateway_failure: u32,
    /// How often the times an endpoint was ejected decays by one (default 10s).
    pub interval: Duration,
    /// Ejection time, multiplied by the times ejected (default 30s).
    pub base_ejection_time: Duration,
    /// Cap on an ejection's time (default 300s).
    pub max_ejection_time: Duration,
    /// At most this percent of a route's endpoints are ejected at once, but always at least
    /// one (default 10).
    pub max_ejection_percent: u8,
}

impl Default for OutlierDetection {
    fn default() -> Self {
        Self {
            consecutive_5xx: 5,
            consecutive_gateway_failure: 5,
            interval: Duration::from_secs(10),
            base_ejection_time: Duration::from_secs(30),
            max_ejection_time: Duration::from_secs(300),
            max_ejection_percent: 10,
        }
    }
}

/// When a request is tried again on another endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retries {
    /// `retries`: attempts after the first (default 1; 0 disables).
    pub attempts: u32,
    /// `retry_on` `5xx`: an idempotent request answered 5xx.
    pub on_5xx: bool,
    /// `retry_on` `gateway-error`: an idempotent request answered 502, 503 or 504.
    pub on_gateway_error: bool,
    /// `retry_on` `reset`: an idempotent request whose upstream reset or closed mid-way.
    pub on_reset: bool,
}

impl Default for Retries {
    fn default() -> Self {
        Self { attempts: 1, on_5xx: false, on_gateway_error: false, on_reset: false }
    }
}

impl Retries {
    /// Whether a request that may have reached the upstream can be retried at all.
    pub fn after_sending(&self) -> bool {
        self.on_5xx || self.on_gateway_error || self.on_reset
    }
}

/// TLS settings towards a route's `https://` upstreams.
#[derive(Clone, Debug, Default)]
pub struct UpstreamTls {
    /// Accept any upstream certificate. Logged loudly; for testing only.
    pub skip_verify: bool,
    /// SNI and verification name instead of the upstream host.
    pub server_name: Option<String>,
    /// Trust these CAs instead of the system roots.
    pub custom_ca: Option<Vec<CertificateDer<'static>>>,
    /// Client certificate presented to the upstream.
    pub client_cert: Option<ClientCert>,
}

/// A client certificate chain and key.
#[derive(Debug)]
pub struct ClientCert {
    /// Leaf first.
    pub chain: Vec<CertificateDer<'static>>,
    /// The leaf's key.
    pub key: PrivateKeyDer<'static>,
}

impl Clone for ClientCert {
    fn clone(&self) -> Self {
        Self { chain: self.chain.clone(), key: self.key.clone_key() }
    }
}

/// Active health checking of a route's upstreams.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct HealthCheck {
    /// Time between checks.
    pub interval: Duration,
    /// A check that takes longer fails.
    pub timeout: Duration,
    /// Consecutive failures before an upstream is taken out.
    pub unhealthy_threshold: u32,
    /// Consecutive successes before it is put back.
    pub healthy_threshold: u32,
    /// What a check does.
    pub kind: HealthCheckKind,
}

/// The probe of a health check, in Envoy's shapes (which Pomerium passes through).
/// Equality tells a reload whether a running checker changed.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum HealthCheckKind {
    /// `GET path`; healthy when the status is in one of `expected_statuses`.
    Http {
        /// Request path.
        path: String,
        /// `Host` (and HTTP/2 `:authority`) of the probe; `None`: the upstream's.
        host: Option<String>,
        /// Envoy `Int64Range`s: start inclusive, end exclusive. Never empty: without the key
        /// it is Envoy's (and so Pomerium's) default, `200` alone (`[200..201)`).
        expected_statuses: Vec<std::ops::Range<u16>>,
    },
    /// Connect; then write `send`, if any, and read until every `receive` payload was
    /// found, in order but not necessarily contiguous (Envoy's "fuzzy" match). Neither:
    /// the connect alone.
    Tcp {
        /// Bytes written once connected.
        send: Option<Vec<u8>>,
        /// Payloads the answer must contain, in order.
        receive: Vec<Vec<u8>>,
    },
    /// `grpc.health.v1.Health/Check` over HTTP/2; healthy when it answers `SERVING`.
    Grpc {
        /// The `service` asked about (empty: the server as a whole).
        service_name: String,
        /// `:authority` of the call; `None`: the upstream's.
        authority: Option<String>,
    },
}

/// Envoy's default `expected_statuses`: 200 only.
pub const DEFAULT_EXPECTED_STATUSES: std::ops::Range<u16> = 200..201;

/// One route: what it matches and what it does with a matching request.
#[derive(Clone, Debug)]
pub struct Route {
    /// Stable, bounded identifier: the metrics `route` label and the log field.
    pub name: String,
    /// Host part of `from`.
    pub host: HostMatch,
    /// Path matcher.
    pub path: PathMatch,
    /// Destinations. At least one from a file; empty when a cluster Service has no ready
    /// endpoints (requests then get 503).
    pub to: Vec<Upstream>,
    /// Upstream timeout as set on the route (`None`: not set, the default applies).
    /// `Some(None)` is an explicit `0`: disabled.
    pub timeout: Option<Option<Duration>>,
    /// Stream idle timeout as set on the route, same convention as `timeout`.
    pub idle_timeout: Option<Option<Duration>>,
    /// WebSocket upgrades (and HTTP/2 extended CONNECT) are allowed.
    pub allow_websockets: bool,
    /// Send the client's `Host` upstream instead of the upstream's.
    pub preserve_host_header: bool,
    /// Send this `Host` upstream.
    pub host_rewrite: Option<String>,
    /// Replace the matched prefix with this.
    pub prefix_rewrite: Option<String>,
    /// Replace regex matches in the path.
    pub regex_rewrite: Option<(Regex, String)>,
    /// Request headers set (replacing) before forwarding.
    pub set_request_headers: Vec<(HeaderName, HeaderValue)>,
    /// Request headers removed before forwarding.
    pub remove_request_headers: Vec<HeaderName>,
    /// Response headers set (replacing) before answering.
    pub set_response_headers: Vec<(HeaderName, HeaderValue)>,
    /// TLS towards upstreams.
    pub tls: UpstreamTls,
    /// Load balancing.
    pub load_balancing_policy: LbPolicy,
    /// What RING_HASH and MAGLEV hash (the default for other policies, which ignore it).
    pub hash_on: HashOn,
    /// RING_HASH's ring size bounds.
    pub ring_size: RingSize,
    /// `healthy_panic_threshold`: below this percent of available endpoints, balance over
    /// all of them (0 never panics; default 50).
    pub healthy_panic_threshold: u8,
    /// Passive ejection; `None`: off.
    pub outlier_detection: Option<OutlierDetection>,
    /// Retries on another endpoint.
    pub retries: Retries,
    /// Active health checks (at most one per route in practice).
    pub health_checks: Vec<HealthCheck>,
    /// Who may use the route: its `policy` and shorthand keys as one policy. `None`: no
    /// policy, the route is public (as before policies existed).
    pub policy: Option<std::sync::Arc<crate::policy::Policy>>,
    /// `pass_identity_headers` on the route; `None`: the global setting.
    pub pass_identity_headers: Option<bool>,
    /// `jwt_claims_headers` on the route; `None`: the global ones.
    pub jwt_claims_headers: Option<Vec<(HeaderName, String)>>,
    /// `Some` for a `tcp+https://` or `udp+https://` route: CONNECT (or CONNECT-UDP) to its
    /// host and this port becomes a tunnel to `to`. Its path is `Any` and its HTTP-only
    /// settings are at their defaults (the validator refuses them).
    pub tunnel: Option<Tunnel>,
}

/// What a tunnel route carries and which port of its host a client asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Tunnel {
    /// TCP bytes or UDP datagrams.
    pub protocol: TunnelProtocol,
    /// The port in the client's CONNECT authority (or CONNECT-UDP path): a name, not a
    /// listener; every tunnel arrives on `address`.
    pub port: u16,
}

/// The transport a tunnel route carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TunnelProtocol {
    /// CONNECT: a byte stream.
    Tcp,
    /// CONNECT-UDP (RFC 9298): datagrams.
    Udp,
}

impl TunnelProtocol {
    /// The metrics' `protocol` label and the scheme prefix of `from`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
        }
    }
}

impl Config {
    /// What is valid but probably not meant: a route anyone may use although an identity
    /// provider is configured (a forgotten policy). `check` prints these and `serve` logs
    /// them; a route says it is public on purpose with `allow_public_unauthenticated_access`.
    pub fn warnings(&self) -> Vec<String> {
        if self.settings.identity_provider.is_none() {
            return Vec::new();
        }
        let mut out = Vec::new();
        if self.settings.identity_headers.signing_key.is_none() && self.routes.iter().any(|r| self.passes_identity(r)) {
            out.push(
                "signing_key is not set: a key made at start signs X-Portcullis-Jwt-Assertion, so other replicas and \
                 the next start sign with another (make one with `openssl ecparam -genkey -name prime256v1 -noout | base64 -w0`)"
                    .to_owned(),
            );
        }
        out.extend(self.route_warnings());
        out
    }

    /// Whether `route` hands the identity to its upstream (`pass_identity_headers`: the
    /// route's, else the global one, else on for a route with a policy).
    pub fn passes_identity(&self, route: &Route) -> bool {
        route.pass_identity_headers.or(self.settings.identity_headers.pass).unwrap_or(route.policy.is_some())
    }

    /// The sign-in host: `authenticate_service_url`, else Pomerium's default,
    /// `authenticate.<domain of the first route with a host>` on the listener's port (`None`
    /// without sign-in, or when no route names a host).
    pub fn authenticate_url(&self) -> Option<ServiceUrl> {
        let sign_in = self.settings.identity_provider.as_ref()?.sign_in.as_ref()?;
        if let Some(url) = &sign_in.authenticate_url {
            return Some(url.clone());
        }
        let host = self.routes.iter().find_map(|r| match &r.host {
            HostMatch::Exact(h) | HostMatch::Wildcard(h) => Some(h.as_str()),
            HostMatch::Any => None,
        })?;
        let domain = match &self.routes.iter().find(|r| r.host != HostMatch::Any)?.host {
            HostMatch::Wildcard(suffix) => suffix.as_str(),
            _ => host.split_once('.').map_or(host, |(_, rest)| rest),
        };
        let port = self.settings.address.port();
        Some(ServiceUrl { host: format!("authenticate.{domain}"), port: (port != 443).then_some(port) })
    }

    fn route_warnings(&self) -> Vec<String> {
        self.routes
            .iter()
            .filter(|r| r.policy.is_none())
            .map(|r| {
                format!(
                    "route {:?} is public: it has no policy although idp_provider_url is set \
                     (give it a policy, or allow_public_unauthenticated_access: true if it is meant to be public)",
                    r.name
                )
            })
            .collect()
    }
}
