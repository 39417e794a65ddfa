//! The relay: rendezvous by `rendezvous_id`, then blind forwarding
//! (`spec/relay.md`). The server side is `server::Relay` (feature
//! `relay-server`, on by default); clients use [`client::create_session`] and
//! [`client::join_session`].

pub mod client;
pub mod ctl;

// The server and what only it uses (feature `relay-server`).
#[cfg(feature = "relay-server")]
pub mod admission;
#[cfg(feature = "relay-server")]
pub mod audit_file;
#[cfg(feature = "relay-server")]
pub mod forward;
#[cfg(feature = "relay-server")]
pub mod refusals;
#[cfg(feature = "relay-server")]
pub mod server;

pub use client::{RelayClientConfig, RelayError, RelayTrust, UdpService};
#[cfg(feature = "relay-server")]
pub use server::{Relay, RelayConfig};
