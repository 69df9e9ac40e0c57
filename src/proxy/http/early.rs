//! Phase 1, early checks: what is refused before anything is routed (pingora's
//! `early_request_filter`). The request head's size (the request line included) and count
//! of headers, one `Host`, and no header name that a server reading `_` as `-` would take
//! for a framing header (a smuggling vector).

use http::header;
use http::Request;

use crate::proxy::error::{Error, Kind, Result};
use crate::proxy::headers::{dashed_equal, FRAMING};

/// Request header limits (tighter than Pomerium's 128 KiB / 1000, as nginx's defaults).
pub const MAX_REQUEST_HEADER_BYTES: usize = 32 * 1024;
/// Maximum number of request headers.
pub const MAX_REQUEST_HEADERS: usize = 100;

/// Runs the early checks on `req` for `host` (its `:authority` or `Host`, see
/// [`request_host`]). `Ok(true)`: some header name has a `_` (see
/// [`crate::proxy::headers::strip_underscore_lookalikes`]).
#[inline]
pub(crate) fn check<B>(req: &Request<B>, host: &str) -> Result<bool> {
    let underscored = check_request_head(req)?;
    if host.is_empty() {
        return Err(Error::bad_request("missing Host header"));
    }
    Ok(underscored)
}

/// The host a request is for: its `:authority` (HTTP/2, HTTP/3, absolute-form) or `Host`.
#[inline]
pub(crate) fn request_host<B>(req: &Request<B>) -> Option<&str> {
    req.uri()
        .authority()
        .map(http::uri::Authority::as_str)
        .or_else(|| req.headers().get(header::HOST).and_then(|h| h.to_str().ok()))
}

/// The early checks on a request head, before anything is routed or forwarded: its size (the
/// request line included) and count of headers, one `Host`, and no header name that a server
/// which reads `_` as `-` would take for a framing header (a smuggling vector). `Ok(true)`
/// when some header name has a `_` (see [`strip_underscore_lookalikes`]).
fn check_request_head<B>(req: &Request<B>) -> Result<bool> {
    let headers = req.headers();
    if headers.len() > MAX_REQUEST_HEADERS {
        return Err(Error::with(Kind::HeadersTooLarge, "more than 100 request headers"));
    }
    // The request line: method, target, version and the separators.
    let mut bytes = req.method().as_str().len() + req.uri().path_and_query().map_or(0, |p| p.as_str().len()) + 12;
    let mut hosts = 0;
    let mut underscored = false;
    for (name, value) in headers {
        bytes += name.as_str().len() + value.len() + 4;
        if *name == header::HOST {
            hosts += 1;
        } else if name.as_str().contains('_') {
            underscored = true;
            if FRAMING.iter().any(|n| dashed_equal(n, name.as_str())) {
                return Err(Error::bad_request("a header name with '_' in place of '-' of a framing header"));
            }
        }
    }
    if bytes > MAX_REQUEST_HEADER_BYTES {
        return Err(Error::with(Kind::HeadersTooLarge, "request line and headers exceed 32 KiB"));
    }
    if hosts > 1 {
        return Err(Error::bad_request("more than one Host header"));
    }
    Ok(underscored)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{HeaderMap, HeaderName, HeaderValue};

    #[test]
    fn header_limits() {
        let mut h = HeaderMap::new();
        for i in 0..101 {
            h.insert(HeaderName::try_from(format!("x-{i}")).unwrap(), HeaderValue::from_static("v"));
        }
        assert!(matches!(check_request_head(&with_headers(h)), Err(e) if e.kind() == Kind::HeadersTooLarge));
        let mut h = HeaderMap::new();
        h.insert("x-big", HeaderValue::from_str(&"a".repeat(33 * 1024)).unwrap());
        assert!(matches!(check_request_head(&with_headers(h)), Err(e) if e.kind() == Kind::HeadersTooLarge));
        // The request line counts too.
        let long = Request::builder().uri(format!("/{}", "a".repeat(33 * 1024))).body(()).unwrap();
        assert!(matches!(check_request_head(&long), Err(e) if e.kind() == Kind::HeadersTooLarge));
        let method = Request::builder().method("A".repeat(33 * 1024).as_str()).uri("/").body(()).unwrap();
        assert!(matches!(check_request_head(&method), Err(e) if e.kind() == Kind::HeadersTooLarge));
    }

    fn with_headers(h: HeaderMap) -> Request<()> {
        let mut r = Request::new(());
        *r.headers_mut() = h;
        r
    }

    #[test]
    fn one_host_and_no_framing_lookalikes() {
        let mut h = HeaderMap::new();
        h.append(header::HOST, HeaderValue::from_static("a"));
        assert!(check_request_head(&with_headers(h.clone())).is_ok());
        h.append(header::HOST, HeaderValue::from_static("b"));
        assert!(matches!(check_request_head(&with_headers(h)), Err(e) if e.kind() == Kind::BadRequest));
        for name in ["transfer_encoding", "content_length", "proxy_connection", "keep_alive", "Transfer_Encoding"] {
            let mut h = HeaderMap::new();
            h.insert(HeaderName::try_from(name).unwrap(), HeaderValue::from_static("1"));
            assert!(matches!(check_request_head(&with_headers(h)), Err(e) if e.kind() == Kind::BadRequest), "{name}");
        }
        for name in ["x_forwarded_user", "content_type_x", "my_host"] {
            let mut h = HeaderMap::new();
            h.insert(HeaderName::try_from(name).unwrap(), HeaderValue::from_static("1"));
            assert!(matches!(check_request_head(&with_headers(h)), Ok(true)), "{name}");
        }
        assert!(matches!(check_request_head(&with_headers(HeaderMap::new())), Ok(false)));
    }
}
