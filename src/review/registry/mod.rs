//! The registry: one task that owns every session (no locks). Streams talk to
//! it through a bounded inbox ([`RegistryHandle`]); it routes each command to
//! its session as an [`Input`] of [`Session::step`] and carries out the
//! [`Effects`]: hands each stream its outbox in batches when the stream asks
//! (pull: a stream only asks when it has written everything it had, so the
//! registry never waits on a slow peer), ends the members the sessions end,
//! keeps the memory budget, and removes empty sessions after their linger
//! time. It holds no session logic of its own.
//!
//! Durable mode (a data dir): at start it rebuilds every session from the
//! store (snapshot, then the records after it). Each step's records go to
//! the store's writer thread; while one batch is being made durable, the
//! records of the next turns accumulate, so one fsync covers all of them
//! (group commit). What a step queued for members is released when its
//! records are durable (the output gate). Sessions are snapshotted every
//! few thousand records and when an old log segment waits for them, and
//! deleted after `--session-retention` without participants.
//!
//! ```text
//!  stream task ──Join/Message(s)/Reject/Leave──►┐
//!  stream task ──Pull(max bytes)───────────────►│ registry ──Input──► Session::step
//!  stream task ◄──batch of framed messages──────┤          ◄─Effects─
//!  stream task ◄──Ending (closed/finished)──────┘
//! ```

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::counters::{Counters, NoSessionObserver, SessionObserver};
use super::error::{ErrorKind, ReviewError};
use super::ids::{MemberId, MemberMap, Text};
use super::limits::Limits;
use super::outbox::Taken;
use super::session::{Done, Effects, Input, JoinRequest, Now, Session, snapshot_weight};
use crate::pb::store::Record;
use crate::shared_log::{self, Event as SharedEvent, SharedLogConfig};
use crate::store::{self, Event as StoreEvent, Job, SessionFrames, StoreConfig, StoreHandle};

mod budget;
mod handle;
mod replicas;

use budget::{MemoryBudget, NEW_SESSION_ROOM, SHED_MIN_OUTBOX};
use handle::{Command, PullMode};
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
    /// Keep sessions durable in this store (None: in memory only).
    pub store: Option<StoreConfig>,
    /// In durable mode, how long a session without participants is kept
    /// before it is deleted, from memory and disk (default 24 h).
    pub session_retention: Duration,
    /// False while the store fails (readiness).
    pub storage_ok: Arc<AtomicBool>,
    /// Share sessions with other instances through Redis (replaces `store`).
    pub shared: Option<SharedLogConfig>,
}

impl std::fmt::Debug for RegistryConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryConfig")
            .field("limits", &self.limits)
            .field("inbox_capacity", &self.inbox_capacity)
            .field("tick", &self.tick)
            .field("store", &self.store)
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
            store: None,
            session_retention: Duration::from_secs(24 * 3600),
            storage_ok: Arc::new(AtomicBool::new(true)),
            shared: None,
        }
    }
}

/// What recovery found (for the log, and the app's readiness).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    pub sessions: usize,
    pub failed_sessions: usize,
    pub records: usize,
    pub torn_bytes: u64,
    pub unused_bytes: u64,
    pub elapsed: Duration,
}

/// Resolves once the registry serves (recovery done), or with why it
/// cannot start.
pub type Startup = oneshot::Receiver<Result<RecoveryReport, String>>;

/// A session is snapshotted after at least this many records (the log
/// behind the snapshot can then be deleted), and never before as many
/// records as its last snapshot held entries (see [`snapshot_weight`]).
const SNAPSHOT_EVERY: u64 = 4096;

/// Shared mode: a session is also snapshotted once this many bytes of
/// records landed since its last snapshot, however few records they were.
/// A load reads the snapshot and the log after it in one reply, so this
/// keeps that reply (and the session's stream in Redis) near the session's
/// own size, far below the reply bound (1 GiB), even when big records
/// replace each other (a file uploaded again and again, a long line
/// rewritten). Durable mode needs no such bound: its log segments are
/// rotated by size, and a session pinning an old segment is snapshotted.
const SNAPSHOT_BYTES: u64 = 64 << 20;

/// How many records make a session's next snapshot due after one of
/// `last_weight` entries (none: the session has no snapshot yet). The next
/// one waits for at least as many new records as the last held entries: a
/// snapshot costs in proportion to its entries (it is built, encoded and
/// written whole), so the snapshot work then stays within a constant of the
/// log work, however long a review grows, instead of growing with the
/// session's size on every [`SNAPSHOT_EVERY`] records. Recovery replays at
/// most that many records after a snapshot, in proportion to the session's
/// size again.
fn records_before_the_next_snapshot(last_weight: Option<u64>) -> u64 {
    last_weight.map_or(SNAPSHOT_EVERY, |weight| SNAPSHOT_EVERY.max(weight))
}

/// The most commands one turn of the registry handles after the one that
/// woke it (then store events and ticks get their turn).
const TURN_COMMANDS: usize = 256;

/// After a failed append, how long before the batch is sent again.
const STORE_RETRY: Duration = Duration::from_secs(1);

