//! Shared mode (`serve --redis`): the registry's sessions are replicas of
//! logs kept in Redis (see [`crate::shared_log`]).
//!
//! A session is loaded (snapshot, then the log after it) when a command
//! first needs it, and followed from then on. What its steps decide are
//! proposals: each turn, every session's waiting proposals go to Redis in
//! one pipelined batch of compare-and-appends (one batch in flight at a
//! time, so the next turns' proposals accumulate behind it). Proposals
//! that landed are applied where they landed, with their authors (acks,
//! a joiner's catch-up, an upload's answer); when another instance got
//! there first, its entries are applied and the proposals go again,
//! transformed where they land next. Entries read while a batch is in
//! flight wait, so this instance's own records are applied as its own.
//! Joined members' messages wait until their JOINED has landed.
//!
//! Redis unreachable: every member here is ended with UNAVAILABLE (nothing
//! unappended was acknowledged; clients resume), the replicas are dropped,
//! readiness goes false and new calls fail fast until Redis answers again.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::atomic::Ordering;

use prost::Message;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::super::error::{ErrorKind, ReviewError};
use super::super::ids::{MemberId, Text};
use super::super::session::{
    Author, Departed, Done, Effects, Input, Now, Proposal, Published, Session, UploadOutcome,
};
use super::handle::Command;
use super::{
    Ending, Registry, SNAPSHOT_EVERY, SessionSlot, records_before_the_next_snapshot,
    snapshot_weight,
};
use crate::pb::store::{self, Record};
use crate::shared_log::{Append, Appended, Event, Job, LoadError, Stored};

/// How often the leases of the instances named in presence are checked.
const LEASE_CHECK_EVERY: std::time::Duration = std::time::Duration::from_secs(3);
/// How often the sessions with participants here are kept from expiring.
const TOUCH_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

/// The registry's shared-mode state.
pub(super) struct Shared {
    pub jobs: mpsc::UnboundedSender<Job>,
    pub instance: Text,
    /// Redis answers (else nothing is served).
    pub healthy: bool,
    /// A batch of appends is in flight.
    pub appending: bool,
    /// Sessions being loaded, with the commands that wait for them.
    pub loading: HashMap<Text, Vec<Command>>,
    /// The set of followed sessions changed.
    pub follow_changed: bool,
    /// Ephemeral news to publish at the end of the turn.
    pub news: Vec<(Text, Vec<u8>)>,
    pub last_lease_check: Instant,
    pub last_touch: Instant,
}

impl Shared {
    pub fn new(jobs: mpsc::UnboundedSender<Job>, instance: Text) -> Shared {
        Shared {
            jobs,
            instance,
            healthy: true,
            appending: false,
            loading: HashMap::new(),
            follow_changed: false,
            news: Vec::new(),
            last_lease_check: Instant::now(),
            last_touch: Instant::now(),
        }
    }

    fn unavailable() -> ReviewError {
        ReviewError::new(
            ErrorKind::Unavailable,
            "the session store (Redis) is unreachable: try again shortly",
        )
    }
}

/// A replica's traffic with the shared log.
#[derive(Default)]
pub(super) struct Replica {
    /// Decided here, not sent yet.
    pending: Vec<Proposal>,
    /// Sent, waiting for the answer.
    in_flight: Vec<Proposal>,
    /// The encoded bytes of `in_flight`'s records (toward the next
    /// snapshot once they land).
    in_flight_bytes: u64,
    /// Entries read while a batch was in flight.
    stash: Vec<Record>,
    /// Uploads waiting for their record to land, in order.
    uploads: VecDeque<oneshot::Sender<Result<UploadOutcome, ReviewError>>>,
}

impl Replica {
    pub fn is_idle(&self) -> bool {
        self.pending.is_empty() && self.in_flight.is_empty() && self.uploads.is_empty()
    }
}

