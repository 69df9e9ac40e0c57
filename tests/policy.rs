//! Access policy on the request path, over real sockets: a route's policy decides every
//! request; refused without an identity is 401 with `WWW-Authenticate: Bearer`, a route
//! without a policy stays public. (Bearer tokens and the identity provider: next.)

// Test code measures wall time and may lock as it likes: the clippy.toml rules are for src/.
#![allow(clippy::disallowed_types, clippy::disallowed_methods, clippy::many_single_char_names)]

mod common;
use common::*;

#[tokio::test]
async fn a_policy_decides_every_request_and_deny_wins() {
    let up = upstream("u").await;
    let (r, _d) = start(&format!(
        "routes:
 - from: https://open.test
   to: http://{up}
 - from: https://app.test
   to: http://{up}
   policy:
     - allow: {{or: [{{http_path: {{starts_with: /public/}}}}, {{source_ip: 127.0.0.0/8}}]}}
     - deny: {{and: [{{http_method: DELETE}}]}}
 - from: https://users.test
   to: http://{up}
   allowed_users: [alice@example.com]
"
    ))
    .await;
    let mut c = h1_tls(r.main, "localhost", &[default_cert(&r)]).await;
    // No policy: public, as before.
    assert_eq!(text(c.send_request(get("open.test", "/x")).await.unwrap()).await.0, 200);
    // The loopback client is allowed by source_ip; DELETE is denied whatever else matches.
    assert_eq!(text(c.send_request(get("app.test", "/private")).await.unwrap()).await.0, 200);
    let mut del = get("app.test", "/public/a");
    *del.method_mut() = http::Method::DELETE;
    let resp = c.send_request(del).await.unwrap();
    assert_eq!(resp.headers().get("www-authenticate").map(|v| v.to_str().unwrap()), Some("Bearer"));
    let (status, body) = text(resp).await;
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("sign in to use this route") && body.contains("request id:"), "{body}");
    assert!(!body.contains("DELETE") && !body.contains("allow"), "the page never shows the policy: {body}");
    // Shorthand keys: only alice, and no request here has an identity yet.
    assert_eq!(text(c.send_request(get("users.test", "/")).await.unwrap()).await.0, 401);
}

// ---- Bearer tokens: real ES256 keys, a JWKS served over HTTP, OIDC discovery ----

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use futures_util::{SinkExt, StreamExt};
use http_body_util::BodyExt as _;
use hyper_util::rt::TokioIo;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// A signing key and its public JWK.
struct Key {
    kid: String,
    enc: EncodingKey,
    jwk: serde_json::Value,
}

fn key(kid: &str) -> Key {
    let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let raw = pair.public_key_raw();
    let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    let jwk = serde_json::json!({"kty": "EC", "crv": "P-256", "x": b64(&raw[1..33]), "y": b64(&raw[33..65]),
        "kid": kid, "alg": "ES256", "use": "sig"});
    Key { kid: kid.to_owned(), enc: EncodingKey::from_ec_der(&pair.serialize_der()), jwk }
}

/// An OpenID provider on loopback: a discovery document and a JWKS the test changes, and a
/// switch that makes it answer 503 (down).
struct Provider {
    issuer: String,
    jwks: Arc<Mutex<Vec<serde_json::Value>>>,
    down: Arc<AtomicBool>,
    jwks_hits: Arc<AtomicUsize>,
}

