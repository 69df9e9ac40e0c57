//! Phase 4, authenticate: who the request is from, as far as the proxy has verified it: the
//! client certificate chain the connection's TLS handshake verified against the downstream
//! mTLS CA, and the claims of an `Authorization: Bearer` token verified against the identity
//! provider's keys (see [`crate::proxy::idp`]) or, when the proxy signed it (the
//! programmatic login), against the proxy's own key; and the browser's sign-in session
//! cookie ([`crate::proxy::signin`]). A signed-out session is no identity.
//!
//! A token that fails verification is no identity, never an error: the policy decides, and
//! the client learns nothing about why its token was refused. The token itself is passed on
//! to the upstream unchanged (it may be the upstream's credential too).

use std::sync::Arc;

use http::header::HeaderValue;
use http::{header, Request};

use super::jwt;
use crate::proxy::conn::{ClientChain, Conn};
use crate::proxy::idp::Admitted;
use crate::proxy::signin::bare_host;
use crate::proxy::snapshot::Snapshot;

/// What is known about the client of one request.
pub(crate) struct Identity<'c> {
    /// The verified client certificate chain, if the client presented one.
    pub client_chain: Option<&'c ClientChain>,
    /// The verified claims of its bearer token or session.
    pub token: Option<Arc<Admitted>>,
    /// A renewed session cookie to send back with the response.
    pub set_cookie: Option<HeaderValue>,
}

/// The identity of `req` on `conn`. `wanted`: whether anything will read the token's claims
/// (the route has a policy, or the request becomes a tunnel that a later policy may check);
/// verifying one costs more than the rest of a request, so it is skipped otherwise.
#[inline]
pub(crate) async fn authenticate<'c, B>(
    conn: &'c Conn,
    snap: &Snapshot,
    req: &Request<B>,
    host: &str,
    wanted: bool,
) -> Identity<'c> {
    let client_chain = conn.facts.client_chain.as_ref();
    let mut set_cookie = None;
    let token = match (&snap.idp, wanted) {
        (Some(idp), true) => match bearer(req) {
            Some(token) => match &snap.signer {
                Some(signer) if signer.is_ours(token) => signer
                    .verify_programmatic(token, bare_host(host))
                    .filter(|a| !a.session.as_deref().is_some_and(|sid| snap.revocations.is_revoked(sid)))
                    .map(Arc::new),
                _ => idp.admit(token, &conn.tokens).await,
            },
            None => match &snap.signin {
                Some(sign_in) => sign_in.session(req.headers(), &conn.sessions, &snap.revocations).await.map(|found| {
                    set_cookie = found.set_cookie;
                    found.admitted
                }),
                None => None,
            },
        },
        _ => None,
    };
    Identity { client_chain, token, set_cookie }
}

/// The token of the request's `Authorization: Bearer` header.
fn bearer<B>(req: &Request<B>) -> Option<&str> {
    let value = req.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    jwt::bearer(value)
}
