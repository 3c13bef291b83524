//! Records into state: the one place the log's state changes. Every replica
//! of a session (this process after a restart, other instances sharing the
//! log) applies the same record at the same position to the same state and
//! gets the same result, so nothing here reads this process's clock,
//! budgets or streams to decide; the streams here only receive what the
//! record caused (and an author learns its outcome).
//!
//! Limits (content and memory budgets, participants, comments) are checked
//! when a change is decided, by the process that decides it; here only what
//! the state itself rules out refuses a record (an edit whose line is gone,
//! a comment on a line or file that is not there, an id taken, a number
//! already processed), so every replica refuses it alike and remembers the
//! same outcome, and a restart with other limits replays what was
//! acknowledged exactly.

use super::super::dedupe::{Outcome, Verdict};
use super::super::ot::{FileOp, LineOp};
use super::log::{line_op_from_store, role_from_store};
use super::*;
use crate::pb::codereview::Comment;

/// What of a record's content comes to [`Session::apply_body`] by value:
/// a comment (taken out of its record), an edit's operation as the stream
/// decoded it (equal to the record's), or nothing.
enum Moved {
    Nothing,
    Comment(Comment),
    Edit(LineOp),
}

impl Session {
    /// Applies the record at the next position of the log: one that landed
    /// in a shared log (`author` says who here waits for it), or one read
    /// back at recovery. Returns what it caused.
    pub fn apply_record(
        &mut self,
        now: Now,
        record: &Record,
        author: Author,
    ) -> Result<Effects, log::ReplayError> {
        if record.index != self.next_index {
            return Err(log::damaged(format!(
                "record {} where record {} was expected",
                record.index, self.next_index
            )));
        }
        let body = record
            .body
            .as_ref()
            .ok_or_else(|| log::damaged(format!("record {} is empty", record.index)))?;
        let now = Now {
            at: now.at,
            unix_ms: record.timestamp,
        };
        self.next_index = record.index + 1;
        self.durable_index = self.durable_index.max(self.next_index);
        let mut fx = Effects::default();
        self.apply_body(now, record.index, body, Moved::Nothing, author, &mut fx)?;
        self.settle(now, &mut fx);
        self.collect(&mut fx);
        Ok(fx)
    }

    /// Puts a decided record in the log: with a local log it is applied at
    /// once (what it queues is gated until it is durable); with a shared log
    /// it waits in the proposals for the registry to append it.
    pub(super) fn propose(&mut self, now: Now, body: Body, author: Author, fx: &mut Effects) {
        self.propose_with(now, body, None, author, fx);
    }

    /// [`Session::propose`] for an edit whose operation, as the stream
    /// decoded it, is `op`: applied as it is (the record's copy is not
    /// read back).
    pub(super) fn propose_with(
        &mut self,
        now: Now,
        body: Body,
        op: Option<LineOp>,
        author: Author,
        fx: &mut Effects,
    ) {
        if self.shared {
            self.proposals.push(Proposal {
                timestamp: now.unix_ms,
                body,
                author,
            });
            return;
        }
        let index = self.next_index;
        self.next_index += 1;
        let made_before = self.records.len();
        // A comment moves into the state as it came (its strings were made
        // by the stream that decoded it). A kept record gets a copy, made
        // and dropped on this thread (once the log has it): freeing the
        // stream's strings here instead would return them across threads.
        // Kept nowhere, the record is not made at all.
        let mut body = body;
        let moved = match (&mut body, op) {
            (Body::Comment(added), _) => {
                let comment = added.comment.take();
                if self.keeps_records {
                    added.comment.clone_from(&comment);
                }
                comment.map_or(Moved::Nothing, Moved::Comment)
            }
            (Body::Edit(_), Some(op)) => Moved::Edit(op),
            _ => Moved::Nothing,
        };
        if let Err(error) = self.apply_body(now, index, &body, moved, author, fx) {
            // A record decided here from a valid state always applies.
            crate::log!(
                Error,
                "a record decided here did not apply (a bug)",
                session_id = &*self.id,
                error = error.0.as_str()
            );
            debug_assert!(false, "a proposed record did not apply: {error}");
        }
        debug_assert_eq!(self.records.len(), made_before, "apply made no records");
        if self.keeps_records {
            self.records.push(Record {
                index,
                timestamp: now.unix_ms,
                body: Some(body),
            });
        }
    }

