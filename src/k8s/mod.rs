//! Kubernetes integration: the custom resources now; the controller, translation and status
//! writing grow here. The domain model (`crate::config`) stays free of Kubernetes types.

pub mod assemble;
pub mod crd;
pub mod translate;

#[cfg(test)]
pub(crate) mod test_support;
