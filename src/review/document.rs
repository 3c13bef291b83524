//! A session's files: path → lines, with the session's budgets enforced
//! before an operation is applied (an operation that would break a limit is
//! refused whole, nothing changes).
//!
//! Two figures are kept for every line and file:
//! - its *encoded* size in a `Snapshot` (protobuf), the measure of the
//!   session's content budget (`--max-document-bytes`), so that whatever a
//!   session accepted can always be sent as one snapshot message;
//! - its *memory* (the text plus what holding it costs: the line's
//!   allocation header, the vector slot, the allocator's rounding), the
//!   measure of the process-wide memory budget (`--max-memory`). An empty
//!   line costs 2 encoded bytes but about 48 bytes of memory.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::error::{ErrorKind, ReviewError};
use super::ids::Text;
use super::limits::Limits;
use super::ot::{self, ApplyError, FileOp, LineOp};

/// Bytes of a protobuf varint holding `value`.
pub fn varint_len(value: usize) -> usize {
    let bits = usize::BITS - (value | 1).leading_zeros();
    bits.div_ceil(7) as usize
}

/// Bytes of a length-delimited protobuf field of `len` bytes (tag, length,
/// payload).
pub fn field_len(len: usize) -> usize {
    1 + varint_len(len) + len
}

/// A line's share of a snapshot: `repeated string lines` entry.
pub fn line_encoded(line: &str) -> usize {
    field_len(line.len())
}

/// What holding one line costs besides its text: the vector slot (16), the
/// shared string's header (16) and the allocator's overhead and rounding
/// (16), measured with glibc malloc (an empty line: 48 bytes).
pub const LINE_MEMORY_OVERHEAD: usize = 48;

/// What holding one file costs besides its lines' and path's bytes (the
/// map node, the vector and the path's own header).
pub const FILE_MEMORY_OVERHEAD: usize = 96;

pub fn line_memory(line: &str) -> usize {
    line.len() + LINE_MEMORY_OVERHEAD
}

/// A file's share of a snapshot besides its lines: the `FileContent`
/// field (tag and a length of at most 5 bytes) and its path field.
fn file_encoded(path: &str) -> usize {
    1 + 5 + field_len(path.len())
}

fn file_memory(path: &str) -> usize {
    path.len() + FILE_MEMORY_OVERHEAD
}

/// How much a session may still grow by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Room {
    /// Encoded snapshot bytes left in the session's content budget.
    pub encoded: usize,
    /// Memory left in the process-wide budget.
    pub memory: usize,
}

impl Room {
    /// Room without a limit (tests, replicas).
    pub const UNLIMITED: Room = Room {
        encoded: usize::MAX,
        memory: usize::MAX,
    };
}

/// What a checked operation will change (see [`Document::check`]).
#[derive(Debug, Clone, Copy)]
pub struct Change(Cost);

impl Change {
    /// Encoded bytes the operation adds, net.
    pub fn encoded_growth(&self) -> usize {
        self.0.encoded_added.saturating_sub(self.0.encoded_removed)
    }

    /// Memory the operation adds, net.
    pub fn memory_growth(&self) -> usize {
        self.0.memory_added.saturating_sub(self.0.memory_removed)
    }
}

/// What an operation changes in the two measures.
#[derive(Debug, Clone, Copy, Default)]
struct Cost {
    encoded_added: usize,
    encoded_removed: usize,
    memory_added: usize,
    memory_removed: usize,
}

#[derive(Debug, Default, Clone)]
pub struct Document {
    files: BTreeMap<Text, Vec<Text>>,
    encoded: usize,
    memory: usize,
}

impl Document {
    pub fn new() -> Self {
        Document::default()
    }

    /// Encoded snapshot bytes of the files (the content budget's measure).
    pub fn encoded_bytes(&self) -> usize {
        self.encoded
    }

    /// Estimated memory held by the files.
    pub fn memory_bytes(&self) -> usize {
        self.memory
    }

    /// The document's own `Arc` for a path it has (so equal paths share one
    /// allocation and compare by pointer), or the given one.
    pub fn intern_path(&self, path: Text) -> Text {
        match self.files.get_key_value(&*path) {
            Some((key, _)) => key.clone(),
            None => path,
        }
    }

    pub fn file(&self, path: &str) -> Option<&[Text]> {
        self.files.get(path).map(Vec::as_slice)
    }