    /// `moved`: what of the record's content is here already, moved (the
    /// rest is copied out of the record).
    fn apply_body(
        &mut self,
        now: Now,
        index: u64,
        body: &Body,
        moved: Moved,
        author: Author,
        fx: &mut Effects,
    ) -> Result<(), log::ReplayError> {
        let member = match &author {
            Author::Member(member) => Some(*member),
            _ => None,
        };
        match body {
            Body::Created(created) => {
                if index != 0 || created.session_id != *self.id {
                    return Err(log::damaged(
                        "a Created record that does not start this session",
                    ));
                }
                self.epoch = created.epoch;
            }
            Body::Presence(presence) if presence.joined => {
                self.apply_join(now, presence, author, fx);
            }
            Body::Presence(presence) => self.apply_leave(now, index, presence, fx),
            Body::Edit(edit) => {
                let op = match moved {
                    Moved::Edit(op) => op,
                    _ => line_op_from_store(edit.op.as_ref())?,
                };
                self.apply_edit_record(now, edit, op, member, fx);
            }
            Body::Comment(added) => {
                let comment = match moved {
                    Moved::Comment(comment) => comment,
                    _ => added
                        .comment
                        .clone()
                        .ok_or_else(|| log::damaged("a comment record without its comment"))?,
                };
                self.apply_comment(now, added, comment, member, fx);
            }
            Body::Upload(upload) => {
                let result = self.apply_upload(now, upload, fx);
                if matches!(author, Author::Uploader) {
                    fx.result = result.map(Done::Uploaded);
                }
            }
            Body::Refused(refused) => {
                let user: Text = Arc::from(refused.user_id.as_str());
                let error = ReviewError::from_code(refused.code, refused.message.clone());
                if self.claim(now, &user, refused.client_sequence, member, fx) {
                    self.refuse(now, &user, refused.client_sequence, error, member, fx);
                }
            }
            Body::Deleted(_) => {
                return Err(log::damaged(
                    "a Deleted record is the store's, not the session's",
                ));
            }
        }
        Ok(())
    }

    /// Whether a numbered message is new for its user. If it was processed
    /// already (a resend that raced its original into the log) nothing is
    /// applied and its author hears the earlier answer again.
    fn claim(
        &mut self,
        now: Now,
        user: &Text,
        client_sequence: u64,
        member: Option<MemberId>,
        fx: &mut Effects,
    ) -> bool {
        let verdict = match self.roster.user(user) {
            Some(state) if client_sequence != 0 => state.dedupe.check(client_sequence),
            _ => Verdict::New,
        };
        if verdict == Verdict::New {
            return true;
        }
        if let Some(member) = member {
            let reply = match self.answer_again(now, user, client_sequence, verdict) {
                Ok(reply) => reply,
                Err(error) => self.error_message(now, client_sequence, &error),
            };
            self.send_message(member, &reply, fx);
        }
        false
    }

    /// A numbered message's outcome is a refusal: remembered, and told to
    /// its author.
    pub(super) fn refuse(
        &mut self,
        now: Now,
        user: &Text,
        client_sequence: u64,
        error: ReviewError,
        member: Option<MemberId>,
        fx: &mut Effects,
    ) {
        if let Some(member) = member {
            let reply = self.error_message(now, client_sequence, &error);
            self.send_message(member, &reply, fx);
        }
        if client_sequence != 0 {
            self.remember(user, client_sequence, Outcome::Error(error));
        }
    }

    /// The record's user, created if the log has not named it before.
    fn user_for(&mut self, now: Now, name: &str, role: Role) -> Text {
        if let Some(known) = self.roster.user_name(name) {
            return known.clone();
        }
        let name: Text = Arc::from(name);
        let version = self.version;
        self.roster
            .ensure_user(&name, role, now.at, version, &self.limits);
        name
    }

