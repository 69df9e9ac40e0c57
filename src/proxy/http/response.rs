//! Phase 8, response: the relayed response's headers (hop-by-hop removed, the route's
//! `set_response_headers`), the proxy's own error page, the headers every response of the
//! connection gets (`Connection: close` while draining, `Alt-Svc`), and the body wrapper
//! that enforces the write deadline and the stream idle timeout and writes the log record
//! when the body ends.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Response, StatusCode, Version};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::time::Instant;

use super::authz::{Admission, Revocable};
use crate::metrics::Metrics;
use crate::proxy::body::{self, ProxyBody, ResponseBody, StreamState};
use crate::proxy::conn::Conn;
use crate::proxy::error::{Error, Kind};
use crate::proxy::headers::{set_response_headers, strip_hop_by_hop, X_REQUEST_ID};
use crate::proxy::log::{PageFormat, RequestLog};
use crate::proxy::snapshot::CompiledRoute;
use crate::proxy::stall::{self, StallInfo};
use crate::proxy::tunnel::Tunnelled;

/// The upstream's response as the client gets it (its body still streaming).
#[inline]
pub(crate) fn relayed(
    route: &CompiledRoute,
    resp: Response<Incoming>,
    admission: Option<Admission>,
    metrics: &Arc<Metrics>,
) -> Response<ProxyBody> {
    let (mut parts, body) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    set_response_headers(&mut parts.headers, &route.route);
    parts.version = Version::HTTP_11;
    let body = match admission {
        Some(a) => Revocable::boxed(body, a, metrics.clone()),
        None => body.map_err(Into::into).boxed_unsync(),
    };
    Response::from_parts(parts, body)
}

/// The response the client gets for the pipeline's `result`, with the body that writes
/// `log` when it ends. `stream`: the state and idle timeout of a relayed response.
#[inline]
pub(crate) fn finish(
    conn: &Conn,
    result: Result<Response<ProxyBody>, Error>,
    mut log: Box<RequestLog>,
    stream: Option<(Option<Duration>, Arc<StreamState>)>,
) -> Response<ProxyBody> {
    let mut resp = match result {
        Ok(r) => r,
        Err(e) => {
            log.fault = Some(e.fault().as_str());
            log.error = Some(e.to_string());
            match (e.kind(), log.route) {
                (Kind::Unauthenticated | Kind::Forbidden, Some(i)) => {
                    refused_response(&e, &log.snap.routes.routes()[i].route.name, &log.request_id, log.page)
                }
                _ => error_response(&e, &log.request_id),
            }
        }
    };
    if conn.draining.load(Ordering::Acquire) && log.version < Version::HTTP_2 {
        resp.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    if let Some(alt_svc) = &conn.alt_svc {
        resp.headers_mut().insert(header::ALT_SVC, alt_svc.clone());
    }
    log.status = resp.status().as_u16();
    // Upgraded tunnels log when they end; everything else logs when its body ends.
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS || resp.extensions().get::<Tunnelled>().is_some() {
        log.done = true;
        return resp;
    }
    let (parts, inner) = resp.into_parts();
    let (idle, state) = match stream {
        Some((idle, state)) => (log.route.and(idle), Some(state)),
        None => (None, None),
    };
    let write_deadline: Option<Instant> = conn.timeouts.write.map(|w| log.started + w);
    if let Some(state) = &state {
        if idle.is_some() || write_deadline.is_some() {
            stall::register(StallInfo { state: state.clone(), conn: conn.state.clone(), idle, write_deadline });
        }
    }
    Response::from_parts(parts, ResponseBody::new(inner, write_deadline, idle, state, log).boxed_unsync())
}

/// The proxy's own answer to a failed request: the status, what happened, the request id.
pub fn error_response(e: &Error, request_id: &str) -> Response<ProxyBody> {
    let status = e.status();
    let reason =
        status.canonical_reason().unwrap_or(if status.as_u16() == 495 { "SSL Certificate Error" } else { "Error" });
    let text = format!("{} {reason}: {e}\nrequest id: {request_id}\n", status.as_u16());
    let mut resp = Response::new(body::full(Bytes::from(text)));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    h.insert(&X_REQUEST_ID, HeaderValue::from_str(request_id).expect("hex"));
    if e.closes_connection() {
        h.insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    if e.kind() == Kind::Unauthenticated {
        h.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    resp
}

/// The answer to a request the route's policy refused (401 or 403): which route refused and
/// the request id, as text, HTML for browsers or JSON for API clients; never the policy or
/// why it did not match (that is the access log's, for the operator).
pub fn refused_response(e: &Error, route: &str, request_id: &str, format: PageFormat) -> Response<ProxyBody> {
    let status = e.status();
    let code = status.as_u16();
    let title = if code == 401 { "Sign-in required" } else { "Access denied" };
    let message = e.to_string();
    let (content_type, page) = match format {
        PageFormat::Json => (
            "application/json",
            serde_json::json!({
                "status": code,
                "error": if code == 401 { "unauthenticated" } else { "forbidden" },
                "message": message,
                "route": route,
                "request_id": request_id,
            })
            .to_string(),
        ),
        PageFormat::Html => (
            "text/html; charset=utf-8",
            format!(
                "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{code} {title}</title></head>\n\
                 <body><h1>{code} {title}</h1><p>{}.</p><p>Route: <code>{}</code><br>Request id: <code>{request_id}</code></p></body></html>\n",
                html_escape(&message),
                html_escape(route),
            ),
        ),
        PageFormat::Text => {
            ("text/plain; charset=utf-8", format!("{code} {title}: {message}\nroute: {route}\nrequest id: {request_id}\n"))
        }
    };
    let mut resp = Response::new(body::full(Bytes::from(page)));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(&X_REQUEST_ID, HeaderValue::from_str(request_id).expect("hex"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if e.kind() == Kind::Unauthenticated {
        h.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    resp
}

/// Text safe inside HTML elements (a route name is the operator's, but still not markup).
fn html_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refused_pages_name_the_route_and_request_id_and_escape_them() {
        let e = Error::new(Kind::Forbidden);
        let page = |f| {
            let r = refused_response(&e, "<b>app</b>", "0123456789abcdef00000001", f);
            let ct = r.headers()[header::CONTENT_TYPE].to_str().unwrap().to_owned();
            (r.status().as_u16(), ct)
        };
        assert_eq!(page(PageFormat::Json), (403, "application/json".to_owned()));
        assert_eq!(page(PageFormat::Html).1, "text/html; charset=utf-8");
        assert_eq!(html_escape("<b>\"x\"&'</b>"), "&lt;b&gt;&quot;x&quot;&amp;&#39;&lt;/b&gt;");
        let unauth = refused_response(&Error::new(Kind::Unauthenticated), "r", "id", PageFormat::Text);
        assert_eq!(unauth.status().as_u16(), 401);
        assert_eq!(unauth.headers()[header::WWW_AUTHENTICATE], "Bearer");
    }
}
