//! What a run of `portcullis tunnel` is told (the command line, typed) and what its tunnels
//! share ([`Ctx`]): the proxy's address, TLS, the token, the transport learnt so far.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
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

/// A bearer token, kept out of every `Debug` (and so out of logs and panics).
#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

impl Token {
    /// The token, for the `Authorization` header only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

impl std::str::FromStr for Token {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self(s.trim().to_owned()))
    }
}

impl From<String> for Token {
    fn from(s: String) -> Self {
        Self(s)
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
    pub token: Option<Token>,
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
    /// How long a local UDP peer may send nothing before its tunnel closes.
    pub udp_idle: std::time::Duration,
}

/// `host:port` into its parts (`[v6]:port` too).
pub fn parse_target(s: &str) -> Result<(String, u16), String> {
    let (host, port) = s.rsplit_once(':').ok_or_else(|| format!("{s:?} must be host:port"))?;
    let port: u16 = port.parse().ok().filter(|p| *p != 0).ok_or_else(|| format!("{s:?}: {port:?} is not a port"))?;
    let not_a_host = || format!("{s:?}: {host:?} is not a host name or address");
    let host = match host.strip_prefix('[') {
        Some(inner) => {
            let inner = inner.strip_suffix(']').ok_or_else(not_a_host)?;
            inner.parse::<std::net::Ipv6Addr>().map_err(|_| not_a_host())?;
            inner
        }
        None if host.is_empty() => return Err(format!("{s:?} names no host")),
        None => {
            let ok = |b: u8| b.is_ascii_alphanumeric() || b"-._".contains(&b);
            if !host.bytes().all(ok) {
                return Err(not_a_host());
            }
            host
        }
    };
    Ok((host.to_ascii_lowercase(), port))
}

/// `--proxy-url https://host[:port][/]` into the host to connect to (and verify, and send
/// as SNI) and its port, 443 by default.
pub fn parse_proxy_url(url: &str) -> Result<(String, u16), String> {
    let bad = |why: &str| format!("--proxy-url {url:?} {why}");
    let uri: http::Uri = url.parse().map_err(|_| bad("is not a URL"))?;
    if uri.scheme_str() != Some("https") {
        return Err(bad("must start with https://"));
    }
    if uri.path_and_query().is_some_and(|p| p.as_str() != "/" && !p.as_str().is_empty()) {
        return Err(bad("must name only a host and port (no path or query)"));
    }
    let authority = uri.authority().ok_or_else(|| bad("names no host"))?;
    if authority.as_str().contains('@') {
        return Err(bad("must not carry credentials"));
    }
    let host = authority.host().trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(bad("names no host"));
    }
    // What follows the host (`]` of an IPv6 literal included): nothing, or `:port`.
    let after = &authority.as_str()[authority.as_str().rfind(']').map_or(authority.host().len(), |i| i + 1)..];
    let port = match after.strip_prefix(':') {
        None => 443,
        Some(p) => match p.parse::<u16>() {
            Ok(0) => return Err(bad("names port 0")),
            Ok(p) => p,
            Err(_) => return Err(bad(&format!("has a bad port {p:?}"))),
        },
    };
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
    pub(crate) token: tokio::sync::RwLock<Option<Token>>,
    /// Set when HTTP/3 learnt from `Alt-Svc` could not be reached: the run stays on TCP.
    pub(crate) h3_failed: AtomicBool,
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
            Transport::Auto => self.h3_port.load(Ordering::Relaxed) != 0 && !self.h3_failed.load(Ordering::Relaxed),
            Transport::Http1 | Transport::Http2 => false,
        }
    }

    /// HTTP/3 learnt from `Alt-Svc` did not answer (UDP blocked on the way, say): this and
    /// the later tunnels of the run go over TCP.
    pub(crate) fn h3_unreachable(&self) -> bool {
        if self.opts.transport != Transport::Auto {
            return false;
        }
        self.h3_failed.store(true, Ordering::Relaxed);
        true
    }

    /// Remembers the proxy's `Alt-Svc` (`h3=":443"`): later tunnels take HTTP/3.
    pub(crate) fn learn_alt_svc(&self, headers: &http::HeaderMap) {
        if self.opts.transport != Transport::Auto || self.h3_failed.load(Ordering::Relaxed) {
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
        authority.strip_prefix(':')?.parse().ok().filter(|p| *p != 0)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proxy_urls_name_a_host_and_a_port() {
        assert_eq!(parse_proxy_url("https://Ingress.example.com").unwrap(), ("ingress.example.com".into(), 443));
        assert_eq!(parse_proxy_url("https://ingress.example.com/").unwrap(), ("ingress.example.com".into(), 443));
        assert_eq!(parse_proxy_url("https://ingress.example.com:8443").unwrap(), ("ingress.example.com".into(), 8443));
        assert_eq!(parse_proxy_url("https://127.0.0.1:8443/").unwrap(), ("127.0.0.1".into(), 8443));
        assert_eq!(parse_proxy_url("https://[::1]:8443").unwrap(), ("::1".into(), 8443));
        assert_eq!(parse_proxy_url("https://[::1]").unwrap(), ("::1".into(), 443));
        for (bad, why) in [
            ("http://ingress.example.com", "https://"),
            ("ingress.example.com", "https://"),
            ("https://ingress.example.com/path", "no path"),
            ("https://ingress.example.com/?q=1", "no path"),
            ("https://ingress.example.com:0", "port 0"),
            ("https://ingress.example.com:99999", "bad port"),
            ("https://ingress.example.com:", "bad port"),
            ("https://user:pw@ingress.example.com", "credentials"),
            ("https://", "not a URL"),
        ] {
            let err = parse_proxy_url(bad).unwrap_err();
            assert!(err.contains(why), "{bad}: {err}");
        }
    }

    #[test]
    fn a_token_never_shows_in_debug() {
        let t: Token = "eyJhbGciOiJFUzI1NiJ9.secret.sig".parse().unwrap();
        assert_eq!(t.expose(), "eyJhbGciOiJFUzI1NiJ9.secret.sig");
        assert!(!format!("{t:?}").contains("secret"));
    }

    #[test]
    fn alt_svc_is_followed_only_to_the_same_host() {
        assert_eq!(alt_svc_h3_port(r#"h3=":8443"; ma=86400"#), Some(8443));
        assert_eq!(alt_svc_h3_port(r#"h2=":443", h3=":443"; ma=60"#), Some(443));
        assert_eq!(alt_svc_h3_port(r#"h3-29=":443", h3=":9443""#), Some(9443), "drafts are not h3");
        assert_eq!(alt_svc_h3_port(r#"h3="other.example.com:443""#), None, "another host is not followed");
        assert_eq!(alt_svc_h3_port(r#"h3=":0""#), None);
        assert_eq!(alt_svc_h3_port(r#"h3=":443"#), None, "unterminated");
        assert_eq!(alt_svc_h3_port("clear"), None);
        assert_eq!(alt_svc_h3_port(""), None);
    }
}
