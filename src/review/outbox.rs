//! What waits for each participant's stream: the session's [`Feed`] of
//! broadcast events, shared by every member, and each member's [`Outbox`]:
//! its place in the feed and the messages for it alone (acknowledgements,
//! replies, its catch-up, cursor moves).
//!
//! A broadcast event is queued once, in the feed, however many members get
//! it: a member's outbox only moves its position past it when its stream
//! takes it. An event names its author's stream, which gets the event's
//! acknowledgement in its place (kept with the event), or nothing. The feed
//! keeps an event until every member is past it.
//!
//! Essential messages (edits, comments, joins, acks) go in order and count
//! against a byte bound: a member's backlog is the feed's bytes past its
//! position plus its own messages. Ephemeral ones (cursor moves,
//! ACTIVE/IDLE) are keyed by user and kind, and a newer one replaces the
//! older one still waiting (latest wins), so they cannot grow the outbox.
//!
//! Order: a member's own message remembers how long the feed was when it was
//! queued, and goes after the feed's events before that point and before
//! the ones after it, so each stream reads everything in the order the
//! session queued it.
//!
//! The output gate: every event and message carries the log position
//! (`gate`) that must be durable before it may be taken: the number of the
//! session's log records when it was queued. [`Outbox::take`] stops at the
//! first one whose gate is beyond the durable position it is given, so
//! nothing is acknowledged or broadcast before the records it follows are
//! on disk, and order is kept.

use std::collections::{HashMap, VecDeque};

use bytes::{Bytes, BytesMut};

use super::ids::{MemberId, Text};

/// Messages smaller than this are copied into a batch's buffer when taken;
/// larger ones (catch-ups, uploads' files) go whole, shared, not copied.
const COPY_BELOW: usize = 4 * 1024;

/// The most a batch's buffer is made for before the messages taken are
/// known to be there (some wait for the log): it grows beyond if need be.
const GUESSED_BUFFER: usize = 16 * 1024;

/// Messages taken for one stream, in order, as the bytes it writes: the
/// small ones copied together into one buffer, a large one whole.
///
/// Copying a small message once here costs about what sharing it costs
/// (a reference count changed by two threads, an entry in a list, a copy
/// anyway when the stream gathers its DATA frame), and the stream then
/// writes one buffer as it is.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Taken {
    /// Framed messages back to back, in order.
    pub parts: Vec<Bytes>,
    /// How many messages the parts hold.
    pub messages: usize,
}

impl Taken {
    pub fn is_empty(&self) -> bool {
        self.messages == 0
    }

    /// Bytes of every message taken.
    pub fn bytes(&self) -> usize {
        self.parts.iter().map(Bytes::len).sum()
    }

    /// Every message's bytes, back to back.
    #[cfg(test)]
    pub fn concat(&self) -> Vec<u8> {
        self.parts.concat()
    }
}

/// Builds a [`Taken`]: small messages are appended to `buffer`, which is
/// made for `expected` bytes when the first one comes.
struct Gather {
    taken: Taken,
    buffer: BytesMut,
    expected: usize,
}

impl Gather {
    fn new(expected: usize) -> Self {
        Gather {
            taken: Taken::default(),
            buffer: BytesMut::new(),
            expected,
        }
    }

    fn add(&mut self, message: &Bytes) {
        if message.len() < COPY_BELOW {
            if self.buffer.capacity() == 0 {
                self.buffer.reserve(self.expected.max(message.len()));
            }
            self.buffer.extend_from_slice(message);
        } else {
            self.seal();
            self.taken.parts.push(message.clone());
        }
        self.taken.messages += 1;
    }

    /// Ends the buffer's part (what follows starts a new one).
    fn seal(&mut self) {
        if !self.buffer.is_empty() {
            self.taken.parts.push(self.buffer.split().freeze());
        }
    }

    fn finish(mut self) -> Taken {
        self.seal();
        self.taken
    }
}

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

