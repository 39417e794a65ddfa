//! # xtcp
//!
//! Secure peer-to-peer byte streams between machines that cannot reach each
//! other directly: rendezvous at a relay, end-to-end TLS 1.3 through it, and a
//! direct TCP or UDP (XTCP) path when the network allows one.
//!
//! The protocol logic lives in the sans-IO crate [`proto`] (`xtcp-proto`);
//! this crate moves its bytes and time with tokio.
//!
//! ## Features
//!
//! - `relay-server` (default): `relay::server`, the relay itself.
//! - `cli` (default): the `xtcp` and `xtcp-relay` binaries (implies `relay-server`).
//! - `sim` (default): `xtcp demo --sim`, XTCP through the `xtcp-sim` simulator.
//!
//! With `default-features = false` this is the library alone: sessions,
//! end-to-end TLS, the direct paths, the XTCP driver and the relay client.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub use proto;

pub mod api;
pub mod direct;
pub mod direct_udp;
pub mod e2e;
mod early;
pub mod preamble;
pub mod relay;
pub mod secret;
pub mod session;
pub mod ticket;
pub mod tls;
pub mod transport;

pub use api::{host, join, Error, HostSession, Options, Path, Session};
