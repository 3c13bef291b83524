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
//! Entries are kept per file (a lane each): operations on different files
//! never transform each other, so an edit walks only its file's lane.
//!
//! Cost: an edit walks its lane's entries after its base (those it is
//! concurrent with; at most the transform window: O(lag), inherent to OT,
//! bounded by the window, 8 bytes and a compare or two an entry; an insert
//! through a lane of inserts reads 4 bytes an entry and decides sixteen at
//! a time), and the log entries after the user's last edit, found by binary
//! search.

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

/// An edit's base is older than what the bridge and log still hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooOld;

/// The bridge entries on one file, in version order: what transforms read
/// of an operation (its kind and line, not its text), kept apart from the
/// versions so that walking a long bridge reads 8 bytes an entry (4 while
/// they are all inserts) and never compares a path. Operations on different
/// files never transform each other, so an edit walks only its own file's
/// lane.
#[derive(Debug, Clone)]
struct Lane {
    path: Text,
    versions: VecDeque<i32>,
    entries: Entries,
}

/// A lane's entries: while every one is an insert (concurrent typing), only
/// their lines, which an insert's walk decides many at a time
/// ([`ot::transform_insert_through_inserts`]); from the first entry or edit
/// of another kind on, their shapes (the general walk).
#[derive(Debug, Clone)]
enum Entries {
    Inserts(VecDeque<u32>),
    Shapes(VecDeque<Shape>),
}

impl Lane {
    fn new(path: Text) -> Lane {
        Lane {
            path,
            versions: VecDeque::new(),
            entries: Entries::Inserts(VecDeque::new()),
        }
    }

    fn push(&mut self, version: i32, shape: Shape) {
        self.versions.push_back(version);
        match (&mut self.entries, shape) {
            (Entries::Inserts(lines), Shape::Insert(line)) => lines.push_back(line),
            (Entries::Inserts(_), _) => self.shapes().push_back(shape),
            (Entries::Shapes(shapes), _) => shapes.push_back(shape),
        }
    }

    fn pop_front(&mut self) -> Option<i32> {
        match &mut self.entries {
            Entries::Inserts(lines) => {
                lines.pop_front();
            }
            Entries::Shapes(shapes) => {
                shapes.pop_front();
            }
        }
        self.versions.pop_front()
    }

    /// The entries as shapes, kept so from now on (a lane of inserts
    /// becomes one of shapes once, when another kind meets it).
    fn shapes(&mut self) -> &mut VecDeque<Shape> {
        if let Entries::Inserts(lines) = &self.entries {
            let shapes = lines.iter().map(|&line| Shape::Insert(line)).collect();
            self.entries = Entries::Shapes(shapes);
        }
        match &mut self.entries {
            Entries::Shapes(shapes) => shapes,
            Entries::Inserts(_) => unreachable!("made shapes above"),
        }
    }

    /// Entry `i`'s shape.
    fn shape(&self, i: usize) -> Shape {
        match &self.entries {
            Entries::Inserts(lines) => Shape::Insert(lines[i]),
            Entries::Shapes(shapes) => shapes[i],
        }
    }
}

/// One user's bridge (see the module doc).
#[derive(Debug, Clone)]
pub struct Bridge {
    /// Operations transformed past the user's later edits, one lane per
    /// file (a session's edits are usually on a handful of files).
    lanes: Vec<Lane>,
    /// Entries in all lanes.
    len: usize,
    /// Every other user's operation up to this version is in a lane (or
    /// was dropped as seen).
    synced_to: i32,
    /// Bases older than this can no longer be transformed (entries trimmed).
    floor: i32,
    /// The buffers a transform writes the entries' new shapes or lines
    /// into, kept from one edit to the next (see [`Bridge::transform`]).
    scratch: After,
}

/// An edit transformed through a bridge, not yet known to apply: commit it
/// with [`Bridge::commit`] once it did (nothing changes if it does not).
#[derive(Debug)]
pub struct Transformed {
    pub op: FileOp,
    /// The lane of the edit's file, when the bridge has one.
    lane: Option<usize>,
    /// The lane's entries once the edit applies before them.
    after: After,
    /// Whether any operation was transformed into the edit.
    pub was_concurrent: bool,
}

