//! A downstream connection as its requests see it, the same for TCP and QUIC: the facts a
//! policy may read ([`ConnFacts`]: listener, peer, generation, SNI, ALPN and the verified
//! client certificate chain), what the connection was accepted with ([`Conn`]), and what it
//! shares with its requests while it lives ([`ConnState`]: activity for the idle watchdog,
//! the premature-reset rule's counts, whether the proxy is closing it, how much it wrote).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::CertificateDer;

use super::body::now_ms;
use super::drain::ConnHandle;
use super::idp::TokenCache;
use crate::config::Timeouts;
use crate::policy::eval::CertFacts;

/// PRODUCT.md: per-connection buffer limit.
pub const CONNECTION_BUFFER: usize = 32 * 1024;
/// Largest request head hyper (or h3) will parse; the proxy's own (lower) limits answer 431
/// with a body before this is reached.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;

/// What a listener does with requests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ListenerKind {
    /// TLS, routes served.
    Https,
    /// Plain HTTP, routes served (`insecure_server`).
    Insecure,
    /// Plain HTTP: ACME HTTP-01 paths routed, everything else redirected to https.
    Redirect,
    /// HTTP/3 over QUIC (`codec_type: http3`), routes served (see [`super::accept::quic`]).
    Quic,
}

impl ListenerKind {
    /// The listener name of the reference (and the metrics label).
    pub fn name(self) -> &'static str {
        match self {
            ListenerKind::Https => "https-ingress",
            ListenerKind::Insecure | ListenerKind::Redirect => "http-ingress",
            ListenerKind::Quic => "quic-ingress",
        }
    }

    /// Whether its clients came over TLS (`X-Forwarded-Proto: https`, client certificates).
    pub fn is_tls(self) -> bool {
        matches!(self, ListenerKind::Https | ListenerKind::Quic)
    }
}

/// The client certificate chain the TLS handshake verified against the downstream mTLS CA,
/// leaf first. Shared, not copied, by every request of the connection.
/// What a `client_certificate` policy reads of it (fingerprint, SPKI hash, SANs) is worked
/// out once, at the handshake.
#[derive(Clone, Debug)]
pub struct ClientChain(Arc<[CertificateDer<'static>]>, Arc<CertFacts>);

impl ClientChain {
    /// The chain a handshake reported, or `None` when the client presented none.
    pub fn from_handshake(certs: Option<&[CertificateDer<'static>]>) -> Option<Self> {
        certs.filter(|c| !c.is_empty()).map(|c| Self(c.iter().cloned().collect(), Arc::new(cert_facts(&c[0]))))
    }

    /// The client's own certificate.
    pub fn leaf(&self) -> &CertificateDer<'static> {
        &self.0[0]
    }

    /// The whole chain, leaf first.
    pub fn certificates(&self) -> &[CertificateDer<'static>] {
        &self.0
    }

    /// The leaf's facts for a policy.
    pub fn facts(&self) -> &Arc<CertFacts> {
        &self.1
    }
}

/// A certificate as Pomerium's `client_certificate` criterion reads it: `fingerprint` is the
/// hex SHA-256 of the DER, `spki_hash` the base64 SHA-256 of its SubjectPublicKeyInfo, and
/// the DNS, email and URI subject alternative names. A leaf that does not parse (rustls
/// verified its signature chain, not every extension) has its fingerprint only.
pub fn cert_facts(leaf: &CertificateDer<'_>) -> CertFacts {
    use base64::Engine as _;
    use std::fmt::Write as _;
    use x509_parser::extensions::GeneralName;
    let sha = |b: &[u8]| aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, b);
    let mut facts = CertFacts::default();
    for byte in sha(leaf.as_ref()).as_ref() {
        let _ = write!(facts.fingerprint, "{byte:02x}");
    }
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(leaf.as_ref()) else { return facts };
    facts.spki_hash = base64::engine::general_purpose::STANDARD.encode(sha(cert.public_key().raw));
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                GeneralName::DNSName(n) => facts.san_dns.push((*n).to_owned()),
                GeneralName::RFC822Name(n) => facts.san_email.push((*n).to_owned()),
                GeneralName::URI(n) => facts.san_uri.push((*n).to_owned()),
                _ => {}
            }
        }
    }
    facts
}

/// What the handshake negotiated as the application protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Alpn {
    /// No ALPN (plain TCP, or a TLS client that offered none).
    None,
    /// `http/1.1`.
    Http11,
    /// `h2`.
    H2,
    /// `h3` (QUIC).
    H3,
}

impl Alpn {
    /// From the protocol name a TLS handshake chose.
    pub fn from_protocol(p: Option<&[u8]>) -> Self {
        match p {
            Some(b"h2") => Alpn::H2,
            Some(b"h3") => Alpn::H3,
            Some(b"http/1.1") => Alpn::Http11,
            _ => Alpn::None,
        }
    }
}

