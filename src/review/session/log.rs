//! The session's side of its durable log: records
//! (`proto/codereview/store/v1/store.proto`) and their conversions,
//! recovery, and snapshots (the whole state at a log position). Every
//! change of the log's state is a record, applied by `apply` the same way
//! live, replayed, or landed from another instance:
//!
//! ```text
//!  live:    decide ─► record ─► apply ─► announce (history, outboxes gated)
//!  replay:            record ─► apply ─► announce (history; nobody to send to)
//! ```
//!
//! The output gate: what a step queues waits until the records made so far
//! are durable ([`Session::mark_durable`]), so nothing is acknowledged or
//! broadcast that a crash could take back.

use std::collections::VecDeque;

use super::super::bridge::Bridge;
use super::super::dedupe::{Dedupe, Outcome};
use super::super::history::LoggedEvent;
use super::super::ot::{FileOp, LineOp};
use super::*;
use crate::pb::codereview::{FileContent, code_edit::Op as WireOp};
use prost::Message;

/// Why a record or a snapshot could not be folded into a session: the log
/// is damaged, or does not belong where it was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplayError(pub String);

impl std::fmt::Display for ReplayError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

pub(super) fn damaged(what: impl Into<String>) -> ReplayError {
    ReplayError(what.into())
}

// The field numbers of `store.v1.Snapshot`'s files and comments, and those
// of a `FileContent` (encoded from the session's own strings).
const SNAPSHOT_FILES: u32 = 6;
const SNAPSHOT_COMMENTS: u32 = 7;
const FILE_PATH: u32 = 1;
const FILE_LINES: u32 = 2;

/// A session's snapshot as [`Session::encode_snapshot`] made it.
#[derive(Debug)]
pub struct EncodedSnapshot {
    /// The log position it covers (records up to it).
    pub index: u64,
    /// Its entries (see [`snapshot_weight`]).
    pub weight: u64,
    /// The encoded `store.v1.Snapshot`.
    pub payload: Vec<u8>,
}

/// The entries a snapshot holds: lines, comments, users' remembered
/// outcomes and bridges, operations and history events. A snapshot costs in
/// proportion to them (it is built, encoded and written whole); the
/// registry makes the next one wait for at least as many new records.
pub fn snapshot_weight(snapshot: &store::Snapshot) -> u64 {
    let lines: usize = snapshot.files.iter().map(|f| f.lines.len()).sum();
    let users: usize = snapshot
        .users
        .iter()
        .map(|u| 1 + u.outcomes.len() + u.bridge.len())
        .sum();
    (lines + snapshot.comments.len() + users + snapshot.ops.len() + snapshot.history.len()) as u64
}

/// The encoded length of a string field (proto3 skips an empty one only
/// where it is not repeated: the caller decides).
fn string_field_len(tag: u32, s: &str) -> usize {
    use prost::encoding::{encoded_len_varint, key_len};
    key_len(tag) + encoded_len_varint(s.len() as u64) + s.len()
}

/// The length of a file's `FileContent` (version 0) without its own key.
fn file_body_len(path: &str, lines: &[Text]) -> usize {
    // proto3: an empty path is not encoded; every line is (repeated).
    let path_len = if path.is_empty() {
        0
    } else {
        string_field_len(FILE_PATH, path)
    };
    path_len
        + lines
            .iter()
            .map(|l| string_field_len(FILE_LINES, l))
            .sum::<usize>()
}

/// The encoded length of a file as field `tag`.
fn file_field_len(tag: u32, path: &str, lines: &[Text]) -> usize {
    use prost::encoding::{encoded_len_varint, key_len};
    let body = file_body_len(path, lines);
    key_len(tag) + encoded_len_varint(body as u64) + body
}

/// Encodes a file as field `tag` (a `FileContent` of version 0), exactly as
/// prost would encode the owned message.
fn encode_file(tag: u32, path: &str, lines: &[Text], buf: &mut Vec<u8>) {
    use prost::encoding::{WireType, encode_key, encode_varint};
    let put_string = |tag: u32, s: &str, buf: &mut Vec<u8>| {
        encode_key(tag, WireType::LengthDelimited, buf);
        encode_varint(s.len() as u64, buf);
        buf.extend_from_slice(s.as_bytes());
    };
    encode_key(tag, WireType::LengthDelimited, buf);
    encode_varint(file_body_len(path, lines) as u64, buf);
    if !path.is_empty() {
        put_string(FILE_PATH, path, buf);
    }
    for line in lines {
        put_string(FILE_LINES, line, buf);
    }
}

