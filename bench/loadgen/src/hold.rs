//! `hold`: opens N keep-alive connections, sends one GET on each, reads the response, and then
//! keeps them all open and idle until stdin closes. The harness measures the server's memory
//! while they are held; the JSON line says how many are open.

use std::io::BufRead;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use futures_util::StreamExt;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use crate::stats::Errors;
use crate::tls::Tls;
use crate::{http, net};

/// The command line of `hold`.
#[derive(clap::Args)]
pub struct Args {
    /// Server address, HOST:PORT
    #[arg(long)]
    addr: String,
    /// Connections to open and hold
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    connections: u32,
    /// TLS 1.3 (ALPN http/1.1) instead of plain TCP
    #[arg(long)]
    tls: bool,
    /// Host header, and TLS server name (SNI)
    #[arg(long, default_value = "localhost")]
    host: String,
    /// Path of the one GET sent on each connection
    #[arg(long, default_value = "/status/200")]
    path: String,
    /// Connections being opened at the same time, at most
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..))]
    concurrency: u32,
}

/// All connections must be open (or have failed) by then, or the run fails.
const OPEN_DEADLINE: Duration = Duration::from_secs(120);
/// One connection's connect, handshake and response, before it counts as failed.
const PER_CONNECTION: Duration = Duration::from_secs(30);
/// File descriptors besides the connections: stdio, the runtime's epoll and eventfd, and
/// whatever else the process has open.
const FD_HEADROOM: u64 = 64;

/// A held connection. The TLS stream is boxed: it is much larger than a socket.
enum Held {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl Held {
    fn tcp(&self) -> &TcpStream {
        match self {
            Held::Plain(s) => s,
            Held::Tls(s) => s.get_ref().0,
        }
    }

    /// Whether the server still has the connection open: no EOF or error is pending. A
    /// server that closes idle connections would make the memory figure meaningless, so this
    /// is reported before closing. (It reads under TLS, which is fine: the connection is
    /// closed next.)
    fn still_open(&self) -> bool {
        let mut byte = [0u8; 1];
        match self.tcp().try_read(&mut byte) {
            Ok(n) => n > 0,
            Err(e) => e.kind() == std::io::ErrorKind::WouldBlock,
        }
    }
}

/// The JSON line.
#[derive(serde::Serialize)]
struct Output {
    mode: &'static str,
    open: usize,
    failed: u64,
    seconds: f64,
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    let n = u64::from(args.connections);
    check_nofile(n)?;
    let addr = net::resolve(&args.addr)?;
    let tls = args.tls.then(|| Tls::new(&args.host)).transpose()?;
    let request = http::request(&args.path, &args.host, true);
    let rt = crate::runtime()?;

    let start = Instant::now();
    let (held, errors) = rt.block_on(open_all(addr, tls.as_ref(), &request, n, args.concurrency as usize))?;
    let seconds = start.elapsed().as_secs_f64();
    errors.report("hold");
    if held.is_empty() {
        bail!("hold: none of the {n} connections opened; first errors: {}", errors.summary());
    }
    crate::print_json(&Output {
        mode: "hold",
        open: held.len(),
        failed: errors.count,
        seconds: crate::round(seconds, 3),
    })?;