    pub fn files(&self) -> impl Iterator<Item = (&Text, &Vec<Text>)> {
        self.files.iter()
    }

    /// What `op` would change, for a file of `lines` (`new_file`: not there
    /// yet). O(1) for line operations, O(lines) for a whole file.
    fn cost(path: &str, lines: &[Text], new_file: bool, op: &LineOp) -> Cost {
        let mut cost = Cost::default();
        if new_file {
            cost.encoded_added += file_encoded(path);
            cost.memory_added += file_memory(path);
        }
        let mut add = |line: &str| {
            cost.encoded_added += line_encoded(line);
            cost.memory_added += line_memory(line);
        };
        match op {
            LineOp::Replace { line, text } => {
                let line = *line as usize;
                for _ in lines.len()..line {
                    add("");
                }
                add(text);
                if line < lines.len() {
                    cost.encoded_removed += line_encoded(&lines[line]);
                    cost.memory_removed += line_memory(&lines[line]);
                }
            }
            LineOp::Insert { text, .. } => add(text),
            LineOp::Delete { line } => {
                let old = &lines[*line as usize];
                cost.encoded_removed += line_encoded(old);
                cost.memory_removed += line_memory(old);
            }
            LineOp::ReplaceFile { lines: new } => {
                for line in new.iter() {
                    add(line);
                }
                for old in lines {
                    cost.encoded_removed += line_encoded(old);
                    cost.memory_removed += line_memory(old);
                }
            }
            LineOp::Noop => {}
        }
        cost
    }

    /// Applies `op` if the session has `room` for it.
    pub fn apply(&mut self, op: &FileOp, limits: &Limits, room: Room) -> Result<(), ReviewError> {
        let change = self.check(op, limits, room, 0)?;
        self.apply_checked(op, change);
        Ok(())
    }

    /// Applies `op` whatever the byte budgets: replaying the log, what was
    /// accepted once is applied again (budgets may have changed since). A
    /// file is still never made longer than `max_lines` (a damaged record
    /// must not make the replay allocate without bound).
    pub fn apply_unchecked(&mut self, op: &FileOp, max_lines: usize) -> Result<(), ApplyError> {
        if op.is_noop() {
            return Ok(());
        }
        let lines = self.files.get(&op.path).map_or(&[][..], Vec::as_slice);
        ot::check(lines.len(), &op.op)?;
        let new_len = match &op.op {
            LineOp::Replace { line, .. } => lines.len().max(*line as usize + 1),
            LineOp::Insert { .. } => lines.len() + 1,
            LineOp::ReplaceFile { lines } => lines.len(),
            LineOp::Delete { .. } | LineOp::Noop => 0,
        };
        if new_len > max_lines {
            return Err(ApplyError::OutOfRange(format!(
                "{} would have {new_len} lines, over the limit of {max_lines} (--max-lines)",
                op.path
            )));
        }
        let cost = Self::cost(&op.path, lines, !self.files.contains_key(&op.path), &op.op);
        self.apply_checked(op, Change(cost));
        Ok(())
    }

    /// Applies an operation [`Document::check`] accepted (nothing changed
    /// in between).
    pub fn apply_checked(&mut self, op: &FileOp, change: Change) {
        if op.is_noop() {
            return;
        }
        let lines = self.files.entry(op.path.clone()).or_default();
        ot::apply(lines, &op.op).expect("checked");
        let cost = change.0;
        self.encoded = self.encoded + cost.encoded_added - cost.encoded_removed;
        self.memory = self.memory + cost.memory_added - cost.memory_removed;
    }

