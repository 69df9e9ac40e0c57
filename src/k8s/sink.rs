//! Where the controller hands each assembled config: a small trait, so that `k8s` needs no
//! knowledge of the data plane. `server.rs` implements it for the in-process proxy; a test
//! could implement it with a channel.

use crate::config::Config;

/// What became of a config handed to a [`Sink`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SinkOutcome {
    /// Everything is in force.
    Applied,
    /// In force, but some listeners could not move to their new addresses (they stay where
    /// they were); one message per listener.
    AppliedWithListenerErrors(Vec<String>),
}

/// The consumer of the controller's snapshots.
pub trait Sink: Send + Sync {
    /// Puts `config` in force.
    fn apply(&self, config: Config) -> SinkOutcome;

    /// Records that the config in force is not the one the cluster asks for (an object is
    /// rejected, or a listener could not move): `portcullis_config_last_reload_success` 0.
    fn reject(&self);

    /// How many routes are being served, for the start-up log line.
    fn route_count(&self) -> usize;

    /// The data plane's signed-out sessions, which the controller shares with the other
    /// replicas ([`super::revocations`]); `None`: nothing to share.
    fn revocations(&self) -> Option<std::sync::Arc<crate::proxy::revocations::Revocations>> {
        None
    }
}
