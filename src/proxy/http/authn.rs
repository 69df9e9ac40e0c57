//! Phase 4, authenticate: who the request is from, as far as the proxy has verified it: the
//! client certificate chain the connection's TLS handshake verified against the downstream
//! mTLS CA, and the claims of an `Authorization: Bearer` token verified against the identity
//! provider's keys (see [`crate::proxy::idp`]). The sign-in session cookie lands here too.
//!
//! A token that fails verification is no identity, never an error: the policy decides, and
//! the client learns nothing about why its token was refused. The token itself is passed on
//! to the upstream unchanged (it may be the upstream's credential too).

use std::sync::Arc;

use http::{header, Request};

use super::jwt;
use crate::proxy::conn::{ClientChain, Conn};
use crate::proxy::idp::Admitted;
use crate::proxy::snapshot::Snapshot;

/// What is known about the client of one request.
pub(crate) struct Identity<'c> {
    /// The verified client certificate chain, if the client presented one.
    pub client_chain: Option<&'c ClientChain>,
    /// The verified claims of its bearer token.
    pub token: Option<Arc<Admitted>>,
}

/// The identity of `req` on `conn`. `wanted`: whether anything will read the token's claims
/// (the route has a policy, or the request becomes a tunnel that a later policy may check);
/// verifying one costs more than the rest of a request, so it is skipped otherwise.
#[inline]
pub(crate) async fn authenticate<'c, B>(
    conn: &'c Conn,
    snap: &Snapshot,
    req: &Request<B>,
    wanted: bool,
) -> Identity<'c> {
    let client_chain = conn.facts.client_chain.as_ref();
    let token = match (&snap.idp, wanted) {
        (Some(idp), true) => match bearer(req) {
            Some(token) => idp.admit(token, &conn.tokens).await,
            None => None,
        },
        _ => None,
    };
    Identity { client_chain, token }
}

/// The token of the request's `Authorization: Bearer` header.
fn bearer<B>(req: &Request<B>) -> Option<&str> {
    let value = req.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    jwt::bearer(value)
}
