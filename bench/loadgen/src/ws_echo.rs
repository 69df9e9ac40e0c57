//! `ws-echo`: N WebSocket connections, each a closed loop of one text message and its echo,
//! all started together once every connection is open. Reports round trips per second and
//! their p50/p99.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tokio_tungstenite::WebSocketStream;

use crate::net;
use crate::stats::{Errors, Latencies};
use crate::tls::Tls;

/// The command line of `ws-echo`.
#[derive(clap::Args)]
pub struct Args {
    /// Server address, HOST:PORT
    #[arg(long)]
    addr: String,
    /// Path of the WebSocket endpoint
    #[arg(long, default_value = "/ws")]
    path: String,
    /// WebSocket connections, each its own closed loop
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    connections: u32,
    /// Seconds of measured loop (after every connection is open)
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    duration: u64,
    /// Bytes per text message
    #[arg(long, default_value_t = 64)]
    message_size: usize,
    /// wss:// (TLS 1.3, ALPN http/1.1) instead of ws://
    #[arg(long)]
    tls: bool,
    /// Host header, and TLS server name (SNI)
    #[arg(long, default_value = "localhost")]
    host: String,
}

/// Connections being opened at the same time, at most.
const CONNECT_CONCURRENCY: usize = 64;
/// One connection's connect and upgrade, before the run fails.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// After the duration, an echo still missing this long ends its connection as an error.
const GRACE: Duration = Duration::from_secs(10);
/// The hard deadline is the duration plus this (connecting included).
const HARD_EXTRA: Duration = Duration::from_secs(60);

/// The JSON line.
#[derive(serde::Serialize)]
struct Output {
    mode: &'static str,
    connections: u32,
    messages: usize,
    seconds: f64,
    msgs_per_sec: f64,
    p50_us: u64,
    p99_us: u64,
    errors: u64,
}

/// What one connection's loop measured.
struct LoopResult {
    latencies: Latencies,
    errors: Errors,
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    let addr = net::resolve(&args.addr)?;
    let tls = args.tls.then(|| Tls::new(&args.host)).transpose()?;
    let scheme = if args.tls { "wss" } else { "ws" };
    // Parsed once here, so a bad --host or --path fails before connecting.
    let url = format!("{scheme}://{}{}", args.host, args.path);
    url.as_str()
        .into_client_request()
        .with_context(|| format!("bad WebSocket URL {url:?} (from --host and --path)"))?;
    let duration = Duration::from_secs(args.duration);
    let rt = crate::runtime()?;
    let (latencies, errors, seconds) = rt
        .block_on(async { tokio::time::timeout(duration + HARD_EXTRA, measure(addr, tls, url, args, duration)).await })
        .map_err(|_| anyhow!("ws-echo: hard deadline: not done within {}s", (duration + HARD_EXTRA).as_secs()))??;
    errors.report("ws-echo");
    let messages = latencies.len();
    let Some((p50_us, p99_us)) = latencies.p50_p99_us() else {
        bail!("ws-echo: no round trip completed ({} errors; first: {})", errors.count, errors.summary());
    };
    crate::print_json(&Output {
        mode: "ws-echo",
        connections: args.connections,
        messages,
        seconds: crate::round(seconds, 3),
        msgs_per_sec: crate::round(messages as f64 / seconds, 1),
        p50_us,
        p99_us,
        errors: errors.count,
    })
}

/// Opens every connection (any failure fails the run: the load would not be the one asked
/// for), starts all loops at once, and returns the latencies, errors and the loop phase's
/// wall time (from the start signal until the last loop ended; closing is not part of it).
async fn measure(
    addr: SocketAddr,
    tls: Option<Tls>,
    url: String,
    args: &Args,
    duration: Duration,
) -> anyhow::Result<(Latencies, Errors, f64)> {
    let n = args.connections as usize;
    let connecting = std::sync::Arc::new(Semaphore::new(CONNECT_CONCURRENCY));
    let (ready_tx, mut ready_rx) = mpsc::channel::<anyhow::Result<()>>(n);
    let (done_tx, mut done_rx) = mpsc::channel::<LoopResult>(n);
    let (go_tx, go_rx) = watch::channel::<Option<Instant>>(None);
    let mut tasks = JoinSet::new();
    let connect_start = Instant::now();
    for _ in 0..n {
        let (tls, url, connecting) = (tls.clone(), url.clone(), connecting.clone());
        let (ready, done, go) = (ready_tx.clone(), done_tx.clone(), go_rx.clone());
        let size = args.message_size;
        tasks.spawn(async move {
            let opening = async {
                let _permit = connecting.acquire().await.context("connect limiter closed")?;
                tokio::time::timeout(CONNECT_TIMEOUT, open(addr, tls, &url))
                    .await
                    .unwrap_or_else(|_| Err(anyhow!("not open within {CONNECT_TIMEOUT:?}")))
            };
            match opening.await {
                Ok(Ws::Plain(ws)) => drive(*ws, size, ready, go, done).await,
                Ok(Ws::Tls(ws)) => drive(*ws, size, ready, go, done).await,
                Err(e) => {
                    let _ = ready.send(Err(e)).await;
                }
            }
        });
    }
    drop((ready_tx, done_tx));
    for opened in 0..n {
        let r = ready_rx.recv().await.context("a connection task ended without reporting")?;
        r.with_context(|| format!("ws-echo: opening connection {} of {n} ({opened} open)", opened + 1))?;
    }
    eprintln!(
        "ws-echo: {n} connections open in {:.0} ms; running {}s",
        connect_start.elapsed().as_secs_f64() * 1e3,
        duration.as_secs()
    );

    let start = Instant::now();
    go_tx.send(Some(start + duration)).context("the connection tasks are gone")?;
    let (mut latencies, mut errors) = (Latencies::default(), Errors::default());
    for _ in 0..n {
        let r = done_rx.recv().await.context("a connection task ended without reporting")?;
        latencies.merge(r.latencies);
        errors.merge(r.errors);
    }
    let seconds = start.elapsed().as_secs_f64();
    // The loops are done; let the connections close (bounded by the hard deadline).
    while tasks.join_next().await.is_some() {}
    Ok((latencies, errors, seconds))
}