    /// Whether `op` can apply within the limits and `room`, and what it
    /// would change. `new_files` is how many files the same batch (an
    /// upload) adds before this one.
    pub fn check(
        &self,
        op: &FileOp,
        limits: &Limits,
        room: Room,
        new_files: usize,
    ) -> Result<Change, ReviewError> {
        if op.is_noop() {
            return Ok(Change(Cost::default()));
        }
        let existing = self.files.get(&op.path);
        let is_new_file = existing.is_none();
        if is_new_file && self.files.len() + new_files >= limits.max_files {
            return Err(ReviewError::exhausted(format!(
                "the session already has {} files (limit)",
                limits.max_files
            )));
        }
        let lines = existing.map_or(&[][..], Vec::as_slice);
        ot::check(lines.len(), &op.op).map_err(|ApplyError::OutOfRange(message)| {
            ReviewError::new(ErrorKind::OutOfRange, format!("{message} ({})", op.path))
        })?;
        let new_len = match &op.op {
            LineOp::Replace { line, .. } => lines.len().max(*line as usize + 1),
            LineOp::Insert { .. } => lines.len() + 1,
            LineOp::Delete { .. } => lines.len() - 1,
            LineOp::ReplaceFile { lines: new } => new.len(),
            LineOp::Noop => lines.len(),
        };
        if new_len > limits.max_lines_per_file {
            return Err(ReviewError::exhausted(format!(
                "{} would have {new_len} lines; the limit is {}",
                op.path, limits.max_lines_per_file
            )));
        }
        let cost = Self::cost(&op.path, lines, is_new_file, &op.op);
        let encoded_growth = cost.encoded_added.saturating_sub(cost.encoded_removed);
        if encoded_growth > room.encoded {
            return Err(ReviewError::exhausted(format!(
                "the session would hold more than {} bytes of content (limit; counted as a snapshot encodes it)",
                limits.max_document_bytes
            )));
        }
        let memory_growth = cost.memory_added.saturating_sub(cost.memory_removed);
        if memory_growth > room.memory {
            return Err(ReviewError::exhausted(
                "the server's memory budget is used up: the session cannot grow now",
            ));
        }
        Ok(Change(cost))
    }

    /// Builds a document from (path, lines) pairs, unchecked (tests, replicas).
    pub fn from_files(files: impl IntoIterator<Item = (Text, Vec<Text>)>) -> Self {
        let mut doc = Document::new();
        for (path, lines) in files {
            let cost = Self::cost(
                &path,
                &[],
                true,
                &LineOp::ReplaceFile {
                    lines: Arc::from(lines.as_slice()),
                },
            );
            doc.encoded += cost.encoded_added;
            doc.memory += cost.memory_added;
            doc.files.insert(path, lines);
        }
        doc
    }
}

