//! The header rules every path to an upstream applies, requests and upgrades alike:
//! hop-by-hop removal (RFC 9110 section 7.6.1), the forwarding headers, the route's header
//! rules and path rewrites, the upstream URI and `Host`, and the `_` look-alikes of the
//! headers the proxy sets.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::Uri;

use super::conn::Conn;
use super::error::Error;
use super::snapshot::CompiledRoute;
use super::upstream::Target;
use crate::config::{PathMatch, Route};

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
pub(crate) static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Framing and hop-by-hop headers whose `_` spelling is refused with 400.
pub(crate) const FRAMING: [&str; 4] = ["content-length", "transfer-encoding", "keep-alive", "proxy-connection"];

/// Headers the proxy sets from the real connection: their `_` spellings are removed, as a
/// CGI-style upstream (PHP, WSGI, Rack) reads `X_Forwarded_For` and `X-Forwarded-For` as the
/// same `HTTP_X_FORWARDED_FOR` and a client could spoof its address (nginx drops every `_`
/// header by default, `underscores_in_headers off`).
const SET_BY_PROXY: [&str; 7] = [
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-request-id",
    "forwarded",
    "x-real-ip",
    "x-portcullis-jwt-assertion",
];

/// Whether `name` (lower case) is `dashed` once its `_` are read as `-`.
pub(crate) fn dashed_equal(dashed: &str, name: &str) -> bool {
    dashed.len() == name.len() && dashed.bytes().zip(name.bytes()).all(|(a, b)| a == b || (a == b'-' && b == b'_'))
}

/// Removes the `_` spellings of the headers the proxy sets ([`SET_BY_PROXY`], the identity
/// assertion included) and of those the route sets or removes (`claims_headers`: its
/// `jwt_claims_headers`). Only called for a request with a `_` in some header name.
pub(crate) fn strip_underscore_lookalikes(
    headers: &mut HeaderMap,
    route: &Route,
    claims_headers: &[(HeaderName, String)],
) {
    let spoofed: Vec<HeaderName> = headers
        .keys()
        .filter(|n| n.as_str().contains('_'))
        .filter(|n| {
            let n = n.as_str();
            SET_BY_PROXY.iter().any(|d| dashed_equal(d, n))
                || route.set_request_headers.iter().any(|(d, _)| dashed_equal(d.as_str(), n))
                || route.remove_request_headers.iter().any(|d| dashed_equal(d.as_str(), n))
                || claims_headers.iter().any(|(d, _)| dashed_equal(d.as_str(), n))
        })
        .cloned()
        .collect();
    for name in spoofed {
        headers.remove(name);
    }
}

/// Whether a `Connection` header names the `upgrade` option.
pub(crate) fn connection_has_upgrade(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("upgrade")))
}

/// The route's `set_response_headers` on a response the client gets.
pub(crate) fn set_response_headers(headers: &mut HeaderMap, route: &Route) {
    for (name, value) in &route.set_response_headers {
        headers.insert(name.clone(), value.clone());
    }
}

/// An HTTP/1.1 upgrade offer other than a WebSocket or h2c (which the proxy ignores, as a
/// server may).
pub(crate) fn is_other_upgrade(headers: &HeaderMap) -> bool {
    headers.get(header::UPGRADE).is_some_and(|v| !v.as_bytes().eq_ignore_ascii_case(b"h2c"))
        && connection_has_upgrade(headers)
}

/// `Content-Length` as the upstream gets it: one value, in decimal without leading zeros, or
/// none when the body's length is not known (the body is then framed by itself). hyper
/// accepts `0004` and repeated equal values, HTTP/3 requests may carry anything; forwarding
/// them as written would hand the upstream a framing that another parser may read
/// differently.
pub(crate) fn canonical_content_length(headers: &mut HeaderMap, exact: Option<u64>) {
    if !headers.contains_key(header::CONTENT_LENGTH) {
        return;
    }
    let canonical = decimal_content_length(headers).is_some_and(|b| b.len() == 1 || b[0] != b'0');
    if !canonical {
        match exact {
            Some(n) => {
                headers.insert(header::CONTENT_LENGTH, HeaderValue::from(n));
            }
            None => {
                headers.remove(header::CONTENT_LENGTH);
            }
        }
    }
}

