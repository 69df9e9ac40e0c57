//! Accepting downstream connections: [`tcp`] (TLS or plain, HTTP/1.1 and HTTP/2 by hyper)
//! and [`quic`] (HTTP/3 by h3 over quinn) each do their handshake, build the connection's
//! [`Conn`](super::conn::Conn) and hand every request to the one pipeline
//! ([`super::http::handle`]); [`driver`] runs both kinds of connection to their end;
//! [`io`] is the TCP IO wrapper the driver's rules need; [`rest`] serves HTTP/1.1
//! connections that give their codec back while idle.

pub(crate) mod driver;
mod h3body;
pub mod io;
pub mod quic;
mod rest;
pub mod tcp;

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::conn::ListenerKind;
use super::state::Proxy;
use crate::config::Timeouts;
use crate::metrics::ListenerLabels;

/// Counts a connection in `portcullis_downstream_connections_total` and `_active` of its
/// listener; the active gauge goes down when the guard drops, however the connection ends.
fn count_connection(proxy: &Proxy, kind: ListenerKind) -> impl Drop {
    let labels = ListenerLabels { listener: kind.name() };
    proxy.metrics.connections_total.get_or_create(&labels).inc();
    let active = proxy.metrics.connections_active.get_or_create(&labels).clone();
    active.inc();
    scopeguard(move || {
        active.dec();
    })
}

/// How long a TLS (or QUIC) handshake may take: `timeout_read`, at most 10 s.
fn handshake_limit(timeouts: Timeouts) -> Duration {
    timeouts.read.unwrap_or(Duration::from_secs(10)).min(Duration::from_secs(10))
}

/// Runs a `what` (TLS or QUIC) handshake with `peer` under [`handshake_limit`]; `None` when
/// it failed, timed out, or `drain_timeout` of the connection's generation ended first.
async fn handshake<T, E: std::fmt::Display>(
    what: &str,
    peer: SocketAddr,
    timeouts: Timeouts,
    close: &CancellationToken,
    handshake: impl Future<Output = Result<T, E>>,
) -> Option<T> {
    tokio::select! {
        r = tokio::time::timeout(handshake_limit(timeouts), handshake) => match r {
            Ok(Ok(done)) => Some(done),
            Ok(Err(e)) => {
                tracing::debug!(%peer, error = %e, "{what} handshake failed");
                None
            }
            Err(_) => {
                tracing::debug!(%peer, "{what} handshake timed out");
                None
            }
        },
        () = close.cancelled() => None,
    }
}

/// Runs a closure on drop (gauges that must go down however a task ends).
fn scopeguard<F: FnOnce()>(f: F) -> impl Drop {
    struct Guard<F: FnOnce()>(Option<F>);
    impl<F: FnOnce()> Drop for Guard<F> {
        fn drop(&mut self) {
            if let Some(f) = self.0.take() {
                f();
            }
        }
    }
    Guard(Some(f))
}
