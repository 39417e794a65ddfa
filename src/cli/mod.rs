//! The `xtcp` command line's helpers: secrets read off the command line,
//! the progress line, stdin/stdout next to a session, and `send` / `receive`
//! (a file over one session).

pub mod progress;
pub mod secrets;
pub mod stdio;
pub mod transfer;
pub mod wire;
