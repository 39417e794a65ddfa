//! TLS 1.3 record protection (RFC 8446 §5.2–§5.3) from the traffic secrets of
//! a finished rustls handshake.
//!
//! A host waiting for its guest needs its control channel for one or two
//! more records (`PAIRED` or an `ERROR`, then `close_notify` both ways), but
//! a rustls connection holds several KiB (its 4 KiB read buffer alone) for
//! as long as it lives. So once `CREATED` is sent the relay takes the
//! secrets out of rustls and keeps only [`Records`]: the cipher, keys, IVs
//! and sequence numbers, about 100 bytes (`spec/relay.md` §9.6).

use crate::relay::ctl::CtlError;
use ring::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey};
use rustls::{ConnectionTrafficSecrets, ExtractedSecrets};

/// TLS 1.3 outer content type of every protected record.
pub(crate) const APPLICATION_DATA: u8 = 23;
/// Inner content type of an alert.
pub(crate) const ALERT: u8 = 21;
/// Largest TLSCiphertext fragment (RFC 8446 §5.2).
const MAX_CIPHERTEXT: usize = (1 << 14) + 256;
/// Largest TLSInnerPlaintext we produce (content plus its type byte).
const MAX_INNER: usize = 1 << 14;

/// One direction's key, IV and next sequence number.
struct Direction {
    key: [u8; 32],
    key_len: usize,
    iv: [u8; aead::NONCE_LEN],
    seq: u64,
}

impl Direction {
    fn new(seq: u64, s: &ConnectionTrafficSecrets) -> Result<(Direction, Cipher), CtlError> {
        let (cipher, key, iv) = match s {
            ConnectionTrafficSecrets::Aes128Gcm { key, iv } => (Cipher::Aes128Gcm, key, iv),
            ConnectionTrafficSecrets::Aes256Gcm { key, iv } => (Cipher::Aes256Gcm, key, iv),
            ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => {
                (Cipher::Chacha20Poly1305, key, iv)
            }
            _ => return Err(unsupported()),
        };
        let mut d = Direction {
            key: [0; 32],
            key_len: key.as_ref().len(),
            iv: [0; aead::NONCE_LEN],
            seq,
        };
        if d.key_len > d.key.len() || iv.as_ref().len() != d.iv.len() {
            return Err(unsupported());
        }
        d.key[..d.key_len].copy_from_slice(key.as_ref());
        d.iv.copy_from_slice(iv.as_ref());
        Ok((d, cipher))
    }

    /// The key for one record and its nonce (the IV XOR the sequence number,
    /// RFC 8446 §5.3); the sequence number moves on.
    fn next(&mut self, cipher: Cipher) -> Result<(LessSafeKey, Nonce), CtlError> {
        let key = UnboundKey::new(cipher.algorithm(), &self.key[..self.key_len])
            .map_err(|_| unsupported())?;
        let mut nonce = self.iv;
        for (n, s) in nonce[4..].iter_mut().zip(self.seq.to_be_bytes()) {
            *n ^= s;
        }
        // A sequence number never wraps (RFC 8446 §5.3).
        self.seq = self
            .seq
            .checked_add(1)
            .ok_or(CtlError::Tls(rustls::Error::EncryptError))?;
        Ok((LessSafeKey::new(key), Nonce::assume_unique_for_key(nonce)))
    }
}

impl Drop for Direction {
    fn drop(&mut self) {
        // Keys do not outlive the channel in freed memory.
        use zeroize::Zeroize;
        self.key.zeroize();
        self.iv.zeroize();
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cipher {
    Aes128Gcm,
    Aes256Gcm,
    Chacha20Poly1305,
}

impl Cipher {
    fn algorithm(self) -> &'static aead::Algorithm {
        match self {
            Cipher::Aes128Gcm => &aead::AES_128_GCM,
            Cipher::Aes256Gcm => &aead::AES_256_GCM,
            Cipher::Chacha20Poly1305 => &aead::CHACHA20_POLY1305,
        }
    }
}

fn unsupported() -> CtlError {
    CtlError::Tls(rustls::Error::General(
        "cipher suite without record support".into(),
    ))
}

fn bad_record() -> CtlError {
    CtlError::Tls(rustls::Error::DecryptError)
}

/// Both directions of a TLS 1.3 session after its handshake.
pub(crate) struct Records {
    cipher: Cipher,
    tx: Direction,
    rx: Direction,
}

impl std::fmt::Debug for Records {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Records")
            .field("cipher", &self.cipher)
            .finish_non_exhaustive()
    }
}

