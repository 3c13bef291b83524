//! The benchmark peers of `codereview`: a plain tonic server of the same
//! proto with the article's semantics ([`service`] over [`session`]), and
//! what the idle-streams client needs. Dev-only: nothing here ships.
//!
//! The server is written the way a competent tonic user writes the article's
//! server, and no cleverer: a map of sessions behind a mutex, an unbounded
//! channel per participant, each message cloned to every other participant,
//! the last 1000 messages replayed to a joiner. No OT, no sequence numbers,
//! no acknowledgements, no limits: that is the point of the comparison.
//!
//! `codereview load` works against it in both modes. Its default mode speaks
//! only the article's fields. With `--extended` the first message is the
//! protocol's `Join`, which joins without being broadcast (a joiner still
//! learns who is there: presence updates are kept in the history); client
//! sequence numbers are ignored and no acknowledgement comes back (load
//! needs none: it tracks versions from what it receives), and edit versions
//! are the peer's counter, not a transformed history.
#![forbid(unsafe_code)]

pub mod service;
pub mod session;

/// The messages, server and client generated from proto/codereview/v1.
pub mod pb {
    tonic::include_proto!("codereview.v1");
}
