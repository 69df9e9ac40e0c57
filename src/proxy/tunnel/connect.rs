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
use crate::proxy::log::RequestLog;
use crate::proxy::snapshot::CompiledRoute;
use crate::proxy::upstream::{Target, CONNECT_TIMEOUT};

/// Connects to `target`, answers 200 and spawns the tunnel.
pub(crate) async fn tcp<B>(
    conn: &Arc<Conn>,
    route: &CompiledRoute,
    target: &Target,
    req: Request<B>,
    host: &str,
    log: &mut RequestLog,
    admission: Admission,
) -> Result<Response<ProxyBody>>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let upstream = connect(&target.upstream.authority).await?;
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
