//! The sign-in test harness against the real OpenID Provider alone (no proxy): node's
//! `oidc-provider` on loopback, the scripted agent through login and consent, the
//! authorization-code flow with PKCE and a refresh token, RP-initiated logout; and the same
//! sign-in in a real headless Chromium.

// Test code measures wall time and may lock as it likes: the clippy.toml rules are for src/.
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]

#[path = "signin_support/mod.rs"]
mod signin_support;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use signin_support::{form_encode, forms, query_param, resolve, Agent, Browser, Hop, OidcProvider, ProviderOptions};
use signin_support::{ALICE, BOB, CLIENT_ID, CLIENT_SECRET};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// A plain-HTTP listener on loopback that answers `200 ok` to anything and records each
/// request's path and query: the relying party's redirect URIs.
struct Listener {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<String>>>,
}

impl Listener {
    async fn start() -> Self {
        use hyper::service::service_fn;
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let seen2 = seen.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = l.accept().await {
                let seen = seen2.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let pq = req.uri().path_and_query().map_or("/", |p| p.as_str()).to_owned();
                        seen.lock().unwrap().push(pq.clone());
                        async move {
                            Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Full::new(
                                bytes::Bytes::from(format!("<html><body><p id=\"landed\">ok {pq}</p></body></html>")),
                            )))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(tcp), svc)
                        .await;
                });
            }
        });
        Self { addr, seen }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn seen(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }
}

/// A PKCE pair: the verifier and its S256 challenge.
fn pkce() -> (String, String) {
    let verifier = B64.encode(rand::random::<[u8; 32]>());
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, verifier.as_bytes());
    (verifier.clone(), B64.encode(digest.as_ref()))
}

fn authorization_url(p: &OidcProvider, redirect_uri: &str, state: &str, nonce: &str, challenge: &str) -> String {
    format!(
        "{}?{}",
        p.authorization_endpoint(),
        form_encode(&[
            ("response_type", "code"),
            ("client_id", CLIENT_ID),
            ("redirect_uri", redirect_uri),
            ("scope", "openid profile email offline_access"),
            ("state", state),
            ("nonce", nonce),
            ("code_challenge", challenge),
            ("code_challenge_method", "S256"),
            ("prompt", "consent"),
        ])
    )
}

fn basic_auth() -> String {
    format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{CLIENT_ID}:{CLIENT_SECRET}")))
}

async fn token_request(agent: &mut Agent, p: &OidcProvider, fields: &[(&str, &str)]) -> Hop {
    let auth = basic_auth();
    agent
        .request(
            "POST",
            &p.token_endpoint(),
            &[
                ("content-type", "application/x-www-form-urlencoded"),
                ("authorization", &auth),
                ("accept", "application/json"),
            ],
            Some(form_encode(fields).into_bytes()),
        )
        .await
}

/// Verifies `token` against the provider's JWKS (RS256, audience `portcullis`, issuer); the claims.
async fn verify_id_token(agent: &mut Agent, p: &OidcProvider, token: &str) -> serde_json::Value {
    let jwks: jsonwebtoken::jwk::JwkSet = serde_json::from_value(agent.get(&p.jwks_uri()).await.json()).unwrap();
    let header = jsonwebtoken::decode_header(token).unwrap();
    assert_eq!(header.alg, jsonwebtoken::Algorithm::RS256);
    let jwk = jwks.find(header.kid.as_deref().unwrap()).expect("the ID token's kid is in the JWKS");
    let key = jsonwebtoken::DecodingKey::from_jwk(jwk).unwrap();
    let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
    v.set_audience(&[CLIENT_ID]);
    v.set_issuer(&[p.issuer()]);
    jsonwebtoken::decode::<serde_json::Value>(token, &key, &v).unwrap().claims
}

fn describe(hops: &[Hop]) -> String {
    signin_support::agent::describe(hops)
}

