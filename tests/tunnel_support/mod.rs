//! Real programs for the tunnel tests (issue 17): Debian's OpenSSH server and client,
//! dnsmasq and dig, curl, each installed with apt-get when missing and started on loopback
//! with ephemeral ports, stopped when dropped; and a TCP "bulk" server that sends a
//! pseudo-random stream while hashing what it receives, for byte-for-byte checks both ways.
//! Include it with `mod tunnel_support;`.
#![allow(dead_code, missing_docs)]
// Test code measures wall time and may lock as it likes: the clippy.toml rules are for src/.
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, Command};

/// The programs the tunnel tests drive: (binary, Debian package).
pub const SSHD: (&str, &str) = ("/usr/sbin/sshd", "openssh-server");
pub const SSH: (&str, &str) = ("/usr/bin/ssh", "openssh-client");
pub const SSH_KEYGEN: (&str, &str) = ("/usr/bin/ssh-keygen", "openssh-client");
pub const DNSMASQ: (&str, &str) = ("/usr/sbin/dnsmasq", "dnsmasq");
pub const DIG: (&str, &str) = ("/usr/bin/dig", "bind9-dnsutils");
pub const CURL: (&str, &str) = ("/usr/bin/curl", "curl");
pub const HAPROXY: (&str, &str) = ("/usr/sbin/haproxy", "haproxy");

/// Every program above, installed in one apt-get run when any is missing.
pub const ALL: &[(&str, &str)] = &[SSHD, SSH, SSH_KEYGEN, DNSMASQ, DIG, CURL, HAPROXY];

/// Installs the missing ones among `wanted` with apt-get (`apt-get update` first; root, as in
/// CI). One install at a time across processes (`flock` on a lock file), once per process; a
/// second process waiting on the lock finds the programs there and installs nothing.
pub fn ensure(wanted: &[(&str, &str)]) -> Result<(), String> {
    static DONE: OnceLock<Mutex<Vec<String>>> = OnceLock::new();
    let done = DONE.get_or_init(|| Mutex::new(Vec::new()));
    let mut done = done.lock().unwrap();
    let missing: Vec<&(&str, &str)> =
        wanted.iter().filter(|(bin, _)| !Path::new(bin).exists() && !done.iter().any(|d| d == bin)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    let bins: Vec<&str> = missing.iter().map(|(b, _)| *b).collect();
    let mut pkgs: Vec<&str> = missing.iter().map(|(_, p)| *p).collect();
    pkgs.dedup();
    eprintln!("tunnel tests: {} missing: installing {} with apt-get", bins.join(", "), pkgs.join(" "));
    let test = bins.iter().map(|b| format!("[ -x {b} ]")).collect::<Vec<_>>().join(" && ");
    // Debian's package scripts would start the daemons as services; the tests start their own.
    let script = format!(
        "{test} && exit 0; \
         printf '#!/bin/sh\\nexit 101\\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d; \
         apt-get update -q && apt-get install -y -q --no-install-recommends {pkgs}; rc=$?; \
         rm -f /usr/sbin/policy-rc.d; exit $rc",
        pkgs = pkgs.join(" ")
    );
    let log_path = std::env::temp_dir().join("portcullis-tunnel-programs-install.log");
    let log = std::fs::File::create(&log_path).map_err(|e| format!("{}: {e}", log_path.display()))?;
    let mut child = std::process::Command::new("flock")
        .args(["/tmp/portcullis-tunnel-programs-install.lock", "sh", "-c", &script])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdin(Stdio::null())
        .stdout(log.try_clone().map_err(|e| e.to_string())?)
        .stderr(log)
        .spawn()
        .map_err(|e| format!("running apt-get (flock): {e}"))?;
    let deadline = Instant::now() + Duration::from_secs(900);
    let status = loop {
        if let Some(s) = child.try_wait().map_err(|e| e.to_string())? {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("apt-get install {} did not finish in 15 min", pkgs.join(" ")));
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    if !status.success() || bins.iter().any(|b| !Path::new(b).exists()) {
        let out = std::fs::read_to_string(&log_path).unwrap_or_default();
        let tail: Vec<&str> = out.lines().rev().take(30).collect::<Vec<_>>().into_iter().rev().collect();
        return Err(format!(
            "apt-get install {} failed ({status}); {}:\n{}",
            pkgs.join(" "),
            log_path.display(),
            tail.join("\n")
        ));
    }
    done.extend(bins.iter().map(|b| (*b).to_owned()));
    Ok(())
}

/// [`ensure`], or the test fails with apt-get's reason.
pub fn require(wanted: &[(&str, &str)]) {
    ensure(wanted).unwrap_or_else(|e| panic!("{e}"));
}

/// A loopback port that was free a moment ago (for programs that cannot report the port
/// they bound, unlike our own listeners). The launchers retry on a collision.
pub fn free_tcp_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

pub fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The user the tests run as (root in CI).
pub fn whoami() -> String {
    std::env::var("USER").ok().filter(|u| !u.is_empty()).unwrap_or_else(|| {
        let out = std::process::Command::new("id").arg("-un").output().expect("id -un");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    })
}

/// A child process whose output is collected (for failure messages) and which is killed when
/// this is dropped.
pub struct Daemon {
    pub name: &'static str,
    child: Child,
    log: Arc<Mutex<Vec<String>>>,
}

impl Daemon {
    pub fn spawn(name: &'static str, cmd: &mut Command) -> std::io::Result<Self> {
        let mut child =
            cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).kill_on_drop(true).spawn()?;
        let log = Arc::new(Mutex::new(Vec::new()));
        for out in [
            child.stdout.take().map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Send + Unpin>),
            child.stderr.take().map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Send + Unpin>),
        ]
        .into_iter()
        .flatten()
        {
            let log = log.clone();
            tokio::spawn(async move {
                use tokio::io::AsyncBufReadExt as _;
                let mut lines = tokio::io::BufReader::new(out).lines();
                while let Ok(Some(l)) = lines.next_line().await {
                    let mut log = log.lock().unwrap();
                    if log.len() < 2000 {
                        log.push(l);
                    }
                }
            });
        }
        Ok(Self { name, child, log })
    }

    /// What the program printed so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }
}

