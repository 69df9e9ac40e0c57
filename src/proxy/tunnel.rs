//! Tunnels: requests that leave the pipeline after authorization (and the upstream pick) and
//! become byte streams.
//! Today WebSockets (HTTP/1.1 `Upgrade` and RFC 8441 extended CONNECT on HTTP/2, both carried
//! to the upstream as an HTTP/1.1 upgrade); CONNECT and CONNECT-UDP land here too.
//!
//! This module owns what every tunnel shares: the splice, the idle timeout and the close
//! reasons. A tunnel counts as an active request (its connection is never "idle" under it),
//! has the route's stream idle timeout (disabled by default on WebSocket routes, as Pomerium
//! does), and ends when its listener generation is closed at the end of a drain or when its
//! route is deleted. It owns the request's log record and writes it when it ends.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::sync::CancellationToken;

use super::body::{self, OnFinish, ProxyBody, StreamState};
use super::conn::Conn;
use super::drain::ConnHandle;
use super::error::{Error, Kind, Result};
use super::headers::{
    connection_has_upgrade, forwarding_headers, rewrite_path, set_response_headers, strip_hop_by_hop, upstream_uri,
};
use super::http::authz::{Admission, Revoked};
use super::log::RequestLog;
use super::snapshot::CompiledRoute;
use super::upstream::Target;
use crate::config::duration;

/// Marks a response whose request continues as a tunnel (logged when the tunnel ends).
#[derive(Clone, Copy)]
pub struct Tunnelled;

/// True for an HTTP/1.1 `Upgrade: websocket` or an HTTP/2 extended CONNECT for websocket.
pub fn is_websocket<B>(req: &Request<B>) -> bool {
    if req.method() == Method::CONNECT {
        return req
            .extensions()
            .get::<hyper::ext::Protocol>()
            .is_some_and(|p| p.as_str().eq_ignore_ascii_case("websocket"));
    }
    // Most requests have no `Upgrade`: one lookup, and `Connection` is not scanned.
    let upgrade = req.headers().get(header::UPGRADE).is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"));
    upgrade && connection_has_upgrade(req.headers())
}

/// Proxies a WebSocket handshake and, when the upstream switches protocols, spawns the
/// tunnel and answers the client (101 on HTTP/1.1, 200 on HTTP/2).
pub(crate) async fn websocket<B>(
    conn: &Arc<Conn>,
    route: &CompiledRoute,
    target: &Target,
    mut req: Request<B>,
    host: &str,
    log: &mut RequestLog,
    admission: Admission,
) -> Result<Response<ProxyBody>> {
    let h2 = req.version() == Version::HTTP_2;
    let downstream_upgrade = hyper::upgrade::on(&mut req);
    let (mut parts, _body) = req.into_parts();
    let path = rewrite_path(&route.route, &parts.uri);
    let uri = upstream_uri(route, target, host, &path)?;

    let mut headers = parts.headers.clone();
    strip_hop_by_hop(&mut headers);
    forwarding_headers(&mut headers, conn, route, target, host, &log.request_id);
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    if h2 {
        // RFC 8441 clients send no key; the upstream's HTTP/1.1 handshake needs one.
        let key: [u8; 16] = rand::random();
        let key = base64::engine::general_purpose::STANDARD.encode(key);
        headers.insert("sec-websocket-key", HeaderValue::from_str(&key).expect("base64 is a valid header"));
        headers.entry("sec-websocket-version").or_insert(HeaderValue::from_static("13"));
    }
    let mut up = Request::builder()
        .method(Method::GET)
        .uri(uri)
        .version(Version::HTTP_11)
        .body(body::empty())
        .expect("valid parts");
    *up.headers_mut() = headers;

    let timeout = route.upstream_timeout.unwrap_or(super::upstream::CONNECT_TIMEOUT * 3);
    let mut resp = match tokio::time::timeout(timeout, target.upgrade_client.request(up)).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) if e.is_connect() => return Err(Error::with(Kind::UpstreamUnreachable, e.to_string()).because(e)),
        Ok(Err(e)) => return Err(Error::with(Kind::UpstreamReset, e.to_string()).because(e)),
        Err(_) => return Err(Error::with(Kind::UpstreamTimeout, duration::format(timeout))),
    };
    if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        // The upstream declined (auth, wrong path): relay its answer as a normal response.
        let (mut p, b) = resp.into_parts();
        strip_hop_by_hop(&mut p.headers);
        return Ok(Response::from_parts(p, b.map_err(Into::into).boxed_unsync()));
    }
    let upstream_upgrade = hyper::upgrade::on(&mut resp);

    let mut answer = Response::builder()
        .status(if h2 { StatusCode::OK } else { StatusCode::SWITCHING_PROTOCOLS })
        .body(body::empty())
        .expect("valid parts");
    for name in ["sec-websocket-protocol", "sec-websocket-extensions"] {
        if let Some(v) = resp.headers().get(name) {
            answer.headers_mut().insert(name, v.clone());
        }
    }
    if !h2 {
        answer.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        answer.headers_mut().insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        if let Some(v) = resp.headers().get("sec-websocket-accept") {
            answer.headers_mut().insert("sec-websocket-accept", v.clone());
        }
    }
    set_response_headers(answer.headers_mut(), &route.route);
    answer.extensions_mut().insert(Tunnelled);
    parts.extensions.clear();

    // The tunnel task owns the access-log record (and with it the connection's "active"
    // guard) until the tunnel ends.
    log.status = answer.status().as_u16();
    let mut record = log.hand_over(host);
    // The tunnel keeps the connection registered with the drains until it ends, so a drain
    // waits for it and `drain_timeout` closes it.
    let limits = Limits {
        idle: route.stream_idle,
        registration: conn.registration.clone(),
        route_closed: route.life.closed.clone(),
        route_name: route.route.name.clone(),
        admission,
    };
    tokio::spawn(async move {
        match tokio::join!(downstream_upgrade, upstream_upgrade) {
            (Ok(down), Ok(up)) => splice(TokioIo::new(down), TokioIo::new(up), limits, record).await,
            (d, u) => {
                record.error = Some(format!("upgrade failed: downstream {:?}, upstream {:?}", d.err(), u.err()));
                record.finish(0, None);
            }
        }
    });
    Ok(answer)
}

