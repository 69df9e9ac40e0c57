//! The Pingora peer of `cargo xtask bench`: the smallest reverse proxy on `pingora-proxy` that
//! does what the other peers are configured to do (bench/README.md, "The peers, configured
//! alike").
//!
//! Pingora is a framework, not a proxy with a config file, so the bench needs a program of its
//! own. It is kept to what nginx, HAProxy, Traefik and Caddy are set up for and nothing more:
//! a plain HTTP/1.1 listener and a TLS one (h2 and http/1.1 by ALPN, the shared certificate),
//! one upstream over HTTP/1.1 from a keep-alive pool, `X-Forwarded-*` and an `X-Request-ID` on
//! every request, WebSocket upgrades passed through (Pingora does that by itself), idle timeouts
//! of five minutes, no access log. Server settings (`threads: 1`, the pool size, the pid file)
//! come from the Pingora YAML config the harness writes, so they are visible beside the other
//! peers' configs.
//!
//! ```text
//! pingora-proxy-bench --conf pingora.yaml --upstream 127.0.0.1:9000 \
//!     --plain 127.0.0.1:8080 --tls 127.0.0.1:8443 --cert cert.pem --key key.pem
//! ```

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use pingora::apps::HttpServerOptions;
use pingora::listeners::tls::TlsSettings;
use pingora::prelude::*;
use pingora::server::configuration::ServerConf;

/// The other peers' idle timeouts (nginx `keepalive_timeout 300s`, HAProxy `timeout
/// http-keep-alive 300s`), for client connections and pooled upstream ones alike.
const IDLE: Duration = Duration::from_secs(300);

/// The command line: where to listen, the certificate, the upstream, the server config.
struct Args {
    conf: String,
    upstream: SocketAddr,
    plain: String,
    tls: String,
    cert: String,
    key: String,
}

impl Args {
    fn parse() -> Result<Self, String> {
        let mut it = std::env::args().skip(1);
        let (mut conf, mut upstream, mut plain, mut tls, mut cert, mut key) = Default::default();
        while let Some(flag) = it.next() {
            let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
            match flag.as_str() {
                "--conf" => conf = Some(value),
                "--upstream" => upstream = Some(value.parse().map_err(|e| format!("--upstream {value}: {e}"))?),
                "--plain" => plain = Some(value),
                "--tls" => tls = Some(value),
                "--cert" => cert = Some(value),
                "--key" => key = Some(value),
                _ => return Err(format!("unknown option {flag}")),
            }
        }
        let need = |v: Option<String>, name: &str| v.ok_or_else(|| format!("{name} is required"));
        Ok(Self {
            conf: need(conf, "--conf")?,
            upstream: upstream.ok_or("--upstream is required")?,
            plain: need(plain, "--plain")?,
            tls: need(tls, "--tls")?,
            cert: need(cert, "--cert")?,
            key: need(key, "--key")?,
        })
    }
}

/// One catch-all route to one upstream.
struct Bench {
    upstream: SocketAddr,
    /// Request ids are this process's random prefix and a counter: unique, and cheap enough
    /// that the id costs what nginx's `$request_id` does, not a random draw per request.
    id_prefix: u64,
    next_id: AtomicU64,
}

#[async_trait]
impl ProxyHttp for Bench {
    type CTX = ();

    fn new_ctx(&self) {}

    /// Pingora keeps an HTTP/1.1 client connection open forever by default; the peers close
    /// one after five idle minutes.
    async fn early_request_filter(&self, session: &mut Session, _ctx: &mut ()) -> Result<()> {
        session.set_keepalive(Some(IDLE.as_secs()));
        Ok(())
    }

    /// Plain HTTP/1.1 to the upstream (no TLS, no ALPN), pooled: a peer with the same address
    /// and settings reuses an idle pooled connection, as nginx's `keepalive 128` does.
    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
        let mut peer = HttpPeer::new(self.upstream, false, String::new());
        peer.options.idle_timeout = Some(IDLE);
        peer.options.connection_timeout = Some(Duration::from_secs(10));
        Ok(Box::new(peer))
    }

    /// The headers every peer adds: `X-Forwarded-For` (appended to what the client sent, as
    /// nginx's `$proxy_add_x_forwarded_for`), `-Proto`, `-Host` and an `X-Request-ID`.
    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream_request: &mut RequestHeader,
        _ctx: &mut (),
    ) -> Result<()> {
        let client = session.client_addr().and_then(|a| a.as_inet()).map(|a| a.ip().to_string()).unwrap_or_default();
        let forwarded_for = match session.req_header().headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
            Some(earlier) => format!("{earlier}, {client}"),
            None => client,
        };
        let tls = session.digest().is_some_and(|d| d.ssl_digest.is_some());
        // HTTP/2 clients send `:authority` rather than `Host`.
        let req = session.req_header();
        let host = req
            .headers
            .get("host")
            .and_then(|v| v.to_str().ok())
            .or_else(|| req.uri.authority().map(|a| a.as_str()))
            .unwrap_or_default()
            .to_owned();
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        upstream_request.insert_header("x-forwarded-for", forwarded_for)?;
        upstream_request.insert_header("x-forwarded-proto", if tls { "https" } else { "http" })?;
        upstream_request.insert_header("x-forwarded-host", host)?;
        upstream_request.insert_header("x-request-id", format!("{:016x}{id:016x}", self.id_prefix))?;
        Ok(())
    }

    /// No access log: the other peers run with theirs off.
    async fn logging(&self, _session: &mut Session, _e: Option<&pingora::Error>, _ctx: &mut ()) {}
}

fn main() {
    let args = Args::parse().unwrap_or_else(|e| {
        eprintln!("pingora-proxy-bench: {e}");
        std::process::exit(2)
    });
    let yaml = std::fs::read_to_string(&args.conf).expect("reading --conf");
    let conf = ServerConf::from_yaml(&yaml).expect("parsing --conf");
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();

    // The std hasher's keys are random per process: a seed without another dependency.
    let id_prefix = {
        use std::hash::{BuildHasher as _, Hasher as _};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u32(std::process::id());
        h.finish()
    };
    let app = Bench { upstream: args.upstream, id_prefix, next_id: AtomicU64::new(0) };
    let mut options = HttpServerOptions::default();
    options.h2_idle_timeout = Some(IDLE);
    // Both listeners in one service: Pingora gives each service its own runtime of `threads`
    // threads, so two services would be two worker threads.
    let mut service =
        pingora::proxy::ProxyServiceBuilder::new(&server.configuration, app).server_options(options).build();
    service.add_tcp(&args.plain);
    let mut tls = TlsSettings::intermediate(&args.cert, &args.key).expect("loading the certificate");
    tls.enable_h2();
    service.add_tls_with_settings(&args.tls, None, tls);
    server.add_service(service);
    server.run_forever();
}