/// An open WebSocket over TCP or TLS, boxed: it only passes from `open` to `drive`.
enum Ws {
    Plain(Box<WebSocketStream<tokio::net::TcpStream>>),
    Tls(Box<WebSocketStream<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>>),
}

/// Connect, (TLS handshake,) WebSocket upgrade. The Host header comes from `url`, the
/// address from --addr.
async fn open(addr: SocketAddr, tls: Option<Tls>, url: &str) -> anyhow::Result<Ws> {
    let tcp = net::connect(addr).await?;
    let request = url.into_client_request()?;
    match tls {
        None => {
            let (ws, _) = tokio_tungstenite::client_async(request, tcp).await.context("WebSocket upgrade")?;
            Ok(Ws::Plain(Box::new(ws)))
        }
        Some(tls) => {
            let s = tls.connector.connect(tls.name.clone(), tcp).await.context("TLS handshake")?;
            let (ws, _) = tokio_tungstenite::client_async(request, s).await.context("WebSocket upgrade")?;
            Ok(Ws::Tls(Box::new(ws)))
        }
    }
}

/// Reports the connection ready, waits for the start, runs the closed loop until the end
/// instant, reports what it measured, then closes the connection.
async fn drive<S: AsyncRead + AsyncWrite + Unpin>(
    mut ws: WebSocketStream<S>,
    size: usize,
    ready: mpsc::Sender<anyhow::Result<()>>,
    mut go: watch::Receiver<Option<Instant>>,
    done: mpsc::Sender<LoopResult>,
) {
    if ready.send(Ok(())).await.is_err() {
        return;
    }
    drop(ready);
    let Ok(Some(end)) = go.wait_for(Option::is_some).await.map(|end| *end) else { return };
    let mut latencies = Latencies::with_capacity(16 * 1024);
    let mut errors = Errors::default();
    let hard_stop = tokio::time::sleep_until((end + GRACE).into());
    tokio::pin!(hard_stop);
    let mut payload = vec![b'x'; size];
    let mut seq = 0u64;
    while Instant::now() < end {
        seq += 1;
        stamp(&mut payload, seq);
        let sent = Utf8Bytes::from(String::from_utf8(payload.clone()).expect("ASCII"));
        let t0 = Instant::now();
        tokio::select! {
            biased;
            r = round_trip(&mut ws, sent) => match r {
                Ok(()) => latencies.record(t0.elapsed()),
                // A wrong echo counts; the connection is still usable.
                Err(RoundTrip::Mismatch) => errors.record(&anyhow!("the echo differed from the message")),
                Err(RoundTrip::Failed(e)) => {
                    errors.record(&e);
                    break;
                }
            },
            () = &mut hard_stop => {
                errors.record(&anyhow!("no echo {GRACE:?} after the end"));
                break;
            }
        }
    }
    let _ = done.send(LoopResult { latencies, errors }).await;
    // A polite close; the demo upstream answers it by closing the connection.
    let close = async {
        ws.close(None).await?;
        while ws.next().await.transpose()?.is_some() {}
        anyhow::Ok(())
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), close).await;
}

/// Puts the sequence number in hex at the start of the message, so a stale or misrouted echo
/// cannot pass for the right one.
fn stamp(payload: &mut [u8], seq: u64) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let digits = payload.len().min(16);
    for (i, b) in payload[..digits].iter_mut().enumerate() {
        let shift = 4 * (digits - 1 - i);
        *b = HEX[((seq >> shift) & 0xf) as usize];
    }
}

/// Why a round trip did not count.
enum RoundTrip {
    Mismatch,
    Failed(anyhow::Error),
}

/// Sends `sent` and waits for the next data message, which must be equal; pings and pongs in
/// between are skipped (tungstenite answers pings itself).
async fn round_trip<S: AsyncRead + AsyncWrite + Unpin>(
    ws: &mut WebSocketStream<S>,
    sent: Utf8Bytes,
) -> Result<(), RoundTrip> {
    ws.send(Message::Text(sent.clone())).await.map_err(|e| RoundTrip::Failed(anyhow!("sending: {e}")))?;
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(got))) => return if got == sent { Ok(()) } else { Err(RoundTrip::Mismatch) },
            Some(Ok(Message::Binary(_))) => return Err(RoundTrip::Mismatch),
            Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
            Some(Ok(Message::Close(frame))) => {
                return Err(RoundTrip::Failed(anyhow!("the server closed the WebSocket: {frame:?}")))
            }
            Some(Err(e)) => return Err(RoundTrip::Failed(anyhow!("receiving: {e}"))),
            None => return Err(RoundTrip::Failed(anyhow!("the connection closed"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_sequence_numbers() {
        let mut p = vec![b'x'; 20];
        stamp(&mut p, 0xabc);
        assert_eq!(&p, b"0000000000000abcxxxx");
        let mut p = vec![b'x'; 3];
        stamp(&mut p, 0x1234);
        assert_eq!(&p, b"234");
        stamp(&mut [], 1);
    }
}
