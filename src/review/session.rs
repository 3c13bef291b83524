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

use super::counters::{Counters, MessageKind};
use super::document::Document;
use super::error::{ErrorKind, ReviewError};
use super::history::{AckInfo, History, LoggedEvent};
use super::limits::Limits;
use super::ot::{self, FileOp, LineOp, Text};
use super::outbox::{EphemeralKey, EphemeralKind, Outbox};
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
        LineOp::ReplaceFile { lines } => lines.iter().map(|l| l.len() + 1).sum(),
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
struct TokenBucket {
    tokens: f64,
    updated: Instant,
}

#[derive(Debug)]
struct UserState {
    role: Role,
    live: Option<MemberId>,
    idle: bool,
    last_activity: Instant,
    departed_at: Option<Instant>,
    last_client_sequence: u64,
    outcomes: VecDeque<(u64, Outcome)>,
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
    /// Bases older than this (clients that do not track versions) apply to
    /// the current document as is.
    known_from: i32,
    /// The client has sent a non-zero base version: it tracks versions, so
    /// a base too old to transform is an error, not something to guess at.
    tracks_versions: bool,
    cursor: Option<CursorPosition>,
    rate: TokenBucket,
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
}

/// One session's whole state.
#[derive(Debug)]
pub struct Session {
    id: Text,
    epoch: u64,
    sequence: u64,
    version: i32,
    doc: Document,
    comments: Vec<CommentEntry>,
    comment_bytes: usize,
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
}

