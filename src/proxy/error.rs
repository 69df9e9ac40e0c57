//! The one error type of the request path, after pingora-error: what went wrong ([`Kind`]),
//! its source, whose fault it was ([`Fault`]), whether the request may be tried again ([`Retry`]), and
//! the cause it came from. Each kind maps to exactly one status code and one upstream
//! outcome, so the response, the access log and the metrics always agree.

use std::borrow::Cow;
use std::fmt;

use http::StatusCode;

/// Error type of a cause: whatever a client, a body or a connector returned.
pub type Cause = Box<dyn std::error::Error + Send + Sync>;

/// Whose fault a failed request was (the access log's `fault`): pingora's error source. (Not
/// [`std::error::Error::source`], which is the cause.)
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// The client: a bad, slow or cancelled request.
    Downstream,
    /// The upstream: unreachable, reset, slow.
    Upstream,
    /// The configuration: no route, a forbidden upgrade, a connection the proxy closed.
    Config,
    /// The proxy itself: a bug, never the request's fault.
    Internal,
}

impl Fault {
    /// Lower-case name for logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Fault::Downstream => "downstream",
            Fault::Upstream => "upstream",
            Fault::Config => "config",
            Fault::Internal => "internal",
        }
    }
}

/// Whether a failed upstream attempt may be made again, on another endpoint: what the retries
/// of [`super::http::send`] will go by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Retry {
    /// Never: the failure is the request's own, or trying again cannot help.
    Never,
    /// The request never reached an upstream (no connection): any request may be retried.
    NotSent,
    /// The upstream may have seen the request: only an idempotent one may be retried.
    IfIdempotent,
}

/// What went wrong.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// No route for this host and path.
    NoRoute,
    /// The request is a WebSocket upgrade and the route does not allow it.
    UpgradeNotAllowed,
    /// The downstream request was malformed.
    BadRequest,
    /// A method the route cannot serve (CONNECT, until tunnels exist).
    MethodNotAllowed,
    /// Request headers over the limit.
    HeadersTooLarge,
    /// `timeout_read` passed before the request arrived.
    ReadTimeout,
    /// mTLS `policy_with_default_deny` and no client certificate.
    ClientCertRequired,
    /// The route's policy refused a request that had no identity.
    Unauthenticated,
    /// The route's policy refused the request's identity.
    Forbidden,
    /// A sign-in step was invalid: an expired or forged state, another browser's sign-in,
    /// the provider refusing.
    SignInFailed,
    /// The identity provider could not be reached, or answered with nonsense.
    IdpUnavailable,
    /// The route has no upstream right now (its Service has no ready endpoints).
    NoEndpoints,
    /// Connecting to the upstream failed.
    UpstreamUnreachable,
    /// The upstream reset or broke the connection.
    UpstreamReset,
    /// The upstream did not answer within the route's timeout.
    UpstreamTimeout,
    /// `timeout_write` passed before the response started.
    WriteTimeout,
    /// The stream was idle too long before the upstream answered.
    StreamIdle,
    /// The upstream answered an upgrade with something unusable.
    UpgradeFailed,
    /// A bug in the proxy.
    Internal,
}

