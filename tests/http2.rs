//! HTTP/2 downstream and upstream: many concurrent streams on one connection, both sides.

// Test code measures wall time and may lock as it likes: the clippy.toml rules are for src/.
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]

mod common;

use std::collections::HashSet;
use std::time::Instant;

use common::*;

#[tokio::test]
async fn downstream_http2_multiplexes_and_h2c_upstream_shares_one_connection() {
    let up = upstream("u").await;
    let (r, _d) = start(&format!("routes:\n - {{from: https://a.test, to: h2c://{up}, timeout: 10s}}\n")).await;
    let c = h2_tls(r.main, "localhost", &[default_cert(&r)]).await;
    // 50 requests that each take 300 ms upstream: serialised they would need 15 s.
    let t = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let mut c = c.clone();
        tasks.push(tokio::spawn(
            async move { json(c.send_request(get2("a.test", "/delay?ms=300")).await.unwrap()).await },
        ));
    }
    let mut conns = HashSet::new();
    for t in tasks {
        let (status, v) = t.await.unwrap();
        assert_eq!(status, 200);
        assert_eq!(v["version"], "HTTP/2.0", "h2c upstream");
        conns.insert(v["connection"].as_u64().unwrap());
    }
    assert!(t.elapsed() < ms(3000), "50 streams ran concurrently: {:?}", t.elapsed());
    assert_eq!(conns.len(), 1, "all upstream requests multiplexed on one h2c connection: {conns:?}");
    let m = metrics(&r).await;
    assert!(
        m.contains("portcullis_downstream_connections_total{listener=\"https-ingress\"} 1"),
        "one downstream connection:\n{m}"
    );
}

#[tokio::test]
async fn https_upstream_negotiates_h2_with_custom_ca_and_server_name() {
    // The upstream is a second Portcullis (real TLS, ALPN h2) in front of the demo upstream.
    let demo = upstream("deep").await;
    let (inner, _d1) = start(&format!("routes:\n - {{from: https://inner.test, to: http://{demo}}}\n")).await;
    let ca_pem = {
        let der = default_cert(&inner);
        let b64 = base64_encode(der.as_ref());
        format!("-----BEGIN CERTIFICATE-----\n{b64}\n-----END CERTIFICATE-----\n")
    };
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("inner-ca.pem"), ca_pem).unwrap();
    let outer = start_in(
        dir.path(),
        &format!(
            "routes:\n - {{from: https://a.test, to: https://{}, tls_custom_ca_file: inner-ca.pem, tls_server_name: localhost, host_rewrite: inner.test}}\n",
            inner.main
        ),
    )
    .await;
    let mut c = h2_tls(outer.main, "localhost", &[default_cert(&outer)]).await;
    // Until the first connection has negotiated ALPN the pool cannot know it will be
    // HTTP/2, so racing requests may each open one; after it, everything multiplexes.
    assert_eq!(json(c.send_request(get2("a.test", "/")).await.unwrap()).await.0, 200);
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let mut c = c.clone();
        tasks.push(tokio::spawn(
            async move { json(c.send_request(get2("a.test", "/delay?ms=200")).await.unwrap()).await },
        ));
    }
    for t in tasks {
        let (status, v) = t.await.unwrap();
        assert_eq!(status, 200, "{v}");
        assert_eq!(v["upstream"], "deep");
    }
    let m = metrics(&inner).await;
    assert!(
        m.contains("portcullis_downstream_connections_total{listener=\"https-ingress\"} 1"),
        "21 requests (20 concurrent) reached the https upstream on one HTTP/2 connection:\n{m}"
    );
    // Without the custom CA the upstream certificate is not trusted: 503, not a silent pass.
    let dir2 = tempfile::tempdir().unwrap();
    let strict = start_in(
        dir2.path(),
        &format!("routes:\n - {{from: https://a.test, to: https://{}, tls_server_name: localhost}}\n", inner.main),
    )
    .await;
    let (status, body) = https_get(&strict, "a.test", "/").await;
    assert_eq!(status, 503, "{body}");
    // tls_skip_verify accepts it.
    let dir3 = tempfile::tempdir().unwrap();
    let lax = start_in(
        dir3.path(),
        &format!(
            "routes:\n - {{from: https://a.test, to: https://{}, tls_skip_verify: true, host_rewrite: inner.test}}\n",
            inner.main
        ),
    )
    .await;
    assert_eq!(https_get(&lax, "a.test", "/").await.0, 200);
}

fn base64_encode(b: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(b)
}

#[tokio::test]
async fn codec_http1_offers_only_http1() {
    let (r, _d) = start("codec_type: http1\nroutes: []\n").await;
    let tls =
        tls_connect(r.main, "localhost", client_config(&[default_cert(&r)], &[b"h2", b"http/1.1"])).await.unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
}

#[tokio::test]
async fn codec_http1_never_speaks_http2_even_with_prior_knowledge() {
    let (r, _d) = start("codec_type: http1\ninsecure_server: true\nroutes: []\n").await;
    let tcp = tokio::net::TcpStream::connect(r.main).await.unwrap();
    let attempt = async {
        let (mut send, conn) = hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
            .handshake::<_, Body>(hyper_util::rt::TokioIo::new(tcp))
            .await?;
        tokio::spawn(conn);
        send.send_request(get2("a.test", "/")).await
    };
    assert!(tokio::time::timeout(ms(5000), attempt).await.unwrap().is_err(), "h2c must be refused");
    // And HTTP/1.1 works.
    let mut c = h1_plain(r.main).await;
    assert_eq!(text(c.send_request(get("a.test", "/")).await.unwrap()).await.0, 404);
}
