//! Browser sign-in: OpenID Connect's authorization-code flow with PKCE, `state` and `nonce`
//! (the `openidconnect` crate speaks the protocol over our HTTP client, so `idp_ca`
//! applies), through one sign-in host, as Pomerium does:
//!
//! 1. a browser without a session on a route host is sent to
//!    `AUTH/.portcullis/sign_in?state=…`, and gets a CSRF cookie on the route host;
//! 2. the sign-in host hands over its own session at once if it has one (single sign-on
//!    across route hosts), else sends the browser to the provider;
//! 3. the provider comes back to `AUTH/.portcullis/callback` (the one redirect URI to
//!    register); the code is exchanged, the ID token verified, the session made;
//! 4. the browser goes to `https://<route host>/.portcullis/callback?handoff=…`, a sealed
//!    session that opens only on that host, within a minute, for the browser holding the
//!    CSRF cookie of step 1; the route host sets its session cookie and sends the browser to
//!    the URL it first asked for.
//!
//! Why one sign-in host rather than a callback on each route host: the provider needs one
//! redirect URI, not one per host (an ingress serves hundreds), and a sign-in covers every
//! route host. The price is one more redirect, and a session in a URL for a minute, sealed
//! and bound to the browser that asked for it.
//!
//! Every redirect target is checked: a route host of this config over https, or for the
//! programmatic login a loopback `http://` URL. Nothing sends a browser anywhere else.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Response, StatusCode};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use openidconnect::core::{CoreAuthPrompt, CoreAuthenticationFlow, CoreClient};
use openidconnect::{
    AuthorizationCode, ClientId, ClientSecret, CsrfToken, EndpointMaybeSet, EndpointNotSet, EndpointSet, IssuerUrl,
    Nonce, OAuth2TokenResponse as _, PkceCodeChallenge, PkceCodeVerifier, ProviderMetadataWithLogout, RedirectUrl,
    RefreshToken, Scope, TokenResponse as _,
};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::assertion::Signer;
use super::body::{self, ProxyBody};
use super::error::{Error, Kind, Result};
use super::idp::{unix_now, Admitted};
use super::revocations::Revocations;
use super::session::{random_id, same_secret, Purpose, Sealer, Session};
use crate::config::{IdentityProvider, ServiceUrl};

/// How long a sign-in may take from the first redirect to the provider's answer.
const FLOW_TTL: u64 = 600;
/// How long a hand-off to a route host is good for.
const HANDOFF_TTL: u64 = 60;
/// An ID token is renewed this long before it expires.
const RENEW_BEFORE: u64 = 10;
/// How long a provider request may take.
const PROVIDER_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest provider response read (discovery, tokens).
const MAX_PROVIDER_BODY: usize = 1024 * 1024;
/// After a failed discovery, how long requests use what is known (or fail at once) instead
/// of trying again.
const FAILURE_BACKOFF_MS: u64 = 5_000;
/// The largest `Set-Cookie` value made: browsers keep 4096 bytes per cookie.
const MAX_COOKIE: usize = 4000;
/// How long discovery (and the keys it carries) is kept before it is fetched again.
const DISCOVERY_TTL_MS: u64 = 300_000;

/// The built-in paths.
pub mod paths {
    /// The sign-in host's start of a sign-in; the route host's session hand-off.
    pub const SIGN_IN: &str = "/.portcullis/sign_in";
    /// Where the provider sends the browser back (sign-in host), and where a route host
    /// takes a hand-off.
    pub const CALLBACK: &str = "/.portcullis/callback";
    /// Signs out, on any host.
    pub const SIGN_OUT: &str = "/.portcullis/sign_out";
    /// Where the provider sends the browser after signing out (sign-in host).
    pub const SIGNED_OUT: &str = "/.portcullis/signed_out";
    /// The programmatic login.
    pub const LOGIN_API: &str = "/.portcullis/api/v1/login";
    /// The keys that verify `X-Portcullis-Jwt-Assertion`.
    pub const JWKS: &str = "/.well-known/portcullis/jwks.json";
}

type OidcClient =
    CoreClient<EndpointSet, EndpointNotSet, EndpointNotSet, EndpointNotSet, EndpointMaybeSet, EndpointMaybeSet>;

/// A configured sign-in, running: the provider's discovery (fetched on first use and every
/// five minutes), the HTTP client, and the sealer of `cookie_secret`.
pub struct SignIn {
    issuer: String,
    client_id: String,
    client_secret: String,
    scopes: Vec<String>,
    /// `cookie_name`.
    pub cookie_name: String,
    csrf_cookie: String,
    cookie_expire: u64,
    leeway: u64,
    sealer: Sealer,
    http: ProviderHttp,
    discovered: ArcSwapOption<Discovered>,
    discovering: tokio::sync::Mutex<()>,
    /// When discovery last failed (ms, [`super::body::now_ms`]; 0: never): requests in the
    /// next seconds do not try again one after another.
    failed_at_ms: std::sync::atomic::AtomicU64,
    /// Tells this sign-in's cached sessions from another's (a reload with a new
    /// `cookie_secret` must not keep accepting what the old one opened).
    instance: u64,
}

struct Discovered {
    client: OidcClient,
    end_session: Option<String>,
    at_ms: u64,
}