impl Kind {
    /// The one status code for this kind.
    pub fn status(self) -> StatusCode {
        match self {
            Kind::NoRoute => StatusCode::NOT_FOUND,
            Kind::UpgradeNotAllowed | Kind::Forbidden => StatusCode::FORBIDDEN,
            Kind::BadRequest | Kind::SignInFailed => StatusCode::BAD_REQUEST,
            Kind::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Kind::HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Kind::ReadTimeout => StatusCode::REQUEST_TIMEOUT,
            Kind::ClientCertRequired => StatusCode::from_u16(495).expect("495 is a valid code"),
            Kind::Unauthenticated => StatusCode::UNAUTHORIZED,
            Kind::UpstreamUnreachable | Kind::NoEndpoints => StatusCode::SERVICE_UNAVAILABLE,
            Kind::UpstreamReset | Kind::UpgradeFailed | Kind::IdpUnavailable => StatusCode::BAD_GATEWAY,
            Kind::UpstreamTimeout | Kind::WriteTimeout | Kind::StreamIdle => StatusCode::GATEWAY_TIMEOUT,
            Kind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// Whose fault this kind of failure is.
    pub fn fault(self) -> Fault {
        match self {
            Kind::NoRoute | Kind::UpgradeNotAllowed => Fault::Config,
            Kind::BadRequest
            | Kind::MethodNotAllowed
            | Kind::HeadersTooLarge
            | Kind::ReadTimeout
            | Kind::ClientCertRequired
            | Kind::Unauthenticated
            | Kind::SignInFailed
            | Kind::Forbidden => Fault::Downstream,
            Kind::UpstreamUnreachable
            | Kind::NoEndpoints
            | Kind::UpstreamReset
            | Kind::UpstreamTimeout
            | Kind::WriteTimeout
            | Kind::StreamIdle
            | Kind::UpgradeFailed
            | Kind::IdpUnavailable => Fault::Upstream,
            Kind::Internal => Fault::Internal,
        }
    }

    /// Whether an upstream attempt that failed this way may be made again.
    pub fn retry(self) -> Retry {
        match self {
            Kind::UpstreamUnreachable => Retry::NotSent,
            Kind::UpstreamReset | Kind::UpstreamTimeout => Retry::IfIdempotent,
            _ => Retry::Never,
        }
    }

    /// The `outcome` label of `portcullis_upstream_requests_total`.
    pub fn outcome(self) -> &'static str {
        match self {
            Kind::UpstreamUnreachable => "connect_failure",
            Kind::NoEndpoints => "no_endpoints",
            Kind::UpstreamReset | Kind::UpgradeFailed => "reset",
            Kind::UpstreamTimeout | Kind::WriteTimeout | Kind::StreamIdle => "timeout",
            _ => "not_sent",
        }
    }

    /// What the error page and the access log say before the detail.
    fn text(self) -> &'static str {
        match self {
            Kind::NoRoute => "no route matches this host and path",
            Kind::UpgradeNotAllowed => "WebSocket upgrades are not allowed on this route (allow_websockets is off)",
            Kind::BadRequest => "bad request",
            Kind::MethodNotAllowed => "method not allowed",
            Kind::HeadersTooLarge => "request headers too large",
            Kind::ReadTimeout => "request timeout: the request did not arrive within timeout_read",
            Kind::ClientCertRequired => "a valid client certificate is required",
            Kind::Unauthenticated => "sign in to use this route",
            Kind::Forbidden => "the route's policy does not allow this request",
            Kind::SignInFailed => "sign-in failed",
            Kind::IdpUnavailable => "sign-in is unavailable",
            Kind::NoEndpoints => "no ready endpoints for this route",
            Kind::UpstreamUnreachable => "upstream unreachable",
            Kind::UpstreamReset => "upstream connection failed",
            Kind::UpstreamTimeout => "upstream timeout",
            Kind::WriteTimeout => "request timeout: the request/response cycle exceeded timeout_write",
            Kind::StreamIdle => "stream idle timeout",
            Kind::UpgradeFailed => "upstream refused the upgrade",
            Kind::Internal => "internal error",
        }
    }
}

/// A failed request: its kind, what to say about it, and where it came from.
pub struct Error {
    kind: Kind,
    /// Said after the kind's text (`upstream unreachable: <detail>`); empty for none.
    detail: Cow<'static, str>,
    /// The error this one was made from, for [`std::error::Error::source`].
    cause: Option<Cause>,
    /// Known not to have reached the upstream (a stream refused, a new connection that
    /// closed before the request was written), whatever its kind says.
    unsent: bool,
}

