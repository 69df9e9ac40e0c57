//! Kubernetes integration: the custom resources now; the controller, translation and status
//! writing grow here. The domain model (`crate::config`) stays free of Kubernetes types.

pub mod crd;
pub mod translate;
