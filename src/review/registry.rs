//! The registry: one task that owns every session (no locks). Streams talk to
//! it through a bounded inbox; it feeds the sessions (sans-IO state machines),
//! hands each stream its outbox in batches when the stream asks (pull: a
//! stream only asks when it has written everything it had, so the registry
//! never waits on a slow peer), ends members the sessions end, and removes
//! empty sessions after their linger time.
//!
//! ```text
//!  stream task ──Join/Message/Reject/Leave──►┐
//!  stream task ──Pull(max bytes)────────────►│ registry ──► Session::handle
//!  stream task ◄──batch of framed messages───┤          ◄── Effects
//!  stream task ◄──Ending (closed/finished)───┘
//! ```

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::counters::{NoSessionObserver, SessionObserver};
use super::error::{ErrorKind, ReviewError};
use super::limits::Limits;
use super::ot::Text;
use super::roles::Role;
use super::session::{Effects, JoinRequest, MemberId, Now, Session, TokenWindow, UploadOutcome};
use super::validate::{ClientMessage, JoinOptions};
use crate::pb::codereview::Snapshot;

/// How a member's stream must end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ending {
    /// The session ended it (slow, replaced, token expired, drained).
    Closed(ReviewError),
    /// The participant said LEFT: end with OK.
    Finished,
}

/// A joined member: its id and the signal that ends its stream.
#[derive(Debug)]
pub struct Membership {
    pub member: MemberId,
    pub ending: oneshot::Receiver<Ending>,
}

/// Registry-wide figures (for metrics and tests).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RegistryStats {
    pub sessions: usize,
    pub participants: usize,
    pub watchers: usize,
    pub members: usize,
    pub users_remembered: usize,
    pub outbox_bytes: usize,
    pub history_bytes: usize,
    pub content_bytes: usize,
    /// The memory budget's count (every session's estimate).
    pub memory_bytes: usize,
    pub parked_pulls: usize,
}

enum Command {
    Join {
        session_id: Text,
        user_id: Text,
        role: Role,
        options: JoinOptions,
        token: Option<TokenWindow>,
        reply: oneshot::Sender<Result<Membership, ReviewError>>,
    },
    Watch {
        session_id: Text,
        options: JoinOptions,
        token: Option<TokenWindow>,
        reply: oneshot::Sender<Result<Membership, ReviewError>>,
    },
    Message {
        member: MemberId,
        message: ClientMessage,
    },
    Reject {
        member: MemberId,
        client_sequence: u64,
        error: ReviewError,
    },
    Pull {
        member: MemberId,
        max_bytes: usize,
        /// Park until something is pending (else answer at once, maybe empty).
        wait: bool,
        reply: oneshot::Sender<Vec<Bytes>>,
    },
    Leave {
        member: MemberId,
    },
    RefreshToken {
        member: MemberId,
        token: TokenWindow,
    },
    Snapshot {
        session_id: Text,
        reply: oneshot::Sender<Option<Snapshot>>,
    },
    Upload {
        session_id: Text,
        user_id: Text,
        role: Role,
        files: Vec<(Text, Vec<Text>)>,
        reply: oneshot::Sender<Result<UploadOutcome, ReviewError>>,
    },
    Drain {
        deadline_ms: i64,
    },
    CloseAll {
        error: ReviewError,
    },
    Stats {
        reply: oneshot::Sender<RegistryStats>,
    },
}

/// Whether joining may create the session.
#[derive(Debug, Clone, Copy)]
enum Creation {
    Allowed,
    /// Only an existing session may be joined; why not.
    Refused(&'static str),
}

/// The registry's address; cheap to clone.
#[derive(Clone, Debug)]
pub struct RegistryHandle {
    tx: mpsc::Sender<Command>,
    /// Pulls travel apart and are served first, so a participant that keeps
    /// up is never queued behind another's burst of messages.
    pulls: mpsc::Sender<Command>,
}

fn gone() -> ReviewError {
    ReviewError::new(ErrorKind::Unavailable, "the server is shutting down")
}

impl RegistryHandle {
    async fn send(&self, command: Command) -> Result<(), ReviewError> {
        self.tx.send(command).await.map_err(|_| gone())
    }

