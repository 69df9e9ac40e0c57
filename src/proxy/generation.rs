//! Listener generations: everything a downstream connection is accepted with (its
//! certificates, the downstream mTLS CA, `codec_type`, the connection timeouts, and the
//! TLS and QUIC configs built from them), fixed for the connection's life. A change to any
//! of them makes a new generation and drains the old one ([`super::drain`]).

use std::sync::Arc;
use std::time::Duration;

use tokio_rustls::TlsAcceptor;

use super::conn::CONNECTION_BUFFER;
use crate::config::{Certificate, CodecType, DownstreamMtls, Settings, Timeouts};
use crate::tls::CertStore;

/// The settings a connection keeps for its whole life; a change to any of them (or to the
/// certificates) makes a new generation.
#[derive(Clone, Debug)]
pub struct ListenerSettings {
    /// Downstream HTTP versions.
    pub codec_type: CodecType,
    /// Connection-level timeouts.
    pub timeouts: Timeouts,
    /// Client-certificate verification.
    pub downstream_mtls: Option<DownstreamMtls>,
}

impl ListenerSettings {
    /// The listener part of the global settings.
    pub fn of(s: &Settings) -> Self {
        Self { codec_type: s.codec_type, timeouts: s.timeouts, downstream_mtls: s.downstream_mtls.clone() }
    }

    /// Which settings differ (for the log line of a drain).
    pub fn changes(&self, other: &Self) -> Vec<&'static str> {
        let mut out = Vec::new();
        if self.codec_type != other.codec_type {
            out.push("codec_type");
        }
        if self.timeouts.read != other.timeouts.read {
            out.push("timeout_read");
        }
        if self.timeouts.write != other.timeouts.write {
            out.push("timeout_write");
        }
        if self.timeouts.idle != other.timeouts.idle {
            out.push("timeout_idle");
        }
        let mtls_same = match (&self.downstream_mtls, &other.downstream_mtls) {
            (None, None) => true,
            (Some(a), Some(b)) => {
                a.ca == b.ca
                    && a.crls == b.crls
                    && a.enforcement == b.enforcement
                    && a.max_verify_depth == b.max_verify_depth
            }
            _ => false,
        };
        if !mtls_same {
            out.push("downstream_mtls");
        }
        out
    }
}

/// One listener generation: what connections accepted under it are served with.
pub struct ListenerGeneration {
    /// Increases by one per generation; 1 is the first.
    pub id: u64,
    /// Timeouts, codec, mTLS.
    pub settings: ListenerSettings,
    /// The certificates its TLS handshakes choose from, fixed for the generation.
    pub certs: Arc<CertStore>,
    /// `(names, fingerprint)` of each certificate: tells whether a reload changed any.
    pub cert_ids: Vec<(Vec<String>, String)>,
    /// The https listener's TLS acceptor (with this generation's certificates and mTLS).
    pub tls: TlsAcceptor,
    /// `quic-ingress`'s config (the same certificates and mTLS, TLS 1.3, ALPN h3, the QUIC
    /// limits from these settings) when `codec_type` is `http3`. Each QUIC connection is
    /// accepted with the config of the generation current at that moment, on the one UDP
    /// socket every generation shares.
    pub quic: Option<Arc<quinn::ServerConfig>>,
}

