//! The framing of `xtcp send` / `xtcp receive`, in one place
//! (`spec/session.md` §6). All integers are big-endian.
//!
//! ```text
//!   sender → receiver  OFFER   "xtcpsnd1" ‖ size u64 ‖ name_len u16 ‖ name (UTF-8)
//!   receiver → sender  REPLY   0x01 ‖ have u64 ‖ SHA-256(first `have` bytes)   accept
//!                              0x00 ‖ reason u8                               decline
//!   sender → receiver  START   from u64          (= have if the prefix hashes match, else 0)
//!   sender → receiver  bytes [from, size) of the file
//!   sender → receiver  DIGEST  SHA-256 of the whole file (32)
//!   receiver → sender  VERDICT 0x01 verified | 0x00 mismatch
//! ```

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The offer's first bytes (protocol and version).
pub const MAGIC: &[u8; 8] = b"xtcpsnd1";
/// The longest file name offered.
pub const MAX_NAME: usize = 255;

/// Why a receiver declined.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decline {
    /// The person said no (or no `--yes` without a terminal).
    Refused = 1,
    /// The file exists and `--force` was not given.
    Exists = 2,
    /// The name is not a plain file name.
    BadName = 3,
}

impl Decline {
    /// The sender's line for it.
    pub fn text(code: u8) -> &'static str {
        match code {
            1 => "the receiver declined",
            2 => "the file exists on the receiver (it can pass --force to overwrite)",
            3 => "the receiver refused the file name",
            _ => "the receiver declined (unknown reason)",
        }
    }
}

/// The receiver's answer to an offer.
pub enum Reply {
    /// Go on: the receiver already has `have` bytes whose SHA-256 is `hash`.
    Accept { have: u64, hash: [u8; 32] },
    /// Stop (a [`Decline`] code).
    Decline(u8),
}

fn bad(what: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_string())
}

/// A name a receiver may create in its directory: one path component, no
/// leading dot, no control characters.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME
        && !name.starts_with('.')
        && !name.contains(['/', '\\'])
        && !name.chars().any(char::is_control)
}

pub async fn write_offer<W: AsyncWrite + Unpin>(
    w: &mut W,
    size: u64,
    name: &str,
) -> std::io::Result<()> {
    let mut b = MAGIC.to_vec();
    b.extend_from_slice(&size.to_be_bytes());
    b.extend_from_slice(&(name.len() as u16).to_be_bytes());
    b.extend_from_slice(name.as_bytes());
    w.write_all(&b).await?;
    w.flush().await
}

pub async fn read_offer<R: AsyncRead + Unpin>(r: &mut R) -> std::io::Result<(u64, String)> {
    let mut m = [0u8; 8];
    r.read_exact(&mut m).await?;
    if &m != MAGIC {
        return Err(bad(
            "the peer is not running `xtcp send` (or another version)",
        ));
    }
    let size = r.read_u64().await?;
    let len = usize::from(r.read_u16().await?);
    if len > MAX_NAME {
        return Err(bad("offered file name too long"));
    }
    let mut name = vec![0u8; len];
    r.read_exact(&mut name).await?;
    let name = String::from_utf8(name).map_err(|_| bad("offered file name is not UTF-8"))?;
    Ok((size, name))
}

pub async fn write_reply<W: AsyncWrite + Unpin>(w: &mut W, reply: &Reply) -> std::io::Result<()> {
    let mut b = Vec::with_capacity(41);
    match reply {
        Reply::Accept { have, hash } => {
            b.push(1);
            b.extend_from_slice(&have.to_be_bytes());
            b.extend_from_slice(hash);
        }
        Reply::Decline(code) => b.extend_from_slice(&[0, *code]),
    }
    w.write_all(&b).await?;
    w.flush().await
}

pub async fn read_reply<R: AsyncRead + Unpin>(r: &mut R) -> std::io::Result<Reply> {
    match r.read_u8().await? {
        0 => Ok(Reply::Decline(r.read_u8().await?)),
        1 => {
            let have = r.read_u64().await?;
            let mut hash = [0u8; 32];
            r.read_exact(&mut hash).await?;
            Ok(Reply::Accept { have, hash })
        }
        _ => Err(bad("unexpected reply")),
    }
}

pub async fn read_hash<R: AsyncRead + Unpin>(r: &mut R) -> std::io::Result<[u8; 32]> {
    let mut h = [0u8; 32];
    r.read_exact(&mut h).await?;
    Ok(h)
}
