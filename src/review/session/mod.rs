//! One review session as a plain state machine: no sockets, tasks or clocks.
//! The registry feeds it inputs with the time ([`Now`]); it updates state,
//! fills members' outboxes and reports [`Effects`] (whose outbox has news,
//! which members to end and why). Tests drive it directly.
//!
//! A participant's life (one per user; a user has at most one live stream):
//!
//! ```text
//!            join                  silence > idle_after
//!   (none) ───────► ACTIVE ◄──────────────────────────► IDLE
//!                     │  speaks                           │
//!                     │ stream ends / LEFT / too slow      │
//!                     ▼                                    ▼
//!                   LEFT ◄────────────────────────────────┘
//!       (the user's record stays while the session lives: a resume finds
//!        its dedupe state and its transformation bridge)
//! ```
//!
//! Guarantees (see docs/GUARANTEES.md): essential events get dense sequence
//! numbers in one order for everyone; each participant sees each sequence
//! number once, as the event or, for its own actions, as an Ack; a message
//! with a client_sequence already processed is answered again, never
//! applied twice; a participant whose essential backlog exceeds the outbox
//! bound is ended with RESOURCE_EXHAUSTED instead of slowing anyone.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;

use super::comments::{self, Comments};
use super::counters::{Counters, MessageKind};
use super::document::{Document, Room, line_memory};
use super::error::{ErrorKind, ReviewError};
use super::history::{AckInfo, History, LoggedEvent};
use super::limits::Limits;
use super::ot::{self, FileOp, LineOp, Text};
use super::outbox::{EphemeralKey, EphemeralKind, Outbox};
use super::rate::RateLimiter;
use super::roles::{MayComment, MayEdit, MayMoveCursor, MayUpload, Role};
use super::validate::{
    Action, ClientMessage, ClientPresence, CommentRequest, CursorRequest, EditRequest, JoinOptions,
};
use crate::grpc::codec::encode_message;
use crate::pb::codereview::{
    self as pb, Ack, CodeEdit, Comment, CommentEntry, CursorPosition, FileContent, Joined, Notice,
    Participant, PresenceUpdate, SessionMessage, code_edit::Op as WireOp, joined::Catchup,
    notice::Kind as NoticeKind, presence_update::Status as Presence, session_message::Payload,
};

/// Identifies one stream (participant or watcher) across the registry.
pub type MemberId = u64;

/// The time, as the registry passes it in.
#[derive(Debug, Clone, Copy)]
pub struct Now {
    pub at: Instant,
    pub unix_ms: i64,
}

/// What an input changed that the registry must act on.
#[derive(Debug, Default)]
pub struct Effects {
    /// Members with new messages in their outbox.
    pub woken: BTreeSet<MemberId>,
    /// Members ended by the session, with why.
    pub closed: Vec<(MemberId, ReviewError)>,
    /// Members whose stream ends normally (the client said LEFT).
    pub finished: Vec<MemberId>,
}

/// A request to join as a participant.
#[derive(Debug, Clone)]
pub struct JoinRequest {
    pub member: MemberId,
    pub user_id: Text,
    pub role: Role,
    pub options: JoinOptions,
    /// The token's expiry and when to warn about it (Unix ms).
    pub token: Option<TokenWindow>,
}

/// When a stream's credentials expire, and when to say so.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenWindow {
    pub warn_at_ms: i64,
    pub expires_at_ms: i64,
}

/// What an upload did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UploadOutcome {
    pub files: u32,
    pub lines: u32,
    pub bytes: u64,
    pub version: i32,
    pub sequence: u64,
}

/// Where an essential event comes from.
enum Origin<'a> {
    /// The server (an upload): everyone gets the event.
    Server { user_id: &'a str },
    /// A participant's action: its stream (if any) gets `ack`, or nothing.
    Participant {
        user: &'a Text,
        member: Option<MemberId>,
        ack: Option<AckInfo>,
    },
}

/// What an operation in the log holds on to (its text), for the byte bound.
fn op_bytes(op: &FileOp) -> usize {
    let text = match &op.op {
        LineOp::Replace { text, .. } | LineOp::Insert { text, .. } => text.len(),
        LineOp::ReplaceFile { lines } => lines.iter().map(|l| line_memory(l)).sum(),
        LineOp::Delete { .. } | LineOp::Noop => 0,
    };
    op.path.len() + text + 32
}

/// How many outcomes of recent client messages each user remembers for
/// answering resends.
const REMEMBERED_OUTCOMES: usize = 256;

