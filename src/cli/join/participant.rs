//! The participant's state across connections: the replica, what waits for
//! the server, and what to do with each typed command and each message
//! received.

use std::collections::VecDeque;

use tokio::time::Instant;

use super::commands::Command;
use super::{Ended, JoinArgs};
use crate::cli::connect::ClientError;
use crate::cli::render::{JsonObject, Style, event_line, json_strings};
use crate::grpc::client::CallSender;
use crate::pb::codereview::{
    Comment, CursorPosition, SessionMessage, TokenRefresh, notice::Kind as NoticeKind,
    presence_update::Status as Presence, session_message::Payload,
};
use crate::review::ot;
use crate::review::replica::{OutOfSync, Replica, from_wire};

/// The participant's state across connections.
pub(super) struct Participant {
    pub(super) args: JoinArgs,
    pub(super) style: Style,
    pub(super) replica: Replica,
    pub(super) last_sequence: Option<u64>,
    pub(super) epoch: u64,
    pub(super) next_client_sequence: u64,
    pub(super) pending_comments: VecDeque<(u64, Comment)>,
    pub(super) pending_cursor: Option<CursorPosition>,
    pub(super) caught_up: bool,
    pub(super) want_snapshot: bool,
    /// Set by `quit` (or the end of input): until when to wait for the
    /// server to answer what is waiting.
    pub(super) quitting: Option<Instant>,
    /// The role the server gave us (edits are checked locally too).
    pub(super) role: Option<crate::pb::codereview::Role>,
    /// Whether the document has been known since the start.
    pub(super) ever_caught_up: bool,
    /// Commands typed before the first catch-up (the document was unknown).
    pub(super) early: VecDeque<Command>,
    /// Edits and comments applied here that the server did not apply: it
    /// refused them, or they were dropped when resyncing from a snapshot.
    pub(super) not_applied: usize,
}

impl Participant {
    pub(super) fn say(&self, text: &str) {
        match self.style {
            Style::Human => eprintln!("codereview join: {text}"),
            Style::Json => println!(
                "{}",
                JsonObject::new()
                    .str("type", "status")
                    .str("text", text)
                    .finish()
            ),
        }
    }

    /// Edits and comments typed and not yet answered by the server.
    pub(super) fn waiting(&self) -> usize {
        self.replica.pending().count() + self.pending_comments.len() + self.early.len()
    }

    /// Whether `quit` was typed and its time to wait is over.
    pub(super) fn quit_expired(&self) -> bool {
        self.quitting
            .is_some_and(|deadline| Instant::now() >= deadline)
    }

    /// The end: prints the document one last time. Anything the server
    /// never answered makes the command fail (a script must know).
    pub(super) fn finish(&self) -> Result<(), ClientError> {
        self.show(None);
        match self.waiting() {
            0 if self.not_applied == 0 => Ok(()),
            0 => Err(ClientError::runtime(format!(
                "{} of the commands typed {} not applied: refused by the server or dropped when resyncing (see above)",
                self.not_applied,
                if self.not_applied == 1 { "was" } else { "were" }
            ))),
            1 => Err(ClientError::runtime(format!(
                "1 command was not acknowledged by the server within --quit-timeout {}: it may not have been applied",
                seconds(self.args.quit_timeout)
            ))),
            n => Err(ClientError::runtime(format!(
                "{n} commands were not acknowledged by the server within --quit-timeout {}: they may not have been applied",
                seconds(self.args.quit_timeout)
            ))),
        }
    }

    pub(super) fn message(&self, payload: Payload, client_sequence: u64) -> SessionMessage {
        SessionMessage {
            session_id: self.args.session.clone(),
            user_id: self.args.user.clone(),
            timestamp: crate::review::now_unix_ms(),
            payload: Some(payload),
            sequence: 0,
            client_sequence,
        }
    }

    pub(super) fn take_client_sequence(&mut self) -> u64 {
        let n = self.next_client_sequence;
        self.next_client_sequence += 1;
        n
    }