impl Records {
    /// From the secrets rustls gave up.
    pub(crate) fn new(s: &ExtractedSecrets) -> Result<Records, CtlError> {
        let (tx, cipher) = Direction::new(s.tx.0, &s.tx.1)?;
        let (rx, rx_cipher) = Direction::new(s.rx.0, &s.rx.1)?;
        if cipher != rx_cipher {
            return Err(unsupported());
        }
        Ok(Records { cipher, tx, rx })
    }

    /// Append one protected record carrying `data` of inner type
    /// `content_type` to `out`.
    pub(crate) fn seal(
        &mut self,
        content_type: u8,
        data: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), CtlError> {
        if data.len() >= MAX_INNER {
            return Err(CtlError::Tls(rustls::Error::EncryptError));
        }
        let tag = self.cipher.algorithm().tag_len();
        let len = data.len() + 1 + tag;
        let header = [APPLICATION_DATA, 3, 3, (len >> 8) as u8, len as u8];
        let (key, nonce) = self.tx.next(self.cipher)?;
        let start = out.len();
        out.extend_from_slice(&header);
        out.extend_from_slice(data);
        out.push(content_type);
        let mut body = out.split_off(start + header.len());
        key.seal_in_place_append_tag(nonce, Aad::from(header), &mut body)
            .map_err(|_| CtlError::Tls(rustls::Error::EncryptError))?;
        out.extend_from_slice(&body);
        Ok(())
    }

