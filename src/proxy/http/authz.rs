//! Phase 5, authorize: whether the request may pass. Today the downstream mTLS rule
//! `policy_with_default_deny` (a TLS client without a verified certificate is refused with
//! 495); the route's access policy lands here, and so does the re-check of a long-lived
//! connection when its policy changes.
//!
//! It runs before the missing route is reported: a client the listener refuses learns
//! nothing about which hosts exist.

use super::authn::Identity;
use crate::config::MtlsEnforcement;
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
