//! One request, from route lookup to the relayed response: policy checks, header rewriting,
//! upstream selection, the upstream and write timeouts, and the access log.

use std::fmt::Write as _;
use std::future::Future as _;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::BodyExt;
use hyper::body::Incoming;

use super::body::{self, now_ms, OnFinish, ProxyBody, RequestBody, ResponseBody, StreamState};
use super::error::ProxyError;
use super::listener::{ConnInfo, ListenerKind, RequestGuard, PREMATURE_RESET_LIFETIME};
use super::stall::{self, StallInfo};
use super::upstream::{ConnectError, H1Error, Target};
use super::{CompiledRoute, Proxy, Snapshot};
use crate::config::MtlsEnforcement;
use crate::metrics::{method_label, DurationLabels, Metrics, RequestLabels, UpstreamLabels};

/// Request header limits (tighter than Pomerium's 128 KiB / 1000, as nginx's defaults).
pub const MAX_REQUEST_HEADER_BYTES: usize = 32 * 1024;
/// Maximum number of request headers.
pub const MAX_REQUEST_HEADERS: usize = 100;

const ACME_PREFIX: &str = "/.well-known/acme-challenge/";

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Everything the access log and metrics need once the response is done.
pub(crate) struct Finish {
    pub metrics: Arc<Metrics>,
    pub listener: &'static str,
    /// The snapshot the request was routed with (route and upstream names, metric handles).
    pub snap: Arc<Snapshot>,
    /// Index of the route in `snap`, once routed.
    pub route: Option<usize>,
    pub method: &'static str,
    pub status: u16,
    pub started: Instant,
    pub request_id: RequestId,
    pub peer: SocketAddr,
    pub host: String,
    pub path: String,
    pub version: Version,
    /// Index of the target in the route's balancer, once picked.
    pub upstream: Option<usize>,
    pub error: Option<String>,
    pub fault: Option<&'static str>,
    pub guard: Option<RequestGuard>,
    pub in_flight: Option<InFlight>,
    /// Logged and counted already (or handed on: a tunnel logs its own record).
    pub done: bool,
}

/// The status logged and counted for a request the client cancelled before its response
/// was sent (nginx's 499, "client closed request").
pub const CLIENT_CLOSED_REQUEST: u16 = 499;

impl Drop for Finish {
    /// A request whose future was dropped before it had a response: the client reset the
    /// stream (HTTP/2, HTTP/3) or closed the connection, logged and counted as 499 (and
    /// against the connection's premature-reset rule); or the proxy closed the connection
    /// under it (`drain_timeout`), which is not the client's doing.
    fn drop(&mut self) {
        if self.done {
            return;
        }
        if self.guard.as_ref().is_some_and(RequestGuard::closed_by_proxy) {
            self.status = StatusCode::SERVICE_UNAVAILABLE.as_u16();
            self.fault = Some(super::error::Fault::Config.as_str());
            self.error = Some(CLOSED_BY_PROXY.to_owned());
        } else {
            self.status = CLIENT_CLOSED_REQUEST;
            self.fault = Some(super::error::Fault::Downstream.as_str());
            self.error = Some("client cancelled the request before its response".to_owned());
            self.count_cancelled();
        }
        self.record(0, None);
    }
}

/// The access log's error for a request whose connection the proxy closed under it.
const CLOSED_BY_PROXY: &str = "the proxy closed the connection (drain_timeout ended) before the response was complete";

impl Finish {
    fn compiled_route(&self) -> Option<&CompiledRoute> {
        self.route.map(|i| &self.snap.routes.routes()[i])
    }
}

/// The key of a `&'static str` label value in a [`super::RouteSeries`].
fn label_key(s: &'static str) -> (usize, usize) {
    (s.as_ptr() as usize, s.len())
}

impl OnFinish for Finish {
    fn finish(mut self: Box<Self>, bytes: u64, body_error: Option<&str>) {
        let mut body_error = body_error;
        if body_error == Some(body::CLIENT_GONE) {
            // hyper sends no body for these, and drops it unread.
            let no_body = self.method == "HEAD" || matches!(self.status, 100..=199 | 204 | 304);
            if no_body {
                body_error = None;
            } else if self.guard.as_ref().is_some_and(RequestGuard::closed_by_proxy) {
                body_error = Some(CLOSED_BY_PROXY);
            } else {
                self.count_cancelled();
            }
        }
        self.record(bytes, body_error);
    }
}

