//! How client commands print what they receive: one line per event, for
//! people (`[12] alice edit main.rs:3 replace "..." v5`) or as JSON lines.

use crate::logging::push_json_string;
use crate::pb::codereview::{
    Role, SessionMessage, Snapshot, code_edit::Op, joined::Catchup, notice::Kind as NoticeKind,
    presence_update::Status as Presence, session_message::Payload,
};

/// Output style.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    Human,
    Json,
}

/// A JSON object written field by field.
#[derive(Debug, Default)]
pub struct JsonObject {
    out: String,
}

impl JsonObject {
    pub fn new() -> Self {
        JsonObject {
            out: String::from("{"),
        }
    }

    fn key(&mut self, key: &str) {
        if self.out.len() > 1 {
            self.out.push(',');
        }
        push_json_string(&mut self.out, key);
        self.out.push(':');
    }

    pub fn str(mut self, key: &str, value: &str) -> Self {
        self.key(key);
        push_json_string(&mut self.out, value);
        self
    }

    pub fn num(mut self, key: &str, value: impl Into<f64> + std::fmt::Display) -> Self {
        self.key(key);
        self.out.push_str(&value.to_string());
        self
    }

    pub fn int(mut self, key: &str, value: i64) -> Self {
        self.key(key);
        self.out.push_str(&value.to_string());
        self
    }

    pub fn uint(mut self, key: &str, value: u64) -> Self {
        self.key(key);
        self.out.push_str(&value.to_string());
        self
    }

    pub fn boolean(mut self, key: &str, value: bool) -> Self {
        self.key(key);
        self.out.push_str(if value { "true" } else { "false" });
        self
    }

    /// A value that is already JSON.
    pub fn raw(mut self, key: &str, json: &str) -> Self {
        self.key(key);
        self.out.push_str(json);
        self
    }

    pub fn finish(mut self) -> String {
        self.out.push('}');
        self.out
    }
}

/// A JSON array of strings.
pub fn json_strings<'a>(items: impl IntoIterator<Item = &'a str>) -> String {
    let mut out = String::from("[");
    for (i, item) in items.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        push_json_string(&mut out, item);
    }
    out.push(']');
    out
}

fn op_name(op: i32) -> &'static str {
    match Op::try_from(op) {
        Ok(Op::Replace) => "replace",
        Ok(Op::Insert) => "insert",
        Ok(Op::Delete) => "delete",
        Err(_) => "unknown",
    }
}

fn presence_name(status: i32) -> &'static str {
    match Presence::try_from(status) {
        Ok(Presence::Joined) => "joined",
        Ok(Presence::Active) => "active",
        Ok(Presence::Idle) => "idle",
        Ok(Presence::Left) => "left",
        Err(_) => "unknown",
    }
}

pub fn role_name(role: i32) -> &'static str {
    match Role::try_from(role) {
        Ok(Role::Author) => "author",
        Ok(Role::Reviewer) => "reviewer",
        Ok(Role::Observer) => "observer",
        _ => "unspecified",
    }
}

fn notice_name(kind: i32) -> &'static str {
    match NoticeKind::try_from(kind) {
        Ok(NoticeKind::TokenExpiring) => "token_expiring",
        Ok(NoticeKind::GoingAway) => "going_away",
        Ok(NoticeKind::CaughtUp) => "caught_up",
        Ok(NoticeKind::TokenRefreshed) => "token_refreshed",
        _ => "notice",
    }
}