    async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, ReviewError> {
        let (tx, rx) = oneshot::channel();
        self.send(make(tx)).await?;
        rx.await.map_err(|_| gone())
    }

    pub async fn join(
        &self,
        session_id: Text,
        user_id: Text,
        role: Role,
        options: JoinOptions,
        token: Option<TokenWindow>,
    ) -> Result<Membership, ReviewError> {
        self.ask(|reply| Command::Join {
            session_id,
            user_id,
            role,
            options,
            token,
            reply,
        })
        .await?
    }

    pub async fn watch(
        &self,
        session_id: Text,
        options: JoinOptions,
        token: Option<TokenWindow>,
    ) -> Result<Membership, ReviewError> {
        self.ask(|reply| Command::Watch {
            session_id,
            token,
            options,
            reply,
        })
        .await?
    }

    /// Submits a validated message; returns once the registry accepted it
    /// (its inbox is bounded, so a busy registry pushes back here).
    pub async fn message(
        &self,
        member: MemberId,
        message: ClientMessage,
    ) -> Result<(), ReviewError> {
        self.send(Command::Message { member, message }).await
    }

    pub async fn reject(
        &self,
        member: MemberId,
        client_sequence: u64,
        error: ReviewError,
    ) -> Result<(), ReviewError> {
        self.send(Command::Reject {
            member,
            client_sequence,
            error,
        })
        .await
    }

    /// Asks for the member's next batch (answered when there is one).
    pub async fn pull(
        &self,
        member: MemberId,
        max_bytes: usize,
    ) -> Result<oneshot::Receiver<Vec<Bytes>>, ReviewError> {
        let (reply, rx) = oneshot::channel();
        self.pulls
            .send(Command::Pull {
                member,
                max_bytes,
                wait: true,
                reply,
            })
            .await
            .map_err(|_| gone())?;
        Ok(rx)
    }

    /// Takes what is pending for the member now (empty if nothing is).
    pub async fn take_now(&self, member: MemberId, max_bytes: usize) -> Vec<Bytes> {
        self.ask(|reply| Command::Pull {
            member,
            max_bytes,
            wait: false,
            reply,
        })
        .await
        .unwrap_or_default()
    }

    pub async fn leave(&self, member: MemberId) {
        let _ = self.send(Command::Leave { member }).await;
    }

    /// Leaves without waiting (from a destructor).
    pub fn leave_soon(&self, member: MemberId) {
        if let Err(mpsc::error::TrySendError::Full(command)) =
            self.tx.try_send(Command::Leave { member })
        {
            let tx = self.tx.clone();
            tokio::spawn(async move {
                let _ = tx.send(command).await;
            });
        }
    }

    pub async fn refresh_token(
        &self,
        member: MemberId,
        token: TokenWindow,
    ) -> Result<(), ReviewError> {
        self.send(Command::RefreshToken { member, token }).await
    }

    pub async fn snapshot(&self, session_id: Text) -> Result<Option<Snapshot>, ReviewError> {
        self.ask(|reply| Command::Snapshot { session_id, reply })
            .await
    }

    pub async fn upload(
        &self,
        session_id: Text,
        user_id: Text,
        role: Role,
        files: Vec<(Text, Vec<Text>)>,
    ) -> Result<UploadOutcome, ReviewError> {
        self.ask(|reply| Command::Upload {
            session_id,
            user_id,
            role,
            files,
            reply,
        })
        .await?
    }

    /// Tells every member the server is going away by `deadline_ms`.
    pub async fn drain(&self, deadline_ms: i64) {
        let _ = self.send(Command::Drain { deadline_ms }).await;
    }

    /// Ends every member with `error`.
    pub async fn close_all(&self, error: ReviewError) {
        let _ = self.send(Command::CloseAll { error }).await;
    }

