//! Kept only for the data plane's unit tests, which name these paths
//! (`crate::config::parse::{parse_route, Errors, NoMaterial, parse_from, parse_host}`); new
//! code uses `crate::config::validate` and `crate::source::yaml`. To be removed once those
//! tests have moved.

pub use super::validate::{parse_from, parse_host, Errors};
pub use crate::source::yaml::{parse_route, NoMaterial};
