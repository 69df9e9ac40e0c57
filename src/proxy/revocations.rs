//! Signed-out sessions. A session lives in its cookie, so signing out cannot delete it: the
//! session's id goes on this list until the session would have ended anyway, and every
//! request checks the list (one lock-free load and a hash probe). Tunnels and streams
//! admitted with a session wait on [`Revocations::changed`] and are closed when theirs is
//! listed.
//!
//! Standalone, the list is this process's. In a cluster a [`Publish`] hook shares each
//! sign-out with the other replicas (through the API server, see `k8s::revocations`), and
//! what they share arrives through [`Revocations::merge`]: the list is as big as the
//! sign-outs of one `cookie_expire`, never the number of sessions.

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::{ArcSwap, ArcSwapOption};
use tokio::sync::watch;

use super::idp::unix_now;

/// Shares a sign-out with other replicas.
pub trait Publish: Send + Sync {
    /// `sid` is signed out until `until` (seconds since the epoch). Must not block.
    fn publish(&self, sid: &str, until: u64);
}

/// The signed-out session ids, each with the time after which listing it is moot.
pub struct Revocations {
    listed: ArcSwap<HashMap<String, u64>>,
    changed: watch::Sender<u64>,
    publish: ArcSwapOption<Box<dyn Publish>>,
    /// Writers take turns (sign-outs are rare); readers never wait.
    write: std::sync::Mutex<()>,
}

impl Default for Revocations {
    fn default() -> Self {
        Self {
            listed: ArcSwap::from_pointee(HashMap::new()),
            changed: watch::channel(0).0,
            publish: ArcSwapOption::empty(),
            write: std::sync::Mutex::new(()),
        }
    }
}

impl std::fmt::Debug for Revocations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Revocations({} listed)", self.listed.load().len())
    }
}

impl Revocations {
    /// Shares every later sign-out through `publish`.
    pub fn set_publisher(&self, publish: Box<dyn Publish>) {
        self.publish.store(Some(Arc::new(publish)));
    }

    /// Whether `sid` is signed out.
    #[inline]
    pub fn is_revoked(&self, sid: &str) -> bool {
        self.listed.load().contains_key(sid)
    }

    /// Signs `sid` out here, and on the other replicas through the publisher.
    pub fn revoke(&self, sid: &str, until: u64) {
        self.merge([(sid.to_owned(), until)]);
        if let Some(p) = self.publish.load().as_ref() {
            p.publish(sid, until);
        }
    }

    /// Adds what another replica signed out; drops entries whose sessions have ended.
    pub fn merge(&self, entries: impl IntoIterator<Item = (String, u64)>) {
        let _turn = crate::sync::lock(&self.write);
        let now = unix_now();
        let old = self.listed.load_full();
        let mut next: HashMap<String, u64> =
            old.iter().filter(|(_, until)| **until > now).map(|(k, v)| (k.clone(), *v)).collect();
        let pruned = next.len() != old.len();
        let mut added = false;
        for (sid, until) in entries {
            if until > now && next.insert(sid, until).is_none() {
                added = true;
            }
        }
        if added || pruned {
            self.listed.store(Arc::new(next));
        }
        if added {
            self.changed.send_modify(|v| *v += 1);
        }
    }

    /// The listed ids and their times, for sharing.
    pub fn entries(&self) -> Vec<(String, u64)> {
        self.listed.load().iter().map(|(k, v)| (k.clone(), *v)).collect()
    }

    /// Changes whenever a session is signed out.
    pub fn changed(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revoked_until_the_session_would_have_ended() {
        let r = Revocations::default();
        let mut rx = r.changed();
        r.revoke("a", unix_now() + 60);
        assert!(r.is_revoked("a") && !r.is_revoked("b"));
        assert!(rx.has_changed().unwrap());
        rx.mark_unchanged();
        r.merge([("old".to_owned(), unix_now() - 1)]);
        assert!(!r.is_revoked("old"), "an ended session needs no listing");
        assert!(!rx.has_changed().unwrap());
        r.merge([("a".to_owned(), unix_now() + 60), ("b".to_owned(), unix_now() + 60)]);
        assert!(r.is_revoked("b") && rx.has_changed().unwrap());
        assert_eq!(r.entries().len(), 2);
    }

    #[test]
    fn sign_outs_are_published() {
        struct Seen(std::sync::Arc<std::sync::Mutex<Vec<String>>>);
        impl Publish for Seen {
            fn publish(&self, sid: &str, _until: u64) {
                crate::sync::lock(&self.0).push(sid.to_owned());
            }
        }
        let seen = std::sync::Arc::default();
        let r = Revocations::default();
        r.set_publisher(Box::new(Seen(std::sync::Arc::clone(&seen))));
        r.revoke("x", unix_now() + 5);
        assert_eq!(*crate::sync::lock(&seen), ["x"]);
    }
}
