//! XTCP: TCP's semantics (RFC 9293, BSD style) carried in UDP datagrams, with
//! TCP's own header on the wire (`spec/xtcp.md`).
//!
//! [`conn`] is one connection's state machine, [`endpoint`] demultiplexes
//! datagrams by connection id and answers SYNs statelessly (cookies), [`wire`]
//! is the segment codec; [`cc`], [`rtt`], [`recv_buf`] and [`send_buf`] are
//! the connection's parts.

pub mod cc;
pub mod conn;
pub mod endpoint;
pub mod recv_buf;
pub mod rtt;
pub mod send_buf;
pub mod seq;
pub mod wire;
