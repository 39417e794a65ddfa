//! [`Options`] and its builder.

use super::Error;
use crate::direct::DirectOptions;
use crate::e2e::E2eOptions;
use crate::relay::client::{RelayClientConfig, RelayTrust};
use proto::session::PathPolicy;
use rustls::pki_types::CertificateDer;
use std::time::Duration;

/// Options shared by [`host`](crate::host) and [`join`](crate::join).
///
/// Build them with [`Options::builder`]; [`Options::default`] has no relay
/// yet (add one to `relay.relays`). Both sides need the same relay list
/// (with several relays, both pick the same one by rendezvous hashing).
///
/// ```
/// # fn main() -> Result<(), xtcp::Error> {
/// let opts = xtcp::Options::builder()
///     .relay("relay.example:443")
///     .trust_system_roots()
///     .path_policy(xtcp::PathPolicy::RelayOnly)
///     .build()?;
/// assert_eq!(opts.relay.relays, ["relay.example:443"]);
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// The relays to try, how to trust them, the operator token and the connect timeout.
    pub relay: RelayClientConfig,
    /// End-to-end TLS options: handshake timeout and extra binding.
    pub e2e: E2eOptions,
    /// Direct paths and the session layer (`spec/direct.md`).
    pub direct: DirectOptions,
}

impl Options {
    /// A builder: [`relay`](OptionsBuilder::relay) at least once, then
    /// [`build`](OptionsBuilder::build). The relay's certificate is checked
    /// against the system's roots unless [`pin`](OptionsBuilder::pin) or
    /// [`trust_ca`](OptionsBuilder::trust_ca) says otherwise.
    pub fn builder() -> OptionsBuilder {
        OptionsBuilder::default()
    }
}

/// A relay certificate's SHA-256 fingerprint, for [`OptionsBuilder::pin`]:
/// 32 bytes, or 64 hex digits (colons and spaces between bytes allowed) as
/// `xtcp-relay --self-signed` prints them.
pub trait Fingerprint {
    /// The 32 bytes, or why these are not a fingerprint.
    fn to_fingerprint(&self) -> Result<[u8; 32], String>;
}

impl Fingerprint for [u8; 32] {
    fn to_fingerprint(&self) -> Result<[u8; 32], String> {
        Ok(*self)
    }
}

impl Fingerprint for &[u8; 32] {
    fn to_fingerprint(&self) -> Result<[u8; 32], String> {
        Ok(**self)
    }
}

impl Fingerprint for str {
    fn to_fingerprint(&self) -> Result<[u8; 32], String> {
        crate::tls::unhex(self.trim())
            .and_then(|b| <[u8; 32]>::try_from(b).ok())
            .ok_or_else(|| format!("relay fingerprint {self:?}: not 64 hex digits (SHA-256)"))
    }
}

impl Fingerprint for &str {
    fn to_fingerprint(&self) -> Result<[u8; 32], String> {
        (**self).to_fingerprint()
    }
}

impl Fingerprint for String {
    fn to_fingerprint(&self) -> Result<[u8; 32], String> {
        self.as_str().to_fingerprint()
    }
}

impl Fingerprint for &String {
    fn to_fingerprint(&self) -> Result<[u8; 32], String> {
        self.as_str().to_fingerprint()
    }
}

/// Builds [`Options`]; see [`Options::builder`]. Every setter takes and
/// returns the builder; mistakes (a malformed fingerprint, an unreadable CA
/// file, no relay) are reported by [`build`](OptionsBuilder::build).
#[derive(Clone, Debug, Default)]
#[must_use = "call .build()"]
pub struct OptionsBuilder {
    opts: Options,
    /// The first mistake a setter saw.
    error: Option<String>,
}

