//! HTTP/3 idle close: GOAWAY on the control stream first, the close about a second later.
//! A minimal HTTP/3 client on quinn, so that the frames on the server's control stream and
//! the moment of the close can be seen exactly.

use std::time::Instant;

use crate::common::{self, ms};

async fn read_varint(s: &mut quinn::RecvStream) -> Option<u64> {
    let mut first = [0u8; 1];
    s.read_exact(&mut first).await.ok()?;
    let len = 1usize << (first[0] >> 6);
    let mut v = u64::from(first[0] & 0x3f);
    let mut rest = [0u8; 7];
    s.read_exact(&mut rest[..len - 1]).await.ok()?;
    for b in &rest[..len - 1] {
        v = (v << 8) | u64::from(*b);
    }
    Some(v)
}

/// Reads the server's unidirectional streams; reports when a GOAWAY frame (type 0x07) comes
/// on its control stream (stream type 0x00).
fn watch_control(conn: quinn::Connection, goaway: tokio::sync::mpsc::UnboundedSender<Instant>) {
    tokio::spawn(async move {
        while let Ok(mut s) = conn.accept_uni().await {
            let goaway = goaway.clone();
            tokio::spawn(async move {
                if read_varint(&mut s).await != Some(0x00) {
                    // QPACK encoder/decoder or a reserved type: drain it.
                    while let Ok(Some(_)) = s.read_chunk(4096, true).await {}
                    return;
                }
                while let (Some(kind), Some(len)) = (read_varint(&mut s).await, read_varint(&mut s).await) {
                    let mut payload = vec![0u8; len as usize];
                    if s.read_exact(&mut payload).await.is_err() {
                        return;
                    }
                    if kind == 0x07 {
                        let _ = goaway.send(Instant::now());
                    }
                }
            });
        }
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http3_idle_connection_gets_goaway_then_closes_a_second_later() {
    let up = common::upstream("u").await;
    let (r, _d) = common::start(&format!(
        "codec_type: http3\ntimeout_idle: 2s\nroutes:\n - {{from: https://a.test, to: http://{up}}}\n - {{from: https://localhost, to: http://{up}}}\n"
    ))
    .await;
    let endpoint = common::h3_endpoint(common::client_config(&[common::default_cert(&r)], &[]));
    let conn = endpoint.connect(r.quic.unwrap(), "localhost").unwrap().await.expect("QUIC handshake");
    // Our control stream with empty SETTINGS; kept open (closing it is a connection error).
    let mut control = conn.open_uni().await.unwrap();
    control.write_all(&[0x00, 0x04, 0x00]).await.unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    watch_control(conn.clone(), tx);
    let t0 = Instant::now();
    let closed = {
        let conn = conn.clone();
        tokio::spawn(async move {
            let reason = conn.closed().await;
            (Instant::now(), reason)
        })
    };
    let (closed_at, reason) = tokio::time::timeout(ms(10_000), closed).await.expect("closed within 10 s").unwrap();
    let goaway = rx.try_recv().ok();
    let closed_after = closed_at - t0;
    assert!(
        closed_after >= ms(1500) && closed_after <= ms(6000),
        "closed {closed_after:?} after the handshake (timeout_idle 2s): {reason}"
    );
    let goaway =
        goaway.unwrap_or_else(|| panic!("no HTTP/3 GOAWAY before the close ({reason}, after {closed_after:?})"));
    let gap = closed_at.saturating_duration_since(goaway);
    assert!(
        gap >= ms(500) && gap <= ms(3000),
        "the close came {gap:?} after the GOAWAY (expected about 1 s): GOAWAY at {:?}, close at {closed_after:?}: {reason}",
        goaway - t0
    );
    assert!(!matches!(reason, quinn::ConnectionError::TimedOut), "a graceful close, not a transport idle timeout");
    drop(control);
    crate::support::normal_client_ok(&r, "a.test", "after the HTTP/3 idle close").await;
}
