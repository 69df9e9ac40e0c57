//! Where configs come from, apart from what they mean: [`yaml`] reads the standalone YAML
//! tree into the validator's typed inputs, [`file`] loads, fingerprints and watches the file
//! (reading the certificates it names), and [`env`] is the environment's overrides. The
//! Kubernetes source lives in `crate::k8s`. Every source hands typed inputs to the one
//! validator, `crate::config::validate`.

pub mod env;
pub mod file;
pub mod yaml;
