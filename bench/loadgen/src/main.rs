//! `portcullis-loadgen`: the benchmark harness's own load generator, for the loads that wrk,
//! h2load and oha do not generate:
//!
//! - `ws-echo`: closed-loop WebSocket echo round trips (messages per second, p50/p99);
//! - `hold`: many idle keep-alive connections held open, so the harness can measure the
//!   *server's* memory per connection;
//! - `handshake`: new TLS 1.3 connections per second, full handshakes only (or plain TCP with
//!   `--plain`, as the baseline).
//!
//! The whole generator runs on one thread (a current-thread tokio runtime), so `taskset` can
//! pin it to one CPU next to the upstream, as the harness does with wrk. Each mode prints
//! exactly one JSON object on one line to stdout; progress and diagnostics go to stderr. Any
//! failure of the run itself (cannot connect, hard deadline passed, nothing measured) exits
//! non-zero with a message.

mod handshake;
mod hold;
mod http;
mod net;
mod stats;
mod tls;
mod tunnel;
mod ws_echo;

use std::io::Write;

use anyhow::Context;
use clap::{Parser, Subcommand};

/// The command line: one subcommand per load shape.
#[derive(Parser)]
#[command(name = "portcullis-loadgen", version, about = "Load generator for the Portcullis benchmarks")]
struct Cli {
    #[command(subcommand)]
    mode: Mode,
}

/// The load shapes; each prints one JSON line.
#[derive(Subcommand)]
enum Mode {
    /// N WebSocket connections, each a closed loop: send one text message, wait for its echo.
    WsEcho(ws_echo::Args),
    /// Open N keep-alive connections, one request each, then hold them idle until stdin closes.
    Hold(hold::Args),
    /// C concurrent loops of: connect, full TLS 1.3 handshake, one request, close.
    Handshake(handshake::Args),
    /// The tunnel benchmark's TCP server: reads or writes N bytes per request (TLS with --cert)
    Sink(tunnel::SinkArgs),
    /// One transfer of N bytes to or from a sink: plain, TLS, or TLS + HTTP/1.1 CONNECT
    TcpPush(tunnel::PushArgs),
    /// A UDP echo server
    UdpEcho(tunnel::UdpEchoArgs),
    /// A window of UDP datagrams to an echo server, one sent per echo received
    UdpRr(tunnel::UdpRrArgs),
}

/// Errors are printed as one line with their causes (not `anyhow`'s `Debug`, which adds a
/// backtrace when `RUST_BACKTRACE` is set) and exit with status 1.
fn main() -> std::process::ExitCode {
    let result = match Cli::parse().mode {
        Mode::WsEcho(args) => ws_echo::run(&args),
        Mode::Hold(args) => hold::run(&args),
        Mode::Handshake(args) => handshake::run(&args),
        Mode::Sink(args) => tunnel::sink(&args),
        Mode::TcpPush(args) => tunnel::push(&args),
        Mode::UdpEcho(args) => tunnel::udp_echo(&args),
        Mode::UdpRr(args) => tunnel::udp_rr(&args),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("portcullis-loadgen: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// One thread for everything: the figures then say what one client core can drive, and the
/// harness can pin the generator with `taskset`.
fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting the tokio runtime")
}

/// Prints the mode's result as one JSON line and flushes, so a harness reading line by line
/// sees it at once (`hold` keeps running after it).
fn print_json<T: serde::Serialize>(value: &T) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer(&mut out, value).context("writing the result")?;
    writeln!(out).and_then(|()| out.flush()).context("writing the result")
}

/// Rounds for the JSON output: more digits than this are noise, and they make the lines hard
/// to read.
fn round(x: f64, digits: i32) -> f64 {
    let scale = 10f64.powi(digits);
    (x * scale).round() / scale
}
