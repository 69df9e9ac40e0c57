//! Portcullis: a Kubernetes ingress controller with an in-process proxy data plane.
//!
//! Layout (see README.md): [`config`] is the domain model and its validation, knowing
//! nothing of Kubernetes or serving; [`proxy`] is the data plane, one module per stage;
//! [`tls`], [`metrics`] and [`admin`] serve it; [`pki`] holds the certificate material both
//! the validator and `tls` need; [`masque`] is the wire format of UDP tunnels, shared with the `tunnel` client; [`server`] starts it; [`demo`] is the built-in upstream of
//! the quickstart and the tests. [`client`] is `portcullis tunnel`. All wiring lives in `main.rs`.

pub mod admin;
pub mod client;
pub mod config;
pub mod demo;
#[doc(hidden)]
pub mod fuzzing;
pub mod k8s;
pub mod masque;
pub mod metrics;
pub mod pki;
pub mod policy;
pub mod proxy;
pub mod server;
pub mod source;
pub mod sync;
pub mod tls;
