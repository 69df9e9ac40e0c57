//! Phase 7, send: the upstream request (URI, hop-by-hop removal, forwarding headers, the
//! route's header rules, a canonical `Content-Length`) sent under the upstream timeout, the
//! write deadline and the stream idle timeout, and the outcome counted against the upstream.
//!
//! [`send`] is one attempt; [`send_with_retries`] makes another on a different endpoint when
//! the failed attempt's [`Retry`] class and the route allow it (the request never reached an
//! upstream; or it is idempotent, bodiless and the route's `retry_on` names the failure),
//! within the route's retry budget.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header;
use http::{Method, Request, Response, Version};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::time::Instant;

use crate::config::duration;
use crate::metrics::{Metrics, RetryLabels, UpstreamHealthLabels, UpstreamLabels};
use crate::proxy::body::{self, ProxyBody, RequestBody, StreamState};
use crate::proxy::conn::Conn;
use crate::proxy::error::{chain, Error, Fault, Kind, Result, Retry};
use crate::proxy::headers::{
    canonical_content_length, forwarding_headers, plain_upstream_uri, rewrite_path, strip_hop_by_hop, upstream_uri,
};
use crate::proxy::log::{InFlight, RequestLog, RetryInFlight};
use crate::proxy::outlier::{self, Outcome};
use crate::proxy::snapshot::{label_key, CompiledRoute};
use crate::proxy::upstream::{ConnectError, H1Error, Target};

/// The upstream request for `req` to target `target_idx` of `route`, and the stream state its
/// body will share with the response body.
#[inline]
pub(crate) fn prepare<B>(
    conn: &Conn,
    route: &CompiledRoute,
    target_idx: usize,
    req: Request<B>,
    host: &str,
    request_id: &str,
) -> Result<(Request<ProxyBody>, Arc<StreamState>)>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<body::BoxError>,
{
    let target = &route.balancer.targets()[target_idx];
    let state = Arc::new(StreamState::default());
    let upstream_req = build_upstream_request(conn, route, target, req, host, request_id, &state)?;
    Ok((upstream_req, state))
}

/// Sends `req` (from [`prepare`]) to target `target_idx` of `route` under its timers (the
/// write deadline counts from `started`), counts the outcome against the upstream and tells
/// outlier detection. A request that provably never left comes back beside the error, body
/// unread, for a retry elsewhere.
pub(crate) async fn send(
    conn: &Conn,
    route: &CompiledRoute,
    target_idx: usize,
    req: Request<ProxyBody>,
    state: &Arc<StreamState>,
    metrics: &Metrics,
    started: Instant,
) -> (Result<Response<Incoming>>, Option<Request<ProxyBody>>) {
    let target = &route.balancer.targets()[target_idx];
    let count = |outcome: &'static str| {
        let (o, ol) = label_key(outcome);
        route.series.upstream[target_idx].with(
            &(o, ol),
            || {
                let labels = UpstreamLabels {
                    route: route.route.name.clone(),
                    upstream: target.upstream.authority.clone(),
                    outcome,
                };
                metrics.upstream_requests.get_or_create(&labels).clone()
            },
            |c| {
                c.inc();
            },
        );
    };
    let timers = UpstreamTimers::new(conn, route, state, started);
    let read_timed_out = || state.read_timed_out.load(Ordering::Acquire);
    // The upstream send failed because the request body could not be read: the client's
    // fault (a malformed chunked body, a stream reset while uploading).
    let request_failed = || state.request_failed.load(Ordering::Acquire);
    let mut unsent = None;
    let result = match &target.h1 {
        Some(pool) if req.method() != Method::CONNECT => match with_timers(pool.send(req), timers).await {
            Err(e) => Err(e),
            Ok(Ok(r)) => Ok(r),
            Ok(Err(_)) if read_timed_out() => Err(Error::new(Kind::ReadTimeout)),
            Ok(Err(_)) if request_failed() => Err(Error::bad_request("the request body could not be read")),
            Ok(Err(H1Error::Connect(c, req))) => {
                unsent = req.map(|r| *r);
                Err(Error::with(Kind::UpstreamUnreachable, c.to_string()).because(c))
            }
            Ok(Err(H1Error::Unsent(error, req))) => {
                unsent = Some(*req);
                let detail = format!("client error (Canceled): {}", chain(&error));
                Err(Error::with(Kind::UpstreamReset, detail).because(error).unsent())
            }
            Ok(Err(H1Error::Request { kind, error })) => {
                let detail = format!("client error ({kind}): {}", chain(&error));
                Err(Error::with(Kind::UpstreamReset, detail).because(error))
            }
        },
        _ => match with_timers(target.client.request(req), timers).await {
            Err(e) => Err(e),
            Ok(Ok(r)) => Ok(r),
            Ok(Err(_)) if read_timed_out() => Err(Error::new(Kind::ReadTimeout)),
            Ok(Err(_)) if request_failed() => Err(Error::bad_request("the request body could not be read")),
            Ok(Err(e)) => Err(classify(e)),
        },
    };
    let outcome = match &result {
        Ok(r) => {
            count("success");
            Some(Outcome::of_status(r.status()))
        }
        // A request the client broke (a bad body, a read timeout) says nothing about the
        // upstream: it is not counted against it.
        Err(e) if e.fault() != Fault::Downstream => {
            count(e.outcome());
            Some(Outcome::GatewayFailure)
        }
        Err(_) => None,
    };
    if let (Some(cfg), Some(outcome)) = (&route.route.outlier_detection, outcome) {
        record_outcome(cfg, route, target, metrics, outcome);
    }
    (result, unsent)
}