async fn provider(keys: &[&Key]) -> Provider {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let issuer = format!("http://{}", listener.local_addr().unwrap());
    let jwks = Arc::new(Mutex::new(keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>()));
    let down = Arc::new(AtomicBool::new(false));
    let jwks_hits = Arc::new(AtomicUsize::new(0));
    let (j, d, h, iss) = (jwks.clone(), down.clone(), jwks_hits.clone(), issuer.clone());
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { return };
            let (j, d, h, iss) = (j.clone(), d.clone(), h.clone(), iss.clone());
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let (status, body) = if d.load(Ordering::Relaxed) {
                        (503, String::new())
                    } else if req.uri().path() == "/.well-known/openid-configuration" {
                        (200, serde_json::json!({"issuer": iss, "jwks_uri": format!("{iss}/keys")}).to_string())
                    } else if req.uri().path() == "/keys" {
                        h.fetch_add(1, Ordering::Relaxed);
                        (200, serde_json::json!({"keys": *j.lock().unwrap()}).to_string())
                    } else {
                        (404, String::new())
                    };
                    async move {
                        let mut resp = http::Response::new(http_body_util::Full::new(bytes::Bytes::from(body)));
                        *resp.status_mut() = http::StatusCode::from_u16(status).unwrap();
                        Ok::<_, std::convert::Infallible>(resp)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
            });
        }
    });
    Provider { issuer, jwks, down, jwks_hits }
}

fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

/// A token for `email` from `issuer` to audience `aud`, valid for `ttl` seconds.
fn token_for(k: &Key, issuer: &str, aud: &str, email: &str, ttl: i64) -> String {
    let mut h = Header::new(Algorithm::ES256);
    h.kid = Some(k.kid.clone());
    let exp = i64::try_from(now()).unwrap() + ttl;
    let claims = serde_json::json!({"iss": issuer, "aud": aud, "sub": email.split('@').next().unwrap(),
        "email": email, "groups": ["staff"], "exp": exp, "iat": now()});
    jsonwebtoken::encode(&h, &claims, &k.enc).unwrap()
}

fn with_bearer(mut req: http::Request<Body>, token: &str) -> http::Request<Body> {
    req.headers_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
    req
}

fn bearer_config(p: &Provider, up: std::net::SocketAddr, extra: &str) -> String {
    format!(
        "idp_provider_url: {iss}
idp_client_id: portcullis-test
{extra}routes:
 - from: https://app.test
   to: http://{up}
   allow_websockets: true
   policy:
     - allow: {{or: [{{email: {{is: alice@example.com}}}}, {{groups: {{has: admins}}}}]}}
     - deny: {{and: [{{http_path: {{starts_with: /admin}}}}]}}
 - from: https://any.test
   to: http://{up}
   allow_any_authenticated_user: true
",
        iss = p.issuer
    )
}

