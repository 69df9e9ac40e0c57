//! Certificate material: PEM parsing of certificates, keys and CRLs, building a rustls
//! [`CertifiedKey`] from a chain and key, the crypto providers, and the self-signed default.
//!
//! It sits below both the config validator (which checks PEM it is handed) and the TLS
//! listeners (which serve what was built), so neither has to import the other: `pki` knows
//! only the domain model's [`Certificate`].

use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};

use crate::config::model::Certificate;

/// The process crypto provider: the one `main` installed, or aws-lc-rs for tests and tools
/// that never call `main`.
pub fn provider() -> Arc<CryptoProvider> {
    CryptoProvider::get_default().cloned().unwrap_or_else(|| Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
}

/// The provider restricted to PRODUCT.md's downstream minimums: TLS 1.3 suites, TLS 1.2
/// ECDHE with AES-GCM or ChaCha20-Poly1305 only, groups X25519 and P-256.
pub fn downstream_provider() -> Arc<CryptoProvider> {
    use rustls::crypto::aws_lc_rs::{cipher_suite as cs, kx_group};
    let base = provider();
    let allowed = [
        cs::TLS13_AES_256_GCM_SHA384,
        cs::TLS13_AES_128_GCM_SHA256,
        cs::TLS13_CHACHA20_POLY1305_SHA256,
        cs::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
        cs::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        cs::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
        cs::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
        cs::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
        cs::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
    ];
    Arc::new(CryptoProvider {
        cipher_suites: allowed.to_vec(),
        kx_groups: vec![kx_group::X25519, kx_group::SECP256R1],
        ..(*base).clone()
    })
}

/// Parses a PEM chain and key into a rustls certified key, checking that they belong
/// together, and reads the leaf's DNS names for SNI selection.
pub fn build_certificate(cert_pem: &[u8], key_pem: &[u8], source: &str) -> Result<Certificate, String> {
    let chain = parse_certs(cert_pem).map_err(|e| format!("certificate: {e}"))?;
    let key = parse_private_key(key_pem).map_err(|e| format!("private key: no usable PEM private key found ({e})"))?;
    let signing =
        provider().key_provider.load_private_key(key).map_err(|e| format!("private key: unsupported key ({e})"))?;
    let leaf = chain[0].clone();
    let certified = CertifiedKey::new(chain, signing);
    certified.keys_match().map_err(|e| format!("the private key does not belong to the certificate ({e})"))?;
    let names = leaf_dns_names(&leaf)?;
    Ok(Certificate {
        source: source.to_owned(),
        names,
        fingerprint: sha1_smol::Sha1::from(leaf.as_ref()).digest().to_string(),
        key: Arc::new(certified),
    })
}

fn leaf_dns_names(leaf: &CertificateDer<'_>) -> Result<Vec<String>, String> {
    let cert = webpki::EndEntityCert::try_from(leaf).map_err(|e| format!("certificate: cannot parse leaf ({e})"))?;
    Ok(cert.valid_dns_names().map(str::to_ascii_lowercase).collect())
}

/// Every `CERTIFICATE` block of a PEM text; at least one.
pub fn parse_certs(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Result<Vec<_>, _> = CertificateDer::pem_slice_iter(pem).collect();
    let certs = certs.map_err(|e| format!("invalid PEM ({e})"))?;
    if certs.is_empty() {
        return Err("no PEM CERTIFICATE block found".to_owned());
    }
    Ok(certs)
}

/// The first private key of a PEM text (PKCS#8, PKCS#1 or SEC1). The error is rustls's own
/// reason; callers say which field it concerns.
pub fn parse_private_key(pem: &[u8]) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| e.to_string())
}

/// Every `X509 CRL` block of a PEM text, each one's result apart so that every bad block is
/// reported.
pub fn parse_crls(pem: &[u8]) -> Vec<Result<CertificateRevocationListDer<'static>, String>> {
    CertificateRevocationListDer::pem_slice_iter(pem).map(|r| r.map_err(|e| format!("invalid PEM ({e})"))).collect()
}

/// At most this many names go into the self-signed certificate. Nobody trusts it; the names
/// only make a client's error message readable. Thousands of them (one per route host with
/// 10,000 routes) make a certificate over 64 KiB, which webpki refuses as `BadEncoding`.
pub const MAX_SELF_SIGNED_NAMES: usize = 100;

/// A self-signed certificate for `names` (the first 100), used when none is configured so
/// that the https listener always has something to present (as ingress-nginx's "fake
/// certificate").
pub fn self_signed(names: &[String]) -> Certificate {
    let mut names: Vec<String> = names.iter().take(MAX_SELF_SIGNED_NAMES).cloned().collect();
    if names.is_empty() {
        names.push("localhost".to_owned());
    }
    let key = rcgen::KeyPair::generate().expect("generating a P-256 key cannot fail");
    let mut params = rcgen::CertificateParams::new(names).expect("names were validated as DNS names");
    params.distinguished_name.push(rcgen::DnType::CommonName, "Portcullis default certificate");
    let cert = params.self_signed(&key).expect("self-signing cannot fail");
    build_certificate(cert.pem().as_bytes(), key.serialize_pem().as_bytes(), "self-signed")
        .expect("a freshly generated certificate is valid")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 10,000 routes used to put 10,000 names in the default certificate, which webpki
    /// refused, and the process panicked at start.
    #[test]
    fn self_signed_with_thousands_of_hosts() {
        let many: Vec<String> = (0..10_000).map(|i| format!("host{i}.example.com")).collect();
        let big = self_signed(&many);
        assert_eq!(big.names.len(), MAX_SELF_SIGNED_NAMES);
        assert_eq!(big.names[0], "host0.example.com");
    }
}