/// One line for a received message (None for nothing worth printing).
pub fn event_line(message: &SessionMessage, style: Style) -> Option<String> {
    let payload = message.payload.as_ref()?;
    if style == Style::Human
        && let Payload::Ack(ack) = payload
        && ack.client_sequence == 0
    {
        // Bookkeeping (one's own join or leave in a replay): not for people.
        return None;
    }
    let seq = message.sequence;
    let user = message.user_id.as_str();
    Some(match style {
        Style::Human => match payload {
            Payload::Edit(e) => format!(
                "[{seq}] {user} {} {}:{} {:?} (v{})",
                op_name(e.op),
                e.file_path,
                e.line_number,
                e.content,
                e.version
            ),
            Payload::Comment(c) => {
                let place = if c.file_path.is_empty() {
                    format!("line {}", c.line_number)
                } else {
                    format!("{}:{}", c.file_path, c.line_number)
                };
                format!(
                    "[{seq}] {user} comment {} on {place}: {}",
                    c.comment_id, c.text
                )
            }
            Payload::Cursor(c) => format!("{user} cursor {}:{}:{}", c.file_path, c.line, c.column),
            Payload::Presence(p) => format!("[{seq}] {user} {}", presence_name(p.status)),
            Payload::File(f) => format!(
                "[{seq}] {user} uploaded {} ({} lines, v{})",
                f.file_path,
                f.lines.len(),
                f.version
            ),
            Payload::Joined(j) => format!(
                "joined as {} (epoch {}, at sequence {}, version {}, catch-up: {})",
                role_name(j.role),
                j.session_epoch,
                j.sequence,
                j.version,
                Catchup::try_from(j.catchup).map_or("unknown", |c| c.as_str_name())
            ),
            Payload::Ack(a) => {
                let mut line = format!(
                    "ack #{} seq {} v{}",
                    a.client_sequence, a.sequence, a.version
                );
                if a.duplicate {
                    line.push_str(" (duplicate)");
                }
                if a.noop {
                    line.push_str(" (no-op: cancelled by a concurrent edit)");
                }
                line
            }
            Payload::Error(e) => format!(
                "error #{}: {}: {}",
                e.client_sequence,
                crate::grpc::Code::from_i32(e.code).name(),
                e.message
            ),
            Payload::Snapshot(s) => format!(
                "snapshot: {} files, {} comments, {} participants (sequence {}, version {})",
                s.files.len(),
                s.comments.len(),
                s.participants.len(),
                s.sequence,
                s.version
            ),
            Payload::Notice(n) => format!("notice {}: {}", notice_name(n.kind), n.text),
            Payload::Join(_) | Payload::TokenRefresh(_) => return None,
        },
        Style::Json => {
            let base = JsonObject::new()
                .uint("seq", seq)
                .str("user", user)
                .int("ts", message.timestamp);
            match payload {
                Payload::Edit(e) => base
                    .str("type", "edit")
                    .str("op", op_name(e.op))
                    .str("file", &e.file_path)
                    .int("line", e.line_number.into())
                    .str("content", &e.content)
                    .int("version", e.version.into()),
                Payload::Comment(c) => base
                    .str("type", "comment")
                    .str("id", &c.comment_id)
                    .str("file", &c.file_path)
                    .int("line", c.line_number.into())
                    .str("text", &c.text),
                Payload::Cursor(c) => base
                    .str("type", "cursor")
                    .str("file", &c.file_path)
                    .int("line", c.line.into())
                    .int("column", c.column.into()),
                Payload::Presence(p) => base
                    .str("type", "presence")
                    .str("status", presence_name(p.status))
                    .str("role", role_name(p.role)),
                Payload::File(f) => base
                    .str("type", "file")
                    .str("file", &f.file_path)
                    .raw("lines", &json_strings(f.lines.iter().map(String::as_str)))
                    .int("version", f.version.into()),
                Payload::Joined(j) => base
                    .str("type", "joined")
                    .uint("epoch", j.session_epoch)
                    .uint("sequence", j.sequence)
                    .int("version", j.version.into())
                    .str(
                        "catchup",
                        Catchup::try_from(j.catchup).map_or("unknown", |c| c.as_str_name()),
                    )
                    .str("role", role_name(j.role)),
                Payload::Ack(a) => base
                    .str("type", "ack")
                    .uint("client_sequence", a.client_sequence)
                    .uint("sequence", a.sequence)
                    .int("version", a.version.into())
                    .boolean("duplicate", a.duplicate)
                    .boolean("noop", a.noop),
                Payload::Error(e) => base
                    .str("type", "error")
                    .str("code", crate::grpc::Code::from_i32(e.code).name())
                    .str("message", &e.message)
                    .uint("client_sequence", e.client_sequence),
                Payload::Snapshot(s) => base
                    .str("type", "snapshot")
                    .raw("snapshot", &snapshot_json(s)),
                Payload::Notice(n) => base
                    .str("type", "notice")
                    .str("kind", notice_name(n.kind))
                    .str("text", &n.text)
                    .int("at", n.at),
                Payload::Join(_) | Payload::TokenRefresh(_) => return None,
            }
            .finish()
        }
    })
}