/// Tells outlier detection how an attempt on `target` went.
pub(crate) fn record_outcome(
    cfg: &crate::config::OutlierDetection,
    route: &CompiledRoute,
    target: &Target,
    metrics: &Metrics,
    outcome: Outcome,
) {
    let ejected = outlier::record(cfg, &target.state, route.balancer.targets().len(), outcome, || {
        let labels =
            UpstreamHealthLabels { route: route.route.name.clone(), upstream: target.upstream.authority.clone() };
        outlier::Series {
            ejections: metrics.upstream_ejections.get_or_create(&labels).clone(),
            ejected: metrics.upstream_ejected.get_or_create(&labels).clone(),
        }
    });
    if let Some(time) = ejected {
        tracing::warn!(
            route = %route.route.name,
            upstream = %target.upstream.authority,
            ejection = %duration::format(time),
            "upstream ejected by outlier detection"
        );
    }
}

/// What a retry needs beyond the request itself.
pub(crate) struct RetryCtx<'a> {
    /// The request's `Host`.
    pub host: &'a str,
    /// Its hash key (a retry walks on from the same place on the ring).
    pub key: u64,
}

/// [`send`] with the route's retries: a request that never reached its upstream goes to
/// another endpoint; one the upstream may have processed only if it is idempotent, the
/// route's `retry_on` says so and it had no body (a streamed body is never replayed).
/// Every retry takes a share of the route's retry budget.
pub(crate) async fn send_with_retries(
    conn: &Conn,
    route: &CompiledRoute,
    mut target_idx: usize,
    req: Request<ProxyBody>,
    state: &Arc<StreamState>,
    log: &mut RequestLog,
    ctx: RetryCtx<'_>,
) -> Result<Response<Incoming>> {
    let retries = route.route.retries;
    let targets = route.balancer.targets();
    if retries.attempts == 0 || targets.len() < 2 {
        return send(conn, route, target_idx, req, state, &log.metrics, log.started).await.0;
    }
    // A copy of a bodiless request, kept when a retry could need it and the request itself
    // would not come back: the general client keeps what it is given, and a request that
    // was sent is gone. Routes with one endpoint, or to plain-HTTP upstreams without
    // `retry_on`, pay nothing.
    let idempotent = is_idempotent(req.method());
    let bodiless = state.request_done.load(Ordering::Acquire);
    let after_sending = retries.after_sending() && idempotent;
    let mut replay = (bodiless && (after_sending || targets[target_idx].h1.is_none())).then(|| copy_head(&req));
    let mut req = Some(req);
    let mut attempts_left = retries.attempts;
    loop {
        let (result, unsent) = send(
            conn,
            route,
            target_idx,
            req.take().expect("a request for every attempt"),
            state,
            &log.metrics,
            log.started,
        )
        .await;
        let wants_retry = match &result {
            Ok(resp) => {
                after_sending
                    && match resp.status().as_u16() {
                        502..=504 => retries.on_5xx || retries.on_gateway_error,
                        500..=599 => retries.on_5xx,
                        _ => false,
                    }
            }
            Err(e) => match e.retry() {
                Retry::NotSent => true,
                Retry::IfIdempotent => after_sending && (retries.on_reset || retries.on_5xx),
                Retry::Never => false,
            },
        };
        if !wants_retry || attempts_left == 0 {
            return result;
        }
        let not_sent = matches!(&result, Err(e) if e.retry() == Retry::NotSent);
        // The request to send again: the one that came back, or the copy.
        let again = match (unsent, &replay) {
            (Some(r), _) if not_sent => r,
            (_, Some(head)) => copy_head(head),
            _ => return result,
        };
        let Some(next) = route.balancer.pick(ctx.key, Some(target_idx)) else { return result };
        let next_state = &targets[next].state;
        let Some(credit) = RetryInFlight::take(next_state) else {
            count_retry(route, &log.metrics, "budget_exhausted");
            return result;
        };
        count_retry(route, &log.metrics, "retried");
        tracing::debug!(route = %route.route.name, from = %targets[target_idx].upstream.authority,
            to = %targets[next].upstream.authority, "retrying upstream request");
        attempts_left -= 1;
        target_idx = next;
        log.upstream = Some(next);
        log.in_flight = Some(InFlight::new(next_state));
        log.retry = Some(credit);
        let mut again = again;
        retarget(&mut again, route, &targets[next], ctx.host)?;
        if attempts_left == 0 {
            replay = None;
        }
        req = Some(again);
    }
}

