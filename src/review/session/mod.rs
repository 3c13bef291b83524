//! One review session as a plain state machine: no sockets, tasks or clocks.
//! It has one entry point, [`Session::step`]: the registry feeds it an
//! [`Input`] with the time ([`Now`]); it updates state, fills members'
//! outboxes and reports [`Effects`] (whose outbox has news, which members to
//! end and why, the answer to the input). Every step ends settled (members
//! over their outbox bound ended). Tests drive it directly.
//!
//! Two halves, so that several processes can hold replicas of one session
//! whose log lives elsewhere (Redis), and all of them fold it identically:
//!
//! ```text
//!  input ─► decide (this process: rate limits, roles, memory, storage,
//!           │       what the stream has seen) ─► proposal (a log record)
//!           │                                        │ local log: at once
//!           │                                        │ shared log: once appended
//!           ▼                                        ▼
//!   immediate replies                      apply (deterministic: the same
//!   (resends, cursors)                     record at the same position gives
//!                                          every replica the same state)
//! ```
//!
//! Only [`Session::apply_record`] (and what it calls) changes the log's
//! state; decisions read it. With a local log a proposal is applied at
//! once (its output gated until the record is durable); with a shared log
//! ([`Session::share`]) proposals wait in [`Effects::proposals`] until the
//! registry has appended them, then are applied where they landed, after
//! whatever other instances appended first.
//!
//! Where things live: [`roster`] (users and live streams, and the invariant
//! between them), `membership` (joining, catch-up, leaving), `messages`
//! (rate limits, resends, dispatch), `edits` (edits, comments, cursors,
//! uploads), `apply` (records into state), `lifecycle` (snapshots, time,
//! tokens, drain, departed instances).
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

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use bytes::Bytes;

use super::bridge::OpLog;
use super::comments::Comments;
use super::counters::{Counters, MessageKind};
use super::document::{Document, Room};
use super::envelope::{AckRef, Carried, Envelope};
use super::error::{ErrorKind, ReviewError};
use super::history::{AckInfo, History, LoggedEvent};
use super::ids::{MemberId, Text};
use super::limits::Limits;
use super::outbox::{EphemeralKey, EphemeralKind, Feed, Taken};
use super::rate::RateLimiter;
use super::roles::{MayUpload, Role};
use super::validate::{ClientMessage, JoinOptions};
use crate::grpc::codec::{FrameArena, encode_message};
use crate::pb::codereview::{
    self as pb, Ack, Notice, SessionMessage, notice::Kind as NoticeKind, session_message::Payload,
};
use crate::pb::store::{self, Record, record::Body};
use roster::{Member, Roster};

mod apply;
mod edits;
mod lifecycle;
mod log;
pub use log::{EncodedSnapshot, snapshot_weight};
mod membership;
mod messages;
mod roster;
#[cfg(test)]
mod tests;

/// The time, as the registry passes it in.
#[derive(Debug, Clone, Copy)]
pub struct Now {
    pub at: std::time::Instant,
    pub unix_ms: i64,
}

/// What a session is asked to do.
#[derive(Debug)]
pub enum Input {
    /// A participant's stream joins.
    Join(JoinRequest),
    /// A read-only watcher's stream joins.
    Watch {
        member: MemberId,
        options: JoinOptions,
        token: Option<TokenWindow>,
    },
    /// A validated message from a participant.
    Message {
        member: MemberId,
        message: ClientMessage,
    },
    /// Validated messages from a participant that arrived together, handled
    /// in order in one step (the session is settled once, after the last:
    /// a member that falls behind meanwhile is ended then, its outbox past
    /// its bound by at most what the batch sent it).
    Messages {
        member: MemberId,
        messages: Vec<ClientMessage>,
    },
    /// A message the stream could not validate: answered in order with the
    /// member's other replies.
    Reject {
        member: MemberId,
        client_sequence: u64,
        error: ReviewError,
    },
    /// A member's stream ended (or was cancelled, or failed).
    Leave { member: MemberId },
    /// A member presented a fresh token.
    RefreshToken {
        member: MemberId,
        token: TokenWindow,
    },
    /// The author seeds the session with whole files (atomic).
    Upload {
        user: Text,
        files: Vec<(Text, Vec<Text>)>,
        proof: MayUpload,
    },
    /// Periodic work: IDLE after silence, token warnings and expiry.
    Tick,
    /// The server is going away by `deadline_ms`: tell every member.
    Drain { deadline_ms: i64 },
    /// End one member's stream with `error` (it may resume).
    End {
        member: MemberId,
        error: ReviewError,
    },
    /// End every member with `error` (the drain deadline passed).
    CloseAll { error: ReviewError },
    /// Users present through streams of processes that are gone (a
    /// restart, an instance whose lease expired) leave.
    Reap { gone: Departed },
    /// Another instance's ephemeral news (a cursor, idle or active): a
    /// framed `SessionMessage` for every member here.
    Ephemeral { user: Text, framed: Bytes },
}