impl Finish {
    /// The premature-reset rule counts HTTP/2 and HTTP/3 requests that went upstream and were
    /// cancelled by the client within [`PREMATURE_RESET_LIFETIME`] of their start.
    fn count_cancelled(&self) {
        if self.version >= Version::HTTP_2
            && self.upstream.is_some()
            && self.started.elapsed() < PREMATURE_RESET_LIFETIME
        {
            if let Some(g) = &self.guard {
                g.cancelled();
            }
        }
    }

    /// Metrics and the access-log line, once.
    fn record(&mut self, bytes: u64, body_error: Option<&str>) {
        self.done = true;
        let elapsed = self.started.elapsed();
        let route = self.compiled_route();
        let route_name = route.map_or("none", |r| r.route.name.as_str());
        if let Some(r) = route {
            let (l, ll) = label_key(self.listener);
            let (m, ml) = label_key(self.method);
            r.series.requests.with(
                (l, ll, m, ml, self.status),
                || {
                    self.metrics
                        .requests
                        .get_or_create(&RequestLabels {
                            listener: self.listener,
                            route: r.route.name.clone(),
                            method: self.method,
                            code: self.status,
                        })
                        .clone()
                },
                |c| {
                    c.inc();
                },
            );
            r.series.duration.with(
                (l, ll, m, ml),
                || {
                    self.metrics
                        .duration
                        .get_or_create(&DurationLabels {
                            listener: self.listener,
                            route: r.route.name.clone(),
                            method: self.method,
                        })
                        .clone()
                },
                |h| h.observe(elapsed.as_secs_f64()),
            );
        } else {
            self.metrics
                .requests
                .get_or_create(&RequestLabels {
                    listener: self.listener,
                    route: route_name.to_owned(),
                    method: self.method,
                    code: self.status,
                })
                .inc();
            self.metrics
                .duration
                .get_or_create(&DurationLabels {
                    listener: self.listener,
                    route: route_name.to_owned(),
                    method: self.method,
                })
                .observe(elapsed.as_secs_f64());
        }
        let upstream = match (route, self.upstream) {
            (Some(r), Some(t)) => r.balancer.targets()[t].upstream.authority.as_str(),
            _ => "-",
        };
        let error = self.error.as_deref().or(body_error);
        tracing::info!(
            target: "access",
            request_id = %self.request_id,
            listener = self.listener,
            peer = %self.peer,
            method = self.method,
            host = %self.host,
            path = %self.path,
            protocol = ?self.version,
            status = self.status,
            route = %route_name,
            upstream = upstream,
            duration_ms = elapsed.as_secs_f64() * 1000.0,
            bytes_sent = bytes,
            fault = self.fault.unwrap_or("-"),
            error = error.unwrap_or("-"),
        );
    }
}

/// Counts a request against its upstream for LEAST_REQUEST until dropped.
pub(crate) struct InFlight(Arc<Snapshot>, usize, usize);

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Some(r) = self.0.routes.routes().get(self.1) {
            r.balancer.targets()[self.2].in_flight.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// A request id: 16 hex digits of randomness plus a counter, unique enough to grep for.
/// Kept inline (it is copied into the access log, error pages and a header, never owned).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct RequestId([u8; 24]);

impl RequestId {
    /// The id as text.
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).expect("hex digits are ASCII")
    }
}

impl std::ops::Deref for RequestId {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl std::fmt::Display for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self.as_str(), f)
    }
}

impl std::fmt::Debug for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self.as_str(), f)
    }
}

/// A new request id (see [`RequestId`]).
pub fn request_id() -> RequestId {
    use std::sync::atomic::AtomicU64;
    use std::sync::OnceLock;
    static PREFIX: OnceLock<u64> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let prefix = *PREFIX.get_or_init(rand::random);
    let counter = COUNTER.fetch_add(1, Ordering::Relaxed) as u32;
    let mut out = [0u8; 24];
    for (i, b) in out[..16].iter_mut().enumerate() {
        *b = HEX[(prefix >> (60 - 4 * i) & 0xf) as usize];
    }
    for (i, b) in out[16..].iter_mut().enumerate() {
        *b = HEX[(counter >> (28 - 4 * i) & 0xf) as usize];
    }
    RequestId(out)
}