/// What ends a tunnel besides its two sides: its idle timeout, the end of its listener
/// generation's drain, the deletion of its route.
struct Limits {
    idle: Option<Duration>,
    registration: Arc<ConnHandle>,
    route_closed: CancellationToken,
    route_name: String,
    /// What it was authorized with: it ends when its route's policy stops admitting it.
    admission: Admission,
}

/// Why a tunnel ended before both sides closed it (the access log's error).
enum Closed {
    /// Copying failed (a side reset its connection).
    Broken(std::io::Error),
    /// No byte moved either way for the stream idle timeout.
    Idle,
    /// `drain_timeout` of its listener generation ended.
    DrainTimeout,
    /// Its route was deleted.
    RouteDeleted,
    /// Its route's policy no longer admits it.
    Revoked(Revoked),
}

impl Closed {
    fn message(&self) -> String {
        match self {
            Closed::Broken(e) => format!("tunnel ended: {e}"),
            Closed::Idle => "tunnel closed: stream idle timeout".to_owned(),
            Closed::DrainTimeout => "tunnel closed: drain_timeout of its listener generation ended".to_owned(),
            Closed::RouteDeleted => "tunnel closed: its route was deleted".to_owned(),
            Closed::Revoked(Revoked::PolicyChanged) => {
                "tunnel closed: its route's policy changed and no longer admits it".to_owned()
            }
            Closed::Revoked(Revoked::TokenExpired) => {
                "tunnel closed: the token it was admitted with expired".to_owned()
            }
            Closed::Revoked(Revoked::SignedOut) => {
                "tunnel closed: the session it was admitted with was signed out".to_owned()
            }
        }
    }
}

/// Copies bytes both ways between the client's side and the upstream's until both close or a
/// limit ends the tunnel, then writes the request's log record (bytes sent to the client).
async fn splice<D, U>(down: D, up: U, mut limits: Limits, mut record: Box<RequestLog>)
where
    D: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let state = Arc::new(StreamState::default());
    let mut down = Activity { inner: down, state: state.clone() };
    let mut up = Activity { inner: up, state: state.clone() };
    let idle_wait = async {
        match limits.idle {
            Some(d) => state.wait_idle(d).await,
            None => std::future::pending().await,
        }
    };
    let (bytes, closed) = tokio::select! {
        r = tokio::io::copy_bidirectional(&mut down, &mut up) => match r {
            Ok((_, to_client)) => (to_client, None),
            Err(e) => (0, Some(Closed::Broken(e))),
        },
        () = idle_wait => (0, Some(Closed::Idle)),
        () = limits.registration.signals.close.cancelled() => (0, Some(Closed::DrainTimeout)),
        () = limits.route_closed.cancelled() => {
            tracing::info!(route = %limits.route_name, "closing a tunnel: its route was deleted");
            (0, Some(Closed::RouteDeleted))
        }
        why = limits.admission.revoked() => {
            limits.admission.record(&record.metrics, why, "tunnel");
            (0, Some(Closed::Revoked(why)))
        }
    };
    state.request_done.store(true, Ordering::Relaxed);
    record.error = closed.as_ref().map(Closed::message);
    record.finish(bytes, None);
}

pin_project_lite::pin_project! {
    /// Counts tunnel traffic into the shared activity clock for the idle timeout.
    struct Activity<T> {
        #[pin]
        inner: T,
        state: Arc<StreamState>,
    }
}

impl<T: tokio::io::AsyncRead> tokio::io::AsyncRead for Activity<T> {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let this = self.project();
        let r = this.inner.poll_read(cx, buf);
        if r.is_ready() {
            this.state.touch();
        }
        r
    }
}

impl<T: tokio::io::AsyncWrite> tokio::io::AsyncWrite for Activity<T> {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        self.project().inner.poll_write(cx, buf)
    }
    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        self.project().inner.poll_flush(cx)
    }
    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        self.project().inner.poll_shutdown(cx)
    }
}