/// Starts the registry task; the [`Startup`] resolves once it serves
/// (after recovering the store, in durable mode).
pub fn spawn(config: RegistryConfig) -> (RegistryHandle, Startup) {
    let (tx, rx) = mpsc::channel(config.inbox_capacity);
    let (pulls, pull_rx) = mpsc::channel(config.inbox_capacity);
    let (started, startup) = oneshot::channel();
    let registry = Registry {
        memory: MemoryBudget::new(config.limits.max_memory_bytes),
        limits: config.limits,
        draining: false,
        observer: config.observer,
        sessions: HashMap::new(),
        failed: HashMap::new(),
        members: MemberMap::default(),
        next_member: 1,
        started: Instant::now(),
        started_unix_ms: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64),
        durability: config.store.as_ref().map(|store| Durability {
            max_disk_bytes: store.max_disk_bytes,
            ..Durability::default()
        }),
        store: None,
        retention: config.session_retention,
        storage_ok: config.storage_ok,
        shared: None,
        woken: Vec::new(),
        counted: Counters::default(),
    };
    let stores = Stores {
        local: config.store,
        shared: config.shared,
    };
    tokio::spawn(registry.start(stores, rx, pull_rx, config.tick, started));
    (RegistryHandle { tx, pulls }, startup)
}

/// The store's next event (never, in memory mode).
async fn recv_store(
    events: &mut Option<tokio::sync::mpsc::UnboundedReceiver<StoreEvent>>,
) -> Option<StoreEvent> {
    match events {
        Some(events) => events.recv().await,
        None => std::future::pending().await,
    }
}

/// Redis's next event (never, without Redis).
async fn recv_shared(
    events: &mut Option<mpsc::UnboundedReceiver<SharedEvent>>,
) -> Option<SharedEvent> {
    match events {
        Some(events) => events.recv().await,
        None => std::future::pending().await,
    }
}

/// Where sessions are kept (neither: in memory).
struct Stores {
    local: Option<StoreConfig>,
    shared: Option<SharedLogConfig>,
}

/// A new session's epoch: random, non-zero, and below 2^53 so that every
/// client language (JavaScript numbers, JSON readers) holds it exactly.
fn random_epoch() -> u64 {
    let mut bytes = [0u8; 8];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes);
    (u64::from_le_bytes(bytes) & ((1 << 53) - 1)).max(1)
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
    parked: Option<Parked>,
    /// Shared mode: the member's JOINED has not landed yet; what it sends
    /// meanwhile waits here.
    held: Option<Vec<Command>>,
}

/// A stream waiting for its outbox.
struct Parked {
    reply: oneshot::Sender<Taken>,
    max_bytes: usize,
    mode: PullMode,
}

struct SessionSlot {
    session: Session,
    empty_since: Option<Instant>,
    /// The session's memory as last counted in the budget.
    memory: usize,
    /// Records made since the last snapshot (durable and shared modes).
    since_snapshot: u64,
    /// Shared mode: the encoded bytes of those records.
    bytes_since_snapshot: u64,
    /// How many records make the next snapshot due: [`SNAPSHOT_EVERY`], or
    /// the last snapshot's [`snapshot_weight`] when that is larger.
    snapshot_after: u64,
    /// Unix ms of its last record (kept in snapshots).
    last_active: i64,
    /// Shared mode: its traffic with the shared log.
    replica: replicas::Replica,
}

impl SessionSlot {
    /// Enough records (or, shared, bytes) since the last snapshot for the
    /// next one.
    fn snapshot_is_due(&self) -> bool {
        self.since_snapshot >= self.snapshot_after || self.bytes_since_snapshot >= SNAPSHOT_BYTES
    }

    /// A snapshot of `weight` entries was taken: the count starts again,
    /// and the next one waits for as many records as this one holds entries.
    fn snapshotted(&mut self, weight: u64) {
        self.since_snapshot = 0;
        self.bytes_since_snapshot = 0;
        self.snapshot_after = records_before_the_next_snapshot(Some(weight));
    }

    /// Notes since when the session has had no members; whether it has none.
    fn note_emptiness(&mut self) -> bool {
        let empty = self.session.is_empty();
        self.empty_since = match empty {
            true => self.empty_since.or(Some(Instant::now())),
            false => None,
        };
        empty
    }
}

/// The durable mode's bookkeeping.
#[derive(Debug, Default)]
struct Durability {
    /// Records made and not yet sent to the store, per session, in order:
    /// framed as they are queued (the records themselves are freed then).
    unwritten: Vec<SessionFrames>,
    /// Where each session's entry in `unwritten` is (a step finds its own
    /// without a scan: the cost per message does not grow with the server).
    unwritten_at: HashMap<Text, usize>,
    /// A batch is being made durable.
    in_flight: bool,
    /// The store failed: nothing is sent again before this.
    retry_at: Option<Instant>,
    failing: Option<String>,
    /// Sessions to snapshot as soon as all their records are durable (old
    /// log segments wait for them, or they made enough records): the only
    /// ones a durable batch's end looks at.
    snapshot_wanted: BTreeSet<Text>,
    disk_bytes: u64,
    max_disk_bytes: u64,
}

