//! Reading and time: snapshots, idle detection, token warnings and expiry,
//! and the drain at shutdown.

use super::*;
use crate::pb::codereview::{Participant, presence_update::Status as Presence};

impl Session {
    /// The whole state, as a late joiner or `GetSnapshot` sees it.
    pub fn snapshot(&self) -> pb::Snapshot {
        let mut participants: Vec<Participant> = self
            .roster
            .users()
            .filter(|(_, u)| u.present)
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
            files: self.file_contents(),
            comments: self.comments.to_vec(),
            participants,
        }
    }

    /// Periodic work: IDLE after silence, token warnings and expiry.
    pub(super) fn tick(&mut self, now: Now, fx: &mut Effects) {
        let idle_after = self.limits.idle_after;
        let newly_idle: Vec<(Text, Role)> = self
            .roster
            .users_mut()
            .filter(|(_, u)| {
                u.live().is_some()
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
        for (id, member) in self.roster.members_mut() {
            let Some(token) = member.token else { continue };
            if now.unix_ms >= token.expires_at_ms {
                expired.push(id);
            } else if !member.warned && now.unix_ms >= token.warn_at_ms {
                member.warned = true;
                warn.push((id, token.expires_at_ms));
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
    }

    /// A member presented a fresh token.
    pub(super) fn refresh_token(
        &mut self,
        now: Now,
        member: MemberId,
        token: TokenWindow,
        fx: &mut Effects,
    ) {
        if let Some(m) = self.roster.member_mut(member) {
            m.token = Some(token);
            m.warned = false;
            let notice = self.notice(
                now,
                NoticeKind::TokenRefreshed,
                "token refreshed",
                token.expires_at_ms,
            );
            self.send_message(member, &notice, fx);
        }
    }

    /// Tells every member the server is going away (by `deadline_ms`).
    pub(super) fn announce_drain(&mut self, now: Now, deadline_ms: i64, fx: &mut Effects) {
        let notice = encode_message(&self.notice(
            now,
            NoticeKind::GoingAway,
            "server shutting down: reconnect and resume",
            deadline_ms,
        ));
        let members = self.roster.member_ids();
        for member in members {
            self.send_to(member, notice.clone(), MessageKind::Notice, None, fx);
        }
    }

    /// Ends every member with `error` (drain deadline reached).
    pub(super) fn close_all(&mut self, now: Now, error: &ReviewError, fx: &mut Effects) {
        let members = self.roster.member_ids();
        for member in members {
            self.remove_member(now, member, fx);
            fx.closed.push((member, error.clone()));
        }
        self.overflowed.clear();
    }

    /// Users present through streams of processes that are gone leave: no
    /// ghost stays in presence after a restart, or after an instance died
    /// (its lease expired). Several instances may propose the same LEFT;
    /// the log applies the first and ignores the rest.
    pub(super) fn reap(&mut self, now: Now, gone: &Departed, fx: &mut Effects) {
        let mut ghosts: Vec<(Text, Role, Text)> = self
            .roster
            .users()
            .filter(|(_, u)| u.present && u.live().is_none())
            .filter_map(|(name, u)| {
                let stream = u.stream.clone()?;
                let instance = stream.rsplit_once('/').map_or(&*stream, |(i, _)| i);
                let is_gone = match gone {
                    Departed::AllButThis => true,
                    Departed::Instances(instances) => instances.contains(instance),
                };
                is_gone.then(|| (name.clone(), u.role, stream))
            })
            .collect();
        ghosts.sort_by(|a, b| a.0.cmp(&b.0));
        for (user, role, stream) in ghosts {
            let body = Body::Presence(store::Presence {
                user_id: user.to_string(),
                role: role.to_wire() as i32,
                joined: false,
                stream: stream.to_string(),
            });
            self.propose(now, body, Author::Nobody, fx);
        }
    }

    /// The instances whose streams make users present here (for the
    /// registry's liveness checks).
    pub fn remote_instances(&self) -> BTreeSet<Text> {
        let this = format!("{}/", self.instance);
        self.roster
            .users()
            .filter(|(_, u)| u.present && u.live().is_none())
            .filter_map(|(_, u)| u.stream.as_ref())
            .filter(|stream| !stream.starts_with(&this))
            .filter_map(|stream| stream.rsplit_once('/').map(|(i, _)| Arc::from(i)))
            .collect()
    }

    /// Another instance's ephemeral news: its members' cursors and idle
    /// or active status, for every member here.
    pub(super) fn receive_ephemeral(
        &mut self,
        now: Now,
        user: Text,
        framed: Bytes,
        fx: &mut Effects,
    ) {
        let _ = now;
        let header = crate::grpc::codec::HEADER_LEN;
        let Some(message) = framed
            .get(header..)
            .and_then(|body| <SessionMessage as prost::Message>::decode(body).ok())
        else {
            return;
        };
        let (kind, counted) = match &message.payload {
            Some(Payload::Cursor(cursor)) => {
                if let Some(state) = self.roster.user_mut(&user) {
                    state.cursor = Some(cursor.clone());
                }
                (EphemeralKind::Cursor, MessageKind::Cursor)
            }
            Some(Payload::Presence(update)) => {
                if let Some(state) = self.roster.user_mut(&user) {
                    state.idle = update.status == Presence::Idle as i32;
                }
                (EphemeralKind::Presence, MessageKind::Presence)
            }
            _ => return,
        };
        self.push_ephemeral(&user, kind, counted, framed, None, fx);
    }
}
