//! Who is in a session: the user records (kept while the session lives, so
//! a resume finds its dedupe state and its bridge) and the live members
//! (streams: participants and watchers), and the one invariant between
//! them, kept here and nowhere else:
//!
//! > a user's `live` names a member exactly when that member is a
//! > participant stream of that user.
//!
//! Only [`Roster::attach`] and [`Roster::detach`] change membership, so the
//! rest of the session never has to keep two maps in step.

use std::time::Instant;

use super::super::bridge::Bridge;
use super::super::dedupe::Dedupe;
use super::super::error::ReviewError;
use super::super::ids::{Text, UserMap};
use super::super::limits::Limits;
use super::super::outbox::Outbox;
use super::super::roles::Role;
use super::{MemberId, TokenWindow};
use crate::pb::codereview::CursorPosition;

/// What the session keeps of a user (participant) across its streams.
///
/// `role`, `present`, `stream`, `departed_at`, `dedupe` and `bridge` are
/// the log's: every replica of the session holds the same values, and
/// snapshots keep them. `live`, `idle`, `last_activity` and `cursor` are
/// this process's view (its own streams, ephemeral news).
#[derive(Debug)]
pub(super) struct UserState {
    pub role: Role,
    /// The user's stream in this process, if one is open (see the module
    /// invariant).
    live: Option<MemberId>,
    /// Joined and not left, as the log says (a stream here or in another
    /// instance, or, while the log is replayed after a restart, one that was
    /// live before it).
    pub present: bool,
    /// The stream that made the user present ("<instance>/<member>").
    pub stream: Option<Text>,
    /// The index of the record that made the user leave (0: never left):
    /// the oldest departure makes room first when the table is full.
    pub departed_at: u64,
    pub idle: bool,
    pub last_activity: Instant,
    pub dedupe: Dedupe,
    pub bridge: Bridge,
    pub cursor: Option<CursorPosition>,
}

impl UserState {
    pub fn live(&self) -> Option<MemberId> {
        self.live
    }
}

#[derive(Debug)]
pub(super) enum MemberKind {
    Participant(Text),
    Watcher,
}

/// How the `version` of a participant's edits is to be read.
///
/// Our protocol says an edit's `version` is the document version it was
/// based on, and clients that start with a `Join` keep to it. The article's
/// clients know nothing of versions and always send 0: their edits are
/// based on what the server has delivered to them so far (the outbox knows),
/// and among concurrent replaces of one line theirs wins (last writer wins),
/// so every edit they make is applied and broadcast.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum VersionReading {
    /// Versions are bases; one below `known_from` (the version the stream's
    /// catch-up started from) cannot come from a client that tracks them,
    /// so it is read as "not tracked" instead.
    Tracked { known_from: i32 },
    /// Not tracked (yet): a non-zero version switches to `Tracked`.
    Untracked,
}

/// One live stream.
#[derive(Debug)]
pub(super) struct Member {
    pub kind: MemberKind,
    pub outbox: Outbox,
    pub token: Option<TokenWindow>,
    pub warned: bool,
    pub versions: VersionReading,
}

impl Member {
    pub fn new(kind: MemberKind, token: Option<TokenWindow>, outbox: Outbox) -> Member {
        Member {
            kind,
            outbox,
            token,
            warned: false,
            versions: VersionReading::Untracked,
        }
    }
}

/// A member taken out of the roster.
pub(super) enum Detached {
    Watcher,
    /// A participant's stream; `role` when it was its user's live stream
    /// (its user is gone from the session now), None when a newer stream
    /// of the user had replaced it.
    Participant {
        user: Text,
        live_role: Option<Role>,
    },
}

/// How many user records a session keeps: its participants and as many
/// departed ones (for their resumes).
fn user_capacity(limits: &Limits) -> usize {
    limits.max_participants.saturating_mul(2).max(1)
}

#[derive(Debug, Default)]
pub(super) struct Roster {
    users: UserMap<UserState>,
    members: Members,
    live_participants: usize,
    live_watchers: usize,
}