    /// Handles a typed command; what to send (if live) is queued on `sender`.
    pub(super) fn command(&mut self, command: Command, sender: Option<&mut CallSender>) {
        let refusal = match command {
            Command::Edit { .. } => Some("not applied"),
            Command::Comment { .. } => Some("not sent"),
            _ => None,
        };
        if let Some(refusal) = refusal
            && self.waiting() >= self.args.buffer
        {
            self.say(&format!(
                "{refusal}: {} messages are already waiting for the server (limit {})",
                self.waiting(),
                self.args.buffer
            ));
            return;
        }
        if !self.ever_caught_up
            && matches!(
                command,
                Command::Edit { .. }
                    | Command::Comment { .. }
                    | Command::Cursor { .. }
                    | Command::Show { .. }
            )
        {
            // The document is not known yet: keep the command until it is
            // (in order: a `show` typed after an edit shows the edit).
            self.early.push_back(command);
            return;
        }
        let live = self.caught_up && sender.is_some();
        match command {
            Command::Edit { op } => {
                if let Some(role) = self.role
                    && role != crate::pb::codereview::Role::Author
                {
                    let role = role.as_str_name().to_lowercase();
                    let article = if role.starts_with(['a', 'e', 'i', 'o', 'u']) {
                        "an"
                    } else {
                        "a"
                    };
                    self.say(&format!("not applied: {article} {role} may not edit"));
                    return;
                }
                let len = self.replica.file(&op.path).map_or(0, <[_]>::len);
                if let Err(ot::ApplyError::OutOfRange(why)) = ot::check(len, &op.op) {
                    self.say(&format!("not applied: {why}"));
                    return;
                }
                let client_sequence = self.take_client_sequence();
                match self.replica.local_edit(op, client_sequence) {
                    Ok(edit) => {
                        if live && let Some(sender) = sender {
                            sender.queue(&self.message(Payload::Edit(edit), client_sequence));
                        }
                    }
                    Err(ot::ApplyError::OutOfRange(why)) => {
                        self.say(&format!("not applied: {why}"))
                    }
                }
            }
            Command::Comment { line, text } => {
                let client_sequence = self.take_client_sequence();
                let comment = Comment {
                    comment_id: String::new(),
                    line_number: line as i32,
                    text,
                    file_path: String::new(),
                };
                if live && let Some(sender) = sender {
                    sender.queue(&self.message(Payload::Comment(comment.clone()), client_sequence));
                }
                self.pending_comments.push_back((client_sequence, comment));
            }
            Command::Cursor { path, line, column } => {
                let cursor = CursorPosition {
                    file_path: path,
                    line: line as i32,
                    column: column as i32,
                };
                if live && let Some(sender) = sender {
                    sender.queue(&self.message(Payload::Cursor(cursor), 0));
                } else {
                    self.pending_cursor = Some(cursor);
                }
            }
            Command::Show { path } => self.show(path.as_deref()),
            Command::Quit => {
                if self.quitting.is_none() {
                    self.quitting = Some(Instant::now() + self.args.quit_timeout);
                }
            }
        }
    }

    pub(super) fn show(&self, only: Option<&str>) {
        match self.style {
            Style::Json => {
                let mut files = String::from("{");
                for (path, lines) in self.replica.files() {
                    if only.is_some_and(|o| o != &**path) {
                        continue;
                    }
                    if files.len() > 1 {
                        files.push(',');
                    }
                    crate::logging::push_json_string(&mut files, path);
                    files.push(':');
                    files.push_str(&json_strings(lines.iter().map(|l| &**l)));
                }
                files.push('}');
                println!(
                    "{}",
                    JsonObject::new()
                        .str("type", "document")
                        .int("version", self.replica.version().into())
                        .uint("pending", self.waiting() as u64)
                        .raw("files", &files)
                        .finish()
                );
            }
            Style::Human => {
                println!(
                    "document at version {} ({} waiting)",
                    self.replica.version(),
                    self.waiting()
                );
                for (path, lines) in self.replica.files() {
                    if only.is_some_and(|o| o != &**path) {
                        continue;
                    }
                    println!("== {path}");
                    for (i, line) in lines.iter().enumerate() {
                        println!("{i:>5} | {line}");
                    }
                }
            }
        }
    }

    /// Sends everything waiting (after catch-up) in client-sequence order:
    /// the server answers a number at or below one it has processed as a
    /// duplicate, so edits and comments must not overtake each other.
    pub(super) fn resend(&mut self, sender: &mut CallSender) {
        let mut waiting: Vec<(u64, Payload)> = self
            .replica
            .resend()
            .into_iter()
            .map(|(cs, edit)| (cs, Payload::Edit(edit)))
            .chain(
                self.pending_comments
                    .iter()
                    .map(|(cs, c)| (*cs, Payload::Comment(c.clone()))),
            )
            .collect();
        waiting.sort_by_key(|(cs, _)| *cs);
        for (client_sequence, payload) in waiting {
            sender.queue(&self.message(payload, client_sequence));
        }
        if let Some(cursor) = self.pending_cursor.take() {
            sender.queue(&self.message(Payload::Cursor(cursor), 0));
        }
    }

