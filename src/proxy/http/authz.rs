//! Phase 5, authorize: whether the request may pass. Today the downstream mTLS rule
//! `policy_with_default_deny` (a TLS client without a verified certificate is refused with
//! 495); the route's access policy lands here, and so does the re-check of a long-lived
//! connection when its policy changes.
//!
//! It runs before the missing route is reported: a client the listener refuses learns
//! nothing about which hosts exist.

use http::{header, Method, Request};

use super::authn::Identity;
use crate::config::MtlsEnforcement;
use crate::policy::eval::{Decision, Facts};
use crate::policy::Policy;
use crate::proxy::conn::Conn;
use crate::proxy::error::{Error, Kind, Result};
use crate::proxy::snapshot::Snapshot;

/// Admits or refuses a request from `who` on `conn`.
#[inline]
pub(crate) fn authorize(snap: &Snapshot, conn: &Conn, who: &Identity<'_>) -> Result<()> {
    if let Some(m) = &snap.settings.downstream_mtls {
        if m.enforcement == MtlsEnforcement::PolicyWithDefaultDeny
            && conn.listener().is_tls()
            && who.client_chain.is_none()
        {
            return Err(Error::new(Kind::ClientCertRequired));
        }
    }
    Ok(())
}

/// Admits or refuses `req` from `who` on `conn` under the route's `policy`: deny wins, then
/// any allow; refused with 403 when the request had an identity, 401 when it had none
/// (signing in could change the answer). Returns the deciding rule, for the access log.
pub(crate) fn route_policy<B>(policy: &Policy, conn: &Conn, who: &Identity<'_>, req: &Request<B>) -> Result<usize> {
    let h = req.headers();
    let facts = Facts {
        identity: who.claims.as_ref(),
        method: req.method().as_str(),
        path: req.uri().path(),
        source_ip: conn.peer().ip(),
        // Certificate facts (fingerprint, SPKI hash, SANs) are read from the chain when a
        // policy needs them: not yet, so certificate criteria never match.
        client_cert: None,
        invalid_client_cert: false,
        cors_preflight: req.method() == Method::OPTIONS
            && h.contains_key(header::ORIGIN)
            && h.contains_key(header::ACCESS_CONTROL_REQUEST_METHOD),
        now: jiff::Timestamp::now(),
    };
    match policy.decide(&facts) {
        Decision::Allow { rule } => Ok(rule),
        Decision::Deny { .. } | Decision::NoMatch if who.claims.is_none() => Err(Error::new(Kind::Unauthenticated)),
        Decision::Deny { .. } | Decision::NoMatch => Err(Error::new(Kind::Forbidden)),
    }
}