#[derive(Debug, Clone)]
enum Outcome {
    Ack(Ack),
    Error(ReviewError),
}

#[derive(Debug)]
struct UserState {
    role: Role,
    live: Option<MemberId>,
    idle: bool,
    last_activity: Instant,
    departed_at: Option<Instant>,
    last_client_sequence: u64,
    /// Outcomes of the latest client messages, in client-sequence order.
    outcomes: VecDeque<(u64, Outcome)>,
    /// The highest client sequence whose outcome was dropped from `outcomes`.
    forgotten_up_to: u64,
    /// Jupiter bridge: the others' operations this user had not seen when
    /// it last edited, transformed to apply after its own operations. Kept
    /// lazily: operations after `synced_to` are taken from the session's
    /// operation log (untransformed, as no edit of the user followed them)
    /// only when the user edits again, so silent users cost nothing.
    bridge: VecDeque<(i32, FileOp)>,
    /// Every other user's operation up to this version is in `bridge` (or
    /// was dropped as seen).
    synced_to: i32,
    /// Bases older than this can no longer be transformed (bridge trimmed).
    bridge_floor: i32,
    cursor: Option<CursorPosition>,
    rate: RateLimiter,
}

#[derive(Debug)]
enum MemberKind {
    Participant(Text),
    Watcher,
}

#[derive(Debug)]
struct Member {
    kind: MemberKind,
    outbox: Outbox,
    token: Option<TokenWindow>,
    warned: bool,
    /// How this stream's edit versions are read (see [`VersionReading`]).
    versions: VersionReading,
}

/// How the `version` of a participant's edits is to be read.
///
/// Our protocol says an edit's `version` is the document version it was
/// based on, and clients that start with a `Join` keep to it. The article's
/// clients know nothing of versions and always send 0: their edits are
/// based on what the server has delivered to them so far (the outbox knows),
/// and among concurrent replaces of one line theirs wins (last writer wins),
/// so every edit they make is applied and broadcast.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum VersionReading {
    /// Versions are bases; one below `known_from` (the version the stream's
    /// catch-up started from) cannot come from a client that tracks them,
    /// so it is read as "not tracked" instead.
    Tracked { known_from: i32 },
    /// Not tracked (yet): a non-zero version switches to `Tracked`.
    Untracked,
}

/// One session's whole state.
#[derive(Debug)]
pub struct Session {
    id: Text,
    epoch: u64,
    sequence: u64,
    version: i32,
    doc: Document,
    comments: Comments,
    /// Memory the process-wide budget lets this session grow by (set by the
    /// registry before each input; unlimited until then).
    memory_room: usize,
    users: HashMap<Text, UserState>,
    members: BTreeMap<MemberId, Member>,
    history: History,
    limits: Arc<Limits>,
    live_participants: usize,
    live_watchers: usize,
    /// Members over their outbox bound, to be ended by `settle`.
    overflowed: Vec<MemberId>,
    counters: Counters,
    /// The member whose catch-up is being queued (exempt from the bound).
    catching_up: Option<MemberId>,
    /// Recent operations (version, author, op), the source of every user's
    /// bridge; bounded by the transform window and the history byte limit.
    ops: VecDeque<(i32, Option<Text>, FileOp)>,
    ops_bytes: usize,
}

/// A summary for metrics and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SessionStats {
    pub participants: usize,
    pub watchers: usize,
    pub users_remembered: usize,
    pub outbox_bytes: usize,
    pub history_bytes: usize,
    pub content_bytes: usize,
    pub memory_bytes: usize,
}

/// Memory estimates of the parts of a session whose size is not their text
/// (measured roughly; see `document` for lines).
const SESSION_MEMORY: usize = 2048;
const USER_MEMORY: usize = 512;
const MEMBER_MEMORY: usize = 512;
const EVENT_MEMORY: usize = 64;
const OP_MEMORY: usize = 64;
const OUTCOME_MEMORY: usize = 96;

impl Session {
    pub fn new(id: Text, epoch: u64, limits: Arc<Limits>) -> Session {
        Session {
            id,
            epoch,
            sequence: 0,
            version: 0,
            doc: Document::new(),
            comments: Comments::default(),
            memory_room: usize::MAX,
            users: HashMap::new(),
            members: BTreeMap::new(),
            history: History::new(limits.history_events, limits.history_bytes),
            limits,
            live_participants: 0,
            live_watchers: 0,
            overflowed: Vec::new(),
            counters: Counters::default(),
            catching_up: None,
            ops: VecDeque::new(),
            ops_bytes: 0,
        }
    }

