//! Test support for sign-in (issue 16): a real OpenID Provider (node's `oidc-provider`, see
//! `tests/oidc/provider.mjs`), a scripted user agent with a cookie jar, and a real headless
//! Chromium driven over W3C WebDriver. Include it with
//!
//! ```ignore
//! #[path = "signin_support/mod.rs"]
//! mod signin_support;
//! use signin_support::{Agent, Browser, OidcProvider, ProviderOptions, ALICE};
//! ```
//!
//! Everything talks to loopback only: the agent and the browser send `*.test` hosts to
//! 127.0.0.1 and refuse any other name.
#![allow(dead_code, unused_imports, missing_docs)]
// Test code measures wall time and may lock as it likes: the clippy.toml rules are for src/.
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]

pub mod agent;
pub mod browser;
pub mod html;
pub mod oidc;

pub use agent::{describe, Agent, Cookie, Hop};
pub use browser::Browser;
pub use html::{form_encode, forms, query_param, resolve, Form};
pub use oidc::{OidcProvider, ProviderOptions, User, ALICE, BOB, CLIENT_ID, CLIENT_SECRET};

use std::path::PathBuf;

/// The repository's root (where `target/tools` and `target/test-artifacts` live, whatever
/// `CARGO_TARGET_DIR` says, like the xtask tools). The end-to-end crate (`e2e/`) includes
/// this module too: its manifest directory is one level down.
pub fn repo_root() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    if dir.join("tests/signin_support").is_dir() {
        dir
    } else {
        dir.parent().map_or_else(|| dir.clone(), std::path::Path::to_path_buf)
    }
}

/// Runs `cmd` to completion within `limit`, killing it past that; its exit status.
pub(crate) fn run_with_timeout(
    cmd: &mut std::process::Command,
    limit: std::time::Duration,
) -> std::io::Result<std::process::ExitStatus> {
    let mut child = cmd.spawn()?;
    let deadline = std::time::Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("{cmd:?} did not finish within {limit:?}"),
            ));
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}