/// A snapshot as one JSON object.
pub fn snapshot_json(snapshot: &Snapshot) -> String {
    let mut files = String::from("{");
    for (i, file) in snapshot.files.iter().enumerate() {
        if i > 0 {
            files.push(',');
        }
        push_json_string(&mut files, &file.file_path);
        files.push(':');
        files.push_str(&json_strings(file.lines.iter().map(String::as_str)));
    }
    files.push('}');
    let comments: Vec<String> = snapshot
        .comments
        .iter()
        .filter_map(|entry| {
            let c = entry.comment.as_ref()?;
            Some(
                JsonObject::new()
                    .str("id", &c.comment_id)
                    .str("user", &entry.user_id)
                    .str("file", &c.file_path)
                    .int("line", c.line_number.into())
                    .str("text", &c.text)
                    .uint("seq", entry.sequence)
                    .finish(),
            )
        })
        .collect();
    let participants: Vec<String> = snapshot
        .participants
        .iter()
        .map(|p| {
            let mut o = JsonObject::new()
                .str("user", &p.user_id)
                .str("status", presence_name(p.status))
                .str("role", role_name(p.role));
            if let Some(c) = &p.cursor {
                o = o.raw(
                    "cursor",
                    &JsonObject::new()
                        .str("file", &c.file_path)
                        .int("line", c.line.into())
                        .int("column", c.column.into())
                        .finish(),
                );
            }
            o.finish()
        })
        .collect();
    JsonObject::new()
        .str("session", &snapshot.session_id)
        .uint("epoch", snapshot.session_epoch)
        .uint("sequence", snapshot.sequence)
        .int("version", snapshot.version.into())
        .raw("files", &files)
        .raw("comments", &format!("[{}]", comments.join(",")))
        .raw("participants", &format!("[{}]", participants.join(",")))
        .finish()
}

/// A snapshot for people.
pub fn snapshot_text(snapshot: &Snapshot) -> String {
    let mut out = format!(
        "session {} (epoch {}), sequence {}, version {}\n",
        snapshot.session_id, snapshot.session_epoch, snapshot.sequence, snapshot.version
    );
    for file in &snapshot.files {
        out.push_str(&format!(
            "== {} ({} lines)\n",
            file.file_path,
            file.lines.len()
        ));
        for (i, line) in file.lines.iter().enumerate() {
            out.push_str(&format!("{i:>5} | {line}\n"));
        }
    }
    for entry in &snapshot.comments {
        if let Some(c) = &entry.comment {
            let place = if c.file_path.is_empty() {
                format!("line {}", c.line_number)
            } else {
                format!("{}:{}", c.file_path, c.line_number)
            };
            out.push_str(&format!(
                "comment {} by {} on {place}: {}\n",
                c.comment_id, entry.user_id, c.text
            ));
        }
    }
    for p in &snapshot.participants {
        out.push_str(&format!(
            "participant {} ({}, {})",
            p.user_id,
            role_name(p.role),
            presence_name(p.status)
        ));
        if let Some(c) = &p.cursor {
            out.push_str(&format!(" at {}:{}:{}", c.file_path, c.line, c.column));
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb::codereview::CodeEdit;

    #[test]
    fn edits_render_both_ways() {
        let message = SessionMessage {
            sequence: 3,
            user_id: "ann".into(),
            payload: Some(Payload::Edit(CodeEdit {
                file_path: "a.rs".into(),
                line_number: 2,
                content: "say \"hi\"".into(),
                version: 7,
                op: 1,
            })),
            ..Default::default()
        };
        assert_eq!(
            event_line(&message, Style::Human).unwrap(),
            "[3] ann insert a.rs:2 \"say \\\"hi\\\"\" (v7)"
        );
        assert_eq!(
            event_line(&message, Style::Json).unwrap(),
            r#"{"seq":3,"user":"ann","ts":0,"type":"edit","op":"insert","file":"a.rs","line":2,"content":"say \"hi\"","version":7}"#
        );
    }
}
