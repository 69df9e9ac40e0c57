//! The TLS client configuration every mode uses.

use std::sync::Arc;

use anyhow::Context;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::Resumption;
use rustls::crypto::{aws_lc_rs, SupportedKxGroup, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, ClientConnection, DigitallySignedStruct, SignatureScheme};

/// A TLS connector and the server name to send (SNI) and to check nothing against.
#[derive(Clone)]
pub struct Tls {
    pub connector: tokio_rustls::TlsConnector,
    pub name: ServerName<'static>,
}

impl Tls {
    pub fn new(host: &str) -> anyhow::Result<Self> {
        let name = ServerName::try_from(host.to_owned())
            .with_context(|| format!("{host:?} is not a valid TLS server name"))?;
        Ok(Self { connector: tokio_rustls::TlsConnector::from(client_config()?), name })
    }
}

/// TLS 1.3 only, ALPN `http/1.1`, no session resumption, any server certificate.
///
/// - Only the X25519 key-exchange group is offered. rustls servers (Portcullis) also support
///   the post-quantum hybrid X25519MLKEM768 and would pick it if offered, while the OpenSSL
///   3.0 peers of the benchmark (nginx and HAProxy on Debian bookworm) cannot; offering only
///   X25519 makes every server do the same key exchange, so the handshake figures compare.
/// - Resumption is disabled (no session cache, no tickets, no 0-RTT): every connection is a
///   full handshake, which is what `handshake` measures and what a new client costs.
/// - Certificates are not checked against any root (the benchmark's servers use self-signed
///   certificates made at start), but the handshake signature is, see [`AcceptAnyCert`].
pub fn client_config() -> anyhow::Result<Arc<ClientConfig>> {
    let mut provider = aws_lc_rs::default_provider();
    provider.kx_groups = vec![aws_lc_rs::kx_group::X25519];
    let algorithms = provider.signature_verification_algorithms;
    let mut config = ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .context("building the TLS client configuration")?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnyCert(algorithms)))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config.resumption = Resumption::disabled();
    config.enable_early_data = false;
    Ok(Arc::new(config))
}

/// Accepts any server certificate (no chain, name or expiry check), but still verifies the
/// server's handshake signature with the provider's algorithms, so the client does the same
/// public-key work per handshake that a real client does; only the chain walk is skipped.
#[derive(Debug)]
struct AcceptAnyCert(WebPkiSupportedAlgorithms);

impl ServerCertVerifier for AcceptAnyCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_schemes()
    }
}

/// What a connection negotiated, printed once per run to stderr so that a log shows the
/// key exchange really was X25519, the handshake full and the ALPN http/1.1.
pub fn describe(conn: &ClientConnection) -> String {
    let alpn = conn.alpn_protocol().map_or_else(|| "none".to_owned(), |p| String::from_utf8_lossy(p).into_owned());
    format!(
        "{:?}, {:?}, {:?}, ALPN {alpn}, {:?} handshake",
        conn.protocol_version(),
        conn.negotiated_cipher_suite().map(|s| s.suite()),
        conn.negotiated_key_exchange_group().map(SupportedKxGroup::name),
        conn.handshake_kind(),
    )
}
