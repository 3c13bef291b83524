//! What participants send: the rate limits, answering resends (dedupe by
//! client sequence), presence, and dispatch to the capability-checked actions.

use super::super::dedupe::{Outcome, REMEMBERED_OUTCOMES, Verdict};
use super::super::validate::{Action, ClientPresence};
use super::*;
use crate::pb::codereview::{PresenceUpdate, presence_update::Status as Presence};

impl Session {
    /// Handles a validated message from a participant.
    pub(super) fn handle(
        &mut self,
        now: Now,
        member: MemberId,
        message: ClientMessage,
        fx: &mut Effects,
    ) {
        let Some((user, ..)) = self.roster.participant_mut(member) else {
            return;
        };
        let client_sequence = message.client_sequence;
        let kind = match &message.action {
            Action::Edit(_) => MessageKind::Edit,
            Action::Comment(_) => MessageKind::Comment,
            Action::Cursor(_) => MessageKind::Cursor,
            Action::Presence(_) => MessageKind::Presence,
            _ => MessageKind::Other,
        };
        self.counters.received[kind as usize] += 1;
        // Cursor moves are idempotent (latest wins): never deduplicated,
        // never remembered, never logged.
        let idempotent = kind == MessageKind::Cursor;
        if let Err(error) = self.handle_inner(now, member, &user, message, fx) {
            // A new number's outcome is logged and remembered (a refused
            // resend or a skipped number leaves the record as it is).
            let is_new = self
                .roster
                .user(&user)
                .is_some_and(|u| u.dedupe.check(client_sequence) == Verdict::New);
            if idempotent {
                let reply = self.error_message(now, client_sequence, &error);
                self.send_message(member, &reply, fx);
                return;
            }
            if client_sequence != 0 && is_new {
                self.log(
                    now,
                    Body::Refused(store::Refused {
                        user_id: user.to_string(),
                        client_sequence,
                        code: error.code().as_i32(),
                        message: error.message.clone(),
                    }),
                );
            }
            let reply = self.error_message(now, client_sequence, &error);
            self.send_message(member, &reply, fx);
            self.remember(&user, client_sequence, Outcome::Error(error));
        }
    }

    pub(super) fn remember(&mut self, user: &Text, client_sequence: u64, outcome: Outcome) {
        if let Some(state) = self.roster.user_mut(user) {
            state.dedupe.remember(client_sequence, outcome);
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
        let Some((_, state, _)) = self.roster.participant_mut(member) else {
            return Ok(());
        };
        // Rate limits: messages and bytes per user.
        state
            .rate
            .take(now.at, 1, message.action.content_bytes(), &limits)?;
        // A number at or below the highest processed one: a resend (answer
        // it again), or a number that was skipped (refuse it: numbers must
        // increase), or one too old to tell (say so).
        let client_sequence = message.client_sequence;
        let verdict = if matches!(message.action, Action::Cursor(_)) {
            Verdict::New
        } else {
            state.dedupe.check(client_sequence)
        };
        let reply = match verdict {
            Verdict::New => None,
            Verdict::Resend(Outcome::Ack(ack)) => Some(Payload::Ack(Ack {
                duplicate: true,
                ..ack
            })),
            Verdict::Resend(Outcome::Error(error)) => Some(Payload::Error(pb::Error {
                code: error.code().as_i32(),
                message: error.message,
                client_sequence,
            })),
            Verdict::Forgotten => {
                let error = ReviewError::new(
                    ErrorKind::FailedPrecondition,
                    format!(
                        "client_sequence {client_sequence} is older than the last {REMEMBERED_OUTCOMES} \
                         outcomes remembered: whether it was applied is unknown; take a snapshot"
                    ),
                );
                Some(Payload::Error(pb::Error {
                    code: error.code().as_i32(),
                    message: error.message,
                    client_sequence,
                }))
            }
            Verdict::Skipped { highest } => {
                return Err(ReviewError::invalid(format!(
                    "client_sequence {client_sequence} was never processed and is not above your highest ({highest}): \
                     client sequence numbers must increase; nothing was applied"
                )));
            }
        };
        if let Some(reply) = reply {
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
                    if let Some(state) = self.roster.user_mut(user) {
                        state.idle = true;
                    }
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