    // The connections need no attention while idle, so the thread simply blocks on stdin;
    // the kernel keeps the sockets.
    eprintln!("hold: holding {} connections; close stdin (or send a line) to close them", held.len());
    let mut line = String::new();
    if let Err(e) = std::io::stdin().lock().read_line(&mut line) {
        eprintln!("hold: reading stdin: {e}; closing");
    }
    let still_open = rt.block_on(async {
        // Lets the I/O driver take in the events (EOFs) that came while nothing polled it.
        tokio::time::sleep(Duration::from_millis(50)).await;
        held.iter().filter(|c| c.still_open()).count()
    });
    eprintln!("hold: {still_open} of {} connections were still open; closing them", held.len());
    let _runtime = rt.enter();
    drop(held);
    Ok(())
}

/// Opens the `n` connections, `concurrency` at a time; fails only on the overall deadline.
async fn open_all(
    addr: SocketAddr,
    tls: Option<&Tls>,
    request: &[u8],
    n: u64,
    concurrency: usize,
) -> anyhow::Result<(Vec<Held>, Errors)> {
    let deadline = tokio::time::Instant::now() + OPEN_DEADLINE;
    // Each opening future is boxed. A finished future's slot in `buffer_unordered` lives as
    // long as a waker that points at it, and the I/O driver can keep one in an idle socket's
    // registration; unboxed, that slot is the whole future (about 6 KB with TLS), which the
    // client would then keep per held connection.
    let mut pending = futures_util::stream::iter(0..n)
        .map(|_| {
            Box::pin(async move {
                tokio::time::timeout(PER_CONNECTION, open_one(addr, tls, request))
                    .await
                    .unwrap_or_else(|_| Err(anyhow!("not open within {PER_CONNECTION:?}")))
            })
        })
        .buffer_unordered(concurrency);
    let mut held = Vec::with_capacity(n as usize);
    let mut errors = Errors::default();
    let step = (n / 10).max(1);
    let mut done = 0u64;
    loop {
        let next = tokio::time::timeout_at(deadline, pending.next()).await.map_err(|_| {
            anyhow!(
                "hold: hard deadline: only {} of {n} connections open ({} failed) after {}s; first errors: {}",
                held.len(),
                errors.count,
                OPEN_DEADLINE.as_secs(),
                errors.summary()
            )
        })?;
        match next {
            None => break,
            Some(Ok(conn)) => {
                if let (true, Held::Tls(s)) = (held.is_empty(), &conn) {
                    eprintln!("hold: TLS: {}", crate::tls::describe(s.get_ref().1));
                }
                held.push(conn);
            }
            Some(Err(e)) => errors.record(&e),
        }
        done += 1;
        if done % step == 0 {
            eprintln!("hold: {done}/{n} done, {} open", held.len());
        }
    }
    Ok((held, errors))
}

/// One connection: connect, (TLS handshake,) one GET, its whole response.
async fn open_one(addr: SocketAddr, tls: Option<&Tls>, request: &[u8]) -> anyhow::Result<Held> {
    let mut tcp = net::connect(addr).await?;
    match tls {
        None => {
            http::exchange(&mut tcp, request).await?;
            Ok(Held::Plain(tcp))
        }
        Some(tls) => {
            let mut s = tls.connector.connect(tls.name.clone(), tcp).await.context("TLS handshake")?;
            http::exchange(&mut s, request).await?;
            Ok(Held::Tls(Box::new(s)))
        }
    }
}

/// Fails before opening anything if the process may not have `n` sockets open: running out
/// of descriptors half-way would look like server failures.
fn check_nofile(n: u64) -> anyhow::Result<()> {
    let limits = std::fs::read_to_string("/proc/self/limits").context("reading /proc/self/limits")?;
    let soft = soft_nofile(&limits)?;
    let need = n + FD_HEADROOM;
    if soft < need {
        bail!(
            "hold: the soft RLIMIT_NOFILE is {soft}, below the {need} that {n} connections need \
             ({n} + {FD_HEADROOM}); raise it first, e.g. `ulimit -n {need}`"
        );
    }
    Ok(())
}

/// The soft "Max open files" limit from the text of `/proc/self/limits` (`u64::MAX` for
/// unlimited).
fn soft_nofile(limits: &str) -> anyhow::Result<u64> {
    let line = limits
        .lines()
        .find_map(|l| l.strip_prefix("Max open files"))
        .context("no \"Max open files\" line in /proc/self/limits")?;
    let soft = line.split_whitespace().next().context("no soft limit on the \"Max open files\" line")?;
    if soft == "unlimited" {
        return Ok(u64::MAX);
    }
    soft.parse().with_context(|| format!("bad soft open-files limit {soft:?} in /proc/self/limits"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_limits() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units     \n\
                      Max cpu time              unlimited            unlimited            seconds   \n\
                      Max open files            1024                 1048576              files     \n\
                      Max locked memory         8388608              8388608              bytes     \n";
        assert_eq!(soft_nofile(limits).unwrap(), 1024);
        let unlimited = "Max open files            unlimited            unlimited            files     \n";
        assert_eq!(soft_nofile(unlimited).unwrap(), u64::MAX);
        assert!(soft_nofile("Max cpu time unlimited unlimited seconds\n").is_err());
        // The real file of this process parses.
        soft_nofile(&std::fs::read_to_string("/proc/self/limits").unwrap()).unwrap();
    }
}
