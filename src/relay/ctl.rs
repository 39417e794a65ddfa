//! The client↔relay control channel: TLS 1.3 over TCP, read one TLS record at
//! a time so that, after both sides exchanged `close_notify`, the TCP stream
//! sits exactly at the first byte after the TLS session (`spec/relay.md` §5).
//!
//! That is what lets the relay hand the raw TCP connection over to blind
//! forwarding: nothing past the `close_notify` record was ever read into a
//! TLS buffer, on either side, so the peers' own TLS bytes flow untouched.

use crate::relay::records::{Records, ALERT, APPLICATION_DATA};
use proto::relay::wire::{Frame, FrameError, HEADER_LEN, MAX_BODY};
use std::fmt;
use std::io;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// RFC 8446 §5.2: a TLSCiphertext fragment is at most 2^14 + 256 bytes.
const MAX_RECORD: usize = (1 << 14) + 256;
/// Plaintext buffered before a frame completes (bounded: frames are small).
const MAX_PLAINTEXT: usize = 4 * (HEADER_LEN + MAX_BODY);

/// The close_notify alert: level warning, description 0 (RFC 8446 §6.1).
const CLOSE_NOTIFY: [u8; 2] = [1, 0];

/// Errors on the control channel.
#[derive(Debug)]
pub enum CtlError {
    /// Socket error or EOF.
    Io(io::Error),
    /// TLS failed (alert, bad record, certificate rejected …).
    Tls(rustls::Error),
    /// A control frame was malformed or too long.
    Frame(FrameError),
    /// The peer closed the TLS session (close_notify) where a frame was expected.
    Closed,
    /// The peer sent application data after it should have stopped.
    Unexpected,
}

impl fmt::Display for CtlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CtlError::Io(e) => write!(f, "i/o: {e}"),
            CtlError::Tls(e) => write!(f, "TLS: {e}"),
            CtlError::Frame(e) => write!(f, "bad frame: {e}"),
            CtlError::Closed => f.write_str("closed by peer"),
            CtlError::Unexpected => f.write_str("unexpected data after the last frame"),
        }
    }
}

impl std::error::Error for CtlError {}

impl From<io::Error> for CtlError {
    fn from(e: io::Error) -> Self {
        CtlError::Io(e)
    }
}

impl From<rustls::Error> for CtlError {
    fn from(e: rustls::Error) -> Self {
        CtlError::Tls(e)
    }
}

/// A control channel (client or server side).
pub struct CtlChannel {
    tcp: TcpStream,
    tls: Tls,
    plain: Vec<u8>,
    peer_closed: bool,
    out: Vec<u8>,
}

/// Who protects the records: rustls (handshake and beyond), or, once a
/// relay compacted a waiting host's channel, [`Records`] alone.
enum Tls {
    Rustls(Box<rustls::Connection>),
    Records(Box<Records>),
}

impl fmt::Debug for CtlChannel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CtlChannel")
            .field("peer", &self.tcp.peer_addr().ok())
            .field("peer_closed", &self.peer_closed)
            .finish_non_exhaustive()
    }
}

impl CtlChannel {
    /// Wrap a TCP stream and a fresh rustls connection; call [`CtlChannel::handshake`] next.
    pub fn new(tcp: TcpStream, tls: impl Into<rustls::Connection>) -> CtlChannel {
        CtlChannel {
            tcp,
            tls: Tls::Rustls(Box::new(tls.into())),
            plain: Vec::new(),
            peer_closed: false,
            out: Vec::new(),
        }
    }

    /// The TCP stream (e.g. for its addresses).
    pub fn tcp(&self) -> &TcpStream {
        &self.tcp
    }

    /// The negotiated ALPN protocol.
    pub fn alpn(&self) -> Option<&[u8]> {
        match &self.tls {
            Tls::Rustls(c) => c.alpn_protocol(),
            // Only a channel past its first frames is compacted.
            Tls::Records(_) => None,
        }
    }

