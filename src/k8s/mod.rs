//! Kubernetes integration, layered after linkerd2's policy controller: [`crd`] defines the
//! resources; [`ingress`], [`route`] and [`proxy_config`] translate one object each into the
//! validator's typed inputs (sharing [`translate`] and the watched [`objects`]), and
//! [`assemble`] combines them into one config (all pure, unit-tested); [`controller`] runs the watches and hands each config to a [`sink::Sink`]
//! (the data plane, wired in `server.rs`), [`revocations`] shares sign-outs between replicas,
//! and [`status`] writes back (leader only).
//! The domain model (`crate::config`) stays free of Kubernetes types, and nothing here
//! knows the data plane.

pub mod assemble;
pub mod controller;
pub mod crd;
pub mod ingress;
pub mod objects;
pub mod owners;
pub mod proxy_config;
pub mod revocations;
pub mod route;
pub mod sink;
pub mod status;
pub mod translate;

pub use sink::{Sink, SinkOutcome};

#[cfg(test)]
pub(crate) mod test_support;