/// Handles one downstream request and never fails: every error becomes a response. The
/// body type is hyper's for HTTP/1.1 and HTTP/2 and [`super::quic::RequestBody`] for HTTP/3.
pub async fn handle<B>(proxy: &Arc<Proxy>, conn: &Arc<ConnInfo>, req: Request<B>) -> Response<ProxyBody>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<body::BoxError>,
{
    let (guard, started_ms) = conn.state.begin_request();
    let started = Instant::now().checked_sub(Duration::from_millis(now_ms().saturating_sub(started_ms))).unwrap();
    let snap = proxy.snapshot();
    let host = request_host(&req).unwrap_or_default().to_owned();
    let mut finish = Box::new(Finish {
        metrics: proxy.metrics.clone(),
        listener: conn.kind.name(),
        snap: snap.clone(),
        route: None,
        method: method_label(req.method()),
        status: 0,
        started,
        request_id: request_id(),
        peer: conn.peer,
        host: String::new(),
        path: req.uri().path().to_owned(),
        version: req.version(),
        upstream: None,
        error: None,
        fault: None,
        guard: Some(guard),
        in_flight: None,
        done: false,
    });
    // The stream state and idle timeout of a proxied response, handed back beside it rather
    // than in its extensions (which would allocate a map per request).
    let mut stream: Option<(Option<Duration>, Arc<StreamState>)> = None;
    // Boxed: the routing future is large, and hyper moves (HTTP/2: spawns) this one.
    let result = Box::pin(route_request(proxy, conn, &snap, req, &host, &mut finish, &mut stream)).await;
    finish.host = host;
    let mut resp = match result {
        Ok(r) => r,
        Err(e) => {
            finish.fault = Some(e.fault().as_str());
            finish.error = Some(e.to_string());
            error_response(&e, &finish.request_id)
        }
    };
    if conn.draining.load(Ordering::Acquire) && finish.version < Version::HTTP_2 {
        resp.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    if let Some(alt_svc) = &conn.alt_svc {
        resp.headers_mut().insert(header::ALT_SVC, alt_svc.clone());
    }
    finish.status = resp.status().as_u16();
    // Upgraded tunnels log when they end; everything else logs when its body ends.
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS
        || resp.extensions().get::<super::websocket::Tunnelled>().is_some()
    {
        finish.done = true;
        return resp;
    }
    let (parts, inner) = resp.into_parts();
    let (idle, state) = match stream {
        Some((idle, state)) => (finish.route.and(idle), Some(state)),
        None => (None, None),
    };
    let write_deadline = conn.timeouts.write.map(|w| tokio::time::Instant::from_std(started + w));
    if let Some(state) = &state {
        if idle.is_some() || write_deadline.is_some() {
            stall::register(StallInfo { state: state.clone(), conn: conn.state.clone(), idle, write_deadline });
        }
    }
    Response::from_parts(parts, ResponseBody::new(inner, write_deadline, idle, state, finish).boxed_unsync())
}

fn request_host<B>(req: &Request<B>) -> Option<&str> {
    req.uri()
        .authority()
        .map(http::uri::Authority::as_str)
        .or_else(|| req.headers().get(header::HOST).and_then(|h| h.to_str().ok()))
}

async fn route_request<B>(
    proxy: &Arc<Proxy>,
    conn: &Arc<ConnInfo>,
    snap: &Arc<Snapshot>,
    mut req: Request<B>,
    host: &str,
    finish: &mut Finish,
    stream: &mut Option<(Option<Duration>, Arc<StreamState>)>,
) -> Result<Response<ProxyBody>, ProxyError>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<body::BoxError>,
{
    let underscored = check_request_head(&req)?;
    if host.is_empty() {
        return Err(ProxyError::BadRequest("missing Host header"));
    }
    if conn.kind == ListenerKind::Redirect && !req.uri().path().starts_with(ACME_PREFIX) {
        return Ok(redirect_to_https(&req, host, conn.https_port));
    }
    if let Some(m) = &snap.settings.downstream_mtls {
        if m.enforcement == MtlsEnforcement::PolicyWithDefaultDeny && conn.kind.is_tls() && !conn.client_cert {
            return Err(ProxyError::ClientCertRequired);
        }
    }
    let Some(route_idx) = snap.routes.lookup_index(host, req.uri().path()) else {
        return Err(ProxyError::NoRoute);
    };
    let route = &snap.routes.routes()[route_idx];
    finish.route = Some(route_idx);
    if underscored {
        strip_underscore_lookalikes(req.headers_mut(), &route.route);
    }
    let target_idx = route.balancer.pick().ok_or(ProxyError::NoEndpoints)?;
    let target = &route.balancer.targets()[target_idx];
    target.in_flight.fetch_add(1, Ordering::Relaxed);
    finish.in_flight = Some(InFlight(snap.clone(), route_idx, target_idx));
    finish.upstream = Some(target_idx);
    if finish.version >= Version::HTTP_2 {
        if let Some(g) = &finish.guard {
            g.forwarded();
        }
    }

    if super::websocket::is_websocket(&req) {
        if !route.route.allow_websockets {
            return Err(ProxyError::UpgradeNotAllowed);
        }
        return super::websocket::proxy(proxy, conn, route, target, req, host, finish).await;
    }
    // No tunnel of any other kind (yet): a CONNECT is never relayed as a request, and a
    // WebSocket route takes no other upgrade. (Elsewhere an `Upgrade` is only an offer, which
    // the proxy declines by not forwarding it: it is hop-by-hop.)
    if req.method() == Method::CONNECT {
        return Err(ProxyError::MethodNotAllowed("CONNECT"));
    }
    if route.route.allow_websockets && is_other_upgrade(req.headers()) {
        return Err(ProxyError::UpgradeNotAllowed);
    }

    let state = Arc::new(StreamState::default());
    let upstream_req = build_upstream_request(conn, route, target, req, host, &finish.request_id, &state)?;
    let count = |outcome: &'static str| {
        let (o, ol) = label_key(outcome);
        route.series.upstream.with(
            (target_idx, o, ol),
            || {
                let labels = UpstreamLabels {
                    route: route.route.name.clone(),
                    upstream: target.upstream.authority.clone(),
                    outcome,
                };
                proxy.metrics.upstream_requests.get_or_create(&labels).clone()
            },
            |c| {
                c.inc();
            },
        );
    };
    let result = send_upstream(conn, route, target, upstream_req, &state, finish.started).await;
    let resp = match result {
        Ok(r) => r,
        Err(e) => {
            // A request the client broke (a bad body, a read timeout) says nothing about the
            // upstream: it is not counted against it.
            if e.fault() != super::error::Fault::Downstream {
                count(e.outcome());
            }
            return Err(e);
        }
    };
    count("success");
    let (mut parts, body) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    for (name, value) in &route.route.set_response_headers {
        parts.headers.insert(name.clone(), value.clone());
    }
    parts.version = Version::HTTP_11;
    *stream = Some((route.stream_idle, state));
    Ok(Response::from_parts(parts, body.map_err(Into::into).boxed_unsync()))
}