/// A session's live members in id order (the order everything is sent to
/// them in). A sorted Vec, not a BTreeMap: a B-tree leaf holds room for 11
/// members inline (about 2 KiB), which a session of two would pay for idle.
/// Lookups are binary searches; joining or leaving moves the members after
/// it (a session's members are bounded by its participant and watcher limits).
#[derive(Debug, Default)]
struct Members(Vec<(MemberId, Member)>);

impl Members {
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn position(&self, id: &MemberId) -> Result<usize, usize> {
        self.0.binary_search_by(|(key, _)| key.cmp(id))
    }

    fn get(&self, id: &MemberId) -> Option<&Member> {
        let at = self.position(id).ok()?;
        Some(&self.0[at].1)
    }

    fn get_mut(&mut self, id: &MemberId) -> Option<&mut Member> {
        let at = self.position(id).ok()?;
        Some(&mut self.0[at].1)
    }

    fn insert(&mut self, id: MemberId, member: Member) {
        match self.position(&id) {
            Ok(at) => self.0[at].1 = member,
            Err(at) => self.0.insert(at, (id, member)),
        }
    }

    fn remove(&mut self, id: &MemberId) -> Option<Member> {
        let at = self.position(id).ok()?;
        let (_, member) = self.0.remove(at);
        if self.0.is_empty() {
            // Nobody left: the session keeps no room for members.
            self.0 = Vec::new();
        }
        Some(member)
    }

    fn iter(&self) -> impl Iterator<Item = (&MemberId, &Member)> {
        self.0.iter().map(|(id, member)| (id, member))
    }

    fn iter_mut(&mut self) -> impl Iterator<Item = (&MemberId, &mut Member)> {
        self.0.iter_mut().map(|(id, member)| (&*id, member))
    }
}

impl Roster {
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    pub fn live_participants(&self) -> usize {
        self.live_participants
    }

    pub fn live_watchers(&self) -> usize {
        self.live_watchers
    }

    pub fn member(&self, id: MemberId) -> Option<&Member> {
        self.members.get(&id)
    }

    pub fn member_mut(&mut self, id: MemberId) -> Option<&mut Member> {
        self.members.get_mut(&id)
    }

    pub fn members(&self) -> impl Iterator<Item = (MemberId, &Member)> {
        self.members.iter().map(|(id, m)| (*id, m))
    }

    pub fn members_mut(&mut self) -> impl Iterator<Item = (MemberId, &mut Member)> {
        self.members.iter_mut().map(|(id, m)| (*id, m))
    }

    pub fn member_ids(&self) -> Vec<MemberId> {
        self.members.iter().map(|(id, _)| *id).collect()
    }

    pub fn user(&self, name: &str) -> Option<&UserState> {
        self.users.get(name)
    }

    /// The shared name of a known user (cloning it copies no bytes).
    pub fn user_name(&self, name: &str) -> Option<&Text> {
        self.users.get_key_value(name).map(|(name, _)| name)
    }

    pub fn user_mut(&mut self, name: &str) -> Option<&mut UserState> {
        self.users.get_mut(name)
    }

    pub fn users(&self) -> impl Iterator<Item = (&Text, &UserState)> {
        self.users.iter()
    }

    pub fn users_mut(&mut self) -> impl Iterator<Item = (&Text, &mut UserState)> {
        self.users.iter_mut()
    }

    pub fn user_count(&self) -> usize {
        self.users.len()
    }

    /// The participant stream `member`, with its user's name and record.
    pub fn participant_mut(
        &mut self,
        member: MemberId,
    ) -> Option<(Text, &mut UserState, &mut Member)> {
        let m = self.members.get_mut(&member)?;
        let MemberKind::Participant(name) = &m.kind else {
            return None;
        };
        let user = self.users.get_mut(name)?;
        Some((name.clone(), user, m))
    }

