//! Proxy errors say whose fault a failure was and map to exactly one status code, so the
//! response, the access log and the metrics always agree.

use http::StatusCode;

/// Who caused a failed request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// The client: bad or slow request.
    Downstream,
    /// The upstream: unreachable, reset, slow.
    Upstream,
    /// The configuration: no route, forbidden upgrade.
    Config,
}

impl Fault {
    /// Lower-case name for logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Fault::Downstream => "downstream",
            Fault::Upstream => "upstream",
            Fault::Config => "config",
        }
    }
}

/// Everything that can make the proxy answer on its own instead of relaying a response.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// No route for this host and path.
    #[error("no route matches this host and path")]
    NoRoute,
    /// The request is a WebSocket upgrade and the route does not allow it.
    #[error("WebSocket upgrades are not allowed on this route (allow_websockets is off)")]
    UpgradeNotAllowed,
    /// The downstream request was malformed.
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    /// A method the route cannot serve (CONNECT, until tunnels exist).
    #[error("method not allowed: {0} is not served on this route")]
    MethodNotAllowed(&'static str),
    /// Request headers over the limit.
    #[error("request headers too large: {0}")]
    HeadersTooLarge(&'static str),
    /// `timeout_read` passed before the request arrived.
    #[error("request timeout: the request did not arrive within timeout_read")]
    ReadTimeout,
    /// mTLS `policy_with_default_deny` and no client certificate.
    #[error("a valid client certificate is required")]
    ClientCertRequired,
    /// The route has no upstream right now (its Service has no ready endpoints).
    #[error("no ready endpoints for this route")]
    NoEndpoints,
    /// Connecting to the upstream failed.
    #[error("upstream unreachable: {0}")]
    UpstreamUnreachable(String),
    /// The upstream reset or broke the connection.
    #[error("upstream connection failed: {0}")]
    UpstreamReset(String),
    /// The upstream did not answer within the route's timeout.
    #[error("upstream timeout: no response within {0}")]
    UpstreamTimeout(String),
    /// `timeout_write` passed before the response started.
    #[error("request timeout: the request/response cycle exceeded timeout_write")]
    WriteTimeout,
    /// The stream was idle too long before the upstream answered.
    #[error("stream idle timeout: no activity for {0}")]
    StreamIdle(String),
    /// The upstream answered an upgrade with something unusable.
    #[error("upstream refused the upgrade: {0}")]
    UpgradeFailed(String),
}

impl ProxyError {
    /// The one status code for this error.
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::NoRoute => StatusCode::NOT_FOUND,
            ProxyError::UpgradeNotAllowed => StatusCode::FORBIDDEN,
            ProxyError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ProxyError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ProxyError::HeadersTooLarge(_) => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ProxyError::ReadTimeout => StatusCode::REQUEST_TIMEOUT,
            ProxyError::ClientCertRequired => StatusCode::from_u16(495).expect("495 is a valid code"),
            ProxyError::UpstreamUnreachable(_) | ProxyError::NoEndpoints => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::UpstreamReset(_) | ProxyError::UpgradeFailed(_) => StatusCode::BAD_GATEWAY,
            ProxyError::UpstreamTimeout(_) | ProxyError::WriteTimeout | ProxyError::StreamIdle(_) => {
                StatusCode::GATEWAY_TIMEOUT
            }
        }
    }

    /// Whose fault it was.
    pub fn fault(&self) -> Fault {
        match self {
            ProxyError::NoRoute | ProxyError::UpgradeNotAllowed => Fault::Config,
            ProxyError::BadRequest(_)
            | ProxyError::MethodNotAllowed(_)
            | ProxyError::HeadersTooLarge(_)
            | ProxyError::ReadTimeout
            | ProxyError::ClientCertRequired => Fault::Downstream,
            ProxyError::UpstreamUnreachable(_)
            | ProxyError::NoEndpoints
            | ProxyError::UpstreamReset(_)
            | ProxyError::UpstreamTimeout(_)
            | ProxyError::WriteTimeout
            | ProxyError::StreamIdle(_)
            | ProxyError::UpgradeFailed(_) => Fault::Upstream,
        }
    }

    /// The `outcome` label of `portcullis_upstream_requests_total`.
    pub fn outcome(&self) -> &'static str {
        match self {
            ProxyError::UpstreamUnreachable(_) => "connect_failure",
            ProxyError::NoEndpoints => "no_endpoints",
            ProxyError::UpstreamReset(_) | ProxyError::UpgradeFailed(_) => "reset",
            ProxyError::UpstreamTimeout(_) | ProxyError::WriteTimeout | ProxyError::StreamIdle(_) => "timeout",
            _ => "not_sent",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_match_the_contract() {
        assert_eq!(ProxyError::NoRoute.status(), 404);
        assert_eq!(ProxyError::UpstreamReset(String::new()).status(), 502);
        assert_eq!(ProxyError::UpstreamUnreachable(String::new()).status(), 503);
        assert_eq!(ProxyError::UpstreamTimeout(String::new()).status(), 504);
        assert_eq!(ProxyError::ReadTimeout.status(), 408);
        assert_eq!(ProxyError::HeadersTooLarge("").status(), 431);
        assert_eq!(ProxyError::ReadTimeout.fault(), Fault::Downstream);
    }
}
