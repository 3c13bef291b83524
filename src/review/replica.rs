//! The client half of the OT: a local copy of the files and the edits sent
//! but not yet acknowledged. Local edits apply at once; a remote edit from the
//! server is transformed against the pending ones (the server's operation
//! wins ties, as on the server), so the replica converges with the server's
//! document. Used by `codereview join` and by the simulator tests.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use super::ids::Text;
use super::ot::{self, ApplyError, FileOp, LineOp};
use crate::pb::codereview::{CodeEdit, Snapshot, code_edit::Op as WireOp};

/// An edit applied locally, waiting for its acknowledgement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingEdit {
    pub client_sequence: u64,
    pub op: FileOp,
}

/// The replica has lost track of the server (a version gap): resync.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutOfSync {
    pub expected: i32,
    pub got: i32,
}

#[derive(Debug, Default, Clone)]
pub struct Replica {
    files: BTreeMap<Text, Vec<Text>>,
    version: i32,
    pending: VecDeque<PendingEdit>,
}

/// The wire form of a line operation.
pub fn to_wire(op: &FileOp, version: i32) -> Option<CodeEdit> {
    let (line, content, wire) = match &op.op {
        LineOp::Replace { line, text } => (*line, text.to_string(), WireOp::Replace),
        LineOp::Insert { line, text } => (*line, text.to_string(), WireOp::Insert),
        LineOp::Delete { line } => (*line, String::new(), WireOp::Delete),
        LineOp::ReplaceFile { .. } | LineOp::Noop => return None,
    };
    Some(CodeEdit {
        file_path: op.path.to_string(),
        line_number: line as i32,
        content,
        version,
        op: wire as i32,
    })
}

/// A line operation from its wire form (as the server broadcast it).
pub fn from_wire(edit: &CodeEdit) -> Option<FileOp> {
    let line = u32::try_from(edit.line_number).ok()?;
    let text: Text = Arc::from(edit.content.as_str());
    let op = match WireOp::try_from(edit.op).ok()? {
        WireOp::Replace => LineOp::Replace { line, text },
        WireOp::Insert => LineOp::Insert { line, text },
        WireOp::Delete => LineOp::Delete { line },
    };
    Some(FileOp {
        path: Arc::from(edit.file_path.as_str()),
        op,
    })
}

impl Replica {
    pub fn new() -> Self {
        Replica::default()
    }

    /// Replaces everything with a snapshot; pending edits are dropped (their
    /// base is gone) and returned so the caller can report them.
    pub fn reset(&mut self, snapshot: &Snapshot) -> Vec<PendingEdit> {
        self.files = snapshot
            .files
            .iter()
            .map(|f| {
                (
                    Arc::from(f.file_path.as_str()),
                    f.lines.iter().map(|l| Arc::from(l.as_str())).collect(),
                )
            })
            .collect();
        self.version = snapshot.version;
        self.pending.drain(..).collect()
    }

    pub fn version(&self) -> i32 {
        self.version
    }

    pub fn file(&self, path: &str) -> Option<&[Text]> {
        self.files.get(path).map(Vec::as_slice)
    }

    pub fn files(&self) -> &BTreeMap<Text, Vec<Text>> {
        &self.files
    }

    pub fn pending(&self) -> impl Iterator<Item = &PendingEdit> {
        self.pending.iter()
    }

    /// Applies a local edit and records it as pending; returns what to send.
    pub fn local_edit(&mut self, op: FileOp, client_sequence: u64) -> Result<CodeEdit, ApplyError> {
        let Some(wire) = to_wire(&op, self.version) else {
            return Err(ApplyError::OutOfRange("not a line edit".into()));
        };
        let lines = self.files.entry(op.path.clone()).or_default();
        ot::apply(lines, &op.op)?;
        self.pending.push_back(PendingEdit {
            client_sequence,
            op,
        });
        Ok(wire)
    }

    /// The pending edits in their current form, to send again after a
    /// reconnect (based on the current version). Edits a concurrent edit
    /// cancelled out (no-ops) are dropped: the server would only confirm
    /// that nothing happens.
    pub fn resend(&mut self) -> Vec<(u64, CodeEdit)> {
        self.pending.retain(|p| !p.op.is_noop());
        self.pending
            .iter()
            .filter_map(|p| to_wire(&p.op, self.version).map(|w| (p.client_sequence, w)))
            .collect()
    }

    fn check_next(&self, version: i32) -> Result<(), OutOfSync> {
        if version != self.version + 1 {
            return Err(OutOfSync {
                expected: self.version + 1,
                got: version,
            });
        }
        Ok(())
    }

    /// A remote operation that produced `version` on the server.
    pub fn remote(&mut self, op: FileOp, version: i32) -> Result<(), OutOfSync> {
        self.check_next(version)?;
        let mut incoming = op;
        for pending in self.pending.iter_mut() {
            let next = ot::transform(&incoming, &pending.op, true);
            pending.op = ot::transform(&pending.op, &incoming, false);
            incoming = next;
        }
        let lines = self.files.entry(incoming.path.clone()).or_default();
        // The server applied it to a document we mirror: it cannot fail.
        let _ = ot::apply(lines, &incoming.op);
        self.version = version;
        Ok(())
    }

    /// A whole file from the server (an upload) that produced `version`.
    pub fn remote_file(
        &mut self,
        path: &str,
        lines: &[String],
        version: i32,
    ) -> Result<(), OutOfSync> {
        let op = FileOp {
            path: Arc::from(path),
            op: LineOp::ReplaceFile {
                lines: lines.iter().map(|l| Arc::from(l.as_str())).collect(),
            },
        };
        self.remote(op, version)
    }

    /// The server acknowledged one of our messages (`version` is what an
    /// edit produced, or the current version for a no-op). The server
    /// processes a user's messages in order, so every pending edit up to this
    /// one is settled: an earlier one whose acknowledgement was lost with a
    /// connection was a no-op there (no-ops are not replayed), and it is a
    /// no-op here too, having been transformed against the same operations.
    pub fn ack(&mut self, client_sequence: u64, version: i32) {
        if client_sequence != 0 {
            while self
                .pending
                .front()
                .is_some_and(|p| p.client_sequence <= client_sequence)
            {
                self.pending.pop_front();
            }
        }
        self.version = self.version.max(version);
    }

    /// The server refused one of our edits: undo is not possible in general,
    /// so the caller resyncs from a snapshot.
    pub fn refused(&mut self, client_sequence: u64) -> bool {
        self.pending
            .iter()
            .any(|p| p.client_sequence == client_sequence)
    }
}
