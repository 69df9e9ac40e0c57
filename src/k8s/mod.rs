//! Kubernetes integration, layered after linkerd2's policy controller: [`crd`] defines the
//! resources, [`translate`] and [`assemble`] turn objects into the domain model (pure,
//! unit-tested), [`controller`] runs the watches and hands each config to a [`sink::Sink`]
//! (the data plane, wired in `server.rs`), and [`status`] writes back (leader only).
//! The domain model (`crate::config`) stays free of Kubernetes types, and nothing here
//! knows the data plane.

pub mod assemble;
pub mod controller;
pub mod crd;
pub mod sink;
pub mod status;
pub mod translate;

pub use sink::{Sink, SinkOutcome};

#[cfg(test)]
pub(crate) mod test_support;