/// Where a sign-in started and where it ends: sealed into the `state` of step 1.
#[derive(Serialize, Deserialize)]
struct Start {
    /// The CSRF cookie set on the route host (`None`: a programmatic login).
    csrf: Option<String>,
    /// The URL first asked for, or the programmatic login's loopback URL.
    to: String,
    /// The route host a programmatic token is for.
    host: String,
    exp: u64,
}

/// The `state` sent to the provider.
#[derive(Serialize, Deserialize)]
struct State {
    start: Start,
    /// The sign-in host's CSRF cookie.
    csrf: String,
    nonce: String,
    verifier: String,
    exp: u64,
}

/// A session on its way to a route host.
#[derive(Serialize, Deserialize)]
struct Handoff {
    session: Session,
    csrf: String,
    host: String,
    to: String,
    exp: u64,
}

/// Where to go once the provider has signed the user out.
#[derive(Serialize, Deserialize)]
struct SignedOut {
    to: Option<String>,
    exp: u64,
}

/// What a request's session cookie proves, remembered per connection ([`SessionCache`]).
#[derive(Clone)]
pub struct FromCookie {
    /// The identity and how long it holds.
    pub admitted: Arc<Admitted>,
    /// A renewed session for the browser to store (after a refresh).
    pub set_cookie: Option<HeaderValue>,
}

/// The last session cookie a connection opened: a browser sends the same one with every
/// request, and opening it costs a decryption and a JSON parse.
#[derive(Default)]
pub struct SessionCache(ArcSwapOption<CachedSession>);

impl std::fmt::Debug for SessionCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionCache")
    }
}

struct CachedSession {
    instance: u64,
    cookie: Box<[u8]>,
    found: FromCookie,
    /// When the ID token needs renewing (seconds since the epoch).
    renew_at: u64,
}

impl SignIn {
    /// The running sign-in of `idp`, when it has one.
    pub fn new(idp: &IdentityProvider, tls: rustls::ClientConfig) -> Option<Self> {
        let s = idp.sign_in.as_ref()?;
        Some(Self {
            issuer: idp.issuer.clone(),
            client_id: idp.client_id.clone().unwrap_or_default(),
            client_secret: s.client_secret.0.clone(),
            scopes: s.scopes.clone(),
            cookie_name: s.cookie_name.clone(),
            // `__Host-`: the browser keeps it only if set by this very host, Secure, for `/`,
            // so a sibling subdomain cannot plant a known CSRF value.
            csrf_cookie: format!("__Host-{}_csrf", s.cookie_name),
            cookie_expire: s.cookie_expire.as_secs(),
            leeway: idp.leeway.as_secs(),
            sealer: Sealer::new(&s.cookie_secret.0),
            http: ProviderHttp::new(tls),
            discovered: ArcSwapOption::empty(),
            discovering: tokio::sync::Mutex::new(()),
            failed_at_ms: std::sync::atomic::AtomicU64::new(0),
            instance: rand::random(),
        })
    }

    // ---- step 1: a route host sends a browser to sign in ----

    /// The answer to a browser without a session on `host` (a route host) asking for
    /// `path_and_query`: to the sign-in host, with a CSRF cookie.
    pub fn to_sign_in(&self, auth: &ServiceUrl, host: &str, path_and_query: &str) -> Response<ProxyBody> {
        let host = host.to_ascii_lowercase();
        let host = host.as_str();
        let csrf = random_id();
        let start = Start {
            csrf: Some(csrf.clone()),
            to: format!("https://{host}{path_and_query}"),
            host: host.to_owned(),
            exp: unix_now() + FLOW_TTL,
        };
        let location = format!(
            "{}{}?state={}",
            auth.origin(),
            paths::SIGN_IN,
            self.sealer.seal(Purpose::State, &("start", &start))
        );
        let mut resp = redirect(&location);
        resp.headers_mut().append(header::SET_COOKIE, self.csrf_cookie_value(&csrf));
        resp
    }

    /// The programmatic login on `host`: `redirect_uri` must be a loopback `http://` URL.
    pub fn login_api(&self, auth: &ServiceUrl, host: &str, query: Option<&str>) -> Result<Response<ProxyBody>> {
        let to = query_param(query, "redirect_uri")
            .ok_or_else(|| Error::with(Kind::BadRequest, "redirect_uri is required"))?;
        if !is_loopback_url(&to) {
            return Err(Error::with(Kind::BadRequest, "redirect_uri must be http:// to a loopback address"));
        }
        let start = Start { csrf: None, to, host: bare_host(host).to_ascii_lowercase(), exp: unix_now() + FLOW_TTL };
        let location = format!(
            "{}{}?state={}",
            auth.origin(),
            paths::SIGN_IN,
            self.sealer.seal(Purpose::State, &("start", &start))
        );
        Ok(redirect(&location))
    }

    // ---- step 2: the sign-in host ----

