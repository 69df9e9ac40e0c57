//! `portcullis tunnel`: the client of `tcp+` and `udp+` routes. It opens a CONNECT (or
//! CONNECT-UDP) tunnel to the proxy for each local connection (or each local UDP peer) and
//! carries the bytes (or datagrams) both ways. docs/tunnel-client.md is the user's guide.
//!
//! Transport: HTTP/3 when the proxy advertises it (`Alt-Svc`, learnt from its answers) or
//! `--http3`, else HTTP/2 (ALPN), else HTTP/1.1. Identity: `--token` / `PORTCULLIS_TOKEN`,
//! else a token cached from an earlier sign-in, else a browser sign-in through the proxy's
//! programmatic login (`login.rs`) when the proxy answers 401.

mod connect;
mod login;
mod options;

use std::net::SocketAddr;
use std::sync::atomic::AtomicU16;
use std::sync::{Arc, OnceLock};

use anyhow::{bail, Context as _};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, UdpSocket};

pub use connect::TunnelError;
use options::Ctx;
pub use options::{alt_svc_h3_port, parse_proxy_url, parse_target, Listen, Options, Token, Transport};

/// The shared state of a run: the proxy's address from `--proxy-url` (or the target's own
/// name, port 443), TLS, the token given or cached.
fn new_ctx(opts: Options) -> anyhow::Result<Arc<Ctx>> {
    let (proxy_host, proxy_port) = match &opts.proxy_url {
        Some(url) => options::parse_proxy_url(url).map_err(anyhow::Error::msg)?,
        None => (opts.host.clone(), 443),
    };
    let tls = connect::tls_config(&opts)?;
    let token = opts.token.clone().or_else(|| login::cached(&opts).map(Token::from));
    let h3 = if opts.transport == Transport::Http3 { proxy_port } else { 0 };
    Ok(Arc::new(Ctx {
        opts,
        proxy_host,
        proxy_port,
        tls: Arc::new(tls),
        h3_port: AtomicU16::new(h3),
        token: tokio::sync::RwLock::new(token),
        h3_failed: std::sync::atomic::AtomicBool::new(false),
        signing_in: tokio::sync::Mutex::new(()),
        quic: OnceLock::new(),
    }))
}

/// Opens one tunnel with the token in force. On a 401: with `--token`, the token was
/// refused and that is the error; else signs in (the browser, once for all the tunnels
/// waiting) and tries again.
async fn open<T, F, Fut>(ctx: &Arc<Ctx>, attempt: F) -> Result<T, TunnelError>
where
    F: Fn(Option<Token>) -> Fut,
    Fut: std::future::Future<Output = Result<T, TunnelError>>,
{
    let token = ctx.token.read().await.clone();
    match attempt(token.clone()).await {
        Err(TunnelError::Refused { status: 401, reason, .. }) if ctx.opts.token.is_some() => {
            Err(TunnelError::TokenRefused { reason, signed_in: false })
        }
        Err(TunnelError::Refused { status: 401, .. }) => {
            let _one = ctx.signing_in.lock().await;
            // Another tunnel may have signed in meanwhile.
            let now = ctx.token.read().await.clone();
            let fresh = if now != token && now.is_some() {
                now
            } else {
                if token.is_some() {
                    // A cached token the proxy no longer takes (its session signed out).
                    login::forget(&ctx.opts);
                }
                let t = Token::from(login::sign_in(ctx).await.map_err(|e| TunnelError::Login(format!("{e:#}")))?);
                *ctx.token.write().await = Some(t.clone());
                Some(t)
            };
            match attempt(fresh).await {
                Err(TunnelError::Refused { status: 401, reason, .. }) => {
                    Err(TunnelError::TokenRefused { reason, signed_in: true })
                }
                other => other,
            }
        }
        other => other,
    }
}