    pub async fn stats(&self) -> Result<RegistryStats, ReviewError> {
        self.ask(|reply| Command::Stats { reply }).await
    }
}

struct MemberSlot {
    session: Text,
    ending: Option<oneshot::Sender<Ending>>,
    parked: Option<(oneshot::Sender<Vec<Bytes>>, usize)>,
}

struct SessionSlot {
    session: Session,
    empty_since: Option<Instant>,
    /// The session's memory as last counted in the budget.
    memory: usize,
}

/// The process-wide memory budget (`--max-memory`): what every session
/// holds, as each estimates it. Over it, new sessions and growth are
/// refused, and the largest outboxes are ended first.
#[derive(Debug)]
struct MemoryBudget {
    limit: usize,
    used: usize,
}

/// A new session is only created with at least this much memory left in
/// the budget (a session that cannot hold anything is of no use).
const NEW_SESSION_ROOM: usize = 64 * 1024;

/// Outboxes smaller than this are never ended to make memory: ending
/// them would not help, the content is what holds the memory.
const SHED_MIN_OUTBOX: usize = 64 * 1024;

impl MemoryBudget {
    /// How much any session may still grow by.
    fn room(&self) -> usize {
        self.limit.saturating_sub(self.used)
    }

    fn is_over(&self) -> bool {
        self.used > self.limit
    }

    /// Replaces a session's `counted` figure with `now`.
    fn recount(&mut self, counted: &mut usize, now: usize) {
        self.used = self.used - *counted + now;
        *counted = now;
    }
}

/// The task's state.
pub struct Registry {
    limits: Arc<Limits>,
    /// Shutting down: no new members (they reconnect elsewhere).
    draining: bool,
    observer: Arc<dyn SessionObserver>,
    sessions: HashMap<Text, SessionSlot>,
    members: HashMap<MemberId, MemberSlot>,
    memory: MemoryBudget,
    next_member: MemberId,
    started: Instant,
    started_unix_ms: i64,
}

/// Settings of the registry task.
#[derive(Clone)]
pub struct RegistryConfig {
    pub limits: Arc<Limits>,
    /// Receives the sessions' counters (metrics).
    pub observer: Arc<dyn SessionObserver>,
    /// Commands waiting for the registry (default 4096).
    pub inbox_capacity: usize,
    /// Period of idle and token checks (default 1 s).
    pub tick: Duration,
}

impl std::fmt::Debug for RegistryConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryConfig")
            .field("limits", &self.limits)
            .field("inbox_capacity", &self.inbox_capacity)
            .field("tick", &self.tick)
            .finish()
    }
}

impl RegistryConfig {
    pub fn new(limits: Limits) -> Self {
        RegistryConfig {
            limits: Arc::new(limits),
            observer: Arc::new(NoSessionObserver),
            inbox_capacity: 4096,
            tick: Duration::from_secs(1),
        }
    }
}

/// Starts the registry task.
pub fn spawn(config: RegistryConfig) -> RegistryHandle {
    let (tx, rx) = mpsc::channel(config.inbox_capacity);
    let (pulls, pull_rx) = mpsc::channel(config.inbox_capacity);
    let memory_limit = config.limits.max_memory_bytes;
    let registry = Registry {
        limits: config.limits,
        draining: false,
        observer: config.observer,
        sessions: HashMap::new(),
        members: HashMap::new(),
        memory: MemoryBudget {
            limit: memory_limit,
            used: 0,
        },
        next_member: 1,
        started: Instant::now(),
        started_unix_ms: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64),
    };
    tokio::spawn(registry.run(rx, pull_rx, config.tick));
    RegistryHandle { tx, pulls }
}

fn random_epoch() -> u64 {
    let mut bytes = [0u8; 8];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes);
    u64::from_le_bytes(bytes).max(1)
}