    /// `AUTH/.portcullis/sign_in`: hands over the sign-in host's session, or sends the
    /// browser to the provider.
    pub async fn sign_in(
        &self,
        auth: &ServiceUrl,
        headers: &HeaderMap,
        query: Option<&str>,
        routes: &(dyn Fn(&str) -> bool + Sync),
        signer: &Signer,
        revocations: &Revocations,
    ) -> Result<Response<ProxyBody>> {
        let start = query_param(query, "state")
            .and_then(|s| self.sealer.open::<(String, Start)>(Purpose::State, &s))
            .filter(|(tag, s)| tag == "start" && s.exp > unix_now())
            .map(|(_, s)| s)
            .ok_or_else(|| {
                Error::with(Kind::SignInFailed, "this sign-in link is invalid or has expired; go back and try again")
            })?;
        check_target(&start, routes)?;
        if let Some(session) = self.open_session(headers, revocations) {
            if session.id_exp > unix_now() + RENEW_BEFORE {
                return Ok(self.handoff(session, start, signer, None));
            }
        }
        let discovered = self.discovered().await?;
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let csrf = random_id();
        let nonce = random_id();
        let state = State {
            start,
            csrf: csrf.clone(),
            nonce: nonce.clone(),
            verifier: verifier.secret().clone(),
            exp: unix_now() + FLOW_TTL,
        };
        let sealed = self.sealer.seal(Purpose::State, &("provider", &state));
        let client = discovered.client.clone().set_redirect_uri(redirect_url(auth)?);
        let mut request = client
            .authorize_url(
                CoreAuthenticationFlow::AuthorizationCode,
                move || CsrfToken::new(sealed),
                move || Nonce::new(nonce),
            )
            .set_pkce_challenge(challenge);
        for scope in self.scopes.iter().filter(|s| *s != "openid") {
            request = request.add_scope(Scope::new(scope.clone()));
        }
        // Many providers (oidc-provider, Google) grant a refresh token only with consent.
        if self.scopes.iter().any(|s| s == "offline_access") {
            request = request.add_prompt(CoreAuthPrompt::Consent);
        }
        let (url, _, _) = request.url();
        let mut resp = redirect(url.as_str());
        resp.headers_mut().append(header::SET_COOKIE, self.csrf_cookie_value(&csrf));
        Ok(resp)
    }

    // ---- step 3: the provider's answer ----

    /// `AUTH/.portcullis/callback`: exchanges the code, makes the session.
    pub async fn provider_callback(
        &self,
        auth: &ServiceUrl,
        headers: &HeaderMap,
        query: Option<&str>,
        routes: &(dyn Fn(&str) -> bool + Sync),
        signer: &Signer,
        revocations: &Revocations,
    ) -> Result<Response<ProxyBody>> {
        let state = query_param(query, "state")
            .and_then(|s| self.sealer.open::<(String, State)>(Purpose::State, &s))
            .filter(|(tag, s)| tag == "provider" && s.exp > unix_now())
            .map(|(_, s)| s)
            .ok_or_else(|| {
                Error::with(Kind::SignInFailed, "this sign-in is invalid or has expired; go back and try again")
            })?;
        let cookie = cookie(headers, &self.csrf_cookie).unwrap_or_default();
        if !same_secret(cookie, &state.csrf) {
            return Err(Error::with(Kind::SignInFailed, "this sign-in was not started in this browser"));
        }
        if let Some(code) = query_param(query, "error") {
            // The provider's error code only (a short token), never its free text.
            let code: String = code.chars().filter(|c| c.is_ascii_alphanumeric() || *c == '_').take(64).collect();
            return Err(Error::with(Kind::SignInFailed, format!("the identity provider refused the sign-in ({code})")));
        }
        check_target(&state.start, routes)?;
        let code =
            query_param(query, "code").ok_or_else(|| Error::with(Kind::SignInFailed, "the provider sent no code"))?;
        let discovered = self.discovered().await?;
        let client = discovered.client.clone().set_redirect_uri(redirect_url(auth)?);
        let exchange = client
            .exchange_code(AuthorizationCode::new(code))
            .map_err(|_| Error::with(Kind::IdpUnavailable, "the provider has no token endpoint"))?
            .set_pkce_verifier(PkceCodeVerifier::new(state.verifier.clone()));
        let tokens = exchange.request_async(&self.http).await.map_err(|e| token_error(&e))?;
        let id_token =
            tokens.id_token().ok_or_else(|| Error::with(Kind::SignInFailed, "the provider sent no ID token"))?;
        let nonce = Nonce::new(state.nonce.clone());
        let verified = id_token.claims(&client.id_token_verifier(), &nonce).map_err(|e| {
            tracing::info!(error = %e, "sign-in: ID token refused");
            Error::with(Kind::SignInFailed, "the provider's ID token did not verify")
        })?;
        let id_exp = u64::try_from(verified.expiration().timestamp()).unwrap_or(0);
        let claims = payload_claims(&id_token.to_string()).unwrap_or_default();
        let refresh = tokens.refresh_token().map(|r| r.secret().clone());
        let mut session = Session::new(claims, id_exp, refresh, unix_now() + self.cookie_expire);
        // The same user signing in again at the sign-in host keeps the session id that its
        // route hosts already hold: one sign-out then ends them all.
        if let Some(old) = self.open_session(headers, revocations) {
            if old.claims.get("sub").is_some() && old.claims.get("sub") == session.claims.get("sub") {
                session.sid = old.sid;
            }
        }
        tracing::info!(sub = session.claims.get("sub").and_then(serde_json::Value::as_str).unwrap_or(""), "signed in");
        let cookie = self.session_cookie(&session);
        Ok(self.handoff(session, state.start, signer, cookie))
    }