/// Waits up to `limit` for `ready`, failing early if the daemon exits; `Err` with its log.
async fn wait_ready<F, Fut>(d: &mut Daemon, limit: Duration, mut ready: F) -> Result<(), String>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if ready().await {
            return Ok(());
        }
        if let Some(status) = d.exited() {
            tokio::time::sleep(Duration::from_millis(100)).await; // let the log readers catch up
            return Err(format!("{} exited ({status}):\n{}", d.name, d.log()));
        }
        if tokio::time::Instant::now() > deadline {
            return Err(format!("{} not ready within {limit:?}:\n{}", d.name, d.log()));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Runs a program to completion within `limit` (killed past it); status, stdout, stderr.
pub async fn run(cmd: &mut Command, limit: Duration) -> Result<(std::process::ExitStatus, String, String), String> {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("{cmd:?}: {e}"))?;
    match tokio::time::timeout(limit, child.wait_with_output()).await {
        Ok(Ok(out)) => Ok((
            out.status,
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )),
        Ok(Err(e)) => Err(format!("{cmd:?}: {e}")),
        Err(_) => Err(format!("{cmd:?} did not finish within {limit:?}")),
    }
}

// ---------------------------------------------------------------------------------------
// OpenSSH

/// An OpenSSH server on 127.0.0.1 with its own host key, accepting one client key (for the
/// user the tests run as; root logs in with the key only), no PAM, no password logins.
pub struct Sshd {
    pub addr: SocketAddr,
    pub user: String,
    /// The client's private key.
    pub client_key: PathBuf,
    pub dir: tempfile::TempDir,
    pub daemon: Daemon,
}

