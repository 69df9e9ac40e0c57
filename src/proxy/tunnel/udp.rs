//! CONNECT-UDP to a `udp+` route (RFC 9298): an extended CONNECT with `:protocol =
//! connect-udp` on HTTP/3 (payloads in HTTP/3 datagrams) or HTTP/2, or HTTP/1.1's `Upgrade:
//! connect-udp` (payloads in DATAGRAM capsules on the stream, RFC 9297). One connected UDP
//! socket per tunnel. A tunnel reads capsules from its stream whatever the version (a client
//! may send them on HTTP/3 too) and answers the way the client reaches it: datagrams on
//! HTTP/3, capsules elsewhere. A datagram larger than the path carries is dropped and
//! counted, as the network would drop it; the tunnel ends with its stream.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode, Version};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UdpSocket;

use super::io::{Downstream, H3Stream};
use super::splice::{Closed, Tunnel, Tunnelled};
use crate::config::{duration, TunnelProtocol};
use crate::masque::{self, DATAGRAM_CAPSULE, MAX_UDP_PAYLOAD};
use crate::metrics::DroppedLabels;
use crate::proxy::body::{BoxError, ProxyBody};
use crate::proxy::conn::Conn;
use crate::proxy::error::{Error, Kind, Result};
use crate::proxy::http::authz::Admission;
use crate::proxy::log::RequestLog;
use crate::proxy::snapshot::CompiledRoute;
use crate::proxy::upstream::{Target, CONNECT_TIMEOUT};

/// Opens the upstream socket, answers (101 on HTTP/1.1, 200 otherwise, with
/// `Capsule-Protocol: ?1`) and spawns the tunnel.
pub(crate) async fn udp<B>(
    conn: &Arc<Conn>,
    route: &CompiledRoute,
    target: &Target,
    mut req: Request<B>,
    host: &str,
    log: &mut RequestLog,
    admission: Admission,
) -> Result<Response<ProxyBody>>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let socket = bind(&target.upstream.authority).await?;
    let h1 = req.version() < Version::HTTP_2;
    let h3 = req.extensions_mut().remove::<H3Stream>();
    let (downstream, body) = Downstream::of(req);
    let mut answer = Response::builder()
        .status(if h1 { StatusCode::SWITCHING_PROTOCOLS } else { StatusCode::OK })
        .body(body)
        .expect("valid parts");
    let h = answer.headers_mut();
    h.insert("capsule-protocol", HeaderValue::from_static("?1"));
    if h1 {
        h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        h.insert(header::UPGRADE, HeaderValue::from_static("connect-udp"));
    }
    answer.extensions_mut().insert(Tunnelled);
    log.status = answer.status().as_u16();
    let record = log.hand_over(host);
    let tunnel = Tunnel::new(conn, route, admission, record, Some(TunnelProtocol::Udp));
    tokio::spawn(async move {
        match downstream.open().await {
            Ok(down) => relay(down, socket, h3, tunnel).await,
            Err(e) => {
                let mut tunnel = tunnel;
                tunnel.record.error = Some(format!("the client's side of the tunnel did not open: {e}"));
                tunnel.finish(None, "not_opened");
            }
        }
    });
    Ok(answer)
}

/// A UDP socket connected to `authority` (resolved now), so that only its answers come back.
async fn bind(authority: &str) -> Result<UdpSocket> {
    let unreachable = |detail: String| Error::with(Kind::UpstreamUnreachable, detail);
    let resolved = tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::lookup_host(authority))
        .await
        .map_err(|_| unreachable(format!("no address within {}", duration::format(CONNECT_TIMEOUT))))?
        .map_err(|e| unreachable(format!("resolving the upstream: {}", e.kind())))?;
    let mut last = None;
    for addr in resolved {
        let local: SocketAddr =
            if addr.is_ipv6() { (std::net::Ipv6Addr::UNSPECIFIED, 0).into() } else { ([0, 0, 0, 0], 0).into() };
        match UdpSocket::bind(local).await {
            Ok(s) => match s.connect(addr).await {
                Ok(()) => return Ok(s),
                Err(e) => last = Some(e),
            },
            Err(e) => last = Some(e),
        }
    }
    Err(unreachable(last.map_or_else(|| "the upstream has no address".to_owned(), |e| e.kind().to_string())))
}

