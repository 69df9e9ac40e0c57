//! The tunnel benchmark's parts (`cargo xtask bench --only tunnel`, issue 17):
//!
//! - `sink`: a TCP server (TLS with `--cert/--key`) speaking a tiny protocol per transfer: a
//!   9-byte header, `U` or `D` and a big-endian u64 N; `U`: it reads N bytes and answers one
//!   byte `K`; `D`: it writes N bytes. Prints `{"addr": ...}` once listening.
//! - `tcp-push`: one transfer of N bytes up (client to sink) or down, on a plain TCP
//!   connection, a TLS one, or a TLS one to a proxy with an HTTP/1.1 `CONNECT` first (the
//!   tunnel); the time counts from the first header byte to the last byte (the ack, for
//!   up), so connection setup is not in the figure.
//! - `udp-echo`: a UDP server answering each datagram with itself.
//! - `udp-rr`: a window of datagrams in flight to an echo server, a new one sent for every
//!   echo received; echoes per second over `--duration`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};

use crate::net;
use crate::tls::Tls;

/// Bytes per write and read.
const CHUNK: usize = 256 * 1024;

#[derive(clap::Args)]
pub struct SinkArgs {
    /// Address to listen on
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: String,
    /// PEM certificate (with --key: TLS)
    #[arg(long, requires = "key")]
    cert: Option<String>,
    /// PEM private key
    #[arg(long, requires = "cert")]
    key: Option<String>,
}

pub fn sink(args: &SinkArgs) -> anyhow::Result<()> {
    crate::runtime()?.block_on(async {
        let acceptor = match (&args.cert, &args.key) {
            (Some(c), Some(k)) => Some(acceptor(c, k)?),
            _ => None,
        };
        let l = TcpListener::bind(&args.listen).await.with_context(|| format!("binding {}", args.listen))?;
        crate::print_json(&serde_json::json!({ "addr": l.local_addr()?.to_string() }))?;
        loop {
            let (s, _) = l.accept().await?;
            let _ = s.set_nodelay(true);
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let r = match acceptor {
                    Some(a) => match a.accept(s).await {
                        Ok(tls) => serve(tls).await,
                        Err(e) => Err(e.into()),
                    },
                    None => serve(s).await,
                };
                if let Err(e) = r {
                    eprintln!("sink: connection: {e:#}");
                }
            });
        }
    })
}

fn acceptor(cert: &str, key: &str) -> anyhow::Result<tokio_rustls::TlsAcceptor> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .with_context(|| format!("reading {cert}"))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("parsing {cert}"))?;
    let key = PrivateKeyDer::from_pem_file(key).with_context(|| format!("reading {key}"))?;
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

async fn serve<S: AsyncRead + AsyncWrite + Unpin>(mut s: S) -> anyhow::Result<()> {
    let mut buf = vec![0x5au8; CHUNK];
    loop {
        let mut head = [0u8; 9];
        match s.read_exact(&mut head).await {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e.into()),
        }
        let n = u64::from_be_bytes(head[1..9].try_into()?);
        match head[0] {
            b'U' => {
                read_n(&mut s, &mut buf, n).await?;
                s.write_all(b"K").await?;
                s.flush().await?;
            }
            b'D' => {
                write_n(&mut s, &buf, n).await?;
                s.flush().await?;
            }
            other => bail!("unknown command byte {other}"),
        }
    }
}

async fn read_n<R: AsyncRead + Unpin>(r: &mut R, buf: &mut [u8], n: u64) -> anyhow::Result<()> {
    let mut left = n;
    while left > 0 {
        let want = left.min(buf.len() as u64) as usize;
        let got = r.read(&mut buf[..want]).await?;
        ensure!(got > 0, "end of stream with {left} of {n} bytes to come");
        left -= got as u64;
    }
    Ok(())
}

