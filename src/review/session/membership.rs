//! Joining (as a participant or a watcher), the catch-up a joiner gets
//! (history, resume replay or snapshot, then CAUGHT_UP), and leaving.

use super::*;

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
}

impl Session {
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
        self.ensure_user(now, &request.user_id, request.role)?;
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
                versions: VersionReading::Untracked,
            },
        );
        let joiner = Joiner {
            member: request.member,
            user: Some(&request.user_id),
            role: request.role,
            options: &request.options,
            last_client_sequence,
            token: request.token,
        };
        let catchup = self.catch_up(now, &joiner, fx);
        if !request.options.article_client
            && let Some(member) = self.members.get_mut(&request.member)
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
                versions: VersionReading::Untracked,
            },
        );
        let joiner = Joiner {
            member,
            user: None,
            role: Role::Observer,
            options,
            last_client_sequence: 0,
            token,
        };
        self.catch_up(now, &joiner, fx);
        self.settle(now, fx);
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
                let replay: Vec<(Bytes, i32)> = self
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
        catchup
    }

    /// The user's record, created (with a full rate allowance) if it is new.
    pub(super) fn ensure_user(
        &mut self,
        now: Now,
        user: &Text,
        role: Role,
    ) -> Result<&mut UserState, ReviewError> {
        if !self.users.contains_key(user) {
            self.make_room_for_user()?;
            self.users.insert(
                user.clone(),
                UserState {
                    role,
                    live: None,
                    idle: false,
                    last_activity: now.at,
                    departed_at: None,
                    last_client_sequence: 0,
                    outcomes: VecDeque::new(),
                    forgotten_up_to: 0,
                    bridge: VecDeque::new(),
                    synced_to: self.version,
                    bridge_floor: self.version,
                    cursor: None,
                    rate: RateLimiter::new(&self.limits, now.at),
                },
            );
        }
        Ok(self.users.get_mut(user).expect("inserted above"))
    }

    /// Evicts the user record that departed longest ago, if the table is full.
    pub(super) fn make_room_for_user(&mut self) -> Result<(), ReviewError> {
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

    pub(super) fn remove_member(&mut self, now: Now, member: MemberId, fx: &mut Effects) {
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
}
