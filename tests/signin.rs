//! Browser sign-in end to end over real sockets: node's `oidc-provider` (a certified OpenID
//! Provider) on loopback, the proxy with `idp_client_secret` and `cookie_secret`, and a
//! scripted user agent with a cookie jar following every redirect: the sign-in host, the
//! provider's login and consent forms, the hand-off to the route host, the identity
//! assertion the upstream receives, single sign-on across route hosts, sign-out revoking the
//! session everywhere, the programmatic login, refresh across an ID-token expiry, and every
//! way a forged, replayed or misdirected step is refused.

// Test code measures wall time and may lock as it likes: the clippy.toml rules are for src/.
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]

mod common;
#[path = "signin_support/mod.rs"]
mod signin_support;

use std::time::Duration;

use base64::Engine as _;
use common::*;
use portcullis::proxy::session::{Purpose, Sealer, Session};
use signin_support::{describe, Agent, Hop, OidcProvider, ProviderOptions, ALICE, BOB};

const SECRET: [u8; 32] = [42; 32];

struct Env {
    provider: OidcProvider,
    r: portcullis::server::Running,
    _dir: tempfile::TempDir,
    port: u16,
}

impl Env {
    fn url(&self, host: &str, path: &str) -> String {
        format!("https://{host}:{}{path}", self.port)
    }