/// What a lane's entries become once an edit applies before them: lines
/// for a lane of inserts, shapes otherwise (the other one stays empty).
#[derive(Debug, Default, Clone)]
struct After {
    shapes: Vec<Shape>,
    lines: Vec<u32>,
}

/// Copies a transform's results over the entries they were made from (one
/// for each, in order).
fn copy_over<T: Copy>(results: &[T], entries: &mut VecDeque<T>) {
    let (front, back) = entries.as_mut_slices();
    front.copy_from_slice(&results[..front.len()]);
    back.copy_from_slice(&results[front.len()..]);
}

impl Bridge {
    /// A bridge for a user who joins at `version`.
    pub fn new(version: i32) -> Bridge {
        Bridge {
            lanes: Vec::new(),
            len: 0,
            synced_to: version,
            floor: version,
            scratch: After::default(),
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The lane of `path`. Cost: one pointer comparison per lane (paths
    /// in a session's log share their allocation), a string comparison
    /// only for a lane of another allocation.
    fn lane_of(&self, path: &Text) -> Option<usize> {
        self.lanes
            .iter()
            .position(|lane| ot::same_path(&lane.path, path))
    }

    fn push(&mut self, version: i32, op: &FileOp) {
        let index = match self.lane_of(&op.path) {
            Some(index) => index,
            None => {
                self.lanes.push(Lane::new(op.path.clone()));
                self.lanes.len() - 1
            }
        };
        self.lanes[index].push(version, op.op.shape());
        self.len += 1;
    }

    /// Drops the oldest entry of all lanes; returns its version.
    fn pop_oldest(&mut self) -> Option<i32> {
        let (index, _) = self
            .lanes
            .iter()
            .enumerate()
            .filter_map(|(i, lane)| lane.versions.front().map(|v| (i, *v)))
            .min_by_key(|(_, version)| *version)?;
        let version = self.lanes[index].pop_front();
        if self.lanes[index].versions.is_empty() {
            self.lanes.swap_remove(index);
        }
        self.len -= 1;
        version
    }

    /// The bridge's parts (for snapshots): entries in version order,
    /// synced_to, floor. An entry's operation has its file, kind and line;
    /// its text is empty (a bridge never applies what it holds, it only
    /// transforms by it).
    pub fn parts(&self) -> (impl Iterator<Item = (i32, FileOp)> + '_, i32, i32) {
        let mut entries: Vec<(i32, &Text, Shape)> = self
            .lanes
            .iter()
            .flat_map(|lane| {
                lane.versions
                    .iter()
                    .enumerate()
                    .map(|(i, version)| (*version, &lane.path, lane.shape(i)))
            })
            .collect();
        entries.sort_by_key(|(version, _, _)| *version);
        let entries = entries.into_iter().map(|(version, path, shape)| {
            let op = FileOp {
                path: path.clone(),
                op: shape.without_text(),
            };
            (version, op)
        });
        (entries, self.synced_to, self.floor)
    }

    /// A bridge as a snapshot kept it.
    pub fn restore(entries: Vec<(i32, FileOp)>, synced_to: i32, floor: i32) -> Bridge {
        let mut bridge = Bridge::new(synced_to);
        bridge.floor = floor;
        for (version, op) in &entries {
            bridge.push(*version, op);
        }
        bridge
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
        let mut dropped = 0;
        for lane in &mut self.lanes {
            while lane.versions.front().is_some_and(|v| *v <= base) {
                lane.pop_front();
                dropped += 1;
            }
        }
        if dropped > 0 {
            self.len -= dropped;
            self.lanes.retain(|lane| !lane.versions.is_empty());
        }
        for logged in log.after(base.max(self.synced_to)) {
            if logged.author.as_ref() != Some(user) {
                self.push(logged.version, &logged.op);
            }
        }
        self.synced_to = current;
        while self.len > window.max(1) {
            if let Some(version) = self.pop_oldest() {
                self.floor = version;
            }
        }
        Ok(())
    }

    /// Transforms `op` (based where the last [`Bridge::sync`] said) through
    /// the entries on its file. `incoming_wins` breaks ties in the edit's
    /// favour (last writer wins) instead of the applied operations'.
    pub fn transform(&mut self, mut op: FileOp, incoming_wins: bool) -> Transformed {
        // Cost: one pass over the lane of the edit's file (the operations on
        // it concurrent with the edit, at most the transform window), into
        // the bridge's kept buffer (no allocation once it is large enough).
        // Inherent to OT: an edit is transformed past everything it did
        // not see. The same pass works out what each entry becomes once the
        // edit applies before it, so that committing is a copy.
        let lane = self.lane_of(&op.path);
        let mut after = std::mem::take(&mut self.scratch);
        after.shapes.clear();
        after.lines.clear();
        if let Some(index) = lane {
            let lane = &mut self.lanes[index];
            match (op.op.shape(), &lane.entries) {
                (Shape::Insert(line), Entries::Inserts(lines)) => {
                    let (front, back) = lines.as_slices();
                    after.lines.reserve(front.len() + back.len());
                    let line = ot::transform_insert_through_inserts(
                        line,
                        front,
                        incoming_wins,
                        &mut after.lines,
                    );
                    let line = ot::transform_insert_through_inserts(
                        line,
                        back,
                        incoming_wins,
                        &mut after.lines,
                    );
                    ot::set_shape(&mut op.op, Shape::Insert(line));
                }
                (shape, _) => {
                    let (front, back) = lane.shapes().as_slices();
                    after.shapes.reserve(front.len() + back.len());
                    let shape =
                        ot::transform_through(shape, front, incoming_wins, &mut after.shapes);
                    let shape =
                        ot::transform_through(shape, back, incoming_wins, &mut after.shapes);
                    ot::set_shape(&mut op.op, shape);
                }
            }
        }
        Transformed {
            op,
            lane,
            was_concurrent: self.len > 0,
            after,
        }
    }

    /// The edit applied (as `version`, or as a no-op when `None`): the
    /// entries it met now apply after it. `transformed` is this bridge's
    /// last transform, nothing changed since (its entries are one for each
    /// of the lane's).
    pub fn commit(&mut self, transformed: Transformed, version: Option<i32>) {
        let Transformed { lane, after, .. } = transformed;
        if let Some(lane) = lane.and_then(|i| self.lanes.get_mut(i)) {
            match &mut lane.entries {
                Entries::Inserts(lines) => copy_over(&after.lines, lines),
                Entries::Shapes(shapes) => copy_over(&after.shapes, shapes),
            }
        }
        if let Some(version) = version {
            self.synced_to = version;
        }
        self.scratch = after;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
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

    /// The bridge as one version-ordered queue of every entry, walked whole
    /// (the first implementation): the model the per-file lanes must match.
    struct ModelBridge {
        entries: VecDeque<(i32, Text, Shape)>,
        synced_to: i32,
        floor: i32,
    }

    impl ModelBridge {
        fn sync(
            &mut self,
            user: &Text,
            base: i32,
            current: i32,
            log: &OpLog,
            window: usize,
        ) -> bool {
            let bridge_ok = base >= self.floor || base >= self.synced_to;
            let log_ok = base.max(self.synced_to) + 1 >= log.oldest(current);
            if !(bridge_ok && log_ok) {
                return false;
            }
            while self.entries.front().is_some_and(|e| e.0 <= base) {
                self.entries.pop_front();
            }
            for logged in log.after(base.max(self.synced_to)) {
                if logged.author.as_ref() != Some(user) {
                    self.entries.push_back((
                        logged.version,
                        logged.op.path.clone(),
                        logged.op.op.shape(),
                    ));
                }
            }
            self.synced_to = current;
            while self.entries.len() > window.max(1) {
                if let Some(dropped) = self.entries.pop_front() {
                    self.floor = dropped.0;
                }
            }
            true
        }

        /// Transforms and, when `applies`, commits: the edit's new shape.
        fn transform(
            &mut self,
            path: &Text,
            mut shape: Shape,
            incoming_wins: bool,
            applies: bool,
        ) -> Shape {
            let mut after = Vec::new();
            for (_, entry_path, applied) in &self.entries {
                if shape == Shape::Noop {
                    break;
                }
                if **entry_path != **path {
                    after.push(*applied);
                    continue;
                }
                after.push(ot::transform_shape(*applied, shape, !incoming_wins));
                shape = ot::transform_shape(shape, *applied, incoming_wins);
            }
            if applies {
                for (entry, new) in self.entries.iter_mut().zip(after) {
                    entry.2 = new;
                }
            }
            shape
        }
    }

    #[derive(Debug, Clone)]
    enum Step {
        /// Someone else's operation lands in the log.
        Other { file: u8, shape: Shape },
        /// Ann edits, based `lag` versions back; the edit applies or not.
        Ann {
            file: u8,
            shape: Shape,
            lag: u8,
            wins: bool,
            applies: bool,
        },
    }

    fn arb_shape() -> impl Strategy<Value = Shape> {
        prop_oneof![
            (0u32..6).prop_map(Shape::Insert),
            (0u32..6).prop_map(Shape::Delete),
            (0u32..6).prop_map(Shape::Replace),
            Just(Shape::ReplaceFile),
        ]
    }

    fn arb_step() -> impl Strategy<Value = Step> {
        prop_oneof![
            (0u8..3, arb_shape()).prop_map(|(file, shape)| Step::Other { file, shape }),
            (
                0u8..3,
                arb_shape(),
                0u8..12,
                any::<bool>(),
                prop::bool::weighted(0.9)
            )
                .prop_map(|(file, shape, lag, wins, applies)| Step::Ann {
                    file,
                    shape,
                    lag,
                    wins,
                    applies
                }),
        ]
    }

    proptest::proptest! {
        /// The per-file lanes transform, commit, trim and snapshot exactly as
        /// one queue walked whole does.
        #[test]
        fn lanes_match_one_queue_walked_whole(steps in proptest::collection::vec(arb_step(), 1..80)) {
            let window = 7;
            let (ann, bob): (Text, Text) = (Arc::from("ann"), Arc::from("bob"));
            // Paths of separate allocations: lanes compare them by content too.
            let path = |file: u8| -> Text { Arc::from(format!("file{file}").as_str()) };
            let mut log = OpLog::default();
            let mut bridge = Bridge::new(0);
            let mut model = ModelBridge { entries: VecDeque::new(), synced_to: 0, floor: 0 };
            let mut current = 0;
            for step in steps {
                match step {
                    Step::Other { file, shape } => {
                        current += 1;
                        let op = FileOp { path: path(file), op: shape.without_text() };
                        log.push(current, Some(bob.clone()), op, window + 3, 1 << 20);
                    }
                    Step::Ann { file, shape, lag, wins, applies } => {
                        let base = (current - i32::from(lag)).max(0);
                        let synced = bridge.sync(&ann, base, current, &log, window).is_ok();
                        proptest::prop_assert_eq!(synced, model.sync(&ann, base, current, &log, window));
                        if !synced {
                            continue;
                        }
                        let op = FileOp { path: path(file), op: shape.without_text() };
                        let transformed = bridge.transform(op.clone(), wins);
                        let expected = model.transform(&op.path, shape, wins, applies);
                        proptest::prop_assert_eq!(transformed.op.op.shape(), expected);
                        proptest::prop_assert_eq!(transformed.was_concurrent, !model.entries.is_empty());
                        if applies {
                            let applied = transformed.op.clone();
                            let version = (!applied.is_noop()).then_some(current + 1);
                            bridge.commit(transformed, version);
                            if let Some(version) = version {
                                model.synced_to = version;
                                current = version;
                                log.push(version, Some(ann.clone()), applied, window + 3, 1 << 20);
                            }
                        }
                    }
                }
                let (entries, synced_to, floor) = bridge.parts();
                let entries: Vec<(i32, String, Shape)> = entries
                    .map(|(v, op)| (v, op.path.to_string(), op.op.shape()))
                    .collect();
                let expected: Vec<(i32, String, Shape)> = model
                    .entries
                    .iter()
                    .map(|(v, p, s)| (*v, p.to_string(), *s))
                    .collect();
                proptest::prop_assert_eq!(entries, expected);
                proptest::prop_assert_eq!((synced_to, floor), (model.synced_to, model.floor));
                proptest::prop_assert_eq!(bridge.len(), model.entries.len());
            }
        }
    }
}
