//! TLS 1.3 configuration shared by every channel xtcp opens: the peers'
//! end-to-end TLS and the client↔relay TLS.
//!
//! TLS 1.3 only (RFC 8446), AEAD suites only, ECDHE on every handshake (so
//! forward secrecy), ring as the crypto provider. The suite order puts
//! AES-256-GCM first, then AES-128-GCM, then ChaCha20-Poly1305.

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{ring as provider, CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use std::fmt;
use std::sync::Arc;

/// The crypto provider: ring, TLS 1.3 AEAD suites in xtcp's order, X25519 then P-256.
pub fn crypto_provider() -> Arc<CryptoProvider> {
    let mut p = provider::default_provider();
    //= spec/session.md#SE-TLS-1
    //# Both peers MUST use TLS 1.3 (RFC 8446) with the following profile
    p.cipher_suites = vec![
        provider::cipher_suite::TLS13_AES_256_GCM_SHA384,
        provider::cipher_suite::TLS13_AES_128_GCM_SHA256,
        provider::cipher_suite::TLS13_CHACHA20_POLY1305_SHA256,
    ];
    p.kx_groups = vec![provider::kx_group::X25519, provider::kx_group::SECP256R1];
    Arc::new(p)
}

/// A self-signed certificate and its key.
pub struct CertAndKey {
    /// DER certificate chain (one self-signed certificate).
    pub chain: Vec<CertificateDer<'static>>,
    /// Its private key.
    pub key: PrivateKeyDer<'static>,
}

impl fmt::Debug for CertAndKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertAndKey")
            .field("chain", &self.chain.len())
            .finish_non_exhaustive()
    }
}

/// Generate a fresh self-signed ECDSA P-256 certificate for `names`.
pub fn self_signed(names: &[&str]) -> Result<CertAndKey, rcgen::Error> {
    let ck = rcgen::generate_simple_self_signed(
        names.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
    )?;
    Ok(CertAndKey {
        chain: vec![ck.cert.der().clone()],
        key: PrivateKeyDer::Pkcs8(ck.signing_key.serialize_der().into()),
    })
}

/// SHA-256 of a DER certificate, lower-case hex.
pub fn fingerprint(cert: &CertificateDer<'_>) -> String {
    hex(ring::digest::digest(&ring::digest::SHA256, cert.as_ref()).as_ref())
}

/// Lower-case hex.
pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Parse hex (colons and spaces allowed between bytes).
pub fn unhex(s: &str) -> Option<Vec<u8>> {
    let clean: Vec<u8> = s.bytes().filter(|c| !matches!(c, b':' | b' ')).collect();
    if !clean.len().is_multiple_of(2) {
        return None;
    }
    clean
        .chunks(2)
        .map(|p| {
            let d = |c: u8| (c as char).to_digit(16);
            Some((d(p[0])? * 16 + d(p[1])?) as u8)
        })
        .collect()
}

/// How a server certificate is accepted when the certificate itself carries
/// no trust: the handshake signature is still checked (so the server holds
/// the key), and `check` decides about the certificate.
pub struct SignatureOnlyVerifier<F> {
    algs: WebPkiSupportedAlgorithms,
    check: F,
}

impl<F> fmt::Debug for SignatureOnlyVerifier<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SignatureOnlyVerifier")
    }
}

impl<F> SignatureOnlyVerifier<F>
where
    F: Fn(&CertificateDer<'_>) -> Result<(), rustls::Error> + Send + Sync,
{
    /// A verifier that runs `check` on the end-entity certificate.
    pub fn new(check: F) -> Self {
        SignatureOnlyVerifier {
            algs: provider::default_provider().signature_verification_algorithms,
            check,
        }
    }
}

impl<F> ServerCertVerifier for SignatureOnlyVerifier<F>
where
    F: Fn(&CertificateDer<'_>) -> Result<(), rustls::Error> + Send + Sync,
{
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        (self.check)(end_entity)?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        // TLS 1.2 is never negotiated (protocol versions are TLS 1.3 only).
        Err(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls12NotOffered,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        //= spec/relay.md#RL-TLS-2
        //# the CertificateVerify signature MUST still be checked
        //= spec/session.md#SE-SIG-1
        //# the guest MUST verify the CertificateVerify signature with the certificate's key
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}