#[tokio::test]
async fn bearer_tokens_decide_over_http1_http2_and_http3() {
    let k1 = key("k1");
    let p = provider(&[&k1]).await;
    let up = upstream("u").await;
    let (r, _d) = start(&bearer_config(&p, up, "codec_type: http3\n")).await;
    let roots = [default_cert(&r)];
    let alice = token_for(&k1, &p.issuer, "portcullis-test", "alice@example.com", 300);
    let bob = token_for(&k1, &p.issuer, "portcullis-test", "bob@example.com", 300);

    // HTTP/1.1
    let mut c = h1_tls(r.main, "localhost", &roots).await;
    assert_eq!(text(c.send_request(with_bearer(get("app.test", "/"), &alice)).await.unwrap()).await.0, 200);
    // The same token again on the connection: remembered, still 200.
    assert_eq!(text(c.send_request(with_bearer(get("app.test", "/x"), &alice)).await.unwrap()).await.0, 200);
    // Deny wins over the allow that matches alice.
    let mut admin = with_bearer(get("app.test", "/admin/users"), &alice);
    admin.headers_mut().insert("accept", "application/json".parse().unwrap());
    let resp = c.send_request(admin).await.unwrap();
    assert_eq!(resp.headers()["content-type"], "application/json");
    let (status, v) = json(resp).await;
    assert_eq!(status, 403);
    assert_eq!(v["route"], "app.test");
    assert!(v["request_id"].as_str().is_some_and(|id| id.len() == 24), "{v}");
    assert!(!v.to_string().contains("starts_with") && !v.to_string().contains("alice"), "no policy in the page: {v}");
    // A valid identity the policy does not name: 403 (HTML for a browser).
    let mut browser = with_bearer(get("app.test", "/"), &bob);
    browser.headers_mut().insert("accept", "text/html,application/xhtml+xml;q=0.9".parse().unwrap());
    let resp = c.send_request(browser).await.unwrap();
    assert!(resp.headers()["content-type"].to_str().unwrap().starts_with("text/html"));
    let (status, page) = text(resp).await;
    assert_eq!(status, 403);
    assert!(page.contains("Access denied") && page.contains("app.test"), "{page}");
    assert!(!page.contains("alice") && !page.contains("starts_with"), "never the policy: {page}");
    // No token, and tokens that prove nothing: 401 with WWW-Authenticate, never a reason.
    let other = key("k1");
    let forged = token_for(&other, &p.issuer, "portcullis-test", "alice@example.com", 300);
    let expired = token_for(&k1, &p.issuer, "portcullis-test", "alice@example.com", -120);
    let wrong_aud = token_for(&k1, &p.issuer, "someone-else", "alice@example.com", 300);
    let wrong_iss = token_for(&k1, "http://127.0.0.1:1", "portcullis-test", "alice@example.com", 300);
    let hs256 = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &serde_json::json!({"iss": p.issuer, "aud": "portcullis-test", "email": "alice@example.com", "exp": now() + 300}),
        &EncodingKey::from_secret(b"public"),
    )
    .unwrap();
    let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
    let none = format!(
        "{}.{}.",
        b64(r#"{"alg":"none","typ":"JWT"}"#),
        b64(&format!(
            r#"{{"iss":"{}","aud":"portcullis-test","email":"alice@example.com","exp":{}}}"#,
            p.issuer,
            now() + 300
        ))
    );
    for (what, t) in [
        ("forged", forged.as_str()),
        ("expired", &expired),
        ("wrong audience", &wrong_aud),
        ("wrong issuer", &wrong_iss),
        ("HS256", &hs256),
        ("alg none", &none),
        ("garbage", "not.a.jwt"),
    ] {
        let resp = c.send_request(with_bearer(get("app.test", "/"), t)).await.unwrap();
        assert_eq!(resp.headers().get("www-authenticate").map(|v| v.to_str().unwrap()), Some("Bearer"), "{what}");
        let (status, body) = text(resp).await;
        assert_eq!(status, 401, "{what}: {body}");
        assert!(
            !body.contains("signature") && !body.contains("expired") && !body.contains("audience"),
            "{what}: {body}"
        );
    }
    assert_eq!(text(c.send_request(get("app.test", "/")).await.unwrap()).await.0, 401);
    // allow_any_authenticated_user: bob is somebody.
    assert_eq!(text(c.send_request(with_bearer(get("any.test", "/"), &bob)).await.unwrap()).await.0, 200);
    assert_eq!(text(c.send_request(get("any.test", "/")).await.unwrap()).await.0, 401);

    // HTTP/2
    let mut c2 = h2_tls(r.main, "localhost", &roots).await;
    assert_eq!(text(c2.send_request(with_bearer(get2("app.test", "/"), &alice)).await.unwrap()).await.0, 200);
    assert_eq!(text(c2.send_request(with_bearer(get2("app.test", "/"), &bob)).await.unwrap()).await.0, 403);
    assert_eq!(text(c2.send_request(get2("app.test", "/")).await.unwrap()).await.0, 401);

    // HTTP/3
    let mut c3 = h3_connect(r.quic.unwrap(), "localhost", &roots).await.unwrap();
    let h3 = |t: Option<&str>| {
        let mut req = get3("app.test", "/");
        if let Some(t) = t {
            req.headers_mut().insert("authorization", format!("Bearer {t}").parse().unwrap());
        }
        req
    };
    assert_eq!(h3_request(&mut c3.send, h3(Some(&alice)), None).await.unwrap().status, 200);
    assert_eq!(h3_request(&mut c3.send, h3(Some(&bob)), None).await.unwrap().status, 403);
    let unauth = h3_request(&mut c3.send, h3(None), None).await.unwrap();
    assert_eq!(
        (unauth.status, unauth.headers.get("www-authenticate").map(|v| v.to_str().unwrap())),
        (401, Some("Bearer"))
    );

    let m = metrics(&r).await;
    for decision in ["allow", "deny", "unauthenticated"] {
        assert!(
            m.lines().any(|l| l.starts_with("portcullis_authz_decisions_total{")
                && l.contains("route=\"app.test\"")
                && l.contains(&format!("decision=\"{decision}\""))),
            "{decision} counted:\n{m}"
        );
    }
}