/// Which processes' streams are gone.
#[derive(Debug, Clone)]
pub enum Departed {
    /// Every stream not open in this process (after a restart, with a
    /// local log: none is).
    AllButThis,
    /// These instances.
    Instances(BTreeSet<Text>),
}

/// Who waits for a proposal's outcome.
#[derive(Debug)]
pub enum Author {
    /// Nobody here: another instance's record, a replayed one, the server's.
    Nobody,
    /// A member's message: its stream gets the acknowledgement or the error.
    Member(MemberId),
    /// A join: the member is added where the record lands (its catch-up
    /// starts there), or refused (the answer is in [`Effects::result`]).
    Joiner(JoinRequest),
    /// An upload: the answer is in [`Effects::result`].
    Uploader,
}

/// A record decided here, waiting for its place in the log.
#[derive(Debug)]
pub struct Proposal {
    pub timestamp: i64,
    pub body: Body,
    pub author: Author,
}

/// Ephemeral news for the other instances (shared log only).
#[derive(Debug, Clone)]
pub struct Published {
    pub user: Text,
    pub framed: Bytes,
}

/// What a step did that the registry must act on.
#[derive(Debug)]
pub struct Effects {
    /// Members with new messages in their outbox (a member may appear more
    /// than once: the registry answers each once per turn).
    pub woken: Vec<MemberId>,
    /// Members ended by the session, with why.
    pub closed: Vec<(MemberId, ReviewError)>,
    /// Members whose stream ends normally (the client said LEFT).
    pub finished: Vec<MemberId>,
    /// The answer to the input: whether a join, watch or upload was
    /// accepted (other inputs answer their members through outboxes).
    pub result: Result<Done, ReviewError>,
    /// Log records the step made, in order: what it queued for members
    /// waits until they are durable (see [`Session::mark_durable`]).
    pub records: Vec<Record>,
    /// With a shared log: records decided and not applied yet, in order
    /// (the registry appends them, then applies them where they landed).
    pub proposals: Vec<Proposal>,
    /// With a shared log: ephemeral news for the other instances.
    pub published: Vec<Published>,
}

impl Default for Effects {
    fn default() -> Self {
        Effects {
            woken: Vec::new(),
            closed: Vec::new(),
            finished: Vec::new(),
            result: Ok(Done::Nothing),
            records: Vec::new(),
            proposals: Vec::new(),
            published: Vec::new(),
        }
    }
}

impl Effects {
    /// `member` has nothing to be woken for after all (it was ended).
    fn unwake(&mut self, member: MemberId) {
        self.woken.retain(|&m| m != member);
    }
}

/// What an accepted input produced, for its caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Done {
    Nothing,
    Uploaded(UploadOutcome),
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

/// The acknowledgement of the message `info` describes, as the event
/// numbered `sequence`.
fn ack_of(info: &AckInfo, sequence: u64, duplicate: bool, noop: bool) -> Ack {
    ack_ref(info, sequence, duplicate, noop).to_ack()
}

/// [`ack_of`], borrowed from `info` (for encoding, without a copy).
fn ack_ref(info: &AckInfo, sequence: u64, duplicate: bool, noop: bool) -> AckRef<'_> {
    AckRef {
        client_sequence: info.client_sequence,
        sequence,
        version: info.version,
        duplicate,
        noop,
        comment_id: info.comment_id.as_deref().unwrap_or(""),
    }
}

