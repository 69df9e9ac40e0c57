//! What a run of `portcullis tunnel` is told (the command line, typed) and what its tunnels
//! share ([`Ctx`]): the proxy's address, TLS, the token, the transport learnt so far.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, OnceLock};

/// Which HTTP version carries the tunnels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// HTTP/3 once the proxy advertises it, else HTTP/2, else HTTP/1.1.
    Auto,
    /// HTTP/1.1 only (UDP: capsules on the stream).
    Http1,
    /// HTTP/2 only.
    Http2,
    /// HTTP/3 only (UDP: QUIC datagrams).
    Http3,
}

/// Where the local side is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Listen {
    /// Standard input and output: one tunnel (ssh's `ProxyCommand`).
    Stdio,
    /// A local TCP listener (one tunnel per connection) or UDP socket (one per peer).
    Addr(SocketAddr),
}

impl std::str::FromStr for Listen {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s == "-" {
            return Ok(Self::Stdio);
        }
        s.parse().map(Self::Addr).map_err(|_| format!("{s:?} is not - or an address such as 127.0.0.1:5432"))
    }
}

/// Everything the command line says.
#[derive(Clone, Debug)]
pub struct Options {
    /// The tunnel's target host, as the route names it.
    pub host: String,
    /// The target port.
    pub port: u16,
    /// Where local connections come from.
    pub listen: Listen,
    /// The proxy's address when it is not the target's own name: `https://host[:port]`.
    pub proxy_url: Option<String>,
    /// The HTTP version.
    pub transport: Transport,
    /// A bearer token given on the command line or in `PORTCULLIS_TOKEN`.
    pub token: Option<String>,
    /// CA certificates to trust instead of the system's.
    pub ca_file: Option<PathBuf>,
    /// Accept any certificate (testing only).
    pub insecure: bool,
    /// A client certificate (PEM) for a proxy that asks for one.
    pub client_cert: Option<PathBuf>,
    /// Its key (PEM).
    pub client_key: Option<PathBuf>,
    /// Where tokens are cached; default the user's config directory.
    pub token_dir: Option<PathBuf>,
}

/// `host:port` into its parts (`[v6]:port` too).
pub fn parse_target(s: &str) -> Result<(String, u16), String> {
    let (host, port) = s.rsplit_once(':').ok_or_else(|| format!("{s:?} must be host:port"))?;
    let port: u16 = port.parse().ok().filter(|p| *p != 0).ok_or_else(|| format!("{s:?}: {port:?} is not a port"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(format!("{s:?} names no host"));
    }
    Ok((host.to_ascii_lowercase(), port))
}

/// What every tunnel of one run shares: the proxy's address, TLS, identity, and the
/// transport learnt so far.
pub(crate) struct Ctx {
    pub(crate) opts: Options,
    /// The proxy's host (SNI, `:authority` of CONNECT-UDP) and port.
    pub(crate) proxy_host: String,
    pub(crate) proxy_port: u16,
    pub(crate) tls: Arc<rustls::ClientConfig>,
    /// The UDP port of the proxy's HTTP/3 once known (0: not advertised yet).
    pub(crate) h3_port: AtomicU16,
    /// The token in use (given, cached or signed in).
    pub(crate) token: tokio::sync::RwLock<Option<String>>,
    /// One browser sign-in at a time.
    pub(crate) signing_in: tokio::sync::Mutex<()>,
    /// The QUIC endpoint, made on first use.
    pub(crate) quic: OnceLock<quinn::Endpoint>,
}

impl Ctx {
    /// Whether the next tunnel goes over HTTP/3.
    pub(crate) fn use_h3(&self) -> bool {
        match self.opts.transport {
            Transport::Http3 => true,
            Transport::Auto => self.h3_port.load(Ordering::Relaxed) != 0,
            Transport::Http1 | Transport::Http2 => false,
        }
    }

    /// Remembers the proxy's `Alt-Svc` (`h3=":443"`): later tunnels take HTTP/3.
    pub(crate) fn learn_alt_svc(&self, headers: &http::HeaderMap) {
        if self.opts.transport != Transport::Auto {
            return;
        }
        if let Some(port) =
            headers.get_all(http::header::ALT_SVC).iter().find_map(|v| alt_svc_h3_port(v.to_str().ok()?))
        {
            self.h3_port.store(port, Ordering::Relaxed);
        }
    }
}

/// The port of an `h3` alternative in an `Alt-Svc` value (same host only: `h3=":443"`).
pub fn alt_svc_h3_port(value: &str) -> Option<u16> {
    value.split(',').find_map(|alt| {
        let alt = alt.trim();
        let rest = alt.strip_prefix("h3=\"")?;
        let authority = &rest[..rest.find('"')?];
        authority.strip_prefix(':')?.parse().ok()
    })
}