#[tokio::test]
async fn a_rotated_key_is_picked_up_and_a_provider_down_keeps_the_last_keys() {
    let (k1, k2) = (key("k1"), key("k2"));
    let p = provider(&[&k1]).await;
    let up = upstream("u").await;
    let (r, _d) = start(&bearer_config(&p, up, "")).await;
    let mut c = h1_tls(r.main, "localhost", &[default_cert(&r)]).await;
    let t1 = token_for(&k1, &p.issuer, "portcullis-test", "alice@example.com", 300);
    assert_eq!(text(c.send_request(with_bearer(get("app.test", "/"), &t1)).await.unwrap()).await.0, 200);
    // The provider rotates to k2: a token with the new kid makes the proxy refetch.
    p.jwks.lock().unwrap().push(k2.jwk.clone());
    let hits = p.jwks_hits.load(Ordering::Relaxed);
    let t2 = token_for(&k2, &p.issuer, "portcullis-test", "alice@example.com", 300);
    // The refetch may wait for the rate limit (10 s after the start-up fetch): retry.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        let status = text(c.send_request(with_bearer(get("app.test", "/"), &t2)).await.unwrap()).await.0;
        if status == 200 {
            break;
        }
        assert_eq!(status, 401);
        assert!(std::time::Instant::now() < deadline, "the new key was never fetched");
        tokio::time::sleep(ms(500)).await;
    }
    assert!(p.jwks_hits.load(Ordering::Relaxed) > hits);
    // Made-up key ids do not turn into a stream of fetches.
    let k3 = key("k3");
    let before = p.jwks_hits.load(Ordering::Relaxed);
    for _ in 0..20 {
        let t3 = token_for(&k3, &p.issuer, "portcullis-test", "alice@example.com", 300);
        assert_eq!(text(c.send_request(with_bearer(get("app.test", "/"), &t3)).await.unwrap()).await.0, 401);
    }
    assert!(p.jwks_hits.load(Ordering::Relaxed) <= before + 1, "at most one refetch per 10 s");
    // The provider goes down: tokens of the keys in force still pass (on new connections
    // too: nothing cached per connection helps there).
    p.down.store(true, Ordering::Relaxed);
    let mut fresh = h1_tls(r.main, "localhost", &[default_cert(&r)]).await;
    let t1b = token_for(&k1, &p.issuer, "portcullis-test", "alice@example.com", 299);
    assert_eq!(text(fresh.send_request(with_bearer(get("app.test", "/"), &t1b)).await.unwrap()).await.0, 200);
    assert_eq!(text(fresh.send_request(with_bearer(get("app.test", "/"), &t2)).await.unwrap()).await.0, 200);
}

/// An HTTP/1.1 WebSocket to app.test with `token`.
async fn ws(r: &portcullis::server::Running, token: &str) -> WebSocketStream<TokioIo<hyper::upgrade::Upgraded>> {
    let mut c = h1_tls(r.main, "localhost", &[default_cert(r)]).await;
    let resp = c.send_request(with_bearer(ws_upgrade("app.test"), token)).await.unwrap();
    assert_eq!(resp.status(), 101);
    let upgraded = hyper::upgrade::on(resp).await.unwrap();
    WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Client, None).await
}

