//! The domain: collaborative review sessions. It knows nothing of HTTP/2.
//!
//! - [`ids`]: the shared string type for ids, paths and lines.
//! - [`ot`]: line operations and their transformation (pure).
//! - [`bridge`]: the operation log and each user's Jupiter bridge.
//! - [`document`], [`comments`]: a session's content under its budgets.
//! - [`dedupe`], [`rate`]: client sequence numbers, rate limits.
//! - [`session`]: one session as a sans-IO state machine.
//! - [`outbox`], [`history`]: per-participant queues and the replay log.
//! - [`envelope`]: a server event encoded from borrowed parts.
//! - [`validate`]: what a client may send (pure).
//! - [`roles`]: roles as capabilities.
//! - [`registry`]: the single task that owns every session.
//! - [`service`]: the four RPCs on the wire layer.
//! - [`web_service`]: the browser participant (Participate + Send).
//! - [`replica`]: the client half of the OT (used by `join`).

pub mod bridge;
pub mod comments;
pub mod counters;
pub mod dedupe;
pub mod document;
pub mod envelope;
pub mod error;
pub mod history;
pub mod ids;
pub mod limits;
pub mod ot;
pub mod outbox;
pub mod principal;
pub mod rate;
pub mod registry;
pub mod replica;
pub mod roles;
pub mod service;
pub mod session;
pub mod upload;
pub mod validate;
pub mod web_service;

/// Milliseconds since the Unix epoch, now.
pub fn now_unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
