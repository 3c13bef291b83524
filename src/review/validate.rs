//! Validation of what a participant sends: a decoded `SessionMessage` becomes
//! a typed [`ClientMessage`] or a precise [`ReviewError`]. Pure and bounded:
//! it runs in the stream's task (not the registry's) and the
//! `session_message` fuzz target drives it with arbitrary bytes.

use std::sync::Arc;

use super::comments::is_server_comment_id;
use super::error::{ErrorKind, ReviewError};
use super::ids::Text;
use super::limits::Limits;
use super::ot::LineOp;
use crate::pb::codereview::{
    CodeEdit, SessionMessage, code_edit::Op as WireOp, presence_update::Status as WirePresence,
    session_message::Payload,
};

/// The session and user a stream belongs to (fixed by its first message).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamIdentity {
    pub session_id: String,
    pub user_id: String,
}

/// How a participant wants to catch up when it joins.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JoinOptions {
    pub want_snapshot: bool,
    pub resume_after: Option<u64>,
    pub epoch: u64,
    /// The stream did not start with a `Join`: a client of the article's
    /// proto (history replay, edit versions not tracked).
    pub article_client: bool,
}

/// Presence a client can announce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientPresence {
    Joined,
    Active,
    Idle,
    Left,
}

/// A validated edit request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EditRequest {
    pub path: Text,
    pub op: LineOp,
    pub base_version: i32,
}

/// A validated comment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommentRequest {
    pub comment_id: String,
    pub path: String,
    pub line: u32,
    pub text: String,
}

/// A validated cursor position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CursorRequest {
    pub path: String,
    pub line: u32,
    pub column: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Explicit join options (first message only).
    Join(JoinOptions),
    Edit(EditRequest),
    Comment(CommentRequest),
    Cursor(CursorRequest),
    Presence(ClientPresence),
    TokenRefresh(String),
    /// A message without payload: counts as activity, nothing else.
    Touch,
}