/// Whether the WebSocket still echoes (false once the proxy closed it).
async fn echoes<S>(ws: &mut WebSocketStream<S>) -> bool
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    if ws.send(Message::text("ping")).await.is_err() {
        return false;
    }
    matches!(tokio::time::timeout(ms(3000), ws.next()).await, Ok(Some(Ok(Message::Text(t)))) if t.as_str() == "ping")
}

/// Whether the proxy closes the WebSocket within `limit_ms`.
async fn closed_within<S>(ws: &mut WebSocketStream<S>, limit_ms: u64) -> bool
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    tokio::time::timeout(ms(limit_ms), async {
        loop {
            match ws.next().await {
                None | Some(Err(_) | Ok(Message::Close(_))) => return,
                Some(Ok(_)) => {}
            }
        }
    })
    .await
    .is_ok()
}

fn apply(r: &portcullis::server::Running, dir: &std::path::Path, yaml: &str) {
    let path = dir.join("portcullis.yaml");
    std::fs::write(&path, with_ports(yaml)).unwrap();
    let loaded = portcullis::source::file::FileSource::new(&path).load_with_env(&|_| None).unwrap();
    r.proxy.apply(loaded.config);
}

#[tokio::test]
async fn policy_edits_close_the_websockets_they_no_longer_admit_and_only_those() {
    let k1 = key("k1");
    let p = provider(&[&k1]).await;
    let up = upstream("u").await;
    let dir = tempfile::tempdir().unwrap();
    let policy = |users: &str, n: usize| {
        format!(
            "idp_provider_url: {iss}
idp_client_id: portcullis-test
routes:
 - from: https://app.test
   to: http://{up}
   allow_websockets: true
   policy:
     - allow: {{or: [{{email: {{in: [{users}]}}}}]}}
     - deny: {{or: [{{http_path: {{is: /never-{n}}}}}]}}
",
            iss = p.issuer
        )
    };
    let r = start_in(dir.path(), &policy("alice@example.com, bob@example.com", 0)).await;
    let alice = token_for(&k1, &p.issuer, "portcullis-test", "alice@example.com", 300);
    let bob = token_for(&k1, &p.issuer, "portcullis-test", "bob@example.com", 300);
    let mut a = Vec::new();
    for _ in 0..3 {
        a.push(ws(&r, &alice).await);
    }
    let mut b = ws(&r, &bob).await;
    assert!(echoes(&mut b).await);
    // 100 edits that change the policy but still admit everyone, under load: nobody is closed.
    let load = {
        let main = r.main;
        let cert = default_cert(&r);
        let alice = alice.clone();
        tokio::spawn(async move {
            let mut c = h1_tls(main, "localhost", &[cert]).await;
            let mut ok = 0;
            for _ in 0..300 {
                let status = text(c.send_request(with_bearer(get("app.test", "/"), &alice)).await.unwrap()).await.0;
                assert_eq!(status, 200);
                ok += 1;
            }
            ok
        })
    };
    for n in 1..=100 {
        apply(&r, dir.path(), &policy("alice@example.com, bob@example.com", n));
        if n % 25 == 0 {
            for w in &mut a {
                assert!(echoes(w).await, "an admitted WebSocket survives edit {n}");
            }
        }
    }
    assert_eq!(load.await.unwrap(), 300);
    assert!(echoes(&mut b).await, "bob still admitted after 100 edits");
    // Now bob is no longer admitted: his WebSocket is closed, alice's stay.
    apply(&r, dir.path(), &policy("alice@example.com", 101));
    assert!(closed_within(&mut b, 3000).await, "bob's WebSocket closed after the policy stopped admitting him");
    for w in &mut a {
        assert!(echoes(w).await, "alice's WebSockets are untouched");
    }
    let m = metrics(&r).await;
    assert!(m.contains("portcullis_connections_revoked_total{route=\"app.test\",reason=\"policy_changed\"} 1"), "{m}");
}

