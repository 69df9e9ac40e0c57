//! Runs the phases of [`super`] in order for one request. Every phase gets what it needs; the
//! one thing they share is the request's log record, into which a phase writes what it
//! decided (the route, the upstream). Each failure is one [`Error`], answered by
//! [`response::finish`] with one status and logged once.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response};
use tokio::time::Instant;

use super::{authn, authz, builtin, early, pick, response, route, send};
use crate::config::TunnelProtocol;
use crate::metrics::method_label;
use crate::proxy::body::{self, now_ms, ProxyBody, StreamState};
use crate::proxy::conn::Conn;
use crate::proxy::error::{Error, Kind, Result};
use crate::proxy::headers::{is_other_upgrade, strip_underscore_lookalikes};
use crate::proxy::log::{request_id, PageFormat, RequestLog};
use crate::proxy::signin::bare_host;
use crate::proxy::snapshot::Snapshot;
use crate::proxy::state::Proxy;
use crate::proxy::{assertion, tunnel};

/// Handles one downstream request and never fails: every error becomes a response. The
/// body type is hyper's for HTTP/1.1 and HTTP/2 and the HTTP/3 stream's for HTTP/3.
pub async fn handle<B>(proxy: &Arc<Proxy>, conn: &Arc<Conn>, req: Request<B>) -> Response<ProxyBody>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<body::BoxError>,
{
    let (guard, started_ms) = conn.state.begin_request();
    let started = Instant::now()
        .checked_sub(Duration::from_millis(now_ms().saturating_sub(started_ms)))
        .unwrap_or_else(Instant::now);
    let snap = proxy.snapshot();
    let host = early::request_host(&req).unwrap_or_default().to_owned();
    let mut log = Box::new(RequestLog {
        metrics: proxy.metrics.clone(),
        listener: conn.listener().name(),
        snap: snap.clone(),
        route: None,
        method: method_label(req.method()),
        status: 0,
        started,
        request_id: request_id(),
        peer: conn.peer(),
        host: String::new(),
        path: req.uri().path().to_owned(),
        version: req.version(),
        upstream: None,
        error: None,
        fault: None,
        guard: Some(guard),
        in_flight: None,
        retry: None,
        authz: None,
        page: PageFormat::Text,
        done: false,
        bytes_received: 0,
        close_reason: None,
    });
    // The stream state and idle timeout of a relayed response, handed back beside it rather
    // than in its extensions (which would allocate a map per request).
    let mut stream: Option<(Option<Duration>, Arc<StreamState>)> = None;
    // Boxed: the phases' future is large, and hyper moves (HTTP/2: spawns) this one.
    let result = Box::pin(phases(conn, &snap, req, &host, &mut log, &mut stream)).await;
    log.host = host;
    response::finish(conn, result, log, stream)
}

