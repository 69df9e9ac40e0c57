//! One probe of one endpoint: TCP (connect, send, expect), HTTP (status in the expected
//! ranges) and gRPC (`grpc.health.v1.Health/Check`). A probe returns why it failed; the
//! checker loop (`health`) counts verdicts and flips the endpoint.
//!
//! gRPC is spoken by hand: the request and the answer are protobuf messages of one field
//! each (`HealthCheckRequest { string service = 1; }`, `HealthCheckResponse { ServingStatus
//! status = 1; }`), so a dozen lines of encoding replace prost and tonic, which the binary
//! would otherwise link (with their code generation at build time) for these two fields.
//! The call itself goes through the endpoint's own pooled HTTP/2 client, the one requests
//! use, so a check probes what traffic would meet.

use std::ops::Range;

use bytes::Bytes;
use http::{header, HeaderMap, Request, StatusCode};
use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::proxy::body;
use crate::proxy::upstream::HttpClient;

/// The most of an answer a probe reads (a TCP answer searched for its payloads, a gRPC
/// response body): health answers are small, and a probe must not buffer without end.
const MAX_ANSWER: usize = 64 * 1024;

/// What a probe needs of an endpoint: a copy of what the snapshot's target holds.
#[derive(Clone)]
pub struct Endpoint {
    /// The endpoint's pooled client (HTTP/2 only for h2c upstreams; ALPN for https).
    pub client: HttpClient,
    /// `http` or `https`.
    pub scheme: &'static str,
    /// `host:port` to connect to.
    pub address: String,
    /// `Host` requests send by default (the authority without a default port).
    pub host_header: String,
}

/// Connects; writes `send`; reads until every `receive` payload was found in order (Envoy's
/// fuzzy match: not necessarily contiguous). No payloads: the connect is the check.
pub async fn tcp(address: &str, send: Option<&[u8]>, receive: &[Vec<u8>]) -> Result<(), String> {
    let mut s = tokio::net::TcpStream::connect(address).await.map_err(|e| format!("connect: {e}"))?;
    if let Some(bytes) = send {
        s.write_all(bytes).await.map_err(|e| format!("send: {e}"))?;
    }
    let mut answer = Vec::new();
    let mut chunk = [0u8; 4096];
    while !payloads_found(&answer, receive) {
        if answer.len() >= MAX_ANSWER {
            return Err(format!("no expected payload in the first {MAX_ANSWER} bytes of the answer"));
        }
        let n = s.read(&mut chunk).await.map_err(|e| format!("receive: {e}"))?;
        if n == 0 {
            return Err(format!("closed after {} bytes without the expected payloads", answer.len()));
        }
        answer.extend_from_slice(&chunk[..n]);
    }
    Ok(())
}

/// Each payload occurs in `answer`, each after the previous one's end.
fn payloads_found(answer: &[u8], payloads: &[Vec<u8>]) -> bool {
    let mut rest = answer;
    for p in payloads {
        match rest.windows(p.len()).position(|w| w == p.as_slice()) {
            Some(i) => rest = &rest[i + p.len()..],
            None => return false,
        }
    }
    true
}

/// `GET path` with `Host: host` (default the endpoint's); healthy when the status is in one
/// of `expected`.
pub async fn http(e: &Endpoint, path: &str, host: Option<&str>, expected: &[Range<u16>]) -> Result<(), String> {
    let host = host.unwrap_or(&e.host_header);
    let req = Request::get(format!("{}://{host}{path}", e.scheme))
        .header(header::HOST, host)
        .header(header::USER_AGENT, "portcullis-health-check")
        .body(body::empty())
        .map_err(|err| err.to_string())?;
    let resp = e.client.request(req).await.map_err(|err| err.to_string())?;
    let status = resp.status().as_u16();
    if expected.iter().any(|r| r.contains(&status)) {
        Ok(())
    } else {
        Err(format!("status {status}"))
    }
}

