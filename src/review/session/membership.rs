//! Joining (as a participant or a watcher), the catch-up a joiner gets
//! (history, resume replay or snapshot, then CAUGHT_UP), and leaving.

use super::super::outbox::Outbox;
use super::roster::{Detached, MemberKind, VersionReading};
use super::*;
use crate::pb::codereview::{
    CursorPosition, Joined, PresenceUpdate, joined::Catchup, presence_update::Status as Presence,
};

/// Who is catching up, and how.
#[derive(Clone, Copy)]
pub(super) struct Joiner<'a> {
    pub member: MemberId,
    /// The participant's user (None for a watcher).
    pub user: Option<&'a Text>,
    pub role: Role,
    pub options: &'a JoinOptions,
    pub last_client_sequence: u64,
    pub token: Option<TokenWindow>,
    /// The sequence of this join's own JOINED event, if it had one: in a
    /// replay of the history, the user's events from there on are this
    /// stream's own (acknowledged), while earlier ones are shown as events
    /// (a new process of the user has never seen them).
    pub joined_at: Option<u64>,
}

impl Session {
    /// A stream's identity in the log: unique across instances and
    /// restarts.
    pub(super) fn stream_of(&self, member: MemberId) -> Text {
        Arc::from(format!("{}/{member}", self.instance))
    }

    /// Decides a participant's join (the session's room for one more) and
    /// proposes its JOINED; the stream is added where that lands in the log
    /// ([`Session::admit`]), and the answer is in `fx.result` then.
    pub(super) fn join(&mut self, now: Now, request: JoinRequest, fx: &mut Effects) {
        let present = self
            .roster
            .user(&request.user_id)
            .is_some_and(|u| u.present);
        if !present {
            let participants = self.roster.users().filter(|(_, u)| u.present).count();
            if participants >= self.limits.max_participants {
                fx.result = Err(ReviewError::exhausted(format!(
                    "session {} is full ({} participants)",
                    self.id, self.limits.max_participants
                )));
                return;
            }
            if let Err(error) = self.roster.can_admit(&request.user_id, &self.limits) {
                fx.result = Err(error);
                return;
            }
        }
        let body = Body::Presence(store::Presence {
            user_id: request.user_id.to_string(),
            role: request.role.to_wire() as i32,
            joined: true,
            stream: self.stream_of(request.member).to_string(),
        });
        self.propose(now, body, Author::Joiner(request), fx);
    }

    /// Adds a joiner's stream where its JOINED landed: `Joined`, the
    /// catch-up and CAUGHT_UP go to its outbox. `joined_at` is the JOINED
    /// event's sequence (None when the stream took over from another of
    /// its user's: there was no event).
    pub(super) fn admit(
        &mut self,
        now: Now,
        request: JoinRequest,
        joined_at: Option<u64>,
        fx: &mut Effects,
    ) {
        let version = self.version;
        let user = self.roster.ensure_user(
            &request.user_id,
            request.role,
            now.at,
            version,
            &self.limits,
        );
        let last_client_sequence = user.dedupe.highest();
        let member = Member::new(
            MemberKind::Participant(request.user_id.clone()),
            request.token,
            Outbox::new(request.member, &self.feed),
        );
        if let Some(old) = self.roster.attach(request.member, member, now.at) {
            self.forget_fed();
            fx.unwake(old);
            fx.closed.push((
                old,
                ReviewError::new(
                    ErrorKind::Aborted,
                    "replaced by a newer stream of the same user",
                ),
            ));
        }
        let joiner = Joiner {
            member: request.member,
            user: Some(&request.user_id),
            role: request.role,
            options: &request.options,
            last_client_sequence,
            token: request.token,
            joined_at,
        };
        let catchup = self.catch_up(now, &joiner, fx);
        if !request.options.article_client
            && let Some(member) = self.roster.member_mut(request.member)
        {
            // What the joiner knows of the document starts where its
            // catch-up starts: from nothing for a replay of the whole
            // history or a resume, from now for a snapshot.
            let known_from = match catchup {
                Catchup::Snapshot => self.version,
                Catchup::History | Catchup::Resume => 0,
            };
            member.versions = VersionReading::Tracked { known_from };
        }
        fx.result = Ok(Done::Nothing);
    }

    /// Adds a read-only watcher.
    pub(super) fn watch(
        &mut self,
        now: Now,
        member: MemberId,
        options: &JoinOptions,
        token: Option<TokenWindow>,
        fx: &mut Effects,
    ) -> Result<(), ReviewError> {
        if self.roster.live_watchers() >= self.limits.max_watchers {
            return Err(ReviewError::exhausted(format!(
                "session {} has too many watchers",
                self.id
            )));
        }
        self.roster.attach(
            member,
            Member::new(MemberKind::Watcher, token, Outbox::new(member, &self.feed)),
            now.at,
        );
        let joiner = Joiner {
            member,
            user: None,
            role: Role::Observer,
            options,
            last_client_sequence: 0,
            token,
            joined_at: None,
        };
        self.catch_up(now, &joiner, fx);
        Ok(())
    }

    /// Queues a joiner's catch-up, exempt from the outbox bound; says which
    /// kind it was.
    pub(super) fn catch_up(&mut self, now: Now, joiner: &Joiner<'_>, fx: &mut Effects) -> Catchup {
        self.catching_up = Some(joiner.member);
        let catchup = self.queue_catch_up(now, joiner, fx);
        self.catching_up = None;
        catchup
    }