#[tokio::test]
async fn agent_signs_in_with_pkce_refreshes_and_logs_out() {
    let rp = Listener::start().await;
    let cb = rp.url("/cb");
    let signed_out = rp.url("/signed_out");
    let p = OidcProvider::start(ProviderOptions {
        redirect_uris: vec![cb.clone()],
        post_logout_redirect_uris: vec![signed_out.clone()],
        id_token_ttl: Some(5),
        access_token_ttl: Some(7),
        ..ProviderOptions::default()
    })
    .await;
    assert!(p.issuer().starts_with("http://127.0.0.1:"), "{}", p.issuer());
    let mut agent = Agent::new();
    let discovery = agent.get(&p.discovery_url()).await.json();
    assert_eq!(discovery["issuer"], p.issuer());
    assert_eq!(discovery["authorization_endpoint"], p.authorization_endpoint());
    assert_eq!(discovery["token_endpoint"], p.token_endpoint());
    assert_eq!(discovery["end_session_endpoint"], p.end_session_endpoint());
    assert_eq!(discovery["jwks_uri"], p.jwks_uri());

    // Authorization request -> the provider's login page.
    let (verifier, challenge) = pkce();
    let hops = agent.follow(&authorization_url(&p, &cb, "st-1", "n-1", &challenge), 10).await;
    let login = hops.last().unwrap().clone();
    assert_eq!(login.status, 200, "{}", describe(&hops));
    assert!(login.url.starts_with(&format!("{}/interaction/", p.issuer())), "{}", describe(&hops));

    // Login + consent -> back at the redirect URI with code and state.
    let hops = agent.sign_in_at_provider(&login, ALICE.login, ALICE.password).await;
    let last = hops.last().unwrap();
    assert_eq!(last.status, 200, "{}", describe(&hops));
    assert!(last.url.starts_with(&cb), "{}", describe(&hops));
    assert!(hops.iter().any(|h| h.url.contains("/confirm")), "a consent page was shown: {}", describe(&hops));
    let seen = rp.seen();
    assert_eq!(seen.len(), 1, "{seen:?}");
    let code = query_param(&seen[0], "code").expect("code");
    assert_eq!(query_param(&seen[0], "state").as_deref(), Some("st-1"));
    // RFC 9207: the provider names itself in the authorization response.
    assert_eq!(query_param(&seen[0], "iss").as_deref(), Some(p.issuer()));
    assert!(agent.cookie("_session", "127.0.0.1").is_some(), "the provider's session cookie: {:?}", agent.jar);

    // The code exchange needs the PKCE verifier.
    let bad = token_request(
        &mut agent,
        &p,
        &[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", &cb),
            ("code_verifier", "x".repeat(43).as_str()),
        ],
    )
    .await;
    assert_eq!(bad.status, 400, "{}", bad.body);
    // Start over for the real exchange: signed in at the provider already, only consent is asked.
    let (verifier2, challenge2) = pkce();
    let _ = verifier;
    let hops = agent.follow(&authorization_url(&p, &cb, "st-2", "n-2", &challenge2), 10).await;
    let consent = hops.last().unwrap().clone();
    assert!(
        consent.forms().iter().any(|f| f.id.as_deref() == Some("consent")),
        "signed in at the provider already: only consent is asked (prompt=consent): {}",
        describe(&hops)
    );
    let f = consent.forms().into_iter().find(|f| f.id.as_deref() == Some("consent")).unwrap();
    let submitted = agent.submit(&consent, &f, Some(("consent", "yes"))).await;
    let hops = agent.follow_from(&submitted, 10).await;
    assert!(hops.last().unwrap().url.starts_with(&cb), "{}", describe(&hops));
    let code = query_param(&rp.seen()[1], "code").unwrap();
    assert_eq!(query_param(&rp.seen()[1], "state").as_deref(), Some("st-2"));

    let tokens = token_request(
        &mut agent,
        &p,
        &[("grant_type", "authorization_code"), ("code", &code), ("redirect_uri", &cb), ("code_verifier", &verifier2)],
    )
    .await;
    assert_eq!(tokens.status, 200, "{}", tokens.body);
    let tokens = tokens.json();
    assert_eq!(tokens["token_type"], "Bearer");
    assert_eq!(tokens["expires_in"], 7, "access_token_ttl: {tokens}");
    assert!(tokens["access_token"].is_string(), "{tokens}");
    let refresh = tokens["refresh_token"].as_str().unwrap_or_else(|| panic!("no refresh_token: {tokens}")).to_owned();
    let claims = verify_id_token(&mut agent, &p, tokens["id_token"].as_str().unwrap()).await;
    assert_eq!(claims["sub"], "alice");
    assert_eq!(claims["email"], "alice@example.com");
    assert_eq!(claims["email_verified"], true);
    assert_eq!(claims["name"], "Alice Example");
    assert_eq!(claims["groups"], serde_json::json!(["admins", "staff"]));
    assert_eq!(claims["nonce"], "n-2");
    assert_eq!(claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(), 5, "id_token_ttl: {claims}");

    // userinfo with the access token.
    let at = format!("Bearer {}", tokens["access_token"].as_str().unwrap());
    let me = agent
        .request("GET", &p.userinfo_endpoint(), &[("authorization", &at), ("accept", "application/json")], None)
        .await;
    assert_eq!(me.status, 200, "{}", me.body);
    assert_eq!(me.json()["groups"], serde_json::json!(["admins", "staff"]));

    // Refresh: a new ID token with the same claims.
    let refreshed =
        token_request(&mut agent, &p, &[("grant_type", "refresh_token"), ("refresh_token", &refresh)]).await;
    assert_eq!(refreshed.status, 200, "{}", refreshed.body);
    let refreshed = refreshed.json();
    let claims = verify_id_token(&mut agent, &p, refreshed["id_token"].as_str().unwrap()).await;
    assert_eq!(claims["email"], "alice@example.com");
    assert_eq!(claims["groups"], serde_json::json!(["admins", "staff"]));
    assert_eq!(p.requests("POST", "/token "), 3, "{:#?}", p.log());

    // RP-initiated logout as the proxy does it: client_id, post_logout_redirect_uri, state.
    let end = format!(
        "{}?{}",
        p.end_session_endpoint(),
        form_encode(&[("client_id", CLIENT_ID), ("post_logout_redirect_uri", &signed_out), ("state", "bye-1")])
    );
    let page = agent.get(&end).await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(page.body.contains("logout-yes"), "the confirmation page: {}", page.body);
    let hops = agent.confirm_provider_logout(&page).await;
    let last = hops.last().unwrap();
    assert_eq!(hops[0].status, 303, "{}", describe(&hops));
    assert!(last.url.starts_with(&signed_out), "{}", describe(&hops));
    assert_eq!(last.query("state").as_deref(), Some("bye-1"), "{}", describe(&hops));
    assert_eq!(rp.seen().last().map(|s| query_param(s, "state")), Some(Some("bye-1".into())));
    assert!(agent.cookie("_session", "127.0.0.1").is_none(), "the provider's session cookie is gone: {:?}", agent.jar);
    // An offline_access grant outlives the provider's session (oidc-provider marks it
    // `persistsLogout`): the refresh token still works after the logout...
    let alive = token_request(&mut agent, &p, &[("grant_type", "refresh_token"), ("refresh_token", &refresh)]).await;
    assert_eq!(alive.status, 200, "{}", alive.body);
    // ...until the relying party revokes it (RFC 7009, client_secret_basic).
    let auth = basic_auth();
    let revoked = agent
        .request(
            "POST",
            &p.revocation_endpoint(),
            &[("content-type", "application/x-www-form-urlencoded"), ("authorization", &auth)],
            Some(form_encode(&[("token", refresh.as_str()), ("token_type_hint", "refresh_token")]).into_bytes()),
        )
        .await;
    assert_eq!(revoked.status, 200, "{}", revoked.body);
    let dead = token_request(&mut agent, &p, &[("grant_type", "refresh_token"), ("refresh_token", &refresh)]).await;
    assert_eq!((dead.status, dead.json()["error"].as_str()), (400, Some("invalid_grant")), "{}", dead.body);
    // The provider's session is over: the login form again.
    let (_, challenge) = pkce();
    let hops = agent.follow(&authorization_url(&p, &cb, "st-3", "n-3", &challenge), 10).await;
    assert!(hops.last().unwrap().body.contains("id=\"password\""), "{}", describe(&hops));

    // Without a session at the provider (the browser signed out there already), end_session
    // answers with a page that submits itself; the same helper takes it.
    let mut fresh = Agent::new();
    let page = fresh.get(&end.replace("bye-1", "bye-2")).await;
    assert_eq!(page.status, 200);
    assert!(page.body.contains("document.forms[0].submit()"), "{}", page.body);
    let hops = fresh.confirm_provider_logout(&page).await;
    assert_eq!(hops.last().unwrap().query("state").as_deref(), Some("bye-2"), "{}", describe(&hops));

    // An unregistered post_logout_redirect_uri is refused.
    let page = fresh.get(&end.replace(&crate_encode(&signed_out), &crate_encode("http://127.0.0.1:1/x"))).await;
    assert_eq!(page.status, 400, "{}", page.body);
}

