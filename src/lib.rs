//! # xtcp
//!
//! Secure peer-to-peer byte streams between machines that cannot reach each
//! other directly: rendezvous at a relay, end-to-end TLS 1.3 through it, and a
//! direct TCP or UDP (XTCP) path when the network allows one.
//!
//! The protocol logic lives in the sans-IO crate [`proto`] (`xtcp-proto`);
//! this crate moves its bytes and time with tokio.
#![forbid(unsafe_code)]

pub use proto;

pub mod simdemo;
pub use sim;
