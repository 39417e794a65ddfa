//! The relay: rendezvous by `rendezvous_id`, then blind forwarding
//! (`spec/relay.md`).
//!
//! Applications only need [`RelayClientConfig`] and [`RelayTrust`] (also at
//! the crate root, usually set through [`Options::builder`](crate::Options::builder)).
//! Operators who embed the relay use [`server`] ([`Relay`], [`RelayConfig`];
//! feature `relay-server`, on by default). [`client`] is the bare rendezvous
//! (create or join, no end-to-end TLS) under [`host`](crate::host) and
//! [`join`](crate::join).

pub mod client;
#[doc(hidden)]
pub mod ctl;
mod records;

// The server and what only it uses (feature `relay-server`).
#[cfg(feature = "relay-server")]
#[doc(hidden)]
pub mod admission;
#[cfg(feature = "relay-server")]
pub mod audit_file;
#[cfg(feature = "relay-server")]
mod forward;
#[cfg(feature = "relay-server")]
#[doc(hidden)]
pub mod refusals;
#[cfg(feature = "relay-server")]
pub mod server;
#[cfg(feature = "relay-server")]
#[doc(hidden)]
pub mod token_quota;

pub use client::{RelayClientConfig, RelayError, RelayTrust, UdpService};
#[cfg(feature = "relay-server")]
pub use server::{Relay, RelayConfig};
