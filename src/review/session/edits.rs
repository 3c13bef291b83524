//! The actions that change a session: edits (transformed against what the
//! sender had not seen, through its Jupiter bridge built from the operation
//! log), comments (kept anchored), cursors and uploads.

use super::super::comments;
use super::super::dedupe::Outcome;
use super::super::ot::{self, FileOp, LineOp};
use super::super::roles::{MayComment, MayEdit, MayMoveCursor};
use super::super::validate::{CommentRequest, CursorRequest, EditRequest};
use super::log;
use super::roster::VersionReading;
use super::*;
use crate::pb::codereview::{
    CodeEdit, Comment, CommentEntry, CursorPosition, FileContent, code_edit::Op as WireOp,
};

impl Session {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn apply_edit(
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
        let op = FileOp {
            path: self.doc.intern_path(edit.path),
            op: edit.op,
        };
        let applied = self.edit_transition(user, base, incoming_wins, op.clone(), true)?;
        self.log(
            now,
            Body::Edit(log::edit_record(
                user,
                client_sequence,
                base,
                incoming_wins,
                &op,
                applied.is_none(),
            )),
        );
        self.announce_edit(now, Some(member), user, client_sequence, applied, fx);
        Ok(())
    }

    /// What an edit does to the state, live or replayed: transformed through
    /// the user's bridge, applied (`checked`: within the limits; replaying,
    /// whatever they are now), recorded in the operation log. Returns the
    /// operation as applied, or None when a concurrent edit cancelled it.
    pub(super) fn edit_transition(
        &mut self,
        user: &Text,
        base: i32,
        incoming_wins: bool,
        op: FileOp,
        checked: bool,
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
            if checked {
                let room = self.room();
                self.doc.apply(&result, &self.limits, room)?;
            } else {
                self.doc
                    .apply_unchecked(&result, self.limits.max_lines_per_file)
                    .map_err(|ot::ApplyError::OutOfRange(why)| {
                        ReviewError::new(ErrorKind::OutOfRange, why)
                    })?;
            }
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
                comment_id: String::new(),
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
            LineOp::Replace { line, text } => (*line, text.to_string(), WireOp::Replace),
            LineOp::Insert { line, text } => (*line, text.to_string(), WireOp::Insert),
            LineOp::Delete { line } => (*line, String::new(), WireOp::Delete),
            LineOp::ReplaceFile { .. } | LineOp::Noop => unreachable!("edits are line operations"),
        };
        let payload = Payload::Edit(CodeEdit {
            file_path: op.path.to_string(),
            line_number: line_number as i32,
            content,
            version,
            op: wire_op as i32,
        });
        let info = AckInfo {
            client_sequence,
            version,
            comment_id: String::new(),
        };
        let origin = Origin::Participant {
            user,
            member,
            ack: Some(info.clone()),
        };
        let sequence = self.broadcast(now, origin, payload, fx);
        if client_sequence != 0 {
            let ack = self.ack_message(now, user, &info, sequence, false, false);
            self.remember_ack(user, client_sequence, &ack);
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

    #[allow(clippy::too_many_arguments)]
    pub(super) fn add_comment(
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
        // A comment on a file must point at one of its lines, so that live
        // replicas and snapshots agree on where it is.
        if !request.path.is_empty() {
            let Some(lines) = self.doc.file(&request.path) else {
                return Err(ReviewError::new(
                    ErrorKind::NotFound,
                    format!("no file {:?} in this session", request.path),
                ));
            };
            if request.line as usize >= lines.len() {
                return Err(ReviewError::new(
                    ErrorKind::OutOfRange,
                    format!(
                        "line {} is past the end of {} ({} lines, 0-based)",
                        request.line,
                        request.path,
                        lines.len()
                    ),
                ));
            }
        }
        let comment_id = if request.comment_id.is_empty() {
            comments::server_comment_id(self.sequence + 1)
        } else {
            request.comment_id
        };
        if self.comments.contains_id(&comment_id) {
            return Err(ReviewError::new(
                ErrorKind::AlreadyExists,
                format!("comment {comment_id:?} already exists"),
            ));
        }
        let comment = Comment {
            comment_id: comment_id.clone(),
            line_number: request.line as i32,
            text: request.text,
            file_path: request.path,
        };
        let entry = CommentEntry {
            user_id: user.to_string(),
            comment: Some(comment.clone()),
            sequence: self.sequence + 1,
            timestamp: now.unix_ms,
        };
        let room = self.room();
        if Comments::encoded_cost(&entry) > room.encoded {
            return Err(ReviewError::exhausted(format!(
                "the session would hold more than {} bytes of content (limit)",
                self.limits.max_document_bytes
            )));
        }
        if Comments::memory_cost(&entry) > room.memory {
            return Err(ReviewError::exhausted(
                "the server's memory budget is used up: the session cannot grow now",
            ));
        }
        self.log(
            now,
            Body::Comment(store::CommentAdded {
                user_id: user.to_string(),
                client_sequence,
                comment: Some(comment.clone()),
            }),
        );
        self.announce_comment(now, Some(member), user, client_sequence, comment, fx);
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
            comment_id: comment.comment_id.clone(),
        };
        let origin = Origin::Participant {
            user,
            member,
            ack: Some(info.clone()),
        };
        let sequence = self.broadcast(now, origin, Payload::Comment(comment.clone()), fx);
        self.comments.push(CommentEntry {
            user_id: user.to_string(),
            comment: Some(comment),
            sequence,
            timestamp: now.unix_ms,
        });
        if client_sequence != 0 {
            let ack = self.ack_message(now, user, &info, sequence, false, false);
            self.remember_ack(user, client_sequence, &ack);
        }
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
                comment_id: String::new(),
            };
            let ack = self.ack_message(now, user, &info, 0, false, false);
            self.send_message(member, &ack, fx);
        }
    }

    /// Replaces whole files (the author seeds the session). Atomic: either
    /// every file is applied or none.
    pub(super) fn upload(
        &mut self,
        now: Now,
        user: &Text,
        files: Vec<(Text, Vec<Text>)>,
        _proof: MayUpload,
        fx: &mut Effects,
    ) -> Result<UploadOutcome, ReviewError> {
        self.check_writable()?;
        // An upload counts against its author's rate limits like messages:
        // one per file, and its bytes.
        let bytes: usize = files
            .iter()
            .map(|(path, lines)| path.len() + lines.iter().map(|l| l.len() + 1).sum::<usize>())
            .sum();
        let limits = self.limits.clone();
        self.roster
            .ensure_user(user, Role::Author, now.at, self.version, &limits)?
            .rate
            .take(now.at, files.len().max(1), bytes, &limits)?;
        let ops: Vec<FileOp> = files
            .into_iter()
            .map(|(path, lines)| FileOp {
                path: self.doc.intern_path(path),
                op: LineOp::ReplaceFile {
                    lines: lines.into(),
                },
            })
            .collect();
        // Atomic: every file is checked (the files of an upload are
        // distinct, so their costs add up) before any is applied.
        let mut outcome = UploadOutcome::default();
        let mut room = self.room();
        let mut changes = Vec::with_capacity(ops.len());
        let mut new_files = 0;
        for op in &ops {
            let change = self.doc.check(op, &self.limits, room, new_files)?;
            room.encoded -= change.encoded_growth();
            room.memory -= change.memory_growth();
            if self.doc.file(&op.path).is_none() {
                new_files += 1;
            }
            changes.push(change);
            if let LineOp::ReplaceFile { lines } = &op.op {
                outcome.files += 1;
                outcome.lines += lines.len() as u32;
                outcome.bytes += lines.iter().map(|l| l.len() as u64 + 1).sum::<u64>();
            }
        }
        if self.version.checked_add(ops.len() as i32).is_none() {
            return Err(ReviewError::exhausted(
                "the session reached its last version",
            ));
        }
        for (op, change) in ops.into_iter().zip(changes) {
            let LineOp::ReplaceFile { lines } = &op.op else {
                unreachable!("uploads replace files")
            };
            self.log(
                now,
                Body::File(store::FileUploaded {
                    user_id: user.to_string(),
                    file_path: op.path.to_string(),
                    lines: lines.iter().map(|l| l.to_string()).collect(),
                }),
            );
            self.doc.apply_checked(&op, change);
            outcome.sequence = self.announce_file(now, user, op, fx);
        }
        outcome.version = self.version;
        Ok(outcome)
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
            file_path: op.path.to_string(),
            lines: lines.iter().map(|l| l.to_string()).collect(),
            version,
        });
        self.broadcast(now, Origin::Server { user_id: user }, payload, fx)
    }
}
