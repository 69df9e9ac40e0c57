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
use std::path::PathBuf;
use std::process::{Command, Stdio};

use anyhow::{bail, Context as _};

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

/// A venv with aioquic at `target/tools/aioquic-venv/` (see `util::python_venv`).
fn install_aioquic() -> anyhow::Result<PathBuf> {
    util::python_venv("aioquic-venv", "aioquic", AIOQUIC_VERSION, "aioquic.asyncio.client, aioquic.h3.connection")
}