/// The upstream path after `prefix_rewrite` or the regex rewrite, with the query kept.
pub fn rewrite_path(route: &Route, uri: &Uri) -> String {
    let path = uri.path();
    let mut out = match (&route.prefix_rewrite, &route.regex_rewrite, &route.path) {
        (Some(new), _, PathMatch::Prefix(p)) => {
            let rest = &path[p.len().min(path.len())..];
            join_path(new, rest)
        }
        (Some(new), _, PathMatch::Any) => join_path(new, path.trim_start_matches('/')),
        (Some(new), _, PathMatch::Exact(_)) => new.clone(),
        (_, Some((re, sub)), _) => re.replace_all(path, sub.as_str()).into_owned(),
        _ => path.to_owned(),
    };
    if !out.starts_with('/') {
        out.insert(0, '/');
    }
    if let Some(q) = uri.query() {
        out.push('?');
        out.push_str(q);
    }
    out
}

fn join_path(prefix: &str, rest: &str) -> String {
    if rest.is_empty() {
        return prefix.to_owned();
    }
    let rest = rest.strip_prefix('/').unwrap_or(rest);
    if prefix.ends_with('/') {
        format!("{prefix}{rest}")
    } else {
        format!("{prefix}/{rest}")
    }
}

/// Headers that describe one hop and never cross the proxy (RFC 9110 §7.6.1), plus every
/// header the `Connection` header names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Most messages carry none of them: one pass over the names instead of ten lookups.
    if !headers.keys().any(is_hop_by_hop_name) {
        return;
    }
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::try_from(t.trim()).ok())
        .collect();
    for n in named {
        if n != header::TE {
            headers.remove(n);
        }
    }
    for n in [
        header::CONNECTION,
        header::PROXY_AUTHENTICATE,
        header::PROXY_AUTHORIZATION,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
    ] {
        headers.remove(n);
    }
    headers.remove("keep-alive");
    headers.remove("proxy-connection");
    // gRPC needs `te: trailers`; any other TE value is hop-by-hop.
    if headers.get(header::TE).is_some_and(|v| !v.as_bytes().eq_ignore_ascii_case(b"trailers")) {
        headers.remove(header::TE);
    }
}

/// Removes the fields that are connection-specific, which HTTP/3 forbids in a response
/// (RFC 9114 section 4.2): `Connection` and the fields HTTP/1.1 uses it for. Unlike
/// [`strip_hop_by_hop`], what a route sets on its responses (even `Trailer` or
/// `Proxy-Authenticate`) is kept, as on HTTP/1.1 and HTTP/2.
pub fn strip_connection_specific(headers: &mut HeaderMap) {
    for name in [header::CONNECTION, header::TRANSFER_ENCODING, header::UPGRADE] {
        headers.remove(name);
    }
    headers.remove("keep-alive");
    headers.remove("proxy-connection");
}

/// The request's `Content-Length` when it is one value of decimal digits only (no sign, no
/// list, not empty): the only spelling any parser reads the same way.
pub(crate) fn decimal_content_length(headers: &HeaderMap) -> Option<&[u8]> {
    let mut values = headers.get_all(header::CONTENT_LENGTH).iter();
    match (values.next(), values.next()) {
        (Some(v), None) if !v.is_empty() && v.as_bytes().iter().all(u8::is_ascii_digit) => Some(v.as_bytes()),
        _ => None,
    }
}

/// Whether `strip_hop_by_hop` could remove or inspect a header of this name (`te` included:
/// it is kept or removed by value).
fn is_hop_by_hop_name(n: &HeaderName) -> bool {
    *n == header::CONNECTION
        || *n == header::PROXY_AUTHENTICATE
        || *n == header::PROXY_AUTHORIZATION
        || *n == header::TRAILER
        || *n == header::TRANSFER_ENCODING
        || *n == header::UPGRADE
        || *n == header::TE
        || matches!(n.as_str(), "keep-alive" | "proxy-connection")
}

/// The `Host` (HTTP/1.1) or `:authority` (HTTP/2) the upstream sees.
pub(crate) fn upstream_host<'a>(r: &'a Route, target: &'a Target, host: &'a str) -> &'a str {
    if r.preserve_host_header {
        host
    } else if let Some(h) = &r.host_rewrite {
        h.as_str()
    } else {
        target.host_header.as_str()
    }
}

