//! The relay's wire formats (`spec/relay.md`): the rendezvous frames on the
//! relay's TLS control channel ([`wire`]) and its UDP address service
//! ([`udp_service`]).

pub mod udp_service;
pub mod wire;