/// The early checks on a request head, before anything is routed or forwarded: its size (the
/// request line included) and count of headers, one `Host`, and no header name that a server
/// which reads `_` as `-` would take for a framing header (a smuggling vector). `Ok(true)`
/// when some header name has a `_` (see [`strip_underscore_lookalikes`]).
fn check_request_head<B>(req: &Request<B>) -> Result<bool, ProxyError> {
    let headers = req.headers();
    if headers.len() > MAX_REQUEST_HEADERS {
        return Err(ProxyError::HeadersTooLarge("more than 100 request headers"));
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
                return Err(ProxyError::BadRequest("a header name with '_' in place of '-' of a framing header"));
            }
        }
    }
    if bytes > MAX_REQUEST_HEADER_BYTES {
        return Err(ProxyError::HeadersTooLarge("request line and headers exceed 32 KiB"));
    }
    if hosts > 1 {
        return Err(ProxyError::BadRequest("more than one Host header"));
    }
    Ok(underscored)
}

/// Framing and hop-by-hop headers whose `_` spelling is refused with 400.
const FRAMING: [&str; 4] = ["content-length", "transfer-encoding", "keep-alive", "proxy-connection"];

/// Headers the proxy sets from the real connection: their `_` spellings are removed, as a
/// CGI-style upstream (PHP, WSGI, Rack) reads `X_Forwarded_For` and `X-Forwarded-For` as the
/// same `HTTP_X_FORWARDED_FOR` and a client could spoof its address (nginx drops every `_`
/// header by default, `underscores_in_headers off`).
const SET_BY_PROXY: [&str; 6] =
    ["x-forwarded-for", "x-forwarded-proto", "x-forwarded-host", "x-request-id", "forwarded", "x-real-ip"];