    /// Open one whole record (header included): its inner content type and
    /// content. A record that does not authenticate is an error.
    pub(crate) fn open<'a>(&mut self, record: &'a mut [u8]) -> Result<(u8, &'a [u8]), CtlError> {
        let (header, body) = record.split_at_mut_checked(5).ok_or_else(bad_record)?;
        let len = usize::from(u16::from_be_bytes([header[3], header[4]]));
        if header[0] != APPLICATION_DATA || len != body.len() || len > MAX_CIPHERTEXT {
            return Err(bad_record());
        }
        let aad = Aad::from([header[0], header[1], header[2], header[3], header[4]]);
        let (key, nonce) = self.rx.next(self.cipher)?;
        let inner = key
            .open_in_place(nonce, aad, body)
            .map_err(|_| bad_record())?;
        // TLSInnerPlaintext: content ‖ type ‖ zero padding (RFC 8446 §5.2).
        let end = inner.iter().rposition(|&b| b != 0).ok_or_else(bad_record)?;
        let inner: &'a [u8] = inner;
        Ok((inner[end], &inner[..end]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::crypto::cipher::{AeadKey, Iv};

    fn secrets(mk: fn(AeadKey, Iv) -> ConnectionTrafficSecrets) -> ExtractedSecrets {
        ExtractedSecrets {
            tx: (7, mk(AeadKey::from([1; 32]), Iv::from([2; 12]))),
            rx: (7, mk(AeadKey::from([1; 32]), Iv::from([2; 12]))),
        }
    }

    fn chacha(key: AeadKey, iv: Iv) -> ConnectionTrafficSecrets {
        ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv }
    }

    #[cfg(feature = "relay-server")]
    /// A real rustls client and server, in memory, with `suite`; the
    /// server's secrets then go to [`Records`].
    fn handshake(suite: rustls::SupportedCipherSuite) -> (rustls::ClientConnection, Records) {
        let ck = crate::tls::self_signed(&["relay.test"]).unwrap();
        let mut scfg = (*crate::relay::server::server_tls(ck.chain, ck.key).unwrap()).clone();
        scfg.enable_secret_extraction = true;
        let mut server = rustls::ServerConnection::new(std::sync::Arc::new(scfg)).unwrap();
        let mut p = (*crate::tls::crypto_provider()).clone();
        p.cipher_suites = vec![suite];
        let ccfg = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(p))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(std::sync::Arc::new(
                crate::tls::SignatureOnlyVerifier::new(|_| Ok(())),
            ))
            .with_no_client_auth();
        let name = rustls::pki_types::ServerName::try_from("relay.test").unwrap();
        let mut client = rustls::ClientConnection::new(std::sync::Arc::new(ccfg), name).unwrap();
        let mut buf = Vec::new();
        while client.is_handshaking() || server.is_handshaking() {
            buf.clear();
            client.write_tls(&mut buf).unwrap();
            server.read_tls(&mut &buf[..]).unwrap();
            server.process_new_packets().unwrap();
            buf.clear();
            server.write_tls(&mut buf).unwrap();
            client.read_tls(&mut &buf[..]).unwrap();
            client.process_new_packets().unwrap();
        }
        let records = Records::new(&server.dangerous_extract_secrets().unwrap()).unwrap();
        (client, records)
    }

    #[cfg(feature = "relay-server")]
    #[test]
    fn records_interoperate_with_rustls_for_every_suite() {
        use std::io::{Read, Write};
        for suite in crate::tls::crypto_provider().cipher_suites.iter().copied() {
            let (mut client, mut server) = handshake(suite);
            // Relay → client: a frame, then close_notify.
            let mut out = Vec::new();
            server.seal(APPLICATION_DATA, b"PAIRED", &mut out).unwrap();
            server.seal(ALERT, &[1, 0], &mut out).unwrap();
            client.read_tls(&mut &out[..]).unwrap();
            let state = client.process_new_packets().unwrap();
            assert!(state.peer_has_closed(), "{suite:?}");
            let mut got = Vec::new();
            let _ = client.reader().read_to_end(&mut got);
            assert_eq!(got, b"PAIRED", "{suite:?}");
            // Client → relay: data, then close_notify, one record each.
            client.writer().write_all(b"bye").unwrap();
            client.send_close_notify();
            let mut wire = Vec::new();
            client.write_tls(&mut wire).unwrap();
            let first = 5 + usize::from(u16::from_be_bytes([wire[3], wire[4]]));
            let (one, two) = wire.split_at_mut(first);
            assert_eq!(server.open(one).unwrap(), (APPLICATION_DATA, &b"bye"[..]));
            assert_eq!(server.open(two).unwrap(), (ALERT, &[1u8, 0][..]));
        }
    }

    #[test]
    fn a_sealed_record_opens_once_and_in_order() {
        let mut a = Records::new(&secrets(chacha)).unwrap();
        let mut b = Records::new(&secrets(chacha)).unwrap();
        let mut out = Vec::new();
        a.seal(APPLICATION_DATA, b"first", &mut out).unwrap();
        let first_len = out.len();
        a.seal(ALERT, &[1, 0], &mut out).unwrap();
        let (one, two) = out.split_at_mut(first_len);
        let mut replay = one.to_vec();
        assert_eq!(b.open(one).unwrap(), (APPLICATION_DATA, &b"first"[..]));
        assert_eq!(b.open(two).unwrap(), (ALERT, &[1u8, 0][..]));
        // The same record again: wrong sequence number, refused.
        assert!(b.open(&mut replay).is_err());
    }

    #[test]
    fn a_flipped_bit_or_a_wrong_header_is_refused() {
        let mut a = Records::new(&secrets(chacha)).unwrap();
        let mut out = Vec::new();
        a.seal(APPLICATION_DATA, b"frame", &mut out).unwrap();
        for i in 0..out.len() {
            let mut b = Records::new(&secrets(chacha)).unwrap();
            let mut r = out.clone();
            r[i] ^= 0x40;
            assert!(b.open(&mut r).is_err(), "byte {i} flipped was accepted");
        }
        let mut b = Records::new(&secrets(chacha)).unwrap();
        assert!(b.open(&mut out[..4].to_vec()).is_err());
    }
}