    /// The peer's end-entity certificate, once the handshake is done.
    pub fn peer_certificate(&self) -> Option<&rustls::pki_types::CertificateDer<'static>> {
        match &self.tls {
            Tls::Rustls(c) => c.peer_certificates().and_then(|c| c.first()),
            // Only the relay compacts, and its clients present no certificate.
            Tls::Records(_) => None,
        }
    }

    async fn flush_tls(&mut self) -> io::Result<()> {
        let Tls::Rustls(tls) = &mut self.tls else {
            return Ok(());
        };
        while tls.wants_write() {
            self.out.clear();
            tls.write_tls(&mut self.out)?;
            self.tcp.write_all(&self.out).await?;
        }
        Ok(())
    }

    /// Keep only what the rest of a waiting host's channel needs: rustls
    /// gives up its traffic secrets to [`Records`] and is freed with its
    /// buffers (`spec/relay.md` §9.6). Only after the handshake, with nothing
    /// unread or unsent; a relay's `ServerConfig` must allow the extraction.
    pub fn compact(self) -> Result<CtlChannel, CtlError> {
        let CtlChannel {
            tcp,
            tls,
            plain,
            peer_closed,
            out: _,
        } = self;
        let tls = match tls {
            Tls::Rustls(c) => {
                if !plain.is_empty() || peer_closed {
                    return Err(CtlError::Unexpected);
                }
                Tls::Records(Box::new(Records::new(&c.dangerous_extract_secrets()?)?))
            }
            records => records,
        };
        Ok(CtlChannel {
            tcp,
            tls,
            plain: Vec::new(),
            peer_closed,
            out: Vec::new(),
        })
    }

    /// Protect and send `data` of inner type `content_type` (compacted
    /// channel), or hand it to rustls and flush.
    async fn write_record(&mut self, content_type: u8, data: &[u8]) -> Result<(), CtlError> {
        match &mut self.tls {
            Tls::Rustls(tls) => {
                if content_type == ALERT {
                    tls.send_close_notify();
                } else {
                    io::Write::write_all(&mut tls.writer(), data)?;
                }
                self.flush_tls().await?;
            }
            Tls::Records(r) => {
                self.out.clear();
                r.seal(content_type, data, &mut self.out)?;
                self.tcp.write_all(&self.out).await?;
                self.out = Vec::new();
            }
        }
        Ok(())
    }

    /// Read exactly one TLS record from the socket and process it.
    async fn read_record(&mut self) -> Result<(), CtlError> {
        let mut rec = vec![0u8; 5];
        self.tcp.read_exact(&mut rec).await?;
        let len = usize::from(u16::from_be_bytes([rec[3], rec[4]]));
        if len > MAX_RECORD {
            return Err(CtlError::Tls(rustls::Error::InvalidMessage(
                rustls::InvalidMessage::MessageTooLarge,
            )));
        }
        rec.resize(5 + len, 0);
        //= spec/relay.md#RL-CLOSE-2
        //# an implementation MUST NOT let bytes past the peer's close_notify
        //# record disappear into its TLS library's input buffer.
        self.tcp.read_exact(&mut rec[5..]).await?;
        let tls = match &mut self.tls {
            Tls::Rustls(tls) => tls,
            Tls::Records(r) => {
                let (kind, content) = r.open(&mut rec)?;
                return match (kind, content) {
                    (APPLICATION_DATA, data) => {
                        if self.plain.len() + data.len() > MAX_PLAINTEXT {
                            return Err(CtlError::Frame(FrameError::TooLong));
                        }
                        self.plain.extend_from_slice(data);
                        Ok(())
                    }
                    // close_notify (RFC 8446 §6.1); any other alert ends the
                    // channel with an error.
                    (ALERT, [_, 0]) => {
                        self.peer_closed = true;
                        Ok(())
                    }
                    _ => Err(CtlError::Unexpected),
                };
            }
        };
        let mut slice = &rec[..];
        while !slice.is_empty() {
            if tls.read_tls(&mut slice)? == 0 {
                break;
            }
        }
        let state = match tls.process_new_packets() {
            Ok(s) => s,
            Err(e) => {
                // Tell the peer why (alert), best effort.
                let _ = self.flush_tls().await;
                return Err(e.into());
            }
        };
        let n = state.plaintext_bytes_to_read();
        if n > 0 {
            if self.plain.len() + n > MAX_PLAINTEXT {
                return Err(CtlError::Frame(FrameError::TooLong));
            }
            let start = self.plain.len();
            self.plain.resize(start + n, 0);
            io::Read::read_exact(&mut tls.reader(), &mut self.plain[start..])?;
        }
        if state.peer_has_closed() {
            self.peer_closed = true;
        }
        Ok(())
    }

    /// Complete the TLS handshake.
    pub async fn handshake(&mut self) -> Result<(), CtlError> {
        let handshaking = |tls: &Tls| matches!(tls, Tls::Rustls(c) if c.is_handshaking());
        while handshaking(&self.tls) {
            self.flush_tls().await?;
            if matches!(&self.tls, Tls::Rustls(c) if c.is_handshaking() && c.wants_read()) {
                self.read_record().await?;
            }
        }
        self.flush_tls().await?;
        Ok(())
    }

    /// Send one frame.
    pub async fn send(&mut self, frame: &Frame<'_>) -> Result<(), CtlError> {
        let bytes = frame
            .to_vec()
            .map_err(|_| CtlError::Frame(FrameError::TooLong))?;
        self.write_record(APPLICATION_DATA, &bytes).await
    }

    /// Receive one frame's bytes (parse them with [`Frame::parse`]).
    pub async fn recv(&mut self) -> Result<Vec<u8>, CtlError> {
        loop {
            match Frame::parse(&self.plain) {
                Ok((_, used)) => {
                    let rest = self.plain.split_off(used);
                    return Ok(std::mem::replace(&mut self.plain, rest));
                }
                Err(FrameError::Incomplete { .. }) => {
                    if self.peer_closed {
                        return Err(CtlError::Closed);
                    }
                    self.read_record().await?;
                }
                Err(e) => return Err(CtlError::Frame(e)),
            }
        }
    }

    /// Wait, without consuming anything, until the peer sends a byte or closes:
    /// `Ok(())` means the peer closed or sent something it should not have.
    /// Cancel-safe.
    pub async fn peer_activity(&self) -> io::Result<()> {
        let mut b = [0u8; 1];
        self.tcp.peek(&mut b).await.map(|_| ())
    }

    /// End the TLS session at a record boundary: send `close_notify`, read
    /// records up to the peer's `close_notify`, and hand back the raw TCP
    /// stream positioned right after it.
    pub async fn finish(mut self) -> Result<TcpStream, CtlError> {
        self.write_record(ALERT, &CLOSE_NOTIFY).await?;
        while !self.peer_closed {
            self.read_record().await?;
        }
        if !self.plain.is_empty() {
            return Err(CtlError::Unexpected);
        }
        Ok(self.tcp)
    }

    /// Send an error frame and close (best effort, errors ignored).
    pub async fn fail(mut self, frame: &Frame<'_>) {
        let _ = self.send(frame).await;
        let _ = self.write_record(ALERT, &CLOSE_NOTIFY).await;
        let _ = self.tcp.shutdown().await;
    }
}
