//! Configuration: the domain model, its validation, and the standalone file source.
//!
//! Nothing here knows about Kubernetes or about serving: [`model`] says what a config means,
//! [`parse`] turns a loosely typed tree into it (collecting every error), and [`file`] is the
//! standalone source with environment overrides and hot reload.

pub mod duration;
pub mod file;
pub mod model;
pub mod parse;

pub use model::*;
pub use parse::{ConfigErrors, FieldError};
