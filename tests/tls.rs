//! Downstream TLS: SNI picks the certificate, the default certificate answers unknown names,
//! and the fixed minimums refuse TLS 1.0/1.1 and non-AEAD suites.

// Test code measures wall time and may lock as it likes: the clippy.toml rules are for src/.
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]

mod common;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test]
async fn sni_selects_the_certificate_and_unknown_names_get_the_default() {
    let pki = Pki::new();
    pki.leaf("default", &["default.test"]);
    pki.leaf("a", &["a.test"]);
    pki.leaf("wild", &["*.wild.test"]);
    let up = upstream("u").await;
    let r = start_in(
        pki.dir.path(),
        &format!(
            "certificates:
  - {{cert_file: default.pem, key_file: default-key.pem}}
  - {{cert_file: a.pem, key_file: a-key.pem}}
  - {{cert_file: wild.pem, key_file: wild-key.pem}}
routes:
  - {{from: https://a.test, to: http://{up}}}
  - {{from: https://x.wild.test, to: http://{up}}}
"
        ),
    )
    .await;
    let roots = [pki.ca_der.clone()];
    // A client that verifies the name succeeds only if the right certificate came back.
    for host in ["a.test", "x.wild.test", "default.test"] {
        let tls = tls_connect(r.main, host, client_config(&roots, &[b"http/1.1"])).await;
        assert!(tls.is_ok(), "{host}: {:?}", tls.err());
    }
    // An unknown name gets the default certificate, then the normal routing answer.
    let cfg = client_config(&roots, &[b"http/1.1"]);
    let err = tls_connect(r.main, "unknown.test", cfg).await.unwrap_err();
    assert!(err.to_string().contains("NotValidForName") || err.to_string().contains("not valid"), "{err}");
    let tls = tls_connect(r.main, "default.test", client_config(&roots, &[b"http/1.1"])).await.unwrap();
    let presented = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
    assert_eq!(presented, r.proxy.certificates()[0].key.cert[0], "default is the first configured certificate");
    let (send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls)).await.unwrap();
    tokio::spawn(conn);
    let mut send = send;
    let (status, body) = text(send.send_request(get("nobody.test", "/")).await.unwrap()).await;
    assert_eq!(status, 404, "{body}");
}

#[tokio::test]
async fn without_certificates_a_self_signed_default_is_made_at_start() {
    let up = upstream("u").await;
    let (r, _d) = start(&format!("routes:\n - {{from: https://app.test, to: http://{up}}}\n")).await;
    let cert = &r.proxy.certificates()[0];
    assert_eq!(cert.source, "self-signed");
    assert!(cert.names.contains(&"localhost".to_owned()) && cert.names.contains(&"app.test".to_owned()));
    assert_eq!(https_get(&r, "app.test", "/").await.0, 200);
}

/// A raw ClientHello: rustls (rightly) cannot send TLS 1.1 or CBC suites, so the test
/// speaks the record layer itself.
fn client_hello(version: [u8; 2], suites: &[u16], with_modern_extensions: bool) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&version);
    body.extend_from_slice(&[7u8; 32]); // random
    body.push(0); // session id
    body.extend_from_slice(&((suites.len() * 2) as u16).to_be_bytes());
    for s in suites {
        body.extend_from_slice(&s.to_be_bytes());
    }
    body.extend_from_slice(&[1, 0]); // null compression
    let mut ext = Vec::new();
    // server_name: localhost
    let name = b"localhost";
    let mut sni = Vec::new();
    sni.extend_from_slice(&((name.len() + 3) as u16).to_be_bytes());
    sni.push(0);
    sni.extend_from_slice(&(name.len() as u16).to_be_bytes());
    sni.extend_from_slice(name);
    ext.extend_from_slice(&[0, 0]);
    ext.extend_from_slice(&(sni.len() as u16).to_be_bytes());
    ext.extend_from_slice(&sni);
    if with_modern_extensions {
        // supported_groups x25519, secp256r1; ec_point_formats; signature_algorithms.
        ext.extend_from_slice(&[0, 10, 0, 6, 0, 4, 0, 0x1d, 0, 0x17]);
        ext.extend_from_slice(&[0, 11, 0, 2, 1, 0]);
        ext.extend_from_slice(&[0, 13, 0, 8, 0, 6, 4, 3, 8, 4, 4, 1]);
    }
    body.extend_from_slice(&(ext.len() as u16).to_be_bytes());
    body.extend_from_slice(&ext);
    let mut hs = vec![1u8];
    hs.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    hs.extend_from_slice(&body);
    let mut rec = vec![22u8, 3, 1];
    rec.extend_from_slice(&(hs.len() as u16).to_be_bytes());
    rec.extend_from_slice(&hs);
    rec
}

/// Sends a ClientHello and returns the first record's content type and, for alerts, the
/// alert description.
async fn first_answer(addr: std::net::SocketAddr, hello: &[u8]) -> (u8, Option<u8>) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(hello).await.unwrap();
    let mut buf = [0u8; 7];
    match tokio::time::timeout(ms(3000), s.read_exact(&mut buf)).await {
        Ok(Ok(_)) => (buf[0], (buf[0] == 21).then_some(buf[6])),
        _ => (0, None),
    }
}

#[tokio::test]
async fn tls_1_0_and_1_1_are_refused() {
    let (r, _d) = start("routes: []\n").await;
    // TLS 1.1 with an AEAD-less but otherwise common suite list.
    let suites = [0xc02f, 0xc013, 0x002f];
    for version in [[3, 2], [3, 1]] {
        let (ctype, alert) = first_answer(r.main, &client_hello(version, &suites, true)).await;
        assert_eq!(ctype, 21, "TLS {version:?} must get an alert, not a ServerHello");
        assert_eq!(alert, Some(70), "protocol_version alert");
    }
}

#[tokio::test]
async fn tls_1_2_cbc_suites_are_refused_and_aead_accepted() {
    let (r, _d) = start("routes: []\n").await;
    // ECDHE-RSA/ECDSA-AES128-CBC-SHA only: no AEAD suite in common.
    let (ctype, alert) = first_answer(r.main, &client_hello([3, 3], &[0xc013, 0xc009, 0x002f], true)).await;
    assert_eq!(ctype, 21, "non-AEAD suites must be refused");
    assert_eq!(alert, Some(40), "handshake_failure alert");
    // ECDHE-ECDSA-AES128-GCM-SHA256 (the default certificate is ECDSA P-256).
    let (ctype, _) = first_answer(r.main, &client_hello([3, 3], &[0xc02b], true)).await;
    assert_eq!(ctype, 22, "an AEAD suite gets a ServerHello");
}
