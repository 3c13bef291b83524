//! The recent essential events of a session, for late joiners (the article's
//! replay, bounded like its 1000-message buffer) and for resumes. Events are
//! kept as the framed bytes already sent, so a replay encodes nothing.

use std::collections::VecDeque;

use bytes::Bytes;

use super::ids::Text;

/// What the author of an event is told instead of the event itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AckInfo {
    pub client_sequence: u64,
    pub version: i32,
    /// A comment's id (None for other events), shared: the event's entry
    /// in the history refers to it without a copy.
    pub comment_id: Option<Text>,
}

#[derive(Debug, Clone)]
pub struct LoggedEvent {
    pub sequence: u64,
    /// The document version once this event is applied.
    pub version: i32,
    /// The participant whose action this was (None for server events).
    pub author: Option<Text>,
    /// For events caused by a client message: what its author is told.
    pub ack: Option<AckInfo>,
    pub framed: Bytes,
}

#[derive(Debug)]
pub struct History {
    events: VecDeque<LoggedEvent>,
    bytes: usize,
    max_events: usize,
    max_bytes: usize,
}

impl History {
    pub fn new(max_events: usize, max_bytes: usize) -> Self {
        History {
            events: VecDeque::new(),
            bytes: 0,
            max_events,
            max_bytes,
        }
    }

    pub fn push(&mut self, event: LoggedEvent) {
        self.bytes += event.framed.len();
        self.events.push_back(event);
        while self.events.len() > self.max_events
            || (self.bytes > self.max_bytes && self.events.len() > 1)
        {
            let dropped = self.events.pop_front().expect("non-empty");
            self.bytes -= dropped.framed.len();
        }
    }

    pub fn len(&self) -> usize {
        self.events.len()
    }

    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Whether every event after `sequence` (up to `latest`) is still kept.
    pub fn covers_after(&self, sequence: u64, latest: u64) -> bool {
        if sequence > latest {
            return false;
        }
        if sequence == latest {
            return true;
        }
        self.events
            .front()
            .is_some_and(|first| first.sequence <= sequence + 1)
    }

    /// The events after `sequence`, oldest first.
    pub fn after(&self, sequence: u64) -> impl Iterator<Item = &LoggedEvent> {
        let start = self.events.partition_point(|e| e.sequence <= sequence);
        self.events.range(start..)
    }

    pub fn iter(&self) -> impl Iterator<Item = &LoggedEvent> {
        self.events.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(sequence: u64, size: usize) -> LoggedEvent {
        LoggedEvent {
            sequence,
            version: 0,
            author: None,
            ack: None,
            framed: Bytes::from(vec![0u8; size]),
        }
    }

    #[test]
    fn bounded_by_count_and_bytes() {
        let mut history = History::new(3, 100);
        for s in 1..=5 {
            history.push(event(s, 10));
        }
        assert_eq!(history.len(), 3);
        assert!(history.covers_after(2, 5));
        assert!(!history.covers_after(1, 5));
        assert!(history.covers_after(5, 5));
        assert!(!history.covers_after(6, 5));
        assert_eq!(
            history.after(3).map(|e| e.sequence).collect::<Vec<_>>(),
            vec![4, 5]
        );
        history.push(event(6, 95));
        assert_eq!(history.len(), 1);
        assert_eq!(history.bytes(), 95);
    }
}