/// The upstream request URI: the route's host as authority (the connector pins the real
/// address), or the upstream's own authority if that host cannot be an authority.
pub(crate) fn upstream_uri(route: &CompiledRoute, target: &Target, host: &str, path: &str) -> Result<Uri, Error> {
    let authority = upstream_host(&route.route, target, host);
    format!("{}://{authority}{path}", target.scheme)
        .parse()
        .or_else(|_| format!("{}{path}", target.base).parse())
        .map_err(|_| Error::bad_request("request path cannot be forwarded"))
}

/// The upstream request URI without any formatting or parsing, when it is just the target's
/// own authority with the request's path and query (no rewrite, no host override): the same
/// URI [`upstream_uri`] builds then. `None` otherwise.
pub(crate) fn plain_upstream_uri(route: &CompiledRoute, target: &Target, uri: &Uri) -> Option<Uri> {
    let r = &route.route;
    if r.preserve_host_header || r.host_rewrite.is_some() || r.prefix_rewrite.is_some() || r.regex_rewrite.is_some() {
        return None;
    }
    let authority = target.authority.as_ref()?;
    let pq = uri.path_and_query()?;
    // `rewrite_path` gives `path?query`, which is the request's own text when that starts
    // with `/`; `upstream_uri` refuses what `Uri` parsing refuses, its length limit included.
    if !pq.as_str().starts_with('/') || target.scheme.len() + 3 + authority.as_str().len() + pq.as_str().len() > 65_534
    {
        return None;
    }
    let scheme = match target.scheme {
        "http" => http::uri::Scheme::HTTP,
        "https" => http::uri::Scheme::HTTPS,
        _ => return None,
    };
    let mut parts = http::uri::Parts::default();
    parts.scheme = Some(scheme);
    parts.authority = Some(authority.clone());
    parts.path_and_query = Some(pq.clone());
    Uri::from_parts(parts).ok()
}

