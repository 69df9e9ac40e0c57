//! Downstream TLS: the fixed minimums of PRODUCT.md, SNI certificate selection, client
//! certificate verification, and the self-signed default certificate.

use std::collections::HashMap;
use std::sync::Arc;

use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;

use crate::config::{Certificate, DownstreamMtls, MtlsEnforcement};
use crate::pki::downstream_provider;

/// Certificates indexed for SNI: exact names, one-label wildcards, and the default.
#[derive(Debug)]
pub struct CertStore {
    exact: HashMap<String, Arc<CertifiedKey>>,
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    default: Arc<CertifiedKey>,
    fingerprints: HashMap<usize, String>,
}

impl CertStore {
    /// Indexes `certs`; the first is the default for unknown or missing SNI. Earlier
    /// certificates win when two claim the same name.
    pub fn new(certs: &[Certificate]) -> Self {
        let mut exact = HashMap::new();
        let mut wildcard = HashMap::new();
        let mut fingerprints = HashMap::new();
        for c in certs {
            fingerprints.insert(Arc::as_ptr(&c.key) as usize, c.fingerprint.clone());
            for name in &c.names {
                if let Some(suffix) = name.strip_prefix("*.") {
                    wildcard.entry(suffix.to_owned()).or_insert_with(|| c.key.clone());
                } else {
                    exact.entry(name.clone()).or_insert_with(|| c.key.clone());
                }
            }
        }
        let default = certs.first().map(|c| c.key.clone()).expect("a snapshot always has a certificate");
        Self { exact, wildcard, default, fingerprints }
    }

    /// The certificate for a (lower-cased) server name.
    pub fn resolve(&self, sni: Option<&str>) -> Arc<CertifiedKey> {
        let Some(name) = sni else { return self.default.clone() };
        if let Some(k) = self.exact.get(name) {
            return k.clone();
        }
        if let Some((_, suffix)) = name.split_once('.') {
            if let Some(k) = self.wildcard.get(suffix) {
                return k.clone();
            }
        }
        self.default.clone()
    }

    /// Fingerprint of the certificate a server name gets, to tell whether it changed.
    pub fn fingerprint_for(&self, sni: Option<&str>) -> Option<&str> {
        let key = self.resolve(sni);
        self.fingerprints.get(&(Arc::as_ptr(&key) as usize)).map(String::as_str)
    }
}

/// Resolves certificates from one listener generation's store. A certificate change makes a
/// new generation (see `proxy::drain`), so a connection's certificate is known from the
/// generation that accepted it.
#[derive(Debug)]
pub struct SniResolver(pub Arc<CertStore>);

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        // rustls hands us the SNI already validated and lower-cased.
        Some(self.0.resolve(hello.server_name()))
    }
}

/// ALPN offered on TCP for a codec. `http2` prefers HTTP/2 but still accepts HTTP/1.1
/// clients: an h2-only listener breaks cert-manager's HTTP-01 self-check and old clients.
/// `http3` keeps TCP as `auto` (QUIC has its own config, see [`quic_server_config`]).
pub fn alpn_for(codec: crate::config::CodecType) -> &'static [&'static [u8]] {
    use crate::config::CodecType;
    match codec {
        CodecType::Http1 => &[b"http/1.1"],
        CodecType::Auto | CodecType::Http2 | CodecType::Http3 => &[b"h2", b"http/1.1"],
    }
}

/// Builds the https listener's rustls config.
pub fn server_config(
    resolver: Arc<dyn ResolvesServerCert>,
    alpn: &[&[u8]],
    mtls: Option<&DownstreamMtls>,
) -> Result<ServerConfig, rustls::Error> {
    build(resolver, alpn, mtls, &[&rustls::version::TLS13, &rustls::version::TLS12])
}