    /// A stream joins. The user's first stream makes it present (JOINED for
    /// everyone); a stream of a user who is present already takes over (no
    /// event; the older stream, if it is here, ends). The joiner's stream,
    /// if it is here, is added with its catch-up from this position.
    fn apply_join(
        &mut self,
        now: Now,
        presence: &store::Presence,
        author: Author,
        fx: &mut Effects,
    ) {
        let role = role_from_store(presence.role);
        let stream: Text = Arc::from(presence.stream.as_str());
        let current = self
            .roster
            .user(&presence.user_id)
            .filter(|u| u.present)
            .map(|u| u.stream.clone());
        let joined_at = match current {
            Some(current) => {
                let name: Text = Arc::from(presence.user_id.as_str());
                if current.as_deref() != Some(&*stream) {
                    self.end_stream_here(&name, &current, replaced(), fx);
                }
                if let Some(state) = self.roster.user_mut(&name) {
                    state.stream = Some(stream);
                    state.role = role;
                }
                None
            }
            None => {
                let name = self.user_for(now, &presence.user_id, role);
                if let Some(state) = self.roster.user_mut(&name) {
                    state.role = role;
                    state.stream = Some(stream);
                }
                Some(self.announce_presence_change(now, &name, None, role, true, fx))
            }
        };
        if let Author::Joiner(request) = author {
            self.admit(now, request, joined_at, fx);
        }
    }

    /// A stream leaves. Only the user's current stream makes it leave (LEFT
    /// for everyone); if that stream is still open here (this process lost
    /// its lease and another instance wrote the LEFT), it ends now.
    fn apply_leave(&mut self, now: Now, index: u64, presence: &store::Presence, fx: &mut Effects) {
        let Some(state) = self.roster.user_mut(&presence.user_id) else {
            return;
        };
        if !state.present || state.stream.as_deref() != Some(presence.stream.as_str()) {
            return;
        }
        let role = state.role;
        state.departed_at = index;
        let stream = state.stream.take();
        let name: Text = Arc::from(presence.user_id.as_str());
        self.end_stream_here(
            &name,
            &stream,
            ReviewError::new(
                ErrorKind::Unavailable,
                "this server lost touch with the session's log and your stream was ended: reconnect and resume",
            ),
            fx,
        );
        self.announce_presence_change(now, &name, None, role, false, fx);
    }

    /// Ends the user's stream here if it is `stream` (without a LEFT: the
    /// log already says what became of the user).
    fn end_stream_here(
        &mut self,
        user: &Text,
        stream: &Option<Text>,
        error: ReviewError,
        fx: &mut Effects,
    ) {
        let Some(live) = self.roster.user(user).and_then(|u| u.live()) else {
            return;
        };
        let here = self.stream_of(live);
        if stream.as_deref() != Some(&*here) && stream.is_some() {
            // The user's stream here is not the one the log names: it is
            // the newer one (its join is on its way); leave it be.
            return;
        }
        if self.roster.detach(live).is_some() {
            self.forget_fed();
            fx.unwake(live);
            fx.closed.push((live, error));
        }
    }

    fn apply_edit_record(
        &mut self,
        now: Now,
        edit: &store::Edit,
        op: LineOp,
        member: Option<MemberId>,
        fx: &mut Effects,
    ) {
        let cs = edit.client_sequence;
        let user = self.user_for(now, &edit.user_id, Role::Author);
        if !self.claim(now, &user, cs, member, fx) {
            return;
        }
        let op = FileOp {
            path: self.doc.intern_path(Arc::from(edit.file_path.as_str())),
            op,
        };
        match self.edit_where_it_lands(&user, edit.base, edit.incoming_wins, op) {
            Ok(applied) => self.announce_edit(now, member, &user, cs, applied, fx),
            Err(error) => self.refuse(now, &user, cs, error, member, fx),
        }
    }

    /// An edit at this position: transformed from its base through the
    /// user's bridge (an untracked client's edit whose base is too old to
    /// transform applies to the current document as is).
    fn edit_where_it_lands(
        &mut self,
        user: &Text,
        base: i32,
        incoming_wins: bool,
        op: FileOp,
    ) -> Result<Option<FileOp>, ReviewError> {
        let current = self.version;
        if current == i32::MAX {
            return Err(ReviewError::exhausted(
                "the session reached its last version",
            ));
        }
        if base > current || base < 0 {
            return Err(ReviewError::new(
                ErrorKind::FailedPrecondition,
                format!("edit based on version {base}, but the session is at version {current}"),
            ));
        }
        let window = self.limits.transform_window;
        let can_sync = self
            .roster
            .user(user)
            .is_some_and(|u| u.bridge.can_sync(base, current, &self.ops));
        let base = match (can_sync, incoming_wins) {
            (true, _) => base,
            (false, true) => current,
            (false, false) => {
                return Err(ReviewError::new(
                    ErrorKind::FailedPrecondition,
                    format!(
                        "edit based on version {base} is too old to transform (the session keeps the last {window} operations); \
                         take a snapshot and retry"
                    ),
                ));
            }
        };
        self.edit_transition(user, base, incoming_wins, op)
    }