/// `portcullis tunnel tcp`: one tunnel per local connection (or one for stdin/stdout).
pub async fn run_tcp(opts: Options) -> anyhow::Result<()> {
    let ctx = new_ctx(opts)?;
    match ctx.opts.listen.clone() {
        Listen::Stdio => {
            let io = open(&ctx, |token| connect::tcp(&ctx, token)).await?;
            let local = tokio::io::join(tokio::io::stdin(), tokio::io::stdout());
            io.pump(local).await.context("the tunnel broke")?;
            Ok(())
        }
        Listen::Addr(addr) => {
            let listener = TcpListener::bind(addr).await.with_context(|| format!("listening on {addr}"))?;
            eprintln!(
                "portcullis tunnel: {addr} -> {}:{} through {}:{}",
                ctx.opts.host, ctx.opts.port, ctx.proxy_host, ctx.proxy_port
            );
            loop {
                let (mut local, peer) = listener.accept().await.context("accepting a local connection")?;
                let ctx = ctx.clone();
                tokio::spawn(async move {
                    let _ = local.set_nodelay(true);
                    match open(&ctx, |token| connect::tcp(&ctx, token)).await {
                        Ok(io) => {
                            if let Err(e) = io.pump(local).await {
                                eprintln!("portcullis tunnel: {peer}: {e}");
                            }
                        }
                        Err(e) => {
                            eprintln!("portcullis tunnel: {peer}: {e}");
                            let _ = local.shutdown().await;
                        }
                    }
                });
            }
        }
    }
}

/// `portcullis tunnel udp`: a local UDP socket; datagrams of each local peer go through a
/// tunnel of their own, and the answers back to that peer.
pub async fn run_udp(opts: Options) -> anyhow::Result<()> {
    let Listen::Addr(addr) = opts.listen else { bail!("a UDP tunnel needs --listen ADDRESS (a local UDP socket)") };
    if opts.transport == Transport::Http2 {
        bail!("UDP tunnels go over HTTP/3 (datagrams) or HTTP/1.1 (capsules), not --http2");
    }
    if opts.udp_idle.is_zero() {
        bail!("--udp-idle-timeout must be more than 0s");
    }
    let ctx = new_ctx(opts)?;
    let socket = Arc::new(UdpSocket::bind(addr).await.with_context(|| format!("binding UDP {addr}"))?);
    eprintln!(
        "portcullis tunnel: udp {addr} -> {}:{} through {}:{}",
        ctx.opts.host, ctx.opts.port, ctx.proxy_host, ctx.proxy_port
    );
    let peers: Arc<std::sync::Mutex<std::collections::HashMap<SocketAddr, tokio::sync::mpsc::Sender<bytes::Bytes>>>> =
        Arc::default();
    let mut buf = vec![0u8; crate::masque::MAX_UDP_PAYLOAD];
    loop {
        let (n, peer) = socket.recv_from(&mut buf).await.context("reading the local UDP socket")?;
        let datagram = bytes::Bytes::copy_from_slice(&buf[..n]);
        let existing = crate::sync::lock(&peers).get(&peer).cloned();
        let tx = match existing {
            Some(tx) if !tx.is_closed() => tx,
            _ => {
                let (tx, rx) = tokio::sync::mpsc::channel(256);
                crate::sync::lock(&peers).insert(peer, tx.clone());
                let (ctx, socket, peers) = (ctx.clone(), socket.clone(), peers.clone());
                tokio::spawn(async move {
                    match open(&ctx, |token| connect::udp(&ctx, token)).await {
                        Ok(flow) => flow.relay(rx, socket, peer, ctx.opts.udp_idle).await,
                        Err(e) => eprintln!("portcullis tunnel: {peer}: {e}"),
                    }
                    crate::sync::lock(&peers).remove(&peer);
                });
                tx
            }
        };
        // A full backlog drops the datagram, as the network would.
        let _ = tx.try_send(datagram);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_and_listen_addresses_parse() {
        assert_eq!(parse_target("DB.example.com:5432").unwrap(), ("db.example.com".into(), 5432));
        assert_eq!(parse_target("[::1]:22").unwrap(), ("::1".into(), 22));
        assert!(parse_target("db.example.com").is_err());
        assert!(parse_target("db.example.com:0").is_err());
        assert!(parse_target(":22").is_err());
        assert!(parse_target("db.example.com:5432/x").is_err());
        for bad in [
            "user@db.example.com:22",
            "db example.com:22",
            "db.example.com/x:22",
            "[::1]]:22",
            "a%20b:22",
            "::1:22",
            "[db]:22",
        ] {
            assert!(parse_target(bad).is_err(), "{bad}");
        }
        assert_eq!("-".parse::<Listen>().unwrap(), Listen::Stdio);
        assert_eq!("127.0.0.1:5432".parse::<Listen>().unwrap(), Listen::Addr("127.0.0.1:5432".parse().unwrap()));
        assert!("localhost".parse::<Listen>().is_err());
    }
}
