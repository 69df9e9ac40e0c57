//! The running identity provider: the configured [`IdentityProvider`], its keys
//! ([`Jwks`], refreshed in the background) and what a verified token admitted. A snapshot
//! holds one while the config names a provider; a reload with the same provider settings
//! keeps it (and its keys), a changed one starts a new one, and the old one's refresh task
//! stops when the last snapshot holding it is gone.
//!
//! Verifying a signature costs tens of microseconds, more than the rest of a proxied
//! request; a client sends the same token with every request of a connection, so each
//! connection remembers the last token it verified ([`TokenCache`], lock-free) and a repeat
//! costs one constant-time comparison of the token.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use jsonwebtoken::jwk::JwkSet;
use tokio_util::sync::CancellationToken;

use super::http::jwt::{self, Expect, Verified};
use super::jwks::{Jwks, KeysAt, REFETCH_INTERVAL};
use crate::config::IdentityProvider;
use crate::policy::eval::Identity;

/// How often the keys are fetched again when no token asks for a new one: a provider that
/// retires a key is believed within this time.
pub const REFRESH_INTERVAL: Duration = Duration::from_secs(300);

/// A configured provider, running.
pub struct Idp {
    /// The settings it was started from (a reload with equal settings keeps it).
    pub config: IdentityProvider,
    expect: Expect,
    /// Its keys.
    pub jwks: Arc<Jwks>,
    stop: CancellationToken,
}

/// A verified token: who it names, and until when (seconds since the epoch, leeway
/// included) a connection admitted with it may stay.
#[derive(Debug)]
pub struct Admitted {
    /// The claims, as a policy reads them.
    pub identity: Identity,
    /// `exp` plus the leeway: when a tunnel admitted with it is re-checked and closed.
    pub valid_until: u64,
    /// The sign-in session it came from (a cookie, a programmatic token): signing out
    /// revokes it.
    pub session: Option<Box<str>>,
}

/// The last token a connection verified. A hit needs the same token, the same key set (a
/// rotation or a new provider verifies again) and an unexpired token. It holds the token
/// itself, as the request that carried it did: comparing it costs less than hashing it.
pub struct TokenCache(ArcSwapOption<Cached>);

struct Cached {
    token: Box<[u8]>,
    keys: Arc<JwkSet>,
    admitted: Arc<Admitted>,
}

impl Default for TokenCache {
    fn default() -> Self {
        Self(ArcSwapOption::empty())
    }
}

impl std::fmt::Debug for TokenCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenCache")
    }
}

impl Idp {
    /// Starts the provider: its keys are fetched now and every [`REFRESH_INTERVAL`] until
    /// it is dropped. Needs a Tokio runtime.
    pub fn start(config: IdentityProvider) -> Arc<Self> {
        let at = match &config.jwks_url {
            Some(url) => KeysAt::Url(url.clone()),
            None => KeysAt::Discovery { issuer: config.issuer.clone() },
        };
        let jwks = Jwks::new(at, provider_tls(&config), REFETCH_INTERVAL);
        let stop = CancellationToken::new();
        // Outside a runtime (a unit test's proxy) the keys are fetched on first use.
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(jwks.clone().run(REFRESH_INTERVAL, stop.clone()));
        }
        let expect =
            Expect { issuer: config.issuer.clone(), audiences: config.audiences.clone(), leeway: config.leeway };
        Arc::new(Self { config, expect, jwks, stop })
    }

    /// The identity `token` proves, if it is valid; remembered in `cache` (the connection's).
    /// A token signed with a key id the keys lack makes them be fetched again (rate-limited)
    /// and is tried once more.
    pub async fn admit(&self, token: &str, cache: &TokenCache) -> Option<Arc<Admitted>> {
        let keys = self.jwks.current();
        if let Some(hit) = cache.0.load().as_ref() {
            if constant_time_eq(&hit.token, token.as_bytes())
                && Arc::ptr_eq(&hit.keys, &keys)
                && hit.admitted.valid_until > unix_now()
            {
                return Some(hit.admitted.clone());
            }
        }
        let (keys, verified) = match jwt::verify(token, &keys, &self.expect) {
            Verified::UnknownKey => {
                // Boxed: the fetch's future is large, and it would otherwise be part of every
                // request's pipeline future (which is moved into its box on every request).
                let keys = Box::pin(self.jwks.after_unknown_key()).await;
                let again = jwt::verify(token, &keys, &self.expect);
                (keys, again)
            }
            other => (keys, other),
        };
        match verified {
            Verified::Identity { identity, expires_at } => {
                let valid_until = expires_at.saturating_add(self.config.leeway.as_secs());
                let admitted = Arc::new(Admitted { identity, valid_until, session: None });
                cache.0.store(Some(Arc::new(Cached {
                    token: token.as_bytes().into(),
                    keys,
                    admitted: admitted.clone(),
                })));
                Some(admitted)
            }
            Verified::UnknownKey => {
                tracing::debug!("bearer token signed with a key the provider does not publish: no identity");
                None
            }
            Verified::Invalid(why) => {
                // The reason only, never the token.
                tracing::debug!(reason = why, "bearer token refused: no identity");
                None
            }
        }
    }
}

impl Drop for Idp {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Trust anchors for the provider: `idp_ca`, else the system's.
pub(crate) fn provider_tls(config: &IdentityProvider) -> rustls::ClientConfig {
    let roots = if config.ca.is_empty() {
        super::upstream::system_roots()
    } else {
        let mut roots = rustls::RootCertStore::empty();
        for ca in &config.ca {
            let _ = roots.add(ca.clone());
        }
        Arc::new(roots)
    };
    rustls::ClientConfig::builder_with_provider(crate::pki::provider())
        .with_safe_default_protocol_versions()
        .expect("the default provider supports the default versions")
        .with_root_certificates(roots)
        .with_no_client_auth()
}

/// Seconds since the Unix epoch (0 before it).
pub fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Equality whose time does not depend on where the inputs differ (only on their lengths,
/// which a token's header shows anyway): the token is a secret.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_compare_whole() {
        let a = b"header.payload.signature".to_vec();
        let mut b = a.clone();
        assert!(constant_time_eq(&a, &b));
        *b.last_mut().unwrap() ^= 1;
        assert!(!constant_time_eq(&a, &b));
        assert!(!constant_time_eq(&a, &a[..a.len() - 1]), "a prefix is not the token");
        assert!(!constant_time_eq(b"", b"x"));
    }
}
