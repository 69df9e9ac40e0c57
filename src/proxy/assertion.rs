//! The identity handed to upstreams: `X-Portcullis-Jwt-Assertion`, a JWT signed with
//! `signing_key` (ES256, as Pomerium's) that an upstream verifies with the keys served at
//! `/.well-known/portcullis/jwks.json` on its own host, so it need not trust the network,
//! only the proxy's key. `jwt_claims_headers` copy claims into plain headers for apps that
//! read those. The same key signs the programmatic login's tokens, which the proxy itself
//! accepts as bearer tokens.
//!
//! Signing costs more than the rest of a request; a connection re-sends the same identity
//! to the same host, so each connection keeps its last assertion ([`AssertionCache`]) and
//! signs again only for another identity or host, or once a minute.

use std::sync::Arc;

use arc_swap::ArcSwapOption;
use aws_lc_rs::signature::{EcdsaKeyPair, KeyPair as _, ECDSA_P256_SHA256_FIXED_SIGNING};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde_json::{json, Map, Value};

use super::idp::{unix_now, Admitted};
use super::session::{identity_of, Session};

/// The header carrying the assertion.
pub static ASSERTION_HEADER: HeaderName = HeaderName::from_static("x-portcullis-jwt-assertion");
/// An assertion's lifetime.
const LIFETIME: u64 = 300;
/// A connection's cached assertion is signed again after this long.
const RESIGN_AFTER: u64 = 60;

/// The assertion key, its key id and its JWKS document.
pub struct Signer {
    encoding: EncodingKey,
    decoding: DecodingKey,
    kid: String,
    jwks: Bytes,
    /// The configured key (PKCS#8), `None` when made at start: a reload with the same
    /// setting keeps this signer.
    pub configured: Option<Vec<u8>>,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Signer(kid {})", self.kid)
    }
}

impl Signer {
    /// The signer of `signing_key` (PKCS#8, validated by the config), or of a key made now.
    pub fn new(configured: Option<&[u8]>) -> Arc<Self> {
        let rng = aws_lc_rs::rand::SystemRandom::new();
        let pkcs8 = match configured {
            Some(der) => der.to_vec(),
            None => EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
                .expect("P-256 key generation")
                .as_ref()
                .to_vec(),
        };
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &pkcs8).expect("validated P-256 key");
        // The public point: 0x04 || x || y.
        let point = pair.public_key().as_ref();
        let (x, y) = (URL_SAFE_NO_PAD.encode(&point[1..33]), URL_SAFE_NO_PAD.encode(&point[33..65]));
        // RFC 7638 thumbprint: the key id changes exactly when the key does.
        let thumb_input = format!(r#"{{"crv":"P-256","kty":"EC","x":"{x}","y":"{y}"}}"#);
        let kid = URL_SAFE_NO_PAD.encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, thumb_input.as_bytes()));
        let jwks =
            json!({"keys": [{"kty": "EC", "crv": "P-256", "x": x, "y": y, "kid": kid, "alg": "ES256", "use": "sig"}]});
        let decoding = DecodingKey::from_ec_components(&x, &y).expect("a P-256 point");
        Arc::new(Self {
            encoding: EncodingKey::from_ec_der(&pkcs8),
            decoding,
            kid,
            jwks: Bytes::from(jwks.to_string()),
            configured: configured.map(<[u8]>::to_vec),
        })
    }

    /// The JWKS document.
    pub fn jwks(&self) -> Bytes {
        self.jwks.clone()
    }

    fn sign(&self, claims: &Value) -> String {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.encoding).expect("ES256 signing with a valid key")
    }

    /// An assertion of `who` for an upstream of `host` (without port).
    fn assertion(&self, who: &Admitted, host: &str, now: u64) -> String {
        let id = &who.identity;
        let mut claims = json!({
            "iss": host,
            "aud": host,
            "iat": now,
            "exp": now + LIFETIME,
            "sub": id.subject.as_deref().unwrap_or(""),
            "email": id.email.as_deref().unwrap_or(""),
            "groups": id.groups,
        });
        if let Some(name) = id.claims.get("name") {
            claims["name"] = name.clone();
        }
        self.sign(&claims)
    }

    /// The programmatic login's token for `host`: the session's claims, its id (so that
    /// signing out revokes it) and its end.
    pub fn programmatic_token(&self, session: &Session, host: &str) -> String {
        let mut claims = session.claims.clone();
        claims.insert("aud".into(), Value::String(host.to_owned()));
        claims.insert("iss".into(), Value::String("portcullis".into()));
        claims.insert("exp".into(), Value::from(session.exp));
        claims.insert("iat".into(), Value::from(unix_now()));
        claims.insert("portcullis_sid".into(), Value::String(session.sid.clone()));
        self.sign(&Value::Object(claims))
    }

    /// Whether `token` claims to be one of ours (its key id is this key's): then only this
    /// key decides.
    pub fn is_ours(&self, token: &str) -> bool {
        jsonwebtoken::decode_header(token).ok().and_then(|h| h.kid).is_some_and(|kid| kid == self.kid)
    }

    /// The identity a programmatic token proves on `host`.
    pub fn verify_programmatic(&self, token: &str, host: &str) -> Option<Admitted> {
        let mut v = Validation::new(Algorithm::ES256);
        v.set_issuer(&["portcullis"]);
        v.set_audience(&[host]);
        v.leeway = 0;
        v.set_required_spec_claims(&["exp", "iss", "aud"]);
        let data = jsonwebtoken::decode::<Map<String, Value>>(token, &self.decoding, &v).ok()?;
        let mut claims = data.claims;
        let sid = claims.remove("portcullis_sid")?.as_str()?.to_owned();
        let valid_until = claims.get("exp").and_then(Value::as_u64)?;
        for k in ["aud", "iss", "exp", "iat"] {
            claims.remove(k);
        }
        Some(Admitted { identity: identity_of(&claims), valid_until, session: Some(sid.into()) })
    }
}