/// The session a command needs loaded, if any.
fn session_needed(command: &Command) -> Option<&Text> {
    match command {
        Command::Join { session_id, .. }
        | Command::Watch { session_id, .. }
        | Command::Snapshot { session_id, .. }
        | Command::Upload { session_id, .. } => Some(session_id),
        _ => None,
    }
}

/// Answers a command that cannot be served with `error`.
fn refuse(command: Command, error: ReviewError) {
    match command {
        Command::Join { reply, .. } | Command::Watch { reply, .. } => {
            let _ = reply.send(Err(error));
        }
        Command::Snapshot { reply, .. } => {
            let _ = reply.send(Err(error));
        }
        Command::Upload { reply, .. } => {
            let _ = reply.send(Err(error));
        }
        _ => {}
    }
}

impl Registry {
    /// Shared mode: whether the command waits (for its session to load,
    /// or for its member's JOINED to land) or was refused; false if it is
    /// for the registry to handle now.
    pub(super) fn shared_intercepts(&mut self, command: Command) -> Option<Command> {
        let Some(shared) = self.shared.as_mut() else {
            return Some(command);
        };
        if let Some(session_id) = session_needed(&command) {
            if !shared.healthy {
                refuse(command, Shared::unavailable());
                return None;
            }
            if self.sessions.contains_key(session_id) || self.failed.contains_key(session_id) {
                return Some(command);
            }
            let session_id = session_id.clone();
            let waiting = shared.loading.entry(session_id.clone()).or_insert_with(|| {
                let _ = shared.jobs.send(Job::Load(session_id));
                Vec::new()
            });
            waiting.push(command);
            return None;
        }
        let member = match &command {
            Command::Message { member, .. }
            | Command::Messages { member, .. }
            | Command::Reject { member, .. }
            | Command::RefreshToken { member, .. }
            | Command::Leave { member } => *member,
            _ => return Some(command),
        };
        match self.members.get_mut(&member).and_then(|m| m.held.as_mut()) {
            Some(held) => {
                held.push(command);
                None
            }
            None => Some(command),
        }
    }

    /// A new session of the shared log: its `Created` waits to be appended
    /// (where the log is still empty; else the log's own start is applied).
    pub(super) fn new_replica(
        &mut self,
        now: Now,
        session_id: &Text,
    ) -> Option<(Session, Vec<Proposal>)> {
        let shared = self.shared.as_ref()?;
        let mut session = Session::new(session_id.clone(), 0, self.limits.clone());
        session.set_instance(shared.instance.clone());
        session.share();
        let mut fx = Effects::default();
        session.propose_creation(now, super::random_epoch(), &mut fx);
        Some((session, fx.proposals))
    }

    /// Carries out what a step or an apply asked of the shared log.
    pub(super) fn share_effects(
        shared: &mut Option<Shared>,
        session_id: &Text,
        slot: &mut SessionSlot,
        proposals: Vec<Proposal>,
        published: Vec<Published>,
    ) {
        let Some(shared) = shared.as_mut() else {
            return;
        };
        slot.replica.pending.extend(proposals);
        for news in published {
            let payload = store::Ephemeral {
                instance: shared.instance.to_string(),
                user_id: news.user.to_string(),
                framed: news.framed,
            };
            shared
                .news
                .push((session_id.clone(), payload.encode_to_vec()));
        }
    }

    /// End of a turn: sends the waiting proposals (if no batch is in
    /// flight), the ephemeral news and the followed set.
    pub(super) fn flush_shared(&mut self) {
        let Some(shared) = self.shared.as_mut() else {
            return;
        };
        if !shared.news.is_empty() {
            let _ = shared
                .jobs
                .send(Job::Publish(std::mem::take(&mut shared.news)));
        }
        if shared.follow_changed {
            shared.follow_changed = false;
            let follow = self
                .sessions
                .iter()
                .map(|(id, slot)| (id.clone(), slot.session.next_index()))
                .collect();
            let _ = shared.jobs.send(Job::Follow(follow));
        }
        if shared.appending || !shared.healthy {
            return;
        }
        let mut batch = Vec::new();
        for (id, slot) in &mut self.sessions {
            let replica = &mut slot.replica;
            if replica.pending.is_empty() || !replica.in_flight.is_empty() {
                continue;
            }
            replica.in_flight = std::mem::take(&mut replica.pending);
            let first = slot.session.next_index();
            let records: Vec<Vec<u8>> = replica
                .in_flight
                .iter()
                .enumerate()
                .map(|(i, p)| record_of(first + i as u64, p).encode_to_vec())
                .collect();
            replica.in_flight_bytes = records.iter().map(|r| r.len() as u64).sum();
            batch.push(Append {
                session: id.clone(),
                first,
                records,
            });
        }
        if !batch.is_empty() {
            shared.appending = shared.jobs.send(Job::Append(batch)).is_ok();
        }
    }

