//! Reading and time: snapshots, idle detection, token warnings and expiry,
//! and the drain at shutdown.

use super::*;

impl Session {
    /// The whole state, as a late joiner or `GetSnapshot` sees it.
    pub fn snapshot(&self) -> pb::Snapshot {
        let mut participants: Vec<Participant> = self
            .users
            .iter()
            .filter(|(_, u)| u.live.is_some())
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
            files: self
                .doc
                .files()
                .map(|(path, lines)| FileContent {
                    file_path: path.to_string(),
                    lines: lines.iter().map(|l| l.to_string()).collect(),
                    version: 0,
                })
                .collect(),
            comments: self.comments.entries().to_vec(),
            participants,
        }
    }

    /// Periodic work: IDLE after silence, token warnings and expiry.
    pub fn tick(&mut self, now: Now, fx: &mut Effects) {
        let idle_after = self.limits.idle_after;
        let newly_idle: Vec<(Text, Role)> = self
            .users
            .iter_mut()
            .filter(|(_, u)| {
                u.live.is_some()
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
        for (id, member) in self.members.iter_mut() {
            let Some(token) = member.token else { continue };
            if now.unix_ms >= token.expires_at_ms {
                expired.push(*id);
            } else if !member.warned && now.unix_ms >= token.warn_at_ms {
                member.warned = true;
                warn.push((*id, token.expires_at_ms));
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
        self.settle(now, fx);
    }

    /// A member presented a fresh token.
    pub fn refresh_token(
        &mut self,
        now: Now,
        member: MemberId,
        token: TokenWindow,
        fx: &mut Effects,
    ) {
        if let Some(m) = self.members.get_mut(&member) {
            m.token = Some(token);
            m.warned = false;
            let notice = self.notice(
                now,
                NoticeKind::TokenRefreshed,
                "token refreshed",
                token.expires_at_ms,
            );
            self.send_message(member, &notice, fx);
            self.settle(now, fx);
        }
    }

    /// Tells every member the server is going away (by `deadline_ms`).
    pub fn announce_drain(&mut self, now: Now, deadline_ms: i64, fx: &mut Effects) {
        let notice = encode_message(&self.notice(
            now,
            NoticeKind::GoingAway,
            "server shutting down: reconnect and resume",
            deadline_ms,
        ));
        let members: Vec<MemberId> = self.members.keys().copied().collect();
        for member in members {
            self.send_to(member, notice.clone(), MessageKind::Notice, None, fx);
        }
        self.settle(now, fx);
    }

    /// Ends every member with `error` (drain deadline reached).
    pub fn close_all(&mut self, now: Now, error: &ReviewError, fx: &mut Effects) {
        let members: Vec<MemberId> = self.members.keys().copied().collect();
        for member in members {
            self.remove_member(now, member, fx);
            fx.closed.push((member, error.clone()));
        }
        self.overflowed.clear();
    }
}
