//! WebSockets: the HTTP/1.1 `Upgrade` handshake, or an RFC 8441 extended CONNECT on HTTP/2,
//! carried to the upstream as an HTTP/1.1 upgrade, then spliced.

use std::sync::Arc;

use base64::Engine as _;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;

use super::splice::{splice, Tunnel, Tunnelled};
use crate::config::duration;
use crate::proxy::body::{self, OnFinish, ProxyBody};
use crate::proxy::conn::Conn;
use crate::proxy::error::{Error, Kind, Result};
use crate::proxy::headers::{forwarding_headers, rewrite_path, set_response_headers, strip_hop_by_hop, upstream_uri};
use crate::proxy::http::authz::Admission;
use crate::proxy::log::RequestLog;
use crate::proxy::snapshot::CompiledRoute;
use crate::proxy::upstream::{self, Target};

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

    let timeout = route.upstream_timeout.unwrap_or(upstream::CONNECT_TIMEOUT * 3);
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
    let record = log.hand_over(host);
    // The tunnel keeps the connection registered with the drains until it ends, so a drain
    // waits for it and `drain_timeout` closes it.
    let tunnel = Tunnel::new(conn, route, admission, record, None);
    tokio::spawn(async move {
        match tokio::join!(downstream_upgrade, upstream_upgrade) {
            (Ok(down), Ok(up)) => splice(TokioIo::new(down), TokioIo::new(up), tunnel).await,
            (d, u) => {
                let mut record = tunnel.record;
                record.error = Some(format!("upgrade failed: downstream {:?}, upstream {:?}", d.err(), u.err()));
                record.finish(0, None);
            }
        }
    });
    Ok(answer)
}