/// Facts about a downstream connection, fixed once its handshake is done: what a policy,
/// the access log or a tunnel may ask of the connection a request came on.
#[derive(Clone, Debug)]
pub struct ConnFacts {
    /// Which listener accepted it.
    pub listener: ListenerKind,
    /// The client's address.
    pub peer: SocketAddr,
    /// The local address it reached.
    pub local: SocketAddr,
    /// The listener generation that accepted it.
    pub generation: u64,
    /// The TLS server name the client asked for.
    pub sni: Option<String>,
    /// The negotiated application protocol.
    pub alpn: Alpn,
    /// The verified client certificate chain, when the client presented one.
    pub client_chain: Option<ClientChain>,
}

/// A downstream connection, for the requests on it: its facts, what it was accepted with,
/// and its live state.
pub struct Conn {
    /// Facts fixed at the handshake.
    pub facts: ConnFacts,
    /// `X-Forwarded-For` for its requests: the client IP (see [`forwarded_for`]).
    pub forwarded_for: http::HeaderValue,
    /// The timeouts in force when the connection was accepted.
    pub timeouts: Timeouts,
    /// Activity and request counting.
    pub state: Arc<ConnState>,
    /// Set when the connection is draining: HTTP/1 responses get `Connection: close`.
    pub draining: AtomicBool,
    /// Its registration with the drains: the drain and close signals, held by tunnels too so
    /// that an upgraded connection stays accounted for until it ends.
    pub registration: Arc<ConnHandle>,
    /// The https listener's port, for redirects from `http-ingress`.
    pub https_port: u16,
    /// `Alt-Svc` for every response on this TCP connection while `quic-ingress` listens
    /// (`codec_type: http3`): how browsers find HTTP/3.
    pub alt_svc: Option<http::HeaderValue>,
    /// The last bearer token its requests proved, so that the next one with it is not
    /// verified again.
    pub tokens: TokenCache,
    /// The last session cookie it opened.
    pub sessions: crate::proxy::signin::SessionCache,
    /// The last identity assertion it signed.
    pub assertions: crate::proxy::assertion::AssertionCache,
}

impl Conn {
    /// A connection whose handshake produced `facts`.
    pub fn new(
        facts: ConnFacts,
        timeouts: Timeouts,
        state: Arc<ConnState>,
        registration: ConnHandle,
        https_port: u16,
        alt_svc: Option<http::HeaderValue>,
    ) -> Self {
        Self {
            forwarded_for: forwarded_for(facts.peer),
            facts,
            timeouts,
            state,
            draining: AtomicBool::new(false),
            registration: Arc::new(registration),
            https_port,
            alt_svc,
            tokens: TokenCache::default(),
            sessions: crate::proxy::signin::SessionCache::default(),
            assertions: crate::proxy::assertion::AssertionCache::default(),
        }
    }

    /// Which listener accepted it.
    pub fn listener(&self) -> ListenerKind {
        self.facts.listener
    }

    /// The client's address.
    pub fn peer(&self) -> SocketAddr {
        self.facts.peer
    }
}

/// The `X-Forwarded-For` value of a client: its IP, IPv4-mapped addresses as IPv4.
pub fn forwarded_for(peer: SocketAddr) -> http::HeaderValue {
    http::HeaderValue::from_str(&peer.ip().to_canonical().to_string()).expect("an IP is a valid header value")
}

/// Per-connection counters shared by the watchdog, the IO wrapper and request guards.
///
/// Nothing here wakes the watchdog: it never sleeps past the earliest deadline a later event
/// could create (see [`super::accept::driver`]), so the request path pays a few atomics and no wake-up.
#[derive(Default)]
pub struct ConnState {
    pub(super) active: AtomicUsize,
    pub(super) idle_since: AtomicU64,
    /// First byte of a request head read while no request was active (0 = none).
    pub(super) pending_since: AtomicU64,
    /// HTTP/2 and HTTP/3 requests of this connection sent upstream, and those of them the
    /// client cancelled within [`PREMATURE_RESET_LIFETIME`]: the premature-reset rule
    /// ([`ConnState::note_cancelled`]).
    requests: AtomicU32,
    cancelled: AtomicU32,
    /// The proxy itself is closing the connection (`drain_timeout` ended, a stalled HTTP/1.1
    /// response): requests that end with it are not the client's cancellations.
    pub(crate) closed_by_proxy: AtomicBool,
    /// Successful writes to the client (TCP: counted by the IO wrapper under hyper): a stream
    /// blocked on the client is still progressing while this moves.
    pub(crate) written: AtomicU64,
    /// The premature-reset rule tripped: the connection is to be closed. On TCP (HTTP/2)
    /// [`super::accept::io::Metered`] writes a GOAWAY with ENHANCE_YOUR_CALM at its next read or write, which an
    /// attacking client's next frame brings at once; QUIC checks it at its next request.
    pub(crate) abort: AtomicBool,
    /// hyper's write buffer is empty: the IO wrapper saw a flush complete after the last
    /// write (an HTTP/1.1 connection may rest only then, see [`super::accept::rest`]).
    pub(crate) flushed: AtomicBool,
    /// The HTTP/1.1 connection is putting its codec away: the IO wrapper does not shut the
    /// socket down when hyper ends.
    pub(crate) resting: AtomicBool,
}

