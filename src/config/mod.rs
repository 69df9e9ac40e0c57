//! Configuration: the domain model and its validation, knowing nothing of where a config
//! comes from (that is `crate::source` and `crate::k8s`) or of serving.
//!
//! [`model`] says what a config means; [`input`] is what a source states, typed but
//! unchecked; [`validate`] turns inputs into the model, collecting every error, named through
//! [`fields`] in the source's own terms; [`claims`] is the host-and-path conflict check every
//! source shares. No I/O happens here.

pub mod claims;
pub mod duration;
pub mod errors;
pub mod fields;
pub mod input;
pub mod model;
pub mod validate;

pub use errors::{ConfigErrors, FieldError};
pub use model::*;
