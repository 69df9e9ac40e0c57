//! Downstream mTLS: the three enforcement modes with real client certificates.

// Test code measures wall time and may lock as it likes: the clippy.toml rules are for src/.
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]

mod common;

use common::*;

async fn setup(mode: &str) -> (portcullis::server::Running, Pki) {
    setup_with(mode, "").await
}

async fn setup_with(mode: &str, settings: &str) -> (portcullis::server::Running, Pki) {
    let pki = Pki::new();
    pki.leaf("server", &["a.test"]);
    pki.ca_file();
    let up = upstream("u").await;
    let r = start_in(
        pki.dir.path(),
        &format!(
            "{settings}certificates: [{{cert_file: server.pem, key_file: server-key.pem}}]
downstream_mtls: {{ca_file: ca.pem, enforcement: {mode}}}
routes:
 - {{from: https://a.test, to: http://{up}}}
"
        ),
    )
    .await;
    (r, pki)
}

fn with_cert(pki: &Pki) -> rustls::ClientConfig {
    let (chain, key) = pki.client("alice");
    presenting(pki, chain, key)
}

/// HTTP/1.1 over TLS trusting `pki`'s CA, presenting `chain`.
fn presenting(
    pki: &Pki,
    chain: Vec<rustls_pki_types::CertificateDer<'static>>,
    key: rustls_pki_types::PrivateKeyDer<'static>,
) -> rustls::ClientConfig {
    let mut store = rustls::RootCertStore::empty();
    store.add(pki.ca_der.clone()).unwrap();
    let mut c =
        rustls::ClientConfig::builder().with_root_certificates(store).with_client_auth_cert(chain, key).unwrap();
    c.alpn_protocols = vec![b"http/1.1".to_vec()];
    c
}

async fn status_over(r: &portcullis::server::Running, cfg: rustls::ClientConfig) -> Result<u16, String> {
    let tls = tls_connect(r.main, "a.test", cfg).await.map_err(|e| e.to_string())?;
    let (mut send, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls)).await.map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let resp = send.send_request(get("a.test", "/")).await.map_err(|e| e.to_string())?;
    Ok(text(resp).await.0)
}

#[tokio::test]
async fn reject_connection_fails_the_handshake_without_a_certificate() {
    let (r, pki) = setup("reject_connection").await;
    assert_eq!(status_over(&r, with_cert(&pki)).await, Ok(200));
    let without = client_config(std::slice::from_ref(&pki.ca_der), &[b"http/1.1"]);
    assert!(status_over(&r, without).await.is_err(), "no client certificate, no connection");
}

#[tokio::test]
async fn policy_with_default_deny_answers_495_without_a_certificate() {
    let (r, pki) = setup("policy_with_default_deny").await;
    assert_eq!(status_over(&r, with_cert(&pki)).await, Ok(200));
    let without = client_config(std::slice::from_ref(&pki.ca_der), &[b"http/1.1"]);
    assert_eq!(status_over(&r, without).await, Ok(495));
}

#[tokio::test]
async fn policy_mode_lets_routes_decide() {
    let (r, pki) = setup("policy").await;
    let without = client_config(std::slice::from_ref(&pki.ca_der), &[b"http/1.1"]);
    assert_eq!(status_over(&r, without).await, Ok(200));
    // A certificate from another CA is refused in every mode.
    let other = Pki::new();
    let mut store = rustls::RootCertStore::empty();
    store.add(pki.ca_der.clone()).unwrap();
    let (chain, key) = other.client("mallory");
    let mut cfg =
        rustls::ClientConfig::builder().with_root_certificates(store).with_client_auth_cert(chain, key).unwrap();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    assert!(status_over(&r, cfg).await.is_err());
}

#[tokio::test]
async fn http3_verifies_client_certificates_like_tcp() {
    let (r, pki) = setup_with("policy_with_default_deny", "codec_type: http3\n").await;
    let quic = r.quic.expect("quic-ingress");
    let mut c = h3_connect_with(quic, "a.test", with_cert(&pki)).await.unwrap();
    assert_eq!(h3_request(&mut c.send, get3("a.test", "/"), None).await.unwrap().status, 200);
    let mut c = h3_connect(quic, "a.test", std::slice::from_ref(&pki.ca_der)).await.unwrap();
    assert_eq!(h3_request(&mut c.send, get3("a.test", "/"), None).await.unwrap().status, 495);

    let (r, pki) = setup_with("reject_connection", "codec_type: http3\n").await;
    let quic = r.quic.expect("quic-ingress");
    assert!(h3_connect_with(quic, "a.test", with_cert(&pki)).await.is_ok());
    // TLS 1.3: the client finishes its side of the handshake before the server checks the
    // (missing) certificate, so the refusal shows on the first use of the connection.
    let refused = match h3_connect(quic, "a.test", std::slice::from_ref(&pki.ca_der)).await {
        Ok(mut c) => {
            h3_request(&mut c.send, get3("a.test", "/"), None).await.map(|r| r.status).map_err(|e| e.to_string())
        }
        Err(e) => Err(e),
    };
    assert!(refused.is_err(), "no client certificate, no QUIC connection: {refused:?}");
}

/// `client_certificate` and `invalid_client_certificate` read the verified certificate.
#[tokio::test]
async fn client_certificate_policies_read_the_verified_certificate() {
    let pki = Pki::new();
    pki.leaf("server", &["a.test", "fp.test", "san.test", "valid.test"]);
    pki.ca_file();
    let (alice_chain, alice_key) = pki.client("alice");
    let fingerprint: String = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, alice_chain[0].as_ref())
        .as_ref()
        .iter()
        .fold(String::new(), |mut s, b| {
            use std::fmt::Write as _;
            let _ = write!(s, "{b:02x}");
            s
        });
    let up = upstream("u").await;
    let r = start_in(
        pki.dir.path(),
        &format!(
            "certificates: [{{cert_file: server.pem, key_file: server-key.pem}}]
downstream_mtls: {{ca_file: ca.pem, enforcement: policy}}
routes:
 - from: https://san.test
   to: http://{up}
   policy: {{allow: {{or: [{{client_certificate: {{san_dns: {{is: alice}}}}}}]}}}}
 - from: https://fp.test
   to: http://{up}
   policy: {{allow: {{or: [{{client_certificate: {{fingerprint: \"{fingerprint}\"}}}}]}}}}
 - from: https://valid.test
   to: http://{up}
   policy:
     - allow: {{or: [{{accept: true}}]}}
     - deny: {{or: [{{invalid_client_certificate: true}}]}}
"
        ),
    )
    .await;
    let status = |cfg: rustls::ClientConfig, host: &'static str| {
        let main = r.main;
        async move {
            let tls = tls_connect(main, host, cfg).await.unwrap();
            let (mut send, conn) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls)).await.unwrap();
            tokio::spawn(conn);
            text(send.send_request(get(host, "/")).await.unwrap()).await.0
        }
    };
    let bob = {
        let (chain, key) = pki.client("bob");
        presenting(&pki, chain, key)
    };
    let none = || client_config(std::slice::from_ref(&pki.ca_der), &[b"http/1.1"]);
    // alice's SAN and fingerprint match; bob's certificate is an identity the policy refuses
    // (403); no certificate is no identity (401).
    assert_eq!(status(with_cert(&pki), "san.test").await, 200);
    assert_eq!(status(bob.clone(), "san.test").await, 403);
    assert_eq!(status(none(), "san.test").await, 401);
    // with_cert makes a new "alice" certificate each time: a fingerprint names one of them.
    let exact = presenting(&pki, alice_chain, alice_key);
    assert_eq!(status(exact, "fp.test").await, 200);
    assert_eq!(status(with_cert(&pki), "fp.test").await, 403, "another certificate of the same name");
    // invalid_client_certificate: a client without one is denied, with one admitted.
    assert_eq!(status(bob, "valid.test").await, 200);
    assert_eq!(status(none(), "valid.test").await, 401);
}