async fn keygen(path: &Path) {
    let (status, _, err) = run(
        Command::new(SSH_KEYGEN.0).args(["-q", "-t", "ed25519", "-N", "", "-C", "portcullis-test", "-f"]).arg(path),
        Duration::from_secs(20),
    )
    .await
    .unwrap();
    assert!(status.success(), "ssh-keygen failed: {err}");
}

impl Sshd {
    pub async fn start() -> Self {
        tokio::task::spawn_blocking(|| require(&[SSHD, SSH, SSH_KEYGEN])).await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let (host_key, client_key) = (dir.path().join("host_ed25519"), dir.path().join("client_ed25519"));
        keygen(&host_key).await;
        keygen(&client_key).await;
        let authorized = dir.path().join("authorized_keys");
        std::fs::copy(client_key.with_extension("pub"), &authorized).unwrap();
        // Debian's sshd refuses to start without its privilege separation directory, which
        // the package's service unit usually creates.
        if !Path::new("/run/sshd").exists() {
            let _ = std::fs::create_dir_all("/run/sshd");
        }
        let user = whoami();
        let mut last = String::new();
        for _ in 0..5 {
            let port = free_tcp_port();
            let addr = SocketAddr::from(([127, 0, 0, 1], port));
            let cfg = dir.path().join("sshd_config");
            std::fs::write(
                &cfg,
                format!(
                    "ListenAddress 127.0.0.1:{port}\n\
                     HostKey {host}\n\
                     PidFile {pid}\n\
                     AuthorizedKeysFile {authorized}\n\
                     AllowUsers {user}\n\
                     PermitRootLogin prohibit-password\n\
                     PubkeyAuthentication yes\n\
                     PasswordAuthentication no\n\
                     KbdInteractiveAuthentication no\n\
                     UsePAM no\n\
                     StrictModes no\n\
                     UseDNS no\n\
                     PrintMotd no\n\
                     PrintLastLog no\n\
                     LogLevel VERBOSE\n",
                    host = host_key.display(),
                    pid = dir.path().join("sshd.pid").display(),
                    authorized = authorized.display(),
                ),
            )
            .unwrap();
            let mut daemon =
                Daemon::spawn("sshd", Command::new(SSHD.0).arg("-D").arg("-e").arg("-f").arg(&cfg)).unwrap();
            // Ready when it greets with its version line.
            let ready = wait_ready(&mut daemon, Duration::from_secs(15), || async move {
                let Ok(Ok(mut s)) = tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(addr)).await else {
                    return false;
                };
                let mut buf = [0u8; 8];
                matches!(tokio::time::timeout(Duration::from_secs(2), s.read_exact(&mut buf)).await, Ok(Ok(_)))
                    && &buf == b"SSH-2.0-"
            })
            .await;
            match ready {
                Ok(()) => return Self { addr, user, client_key, dir, daemon },
                Err(e) => last = e,
            }
        }
        panic!("sshd did not start: {last}");
    }

    /// `ssh`'s arguments up to the destination: no config files, no known-hosts, the test's
    /// key only, never a prompt, and `proxy_command` (a `ProxyCommand`) when given.
    pub fn ssh_args(&self, proxy_command: Option<&str>) -> Vec<String> {
        let mut a: Vec<String> = ["-F", "/dev/null", "-i"].map(str::to_owned).to_vec();
        a.push(self.client_key.display().to_string());
        for o in [
            "StrictHostKeyChecking=no",
            "UserKnownHostsFile=/dev/null",
            "GlobalKnownHostsFile=/dev/null",
            "BatchMode=yes",
            "IdentitiesOnly=yes",
            "ConnectTimeout=10",
            "ServerAliveInterval=5",
            "LogLevel=ERROR",
        ] {
            a.push("-o".into());
            a.push(o.into());
        }
        if let Some(pc) = proxy_command {
            a.push("-o".into());
            a.push(format!("ProxyCommand={pc}"));
        }
        a
    }

    /// Runs `command` on the server through `ssh` (to `host` on `port`, reached with
    /// `proxy_command`, or this server's own address without one); status, stdout, stderr.
    pub async fn ssh(
        &self,
        proxy_command: Option<&str>,
        host: &str,
        port: u16,
        command: &str,
    ) -> Result<(std::process::ExitStatus, String, String), String> {
        let mut cmd = Command::new(SSH.0);
        cmd.args(self.ssh_args(proxy_command)).arg("-p").arg(port.to_string());
        cmd.arg(format!("{}@{host}", self.user)).arg(command);
        run(&mut cmd, Duration::from_secs(60)).await
    }
}