    /// Something came from Redis.
    pub(super) fn on_shared_event(&mut self, event: Event) {
        let now = self.now();
        match event {
            Event::Appended(Ok(outcomes)) => {
                if let Some(shared) = self.shared.as_mut() {
                    shared.appending = false;
                }
                let mut admitted = Vec::new();
                for (session_id, outcome) in outcomes {
                    self.on_appended(now, &session_id, outcome, &mut admitted);
                }
                self.release_held(admitted);
            }
            Event::Appended(Err(error)) => {
                if let Some(shared) = self.shared.as_mut() {
                    shared.appending = false;
                }
                self.redis_down(&error);
            }
            Event::Loaded { session, result } => self.on_loaded(now, session, result),
            Event::Entries { session, records } => {
                let mut admitted = Vec::new();
                match records {
                    Ok(records) => self.on_entries(now, &session, records, &mut admitted),
                    Err(error) => self.fail_replica(&session, error),
                }
                self.release_held(admitted);
            }
            Event::Ephemeral { session, payload } => {
                let Ok(news) = store::Ephemeral::decode(payload) else {
                    return;
                };
                let mine = self
                    .shared
                    .as_ref()
                    .is_some_and(|s| *s.instance == news.instance);
                if mine || !self.sessions.contains_key(&session) {
                    return;
                }
                let input = Input::Ephemeral {
                    user: Text::from(news.user_id.as_str()),
                    framed: news.framed,
                };
                self.step(now, &session, input);
            }
            Event::Dead(instances) => {
                let gone: BTreeSet<Text> = instances.into_iter().collect();
                crate::log!(
                    Info,
                    "instances without a lease: their participants leave",
                    instances = format!("{gone:?}").as_str()
                );
                self.step_all(now, |_| Input::Reap {
                    gone: Departed::Instances(gone.clone()),
                });
            }
            Event::Health(Ok(())) => {
                if let Some(shared) = self.shared.as_mut()
                    && !shared.healthy
                {
                    shared.healthy = true;
                    self.storage_ok.store(true, Ordering::Relaxed);
                    crate::log!(Info, "Redis answers again: serving");
                }
            }
            Event::Health(Err(error)) => self.redis_down(&error),
        }
    }

    fn on_loaded(&mut self, now: Now, session_id: Text, result: Result<Stored, LoadError>) {
        let Some(shared) = self.shared.as_mut() else {
            return;
        };
        let waiting = shared.loading.remove(&session_id).unwrap_or_default();
        let instance = shared.instance.clone();
        match result {
            Err(LoadError::Unavailable(error)) => {
                self.redis_down(&error);
                for command in waiting {
                    refuse(command, Shared::unavailable());
                }
                return;
            }
            Err(LoadError::Damaged(error)) => self.fail_session(&session_id, error),
            Ok(stored) if stored.snapshot.is_none() && stored.records.is_empty() => {
                // No such session: the commands create it (or are refused).
            }
            Ok(stored) => {
                // The log read after the snapshot counts toward the next one.
                let tail = stored.records.len() as u64;
                let tail_bytes = stored.records.iter().map(|r| r.encoded_len() as u64).sum();
                let weight = stored.snapshot.as_ref().map(snapshot_weight);
                match self.rebuild(now, &session_id, stored, instance) {
                    Ok(session) => {
                        self.adopt(now, &session_id, session, Vec::new());
                        if let Some(slot) = self.sessions.get_mut(&session_id) {
                            slot.snapshot_after = records_before_the_next_snapshot(weight);
                            slot.since_snapshot = tail;
                            slot.bytes_since_snapshot = tail_bytes;
                        }
                    }
                    Err(error) => self.fail_session(&session_id, error),
                }
            }
        }
        for command in waiting {
            self.dispatch(command);
        }
    }