impl Durability {
    /// Why content writes are refused now, if they are.
    fn refusal(&self) -> Option<ReviewError> {
        if let Some(failing) = &self.failing {
            return Some(ReviewError::new(
                ErrorKind::Unavailable,
                format!("storage is failing, nothing can be written now: {failing}"),
            ));
        }
        if self.max_disk_bytes > 0 && self.disk_bytes >= self.max_disk_bytes {
            return Some(ReviewError::exhausted(format!(
                "the server's disk budget ({} bytes, --max-disk) is used up",
                self.max_disk_bytes
            )));
        }
        None
    }

    /// Adds records after what waits already (one entry per session).
    fn queue(&mut self, session_id: &Text, records: Vec<Record>) {
        let at = match self.unwritten_at.get(session_id) {
            Some(&at) => at,
            None => {
                let at = self.unwritten.len();
                self.unwritten_at.insert(session_id.clone(), at);
                self.unwritten.push(SessionFrames::new(session_id.clone()));
                at
            }
        };
        self.unwritten[at].push(&records);
    }

    /// Adds frames made earlier after what waits already.
    fn requeue(&mut self, frames: SessionFrames) {
        match self.unwritten_at.get(&frames.session) {
            Some(&at) => self.unwritten[at].append(frames),
            None => {
                self.unwritten_at
                    .insert(frames.session.clone(), self.unwritten.len());
                self.unwritten.push(frames);
            }
        }
    }

    /// Takes what waits to be written (one entry per session, in order).
    fn take_unwritten(&mut self) -> Vec<SessionFrames> {
        self.unwritten_at.clear();
        std::mem::take(&mut self.unwritten)
    }

    fn is_unwritten(&self, session_id: &Text) -> bool {
        self.unwritten_at.contains_key(session_id)
    }

    /// Forgets what a removed session had not written.
    fn drop_unwritten(&mut self, session_id: &Text) {
        if self.unwritten_at.remove(session_id).is_some() {
            let rest = self.take_unwritten();
            for frames in rest {
                if &frames.session != session_id {
                    self.requeue(frames);
                }
            }
        }
    }
}

/// The task's state.
struct Registry {
    limits: Arc<Limits>,
    /// Shutting down: no new members (they reconnect elsewhere).
    draining: bool,
    observer: Arc<dyn SessionObserver>,
    /// Boxed: a slot is about 1 KiB, and a table of them inline would hold
    /// that much again for every free bucket.
    sessions: HashMap<Text, Box<SessionSlot>>,
    /// Sessions whose stored log is damaged: they answer DATA_LOSS.
    failed: HashMap<Text, String>,
    members: MemberMap<MemberSlot>,
    memory: MemoryBudget,
    next_member: MemberId,
    started: Instant,
    started_unix_ms: i64,
    /// Durable mode (None: in memory).
    durability: Option<Durability>,
    store: Option<StoreHandle>,
    /// In durable mode, how long an empty session is kept.
    retention: Duration,
    storage_ok: Arc<AtomicBool>,
    /// Shared mode (sessions are replicas of logs in Redis).
    shared: Option<replicas::Shared>,
    /// Members whose parked pull may be answered at the end of this turn.
    woken: Vec<MemberId>,
    /// The sessions' counts this turn, reported to the observer at its end
    /// (once per turn: the metrics' atomic adds are not paid per message).
    counted: Counters,
}

impl Registry {
    /// Recovers the store (durable mode), says so, then serves.
    async fn start(
        mut self,
        stores: Stores,
        rx: mpsc::Receiver<Command>,
        pulls: mpsc::Receiver<Command>,
        tick: Duration,
        started: oneshot::Sender<Result<RecoveryReport, String>>,
    ) {
        let mut events = None;
        let mut shared_events = None;
        let mut report = RecoveryReport::default();
        if let Some(config) = stores.shared {
            let instance = config.instance.clone();
            match shared_log::open(config).await {
                Ok(log) => {
                    crate::log!(
                        Info,
                        "sessions are shared through Redis",
                        instance = &*instance
                    );
                    let mut shared = replicas::Shared::new(log.jobs, instance);
                    shared.healthy = log.healthy;
                    self.storage_ok.store(log.healthy, Ordering::Relaxed);
                    self.shared = Some(shared);
                    shared_events = Some(log.events);
                }
                Err(error) => {
                    let _ = started.send(Err(error));
                    return;
                }
            }
        }
        if let Some(config) = stores.local {
            let begun = std::time::Instant::now();
            let opened = tokio::task::spawn_blocking(move || store::open(config)).await;
            let (handle, recovered) = match opened {
                Ok(Ok(opened)) => opened,
                Ok(Err(error)) => {
                    let _ = started.send(Err(error.0));
                    return;
                }
                Err(error) => {
                    let _ = started.send(Err(error.to_string()));
                    return;
                }
            };
            report.torn_bytes = recovered.torn_bytes;
            report.unused_bytes = recovered.unused_bytes;
            report.records = recovered.frames;
            let (handle, store_events) = handle.split();
            if let Some(d) = self.durability.as_mut() {
                d.disk_bytes = handle.disk_bytes;
            }
            self.store = Some(handle);
            self.load(recovered, &mut report);
            report.elapsed = begun.elapsed();
            events = Some(store_events);
            self.flush_to_store();
        }
        let _ = started.send(Ok(report));
        self.run(rx, pulls, tick, events, shared_events).await;
    }