/// The request path's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An error of `kind` with nothing more to say.
    pub fn new(kind: Kind) -> Self {
        Self { kind, detail: Cow::Borrowed(""), cause: None, unsent: false }
    }

    /// An error of `kind` with a detail.
    pub fn with(kind: Kind, detail: impl Into<Cow<'static, str>>) -> Self {
        Self { kind, detail: detail.into(), cause: None, unsent: false }
    }

    /// Keeps `cause` as this error's source.
    #[must_use]
    pub fn because(mut self, cause: impl Into<Cause>) -> Self {
        self.cause = Some(cause.into());
        self
    }

    /// A malformed request.
    pub fn bad_request(detail: &'static str) -> Self {
        Self::with(Kind::BadRequest, detail)
    }

    /// What went wrong.
    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// The one status code for this error.
    pub fn status(&self) -> StatusCode {
        self.kind.status()
    }

    /// Whose fault it was.
    pub fn fault(&self) -> Fault {
        self.kind.fault()
    }

    /// Whether the upstream attempt may be made again.
    pub fn retry(&self) -> Retry {
        if self.unsent {
            Retry::NotSent
        } else {
            self.kind.retry()
        }
    }

    /// Marks the failed attempt as one that never reached the upstream.
    #[must_use]
    pub fn unsent(mut self) -> Self {
        self.unsent = true;
        self
    }

    /// The `outcome` label of `portcullis_upstream_requests_total`.
    pub fn outcome(&self) -> &'static str {
        self.kind.outcome()
    }

    /// Whether the connection should close after the error page (the request's framing
    /// cannot be trusted, or the client is too slow to keep).
    pub fn closes_connection(&self) -> bool {
        matches!(self.kind, Kind::ReadTimeout | Kind::BadRequest | Kind::HeadersTooLarge)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.kind.text())?;
        if self.detail.is_empty() {
            return Ok(());
        }
        match self.kind {
            Kind::MethodNotAllowed => write!(f, ": {} is not served on this route", self.detail),
            Kind::UpstreamTimeout => write!(f, ": no response within {}", self.detail),
            Kind::StreamIdle => write!(f, ": no activity for {}", self.detail),
            _ => write!(f, ": {}", self.detail),
        }
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Error")
            .field("kind", &self.kind)
            .field("detail", &self.detail)
            .field("cause", &self.cause)
            .field("unsent", &self.unsent)
            .finish()
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.cause.as_deref().map(|c| c as &(dyn std::error::Error + 'static))
    }
}

/// `e` and its sources, joined by `: ` (what a one-line log or error page can show).
pub fn chain(e: &dyn std::error::Error) -> String {
    use std::fmt::Write as _;
    let mut out = e.to_string();
    let mut s = e.source();
    while let Some(x) = s {
        let _ = write!(out, ": {x}");
        s = x.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_match_the_contract() {
        assert_eq!(Error::new(Kind::NoRoute).status(), 404);
        assert_eq!(Error::with(Kind::UpstreamReset, String::new()).status(), 502);
        assert_eq!(Error::with(Kind::UpstreamUnreachable, String::new()).status(), 503);
        assert_eq!(Error::with(Kind::UpstreamTimeout, String::new()).status(), 504);
        assert_eq!(Error::new(Kind::ReadTimeout).status(), 408);
        assert_eq!(Error::with(Kind::HeadersTooLarge, "").status(), 431);
        assert_eq!(Error::new(Kind::ReadTimeout).fault(), Fault::Downstream);
    }

    #[test]
    fn texts_and_retry_classes() {
        assert_eq!(Error::with(Kind::UpstreamTimeout, "30s").to_string(), "upstream timeout: no response within 30s");
        assert_eq!(
            Error::with(Kind::MethodNotAllowed, "CONNECT").to_string(),
            "method not allowed: CONNECT is not served on this route"
        );
        assert_eq!(Error::bad_request("missing Host header").to_string(), "bad request: missing Host header");
        assert_eq!(Error::new(Kind::NoRoute).to_string(), "no route matches this host and path");
        assert_eq!(Kind::UpstreamUnreachable.retry(), Retry::NotSent);
        assert_eq!(Kind::UpstreamReset.retry(), Retry::IfIdempotent);
        assert_eq!(Kind::BadRequest.retry(), Retry::Never);
        assert_eq!(Kind::Internal.fault(), Fault::Internal);
    }

    #[test]
    fn the_cause_is_kept() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let e = Error::with(Kind::UpstreamUnreachable, "10.0.0.1:80").because(io);
        let source = std::error::Error::source(&e).expect("a source");
        assert_eq!(source.to_string(), "refused");
        assert_eq!(chain(&e), "upstream unreachable: 10.0.0.1:80: refused");
    }
}
