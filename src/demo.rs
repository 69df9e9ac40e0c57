//! A small, real upstream for the quickstart and the tests: it answers with a JSON echo of
//! what it received (so header rewriting is visible), and has endpoints for slow, streamed,
//! server-sent-event and WebSocket responses. HTTP/1.1 and h2c (prior knowledge).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{header, Request, Response, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

use crate::proxy::body::{full, ProxyBody};

/// Serves the demo upstream on `listener` forever; `name` appears in every answer, with the
/// number of the connection it came on (to show connection reuse and multiplexing).
/// Dropping the future (aborting its task) closes its connections too, as a process that
/// dies would.
pub async fn serve(listener: TcpListener, name: impl Into<String>) {
    let name: Arc<str> = name.into().into();
    let mut connections = 0u64;
    let mut open = tokio::task::JoinSet::new();
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            Some(_) = open.join_next(), if !open.is_empty() => continue,
        };
        let Ok((stream, _)) = accepted else { continue };
        let _ = stream.set_nodelay(true);
        let name = name.clone();
        connections += 1;
        let conn_id = connections;
        open.spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let name = name.clone();
                async move { Ok::<_, Infallible>(answer(&name, conn_id, req).await) }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                .await;
        });
    }
}

fn query_u64(req: &Request<Incoming>, key: &str, default: u64) -> u64 {
    req.uri()
        .query()
        .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix(key).and_then(|v| v.strip_prefix('='))))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

async fn answer(name: &str, conn_id: u64, mut req: Request<Incoming>) -> Response<ProxyBody> {
    let path = req.uri().path().to_owned();
    if path == "/ws" {
        return websocket_echo(&mut req);
    }
    if let Some(code) = path.strip_prefix("/status/") {
        let code =
            code.parse::<u16>().ok().and_then(|c| StatusCode::from_u16(c).ok()).unwrap_or(StatusCode::BAD_REQUEST);
        return with(code, "text/plain", full(format!("status {code}\n")));
    }
    if path == "/delay" {
        tokio::time::sleep(Duration::from_millis(query_u64(&req, "ms", 1000))).await;
    }
    if path == "/stream" || path == "/sse" {
        let sse = path == "/sse";
        let (count, every) = (query_u64(&req, "count", 5), Duration::from_millis(query_u64(&req, "interval_ms", 200)));
        let stream = futures_util::stream::unfold(0u64, move |i| async move {
            if i >= count {
                return None;
            }
            if i > 0 {
                tokio::time::sleep(every).await;
            }
            let chunk = if sse { format!("id: {i}\ndata: tick {i}\n\n") } else { format!("chunk {i}\n") };
            Some((Ok::<_, crate::proxy::body::BoxError>(Frame::data(Bytes::from(chunk))), i + 1))
        });
        let ctype = if sse { "text/event-stream" } else { "text/plain" };
        return with(StatusCode::OK, ctype, StreamBody::new(stream).boxed_unsync());
    }
    if path == "/bytes" {
        let n = query_u64(&req, "n", 1024).min(1 << 30) as usize;
        let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
        let stream = futures_util::stream::unfold(n, move |left| {
            let chunk = chunk.clone();
            async move {
                (left > 0).then(|| {
                    let take = left.min(chunk.len());
                    (Ok::<_, crate::proxy::body::BoxError>(Frame::data(chunk.slice(..take))), left - take)
                })
            }
        });
        return with(StatusCode::OK, "application/octet-stream", StreamBody::new(stream).boxed_unsync());
    }
    if path == "/duplex" {
        // gRPC-shaped: echoes each request frame as it arrives, then ends with trailers.
        let body = req.into_body();
        let stream = futures_util::stream::unfold((body, 0usize, false), |(mut body, n, done)| async move {
            if done {
                return None;
            }
            match body.frame().await {
                Some(Ok(f)) => match f.into_data() {
                    Ok(d) => {
                        let len = d.len();
                        Some((Ok::<_, crate::proxy::body::BoxError>(Frame::data(d)), (body, n + len, false)))
                    }
                    Err(_) => Some((Ok(Frame::data(Bytes::new())), (body, n, false))),
                },
                Some(Err(e)) => Some((Err(e.into()), (body, n, true))),
                None => {
                    let mut t = http::HeaderMap::new();
                    t.insert("grpc-status", header::HeaderValue::from_static("0"));
                    t.insert("x-echoed-bytes", header::HeaderValue::from(n));
                    Some((Ok(Frame::trailers(t)), (body, n, true)))
                }
            }
        });
        return with(StatusCode::OK, "application/grpc", StreamBody::new(stream).boxed_unsync());
    }
    if path == "/echo" {
        // Streams the request body straight back.
        let body = req.into_body().map_err(Into::into).boxed_unsync();
        return with(StatusCode::OK, "application/octet-stream", body);
    }
    let headers: serde_json::Map<String, serde_json::Value> =
        req.headers().iter().map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or("<binary>").into())).collect();
    let (method, uri, version) = (req.method().to_string(), req.uri().to_string(), format!("{:?}", req.version()));
    let received = req.into_body().collect().await.map_or(0, |b| b.to_bytes().len());
    let doc = serde_json::json!({
        "upstream": name,
        "connection": conn_id,
        "method": method,
        "uri": uri,
        "version": version,
        "headers": headers,
        "body_bytes": received,
    });
    with(StatusCode::OK, "application/json", full(format!("{doc:#}\n")))
}

fn with(status: StatusCode, ctype: &'static str, body: ProxyBody) -> Response<ProxyBody> {
    let mut r = Response::new(body);
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static(ctype));
    r
}

fn websocket_echo(req: &mut Request<Incoming>) -> Response<ProxyBody> {
    let Some(key) = req.headers().get("sec-websocket-key").cloned() else {
        return with(StatusCode::BAD_REQUEST, "text/plain", full("not a WebSocket handshake\n"));
    };
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    let on_upgrade = hyper::upgrade::on(req);
    tokio::spawn(async move {
        let Ok(upgraded) = on_upgrade.await else { return };
        let ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
            TokioIo::new(upgraded),
            tokio_tungstenite::tungstenite::protocol::Role::Server,
            None,
        )
        .await;
        let (mut tx, mut rx) = ws.split();
        while let Some(Ok(msg)) = rx.next().await {
            if msg.is_close() {
                break;
            }
            if (msg.is_text() || msg.is_binary()) && tx.send(msg).await.is_err() {
                break;
            }
        }
    });
    let mut r = with(StatusCode::SWITCHING_PROTOCOLS, "text/plain", crate::proxy::body::empty());
    r.headers_mut().remove(header::CONTENT_TYPE);
    let h = r.headers_mut();
    h.insert(header::CONNECTION, header::HeaderValue::from_static("upgrade"));
    h.insert(header::UPGRADE, header::HeaderValue::from_static("websocket"));
    h.insert("sec-websocket-accept", header::HeaderValue::from_str(&accept).expect("base64"));
    r
}
