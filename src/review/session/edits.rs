//! The actions that change a session: edits (transformed against what the
//! sender had not seen, through its Jupiter bridge built from the operation
//! log), comments (kept anchored), cursors and uploads.

use super::super::comments::{self, EntrySize};
use super::super::dedupe::Outcome;
use super::super::ot::{self, FileOp, LineOp};
use super::super::roles::{MayComment, MayEdit, MayMoveCursor};
use super::super::validate::{CommentRequest, CursorRequest, EditRequest};
use super::apply::APPLY_MAX_LINES;
use super::log;
use super::roster::VersionReading;
use super::*;
use crate::pb::codereview::{
    CodeEdit, Comment, CommentEntry, CursorPosition, FileContent, code_edit::Op as WireOp,
};

impl Session {
    /// Decides an edit: this process's checks (storage, limits, memory) and
    /// how to read its base version (what the stream has seen); the record
    /// then goes to the log, which transforms and applies it where it lands.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn propose_edit(
        &mut self,
        now: Now,
        member: MemberId,
        user: &Text,
        edit: EditRequest,
        client_sequence: u64,
        _proof: MayEdit,
        fx: &mut Effects,
    ) -> Result<(), ReviewError> {
        self.check_writable()?;
        let current = self.version;
        if current == i32::MAX {
            return Err(ReviewError::exhausted(
                "the session reached its last version",
            ));
        }
        let window = self.limits.transform_window;
        let Some((_, state, sender)) = self.roster.participant_mut(member) else {
            return Ok(());
        };
        let tracked = match sender.versions {
            VersionReading::Tracked { known_from } => edit.base_version >= known_from,
            VersionReading::Untracked if edit.base_version > 0 => {
                sender.versions = VersionReading::Tracked { known_from: 0 };
                true
            }
            VersionReading::Untracked => false,
        };
        // A tracked base is what the client saw; an untracked edit is based
        // on what the server delivered to it, and wins ties (last writer).
        let (mut base, incoming_wins) = if tracked {
            (edit.base_version, false)
        } else {
            (sender.outbox.delivered_version().min(current), true)
        };
        if base > current {
            return Err(ReviewError::new(
                ErrorKind::FailedPrecondition,
                format!("edit based on version {base}, but the session is at version {current}"),
            ));
        }
        if !state.bridge.can_sync(base, current, &self.ops) {
            if tracked {
                return Err(ReviewError::new(
                    ErrorKind::FailedPrecondition,
                    format!(
                        "edit based on version {base} is too old to transform (the session keeps the last {window} operations); \
                         take a snapshot and retry"
                    ),
                ));
            }
            // Untracked and too old: apply to the current document as is.
            base = current;
        }
        self.doc
            .check_growth(&edit.path, &edit.op, &self.limits, self.room())?;
        let op = FileOp {
            path: edit.path,
            op: edit.op,
        };
        let body = Body::Edit(log::edit_record(
            user,
            client_sequence,
            base,
            incoming_wins,
            &op,
        ));
        self.propose_with(now, body, Some(op.op), Author::Member(member), fx);
        Ok(())
    }

    /// What an edit does to the state where it lands in the log:
    /// transformed through the user's bridge, applied (within the file: a
    /// line that is gone refuses it), recorded in the operation log.
    /// Returns the operation as applied, or None when a concurrent edit
    /// cancelled it.
    pub(super) fn edit_transition(
        &mut self,
        user: &Text,
        base: i32,
        incoming_wins: bool,
        op: FileOp,
    ) -> Result<Option<FileOp>, ReviewError> {
        let current = self.version;
        let window = self.limits.transform_window;
        let Some(state) = self.roster.user_mut(user) else {
            return Err(ReviewError::invalid(format!("no participant {user}")));
        };
        state
            .bridge
            .sync(user, base, current, &self.ops, window)
            .map_err(|_| {
                ReviewError::new(
                    ErrorKind::FailedPrecondition,
                    format!("edit based on version {base} is too old to transform"),
                )
            })?;
        let transformed = state.bridge.transform(op, incoming_wins);
        if transformed.was_concurrent {
            self.counters.edits_transformed += 1;
        }
        let result = transformed.op.clone();
        let noop = result.is_noop();
        if !noop {
            self.doc.apply_unchecked(&result, APPLY_MAX_LINES).map_err(
                |ot::ApplyError::OutOfRange(why)| ReviewError::new(ErrorKind::OutOfRange, why),
            )?;
        }
        let version = (!noop).then_some(current + 1);
        if let Some(state) = self.roster.user_mut(user) {
            state.bridge.commit(transformed, version);
        }
        if noop {
            return Ok(None);
        }
        self.version += 1;
        self.ops.push(
            self.version,
            Some(user.clone()),
            result.clone(),
            window,
            self.limits.history_bytes,
        );
        self.reanchor_comments(&result);
        Ok(Some(result))
    }

    /// Tells everyone of an edit (its author gets the acknowledgement), or
    /// its author that it was cancelled; remembers the outcome.
    pub(super) fn announce_edit(
        &mut self,
        now: Now,
        member: Option<MemberId>,
        user: &Text,
        client_sequence: u64,
        applied: Option<FileOp>,
        fx: &mut Effects,
    ) {
        let Some(op) = applied else {
            let info = AckInfo {
                client_sequence,
                version: self.version,
                comment_id: None,
            };
            let ack = self.ack_message(now, user, &info, 0, false, true);
            if let Some(member) = member {
                self.send_message(member, &ack, fx);
            }
            self.remember_ack(user, client_sequence, &ack);
            return;
        };
        let version = self.version;
        let (line_number, content, wire_op) = match &op.op {
            LineOp::Replace { line, text } => (*line, str::to_owned(text), WireOp::Replace),
            LineOp::Insert { line, text } => (*line, str::to_owned(text), WireOp::Insert),
            LineOp::Delete { line } => (*line, String::new(), WireOp::Delete),
            LineOp::ReplaceFile { .. } | LineOp::Noop => unreachable!("edits are line operations"),
        };
        let payload = Payload::Edit(CodeEdit {
            file_path: str::to_owned(&op.path),
            line_number: line_number as i32,
            content,
            version,
            op: wire_op as i32,
        });
        let info = AckInfo {
            client_sequence,
            version,
            comment_id: None,
        };
        let origin = Origin::Participant {
            user,
            member,
            ack: Some(&info),
        };
        let sequence = self.broadcast(now, origin, &payload, fx);
        self.remember_acked(user, &info, sequence);
    }

    /// Remembers that the numbered message `info` describes was
    /// acknowledged as the event `sequence`, so that a resend is answered
    /// with the same acknowledgement its author was (or would have been)
    /// sent.
    fn remember_acked(&mut self, user: &Text, info: &AckInfo, sequence: u64) {
        if info.client_sequence != 0 {
            let ack = ack_of(info, sequence, false, false);
            self.remember(user, info.client_sequence, Outcome::Ack(ack));
        }
    }

    pub(super) fn remember_ack(
        &mut self,
        user: &Text,
        client_sequence: u64,
        message: &SessionMessage,
    ) {
        if client_sequence == 0 {
            return;
        }
        if let Some(Payload::Ack(ack)) = &message.payload {
            self.remember(user, client_sequence, Outcome::Ack(ack.clone()));
        }
    }

    /// Keeps comments on their lines as lines are inserted and deleted.
    pub(super) fn reanchor_comments(&mut self, op: &FileOp) {
        let len = self.doc.file(&op.path).map_or(0, <[Text]>::len);
        self.comments.reanchor(op, len);
    }

    /// Decides a comment: this process's checks (storage, the comment
    /// limit, budgets); where it lands the log checks its line and id.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn propose_comment(
        &mut self,
        now: Now,
        member: MemberId,
        user: &Text,
        request: CommentRequest,
        client_sequence: u64,
        _proof: MayComment,
        fx: &mut Effects,
    ) -> Result<(), ReviewError> {
        self.check_writable()?;
        if self.comments.len() >= self.limits.max_comments {
            return Err(ReviewError::exhausted(format!(
                "the session has {} comments (limit)",
                self.limits.max_comments
            )));
        }
        let comment = Comment {
            comment_id: request.comment_id,
            line_number: request.line as i32,
            text: request.text,
            file_path: request.path,
        };
        // Its size as stored, with the id the server would give it.
        let id_len = if comment.comment_id.is_empty() {
            comments::server_comment_id_len(self.sequence + 1)
        } else {
            comment.comment_id.len()
        };
        let size = EntrySize {
            user_id: user.len(),
            comment: Some([id_len, comment.text.len(), comment.file_path.len()]),
            sequence: self.sequence + 1,
        };
        let room = self.room();
        if size.encoded_cost() > room.encoded {
            return Err(ReviewError::exhausted(format!(
                "the session would hold more than {} bytes of content (limit)",
                self.limits.max_document_bytes
            )));
        }
        self.check_memory(size.memory_cost())?;
        let body = Body::Comment(store::CommentAdded {
            user_id: str::to_owned(user),
            client_sequence,
            comment: Some(comment),
        });
        self.propose(now, body, Author::Member(member), fx);
        Ok(())
    }

    /// Adds a comment (live or replayed), tells everyone (its author gets
    /// the acknowledgement) and remembers the outcome.
    pub(super) fn announce_comment(
        &mut self,
        now: Now,
        member: Option<MemberId>,
        user: &Text,
        client_sequence: u64,
        comment: Comment,
        fx: &mut Effects,
    ) {
        let info = AckInfo {
            client_sequence,
            version: self.version,
            comment_id: Some(Text::from(comment.comment_id.as_str())),
        };
        let origin = Origin::Participant {
            user,
            member,
            ack: Some(&info),
        };
        let payload = Payload::Comment(comment);
        let sequence = self.broadcast(now, origin, &payload, fx);
        let Payload::Comment(comment) = payload else {
            unreachable!("built as a comment above")
        };
        self.comments.push(CommentEntry {
            user_id: str::to_owned(user),
            comment: Some(comment),
            sequence,
            timestamp: now.unix_ms,
        });
        self.remember_acked(user, &info, sequence);
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn move_cursor(
        &mut self,
        now: Now,
        member: MemberId,
        user: &Text,
        request: CursorRequest,
        client_sequence: u64,
        _proof: MayMoveCursor,
        fx: &mut Effects,
    ) {
        let cursor = CursorPosition {
            file_path: request.path,
            line: request.line as i32,
            column: request.column as i32,
        };
        if let Some(state) = self.roster.user_mut(user) {
            state.cursor = Some(cursor.clone());
        }
        self.broadcast_ephemeral(
            now,
            user,
            EphemeralKind::Cursor,
            Payload::Cursor(cursor),
            Some(member),
            fx,
        );
        if client_sequence != 0 {
            let info = AckInfo {
                client_sequence,
                version: self.version,
                comment_id: None,
            };
            let ack = self.ack_message(now, user, &info, 0, false, false);
            self.send_message(member, &ack, fx);
        }
    }

    /// Decides an upload of whole files (the author seeds the session):
    /// rate limits, and every file checked against the limits and budgets
    /// together (all or none); the log applies it.
    pub(super) fn upload(
        &mut self,
        now: Now,
        user: &Text,
        files: Vec<(Text, Vec<Text>)>,
        _proof: MayUpload,
        fx: &mut Effects,
    ) -> Result<(), ReviewError> {
        self.check_writable()?;
        // An upload counts against its author's rate limits like messages:
        // one per file, and its bytes.
        let bytes: usize = files
            .iter()
            .map(|(path, lines)| path.len() + lines.iter().map(|l| l.len() + 1).sum::<usize>())
            .sum();
        self.take_rate(now, user, files.len().max(1), bytes)?;
        let mut room = self.room();
        let mut new_files = 0;
        for (path, lines) in &files {
            let op = FileOp {
                path: path.clone(),
                op: LineOp::ReplaceFile {
                    lines: lines.as_slice().into(),
                },
            };
            let change = self.doc.check(&op, &self.limits, room, new_files)?;
            room.encoded -= change.encoded_growth();
            room.memory -= change.memory_growth();
            if self.doc.file(path).is_none() {
                new_files += 1;
            }
        }
        if self.version.checked_add(files.len() as i32).is_none() {
            return Err(ReviewError::exhausted(
                "the session reached its last version",
            ));
        }
        let body = Body::Upload(store::Uploaded {
            user_id: str::to_owned(user),
            files: files
                .into_iter()
                .map(|(path, lines)| store::UploadedFile {
                    file_path: path.to_string(),
                    lines: lines.iter().map(|l| l.to_string()).collect(),
                })
                .collect(),
        });
        self.propose(now, body, Author::Uploader, fx);
        Ok(())
    }

    /// A file replaced (live or replayed, once the document holds it): the
    /// operation log, comments, and the event for everyone.
    pub(super) fn announce_file(
        &mut self,
        now: Now,
        user: &Text,
        op: FileOp,
        fx: &mut Effects,
    ) -> u64 {
        self.version += 1;
        let version = self.version;
        // An upload is nobody's pending edit: every user's bridge gets it.
        // Transforms only need to know the file was replaced, not with
        // what, so the log keeps no copy of the lines.
        let replaced = FileOp {
            path: op.path.clone(),
            op: LineOp::ReplaceFile {
                lines: Arc::from([]),
            },
        };
        self.ops.push(
            version,
            None,
            replaced,
            self.limits.transform_window,
            self.limits.history_bytes,
        );
        self.reanchor_comments(&op);
        let LineOp::ReplaceFile { lines } = &op.op else {
            unreachable!("uploads replace files")
        };
        let payload = Payload::File(FileContent {
            file_path: str::to_owned(&op.path),
            lines: lines.iter().map(|l| l.to_string()).collect(),
            version,
        });
        self.broadcast(now, Origin::Server { user_id: user }, &payload, fx)
    }
}
