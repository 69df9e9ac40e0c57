//! Small helpers for running commands with visible progress.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, ensure, Context as _};

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

/// Runs `go` with the installed toolchain and with its build and module caches in a scratch
/// directory under `target/tools`, removed when this is dropped.
///
/// Building kube-apiserver, etcd and Helm leaves about 6 GB in Go's default caches (~/.cache,
/// ~/go/pkg/mod), which is more than a CI machine may have free on top of the cargo builds; the
/// binaries are cached by `target/` paths, so Go's caches would only be read again after a
/// version bump.
pub struct Go {
    scratch: PathBuf,
}

impl Go {
    /// A fresh scratch directory, private to this process.
    pub fn new() -> Self {
        Self { scratch: root().join("target/tools").join(format!("go-scratch.{}", std::process::id())) }
    }

    /// `go` with the caches pointed at the scratch directory. `GOTOOLCHAIN=local` builds with
    /// the installed Go rather than downloading another toolchain; `-modcacherw` lets the module
    /// cache be deleted without a chmod pass.
    pub fn command(&self) -> Command {
        let mut command = Command::new("go");
        command
            .env("GOTOOLCHAIN", "local")
            .env("GOCACHE", self.scratch.join("build"))
            .env("GOMODCACHE", self.scratch.join("mod"))
            .env("GOFLAGS", "-modcacherw");
        command
    }
}

impl Drop for Go {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.scratch);
    }
}

/// A free TCP port on 127.0.0.1 (bound and released; fine for tests on one machine).
pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Named checks, reported as they run and counted at the end, for the checks that drive a
/// real tool or binary from outside (`chart`, `image`): every check runs even after one
/// fails, and the summary line is the `N passed, N failed` form CI reads.
pub struct Checks {
    /// The summary's label (`chart: 16 passed, 0 failed`).
    label: &'static str,
    passed: usize,
    failed: Vec<String>,
}

impl Checks {
    /// No checks run yet.
    pub fn new(label: &'static str) -> Self {
        Self { label, passed: 0, failed: Vec::new() }
    }

    /// Runs one check and returns its value if it passed.
    pub fn check<T>(&mut self, name: &str, f: impl FnOnce() -> anyhow::Result<T>) -> Option<T> {
        match f() {
            Ok(value) => {
                eprintln!("==> ok: {name}");
                self.passed += 1;
                Some(value)
            }
            Err(e) => {
                eprintln!("==> FAILED: {name}: {e:#}");
                self.failed.push(name.to_owned());
                None
            }
        }
    }

    /// Whether every check so far passed.
    pub fn all_passed(&self) -> bool {
        self.failed.is_empty()
    }

    /// Prints the summary line; an error naming the failed checks if any failed.
    pub fn finish(self) -> anyhow::Result<()> {
        println!("{}: {} passed, {} failed", self.label, self.passed, self.failed.len());
        ensure!(self.failed.is_empty(), "{} checks failed: {}", self.label, self.failed.join("; "));
        Ok(())
    }
}