/// An edit's record: what it is and what it was based on.
pub(super) fn edit_record(
    user: &Text,
    client_sequence: u64,
    base: i32,
    incoming_wins: bool,
    op: &FileOp,
) -> store::Edit {
    store::Edit {
        user_id: str::to_owned(user),
        client_sequence,
        file_path: str::to_owned(&op.path),
        base,
        incoming_wins,
        op: Some(line_op_to_store(&op.op)),
    }
}

fn line_op_to_store(op: &LineOp) -> store::LineOp {
    let (op, line, text) = match op {
        LineOp::Replace { line, text } => (WireOp::Replace, *line, str::to_owned(text)),
        LineOp::Insert { line, text } => (WireOp::Insert, *line, str::to_owned(text)),
        LineOp::Delete { line } => (WireOp::Delete, *line, String::new()),
        LineOp::ReplaceFile { .. } | LineOp::Noop => {
            unreachable!("only line operations are stored as such")
        }
    };
    store::LineOp {
        op: op as i32,
        line,
        text,
    }
}

pub(super) fn line_op_from_store(op: Option<&store::LineOp>) -> Result<LineOp, ReplayError> {
    let op = op.ok_or_else(|| damaged("an edit without its operation"))?;
    let text: Text = Arc::from(op.text.as_str());
    Ok(match WireOp::try_from(op.op) {
        Ok(WireOp::Replace) => LineOp::Replace {
            line: op.line,
            text,
        },
        Ok(WireOp::Insert) => LineOp::Insert {
            line: op.line,
            text,
        },
        Ok(WireOp::Delete) => LineOp::Delete { line: op.line },
        Err(_) => return Err(damaged(format!("an unknown edit operation {}", op.op))),
    })
}

fn logged_op_to_store(version: i32, author: Option<&Text>, op: &FileOp) -> store::LoggedOp {
    let replaced = matches!(op.op, LineOp::ReplaceFile { .. });
    store::LoggedOp {
        version,
        author: author.map(|a| a.to_string()).unwrap_or_default(),
        file_path: str::to_owned(&op.path),
        op: (!replaced && !op.is_noop()).then(|| line_op_to_store(&op.op)),
        file_replaced: replaced,
    }
}

fn logged_op_from_store(op: &store::LoggedOp) -> Result<FileOp, ReplayError> {
    let line_op = if op.file_replaced {
        LineOp::ReplaceFile {
            lines: Arc::from([]),
        }
    } else if op.op.is_none() {
        LineOp::Noop
    } else {
        line_op_from_store(op.op.as_ref())?
    };
    Ok(FileOp {
        path: Arc::from(op.file_path.as_str()),
        op: line_op,
    })
}

pub(super) fn role_from_store(role: i32) -> Role {
    match pb::Role::try_from(role) {
        Ok(pb::Role::Reviewer) => Role::Reviewer,
        Ok(pb::Role::Observer) => Role::Observer,
        _ => Role::Author,
    }
}

impl Session {
    /// The index the next record gets: how many records the log holds.
    pub fn next_index(&self) -> u64 {
        self.next_index
    }

    /// Records below this index are durable.
    pub fn durable_index(&self) -> u64 {
        self.durable_index
    }

    /// In memory, every record is durable as soon as it is made: the step's
    /// [`Effects::woken`] already names every member with messages to take.
    pub fn mark_all_durable(&mut self) {
        self.durable_index = self.next_index;
    }

    /// Records below `index` are durable now. Returns the members with
    /// messages that may go now (wake their streams).
    pub fn mark_durable(&mut self, index: u64) -> Vec<MemberId> {
        if index <= self.durable_index {
            return Vec::new();
        }
        self.durable_index = index.min(self.next_index);
        let durable = self.durable_index;
        let feed = &self.feed;
        self.roster
            .members_mut()
            .filter_map(|(id, m)| m.outbox.has_ready(feed, durable).then_some(id))
            .collect()
    }

    /// Folds one record of the log into the state (recovery). Records must
    /// come in index order, without gaps.
    pub fn replay(&mut self, record: &Record) -> Result<(), ReplayError> {
        let now = Now {
            at: std::time::Instant::now(),
            unix_ms: record.timestamp,
        };
        self.apply_record(now, record, Author::Nobody).map(|_| ())
    }

