//! What sessions count (messages by kind, transformed edits, resumes, slow
//! consumers), kept as plain numbers inside the sans-IO sessions and handed
//! to whoever observes the registry (the metrics) after each input.

use crate::pb::codereview::session_message::Payload;

/// The kinds of messages, for counting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageKind {
    Edit,
    Comment,
    Cursor,
    Presence,
    File,
    Joined,
    Ack,
    Error,
    Snapshot,
    Notice,
    /// Events sent again from history (late join, resume).
    Replay,
    /// Anything else (join options, token refresh, empty messages).
    Other,
}

impl MessageKind {
    pub const ALL: [MessageKind; 12] = [
        MessageKind::Edit,
        MessageKind::Comment,
        MessageKind::Cursor,
        MessageKind::Presence,
        MessageKind::File,
        MessageKind::Joined,
        MessageKind::Ack,
        MessageKind::Error,
        MessageKind::Snapshot,
        MessageKind::Notice,
        MessageKind::Replay,
        MessageKind::Other,
    ];

    pub fn name(self) -> &'static str {
        match self {
            MessageKind::Edit => "edit",
            MessageKind::Comment => "comment",
            MessageKind::Cursor => "cursor",
            MessageKind::Presence => "presence",
            MessageKind::File => "file",
            MessageKind::Joined => "joined",
            MessageKind::Ack => "ack",
            MessageKind::Error => "error",
            MessageKind::Snapshot => "snapshot",
            MessageKind::Notice => "notice",
            MessageKind::Replay => "replay",
            MessageKind::Other => "other",
        }
    }

    pub fn of(payload: Option<&Payload>) -> MessageKind {
        match payload {
            Some(Payload::Edit(_)) => MessageKind::Edit,
            Some(Payload::Comment(_)) => MessageKind::Comment,
            Some(Payload::Cursor(_)) => MessageKind::Cursor,
            Some(Payload::Presence(_)) => MessageKind::Presence,
            Some(Payload::File(_)) => MessageKind::File,
            Some(Payload::Joined(_)) => MessageKind::Joined,
            Some(Payload::Ack(_)) => MessageKind::Ack,
            Some(Payload::Error(_)) => MessageKind::Error,
            Some(Payload::Snapshot(_)) => MessageKind::Snapshot,
            Some(Payload::Notice(_)) => MessageKind::Notice,
            _ => MessageKind::Other,
        }
    }
}

/// Counts since they were last taken.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counters {
    pub sent: [u64; 12],
    pub received: [u64; 12],
    /// Edits transformed against concurrent ones before applying.
    pub edits_transformed: u64,
    pub resumes_replay: u64,
    pub resumes_snapshot: u64,
    /// Participants ended for falling behind.
    pub slow_consumers: u64,
}

impl Counters {
    pub fn is_empty(&self) -> bool {
        *self == Counters::default()
    }

    /// Adds `other`'s counts to these.
    pub fn add(&mut self, other: &Counters) {
        for (total, n) in self.sent.iter_mut().zip(other.sent) {
            *total += n;
        }
        for (total, n) in self.received.iter_mut().zip(other.received) {
            *total += n;
        }
        self.edits_transformed += other.edits_transformed;
        self.resumes_replay += other.resumes_replay;
        self.resumes_snapshot += other.resumes_snapshot;
        self.slow_consumers += other.slow_consumers;
    }
}

/// Receives session counters (the metrics implement it).
pub trait SessionObserver: Send + Sync + 'static {
    fn record(&self, counters: &Counters);
}

/// Ignores everything.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoSessionObserver;

impl SessionObserver for NoSessionObserver {
    fn record(&self, _: &Counters) {}
}