    /// Whether a user could get a record now: it has one, the table has
    /// room, or a departed user's record can make room (decided before a
    /// join is proposed).
    pub fn can_admit(&self, name: &str, limits: &Limits) -> Result<(), ReviewError> {
        if self.users.contains_key(name)
            || self.users.len() < user_capacity(limits)
            || self.users.values().any(|u| !u.present && u.live.is_none())
        {
            Ok(())
        } else {
            Err(ReviewError::exhausted(
                "too many participants in this session",
            ))
        }
    }

    /// The user's record, created if it is new; the record of the user who
    /// departed longest ago makes room when the table is full (decided by
    /// the log alone, so every replica evicts the same user). Applying the
    /// log never refuses: when nobody can make room the table grows past
    /// its capacity (joins are refused before that, see [`Roster::can_admit`]).
    pub fn ensure_user(
        &mut self,
        name: &Text,
        role: Role,
        now: Instant,
        version: i32,
        limits: &Limits,
    ) -> &mut UserState {
        if !self.users.contains_key(name) {
            self.make_room_for_user(limits);
            self.users.insert(
                name.clone(),
                UserState {
                    role,
                    live: None,
                    present: false,
                    stream: None,
                    departed_at: 0,
                    idle: false,
                    last_activity: now,
                    dedupe: Dedupe::default(),
                    bridge: Bridge::new(version),
                    cursor: None,
                },
            );
        }
        self.users.get_mut(name).expect("inserted above")
    }

    fn make_room_for_user(&mut self, limits: &Limits) {
        if self.users.len() < user_capacity(limits) {
            return;
        }
        let oldest = self
            .users
            .iter()
            .filter(|(_, u)| !u.present && u.live.is_none())
            .min_by_key(|(name, u)| (u.departed_at, *name))
            .map(|(name, _)| name.clone());
        if let Some(name) = oldest {
            self.users.remove(&name);
        }
    }

    /// Adds a stream. A participant's user must have a record; its older
    /// stream, if any, is taken out and returned (a newer stream of the
    /// same user replaces it).
    pub fn attach(&mut self, id: MemberId, member: Member, now: Instant) -> Option<MemberId> {
        let replaced = match &member.kind {
            MemberKind::Watcher => {
                self.live_watchers += 1;
                None
            }
            MemberKind::Participant(name) => {
                let user = self
                    .users
                    .get_mut(name)
                    .expect("a participant's user has a record (ensure_user first)");
                let replaced = user.live.replace(id);
                user.idle = false;
                user.last_activity = now;
                match replaced {
                    Some(old) => {
                        self.members.remove(&old);
                    }
                    None => self.live_participants += 1,
                }
                replaced
            }
        };
        self.members.insert(id, member);
        self.debug_check();
        replaced
    }

    /// Takes a stream out.
    pub fn detach(&mut self, id: MemberId) -> Option<(Member, Detached)> {
        let member = self.members.remove(&id)?;
        let detached = match &member.kind {
            MemberKind::Watcher => {
                self.live_watchers -= 1;
                Detached::Watcher
            }
            MemberKind::Participant(name) => {
                let user = self.users.get_mut(name);
                let live_role = match user {
                    Some(user) if user.live == Some(id) => {
                        user.live = None;
                        self.live_participants -= 1;
                        Some(user.role)
                    }
                    _ => None,
                };
                Detached::Participant {
                    user: name.clone(),
                    live_role,
                }
            }
        };
        self.debug_check();
        Some((member, detached))
    }

    /// The invariant (see the module doc), checked in debug builds.
    fn debug_check(&self) {
        if cfg!(debug_assertions) {
            let mut live = 0;
            for (name, user) in &self.users {
                if let Some(id) = user.live {
                    live += 1;
                    assert!(
                        matches!(self.members.get(&id).map(|m| &m.kind), Some(MemberKind::Participant(n)) if n == name),
                        "user {name}'s live stream {id} is not its participant"
                    );
                }
            }
            for (id, member) in self.members.iter() {
                if let MemberKind::Participant(name) = &member.kind {
                    assert_eq!(self.users.get(name).and_then(|u| u.live), Some(*id));
                }
            }
            assert_eq!(live, self.live_participants);
        }
    }
}