// ---------------------------------------------------------------------------------------
// dnsmasq and dig

/// The name dnsmasq answers, and its address.
pub const DNS_NAME: &str = "tunnel.test";
pub const DNS_ANSWER: &str = "10.9.8.7";

/// dnsmasq on 127.0.0.1 answering `tunnel.test` (and its subdomains) with 10.9.8.7 and
/// nothing else: no upstream servers, no hosts file, no config file.
pub struct Dnsmasq {
    pub addr: SocketAddr,
    pub daemon: Daemon,
    pub dir: tempfile::TempDir,
}

impl Dnsmasq {
    pub async fn start() -> Self {
        tokio::task::spawn_blocking(|| require(&[DNSMASQ, DIG])).await.unwrap();
        let user = whoami();
        let dir = tempfile::tempdir().unwrap();
        let mut last = String::new();
        for _ in 0..5 {
            let port = free_udp_port();
            let addr = SocketAddr::from(([127, 0, 0, 1], port));
            let mut daemon = Daemon::spawn(
                "dnsmasq",
                Command::new(DNSMASQ.0)
                    .args(["--no-daemon", "--no-resolv", "--no-hosts", "--no-poll"])
                    .args(["--conf-file=/dev/null", "--listen-address=127.0.0.1", "--bind-interfaces"])
                    .arg(format!("--port={port}"))
                    .arg(format!("--address=/{DNS_NAME}/{DNS_ANSWER}"))
                    .arg(format!("--pid-file={}", dir.path().join("dnsmasq.pid").display()))
                    // Stay the user that started it (dropping to `dnsmasq` needs that user).
                    .arg(format!("--user={user}"))
                    .arg("--log-queries"),
            )
            .unwrap();
            let ready = wait_ready(&mut daemon, Duration::from_secs(15), || async move {
                dig(addr, DNS_NAME).await.is_ok_and(|a| a.trim() == DNS_ANSWER)
            })
            .await;
            match ready {
                Ok(()) => return Self { addr, daemon, dir },
                Err(e) => last = e,
            }
        }
        panic!("dnsmasq did not start: {last}");
    }
}

/// `dig @addr -p port +short name A` (one try, two seconds); the answer lines.
pub async fn dig(addr: SocketAddr, name: &str) -> Result<String, String> {
    let (status, out, err) = run(
        Command::new(DIG.0).arg(format!("@{}", addr.ip())).args([
            "-p",
            &addr.port().to_string(),
            "+short",
            "+tries=1",
            "+time=2",
            "+notcp",
            name,
            "A",
        ]),
        Duration::from_secs(10),
    )
    .await?;
    if status.success() {
        Ok(out)
    } else {
        Err(format!("dig {status}: {out}{err}"))
    }
}

// ---------------------------------------------------------------------------------------
// Bulk server: a pseudo-random stream out, the SHA-256 of what came in

/// A deterministic pseudo-random byte stream (xorshift64*), the same for the same seed.
pub struct Noise(u64);

impl Noise {
    pub fn new(seed: u64) -> Self {
        Self(seed | 1)
    }

    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            let v = self.0.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

/// SHA-256 of `len` bytes of [`Noise`] from `seed`.
pub fn noise_sha256(seed: u64, len: u64) -> String {
    let mut n = Noise::new(seed);
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    let mut buf = vec![0u8; 64 * 1024];
    let mut left = len;
    while left > 0 {
        let take = left.min(buf.len() as u64) as usize;
        n.fill(&mut buf[..take]);
        ctx.update(&buf[..take]);
        left -= take as u64;
    }
    hex(ctx.finish().as_ref())
}

pub fn hex(b: &[u8]) -> String {
    b.iter().fold(String::with_capacity(b.len() * 2), |mut s, x| {
        use std::fmt::Write as _;
        let _ = write!(s, "{x:02x}");
        s
    })
}

/// What one connection to the [`Bulk`] server received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    pub bytes: u64,
    pub sha256: String,
}

