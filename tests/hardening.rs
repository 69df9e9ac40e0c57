//! Hardening: the proxy under attack. Raw HTTP/1.1 over TCP and TLS, raw HTTP/2 frames,
//! HTTP/3 over quinn, and `openssl s_client`. Every attack asserts that the server ends it
//! within a bound, that memory stays bounded (the RSS-sensitive tests take
//! `support::SERIAL`), and that a normal client is served during and after it.

// Test code measures wall time and may lock as it likes: the clippy.toml rules are for src/.
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]

mod common;

#[path = "hardening/h1_attacks.rs"]
mod h1_attacks;
#[path = "hardening/h2_attacks.rs"]
mod h2_attacks;
#[path = "hardening/h2raw.rs"]
mod h2raw;
#[path = "hardening/h3_idle.rs"]
mod h3_idle;
#[path = "hardening/support.rs"]
mod support;
#[path = "hardening/tls_policy.rs"]
mod tls_policy;