impl OptionsBuilder {
    fn fail(&mut self, e: String) {
        self.error.get_or_insert(e);
    }
    /// Add a relay, `host:port` (repeat for a relay list).
    pub fn relay(mut self, addr: impl Into<String>) -> Self {
        self.opts.relay.relays.push(addr.into());
        self
    }
    /// Trust the relay certificate with this SHA-256 fingerprint (what
    /// `xtcp-relay --self-signed` prints): 64 hex digits or 32 bytes. Call
    /// it again to add pins (a self-signed fleet: one per relay); a
    /// certificate that matches any pin is accepted. Replaces a CA or the
    /// system roots set earlier.
    pub fn pin(mut self, fingerprint: impl Fingerprint) -> Self {
        match fingerprint.to_fingerprint() {
            Ok(fp) => match &mut self.opts.relay.trust {
                RelayTrust::Fingerprints(pins) => {
                    if !pins.contains(&fp) {
                        pins.push(fp);
                    }
                }
                t => *t = RelayTrust::pinned(fp),
            },
            Err(e) => self.fail(e),
        }
        self
    }
    /// Trust relay certificates issued by these CAs (instead of the system's roots).
    pub fn trust_ca(mut self, certs: impl IntoIterator<Item = CertificateDer<'static>>) -> Self {
        let certs: Vec<_> = certs.into_iter().collect();
        if certs.is_empty() {
            self.fail("trust_ca: no certificate".into());
        }
        self.opts.relay.trust = RelayTrust::Ca(certs);
        self
    }
    /// Trust relay certificates issued by the CAs in this PEM file.
    pub fn trust_ca_pem_file(self, path: impl AsRef<std::path::Path>) -> Self {
        use rustls::pki_types::pem::PemObject;
        let path = path.as_ref();
        let certs = CertificateDer::pem_file_iter(path)
            .map_err(|e| e.to_string())
            .and_then(|it| it.collect::<Result<Vec<_>, _>>().map_err(|e| e.to_string()));
        match certs {
            Ok(c) if !c.is_empty() => self.trust_ca(c),
            Ok(_) => {
                let mut b = self;
                b.fail(format!("{}: no certificate found", path.display()));
                b
            }
            Err(e) => {
                let mut b = self;
                b.fail(format!("{}: {e}", path.display()));
                b
            }
        }
    }
    /// Trust relay certificates the operating system trusts (the default).
    pub fn trust_system_roots(mut self) -> Self {
        self.opts.relay.trust = RelayTrust::SystemRoots;
        self
    }
    /// The operator token the relay asks of hosts (`xtcp-relay token`
    /// makes one); guests need none.
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.opts.relay.token = Some(token.into());
        self
    }
    /// Bound on reaching one relay: TCP connect plus TLS (default 10 s).
    pub fn connect_timeout(mut self, d: Duration) -> Self {
        self.opts.relay.connect_timeout = d;
        self
    }
    /// Bound on the end-to-end handshake with the peer once paired (default 20 s).
    pub fn handshake_timeout(mut self, d: Duration) -> Self {
        self.opts.e2e.handshake_timeout = d;
        self
    }
    /// Which paths the session may take (default [`PathPolicy::Auto`]:
    /// relay first, direct when proven, back to the relay when it dies).
    /// Applies to the [`direct`](OptionsBuilder::direct) options set so far.
    pub fn path_policy(mut self, policy: PathPolicy) -> Self {
        self.opts.direct.policy = policy;
        self
    }
    /// All the direct path and session tunables at once (replaces an
    /// earlier [`path_policy`](OptionsBuilder::path_policy)).
    pub fn direct(mut self, direct: DirectOptions) -> Self {
        self.opts.direct = direct;
        self
    }
    /// The options, or [`Error::InvalidOptions`] (no relay, a malformed
    /// fingerprint, an unreadable CA file, a zero timeout).
    pub fn build(self) -> Result<Options, Error> {
        if let Some(e) = self.error {
            return Err(Error::InvalidOptions(e));
        }
        let o = self.opts;
        if o.relay.relays.is_empty() {
            return Err(Error::InvalidOptions(
                "no relay: call .relay(\"host:port\")".into(),
            ));
        }
        if let Some(r) = o.relay.relays.iter().find(|r| !r.contains(':')) {
            return Err(Error::InvalidOptions(format!(
                "relay {r:?}: expected host:port"
            )));
        }
        if o.relay.connect_timeout.is_zero() || o.e2e.handshake_timeout.is_zero() {
            return Err(Error::InvalidOptions("timeouts must be positive".into()));
        }
        Ok(o)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builder_checks_what_it_is_given() {
        let hex = "ab".repeat(32);
        let o = Options::builder()
            .relay("127.0.0.1:4433")
            .pin(hex.as_str())
            .token("t")
            .build()
            .unwrap();
        assert!(matches!(&o.relay.trust, RelayTrust::Fingerprints(fp) if fp == &[[0xab; 32]]));
        // Pins add up (a fleet), once each; a CA set earlier is replaced.
        let fleet = Options::builder()
            .relay("a:1")
            .trust_system_roots()
            .pin([1u8; 32])
            .pin([2u8; 32])
            .pin([1u8; 32])
            .build()
            .unwrap();
        assert!(
            matches!(&fleet.relay.trust, RelayTrust::Fingerprints(fp) if fp == &[[1; 32], [2; 32]])
        );
        assert_eq!(o.relay.token.as_deref(), Some("t"));
        let colons = vec!["AB"; 32].join(":");
        assert!(Options::builder().relay("a:1").pin(colons).build().is_ok());
        assert!(Options::builder()
            .relay("a:1")
            .pin([7u8; 32])
            .build()
            .is_ok());
        for bad in [
            Options::builder().build(),
            Options::builder().relay("a:1").pin("abcd").build(),
            Options::builder().relay("nohost").build(),
            Options::builder()
                .relay("a:1")
                .trust_ca_pem_file("/nonexistent")
                .build(),
            Options::builder()
                .relay("a:1")
                .connect_timeout(Duration::ZERO)
                .build(),
        ] {
            assert!(matches!(bad, Err(Error::InvalidOptions(_))), "{bad:?}");
        }
    }
}
