//! WebSockets through the proxy: HTTP/1.1 Upgrade and HTTP/2 extended CONNECT (RFC 8441),
//! living longer than timeout_idle on a route that allows them.

// Test code measures wall time and may lock as it likes: the clippy.toml rules are for src/.
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]

mod common;

use common::*;
use futures_util::{SinkExt, StreamExt};
use http::Request;
use hyper_util::rt::TokioIo;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

async fn echo_for<S>(ws: &mut WebSocketStream<S>, rounds: u32, gap_ms: u64)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    for i in 0..rounds {
        ws.send(Message::text(format!("ping {i}"))).await.unwrap();
        let msg = tokio::time::timeout(ms(3000), ws.next()).await.expect("echo in time").unwrap().unwrap();
        assert_eq!(msg.into_text().unwrap().as_str(), format!("ping {i}"));
        tokio::time::sleep(ms(gap_ms)).await;
    }
}

const CONFIG: &str = "timeout_idle: 400ms
routes:
 - {from: https://ws.test, path: /ws, to: http://UP, allow_websockets: true}
 - {from: https://plain.test, to: http://UP}
";

#[tokio::test]
async fn http1_websocket_outlives_timeout_idle() {
    let up = upstream("u").await;
    let (r, _d) = start(&CONFIG.replace("UP", &up.to_string())).await;
    let mut c = h1_tls(r.main, "localhost", &[default_cert(&r)]).await;
    let resp = c.send_request(ws_upgrade("ws.test")).await.unwrap();
    assert_eq!(resp.status(), 101);
    assert_eq!(resp.headers()["sec-websocket-accept"], "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    let upgraded = hyper::upgrade::on(resp).await.unwrap();
    let mut ws = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Client, None).await;
    // Silent for 3x timeout_idle, then still echoing.
    echo_for(&mut ws, 1, 1200).await;
    echo_for(&mut ws, 3, 100).await;
    ws.close(None).await.unwrap();
}

/// A keep-alive connection that rested between requests (it gave its HTTP/1.1 codec back,
/// see `proxy/accept/rest.rs`) still upgrades: over TLS and on a plain listener (which also
/// sniffs for HTTP/2).
#[tokio::test]
async fn http1_websocket_upgrade_on_a_connection_that_rested() {
    let up = upstream("u").await;
    let config = CONFIG.replace("UP", &up.to_string()).replace("timeout_idle: 400ms", "timeout_idle: 5s");
    let (r, _d) = start(&config).await;
    let (plain, _dp) = start(&format!("insecure_server: true\n{config}")).await;
    let tls = h1_tls(r.main, "localhost", &[default_cert(&r)]).await;
    for (name, mut c) in [("tls", tls), ("plain", h1_plain(plain.main).await)] {
        assert_eq!(text(c.send_request(get("plain.test", "/")).await.unwrap()).await.0, 200, "{name}");
        // Longer than the rest delay (50 ms): the connection has rested.
        tokio::time::sleep(ms(600)).await;
        assert_eq!(text(c.send_request(get("plain.test", "/")).await.unwrap()).await.0, 200, "{name}");
        tokio::time::sleep(ms(600)).await;
        let resp = c.send_request(ws_upgrade("ws.test")).await.unwrap();
        assert_eq!(resp.status(), 101, "{name}");
        let upgraded = hyper::upgrade::on(resp).await.unwrap();
        let mut ws = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Client, None).await;
        // Quiet for longer than the rest delay: a tunnel holds its request active.
        echo_for(&mut ws, 2, 600).await;
        ws.close(None).await.unwrap();
    }
}

#[tokio::test]
async fn http2_extended_connect_websocket_outlives_timeout_idle() {
    let up = upstream("u").await;
    let (r, _d) = start(&CONFIG.replace("UP", &up.to_string())).await;
    let mut c = h2_tls(r.main, "localhost", &[default_cert(&r)]).await;
    // Let the server's SETTINGS (with ENABLE_CONNECT_PROTOCOL) arrive.
    let _ = text(c.send_request(get2("plain.test", "/")).await.unwrap()).await;
    let mut req = Request::connect("https://ws.test/ws").header("sec-websocket-version", "13").body(empty()).unwrap();
    req.extensions_mut().insert(hyper::ext::Protocol::from_static("websocket"));
    let resp = c.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200, "RFC 8441: 200 to the extended CONNECT");
    let upgraded = hyper::upgrade::on(resp).await.unwrap();
    let mut ws = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Client, None).await;
    echo_for(&mut ws, 1, 1200).await;
    echo_for(&mut ws, 3, 100).await;
}

#[tokio::test]
async fn websocket_on_a_route_that_does_not_allow_it_is_403() {
    let up = upstream("u").await;
    let (r, _d) = start(&CONFIG.replace("UP", &up.to_string())).await;
    let mut c = h1_tls(r.main, "localhost", &[default_cert(&r)]).await;
    let (status, body) = text(c.send_request(ws_upgrade("plain.test")).await.unwrap()).await;
    assert_eq!(status, 403);
    assert!(body.contains("allow_websockets"), "{body}");
}
