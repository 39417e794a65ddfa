//! The relay: rendezvous by `rendezvous_id`, then blind forwarding
//! (`spec/relay.md`). The server side is [`server::Relay`]; clients use
//! [`client::create_session`] and [`client::join_session`].

pub mod admission;
pub mod audit_file;
pub mod client;
pub mod ctl;
pub mod forward;
pub mod refusals;
pub mod server;

pub use client::{RelayClientConfig, RelayError, RelayTrust, UdpService};
pub use server::{Relay, RelayConfig};
