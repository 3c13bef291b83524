//! Session messages for tests: builders of what participants send, readers
//! of what arrives, and the checks of the total order (dense essential
//! sequence numbers, one order for everyone).

use std::collections::BTreeMap;

use codereview::pb::codereview::{
    Ack, CodeEdit, Comment, CursorPosition, Error, FileChunk, Join, Joined, Notice, PresenceUpdate,
    SessionMessage, TokenRefresh, code_edit::Op, joined::Catchup, notice::Kind as NoticeKind,
    presence_update::Status as Presence, session_message::Payload,
};

// ----- building -----

/// A message from `user` in `session` (no client sequence).
pub fn message(session: &str, user: &str, payload: Option<Payload>) -> SessionMessage {
    SessionMessage {
        session_id: session.to_owned(),
        user_id: user.to_owned(),
        payload,
        ..SessionMessage::default()
    }
}

/// The first message of a stream: a plain `Join`.
pub fn join_message(session: &str, user: &str) -> SessionMessage {
    join_message_with(session, user, Join::default())
}

/// The first message of a stream: `join` (a snapshot, a resume).
pub fn join_message_with(session: &str, user: &str, join: Join) -> SessionMessage {
    message(session, user, Some(Payload::Join(join)))
}

/// An edit based on document `version`.
pub fn edit(op: Op, file: &str, line: i32, content: &str, version: i32) -> Payload {
    Payload::Edit(CodeEdit {
        file_path: file.to_owned(),
        line_number: line,
        content: content.to_owned(),
        version,
        op: op as i32,
    })
}

pub fn comment(file: &str, line: i32, text: &str) -> Payload {
    Payload::Comment(Comment {
        comment_id: String::new(),
        line_number: line,
        text: text.to_owned(),
        file_path: file.to_owned(),
    })
}

pub fn cursor(file: &str, line: i32, column: i32) -> Payload {
    Payload::Cursor(CursorPosition {
        file_path: file.to_owned(),
        line,
        column,
    })
}

pub fn presence(status: Presence) -> Payload {
    Payload::Presence(PresenceUpdate {
        status: status as i32,
        role: 0,
    })
}

pub fn token_refresh(token: &str) -> Payload {
    Payload::TokenRefresh(TokenRefresh {
        token: token.to_owned(),
    })
}

/// One chunk of an upload.
pub fn chunk(session: &str, file: &str, content: impl AsRef<[u8]>) -> FileChunk {
    FileChunk {
        session_id: session.to_owned(),
        file_path: file.to_owned(),
        content: content.as_ref().to_vec().into(),
    }
}

/// `len` pseudo-random letters and digits: text gzip cannot shrink much.
pub fn incompressible_line(len: usize) -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    let mut state = 0x2545_f491_4f6c_dd1du64;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            ALPHABET[(state % ALPHABET.len() as u64) as usize] as char
        })
        .collect()
}

// ----- reading -----

pub fn as_edit(m: &SessionMessage) -> Option<&CodeEdit> {
    match &m.payload {
        Some(Payload::Edit(e)) => Some(e),
        _ => None,
    }
}

pub fn as_ack(m: &SessionMessage) -> Option<&Ack> {
    match &m.payload {
        Some(Payload::Ack(a)) => Some(a),
        _ => None,
    }
}

pub fn as_error(m: &SessionMessage) -> Option<&Error> {
    match &m.payload {
        Some(Payload::Error(e)) => Some(e),
        _ => None,
    }
}

pub fn as_notice(m: &SessionMessage, kind: NoticeKind) -> Option<&Notice> {
    match &m.payload {
        Some(Payload::Notice(n)) if n.kind == kind as i32 => Some(n),
        _ => None,
    }
}

pub fn is_caught_up(m: &SessionMessage) -> bool {
    as_notice(m, NoticeKind::CaughtUp).is_some()
}

/// `(user, status)` of a presence message.
pub fn presence_of(m: &SessionMessage) -> Option<(&str, Presence)> {
    match &m.payload {
        Some(Payload::Presence(p)) => Some((
            m.user_id.as_str(),
            Presence::try_from(p.status).expect("a known status"),
        )),
        _ => None,
    }
}

pub fn is_presence(m: &SessionMessage, user: &str, status: Presence) -> bool {
    presence_of(m) == Some((user, status))
}

pub fn catchup_of(joined: &Joined) -> Catchup {
    Catchup::try_from(joined.catchup).expect("a known catch-up kind")
}

/// The essential sequence number a message accounts for, if any: edits,
/// comments, uploads, JOINED/LEFT, and (non-duplicate) acks of the
/// receiver's own essential actions.
pub fn essential_sequence(m: &SessionMessage) -> Option<u64> {
    match &m.payload {
        Some(Payload::Edit(_) | Payload::Comment(_) | Payload::File(_)) => Some(m.sequence),
        Some(Payload::Presence(p))
            if p.status == Presence::Joined as i32 || p.status == Presence::Left as i32 =>
        {
            Some(m.sequence)
        }
        Some(Payload::Ack(a)) if a.sequence != 0 && !a.duplicate => Some(a.sequence),
        _ => None,
    }
}

/// Checks that essential sequence numbers come densely: each exactly the
/// previous plus one.
#[derive(Debug, Clone)]
pub struct Dense {
    pub last: u64,
    pub label: String,
}

impl Dense {
    pub fn after(last: u64, label: impl Into<String>) -> Dense {
        Dense {
            last,
            label: label.into(),
        }
    }

    /// Feeds one message; returns its essential sequence number if it has one.
    pub fn observe(&mut self, m: &SessionMessage) -> Option<u64> {
        let sequence = essential_sequence(m)?;
        assert_eq!(
            sequence,
            self.last + 1,
            "{}: essential sequence numbers must be dense (no loss, no duplicate): {m:?}",
            self.label
        );
        self.last = sequence;
        Some(sequence)
    }
}

/// What each participant records of the total order: sequence -> (user,
/// what, version).
pub type Order = BTreeMap<u64, (String, &'static str, i32)>;

/// Records an essential event in `order` as `me` sees it.
pub fn record(order: &mut Order, me: &str, m: &SessionMessage) {
    let Some(sequence) = essential_sequence(m) else {
        return;
    };
    let entry = match &m.payload {
        Some(Payload::Edit(e)) => (m.user_id.clone(), "edit", e.version),
        Some(Payload::Ack(a)) => (me.to_owned(), "own", a.version),
        Some(Payload::Presence(p)) if p.status == Presence::Joined as i32 => {
            (m.user_id.clone(), "joined", -1)
        }
        Some(Payload::Presence(_)) => (m.user_id.clone(), "left", -1),
        Some(Payload::Comment(_)) => (m.user_id.clone(), "comment", -1),
        Some(Payload::File(f)) => (m.user_id.clone(), "file", f.version),
        _ => return,
    };
    assert!(
        order.insert(sequence, entry).is_none(),
        "{me}: sequence {sequence} seen twice"
    );
}