    fn auth(&self) -> String {
        format!("https://authenticate.test:{}", self.port)
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The proxy with sign-in against a fresh provider. Routes: `app.test` (alice only),
/// `other.test` (any signed-in user), `open.test` (public), `ws.test` (WebSockets, any
/// signed-in user), `api.test` (any signed-in user, no identity headers).
async fn setup(tune: impl FnOnce(&mut ProviderOptions)) -> Env {
    let port = free_port();
    let mut opts = ProviderOptions::for_auth(&format!("https://authenticate.test:{port}"));
    tune(&mut opts);
    let provider = OidcProvider::start(opts).await;
    let up = upstream("u").await;
    let secret = base64::engine::general_purpose::STANDARD.encode(SECRET);
    let (r, dir) = start(&format!(
        "address: 127.0.0.1:{port}
idp_provider_url: {issuer}
idp_client_id: portcullis
idp_client_secret: portcullis-secret
cookie_secret: {secret}
jwt_claims_headers:
  X-Email: email
routes:
 - from: https://app.test
   to: http://{up}
   allowed_users: [alice@example.com]
 - from: https://other.test
   to: http://{up}
   allow_any_authenticated_user: true
 - from: https://open.test
   to: http://{up}
   allow_public_unauthenticated_access: true
 - from: https://ws.test
   to: http://{up}
   allow_websockets: true
   allow_any_authenticated_user: true
 - from: https://api.test
   to: http://{up}
   allow_any_authenticated_user: true
   pass_identity_headers: false
   jwt_claims_headers: {{}}
",
        issuer = provider.issuer()
    ))
    .await;
    Env { provider, r, _dir: dir, port }
}

/// Signs `who` in through the provider from `url`; returns every hop, the last one the page.
async fn sign_in(agent: &mut Agent, env: &Env, url: &str, who: (&str, &str)) -> Vec<Hop> {
    let mut hops = agent.follow(url, 10).await;
    let login = hops.last().unwrap().clone();
    assert!(
        login.url.starts_with(env.provider.issuer()),
        "a browser without a session is sent to the provider:\n{}",
        describe(&hops)
    );
    hops.extend(agent.sign_in_at_provider(&login, who.0, who.1).await);
    hops
}

/// The upstream's view of the last request: its headers.
fn upstream_headers(hop: &Hop) -> serde_json::Map<String, serde_json::Value> {
    let doc: serde_json::Value = serde_json::from_str(&hop.body)
        .unwrap_or_else(|_| panic!("not the upstream's answer: {} {}", hop.status, hop.body));
    doc["headers"].as_object().unwrap().clone()
}

/// A plain-HTTP GET to the admin listener.
async fn admin_get(addr: std::net::SocketAddr, path: &str) -> String {
    let mut c = h1_plain(addr).await;
    text(c.send_request(get("localhost", path)).await.unwrap()).await.1
}

fn alice() -> (&'static str, &'static str) {
    (ALICE.login, ALICE.password)
}

/// Verifies an assertion with the JWKS the route host serves.
async fn verify_assertion(agent: &mut Agent, env: &Env, host: &str, jwt: &str) -> serde_json::Value {
    let jwks = agent.get(&env.url(host, "/.well-known/portcullis/jwks.json")).await;
    assert_eq!(jwks.status, 200, "{}", jwks.body);
    let set: jsonwebtoken::jwk::JwkSet = serde_json::from_str(&jwks.body).unwrap();
    let key = jsonwebtoken::DecodingKey::from_jwk(&set.keys[0]).unwrap();
    let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::ES256);
    v.set_audience(&[host]);
    v.set_issuer(&[host]);
    jsonwebtoken::decode::<serde_json::Value>(jwt, &key, &v)
        .expect("the assertion verifies with the served keys")
        .claims
}

#[tokio::test]
async fn a_browser_signs_in_reaches_the_app_with_its_identity_and_signs_out_everywhere() {
    let env = setup(|_| {}).await;
    let mut agent = Agent::new();
    let hops = sign_in(&mut agent, &env, &env.url("app.test", "/hello?x=1"), alice()).await;
    let last = hops.last().unwrap();
    assert_eq!(last.status, 200, "{}", describe(&hops));
    assert_eq!(last.url, env.url("app.test", "/hello?x=1"), "back to the URL first asked for:\n{}", describe(&hops));
    // The way there: the sign-in host, the provider, its callback, the hand-off.
    assert!(
        hops.iter().any(|h| h.url.starts_with(&format!("{}/.portcullis/sign_in?state=", env.auth()))),
        "{}",
        describe(&hops)
    );
    assert!(hops.iter().any(|h| h.url.starts_with(&format!("{}/.portcullis/callback?", env.auth()))));
    assert!(hops.iter().any(|h| h.url.starts_with(&env.url("app.test", "/.portcullis/callback?handoff="))));
    let session = agent.cookie_entry("_portcullis", "app.test").expect("a session cookie on the route host").clone();
    assert!(session.secure && session.http_only && session.host_only, "{session:?}");
    assert_eq!(session.same_site.as_deref().map(str::to_ascii_lowercase).as_deref(), Some("lax"));

    // The upstream learns who it is, signed; the claims header too.
    let headers = upstream_headers(last);
    let jwt = headers["x-portcullis-jwt-assertion"].as_str().unwrap().to_owned();
    let claims = verify_assertion(&mut agent, &env, "app.test", &jwt).await;
    assert_eq!(claims["email"], "alice@example.com");
    assert_eq!(claims["sub"], ALICE.sub);
    assert_eq!(claims["groups"], serde_json::json!(["admins", "staff"]));
    assert_eq!(claims["name"], "Alice Example");
    assert_eq!(headers["x-email"], "alice@example.com");
    // The proxy's own cookies stay with the proxy: an upstream that saw them could replay them.
    assert!(headers.get("cookie").is_none_or(|c| !c.as_str().unwrap().contains("_portcullis")), "{headers:?}");
    agent.set_cookie("theme", "app.test", "dark");
    let mixed = upstream_headers(&agent.get(&env.url("app.test", "/")).await);
    assert_eq!(mixed["cookie"], "theme=dark", "the app's own cookies pass");

    // A client's own identity headers never reach the upstream.
    let forged = agent
        .request(
            "GET",
            &env.url("app.test", "/"),
            &[("x-portcullis-jwt-assertion", "forged"), ("x-email", "mallory@example.com")],
            None,
        )
        .await;
    let seen = upstream_headers(&forged);
    assert_ne!(seen["x-portcullis-jwt-assertion"], "forged");
    assert_eq!(seen["x-email"], "alice@example.com");
    // ...nor their `_` spellings, which some frameworks read as the same header.
    let underscored = agent
        .request(
            "GET",
            &env.url("app.test", "/"),
            &[("x_email", "mallory@example.com"), ("x_portcullis_jwt_assertion", "forged")],
            None,
        )
        .await;
    let seen = upstream_headers(&underscored);
    assert!(!seen.contains_key("x_email") && !seen.contains_key("x_portcullis_jwt_assertion"), "{seen:?}");
    // A route that passes no identity gets none, forged or not.
    assert_eq!(agent.follow(&env.url("api.test", "/"), 10).await.last().unwrap().status, 200);
    let api = agent.request("GET", &env.url("api.test", "/"), &[("x-portcullis-jwt-assertion", "forged")], None).await;
    let api_seen = upstream_headers(&api);
    assert!(!api_seen.contains_key("x-portcullis-jwt-assertion") && !api_seen.contains_key("x-email"), "{api_seen:?}");

    // The admin's config dump names the sign-in settings and no secret.
    let dump = admin_get(env.r.admin.unwrap(), "/config_dump").await;
    assert!(dump.contains(&format!("authenticate.test:{}", env.port)), "{dump}");
    let secret = base64::engine::general_purpose::STANDARD.encode(SECRET);
    assert!(!dump.contains("portcullis-secret") && !dump.contains(&secret), "{dump}");

    // Single sign-on: another route host signs in through the sign-in host's session,
    // without the provider.
    let other = agent.follow(&env.url("other.test", "/o"), 10).await;
    assert_eq!(other.last().unwrap().status, 200, "{}", describe(&other));
    assert!(!other.iter().any(|h| h.url.starts_with(env.provider.issuer())), "{}", describe(&other));

    // Sign out, with a way back to a route host.
    let app_cookie = agent.cookie("_portcullis", "app.test").unwrap().to_owned();
    let q = signin_support::form_encode(&[("redirect_uri", env.url("open.test", "/bye"))]);
    let out = agent.get(&env.url("app.test", &format!("/.portcullis/sign_out?{q}"))).await;
    assert_eq!(out.status, 302, "{}", out.body);
    assert!(out.location().unwrap().starts_with(&env.provider.end_session_endpoint()), "{:?}", out.location());
    let back = agent.confirm_provider_logout(&out).await;
    let landed = back.last().unwrap();
    assert_eq!(landed.url, env.url("open.test", "/bye"), "{}", describe(&back));
    assert_eq!(landed.status, 200);
    assert!(agent.cookie("_portcullis", "app.test").is_none(), "the cookie is cleared");
    // The old cookie, replayed, is signed out; so is the same session on the other host.
    agent.set_cookie("_portcullis", "app.test", &app_cookie);
    let replay = agent.get(&env.url("app.test", "/")).await;
    assert_eq!(replay.status, 302, "a signed-out session is no session: {}", replay.body);
    assert!(replay.location().unwrap().starts_with(&format!("{}/.portcullis/sign_in", env.auth())));
    let other_again = agent.get(&env.url("other.test", "/")).await;
    assert_eq!(other_again.status, 302, "signed out on every route host");
    // Signing in again works, through the provider.
    let again = sign_in(&mut agent, &env, &env.url("app.test", "/"), alice()).await;
    assert_eq!(again.last().unwrap().status, 200, "{}", describe(&again));
}

#[tokio::test]
async fn policies_read_the_session_and_non_browsers_keep_the_401() {
    let env = setup(|_| {}).await;
    // Bob signs in, but app.test admits alice only: 403, where signing in again would not help.
    let mut bob = Agent::new();
    let hops = sign_in(&mut bob, &env, &env.url("other.test", "/"), (BOB.login, BOB.password)).await;
    assert_eq!(hops.last().unwrap().status, 200, "{}", describe(&hops));
    let denied = bob.follow(&env.url("app.test", "/"), 10).await;
    assert_eq!(denied.last().unwrap().status, 403, "{}", describe(&denied));
    // Without a session: an API client gets 401, not a redirect; a POST too.
    let mut api = Agent::new();
    let j = api.request("GET", &env.url("app.test", "/"), &[("accept", "application/json")], None).await;
    assert_eq!(j.status, 401, "{}", j.body);
    let p = api.request("POST", &env.url("app.test", "/"), &[], Some(b"x".to_vec())).await;
    assert_eq!(p.status, 401);
    // A public route stays public.
    assert_eq!(api.get(&env.url("open.test", "/")).await.status, 200);
}

#[tokio::test]
async fn tampered_expired_foreign_and_signed_out_cookies_are_no_session() {
    let env = setup(|_| {}).await;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let claims = serde_json::json!({"sub": "alice", "email": "alice@example.com"}).as_object().unwrap().clone();
    let good = Session::new(claims.clone(), now + 600, None, now + 3600);
    let ours = Sealer::new(&SECRET);
    let mut agent = Agent::new();
    // A session sealed with the proxy's secret works (what the sign-in would have set).
    agent.set_cookie("_portcullis", "app.test", &ours.seal(Purpose::Session, &good));
    assert_eq!(agent.get(&env.url("app.test", "/")).await.status, 200);
    // The same over HTTP/2: one pipeline for every version.
    let mut h2 = h2_tls(env.r.main, "app.test", &[default_cert(&env.r)]).await;
    for _ in 0..2 {
        let mut req = get2(&format!("app.test:{}", env.port), "/");
        req.headers_mut()
            .insert("cookie", format!("_portcullis={}", ours.seal(Purpose::Session, &good)).parse().unwrap());
        let (status, body) = json(h2.send_request(req).await.unwrap()).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["headers"]["x-email"], "alice@example.com");
        assert!(body["headers"]["x-portcullis-jwt-assertion"].is_string());
    }
    // Tampered: one character changed anywhere.
    let sealed = ours.seal(Purpose::Session, &good);
    for i in [3, sealed.len() / 2, sealed.len() - 2] {
        let mut bytes = sealed.clone().into_bytes();
        bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
        agent.set_cookie("_portcullis", "app.test", std::str::from_utf8(&bytes).unwrap());
        let hop = agent.get(&env.url("app.test", "/")).await;
        assert_eq!(hop.status, 302, "tampered at {i}: sent to sign in");
    }
    // Sealed with another secret (a rotated cookie_secret): no session, no error.
    let foreign = Sealer::new(&[1; 32]).seal(Purpose::Session, &good);
    agent.set_cookie("_portcullis", "app.test", &foreign);
    assert_eq!(agent.get(&env.url("app.test", "/")).await.status, 302);
    // Expired.
    let expired = Session::new(claims.clone(), now - 10, None, now - 5);
    agent.set_cookie("_portcullis", "app.test", &ours.seal(Purpose::Session, &expired));
    assert_eq!(agent.get(&env.url("app.test", "/")).await.status, 302);
    // An ID token past its expiry without a refresh token: sign in again.
    let stale = Session::new(claims.clone(), now - 10, None, now + 3600);
    agent.set_cookie("_portcullis", "app.test", &ours.seal(Purpose::Session, &stale));
    assert_eq!(agent.get(&env.url("app.test", "/")).await.status, 302);
    // Another purpose's sealed value is not a session.
    agent.set_cookie("_portcullis", "app.test", &ours.seal(Purpose::Handoff, &good));
    assert_eq!(agent.get(&env.url("app.test", "/")).await.status, 302);
    // Garbage of every size never breaks the request.
    for junk in ["", "x", "%00", &"A".repeat(3000)] {
        agent.set_cookie("_portcullis", "app.test", junk);
        assert_eq!(agent.get(&env.url("app.test", "/")).await.status, 302, "{junk:?}");
    }
    // Signed out (the revocation list), though the cookie itself is valid.
    env.r.proxy.revocations.revoke(&good.sid, now + 3600);
    agent.set_cookie("_portcullis", "app.test", &ours.seal(Purpose::Session, &good));
    assert_eq!(agent.get(&env.url("app.test", "/")).await.status, 302);
}

