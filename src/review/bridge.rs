//! The server half of Jupiter OT: the session's operation log, and each
//! user's bridge built from it.
//!
//! A user's edit is based on a version; every operation applied since that
//! the user had not seen (everyone else's, not its own) must be transformed
//! into it before it applies. The bridge holds those operations, already
//! transformed past the user's own later edits, so each new edit of the user
//! is transformed once through the bridge, and the bridge entries it met are
//! transformed past it in turn (they now apply after it).
//!
//! Bridges are kept lazily: entries after `synced_to` are taken from the
//! operation log (untransformed: no edit of the user followed them) only when
//! the user edits again, so silent users cost nothing.
//!
//! ```text
//!   base ── bridge entries (seen? dropped) ── synced_to ── log entries ── current
//! ```
//!
//! Cost: an edit walks the bridge entries after its base (those it is
//! concurrent with; at most the transform window), and the log entries after
//! the user's last edit, found by binary search.

use std::collections::VecDeque;

use super::document::line_memory;
use super::ids::Text;
use super::ot::{self, FileOp, LineOp, Shape};

/// What an operation in the log holds on to (its text), for the byte bound.
fn op_bytes(op: &FileOp) -> usize {
    let text = match &op.op {
        LineOp::Replace { text, .. } | LineOp::Insert { text, .. } => text.len(),
        LineOp::ReplaceFile { lines } => lines.iter().map(|l| line_memory(l)).sum(),
        LineOp::Delete { .. } | LineOp::Noop => 0,
    };
    op.path.len() + text + 32
}

#[derive(Debug, Clone)]
struct LoggedOp {
    version: i32,
    /// Whose edit it was (None: an upload, nobody's pending edit).
    author: Option<Text>,
    op: FileOp,
}

/// The recent operations of a session, in version order: the source of
/// every user's bridge. Bounded by the transform window and a byte bound.
#[derive(Debug, Default)]
pub struct OpLog {
    ops: VecDeque<LoggedOp>,
    bytes: usize,
}

impl OpLog {
    /// Records the operation that produced `version`, dropping the oldest
    /// beyond `window` operations or `max_bytes`.
    pub fn push(
        &mut self,
        version: i32,
        author: Option<Text>,
        op: FileOp,
        window: usize,
        max_bytes: usize,
    ) {
        self.bytes += op_bytes(&op);
        self.ops.push_back(LoggedOp {
            version,
            author,
            op,
        });
        while self.ops.len() > window.max(1) || (self.bytes > max_bytes && self.ops.len() > 1) {
            if let Some(dropped) = self.ops.pop_front() {
                self.bytes -= op_bytes(&dropped.op);
            }
        }
    }

    /// Every operation logged, oldest first: (version, author, operation).
    pub fn entries(&self) -> impl Iterator<Item = (i32, Option<&Text>, &FileOp)> {
        self.ops
            .iter()
            .map(|o| (o.version, o.author.as_ref(), &o.op))
    }

    /// The oldest version still logged (`current + 1` when empty).
    pub fn oldest(&self, current: i32) -> i32 {
        self.ops.front().map_or(current + 1, |o| o.version)
    }

