//! The actions that change a session: edits (transformed against what the
//! sender had not seen, through its Jupiter bridge built from the operation
//! log), comments (kept anchored), cursors and uploads.

use super::*;

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
        let current = self.version;
        if current == i32::MAX {
            return Err(ReviewError::exhausted(
                "the session reached its last version",
            ));
        }
        let oldest_logged = self.ops.front().map_or(current + 1, |(v, _, _)| *v);
        let Some(sender) = self.members.get_mut(&member) else {
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
        let state = self.users.get_mut(user).expect("exists");
        // Transformable if the bridge still holds what follows `base` up to
        // `synced_to`, and the log holds what follows that.
        let bridge_ok = base >= state.bridge_floor || base >= state.synced_to;
        let log_ok = base.max(state.synced_to) + 1 >= oldest_logged;
        if !(bridge_ok && log_ok) {
            if tracked {
                return Err(ReviewError::new(
                    ErrorKind::FailedPrecondition,
                    format!(
                        "edit based on version {base} is too old to transform (the session keeps the last {} operations); \
                         take a snapshot and retry",
                        self.limits.transform_window
                    ),
                ));
            }
            base = current;
        }
        // Materialize: drop what the client has seen, add the others'
        // operations since the last sync.
        while state.bridge.front().is_some_and(|(v, _)| *v <= base) {
            state.bridge.pop_front();
        }
        let from = base.max(state.synced_to);
        // The log is in version order: start right after `from`.
        let start = self.ops.partition_point(|(version, _, _)| *version <= from);
        for (version, author, logged) in self.ops.range(start..) {
            if author.as_ref() != Some(user) {
                state.bridge.push_back((*version, logged.clone()));
            }
        }
        state.synced_to = current;
        let window = self.limits.transform_window.max(1);
        while state.bridge.len() > window {
            if let Some((dropped, _)) = state.bridge.pop_front() {
                state.bridge_floor = dropped;
            }
        }
        let mut op = FileOp {
            path: self.doc.intern_path(edit.path),
            op: edit.op,
        };
        if !state.bridge.is_empty() {
            self.counters.edits_transformed += 1;
        }
        // Transform through the bridge. Only entries on the same file
        // interact; for each, remember the form the edit had when it met the
        // entry, so the entries can be transformed in place once the edit is
        // known to apply (nothing changes if it does not).
        let mut met: Vec<(usize, FileOp)> = Vec::new();
        for (index, (_, applied)) in state.bridge.iter().enumerate() {
            if !ot::same_file(&op, applied) {
                continue;
            }
            let next = ot::transform(&op, applied, incoming_wins);
            met.push((index, std::mem::replace(&mut op, next)));
        }
        let noop = op.is_noop();
        if !noop {
            let room = self.room();
            self.doc.apply(&op, &self.limits, room)?;
        }
        let state = self.users.get_mut(user).expect("exists");
        for (index, before) in met {
            let entry = &mut state.bridge[index].1;
            *entry = ot::transform(entry, &before, !incoming_wins);
        }
        if noop {
            let info = AckInfo {
                client_sequence,
                version: current,
                comment_id: String::new(),
            };
            let ack = self.ack_message(now, user, &info, 0, false, true);
            self.send_message(member, &ack, fx);
            self.remember_ack(user, client_sequence, &ack);
            return Ok(());
        }
        self.version += 1;
        let version = self.version;
        state.synced_to = version;
        self.log_op(version, Some(user.clone()), &op);
        self.reanchor_comments(&op);
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
            member: Some(member),
            ack: Some(info.clone()),
        };
        let sequence = self.broadcast(now, origin, payload, fx);
        if client_sequence != 0 {
            let ack = self.ack_message(now, user, &info, sequence, false, false);
            self.remember_ack(user, client_sequence, &ack);
        }
        Ok(())
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

    /// Records an applied operation in the log users' bridges are built from.
    pub(super) fn log_op(&mut self, version: i32, author: Option<Text>, op: &FileOp) {
        self.ops_bytes += op_bytes(op);
        self.ops.push_back((version, author, op.clone()));
        let window = self.limits.transform_window.max(1);
        while self.ops.len() > window
            || (self.ops_bytes > self.limits.history_bytes && self.ops.len() > 1)
        {
            if let Some((_, _, dropped)) = self.ops.pop_front() {
                self.ops_bytes -= op_bytes(&dropped);
            }
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
                self.limits.max_session_bytes
            )));
        }
        if Comments::memory_cost(&entry) > room.memory {
            return Err(ReviewError::exhausted(
                "the server's memory budget is used up: the session cannot grow now",
            ));
        }
        let info = AckInfo {
            client_sequence,
            version: self.version,
            comment_id,
        };
        let origin = Origin::Participant {
            user,
            member: Some(member),
            ack: Some(info.clone()),
        };
        let sequence = self.broadcast(now, origin, Payload::Comment(comment), fx);
        debug_assert_eq!(sequence, entry.sequence);
        self.comments.push(entry);
        if client_sequence != 0 {
            let ack = self.ack_message(now, user, &info, sequence, false, false);
            self.remember_ack(user, client_sequence, &ack);
        }
        Ok(())
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
        self.users.get_mut(user).expect("exists").cursor = Some(cursor.clone());
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
            self.remember_ack(user, client_sequence, &ack);
        }
    }

    /// Replaces whole files (the author seeds the session). Atomic: either
    /// every file is applied or none.
    pub fn upload(
        &mut self,
        now: Now,
        user: &Text,
        files: Vec<(Text, Vec<Text>)>,
        _proof: MayUpload,
        fx: &mut Effects,
    ) -> Result<UploadOutcome, ReviewError> {
        // An upload counts against its author's rate limits like messages:
        // one per file, and its bytes.
        let bytes: usize = files
            .iter()
            .map(|(path, lines)| path.len() + lines.iter().map(|l| l.len() + 1).sum::<usize>())
            .sum();
        let limits = self.limits.clone();
        self.ensure_user(now, user, Role::Author)?.rate.admit(
            now.at,
            files.len().max(1),
            bytes,
            &limits,
        )?;
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
        for (op, change) in ops.iter().zip(changes) {
            self.doc.apply_checked(op, change);
        }
        for op in ops {
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
            self.log_op(version, None, &replaced);
            self.reanchor_comments(&op);
            let LineOp::ReplaceFile { lines } = &op.op else {
                unreachable!()
            };
            let payload = Payload::File(FileContent {
                file_path: op.path.to_string(),
                lines: lines.iter().map(|l| l.to_string()).collect(),
                version,
            });
            outcome.sequence = self.broadcast(now, Origin::Server { user_id: user }, payload, fx);
        }
        outcome.version = self.version;
        self.settle(now, fx);
        Ok(outcome)
    }
}
