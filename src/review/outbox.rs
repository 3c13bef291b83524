//! A participant's outbox: framed messages waiting for its stream to take
//! them. Essential messages (edits, comments, joins, acks) queue in order and
//! count against a byte bound; ephemeral ones (cursor moves, ACTIVE/IDLE) are
//! keyed by user and kind, and a newer one replaces the older one still
//! waiting (latest wins), so they cannot grow the outbox.
//!
//! The output gate: every entry carries the log position (`gate`) that must
//! be durable before it may be taken: the number of the session's log records
//! when it was queued. [`Outbox::take`] stops at the first entry whose gate
//! is beyond the durable position it is given, so nothing is acknowledged or
//! broadcast before the records it follows are on disk, and order is kept.

use std::collections::{HashMap, VecDeque};

use bytes::Bytes;

use super::ids::Text;

/// Bytes of the smallest framed event worth counting on when [`Outbox::take`]
/// makes room for a batch (a smaller one only grows the batch's list).
const SMALLEST_MESSAGE: usize = 32;

/// What an ephemeral message is about; one per key may wait.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EphemeralKey {
    pub user: Text,
    pub kind: EphemeralKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EphemeralKind {
    Cursor,
    Presence,
}

#[derive(Debug)]
enum Entry {
    /// An essential message, with the document version its recipient has
    /// seen once it reads it (None: the message says nothing about that).
    Essential(Bytes, Option<i32>),
    Ephemeral(EphemeralKey, u64),
}

/// An entry and the log position that must be durable before it goes.
#[derive(Debug)]
struct Queued {
    gate: u64,
    entry: Entry,
}

/// The essential backlog went over its bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Overflow {
    pub pending: usize,
}

#[derive(Debug, Default)]
pub struct Outbox {
    queue: VecDeque<Queued>,
    essential_bytes: usize,
    /// Bytes of the joiner's catch-up still queued (exempt from the bound).
    catch_up_bytes: usize,
    ephemeral: HashMap<EphemeralKey, (u64, Bytes)>,
    ephemeral_bytes: usize,
    next_generation: u64,
    stale_entries: usize,
    /// The document version of the latest essential message taken: what
    /// the participant has been sent of the document so far.
    delivered_version: i32,
}

impl Outbox {
    pub fn new() -> Self {
        Outbox::default()
    }

    /// Queues an essential message; fails (queueing nothing) when the
    /// essential backlog would exceed `limit` bytes. Catch-up bytes still
    /// waiting (see [`Outbox::push_catch_up`]) do not count.
    pub fn push(
        &mut self,
        framed: Bytes,
        version: Option<i32>,
        gate: u64,
        limit: usize,
    ) -> Result<(), Overflow> {
        let pending = self.essential_bytes + framed.len();
        if pending - self.catch_up_bytes > limit {
            return Err(Overflow { pending });
        }
        self.essential_bytes = pending;
        self.queue.push_back(Queued {
            gate,
            entry: Entry::Essential(framed, version),
        });
        Ok(())
    }

    /// Queues a message of the catch-up a joiner gets first (replay or
    /// snapshot). It is bounded by the history and session limits, not by the
    /// backlog bound, so a resume after a long absence is not refused for the
    /// very size of what it missed. Only valid before any other message.
    pub fn push_catch_up(&mut self, framed: Bytes, version: Option<i32>, gate: u64) {
        debug_assert_eq!(
            self.essential_bytes, self.catch_up_bytes,
            "catch-up comes first"
        );
        self.essential_bytes += framed.len();
        self.catch_up_bytes += framed.len();
        self.queue.push_back(Queued {
            gate,
            entry: Entry::Essential(framed, version),
        });
    }

    /// Queues an ephemeral message, replacing any still waiting for `key`.
    pub fn push_ephemeral(&mut self, key: EphemeralKey, framed: Bytes, gate: u64) {
        let generation = self.next_generation;
        self.next_generation += 1;
        self.ephemeral_bytes += framed.len();
        if let Some((_, old)) = self.ephemeral.insert(key.clone(), (generation, framed)) {
            self.ephemeral_bytes -= old.len();
            self.stale_entries += 1;
        }
        self.queue.push_back(Queued {
            gate,
            entry: Entry::Ephemeral(key, generation),
        });
        if self.stale_entries > 64 && self.stale_entries > self.queue.len() / 2 {
            self.compact();
        }
    }