/// A TCP server that, on every connection, sends `len` bytes of [`Noise`] from `seed` and then
/// closes its write side, while reading to the client's end of stream and hashing; each
/// connection's [`Received`] comes out of `received` once both directions are done.
pub struct Bulk {
    pub addr: SocketAddr,
    pub seed: u64,
    pub len: u64,
    pub received: tokio::sync::mpsc::UnboundedReceiver<Result<Received, String>>,
}

impl Bulk {
    pub async fn start(seed: u64, len: u64) -> Self {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let (tx, received) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                let tx = tx.clone();
                tokio::spawn(async move {
                    let _ = tx.send(serve_bulk(s, seed, len).await);
                });
            }
        });
        Self { addr, seed, len, received }
    }

    /// The next connection's [`Received`], waiting up to `limit`.
    pub async fn next(&mut self, limit: Duration) -> Result<Received, String> {
        tokio::time::timeout(limit, self.received.recv())
            .await
            .map_err(|_| format!("the bulk server saw no finished connection within {limit:?}"))?
            .ok_or_else(|| "bulk server gone".to_owned())?
    }
}

async fn serve_bulk(s: TcpStream, seed: u64, len: u64) -> Result<Received, String> {
    let (mut r, mut w) = s.into_split();
    let send = async move {
        send_noise(&mut w, seed, len).await.map_err(|e| format!("bulk server sending: {e}"))?;
        w.shutdown().await.map_err(|e| format!("bulk server shutdown: {e}"))
    };
    let recv = async move { hash_to_end(&mut r).await.map_err(|e| format!("bulk server reading: {e}")) };
    let (sent, got) = tokio::join!(send, recv);
    sent?;
    got
}

/// Writes `len` bytes of [`Noise`] from `seed`.
pub async fn send_noise<W: tokio::io::AsyncWrite + Unpin>(w: &mut W, seed: u64, len: u64) -> std::io::Result<()> {
    let mut n = Noise::new(seed);
    let mut buf = vec![0u8; 64 * 1024];
    let mut left = len;
    while left > 0 {
        let take = left.min(buf.len() as u64) as usize;
        n.fill(&mut buf[..take]);
        w.write_all(&buf[..take]).await?;
        left -= take as u64;
    }
    w.flush().await
}

/// Reads to end of stream; the byte count and SHA-256.
pub async fn hash_to_end<R: tokio::io::AsyncRead + Unpin>(r: &mut R) -> std::io::Result<Received> {
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    let mut buf = vec![0u8; 64 * 1024];
    let mut bytes = 0u64;
    loop {
        let n = r.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        ctx.update(&buf[..n]);
        bytes += n as u64;
    }
    Ok(Received { bytes, sha256: hex(ctx.finish().as_ref()) })
}

/// The client half of a bulk exchange on `io`: sends `len` bytes of [`Noise`] from `seed`
/// and closes its write side, while reading the server's stream to its end; what it read.
/// Both halves within `limit`.
pub async fn bulk_exchange<S>(io: S, seed: u64, len: u64, limit: Duration) -> Result<Received, String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send,
{
    let (mut r, mut w) = tokio::io::split(io);
    let send = async move {
        send_noise(&mut w, seed, len).await.map_err(|e| format!("client sending: {e}"))?;
        w.shutdown().await.map_err(|e| format!("client shutdown: {e}"))
    };
    let recv = async move { hash_to_end(&mut r).await.map_err(|e| format!("client reading: {e}")) };
    let (sent, got) = tokio::time::timeout(limit, async { tokio::join!(send, recv) })
        .await
        .map_err(|_| format!("the bulk exchange of {len} bytes each way did not finish within {limit:?}"))?;
    sent?;
    got
}
