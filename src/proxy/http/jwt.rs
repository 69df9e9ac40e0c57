//! Identity from `Authorization: Bearer <JWT>`: the token verified against the identity
//! provider's keys (a JWKS), its issuer, audience, `exp`/`nbf` (with a leeway) and algorithm
//! (RS256, ES256 or EdDSA; `none` and HMAC never). Verification is the `jsonwebtoken` crate's;
//! this module decides what is accepted and turns the claims into a policy
//! [`Identity`]. A token that fails any check is no identity, never an error the client sees
//! the details of. Fetching and refreshing the JWKS is the caller's (an unknown `kid` is
//! reported so that it can refetch, rate-limited).

use std::time::Duration;

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};

use crate::policy::eval::Identity;

/// The algorithms a token may be signed with: asymmetric only, so that a public JWKS can
/// never be used to forge a token (as it can with HMAC), and never `none`.
pub const ALGORITHMS: [Algorithm; 3] = [Algorithm::RS256, Algorithm::ES256, Algorithm::EdDSA];

/// The default leeway on `exp` and `nbf`: clocks of the provider and the proxy disagree a
/// little.
pub const DEFAULT_LEEWAY: Duration = Duration::from_secs(30);

/// What a token must say to be accepted.
#[derive(Clone, Debug)]
pub struct Expect {
    /// The `iss` the provider signs with.
    pub issuer: String,
    /// Accepted `aud` values (the client id, and any configured audiences).
    pub audiences: Vec<String>,
    /// Leeway on `exp` and `nbf`.
    pub leeway: Duration,
}