    fn apply_comment(
        &mut self,
        now: Now,
        added: &store::CommentAdded,
        mut comment: Comment,
        member: Option<MemberId>,
        fx: &mut Effects,
    ) {
        let cs = added.client_sequence;
        let user = self.user_for(now, &added.user_id, Role::Reviewer);
        if !self.claim(now, &user, cs, member, fx) {
            return;
        }
        match self.check_comment(&mut comment) {
            Ok(()) => self.announce_comment(now, member, &user, cs, comment, fx),
            Err(error) => self.refuse(now, &user, cs, error, member, fx),
        }
    }

    /// Whether a comment fits where it lands: a line that exists, a
    /// unique id (the server names it when the client did not).
    fn check_comment(&self, comment: &mut Comment) -> Result<(), ReviewError> {
        // A comment on a file must point at one of its lines, so that live
        // replicas and snapshots agree on where it is.
        if !comment.file_path.is_empty() {
            let Some(lines) = self.doc.file(&comment.file_path) else {
                return Err(ReviewError::new(
                    ErrorKind::NotFound,
                    format!("no file {:?} in this session", comment.file_path),
                ));
            };
            if comment.line_number < 0 || comment.line_number as usize >= lines.len() {
                return Err(ReviewError::new(
                    ErrorKind::OutOfRange,
                    format!(
                        "line {} is past the end of {} ({} lines, 0-based)",
                        comment.line_number,
                        comment.file_path,
                        lines.len()
                    ),
                ));
            }
        }
        if comment.comment_id.is_empty() {
            comment.comment_id = super::super::comments::server_comment_id(self.sequence + 1);
        }
        if self.comments.contains_id(&comment.comment_id) {
            return Err(ReviewError::new(
                ErrorKind::AlreadyExists,
                format!("comment {:?} already exists", comment.comment_id),
            ));
        }
        Ok(())
    }

    /// Replaces whole files (the limits were checked, all files together,
    /// when the upload was decided).
    fn apply_upload(
        &mut self,
        now: Now,
        upload: &store::Uploaded,
        fx: &mut Effects,
    ) -> Result<UploadOutcome, ReviewError> {
        if self
            .version
            .checked_add(upload.files.len() as i32)
            .is_none()
        {
            return Err(ReviewError::exhausted(
                "the session reached its last version",
            ));
        }
        let mut outcome = UploadOutcome::default();
        // The uploader is a user of the session from here (its edits may
        // be based on any version from before its upload on).
        let user = self.user_for(now, &upload.user_id, Role::Author);
        for file in &upload.files {
            let lines: Arc<[Text]> = file.lines.iter().map(|l| Arc::from(l.as_str())).collect();
            outcome.files += 1;
            outcome.lines += lines.len() as u32;
            outcome.bytes += lines.iter().map(|l| l.len() as u64 + 1).sum::<u64>();
            let op = FileOp {
                path: self.doc.intern_path(Arc::from(file.file_path.as_str())),
                op: LineOp::ReplaceFile { lines },
            };
            if self.doc.apply_unchecked(&op, APPLY_MAX_LINES).is_err() {
                // More lines than any limit allows: a damaged record.
                return Err(ReviewError::new(
                    ErrorKind::DataLoss,
                    format!("an upload of {} that cannot apply", op.path),
                ));
            }
            outcome.sequence = self.announce_file(now, &user, op, fx);
        }
        outcome.version = self.version;
        Ok(outcome)
    }
}

/// The most lines a file may get from the log, whatever the limits: a
/// damaged record must not make a replica allocate without bound.
pub(super) const APPLY_MAX_LINES: usize = 1 << 22;

/// What a stream replaced by a newer one of its user is told.
fn replaced() -> ReviewError {
    ReviewError::new(
        ErrorKind::Aborted,
        "replaced by a newer stream of the same user",
    )
}