#[tokio::test]
async fn open_redirects_and_forged_or_replayed_steps_are_refused() {
    let env = setup(|_| {}).await;
    let mut agent = Agent::new();
    // Sign-out and the programmatic login go to route hosts and loopback only.
    for bad in ["https://evil.example/", "http://app.test/", "//evil.example/", "https://app.test@evil.example/"] {
        let q = signin_support::form_encode(&[("redirect_uri", bad)]);
        let hop = agent.get(&env.url("app.test", &format!("/.portcullis/sign_out?{q}"))).await;
        assert_eq!(hop.status, 400, "sign_out to {bad}: {:?}", hop.location());
        let hop = agent.get(&env.url("app.test", &format!("/.portcullis/api/v1/login?{q}"))).await;
        assert_eq!(hop.status, 400, "login to {bad}: {:?}", hop.location());
    }
    for bad in ["https://127.0.0.1:9/", "http://evil.example:80/", "http://127.0.0.1.evil.example:80/"] {
        let q = signin_support::form_encode(&[("redirect_uri", bad)]);
        assert_eq!(
            agent.get(&env.url("app.test", &format!("/.portcullis/api/v1/login?{q}"))).await.status,
            400,
            "{bad}"
        );
    }
    // A forged or missing state at the sign-in host and at its callback.
    for path in
        ["/.portcullis/sign_in?state=forged", "/.portcullis/sign_in", "/.portcullis/callback?code=x&state=forged"]
    {
        let hop = agent.get(&format!("{}{path}", env.auth())).await;
        assert_eq!(hop.status, 400, "{path}: {}", hop.body);
        assert!(!hop.body.contains("panicked"), "{}", hop.body);
    }
    // Anything else on the sign-in host is not found (it routes nothing).
    assert_eq!(agent.get(&format!("{}/anything", env.auth())).await.status, 404);

    // Start a sign-in and stop at the provider: the state it carries.
    let hops = agent.follow(&env.url("app.test", "/"), 10).await;
    let to_provider = hops.iter().find(|h| h.location().is_some_and(|l| l.starts_with(env.provider.issuer()))).unwrap();
    let state = to_provider.location_query("state").unwrap();
    // Another browser (no CSRF cookie) cannot finish this sign-in at the callback.
    let mut stranger = Agent::new();
    let q = signin_support::form_encode(&[("code", "x"), ("state", &state)]);
    let hop = stranger.get(&format!("{}/.portcullis/callback?{q}", env.auth())).await;
    assert_eq!(hop.status, 400, "{}", hop.body);
    assert!(hop.body.contains("not started in this browser"), "{}", hop.body);

    // Two sign-ins in one browser; the provider's answer to the second presented with the
    // first's state: the PKCE verifier (and nonce) do not match the code, and it is refused.
    let first = agent.follow(&env.url("app.test", "/a"), 10).await;
    let first_state = first
        .iter()
        .find_map(|h| {
            h.location().filter(|l| l.starts_with(env.provider.issuer())).map(|_| h.location_query("state").unwrap())
        })
        .unwrap();
    let mut done = agent.follow(&env.url("app.test", "/b"), 10).await;
    let login = done.last().unwrap().clone();
    // Submit the login without following into the proxy: stop at the redirect to the callback.
    done = agent.sign_in_at_provider(&login, ALICE.login, ALICE.password).await;
    let callback = done.iter().find(|h| h.url.starts_with(&format!("{}/.portcullis/callback?", env.auth()))).unwrap();
    let code = callback.query("code").unwrap();
    // (the real one already used this code; present it again with the first sign-in's state)
    let q = signin_support::form_encode(&[("code", &code), ("state", &first_state)]);
    let swapped = agent.get(&format!("{}/.portcullis/callback?{q}", env.auth())).await;
    assert_eq!(swapped.status, 400, "a code with another sign-in's state: {}", swapped.body);

    // A hand-off is for its host only, once, for this browser.
    let handoff_hop = done.iter().find(|h| h.url.contains("/.portcullis/callback?handoff=")).unwrap();
    let handoff = handoff_hop.query("handoff").unwrap();
    let q = signin_support::form_encode(&[("handoff", &handoff)]);
    let elsewhere = agent.get(&env.url("other.test", &format!("/.portcullis/callback?{q}"))).await;
    assert_eq!(elsewhere.status, 400, "a hand-off to another host: {}", elsewhere.body);
    let stolen = stranger.get(&env.url("app.test", &format!("/.portcullis/callback?{q}"))).await;
    assert_eq!(stolen.status, 400, "a hand-off in another browser: {}", stolen.body);
}