/// Phases 1 to 7 and the relayed response's headers.
async fn phases<B>(
    conn: &Arc<Conn>,
    snap: &Arc<Snapshot>,
    mut req: Request<B>,
    host: &str,
    log: &mut RequestLog,
    stream: &mut Option<(Option<Duration>, Arc<StreamState>)>,
) -> Result<Response<ProxyBody>>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<body::BoxError>,
{
    let underscored = early::check(&req, host)?;
    // CONNECT and CONNECT-UDP name the tunnel's host and port (not a path): they find
    // `tcp+` and `udp+` routes, and only those; no request finds one of those otherwise.
    let tunnel = tunnel::target(&req).map_err(Error::bad_request)?;
    if tunnel.is_none() && builtin::wanted(conn, snap, &req, host) {
        log.page = PageFormat::of(req.headers());
        // Boxed: sign-in's futures are large, and rare.
        return Box::pin(builtin::answer(conn, snap, &req, host)).await;
    }
    let found = match &tunnel {
        Some(t) => route::find_tunnel(snap, t),
        None => route::find(snap, host, req.uri().path()),
    };
    let websocket = tunnel.is_none() && tunnel::is_websocket(&req);
    // A tunnel's identity is for its target's host (a programmatic token names it; a
    // CONNECT-UDP's `:authority` is the proxy's).
    let host = tunnel.as_ref().map_or(host, |t| t.host.as_str());
    // The identity is verified only when something will read it: the route's policy, its
    // identity headers, or a policy a later reload gives a tunnel's route.
    let wanted = websocket
        || tunnel.is_some()
        || found.is_some_and(|i| {
            let r = &snap.routes.routes()[i];
            r.route.policy.is_some()
                || r.pass_identity
                || !r.claims_headers.is_empty()
                || (snap.signin.is_some() && r.balancer.policy().hashes())
        });
    let identity = authn::authenticate(conn, snap, &req, host, wanted).await;
    authz::authorize(snap, conn, &identity)?;
    let route_idx = found.ok_or_else(|| Error::new(Kind::NoRoute))?;
    let route = &snap.routes.routes()[route_idx];
    log.route = Some(route_idx);
    if let Some(policy) = &route.route.policy {
        let (verdict, result) = authz::route_policy(policy, snap, route, conn, &identity, &req, &log.metrics);
        log.authz = Some(verdict);
        if let Err(e) = result {
            // A browser without a session is sent to sign in; anything else gets the 401.
            if e.kind() == Kind::Unauthenticated && is_navigation(&req) {
                if let Some((sign_in, auth)) = snap.sign_in() {
                    let pq = req.uri().path_and_query().map_or("/", http::uri::PathAndQuery::as_str);
                    return Ok(sign_in.to_sign_in(auth, host, pq));
                }
            }
            log.page = PageFormat::of(req.headers());
            return Err(e);
        }
    }
    if underscored {
        strip_underscore_lookalikes(req.headers_mut(), &route.route, &route.claims_headers);
    }
    // Never a client's own identity headers; the proxy's when the route passes them. (The
    // assertion only where the proxy issues identity at all, a provider being configured:
    // elsewhere no upstream can expect it from the proxy.)
    if snap.signer.is_some() || !route.claims_headers.is_empty() {
        assertion::set_headers(
            req.headers_mut(),
            snap.signer.as_ref(),
            identity.token.as_ref(),
            bare_host(host),
            route.pass_identity,
            &route.claims_headers,
            &conn.assertions,
        );
        // The proxy's own credentials stay with the proxy: its session cookies, and a
        // programmatic-login token, are no upstream's business (an upstream that saw them
        // could replay them).
        if let Some(sign_in) = &snap.signin {
            sign_in.strip_credentials(req.headers_mut(), snap.signer.as_deref());
        }
    }
    let session = identity.token.as_ref().and_then(|t| t.session.as_deref());
    let key = pick::hash_key(route, req.headers_mut(), conn.peer().ip(), session, conn.listener().is_tls());
    let target_idx = pick::pick(snap, route_idx, key.key, log)?;

    // Upgrades and CONNECT leave the pipeline here, into the tunnel.
    if let Some(t) = &tunnel {
        let target = &route.balancer.targets()[target_idx];
        let admission = authz::Admission::new(snap, route_idx, conn, &identity, &req);
        return match t.protocol {
            TunnelProtocol::Tcp => tunnel::tcp(conn, route, target_idx, key.key, req, host, log, admission).await,
            TunnelProtocol::Udp => tunnel::udp(conn, route, target, req, host, log, admission).await,
        };
    }
    if websocket {
        if !route.route.allow_websockets {
            return Err(Error::new(Kind::UpgradeNotAllowed));
        }
        let target = &route.balancer.targets()[target_idx];
        let admission = authz::Admission::new(snap, route_idx, conn, &identity, &req);
        return tunnel::websocket(conn, route, target, req, host, log, admission).await;
    }
    // No tunnel of any other kind: a CONNECT (of another `:protocol`) is never relayed as a
    // request, and a WebSocket route takes no other upgrade. (Elsewhere an `Upgrade` is only an offer, which
    // the proxy declines by not forwarding it: it is hop-by-hop.)
    if req.method() == Method::CONNECT {
        return Err(Error::with(Kind::MethodNotAllowed, "CONNECT"));
    }
    if route.route.allow_websockets && is_other_upgrade(req.headers()) {
        return Err(Error::new(Kind::UpgradeNotAllowed));
    }

    // A streaming response on a route with a policy ends when the policy stops admitting it.
    let admission = route.route.policy.is_some().then(|| authz::Admission::new(snap, route_idx, conn, &identity, &req));
    let (upstream_req, state) = send::prepare(conn, route, target_idx, req, host, &log.request_id)?;
    let ctx = send::RetryCtx { host, key: key.key };
    let resp = send::send_with_retries(conn, route, target_idx, upstream_req, &state, log, ctx).await?;
    *stream = Some((route.stream_idle, state));
    let mut resp = response::relayed(route, resp, admission, &log.metrics);
    for cookie in [identity.set_cookie, key.set_cookie].into_iter().flatten() {
        resp.headers_mut().append(http::header::SET_COOKIE, cookie);
    }
    Ok(resp)
}

/// A browser opening a page: GET or HEAD that accepts HTML (an API client, a fetch, a
/// form post keep the 401: a redirect to a sign-in page would only confuse them).
fn is_navigation<B>(req: &Request<B>) -> bool {
    (req.method() == Method::GET || req.method() == Method::HEAD)
        && req
            .headers()
            .get_all(http::header::ACCEPT)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| v.split(',').any(|m| m.split(';').next().unwrap_or("").trim().eq_ignore_ascii_case("text/html")))
}
