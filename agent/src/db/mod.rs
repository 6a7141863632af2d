//! Database sessions, audited statement by statement: the pure wire-protocol decoders and
//! the SQL redactor ([`protocol`]: bytes in, messages out, no I/O), the sessions that feed
//! them the captured bytes and turn their messages into events ([`session`]), the decisions
//! on the connects that opened them ([`connects`]), the sessions already open when the agent
//! started ([`existing`]), the kernel's framed capture records ([`frame`]), and database clients' command lines ([`argv`]).

pub mod argv;
pub mod connects;
pub mod existing;
pub mod frame;
pub mod protocol;
pub mod session;

pub use self::protocol::*;
