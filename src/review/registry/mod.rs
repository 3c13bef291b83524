//! The registry: one task that owns every session (no locks). Streams talk to
//! it through a bounded inbox ([`RegistryHandle`]); it routes each command to
//! its session as an [`Input`] of [`Session::step`] and carries out the
//! [`Effects`]: hands each stream its outbox in batches when the stream asks
//! (pull: a stream only asks when it has written everything it had, so the
//! registry never waits on a slow peer), ends the members the sessions end,
//! keeps the memory budget, and removes empty sessions after their linger
//! time. It holds no session logic of its own.
//!
//! ```text
//!  stream task ──Join/Message/Reject/Leave──►┐
//!  stream task ──Pull(max bytes)────────────►│ registry ──Input──► Session::step
//!  stream task ◄──batch of framed messages───┤          ◄─Effects─
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
use super::ids::{MemberId, Text};
use super::limits::Limits;
use super::session::{Done, Effects, Input, JoinRequest, Now, Session, UploadOutcome};

mod budget;
mod handle;

use budget::{MemoryBudget, NEW_SESSION_ROOM, SHED_MIN_OUTBOX};
use handle::Command;
pub use handle::{Ending, Membership, RegistryHandle, RegistryStats};

/// Settings of the registry task.
#[derive(Clone)]
pub struct RegistryConfig {
    pub limits: Arc<Limits>,
    /// Receives the sessions' counters (metrics).
    pub observer: Arc<dyn SessionObserver>,
    /// Commands waiting for the registry (default 4096).
    pub inbox_capacity: usize,
    /// Period of idle and token checks and of removing empty sessions
    /// (default 1 s).
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
    let registry = Registry {
        memory: MemoryBudget::new(config.limits.max_memory_bytes),
        limits: config.limits,
        draining: false,
        observer: config.observer,
        sessions: HashMap::new(),
        members: HashMap::new(),
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

/// Whether adding a member may create its session.
#[derive(Debug, Clone, Copy)]
enum Creation {
    Allowed,
    /// Only an existing session may be joined; why not.
    Refused(&'static str),
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

/// The task's state.
struct Registry {
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
                let result = self.add_member(now, &session_id, create, |member| {
                    Input::Join(JoinRequest {
                        member,
                        user_id,
                        role,
                        options,
                        token,
                    })
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
                let result = self.add_member(now, &session_id, create, |member| Input::Watch {
                    member,
                    options,
                    token,
                });
                let _ = reply.send(result);
            }
            Command::Message { member, message } => {
                self.step_member(now, member, Input::Message { member, message });
            }
            Command::Reject {
                member,
                client_sequence,
                error,
            } => {
                let input = Input::Reject {
                    member,
                    client_sequence,
                    error,
                };
                self.step_member(now, member, input);
            }
            Command::Pull {
                member,
                max_bytes,
                wait,
                reply,
            } => self.pull(member, max_bytes, wait, reply),
            Command::Leave { member } => {
                self.step_member(now, member, Input::Leave { member });
                self.members.remove(&member);
            }
            Command::RefreshToken { member, token } => {
                self.step_member(now, member, Input::RefreshToken { member, token });
            }
            Command::Snapshot { session_id, reply } => {
                let snapshot = self.sessions.get(&session_id).map(|s| s.session.snapshot());
                let _ = reply.send(snapshot);
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
                self.step_all(now, |_| Input::Drain { deadline_ms });
            }
            Command::CloseAll { error } => {
                self.step_all(now, |_| Input::CloseAll {
                    error: error.clone(),
                });
            }
            Command::Stats { reply } => {
                let _ = reply.send(self.stats());
            }
        }
        if self.memory.is_over() {
            self.shed(now);
        }
    }

    /// Feeds one input to a session and carries out its effects; returns
    /// the input's result (None: no such session).
    fn step(
        &mut self,
        now: Now,
        session_id: &Text,
        input: Input,
    ) -> Option<Result<Done, ReviewError>> {
        let slot = self.sessions.get_mut(session_id)?;
        slot.session.set_memory_room(self.memory.room());
        let fx = slot.session.step(now, input);
        // In memory: records are durable as soon as they are made.
        slot.session.mark_durable(slot.session.next_index());
        let result = fx.result.clone();
        Self::carry_out(
            &mut self.members,
            slot,
            fx,
            &*self.observer,
            &mut self.memory,
        );
        if slot.session.is_empty() {
            if self.limits.session_linger.is_zero() {
                self.remove_session(session_id);
            } else if slot.empty_since.is_none() {
                slot.empty_since = Some(Instant::now());
            }
        } else {
            slot.empty_since = None;
        }
        Some(result)
    }

    /// Feeds an input to the session of `member`, if it is still there.
    fn step_member(&mut self, now: Now, member: MemberId, input: Input) {
        if let Some(session_id) = self.members.get(&member).map(|m| m.session.clone()) {
            self.step(now, &session_id, input);
        }
    }

    /// Feeds an input to every session.
    fn step_all(&mut self, now: Now, input: impl Fn(&Text) -> Input) {
        let ids: Vec<Text> = self.sessions.keys().cloned().collect();
        for id in ids {
            self.step(now, &id, input(&id));
        }
    }

    /// Carries out what a session reported, and brings the memory budget's
    /// count of the session up to date.
    fn carry_out(
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

    fn stats(&self) -> RegistryStats {
        let mut stats = RegistryStats {
            sessions: self.sessions.len(),
            members: self.members.len(),
            parked_pulls: self.members.values().filter(|m| m.parked.is_some()).count(),
            memory_bytes: self.memory.used(),
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

    /// Creates a session (within the session limit and the memory budget).
    fn create_session(&mut self, session_id: &Text) -> Result<(), ReviewError> {
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
        let mut slot = SessionSlot {
            session,
            empty_since: None,
            memory: 0,
        };
        self.memory
            .recount(&mut slot.memory, slot.session.memory_bytes());
        self.sessions.insert(session_id.clone(), slot);
        Ok(())
    }

    fn remove_session(&mut self, session_id: &Text) {
        if let Some(slot) = self.sessions.remove(session_id) {
            self.memory.release(slot.memory);
        }
    }

    /// Feeds an input to a session, creating it first when `create` allows;
    /// a session created for an input that failed is removed again.
    fn step_creating(
        &mut self,
        now: Now,
        session_id: &Text,
        create: Creation,
        input: Input,
    ) -> Result<Done, ReviewError> {
        let created = !self.sessions.contains_key(session_id);
        if created {
            if let Creation::Refused(why) = create {
                return Err(ReviewError::new(
                    ErrorKind::NotFound,
                    format!("no session {session_id:?} ({why})"),
                ));
            }
            self.create_session(session_id)?;
        }
        let result = self
            .step(now, session_id, input)
            .unwrap_or(Ok(Done::Nothing));
        if result.is_err()
            && created
            && self
                .sessions
                .get(session_id)
                .is_some_and(|s| s.session.is_empty() && s.session.sequence() == 0)
        {
            self.remove_session(session_id);
        }
        result
    }

    /// Adds a member (participant or watcher) to a session.
    fn add_member(
        &mut self,
        now: Now,
        session_id: &Text,
        create: Creation,
        input: impl FnOnce(MemberId) -> Input,
    ) -> Result<Membership, ReviewError> {
        if self.draining {
            return Err(ReviewError::new(
                ErrorKind::Unavailable,
                "the server is shutting down: reconnect elsewhere",
            ));
        }
        let member = self.next_member;
        self.next_member += 1;
        // The member's slot exists before the step, so effects aimed at it
        // (its catch-up) find it.
        let (ending_tx, ending) = oneshot::channel();
        self.members.insert(
            member,
            MemberSlot {
                session: session_id.clone(),
                ending: Some(ending_tx),
                parked: None,
            },
        );
        match self.step_creating(now, session_id, create, input(member)) {
            Ok(_) => Ok(Membership { member, ending }),
            Err(error) => {
                self.members.remove(&member);
                Err(error)
            }
        }
    }

    fn upload(
        &mut self,
        now: Now,
        session_id: Text,
        user_id: Text,
        role: super::roles::Role,
        files: Vec<(Text, Vec<Text>)>,
    ) -> Result<UploadOutcome, ReviewError> {
        let proof = role.may_upload()?;
        let input = Input::Upload {
            user: user_id,
            files,
            proof,
        };
        match self.step_creating(now, &session_id, Creation::Allowed, input)? {
            Done::Uploaded(outcome) => Ok(outcome),
            Done::Nothing => Err(ReviewError::new(
                ErrorKind::Unavailable,
                "the session went away during the upload",
            )),
        }
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
            let error = ReviewError::exhausted(format!(
                "the server is short of memory and your backlog ({bytes} bytes) was the largest; \
                 reconnect and resume"
            ));
            self.step(now, &session_id, Input::End { member, error });
        }
    }

    /// Periodic work for every session, then removal of the sessions empty
    /// for their linger time.
    fn tick(&mut self) {
        let now = self.now();
        self.step_all(now, |_| Input::Tick);
        let linger = self.limits.session_linger;
        let expired: Vec<Text> = self
            .sessions
            .iter()
            .filter(|(_, slot)| {
                slot.session.is_empty()
                    && slot
                        .empty_since
                        .is_some_and(|since| since.elapsed() >= linger)
            })
            .map(|(id, _)| id.clone())
            .collect();
        for id in expired {
            self.remove_session(&id);
        }
        if self.memory.is_over() {
            self.shed(now);
        }
    }
}