fn crate_encode(s: &str) -> String {
    signin_support::html::encode_component(s)
}

#[tokio::test]
async fn wrong_password_and_bob() {
    let rp = Listener::start().await;
    let cb = rp.url("/cb");
    let p =
        OidcProvider::start(ProviderOptions { redirect_uris: vec![cb.clone()], ..ProviderOptions::default() }).await;
    let mut agent = Agent::new();
    let (verifier, challenge) = pkce();
    let hops = agent.follow(&authorization_url(&p, &cb, "s", "n", &challenge), 10).await;
    let hops = agent.sign_in_at_provider(hops.last().unwrap(), "alice", "wrong").await;
    let last = hops.last().unwrap();
    assert_eq!(last.status, 401, "{}", describe(&hops));
    assert!(last.body.contains("Invalid login or password"), "{}", last.body);
    // The page is the login form again: sign in as bob from there.
    let hops = agent.sign_in_at_provider(last, BOB.login, BOB.password).await;
    assert!(hops.last().unwrap().url.starts_with(&cb), "{}", describe(&hops));
    let code = query_param(rp.seen().last().unwrap(), "code").unwrap();
    let tokens = token_request(
        &mut agent,
        &p,
        &[("grant_type", "authorization_code"), ("code", &code), ("redirect_uri", &cb), ("code_verifier", &verifier)],
    )
    .await
    .json();
    let claims = verify_id_token(&mut agent, &p, tokens["id_token"].as_str().unwrap()).await;
    assert_eq!(claims["sub"], "bob");
    assert_eq!(claims["email"], "bob@example.com");
    assert_eq!(claims["name"], "Bob Example");
    assert_eq!(claims["groups"], serde_json::json!(["staff"]));
    assert!(claims.get("email_verified").is_none(), "{claims}");

    // Without PKCE the provider refuses the request (pkce_required, the default).
    let no_pkce = format!(
        "{}?{}",
        p.authorization_endpoint(),
        form_encode(&[("response_type", "code"), ("client_id", CLIENT_ID), ("redirect_uri", &cb), ("scope", "openid")])
    );
    let hops = agent.follow(&no_pkce, 5).await;
    let last = hops.last().unwrap();
    assert!(
        last.url.starts_with(&cb) && last.query("error").as_deref() == Some("invalid_request"),
        "{}",
        describe(&hops)
    );

    // An outage: the provider killed, its port refuses connections.
    let issuer = p.issuer().to_owned();
    let mut p = p;
    p.kill().await;
    assert!(agent.try_request("GET", &format!("{issuer}/jwks"), &[], None).await.is_err());
}

