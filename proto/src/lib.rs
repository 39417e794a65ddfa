//! # xtcp-proto — the sans-IO core of xtcp
//!
//! This crate holds everything in xtcp that is pure protocol logic: the XTCP
//! connection state machine (TCP's semantics, BSD style, carried in UDP
//! datagrams), its wire codec, congestion control and the receive/send buffers.
//!
//! It opens no socket, reads no clock and spawns nothing (the quinn-proto and
//! rustls model). Time comes in as an [`Instant`] argument; output comes out as
//! datagrams to transmit and timeouts to poll. That makes every behaviour
//! deterministic and testable in the simulator (`xtcp-sim`).
//!
//! ```text
//!   runtime (xtcp, tokio)                 this crate
//!   ─────────────────────                 ──────────
//!   UDP recv ──────────────► Endpoint::handle_datagram(now, from, bytes)
//!   timer fired ───────────► Connection::handle_timeout(now)
//!   UDP send ◄────────────── Connection::poll_transmit(now, buf)
//!   arm timer ◄──────────── Connection::poll_timeout()
//!   app read/write ◄──────► Connection::read / write / shutdown / abort
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]
#![warn(missing_debug_implementations)]

pub mod codec;
#[doc(hidden)]
pub mod fuzzing;
pub mod relay;
pub mod session;
pub mod time;
pub mod xtcp;

pub use time::Instant;
pub use xtcp::conn::{Config, Connection, ConnectionError, Event, State, Transmit};
pub use xtcp::endpoint::{ConnectionHandle, Endpoint, EndpointConfig};
pub use xtcp::seq::SeqNumber;
