//! Tunnels: requests that leave the pipeline after authorization (and the upstream pick) and
//! become byte streams or datagram flows: WebSockets (`websocket.rs`: HTTP/1.1 `Upgrade` and
//! RFC 8441 extended CONNECT, carried upstream as an HTTP/1.1 upgrade), CONNECT to a `tcp+`
//! route (`connect.rs`: HTTP/1.1, HTTP/2 and HTTP/3) and CONNECT-UDP to a `udp+` route
//! (`udp.rs`: HTTP/3 datagrams, or capsules on the stream).
//!
//! This module owns what every tunnel shares: the splice, the idle timeout and the close
//! reasons. A tunnel counts as an active request (its connection is never "idle" under it),
//! has the route's stream idle timeout (disabled by default on WebSocket routes, as Pomerium
//! does), and ends when its listener generation is closed at the end of a drain, when its
//! route is deleted, or when its route's policy stops admitting it. It owns the request's log
//! record and writes it when it ends.

mod connect;
mod io;
mod splice;
mod udp;
mod websocket;

use http::header;
use http::{Method, Request};

use crate::config::TunnelProtocol;
use crate::proxy::headers::connection_has_upgrade;

pub(crate) use connect::tcp;
pub use io::{Datagrams, H3Stream};
pub use splice::Tunnelled;
pub(crate) use udp::udp;
pub(crate) use websocket::websocket;

/// True for an HTTP/1.1 `Upgrade: websocket` or an HTTP/2 extended CONNECT for websocket.
pub fn is_websocket<B>(req: &Request<B>) -> bool {
    if req.method() == Method::CONNECT {
        return req
            .extensions()
            .get::<hyper::ext::Protocol>()
            .is_some_and(|p| p.as_str().eq_ignore_ascii_case("websocket"));
    }
    // Most requests have no `Upgrade`: one lookup, and `Connection` is not scanned.
    let upgrade = req.headers().get(header::UPGRADE).is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"));
    upgrade && connection_has_upgrade(req.headers())
}

/// What a request asks to tunnel to: a `tcp+` or `udp+` route's host and port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// TCP (CONNECT) or UDP (CONNECT-UDP).
    pub protocol: TunnelProtocol,
    /// The host asked for, as sent (the route lookup lower-cases it).
    pub host: String,
    /// The port asked for.
    pub port: u16,
}

/// A request that is not a WebSocket, CONNECT or CONNECT-UDP is no tunnel (`Ok(None)`);
/// `Err` for a CONNECT that names no target a tunnel can have (400). Classic CONNECT
/// (HTTP/1.1's authority form, HTTP/2's and HTTP/3's `:authority` without `:protocol`) is
/// TCP; CONNECT-UDP is an extended CONNECT with `:protocol = connect-udp` (HTTP/2, HTTP/3)
/// or HTTP/1.1's `Upgrade: connect-udp`, whose target is in the path.
pub fn target<B>(req: &Request<B>) -> std::result::Result<Option<Target>, &'static str> {
    if req.method() == Method::CONNECT {
        let protocol = req
            .extensions()
            .get::<hyper::ext::Protocol>()
            .map(hyper::ext::Protocol::as_str)
            .or_else(|| req.extensions().get::<h3::ext::Protocol>().map(h3::ext::Protocol::as_str));
        return match protocol {
            None => {
                let authority = req.uri().authority().ok_or("CONNECT names no host:port")?;
                let port = authority.port_u16().filter(|p| *p != 0).ok_or("CONNECT names no port")?;
                let host = authority.host().trim_start_matches('[').trim_end_matches(']');
                Ok(Some(Target { protocol: TunnelProtocol::Tcp, host: host.to_owned(), port }))
            }
            Some(p) if p.eq_ignore_ascii_case("connect-udp") => udp_target(req).map(Some),
            // WebSockets (checked before) and protocols the proxy does not carry.
            Some(_) => Ok(None),
        };
    }
    let upgrade = req.headers().get(header::UPGRADE).is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"connect-udp"));
    if upgrade && connection_has_upgrade(req.headers()) && req.method() == Method::GET {
        return udp_target(req).map(Some);
    }
    Ok(None)
}

fn udp_target<B>(req: &Request<B>) -> std::result::Result<Target, &'static str> {
    let (host, port) = crate::masque::parse_udp_path(req.uri().path())
        .ok_or("CONNECT-UDP needs the path /.well-known/masque/udp/{host}/{port}/")?;
    Ok(Target { protocol: TunnelProtocol::Udp, host, port })
}
