//! One review session of the tonic peer: who is in it (each with the sending
//! half of its own unbounded channel), the last [`HISTORY`] messages, the
//! document version, the files and the comments.
//!
//! The article's semantics: every message of a participant goes to every
//! other participant of the session (not back to its sender, by user id);
//! an edit is stamped with the next document version ("OT" that only bumps a
//! counter); a joiner gets the history replayed, then the others hear it
//! JOINED; a participant that leaves is announced LEFT. Presence updates are
//! kept in the history too, so a joiner learns who is there even when the
//! others joined with the protocol's `Join` (which is not broadcast).

use std::collections::{BTreeMap, VecDeque};

use tokio::sync::mpsc::UnboundedSender;
use tonic::Status;

use crate::pb::{
    CodeEdit, CommentEntry, FileContent, Participant, PresenceUpdate, SessionMessage, Snapshot,
    code_edit::Op, presence_update::Status as Presence, session_message::Payload,
};

/// How many messages a joiner gets replayed (the article's buffer).
pub const HISTORY: usize = 1000;

/// Where a member's messages go: the response stream of its call.
pub type Outbox = UnboundedSender<Result<SessionMessage, Status>>;

/// A participant (with a user id) or a watcher (without).
struct Member {
    id: u64,
    user: Option<String>,
    outbox: Outbox,
}

#[derive(Default)]
pub struct Session {
    members: Vec<Member>,
    next_member: u64,
    history: VecDeque<SessionMessage>,
    version: i32,
    files: BTreeMap<String, Vec<String>>,
    comments: Vec<CommentEntry>,
}

impl Session {
    /// Adds a member, replays the history to it, and (for a participant)
    /// tells the others it joined. Returns the member's id.
    pub fn join(&mut self, session_id: &str, user: Option<String>, outbox: Outbox) -> u64 {
        for message in &self.history {
            let _ = outbox.send(Ok(message.clone()));
        }
        let id = self.next_member;
        self.next_member += 1;
        self.members.push(Member {
            id,
            user: user.clone(),
            outbox,
        });
        if let Some(user) = user {
            self.publish(presence(session_id, &user, Presence::Joined), &user);
        }
        id
    }

    /// Removes a member; a participant's leaving is announced.
    pub fn leave(&mut self, session_id: &str, id: u64) {
        let Some(at) = self.members.iter().position(|m| m.id == id) else {
            return;
        };
        let member = self.members.remove(at);
        if let Some(user) = member.user {
            self.publish(presence(session_id, &user, Presence::Left), &user);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// A participant's message: applied as the article does, sent to every
    /// other member, kept for joiners.
    pub fn receive(&mut self, mut message: SessionMessage, from: &str) {
        match &mut message.payload {
            Some(Payload::Edit(edit)) => {
                self.version += 1;
                edit.version = self.version;
                self.apply(edit);
            }
            Some(Payload::Comment(comment)) => self.comments.push(CommentEntry {
                user_id: from.to_owned(),
                comment: Some(comment.clone()),
                sequence: 0,
                timestamp: message.timestamp,
            }),
            _ => {}
        }
        self.publish(message, from);
    }

    /// Uploaded files replace what the session had under their paths; each
    /// is announced as a FileContent. Returns the version after them.
    pub fn upload(&mut self, session_id: &str, files: Vec<(String, Vec<String>)>) -> i32 {
        for (path, lines) in files {
            self.version += 1;
            self.files.insert(path.clone(), lines.clone());
            let message = SessionMessage {
                session_id: session_id.to_owned(),
                payload: Some(Payload::File(FileContent {
                    file_path: path,
                    lines,
                    version: self.version,
                })),
                ..SessionMessage::default()
            };
            self.publish(message, "");
        }
        self.version
    }

    pub fn snapshot(&self, session_id: &str) -> Snapshot {
        Snapshot {
            session_id: session_id.to_owned(),
            session_epoch: 0,
            sequence: 0,
            version: self.version,
            files: self
                .files
                .iter()
                .map(|(path, lines)| FileContent {
                    file_path: path.clone(),
                    lines: lines.clone(),
                    version: self.version,
                })
                .collect(),
            comments: self.comments.clone(),
            participants: self
                .members
                .iter()
                .filter_map(|m| m.user.clone())
                .map(|user_id| Participant {
                    user_id,
                    status: Presence::Active as i32,
                    ..Participant::default()
                })
                .collect(),
        }
    }

    /// Sends `message` to every member but the user `from`, dropping the
    /// members whose call is gone, and keeps it in the history.
    fn publish(&mut self, message: SessionMessage, from: &str) {
        self.members.retain(|member| {
            member.user.as_deref() == Some(from) || member.outbox.send(Ok(message.clone())).is_ok()
        });
        if self.history.len() == HISTORY {
            self.history.pop_front();
        }
        self.history.push_back(message);
    }

    /// The edit applied to the file as it comes (no transformation): replace
    /// past the end pads with empty lines; insert past the end appends;
    /// delete past the end does nothing.
    fn apply(&mut self, edit: &CodeEdit) {
        let lines = self.files.entry(edit.file_path.clone()).or_default();
        let line = usize::try_from(edit.line_number).unwrap_or(0);
        match Op::try_from(edit.op).unwrap_or(Op::Replace) {
            // Not a limit, a guard: a stray line number must not allocate
            // gigabytes on a benchmark machine.
            Op::Replace if line > lines.len() + 100_000 => {}
            Op::Replace => {
                if line >= lines.len() {
                    lines.resize(line + 1, String::new());
                }
                lines[line] = edit.content.clone();
            }
            Op::Insert => lines.insert(line.min(lines.len()), edit.content.clone()),
            Op::Delete => {
                if line < lines.len() {
                    lines.remove(line);
                }
            }
        }
    }
}

fn presence(session_id: &str, user: &str, status: Presence) -> SessionMessage {
    SessionMessage {
        session_id: session_id.to_owned(),
        timestamp: now_unix_ms(),
        user_id: user.to_owned(),
        payload: Some(Payload::Presence(PresenceUpdate {
            status: status as i32,
            role: 0,
        })),
        ..SessionMessage::default()
    }
}

pub fn now_unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
