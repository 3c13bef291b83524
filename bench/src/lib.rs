//! The benchmark peers of `codereview`: a plain tonic server of the same
//! proto with the article's semantics ([`service`] over [`session`]), and
//! what the idle-streams client needs. Dev-only: nothing here ships.
//!
//! The server is written the way a competent tonic user writes the article's
//! server, and no cleverer: a map of sessions behind a mutex, an unbounded
//! channel per participant, each message cloned to every other participant,
//! the last 1000 messages replayed to a joiner. No OT, no sequence numbers,
//! no acknowledgements, no limits: that is the point of the comparison.
#![forbid(unsafe_code)]

pub mod service;
pub mod session;

/// The messages, server and client generated from proto/codereview/v1.
pub mod pb {
    tonic::include_proto!("codereview.v1");
}
