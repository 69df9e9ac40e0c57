//! Phase 3, route: the route that serves the request's host and path, as an index into the
//! snapshot's routes (so that the access log and metrics can name it without a copy). Later
//! matches (methods, headers, query, Gateway API's rules) land here.

use crate::proxy::snapshot::Snapshot;

/// The route for `host` and `path`, if any. Not an error yet: whether a client may learn
/// that no route exists is decided by authorization, which runs first.
#[inline]
pub(crate) fn find(snap: &Snapshot, host: &str, path: &str) -> Option<usize> {
    snap.routes.lookup_index(host, path)
}

/// The tunnel route a CONNECT or CONNECT-UDP asks for: its host, protocol and port.
#[inline]
pub(crate) fn find_tunnel(snap: &Snapshot, target: &crate::proxy::tunnel::Target) -> Option<usize> {
    snap.routes.lookup_tunnel(&target.host, target.protocol, target.port)
}