/// A broadcast event in the feed.
#[derive(Debug)]
struct FeedEvent {
    gate: u64,
    framed: Bytes,
    /// The document version its recipients have seen once they read it.
    version: i32,
    /// Its author's stream, which gets `ack` in its place (or nothing).
    author: Option<MemberId>,
    ack: Option<Bytes>,
    /// The feed's bytes before this event (since the session began).
    bytes_before: u64,
}

/// The session's broadcast events that some member has not taken yet, in
/// order. Positions count every event ever fed; `start` is the first kept.
#[derive(Debug, Default)]
pub struct Feed {
    events: VecDeque<FeedEvent>,
    start: u64,
    /// Bytes of every event ever fed.
    total_bytes: u64,
    /// Bytes of the events kept, with their acks.
    kept_bytes: usize,
}

impl Feed {
    /// The position of the first event kept.
    pub fn start(&self) -> u64 {
        self.start
    }

    /// Events kept.
    pub fn len(&self) -> usize {
        self.events.len()
    }

    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    /// The position the next event gets.
    pub fn end(&self) -> u64 {
        self.start + self.events.len() as u64
    }

    /// Bytes of the events kept, with their acks (each counted once,
    /// whoever waits for it).
    pub fn kept_bytes(&self) -> usize {
        self.kept_bytes
    }

    /// Adds an event for every member; `author`'s stream gets `ack` in its
    /// place, or nothing.
    pub fn push(
        &mut self,
        framed: Bytes,
        version: i32,
        gate: u64,
        author: Option<MemberId>,
        ack: Option<Bytes>,
    ) {
        let len = framed.len();
        self.kept_bytes += len + ack.as_ref().map_or(0, Bytes::len);
        self.events.push_back(FeedEvent {
            gate,
            framed,
            version,
            author,
            ack,
            bytes_before: self.total_bytes,
        });
        self.total_bytes += len as u64;
    }

    /// Bytes of the events from `position` on.
    fn bytes_from(&self, position: u64) -> usize {
        let before = self
            .event(position)
            .map_or(self.total_bytes, |event| event.bytes_before);
        (self.total_bytes - before) as usize
    }

    fn event(&self, position: u64) -> Option<&FeedEvent> {
        let index = usize::try_from(position.checked_sub(self.start)?).ok()?;
        self.events.get(index)
    }

    /// Drops the events before `position` (every member is past them).
    pub fn forget_before(&mut self, position: u64) {
        while self.start < position {
            let Some(event) = self.events.pop_front() else {
                self.start = position;
                break;
            };
            self.kept_bytes -= event.framed.len() + event.ack.as_ref().map_or(0, Bytes::len);
            self.start += 1;
        }
    }
}

#[derive(Debug)]
enum Entry {
    /// An essential message, with the document version its recipient has
    /// seen once it reads it (None: the message says nothing about that).
    Essential(Bytes, Option<i32>),
    Ephemeral(EphemeralKey, u64),
}

/// A member's own message, the log position that must be durable before it
/// goes, and the feed's end when it was queued (it follows the events before).
#[derive(Debug)]
struct Queued {
    gate: u64,
    feed_at: u64,
    entry: Entry,
}

/// The essential backlog went over its bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Overflow {
    pub pending: usize,
}