impl Action {
    /// The bytes of content the action carries (what the byte rate limit
    /// counts).
    pub fn content_bytes(&self) -> usize {
        match self {
            Action::Edit(edit) => {
                let text = match &edit.op {
                    LineOp::Replace { text, .. } | LineOp::Insert { text, .. } => text.len(),
                    _ => 0,
                };
                edit.path.len() + text
            }
            Action::Comment(c) => c.comment_id.len() + c.path.len() + c.text.len(),
            Action::Cursor(c) => c.path.len(),
            Action::TokenRefresh(token) => token.len(),
            Action::Join(_) | Action::Presence(_) | Action::Touch => 0,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientMessage {
    pub client_sequence: u64,
    pub action: Action,
}

/// The largest client_sequence accepted: 2^53 - 1, the largest integer
/// every client language holds exactly (JavaScript numbers included). A
/// bound also keeps one message from using up a user's numbers for good.
pub const MAX_CLIENT_SEQUENCE: u64 = (1 << 53) - 1;

fn check_id(what: &str, value: &str, limits: &Limits) -> Result<(), ReviewError> {
    if value.is_empty() {
        return Err(ReviewError::invalid(format!("{what} must not be empty")));
    }
    if value.len() > limits.max_id_bytes {
        return Err(ReviewError::invalid(format!(
            "{what} is {} bytes; the limit is {}",
            value.len(),
            limits.max_id_bytes
        )));
    }
    if value.chars().any(char::is_control) {
        return Err(ReviewError::invalid(format!(
            "{what} must not contain control characters"
        )));
    }
    Ok(())
}

/// Checks a session id named by a request (snapshot, watch, upload).
pub fn session_id(session_id: &str, limits: &Limits) -> Result<Text, ReviewError> {
    if session_id.is_empty()
        || session_id.len() > limits.max_id_bytes
        || session_id.chars().any(char::is_control)
    {
        return Err(ReviewError::invalid(format!(
            "session_id must be 1 to {} printable bytes",
            limits.max_id_bytes
        )));
    }
    Ok(Text::from(session_id))
}

/// Checks a file path an upload names (required, bounded, printable).
pub fn upload_path(path: &str, limits: &Limits) -> Result<(), ReviewError> {
    check_path(path, limits, true)
}

fn check_path(path: &str, limits: &Limits, required: bool) -> Result<(), ReviewError> {
    if required && path.is_empty() {
        return Err(ReviewError::invalid("file_path must not be empty"));
    }
    if path.len() > limits.max_path_bytes {
        return Err(ReviewError::invalid(format!(
            "file_path is {} bytes; the limit is {}",
            path.len(),
            limits.max_path_bytes
        )));
    }
    if path.chars().any(char::is_control) {
        return Err(ReviewError::invalid(
            "file_path must not contain control characters",
        ));
    }
    Ok(())
}

fn check_line(what: &str, line: i32, limits: &Limits) -> Result<u32, ReviewError> {
    let line = u32::try_from(line)
        .map_err(|_| ReviewError::invalid(format!("{what} must be >= 0 (0-based)")))?;
    if line as usize >= limits.max_lines_per_file {
        return Err(ReviewError::new(
            ErrorKind::OutOfRange,
            format!(
                "{what} {line} is beyond the {}-line file limit",
                limits.max_lines_per_file
            ),
        ));
    }
    Ok(line)
}

/// The identity a stream's first message establishes.
pub fn identity_of(
    message: &SessionMessage,
    limits: &Limits,
) -> Result<StreamIdentity, ReviewError> {
    check_id("session_id", &message.session_id, limits)?;
    check_id("user_id", &message.user_id, limits)?;
    Ok(StreamIdentity {
        session_id: message.session_id.clone(),
        user_id: message.user_id.clone(),
    })
}

/// Validates a message on a stream whose identity is known. Empty
/// session_id/user_id mean "this stream's". The payload is taken out of
/// `message`; the rest stays (its id strings can be reused).
pub fn validate(
    message: &mut SessionMessage,
    identity: &StreamIdentity,
    limits: &Limits,
) -> Result<ClientMessage, ReviewError> {
    if !message.session_id.is_empty() && message.session_id != identity.session_id {
        return Err(ReviewError::invalid(format!(
            "this stream belongs to session {:?}; a message for session {:?} is not accepted on it",
            identity.session_id, message.session_id
        )));
    }
    if !message.user_id.is_empty() && message.user_id != identity.user_id {
        return Err(ReviewError::denied(format!(
            "this stream belongs to user {:?}; it cannot speak for {:?}",
            identity.user_id, message.user_id
        )));
    }
    if message.client_sequence > MAX_CLIENT_SEQUENCE {
        return Err(ReviewError::invalid(format!(
            "client_sequence {} is above the largest accepted ({MAX_CLIENT_SEQUENCE})",
            message.client_sequence
        )));
    }
    let action = match message.payload.take() {
        None => Action::Touch,
        Some(Payload::Join(join)) => Action::Join(JoinOptions {
            want_snapshot: join.want_snapshot,
            resume_after: join.resume_after_sequence,
            epoch: join.session_epoch,
            article_client: false,
        }),
        Some(Payload::Edit(edit)) => Action::Edit(validate_edit(edit, limits)?),
        Some(Payload::Comment(comment)) => {
            check_path(&comment.file_path, limits, false)?;
            if comment.comment_id.len() > limits.max_id_bytes {
                return Err(ReviewError::invalid("comment_id is too long"));
            }
            if comment.comment_id.chars().any(char::is_control) {
                return Err(ReviewError::invalid(
                    "comment_id must not contain control characters",
                ));
            }
            if is_server_comment_id(&comment.comment_id) {
                return Err(ReviewError::invalid(format!(
                    "comment_id {:?} has the form c<number>, which the server keeps for its own ids; \
                     choose another id or leave it empty",
                    comment.comment_id
                )));
            }
            if comment.text.is_empty() {
                return Err(ReviewError::invalid("comment text must not be empty"));
            }
            if comment.text.len() > limits.max_comment_bytes {
                return Err(ReviewError::invalid(format!(
                    "comment is {} bytes; the limit is {}",
                    comment.text.len(),
                    limits.max_comment_bytes
                )));
            }
            Action::Comment(CommentRequest {
                line: check_line("line_number", comment.line_number, limits)?,
                comment_id: comment.comment_id,
                path: comment.file_path,
                text: comment.text,
            })
        }
        Some(Payload::Cursor(cursor)) => {
            check_path(&cursor.file_path, limits, false)?;
            let column = u32::try_from(cursor.column)
                .map_err(|_| ReviewError::invalid("column must be >= 0"))?;
            Action::Cursor(CursorRequest {
                line: check_line("line", cursor.line, limits)?,
                column,
                path: cursor.file_path,
            })
        }
        Some(Payload::Presence(presence)) => {
            Action::Presence(match WirePresence::try_from(presence.status) {
                Ok(WirePresence::Joined) => ClientPresence::Joined,
                Ok(WirePresence::Active) => ClientPresence::Active,
                Ok(WirePresence::Idle) => ClientPresence::Idle,
                Ok(WirePresence::Left) => ClientPresence::Left,
                Err(_) => {
                    return Err(ReviewError::invalid(format!(
                        "unknown presence status {}",
                        presence.status
                    )));
                }
            })
        }
        Some(Payload::TokenRefresh(refresh)) => {
            if refresh.token.is_empty() || refresh.token.len() > 8192 {
                return Err(ReviewError::invalid(
                    "token_refresh needs a token (at most 8 KiB)",
                ));
            }
            Action::TokenRefresh(refresh.token)
        }
        Some(
            Payload::Joined(_)
            | Payload::Ack(_)
            | Payload::Error(_)
            | Payload::Snapshot(_)
            | Payload::File(_)
            | Payload::Notice(_),
        ) => {
            return Err(ReviewError::invalid(
                "this message kind is sent by the server, not by clients",
            ));
        }
    };
    Ok(ClientMessage {
        client_sequence: message.client_sequence,
        action,
    })
}

fn validate_edit(edit: CodeEdit, limits: &Limits) -> Result<EditRequest, ReviewError> {
    check_path(&edit.file_path, limits, true)?;
    let line = check_line("line_number", edit.line_number, limits)?;
    if edit.version < 0 {
        return Err(ReviewError::invalid("version must be >= 0"));
    }
    let op = WireOp::try_from(edit.op)
        .map_err(|_| ReviewError::invalid(format!("unknown edit op {}", edit.op)))?;
    if op != WireOp::Delete {
        if edit.content.len() > limits.max_line_bytes {
            return Err(ReviewError::invalid(format!(
                "line is {} bytes; the limit is {}",
                edit.content.len(),
                limits.max_line_bytes
            )));
        }
        if edit.content.contains('\n') {
            return Err(ReviewError::invalid(
                "content is one line: it must not contain a newline",
            ));
        }
    }
    let text: Text = Arc::from(edit.content.as_str());
    let op = match op {
        WireOp::Replace => LineOp::Replace { line, text },
        WireOp::Insert => LineOp::Insert { line, text },
        WireOp::Delete => LineOp::Delete { line },
    };
    Ok(EditRequest {
        path: Arc::from(edit.file_path.as_str()),
        op,
        base_version: edit.version,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb::codereview::{Comment, CursorPosition, PresenceUpdate};

    fn identity() -> StreamIdentity {
        StreamIdentity {
            session_id: "s".into(),
            user_id: "u".into(),
        }
    }

    fn message(payload: Payload) -> SessionMessage {
        SessionMessage {
            session_id: "s".into(),
            user_id: "u".into(),
            payload: Some(payload),
            ..Default::default()
        }
    }

    #[test]
    fn identities() {
        let limits = Limits::default();
        assert!(
            identity_of(
                &message(Payload::Presence(PresenceUpdate::default())),
                &limits
            )
            .is_ok()
        );
        let mut m = message(Payload::Presence(PresenceUpdate::default()));
        m.session_id.clear();
        assert_eq!(
            identity_of(&m, &limits).unwrap_err().kind,
            ErrorKind::InvalidArgument
        );
        m.session_id = "x".repeat(129);
        assert_eq!(
            identity_of(&m, &limits).unwrap_err().kind,
            ErrorKind::InvalidArgument
        );
        m.session_id = "a\u{7}".into();
        assert!(identity_of(&m, &limits).is_err());
    }

    #[test]
    fn other_session_and_other_user_are_refused() {
        let limits = Limits::default();
        let mut m = message(Payload::Presence(PresenceUpdate::default()));
        m.session_id = "other".into();
        assert_eq!(
            validate(&mut m, &identity(), &limits).unwrap_err().kind,
            ErrorKind::InvalidArgument
        );
        let mut m = message(Payload::Presence(PresenceUpdate::default()));
        m.user_id = "mallory".into();
        assert_eq!(
            validate(&mut m, &identity(), &limits).unwrap_err().kind,
            ErrorKind::PermissionDenied
        );
        let mut m = message(Payload::Presence(PresenceUpdate::default()));
        m.user_id.clear();
        m.session_id.clear();
        assert!(validate(&mut m, &identity(), &limits).is_ok());
    }

    #[test]
    fn edits() {
        let limits = Limits::default();
        let edit = |line_number, content: &str, op, version| {
            message(Payload::Edit(CodeEdit {
                file_path: "a.rs".into(),
                line_number,
                content: content.into(),
                version,
                op,
            }))
        };
        let ok = validate(&mut edit(3, "x", 1, 0), &identity(), &limits).unwrap();
        assert_eq!(
            ok.action,
            Action::Edit(EditRequest {
                path: Arc::from("a.rs"),
                op: LineOp::Insert {
                    line: 3,
                    text: Arc::from("x")
                },
                base_version: 0
            })
        );
        assert_eq!(
            validate(&mut edit(-1, "x", 0, 0), &identity(), &limits)
                .unwrap_err()
                .kind,
            ErrorKind::InvalidArgument
        );
        assert_eq!(
            validate(&mut edit(0, "a\nb", 0, 0), &identity(), &limits)
                .unwrap_err()
                .kind,
            ErrorKind::InvalidArgument
        );
        assert_eq!(
            validate(&mut edit(0, "x", 9, 0), &identity(), &limits)
                .unwrap_err()
                .kind,
            ErrorKind::InvalidArgument
        );
        assert_eq!(
            validate(&mut edit(0, "x", 0, -2), &identity(), &limits)
                .unwrap_err()
                .kind,
            ErrorKind::InvalidArgument
        );
        assert_eq!(
            validate(&mut edit(20_000, "x", 0, 0), &identity(), &limits)
                .unwrap_err()
                .kind,
            ErrorKind::OutOfRange
        );
        let long = "y".repeat(4097);
        assert!(validate(&mut edit(0, &long, 0, 0), &identity(), &limits).is_err());
        // Deleting ignores content.
        assert!(validate(&mut edit(0, &long, 2, 0), &identity(), &limits).is_ok());
    }

    #[test]
    fn comments_cursors_and_server_kinds() {
        let limits = Limits::default();
        let mut c = message(Payload::Comment(Comment {
            comment_id: String::new(),
            line_number: 2,
            text: String::new(),
            file_path: String::new(),
        }));
        assert!(validate(&mut c, &identity(), &limits).is_err());
        let mut c = message(Payload::Cursor(CursorPosition {
            file_path: "a".into(),
            line: 1,
            column: -1,
        }));
        assert!(validate(&mut c, &identity(), &limits).is_err());
        let mut c = message(Payload::Ack(Default::default()));
        assert_eq!(
            validate(&mut c, &identity(), &limits).unwrap_err().kind,
            ErrorKind::InvalidArgument
        );
        let mut empty = SessionMessage {
            client_sequence: 4,
            ..Default::default()
        };
        assert_eq!(
            validate(&mut empty, &identity(), &limits).unwrap(),
            ClientMessage {
                client_sequence: 4,
                action: Action::Touch
            }
        );
    }
}