async fn write_n<W: AsyncWrite + Unpin>(w: &mut W, buf: &[u8], n: u64) -> anyhow::Result<()> {
    let mut left = n;
    while left > 0 {
        let take = left.min(buf.len() as u64) as usize;
        w.write_all(&buf[..take]).await?;
        left -= take as u64;
    }
    Ok(())
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Via {
    /// Plain TCP to the sink
    Plain,
    /// TLS to the server (a TLS sink, or a TLS-terminating TCP proxy)
    Tls,
    /// TLS to a proxy, then HTTP/1.1 CONNECT --authority
    Connect,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Direction {
    /// Client to sink
    Up,
    /// Sink to client
    Down,
}

#[derive(clap::Args)]
pub struct PushArgs {
    /// Server address, HOST:PORT
    #[arg(long)]
    addr: String,
    #[arg(long, value_enum)]
    via: Via,
    #[arg(long, value_enum)]
    direction: Direction,
    /// Bytes to move
    #[arg(long)]
    bytes: u64,
    /// TLS server name
    #[arg(long, default_value = "bench.local")]
    sni: String,
    /// The CONNECT target (with --via connect)
    #[arg(long, default_value = "sink.bench:9000")]
    authority: String,
    /// Give up after this many seconds
    #[arg(long, default_value_t = 120)]
    timeout: u64,
}

#[derive(serde::Serialize)]
struct PushOutput {
    mode: &'static str,
    bytes: u64,
    seconds: f64,
    mib_per_sec: f64,
}

trait Io: AsyncRead + AsyncWrite + Unpin {}
impl<T: AsyncRead + AsyncWrite + Unpin> Io for T {}

pub fn push(args: &PushArgs) -> anyhow::Result<()> {
    let addr = net::resolve(&args.addr)?;
    crate::runtime()?.block_on(async {
        tokio::time::timeout(Duration::from_secs(args.timeout), push_once(args, addr))
            .await
            .with_context(|| format!("the transfer did not finish within {} s", args.timeout))?
    })
}

async fn push_once(args: &PushArgs, addr: SocketAddr) -> anyhow::Result<()> {
    let tcp = net::connect(addr).await?;
    let mut io: Box<dyn Io> = match args.via {
        Via::Plain => Box::new(tcp),
        Via::Tls | Via::Connect => {
            let tls = Tls::new(&args.sni)?;
            Box::new(tls.connector.connect(tls.name.clone(), tcp).await.context("TLS handshake")?)
        }
    };
    if args.via == Via::Connect {
        let req = format!("CONNECT {a} HTTP/1.1\r\nHost: {a}\r\n\r\n", a = args.authority);
        io.write_all(req.as_bytes()).await?;
        io.flush().await?;
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            ensure!(head.len() < 16 * 1024, "CONNECT: response head too long");
            head.push(io.read_u8().await.context("CONNECT: reading the response")?);
        }
        let head = String::from_utf8_lossy(&head);
        ensure!(head.starts_with("HTTP/1.1 200"), "CONNECT {} refused: {}", args.authority, head.trim());
    }
    let mut buf = vec![0xa5u8; CHUNK];
    let mut header = [0u8; 9];
    header[0] = if args.direction == Direction::Up { b'U' } else { b'D' };
    header[1..].copy_from_slice(&args.bytes.to_be_bytes());
    let started = Instant::now();
    io.write_all(&header).await?;
    match args.direction {
        Direction::Up => {
            write_n(&mut io, &buf, args.bytes).await?;
            io.flush().await?;
            let ack = io.read_u8().await.context("waiting for the sink's ack")?;
            ensure!(ack == b'K', "bad ack {ack}");
        }
        Direction::Down => {
            io.flush().await?;
            read_n(&mut io, &mut buf, args.bytes).await?;
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let _ = io.shutdown().await;
    crate::print_json(&PushOutput {
        mode: "tcp-push",
        bytes: args.bytes,
        seconds: crate::round(seconds, 4),
        mib_per_sec: crate::round(args.bytes as f64 / 1_048_576.0 / seconds, 1),
    })
}

#[derive(clap::Args)]
pub struct UdpEchoArgs {
    /// Address to listen on
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: String,
}

pub fn udp_echo(args: &UdpEchoArgs) -> anyhow::Result<()> {
    crate::runtime()?.block_on(async {
        let s = UdpSocket::bind(&args.listen).await.with_context(|| format!("binding {}", args.listen))?;
        crate::print_json(&serde_json::json!({ "addr": s.local_addr()?.to_string() }))?;
        let mut buf = vec![0u8; 65_536];
        loop {
            let (n, from) = s.recv_from(&mut buf).await?;
            let _ = s.send_to(&buf[..n], from).await;
        }
    })
}

#[derive(clap::Args)]
pub struct UdpRrArgs {
    /// Echo server (or tunnel client) address, HOST:PORT
    #[arg(long)]
    addr: String,
    /// Datagrams in flight
    #[arg(long, default_value_t = 32)]
    window: u32,
    /// Bytes per datagram (at least 8)
    #[arg(long, default_value_t = 512)]
    size: usize,
    /// Seconds to run
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    duration: u64,
}

#[derive(serde::Serialize)]
struct RrOutput {
    mode: &'static str,
    seconds: f64,
    datagrams_per_sec: f64,
    received: u64,
    sent: u64,
    /// Times nothing came back for 100 ms and the window was sent again (losses).
    stalls: u64,
}

pub fn udp_rr(args: &UdpRrArgs) -> anyhow::Result<()> {
    ensure!(args.size >= 8, "--size must be at least 8");
    let addr = net::resolve(&args.addr)?;
    crate::runtime()?.block_on(async {
        let s = UdpSocket::bind("127.0.0.1:0").await?;
        s.connect(addr).await?;
        let mut out = vec![0x33u8; args.size];
        let mut buf = vec![0u8; 65_536];
        // The first echo may wait for a tunnel to be set up: probe until one comes back.
        let probe_until = Instant::now() + Duration::from_secs(20);
        loop {
            s.send(&out).await?;
            if let Ok(r) = tokio::time::timeout(Duration::from_millis(200), s.recv(&mut buf)).await {
                r?;
                break;
            }
            ensure!(Instant::now() < probe_until, "no echo from {addr} within 20 s");
        }
        // Let stray probe echoes drain.
        while tokio::time::timeout(Duration::from_millis(100), s.recv(&mut buf)).await.is_ok() {}
        let (mut sent, mut received, mut stalls) = (0u64, 0u64, 0u64);
        let started = Instant::now();
        let end = started + Duration::from_secs(args.duration);
        for _ in 0..args.window {
            out[..8].copy_from_slice(&sent.to_be_bytes());
            s.send(&out).await?;
            sent += 1;
        }
        while Instant::now() < end {
            if let Ok(r) = tokio::time::timeout(Duration::from_millis(100), s.recv(&mut buf)).await {
                r?;
                received += 1;
                out[..8].copy_from_slice(&sent.to_be_bytes());
                s.send(&out).await?;
                sent += 1;
            } else {
                stalls += 1;
                for _ in 0..args.window {
                    out[..8].copy_from_slice(&sent.to_be_bytes());
                    s.send(&out).await?;
                    sent += 1;
                }
            }
        }
        let seconds = started.elapsed().as_secs_f64();
        if received == 0 {
            bail!("no echoes during the run");
        }
        crate::print_json(&RrOutput {
            mode: "udp-rr",
            seconds: crate::round(seconds, 3),
            datagrams_per_sec: crate::round(received as f64 / seconds, 0),
            received,
            sent,
            stalls,
        })
    })
}
