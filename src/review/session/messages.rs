//! What participants send: the rate limit, answering resends (dedupe by
//! client sequence), presence, and dispatch to the capability-checked actions.

use super::*;

impl Session {
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
            let is_new_number = self
                .users
                .get(&user)
                .is_some_and(|u| client_sequence > u.last_client_sequence);
            if is_new_number {
                self.remember(&user, client_sequence, Outcome::Error(error));
            }
        }
        self.settle(now, fx);
    }

    pub(super) fn remember(&mut self, user: &Text, client_sequence: u64, outcome: Outcome) {
        if let Some(state) = self.users.get_mut(user) {
            state.last_client_sequence = state.last_client_sequence.max(client_sequence);
            state.outcomes.push_back((client_sequence, outcome));
            if state.outcomes.len() > REMEMBERED_OUTCOMES
                && let Some((forgotten, _)) = state.outcomes.pop_front()
            {
                state.forgotten_up_to = forgotten;
            }
        }
    }

    pub(super) fn handle_inner(
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
        // Rate limits: messages and bytes per user.
        state
            .rate
            .admit(now.at, 1, message.action.content_bytes(), &limits)?;
        // A number at or below the highest processed one: a resend (answer
        // it again), or a number that was skipped (refuse it: numbers must
        // increase), or one too old to tell (say so).
        let client_sequence = message.client_sequence;
        if client_sequence != 0 && client_sequence <= state.last_client_sequence {
            let remembered = state
                .outcomes
                .binary_search_by_key(&client_sequence, |(s, _)| *s)
                .ok()
                .map(|index| state.outcomes[index].1.clone());
            let reply = match remembered {
                Some(Outcome::Ack(ack)) => Payload::Ack(Ack {
                    duplicate: true,
                    ..ack
                }),
                Some(Outcome::Error(error)) => Payload::Error(pb::Error {
                    code: error.code().as_i32(),
                    message: error.message,
                    client_sequence,
                }),
                None if client_sequence <= state.forgotten_up_to => {
                    let error = ReviewError::new(
                        ErrorKind::FailedPrecondition,
                        format!(
                            "client_sequence {client_sequence} is older than the last {REMEMBERED_OUTCOMES} \
                             outcomes remembered: whether it was applied is unknown; take a snapshot"
                        ),
                    );
                    Payload::Error(pb::Error {
                        code: error.code().as_i32(),
                        message: error.message,
                        client_sequence,
                    })
                }
                None => {
                    return Err(ReviewError::invalid(format!(
                        "client_sequence {client_sequence} was never processed and is not above your highest ({}): \
                         client sequence numbers must increase; nothing was applied",
                        state.last_client_sequence
                    )));
                }
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

    pub(super) fn announce_presence(
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
}