/// Request streams a client may have open at once: the same as HTTP/2's
/// `SETTINGS_MAX_CONCURRENT_STREAMS` on the TCP listener.
pub(crate) const MAX_CONCURRENT_STREAMS: u32 = 128;
/// Unidirectional streams a client may open: HTTP/3 needs three (control, QPACK encoder and
/// decoder); the rest leaves room for reserved (grease) stream types, which clients send.
const MAX_UNI_STREAMS: u32 = 8;
/// Unacknowledged bytes the proxy keeps in flight toward one client: the role the kernel's
/// TCP send buffer plays for HTTP/1.1 and HTTP/2. Bounds memory per connection and caps a
/// download at this much per round trip.
const SEND_WINDOW: u64 = 1024 * 1024;
/// The transport idle timeout when `timeout_idle` is disabled: live clients answer the
/// proxy's keep-alives, so this only ever ends connections whose client is gone.
const DEAD_PEER_TIMEOUT: Duration = Duration::from_secs(600);
/// The longest interval between the proxy's keep-alive PINGs.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// quinn's server config for a listener generation: `tls` (from
/// [`crate::tls::quic_server_config`]) plus the QUIC limits.
///
/// Flow control toward the proxy matches HTTP/2 on TCP (32 KiB per stream, the per-connection
/// buffer limit, and four of those per connection). The transport idle timeout is
/// `timeout_idle`; the proxy sends a PING at least every 15 s, so a silent but live stream
/// (a long poll, a quiet upstream) never reaches it, while a connection with no request for
/// `timeout_idle` is closed by the same watchdog as TCP's.
pub fn quic_server_config(tls: rustls::ServerConfig, timeouts: Timeouts) -> Result<quinn::ServerConfig, String> {
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls).map_err(|e| format!("QUIC TLS setup: {e}"))?;
    let mut transport = quinn::TransportConfig::default();
    let idle = timeouts.idle.unwrap_or(DEAD_PEER_TIMEOUT);
    transport
        .max_concurrent_bidi_streams(MAX_CONCURRENT_STREAMS.into())
        .max_concurrent_uni_streams(MAX_UNI_STREAMS.into())
        .stream_receive_window(quinn::VarInt::from_u32(CONNECTION_BUFFER as u32))
        .receive_window(quinn::VarInt::from_u32(4 * CONNECTION_BUFFER as u32))
        .send_window(SEND_WINDOW)
        // CONNECT-UDP's datagrams (RFC 9298), with the per-connection buffer limit of streams.
        .datagram_receive_buffer_size(Some(4 * CONNECTION_BUFFER))
        .datagram_send_buffer_size(4 * CONNECTION_BUFFER)
        .max_idle_timeout(Some(
            quinn::IdleTimeout::try_from(idle).map_err(|_| format!("timeout_idle {idle:?} is too long for QUIC"))?,
        ))
        .keep_alive_interval(Some((idle / 2).min(KEEP_ALIVE)));
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    config.transport_config(Arc::new(transport));
    Ok(config)
}

/// `(names, fingerprint)` of each certificate: what tells a certificate change apart.
pub(crate) fn cert_ids(certs: &[Certificate]) -> Vec<(Vec<String>, String)> {
    certs.iter().map(|c| (c.names.clone(), c.fingerprint.clone())).collect()
}

/// The listener generation for `settings` and its effective `certs`, or why rustls refused
/// its TLS setup.
pub(crate) fn build(id: u64, settings: &Settings, certs: &[Certificate]) -> Result<ListenerGeneration, String> {
    let store = Arc::new(CertStore::new(certs));
    let listener = ListenerSettings::of(settings);
    let resolver = Arc::new(crate::tls::SniResolver(store.clone()));
    let cfg = crate::tls::server_config(
        resolver.clone(),
        crate::tls::alpn_for(listener.codec_type),
        listener.downstream_mtls.as_ref(),
    )
    .map_err(|e| format!("TLS setup: {e}"))?;
    let quic = match listener.codec_type {
        CodecType::Http3 => {
            let tls = crate::tls::quic_server_config(resolver, listener.downstream_mtls.as_ref())
                .map_err(|e| format!("QUIC TLS setup: {e}"))?;
            Some(Arc::new(quic_server_config(tls, listener.timeouts)?))
        }
        _ => None,
    };
    Ok(ListenerGeneration {
        id,
        settings: listener,
        certs: store,
        cert_ids: cert_ids(certs),
        tls: tokio_rustls::TlsAcceptor::from(Arc::new(cfg)),
        quic,
    })
}
