//! Phase 4, authenticate: who the request is from, as far as the proxy has verified it. Today
//! that is the client certificate chain the connection's TLS handshake verified against the
//! downstream mTLS CA; the JWT of `Authorization` and the sign-in session cookie land here,
//! each in a file of its own, and add to [`Identity`].

use crate::proxy::conn::{ClientChain, Conn};

/// What is known about the client of one request; borrowed from its connection.
pub(crate) struct Identity<'c> {
    /// The verified client certificate chain, if the client presented one.
    pub client_chain: Option<&'c ClientChain>,
    /// The verified claims of its bearer token (none until the identity provider is wired).
    pub claims: Option<crate::policy::eval::Identity>,
}

/// The identity of a request on `conn`.
#[inline]
pub(crate) fn authenticate(conn: &Conn) -> Identity<'_> {
    Identity { client_chain: conn.facts.client_chain.as_ref(), claims: None }
}