#[tokio::test]
async fn a_websocket_is_closed_when_its_token_expires() {
    let k1 = key("k1");
    let p = provider(&[&k1]).await;
    let up = upstream("u").await;
    let (r, _d) = start(&bearer_config(&p, up, "jwt_leeway: 0s\n")).await;
    let short = token_for(&k1, &p.issuer, "portcullis-test", "alice@example.com", 2);
    let long = token_for(&k1, &p.issuer, "portcullis-test", "alice@example.com", 300);
    let mut s = ws(&r, &short).await;
    let mut l = ws(&r, &long).await;
    // And one over HTTP/2 (RFC 8441 extended CONNECT).
    let mut c2 = h2_tls(r.main, "localhost", &[default_cert(&r)]).await;
    let _ = text(c2.send_request(with_bearer(get2("app.test", "/"), &long)).await.unwrap()).await;
    let mut req =
        http::Request::connect("https://app.test/ws").header("sec-websocket-version", "13").body(empty()).unwrap();
    req.extensions_mut().insert(hyper::ext::Protocol::from_static("websocket"));
    let resp = c2.send_request(with_bearer(req, &short)).await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut s2 =
        WebSocketStream::from_raw_socket(TokioIo::new(hyper::upgrade::on(resp).await.unwrap()), Role::Client, None)
            .await;
    assert!(echoes(&mut s).await && echoes(&mut l).await && echoes(&mut s2).await);
    let t0 = std::time::Instant::now();
    assert!(closed_within(&mut s, 6000).await, "closed when its token expired");
    assert!(closed_within(&mut s2, 1000).await, "the HTTP/2 one too");
    assert!(t0.elapsed() >= ms(500), "not before it expired");
    assert!(echoes(&mut l).await, "the one with a valid token stays");
    let m = metrics(&r).await;
    assert!(m.contains("portcullis_connections_revoked_total{route=\"app.test\",reason=\"token_expired\"} 2"), "{m}");
}

#[tokio::test]
async fn a_streaming_response_ends_when_its_policy_stops_admitting_it() {
    let k1 = key("k1");
    let p = provider(&[&k1]).await;
    let up = upstream("u").await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = |users: &str| {
        format!(
            "idp_provider_url: {iss}\nidp_client_id: portcullis-test\nroutes:\n - from: https://app.test\n   to: http://{up}\n   allowed_users: [{users}]\n",
            iss = p.issuer
        )
    };
    let r = start_in(dir.path(), &cfg("alice@example.com, bob@example.com")).await;
    let alice = token_for(&k1, &p.issuer, "portcullis-test", "alice@example.com", 300);
    let bob = token_for(&k1, &p.issuer, "portcullis-test", "bob@example.com", 300);
    let mut c = h2_tls(r.main, "localhost", &[default_cert(&r)]).await;
    let sse = |t: &str| with_bearer(get2("app.test", "/sse?count=20&interval_ms=100"), t);
    let a = c.send_request(sse(&alice)).await.unwrap();
    let b = c.send_request(sse(&bob)).await.unwrap();
    assert_eq!((a.status().as_u16(), b.status().as_u16()), (200, 200));
    tokio::time::sleep(ms(300)).await;
    apply(&r, dir.path(), &cfg("alice@example.com"));
    let (a, b) = tokio::join!(a.into_body().collect(), b.into_body().collect());
    let a = a.expect("alice's stream is untouched").to_bytes();
    assert_eq!(String::from_utf8_lossy(&a).matches("data: tick").count(), 20);
    assert!(b.is_err(), "bob's stream was reset when the policy stopped admitting him");
    // The HTTP/2 connection itself carries on.
    assert_eq!(text(c.send_request(with_bearer(get2("app.test", "/"), &alice)).await.unwrap()).await.0, 200);
    let m = metrics(&r).await;
    assert!(m.contains("portcullis_connections_revoked_total{route=\"app.test\",reason=\"policy_changed\"} 1"), "{m}");
}