    fn rebuild(
        &self,
        _now: Now,
        session_id: &Text,
        stored: Stored,
        instance: Text,
    ) -> Result<Session, String> {
        let mut session = match &stored.snapshot {
            Some(snapshot) => {
                Session::from_snapshot(snapshot, self.limits.clone()).map_err(|e| e.0)?
            }
            None => Session::new(session_id.clone(), 0, self.limits.clone()),
        };
        session.set_instance(instance);
        for record in &stored.records {
            session.replay(record).map_err(|e| e.0)?;
        }
        session.share();
        Ok(session)
    }

    /// Holds a replica from now on (followed, counted in the budget).
    pub(super) fn adopt(
        &mut self,
        now: Now,
        session_id: &Text,
        session: Session,
        proposals: Vec<Proposal>,
    ) {
        let mut slot = SessionSlot {
            session,
            empty_since: Some(Instant::now()),
            memory: 0,
            since_snapshot: 0,
            bytes_since_snapshot: 0,
            snapshot_after: SNAPSHOT_EVERY,
            last_active: now.unix_ms,
            replica: Replica::default(),
        };
        slot.replica.pending = proposals;
        self.memory
            .recount(&mut slot.memory, slot.session.memory_bytes());
        self.sessions.insert(session_id.clone(), Box::new(slot));
        if let Some(shared) = self.shared.as_mut() {
            shared.follow_changed = true;
        }
    }

    fn on_appended(
        &mut self,
        now: Now,
        session_id: &Text,
        outcome: Result<Appended, String>,
        admitted: &mut Vec<MemberId>,
    ) {
        let Some(slot) = self.sessions.get_mut(session_id) else {
            return;
        };
        let proposals = std::mem::take(&mut slot.replica.in_flight);
        let bytes = std::mem::take(&mut slot.replica.in_flight_bytes);
        match outcome {
            Ok(Appended::Landed) => {
                slot.bytes_since_snapshot += bytes;
                for proposal in proposals {
                    let record = record_of(self.next_index_of(session_id), &proposal);
                    if !self.apply_landed(now, session_id, &record, proposal.author, admitted) {
                        return;
                    }
                }
            }
            Ok(Appended::Behind(records)) => {
                if !self.apply_foreign(now, session_id, records, admitted) {
                    return;
                }
                let Some(slot) = self.sessions.get_mut(session_id) else {
                    return;
                };
                // Again, after what came first; a `Created` only where the
                // log is still empty.
                let started = slot.session.next_index() > 0;
                let mut again: Vec<Proposal> = proposals
                    .into_iter()
                    .filter(|p| !(started && matches!(p.body, store::record::Body::Created(_))))
                    .collect();
                again.append(&mut slot.replica.pending);
                slot.replica.pending = again;
            }
            Ok(Appended::Lost { next }) => {
                self.fail_replica(
                    session_id,
                    format!("the session's log in Redis ends at {next}, before this copy (it expired or was deleted)"),
                );
                return;
            }
            Err(error) => {
                self.fail_replica(session_id, error);
                return;
            }
        }
        let Some(slot) = self.sessions.get_mut(session_id) else {
            return;
        };
        let stash = std::mem::take(&mut slot.replica.stash);
        self.apply_foreign(now, session_id, stash, admitted);
    }

    fn next_index_of(&self, session_id: &Text) -> u64 {
        self.sessions
            .get(session_id)
            .map_or(0, |s| s.session.next_index())
    }