/// Applies the forwarding headers and the route's header rules.
pub(crate) fn forwarding_headers(
    headers: &mut HeaderMap,
    conn: &Conn,
    route: &CompiledRoute,
    target: &Target,
    host: &str,
    request_id: &str,
) {
    let r = &route.route;
    // Room for the four forwarding headers and the route's own at once: the request's map
    // was sized for its own headers, and growing it one insert at a time reallocated and
    // rehashed it more than once per request.
    headers.reserve(4 + r.set_request_headers.len());
    // The request's own `Host` value when it is the host (it usually is): no copy.
    let host_value = match headers.get(header::HOST) {
        Some(v) if v.as_bytes() == host.as_bytes() => Some(v.clone()),
        _ => HeaderValue::from_str(host).ok(),
    };
    headers.insert(&X_FORWARDED_FOR, conn.forwarded_for.clone());
    headers
        .insert(&X_FORWARDED_PROTO, HeaderValue::from_static(if conn.listener().is_tls() { "https" } else { "http" }));
    if let Some(v) = &host_value {
        headers.insert(&X_FORWARDED_HOST, v.clone());
    }
    headers.insert(&X_REQUEST_ID, HeaderValue::from_str(request_id).expect("hex is a valid header value"));
    let upstream_host = if r.preserve_host_header {
        host_value
    } else if let Some(h) = &r.host_rewrite {
        HeaderValue::from_str(h).ok()
    } else {
        target.host_value.clone()
    };
    if let Some(v) = upstream_host {
        headers.insert(header::HOST, v);
    }
    for name in &r.remove_request_headers {
        headers.remove(name);
    }
    for (name, value) in &r.set_request_headers {
        headers.insert(name.clone(), value.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::errors::Errors;
    use crate::source::yaml::{parse_route, NoMaterial};

    fn route(yaml: &str) -> Route {
        let v: serde_json::Value = serde_yaml_ng::from_str(yaml).unwrap();
        let mut errs = Errors::default();
        parse_route("r", &v, &NoMaterial, &mut errs).unwrap()
    }

    #[test]
    fn prefix_rewrite_replaces_the_matched_prefix() {
        let r = route("{from: https://a.b, prefix: /api, prefix_rewrite: /v2, to: http://h}");
        assert_eq!(rewrite_path(&r, &"/api/users?x=1".parse().unwrap()), "/v2/users?x=1");
        assert_eq!(rewrite_path(&r, &"/api".parse().unwrap()), "/v2");
        let r = route("{from: https://a.b, prefix: /api, prefix_rewrite: /, to: http://h}");
        assert_eq!(rewrite_path(&r, &"/api/users".parse().unwrap()), "/users");
        assert_eq!(rewrite_path(&r, &"/api".parse().unwrap()), "/");
    }

    #[test]
    fn regex_rewrite_substitutes() {
        let r = route(
            r#"{from: "https://a.b", to: "http://h", regex_rewrite_pattern: "^/service/([^/]+)(/.*)$", regex_rewrite_substitution: "$2/instance/$1"}"#,
        );
        assert_eq!(rewrite_path(&r, &"/service/foo/v1/api".parse().unwrap()), "/v1/api/instance/foo");
    }

    #[test]
    fn hop_by_hop_headers_are_removed() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("keep-alive, x-secret"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert(header::UPGRADE, HeaderValue::from_static("h2c"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        let names: Vec<_> = h.keys().map(HeaderName::as_str).collect();
        assert_eq!(names, vec!["te", "x-kept"]);
    }

    #[test]
    fn hop_by_hop_fast_path_keeps_ordinary_headers() {
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 2);
        h.insert("proxy-connection", HeaderValue::from_static("keep-alive"));
        h.insert(header::TE, HeaderValue::from_static("gzip"));
        strip_hop_by_hop(&mut h);
        let names: Vec<_> = h.keys().map(HeaderName::as_str).collect();
        assert_eq!(names, vec!["content-type", "x-kept"]);
    }

    #[test]
    fn underscore_spellings_of_headers_the_proxy_sets_are_removed() {
        let r = route(
            "{from: https://a.b, to: http://h, set_request_headers: {X-User: a}, remove_request_headers: [X-Secret]}",
        );
        let mut h = HeaderMap::new();
        for name in
            ["x_forwarded_for", "x_request_id", "x_real_ip", "x_user", "x_secret", "x_kept_header", "content-type"]
        {
            h.insert(HeaderName::try_from(name).unwrap(), HeaderValue::from_static("spoofed"));
        }
        strip_underscore_lookalikes(&mut h, &r, &[]);
        let mut left: Vec<_> = h.keys().map(HeaderName::as_str).collect();
        left.sort_unstable();
        assert_eq!(left, ["content-type", "x_kept_header"]);
    }

    #[test]
    fn content_length_is_forwarded_canonical() {
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("0004"));
        canonical_content_length(&mut h, Some(4));
        assert_eq!(h.get_all(header::CONTENT_LENGTH).iter().collect::<Vec<_>>(), ["4"]);
        let mut h = HeaderMap::new();
        h.append(header::CONTENT_LENGTH, HeaderValue::from_static("4"));
        h.append(header::CONTENT_LENGTH, HeaderValue::from_static("4"));
        canonical_content_length(&mut h, Some(4));
        assert_eq!(h.get_all(header::CONTENT_LENGTH).iter().collect::<Vec<_>>(), ["4"]);
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
        canonical_content_length(&mut h, Some(0));
        assert_eq!(h.get(header::CONTENT_LENGTH).unwrap(), "0");
        // An HTTP/3 request's `+4` or `4, 4` gives no known length: no Content-Length then.
        for odd in ["+4", "4, 4"] {
            let mut h = HeaderMap::new();
            h.insert(header::CONTENT_LENGTH, HeaderValue::from_static(odd));
            canonical_content_length(&mut h, None);
            assert!(h.get(header::CONTENT_LENGTH).is_none(), "{odd}");
        }
    }

    #[test]
    fn other_upgrades_are_told_apart() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("keep-alive, Upgrade"));
        h.insert(header::UPGRADE, HeaderValue::from_static("foo"));
        assert!(is_other_upgrade(&h));
        h.insert(header::UPGRADE, HeaderValue::from_static("h2c"));
        assert!(!is_other_upgrade(&h));
        h.remove(header::CONNECTION);
        h.insert(header::UPGRADE, HeaderValue::from_static("foo"));
        assert!(!is_other_upgrade(&h));
    }
}