    /// Drops queue markers of replaced ephemeral messages.
    fn compact(&mut self) {
        let ephemeral = &self.ephemeral;
        self.queue.retain(|queued| match &queued.entry {
            Entry::Essential(..) => true,
            Entry::Ephemeral(key, generation) => {
                ephemeral.get(key).is_some_and(|(g, _)| g == generation)
            }
        });
        self.stale_entries = 0;
    }

    /// Whether the queued entry is a replaced ephemeral marker.
    fn is_stale(&self, queued: &Queued) -> bool {
        match &queued.entry {
            Entry::Essential(..) => false,
            Entry::Ephemeral(key, generation) => {
                self.ephemeral.get(key).is_none_or(|(g, _)| g != generation)
            }
        }
    }

    /// Takes messages in order, up to `max_bytes` (at least one message when
    /// any may go), stopping at the first whose gate is beyond `durable`.
    pub fn take(&mut self, max_bytes: usize, durable: u64) -> Vec<Bytes> {
        // Room for what is queued, up to as many of the smallest messages as
        // `max_bytes` holds: not grown (and copied) message by message.
        let room = self.queue.len().min(max_bytes / SMALLEST_MESSAGE + 1);
        let mut out = Vec::with_capacity(room);
        let mut taken = 0;
        while let Some(queued) = self.queue.front() {
            if self.is_stale(queued) {
                self.queue.pop_front();
                self.stale_entries = self.stale_entries.saturating_sub(1);
                continue;
            }
            if queued.gate > durable {
                break;
            }
            let next_len = match &queued.entry {
                Entry::Essential(bytes, _) => bytes.len(),
                Entry::Ephemeral(key, _) => self.ephemeral.get(key).map_or(0, |(_, b)| b.len()),
            };
            if !out.is_empty() && taken + next_len > max_bytes {
                break;
            }
            match self.queue.pop_front().expect("front exists").entry {
                Entry::Essential(bytes, version) => {
                    if let Some(version) = version {
                        self.delivered_version = version;
                    }
                    self.essential_bytes -= bytes.len();
                    // Catch-up entries are the first ones queued.
                    self.catch_up_bytes = self.catch_up_bytes.saturating_sub(bytes.len());
                    out.push(bytes);
                }
                Entry::Ephemeral(key, _) => {
                    let (_, bytes) = self.ephemeral.remove(&key).expect("checked above");
                    self.ephemeral_bytes -= bytes.len();
                    out.push(bytes);
                }
            }
            taken += next_len;
        }
        out
    }

    /// Whether everything queued may be taken now (nothing waits for a log
    /// position beyond `durable`): gates only grow along the queue.
    pub fn all_ready(&self, durable: u64) -> bool {
        self.queue
            .back()
            .is_none_or(|queued| queued.gate <= durable)
    }

    /// Whether a message may be taken now (it waits for nothing beyond
    /// `durable`).
    pub fn has_ready(&self, durable: u64) -> bool {
        self.queue
            .iter()
            .find(|queued| !self.is_stale(queued))
            .is_some_and(|queued| queued.gate <= durable)
    }

    /// The document version of the latest essential message taken (0 before
    /// any).
    pub fn delivered_version(&self) -> i32 {
        self.delivered_version
    }

    /// Whether a message is waiting.
    pub fn has_pending(&self) -> bool {
        self.essential_bytes > 0 || !self.ephemeral.is_empty()
    }