    fn on_entries(
        &mut self,
        now: Now,
        session_id: &Text,
        records: Vec<Record>,
        admitted: &mut Vec<MemberId>,
    ) {
        let Some(slot) = self.sessions.get_mut(session_id) else {
            return;
        };
        if !slot.replica.in_flight.is_empty() {
            slot.replica.stash.extend(records);
            return;
        }
        self.apply_foreign(now, session_id, records, admitted);
    }

    /// Applies entries appended by others (or read back), in order;
    /// entries already applied are skipped, a gap is read again. False if
    /// the replica failed.
    fn apply_foreign(
        &mut self,
        now: Now,
        session_id: &Text,
        records: Vec<Record>,
        admitted: &mut Vec<MemberId>,
    ) -> bool {
        for record in records {
            let next = self.next_index_of(session_id);
            if record.index < next {
                continue;
            }
            if record.index > next {
                if let Some(shared) = &self.shared {
                    let _ = shared.jobs.send(Job::ReadFrom {
                        session: session_id.clone(),
                        from: next,
                    });
                }
                return true;
            }
            if let Some(slot) = self.sessions.get_mut(session_id) {
                slot.bytes_since_snapshot += record.encoded_len() as u64;
            }
            if !self.apply_landed(now, session_id, &record, Author::Nobody, admitted) {
                return false;
            }
        }
        true
    }

    /// Applies one record of the log, with who here waits for it.
    fn apply_landed(
        &mut self,
        now: Now,
        session_id: &Text,
        record: &Record,
        author: Author,
        admitted: &mut Vec<MemberId>,
    ) -> bool {
        let Some(slot) = self.sessions.get_mut(session_id) else {
            return false;
        };
        let joiner = match &author {
            Author::Joiner(request) => Some(request.member),
            _ => None,
        };
        let uploader = matches!(author, Author::Uploader);
        let mut fx = match slot.session.apply_record(now, record, author) {
            Ok(fx) => fx,
            Err(error) => {
                self.fail_replica(session_id, error.0);
                return false;
            }
        };
        if uploader && let Some(reply) = slot.replica.uploads.pop_front() {
            let _ = reply.send(match fx.result.clone() {
                Ok(Done::Uploaded(outcome)) => Ok(outcome),
                Ok(Done::Nothing) => Err(ReviewError::new(
                    ErrorKind::Unavailable,
                    "an upload landed without its outcome",
                )),
                Err(error) => Err(error),
            });
        }
        slot.since_snapshot += 1;
        slot.last_active = record.timestamp;
        let proposals = std::mem::take(&mut fx.proposals);
        let published = std::mem::take(&mut fx.published);
        Self::share_effects(&mut self.shared, session_id, slot, proposals, published);
        Self::carry_out(
            &mut self.members,
            slot,
            fx,
            &mut self.counted,
            &mut self.memory,
            &mut self.woken,
        );
        slot.note_emptiness();
        if let Some(member) = joiner {
            admitted.push(member);
        }
        true
    }

    /// Members whose JOINED landed: what they sent meanwhile is handled now.
    fn release_held(&mut self, admitted: Vec<MemberId>) {
        for member in admitted {
            let held = self
                .members
                .get_mut(&member)
                .and_then(|m| m.held.take())
                .unwrap_or_default();
            for command in held {
                self.dispatch(command);
            }
        }
    }

    /// A replica that cannot go on (its log unreadable, or gone): its
    /// members end, it is dropped (a later call loads it again).
    fn fail_replica(&mut self, session_id: &Text, why: String) {
        crate::log!(
            Error,
            "a shared session cannot be followed: its members are ended",
            session_id = &**session_id,
            error = why.as_str()
        );
        let error = ReviewError::new(
            ErrorKind::Unavailable,
            format!("this server lost the session's log ({why}): reconnect and resume"),
        );
        self.drop_replica(session_id, &error);
    }