    pub fn id(&self) -> &Text {
        &self.id
    }

    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    pub fn sequence(&self) -> u64 {
        self.sequence
    }

    pub fn version(&self) -> i32 {
        self.version
    }

    pub fn document(&self) -> &Document {
        &self.doc
    }

    /// No live participant or watcher.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    pub fn stats(&self) -> SessionStats {
        SessionStats {
            participants: self.live_participants,
            watchers: self.live_watchers,
            users_remembered: self.users.len(),
            outbox_bytes: self
                .members
                .values()
                .map(|m| m.outbox.buffered_bytes())
                .sum(),
            history_bytes: self.history.bytes(),
            content_bytes: self.doc.encoded_bytes() + self.comments.encoded_bytes(),
            memory_bytes: self.memory_bytes(),
        }
    }

    /// An estimate of the memory this session holds: content, history, the
    /// operation log, user records with their bridges, and outboxes. O(users
    /// + members), both bounded by the participant limits.
    pub fn memory_bytes(&self) -> usize {
        let users: usize = self
            .users
            .values()
            .map(|u| USER_MEMORY + u.bridge.len() * OP_MEMORY + u.outcomes.len() * OUTCOME_MEMORY)
            .sum();
        let outboxes: usize = self
            .members
            .values()
            .map(|m| MEMBER_MEMORY + m.outbox.buffered_bytes())
            .sum();
        SESSION_MEMORY
            + self.id.len()
            + self.doc.memory_bytes()
            + self.comments.memory_bytes()
            + self.history.bytes()
            + self.history.len() * EVENT_MEMORY
            + self.ops_bytes
            + self.ops.len() * OP_MEMORY
            + users
            + outboxes
    }

    /// How much the process-wide memory budget lets this session grow by
    /// while it handles the next input.
    pub fn set_memory_room(&mut self, bytes: usize) {
        self.memory_room = bytes;
    }

    /// Room left for content: the session's content budget and the memory
    /// budget.
    fn room(&self) -> Room {
        Room {
            encoded: self
                .limits
                .max_session_bytes
                .saturating_sub(self.doc.encoded_bytes() + self.comments.encoded_bytes()),
            memory: self.memory_room,
        }
    }

    /// Takes up to `max_bytes` of a member's outbox.
    pub fn take(&mut self, member: MemberId, max_bytes: usize) -> Vec<Bytes> {
        self.members
            .get_mut(&member)
            .map(|m| m.outbox.take(max_bytes))
            .unwrap_or_default()
    }

    pub fn has_pending(&self, member: MemberId) -> bool {
        self.members
            .get(&member)
            .is_some_and(|m| m.outbox.has_pending())
    }

    pub fn has_member(&self, member: MemberId) -> bool {
        self.members.contains_key(&member)
    }

    fn message(&self, now: Now, user_id: &str, payload: Payload) -> SessionMessage {
        SessionMessage {
            session_id: self.id.to_string(),
            timestamp: now.unix_ms,
            user_id: user_id.to_owned(),
            payload: Some(payload),
            sequence: self.sequence,
            client_sequence: 0,
        }
    }

    /// Queues an essential message for one member. `version` is the
    /// document version the member has seen once it reads the message (None
    /// when the message says nothing about the document).
    fn send_to(
        &mut self,
        member: MemberId,
        framed: Bytes,
        kind: MessageKind,
        version: Option<i32>,
        fx: &mut Effects,
    ) {
        let limit = self.limits.outbox_bytes;
        if let Some(m) = self.members.get_mut(&member) {
            if self.catching_up == Some(member) {
                m.outbox.push_catch_up(framed, version);
                self.counters.sent[kind as usize] += 1;
                fx.woken.insert(member);
            } else if m.outbox.push(framed, version, limit).is_err() {
                self.overflowed.push(member);
            } else {
                self.counters.sent[kind as usize] += 1;
                fx.woken.insert(member);
            }
        }
    }

    /// Queues a message that carries no document state (replies, notices).
    fn send_message(&mut self, member: MemberId, message: &SessionMessage, fx: &mut Effects) {
        let kind = MessageKind::of(message.payload.as_ref());
        self.send_to(member, encode_message(message), kind, None, fx);
    }

    /// Takes the counts accumulated since the last call.
    pub fn take_counters(&mut self) -> Counters {
        std::mem::take(&mut self.counters)
    }

    /// Numbers, records and broadcasts an essential event. A participant's
    /// own stream gets the acknowledgement (if any) instead of the event, and
    /// replays give it the acknowledgement form too.
    fn broadcast(
        &mut self,
        now: Now,
        origin: Origin<'_>,
        payload: Payload,
        fx: &mut Effects,
    ) -> u64 {
        self.sequence += 1;
        let kind = MessageKind::of(Some(&payload));
        let (user_id, author, own_member, ack) = match origin {
            Origin::Server { user_id } => (user_id.to_owned(), None, None, None),
            Origin::Participant { user, member, ack } => {
                (user.to_string(), Some(user.clone()), member, ack)
            }
        };
        let message = self.message(now, &user_id, payload);
        let framed = encode_message(&message);
        self.history.push(LoggedEvent {
            sequence: self.sequence,
            version: self.version,
            author,
            ack: ack.clone(),
            framed: framed.clone(),
        });
        let recipients: Vec<MemberId> = self
            .members
            .keys()
            .copied()
            .filter(|id| Some(*id) != own_member)
            .collect();
        let version = Some(self.version);
        for member in recipients {
            self.send_to(member, framed.clone(), kind, version, fx);
        }
        if let (Some(member), Some(ack)) = (own_member, ack) {
            let ack = self.ack_message(now, &user_id, &ack, self.sequence, false, false);
            self.send_to(member, encode_message(&ack), MessageKind::Ack, version, fx);
        }
        self.sequence
    }

    fn ack_message(
        &self,
        now: Now,
        user: &str,
        info: &AckInfo,
        sequence: u64,
        duplicate: bool,
        noop: bool,
    ) -> SessionMessage {
        let mut message = self.message(
            now,
            user,
            Payload::Ack(Ack {
                client_sequence: info.client_sequence,
                sequence,
                version: info.version,
                duplicate,
                noop,
                comment_id: info.comment_id.clone(),
            }),
        );
        message.client_sequence = info.client_sequence;
        message
    }

    /// Broadcasts an ephemeral event (latest per user and kind wins).
    fn broadcast_ephemeral(
        &mut self,
        now: Now,
        user: &Text,
        kind: EphemeralKind,
        payload: Payload,
        except: Option<MemberId>,
        fx: &mut Effects,
    ) {
        let counted = MessageKind::of(Some(&payload));
        let framed = encode_message(&self.message(now, user, payload));
        let key = EphemeralKey {
            user: user.clone(),
            kind,
        };
        for (id, member) in self.members.iter_mut() {
            if Some(*id) != except {
                member.outbox.push_ephemeral(key.clone(), framed.clone());
                self.counters.sent[counted as usize] += 1;
                fx.woken.insert(*id);
            }
        }
    }

    fn notice(&self, now: Now, kind: NoticeKind, text: &str, at: i64) -> SessionMessage {
        self.message(
            now,
            "",
            Payload::Notice(Notice {
                kind: kind as i32,
                text: text.to_owned(),
                at,
            }),
        )
    }

    fn error_message(&self, now: Now, client_sequence: u64, error: &ReviewError) -> SessionMessage {
        let mut message = self.message(
            now,
            "",
            Payload::Error(pb::Error {
                code: error.code().as_i32(),
                message: error.message.clone(),
                client_sequence,
            }),
        );
        message.client_sequence = client_sequence;
        message
    }

    /// The member with the most bytes waiting in its outbox, and how many.
    pub fn largest_outbox(&self) -> Option<(MemberId, usize)> {
        self.members
            .iter()
            .map(|(id, m)| (*id, m.outbox.buffered_bytes()))
            .max_by_key(|(_, bytes)| *bytes)
    }

    /// Ends a member's stream with `error` (it may resume).
    pub fn end_member(&mut self, now: Now, member: MemberId, error: ReviewError, fx: &mut Effects) {
        if self.members.contains_key(&member) {
            self.remove_member(now, member, fx);
            self.counters.slow_consumers += 1;
            fx.closed.push((member, error));
            self.settle(now, fx);
        }
    }

    /// Ends the members that went over their outbox bound (which may make
    /// others go over with the LEFT it broadcasts, hence the loop).
    fn settle(&mut self, now: Now, fx: &mut Effects) {
        while let Some(member) = self.overflowed.pop() {
            if !self.members.contains_key(&member) {
                continue;
            }
            let error = ReviewError::exhausted(format!(
                "fell behind: more than {} bytes of events pending; reconnect and resume",
                self.limits.outbox_bytes
            ));
            self.remove_member(now, member, fx);
            self.counters.slow_consumers += 1;
            fx.woken.remove(&member);
            fx.closed.push((member, error));
        }
    }
}

mod edits;
mod lifecycle;
mod membership;
mod messages;
#[cfg(test)]
mod tests;