    pub fn len(&self) -> usize {
        self.ops.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// The operations after `version`, oldest first (binary search).
    fn after(&self, version: i32) -> impl Iterator<Item = &LoggedOp> {
        let start = self.ops.partition_point(|o| o.version <= version);
        self.ops.range(start..)
    }
}

impl Entry {
    fn of(version: i32, op: &FileOp) -> Entry {
        Entry {
            version,
            path: op.path.clone(),
            shape: op.op.shape(),
        }
    }
}

/// An edit's base is older than what the bridge and log still hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooOld;

/// A bridge entry: what transforms read of an operation (its file, kind and
/// line, not its text), so walking a long bridge touches little memory.
#[derive(Debug, Clone)]
struct Entry {
    version: i32,
    path: Text,
    shape: Shape,
}

/// One user's bridge (see the module doc).
#[derive(Debug, Clone)]
pub struct Bridge {
    /// Operations transformed past the user's later edits, by version.
    entries: VecDeque<Entry>,
    /// Every other user's operation up to this version is in `entries` (or
    /// was dropped as seen).
    synced_to: i32,
    /// Bases older than this can no longer be transformed (entries trimmed).
    floor: i32,
}

/// An edit transformed through a bridge, not yet known to apply: commit it
/// with [`Bridge::commit`] once it did (nothing changes if it does not).
#[derive(Debug)]
pub struct Transformed {
    pub op: FileOp,
    /// The shapes of the first entries once the edit applies before them
    /// (the entries past the last one the edit reached are unchanged).
    after: Vec<Shape>,
    /// Whether any operation was transformed into the edit.
    pub was_concurrent: bool,
}

impl Bridge {
    /// A bridge for a user who joins at `version`.
    pub fn new(version: i32) -> Bridge {
        Bridge {
            entries: VecDeque::new(),
            synced_to: version,
            floor: version,
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The bridge's parts (for snapshots): entries, synced_to, floor. An
    /// entry's operation has its file, kind and line; its text is empty (a
    /// bridge never applies what it holds, it only transforms by it).
    pub fn parts(&self) -> (impl Iterator<Item = (i32, FileOp)> + '_, i32, i32) {
        let entries = self.entries.iter().map(|e| {
            let op = FileOp {
                path: e.path.clone(),
                op: e.shape.without_text(),
            };
            (e.version, op)
        });
        (entries, self.synced_to, self.floor)
    }

    /// A bridge as a snapshot kept it.
    pub fn restore(entries: Vec<(i32, FileOp)>, synced_to: i32, floor: i32) -> Bridge {
        Bridge {
            entries: entries
                .into_iter()
                .map(|(version, op)| Entry::of(version, &op))
                .collect(),
            synced_to,
            floor,
        }
    }

    /// Whether an edit based on `base` can be transformed (see
    /// [`Bridge::sync`]), without changing anything.
    pub fn can_sync(&self, base: i32, current: i32, log: &OpLog) -> bool {
        let bridge_ok = base >= self.floor || base >= self.synced_to;
        let log_ok = base.max(self.synced_to) + 1 >= log.oldest(current);
        bridge_ok && log_ok
    }

    /// Makes the bridge hold exactly the operations `user` had not seen at
    /// `base` up to `current`, or says the base is too old for that.
    pub fn sync(
        &mut self,
        user: &Text,
        base: i32,
        current: i32,
        log: &OpLog,
        window: usize,
    ) -> Result<(), TooOld> {
        // Transformable if the bridge still holds what follows `base` up to
        // `synced_to`, and the log holds what follows that.
        if !self.can_sync(base, current, log) {
            return Err(TooOld);
        }
        while self.entries.front().is_some_and(|e| e.version <= base) {
            self.entries.pop_front();
        }
        for logged in log.after(base.max(self.synced_to)) {
            if logged.author.as_ref() != Some(user) {
                self.entries
                    .push_back(Entry::of(logged.version, &logged.op));
            }
        }
        self.synced_to = current;
        while self.entries.len() > window.max(1) {
            if let Some(dropped) = self.entries.pop_front() {
                self.floor = dropped.version;
            }
        }
        Ok(())
    }

    /// Transforms `op` (based where the last [`Bridge::sync`] said) through
    /// the entries on its file. `incoming_wins` breaks ties in the edit's
    /// favour (last writer wins) instead of the applied operations'.
    pub fn transform(&self, mut op: FileOp, incoming_wins: bool) -> Transformed {
        // Cost: one pass over the entries (the operations concurrent with
        // the edit, at most the transform window), allocating once. Inherent
        // to OT: an edit is transformed past everything it did not see. The
        // same pass works out what each entry becomes once the edit applies
        // before it, so that committing is a copy.
        let mut after = Vec::with_capacity(self.entries.len());
        let mut shape = op.op.shape();
        for applied in &self.entries {
            if shape == Shape::Noop {
                // Cancelled: it changes nothing that follows, nor is changed.
                break;
            }
            if !ot::same_path(&op.path, &applied.path) {
                after.push(applied.shape);
                continue;
            }
            after.push(ot::transform_shape(applied.shape, shape, !incoming_wins));
            shape = ot::transform_shape(shape, applied.shape, incoming_wins);
        }
        ot::set_shape(&mut op.op, shape);
        Transformed {
            op,
            was_concurrent: !self.entries.is_empty(),
            after,
        }
    }

    /// The edit applied (as `version`, or as a no-op when `None`): the
    /// entries it met now apply after it.
    pub fn commit(&mut self, transformed: Transformed, version: Option<i32>) {
        for (entry, shape) in self.entries.iter_mut().zip(transformed.after) {
            entry.shape = shape;
        }
        if let Some(version) = version {
            self.synced_to = version;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn insert(line: u32, text: &str) -> FileOp {
        FileOp {
            path: Arc::from("f"),
            op: LineOp::Insert {
                line,
                text: Arc::from(text),
            },
        }
    }

    #[test]
    fn an_edit_is_transformed_over_what_its_author_had_not_seen() {
        let (ann, bob): (Text, Text) = (Arc::from("ann"), Arc::from("bob"));
        let mut log = OpLog::default();
        let mut bridge = Bridge::new(0);
        // Bob inserts at 0 (version 1); ann, based on 0, inserts at 0 too.
        log.push(1, Some(bob.clone()), insert(0, "b"), 100, 1 << 20);
        bridge.sync(&ann, 0, 1, &log, 100).unwrap();
        let t = bridge.transform(insert(0, "a"), false);
        assert!(t.was_concurrent);
        assert_eq!(t.op, insert(1, "a"), "applied first wins the tie");
        bridge.commit(t, Some(2));
        log.push(2, Some(ann.clone()), insert(1, "a"), 100, 1 << 20);
        // Ann, still based on 0, inserts at 2: past both lines now.
        bridge.sync(&ann, 0, 2, &log, 100).unwrap();
        assert_eq!(bridge.len(), 1, "her own edit is not in her bridge");
        let t = bridge.transform(insert(1, "c"), true);
        assert_eq!(t.op, insert(2, "c"));
        // Based on 1 (she saw bob's insert), nothing is left to transform over.
        bridge.sync(&ann, 1, 2, &log, 100).unwrap();
        assert!(bridge.is_empty());
    }

    #[test]
    fn a_base_older_than_the_log_is_too_old() {
        let ann: Text = Arc::from("ann");
        let mut log = OpLog::default();
        for v in 1..=5 {
            log.push(v, None, insert(0, "x"), 3, 1 << 20);
        }
        assert_eq!(log.len(), 3);
        assert_eq!(log.oldest(5), 3);
        let mut bridge = Bridge::new(0);
        assert_eq!(bridge.sync(&ann, 0, 5, &log, 3), Err(TooOld));
        assert_eq!(bridge.sync(&ann, 2, 5, &log, 3), Ok(()));
    }
}
