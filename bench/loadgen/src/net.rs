//! Address resolution and TCP connects.

use std::net::{SocketAddr, ToSocketAddrs};

use anyhow::Context;
use tokio::net::TcpStream;

/// Resolves `HOST:PORT` once, before the run, so no connection pays for a lookup.
pub fn resolve(addr: &str) -> anyhow::Result<SocketAddr> {
    addr.to_socket_addrs()
        .with_context(|| format!("resolving --addr {addr:?} (expected HOST:PORT)"))?
        .next()
        .with_context(|| format!("--addr {addr:?} resolved to no address"))
}

/// A TCP connection with Nagle off, as every benchmark client (wrk, h2load, browsers) has it:
/// small request writes must not wait for an ACK.
pub async fn connect(addr: SocketAddr) -> anyhow::Result<TcpStream> {
    let stream = TcpStream::connect(addr).await.with_context(|| format!("connecting to {addr}"))?;
    stream.set_nodelay(true).context("setting TCP_NODELAY")?;
    Ok(stream)
}