    /// After a restart: the participants that were present have no stream
    /// any more. Their LEFT is recorded and broadcast (to nobody yet), so no
    /// ghost stays in presence.
    pub fn finish_recovery(&mut self, now: Now) -> Effects {
        self.step(
            now,
            Input::Reap {
                gone: Departed::AllButThis,
            },
        )
    }

    /// The whole state, at the last record made.
    pub fn to_snapshot(&self, last_active: i64) -> store::Snapshot {
        let mut snapshot = self.snapshot_of_the_rest(last_active);
        snapshot.files = self.file_contents();
        snapshot.comments = self.comments.to_vec();
        snapshot
    }

    /// The document's files as messages (version 0: not an upload's).
    pub(super) fn file_contents(&self) -> Vec<FileContent> {
        self.doc
            .files()
            .map(|(path, lines)| FileContent {
                file_path: path.to_string(),
                lines: lines.iter().map(|l| l.to_string()).collect(),
                version: 0,
            })
            .collect()
    }

    /// The session's snapshot, encoded: the bytes of [`Session::to_snapshot`]'s
    /// message (its fields in another order, which decodes the same), made
    /// without copying the files' lines and the comments into an owned
    /// message first: they are encoded from where the session keeps them.
    /// They are most of a long review's snapshot; copying them, then
    /// freeing the copy, cost more than encoding them.
    pub fn encode_snapshot(&self, last_active: i64) -> EncodedSnapshot {
        let rest = self.snapshot_of_the_rest(last_active);
        let lines: usize = self.doc.files().map(|(_, lines)| lines.len()).sum();
        let comments = self.comments.iter();
        let weight = snapshot_weight(&rest) + (lines + self.comments.len()) as u64;
        // Sized once: a long review's snapshot is megabytes, copied at
        // every doubling otherwise. Lengths are read from the strings'
        // headers, side by side in the entries and the files.
        let files_len: usize = self
            .doc
            .files()
            .map(|(path, lines)| file_field_len(SNAPSHOT_FILES, path, lines))
            .sum();
        let comments_len: usize = comments
            .clone()
            .map(|entry| prost::encoding::message::encoded_len(SNAPSHOT_COMMENTS, entry))
            .sum();
        let size = rest.encoded_len() + files_len + comments_len;
        let mut payload = Vec::with_capacity(size);
        rest.encode_raw(&mut payload);
        for (path, lines) in self.doc.files() {
            encode_file(SNAPSHOT_FILES, path, lines, &mut payload);
        }
        for entry in comments {
            prost::encoding::message::encode(SNAPSHOT_COMMENTS, entry, &mut payload);
        }
        debug_assert_eq!(
            payload.len(),
            size,
            "the lengths summed are the bytes written"
        );
        EncodedSnapshot {
            index: rest.index,
            weight,
            payload,
        }
    }

    /// Everything of the snapshot but the files and the comments.
    fn snapshot_of_the_rest(&self, last_active: i64) -> store::Snapshot {
        let mut users: Vec<store::User> = self
            .roster
            .users()
            .map(|(name, u)| {
                let (entries, synced_to, floor) = u.bridge.parts();
                store::User {
                    user_id: name.to_string(),
                    role: u.role.to_wire() as i32,
                    outcomes: u
                        .dedupe
                        .outcomes()
                        .map(|(n, outcome)| match outcome {
                            Outcome::Ack(ack) => store::Outcome {
                                client_sequence: *n,
                                ack: Some(ack.clone()),
                                refused: None,
                            },
                            Outcome::Error(error) => store::Outcome {
                                client_sequence: *n,
                                ack: None,
                                refused: Some(store::Refused {
                                    user_id: String::new(),
                                    client_sequence: *n,
                                    code: error.code().as_i32(),
                                    message: error.message.clone(),
                                }),
                            },
                        })
                        .collect(),
                    highest_client_sequence: u.dedupe.highest(),
                    forgotten_up_to: u.dedupe.forgotten_up_to(),
                    bridge: entries
                        .map(|(v, op)| logged_op_to_store(v, None, &op))
                        .collect(),
                    synced_to,
                    bridge_floor: floor,
                    present: u.present,
                    stream: u.stream.as_deref().unwrap_or_default().to_string(),
                    departed_at: u.departed_at,
                }
            })
            .collect();
        users.sort_by(|a, b| a.user_id.cmp(&b.user_id));
        store::Snapshot {
            index: self.next_index.saturating_sub(1),
            session_id: self.id.to_string(),
            epoch: self.epoch,
            sequence: self.sequence,
            version: self.version,
            files: Vec::new(),
            comments: Vec::new(),
            users,
            ops: self
                .ops
                .entries()
                .map(|(v, author, op)| logged_op_to_store(v, author, op))
                .collect(),
            history: self
                .history
                .iter()
                .map(|e| store::HistoryEvent {
                    sequence: e.sequence,
                    version: e.version,
                    author: e.author.as_ref().map(|a| a.to_string()).unwrap_or_default(),
                    has_author: e.author.is_some(),
                    ack: e.ack.as_ref().map(|a| pb::Ack {
                        client_sequence: a.client_sequence,
                        version: a.version,
                        comment_id: a
                            .comment_id
                            .as_deref()
                            .map(str::to_owned)
                            .unwrap_or_default(),
                        ..pb::Ack::default()
                    }),
                    framed: e.framed.clone(),
                })
                .collect(),
            last_active,
            empty: self.roster.users().all(|(_, u)| !u.present),
        }
    }

