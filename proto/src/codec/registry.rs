//! Every first byte, on every channel where several formats arrive mixed.
//!
//! A receiver tells formats apart by their first byte, so two formats that
//! can reach the same socket or stream must never share one. This is the
//! one list; the codecs take their type bytes from here, and the tests below
//! check that no two formats on one channel collide and that each parser
//! accepts exactly the bytes registered for it.
//!
//! | channel | first byte | format | spec |
//! |---|---|---|---|
//! | UDP datagram | `0x01` | XTCP segment (its version byte) | `spec/xtcp.md` |
//! | UDP datagram | `0xA0..=0xAF` | side channel: never XTCP, handed to the runtime | `spec/relay.md` §12 |
//! | UDP datagram | `0xA0` | UDP address service request | `spec/relay.md` §12.1 |
//! | UDP datagram | `0xA1` | UDP address service response | `spec/relay.md` §12.2 |
//! | UDP datagram | `0xA2` | punch probe | `spec/direct.md` §4.3 |
//! | relay control | `0x01` `0x02` | `CREATE`, `JOIN` (client → relay) | `spec/relay.md` §4 |
//! | relay control | `0x81` `0x82` `0xE0` | `CREATED`, `PAIRED`, `ERROR` (relay → client) | `spec/relay.md` §4 |
//! | session path | `0x01..=0x0A` | `DATA` … `CLOSE` | `spec/direct.md` §2 |
//!
//! The relay control channel (inside client↔relay TLS) and a session path
//! (inside the peers' end-to-end TLS) are separate streams: their type bytes
//! may coincide. The UDP datagram channel is every UDP socket xtcp binds: a
//! peer's XTCP endpoint socket receives XTCP, address service responses and
//! probes; the relay's service socket receives requests; spray sockets
//! receive probes. They are treated as one channel, so any datagram is
//! unambiguous wherever it lands.

use core::ops::RangeInclusive;

/// A stream or socket on which differently formatted messages arrive mixed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Channel {
    /// Any UDP socket of xtcp (XTCP endpoint, relay UDP service, spray socket).
    Datagram,
    /// The relay control frames inside client↔relay TLS (`spec/relay.md` §4).
    RelayControl,
    /// The session frames on a path, inside the peers' TLS (`spec/direct.md` §2).
    Session,
}

/// First bytes of UDP datagrams.
pub mod datagram {
    use super::RangeInclusive;

    /// An XTCP segment: its first byte is the XTCP version.
    pub const XTCP: u8 = crate::xtcp::wire::XTCP_VERSION;
    /// First bytes reserved for datagrams that share an XTCP socket without
    /// being XTCP; the runtime hands them to its side channel.
    pub const SIDE_CHANNEL: RangeInclusive<u8> = 0xA0..=0xAF;
    /// UDP address service request, peer → relay (`spec/relay.md` §12.1).
    pub const UDP_SERVICE_REQUEST: u8 = 0xA0;
    /// UDP address service response, relay → peer (`spec/relay.md` §12.2).
    pub const UDP_SERVICE_RESPONSE: u8 = 0xA1;
    /// Punch probe, peer → peer (`spec/direct.md` §4.3).
    pub const PUNCH_PROBE: u8 = 0xA2;
}

/// Frame types on the relay control channel (`spec/relay.md` §4).
pub mod relay {
    /// Host → relay: register a waiting session.
    pub const CREATE: u8 = 0x01;
    /// Guest → relay: join a waiting session.
    pub const JOIN: u8 = 0x02;
    /// Relay → host: the session is registered.
    pub const CREATED: u8 = 0x81;
    /// Relay → both: paired.
    pub const PAIRED: u8 = 0x82;
    /// Relay → client: the request failed.
    pub const ERROR: u8 = 0xE0;
}

/// Frame types on a session path (`spec/direct.md` §2).
pub mod session {
    /// Application bytes.
    pub const DATA: u8 = 0x01;
    /// Cumulative acknowledgement.
    pub const ACK: u8 = 0x02;
    /// First frame on every path.
    pub const RESUME: u8 = 0x03;
    /// End of the sender's stream.
    pub const FIN: u8 = 0x04;
    /// Candidate addresses.
    pub const CANDIDATES: u8 = 0x05;
    /// Start a punch attempt.
    pub const PUNCH: u8 = 0x06;
    /// The sender moves to another path.
    pub const PATH_SWITCH: u8 = 0x07;
    /// Liveness probe.
    pub const KEEPALIVE: u8 = 0x08;
    /// Answer to a liveness probe.
    pub const KEEPALIVE_ACK: u8 = 0x09;
    /// The session ends.
    pub const CLOSE: u8 = 0x0A;
}

/// One registered first byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Where it arrives.
    pub channel: Channel,
    /// The byte.
    pub first: u8,
    /// The format's name as its spec writes it.
    pub name: &'static str,
}

const fn e(channel: Channel, first: u8, name: &'static str) -> Entry {
    Entry {
        channel,
        first,
        name,
    }
}

