//! # xtcp
//!
//! Secure peer-to-peer byte streams between machines that cannot reach each
//! other directly: rendezvous at a relay, end-to-end TLS 1.3 through it, and a
//! direct TCP or UDP (XTCP) path when the network allows one.
//!
//! A host creates a session on a relay and gets a code; a guest joins with
//! the code (given out of band); both get one [`Session`], an
//! [`AsyncRead`](tokio::io::AsyncRead) + [`AsyncWrite`](tokio::io::AsyncWrite)
//! byte stream, whatever path it takes.
//!
//! ```no_run
//! use tokio::io::{AsyncReadExt, AsyncWriteExt};
//!
//! # async fn host() -> Result<(), Box<dyn std::error::Error>> {
//! // Host: create a session, give the code to the guest, send, close.
//! let opts = xtcp::Options::builder()
//!     .relay("127.0.0.1:4433")
//!     .pin("6f1c…") // the fingerprint `xtcp-relay --self-signed` prints
//!     .token("xt_…") // the operator token, if the relay wants one
//!     .build()?;
//! let waiting = xtcp::host(&opts).await?;
//! println!("code: {}", waiting.code());
//! let mut session = waiting.accept().await?;
//! session.write_all(b"hello").await?;
//! session.close().await?; // the guest has every byte
//! # Ok(())
//! # }
//!
//! # async fn guest(code: &str) -> Result<(), Box<dyn std::error::Error>> {
//! // Guest: join with the code, read to the end of the stream.
//! let opts = xtcp::Options::builder()
//!     .relay("127.0.0.1:4433")
//!     .pin("6f1c…")
//!     .build()?;
//! let mut session = xtcp::join(code, &opts).await?;
//! let mut got = Vec::new();
//! session.read_to_end(&mut got).await?;
//! println!("{} bytes via {}", got.len(), session.path());
//! session.close().await?;
//! # Ok(())
//! # }
//! ```
//!
//! The repository's `examples/` (`host`, `join`, `echo`, `file_transfer`)
//! run this against a local relay.
//!
//! The protocol logic lives in the sans-IO crate [`proto`] (`xtcp-proto`);
//! this crate moves its bytes and time with tokio.
//!
//! ## Modules
//!
//! - [`relay`]: the relay client settings, and [`relay::server`] (the relay
//!   itself) for operators who embed it.
//! - [`transport`]: XTCP (TCP's semantics over UDP) on its own:
//!   [`transport::XtcpEndpoint`], [`transport::XtcpStream`].
//! - [`tls`]: certificate helpers (self-signed certificates, fingerprints).
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

mod api;
mod direct;
mod direct_udp;
mod early;
mod preamble;
pub mod relay;
pub mod ticket;
pub mod tls;
pub mod transport;

// Not API (no documentation, no semver promise): the code-authenticated
// TLS over any stream and the session secret, for the `xtcp` binary
// (`xtcp code`, `xtcp listen/connect --code`) and the repository's tests and
// benches; `session` only re-exports, under the paths `src/main.rs` still uses.
#[doc(hidden)]
pub mod e2e;
// Fuzz oracles (`fuzz/`, replayed by `tests/fuzz_corpus.rs`).
#[doc(hidden)]
pub mod fuzzing;
#[doc(hidden)]
pub mod secret;
#[doc(hidden)]
pub mod session;

pub use api::{
    host, join, join_ticket, Error, Fingerprint, HostSession, Options, OptionsBuilder, Session,
};
pub use direct::DirectOptions;
pub use e2e::{E2eError, E2eOptions};
pub use proto::session::{Path, PathPolicy, SessionFailure};
pub use relay::{RelayClientConfig, RelayError, RelayTrust};
/// A DER certificate, as [`RelayTrust::Ca`] holds them (re-exported from
/// `rustls-pki-types`; `CertificateDer::pem_file_iter` reads a PEM file).
pub use rustls::pki_types::CertificateDer;
pub use session::SessionControl;
