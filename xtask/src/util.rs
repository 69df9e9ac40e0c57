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
    let started = std::time::Instant::now();
    let status = Command::new(argv[0])
        .args(&argv[1..])
        .current_dir(root())
        .status()
        .with_context(|| format!("running {}", argv[0]))?;
    // CI has a time budget; the per-step time shows where it goes.
    eprintln!(
        "==> {name}: {} after {:.0} s",
        if status.success() { "ok" } else { "failed" },
        started.elapsed().as_secs_f64()
    );
    if !status.success() {
        bail!("{name} failed ({status})");
    }
    Ok(())
}

/// Runs one part of the test command and says how long it took, as [`step`] does.
pub fn timed(name: &str, part: impl FnOnce() -> anyhow::Result<()>) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let result = part();
    eprintln!(
        "==> {name}: {} after {:.0} s",
        if result.is_ok() { "ok" } else { "failed" },
        started.elapsed().as_secs_f64()
    );
    result
}

/// Where cargo puts what it builds: `CARGO_TARGET_DIR` when set (the builds [`step`] starts
/// honour it, so the binaries are there and not in the workspace's `target/`; a relative one
/// is relative to the workspace root, where they run), else the workspace's `target/`.
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root().join("target"), |dir| root().join(dir))
}

/// A release binary already built for this run (see [`use_release_binary`]).
static RELEASE_BINARY: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();

/// Makes [`release_binary`] return `binary` from now on: `xtask test` checks the image's
/// static binary and has no need to build the same code again.
pub fn use_release_binary(binary: PathBuf) {
    let _ = RELEASE_BINARY.set(binary);
}

/// Builds the portcullis binary in release mode and returns its path (or the one
/// [`use_release_binary`] named).
pub fn release_binary() -> anyhow::Result<PathBuf> {
    if let Some(binary) = RELEASE_BINARY.get() {
        return Ok(binary.clone());
    }
    step("build portcullis (release)", &["cargo", "build", "--release", "--package", "portcullis"])?;
    Ok(target_dir().join("release/portcullis"))
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

/// Creates a venv with `package==version` at `target/tools/<name>/` unless one that imports
/// `modules` at that version is already there, and returns its python. The venv is built in a
/// scratch directory renamed into place at the end, so an interrupted install is never
/// mistaken for a cached one (a venv's python finds its packages relative to itself, so it
/// works after the rename).
pub fn python_venv(name: &str, package: &str, version: &str, modules: &str) -> anyhow::Result<PathBuf> {
    let tools = root().join("target/tools");
    let dir = tools.join(name);
    let python = dir.join("bin/python");
    let works = |python: &Path| {
        let probe = format!(
            "import {modules}, importlib.metadata as m; raise SystemExit(m.version('{package}') != '{version}')"
        );
        Command::new(python)
            .args(["-c", &probe])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if works(&python) {
        return Ok(python);
    }
    if dir.exists() {
        // A venv from another pin (or a broken one): start over.
        eprintln!("\n==> {} lacks {package} {version}; recreating it", dir.display());
        std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    let scratch = tools.join(format!("{name}.{}.tmp", std::process::id()));
    std::fs::create_dir_all(&tools).with_context(|| format!("creating {}", tools.display()))?;
    let _ = std::fs::remove_dir_all(&scratch);
    eprintln!("\n==> install {package}: python3 -m venv {} && pip install {package}=={version}", dir.display());
    let status = Command::new("python3")
        .args(["-m", "venv"])
        .arg(&scratch)
        .status()
        .context("running `python3` (Python 3 with venv is needed)")?;
    ensure!(status.success(), "python3 -m venv {} failed ({status})", scratch.display());
    let pinned = format!("{package}=={version}");
    let status = Command::new(scratch.join("bin/python"))
        .args(["-m", "pip", "install", "--disable-pip-version-check", "--no-input", &pinned])
        .status()
        .context("running pip")?;
    ensure!(status.success(), "pip install {pinned} failed ({status}); the partial venv is {}", scratch.display());
    // Another run may have finished first; its venv is the same one.
    if std::fs::rename(&scratch, &dir).is_err() && works(&python) {
        let _ = std::fs::remove_dir_all(&scratch);
    }
    ensure!(works(&python), "{} cannot import {modules} ({package} {version}) after pip install", python.display());
    Ok(python)
}