/// `grpc.health.v1.Health/Check` for `service`; healthy when the call succeeds (HTTP 200,
/// `grpc-status: 0`) and the answer says `SERVING`.
pub async fn grpc(e: &Endpoint, service: &str, authority: Option<&str>) -> Result<(), String> {
    let authority = authority.unwrap_or(&e.host_header);
    let req = Request::post(format!("{}://{authority}/grpc.health.v1.Health/Check", e.scheme))
        .header(header::CONTENT_TYPE, "application/grpc")
        .header(header::TE, "trailers")
        .header(header::USER_AGENT, "portcullis-health-check")
        .body(body::full(encode_request(service)))
        .map_err(|err| err.to_string())?;
    let resp = e.client.request(req).await.map_err(|err| err.to_string())?;
    if resp.status() != StatusCode::OK {
        return Err(format!("HTTP status {}", resp.status()));
    }
    let (parts, body) = resp.into_parts();
    // A trailers-only answer (an error, usually) carries grpc-status in the headers.
    if let Some(status) = grpc_status(&parts.headers) {
        if status != "0" {
            return Err(grpc_error(status, &parts.headers));
        }
    }
    let got = http_body_util::Limited::new(body, MAX_ANSWER).collect().await.map_err(|err| err.to_string())?;
    let trailers = got.trailers().cloned().unwrap_or_default();
    match (grpc_status(&trailers), grpc_status(&parts.headers)) {
        (Some("0"), _) | (None, Some("0")) => {}
        (Some(status), _) => return Err(grpc_error(status, &trailers)),
        (None, _) => return Err("no grpc-status".to_owned()),
    }
    match decode_response(&got.to_bytes())? {
        SERVING => Ok(()),
        other => Err(format!("status {}", status_name(other))),
    }
}

fn grpc_status(h: &HeaderMap) -> Option<&str> {
    h.get("grpc-status").map(|v| v.to_str().unwrap_or("?"))
}

fn grpc_error(status: &str, h: &HeaderMap) -> String {
    let message = h.get("grpc-message").and_then(|v| v.to_str().ok()).unwrap_or("");
    format!("grpc-status {status} {message}").trim_end().to_owned()
}

/// `HealthCheckResponse.ServingStatus.SERVING`.
const SERVING: u64 = 1;

fn status_name(status: u64) -> String {
    match status {
        0 => "UNKNOWN".to_owned(),
        1 => "SERVING".to_owned(),
        2 => "NOT_SERVING".to_owned(),
        3 => "SERVICE_UNKNOWN".to_owned(),
        n => n.to_string(),
    }
}

