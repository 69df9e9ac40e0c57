//! The data plane, drawn in docs/architecture.md. A connection is accepted by [`accept`]
//! (TCP or QUIC, one connection driver for both), described by [`conn`], and each of its
//! requests runs the [`http`] pipeline's phases in order; upgrades leave it after
//! authorization and the upstream pick, into [`tunnel`]. The pipeline reads the current [`snapshot`] (routes in a
//! [`table`], balancers and clients in [`upstream`]), writes its line with [`log`], and
//! answers failures with one [`error`] type. [`state`] is the running [`Proxy`] that
//! reloads swap snapshots and listener [`generation`]s in, [`drain`] retires old
//! generations, [`health`] checks upstreams, [`body`] and [`stall`] enforce the timeouts
//! while bytes flow, and [`headers`] holds the header rules every path applies. [`idp`] and
//! [`jwks`] are the identity provider a bearer token is verified against; [`signin`] is the
//! browser's sign-in with it, [`session`] the sealed cookie it leaves, [`revocations`] the
//! signed-out sessions, and [`assertion`] the identity handed to upstreams.
//!
//! The request path takes no lock: it loads the current [`Snapshot`] from an `ArcSwap`.

pub mod accept;
pub mod assertion;
pub mod balance;
pub mod body;
pub mod conn;
pub mod drain;
pub mod error;
pub mod generation;
pub mod headers;
pub mod health;
pub mod http;
pub mod idp;
pub mod jwks;
pub mod log;
pub mod revocations;
pub mod session;
pub mod signin;
pub mod snapshot;
pub mod stall;
pub mod state;
pub mod table;
pub mod tunnel;
pub mod upstream;

pub use snapshot::{CompiledRoute, Snapshot};
pub use state::{Applied, ListenerInfo, Proxy, Sockets};
