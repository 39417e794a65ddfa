//! XTCP on a real UDP socket: a tokio driver for the sans-IO [`proto::Endpoint`].
//!
//! ```text
//!   XtcpStream (AsyncRead/AsyncWrite) ─┐  lock, call proto, wake driver
//!   XtcpListener::accept ──────────────┤
//!                                      ▼
//!   driver task ── recvmmsg/GRO ─► Endpoint::handle_datagram ─► wake streams
//!               ── timer ────────► Endpoint::handle_timeout
//!               ── poll_transmit ─► GSO batches ─► sendmsg
//! ```
//!
//! One driver task per endpoint (in the style of quinn's `EndpointDriver`);
//! every connection of the endpoint shares its socket. Backpressure is end to
//! end: `poll_write` waits while the connection's send buffer is full, and the
//! receive window closes while the application does not read.
//!
//! Datagram I/O is batched with quinn-udp (the socket layer quinn runs on, kept
//! by its maintainers; the only unsafe code it takes here is nix's setsockopt
//! for `IP_MTU_DISCOVER`): on Linux, consecutive same-size datagrams to one
//! destination leave in one `sendmsg` with `UDP_SEGMENT` (GSO), and reads take
//! up to `RX_SLOTS` (8) datagrams per `recvmmsg`, each slot possibly a GRO
//! super-datagram that is split at its stride. Where the
//! kernel lacks them quinn-udp falls back to one datagram per call (and turns
//! GSO off by itself after the first `EIO`/`EINVAL`).
//!
//! Each turn of the driver reads first (the socket's queue is where a burst of
//! many connections overflows), then fires due timers, then sends at most
//! `TX_DATAGRAMS` datagrams (the ACKs for what it read among them) before
//! reading again. The driver before this one
//! sent everything it had before reading again, one datagram per syscall: in
//! the 10,000-connection test its socket's receive queue overflowed about 1.3
//! million times per run (`RcvbufErrors` in `/proc/net/snmp`), often enough
//! that ~1 % of the connects lost all seven SYNs or SYN-ACKs.
//!
//! The layer's parts: `socket` batches datagram I/O (GSO/GRO, `recvmmsg`,
//! path MTU discovery), `driver` holds the endpoint's shared state and runs
//! its task, `endpoint` is the [`XtcpEndpoint`] handle (bind, connect,
//! accept), and `stream` the [`XtcpStream`] byte stream and its halves.

use proto::xtcp::conn::ConnectionError;
use std::fmt;
use std::io;

mod driver;
mod endpoint;
mod socket;
mod stream;

pub use endpoint::{EndpointOptions, XtcpEndpoint};
pub use stream::{CloseWaiter, Probe, ProbeSample, XtcpReadHalf, XtcpStream, XtcpWriteHalf};

/// First bytes of datagrams that share an XTCP socket without being XTCP
/// (byte 0 of XTCP is its version, 1): the relay's UDP address service and
/// the peers' punch probes (`spec/direct.md` §4.3). Registered, with every
/// other first byte, in `proto::codec::registry`.
pub const SIDE_CHANNEL: std::ops::RangeInclusive<u8> =
    proto::codec::registry::datagram::SIDE_CHANNEL;

/// Typed errors of XTCP streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XtcpError {
    /// The peer reset the connection.
    Reset,
    /// The peer refused the connection (RST to our SYN).
    Refused,
    /// User timeout, SYN retries or keepalive exhausted.
    TimedOut,
    /// This side aborted.
    Aborted,
    /// The endpoint's driver stopped.
    EndpointClosed,
}

impl fmt::Display for XtcpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            XtcpError::Reset => "connection reset by peer",
            XtcpError::Refused => "connection refused",
            XtcpError::TimedOut => "connection timed out",
            XtcpError::Aborted => "connection aborted",
            XtcpError::EndpointClosed => "endpoint closed",
        })
    }
}

impl std::error::Error for XtcpError {}

impl From<ConnectionError> for XtcpError {
    fn from(e: ConnectionError) -> Self {
        match e {
            ConnectionError::Reset => XtcpError::Reset,
            ConnectionError::Refused => XtcpError::Refused,
            ConnectionError::TimedOut => XtcpError::TimedOut,
            ConnectionError::Aborted => XtcpError::Aborted,
            _ => XtcpError::Reset,
        }
    }
}

impl From<XtcpError> for io::Error {
    fn from(e: XtcpError) -> io::Error {
        let kind = match e {
            XtcpError::Reset => io::ErrorKind::ConnectionReset,
            XtcpError::Refused => io::ErrorKind::ConnectionRefused,
            XtcpError::TimedOut => io::ErrorKind::TimedOut,
            XtcpError::Aborted => io::ErrorKind::ConnectionAborted,
            XtcpError::EndpointClosed => io::ErrorKind::NotConnected,
        };
        io::Error::new(kind, e)
    }
}