/// One gRPC message (5-byte prefix: uncompressed, big-endian length) holding
/// `HealthCheckRequest { service }`; an empty service is the empty message.
pub fn encode_request(service: &str) -> Bytes {
    let mut msg = Vec::with_capacity(service.len() + 11);
    if !service.is_empty() {
        msg.push(0x0a); // field 1, length-delimited
        put_varint(&mut msg, service.len() as u64);
        msg.extend_from_slice(service.as_bytes());
    }
    let mut frame = Vec::with_capacity(5 + msg.len());
    frame.push(0);
    frame.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    frame.extend_from_slice(&msg);
    Bytes::from(frame)
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// The `status` of the first gRPC message of a response body (`UNKNOWN`, 0, when the
/// message leaves it out, as protobuf does for defaults). Anything malformed is an error:
/// the body comes from the upstream.
#[allow(clippy::many_single_char_names)]
pub fn decode_response(body: &[u8]) -> Result<u64, String> {
    let [flag, l0, l1, l2, l3, rest @ ..] = body else {
        return Err(format!("a {}-byte answer has no gRPC message", body.len()));
    };
    if *flag != 0 {
        return Err("a compressed gRPC message (none was asked for)".to_owned());
    }
    let len = u32::from_be_bytes([*l0, *l1, *l2, *l3]) as usize;
    let mut msg = rest.get(..len).ok_or_else(|| format!("a gRPC message of {len} bytes cut at {}", rest.len()))?;
    let mut status = 0;
    while !msg.is_empty() {
        let key = varint(&mut msg)?;
        match (key >> 3, key & 7) {
            (1, 0) => status = varint(&mut msg)?,
            (_, 0) => {
                varint(&mut msg)?;
            }
            (_, 1) => msg = msg.get(8..).ok_or("a fixed64 field cut short")?,
            (_, 2) => {
                let skip = usize::try_from(varint(&mut msg)?).map_err(|_| "a field longer than memory")?;
                msg = msg.get(skip..).ok_or("a length-delimited field cut short")?;
            }
            (_, 5) => msg = msg.get(4..).ok_or("a fixed32 field cut short")?,
            (_, wire) => return Err(format!("protobuf wire type {wire} in a health answer")),
        }
    }
    Ok(status)
}

/// A protobuf varint (at most 10 bytes), advancing `buf` past it.
fn varint(buf: &mut &[u8]) -> Result<u64, String> {
    let mut v = 0u64;
    for (i, byte) in buf.iter().enumerate().take(10) {
        v |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            *buf = &buf[i + 1..];
            return Ok(v);
        }
    }
    Err("a varint cut short or too long".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_one_frame_with_the_service_field() {
        assert_eq!(&encode_request("")[..], &[0, 0, 0, 0, 0]);
        assert_eq!(&encode_request("svc")[..], &[0, 0, 0, 0, 5, 0x0a, 3, b's', b'v', b'c']);
        let long = "x".repeat(200);
        let frame = encode_request(&long);
        assert_eq!(&frame[5..8], &[0x0a, 0xc8, 0x01], "a two-byte varint length");
        assert_eq!(u32::from_be_bytes(frame[1..5].try_into().unwrap()) as usize, frame.len() - 5);
    }

    #[test]
    fn answers_decode_to_their_status() {
        assert_eq!(decode_response(&[0, 0, 0, 0, 2, 0x08, 1]), Ok(SERVING));
        assert_eq!(decode_response(&[0, 0, 0, 0, 2, 0x08, 2]), Ok(2));
        assert_eq!(decode_response(&[0, 0, 0, 0, 0]), Ok(0), "the default is left out");
        // Unknown fields of every wire type are skipped; the last status wins.
        let msg =
            [0x10, 0x96, 0x01, 0x19, 1, 2, 3, 4, 5, 6, 7, 8, 0x22, 2, b'h', b'i', 0x2d, 1, 2, 3, 4, 0x08, 2, 0x08, 1];
        let mut body = vec![0, 0, 0, 0, msg.len() as u8];
        body.extend_from_slice(&msg);
        assert_eq!(decode_response(&body), Ok(SERVING));
        // Trailing bytes after the first message (a second message) are not read.
        assert_eq!(decode_response(&[0, 0, 0, 0, 2, 0x08, 1, 0xff]), Ok(SERVING));
    }

    #[test]
    fn truncated_or_garbage_answers_are_errors_not_panics() {
        let good = [0u8, 0, 0, 0, 2, 0x08, 1];
        for cut in 0..good.len() {
            assert!(decode_response(&good[..cut]).is_err(), "cut at {cut}");
        }
        for bad in [
            &[1u8, 0, 0, 0, 2, 0x08, 1][..],    // compressed
            &[0, 0xff, 0xff, 0xff, 0xff, 0x08], // length past the body
            &[0, 0, 0, 0, 2, 0x08, 0x80],       // varint cut short
            &[0, 0, 0, 0, 11, 0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff], // 11-byte varint
            &[0, 0, 0, 0, 2, 0x0b, 0],          // wire type 3 (group)
            &[0, 0, 0, 0, 3, 0x12, 0x05, 0],    // length-delimited cut short
            &[0, 0, 0, 0, 11, 0x12, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f, 0], // huge length
            &[0, 0, 0, 0, 3, 0x09, 0, 0],       // fixed64 cut short
            &[0, 0, 0, 0, 2, 0x0d, 0],          // fixed32 cut short
        ] {
            assert!(decode_response(bad).is_err(), "{bad:?}");
        }
        // Every byte string of up to 3 bytes after a valid prefix: no panic whatever it says.
        for a in 0..=255u8 {
            for b in [0u8, 1, 2, 7, 8, 0x7f, 0x80, 0xff] {
                for len in 0..4u8 {
                    let _ = decode_response(&[0, 0, 0, 0, len, a, b, a]);
                }
            }
        }
    }

    #[test]
    fn payloads_are_found_in_order_not_necessarily_contiguous() {
        let p = |s: &[&str]| s.iter().map(|s| s.as_bytes().to_vec()).collect::<Vec<_>>();
        assert!(payloads_found(b"anything", &[]));
        assert!(payloads_found(b"xxPONGyyOK", &p(&["PONG", "OK"])));
        assert!(!payloads_found(b"OK PONG", &p(&["PONG", "OK"])), "order matters");
        assert!(!payloads_found(b"PON", &p(&["PONG"])));
        assert!(!payloads_found(b"PONG", &p(&["PONG", "PONG"])), "no overlap: each after the last");
        assert!(payloads_found(b"PONGPONG", &p(&["PONG", "PONG"])));
    }

    #[tokio::test]
    async fn tcp_probes_send_and_read_until_the_payloads_arrive() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 4];
                    if s.read_exact(&mut buf).await.is_ok() && &buf == b"PING" {
                        // In two writes: the probe reads until it has both.
                        let _ = s.write_all(b"xxPO").await;
                        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                        let _ = s.write_all(b"NGyy").await;
                    }
                });
            }
        });
        let want = |s: &str| vec![s.as_bytes().to_vec()];
        assert_eq!(tcp(&addr, Some(b"PING"), &want("PONG")).await, Ok(()));
        assert_eq!(tcp(&addr, None, &[]).await, Ok(()), "connect only");
        let e = tcp(&addr, Some(b"PING"), &want("PANG")).await.unwrap_err();
        assert!(e.contains("closed after 8 bytes"), "{e}");
        assert!(tcp(&addr, Some(b"PINX"), &want("PONG")).await.is_err());
    }
}