/// Builds `quic-ingress`'s rustls config: the same certificates (the same resolver) and
/// client-certificate verification as the https listener, but TLS 1.3 only (QUIC has no
/// other) and ALPN `h3`. 0-RTT stays off: early data could be replayed, and making replay
/// safe would mean holding every non-idempotent request until the handshake completes.
pub fn quic_server_config(
    resolver: Arc<dyn ResolvesServerCert>,
    mtls: Option<&DownstreamMtls>,
) -> Result<ServerConfig, rustls::Error> {
    build(resolver, &[b"h3"], mtls, &[&rustls::version::TLS13])
}

fn build(
    resolver: Arc<dyn ResolvesServerCert>,
    alpn: &[&[u8]],
    mtls: Option<&DownstreamMtls>,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Result<ServerConfig, rustls::Error> {
    let provider = downstream_provider();
    let builder = ServerConfig::builder_with_provider(provider.clone()).with_protocol_versions(versions)?;
    let builder = match mtls {
        None => builder.with_no_client_auth(),
        Some(m) => {
            let mut roots = rustls::RootCertStore::empty();
            for ca in &m.ca {
                roots.add(ca.clone())?;
            }
            let mut v = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .with_crls(m.crls.iter().cloned());
            if m.enforcement != MtlsEnforcement::RejectConnection {
                v = v.allow_unauthenticated();
            }
            let inner = v.build().map_err(|e| rustls::Error::General(e.to_string()))?;
            builder.with_client_cert_verifier(Arc::new(DepthLimited { inner, max_depth: m.max_verify_depth }))
        }
    };
    let mut cfg = builder.with_cert_resolver(resolver);
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    cfg.max_early_data_size = 0;
    // The server's order of suites (AES-256-GCM, AES-128-GCM, then ChaCha20, all AEAD), not
    // the client's: what nginx's `ssl_prefer_server_ciphers` and testssl.sh's cipher-order
    // check expect (docs/hardening.md).
    cfg.ignore_client_order = true;
    Ok(cfg)
}

/// Enforces `max_verify_depth`: how many intermediates may sit between leaf and CA
/// (1 = the CA signs client certificates directly; 0 = no limit).
#[derive(Debug)]
struct DepthLimited {
    inner: Arc<dyn rustls::server::danger::ClientCertVerifier>,
    max_depth: u32,
}

impl rustls::server::danger::ClientCertVerifier for DepthLimited {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }
    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }
    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        self.inner.root_hint_subjects()
    }
    fn verify_client_cert(
        &self,
        end_entity: &rustls_pki_types::CertificateDer<'_>,
        intermediates: &[rustls_pki_types::CertificateDer<'_>],
        now: rustls_pki_types::UnixTime,
    ) -> Result<rustls::server::danger::ClientCertVerified, rustls::Error> {
        if self.max_depth > 0 && intermediates.len() >= self.max_depth as usize {
            return Err(rustls::Error::General(format!(
                "client certificate chain has {} intermediates; max_verify_depth is {}",
                intermediates.len(),
                self.max_depth
            )));
        }
        self.inner.verify_client_cert(end_entity, intermediates, now)
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::self_signed;

    #[test]
    fn sni_prefers_exact_then_one_label_wildcard_then_default() {
        let a = self_signed(&["a.example.com".into()]);
        let w = self_signed(&["*.example.com".into()]);
        let d = self_signed(&["default.test".into()]);
        let store = CertStore::new(&[d.clone(), a.clone(), w.clone()]);
        assert_eq!(store.fingerprint_for(Some("a.example.com")), Some(a.fingerprint.as_str()));
        assert_eq!(store.fingerprint_for(Some("b.example.com")), Some(w.fingerprint.as_str()));
        assert_eq!(store.fingerprint_for(Some("x.b.example.com")), Some(d.fingerprint.as_str()));
        assert_eq!(store.fingerprint_for(Some("example.com")), Some(d.fingerprint.as_str()));
        assert_eq!(store.fingerprint_for(None), Some(d.fingerprint.as_str()));
    }
}