/// A connection's last assertion.
#[derive(Default)]
pub struct AssertionCache(ArcSwapOption<Cached>);

impl std::fmt::Debug for AssertionCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AssertionCache")
    }
}

struct Cached {
    who: Arc<Admitted>,
    signer: Arc<Signer>,
    host: Box<str>,
    value: HeaderValue,
    signed_at: u64,
}

/// Sets the identity headers of a request going upstream: always removes incoming ones of
/// the same names first (a client must not be able to claim an identity), then, when
/// `who` is known, the assertion (if `assert`) and the `claims_headers`.
pub fn set_headers(
    headers: &mut HeaderMap,
    signer: Option<&Arc<Signer>>,
    who: Option<&Arc<Admitted>>,
    host: &str,
    assert: bool,
    claims_headers: &[(HeaderName, String)],
    cache: &AssertionCache,
) {
    headers.remove(&ASSERTION_HEADER);
    for (name, _) in claims_headers {
        headers.remove(name);
    }
    let Some(who) = who else { return };
    if assert {
        if let Some(signer) = signer {
            headers.insert(ASSERTION_HEADER.clone(), cached_assertion(signer, who, host, cache));
        }
    }
    for (name, claim) in claims_headers {
        if let Some(v) =
            who.identity.claims.get(claim).and_then(claim_text).and_then(|t| HeaderValue::from_str(&t).ok())
        {
            headers.insert(name.clone(), v);
        }
    }
}

fn cached_assertion(signer: &Arc<Signer>, who: &Arc<Admitted>, host: &str, cache: &AssertionCache) -> HeaderValue {
    let now = unix_now();
    if let Some(c) = cache.0.load().as_ref() {
        if Arc::ptr_eq(&c.who, who)
            && Arc::ptr_eq(&c.signer, signer)
            && &*c.host == host
            && now < c.signed_at + RESIGN_AFTER
        {
            return c.value.clone();
        }
    }
    let value = HeaderValue::from_str(&signer.assertion(who, host, now)).expect("a JWT is a valid header value");
    cache.0.store(Some(Arc::new(Cached {
        who: who.clone(),
        signer: signer.clone(),
        host: host.into(),
        value: value.clone(),
        signed_at: now,
    })));
    value
}

