//! CONNECT to a `tcp+` route: HTTP/1.1 (`CONNECT host:port`), HTTP/2 (RFC 9113 section
//! 8.5) and HTTP/3 (RFC 9114 section 4.4). The upstream connection is made before the client
//! hears anything, so a refused or silent upstream is a 503 with its reason, never a 200
//! followed by a close; then bytes flow both ways and each side's end of stream reaches the
//! other (FIN, END_STREAM and a QUIC stream's FIN are one half-close).

use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use tokio::net::TcpStream;

use super::io::Downstream;
use super::splice::{splice, Tunnel, Tunnelled};
use crate::config::{duration, TunnelProtocol};
use crate::proxy::body::{BoxError, OnFinish, ProxyBody};
use crate::proxy::conn::Conn;
use crate::proxy::error::{Error, Kind, Result};
use crate::proxy::http::authz::Admission;
use crate::proxy::http::send::record_outcome;
use crate::proxy::log::{InFlight, RequestLog, RetryInFlight};
use crate::proxy::outlier::Outcome;
use crate::proxy::snapshot::CompiledRoute;
use crate::proxy::upstream::CONNECT_TIMEOUT;

/// Connects to target `target_idx` (another endpoint of the route when it refuses, as an
/// HTTP request that never left would be), answers 200 and spawns the tunnel.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn tcp<B>(
    conn: &Arc<Conn>,
    route: &CompiledRoute,
    target_idx: usize,
    key: u64,
    req: Request<B>,
    host: &str,
    log: &mut RequestLog,
    admission: Admission,
) -> Result<Response<ProxyBody>>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let upstream = connect_with_retries(route, target_idx, key, log).await?;
    let (downstream, body) = Downstream::of(req);
    let mut answer = Response::builder().status(StatusCode::OK).body(body).expect("valid parts");
    answer.extensions_mut().insert(Tunnelled);
    log.status = 200;
    let record = log.hand_over(host);
    let tunnel = Tunnel::new(conn, route, admission, record, Some(TunnelProtocol::Tcp));
    tokio::spawn(async move {
        match downstream.open().await {
            Ok(down) => splice(down, upstream, tunnel).await,
            Err(e) => {
                let mut record = tunnel.record;
                record.error = Some(format!("the client's side of the tunnel did not open: {e}"));
                record.finish(0, None);
            }
        }
    });
    Ok(answer)
}

/// [`connect`], then on another endpoint within the route's retries and retry budget;
/// every attempt's outcome goes to outlier detection.
async fn connect_with_retries(
    route: &CompiledRoute,
    mut target_idx: usize,
    key: u64,
    log: &mut RequestLog,
) -> Result<TcpStream> {
    let targets = route.balancer.targets();
    let mut attempts_left = route.route.retries.attempts;
    loop {
        let target = &targets[target_idx];
        let result = connect(&target.upstream.authority).await;
        if let Some(cfg) = &route.route.outlier_detection {
            let outcome = if result.is_ok() { Outcome::Success } else { Outcome::GatewayFailure };
            record_outcome(cfg, route, target, &log.metrics, outcome);
        }
        let Err(e) = result else { return result };
        if attempts_left == 0 {
            return Err(e);
        }
        let Some(next) = route.balancer.pick(key, Some(target_idx)) else { return Err(e) };
        let Some(credit) = RetryInFlight::take(&targets[next].state) else { return Err(e) };
        attempts_left -= 1;
        target_idx = next;
        log.upstream = Some(next);
        log.in_flight = Some(InFlight::new(&targets[next].state));
        log.retry = Some(credit);
    }
}

/// The upstream TCP connection, within the upstream connect timeout (PRODUCT.md: 10 s, as for
/// HTTP). Refused, unreachable and timed out are all 503: the upstream is not there. The
/// client's page gives the reason; the upstream's address is the access log's only.
async fn connect(authority: &str) -> Result<TcpStream> {
    match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(authority)).await {
        Ok(Ok(s)) => {
            let _ = s.set_nodelay(true);
            Ok(s)
        }
        Ok(Err(e)) => Err(Error::with(Kind::UpstreamUnreachable, e.kind().to_string()).because(e)),
        Err(_) => Err(Error::with(
            Kind::UpstreamUnreachable,
            format!("no answer within {}", duration::format(CONNECT_TIMEOUT)),
        )),
    }
}