    /// Rebuilds the sessions the store holds; damaged ones are failed.
    fn load(&mut self, recovered: store::Recovered, report: &mut RecoveryReport) {
        let now = self.now();
        for found in recovered.sessions {
            let id = Text::from(found.session_id.as_str());
            if let Some(damage) = found.damage {
                self.fail_session(&id, damage);
                continue;
            }
            let rebuilt = match &found.snapshot {
                Some(snapshot) => Session::from_snapshot(snapshot, self.limits.clone()),
                None => Ok(Session::new(id.clone(), 0, self.limits.clone())),
            };
            let rebuilt = rebuilt.and_then(|mut session| {
                for record in &found.records {
                    session.replay(record)?;
                }
                Ok(session)
            });
            let mut session = match rebuilt {
                Ok(session) if session.next_index() > 0 => session,
                Ok(_) => continue, // nothing of it survived
                Err(error) => {
                    self.fail_session(&id, error.0);
                    continue;
                }
            };
            let last_active = found
                .records
                .last()
                .map(|r| r.timestamp)
                .or(found.snapshot.as_ref().map(|s| s.last_active))
                .unwrap_or(now.unix_ms);
            let fx = session.finish_recovery(now);
            let mut slot = SessionSlot {
                session,
                empty_since: Some(Instant::now()),
                memory: 0,
                since_snapshot: found.records.len() as u64,
                bytes_since_snapshot: 0,
                snapshot_after: records_before_the_next_snapshot(
                    found.snapshot.as_ref().map(snapshot_weight),
                ),
                last_active,
                replica: replicas::Replica::default(),
            };
            self.memory
                .recount(&mut slot.memory, slot.session.memory_bytes());
            if let Some(durability) = self.durability.as_mut()
                && slot.snapshot_is_due()
            {
                durability.snapshot_wanted.insert(id.clone());
            }
            self.sessions.insert(id.clone(), Box::new(slot));
            self.queue_records(&id, fx.records);
            report.sessions += 1;
        }
        report.failed_sessions = self.failed.len();
    }

    fn fail_session(&mut self, id: &Text, why: String) {
        crate::log!(
            Error,
            "session damaged in storage: it is not served",
            session_id = &**id,
            error = why.as_str()
        );
        self.failed.insert(id.clone(), why);
    }