#[tokio::test]
async fn the_programmatic_login_hands_a_token_to_a_loopback_port() {
    let env = setup(|_| {}).await;
    let local = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let local_port = local.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = local.accept().await {
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|_req: http::Request<hyper::body::Incoming>| async {
                    Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Full::new(
                        bytes::Bytes::from("ok"),
                    )))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    let mut agent = Agent::new();
    let q = signin_support::form_encode(&[("redirect_uri", &format!("http://127.0.0.1:{local_port}/done"))]);
    let hops =
        sign_in(&mut agent, &env, &env.url("app.test", &format!("/.portcullis/api/v1/login?{q}")), alice()).await;
    let last = hops.last().unwrap();
    assert!(
        last.url.starts_with(&format!("http://127.0.0.1:{local_port}/done?portcullis_jwt=")),
        "{}",
        describe(&hops)
    );
    let token = last.query("portcullis_jwt").unwrap();
    // The token is a bearer credential on its host, for a client with no cookies.
    let mut cli = Agent::new();
    let auth = format!("Bearer {token}");
    let hop = cli
        .request("GET", &env.url("app.test", "/"), &[("authorization", &auth), ("accept", "application/json")], None)
        .await;
    assert_eq!(hop.status, 200, "{}", hop.body);
    assert_eq!(upstream_headers(&hop)["x-email"], "alice@example.com");
    assert!(!upstream_headers(&hop).contains_key("authorization"), "the proxy's token stays with the proxy");
    // ...and on no other host.
    let hop = cli
        .request("GET", &env.url("other.test", "/"), &[("authorization", &auth), ("accept", "application/json")], None)
        .await;
    assert_eq!(hop.status, 401);
    // Signing out the session it came from (the sign-in host's) revokes it.
    let out = agent.get(&format!("{}/.portcullis/sign_out", env.auth())).await;
    assert_eq!(out.status, 302);
    let hop = cli
        .request("GET", &env.url("app.test", "/"), &[("authorization", &auth), ("accept", "application/json")], None)
        .await;
    assert_eq!(hop.status, 401, "a signed-out session's token is refused");
}