impl Session {
    pub fn new(id: Text, epoch: u64, limits: Arc<Limits>) -> Session {
        Session {
            id,
            epoch,
            sequence: 0,
            version: 0,
            doc: Document::new(),
            comments: Vec::new(),
            comment_bytes: 0,
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
            content_bytes: self.doc.bytes() + self.comment_bytes,
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

    // ----- building and routing messages -----

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

    /// Queues an essential message for one member.
    fn send_to(&mut self, member: MemberId, framed: Bytes, kind: MessageKind, fx: &mut Effects) {
        let limit = self.limits.outbox_bytes;
        if let Some(m) = self.members.get_mut(&member) {
            if self.catching_up == Some(member) {
                m.outbox.push_catch_up(framed);
                self.counters.sent[kind as usize] += 1;
                fx.woken.insert(member);
            } else if m.outbox.push(framed, limit).is_err() {
                self.overflowed.push(member);
            } else {
                self.counters.sent[kind as usize] += 1;
                fx.woken.insert(member);
            }
        }
    }

    fn send_message(&mut self, member: MemberId, message: &SessionMessage, fx: &mut Effects) {
        let kind = MessageKind::of(message.payload.as_ref());
        self.send_to(member, encode_message(message), kind, fx);
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
        for member in recipients {
            self.send_to(member, framed.clone(), kind, fx);
        }
        if let (Some(member), Some(ack)) = (own_member, ack) {
            let ack = self.ack_message(now, &user_id, &ack, self.sequence, false, false);
            self.send_message(member, &ack, fx);
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

    // ----- joining and leaving -----

    /// Adds a participant; on success its outbox holds Joined, the catch-up
    /// and CAUGHT_UP.
    pub fn join(
        &mut self,
        now: Now,
        request: JoinRequest,
        fx: &mut Effects,
    ) -> Result<(), ReviewError> {
        let takeover = self.users.get(&request.user_id).and_then(|u| u.live);
        if takeover.is_none() && self.live_participants >= self.limits.max_participants {
            return Err(ReviewError::exhausted(format!(
                "session {} is full ({} participants)",
                self.id, self.limits.max_participants
            )));
        }
        if !self.users.contains_key(&request.user_id) {
            self.make_room_for_user()?;
            let rate = TokenBucket {
                tokens: self.limits.rate_burst,
                updated: now.at,
            };
            let known_from = if request.options.resume_after.is_some() {
                0
            } else {
                self.version
            };
            self.users.insert(
                request.user_id.clone(),
                UserState {
                    role: request.role,
                    live: None,
                    idle: false,
                    last_activity: now.at,
                    departed_at: None,
                    last_client_sequence: 0,
                    outcomes: VecDeque::new(),
                    bridge: VecDeque::new(),
                    synced_to: self.version,
                    bridge_floor: self.version,
                    known_from,
                    tracks_versions: false,
                    cursor: None,
                    rate,
                },
            );
        }
        if let Some(old) = takeover {
            self.members.remove(&old);
            fx.woken.remove(&old);
            fx.closed.push((
                old,
                ReviewError::new(
                    ErrorKind::Aborted,
                    "replaced by a newer stream of the same user",
                ),
            ));
        }
        let user = self
            .users
            .get_mut(&request.user_id)
            .expect("inserted above");
        user.role = request.role;
        user.live = Some(request.member);
        user.idle = false;
        user.last_activity = now.at;
        user.departed_at = None;
        let last_client_sequence = user.last_client_sequence;
        if takeover.is_none() {
            self.live_participants += 1;
            let payload = Payload::Presence(PresenceUpdate {
                status: Presence::Joined as i32,
                role: request.role.to_wire() as i32,
            });
            // Everyone else hears of the join; the joiner learns its
            // sequence number from Joined.
            let origin = Origin::Participant {
                user: &request.user_id,
                member: Some(request.member),
                ack: None,
            };
            self.broadcast(now, origin, payload, fx);
        }
        self.members.insert(
            request.member,
            Member {
                kind: MemberKind::Participant(request.user_id.clone()),
                outbox: Outbox::new(),
                token: request.token,
                warned: false,
            },
        );
        self.catch_up(
            now,
            request.member,
            Some(&request.user_id),
            request.role,
            &request.options,
            last_client_sequence,
            request.token,
            fx,
        );
        self.settle(now, fx);
        Ok(())
    }

    /// Adds a read-only watcher.
    pub fn watch(
        &mut self,
        now: Now,
        member: MemberId,
        options: &JoinOptions,
        token: Option<TokenWindow>,
        fx: &mut Effects,
    ) -> Result<(), ReviewError> {
        if self.live_watchers >= self.limits.max_watchers {
            return Err(ReviewError::exhausted(format!(
                "session {} has too many watchers",
                self.id
            )));
        }
        self.live_watchers += 1;
        self.members.insert(
            member,
            Member {
                kind: MemberKind::Watcher,
                outbox: Outbox::new(),
                token,
                warned: false,
            },
        );
        self.catch_up(now, member, None, Role::Observer, options, 0, token, fx);
        self.settle(now, fx);
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn catch_up(
        &mut self,
        now: Now,
        member: MemberId,
        user: Option<&Text>,
        role: Role,
        options: &JoinOptions,
        last_client_sequence: u64,
        token: Option<TokenWindow>,
        fx: &mut Effects,
    ) {
        self.catching_up = Some(member);
        self.queue_catch_up(
            now,
            member,
            user,
            role,
            options,
            last_client_sequence,
            token,
            fx,
        );
        self.catching_up = None;
    }

    /// Joined, then history / resume replay / snapshot, then CAUGHT_UP.
    #[allow(clippy::too_many_arguments)]
    fn queue_catch_up(
        &mut self,
        now: Now,
        member: MemberId,
        user: Option<&Text>,
        role: Role,
        options: &JoinOptions,
        last_client_sequence: u64,
        token: Option<TokenWindow>,
        fx: &mut Effects,
    ) {
        let catchup = if options.want_snapshot {
            Catchup::Snapshot
        } else if let Some(after) = options.resume_after {
            let same_epoch = options.epoch == 0 || options.epoch == self.epoch;
            if same_epoch && self.history.covers_after(after, self.sequence) {
                Catchup::Resume
            } else {
                Catchup::Snapshot
            }
        } else {
            Catchup::History
        };
        if options.resume_after.is_some() {
            match catchup {
                Catchup::Resume => self.counters.resumes_replay += 1,
                _ => self.counters.resumes_snapshot += 1,
            }
        }
        let joined = self.message(
            now,
            user.map(|u| &**u).unwrap_or(""),
            Payload::Joined(Joined {
                session_epoch: self.epoch,
                sequence: self.sequence,
                version: self.version,
                catchup: catchup as i32,
                role: role.to_wire() as i32,
                last_client_sequence,
                token_expires_at: token.map_or(0, |t| t.expires_at_ms),
            }),
        );
        self.send_message(member, &joined, fx);
        match catchup {
            Catchup::Snapshot => {
                let snapshot = self.message(now, "", Payload::Snapshot(self.snapshot()));
                self.send_message(member, &snapshot, fx);
            }
            Catchup::History | Catchup::Resume => {
                let after = if catchup == Catchup::Resume {
                    options.resume_after.unwrap_or(0)
                } else {
                    0
                };
                let replay: Vec<Bytes> = self
                    .history
                    .after(after)
                    .map(|event| match (&event.author, user) {
                        (Some(author), Some(user)) if author == user => {
                            let info = event.ack.clone().unwrap_or(AckInfo {
                                client_sequence: 0,
                                version: 0,
                                comment_id: String::new(),
                            });
                            let mut ack =
                                self.ack_message(now, user, &info, event.sequence, false, false);
                            ack.sequence = event.sequence;
                            encode_message(&ack)
                        }
                        _ => event.framed.clone(),
                    })
                    .collect();
                for framed in replay {
                    self.send_to(member, framed, MessageKind::Replay, fx);
                }
                // Cursors are ephemeral (not in history): send the current ones.
                let cursors: Vec<(Text, CursorPosition)> = self
                    .users
                    .iter()
                    .filter(|(name, u)| u.live.is_some() && Some(*name) != user)
                    .filter_map(|(name, u)| u.cursor.clone().map(|c| (name.clone(), c)))
                    .collect();
                for (name, cursor) in cursors {
                    let framed = encode_message(&self.message(now, &name, Payload::Cursor(cursor)));
                    if let Some(m) = self.members.get_mut(&member) {
                        m.outbox.push_ephemeral(
                            EphemeralKey {
                                user: name,
                                kind: EphemeralKind::Cursor,
                            },
                            framed,
                        );
                    }
                }
            }
        }
        let caught_up = self.notice(
            now,
            NoticeKind::CaughtUp,
            "caught up; live events follow",
            0,
        );
        self.send_message(member, &caught_up, fx);
    }

    /// Evicts the user record that departed longest ago, if the table is full.
    fn make_room_for_user(&mut self) -> Result<(), ReviewError> {
        let capacity = self.limits.max_participants.saturating_mul(2).max(1);
        if self.users.len() < capacity {
            return Ok(());
        }
        let oldest = self
            .users
            .iter()
            .filter(|(_, u)| u.live.is_none())
            .min_by_key(|(_, u)| u.departed_at)
            .map(|(name, _)| name.clone());
        match oldest {
            Some(name) => {
                self.users.remove(&name);
                Ok(())
            }
            None => Err(ReviewError::exhausted(
                "too many participants in this session",
            )),
        }
    }

    /// A member's stream ended (or was cancelled, or failed).
    pub fn leave(&mut self, now: Now, member: MemberId, fx: &mut Effects) {
        self.remove_member(now, member, fx);
        self.settle(now, fx);
    }

    fn remove_member(&mut self, now: Now, member: MemberId, fx: &mut Effects) {
        let Some(removed) = self.members.remove(&member) else {
            return;
        };
        fx.woken.remove(&member);
        match removed.kind {
            MemberKind::Watcher => self.live_watchers -= 1,
            MemberKind::Participant(user) => {
                let Some(state) = self.users.get_mut(&user) else {
                    return;
                };
                if state.live != Some(member) {
                    return; // replaced by a newer stream: that one stays.
                }
                state.live = None;
                state.departed_at = Some(now.at);
                self.live_participants -= 1;
                let payload = Payload::Presence(PresenceUpdate {
                    status: Presence::Left as i32,
                    role: state.role.to_wire() as i32,
                });
                let origin = Origin::Participant {
                    user: &user,
                    member: Some(member),
                    ack: None,
                };
                self.broadcast(now, origin, payload, fx);
            }
        }
    }

    // ----- messages from participants -----

    /// Answers a message the stream's task could not validate, in order with
    /// the member's other replies.
    pub fn reject(
        &mut self,
        now: Now,
        member: MemberId,
        client_sequence: u64,
        error: &ReviewError,
        fx: &mut Effects,
    ) {
        let message = self.error_message(now, client_sequence, error);
        self.send_message(member, &message, fx);
        self.settle(now, fx);
    }

    /// Handles a validated message from a participant.
    pub fn handle(&mut self, now: Now, member: MemberId, message: ClientMessage, fx: &mut Effects) {
        let Some(Member {
            kind: MemberKind::Participant(user),
            ..
        }) = self.members.get(&member)
        else {
            return;
        };
        let user = user.clone();
        let client_sequence = message.client_sequence;
        let kind = match &message.action {
            Action::Edit(_) => MessageKind::Edit,
            Action::Comment(_) => MessageKind::Comment,
            Action::Cursor(_) => MessageKind::Cursor,
            Action::Presence(_) => MessageKind::Presence,
            _ => MessageKind::Other,
        };
        self.counters.received[kind as usize] += 1;
        if let Err(error) = self.handle_inner(now, member, &user, message, fx) {
            let reply = self.error_message(now, client_sequence, &error);
            self.send_message(member, &reply, fx);
            if client_sequence != 0 {
                self.remember(&user, client_sequence, Outcome::Error(error));
            }
        }
        self.settle(now, fx);
    }

    fn remember(&mut self, user: &Text, client_sequence: u64, outcome: Outcome) {
        if let Some(state) = self.users.get_mut(user) {
            state.last_client_sequence = state.last_client_sequence.max(client_sequence);
            state.outcomes.push_back((client_sequence, outcome));
            if state.outcomes.len() > REMEMBERED_OUTCOMES {
                state.outcomes.pop_front();
            }
        }
    }

    fn handle_inner(
        &mut self,
        now: Now,
        member: MemberId,
        user: &Text,
        message: ClientMessage,
        fx: &mut Effects,
    ) -> Result<(), ReviewError> {
        let limits = self.limits.clone();
        let state = self
            .users
            .get_mut(user)
            .expect("a live member's user has a record");
        // Rate limit: a token bucket per user.
        if limits.rate_per_second > 0.0 {
            let elapsed = now
                .at
                .saturating_duration_since(state.rate.updated)
                .as_secs_f64();
            state.rate.tokens =
                (state.rate.tokens + elapsed * limits.rate_per_second).min(limits.rate_burst);
            state.rate.updated = now.at;
            if state.rate.tokens < 1.0 {
                return Err(ReviewError::exhausted(format!(
                    "rate limit: at most {} messages per second (burst {})",
                    limits.rate_per_second, limits.rate_burst
                )));
            }
            state.rate.tokens -= 1.0;
        }
        // A resend of something already processed: answer it again.
        let client_sequence = message.client_sequence;
        if client_sequence != 0 && client_sequence <= state.last_client_sequence {
            let outcome = state
                .outcomes
                .iter()
                .find(|(s, _)| *s == client_sequence)
                .map(|(_, o)| o.clone());
            let reply = match outcome {
                Some(Outcome::Ack(ack)) => Payload::Ack(Ack {
                    duplicate: true,
                    ..ack
                }),
                Some(Outcome::Error(error)) => Payload::Error(pb::Error {
                    code: error.code().as_i32(),
                    message: error.message,
                    client_sequence,
                }),
                None => Payload::Ack(Ack {
                    client_sequence,
                    duplicate: true,
                    ..Ack::default()
                }),
            };
            let mut reply = self.message(now, user, reply);
            reply.client_sequence = client_sequence;
            self.send_message(member, &reply, fx);
            return Ok(());
        }
        // Speaking makes an idle participant active again.
        let is_idle_announcement = matches!(message.action, Action::Presence(ClientPresence::Idle));
        state.last_activity = now.at;
        let was_idle = state.idle;
        let role = state.role;
        if was_idle && !is_idle_announcement {
            state.idle = false;
            self.announce_presence(now, user, Presence::Active, role, fx);
        }
        match message.action {
            Action::Join(_) => Err(ReviewError::invalid(
                "join is only valid as a stream's first message",
            )),
            Action::Touch | Action::TokenRefresh(_) => Ok(()),
            Action::Presence(ClientPresence::Joined | ClientPresence::Active) => Ok(()),
            Action::Presence(ClientPresence::Idle) => {
                if !was_idle {
                    self.users.get_mut(user).expect("exists").idle = true;
                    self.announce_presence(now, user, Presence::Idle, role, fx);
                }
                Ok(())
            }
            Action::Presence(ClientPresence::Left) => {
                self.remove_member(now, member, fx);
                fx.finished.push(member);
                Ok(())
            }
            Action::Edit(edit) => {
                let proof = role.may_edit()?;
                self.apply_edit(now, member, user, edit, client_sequence, proof, fx)
            }
            Action::Comment(comment) => {
                let proof = role.may_comment()?;
                self.add_comment(now, member, user, comment, client_sequence, proof, fx)
            }
            Action::Cursor(cursor) => {
                let proof = role.may_move_cursor()?;
                self.move_cursor(now, member, user, cursor, client_sequence, proof, fx);
                Ok(())
            }
        }
    }

    fn announce_presence(
        &mut self,
        now: Now,
        user: &Text,
        status: Presence,
        role: Role,
        fx: &mut Effects,
    ) {
        let payload = Payload::Presence(PresenceUpdate {
            status: status as i32,
            role: role.to_wire() as i32,
        });
        self.broadcast_ephemeral(now, user, EphemeralKind::Presence, payload, None, fx);
    }

    #[allow(clippy::too_many_arguments)]
    fn apply_edit(
        &mut self,
        now: Now,
        member: MemberId,
        user: &Text,
        edit: EditRequest,
        client_sequence: u64,
        _proof: MayEdit,
        fx: &mut Effects,
    ) -> Result<(), ReviewError> {
        let current = self.version;
        if current == i32::MAX {
            return Err(ReviewError::exhausted(
                "the session reached its last version",
            ));
        }
        let oldest_logged = self.ops.front().map_or(current + 1, |(v, _, _)| *v);
        let state = self.users.get_mut(user).expect("exists");
        let mut base = edit.base_version;
        if base > current {
            return Err(ReviewError::new(
                ErrorKind::FailedPrecondition,
                format!("edit based on version {base}, but the session is at version {current}"),
            ));
        }
        if base < state.known_from {
            // A client that does not track versions: apply as is.
            base = current;
        }
        // Transformable if the bridge still holds what follows `base` up to
        // `synced_to`, and the log holds what follows that.
        let bridge_ok = base >= state.bridge_floor || base >= state.synced_to;
        let log_ok = base.max(state.synced_to) + 1 >= oldest_logged;
        if !(bridge_ok && log_ok) {
            if state.tracks_versions {
                return Err(ReviewError::new(
                    ErrorKind::FailedPrecondition,
                    format!(
                        "edit based on version {base} is too old to transform (the session keeps the last {} operations); \
                         take a snapshot and retry",
                        self.limits.transform_window
                    ),
                ));
            }
            base = current;
        }
        if edit.base_version > 0 {
            state.tracks_versions = true;
        }
        // Materialize: drop what the client has seen, add the others'
        // operations since the last sync.
        while state.bridge.front().is_some_and(|(v, _)| *v <= base) {
            state.bridge.pop_front();
        }
        let from = base.max(state.synced_to);
        for (version, author, logged) in &self.ops {
            if *version > from && author.as_ref() != Some(user) {
                state.bridge.push_back((*version, logged.clone()));
            }
        }
        state.synced_to = current;
        let window = self.limits.transform_window.max(1);
        while state.bridge.len() > window {
            if let Some((dropped, _)) = state.bridge.pop_front() {
                state.bridge_floor = dropped;
            }
        }
        let mut op = FileOp {
            path: edit.path,
            op: edit.op,
        };
        let mut bridge = Vec::with_capacity(state.bridge.len());
        if !state.bridge.is_empty() {
            self.counters.edits_transformed += 1;
        }
        for (version, applied) in &state.bridge {
            let op_after = ot::transform(&op, applied, false);
            bridge.push((*version, ot::transform(applied, &op, true)));
            op = op_after;
        }
        if op.is_noop() {
            state.bridge = bridge.into();
            let info = AckInfo {
                client_sequence,
                version: current,
                comment_id: String::new(),
            };
            let ack = self.ack_message(now, user, &info, 0, false, true);
            self.send_message(member, &ack, fx);
            self.remember_ack(user, client_sequence, &ack);
            return Ok(());
        }
        self.doc.apply(&op, &self.limits, self.comment_bytes)?;
        self.version += 1;
        let version = self.version;
        let state = self.users.get_mut(user).expect("exists");
        state.bridge = bridge.into();
        state.synced_to = version;
        self.log_op(version, Some(user.clone()), &op);
        self.reanchor_comments(&op);
        let (line_number, content, wire_op) = match &op.op {
            LineOp::Replace { line, text } => (*line, text.to_string(), WireOp::Replace),
            LineOp::Insert { line, text } => (*line, text.to_string(), WireOp::Insert),
            LineOp::Delete { line } => (*line, String::new(), WireOp::Delete),
            LineOp::ReplaceFile { .. } | LineOp::Noop => unreachable!("edits are line operations"),
        };
        let payload = Payload::Edit(CodeEdit {
            file_path: op.path.to_string(),
            line_number: line_number as i32,
            content,
            version,
            op: wire_op as i32,
        });
        let info = AckInfo {
            client_sequence,
            version,
            comment_id: String::new(),
        };
        let origin = Origin::Participant {
            user,
            member: Some(member),
            ack: Some(info.clone()),
        };
        let sequence = self.broadcast(now, origin, payload, fx);
        if client_sequence != 0 {
            let ack = self.ack_message(now, user, &info, sequence, false, false);
            self.remember_ack(user, client_sequence, &ack);
        }
        Ok(())
    }

    fn remember_ack(&mut self, user: &Text, client_sequence: u64, message: &SessionMessage) {
        if client_sequence == 0 {
            return;
        }
        if let Some(Payload::Ack(ack)) = &message.payload {
            self.remember(user, client_sequence, Outcome::Ack(ack.clone()));
        }
    }

    /// Records an applied operation in the log users' bridges are built from.
    fn log_op(&mut self, version: i32, author: Option<Text>, op: &FileOp) {
        self.ops_bytes += op_bytes(op);
        self.ops.push_back((version, author, op.clone()));
        let window = self.limits.transform_window.max(1);
        while self.ops.len() > window
            || (self.ops_bytes > self.limits.history_bytes && self.ops.len() > 1)
        {
            if let Some((_, _, dropped)) = self.ops.pop_front() {
                self.ops_bytes -= op_bytes(&dropped);
            }
        }
    }

    /// Keeps comments on their lines as lines are inserted and deleted.
    fn reanchor_comments(&mut self, op: &FileOp) {
        let len = self.doc.file(&op.path).map_or(0, <[Text]>::len);
        for entry in &mut self.comments {
            let Some(comment) = entry.comment.as_mut() else {
                continue;
            };
            if *comment.file_path != *op.path {
                continue;
            }
            let line = comment.line_number.max(0) as u32;
            let moved = ot::transform_line(&op.path, line, op).unwrap_or(line);
            let clamped = if len == 0 {
                0
            } else {
                moved.min(len as u32 - 1)
            };
            comment.line_number = clamped as i32;
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn add_comment(
        &mut self,
        now: Now,
        member: MemberId,
        user: &Text,
        request: CommentRequest,
        client_sequence: u64,
        _proof: MayComment,
        fx: &mut Effects,
    ) -> Result<(), ReviewError> {
        if self.comments.len() >= self.limits.max_comments {
            return Err(ReviewError::exhausted(format!(
                "the session has {} comments (limit)",
                self.limits.max_comments
            )));
        }
        let comment_id = if request.comment_id.is_empty() {
            format!("c{}", self.sequence + 1)
        } else {
            request.comment_id
        };
        if self.comments.iter().any(|c| {
            c.comment
                .as_ref()
                .is_some_and(|c| c.comment_id == comment_id)
        }) {
            return Err(ReviewError::new(
                ErrorKind::AlreadyExists,
                format!("comment {comment_id:?} already exists"),
            ));
        }
        let cost = comment_id.len() + request.path.len() + request.text.len() + user.len();
        if self.doc.bytes() + self.comment_bytes + cost > self.limits.max_session_bytes {
            return Err(ReviewError::exhausted(
                "the session's content limit is reached",
            ));
        }
        let comment = Comment {
            comment_id: comment_id.clone(),
            line_number: request.line as i32,
            text: request.text,
            file_path: request.path,
        };
        let info = AckInfo {
            client_sequence,
            version: self.version,
            comment_id,
        };
        let origin = Origin::Participant {
            user,
            member: Some(member),
            ack: Some(info.clone()),
        };
        let sequence = self.broadcast(now, origin, Payload::Comment(comment.clone()), fx);
        self.comment_bytes += cost;
        self.comments.push(CommentEntry {
            user_id: user.to_string(),
            comment: Some(comment),
            sequence,
            timestamp: now.unix_ms,
        });
        if client_sequence != 0 {
            let ack = self.ack_message(now, user, &info, sequence, false, false);
            self.remember_ack(user, client_sequence, &ack);
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn move_cursor(
        &mut self,
        now: Now,
        member: MemberId,
        user: &Text,
        request: CursorRequest,
        client_sequence: u64,
        _proof: MayMoveCursor,
        fx: &mut Effects,
    ) {
        let cursor = CursorPosition {
            file_path: request.path,
            line: request.line as i32,
            column: request.column as i32,
        };
        self.users.get_mut(user).expect("exists").cursor = Some(cursor.clone());
        self.broadcast_ephemeral(
            now,
            user,
            EphemeralKind::Cursor,
            Payload::Cursor(cursor),
            Some(member),
            fx,
        );
        if client_sequence != 0 {
            let info = AckInfo {
                client_sequence,
                version: self.version,
                comment_id: String::new(),
            };
            let ack = self.ack_message(now, user, &info, 0, false, false);
            self.send_message(member, &ack, fx);
            self.remember_ack(user, client_sequence, &ack);
        }
    }

    // ----- uploads, snapshots, time -----

    /// Replaces whole files (the author seeds the session). Atomic: either
    /// every file is applied or none.
    pub fn upload(
        &mut self,
        now: Now,
        user: &Text,
        files: Vec<(Text, Vec<Text>)>,
        _proof: MayUpload,
        fx: &mut Effects,
    ) -> Result<UploadOutcome, ReviewError> {
        let mut staged = self.doc.clone();
        let ops: Vec<FileOp> = files
            .into_iter()
            .map(|(path, lines)| FileOp {
                path,
                op: LineOp::ReplaceFile {
                    lines: lines.into(),
                },
            })
            .collect();
        let mut outcome = UploadOutcome::default();
        for op in &ops {
            staged.apply(op, &self.limits, self.comment_bytes)?;
            if let LineOp::ReplaceFile { lines } = &op.op {
                outcome.files += 1;
                outcome.lines += lines.len() as u32;
                outcome.bytes += lines.iter().map(|l| l.len() as u64 + 1).sum::<u64>();
            }
        }
        if self.version.checked_add(ops.len() as i32).is_none() {
            return Err(ReviewError::exhausted(
                "the session reached its last version",
            ));
        }
        self.doc = staged;
        for op in ops {
            self.version += 1;
            let version = self.version;
            // An upload is nobody's pending edit: every user's bridge gets it.
            self.log_op(version, None, &op);
            self.reanchor_comments(&op);
            let LineOp::ReplaceFile { lines } = &op.op else {
                unreachable!()
            };
            let payload = Payload::File(FileContent {
                file_path: op.path.to_string(),
                lines: lines.iter().map(|l| l.to_string()).collect(),
                version,
            });
            outcome.sequence = self.broadcast(now, Origin::Server { user_id: user }, payload, fx);
        }
        outcome.version = self.version;
        self.settle(now, fx);
        Ok(outcome)
    }

    /// The whole state, as a late joiner or `GetSnapshot` sees it.
    pub fn snapshot(&self) -> pb::Snapshot {
        let mut participants: Vec<Participant> = self
            .users
            .iter()
            .filter(|(_, u)| u.live.is_some())
            .map(|(name, u)| Participant {
                user_id: name.to_string(),
                status: if u.idle {
                    Presence::Idle
                } else {
                    Presence::Active
                } as i32,
                role: u.role.to_wire() as i32,
                cursor: u.cursor.clone(),
            })
            .collect();
        participants.sort_by(|a, b| a.user_id.cmp(&b.user_id));
        pb::Snapshot {
            session_id: self.id.to_string(),
            session_epoch: self.epoch,
            sequence: self.sequence,
            version: self.version,
            files: self
                .doc
                .files()
                .map(|(path, lines)| FileContent {
                    file_path: path.to_string(),
                    lines: lines.iter().map(|l| l.to_string()).collect(),
                    version: 0,
                })
                .collect(),
            comments: self.comments.clone(),
            participants,
        }
    }

    /// Periodic work: IDLE after silence, token warnings and expiry.
    pub fn tick(&mut self, now: Now, fx: &mut Effects) {
        let idle_after = self.limits.idle_after;
        let newly_idle: Vec<(Text, Role)> = self
            .users
            .iter_mut()
            .filter(|(_, u)| {
                u.live.is_some()
                    && !u.idle
                    && now.at.saturating_duration_since(u.last_activity) >= idle_after
            })
            .map(|(name, u)| {
                u.idle = true;
                (name.clone(), u.role)
            })
            .collect();
        let mut newly_idle = newly_idle;
        newly_idle.sort_by(|a, b| a.0.cmp(&b.0));
        for (user, role) in newly_idle {
            self.announce_presence(now, &user, Presence::Idle, role, fx);
        }
        let mut expired = Vec::new();
        let mut warn = Vec::new();
        for (id, member) in self.members.iter_mut() {
            let Some(token) = member.token else { continue };
            if now.unix_ms >= token.expires_at_ms {
                expired.push(*id);
            } else if !member.warned && now.unix_ms >= token.warn_at_ms {
                member.warned = true;
                warn.push((*id, token.expires_at_ms));
            }
        }
        for (member, at) in warn {
            let notice = self.notice(
                now,
                NoticeKind::TokenExpiring,
                "token expiring: send a token_refresh",
                at,
            );
            self.send_message(member, &notice, fx);
        }
        for member in expired {
            self.remove_member(now, member, fx);
            fx.closed.push((
                member,
                ReviewError::new(ErrorKind::Unauthenticated, "token expired"),
            ));
        }
        self.settle(now, fx);
    }

    /// A member presented a fresh token.
    pub fn refresh_token(
        &mut self,
        now: Now,
        member: MemberId,
        token: TokenWindow,
        fx: &mut Effects,
    ) {
        if let Some(m) = self.members.get_mut(&member) {
            m.token = Some(token);
            m.warned = false;
            let notice = self.notice(
                now,
                NoticeKind::TokenRefreshed,
                "token refreshed",
                token.expires_at_ms,
            );
            self.send_message(member, &notice, fx);
            self.settle(now, fx);
        }
    }

    /// Tells every member the server is going away (by `deadline_ms`).
    pub fn announce_drain(&mut self, now: Now, deadline_ms: i64, fx: &mut Effects) {
        let notice = encode_message(&self.notice(
            now,
            NoticeKind::GoingAway,
            "server shutting down: reconnect and resume",
            deadline_ms,
        ));
        let members: Vec<MemberId> = self.members.keys().copied().collect();
        for member in members {
            self.send_to(member, notice.clone(), MessageKind::Notice, fx);
        }
        self.settle(now, fx);
    }

    /// Ends every member with `error` (drain deadline reached).
    pub fn close_all(&mut self, now: Now, error: &ReviewError, fx: &mut Effects) {
        let members: Vec<MemberId> = self.members.keys().copied().collect();
        for member in members {
            self.remove_member(now, member, fx);
            fx.closed.push((member, error.clone()));
        }
        self.overflowed.clear();
    }
}