/// A claim as header text: strings as they are, lists joined with commas, others as JSON.
fn claim_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Array(items) => Some(items.iter().filter_map(claim_text).collect::<Vec<_>>().join(",")),
        Value::Null => None,
        other => Some(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alice() -> Arc<Admitted> {
        let claims = json!({"sub": "alice", "email": "a@example.com", "groups": ["x", "y"], "name": "Alice"});
        let claims = claims.as_object().unwrap().clone();
        Arc::new(Admitted { identity: identity_of(&claims), valid_until: unix_now() + 60, session: None })
    }

    #[test]
    fn the_assertion_verifies_with_the_served_key_only() {
        let signer = Signer::new(None);
        let mut h = HeaderMap::new();
        h.insert(&ASSERTION_HEADER, HeaderValue::from_static("forged"));
        h.insert("x-email", HeaderValue::from_static("forged"));
        let claims_headers = [
            (HeaderName::from_static("x-email"), "email".to_owned()),
            (HeaderName::from_static("x-groups"), "groups".to_owned()),
        ];
        let cache = AssertionCache::default();
        set_headers(&mut h, Some(&signer), Some(&alice()), "app.test", true, &claims_headers, &cache);
        assert_eq!(h["x-email"], "a@example.com");
        assert_eq!(h["x-groups"], "x,y");
        let jwt = h[&ASSERTION_HEADER].to_str().unwrap();
        let jwks: jsonwebtoken::jwk::JwkSet = serde_json::from_slice(&signer.jwks()).unwrap();
        let key = DecodingKey::from_jwk(&jwks.keys[0]).unwrap();
        let mut v = Validation::new(Algorithm::ES256);
        v.set_audience(&["app.test"]);
        let data = jsonwebtoken::decode::<Map<String, Value>>(jwt, &key, &v).unwrap();
        assert_eq!(data.claims["email"], "a@example.com");
        assert_eq!(data.claims["name"], "Alice");
        assert_eq!(data.claims["iss"], "app.test");
        let other: jsonwebtoken::jwk::JwkSet = serde_json::from_slice(&Signer::new(None).jwks()).unwrap();
        let wrong = DecodingKey::from_jwk(&other.keys[0]).unwrap();
        assert!(jsonwebtoken::decode::<Map<String, Value>>(jwt, &wrong, &v).is_err(), "another key must not verify it");
    }

    #[test]
    fn without_an_identity_incoming_headers_are_only_removed() {
        let mut h = HeaderMap::new();
        h.insert(&ASSERTION_HEADER, HeaderValue::from_static("forged"));
        h.insert("x-email", HeaderValue::from_static("forged"));
        let claims_headers = [(HeaderName::from_static("x-email"), "email".to_owned())];
        set_headers(
            &mut h,
            Some(&Signer::new(None)),
            None,
            "app.test",
            true,
            &claims_headers,
            &AssertionCache::default(),
        );
        assert!(h.is_empty());
    }

    #[test]
    fn a_connection_reuses_its_assertion() {
        let signer = Signer::new(None);
        let (who, cache) = (alice(), AssertionCache::default());
        let a = cached_assertion(&signer, &who, "app.test", &cache);
        assert_eq!(a, cached_assertion(&signer, &who, "app.test", &cache));
        assert_ne!(a, cached_assertion(&signer, &who, "other.test", &cache), "another host signs again");
    }

    #[test]
    fn programmatic_tokens_carry_the_session() {
        let signer = Signer::new(None);
        let claims = json!({"sub": "bob", "email": "b@example.com"}).as_object().unwrap().clone();
        let session = Session::new(claims, unix_now() + 60, None, unix_now() + 600);
        let token = signer.programmatic_token(&session, "app.test");
        assert!(signer.is_ours(&token));
        let admitted = signer.verify_programmatic(&token, "app.test").unwrap();
        assert_eq!(admitted.identity.email.as_deref(), Some("b@example.com"));
        assert_eq!(admitted.session.as_deref(), Some(session.sid.as_str()));
        assert!(signer.verify_programmatic(&token, "other.test").is_none(), "bound to its host");
        assert!(Signer::new(None).verify_programmatic(&token, "app.test").is_none());
    }
}
