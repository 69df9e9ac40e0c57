//! Phase 2, built-in endpoints: what the proxy answers itself, before any route (pingora's
//! `request_filter`): the `http-ingress` redirect listener, which sends everything but ACME
//! HTTP-01 challenges to https; every request to the sign-in host; and on route hosts the
//! paths under `/.portcullis/` (the session hand-off, sign-out, the programmatic login) and
//! the assertion keys at `/.well-known/portcullis/jwks.json`.
//!
//! [`wanted`] is the cheap test every request pays; only a request it picks builds the
//! (boxed) future of [`answer`].

use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};

use crate::proxy::body::{self, ProxyBody};
use crate::proxy::conn::{Conn, ListenerKind};
use crate::proxy::error::{Error, Kind, Result};
use crate::proxy::signin::{bare_host, paths};
use crate::proxy::snapshot::Snapshot;

const ACME_PREFIX: &str = "/.well-known/acme-challenge/";
const BUILTIN_PREFIX: &str = "/.portcullis/";

/// Whether the proxy answers `req` itself.
#[inline]
pub(crate) fn wanted<B>(conn: &Conn, snap: &Snapshot, req: &Request<B>, host: &str) -> bool {
    let path = req.uri().path();
    if conn.listener() == ListenerKind::Redirect {
        return !path.starts_with(ACME_PREFIX);
    }
    if snap.idp.is_none() {
        return false;
    }
    path.starts_with(BUILTIN_PREFIX)
        || path == paths::JWKS
        || snap.authenticate.as_ref().is_some_and(|a| bare_host(host).eq_ignore_ascii_case(&a.host))
}

/// The proxy's own answer to `req` (one [`wanted`] picked).
pub(crate) async fn answer<B>(
    conn: &Conn,
    snap: &Snapshot,
    req: &Request<B>,
    host: &str,
) -> Result<Response<ProxyBody>> {
    if conn.listener() == ListenerKind::Redirect {
        return Ok(redirect_to_https(req, host, conn.https_port));
    }
    let path = req.uri().path();
    let query = req.uri().query();
    let headers = req.headers();
    let routes = |h: &str| snap.serves_host(h);
    let read = req.method() == Method::GET || req.method() == Method::HEAD;
    if path == paths::JWKS && read {
        if let Some(signer) = &snap.signer {
            return Ok(Response::builder()
                .status(StatusCode::OK)
                .header(header::CONTENT_TYPE, "application/json")
                .header(header::CACHE_CONTROL, "public, max-age=300")
                .body(body::full(signer.jwks()))
                .expect("static parts are valid"));
        }
    }
    let Some((sign_in, auth)) = snap.sign_in() else { return Err(Error::new(Kind::NoRoute)) };
    let signer = snap.signer.as_deref().ok_or_else(|| Error::new(Kind::Internal))?;
    let revocations = &snap.revocations;
    let on_auth_host = bare_host(host).eq_ignore_ascii_case(&auth.host);
    let sign_out = req.method() == Method::POST || read;
    match path {
        paths::SIGN_OUT if sign_out => sign_in.sign_out(auth, headers, query, &routes, revocations).await,
        paths::SIGN_IN if on_auth_host && read => {
            sign_in.sign_in(auth, headers, query, &routes, signer, revocations).await
        }
        paths::CALLBACK if on_auth_host && read => {
            sign_in.provider_callback(auth, headers, query, &routes, signer, revocations).await
        }
        paths::SIGNED_OUT if on_auth_host && read => Ok(sign_in.signed_out(query, &routes)),
        paths::CALLBACK if read => sign_in.route_callback(host, headers, query),
        paths::LOGIN_API if read && !on_auth_host => sign_in.login_api(auth, host, query),
        _ if on_auth_host => Err(Error::with(Kind::NoRoute, "this is the sign-in host")),
        _ => Err(Error::new(Kind::NoRoute)),
    }
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