#[tokio::test]
async fn browser_signs_in_and_logs_out_at_the_provider() {
    let install = tokio::task::spawn_blocking(signin_support::browser::ensure_chromium).await.unwrap().unwrap();
    println!("chromium install took {:.1} s (0 when it was there)", install.as_secs_f64());
    let rp = Listener::start().await;
    let cb = rp.url("/cb");
    let signed_out = rp.url("/signed_out");
    let p = OidcProvider::start(ProviderOptions {
        redirect_uris: vec![cb.clone()],
        post_logout_redirect_uris: vec![signed_out.clone()],
        ..ProviderOptions::default()
    })
    .await;
    let started = std::time::Instant::now();
    let b = Browser::start("oidc_harness-browser_signs_in_and_logs_out_at_the_provider").await;
    println!("browser session up in {:.1} s", started.elapsed().as_secs_f64());
    let (_verifier, challenge) = pkce();
    b.goto(&authorization_url(&p, &cb, "bst", "bn", &challenge)).await;
    b.sign_in_at_provider(p.issuer(), ALICE.login, ALICE.password).await;
    let url = b.wait_url_contains(&cb, Duration::from_secs(10)).await;
    assert!(query_param(&url, "code").is_some(), "{url}");
    assert_eq!(query_param(&url, "state").as_deref(), Some("bst"));
    assert!(b.text("#landed").await.starts_with("ok /cb?"));
    let seen = rp.seen();
    assert!(seen.iter().any(|s| s.starts_with("/cb?") && s.contains("state=bst")), "{seen:?}");

    // Logout at the provider, as the proxy's sign-out sends the browser there.
    b.goto(&format!(
        "{}?{}",
        p.end_session_endpoint(),
        form_encode(&[("client_id", CLIENT_ID), ("post_logout_redirect_uri", &signed_out), ("state", "bye")])
    ))
    .await;
    b.confirm_provider_logout(p.issuer()).await;
    let url = b.wait_url_contains(&signed_out, Duration::from_secs(10)).await;
    assert_eq!(query_param(&url, "state").as_deref(), Some("bye"));
    assert_eq!(b.screenshots().len(), 5, "{:?}", b.screenshots().iter().map(|s| &s.0).collect::<Vec<_>>());
    b.close().await;
}