    /// Bytes waiting (essential and ephemeral).
    pub fn buffered_bytes(&self) -> usize {
        self.essential_bytes + self.ephemeral_bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn key(user: &str) -> EphemeralKey {
        EphemeralKey {
            user: Arc::from(user),
            kind: EphemeralKind::Cursor,
        }
    }

    #[test]
    fn ephemeral_latest_wins_and_keeps_order() {
        let mut outbox = Outbox::new();
        outbox
            .push(Bytes::from_static(b"e1"), None, 0, 100)
            .unwrap();
        outbox.push_ephemeral(key("a"), Bytes::from_static(b"a1"), 0);
        outbox
            .push(Bytes::from_static(b"e2"), None, 0, 100)
            .unwrap();
        outbox.push_ephemeral(key("a"), Bytes::from_static(b"a2"), 0);
        outbox.push_ephemeral(key("b"), Bytes::from_static(b"b1"), 0);
        let got = outbox.take(usize::MAX, 0);
        assert_eq!(
            got,
            vec![
                Bytes::from_static(b"e1"),
                Bytes::from_static(b"e2"),
                Bytes::from_static(b"a2"),
                Bytes::from_static(b"b1"),
            ]
        );
        assert!(!outbox.has_pending());
        assert_eq!(outbox.buffered_bytes(), 0);
    }

    #[test]
    fn essential_bound_refuses_and_keeps_state() {
        let mut outbox = Outbox::new();
        outbox
            .push(Bytes::from(vec![0u8; 60]), None, 0, 100)
            .unwrap();
        assert_eq!(
            outbox.push(Bytes::from(vec![0u8; 50]), None, 0, 100),
            Err(Overflow { pending: 110 })
        );
        assert_eq!(outbox.buffered_bytes(), 60);
        // Ephemeral messages never overflow, however many.
        for i in 0..10_000 {
            outbox.push_ephemeral(key("a"), Bytes::from(format!("{i}")), 0);
        }
        assert!(outbox.queue.len() < 200, "stale markers are compacted");
        let got = outbox.take(usize::MAX, 0);
        assert_eq!(got.len(), 2);
        assert_eq!(got[1], Bytes::from("9999"));
    }

    #[test]
    fn catch_up_does_not_count_against_the_bound() {
        let mut outbox = Outbox::new();
        outbox.push_catch_up(Bytes::from(vec![0u8; 500]), None, 0);
        outbox
            .push(Bytes::from(vec![0u8; 90]), None, 0, 100)
            .unwrap();
        assert!(
            outbox
                .push(Bytes::from(vec![0u8; 20]), None, 0, 100)
                .is_err()
        );
        assert_eq!(outbox.take(500, 0).len(), 1);
        outbox
            .push(Bytes::from(vec![0u8; 10]), None, 0, 100)
            .unwrap();
        assert_eq!(outbox.buffered_bytes(), 100);
    }

    #[test]
    fn delivered_version_follows_what_was_taken() {
        let mut outbox = Outbox::new();
        outbox.push_catch_up(Bytes::from_static(b"joined"), None, 0);
        outbox
            .push(Bytes::from_static(b"v3"), Some(3), 0, 100)
            .unwrap();
        outbox.push_ephemeral(key("a"), Bytes::from_static(b"cursor"), 0);
        outbox
            .push(Bytes::from_static(b"v4"), Some(4), 0, 100)
            .unwrap();
        assert_eq!(outbox.delivered_version(), 0);
        assert_eq!(outbox.take(8, 0).len(), 2);
        assert_eq!(outbox.delivered_version(), 3);
        outbox.take(100, 0);
        assert_eq!(outbox.delivered_version(), 4);
    }

    #[test]
    fn nothing_goes_before_the_log_position_it_follows_is_durable() {
        let mut outbox = Outbox::new();
        outbox
            .push(Bytes::from_static(b"ack"), Some(1), 3, 100)
            .unwrap();
        outbox.push_ephemeral(key("a"), Bytes::from_static(b"cursor"), 3);
        outbox
            .push(Bytes::from_static(b"later"), Some(2), 5, 100)
            .unwrap();
        assert!(!outbox.has_ready(2));
        assert!(outbox.take(100, 2).is_empty());
        assert!(outbox.has_ready(3));
        assert_eq!(
            outbox.take(100, 4).len(),
            2,
            "the ack and the cursor, in order"
        );
        assert!(!outbox.has_ready(4));
        assert_eq!(outbox.take(100, 5), vec![Bytes::from_static(b"later")]);
        assert_eq!(outbox.delivered_version(), 2);
    }

    #[test]
    fn take_respects_max_but_returns_at_least_one() {
        let mut outbox = Outbox::new();
        outbox
            .push(Bytes::from(vec![0u8; 10]), None, 0, 100)
            .unwrap();
        outbox
            .push(Bytes::from(vec![0u8; 10]), None, 0, 100)
            .unwrap();
        assert_eq!(outbox.take(5, 0).len(), 1);
        assert_eq!(outbox.take(100, 0).len(), 1);
        assert!(outbox.take(100, 0).is_empty());
    }
}
