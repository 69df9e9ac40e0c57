//! Kubernetes integration, layered after linkerd2's policy controller: [`crd`] defines the
//! resources, [`translate`] and [`assemble`] turn objects into the domain model (pure,
//! unit-tested), [`controller`] runs the watches, and [`status`] writes back (leader only).
//! The domain model (`crate::config`) stays free of Kubernetes types.

pub mod assemble;
pub mod controller;
pub mod crd;
pub mod status;
pub mod translate;

#[cfg(test)]
pub(crate) mod test_support;