    /// Step 4: to the route host with the session (or, programmatic, to the loopback URL
    /// with a token). `auth_cookie`: the sign-in host's session cookie to set on the way.
    fn handoff(
        &self,
        session: Session,
        start: Start,
        signer: &Signer,
        auth_cookie: Option<HeaderValue>,
    ) -> Response<ProxyBody> {
        let mut resp = match &start.csrf {
            None => {
                let token = signer.programmatic_token(&session, &start.host);
                let sep = if start.to.contains('?') { '&' } else { '?' };
                redirect(&format!("{}{sep}portcullis_jwt={token}", start.to))
            }
            Some(csrf) => {
                let host = url_authority(&start.to).unwrap_or_default().to_owned();
                let handoff = Handoff {
                    session,
                    csrf: csrf.clone(),
                    host: host.clone(),
                    to: start.to,
                    exp: unix_now() + HANDOFF_TTL,
                };
                redirect(&format!(
                    "https://{host}{}?handoff={}",
                    paths::CALLBACK,
                    self.sealer.seal(Purpose::Handoff, &handoff)
                ))
            }
        };
        let headers = resp.headers_mut();
        if let Some(c) = auth_cookie {
            headers.append(header::SET_COOKIE, c);
        }
        headers.append(header::SET_COOKIE, Self::clear_cookie(&self.csrf_cookie, "/"));
        resp
    }

    /// `https://<route host>/.portcullis/callback?handoff=…`: the session arrives.
    pub fn route_callback(&self, host: &str, headers: &HeaderMap, query: Option<&str>) -> Result<Response<ProxyBody>> {
        let handoff = query_param(query, "handoff")
            .and_then(|h| self.sealer.open::<Handoff>(Purpose::Handoff, &h))
            .filter(|h| h.exp > unix_now() && h.host.eq_ignore_ascii_case(host))
            .ok_or_else(|| {
                Error::with(Kind::SignInFailed, "this sign-in is invalid or has expired; go back and try again")
            })?;
        let csrf = cookie(headers, &self.csrf_cookie).unwrap_or_default();
        if !same_secret(csrf, &handoff.csrf) {
            return Err(Error::with(Kind::SignInFailed, "this sign-in was not started in this browser"));
        }
        // Only a path on this host: the hand-off names its own host anyway.
        let to = url_path_and_query(&handoff.to).unwrap_or("/");
        let cookie = self.session_cookie(&handoff.session).ok_or_else(|| {
            Error::with(Kind::SignInFailed, "the identity provider's answer is too large for a session cookie")
        })?;
        let mut resp = redirect(to);
        resp.headers_mut().append(header::SET_COOKIE, cookie);
        resp.headers_mut().append(header::SET_COOKIE, Self::clear_cookie(&self.csrf_cookie, "/"));
        Ok(resp)
    }

    // ---- sign-out ----

    /// `/.portcullis/sign_out` on any host: the session is revoked everywhere, the cookie
    /// cleared, and the provider asked to end its own session.
    pub async fn sign_out(
        &self,
        auth: &ServiceUrl,
        headers: &HeaderMap,
        query: Option<&str>,
        routes: &(dyn Fn(&str) -> bool + Sync),
        revocations: &Revocations,
    ) -> Result<Response<ProxyBody>> {
        let to = match query_param(query, "redirect_uri") {
            Some(to) if is_route_url(&to, routes) => Some(to),
            Some(_) => {
                return Err(Error::with(Kind::BadRequest, "redirect_uri must be an https:// URL of a route host"))
            }
            None => None,
        };
        if let Some(session) = self.open_session(headers, revocations) {
            revocations.revoke(&session.sid, session.exp);
            tracing::info!(
                sub = session.claims.get("sub").and_then(serde_json::Value::as_str).unwrap_or(""),
                "signed out"
            );
        }
        let end_session = match self.discovered().await {
            Ok(d) => d.end_session.clone(),
            Err(_) => None,
        };
        let mut resp = match end_session {
            Some(endpoint) => {
                let state = self.sealer.seal(Purpose::SignedOut, &SignedOut { to, exp: unix_now() + FLOW_TTL });
                let back = format!("{}{}", auth.origin(), paths::SIGNED_OUT);
                let sep = if endpoint.contains('?') { '&' } else { '?' };
                redirect(&format!(
                    "{endpoint}{sep}client_id={}&post_logout_redirect_uri={}&state={state}",
                    encode(&self.client_id),
                    encode(&back)
                ))
            }
            None => match to {
                Some(to) => redirect(&to),
                None => signed_out_page(),
            },
        };
        resp.headers_mut().append(header::SET_COOKIE, Self::clear_cookie(&self.cookie_name, "/"));
        Ok(resp)
    }

    /// `AUTH/.portcullis/signed_out`: the provider signed the user out too.
    pub fn signed_out(&self, query: Option<&str>, routes: &(dyn Fn(&str) -> bool + Sync)) -> Response<ProxyBody> {
        let to = query_param(query, "state")
            .and_then(|s| self.sealer.open::<SignedOut>(Purpose::SignedOut, &s))
            .filter(|s| s.exp > unix_now())
            .and_then(|s| s.to)
            .filter(|to| is_route_url(to, routes));
        let mut resp = match to {
            Some(to) => redirect(&to),
            None => signed_out_page(),
        };
        resp.headers_mut().append(header::SET_COOKIE, Self::clear_cookie(&self.cookie_name, "/"));
        resp
    }