    /// Handles one message from the server.
    pub(super) fn receive(
        &mut self,
        message: SessionMessage,
        sender: &mut CallSender,
    ) -> Option<Ended> {
        if let Some(line) = event_line(&message, self.style) {
            println!("{line}");
        }
        let essential = match &message.payload {
            Some(Payload::Edit(_) | Payload::Comment(_) | Payload::File(_)) => true,
            Some(Payload::Presence(p)) => {
                p.status == Presence::Joined as i32 || p.status == Presence::Left as i32
            }
            Some(Payload::Ack(a)) => a.sequence != 0 && !a.duplicate,
            _ => false,
        };
        if essential && message.sequence != 0 {
            self.last_sequence = Some(message.sequence);
        }
        match message.payload? {
            Payload::Joined(joined) => {
                // A new `join` of a user who was here before must not reuse
                // the numbers the server has processed: it would answer them
                // as duplicates, never applying them.
                self.next_client_sequence = self
                    .next_client_sequence
                    .max(joined.last_client_sequence.saturating_add(1));
                self.epoch = joined.session_epoch;
                self.role = crate::pb::codereview::Role::try_from(joined.role).ok();
                if joined.catchup != crate::pb::codereview::joined::Catchup::Snapshot as i32
                    && self.last_sequence.is_none()
                {
                    // History starts from the beginning of what is kept.
                    self.last_sequence = Some(0);
                }
            }
            Payload::Snapshot(snapshot) => {
                let dropped = self.replica.reset(&snapshot);
                self.not_applied += dropped.len();
                if !dropped.is_empty() {
                    self.say(&format!(
                        "{} local edits could not be rebased on the snapshot and were dropped",
                        dropped.len()
                    ));
                }
                self.last_sequence = Some(snapshot.sequence);
            }
            Payload::Notice(notice) => match NoticeKind::try_from(notice.kind) {
                Ok(NoticeKind::CaughtUp) => {
                    self.caught_up = true;
                    self.ever_caught_up = true;
                    self.resend(sender);
                    while let Some(command) = self.early.pop_front() {
                        self.command(command, Some(sender));
                    }
                }
                Ok(NoticeKind::GoingAway) => {
                    return Some(Ended::Reconnect {
                        reason: "the server is going away".into(),
                        now: true,
                    });
                }
                Ok(NoticeKind::TokenExpiring) => self.refresh_token(sender),
                _ => {}
            },
            Payload::Edit(edit) => {
                if let Some(op) = from_wire(&edit)
                    && let Err(gap) = self.replica.remote(op, edit.version)
                {
                    return Some(self.resync(gap));
                }
            }
            Payload::File(file) => {
                if let Err(gap) =
                    self.replica
                        .remote_file(&file.file_path, &file.lines, file.version)
                {
                    return Some(self.resync(gap));
                }
            }
            Payload::Ack(ack) => {
                let ours = ack.client_sequence != 0
                    && (self
                        .replica
                        .pending()
                        .any(|p| p.client_sequence == ack.client_sequence)
                        || self
                            .pending_comments
                            .iter()
                            .any(|(cs, _)| *cs == ack.client_sequence));
                if !ours && ack.version > self.replica.version() {
                    // An edit this replica never had: one made by an earlier
                    // `join` of this user, replayed as its acknowledgement.
                    // Only a snapshot brings it.
                    self.want_snapshot = true;
                    return Some(Ended::Reconnect {
                        reason:
                            "the history holds edits of an earlier join of this user: resyncing"
                                .into(),
                        now: true,
                    });
                }
                self.replica.ack(ack.client_sequence, ack.version);
                self.pending_comments
                    .retain(|(cs, _)| *cs > ack.client_sequence || ack.client_sequence == 0);
            }
            Payload::Error(error) => {
                let comments = self.pending_comments.len();
                self.pending_comments
                    .retain(|(cs, _)| *cs != error.client_sequence);
                // A refused edit is counted when the resync drops it.
                self.not_applied += comments - self.pending_comments.len();
                if error.client_sequence != 0 && self.replica.refused(error.client_sequence) {
                    self.want_snapshot = true;
                    return Some(Ended::Reconnect {
                        reason: "an edit was refused: resyncing".into(),
                        now: true,
                    });
                }
            }
            _ => {}
        }
        None
    }

    /// The replica missed a version: reconnect for a snapshot.
    pub(super) fn resync(&mut self, gap: OutOfSync) -> Ended {
        self.want_snapshot = true;
        Ended::Reconnect {
            reason: format!(
                "out of sync (expected version {}, got {}): resyncing",
                gap.expected, gap.got
            ),
            now: true,
        }
    }

    pub(super) fn refresh_token(&mut self, sender: &mut CallSender) {
        let Some(path) = &self.args.token_file else {
            self.say("the token expires soon and there is no --token-file to refresh it from");
            return;
        };
        match crate::cli::connect::read_token_file(path) {
            Ok(token) => {
                sender.queue(&self.message(Payload::TokenRefresh(TokenRefresh { token }), 0));
                self.say("token refreshed from the token file");
            }
            Err(error) => self.say(&error.message),
        }
    }
}

/// A duration as a person writes it: `5s`, `1.5s`, `250ms`.
fn seconds(duration: std::time::Duration) -> String {
    if duration.subsec_millis() != 0 && duration.as_secs() == 0 {
        format!("{}ms", duration.as_millis())
    } else {
        format!("{}s", duration.as_secs_f64())
    }
}