#[tokio::test]
async fn the_refresh_token_renews_the_session_across_an_id_token_expiry() {
    let env = setup(|o| o.id_token_ttl = Some(14)).await;
    let mut agent = Agent::new();
    let hops = sign_in(&mut agent, &env, &env.url("app.test", "/"), alice()).await;
    assert_eq!(hops.last().unwrap().status, 200, "{}", describe(&hops));
    let before = agent.cookie("_portcullis", "app.test").unwrap().to_owned();
    // The provider logs a request once it has answered it, and the log is read as it is
    // written: the sign-in's code exchange may not be in it yet, and would count as the refresh.
    for _ in 0..50 {
        if env.provider.requests("POST", "/token ") > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let tokens_before = env.provider.requests("POST", "/token ");
    assert_eq!(tokens_before, 1, "the sign-in's code exchange");
    // Within 10 s of the ID token's expiry the session is renewed on the next request.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let hop = agent.get(&env.url("app.test", "/")).await;
    assert_eq!(hop.status, 200, "{}", hop.body);
    assert!(hop.set_cookie("_portcullis").is_some(), "a renewed session comes back");
    // (the provider's log is read as it is written)
    for _ in 0..50 {
        if env.provider.requests("POST", "/token ") > tokens_before {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(env.provider.requests("POST", "/token "), tokens_before + 1, "one refresh at the token endpoint");
    let after = agent.cookie("_portcullis", "app.test").unwrap().to_owned();
    assert_ne!(before, after);
    // Past the old ID token's expiry the renewed session still works, without another refresh.
    tokio::time::sleep(Duration::from_secs(9)).await;
    let hop = agent.get(&env.url("app.test", "/")).await;
    assert_eq!(hop.status, 200, "{}", hop.body);
    assert_eq!(upstream_headers(&hop)["x-email"], "alice@example.com");
    // The old cookie, past its ID token's expiry, renews again (its refresh token still works).
    let _ = env;
}

#[tokio::test]
async fn provider_down_is_a_clear_502_and_nothing_breaks() {
    let mut env = setup(|_| {}).await;
    env.provider.kill().await;
    let mut agent = Agent::new();
    let hops = agent.follow(&env.url("app.test", "/"), 10).await;
    let last = hops.last().unwrap();
    assert_eq!(last.status, 502, "{}", describe(&hops));
    assert!(last.body.contains("identity provider cannot be reached"), "{}", last.body);
    // The proxy still serves: a public route, and the same page again.
    assert_eq!(agent.get(&env.url("open.test", "/")).await.status, 200);
    assert_eq!(agent.follow(&env.url("app.test", "/"), 10).await.last().unwrap().status, 502);
}

#[tokio::test]
async fn signing_out_closes_the_websockets_of_the_session_within_two_seconds() {
    use futures_util::StreamExt as _;
    use tokio_tungstenite::tungstenite::protocol::Role;
    use tokio_tungstenite::tungstenite::Message;
    let env = setup(|_| {}).await;
    let mut agent = Agent::new();
    let hops = sign_in(&mut agent, &env, &env.url("ws.test", "/"), alice()).await;
    assert_eq!(hops.last().unwrap().status, 200, "{}", describe(&hops));
    let cookie = format!("_portcullis={}", agent.cookie("_portcullis", "ws.test").unwrap());
    let mut open = Vec::new();
    for _ in 0..2 {
        let mut c = h1_tls(env.r.main, "ws.test", &[default_cert(&env.r)]).await;
        let mut req = ws_upgrade(&format!("ws.test:{}", env.port));
        req.headers_mut().insert("cookie", cookie.parse().unwrap());
        let resp = c.send_request(req).await.unwrap();
        assert_eq!(resp.status(), 101);
        let upgraded = hyper::upgrade::on(resp).await.unwrap();
        open.push(
            tokio_tungstenite::WebSocketStream::from_raw_socket(
                hyper_util::rt::TokioIo::new(upgraded),
                Role::Client,
                None,
            )
            .await,
        );
    }
    let out = agent.get(&env.url("ws.test", "/.portcullis/sign_out")).await;
    assert_eq!(out.status, 302);
    let started = std::time::Instant::now();
    for ws in &mut open {
        let closed = tokio::time::timeout(Duration::from_secs(2), async {
            loop {
                match ws.next().await {
                    None | Some(Err(_) | Ok(Message::Close(_))) => return,
                    Some(Ok(_)) => {}
                }
            }
        })
        .await;
        assert!(closed.is_ok(), "the session's WebSocket closed within 2 s of its sign-out");
    }
    println!("closed {:?} after the sign-out", started.elapsed());
    let m = metrics(&env.r).await;
    assert!(m.contains(r#"portcullis_connections_revoked_total{route="ws.test",reason="signed_out"} 2"#), "{m}");
}

#[tokio::test]
async fn a_real_browser_signs_in_sees_its_identity_reach_the_app_and_signs_out() {
    let env = setup(|_| {}).await;
    let b = signin_support::Browser::start("signin-a_real_browser_signs_in").await;
    b.goto(&env.url("app.test", "/page?from=browser")).await;
    b.screenshot("sent-to-provider").await;
    b.sign_in_at_provider(env.provider.issuer(), ALICE.login, ALICE.password).await;
    let landed = b.wait_url_contains("app.test", Duration::from_secs(15)).await;
    assert_eq!(landed, env.url("app.test", "/page?from=browser"), "back where it started");
    b.screenshot("on-the-app").await;
    // Chromium shows the upstream's JSON: the identity reached it.
    b.wait_source_contains("x-portcullis-jwt-assertion", Duration::from_secs(10)).await;
    let source = b.source().await;
    assert!(source.contains("alice@example.com"), "{source}");
    // The session cookie is HttpOnly: no script on the page can read it.
    let seen_by_script = b.execute("return document.cookie", vec![]).await;
    assert!(!seen_by_script.as_str().unwrap_or_default().contains("_portcullis"), "{seen_by_script}");
    // Sign out: the provider asks, the browser says yes, and ends on the signed-out page.
    b.goto(&env.url("app.test", "/.portcullis/sign_out")).await;
    b.confirm_provider_logout(env.provider.issuer()).await;
    b.wait_source_contains("You are signed out", Duration::from_secs(10)).await;
    b.screenshot("signed-out").await;
    // The app again: sent to sign in, and the provider asks for a password again.
    b.goto(&env.url("app.test", "/page")).await;
    b.wait_url_contains(&format!("{}/interaction/", env.provider.issuer()), Duration::from_secs(15)).await;
    b.find("form#login").await;
    b.screenshot("sign-in-again").await;
    b.close().await;
}
