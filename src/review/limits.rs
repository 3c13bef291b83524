//! The domain's limits: every bound on what a peer can make the server hold,
//! with its default. Each is a `serve` flag (see `cli::serve`) and listed in
//! the README.

use std::time::Duration;

/// Bounds on sessions, documents and participants.
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    /// Longest session_id and user_id, in bytes (default 128).
    pub max_id_bytes: usize,
    /// Longest file path, in bytes (default 512).
    pub max_path_bytes: usize,
    /// Longest line of a file, in bytes (default 4 KiB).
    pub max_line_bytes: usize,
    /// Longest comment text, in bytes (default 4 KiB).
    pub max_comment_bytes: usize,
    /// Most lines in one file (default 20 000).
    pub max_lines_per_file: usize,
    /// Most files in one session (default 200).
    pub max_files: usize,
    /// Most comments in one session (default 2 000).
    pub max_comments: usize,
    /// Most content (file lines, paths, comments) one session holds, in bytes
    /// (default 2 MiB; a snapshot must stay below clients' 4 MiB message limit).
    pub max_document_bytes: usize,
    /// Sessions at once (default 512).
    pub max_sessions: usize,
    /// Live participants in one session (default 64).
    pub max_participants: usize,
    /// Live watchers of one session (default 64).
    pub max_watchers: usize,
    /// Recent events kept for late joiners and resumes (default 1 000, as the
    /// article's buffer), and their total size (default 4 MiB).
    pub history_events: usize,
    pub history_bytes: usize,
    /// Events one participant may have pending before it is ended with
    /// RESOURCE_EXHAUSTED, in bytes (default 8 MiB; cursor and presence
    /// updates coalesce and do not count).
    pub outbox_bytes: usize,
    /// Silence after which a participant is shown IDLE (default 60 s).
    pub idle_after: Duration,
    /// How long an empty session is kept for participants to resume
    /// (default 60 s; 0 removes it at once).
    pub session_linger: Duration,
    /// Sustained messages per second per participant (default 100; 0 turns
    /// rate limiting off) and the burst allowed above it (default 200).
    pub rate_per_second: f64,
    pub rate_burst: f64,
    /// Sustained bytes of content per second per participant (messages and
    /// uploads; default 1 MiB) and the burst above it (default 4 MiB: one
    /// upload of a full session fits). Off when `rate_per_second` is 0.
    pub rate_bytes_per_second: f64,
    pub rate_bytes_burst: f64,
    /// Memory all sessions together may hold, as they estimate it (content
    /// with its per-line overhead, history, operation logs, outboxes;
    /// default 1 GiB). Beyond it new sessions and growth are refused with
    /// RESOURCE_EXHAUSTED and the largest outboxes are ended; everything
    /// else keeps working.
    pub max_memory_bytes: usize,
    /// Operations kept for transforming edits based on old versions
    /// (default 10 000, and at most `history_bytes` of text); an edit based
    /// on an older version gets FAILED_PRECONDITION.
    pub transform_window: usize,
}

impl Limits {
    /// The most a snapshot message (with its gRPC frame) holds besides the
    /// session's content: ids, numbers, and every participant with a cursor.
    /// A session's content budget plus this must fit in one message.
    pub fn snapshot_overhead_bytes(&self) -> usize {
        let id = self.max_id_bytes + 3;
        let participant = id + 2 + 2 + (self.max_path_bytes + 3 + 6 + 6 + 3) + 3;
        let snapshot = id + 3 * 11 + self.max_participants * participant;
        let message = id + 11 + 6 + 11 + 11;
        5 + snapshot + message
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_id_bytes: 128,
            max_path_bytes: 512,
            max_line_bytes: 4096,
            max_comment_bytes: 4096,
            max_lines_per_file: 20_000,
            max_files: 200,
            max_comments: 2_000,
            max_document_bytes: 2 * 1024 * 1024,
            max_sessions: 512,
            max_participants: 64,
            max_watchers: 64,
            history_events: 1_000,
            history_bytes: 4 * 1024 * 1024,
            outbox_bytes: 8 * 1024 * 1024,
            idle_after: Duration::from_secs(60),
            session_linger: Duration::from_secs(60),
            rate_per_second: 100.0,
            rate_burst: 200.0,
            rate_bytes_per_second: 1024.0 * 1024.0,
            rate_bytes_burst: 4.0 * 1024.0 * 1024.0,
            transform_window: 10_000,
            max_memory_bytes: 1 << 30,
        }
    }
}
