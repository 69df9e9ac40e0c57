//! The one host-and-path conflict check: two routes with the same host and path matcher
//! (or two tunnel routes with the same host, protocol and port) cannot both be reached. The file rejects the second; the cluster assembler lets the older
//! object keep it. A hash map keyed by host and path, so a check of n routes costs O(n).

use std::collections::HashMap;

use super::model::{HostMatch, PathMatch, Route, Tunnel};

/// What makes two path matchers the same for routing. Regexes compare by their source text.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum PathKey {
    Any,
    Prefix(String),
    Exact(String),
    Regex(String),
}

impl From<&PathMatch> for PathKey {
    fn from(p: &PathMatch) -> Self {
        match p {
            PathMatch::Any => Self::Any,
            PathMatch::Prefix(p) => Self::Prefix(p.clone()),
            PathMatch::Exact(p) => Self::Exact(p.clone()),
            PathMatch::Regex(r) => Self::Regex(r.as_str().to_owned()),
        }
    }
}

/// What two routes that cannot both be reached have in common: host, path matcher and, for
/// tunnels, protocol and port.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ClaimKey(HostMatch, PathKey, Option<Tunnel>);

impl ClaimKey {
    /// The key `route` claims.
    pub fn of(route: &Route) -> Self {
        Self(route.host.clone(), PathKey::from(&route.path), route.tunnel)
    }
}

/// Who holds each host and path so far.
#[derive(Debug)]
pub struct Claims<O> {
    owners: HashMap<ClaimKey, O>,
}

impl<O> Default for Claims<O> {
    fn default() -> Self {
        Self { owners: HashMap::new() }
    }
}

impl<O> Claims<O> {
    /// Claims `route`'s host and path for `owner`. When someone holds them already, nothing
    /// changes and the holder is returned.
    pub fn claim(&mut self, route: &Route, owner: O) -> Result<(), &O> {
        use std::collections::hash_map::Entry;
        match self.owners.entry(ClaimKey::of(route)) {
            Entry::Occupied(held) => Err(held.into_mut()),
            Entry::Vacant(free) => {
                free.insert(owner);
                Ok(())
            }
        }
    }
}
