//! HTTP/3 from an independent client: runs `xtask/h3client.py` (Python's aioquic) against the
//! QUIC listener.
//!
//! `cargo xtask h3check` installs aioquic at a pinned version into a venv under `target/tools/`,
//! starts the release binary twice (the demo upstream and `serve` with a generated
//! `codec_type: http3` config on free loopback ports), waits for `/readyz`, and runs the client:
//! a JSON answer with `x-forwarded-proto: https`, a 404 for an unknown host, a 2 MiB upload echoed
//! back, a 3 MiB download, 20 concurrent requests on one connection and ALPN `h3`. It fails unless
//! every check passes. The last line printed is the client's summary `h3check: N passed, N failed`.

use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, ensure, Context as _};

use crate::standalone::{distinct_free_ports, Standalone};
use crate::util;

/// The aioquic release pip installs. To move it: `pip index versions aioquic` shows the newest.
const AIOQUIC_VERSION: &str = "1.7.2";
/// The demo upstream's `--name`, which the client expects in its JSON answer.
const UPSTREAM_NAME: &str = "h3check-upstream";
/// How often to draw new ports when the https port is taken on UDP.
const PORT_ATTEMPTS: usize = 20;

pub fn run() -> anyhow::Result<()> {
    let python = install_aioquic()?;
    let portcullis = util::release_binary()?;

    let ports = ports()?;
    let https = ports[1];
    // No certificates: the proxy makes a self-signed one (the client does not verify it). The
    // QUIC listener binds UDP on the port of `address`.
    let body =
        format!("codec_type: http3\nroutes:\n  - from: https://a.test\n    to: [http://127.0.0.1:{}]\n", ports[0]);
    // Config and logs live in `served.dir`; removed on success, kept on failure.
    let served = Standalone::start("h3check", &portcullis, ports, &body, Some(UPSTREAM_NAME))?;
    let dir = served.dir.clone();

    let script = util::root().join("xtask/h3client.py");
    eprintln!("\n==> h3check: aioquic {AIOQUIC_VERSION} against https://127.0.0.1:{https} over QUIC");
    // -u: unbuffered, so its lines arrive as the checks finish.
    let status = Command::new(&python)
        .arg("-u")
        .arg(&script)
        .args([&https.to_string(), "--upstream", UPSTREAM_NAME])
        .stdin(Stdio::null())
        .status()
        .with_context(|| format!("running {} {}", python.display(), script.display()))?;
    drop(served);

    if !status.success() {
        bail!("h3check failed ({status}); config and logs in {}", dir.display());
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// Free loopback ports for the upstream, https (TCP and UDP), redirect, admin and metrics.
fn ports() -> anyhow::Result<[u16; 5]> {
    for _ in 0..PORT_ATTEMPTS {
        let ports = distinct_free_ports()?;
        if UdpSocket::bind(("127.0.0.1", ports[1])).is_ok() {
            return Ok(ports);
        }
    }
    bail!("no free loopback port for both TCP and UDP after {PORT_ATTEMPTS} attempts")
}

/// Creates a venv with aioquic at `target/tools/aioquic-venv/` unless one with the pinned
/// version is already there, and returns its python. The venv is built in a scratch directory
/// renamed into place at the end, so an interrupted install is never mistaken for a cached one
/// (the venv's python finds its packages relative to itself, so it works after the rename).
fn install_aioquic() -> anyhow::Result<PathBuf> {
    let tools = util::root().join("target/tools");
    let dir = tools.join("aioquic-venv");
    let python = dir.join("bin/python");
    if has_aioquic(&python) {
        return Ok(python);
    }
    if dir.exists() {
        // A venv from another pin (or a broken one): start over.
        eprintln!("\n==> {} lacks aioquic {AIOQUIC_VERSION}; recreating it", dir.display());
        std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    let scratch = tools.join(format!("aioquic-venv.{}.tmp", std::process::id()));
    std::fs::create_dir_all(&tools).with_context(|| format!("creating {}", tools.display()))?;
    let _ = std::fs::remove_dir_all(&scratch);

    eprintln!("\n==> install aioquic: python3 -m venv {} && pip install aioquic=={AIOQUIC_VERSION}", dir.display());
    let status = Command::new("python3")
        .args(["-m", "venv"])
        .arg(&scratch)
        .status()
        .context("running `python3` (Python 3 with venv is needed for the HTTP/3 check)")?;
    ensure!(status.success(), "python3 -m venv {} failed ({status})", scratch.display());
    let package = format!("aioquic=={AIOQUIC_VERSION}");
    let status = Command::new(scratch.join("bin/python"))
        .args(["-m", "pip", "install", "--disable-pip-version-check", "--no-input", &package])
        .status()
        .context("running pip")?;
    ensure!(status.success(), "pip install {package} failed ({status}); the partial venv is {}", scratch.display());
    // Another run may have finished first; its venv is the same one.
    if std::fs::rename(&scratch, &dir).is_err() && has_aioquic(&python) {
        let _ = std::fs::remove_dir_all(&scratch);
    }
    ensure!(has_aioquic(&python), "{} cannot import aioquic {AIOQUIC_VERSION} after pip install", python.display());
    Ok(python)
}

/// True if `python` runs and imports aioquic's HTTP/3 client at the pinned version.
fn has_aioquic(python: &Path) -> bool {
    let probe = format!(
        "import aioquic.asyncio.client, aioquic.h3.connection, importlib.metadata as m; \
         raise SystemExit(m.version('aioquic') != '{AIOQUIC_VERSION}')"
    );
    Command::new(python)
        .args(["-c", &probe])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}