/// Every first byte in use, by channel.
pub const ENTRIES: &[Entry] = &[
    e(Channel::Datagram, datagram::XTCP, "XTCP segment"),
    e(
        Channel::Datagram,
        datagram::UDP_SERVICE_REQUEST,
        "address request",
    ),
    e(
        Channel::Datagram,
        datagram::UDP_SERVICE_RESPONSE,
        "address response",
    ),
    e(Channel::Datagram, datagram::PUNCH_PROBE, "punch probe"),
    e(Channel::RelayControl, relay::CREATE, "CREATE"),
    e(Channel::RelayControl, relay::JOIN, "JOIN"),
    e(Channel::RelayControl, relay::CREATED, "CREATED"),
    e(Channel::RelayControl, relay::PAIRED, "PAIRED"),
    e(Channel::RelayControl, relay::ERROR, "ERROR"),
    e(Channel::Session, session::DATA, "DATA"),
    e(Channel::Session, session::ACK, "ACK"),
    e(Channel::Session, session::RESUME, "RESUME"),
    e(Channel::Session, session::FIN, "FIN"),
    e(Channel::Session, session::CANDIDATES, "CANDIDATES"),
    e(Channel::Session, session::PUNCH, "PUNCH"),
    e(Channel::Session, session::PATH_SWITCH, "PATH_SWITCH"),
    e(Channel::Session, session::KEEPALIVE, "KEEPALIVE"),
    e(Channel::Session, session::KEEPALIVE_ACK, "KEEPALIVE_ACK"),
    e(Channel::Session, session::CLOSE, "CLOSE"),
];

/// The format registered for `first` on `channel`, if any.
pub fn lookup(channel: Channel, first: u8) -> Option<&'static Entry> {
    ENTRIES
        .iter()
        .find(|e| e.channel == channel && e.first == first)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHANNELS: [Channel; 3] = [Channel::Datagram, Channel::RelayControl, Channel::Session];

    fn registered(channel: Channel, b: u8) -> bool {
        lookup(channel, b).is_some()
    }

    #[test]
    fn no_two_formats_share_a_first_byte_on_one_channel() {
        for (i, a) in ENTRIES.iter().enumerate() {
            for b in &ENTRIES[i + 1..] {
                assert!(
                    a.channel != b.channel || a.first != b.first,
                    "{:?}: {} and {} both start with {:#04x}",
                    a.channel,
                    a.name,
                    b.name,
                    a.first
                );
            }
        }
        for c in CHANNELS {
            assert!(ENTRIES.iter().any(|e| e.channel == c), "{c:?} is empty");
        }
    }

    /// XTCP is outside the side-channel range, every other datagram inside it.
    #[test]
    fn side_channel_range_holds_every_non_xtcp_datagram() {
        assert!(!datagram::SIDE_CHANNEL.contains(&datagram::XTCP));
        for e in ENTRIES.iter().filter(|e| e.channel == Channel::Datagram) {
            assert_eq!(
                datagram::SIDE_CHANNEL.contains(&e.first),
                e.first != datagram::XTCP,
                "{}",
                e.name
            );
        }
    }

    /// The relay parser knows exactly the registered relay types.
    #[test]
    fn relay_parser_matches_registry() {
        use crate::relay::wire::{Frame, FrameError};
        for b in 0..=u8::MAX {
            let unknown = Frame::parse(&[b, 0, 0]) == Err(FrameError::UnknownType(b));
            assert_eq!(unknown, !registered(Channel::RelayControl, b), "{b:#04x}");
        }
    }

    /// The session parser knows exactly the registered session types.
    #[test]
    fn session_parser_matches_registry() {
        use crate::session::{Frame, FrameError};
        for b in 0..=u8::MAX {
            let unknown = Frame::parse_body(b, &[]) == Err(FrameError::UnknownType(b));
            assert_eq!(unknown, !registered(Channel::Session, b), "{b:#04x}");
        }
    }

    /// Every datagram parser refuses every first byte but its own, and each
    /// encoder writes its registered byte.
    #[test]
    fn datagram_parsers_match_registry() {
        use crate::relay::udp_service::{self, UdpServiceError};
        use crate::session::probe::{self, ProbeError};
        use crate::xtcp::wire::{SegmentRepr, WireError};

        let req = udp_service::encode_request(&[7; 16], 9);
        let (resp, n) = udp_service::encode_response(9, "192.0.2.1:5".parse().unwrap());
        let resp = resp.get(..n).unwrap_or_default();
        let probe = probe::encode_probe(&probe::Probe {
            attempt: 3,
            role: crate::session::Role::Guest,
            nonce: 1,
            echo: 0,
            tag: [1; 32],
        });
        let seg = [0u8; 64];
        assert_eq!(req[0], datagram::UDP_SERVICE_REQUEST);
        assert_eq!(resp[0], datagram::UDP_SERVICE_RESPONSE);
        assert_eq!(probe[0], datagram::PUNCH_PROBE);

        let with = |d: &[u8], b: u8| {
            let mut d = d.to_vec();
            d[0] = b;
            d
        };
        for b in 0..=u8::MAX {
            let r = udp_service::parse_request(&with(&req, b));
            assert_eq!(r.is_ok(), b == datagram::UDP_SERVICE_REQUEST, "{b:#04x}");
            if b != datagram::UDP_SERVICE_REQUEST {
                assert_eq!(r, Err(UdpServiceError::BadType(b)));
            }
            let r = udp_service::parse_response(&with(resp, b));
            assert_eq!(r.is_ok(), b == datagram::UDP_SERVICE_RESPONSE, "{b:#04x}");
            let r = probe::parse_probe(&with(&probe, b));
            assert_eq!(r.is_ok(), b == datagram::PUNCH_PROBE, "{b:#04x}");
            if b != datagram::PUNCH_PROBE {
                assert_eq!(r, Err(ProbeError::BadType(b)));
            }
            let d = with(&seg, b);
            assert_eq!(
                SegmentRepr::parse(&d) == Err(WireError::BadVersion(b)),
                b != datagram::XTCP,
                "{b:#04x}"
            );
        }
    }
}