    // ---- sessions on the request path ----

    /// The identity the request's session cookie proves, renewing its ID token with the
    /// refresh token when it is about to expire. `None`: no usable session (absent,
    /// tampered, foreign, expired, signed out, or the refresh failed).
    pub async fn session(
        &self,
        headers: &HeaderMap,
        cache: &SessionCache,
        revocations: &Revocations,
    ) -> Option<FromCookie> {
        let value = cookie(headers, &self.cookie_name)?;
        let now = unix_now();
        if let Some(hit) = cache.0.load().as_ref() {
            if hit.instance == self.instance
                && same_secret_bytes(&hit.cookie, value.as_bytes())
                && hit.renew_at > now
                && hit.found.admitted.valid_until > now
                && !hit.found.admitted.session.as_deref().is_some_and(|sid| revocations.is_revoked(sid))
            {
                return Some(hit.found.clone());
            }
        }
        let mut session: Session = self.sealer.open(Purpose::Session, value)?;
        if session.exp <= now || revocations.is_revoked(&session.sid) {
            return None;
        }
        let mut set_cookie = None;
        if session.id_exp <= now + RENEW_BEFORE && session.refresh.is_some() {
            session = Box::pin(self.refresh(session)).await?;
            set_cookie = Some(self.session_cookie(&session)?);
        } else if session.id_exp <= now {
            // No refresh token: the session lasts as long as its ID token.
            return None;
        }
        let admitted = Arc::new(self.admitted(&session));
        let found = FromCookie { admitted, set_cookie };
        cache.0.store(Some(Arc::new(CachedSession {
            instance: self.instance,
            cookie: value.as_bytes().into(),
            found: found.clone(),
            renew_at: if session.refresh.is_some() {
                session.id_exp.saturating_sub(RENEW_BEFORE)
            } else {
                session.id_exp
            },
        })));
        Some(found)
    }

    /// What a session admits, and until when: its end when a refresh token can renew it
    /// (a tunnel outlives the ID token), else the ID token's expiry.
    fn admitted(&self, session: &Session) -> Admitted {
        let valid_until = if session.refresh.is_some() {
            session.exp
        } else {
            session.id_exp.saturating_add(self.leeway).min(session.exp)
        };
        Admitted { identity: session.identity(), valid_until, session: Some(session.sid.clone().into()) }
    }

    /// The session the request's cookie holds, if it is usable.
    fn open_session(&self, headers: &HeaderMap, revocations: &Revocations) -> Option<Session> {
        let s: Session = self.sealer.open(Purpose::Session, cookie(headers, &self.cookie_name)?)?;
        (s.exp > unix_now() && !revocations.is_revoked(&s.sid)).then_some(s)
    }

    /// The session renewed by the refresh token: new claims and expiry, the same id.
    async fn refresh(&self, mut session: Session) -> Option<Session> {
        let refresh = session.refresh.clone()?;
        let discovered = self.discovered().await.ok()?;
        let refresh = RefreshToken::new(refresh);
        let request = discovered.client.exchange_refresh_token(&refresh).ok()?;
        let tokens = match request.request_async(&self.http).await {
            Ok(t) => t,
            Err(e) => {
                tracing::info!(error = %e, "session refresh failed: the user signs in again");
                return None;
            }
        };
        if let Some(id_token) = tokens.id_token() {
            let verified = id_token
                .claims(&discovered.client.id_token_verifier(), |_: Option<&Nonce>| Ok::<(), String>(()))
                .map_err(|e| tracing::info!(error = %e, "refreshed ID token refused"))
                .ok()?;
            session.id_exp = u64::try_from(verified.expiration().timestamp()).unwrap_or(0);
            if let Some(mut claims) = payload_claims(&id_token.to_string()) {
                let sid = std::mem::take(&mut session.sid);
                let fresh = Session::new(std::mem::take(&mut claims), 0, None, 0);
                session.claims = fresh.claims;
                session.sid = sid;
            }
        } else {
            // No new ID token: the claims stand until the access token would expire.
            let lifetime = tokens.expires_in().map_or(300, |d| d.as_secs());
            session.id_exp = unix_now() + lifetime;
        }
        if let Some(r) = tokens.refresh_token() {
            session.refresh = Some(r.secret().clone());
        }
        Some(session)
    }

    // ---- cookies ----

    /// Removes the proxy's own credentials from a request going upstream: its session and
    /// CSRF cookies, and an `Authorization` holding one of its programmatic tokens.
    pub fn strip_credentials(&self, headers: &mut HeaderMap, signer: Option<&Signer>) {
        let ours_token = signer.is_some_and(|s| {
            headers
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(super::http::jwt::bearer)
                .is_some_and(|t| s.is_ours(t))
        });
        if ours_token {
            headers.remove(header::AUTHORIZATION);
        }
        let ours = |pair: &[u8]| {
            let pair = pair.trim_ascii_start();
            [self.cookie_name.as_bytes(), self.csrf_cookie.as_bytes()]
                .iter()
                .any(|name| pair.strip_prefix(*name).is_some_and(|rest| rest.starts_with(b"=")))
        };
        let cookies = headers.get_all(header::COOKIE);
        if !cookies.iter().any(|v| v.as_bytes().split(|b| *b == b';').any(ours)) {
            return;
        }
        let kept: Vec<Vec<u8>> = cookies
            .iter()
            .flat_map(|v| v.as_bytes().split(|b| *b == b';'))
            .filter(|pair| !ours(pair) && !pair.trim_ascii().is_empty())
            .map(|pair| pair.trim_ascii().to_vec())
            .collect();
        headers.remove(header::COOKIE);
        if !kept.is_empty() {
            if let Ok(v) = HeaderValue::from_bytes(&kept.join(&b"; "[..])) {
                headers.insert(header::COOKIE, v);
            }
        }
    }

