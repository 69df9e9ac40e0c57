//! `handshake`: new connections per second. C tasks each loop over: TCP connect, a full TLS 1.3
//! handshake (no resumption), one GET with `Connection: close`, the whole response, close.
//! `--plain` runs the same loop without TLS, as the baseline.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use tokio::io::AsyncWriteExt;
use tokio::task::JoinSet;

use crate::stats::{Errors, Latencies};
use crate::tls::Tls;
use crate::{http, net};

/// The command line of `handshake`.
#[derive(clap::Args)]
pub struct Args {
    /// Server address, HOST:PORT
    #[arg(long)]
    addr: String,
    /// Concurrent connect loops
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    connections: u32,
    /// Seconds to run
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    duration: u64,
    /// Host header, and TLS server name (SNI)
    #[arg(long, default_value = "localhost")]
    host: String,
    /// Path of the GET sent on each connection
    #[arg(long, default_value = "/status/200")]
    path: String,
    /// Plain TCP instead of TLS (the baseline)
    #[arg(long)]
    plain: bool,
}

/// After the duration, in-flight connections may take this long before they count as errors.
const GRACE: Duration = Duration::from_secs(10);
/// The hard deadline is the duration plus this.
const HARD_EXTRA: Duration = Duration::from_secs(60);

/// The JSON line.
#[derive(serde::Serialize)]
struct Output {
    mode: &'static str,
    connections: usize,
    seconds: f64,
    conns_per_sec: f64,
    p50_us: u64,
    p99_us: u64,
    errors: u64,
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    let addr = net::resolve(&args.addr)?;
    let tls = if args.plain { None } else { Some(Tls::new(&args.host)?) };
    let request: Arc<[u8]> = http::request(&args.path, &args.host, false).into();
    let duration = Duration::from_secs(args.duration);
    let rt = crate::runtime()?;
    let (latencies, errors, seconds) = rt
        .block_on(async {
            tokio::time::timeout(duration + HARD_EXTRA, measure(addr, tls, request, args.connections, duration)).await
        })
        .map_err(|_| anyhow!("handshake: hard deadline: not done within {}s", (duration + HARD_EXTRA).as_secs()))?;
    errors.report("handshake");
    let completed = latencies.len();
    let Some((p50_us, p99_us)) = latencies.p50_p99_us() else {
        bail!("handshake: no connection completed ({} errors; first: {})", errors.count, errors.summary());
    };
    crate::print_json(&Output {
        mode: "handshake",
        connections: completed,
        seconds: crate::round(seconds, 3),
        conns_per_sec: crate::round(completed as f64 / seconds, 1),
        p50_us,
        p99_us,
        errors: errors.count,
    })
}

/// Runs the C loops until the duration is over and returns their latencies, errors and the
/// wall time from the start until the last loop ended.
async fn measure(
    addr: SocketAddr,
    tls: Option<Tls>,
    request: Arc<[u8]>,
    loops: u32,
    duration: Duration,
) -> (Latencies, Errors, f64) {
    let start = Instant::now();
    let end = start + duration;
    let mut tasks = JoinSet::new();
    for i in 0..loops {
        tasks.spawn(connect_loop(addr, tls.clone(), request.clone(), end, i == 0));
    }
    let (mut latencies, mut errors) = (Latencies::default(), Errors::default());
    while let Some(done) = tasks.join_next().await {
        match done {
            Ok((l, e)) => {
                latencies.merge(l);
                errors.merge(e);
            }
            Err(e) => errors.record(&anyhow!("a connect loop failed: {e}")),
        }
    }
    (latencies, errors, start.elapsed().as_secs_f64())
}

/// One loop: a new connection after another until `end`. An error counts and the loop goes
/// on; a connection still unfinished `GRACE` after `end` counts as an error and ends it.
async fn connect_loop(
    addr: SocketAddr,
    tls: Option<Tls>,
    request: Arc<[u8]>,
    end: Instant,
    describe: bool,
) -> (Latencies, Errors) {
    let mut latencies = Latencies::with_capacity(4096);
    let mut errors = Errors::default();
    let hard_stop = tokio::time::sleep_until((end + GRACE).into());
    tokio::pin!(hard_stop);
    let mut describe = describe && tls.is_some();
    while Instant::now() < end {
        let t0 = Instant::now();
        let one = one_connection(addr, tls.as_ref(), &request, t0, &mut describe);
        tokio::select! {
            biased;
            r = one => match r {
                Ok(d) => latencies.record(d),
                Err(e) => errors.record(&e),
            },
            () = &mut hard_stop => {
                errors.record(&anyhow!("a connection was not done {GRACE:?} after the end"));
                break;
            }
        }
    }
    (latencies, errors)
}

/// One connection; returns the time from `t0` (before the connect) until the response was
/// read. The close (TLS close_notify, FIN) is not part of it.
async fn one_connection(
    addr: SocketAddr,
    tls: Option<&Tls>,
    request: &[u8],
    t0: Instant,
    describe: &mut bool,
) -> anyhow::Result<Duration> {
    let mut tcp = net::connect(addr).await?;
    match tls {
        None => {
            http::exchange(&mut tcp, request).await?;
            let took = t0.elapsed();
            let _ = tcp.shutdown().await;
            Ok(took)
        }
        Some(tls) => {
            let mut s = tls.connector.connect(tls.name.clone(), tcp).await.context("TLS handshake")?;
            http::exchange(&mut s, request).await?;
            let took = t0.elapsed();
            if std::mem::take(describe) {
                eprintln!("handshake: TLS: {}", crate::tls::describe(s.get_ref().1));
            }
            let _ = s.shutdown().await;
            Ok(took)
        }
    }
}
