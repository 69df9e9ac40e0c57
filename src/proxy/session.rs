//! Sessions and the other values the browser carries for the proxy (sign-in state, the
//! hand-off to a route host), sealed with AES-256-GCM under `cookie_secret`. The browser
//! holds the whole session, so no replica needs a store to serve a request, and any
//! replica serves any session; what the browser cannot do is read or change one. Each kind
//! of value is sealed with its own associated data ([`Purpose`]), so a sign-in state can
//! never be replayed as a session, nor a session as a hand-off.
//!
//! A value that does not open (tampered, truncated, sealed under another or a rotated
//! secret, of another purpose) is simply no value: the user signs in again, and nothing
//! says why but the debug log.

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::policy::eval::Identity;

/// The format version, first byte of every sealed value: a future format can tell old
/// values apart (and refuse them) instead of misreading them.
const VERSION: u8 = 1;

/// What a sealed value is for: its associated data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Purpose {
    /// The session cookie (and the programmatic token's session).
    Session,
    /// The `state` of a sign-in, from the route host through the provider and back.
    State,
    /// A session handed from the sign-in host to a route host.
    Handoff,
    /// Where to go after the provider signed the user out.
    SignedOut,
}

impl Purpose {
    fn aad(self) -> &'static [u8] {
        match self {
            Self::Session => b"portcullis session",
            Self::State => b"portcullis sign-in state",
            Self::Handoff => b"portcullis session hand-off",
            Self::SignedOut => b"portcullis signed-out redirect",
        }
    }
}

/// Seals and opens values under one key.
pub struct Sealer {
    key: LessSafeKey,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sealer(<redacted>)")
    }
}

impl Sealer {
    /// A sealer with `key` (`cookie_secret`).
    pub fn new(key: &[u8; 32]) -> Self {
        let key = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, key).expect("32 bytes is an AES-256 key"));
        Self { key }
    }

    /// `value` as JSON, sealed: base64url of version, a random nonce, ciphertext and tag.
    pub fn seal<T: Serialize>(&self, purpose: Purpose, value: &T) -> String {
        let mut buf = serde_json::to_vec(value).expect("sealed values serialize");
        let nonce_bytes: [u8; NONCE_LEN] = rand::random();
        let nonce = Nonce::assume_unique_for_key(nonce_bytes);
        self.key
            .seal_in_place_append_tag(nonce, Aad::from(purpose.aad()), &mut buf)
            .expect("sealing a small value cannot fail");
        let mut out = Vec::with_capacity(1 + NONCE_LEN + buf.len());
        out.push(VERSION);
        out.extend_from_slice(&nonce_bytes);
        out.extend_from_slice(&buf);
        URL_SAFE_NO_PAD.encode(out)
    }

    /// The value `text` seals for `purpose`, or `None`.
    pub fn open<T: DeserializeOwned>(&self, purpose: Purpose, text: &str) -> Option<T> {
        let mut raw = URL_SAFE_NO_PAD.decode(text.trim().as_bytes()).ok()?;
        if raw.len() < 1 + NONCE_LEN + AES_256_GCM.tag_len() || raw[0] != VERSION {
            return None;
        }
        let nonce = Nonce::try_assume_unique_for_key(&raw[1..=NONCE_LEN]).ok()?;
        let plain = self.key.open_in_place(nonce, Aad::from(purpose.aad()), &mut raw[1 + NONCE_LEN..]).ok()?;
        serde_json::from_slice(plain).ok()
    }
}

/// A signed-in user: what the provider's ID token said, and how long it holds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Session {
    /// A random id: what sign-out revokes on every replica.
    pub sid: String,
    /// The ID token's claims about the user (protocol claims such as `nonce`, `aud` and
    /// `at_hash` left out).
    pub claims: Map<String, Value>,
    /// When the ID token expires (seconds since the epoch): the refresh token renews it then.
    pub id_exp: u64,
    /// The refresh token, when the provider granted one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh: Option<String>,
    /// When the session ends whatever happens (sign-in plus `cookie_expire`).
    pub exp: u64,
}

/// Claims about the protocol exchange rather than the user: not kept in a session.
const PROTOCOL_CLAIMS: &[&str] =
    &["iss", "aud", "azp", "exp", "iat", "nbf", "nonce", "at_hash", "c_hash", "sid", "jti"];