    /// The `Set-Cookie` of `session`. A session whose claims make it larger than a browser
    /// keeps (4 KiB) is cut to the claims policies and upstreams most need.
    fn session_cookie(&self, session: &Session) -> Option<HeaderValue> {
        let max_age = session.exp.saturating_sub(unix_now());
        let make = |s: &Session| {
            format!(
                "{}={}; Path=/; Max-Age={max_age}; Secure; HttpOnly; SameSite=Lax",
                self.cookie_name,
                self.sealer.seal(Purpose::Session, s)
            )
        };
        let mut value = make(session);
        if value.len() > MAX_COOKIE {
            value = make(&session.essential());
            tracing::warn!(
                bytes = value.len(),
                "the provider's claims do not fit in a cookie: the session keeps sub, email, groups and name only"
            );
        }
        if value.len() > MAX_COOKIE {
            tracing::warn!(bytes = value.len(), "the session is too large for a cookie: sign-in fails");
            return None;
        }
        HeaderValue::from_str(&value).ok()
    }

    fn csrf_cookie_value(&self, csrf: &str) -> HeaderValue {
        HeaderValue::from_str(&format!(
            "{}={csrf}; Path=/; Max-Age={FLOW_TTL}; Secure; HttpOnly; SameSite=Lax",
            self.csrf_cookie
        ))
        .expect("a cookie name and a base64url value")
    }

    fn clear_cookie(name: &str, path: &str) -> HeaderValue {
        HeaderValue::from_str(&format!("{name}=; Path={path}; Max-Age=0; Secure; HttpOnly; SameSite=Lax"))
            .expect("a cookie name and a path")
    }

    // ---- the provider ----

    /// The provider's discovery, fetched when missing or older than five minutes (its keys
    /// come with it). A failure keeps the last one; with none it is a 502.
    async fn discovered(&self) -> Result<Arc<Discovered>> {
        let fresh = |d: &Discovered| super::body::now_ms().saturating_sub(d.at_ms) < DISCOVERY_TTL_MS;
        if let Some(d) = self.discovered.load_full().filter(|d| fresh(d)) {
            return Ok(d);
        }
        let unavailable =
            || Error::with(Kind::IdpUnavailable, "the identity provider cannot be reached; try again later");
        let recently_failed = || {
            let at = self.failed_at_ms.load(std::sync::atomic::Ordering::Relaxed);
            at != 0 && super::body::now_ms().saturating_sub(at) < FAILURE_BACKOFF_MS
        };
        if recently_failed() {
            return self.discovered.load_full().ok_or_else(unavailable);
        }
        let _one = self.discovering.lock().await;
        if let Some(d) = self.discovered.load_full().filter(|d| fresh(d)) {
            return Ok(d);
        }
        if recently_failed() {
            return self.discovered.load_full().ok_or_else(unavailable);
        }
        match Box::pin(self.discover()).await {
            Ok(d) => {
                let d = Arc::new(d);
                self.discovered.store(Some(d.clone()));
                Ok(d)
            }
            Err(e) => {
                tracing::warn!(issuer = %self.issuer, error = %e, "identity provider discovery failed");
                self.failed_at_ms.store(super::body::now_ms().max(1), std::sync::atomic::Ordering::Relaxed);
                self.discovered.load_full().ok_or_else(unavailable)
            }
        }
    }

    async fn discover(&self) -> std::result::Result<Discovered, String> {
        let issuer = IssuerUrl::new(self.issuer.clone()).map_err(|e| e.to_string())?;
        let meta = ProviderMetadataWithLogout::discover_async(issuer, &self.http).await.map_err(|e| e.to_string())?;
        let end_session = meta.additional_metadata().end_session_endpoint.as_ref().map(|u| u.url().to_string());
        let client = CoreClient::from_provider_metadata(
            meta,
            ClientId::new(self.client_id.clone()),
            Some(ClientSecret::new(self.client_secret.clone())),
        );
        Ok(Discovered { client, end_session, at_ms: super::body::now_ms() })
    }
}

/// The provider's token endpoint failed: its fault (502) when unreachable or broken, the
/// sign-in's (400) when it refused the code.
fn token_error<E: std::error::Error>(
    e: &openidconnect::RequestTokenError<
        E,
        openidconnect::StandardErrorResponse<openidconnect::core::CoreErrorResponseType>,
    >,
) -> Error {
    use openidconnect::RequestTokenError as R;
    tracing::info!(error = %e, "sign-in: the code exchange failed");
    match e {
        R::ServerResponse(_) => Error::with(Kind::SignInFailed, "the identity provider refused the sign-in; try again"),
        _ => Error::with(Kind::IdpUnavailable, "the identity provider cannot be reached; try again later"),
    }
}

