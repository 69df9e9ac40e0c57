//! Long-lived traffic passes through as streams, never buffered whole: server-sent events
//! arrive event by event, and a gRPC-shaped bidirectional HTTP/2 stream echoes before the
//! request ends and delivers its trailers.

// Test code measures wall time and may lock as it likes: the clippy.toml rules are for src/.
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]

mod common;

use std::time::Instant;

use bytes::Bytes;
use common::*;
use http::Request;
use http_body_util::BodyExt;
use hyper::body::Frame;

#[tokio::test]
async fn server_sent_events_arrive_one_by_one() {
    let up = upstream("u").await;
    let (r, _d) = start(&format!("routes:\n - {{from: https://a.test, to: http://{up}, idle_timeout: 0}}\n")).await;
    let mut c = h2_tls(r.main, "localhost", &[default_cert(&r)]).await;
    let t = Instant::now();
    let resp = c.send_request(get2("a.test", "/sse?count=5&interval_ms=300")).await.unwrap();
    let mut body = resp.into_body();
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert!(String::from_utf8_lossy(&first).contains("tick 0"));
    assert!(t.elapsed() < ms(600), "first event not held back: {:?}", t.elapsed());
    let rest = body.collect().await.unwrap().to_bytes();
    assert_eq!(String::from_utf8_lossy(&rest).matches("data: tick").count(), 4);
    assert!(t.elapsed() >= ms(1150));
}

#[tokio::test]
async fn bidirectional_http2_stream_with_trailers_through_h2c() {
    let up = upstream("u").await;
    let (r, _d) = start(&format!("routes:\n - {{from: https://grpc.test, to: h2c://{up}, idle_timeout: 0}}\n")).await;
    let mut c = h2_tls(r.main, "localhost", &[default_cert(&r)]).await;
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Box<dyn std::error::Error + Send + Sync>>>(4);
    let body = http_body_util::StreamBody::new(futures_util::stream::poll_fn({
        let mut rx = rx;
        move |cx| rx.poll_recv(cx)
    }))
    .boxed_unsync();
    let req = Request::post("https://grpc.test/duplex")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(body)
        .unwrap();
    tx.send(Ok(Frame::data(Bytes::from_static(b"one")))).await.unwrap();
    let resp = c.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut resp_body = resp.into_body();
    // The echo of the first message arrives while the request is still open.
    let echoed = tokio::time::timeout(ms(3000), resp_body.frame()).await.expect("echo before the request ends");
    assert_eq!(echoed.unwrap().unwrap().into_data().unwrap(), "one");
    tx.send(Ok(Frame::data(Bytes::from_static(b"two")))).await.unwrap();
    let echoed = resp_body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(echoed, "two");
    drop(tx);
    let mut trailers = None;
    while let Some(frame) = resp_body.frame().await {
        if let Ok(t) = frame.unwrap().into_trailers() {
            trailers = Some(t);
        }
    }
    let trailers = trailers.expect("trailers pass through");
    assert_eq!(trailers["grpc-status"], "0");
    assert_eq!(trailers["x-echoed-bytes"], "6");
}
