//! Small helpers for running commands with visible progress.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context as _};

/// The workspace root (xtask lives one level below it).
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask is inside the workspace").to_path_buf()
}

/// Runs a command from the workspace root and fails if it fails.
pub fn step(name: &str, argv: &[&str]) -> anyhow::Result<()> {
    eprintln!("\n==> {name}: {}", argv.join(" "));
    let status = Command::new(argv[0])
        .args(&argv[1..])
        .current_dir(root())
        .status()
        .with_context(|| format!("running {}", argv[0]))?;
    if !status.success() {
        bail!("{name} failed ({status})");
    }
    Ok(())
}

/// Builds the portcullis binary in release mode and returns its path.
pub fn release_binary() -> anyhow::Result<PathBuf> {
    step("build portcullis (release)", &["cargo", "build", "--release", "--package", "portcullis"])?;
    Ok(root().join("target/release/portcullis"))
}

/// A free TCP port on 127.0.0.1 (bound and released; fine for tests on one machine).
pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}