/// What comes next for a member.
enum Next<'a> {
    Own(&'a Queued),
    Fed(&'a FeedEvent),
    Nothing,
}

#[derive(Debug)]
pub struct Outbox {
    /// The member this outbox is for (it gets the acks of the feed's
    /// events it authored instead of the events).
    member: MemberId,
    /// The next feed position this member reads.
    position: u64,
    /// Bytes of the feed's events ahead of `position` that this member
    /// authored (not its backlog: it gets their acks, if anything).
    skipped_bytes: usize,
    /// Bytes of the acks ahead of `position` (kept in the feed).
    ack_bytes: usize,
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
    /// The outbox of a member that gets the feed's events from its end on.
    pub fn new(member: MemberId, feed: &Feed) -> Self {
        Outbox {
            member,
            position: feed.end(),
            skipped_bytes: 0,
            ack_bytes: 0,
            queue: VecDeque::new(),
            essential_bytes: 0,
            catch_up_bytes: 0,
            ephemeral: HashMap::new(),
            ephemeral_bytes: 0,
            next_generation: 0,
            stale_entries: 0,
            delivered_version: 0,
        }
    }

    /// The feed position this member reads next (the feed keeps what is
    /// from the smallest such position on).
    pub fn position(&self) -> u64 {
        self.position
    }

    /// The essential backlog that counts against the bound: the feed's
    /// events ahead (its acks in place of its own events) and its own
    /// messages, but its catch-up.
    fn bounded_backlog(&self, feed: &Feed) -> usize {
        feed.bytes_from(self.position) - self.skipped_bytes + self.ack_bytes + self.essential_bytes
            - self.catch_up_bytes
    }

    /// Called once an event was fed (the feed's last): counts it, or its
    /// ack when this member is its author, and says whether the backlog is
    /// now over `limit` bytes.
    pub fn fed(&mut self, feed: &Feed, limit: usize) -> Result<(), Overflow> {
        if let Some(event) = feed.events.back()
            && event.author == Some(self.member)
        {
            self.skipped_bytes += event.framed.len();
            self.ack_bytes += event.ack.as_ref().map_or(0, Bytes::len);
        }
        let pending = self.bounded_backlog(feed);
        if pending > limit {
            return Err(Overflow { pending });
        }
        Ok(())
    }

    /// Queues an essential message; fails (queueing nothing) when the
    /// essential backlog would exceed `limit` bytes. Catch-up bytes still
    /// waiting (see [`Outbox::push_catch_up`]) do not count.
    pub fn push(
        &mut self,
        feed: &Feed,
        framed: Bytes,
        version: Option<i32>,
        gate: u64,
        limit: usize,
    ) -> Result<(), Overflow> {
        let pending = self.bounded_backlog(feed) + framed.len();
        if pending > limit {
            return Err(Overflow { pending });
        }
        self.essential_bytes += framed.len();
        self.queue.push_back(Queued {
            gate,
            feed_at: feed.end(),
            entry: Entry::Essential(framed, version),
        });
        Ok(())
    }

    /// Queues a message of the catch-up a joiner gets first (replay or
    /// snapshot). It is bounded by the history and session limits, not by the
    /// backlog bound, so a resume after a long absence is not refused for the
    /// very size of what it missed. Only valid before any other message.
    pub fn push_catch_up(&mut self, feed: &Feed, framed: Bytes, version: Option<i32>, gate: u64) {
        debug_assert_eq!(
            self.essential_bytes, self.catch_up_bytes,
            "catch-up comes first"
        );
        self.essential_bytes += framed.len();
        self.catch_up_bytes += framed.len();
        self.queue.push_back(Queued {
            gate,
            feed_at: feed.end(),
            entry: Entry::Essential(framed, version),
        });
    }

    /// Queues an ephemeral message, replacing any still waiting for `key`.
    pub fn push_ephemeral(&mut self, feed: &Feed, key: EphemeralKey, framed: Bytes, gate: u64) {
        let generation = self.next_generation;
        self.next_generation += 1;
        self.ephemeral_bytes += framed.len();
        if let Some((_, old)) = self.ephemeral.insert(key.clone(), (generation, framed)) {
            self.ephemeral_bytes -= old.len();
            self.stale_entries += 1;
        }
        self.queue.push_back(Queued {
            gate,
            feed_at: feed.end(),
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

    /// Drops what this member will never send: replaced ephemeral markers
    /// and feed events it authored without an ack, when they come next.
    fn skip_dead(&mut self, feed: &Feed) {
        loop {
            if let Some(queued) = self.queue.front()
                && queued.feed_at <= self.position
            {
                if !self.is_stale(queued) {
                    return;
                }
                self.queue.pop_front();
                self.stale_entries = self.stale_entries.saturating_sub(1);
                continue;
            }
            match feed.event(self.position) {
                Some(event) if event.author == Some(self.member) && event.ack.is_none() => {
                    self.skipped_bytes -= event.framed.len();
                    self.position += 1;
                }
                _ => return,
            }
        }
    }

    /// What comes next, once dead entries are skipped: an own message
    /// queued before the feed's next event, or that event.
    fn next<'a>(&'a self, feed: &'a Feed) -> Next<'a> {
        match (self.queue.front(), feed.event(self.position)) {
            (Some(queued), _) if queued.feed_at <= self.position => Next::Own(queued),
            (_, Some(event)) => Next::Fed(event),
            // Own messages are queued at or before the feed's end.
            (Some(queued), None) => Next::Own(queued),
            (None, None) => Next::Nothing,
        }
    }

    /// What this member gets of a feed event: the event, or its ack when
    /// this member is its author (an event without one is stepped over
    /// before).
    fn fed_for_me<'a>(&self, event: &'a FeedEvent) -> &'a Bytes {
        match &event.ack {
            Some(ack) if event.author == Some(self.member) => ack,
            _ => &event.framed,
        }
    }

    /// Takes messages in order, up to `max_bytes` (at least one message when
    /// any may go), stopping at the first whose gate is beyond `durable`.
    pub fn take(&mut self, feed: &Feed, max_bytes: usize, durable: u64) -> Taken {
        // The buffer is made for everything waiting, up to `max_bytes`, when
        // all of it may go; otherwise for a guess, and it grows if need be.
        let mut expected = self.buffered_bytes(feed).min(max_bytes);
        if !self.all_ready(feed, durable) {
            expected = expected.min(GUESSED_BUFFER);
        }
        let mut out = Gather::new(expected);
        let mut taken = 0;
        loop {
            self.skip_dead(feed);
            let (fed, gate, next_len) = match self.next(feed) {
                Next::Nothing => break,
                Next::Fed(event) => (true, event.gate, self.fed_for_me(event).len()),
                Next::Own(queued) => {
                    let len = match &queued.entry {
                        Entry::Essential(bytes, _) => bytes.len(),
                        Entry::Ephemeral(key, _) => {
                            self.ephemeral.get(key).map_or(0, |(_, b)| b.len())
                        }
                    };
                    (false, queued.gate, len)
                }
            };
            if gate > durable || (taken > 0 && taken + next_len > max_bytes) {
                break;
            }
            if fed {
                let event = feed.event(self.position).expect("next is this event");
                if event.author == Some(self.member) {
                    self.skipped_bytes -= event.framed.len();
                    self.ack_bytes -= next_len;
                }
                self.delivered_version = event.version;
                out.add(self.fed_for_me(event));
                self.position += 1;
            } else {
                match self.queue.pop_front().expect("next is this entry").entry {
                    Entry::Essential(bytes, version) => {
                        if let Some(version) = version {
                            self.delivered_version = version;
                        }
                        self.essential_bytes -= bytes.len();
                        // Catch-up entries are the first ones queued.
                        self.catch_up_bytes = self.catch_up_bytes.saturating_sub(bytes.len());
                        out.add(&bytes);
                    }
                    Entry::Ephemeral(key, _) => {
                        let (_, bytes) = self.ephemeral.remove(&key).expect("not stale");
                        self.ephemeral_bytes -= bytes.len();
                        out.add(&bytes);
                    }
                }
            }
            taken += next_len;
        }
        out.finish()
    }

    /// Whether everything queued may be taken now (nothing waits for a log
    /// position beyond `durable`): gates only grow along the queue and the
    /// feed.
    pub fn all_ready(&self, feed: &Feed, durable: u64) -> bool {
        let own_ready = self
            .queue
            .back()
            .is_none_or(|queued| queued.gate <= durable);
        let fed_ready = self.position >= feed.end()
            || feed.events.back().is_none_or(|event| event.gate <= durable);
        own_ready && fed_ready
    }

    /// Whether a message may be taken now (it waits for nothing beyond
    /// `durable`). Steps over what the member will never send first.
    pub fn has_ready(&mut self, feed: &Feed, durable: u64) -> bool {
        self.skip_dead(feed);
        match self.next(feed) {
            Next::Nothing => false,
            Next::Fed(event) => event.gate <= durable,
            Next::Own(queued) => queued.gate <= durable,
        }
    }

    /// The document version of the latest essential message taken (0 before
    /// any).
    pub fn delivered_version(&self) -> i32 {
        self.delivered_version
    }

    /// Bytes waiting for this member (essential, fed and ephemeral).
    pub fn buffered_bytes(&self, feed: &Feed) -> usize {
        feed.bytes_from(self.position) - self.skipped_bytes
            + self.ack_bytes
            + self.essential_bytes
            + self.ephemeral_bytes
    }

    /// Bytes of this member's own messages (not the feed's).
    pub fn own_bytes(&self) -> usize {
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
        let feed = Feed::default();
        let mut outbox = Outbox::new(1, &feed);
        outbox
            .push(&feed, Bytes::from_static(b"e1"), None, 0, 100)
            .unwrap();
        outbox.push_ephemeral(&feed, key("a"), Bytes::from_static(b"a1"), 0);
        outbox
            .push(&feed, Bytes::from_static(b"e2"), None, 0, 100)
            .unwrap();
        outbox.push_ephemeral(&feed, key("a"), Bytes::from_static(b"a2"), 0);
        outbox.push_ephemeral(&feed, key("b"), Bytes::from_static(b"b1"), 0);
        let got = outbox.take(&feed, usize::MAX, 0);
        assert_eq!(got.messages, 4);
        assert_eq!(got.concat(), b"e1e2a2b1");
        assert_eq!(outbox.own_bytes(), 0);
        assert_eq!(outbox.buffered_bytes(&feed), 0);
    }

    #[test]
    fn essential_bound_refuses_and_keeps_state() {
        let feed = Feed::default();
        let mut outbox = Outbox::new(1, &feed);
        outbox
            .push(&feed, Bytes::from(vec![0u8; 60]), None, 0, 100)
            .unwrap();
        assert_eq!(
            outbox.push(&feed, Bytes::from(vec![0u8; 50]), None, 0, 100),
            Err(Overflow { pending: 110 })
        );
        assert_eq!(outbox.buffered_bytes(&feed), 60);
        // Ephemeral messages never overflow, however many.
        for i in 0..10_000 {
            outbox.push_ephemeral(&feed, key("a"), Bytes::from(format!("{i}")), 0);
        }
        assert!(outbox.queue.len() < 200, "stale markers are compacted");
        let got = outbox.take(&feed, usize::MAX, 0);
        assert_eq!(got.messages, 2);
        assert!(got.concat().ends_with(b"9999"));
    }

    #[test]
    fn catch_up_does_not_count_against_the_bound() {
        let feed = Feed::default();
        let mut outbox = Outbox::new(1, &feed);
        outbox.push_catch_up(&feed, Bytes::from(vec![0u8; 500]), None, 0);
        outbox
            .push(&feed, Bytes::from(vec![0u8; 90]), None, 0, 100)
            .unwrap();
        assert!(
            outbox
                .push(&feed, Bytes::from(vec![0u8; 20]), None, 0, 100)
                .is_err()
        );
        assert_eq!(outbox.take(&feed, 500, 0).messages, 1);
        outbox
            .push(&feed, Bytes::from(vec![0u8; 10]), None, 0, 100)
            .unwrap();
        assert_eq!(outbox.buffered_bytes(&feed), 100);
    }

    #[test]
    fn delivered_version_follows_what_was_taken() {
        let feed = Feed::default();
        let mut outbox = Outbox::new(1, &feed);
        outbox.push_catch_up(&feed, Bytes::from_static(b"joined"), None, 0);
        outbox
            .push(&feed, Bytes::from_static(b"v3"), Some(3), 0, 100)
            .unwrap();
        outbox.push_ephemeral(&feed, key("a"), Bytes::from_static(b"cursor"), 0);
        outbox
            .push(&feed, Bytes::from_static(b"v4"), Some(4), 0, 100)
            .unwrap();
        assert_eq!(outbox.delivered_version(), 0);
        assert_eq!(outbox.take(&feed, 8, 0).messages, 2);
        assert_eq!(outbox.delivered_version(), 3);
        outbox.take(&feed, 100, 0);
        assert_eq!(outbox.delivered_version(), 4);
    }

    #[test]
    fn nothing_goes_before_the_log_position_it_follows_is_durable() {
        let feed = Feed::default();
        let mut outbox = Outbox::new(1, &feed);
        outbox
            .push(&feed, Bytes::from_static(b"ack"), Some(1), 3, 100)
            .unwrap();
        outbox.push_ephemeral(&feed, key("a"), Bytes::from_static(b"cursor"), 3);
        outbox
            .push(&feed, Bytes::from_static(b"later"), Some(2), 5, 100)
            .unwrap();
        assert!(!outbox.has_ready(&feed, 2));
        assert!(outbox.take(&feed, 100, 2).is_empty());
        assert!(outbox.has_ready(&feed, 3));
        assert_eq!(
            outbox.take(&feed, 100, 4).messages,
            2,
            "the ack and the cursor, in order"
        );
        assert!(!outbox.has_ready(&feed, 4));
        assert_eq!(outbox.take(&feed, 100, 5).concat(), b"later");
        assert_eq!(outbox.delivered_version(), 2);
    }

    fn b(text: &'static str) -> Bytes {
        Bytes::from_static(text.as_bytes())
    }

    /// How many messages were taken, and their bytes back to back.
    fn messages(taken: Taken) -> (usize, Vec<u8>) {
        (taken.messages, taken.concat())
    }

    fn expected(texts: &[&str]) -> (usize, Vec<u8>) {
        (texts.len(), texts.concat().into_bytes())
    }

    #[test]
    fn fed_events_and_own_messages_go_in_the_order_they_were_queued() {
        let mut feed = Feed::default();
        let mut ann = Outbox::new(1, &feed);
        ann.push_catch_up(&feed, b("snapshot"), None, 0);
        feed.push(b("e1"), 1, 0, None, None);
        ann.fed(&feed, 100).unwrap();
        ann.push(&feed, b("reply"), None, 0, 100).unwrap();
        feed.push(b("e2"), 2, 0, None, None);
        ann.fed(&feed, 100).unwrap();
        // A member joining now reads the feed from here on.
        let mut bob = Outbox::new(2, &feed);
        feed.push(b("e3"), 3, 0, None, None);
        ann.fed(&feed, 100).unwrap();
        bob.fed(&feed, 100).unwrap();
        ann.push_ephemeral(&feed, key("c"), b("cursor"), 0);
        assert_eq!(
            messages(ann.take(&feed, usize::MAX, 0)),
            expected(&["snapshot", "e1", "reply", "e2", "e3", "cursor"])
        );
        assert_eq!(ann.delivered_version(), 3);
        assert_eq!(bob.take(&feed, usize::MAX, 0).concat(), b"e3");
        assert_eq!(ann.buffered_bytes(&feed) + bob.buffered_bytes(&feed), 0);
    }

    #[test]
    fn the_author_gets_its_ack_in_its_events_place_or_nothing() {
        let mut feed = Feed::default();
        let mut ann = Outbox::new(1, &feed);
        let mut bob = Outbox::new(2, &feed);
        feed.push(b("ann's edit"), 1, 0, Some(1), Some(b("ack 1")));
        ann.fed(&feed, 100).unwrap();
        bob.fed(&feed, 100).unwrap();
        ann.push(&feed, b("reply"), None, 0, 100).unwrap();
        feed.push(b("bob's edit"), 2, 0, Some(2), Some(b("ack 2")));
        ann.fed(&feed, 100).unwrap();
        bob.fed(&feed, 100).unwrap();
        // Bob's join: an event without an ack, which bob steps over.
        feed.push(b("bob joined"), 2, 0, Some(2), None);
        ann.fed(&feed, 100).unwrap();
        bob.fed(&feed, 100).unwrap();
        // The author's backlog counts its ack, not its event.
        assert_eq!(ann.buffered_bytes(&feed), 5 + 5 + 10 + 10);
        assert_eq!(bob.buffered_bytes(&feed), 10 + 5);
        assert!(ann.has_ready(&feed, 0));
        assert_eq!(
            messages(ann.take(&feed, usize::MAX, 0)),
            expected(&["ack 1", "reply", "bob's edit", "bob joined"])
        );
        assert_eq!(
            messages(bob.take(&feed, usize::MAX, 0)),
            expected(&["ann's edit", "ack 2"])
        );
        assert_eq!(ann.delivered_version(), 2);
        assert_eq!(bob.delivered_version(), 2);
        assert_eq!(ann.buffered_bytes(&feed) + bob.buffered_bytes(&feed), 0);
        assert!(!ann.has_ready(&feed, 0));
        assert!(!bob.has_ready(&feed, 0));
        feed.forget_before(ann.position().min(bob.position()));
        assert_eq!(feed.kept_bytes(), 0);
        assert_eq!(feed.start(), 3);
    }

    #[test]
    fn an_author_over_its_bound_with_its_acks_overflows() {
        let mut feed = Feed::default();
        let mut ann = Outbox::new(1, &feed);
        for i in 0..3 {
            feed.push(
                b("an event"),
                i,
                0,
                Some(1),
                Some(Bytes::from(vec![0u8; 30])),
            );
            ann.fed(&feed, 100).unwrap();
        }
        feed.push(
            b("an event"),
            4,
            0,
            Some(1),
            Some(Bytes::from(vec![0u8; 30])),
        );
        assert_eq!(ann.fed(&feed, 100), Err(Overflow { pending: 120 }));
    }

    #[test]
    fn the_feed_counts_against_each_members_bound_and_waits_for_the_slowest() {
        let mut feed = Feed::default();
        let mut fast = Outbox::new(1, &feed);
        let mut slow = Outbox::new(2, &feed);
        for _ in 0..5 {
            feed.push(Bytes::from(vec![0u8; 20]), 1, 0, None, None);
            fast.fed(&feed, 100).unwrap();
            slow.fed(&feed, 100).unwrap();
            assert_eq!(fast.take(&feed, usize::MAX, 0).messages, 1);
        }
        assert_eq!(slow.buffered_bytes(&feed), 100);
        assert_eq!(fast.buffered_bytes(&feed), 0);
        assert_eq!(
            slow.push(&feed, b("x"), None, 0, 100),
            Err(Overflow { pending: 101 })
        );
        feed.push(Bytes::from(vec![0u8; 20]), 1, 0, None, None);
        assert_eq!(slow.fed(&feed, 100), Err(Overflow { pending: 120 }));
        assert!(fast.fed(&feed, 100).is_ok());
        // The feed keeps what the slow member has not taken.
        feed.forget_before(fast.position().min(slow.position()));
        assert_eq!(feed.kept_bytes(), 120);
        assert_eq!(slow.take(&feed, 50, 0).messages, 2);
        feed.forget_before(fast.position().min(slow.position()));
        assert_eq!(feed.kept_bytes(), 80);
    }

    #[test]
    fn fed_events_wait_for_their_gate() {
        let mut feed = Feed::default();
        let mut ann = Outbox::new(1, &feed);
        feed.push(b("e1"), 1, 2, None, None);
        ann.fed(&feed, 100).unwrap();
        ann.push(&feed, b("late"), None, 3, 100).unwrap();
        assert!(!ann.has_ready(&feed, 1));
        assert!(!ann.all_ready(&feed, 2));
        assert!(ann.take(&feed, 100, 1).is_empty());
        assert_eq!(ann.take(&feed, 100, 2).concat(), b"e1");
        assert!(ann.all_ready(&feed, 3));
        assert_eq!(ann.take(&feed, 100, 3).concat(), b"late");
    }

    #[test]
    fn take_respects_max_but_returns_at_least_one() {
        let feed = Feed::default();
        let mut outbox = Outbox::new(1, &feed);
        outbox
            .push(&feed, Bytes::from(vec![0u8; 10]), None, 0, 100)
            .unwrap();
        outbox
            .push(&feed, Bytes::from(vec![0u8; 10]), None, 0, 100)
            .unwrap();
        assert_eq!(outbox.take(&feed, 5, 0).messages, 1);
        assert_eq!(outbox.take(&feed, 100, 0).messages, 1);
        assert!(outbox.take(&feed, 100, 0).is_empty());
    }
}
