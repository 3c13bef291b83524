//! A session's files: path → lines, with the byte and count budget enforced
//! before an operation is applied (an operation that would break a limit is
//! refused whole, nothing changes).

use std::collections::BTreeMap;
use std::sync::Arc;

use super::error::{ErrorKind, ReviewError};
use super::limits::Limits;
use super::ot::{self, ApplyError, FileOp, LineOp, Text};

/// What one line costs in the budget: its bytes plus a newline.
fn line_cost(line: &str) -> usize {
    line.len() + 1
}

#[derive(Debug, Default, Clone)]
pub struct Document {
    files: BTreeMap<Text, Vec<Text>>,
    bytes: usize,
}

impl Document {
    pub fn new() -> Self {
        Document::default()
    }

    /// Bytes of content held (lines with newlines, plus paths).
    pub fn bytes(&self) -> usize {
        self.bytes
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

    /// Applies `op`. `other_bytes` is what the session holds besides the
    /// document (comments), counted against the same session budget.
    pub fn apply(
        &mut self,
        op: &FileOp,
        limits: &Limits,
        other_bytes: usize,
    ) -> Result<(), ReviewError> {
        if op.is_noop() {
            return Ok(());
        }
        let existing = self.files.get(&op.path);
        let is_new_file = existing.is_none();
        if is_new_file && self.files.len() >= limits.max_files {
            return Err(ReviewError::exhausted(format!(
                "the session already has {} files (limit)",
                limits.max_files
            )));
        }
        let empty = Vec::new();
        let lines = existing.unwrap_or(&empty);
        ot::check(lines.len(), &op.op).map_err(|ApplyError::OutOfRange(message)| {
            ReviewError::new(ErrorKind::OutOfRange, format!("{message} ({})", op.path))
        })?;
        let (added, removed, new_len) = match &op.op {
            LineOp::Replace { line, text } => {
                let line = *line as usize;
                if line < lines.len() {
                    (line_cost(text), line_cost(&lines[line]), lines.len())
                } else {
                    ((line - lines.len()) + line_cost(text), 0, line + 1)
                }
            }
            LineOp::Insert { text, .. } => (line_cost(text), 0, lines.len() + 1),
            LineOp::Delete { line } => (0, line_cost(&lines[*line as usize]), lines.len() - 1),
            LineOp::ReplaceFile { lines: new } => (
                new.iter().map(|l| line_cost(l)).sum(),
                lines.iter().map(|l| line_cost(l)).sum(),
                new.len(),
            ),
            LineOp::Noop => (0, 0, lines.len()),
        };
        if new_len > limits.max_lines_per_file {
            return Err(ReviewError::exhausted(format!(
                "{} would have {new_len} lines; the limit is {}",
                op.path, limits.max_lines_per_file
            )));
        }
        let path_cost = if is_new_file { op.path.len() } else { 0 };
        let after = self.bytes + added + path_cost - removed;
        if after + other_bytes > limits.max_session_bytes {
            return Err(ReviewError::exhausted(format!(
                "the session would hold {} bytes; the limit is {}",
                after + other_bytes,
                limits.max_session_bytes
            )));
        }
        let lines = self.files.entry(op.path.clone()).or_default();
        ot::apply(lines, &op.op).expect("checked above");
        self.bytes = after;
        Ok(())
    }

    /// Builds a document from (path, lines) pairs, unchecked (tests, replicas).
    pub fn from_files(files: impl IntoIterator<Item = (Text, Vec<Text>)>) -> Self {
        let mut doc = Document::new();
        for (path, lines) in files {
            doc.bytes += path.len() + lines.iter().map(|l| line_cost(l)).sum::<usize>();
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

    #[test]
    fn budget_is_tracked_and_enforced() {
        let limits = Limits {
            max_session_bytes: 30,
            max_lines_per_file: 3,
            ..Limits::default()
        };
        let mut doc = Document::new();
        doc.apply(
            &op(LineOp::Insert {
                line: 0,
                text: Arc::from("hello"),
            }),
            &limits,
            0,
        )
        .unwrap();
        assert_eq!(doc.bytes(), 4 + 6);
        doc.apply(
            &op(LineOp::Replace {
                line: 0,
                text: Arc::from("hi"),
            }),
            &limits,
            0,
        )
        .unwrap();
        assert_eq!(doc.bytes(), 4 + 3);
        // A fourth line breaks the line limit; nothing changes.
        doc.apply(
            &op(LineOp::Replace {
                line: 2,
                text: Arc::from("x"),
            }),
            &limits,
            0,
        )
        .unwrap();
        let err = doc
            .apply(
                &op(LineOp::Insert {
                    line: 0,
                    text: Arc::from("y"),
                }),
                &limits,
                0,
            )
            .unwrap_err();
        assert_eq!(err.kind, ErrorKind::ResourceExhausted);
        assert_eq!(doc.file("a.rs").unwrap().len(), 3);
        // The byte budget counts other holdings too.
        let err = doc
            .apply(
                &op(LineOp::Replace {
                    line: 0,
                    text: Arc::from("z"),
                }),
                &limits,
                25,
            )
            .unwrap_err();
        assert_eq!(err.kind, ErrorKind::ResourceExhausted);
        doc.apply(&op(LineOp::Delete { line: 0 }), &limits, 0)
            .unwrap();
        assert_eq!(doc.bytes(), 4 + 1 + 2);
    }

    #[test]
    fn out_of_range_is_reported() {
        let mut doc = Document::new();
        let err = doc
            .apply(&op(LineOp::Delete { line: 0 }), &Limits::default(), 0)
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