/// The outcome of verifying a token.
#[derive(Debug, PartialEq)]
pub enum Verified {
    /// A valid token: who it names, and when it expires (seconds since the epoch).
    Identity {
        /// The claims as a policy reads them.
        identity: Identity,
        /// `exp`.
        expires_at: u64,
    },
    /// Signed with a key id the JWKS does not have (yet): refetch the JWKS, then try again.
    UnknownKey,
    /// Anything else: no identity. The reason is for the debug log only.
    Invalid(&'static str),
}

/// Verifies `token` against `keys`.
pub fn verify(token: &str, keys: &JwkSet, expect: &Expect) -> Verified {
    let Ok(header) = jsonwebtoken::decode_header(token) else { return Verified::Invalid("malformed token") };
    if !ALGORITHMS.contains(&header.alg) {
        return Verified::Invalid("algorithm not allowed");
    }
    let jwk = match &header.kid {
        Some(kid) => match keys.find(kid) {
            Some(jwk) => jwk,
            None => return Verified::UnknownKey,
        },
        // No key id: only a JWKS with a single key can say which key is meant.
        None => match keys.keys.as_slice() {
            [only] => only,
            _ => return Verified::Invalid("no key id, and the JWKS has more than one key"),
        },
    };
    let Ok(key) = DecodingKey::from_jwk(jwk) else { return Verified::Invalid("unusable key in the JWKS") };
    let mut validation = Validation::new(header.alg);
    validation.set_issuer(&[&expect.issuer]);
    validation.set_audience(&expect.audiences);
    validation.leeway = expect.leeway.as_secs();
    validation.validate_nbf = true;
    validation.set_required_spec_claims(&["exp", "iss", "aud"]);
    let Ok(data) = jsonwebtoken::decode::<Map<String, Value>>(token, &key, &validation) else {
        return Verified::Invalid("signature, issuer, audience or validity period");
    };
    let claims = data.claims;
    let text = |name: &str| claims.get(name).and_then(Value::as_str).map(str::to_owned);
    let groups = match claims.get("groups") {
        Some(Value::Array(items)) => items.iter().filter_map(|g| g.as_str().map(str::to_owned)).collect(),
        Some(Value::String(g)) => vec![g.clone()],
        _ => Vec::new(),
    };
    let expires_at = claims.get("exp").and_then(Value::as_u64).unwrap_or(0);
    let identity = Identity { subject: text("sub"), email: text("email"), groups, claims };
    Verified::Identity { identity, expires_at }
}

/// The token of an `Authorization: Bearer <token>` header value.
pub fn bearer(authorization: &str) -> Option<&str> {
    let (scheme, token) = authorization.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim()).filter(|t| !t.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;
    use jsonwebtoken::{EncodingKey, Header};

    struct Signer {
        key: EncodingKey,
        jwk: Value,
    }

    fn signer(kid: &str) -> Signer {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let raw = pair.public_key_raw();
        let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        let jwk = serde_json::json!({"kty": "EC", "crv": "P-256", "x": b64(&raw[1..33]), "y": b64(&raw[33..65]),
            "kid": kid, "alg": "ES256", "use": "sig"});
        Signer { key: EncodingKey::from_ec_der(&pair.serialize_der()), jwk }
    }

    fn set(signers: &[&Signer]) -> JwkSet {
        serde_json::from_value(serde_json::json!({"keys": signers.iter().map(|s| s.jwk.clone()).collect::<Vec<_>>()}))
            .unwrap()
    }

    fn now() -> u64 {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
    }

    fn token(s: &Signer, kid: Option<&str>, claims: &Value) -> String {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = kid.map(str::to_owned);
        jsonwebtoken::encode(&header, claims, &s.key).unwrap()
    }

    fn expect() -> Expect {
        Expect { issuer: "https://idp.test".into(), audiences: vec!["portcullis".into()], leeway: DEFAULT_LEEWAY }
    }

    fn claims(exp_offset: i64) -> Value {
        let exp = now().saturating_add_signed(exp_offset);
        serde_json::json!({"iss": "https://idp.test", "aud": "portcullis", "sub": "u-1", "email": "a@example.com",
            "groups": ["eng"], "exp": exp, "iat": now()})
    }

    #[test]
    fn a_valid_token_names_its_identity() {
        let s = signer("k1");
        let keys = set(&[&s]);
        let Verified::Identity { identity, expires_at } =
            verify(&token(&s, Some("k1"), &claims(300)), &keys, &expect())
        else {
            panic!("not verified")
        };
        assert_eq!(identity.subject.as_deref(), Some("u-1"));
        assert_eq!(identity.email.as_deref(), Some("a@example.com"));
        assert_eq!(identity.groups, ["eng"]);
        assert!(expires_at > now());
        // Within the leeway, an expired token still counts; past it, not.
        assert!(matches!(verify(&token(&s, Some("k1"), &claims(-10)), &keys, &expect()), Verified::Identity { .. }));
        assert!(matches!(verify(&token(&s, Some("k1"), &claims(-60)), &keys, &expect()), Verified::Invalid(_)));
        // No kid with a one-key JWKS: that key.
        assert!(matches!(verify(&token(&s, None, &claims(300)), &keys, &expect()), Verified::Identity { .. }));
    }

    #[test]
    fn everything_else_is_no_identity() {
        let (s, other) = (signer("k1"), signer("k2"));
        let keys = set(&[&s]);
        let e = expect();
        let mut c = claims(300);
        c["iss"] = "https://evil.test".into();
        assert!(matches!(verify(&token(&s, Some("k1"), &c), &keys, &e), Verified::Invalid(_)), "issuer");
        let mut c = claims(300);
        c["aud"] = "someone-else".into();
        assert!(matches!(verify(&token(&s, Some("k1"), &c), &keys, &e), Verified::Invalid(_)), "audience");
        let mut c = claims(300);
        c["nbf"] = (now() + 120).into();
        assert!(matches!(verify(&token(&s, Some("k1"), &c), &keys, &e), Verified::Invalid(_)), "not yet valid");
        let mut c = claims(300);
        c.as_object_mut().unwrap().remove("exp");
        assert!(matches!(verify(&token(&s, Some("k1"), &c), &keys, &e), Verified::Invalid(_)), "no exp");
        // Signed by another key under a known kid: the signature fails.
        assert!(matches!(verify(&token(&other, Some("k1"), &claims(300)), &keys, &e), Verified::Invalid(_)));
        // An unknown kid asks for a refetch.
        assert_eq!(verify(&token(&other, Some("k2"), &claims(300)), &keys, &e), Verified::UnknownKey);
        // No kid with several keys: refused.
        assert!(matches!(verify(&token(&s, None, &claims(300)), &set(&[&s, &other]), &e), Verified::Invalid(_)));
        // HMAC, even "signed" with the public key material, and alg none: refused.
        let hs = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims(300),
            &EncodingKey::from_secret(s.jwk["x"].as_str().unwrap().as_bytes()),
        )
        .unwrap();
        assert_eq!(verify(&hs, &keys, &e), Verified::Invalid("algorithm not allowed"));
        let b64 = |v: &Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
        let none = format!("{}.{}.", b64(&serde_json::json!({"alg": "none", "kid": "k1"})), b64(&claims(300)));
        assert!(matches!(verify(&none, &keys, &e), Verified::Invalid(_)));
        // A tampered payload.
        let good = token(&s, Some("k1"), &claims(300));
        let mut parts: Vec<&str> = good.split('.').collect();
        let mut c = claims(300);
        c["sub"] = "admin".into();
        let forged = b64(&c);
        parts[1] = &forged;
        assert!(matches!(verify(&parts.join("."), &keys, &e), Verified::Invalid(_)));
        for garbage in ["", "a.b", "a.b.c", "...."] {
            assert!(matches!(verify(garbage, &keys, &e), Verified::Invalid(_)), "{garbage:?}");
        }
    }

    #[test]
    fn bearer_values() {
        assert_eq!(bearer("Bearer abc.def.ghi"), Some("abc.def.ghi"));
        assert_eq!(bearer("bearer  xyz "), Some("xyz"));
        assert_eq!(bearer("Basic dXNlcjpwYXNz"), None);
        assert_eq!(bearer("Bearer "), None);
        assert_eq!(bearer("Bearer"), None);
    }
}