/// Whether `name` (lower case) is `dashed` once its `_` are read as `-`.
fn dashed_equal(dashed: &str, name: &str) -> bool {
    dashed.len() == name.len() && dashed.bytes().zip(name.bytes()).all(|(a, b)| a == b || (a == b'-' && b == b'_'))
}

/// Removes the `_` spellings of the headers the proxy sets ([`SET_BY_PROXY`]) and of those the
/// route sets or removes. Only called for a request with a `_` in some header name.
fn strip_underscore_lookalikes(headers: &mut HeaderMap, route: &crate::config::Route) {
    let spoofed: Vec<HeaderName> = headers
        .keys()
        .filter(|n| n.as_str().contains('_'))
        .filter(|n| {
            let n = n.as_str();
            SET_BY_PROXY.iter().any(|d| dashed_equal(d, n))
                || route.set_request_headers.iter().any(|(d, _)| dashed_equal(d.as_str(), n))
                || route.remove_request_headers.iter().any(|d| dashed_equal(d.as_str(), n))
        })
        .cloned()
        .collect();
    for name in spoofed {
        headers.remove(name);
    }
}

/// An HTTP/1.1 upgrade offer other than a WebSocket or h2c (which the proxy ignores, as a
/// server may).
fn is_other_upgrade(headers: &HeaderMap) -> bool {
    headers.get(header::UPGRADE).is_some_and(|v| !v.as_bytes().eq_ignore_ascii_case(b"h2c"))
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("upgrade")))
}