fn redirect_url(auth: &ServiceUrl) -> Result<RedirectUrl> {
    RedirectUrl::new(format!("{}{}", auth.origin(), paths::CALLBACK))
        .map_err(|_| Error::with(Kind::Internal, "authenticate_service_url gives no redirect URL"))
}

/// A sign-in's target must still be allowed: a route host of this config over https, or
/// (programmatic) a loopback URL.
fn check_target(start: &Start, routes: &(dyn Fn(&str) -> bool + Sync)) -> Result<()> {
    let ok = match start.csrf {
        Some(_) => is_route_url(&start.to, routes),
        None => is_loopback_url(&start.to) && routes(&start.host),
    };
    if ok {
        Ok(())
    } else {
        Err(Error::with(Kind::BadRequest, "the sign-in names a host this proxy does not serve"))
    }
}

/// The claims of a JWT's payload (already verified by the caller).
fn payload_claims(jwt: &str) -> Option<Map<String, Value>> {
    use base64::Engine as _;
    let payload = jwt.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?;
    serde_json::from_slice(&bytes).ok()
}

fn redirect(location: &str) -> Response<ProxyBody> {
    Response::builder()
        .status(StatusCode::FOUND)
        .header(header::LOCATION, HeaderValue::from_str(location).unwrap_or(HeaderValue::from_static("/")))
        .header(header::CACHE_CONTROL, "no-store")
        .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(body::full("302 Found\n"))
        .expect("static parts are valid")
}

fn signed_out_page() -> Response<ProxyBody> {
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CACHE_CONTROL, "no-store")
        .header(header::CONTENT_TYPE, "text/html; charset=utf-8")
        .body(body::full(
            "<!doctype html><html><head><meta charset=\"utf-8\"><title>Signed out</title></head><body><h1>You are signed out</h1></body></html>\n",
        ))
        .expect("static parts are valid")
}

/// The value of cookie `name` among the request's `Cookie` headers. On bytes: a browser's
/// `Cookie` header carries every cookie of the host, and checking it all as text first
/// costs more than the rest of the session check.
pub fn cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    let name = name.as_bytes();
    headers.get_all(header::COOKIE).iter().flat_map(|v| v.as_bytes().split(|b| *b == b';')).find_map(|pair| {
        let pair = pair.trim_ascii_start();
        let value = pair.strip_prefix(name)?.strip_prefix(b"=")?;
        std::str::from_utf8(value.trim_ascii_end()).ok()
    })
}

/// Query parameter `name`, percent-decoded.
pub fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    query?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then(|| decode(v))
    })
}