impl Registry {
    async fn run(
        mut self,
        mut rx: mpsc::Receiver<Command>,
        mut pulls: mpsc::Receiver<Command>,
        tick: Duration,
    ) {
        let mut ticker = tokio::time::interval(tick);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                Some(pull) = pulls.recv() => self.handle(pull),
                command = rx.recv() => match command {
                    Some(command) => self.handle(command),
                    None => break,
                },
                _ = ticker.tick() => self.tick(),
            }
        }
    }

    /// The time: monotonic, and Unix time derived from it (so paused test
    /// clocks move both).
    fn now(&self) -> Now {
        let at = Instant::now();
        Now {
            at: at.into_std(),
            unix_ms: self.started_unix_ms + at.duration_since(self.started).as_millis() as i64,
        }
    }

    fn handle(&mut self, command: Command) {
        let now = self.now();
        match command {
            Command::Join {
                session_id,
                user_id,
                role,
                options,
                token,
                reply,
            } => {
                let create = if role.may_create_session() {
                    Creation::Allowed
                } else {
                    Creation::Refused("an observer cannot create a session")
                };
                let result = self.admit(&session_id, create, |session, member, fx| {
                    session.join(
                        now,
                        JoinRequest {
                            member,
                            user_id,
                            role,
                            options,
                            token,
                        },
                        fx,
                    )
                });
                let _ = reply.send(result);
            }
            Command::Watch {
                session_id,
                options,
                token,
                reply,
            } => {
                let create = Creation::Refused("watching does not create a session");
                let result = self.admit(&session_id, create, |session, member, fx| {
                    session.watch(now, member, &options, token, fx)
                });
                let _ = reply.send(result);
            }
            Command::Message { member, message } => {
                self.with_member_session(member, |session, fx| {
                    session.handle(now, member, message, fx)
                });
            }
            Command::Reject {
                member,
                client_sequence,
                error,
            } => {
                self.with_member_session(member, |session, fx| {
                    session.reject(now, member, client_sequence, &error, fx)
                });
            }
            Command::Pull {
                member,
                max_bytes,
                wait,
                reply,
            } => self.pull(member, max_bytes, wait, reply),
            Command::Leave { member } => {
                self.with_member_session(member, |session, fx| session.leave(now, member, fx));
                self.members.remove(&member);
            }
            Command::RefreshToken { member, token } => {
                self.with_member_session(member, |session, fx| {
                    session.refresh_token(now, member, token, fx)
                });
            }
            Command::Snapshot { session_id, reply } => {
                let _ = reply.send(
                    self.sessions
                        .get(&session_id)
                        .map(|slot| slot.session.snapshot()),
                );
            }
            Command::Upload {
                session_id,
                user_id,
                role,
                files,
                reply,
            } => {
                let result = self.upload(now, session_id, user_id, role, files);
                let _ = reply.send(result);
            }
            Command::Drain { deadline_ms } => {
                self.draining = true;
                for slot in self.sessions.values_mut() {
                    let mut fx = Effects::default();
                    slot.session.announce_drain(now, deadline_ms, &mut fx);
                    Self::apply(
                        &mut self.members,
                        slot,
                        fx,
                        &*self.observer,
                        &mut self.memory,
                    );
                }
            }
            Command::CloseAll { error } => {
                for slot in self.sessions.values_mut() {
                    let mut fx = Effects::default();
                    slot.session.close_all(now, &error, &mut fx);
                    Self::apply(
                        &mut self.members,
                        slot,
                        fx,
                        &*self.observer,
                        &mut self.memory,
                    );
                }
            }
            Command::Stats { reply } => {
                let _ = reply.send(self.stats());
            }
        }
        if self.memory.is_over() {
            self.shed(now);
        }
        self.collect_empty(Instant::now());
    }

    fn stats(&self) -> RegistryStats {
        let mut stats = RegistryStats {
            sessions: self.sessions.len(),
            members: self.members.len(),
            parked_pulls: self.members.values().filter(|m| m.parked.is_some()).count(),
            memory_bytes: self.memory.used,
            ..RegistryStats::default()
        };
        for slot in self.sessions.values() {
            let s = slot.session.stats();
            stats.participants += s.participants;
            stats.watchers += s.watchers;
            stats.users_remembered += s.users_remembered;
            stats.outbox_bytes += s.outbox_bytes;
            stats.history_bytes += s.history_bytes;
            stats.content_bytes += s.content_bytes;
        }
        stats
    }

    /// Finds or creates a session (within the session limit).
    fn session_for(&mut self, session_id: &Text) -> Result<&mut SessionSlot, ReviewError> {
        if !self.sessions.contains_key(session_id) {
            if self.sessions.len() >= self.limits.max_sessions {
                return Err(ReviewError::exhausted(format!(
                    "the server holds {} sessions (limit)",
                    self.limits.max_sessions
                )));
            }
            if self.memory.room() < NEW_SESSION_ROOM {
                return Err(ReviewError::exhausted(
                    "the server's memory budget is used up: no new sessions now",
                ));
            }
            let session = Session::new(session_id.clone(), random_epoch(), self.limits.clone());
            let memory = session.memory_bytes();
            self.memory.used += memory;
            self.sessions.insert(
                session_id.clone(),
                SessionSlot {
                    session,
                    empty_since: None,
                    memory,
                },
            );
        }
        let slot = self.sessions.get_mut(session_id).expect("present");
        slot.session.set_memory_room(self.memory.room());
        Ok(slot)
    }

    /// Adds a member (participant or watcher) to a session, creating the
    /// session if `create` allows.
    fn admit(
        &mut self,
        session_id: &Text,
        create: Creation,
        enter: impl FnOnce(&mut Session, MemberId, &mut Effects) -> Result<(), ReviewError>,
    ) -> Result<Membership, ReviewError> {
        if self.draining {
            return Err(ReviewError::new(
                ErrorKind::Unavailable,
                "the server is shutting down: reconnect elsewhere",
            ));
        }
        if let Creation::Refused(why) = create
            && !self.sessions.contains_key(session_id)
        {
            return Err(ReviewError::new(
                ErrorKind::NotFound,
                format!("no session {session_id:?} ({why})"),
            ));
        }
        let member = self.next_member;
        self.next_member += 1;
        let created = !self.sessions.contains_key(session_id);
        let slot = self.session_for(session_id)?;
        let mut fx = Effects::default();
        if let Err(error) = enter(&mut slot.session, member, &mut fx) {
            if created && slot.session.is_empty() {
                self.remove_session(session_id);
            }
            return Err(error);
        }
        slot.empty_since = None;
        let (ending_tx, ending) = oneshot::channel();
        self.members.insert(
            member,
            MemberSlot {
                session: session_id.clone(),
                ending: Some(ending_tx),
                parked: None,
            },
        );
        let slot = self.sessions.get_mut(session_id).expect("present");
        Self::apply(
            &mut self.members,
            slot,
            fx,
            &*self.observer,
            &mut self.memory,
        );
        Ok(Membership { member, ending })
    }

    fn with_member_session(
        &mut self,
        member: MemberId,
        f: impl FnOnce(&mut Session, &mut Effects),
    ) {
        let Some(session_id) = self.members.get(&member).map(|m| m.session.clone()) else {
            return;
        };
        let Some(slot) = self.sessions.get_mut(&session_id) else {
            return;
        };
        let mut fx = Effects::default();
        slot.session.set_memory_room(self.memory.room());
        f(&mut slot.session, &mut fx);
        if slot.session.is_empty() && slot.empty_since.is_none() {
            slot.empty_since = Some(Instant::now());
        }
        Self::apply(
            &mut self.members,
            slot,
            fx,
            &*self.observer,
            &mut self.memory,
        );
    }

    fn pull(
        &mut self,
        member: MemberId,
        max_bytes: usize,
        wait: bool,
        reply: oneshot::Sender<Vec<Bytes>>,
    ) {
        let Some(slot) = self.members.get_mut(&member) else {
            return;
        };
        let Some(session) = self.sessions.get_mut(&slot.session) else {
            return;
        };
        if session.session.has_pending(member) {
            let batch = session.session.take(member, max_bytes);
            // Taking shrinks only the outbox: count it without a recount.
            let taken: usize = batch.iter().map(Bytes::len).sum();
            let counted = session.memory.saturating_sub(taken);
            self.memory.recount(&mut session.memory, counted);
            let _ = reply.send(batch);
        } else if wait {
            slot.parked = Some((reply, max_bytes));
        } else {
            let _ = reply.send(Vec::new());
        }
    }

    /// Carries out what a session reported, and brings the memory budget's
    /// count of the session up to date.
    fn apply(
        members: &mut HashMap<MemberId, MemberSlot>,
        slot: &mut SessionSlot,
        fx: Effects,
        observer: &dyn SessionObserver,
        memory: &mut MemoryBudget,
    ) {
        memory.recount(&mut slot.memory, slot.session.memory_bytes());
        let session = &mut slot.session;
        let counters = session.take_counters();
        if !counters.is_empty() {
            observer.record(&counters);
        }
        for (member, error) in fx.closed {
            if let Some(mut slot) = members.remove(&member)
                && let Some(ending) = slot.ending.take()
            {
                let _ = ending.send(Ending::Closed(error));
            }
        }
        for member in fx.finished {
            if let Some(mut slot) = members.remove(&member)
                && let Some(ending) = slot.ending.take()
            {
                let _ = ending.send(Ending::Finished);
            }
        }
        for member in fx.woken {
            if let Some(slot) = members.get_mut(&member)
                && session.has_pending(member)
                && let Some((reply, max_bytes)) = slot.parked.take()
            {
                let _ = reply.send(session.take(member, max_bytes));
            }
        }
    }

    fn upload(
        &mut self,
        now: Now,
        session_id: Text,
        user_id: Text,
        role: Role,
        files: Vec<(Text, Vec<Text>)>,
    ) -> Result<UploadOutcome, ReviewError> {
        let proof = role.may_upload()?;
        let created = !self.sessions.contains_key(&session_id);
        let slot = self.session_for(&session_id)?;
        let mut fx = Effects::default();
        let result = slot.session.upload(now, &user_id, files, proof, &mut fx);
        if slot.session.is_empty() && slot.empty_since.is_none() {
            // Seeded but nobody there yet: it lingers for them to join.
            slot.empty_since = Some(Instant::now());
        }
        if result.is_err() && created {
            self.remove_session(&session_id);
            return result;
        }
        let slot = self.sessions.get_mut(&session_id).expect("present");
        Self::apply(
            &mut self.members,
            slot,
            fx,
            &*self.observer,
            &mut self.memory,
        );
        result
    }

    fn tick(&mut self) {
        let now = self.now();
        for slot in self.sessions.values_mut() {
            let mut fx = Effects::default();
            slot.session.tick(now, &mut fx);
            if slot.session.is_empty() && slot.empty_since.is_none() {
                slot.empty_since = Some(Instant::now());
            }
            Self::apply(
                &mut self.members,
                slot,
                fx,
                &*self.observer,
                &mut self.memory,
            );
        }
        self.collect_empty(Instant::now());
    }

    fn remove_session(&mut self, session_id: &Text) {
        if let Some(slot) = self.sessions.remove(session_id) {
            self.memory.used -= slot.memory;
        }
    }

    /// Over the memory budget: ends the members with the largest outboxes
    /// (the worst offenders first) until the budget holds or no outbox is
    /// worth ending. Content is never dropped: growth is refused instead.
    fn shed(&mut self, now: Now) {
        while self.memory.is_over() {
            let largest = self
                .sessions
                .iter()
                .filter_map(|(id, slot)| slot.session.largest_outbox().map(|m| (m, id)))
                .max_by_key(|((_, bytes), _)| *bytes);
            let Some(((member, bytes), session_id)) = largest else {
                return;
            };
            if bytes < SHED_MIN_OUTBOX {
                return;
            }
            let session_id = session_id.clone();
            let slot = self.sessions.get_mut(&session_id).expect("found above");
            let mut fx = Effects::default();
            let error = ReviewError::exhausted(format!(
                "the server is short of memory and your backlog ({bytes} bytes) was the largest; \
                 reconnect and resume"
            ));
            slot.session.end_member(now, member, error, &mut fx);
            Self::apply(
                &mut self.members,
                slot,
                fx,
                &*self.observer,
                &mut self.memory,
            );
        }
    }

    /// Removes sessions that have been empty for their linger time.
    fn collect_empty(&mut self, now: Instant) {
        let linger = self.limits.session_linger;
        let memory = &mut self.memory;
        self.sessions.retain(|_, slot| {
            if !slot.session.is_empty() {
                slot.empty_since = None;
                return true;
            }
            let keep = match slot.empty_since {
                Some(since) => now.duration_since(since) < linger,
                None => {
                    slot.empty_since = Some(now);
                    !linger.is_zero()
                }
            };
            if !keep {
                memory.used -= slot.memory;
            }
            keep
        });
    }
}