#[test]
fn cookie_jar_and_html_helpers() {
    let mut a = Agent::new();
    a.store_set_cookie(
        "https://app.test:8443/x/y",
        "_portcullis_csrf=c1; Path=/.portcullis/; Secure; HttpOnly; SameSite=Lax; Max-Age=600",
    );
    a.store_set_cookie("https://app.test:8443/x/y", "host=h; Secure");
    a.store_set_cookie("https://app.test:8443/x/y", "wide=w; Domain=.test; Path=/");
    a.store_set_cookie("https://app.test:8443/x/y", "bad=b; Domain=other.example");
    let c = a.cookie_entry("_portcullis_csrf", "app.test").unwrap();
    assert!(c.host_only && c.secure && c.http_only && c.path == "/.portcullis/" && c.expires.is_some());
    assert_eq!(c.same_site.as_deref(), Some("Lax"));
    assert_eq!(a.cookie_entry("host", "app.test").unwrap().path, "/x", "default path");
    assert_eq!(a.cookie_header("https://app.test:8443/.portcullis/callback"), "_portcullis_csrf=c1; wide=w");
    assert_eq!(a.cookie_header("https://app.test/x/z"), "host=h; wide=w");
    assert_eq!(a.cookie_header("http://app.test/x/z"), "wide=w", "Secure cookies only over https");
    assert_eq!(a.cookie_header("https://authenticate.test/x"), "wide=w", "host-only cookies stay on their host");
    assert!(a.cookie("bad", "app.test").is_none());
    // Deletion by Max-Age=0 and by an Expires in the past; both need the same name, domain, path.
    a.store_set_cookie("https://app.test/", "_portcullis_csrf=; Path=/.portcullis/; Max-Age=0");
    assert!(a.cookie("_portcullis_csrf", "app.test").is_none());
    a.store_set_cookie("https://app.test/x/q", "host=; Expires=Thu, 01 Jan 1970 00:00:00 GMT");
    assert!(a.cookie("host", "app.test").is_none());
    a.store_set_cookie("https://app.test/", "later=l; Expires=Fri, 01-Jan-2100 00:00:00 GMT");
    assert!(a.cookie_entry("later", "app.test").unwrap().expires.is_some());
    // Tampering by hand.
    a.set_cookie("wide", "app.test", "tampered");
    assert_eq!(a.cookie("wide", "authenticate.test"), Some("tampered"));
    a.set_cookie("_portcullis", "app.test", "forged");
    assert_eq!(a.cookie_header("https://app.test/"), "wide=tampered; later=l; _portcullis=forged");
    a.remove_cookie("wide", "app.test");
    assert!(a.cookie("wide", "x.test").is_none());

    let page = r#"<form id="op.logoutForm" method="post" action="http://127.0.0.1:1/session/end/confirm"><input type="hidden" name="xsrf" value="a&amp;b&#34;"/></form>
<button type="submit" form="op.logoutForm" name="logout" value="yes">Yes</button>
<form action=/x><input name=login><input type=checkbox name=c><script>if (a<b) {}</script></form>"#;
    let f = forms(page);
    assert_eq!(f.len(), 2);
    assert_eq!(f[0].method, "POST");
    assert_eq!(f[0].field("xsrf"), Some("a&b\""));
    assert_eq!(f[0].buttons, vec![("logout".to_owned(), "yes".to_owned())]);
    assert_eq!((f[1].action.as_str(), f[1].method.as_str()), ("/x", "GET"));
    assert_eq!(f[1].fields, vec![("login".to_owned(), String::new())]);
    assert_eq!(resolve("https://a.test:1/x/y?q", "/z"), "https://a.test:1/z");
    assert_eq!(resolve("https://a.test:1/x/y?q", "z?k=v"), "https://a.test:1/x/z?k=v");
    assert_eq!(resolve("https://a.test:1/x/y", "../z"), "https://a.test:1/z");
    assert_eq!(resolve("https://a.test:1/x", "http://b/"), "http://b/");
    assert_eq!(query_param("http://h/p?a=1&b=x%20y+z", "b").as_deref(), Some("x y z"));
    assert_eq!(form_encode(&[("a b", "c&d=é")]), "a%20b=c%26d%3D%C3%A9");
}