/// Moves datagrams between the client and the upstream socket until the client's stream
/// ends or a limit ends the tunnel.
async fn relay<D>(mut down: D, socket: UdpSocket, h3: Option<H3Stream>, mut tunnel: Tunnel)
where
    D: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let (to_upstream, to_client, state) = (tunnel.to_upstream.clone(), tunnel.to_client.clone(), tunnel.state.clone());
    let metrics = tunnel.record.metrics.clone();
    let route = tunnel.limits.route_name.clone();
    let dropped = |reason: &'static str| {
        metrics.datagrams_dropped.get_or_create(&DroppedLabels { route: route.clone(), reason }).inc();
    };
    let (mut flow, _guard) = match &h3 {
        Some(s) => {
            let (rx, guard) = s.datagrams.open(s.id);
            (Some(rx), Some(guard))
        }
        None => (None, None),
    };
    let mut inbound = BytesMut::with_capacity(4096);
    let mut buf = vec![0u8; MAX_UDP_PAYLOAD];
    let outcome = {
        let limited = tunnel.limited();
        tokio::pin!(limited);
        'relay: loop {
            tokio::select! {
                why = &mut limited => break Some(why),
                read = down.read_buf(&mut inbound) => match read {
                    Ok(0) => break None,
                    Ok(_) => loop {
                        match masque::take_capsule(&mut inbound) {
                            Ok(Some(c)) if c.kind == DATAGRAM_CAPSULE => {
                                forward(&socket, c.value, &to_upstream, &state, &dropped).await;
                            }
                            // Capsules of other types are skipped (RFC 9297 section 3.2).
                            Ok(Some(_)) => {}
                            Ok(None) => break,
                            Err(e) => break 'relay Some(Closed::Malformed(e)),
                        }
                    },
                    Err(e) => break Some(Closed::Broken(e)),
                },
                value = recv_flow(&mut flow) => match value {
                    Some(v) => forward(&socket, v, &to_upstream, &state, &dropped).await,
                    None => flow = None,
                },
                got = socket.recv(&mut buf) => {
                    // An ICMP error from the upstream (a port unreachable) is UDP's loss.
                    let Ok(n) = got else { continue };
                    state.touch();
                    let payload = &buf[..n];
                    if let Some(s) = &h3 {
                        let datagram = masque::h3_datagram(s.id, payload);
                        if s.datagrams.max_size().is_some_and(|max| datagram.len() <= max) && s.datagrams.send(datagram) {
                            to_client.add(n);
                        } else {
                            dropped("too_large");
                        }
                    } else if let Err(e) = down.write_all(&masque::udp_capsule(payload)).await {
                        break Some(Closed::Broken(e));
                    } else {
                        to_client.add(n);
                    }
                }
            }
        }
    };
    tunnel.finish(outcome.as_ref(), "closed");
}

/// The next datagram value of an HTTP/3 flow; pending forever without one.
async fn recv_flow(flow: &mut Option<tokio::sync::mpsc::Receiver<Bytes>>) -> Option<Bytes> {
    match flow {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// Sends one datagram's UDP payload upstream: a value of another context, or one the socket
/// refuses (too large), is dropped and counted.
async fn forward(
    socket: &UdpSocket,
    value: Bytes,
    meter: &super::splice::Meter,
    state: &crate::proxy::body::StreamState,
    dropped: &impl Fn(&'static str),
) {
    state.touch();
    let Some(payload) = masque::udp_payload(value) else {
        dropped("unknown_context");
        return;
    };
    if payload.len() > MAX_UDP_PAYLOAD {
        dropped("too_large");
        return;
    }
    match socket.send(&payload).await {
        Ok(_) => meter.add(payload.len()),
        Err(_) => dropped("too_large"),
    }
}