fn count_retry(route: &CompiledRoute, metrics: &Metrics, outcome: &'static str) {
    metrics.upstream_retries.get_or_create(&RetryLabels { route: route.route.name.clone(), outcome }).inc();
}

/// RFC 9110's idempotent methods.
fn is_idempotent(m: &Method) -> bool {
    matches!(*m, Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE)
}

/// A bodiless copy of a request's head.
fn copy_head(req: &Request<ProxyBody>) -> Request<ProxyBody> {
    let mut copy = Request::new(body::empty());
    *copy.method_mut() = req.method().clone();
    *copy.uri_mut() = req.uri().clone();
    *copy.version_mut() = req.version();
    *copy.headers_mut() = req.headers().clone();
    copy
}

/// Points a request prepared for one target at another: its URI's authority and, unless
/// the route fixes it, its `Host`.
fn retarget(req: &mut Request<ProxyBody>, route: &CompiledRoute, target: &Target, host: &str) -> Result<()> {
    let pq = req.uri().path_and_query().map_or("/", http::uri::PathAndQuery::as_str).to_owned();
    *req.uri_mut() = upstream_uri(route, target, host, &pq)?;
    let r = &route.route;
    if !r.preserve_host_header && r.host_rewrite.is_none() {
        if let Some(v) = &target.host_value {
            req.headers_mut().insert(header::HOST, v.clone());
        }
    }
    Ok(())
}

fn build_upstream_request<B>(
    conn: &Conn,
    route: &CompiledRoute,
    target: &Target,
    req: Request<B>,
    host: &str,
    request_id: &str,
    state: &Arc<StreamState>,
) -> Result<Request<ProxyBody>>
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

/// Runs `send` until it completes or one of the timers expires.
async fn with_timers<F: std::future::Future>(send: F, mut timers: UpstreamTimers<'_>) -> Result<F::Output> {
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
    fn new(conn: &Conn, route: &CompiledRoute, state: &'a StreamState, started: Instant) -> Self {
        let idle = route.stream_idle;
        if idle.is_some() {
            state.touch();
        }
        Self {
            state,
            upstream: route.upstream_timeout,
            request_done: None,
            upstream_at: None,
            write_at: conn.timeouts.write.map(|w| started + w),
            idle,
            idle_at: None,
            sleep: None,
            started: false,
        }
    }

    /// Ready with the error of the first timer to expire.
    fn poll(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Error> {
        use std::task::Poll;
        let now = tokio::time::Instant::now;
        if !self.started {
            self.started = true;
            if let Some(d) = self.idle {
                self.idle_at = Some(now() + self.state.idle_left(d).unwrap_or_default());
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
            if body::poll_timer(&mut self.sleep, next, cx).is_pending() {
                return Poll::Pending;
            }
            // The timer fired at `next` (or later): that deadline has passed.
            let at = now().max(next);
            if let Some(t) = self.upstream.filter(|_| self.upstream_at.is_some_and(|u| u <= at)) {
                return Poll::Ready(Error::with(Kind::UpstreamTimeout, duration::format(t)));
            }
            if self.write_at.is_some_and(|w| w <= at) {
                return Poll::Ready(Error::new(Kind::WriteTimeout));
            }
            if let (Some(d), Some(i)) = (self.idle, self.idle_at) {
                if i <= at {
                    match self.state.idle_left(d) {
                        None => {
                            return Poll::Ready(Error::with(Kind::StreamIdle, duration::format(d)));
                        }
                        Some(left) => self.idle_at = Some(now() + left),
                    }
                }
            }
        }
    }
}

/// Turns a client error into the error that names the fault, keeping it as the cause.
fn classify(e: hyper_util::client::legacy::Error) -> Error {
    use std::error::Error as _;
    let mut connect = None;
    let mut source = e.source();
    while let Some(s) = source {
        if let Some(c) = s.downcast_ref::<ConnectError>() {
            connect = Some(c.to_string());
            break;
        }
        source = s.source();
    }
    if let Some(detail) = connect {
        return Error::with(Kind::UpstreamUnreachable, detail).because(e);
    }
    let kind = if e.is_connect() { Kind::UpstreamUnreachable } else { Kind::UpstreamReset };
    let detail = chain(&e);
    // HTTP/2 REFUSED_STREAM (RFC 9113 §8.7: "not processed"), also what a GOAWAY's refusal
    // of streams above its last id reads as: safe to send anywhere again. h2's reason is
    // only reachable through its text here.
    let refused = detail.contains("refused stream before processing");
    let err = Error::with(kind, detail).because(e);
    if refused {
        err.unsent()
    } else {
        err
    }
}