/// `Content-Length` as the upstream gets it: one value, in decimal without leading zeros, or
/// none when the body's length is not known (the body is then framed by itself). hyper
/// accepts `0004` and repeated equal values, HTTP/3 requests may carry anything; forwarding
/// them as written would hand the upstream a framing that another parser may read
/// differently.
fn canonical_content_length(headers: &mut HeaderMap, exact: Option<u64>) {
    let mut values = headers.get_all(header::CONTENT_LENGTH).iter();
    let Some(first) = values.next() else { return };
    let b = first.as_bytes();
    let canonical =
        values.next().is_none() && !b.is_empty() && b.iter().all(u8::is_ascii_digit) && (b.len() == 1 || b[0] != b'0');
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

/// The upstream path after `prefix_rewrite` or the regex rewrite, with the query kept.
pub fn rewrite_path(route: &crate::config::Route, uri: &Uri) -> String {
    let path = uri.path();
    let mut out = match (&route.prefix_rewrite, &route.regex_rewrite, &route.path) {
        (Some(new), _, crate::config::PathMatch::Prefix(p)) => {
            let rest = &path[p.len().min(path.len())..];
            join_path(new, rest)
        }
        (Some(new), _, crate::config::PathMatch::Any) => join_path(new, path.trim_start_matches('/')),
        (Some(new), _, crate::config::PathMatch::Exact(_)) => new.clone(),
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
pub(crate) fn upstream_host<'a>(r: &'a crate::config::Route, target: &'a Target, host: &'a str) -> &'a str {
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
pub(crate) fn upstream_uri(route: &CompiledRoute, target: &Target, host: &str, path: &str) -> Result<Uri, ProxyError> {
    let authority = upstream_host(&route.route, target, host);
    format!("{}://{authority}{path}", target.scheme)
        .parse()
        .or_else(|_| format!("{}{path}", target.base).parse())
        .map_err(|_| ProxyError::BadRequest("request path cannot be forwarded"))
}

/// The upstream request URI without any formatting or parsing, when it is just the target's
/// own authority with the request's path and query (no rewrite, no host override): the same
/// URI [`upstream_uri`] builds then. `None` otherwise.
fn plain_upstream_uri(route: &CompiledRoute, target: &Target, uri: &Uri) -> Option<Uri> {
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
    conn: &ConnInfo,
    route: &CompiledRoute,
    target: &Target,
    host: &str,
    request_id: &str,
) {
    let r = &route.route;
    // The request's own `Host` value when it is the host (it usually is): no copy.
    let host_value = match headers.get(header::HOST) {
        Some(v) if v.as_bytes() == host.as_bytes() => Some(v.clone()),
        _ => HeaderValue::from_str(host).ok(),
    };
    headers.insert(&X_FORWARDED_FOR, conn.forwarded_for.clone());
    headers.insert(&X_FORWARDED_PROTO, HeaderValue::from_static(if conn.kind.is_tls() { "https" } else { "http" }));
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

fn build_upstream_request<B>(
    conn: &ConnInfo,
    route: &CompiledRoute,
    target: &Target,
    req: Request<B>,
    host: &str,
    request_id: &str,
    state: &Arc<StreamState>,
) -> Result<Request<ProxyBody>, ProxyError>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<body::BoxError>,
{
    let (mut parts, incoming) = req.into_parts();
    parts.uri = match plain_upstream_uri(route, target, &parts.uri) {
        Some(uri) => uri,
        None => upstream_uri(route, target, host, &rewrite_path(&route.route, &parts.uri))?,
    };
    strip_hop_by_hop(&mut parts.headers);
    canonical_content_length(&mut parts.headers, incoming.size_hint().exact());
    forwarding_headers(&mut parts.headers, conn, route, target, host, request_id);
    parts.version = Version::HTTP_11;
    parts.extensions = http::Extensions::new();
    // hyper's HTTP/1.1 client sends a GET or HEAD whose body length is unknown with no body
    // at all (and never reads it): say so here, so that the upstream timeout starts now
    // rather than never. That is a request whose end of stream came after its headers
    // (HTTP/2 and HTTP/3 allow it), or a chunked GET.
    let bodyless = incoming.is_end_stream()
        || (matches!(parts.method, Method::GET | Method::HEAD)
            && incoming.size_hint().exact().is_none()
            && !parts.headers.contains_key(header::CONTENT_LENGTH));
    if bodyless {
        state.request_done.store(true, Ordering::Release);
        return Ok(Request::from_parts(parts, body::empty()));
    }
    let read_deadline = conn.timeouts.read.map(|r| tokio::time::Instant::now() + r);
    let body = RequestBody::new(incoming, read_deadline, state.clone()).boxed_unsync();
    Ok(Request::from_parts(parts, body))
}

async fn send_upstream(
    conn: &ConnInfo,
    route: &CompiledRoute,
    target: &Target,
    req: Request<ProxyBody>,
    state: &Arc<StreamState>,
    started: Instant,
) -> Result<Response<Incoming>, ProxyError> {
    let timers = UpstreamTimers::new(conn, route, state, started);
    let read_timed_out = || state.read_timed_out.load(Ordering::Acquire);
    // The upstream send failed because the request body could not be read: the client's
    // fault (a malformed chunked body, a stream reset while uploading).
    let request_failed = || state.request_failed.load(Ordering::Acquire);
    match &target.h1 {
        Some(pool) if req.method() != Method::CONNECT => match with_timers(pool.send(req), timers).await? {
            Ok(r) => Ok(r),
            Err(_) if read_timed_out() => Err(ProxyError::ReadTimeout),
            Err(_) if request_failed() => Err(ProxyError::BadRequest("the request body could not be read")),
            Err(H1Error::Connect(c)) => Err(ProxyError::UpstreamUnreachable(c.to_string())),
            Err(H1Error::Request { kind, error }) => {
                Err(ProxyError::UpstreamReset(format!("client error ({kind}): {}", chain(&error))))
            }
        },
        _ => match with_timers(target.client.request(req), timers).await? {
            Ok(r) => Ok(r),
            Err(_) if read_timed_out() => Err(ProxyError::ReadTimeout),
            Err(_) if request_failed() => Err(ProxyError::BadRequest("the request body could not be read")),
            Err(e) => Err(classify(&e)),
        },
    }
}

/// Runs `send` until it completes or one of the timers expires.
async fn with_timers<F: std::future::Future>(send: F, mut timers: UpstreamTimers<'_>) -> Result<F::Output, ProxyError> {
    let mut send = std::pin::pin!(send);
    std::future::poll_fn(|cx| {
        if let std::task::Poll::Ready(r) = send.as_mut().poll(cx) {
            return std::task::Poll::Ready(Ok(r));
        }
        timers.poll(cx).map(Err)
    })
    .await
}

/// The upstream timeout (from the end of the request body), the write deadline and the
/// stream idle timeout while the upstream response head is awaited, on one timer armed
/// for the earliest of them, and only once the response is not there at the first poll.
struct UpstreamTimers<'a> {
    state: &'a StreamState,
    /// `timeout` of the route, until it starts.
    upstream: Option<Duration>,
    /// Waits for the end of the request body (only when there is one still arriving).
    request_done: Option<std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + 'a>>>,
    upstream_at: Option<tokio::time::Instant>,
    write_at: Option<tokio::time::Instant>,
    idle: Option<Duration>,
    idle_at: Option<tokio::time::Instant>,
    sleep: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
    started: bool,
}

impl<'a> UpstreamTimers<'a> {
    fn new(conn: &ConnInfo, route: &CompiledRoute, state: &'a StreamState, started: Instant) -> Self {
        let idle = route.stream_idle;
        if idle.is_some() {
            state.touch();
        }
        Self {
            state,
            upstream: route.upstream_timeout,
            request_done: None,
            upstream_at: None,
            write_at: conn.timeouts.write.map(|w| tokio::time::Instant::from_std(started + w)),
            idle,
            idle_at: None,
            sleep: None,
            started: false,
        }
    }

    /// Ready with the error of the first timer to expire.
    fn poll(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<ProxyError> {
        use std::task::Poll;
        let now = tokio::time::Instant::now;
        if !self.started {
            self.started = true;
            if let Some(d) = self.idle {
                self.idle_at = Some(now() + idle_left(self.state, d).unwrap_or_default());
            }
            if self.upstream.is_some() {
                if self.state.request_done.load(Ordering::Acquire) {
                    self.upstream_at = Some(now() + self.upstream.unwrap_or_default());
                } else {
                    let state = self.state;
                    self.request_done = Some(Box::pin(state.request_finished()));
                }
            }
        }
        if let Some(w) = &mut self.request_done {
            if w.as_mut().poll(cx).is_ready() {
                self.request_done = None;
                self.upstream_at = self.upstream.map(|t| now() + t);
            }
        }
        loop {
            let Some(next) = [self.upstream_at, self.write_at, self.idle_at].into_iter().flatten().min() else {
                return Poll::Pending;
            };
            let sleep = match &mut self.sleep {
                Some(s) => {
                    if s.deadline() != next {
                        s.as_mut().reset(next);
                    }
                    s
                }
                None => self.sleep.insert(Box::pin(tokio::time::sleep_until(next))),
            };
            if sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            // The timer fired at `next` (or later): that deadline has passed.
            let at = now().max(next);
            if let Some(t) = self.upstream.filter(|_| self.upstream_at.is_some_and(|u| u <= at)) {
                return Poll::Ready(ProxyError::UpstreamTimeout(crate::config::duration::format(t)));
            }
            if self.write_at.is_some_and(|w| w <= at) {
                return Poll::Ready(ProxyError::WriteTimeout);
            }
            if let (Some(d), Some(i)) = (self.idle, self.idle_at) {
                if i <= at {
                    match idle_left(self.state, d) {
                        None => {
                            return Poll::Ready(ProxyError::StreamIdle(crate::config::duration::format(d)));
                        }
                        Some(left) => self.idle_at = Some(now() + left),
                    }
                }
            }
        }
    }
}

/// How long until the stream has been idle for `dur`; `None` once it has.
fn idle_left(state: &StreamState, dur: Duration) -> Option<Duration> {
    let last = state.last_activity.load(Ordering::Relaxed);
    let idle_for = Duration::from_millis(now_ms().saturating_sub(last));
    dur.checked_sub(idle_for).filter(|left| !left.is_zero())
}

/// Turns a client error into the error that names the fault.
fn classify(e: &hyper_util::client::legacy::Error) -> ProxyError {
    use std::error::Error as _;
    let mut source = e.source();
    while let Some(s) = source {
        if let Some(c) = s.downcast_ref::<ConnectError>() {
            return ProxyError::UpstreamUnreachable(c.to_string());
        }
        source = s.source();
    }
    if e.is_connect() {
        ProxyError::UpstreamUnreachable(chain(e))
    } else {
        ProxyError::UpstreamReset(chain(e))
    }
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut s = e.source();
    while let Some(x) = s {
        let _ = write!(out, ": {x}");
        s = x.source();
    }
    out
}

/// Resolves when the stream has seen no body traffic for `dur`.
pub(crate) async fn wait_idle(state: &StreamState, dur: Duration) {
    state.touch();
    loop {
        let last = state.last_activity.load(Ordering::Relaxed);
        let idle_for = Duration::from_millis(now_ms().saturating_sub(last));
        if idle_for >= dur {
            return;
        }
        tokio::time::sleep(dur.checked_sub(idle_for).unwrap()).await;
    }
}

/// The proxy's own answer to a failed request: the status, what happened, the request id.
pub fn error_response(e: &ProxyError, request_id: &str) -> Response<ProxyBody> {
    let status = e.status();
    let reason =
        status.canonical_reason().unwrap_or(if status.as_u16() == 495 { "SSL Certificate Error" } else { "Error" });
    let text = format!("{} {reason}: {e}\nrequest id: {request_id}\n", status.as_u16());
    let mut resp = Response::new(body::full(Bytes::from(text)));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    h.insert(&X_REQUEST_ID, HeaderValue::from_str(request_id).expect("hex"));
    if matches!(e, ProxyError::ReadTimeout | ProxyError::BadRequest(_) | ProxyError::HeadersTooLarge(_)) {
        h.insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse::{parse_route, Errors, NoMaterial};

    fn route(yaml: &str) -> crate::config::Route {
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
    fn request_ids_are_prefix_and_counter_in_hex() {
        let (a, b) = (request_id(), request_id());
        for id in [a.as_str(), b.as_str()] {
            assert_eq!(id.len(), 24);
            assert!(id.bytes().all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c)), "{id}");
        }
        assert_eq!(a[..16], b[..16]);
        let counter = |id: &str| u32::from_str_radix(&id[16..], 16).unwrap();
        assert!(counter(&b) > counter(&a));
        assert_eq!(format!("{a}"), a.as_str());
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
    fn header_limits() {
        let mut h = HeaderMap::new();
        for i in 0..101 {
            h.insert(HeaderName::try_from(format!("x-{i}")).unwrap(), HeaderValue::from_static("v"));
        }
        assert!(matches!(check_request_head(&with_headers(h)), Err(ProxyError::HeadersTooLarge(_))));
        let mut h = HeaderMap::new();
        h.insert("x-big", HeaderValue::from_str(&"a".repeat(33 * 1024)).unwrap());
        assert!(matches!(check_request_head(&with_headers(h)), Err(ProxyError::HeadersTooLarge(_))));
        // The request line counts too.
        let long = Request::builder().uri(format!("/{}", "a".repeat(33 * 1024))).body(()).unwrap();
        assert!(matches!(check_request_head(&long), Err(ProxyError::HeadersTooLarge(_))));
        let method = Request::builder().method("A".repeat(33 * 1024).as_str()).uri("/").body(()).unwrap();
        assert!(matches!(check_request_head(&method), Err(ProxyError::HeadersTooLarge(_))));
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
        assert!(matches!(check_request_head(&with_headers(h)), Err(ProxyError::BadRequest(_))));
        for name in ["transfer_encoding", "content_length", "proxy_connection", "keep_alive", "Transfer_Encoding"] {
            let mut h = HeaderMap::new();
            h.insert(HeaderName::try_from(name).unwrap(), HeaderValue::from_static("1"));
            assert!(matches!(check_request_head(&with_headers(h)), Err(ProxyError::BadRequest(_))), "{name}");
        }
        for name in ["x_forwarded_user", "content_type_x", "my_host"] {
            let mut h = HeaderMap::new();
            h.insert(HeaderName::try_from(name).unwrap(), HeaderValue::from_static("1"));
            assert!(matches!(check_request_head(&with_headers(h)), Ok(true)), "{name}");
        }
        assert!(matches!(check_request_head(&with_headers(HeaderMap::new())), Ok(false)));
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
        strip_underscore_lookalikes(&mut h, &r);
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