/// What [`Session::essential`] keeps.
const ESSENTIAL_CLAIMS: &[&str] = &["sub", "email", "email_verified", "groups", "name", "preferred_username"];

impl Session {
    /// A session for the user `claims` (an ID token's) describe.
    pub fn new(mut claims: Map<String, Value>, id_exp: u64, refresh: Option<String>, exp: u64) -> Self {
        claims.retain(|k, _| !PROTOCOL_CLAIMS.contains(&k.as_str()));
        Self { sid: random_id(), claims, id_exp, refresh, exp }
    }

    /// The same session with only the claims policies and upstreams most need: for a
    /// provider whose claims do not fit in a cookie.
    #[must_use]
    pub fn essential(&self) -> Self {
        let mut s = self.clone();
        s.claims.retain(|k, _| ESSENTIAL_CLAIMS.contains(&k.as_str()));
        s
    }

    /// The identity a policy reads.
    pub fn identity(&self) -> Identity {
        identity_of(&self.claims)
    }
}

/// The identity `claims` describe: `sub`, `email`, `groups` (a list, or one string).
pub fn identity_of(claims: &Map<String, Value>) -> Identity {
    let text = |name: &str| claims.get(name).and_then(Value::as_str).map(str::to_owned);
    let groups = match claims.get("groups") {
        Some(Value::Array(items)) => items.iter().filter_map(|g| g.as_str().map(str::to_owned)).collect(),
        Some(Value::String(g)) => vec![g.clone()],
        _ => Vec::new(),
    };
    Identity { subject: text("sub"), email: text("email"), groups, claims: claims.clone() }
}

/// 16 random bytes, base64url: session ids, CSRF values.
pub fn random_id() -> String {
    URL_SAFE_NO_PAD.encode(rand::random::<[u8; 16]>())
}

/// Equality whose time does not depend on where the inputs differ: for CSRF values.
pub fn same_secret(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session() -> Session {
        let claims =
            serde_json::json!({"sub": "alice", "email": "a@example.com", "groups": ["x"], "nonce": "n", "aud": "c"});
        Session::new(claims.as_object().unwrap().clone(), 10, Some("r".into()), 20)
    }

    #[test]
    fn a_session_round_trips_and_drops_protocol_claims() {
        let s = Sealer::new(&[7; 32]);
        let sealed = s.seal(Purpose::Session, &session());
        let back: Session = s.open(Purpose::Session, &sealed).unwrap();
        assert_eq!(back.identity().email.as_deref(), Some("a@example.com"));
        assert_eq!(back.identity().groups, ["x"]);
        assert!(!back.claims.contains_key("nonce") && !back.claims.contains_key("aud"));
        assert_ne!(sealed, s.seal(Purpose::Session, &back), "a fresh nonce every time");
    }

    #[test]
    fn an_essential_session_keeps_who_it_is() {
        let mut s = session();
        s.claims.insert("huge".into(), Value::String("x".repeat(5000)));
        let e = s.essential();
        assert_eq!(e.identity().email, s.identity().email);
        assert_eq!((e.sid.as_str(), e.exp), (s.sid.as_str(), s.exp));
        assert!(!e.claims.contains_key("huge"));
    }

    #[test]
    fn tampered_foreign_or_misused_values_do_not_open() {
        let s = Sealer::new(&[7; 32]);
        let sealed = s.seal(Purpose::Session, &session());
        assert!(Sealer::new(&[8; 32]).open::<Session>(Purpose::Session, &sealed).is_none(), "another secret");
        assert!(s.open::<Session>(Purpose::Handoff, &sealed).is_none(), "another purpose");
        let mut raw = URL_SAFE_NO_PAD.decode(&sealed).unwrap();
        for i in [0, 5, raw.len() / 2, raw.len() - 1] {
            raw[i] ^= 1;
            assert!(s.open::<Session>(Purpose::Session, &URL_SAFE_NO_PAD.encode(&raw)).is_none(), "byte {i}");
            raw[i] ^= 1;
        }
        assert!(s.open::<Session>(Purpose::Session, &sealed[..sealed.len() - 4]).is_none());
        for junk in ["", "%%%", "AAAA", &"A".repeat(5000)] {
            assert!(s.open::<Session>(Purpose::Session, junk).is_none());
        }
    }
}