/// Splits text into lines for a document (a trailing newline ends the last
/// line, it does not start a new one).
pub fn split_lines(text: &str) -> Vec<Text> {
    let trimmed = text.strip_suffix('\n').unwrap_or(text);
    if text.is_empty() {
        return Vec::new();
    }
    trimmed
        .split('\n')
        .map(|line| Arc::from(line.strip_suffix('\r').unwrap_or(line)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(line_op: LineOp) -> FileOp {
        FileOp {
            path: Arc::from("a.rs"),
            op: line_op,
        }
    }

    /// The room a session with this document and `other` encoded bytes
    /// elsewhere (comments) has left.
    fn room(doc: &Document, limits: &Limits, other: usize) -> Room {
        Room {
            encoded: limits
                .max_document_bytes
                .saturating_sub(doc.encoded_bytes() + other),
            memory: usize::MAX,
        }
    }

    fn apply(
        doc: &mut Document,
        limits: &Limits,
        other: usize,
        line_op: LineOp,
    ) -> Result<(), ReviewError> {
        let room = room(doc, limits, other);
        doc.apply(&op(line_op), limits, room)
    }

    #[test]
    fn budget_is_tracked_and_enforced() {
        let limits = Limits {
            max_document_bytes: 40,
            max_lines_per_file: 3,
            ..Limits::default()
        };
        let file = 1 + 5 + 1 + 1 + 4; // FileContent field + path field
        let mut doc = Document::new();
        let hello = LineOp::Insert {
            line: 0,
            text: Arc::from("hello"),
        };
        apply(&mut doc, &limits, 0, hello).unwrap();
        assert_eq!(doc.encoded_bytes(), file + 7);
        let hi = LineOp::Replace {
            line: 0,
            text: Arc::from("hi"),
        };
        apply(&mut doc, &limits, 0, hi).unwrap();
        assert_eq!(doc.encoded_bytes(), file + 4);
        // Replacing past the end adds empty lines (2 bytes each).
        let x = LineOp::Replace {
            line: 2,
            text: Arc::from("x"),
        };
        apply(&mut doc, &limits, 0, x).unwrap();
        assert_eq!(doc.encoded_bytes(), file + 4 + 2 + 3);
        // A fourth line breaks the line limit; nothing changes.
        let y = LineOp::Insert {
            line: 0,
            text: Arc::from("y"),
        };
        let err = apply(&mut doc, &limits, 0, y).unwrap_err();
        assert_eq!(err.kind, ErrorKind::ResourceExhausted);
        assert_eq!(doc.file("a.rs").unwrap().len(), 3);
        // The byte budget counts other holdings too.
        let z = LineOp::Replace {
            line: 1,
            text: Arc::from("zzz"),
        };
        let err = apply(&mut doc, &limits, 20, z).unwrap_err();
        assert_eq!(err.kind, ErrorKind::ResourceExhausted);
        apply(&mut doc, &limits, 0, LineOp::Delete { line: 0 }).unwrap();
        assert_eq!(doc.encoded_bytes(), file + 2 + 3);
    }

    #[test]
    fn the_memory_room_refuses_growth_but_not_shrinking() {
        let limits = Limits::default();
        let mut doc = Document::new();
        let lines: Vec<Text> = (0..100).map(|_| Arc::from("")).collect();
        let upload = op(LineOp::ReplaceFile {
            lines: Arc::from(lines.as_slice()),
        });
        let tight = Room {
            encoded: usize::MAX,
            memory: 100 * LINE_MEMORY_OVERHEAD,
        };
        let err = doc.apply(&upload, &limits, tight).unwrap_err();
        assert_eq!(err.kind, ErrorKind::ResourceExhausted);
        assert!(doc.file("a.rs").is_none());
        doc.apply(&upload, &limits, Room::UNLIMITED).unwrap();
        assert!(doc.memory_bytes() >= 100 * LINE_MEMORY_OVERHEAD);
        let none_left = Room {
            encoded: usize::MAX,
            memory: 0,
        };
        doc.apply(&op(LineOp::Delete { line: 0 }), &limits, none_left)
            .unwrap();
        let err = doc
            .apply(
                &op(LineOp::Insert {
                    line: 0,
                    text: Arc::from(""),
                }),
                &limits,
                none_left,
            )
            .unwrap_err();
        assert_eq!(err.kind, ErrorKind::ResourceExhausted);
    }

    /// The content budget is an upper bound of the snapshot's real size,
    /// and a close one, for empty lines (the worst case) and long ones.
    #[test]
    fn encoded_bytes_bound_the_snapshot() {
        use crate::pb::codereview::{FileContent, Snapshot};
        use prost::Message;
        for text in ["", "fn main() { println!(\"hello\"); }", &"x".repeat(300)] {
            let lines: Vec<Text> = (0..5000).map(|_| Arc::from(text)).collect();
            let doc = Document::from_files([
                (Arc::from("src/a.rs"), lines.clone()),
                (Arc::from("b"), lines),
            ]);
            let snapshot = Snapshot {
                files: doc
                    .files()
                    .map(|(path, lines)| FileContent {
                        file_path: path.to_string(),
                        lines: lines.iter().map(|l| l.to_string()).collect(),
                        version: 0,
                    })
                    .collect(),
                ..Snapshot::default()
            };
            let real = snapshot.encoded_len();
            assert!(
                real <= doc.encoded_bytes(),
                "{real} > {}",
                doc.encoded_bytes()
            );
            assert!(
                doc.encoded_bytes() - real <= 16,
                "{real} vs {}",
                doc.encoded_bytes()
            );
        }
    }

    #[test]
    fn varints() {
        assert_eq!(varint_len(0), 1);
        assert_eq!(varint_len(127), 1);
        assert_eq!(varint_len(128), 2);
        assert_eq!(varint_len(16_383), 2);
        assert_eq!(varint_len(16_384), 3);
        assert_eq!(varint_len(usize::MAX), 10);
    }

    #[test]
    fn out_of_range_is_reported() {
        let mut doc = Document::new();
        let err = doc
            .apply(
                &op(LineOp::Delete { line: 0 }),
                &Limits::default(),
                Room::UNLIMITED,
            )
            .unwrap_err();
        assert_eq!(err.kind, ErrorKind::OutOfRange);
        assert!(doc.file("a.rs").is_none());
    }

    #[test]
    fn lines_split() {
        assert_eq!(split_lines(""), Vec::<Text>::new());
        assert_eq!(split_lines("a\nb\n"), vec![Arc::from("a"), Arc::from("b")]);
        assert_eq!(split_lines("a\r\nb"), vec![Arc::from("a"), Arc::from("b")]);
        assert_eq!(split_lines("\n"), vec![Arc::from("")]);
    }
}