    /// A session as a snapshot kept it; the records after it are replayed
    /// on top.
    pub fn from_snapshot(
        snapshot: &store::Snapshot,
        limits: Arc<Limits>,
    ) -> Result<Session, ReplayError> {
        let mut session = Session::new(
            Arc::from(snapshot.session_id.as_str()),
            snapshot.epoch,
            limits.clone(),
        );
        session.sequence = snapshot.sequence;
        session.version = snapshot.version;
        session.doc = Document::from_files(snapshot.files.iter().map(|f| {
            (
                Arc::from(f.file_path.as_str()),
                f.lines.iter().map(|l| Arc::from(l.as_str())).collect(),
            )
        }));
        let mut previous = None;
        for entry in &snapshot.comments {
            let Some(comment) = &entry.comment else {
                return Err(damaged("a snapshot comment without its comment"));
            };
            if previous.is_some_and(|p| p >= entry.sequence) {
                return Err(damaged("snapshot comments out of order"));
            }
            if session.comments.contains_id(&comment.comment_id) {
                return Err(damaged("two snapshot comments with one id"));
            }
            previous = Some(entry.sequence);
            session.comments.push(entry.clone());
        }
        let now = std::time::Instant::now();
        for user in &snapshot.users {
            let name: Text = Arc::from(user.user_id.as_str());
            let role = role_from_store(user.role);
            let mut outcomes = Vec::with_capacity(user.outcomes.len());
            for outcome in &user.outcomes {
                let value = match (&outcome.ack, &outcome.refused) {
                    (Some(ack), None) => Outcome::Ack(ack.clone()),
                    (None, Some(r)) => {
                        Outcome::Error(ReviewError::from_code(r.code, r.message.clone()))
                    }
                    _ => {
                        return Err(damaged(
                            "a snapshot outcome that is neither an ack nor a refusal",
                        ));
                    }
                };
                outcomes.push((outcome.client_sequence, value));
            }
            let mut bridge = Vec::with_capacity(user.bridge.len());
            for op in &user.bridge {
                bridge.push((op.version, logged_op_from_store(op)?));
            }
            let state = session
                .roster
                .ensure_user(&name, role, now, snapshot.version, &limits);
            state.role = role;
            state.present = user.present;
            state.stream = (!user.stream.is_empty()).then(|| Arc::from(user.stream.as_str()));
            state.departed_at = user.departed_at;
            state.dedupe =
                Dedupe::restore(user.highest_client_sequence, user.forgotten_up_to, outcomes);
            state.bridge = Bridge::restore(bridge, user.synced_to, user.bridge_floor);
        }
        for op in &snapshot.ops {
            let author = (!op.author.is_empty()).then(|| Arc::from(op.author.as_str()));
            session.ops.push(
                op.version,
                author,
                logged_op_from_store(op)?,
                limits.transform_window,
                usize::MAX,
            );
        }
        let mut history: VecDeque<LoggedEvent> = VecDeque::new();
        for event in &snapshot.history {
            history.push_back(LoggedEvent {
                sequence: event.sequence,
                version: event.version,
                author: event.has_author.then(|| Arc::from(event.author.as_str())),
                ack: event.ack.as_ref().map(|a| AckInfo {
                    client_sequence: a.client_sequence,
                    version: a.version,
                    comment_id: (!a.comment_id.is_empty())
                        .then(|| Text::from(a.comment_id.as_str())),
                }),
                framed: event.framed.clone(),
            });
        }
        for event in history {
            session.history.push(event);
        }
        session.next_index = snapshot.index + 1;
        session.durable_index = session.next_index;
        Ok(session)
    }
}
