//! Phase 2, built-in endpoints: what the proxy answers itself, before any route (pingora's
//! `request_filter`). Today the `http-ingress` redirect listener, which sends everything but
//! ACME HTTP-01 challenges to https; the sign-in callback and the JWKS endpoint come here.

use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};

use crate::proxy::body::{self, ProxyBody};
use crate::proxy::conn::{Conn, ListenerKind};

const ACME_PREFIX: &str = "/.well-known/acme-challenge/";

/// The proxy's own answer to `req`, or `None` when the request goes on to routing.
#[inline]
pub(crate) fn answer<B>(conn: &Conn, req: &Request<B>, host: &str) -> Option<Response<ProxyBody>> {
    if conn.listener() == ListenerKind::Redirect && !req.uri().path().starts_with(ACME_PREFIX) {
        return Some(redirect_to_https(req, host, conn.https_port));
    }
    None
}

fn redirect_to_https<B>(req: &Request<B>, host: &str, https_port: u16) -> Response<ProxyBody> {
    // A Host without a port came through port 80 (or a load balancer); keep the default
    // https port. A Host with a port is a direct connection: point at our https port.
    let location_host = match host.rsplit_once(':') {
        Some((h, p))
            if p.parse::<u16>().is_ok() && !h.ends_with(']') || host.starts_with('[') && host.contains("]:") =>
        {
            let h = &host[..host.rfind(':').unwrap_or(host.len())];
            if https_port == 443 {
                h.to_owned()
            } else {
                format!("{h}:{https_port}")
            }
        }
        _ => host.to_owned(),
    };
    let pq = req.uri().path_and_query().map_or("/", http::uri::PathAndQuery::as_str);
    let location = format!("https://{location_host}{pq}");
    Response::builder()
        .status(StatusCode::PERMANENT_REDIRECT)
        .header(header::LOCATION, HeaderValue::from_str(&location).unwrap_or(HeaderValue::from_static("/")))
        .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(body::full(format!("308 Permanent Redirect to {location}\n")))
        .expect("static parts are valid")
}