    fn drop_replica(&mut self, session_id: &Text, error: &ReviewError) {
        let Some(mut slot) = self.sessions.remove(session_id) else {
            return;
        };
        self.memory.release(slot.memory);
        for reply in slot.replica.uploads.drain(..) {
            let _ = reply.send(Err(error.clone()));
        }
        let ended: Vec<MemberId> = self
            .members
            .iter()
            .filter(|(_, m)| m.session == *session_id)
            .map(|(id, _)| *id)
            .collect();
        for member in ended {
            if let Some(mut slot) = self.members.remove(&member)
                && let Some(ending) = slot.ending.take()
            {
                let _ = ending.send(Ending::Closed(error.clone()));
            }
        }
        if let Some(shared) = self.shared.as_mut() {
            shared.follow_changed = true;
        }
    }

    /// Redis does not answer: nothing can be appended, so nothing is
    /// served until it does.
    fn redis_down(&mut self, why: &str) {
        let Some(shared) = self.shared.as_mut() else {
            return;
        };
        if shared.healthy {
            crate::log!(
                Error,
                "Redis is unreachable: members are ended, calls refused until it answers",
                error = why
            );
        }
        shared.healthy = false;
        self.storage_ok.store(false, Ordering::Relaxed);
        let error = ReviewError::new(
            ErrorKind::Unavailable,
            format!("the session store (Redis) is unreachable ({why}): reconnect and resume"),
        );
        let loading: Vec<Command> = shared.loading.drain().flat_map(|(_, c)| c).collect();
        for command in loading {
            refuse(command, error.clone());
        }
        let ids: Vec<Text> = self.sessions.keys().cloned().collect();
        for id in ids {
            self.drop_replica(&id, &error);
        }
    }

    /// Periodic shared-mode work: lease checks, keeping live sessions from
    /// expiring, snapshots.
    pub(super) fn shared_tick(&mut self) {
        let Some(shared) = self.shared.as_mut() else {
            return;
        };
        if !shared.healthy {
            return;
        }
        if shared.last_lease_check.elapsed() >= LEASE_CHECK_EVERY {
            shared.last_lease_check = Instant::now();
            let instances: BTreeSet<Text> = self
                .sessions
                .values()
                .flat_map(|slot| slot.session.remote_instances())
                .collect();
            if !instances.is_empty() {
                let _ = shared
                    .jobs
                    .send(Job::CheckLeases(instances.into_iter().collect()));
            }
        }
        if shared.last_touch.elapsed() >= TOUCH_EVERY {
            shared.last_touch = Instant::now();
            let live: Vec<Text> = self
                .sessions
                .iter()
                .filter(|(_, slot)| !slot.session.is_empty())
                .map(|(id, _)| id.clone())
                .collect();
            if !live.is_empty() {
                let _ = shared.jobs.send(Job::Touch(live));
            }
        }
        for (id, slot) in &mut self.sessions {
            // Due by records or bytes, whatever is in flight: the session
            // holds only what landed (proposals apply when they land), so its
            // snapshot at `next_index` is the log's state there, and waiting
            // for a quiet moment would wait forever under steady traffic.
            if !slot.snapshot_is_due() {
                continue;
            }
            let snapshot = slot.session.encode_snapshot(slot.last_active);
            slot.snapshotted(snapshot.weight);
            let _ = shared.jobs.send(Job::Snapshot {
                session: id.clone(),
                next: slot.session.next_index(),
                data: snapshot.payload,
            });
        }
    }

    /// An upload whose record is on its way: answered when it lands.
    pub(super) fn await_upload(
        &mut self,
        session_id: &Text,
        reply: oneshot::Sender<Result<UploadOutcome, ReviewError>>,
    ) {
        match self.sessions.get_mut(session_id) {
            Some(slot) => slot.replica.uploads.push_back(reply),
            None => {
                let _ = reply.send(Err(Shared::unavailable()));
            }
        }
    }
}

/// The record a proposal becomes at `index`.
fn record_of(index: u64, proposal: &Proposal) -> Record {
    Record {
        index,
        timestamp: proposal.timestamp,
        body: Some(proposal.body.clone()),
    }
}