fn decode(v: &str) -> String {
    let hex = |b: u8| char::from(b).to_digit(16).map(|d| d as u8);
    let bytes = v.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => match (bytes.get(i + 1).copied().and_then(hex), bytes.get(i + 2).copied().and_then(hex)) {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Percent-encodes everything but unreserved characters.
pub fn encode(v: &str) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(v.len());
    for b in v.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// `host[:port]` of an absolute URL.
fn url_authority(url: &str) -> Option<&str> {
    let rest = url.strip_prefix("https://").or_else(|| url.strip_prefix("http://"))?;
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..end];
    (!authority.is_empty() && !authority.contains('@')).then_some(authority)
}

fn url_path_and_query(url: &str) -> Option<&str> {
    let rest = url.strip_prefix("https://").or_else(|| url.strip_prefix("http://"))?;
    let start = rest.find('/')?;
    let pq = &rest[start..];
    // Never a scheme-relative path (`//evil`), which a browser reads as another host.
    (!pq.starts_with("//") && !pq.starts_with("/\\")).then_some(pq)
}

/// The host of `host[:port]`, without the port.
pub fn bare_host(authority: &str) -> &str {
    if authority.starts_with('[') {
        return authority.split_once(']').map_or(authority, |(h, _)| &h[1..]);
    }
    authority.rsplit_once(':').map_or(authority, |(h, _)| h)
}

/// An `https://` URL whose host this config routes.
fn is_route_url(url: &str, routes: &(dyn Fn(&str) -> bool + Sync)) -> bool {
    url.starts_with("https://")
        && !url.contains(['\\', '\r', '\n'])
        && url_authority(url).is_some_and(|a| routes(bare_host(a)))
}

/// `http://` to a loopback address (`127.0.0.1`, `[::1]`, `localhost`) with a port.
fn is_loopback_url(url: &str) -> bool {
    if !url.starts_with("http://") || url.contains(['\\', '\r', '\n', '#']) {
        return false;
    }
    let Some(authority) = url_authority(url) else { return false };
    let host = bare_host(authority);
    (host == "127.0.0.1" || host == "::1" || host.eq_ignore_ascii_case("localhost")) && authority.len() > host.len()
}

fn same_secret_bytes(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

// ---- the provider's HTTP client: ours, with `idp_ca` and limits ----

/// The client the OIDC crate talks to the provider with.
struct ProviderHttp {
    client: Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>,
}

impl ProviderHttp {
    fn new(tls: rustls::ClientConfig) -> Self {
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .build();
        Self { client: Client::builder(TokioExecutor::new()).build(https) }
    }
}

/// A provider request failed.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ProviderError(String);

impl<'c> openidconnect::AsyncHttpClient<'c> for ProviderHttp {
    type Error = ProviderError;
    type Future =
        Pin<Box<dyn Future<Output = std::result::Result<openidconnect::HttpResponse, ProviderError>> + Send + 'c>>;

    fn call(&'c self, request: openidconnect::HttpRequest) -> Self::Future {
        Box::pin(async move {
            let (parts, body) = request.into_parts();
            let req = http::Request::from_parts(parts, Full::new(Bytes::from(body)));
            let fetch = async {
                let resp = self.client.request(req).await.map_err(|e| ProviderError(format!("request failed: {e}")))?;
                let (parts, body) = resp.into_parts();
                let bytes = Limited::new(body, MAX_PROVIDER_BODY)
                    .collect()
                    .await
                    .map_err(|e| ProviderError(format!("reading the response: {e}")))?
                    .to_bytes();
                Ok(http::Response::from_parts(parts, bytes.to_vec()))
            };
            tokio::time::timeout(PROVIDER_TIMEOUT, fetch).await.map_err(|_| ProviderError("timed out".into()))?
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirect_targets_are_route_hosts_or_loopback_only() {
        let routes = |h: &str| h == "app.test";
        for ok in ["https://app.test/", "https://app.test:8443/x?y=1", "https://APP.test"] {
            assert!(is_route_url(ok, &|h: &str| routes(&h.to_ascii_lowercase())), "{ok}");
        }
        for bad in [
            "http://app.test/",
            "https://evil.test/",
            "https://app.test@evil.test/",
            "//evil.test/",
            "https://evil.test\\@app.test/",
            "javascript:alert(1)",
            "/relative",
        ] {
            assert!(!is_route_url(bad, &routes), "{bad}");
        }
        for ok in ["http://127.0.0.1:5000/", "http://[::1]:80/cb", "http://localhost:1/"] {
            assert!(is_loopback_url(ok), "{ok}");
        }
        for bad in [
            "https://127.0.0.1:5000/",
            "http://127.0.0.1/",
            "http://127.0.0.1.evil.test:80/",
            "http://evil.test:80/",
            "http://u@127.0.0.1:1/",
        ] {
            assert!(!is_loopback_url(bad), "{bad}");
        }
        assert_eq!(url_path_and_query("https://app.test//evil.test/x"), None);
        assert_eq!(url_path_and_query("https://app.test/a?b"), Some("/a?b"));
    }

    #[test]
    fn the_proxys_credentials_never_go_upstream() {
        let idp = crate::config::IdentityProvider {
            issuer: "https://idp.test".into(),
            jwks_url: None,
            client_id: Some("c".into()),
            audiences: vec!["c".into()],
            leeway: Duration::ZERO,
            ca: Vec::new(),
            sign_in: Some(crate::config::SignIn {
                client_secret: crate::config::Secret("s".into()),
                scopes: vec!["openid".into()],
                authenticate_url: None,
                cookie_name: "_portcullis".into(),
                cookie_secret: crate::config::Secret([1; 32]),
                cookie_expire: Duration::from_secs(60),
            }),
        };
        let tls = rustls::ClientConfig::builder_with_provider(crate::pki::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        let s = SignIn::new(&idp, tls).unwrap();
        let signer = Signer::new(None);
        let mut h = HeaderMap::new();
        h.append(header::COOKIE, HeaderValue::from_static("a=1; _portcullis=secret; __Host-_portcullis_csrf=x"));
        h.append(header::COOKIE, HeaderValue::from_static("_portcullis_other=keep"));
        s.strip_credentials(&mut h, Some(&signer));
        assert_eq!(h.get_all(header::COOKIE).iter().collect::<Vec<_>>(), ["a=1; _portcullis_other=keep"]);
        let mut h = HeaderMap::new();
        h.insert(header::COOKIE, HeaderValue::from_static("_portcullis=secret"));
        let claims = serde_json::json!({"sub": "x"}).as_object().unwrap().clone();
        let token = signer.programmatic_token(&Session::new(claims, 1, None, unix_now() + 60), "app.test");
        h.insert(header::AUTHORIZATION, HeaderValue::from_str(&format!("Bearer {token}")).unwrap());
        s.strip_credentials(&mut h, Some(&signer));
        assert!(h.is_empty(), "{h:?}");
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer someone.elses.token"));
        s.strip_credentials(&mut h, Some(&signer));
        assert!(h.contains_key(header::AUTHORIZATION), "another issuer's token is the upstream's business");
    }

    #[test]
    fn cookies_and_query_parameters() {
        let mut h = HeaderMap::new();
        h.append(header::COOKIE, HeaderValue::from_static("a=1; _portcullis=abc"));
        h.append(header::COOKIE, HeaderValue::from_static("b=2"));
        assert_eq!(cookie(&h, "_portcullis"), Some("abc"));
        assert_eq!(cookie(&h, "b"), Some("2"));
        assert_eq!(cookie(&h, "_portcullis_csrf"), None);
        assert_eq!(cookie(&h, "_portculli"), None, "a prefix of a name is not the name");
        assert_eq!(cookie(&h, "a"), Some("1"));
        assert_eq!(
            query_param(Some("x=1&redirect_uri=http%3A%2F%2F127.0.0.1%3A5%2F"), "redirect_uri").as_deref(),
            Some("http://127.0.0.1:5/")
        );
        assert_eq!(query_param(Some("x=%zz%4"), "x").as_deref(), Some("%zz%4"));
        assert_eq!(encode("a b/c"), "a%20b%2Fc");
    }
}
