//! The access log and request metrics: one [`RequestLog`] per request, written exactly once
//! (by its response body's end, by its tunnel's end, or by its drop when the client went
//! away first), and the [`RequestId`] that ties the log line, the error page and the
//! upstream's `X-Request-Id` together.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use http::{StatusCode, Version};
use tokio::time::Instant;

use super::body::{self, OnFinish};
use super::conn::{RequestGuard, PREMATURE_RESET_LIFETIME};
use super::endpoints::EndpointState;
use super::error::Fault;
use super::http::authz::Verdict;
use super::snapshot::{label_key, CompiledRoute, Snapshot};
use crate::metrics::{DurationLabels, Metrics, RequestLabels};

/// A request's access-log record: everything its log line and metrics need, filled in by the
/// pipeline's phases as they run, written once when the response (or tunnel) ends, or when
/// the request is dropped before it had a response.
pub(crate) struct RequestLog {
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
    /// The retry it is, if it is one, while it is in flight.
    pub retry: Option<RetryInFlight>,
    /// What the route's policy decided (none: the route has no policy).
    pub authz: Option<Verdict>,
    /// The form of the proxy's own answer when access is refused.
    pub page: PageFormat,
    /// Logged and counted already (or handed on: a tunnel logs its own record).
    pub done: bool,
    /// Bytes a tunnel carried from the client (the access log's `bytes_received`).
    pub bytes_received: u64,
    /// Why a tunnel ended (the access log's `close_reason`).
    pub close_reason: Option<&'static str>,
}

/// The form of a refused request's page: what its `Accept` asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PageFormat {
    /// Plain text (curl, scripts).
    Text,
    /// A short HTML page (browsers).
    Html,
    /// `application/json` (API clients).
    Json,
}

impl PageFormat {
    /// JSON when `Accept` names `application/json` before (or without) `text/html`; HTML when
    /// it names `text/html`; text otherwise.
    pub fn of(headers: &http::HeaderMap) -> Self {
        let accept = headers.get_all(http::header::ACCEPT).iter().filter_map(|v| v.to_str().ok());
        for value in accept {
            for item in value.split(',') {
                let media = item.split(';').next().unwrap_or("").trim();
                if media.eq_ignore_ascii_case("application/json") {
                    return Self::Json;
                }
                if media.eq_ignore_ascii_case("text/html") {
                    return Self::Html;
                }
            }
        }
        Self::Text
    }
}

/// The status logged and counted for a request the client cancelled before its response
/// was sent (nginx's 499, "client closed request").
pub const CLIENT_CLOSED_REQUEST: u16 = 499;

impl Drop for RequestLog {
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
            self.fault = Some(Fault::Config.as_str());
            self.error = Some(CLOSED_BY_PROXY.to_owned());
        } else {
            self.status = CLIENT_CLOSED_REQUEST;
            self.fault = Some(Fault::Downstream.as_str());
            self.error = Some("client cancelled the request before its response".to_owned());
            self.count_cancelled();
        }
        self.record(0, None);
    }
}

/// The access log's error for a request whose connection the proxy closed under it.
const CLOSED_BY_PROXY: &str = "the proxy closed the connection (drain_timeout ended) before the response was complete";

impl RequestLog {
    fn compiled_route(&self) -> Option<&CompiledRoute> {
        self.route.map(|i| &*self.snap.routes.routes()[i])
    }
}

impl OnFinish for RequestLog {
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

impl RequestLog {
    /// The premature-reset rule counts HTTP/2 and HTTP/3 requests that went upstream and were
    /// cancelled by the client within [`PREMATURE_RESET_LIFETIME`] of their start.
    pub(crate) fn count_cancelled(&self) {
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
    pub(crate) fn record(&mut self, bytes: u64, body_error: Option<&str>) {
        self.done = true;
        let elapsed = self.started.elapsed();
        let route = self.compiled_route();
        let route_name = route.map_or("none", |r| r.route.name.as_str());
        if let Some(r) = route {
            let (l, ll) = label_key(self.listener);
            let (m, ml) = label_key(self.method);
            r.series.requests.with(
                &(l, ll, m, ml, self.status),
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
                &(l, ll, m, ml),
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
            bytes_received = self.bytes_received,
            close_reason = self.close_reason.unwrap_or("-"),
            fault = self.fault.unwrap_or("-"),
            error = error.unwrap_or("-"),
            authz = self.authz.map_or("-", |v| v.decision.as_str()),
            authz_rule = self.authz.and_then(|v| v.rule).map_or(-1, |r| i64::try_from(r).unwrap_or(i64::MAX)),
        );
    }
}

/// Counts a request against its endpoint (LEAST_REQUEST) and its route (the retry budget)
/// until dropped.
pub(crate) struct InFlight(Arc<EndpointState>);

impl InFlight {
    pub(crate) fn new(state: &Arc<EndpointState>) -> Self {
        state.in_flight.fetch_add(1, Ordering::Relaxed);
        state.route().in_flight.fetch_add(1, Ordering::Relaxed);
        Self(state.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.0.route().in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Counts a retry against its route's retry budget until dropped (with the request's log
/// record, when its response is done).
pub(crate) struct RetryInFlight(Arc<EndpointState>);

impl RetryInFlight {
    /// Takes a share of the budget: retries in flight stay under 20 % of the route's requests
    /// in flight, or 3 (Envoy's `min_retry_concurrency`), whichever is more. `None` when
    /// the budget is spent.
    pub(crate) fn take(state: &Arc<EndpointState>) -> Option<Self> {
        let counts = state.route();
        let limit = (counts.in_flight.load(Ordering::Relaxed) / 5).max(3);
        counts
            .retries
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |r| (r < limit).then_some(r + 1))
            .ok()
            .map(|_| Self(state.clone()))
    }
}

impl Drop for RetryInFlight {
    fn drop(&mut self) {
        self.0.route().retries.fetch_sub(1, Ordering::Relaxed);
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

impl RequestLog {
    /// Hands the record over to a tunnel that outlives the request: the tunnel logs it when
    /// it ends, and holds the connection's "active" guard and the upstream's in-flight count
    /// until then. This record is done.
    pub(crate) fn hand_over(&mut self, host: &str) -> Box<RequestLog> {
        self.done = true;
        Box::new(RequestLog {
            metrics: self.metrics.clone(),
            listener: self.listener,
            snap: self.snap.clone(),
            route: self.route,
            method: self.method,
            status: self.status,
            started: self.started,
            request_id: self.request_id,
            peer: self.peer,
            host: host.to_owned(),
            path: self.path.clone(),
            version: self.version,
            upstream: self.upstream,
            error: None,
            fault: None,
            guard: self.guard.take(),
            in_flight: self.in_flight.take(),
            retry: self.retry.take(),
            authz: self.authz,
            page: self.page,
            done: false,
            bytes_received: 0,
            close_reason: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