    /// How a joiner catches up:
    /// - `want_snapshot`: a snapshot;
    /// - a resume in this epoch whose events are all still kept: exactly
    ///   those events; a resume from another epoch, or without one (epoch 0
    ///   says nothing), or too far back: a snapshot;
    /// - otherwise the history replay (the article's behaviour), as long as
    ///   the kept history starts at the first event; when it does not, a
    ///   client of our protocol gets a snapshot, since a partial replay
    ///   cannot rebuild the state. An article client keeps the replay (its
    ///   proto has no snapshot).
    fn catchup_for(&self, options: &JoinOptions) -> Catchup {
        if options.want_snapshot {
            Catchup::Snapshot
        } else if let Some(after) = options.resume_after {
            let same_epoch = options.epoch == self.epoch;
            if same_epoch && self.history.covers_after(after, self.sequence) {
                Catchup::Resume
            } else {
                Catchup::Snapshot
            }
        } else if options.article_client || self.history.covers_after(0, self.sequence) {
            Catchup::History
        } else {
            Catchup::Snapshot
        }
    }

    /// Joined, then history / resume replay / snapshot, then CAUGHT_UP.
    fn queue_catch_up(&mut self, now: Now, joiner: &Joiner<'_>, fx: &mut Effects) -> Catchup {
        let Joiner {
            member,
            user,
            role,
            options,
            last_client_sequence,
            token,
            joined_at,
        } = *joiner;
        let catchup = self.catchup_for(options);
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
                let version = Some(self.version);
                self.send_to(
                    member,
                    encode_message(&snapshot),
                    MessageKind::Snapshot,
                    version,
                    fx,
                );
            }
            Catchup::History | Catchup::Resume => {
                let after = if catchup == Catchup::Resume {
                    options.resume_after.unwrap_or(0)
                } else {
                    0
                };
                // A resume replays what this client sent as acknowledgements;
                // a replay for a new stream shows the user's earlier events
                // as events, and only this join's own JOINED as its ack.
                let own_from = match catchup {
                    Catchup::Resume => 0,
                    _ => joined_at.unwrap_or(u64::MAX),
                };
                let replay: Vec<(Bytes, i32)> = self
                    .history
                    .after(after)
                    .map(|event| match (&event.author, user) {
                        (Some(author), Some(user))
                            if author == user && event.sequence >= own_from =>
                        {
                            let info = event.ack.clone().unwrap_or(AckInfo {
                                client_sequence: 0,
                                version: 0,
                                comment_id: None,
                            });
                            let mut ack =
                                self.ack_message(now, user, &info, event.sequence, false, false);
                            ack.sequence = event.sequence;
                            (encode_message(&ack), event.version)
                        }
                        _ => (event.framed.clone(), event.version),
                    })
                    .collect();
                for (framed, version) in replay {
                    self.send_to(member, framed, MessageKind::Replay, Some(version), fx);
                }
                // Cursors are ephemeral (not in history): send the current ones.
                let cursors: Vec<(Text, CursorPosition)> = self
                    .roster
                    .users()
                    .filter(|(name, u)| u.present && Some(*name) != user)
                    .filter_map(|(name, u)| u.cursor.clone().map(|c| (name.clone(), c)))
                    .collect();
                for (name, cursor) in cursors {
                    let framed = encode_message(&self.message(now, &name, Payload::Cursor(cursor)));
                    let gate = self.next_index;
                    if let Some(m) = self.roster.member_mut(member) {
                        m.outbox.push_ephemeral(
                            &self.feed,
                            EphemeralKey {
                                user: name,
                                kind: EphemeralKind::Cursor,
                            },
                            framed,
                            gate,
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
        catchup
    }

    /// Takes a member out; if it was its user's stream, its LEFT is
    /// proposed (the log says whether it still is the user's current
    /// stream where that lands).
    pub(super) fn remove_member(&mut self, now: Now, member: MemberId, fx: &mut Effects) {
        let Some((_, detached)) = self.roster.detach(member) else {
            return;
        };
        self.forget_fed();
        fx.unwake(member);
        if let Detached::Participant {
            user,
            live_role: Some(role),
        } = detached
        {
            let body = Body::Presence(store::Presence {
                user_id: user.to_string(),
                role: role.to_wire() as i32,
                joined: false,
                stream: self.stream_of(member).to_string(),
            });
            self.propose(now, body, Author::Nobody, fx);
        }
    }

    /// A participant joined or left (live or replayed): marks it present
    /// or not, and tells everyone but its own stream. Returns the event's
    /// sequence number.
    pub(super) fn announce_presence_change(
        &mut self,
        now: Now,
        user: &Text,
        member: Option<MemberId>,
        role: Role,
        joined: bool,
        fx: &mut Effects,
    ) -> u64 {
        if let Some(state) = self.roster.user_mut(user) {
            state.present = joined;
        }
        let status = if joined {
            Presence::Joined
        } else {
            Presence::Left
        };
        let payload = Payload::Presence(PresenceUpdate {
            status: status as i32,
            role: role.to_wire() as i32,
        });
        let origin = Origin::Participant {
            user,
            member,
            ack: None,
        };
        self.broadcast(now, origin, &payload, fx)
    }
}