/// The premature-reset rule (Envoy's): a connection on which more than half of at least this
/// many requests were cancelled by the client before their response completed is closed.
/// Browsers cancel streams too (navigation, aborted fetches), but not most of hundreds; an
/// attacker that has the proxy start upstream requests and resets them at once does.
pub const PREMATURE_RESET_MIN_REQUESTS: u32 = 200;
/// Only a request cancelled this soon after it began counts (Envoy's
/// `premature_reset_min_stream_lifetime`): a gRPC client whose deadlines fire while an
/// upstream is slow cancels many calls, but not within a second of sending them.
pub const PREMATURE_RESET_LIFETIME: Duration = Duration::from_secs(1);

impl ConnState {
    /// A connection that has just opened: idle, nothing pending.
    pub fn new() -> Arc<Self> {
        let s = Self::default();
        s.idle_since.store(now_ms(), Ordering::Relaxed);
        s.flushed.store(true, Ordering::Relaxed);
        Arc::new(s)
    }

    /// Marks a request active until the returned guard drops (after its response body).
    /// Returns the guard and when the request began arriving (ms, see [`now_ms`]).
    pub fn begin_request(self: &Arc<Self>) -> (RequestGuard, u64) {
        let started = match self.pending_since.swap(0, Ordering::AcqRel) {
            0 => now_ms(),
            t => t,
        };
        self.active.fetch_add(1, Ordering::AcqRel);
        (RequestGuard(self.clone()), started)
    }

    /// Counts a request the client cancelled; marks the connection for closing when the
    /// premature-reset rule ([`PREMATURE_RESET_MIN_REQUESTS`]) trips.
    fn note_cancelled(&self) {
        let cancelled = self.cancelled.fetch_add(1, Ordering::Relaxed) + 1;
        let requests = self.requests.load(Ordering::Relaxed);
        if requests >= PREMATURE_RESET_MIN_REQUESTS && u64::from(cancelled) * 2 > u64::from(requests) {
            self.abort.store(true, Ordering::Release);
        }
    }

    /// A read brought bytes: the first byte of a request head starts its `timeout_read`.
    pub(super) fn note_read(&self) {
        if self.active.load(Ordering::Acquire) == 0 && self.pending_since.load(Ordering::Relaxed) == 0 {
            let _ = self.pending_since.compare_exchange(0, now_ms().max(1), Ordering::AcqRel, Ordering::Relaxed);
        }
    }
}

/// Keeps a connection "active" for the idle timeout while a request or tunnel lives.
pub struct RequestGuard(Arc<ConnState>);

impl RequestGuard {
    /// This HTTP/2 or HTTP/3 request is being sent upstream (the premature-reset rule's
    /// denominator: requests that cost the upstream something, not cheap local answers).
    pub fn forwarded(&self) {
        self.0.requests.fetch_add(1, Ordering::Relaxed);
    }

    /// The client cancelled this forwarded HTTP/2 or HTTP/3 request within
    /// [`PREMATURE_RESET_LIFETIME`] of its start.
    pub fn cancelled(&self) {
        self.0.note_cancelled();
    }

    /// Whether the proxy is closing the connection under this request.
    pub fn closed_by_proxy(&self) -> bool {
        self.0.closed_by_proxy.load(Ordering::Acquire)
    }
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        if self.0.active.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle_since.store(now_ms(), Ordering::Release);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;

    #[test]
    fn certificate_facts_are_pomeriums() {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::new(vec!["alice.internal".to_owned()]).unwrap();
        p.subject_alt_names.push(rcgen::SanType::Rfc822Name("alice@example.com".try_into().unwrap()));
        p.subject_alt_names.push(rcgen::SanType::URI("spiffe://example.com/alice".try_into().unwrap()));
        let cert = p.self_signed(&key).unwrap();
        let facts = cert_facts(cert.der());
        let sha = |b: &[u8]| aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, b).as_ref().to_vec();
        let hex: String = sha(cert.der()).iter().fold(String::new(), |mut s, b| {
            use std::fmt::Write as _;
            let _ = write!(s, "{b:02x}");
            s
        });
        assert_eq!(facts.fingerprint, hex);
        assert_eq!(facts.fingerprint.len(), 64);
        // SPKI: the DER of the public key info, which rcgen hands out as the key's own.
        let spki =
            base64::engine::general_purpose::STANDARD.encode(sha(&rcgen::PublicKeyData::subject_public_key_info(&key)));
        assert_eq!(facts.spki_hash, spki);
        assert_eq!(facts.san_dns, ["alice.internal"]);
        assert_eq!(facts.san_email, ["alice@example.com"]);
        assert_eq!(facts.san_uri, ["spiffe://example.com/alice"]);
        // Not a certificate: a fingerprint, nothing else, and no panic.
        let junk = cert_facts(&CertificateDer::from(vec![0x30, 0x03, 0x02, 0x01]));
        assert_eq!(junk.fingerprint.len(), 64);
        assert!(junk.spki_hash.is_empty() && junk.san_dns.is_empty());
    }
}
