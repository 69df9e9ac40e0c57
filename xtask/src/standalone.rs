//! A standalone Portcullis under test: the release binary's demo upstream and `serve` with a
//! generated config on free loopback ports, killed when dropped. Used by the conformance
//! checks (`h2spec`, `h3check`) that drive the real binary from outside.

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _};

use crate::util;

/// How long the proxy and the upstream get to become ready.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// The two processes and the scratch directory holding their config and logs.
pub(crate) struct Standalone {
    /// Config, logs, and whatever the check writes; the caller removes it on success.
    pub(crate) dir: PathBuf,
    _children: Children,
}

impl Standalone {
    /// Starts the demo upstream (named `upstream_name`, when given) on `ports[0]` and
    /// `serve` with `address`, `http_redirect_address`, `admin_address` and
    /// `metrics_address` on `ports[1..]`, followed by `body` (settings and routes), and waits
    /// until both are ready.
    pub(crate) fn start(
        check: &str,
        portcullis: &Path,
        ports: [u16; 5],
        body: &str,
        upstream_name: Option<&str>,
    ) -> anyhow::Result<Self> {
        let [upstream, https, redirect, admin, metrics] = ports;
        let dir = std::env::temp_dir().join(format!("portcullis-{check}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let config = dir.join("portcullis.yaml");
        let yaml = format!(
            "address: \"127.0.0.1:{https}\"\nhttp_redirect_address: \"127.0.0.1:{redirect}\"\n\
             admin_address: \"127.0.0.1:{admin}\"\nmetrics_address: \"127.0.0.1:{metrics}\"\n{body}"
        );
        std::fs::write(&config, yaml).with_context(|| format!("writing {}", config.display()))?;

        let mut children = Children(Vec::new());
        let upstream_addr = format!("127.0.0.1:{upstream}");
        let mut args = vec!["demo-upstream", "--listen", &upstream_addr];
        if let Some(name) = upstream_name {
            args.extend(["--name", name]);
        }
        children.spawn(portcullis, &args, &dir.join("upstream.log"))?;
        children.spawn(portcullis, &["serve", "--config", &config.to_string_lossy()], &dir.join("portcullis.log"))?;
        wait_ready(&mut children, upstream, admin).with_context(|| format!("logs in {}", dir.display()))?;
        Ok(Self { dir, _children: children })
    }
}

/// `N` different free loopback ports (two quick binds can return the same one).
pub(crate) fn distinct_free_ports<const N: usize>() -> anyhow::Result<[u16; N]> {
    let mut ports = Vec::with_capacity(N);
    while ports.len() < N {
        let port = util::free_port()?;
        if !ports.contains(&port) {
            ports.push(port);
        }
    }
    Ok(ports.try_into().expect("N ports were collected"))
}

/// Child processes killed when dropped, so nothing outlives the run, whatever fails.
struct Children(Vec<Child>);

impl Children {
    /// Starts `program args`, with stdout and stderr appended to `log`.
    fn spawn(&mut self, program: &Path, args: &[&str], log: &Path) -> anyhow::Result<()> {
        let out = std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let child = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("starting {} {}", program.display(), args.join(" ")))?;
        self.0.push(child);
        Ok(())
    }

    /// Fails if a child has already exited (a bad config, a port taken meanwhile).
    fn check_running(&mut self) -> anyhow::Result<()> {
        for child in &mut self.0 {
            if let Some(status) = child.try_wait()? {
                bail!("a portcullis process exited early ({status})");
            }
        }
        Ok(())
    }
}

impl Drop for Children {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Polls until the upstream accepts connections and the admin `/readyz` answers 200.
fn wait_ready(children: &mut Children, upstream: u16, admin: u16) -> anyhow::Result<()> {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        children.check_running()?;
        if TcpStream::connect(("127.0.0.1", upstream)).is_ok() && readyz(admin).unwrap_or(false) {
            return Ok(());
        }
        ensure!(Instant::now() < deadline, "not ready after {READY_TIMEOUT:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One plain HTTP/1.1 `GET /readyz`; true on a 200.
fn readyz(port: u16) -> std::io::Result<bool> {
    Ok(http_get(port, "/readyz")?.starts_with("HTTP/1.1 200"))
}

/// One plain HTTP/1.1 `GET path` to 127.0.0.1:`port`: the whole response, head and body.
pub(crate) fn http_get(port: u16, path: &str) -> std::io::Result<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    stream.write_all(format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").as_bytes())?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    Ok(response)
}
