//! How the validator names a field without knowing where it came from: it reports errors
//! against a [`RouteField`] or [`SettingsField`], and the source supplies the spelling
//! ([`RouteNames`], [`SettingsNames`]): `routes[3].timeout` for the file, `spec.idleTimeout`
//! for a Route resource, `metadata.annotations["portcullis.io/timeout"]` for an Ingress.

/// A field of a route the validator can find fault with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RouteField<'a> {
    /// The route as a whole (for example two path matchers at once).
    Route,
    /// `name`.
    Name,
    /// `from`.
    From,
    /// `prefix`.
    Prefix,
    /// `path`.
    Path,
    /// `regex`.
    Regex,
    /// `to` as a whole.
    To,
    /// One `to` entry.
    ToEntry(usize),
    /// `timeout`.
    Timeout,
    /// `idle_timeout`.
    IdleTimeout,
    /// `host_rewrite`.
    HostRewrite,
    /// `prefix_rewrite`.
    PrefixRewrite,
    /// `regex_rewrite_pattern`.
    RegexRewritePattern,
    /// `regex_rewrite_substitution`.
    RegexRewriteSubstitution,
    /// One `set_request_headers` entry, by header name.
    SetRequestHeader(&'a str),
    /// One `remove_request_headers` entry.
    RemoveRequestHeader(usize),
    /// One `set_response_headers` entry, by header name.
    SetResponseHeader(&'a str),
    /// `tls_server_name`.
    TlsServerName,
    /// `tls_custom_ca` (or its file).
    TlsCustomCa,
    /// `tls_client_cert` (or its file).
    TlsClientCert,
    /// `tls_client_key` (or its file).
    TlsClientKey,
    /// `load_balancing_policy`.
    LoadBalancingPolicy,
    /// A field of one health check.
    HealthCheck(usize, HealthCheckField),
    /// `policy` (a policy's own errors are reported below it: `policy[0].allow.and[1]...`).
    Policy,
    /// One `jwt_claims_headers` entry, by header name.
    JwtClaimsHeader(&'a str),
    /// A key inside a route key's mapping: (`outlier_detection`, `interval`).
    Sub(&'static str, &'static str),
    /// A key named as a whole, by its snake_case file key (`allow_websockets` on a tunnel
    /// route, where it has no meaning).
    Key(&'static str),
}

/// A field of one health check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HealthCheckField {
    /// The check as a whole.
    Check,
    /// `interval`.
    Interval,
    /// `timeout`.
    Timeout,
    /// `http_health_check.path`.
    HttpPath,
    /// `http_health_check.host`.
    HttpHost,
    /// One `http_health_check.expected_statuses` entry.
    HttpExpectedStatus(usize),
    /// `tcp_health_check.send`, or its `text`/`binary` key.
    TcpSend(Option<&'static str>),
    /// One `tcp_health_check.receive` entry, or its `text`/`binary` key.
    TcpReceive(usize, Option<&'static str>),
    /// `grpc_health_check` as a whole.
    Grpc,
    /// `grpc_health_check.service_name`.
    GrpcServiceName,
    /// `grpc_health_check.authority`.
    GrpcAuthority,
}

impl RouteField<'_> {
    /// The field's path below the route in the reference's (snake_case) key names, empty for
    /// the route itself: `timeout`, `to[2]`, `set_request_headers.X-A`,
    /// `health_checks[0].http_health_check.path`. The file spells fields exactly so; other
    /// sources translate it.
    pub fn key_path(&self) -> String {
        match self {
            Self::Route => String::new(),
            Self::ToEntry(i) => format!("to[{i}]"),
            Self::SetRequestHeader(h) => format!("set_request_headers.{h}"),
            Self::SetResponseHeader(h) => format!("set_response_headers.{h}"),
            Self::JwtClaimsHeader(h) => format!("jwt_claims_headers.{h}"),
            Self::RemoveRequestHeader(i) => format!("remove_request_headers[{i}]"),
            Self::Sub(k, sub) => format!("{k}.{sub}"),
            Self::HealthCheck(i, f) => match f {
                HealthCheckField::Check => format!("health_checks[{i}]"),
                HealthCheckField::Interval => format!("health_checks[{i}].interval"),
                HealthCheckField::Timeout => format!("health_checks[{i}].timeout"),
                HealthCheckField::HttpPath => format!("health_checks[{i}].http_health_check.path"),
                HealthCheckField::HttpHost => format!("health_checks[{i}].http_health_check.host"),
                HealthCheckField::HttpExpectedStatus(j) => {
                    format!("health_checks[{i}].http_health_check.expected_statuses[{j}]")
                }
                HealthCheckField::TcpSend(key) => {
                    format!(
                        "health_checks[{i}].tcp_health_check.send{}",
                        key.map(|k| format!(".{k}")).unwrap_or_default()
                    )
                }
                HealthCheckField::TcpReceive(j, key) => format!(
                    "health_checks[{i}].tcp_health_check.receive[{j}]{}",
                    key.map(|k| format!(".{k}")).unwrap_or_default()
                ),
                HealthCheckField::Grpc => format!("health_checks[{i}].grpc_health_check"),
                HealthCheckField::GrpcServiceName => format!("health_checks[{i}].grpc_health_check.service_name"),
                HealthCheckField::GrpcAuthority => format!("health_checks[{i}].grpc_health_check.authority"),
            },
            other => other.key().to_owned(),
        }
    }

    /// The top-level route key the field belongs to (`to` for a `to` entry, `""` for the
    /// route itself).
    pub fn key(&self) -> &'static str {
        match self {
            Self::Route => "",
            Self::Name => "name",
            Self::From => "from",
            Self::Prefix => "prefix",
            Self::Path => "path",
            Self::Regex => "regex",
            Self::To | Self::ToEntry(_) => "to",
            Self::Timeout => "timeout",
            Self::IdleTimeout => "idle_timeout",
            Self::HostRewrite => "host_rewrite",
            Self::PrefixRewrite => "prefix_rewrite",
            Self::RegexRewritePattern => "regex_rewrite_pattern",
            Self::RegexRewriteSubstitution => "regex_rewrite_substitution",
            Self::SetRequestHeader(_) => "set_request_headers",
            Self::RemoveRequestHeader(_) => "remove_request_headers",
            Self::SetResponseHeader(_) => "set_response_headers",
            Self::TlsServerName => "tls_server_name",
            Self::TlsCustomCa => "tls_custom_ca",
            Self::TlsClientCert => "tls_client_cert",
            Self::TlsClientKey => "tls_client_key",
            Self::LoadBalancingPolicy => "load_balancing_policy",
            Self::HealthCheck(..) => "health_checks",
            Self::Policy => "policy",
            Self::JwtClaimsHeader(_) => "jwt_claims_headers",
            Self::Key(k) | Self::Sub(k, _) => k,
        }
    }
}

/// A global setting the validator can find fault with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SettingsField {
    /// `address`.
    Address,
    /// `http_redirect_address`.
    HttpRedirectAddress,
    /// `metrics_address`.
    MetricsAddress,
    /// `admin_address`.
    AdminAddress,
    /// `codec_type`.
    CodecType,
    /// `http3_advertised_port`.
    Http3AdvertisedPort,
    /// `timeout_read`.
    TimeoutRead,
    /// `timeout_write`.
    TimeoutWrite,
    /// `timeout_idle`.
    TimeoutIdle,
    /// `default_upstream_timeout`.
    DefaultUpstreamTimeout,
    /// `drain_timeout`.
    DrainTimeout,
    /// `drain_scope`.
    DrainScope,
    /// One entry of `certificates`.
    Certificate(usize),
    /// `downstream_mtls` as a whole.
    DownstreamMtls,
    /// `downstream_mtls.ca`.
    MtlsCa,
    /// `downstream_mtls.crl`.
    MtlsCrl,
    /// `downstream_mtls.enforcement`.
    MtlsEnforcement,
    /// `idp_provider_url`.
    IdpProviderUrl,
    /// `idp_client_id`.
    IdpClientId,
    /// `jwks_url`.
    JwksUrl,
    /// `jwt_audiences`.
    JwtAudiences,
    /// `jwt_leeway`.
    JwtLeeway,
    /// `idp_ca`.
    IdpCa,
    /// `idp_client_secret`.
    IdpClientSecret,
    /// `idp_scopes`.
    IdpScopes,
    /// `authenticate_service_url`.
    AuthenticateServiceUrl,
    /// `cookie_name`.
    CookieName,
    /// `cookie_secret`.
    CookieSecret,
    /// `cookie_expire`.
    CookieExpire,
    /// `signing_key`.
    SigningKey,
    /// `jwt_claims_headers`.
    JwtClaimsHeaders,
}

impl SettingsField {
    /// The field's path in the reference's (snake_case) key names: `timeout_read`,
    /// `certificates[0]`, `downstream_mtls.ca`.
    pub fn key_path(&self) -> String {
        match self {
            Self::Address => "address".into(),
            Self::HttpRedirectAddress => "http_redirect_address".into(),
            Self::MetricsAddress => "metrics_address".into(),
            Self::AdminAddress => "admin_address".into(),
            Self::CodecType => "codec_type".into(),
            Self::Http3AdvertisedPort => "http3_advertised_port".into(),
            Self::TimeoutRead => "timeout_read".into(),
            Self::TimeoutWrite => "timeout_write".into(),
            Self::TimeoutIdle => "timeout_idle".into(),
            Self::DefaultUpstreamTimeout => "default_upstream_timeout".into(),
            Self::DrainTimeout => "drain_timeout".into(),
            Self::DrainScope => "drain_scope".into(),
            Self::Certificate(i) => format!("certificates[{i}]"),
            Self::DownstreamMtls => "downstream_mtls".into(),
            Self::MtlsCa => "downstream_mtls.ca".into(),
            Self::MtlsCrl => "downstream_mtls.crl".into(),
            Self::MtlsEnforcement => "downstream_mtls.enforcement".into(),
            Self::IdpProviderUrl => "idp_provider_url".into(),
            Self::IdpClientId => "idp_client_id".into(),
            Self::JwksUrl => "jwks_url".into(),
            Self::JwtAudiences => "jwt_audiences".into(),
            Self::JwtLeeway => "jwt_leeway".into(),
            Self::IdpCa => "idp_ca".into(),
            Self::IdpClientSecret => "idp_client_secret".into(),
            Self::IdpScopes => "idp_scopes".into(),
            Self::AuthenticateServiceUrl => "authenticate_service_url".into(),
            Self::CookieName => "cookie_name".into(),
            Self::CookieSecret => "cookie_secret".into(),
            Self::CookieExpire => "cookie_expire".into(),
            Self::SigningKey => "signing_key".into(),
            Self::JwtClaimsHeaders => "jwt_claims_headers".into(),
        }
    }
}

/// A source's spelling of route fields.
pub trait RouteNames {
    /// The path an error about `field` is reported at.
    fn name(&self, field: RouteField<'_>) -> String;
}

/// A source's spelling of global settings.
pub trait SettingsNames {
    /// The path an error about `field` is reported at.
    fn name(&self, field: SettingsField) -> String;
}

/// The reference's own spelling below a base path: `routes[3]` + `timeout` is
/// `routes[3].timeout`, an empty base gives the key alone. What the file and the environment
/// use.
#[derive(Clone, Debug, Default)]
pub struct KeyPath(pub String);

impl KeyPath {
    /// `base.key`, `key` or `base`.
    pub fn join(&self, key: &str) -> String {
        match (self.0.is_empty(), key.is_empty()) {
            (true, _) => key.to_owned(),
            (false, true) => self.0.clone(),
            (false, false) => format!("{}.{key}", self.0),
        }
    }
}

impl RouteNames for KeyPath {
    fn name(&self, field: RouteField<'_>) -> String {
        self.join(&field.key_path())
    }
}

impl SettingsNames for KeyPath {
    fn name(&self, field: SettingsField) -> String {
        self.join(&field.key_path())
    }
}

/// The keys of a route's options as a file spells them and an Ingress annotation names them
/// (`portcullis.io/<key>`): everything but its name, host, path matcher and upstreams.
pub const ROUTE_OPTION_KEYS: &[&str] = &[
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
    "lb_hash_header",
    "lb_hash_cookie",
    "ring_hash_lb_config",
    "healthy_panic_threshold",
    "outlier_detection",
    "retries",
    "retry_on",
    "allow_public_unauthenticated_access",
    "allow_any_authenticated_user",
    "allowed_users",
    "allowed_domains",
    "allowed_idp_claims",
    "pass_identity_headers",
    "jwt_claims_headers",
];