    async fn run(
        mut self,
        mut rx: mpsc::Receiver<Command>,
        mut pulls: mpsc::Receiver<Command>,
        tick: Duration,
        mut store_events: Option<tokio::sync::mpsc::UnboundedReceiver<StoreEvent>>,
        mut shared_events: Option<mpsc::UnboundedReceiver<SharedEvent>>,
    ) {
        let mut ticker = tokio::time::interval(tick);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                Some(event) = recv_store(&mut store_events) => self.on_store_event(event),
                Some(event) = recv_shared(&mut shared_events) => self.on_shared_event(event),
                Some(pull) = pulls.recv() => self.handle(pull),
                command = rx.recv() => match command {
                    Some(command) => self.handle(command),
                    None => break,
                },
                _ = ticker.tick() => self.tick(),
            }
            // What else waits is handled in the same turn (pulls first), up
            // to a bound so that store events and ticks are not starved.
            for _ in 0..TURN_COMMANDS {
                let next = pulls.try_recv().or_else(|_| rx.try_recv());
                let Ok(command) = next else { break };
                self.handle(command);
            }
            self.answer_woken();
            self.report_counts();
            self.flush_to_store();
            self.flush_shared();
        }
    }

    /// Answers the parked pulls of the members the turn queued messages
    /// for, once each at the end of the turn: a member gets everything the
    /// turn's commands made for it in one batch (one wake of its stream and
    /// one write, rather than one per message).
    fn answer_woken(&mut self) {
        let mut woken = std::mem::take(&mut self.woken);
        // A member woken by several commands of the turn is answered once.
        woken.sort_unstable();
        woken.dedup();
        for member in woken.drain(..) {
            let Some(m) = self.members.get_mut(&member) else {
                continue;
            };
            if m.parked.is_none() {
                continue;
            }
            if let Some(slot) = self.sessions.get_mut(&m.session) {
                Self::answer_parked(m, &mut slot.session, member);
            }
        }
        self.woken = woken;
    }

    /// Hands the turn's counts to the observer (the metrics).
    fn report_counts(&mut self) {
        if !self.counted.is_empty() {
            self.observer.record(&self.counted);
            self.counted = Counters::default();
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
        // Shared mode: a command may wait for its session or its member.
        if let Some(command) = self.shared_intercepts(command) {
            self.dispatch(command);
        }
    }

    fn dispatch(&mut self, command: Command) {
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
            Command::Messages { member, messages } => {
                // One step for the batch: one session lookup, one settling
                // and one accounting of its effects (the memory room is the
                // one before the batch: it may go past it by at most the
                // batch's content, see service::BATCH_CONTENT_BYTES).
                self.step_member(now, member, Input::Messages { member, messages });
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
                mode,
                reply,
            } => self.pull(member, max_bytes, mode, reply),
            Command::Leave { member } => {
                self.step_member(now, member, Input::Leave { member });
                self.members.remove(&member);
            }
            Command::RefreshToken { member, token } => {
                self.step_member(now, member, Input::RefreshToken { member, token });
            }
            Command::Snapshot { session_id, reply } => {
                let snapshot = match self.failed.get(&session_id) {
                    Some(why) => Err(ReviewError::new(
                        ErrorKind::DataLoss,
                        format!("session {session_id:?} is damaged in storage: {why}"),
                    )),
                    None => Ok(self.sessions.get(&session_id).map(|s| s.session.snapshot())),
                };
                let _ = reply.send(snapshot);
            }
            Command::Upload {
                session_id,
                user_id,
                role,
                files,
                reply,
            } => {
                match self.upload(now, &session_id, user_id, role, files) {
                    Ok(Done::Uploaded(outcome)) => {
                        let _ = reply.send(Ok(outcome));
                    }
                    // Shared mode: answered when its record lands.
                    Ok(Done::Nothing) if self.shared.is_some() => {
                        self.await_upload(&session_id, reply)
                    }
                    Ok(Done::Nothing) => {
                        let _ = reply.send(Err(ReviewError::new(
                            ErrorKind::Unavailable,
                            "the session went away during the upload",
                        )));
                    }
                    Err(error) => {
                        let _ = reply.send(Err(error));
                    }
                }
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
        let refusal = self.durability.as_ref().and_then(Durability::refusal);
        let slot = self.sessions.get_mut(session_id)?;
        slot.session.set_memory_room(self.memory.room());
        slot.session.set_keeps_records(self.durability.is_some());
        slot.session.set_write_refusal(refusal);
        let mut fx = slot.session.step(now, input);
        let result = fx.result.clone();
        let records = std::mem::take(&mut fx.records);
        let proposals = std::mem::take(&mut fx.proposals);
        let published = std::mem::take(&mut fx.published);
        Self::share_effects(&mut self.shared, session_id, slot, proposals, published);
        match (&mut self.durability, records.last()) {
            // In memory: records are durable as soon as they are made.
            (None, _) => slot.session.mark_all_durable(),
            (Some(durability), Some(last)) => {
                slot.since_snapshot += records.len() as u64;
                slot.last_active = last.timestamp;
                if slot.snapshot_is_due() && !durability.snapshot_wanted.contains(session_id) {
                    durability.snapshot_wanted.insert(session_id.clone());
                }
            }
            (Some(_), None) => {}
        }
        Self::carry_out(
            &mut self.members,
            slot,
            fx,
            &mut self.counted,
            &mut self.memory,
            &mut self.woken,
        );
        let empty = slot.note_emptiness();
        let idle = slot.replica.is_idle();
        self.queue_records(session_id, records);
        if empty && idle && self.empty_ttl().is_zero() {
            self.remove_session(session_id);
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
        members: &mut MemberMap<MemberSlot>,
        slot: &mut SessionSlot,
        fx: Effects,
        counted: &mut Counters,
        memory: &mut MemoryBudget,
        woken: &mut Vec<MemberId>,
    ) {
        memory.recount(&mut slot.memory, slot.session.memory_bytes());
        let session = &mut slot.session;
        counted.add(&session.take_counters());
        let Effects {
            woken: fx_woken,
            closed,
            finished,
            ..
        } = fx;
        for (member, error) in closed {
            if let Some(mut slot) = members.remove(&member)
                && let Some(ending) = slot.ending.take()
            {
                let _ = ending.send(Ending::Closed(error));
            }
        }
        for member in finished {
            if let Some(mut slot) = members.remove(&member)
                && let Some(ending) = slot.ending.take()
            {
                let _ = ending.send(Ending::Finished);
            }
        }
        // Answered at the end of the turn (see `answer_woken`).
        woken.extend_from_slice(&fx_woken);
        session.recycle_woken(fx_woken);
    }

    fn stats(&self) -> RegistryStats {
        let mut stats = RegistryStats {
            sessions: self.sessions.len(),
            members: self.members.len(),
            parked_pulls: self.members.values().filter(|m| m.parked.is_some()).count(),
            memory_bytes: self.memory.used(),
            failed_sessions: self.failed.len(),
            disk_bytes: self.durability.as_ref().map_or(0, |d| d.disk_bytes),
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
        let now = self.now();
        if let Some((session, proposals)) = self.new_replica(now, session_id) {
            self.adopt(now, session_id, session, proposals);
            return Ok(());
        }
        let session = Session::create(now, session_id.clone(), random_epoch(), self.limits.clone());
        let mut slot = SessionSlot {
            session,
            empty_since: None,
            memory: 0,
            since_snapshot: 0,
            bytes_since_snapshot: 0,
            snapshot_after: SNAPSHOT_EVERY,
            last_active: now.unix_ms,
            replica: replicas::Replica::default(),
        };
        self.memory
            .recount(&mut slot.memory, slot.session.memory_bytes());
        self.sessions.insert(session_id.clone(), Box::new(slot));
        Ok(())
    }

    /// Removes a session from memory and, in durable mode, from the store.
    fn remove_session(&mut self, session_id: &Text) {
        let Some(slot) = self.sessions.remove(session_id) else {
            return;
        };
        self.memory.release(slot.memory);
        if let Some(shared) = self.shared.as_mut() {
            // It stays in Redis (until its retention); here it is dropped.
            shared.follow_changed = true;
        }
        if let (Some(durability), Some(store)) = (self.durability.as_mut(), self.store.as_ref()) {
            durability.drop_unwritten(session_id);
            durability.snapshot_wanted.remove(session_id);
            store.send(Job::Delete {
                session: session_id.clone(),
                epoch: slot.session.epoch(),
            });
        }
    }

    /// How long a session without members is kept: its linger time in
    /// memory, its retention when durable.
    fn empty_ttl(&self) -> Duration {
        if self.durability.is_some() {
            self.retention
        } else {
            self.limits.session_linger
        }
    }

    /// Keeps a step's records for the next batch to the store.
    fn queue_records(&mut self, session_id: &Text, records: Vec<Record>) {
        if let Some(durability) = self.durability.as_mut()
            && !records.is_empty()
        {
            durability.queue(session_id, records);
        }
    }

    /// Sends what accumulated to the store, unless a batch is in flight
    /// (then it all goes together when that one is durable: group commit).
    fn flush_to_store(&mut self) {
        let (Some(durability), Some(store)) = (self.durability.as_mut(), self.store.as_ref())
        else {
            return;
        };
        if durability.in_flight
            || durability.unwritten.is_empty()
            || durability.retry_at.is_some_and(|at| Instant::now() < at)
        {
            return;
        }
        let batch = durability.take_unwritten();
        durability.in_flight = store.send(Job::Append(batch));
    }

    /// The store made something durable (or failed to).
    fn on_store_event(&mut self, event: StoreEvent) {
        match event {
            StoreEvent::Appended {
                result,
                durable,
                batch,
                pinning,
                disk_bytes,
            } => {
                let Some(durability) = self.durability.as_mut() else {
                    return;
                };
                durability.in_flight = false;
                durability.disk_bytes = disk_bytes;
                match result {
                    Ok(()) => {
                        if durability.failing.take().is_some() {
                            crate::log!(Info, "storage works again: writes resume");
                            self.storage_ok.store(true, Ordering::Relaxed);
                        }
                        durability.retry_at = None;
                        for session in pinning {
                            durability
                                .snapshot_wanted
                                .insert(Text::from(session.as_str()));
                        }
                        for (session_id, up_to) in durable {
                            self.release(&session_id, up_to);
                        }
                    }
                    Err(error) => {
                        if durability.failing.is_none() {
                            crate::log!(
                                Error,
                                "storage failing: nothing more is acknowledged until a write succeeds",
                                error = error.as_str()
                            );
                        }
                        durability.failing = Some(error);
                        durability.retry_at = Some(Instant::now() + STORE_RETRY);
                        self.storage_ok.store(false, Ordering::Relaxed);
                        // The failed batch goes first next time, in order.
                        let later = durability.take_unwritten();
                        for frames in batch.into_iter().chain(later) {
                            durability.requeue(frames);
                        }
                    }
                }
                self.snapshot_due();
            }
            StoreEvent::Snapshotted {
                session,
                result,
                disk_bytes,
            }
            | StoreEvent::Deleted {
                session,
                result,
                disk_bytes,
            } => {
                if let Some(durability) = self.durability.as_mut() {
                    durability.disk_bytes = disk_bytes;
                }
                if let Err(error) = result {
                    crate::log!(
                        Error,
                        "storage: a snapshot or a delete failed",
                        session_id = session.as_str(),
                        error = error.as_str()
                    );
                }
            }
        }
    }

    /// Records of `session_id` below `up_to` are durable: what waited for
    /// them goes to the members.
    fn release(&mut self, session_id: &Text, up_to: u64) {
        let Some(slot) = self.sessions.get_mut(session_id) else {
            return;
        };
        // Answered at the end of the turn (see `answer_woken`).
        self.woken.extend(slot.session.mark_durable(up_to));
    }

    /// Snapshots the sessions that are due (enough records, or pinning an
    /// old log segment) and have nothing waiting to be durable.
    fn snapshot_due(&mut self) {
        let (Some(durability), Some(store)) = (self.durability.as_mut(), self.store.as_ref())
        else {
            return;
        };
        let mut done = Vec::new();
        for id in &durability.snapshot_wanted {
            let Some(slot) = self.sessions.get_mut(id) else {
                done.push(id.clone());
                continue;
            };
            let session = &slot.session;
            if durability.is_unwritten(id) || session.durable_index() < session.next_index() {
                continue;
            }
            let snapshot = session.encode_snapshot(slot.last_active);
            slot.snapshotted(snapshot.weight);
            store.send(Job::Snapshot {
                session_id: id.to_string(),
                index: snapshot.index,
                payload: snapshot.payload,
            });
            done.push(id.clone());
        }
        for id in done {
            durability.snapshot_wanted.remove(&id);
        }
    }

    fn step_creating(
        &mut self,
        now: Now,
        session_id: &Text,
        create: Creation,
        input: Input,
    ) -> Result<Done, ReviewError> {
        if let Some(why) = self.failed.get(session_id) {
            return Err(ReviewError::new(
                ErrorKind::DataLoss,
                format!("session {session_id:?} is damaged in storage and cannot be served: {why}"),
            ));
        }
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
                held: None,
            },
        );
        let input = input(member);
        if self.shared.is_some()
            && matches!(input, Input::Join(_))
            && let Some(slot) = self.members.get_mut(&member)
        {
            slot.held = Some(Vec::new());
        }
        match self.step_creating(now, session_id, create, input) {
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
        session_id: &Text,
        user_id: Text,
        role: super::roles::Role,
        files: Vec<(Text, Vec<Text>)>,
    ) -> Result<Done, ReviewError> {
        let proof = role.may_upload()?;
        let input = Input::Upload {
            user: user_id,
            files,
            proof,
        };
        self.step_creating(now, session_id, Creation::Allowed, input)
    }

    fn pull(
        &mut self,
        member: MemberId,
        max_bytes: usize,
        mode: PullMode,
        reply: oneshot::Sender<Taken>,
    ) {
        let Some(slot) = self.members.get_mut(&member) else {
            return;
        };
        let Some(session) = self.sessions.get_mut(&slot.session) else {
            return;
        };
        if Self::can_answer(&mut session.session, member, mode) {
            let batch = session.session.take(member, max_bytes);
            // Taking shrinks only the outbox: count it without a recount.
            let counted = session.memory.saturating_sub(batch.bytes());
            self.memory.recount(&mut session.memory, counted);
            let _ = reply.send(batch);
        } else {
            slot.parked = Some(Parked {
                reply,
                max_bytes,
                mode,
            });
        }
    }

    /// Whether a pull in `mode` can be answered now.
    fn can_answer(session: &mut Session, member: MemberId, mode: PullMode) -> bool {
        match mode {
            PullMode::Next => session.has_pending(member),
            PullMode::All => session.all_ready(member),
        }
    }

    /// Answers a member's parked pull if it can be answered now.
    fn answer_parked(slot: &mut MemberSlot, session: &mut Session, member: MemberId) {
        if let Some(parked) = slot.parked.take() {
            if Self::can_answer(session, member, parked.mode) {
                let _ = parked.reply.send(session.take(member, parked.max_bytes));
            } else {
                slot.parked = Some(parked);
            }
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

    /// Periodic work for every session, snapshots that are due, then
    /// removal of the sessions empty for their linger (or retention) time.
    fn tick(&mut self) {
        let now = self.now();
        self.step_all(now, |_| Input::Tick);
        self.snapshot_due();
        self.shared_tick();
        let ttl = self.empty_ttl();
        let expired: Vec<Text> = self
            .sessions
            .iter()
            .filter(|(_, slot)| {
                slot.session.is_empty()
                    && slot.replica.is_idle()
                    && slot.empty_since.is_some_and(|since| since.elapsed() >= ttl)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb::codereview::{CommentEntry, FileContent};
    use crate::pb::store::{HistoryEvent, LoggedOp, Outcome, Snapshot, User};

    fn snapshot(lines: usize, comments: usize, outcomes: usize, history: usize) -> Snapshot {
        Snapshot {
            files: vec![
                FileContent {
                    file_path: "a.rs".into(),
                    lines: vec![String::new(); lines / 2],
                    version: 0,
                },
                FileContent {
                    file_path: "b.rs".into(),
                    lines: vec![String::new(); lines - lines / 2],
                    version: 0,
                },
            ],
            comments: vec![CommentEntry::default(); comments],
            users: vec![User {
                outcomes: vec![Outcome::default(); outcomes],
                bridge: vec![LoggedOp::default(); 3],
                ..User::default()
            }],
            ops: vec![LoggedOp::default(); 2],
            history: vec![HistoryEvent::default(); history],
            ..Snapshot::default()
        }
    }

    fn comment_record(index: u64, text: &str) -> Record {
        use crate::pb::store::{CommentAdded, record::Body};
        Record {
            index,
            timestamp: 0,
            body: Some(Body::Comment(CommentAdded {
                comment: Some(crate::pb::codereview::Comment {
                    text: text.into(),
                    ..Default::default()
                }),
                ..Default::default()
            })),
        }
    }

    /// Each session's entry and the index of its last record framed.
    fn last_indexes(frames: &[SessionFrames]) -> Vec<(String, u64)> {
        frames
            .iter()
            .map(|f| (f.session.to_string(), f.last_index))
            .collect()
    }

    /// What the frames hold, as the store's recovery reads them back.
    fn read_back(frames: &[SessionFrames]) -> Vec<(String, Vec<u64>)> {
        let mut contents = store::WalContents::default();
        let bytes: Vec<u8> = frames.iter().flat_map(|f| f.bytes.clone()).collect();
        let (good, _) = contents.add_segment(&bytes, &mut []);
        assert_eq!(good, bytes.len(), "every frame reads back");
        let mut order: Vec<(String, Vec<u64>)> = Vec::new();
        for frames in frames {
            let indexes = contents.records[&*frames.session]
                .iter()
                .map(|r| r.index)
                .collect();
            order.push((frames.session.to_string(), indexes));
        }
        order
    }

    #[test]
    fn a_failed_batch_goes_again_before_what_was_queued_after_it() {
        let (s, t, u) = (Text::from("s"), Text::from("t"), Text::from("u"));
        let mut durability = Durability::default();
        durability.queue(&s, vec![comment_record(1, "a"), comment_record(2, "b")]);
        durability.queue(&t, vec![comment_record(1, "c")]);
        durability.queue(&s, vec![comment_record(3, "d")]);
        let failed = durability.take_unwritten();
        assert_eq!(
            last_indexes(&failed),
            [("s".to_string(), 3), ("t".to_string(), 1)]
        );
        // While the batch was in flight:
        durability.queue(&u, vec![comment_record(1, "e")]);
        durability.queue(&s, vec![comment_record(4, "f")]);
        // It failed: it goes first, then the later records, each session's in order.
        let later = durability.take_unwritten();
        for frames in failed.into_iter().chain(later) {
            durability.requeue(frames);
        }
        assert!(durability.is_unwritten(&s) && durability.is_unwritten(&u));
        let again = durability.take_unwritten();
        assert_eq!(
            last_indexes(&again),
            [
                ("s".to_string(), 4),
                ("t".to_string(), 1),
                ("u".to_string(), 1)
            ]
        );
        assert_eq!(
            read_back(&again),
            [
                ("s".to_string(), vec![1, 2, 3, 4]),
                ("t".to_string(), vec![1]),
                ("u".to_string(), vec![1]),
            ]
        );
    }

    #[test]
    fn a_removed_session_leaves_nothing_unwritten_and_the_others_in_order() {
        let (s, t, u) = (Text::from("s"), Text::from("t"), Text::from("u"));
        let mut durability = Durability::default();
        durability.queue(&s, vec![comment_record(1, "a")]);
        durability.queue(&t, vec![comment_record(1, "b")]);
        durability.queue(&u, vec![comment_record(1, "c")]);
        durability.queue(&u, vec![comment_record(2, "d")]);
        durability.drop_unwritten(&t);
        assert!(!durability.is_unwritten(&t));
        // Later records of a session still join its entry.
        durability.queue(&s, vec![comment_record(2, "e")]);
        let left = durability.take_unwritten();
        assert_eq!(
            read_back(&left),
            [("s".to_string(), vec![1, 2]), ("u".to_string(), vec![1, 2])]
        );
    }

    #[test]
    fn a_snapshot_weighs_every_entry_it_holds() {
        // lines + comments + (the user, its outcomes and bridge) + ops + history
        assert_eq!(
            snapshot_weight(&snapshot(7, 5, 4, 11)),
            7 + 5 + (1 + 4 + 3) + 2 + 11
        );
        assert_eq!(snapshot_weight(&Snapshot::default()), 0);
    }

    #[test]
    fn the_next_snapshot_waits_for_as_many_records_as_the_last_one_held() {
        let mut slot = SessionSlot {
            session: Session::new(Text::from("s"), 1, Arc::new(Limits::default())),
            empty_since: None,
            memory: 0,
            since_snapshot: 0,
            bytes_since_snapshot: 0,
            snapshot_after: SNAPSHOT_EVERY,
            last_active: 0,
            replica: replicas::Replica::default(),
        };
        slot.since_snapshot = SNAPSHOT_EVERY - 1;
        assert!(!slot.snapshot_is_due());
        slot.since_snapshot = SNAPSHOT_EVERY;
        assert!(slot.snapshot_is_due());
        // A small session: every SNAPSHOT_EVERY records still.
        slot.snapshotted(snapshot_weight(&snapshot(10, 10, 0, 10)));
        assert_eq!(slot.since_snapshot, 0);
        slot.since_snapshot = SNAPSHOT_EVERY;
        assert!(slot.snapshot_is_due());
        // A long review: 20,000 comments wait for 20,000 + records.
        let long = snapshot(100, 20_000, 0, 1000);
        let weight = snapshot_weight(&long);
        slot.snapshotted(weight);
        slot.since_snapshot = weight - 1;
        assert!(!slot.snapshot_is_due());
        slot.since_snapshot = weight;
        assert!(slot.snapshot_is_due());
        // However few the records, enough of their bytes make it due too.
        slot.snapshotted(weight);
        slot.bytes_since_snapshot = SNAPSHOT_BYTES - 1;
        assert!(!slot.snapshot_is_due());
        slot.bytes_since_snapshot = SNAPSHOT_BYTES;
        assert!(slot.snapshot_is_due());
        slot.snapshotted(weight);
        assert_eq!(slot.bytes_since_snapshot, 0);
    }
}