/// Where an essential event comes from.
enum Origin<'a> {
    /// The server (an upload): everyone gets the event.
    Server { user_id: &'a str },
    /// A participant's action: its stream (if any) gets `ack`, or nothing.
    Participant {
        user: &'a Text,
        member: Option<MemberId>,
        ack: Option<&'a AckInfo>,
    },
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
    roster: Roster,
    history: History,
    /// Broadcast events some member has not taken yet (each kept once).
    feed: Feed,
    /// The feed's length at which [`Session::forget_fed`] runs next.
    feed_trim_at: usize,
    /// Recent operations, the source of every user's bridge.
    ops: OpLog,
    limits: Arc<Limits>,
    /// Memory the process-wide budget lets this session grow by (set by the
    /// registry before each input; unlimited until then).
    memory_room: usize,
    /// Why content cannot be written now (storage failing, disk budget
    /// used up), if it cannot: edits, comments and uploads get this error.
    write_refusal: Option<ReviewError>,
    /// Members over their outbox bound, to be ended by `settle`.
    overflowed: Vec<MemberId>,
    counters: Counters,
    /// The member whose catch-up is being queued (exempt from the bound).
    catching_up: Option<MemberId>,
    /// The index the session's next log record gets (records so far).
    next_index: u64,
    /// Records below this index are durable: what waits for them may go.
    durable_index: u64,
    /// Records made by the step in progress (the registry takes them).
    records: Vec<Record>,
    /// Whether anything keeps the records (a log on disk): without one,
    /// none is made, and a comment moves into the state instead of a copy.
    keeps_records: bool,
    /// This process's name in stream identities ("<instance>/<member>").
    instance: Text,
    /// The log is shared with other instances: proposals wait to be
    /// appended before they are applied.
    shared: bool,
    /// Proposals of the step in progress (shared log).
    proposals: Vec<Proposal>,
    /// Ephemeral news of the step in progress (shared log).
    published: Vec<Published>,
    /// Each user's allowance here (not the log's: every instance limits
    /// the streams it serves).
    rates: HashMap<Text, RateLimiter>,
    /// Where the session's events are framed: in shared chunks, not one
    /// allocation each (they are kept and dropped in order).
    frames: FrameArena,
    /// A step's [`Effects::woken`] handed back ([`Session::recycle_woken`])
    /// for the next step: no allocation per step for it.
    spare_woken: Vec<MemberId>,
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
const RATE_MEMORY: usize = 96;

/// The fewest events the feed grows by between two trims (see
/// [`Session::forget_fed`]).
const FEED_TRIM_EVENTS: usize = 64;

impl Session {
    pub fn new(id: Text, epoch: u64, limits: Arc<Limits>) -> Session {
        Session {
            id,
            epoch,
            sequence: 0,
            version: 0,
            doc: Document::new(),
            comments: Comments::default(),
            roster: Roster::default(),
            history: History::new(limits.history_events, limits.history_bytes),
            feed: Feed::default(),
            feed_trim_at: FEED_TRIM_EVENTS,
            ops: OpLog::default(),
            limits,
            memory_room: usize::MAX,
            write_refusal: None,
            overflowed: Vec::new(),
            counters: Counters::default(),
            catching_up: None,
            next_index: 0,
            durable_index: 0,
            records: Vec::new(),
            keeps_records: true,
            instance: Arc::from("local"),
            shared: false,
            proposals: Vec::new(),
            published: Vec::new(),
            rates: HashMap::new(),
            frames: FrameArena::new(),
            spare_woken: Vec::new(),
        }
    }

    /// Takes back a step's [`Effects::woken`] once read, to reuse it.
    pub fn recycle_woken(&mut self, mut woken: Vec<MemberId>) {
        woken.clear();
        self.spare_woken = woken;
    }

    /// Names this process in the stream identities the log records (unique
    /// across instances and restarts).
    pub fn set_instance(&mut self, instance: Text) {
        self.instance = instance;
    }

    /// The log is shared: from now on proposals wait in
    /// [`Effects::proposals`] until the registry has appended them.
    pub fn share(&mut self) {
        self.shared = true;
    }

    pub fn is_shared(&self) -> bool {
        self.shared
    }

    /// A new session: its log starts with a `Created` record.
    pub fn create(now: Now, id: Text, epoch: u64, limits: Arc<Limits>) -> Session {
        let mut session = Session::new(id, epoch, limits);
        // The record stays pending: the first step's effects carry it.
        let mut pending = Effects::default();
        session.propose(
            now,
            session.creation_body(epoch),
            Author::Nobody,
            &mut pending,
        );
        session
    }

    fn creation_body(&self, epoch: u64) -> Body {
        Body::Created(store::Created {
            session_id: self.id.to_string(),
            epoch,
        })
    }

    /// Proposes the `Created` record that starts the log (with a shared
    /// log, the registry appends it only where the log is still empty).
    pub fn propose_creation(&mut self, now: Now, epoch: u64, fx: &mut Effects) {
        self.propose(now, self.creation_body(epoch), Author::Nobody, fx);
        self.collect(fx);
    }

    /// Handles one input; the session is settled afterwards.
    pub fn step(&mut self, now: Now, input: Input) -> Effects {
        let mut fx = Effects {
            woken: std::mem::take(&mut self.spare_woken),
            ..Effects::default()
        };
        match input {
            Input::Join(request) => self.join(now, request, &mut fx),
            Input::Watch {
                member,
                options,
                token,
            } => {
                fx.result = self
                    .watch(now, member, &options, token, &mut fx)
                    .map(|()| Done::Nothing)
            }
            Input::Message { member, message } => self.handle(now, member, message, &mut fx),
            Input::Messages { member, messages } => {
                for message in messages {
                    self.handle(now, member, message, &mut fx);
                }
            }
            Input::Reject {
                member,
                client_sequence,
                error,
            } => {
                let message = self.error_message(now, client_sequence, &error);
                self.send_message(member, &message, &mut fx);
            }
            Input::Leave { member } => self.remove_member(now, member, &mut fx),
            Input::RefreshToken { member, token } => {
                self.refresh_token(now, member, token, &mut fx)
            }
            Input::Upload { user, files, proof } => {
                if let Err(error) = self.upload(now, &user, files, proof, &mut fx) {
                    fx.result = Err(error);
                }
            }
            Input::Tick => self.tick(now, &mut fx),
            Input::Drain { deadline_ms } => self.announce_drain(now, deadline_ms, &mut fx),
            Input::End { member, error } => {
                if self.roster.member(member).is_some() {
                    self.remove_member(now, member, &mut fx);
                    self.counters.slow_consumers += 1;
                    fx.closed.push((member, error));
                }
            }
            Input::CloseAll { error } => self.close_all(now, &error, &mut fx),
            Input::Reap { gone } => self.reap(now, &gone, &mut fx),
            Input::Ephemeral { user, framed } => self.receive_ephemeral(now, user, framed, &mut fx),
        }
        self.settle(now, &mut fx);
        self.collect(&mut fx);
        fx
    }

    /// Hands what the step made to the registry.
    fn collect(&mut self, fx: &mut Effects) {
        fx.records.append(&mut self.records);
        fx.proposals.append(&mut self.proposals);
        fx.published.append(&mut self.published);
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
        self.roster.is_empty()
    }

    pub fn stats(&self) -> SessionStats {
        SessionStats {
            participants: self.roster.live_participants(),
            watchers: self.roster.live_watchers(),
            users_remembered: self.roster.user_count(),
            outbox_bytes: self
                .roster
                .members()
                .map(|(_, m)| m.outbox.buffered_bytes(&self.feed))
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
            .roster
            .users()
            .map(|(_, u)| {
                USER_MEMORY + u.bridge.len() * OP_MEMORY + u.dedupe.len() * OUTCOME_MEMORY
            })
            .sum::<usize>()
            + self.rates.len() * RATE_MEMORY;
        // The feed's events once, however many members wait for them.
        let outboxes: usize = self
            .roster
            .members()
            .map(|(_, m)| MEMBER_MEMORY + m.outbox.own_bytes())
            .sum::<usize>()
            + self.feed.kept_bytes();
        SESSION_MEMORY
            + self.id.len()
            + self.doc.memory_bytes()
            + self.comments.memory_bytes()
            + self.history.bytes()
            + self.history.len() * EVENT_MEMORY
            + self.ops.bytes()
            + self.ops.len() * OP_MEMORY
            + users
            + outboxes
    }

    /// Refuses (or allows again) content writes: edits, comments, uploads.
    pub fn set_write_refusal(&mut self, refusal: Option<ReviewError>) {
        self.write_refusal = refusal;
    }

    /// The refusal content writes get now, if any.
    fn check_writable(&self) -> Result<(), ReviewError> {
        match &self.write_refusal {
            Some(error) => Err(error.clone()),
            None => Ok(()),
        }
    }

    /// How much the process-wide memory budget lets this session grow by
    /// while it handles the next input.
    pub fn set_memory_room(&mut self, bytes: usize) {
        self.memory_room = bytes;
    }

    /// Whether the records the next input makes are kept (by a log on disk);
    /// in memory they are not made at all.
    pub fn set_keeps_records(&mut self, keep: bool) {
        self.keeps_records = keep;
    }

    /// Room left for a change decided now: the session's content budget
    /// and the process-wide memory budget. Limits are this process's to
    /// enforce when it decides; the log applies what was decided whatever
    /// the limits are where it lands (a restart with other limits, another
    /// instance), so nothing acknowledged is ever refused on replay.
    fn room(&self) -> Room {
        Room {
            encoded: self
                .limits
                .max_document_bytes
                .saturating_sub(self.doc.encoded_bytes() + self.comments.encoded_bytes()),
            memory: self.memory_room,
        }
    }

    /// Refuses a change that would need more memory than the process-wide
    /// budget has room for (an estimate, decided before the record exists).
    fn check_memory(&self, bytes: usize) -> Result<(), ReviewError> {
        if bytes > self.memory_room {
            return Err(ReviewError::exhausted(
                "the server's memory budget is used up: the session cannot grow now",
            ));
        }
        Ok(())
    }

    /// Takes up to `max_bytes` of a member's outbox (its stream writes them).
    pub fn take(&mut self, member: MemberId, max_bytes: usize) -> Taken {
        let Some(m) = self.roster.member_mut(member) else {
            return Taken::default();
        };
        m.outbox.take(&self.feed, max_bytes, self.durable_index)
    }

    /// Drops the feed's events every member has taken (or stepped over).
    /// O(members): called when a member leaves, and when the feed has
    /// doubled since the last time (at least [`FEED_TRIM_EVENTS`] events),
    /// so that members keeping up cost O(members) per that many events,
    /// not per take; a member far behind holds the feed at most twice as
    /// long as it needs.
    pub(super) fn forget_fed(&mut self) {
        let end = self.feed.end();
        let oldest = self
            .roster
            .members()
            .map(|(_, m)| m.outbox.position())
            .min()
            .unwrap_or(end);
        self.feed.forget_before(oldest);
        self.feed_trim_at = FEED_TRIM_EVENTS.max(2 * self.feed.len());
    }

    /// Whether the member has a message it may take now (past the gate).
    pub fn has_pending(&mut self, member: MemberId) -> bool {
        let feed = &self.feed;
        self.roster
            .member_mut(member)
            .is_some_and(|m| m.outbox.has_ready(feed, self.durable_index))
    }

    /// Whether everything queued for the member may be taken now.
    pub fn all_ready(&self, member: MemberId) -> bool {
        self.roster
            .member(member)
            .is_none_or(|m| m.outbox.all_ready(&self.feed, self.durable_index))
    }

    pub fn has_member(&self, member: MemberId) -> bool {
        self.roster.member(member).is_some()
    }

    /// The member with the most bytes waiting in its outbox, and how many.
    pub fn largest_outbox(&self) -> Option<(MemberId, usize)> {
        self.roster
            .members()
            .map(|(id, m)| (id, m.outbox.buffered_bytes(&self.feed)))
            .max_by_key(|(_, bytes)| *bytes)
    }

    /// Takes the counts accumulated since the last call.
    pub fn take_counters(&mut self) -> Counters {
        std::mem::take(&mut self.counters)
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
        let gate = self.next_index;
        if let Some(m) = self.roster.member_mut(member) {
            if self.catching_up == Some(member) {
                m.outbox.push_catch_up(&self.feed, framed, version, gate);
                self.counters.sent[kind as usize] += 1;
                fx.woken.push(member);
            } else if m
                .outbox
                .push(&self.feed, framed, version, gate, limit)
                .is_err()
            {
                self.overflowed.push(member);
            } else {
                self.counters.sent[kind as usize] += 1;
                fx.woken.push(member);
            }
        }
    }

    /// Queues a message that carries no document state (replies, notices).
    fn send_message(&mut self, member: MemberId, message: &SessionMessage, fx: &mut Effects) {
        let kind = MessageKind::of(message.payload.as_ref());
        self.send_to(member, encode_message(message), kind, None, fx);
    }

    /// Numbers, records and broadcasts an essential event. A participant's
    /// own stream gets the acknowledgement (if any) instead of the event, and
    /// replays give it the acknowledgement form too.
    ///
    /// Returns the event's sequence number.
    ///
    /// Cost: one encoding and one place in the feed for everybody, then
    /// O(members) to check each one's backlog against the bound and wake its
    /// stream (the fan-out itself: a few compares each, nothing written per
    /// member). Nothing here grows with the session's history or content.
    fn broadcast(
        &mut self,
        now: Now,
        origin: Origin<'_>,
        payload: &Payload,
        fx: &mut Effects,
    ) -> u64 {
        self.sequence += 1;
        let kind = MessageKind::of(Some(payload));
        let (user_id, author, own_member, ack) = match origin {
            Origin::Server { user_id } => (user_id, None, None, None),
            Origin::Participant { user, member, ack } => (&**user, Some(user.clone()), member, ack),
        };
        let framed = self.encode_event(now, user_id, Carried::Payload(payload));
        self.history.push(LoggedEvent {
            sequence: self.sequence,
            version: self.version,
            author,
            ack: ack.cloned(),
            framed: framed.clone(),
        });
        // The author's acknowledgement, encoded from the session's strings
        // (no owned Ack per event), goes in the event's place for it.
        let ack = match (own_member, ack) {
            (Some(_), Some(ack)) => Some(self.encode_event(
                now,
                user_id,
                Carried::Ack(ack_ref(ack, self.sequence, false, false)),
            )),
            _ => None,
        };
        let author_acked = ack.is_some();
        // Fed once for every member; each member's backlog is checked
        // against the bound.
        self.feed
            .push(framed, self.version, self.next_index, own_member, ack);
        if self.feed.len() >= self.feed_trim_at {
            self.forget_fed();
        }
        let limit = self.limits.outbox_bytes;
        for (id, member) in self.roster.members_mut() {
            let authored = Some(id) == own_member;
            // A joiner's catch-up is exempt from the bound, and what comes
            // with it too.
            let within = member.outbox.fed(&self.feed, limit).is_ok();
            if !within && self.catching_up != Some(id) {
                self.overflowed.push(id);
                continue;
            }
            let counted = match (authored, author_acked) {
                (false, _) => kind,
                (true, true) => MessageKind::Ack,
                (true, false) => continue,
            };
            self.counters.sent[counted as usize] += 1;
            fx.woken.push(id);
        }
        self.sequence
    }

    /// A server event, encoded and framed from borrowed parts (see
    /// [`Envelope`]): numbered with the current sequence. `payload` is the
    /// event's, or its author's acknowledgement (which carries the author's
    /// client sequence number).
    fn encode_event(&mut self, now: Now, user_id: &str, payload: Carried<'_>) -> Bytes {
        let client_sequence = match &payload {
            Carried::Ack(ack) => ack.client_sequence,
            Carried::Nothing | Carried::Payload(_) => 0,
        };
        self.frames.encode(&Envelope {
            session_id: &self.id,
            timestamp: now.unix_ms,
            user_id,
            payload,
            sequence: self.sequence,
            client_sequence,
        })
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
            Payload::Ack(ack_of(info, sequence, duplicate, noop)),
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
        let framed = self.encode_event(now, user, Carried::Payload(&payload));
        if self.shared {
            self.published.push(Published {
                user: user.clone(),
                framed: framed.clone(),
            });
        }
        self.push_ephemeral(user, kind, counted, framed, except, fx);
    }

    /// Queues an ephemeral message for every member here but `except`.
    fn push_ephemeral(
        &mut self,
        user: &Text,
        kind: EphemeralKind,
        counted: MessageKind,
        framed: Bytes,
        except: Option<MemberId>,
        fx: &mut Effects,
    ) {
        let key = EphemeralKey {
            user: user.clone(),
            kind,
        };
        let gate = self.next_index;
        for (id, member) in self.roster.members_mut() {
            if Some(id) != except {
                member
                    .outbox
                    .push_ephemeral(&self.feed, key.clone(), framed.clone(), gate);
                self.counters.sent[counted as usize] += 1;
                fx.woken.push(id);
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
            if self.roster.member(member).is_none() {
                continue;
            }
            let error = ReviewError::exhausted(format!(
                "fell behind: more than {} bytes of events pending; reconnect and resume",
                self.limits.outbox_bytes
            ));
            self.remove_member(now, member, fx);
            self.counters.slow_consumers += 1;
            fx.unwake(member);
            fx.closed.push((member, error));
        }
    }
}
