//! A session's comments: in the order they were posted, unique by id, kept
//! anchored to their lines as lines are inserted and deleted, with the same
//! two measures as the document (encoded snapshot bytes, memory).
//!
//! Ids have two namespaces: the server names comments `c<sequence>` (the
//! sequence number of the event that posted them, unique by construction);
//! a client may choose any other id (`validate` refuses the server's form).

use std::collections::{HashMap, HashSet};

use super::document::{field_len, varint_len};
use super::ot::{self, FileOp};
use crate::pb::codereview::CommentEntry;

/// What holding one comment costs besides its strings' bytes: the entry
/// (four strings, two integers), the strings' allocations, its id in the
/// index and its place in its file's list.
const COMMENT_MEMORY_OVERHEAD: usize = 256;

/// The server's id for a comment posted by the event `sequence`.
pub fn server_comment_id(sequence: u64) -> String {
    // By hand: `format!` costs several times as much, once per comment.
    let mut digits = [0u8; 20];
    let mut start = digits.len();
    let mut rest = sequence;
    loop {
        start -= 1;
        digits[start] = b'0' + (rest % 10) as u8;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    let mut id = String::with_capacity(1 + digits.len() - start);
    id.push('c');
    id.extend(digits[start..].iter().map(|&d| char::from(d)));
    id
}

/// The length of [`server_comment_id`]`(sequence)`.
pub fn server_comment_id_len(sequence: u64) -> usize {
    let mut digits = 1;
    let mut rest = sequence / 10;
    while rest != 0 {
        digits += 1;
        rest /= 10;
    }
    1 + digits
}

/// Whether `id` has the form of the server's ids (`c` and digits).
pub fn is_server_comment_id(id: &str) -> bool {
    id.strip_prefix('c')
        .is_some_and(|digits| !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()))
}

/// The sequence number in an id exactly as [`server_comment_id`] writes it
/// (no leading zeros), if it is one.
fn server_id_sequence(id: &str) -> Option<u64> {
    let digits = id.strip_prefix('c')?;
    let canonical = !digits.is_empty()
        && digits.bytes().all(|b| b.is_ascii_digit())
        && (digits == "0" || !digits.starts_with('0'));
    canonical.then(|| digits.parse().ok()).flatten()
}

/// Entries a block holds once full (about 15 KiB of entries).
const BLOCK_ENTRIES: usize = 128;

/// Comment entries in blocks of [`BLOCK_ENTRIES`]: growing never moves the
/// entries already held. One vector would be copied at every doubling, and
/// under a burst of comments those copies (into freshly faulted pages) were
/// 5% of the server's time. Only the first block grows (up to a block): a
/// session with few comments holds little.
#[derive(Debug, Default, Clone)]
struct Entries {
    blocks: Vec<Vec<CommentEntry>>,
    len: usize,
}

impl Entries {
    fn push(&mut self, entry: CommentEntry) {
        match self.blocks.last_mut() {
            Some(block) if block.len() < BLOCK_ENTRIES => block.push(entry),
            _ => {
                // A first block grows as entries come; later ones start full size.
                let mut block = if self.blocks.is_empty() {
                    Vec::new()
                } else {
                    Vec::with_capacity(BLOCK_ENTRIES)
                };
                block.push(entry);
                self.blocks.push(block);
            }
        }
        self.len += 1;
    }

    fn get_mut(&mut self, index: usize) -> Option<&mut CommentEntry> {
        self.blocks
            .get_mut(index / BLOCK_ENTRIES)?
            .get_mut(index % BLOCK_ENTRIES)
    }

    fn last(&self) -> Option<&CommentEntry> {
        self.blocks.last()?.last()
    }

    fn iter(&self) -> impl Iterator<Item = &CommentEntry> + Clone {
        self.blocks.iter().flatten()
    }

    /// The entry with `sequence` (entries are in increasing sequence): a
    /// binary search for its block, then within it.
    fn find_sequence(&self, sequence: u64) -> Option<&CommentEntry> {
        let after = self
            .blocks
            .partition_point(|block| block.first().is_some_and(|e| e.sequence <= sequence));
        let block = self.blocks.get(after.checked_sub(1)?)?;
        let at = block.binary_search_by_key(&sequence, |e| e.sequence).ok()?;
        Some(&block[at])
    }
}

#[derive(Debug, Default, Clone)]
pub struct Comments {
    /// In the order posted, so by increasing sequence.
    entries: Entries,
    /// The ids clients chose. A server id names the entry of its sequence
    /// (found by binary search), so the server's own comments, most of
    /// them, cost no index entry.
    ids: HashSet<String>,
    /// For each file path, the indexes of its comments in `entries`.
    by_file: HashMap<String, Vec<usize>>,
    encoded: usize,
    memory: usize,
}

impl Comments {
    pub fn len(&self) -> usize {
        self.entries.len
    }

    pub fn is_empty(&self) -> bool {
        self.entries.len == 0
    }

    /// Every comment, in the order posted.
    pub fn iter(&self) -> impl Iterator<Item = &CommentEntry> + Clone {
        self.entries.iter()
    }

    /// Every comment, copied (for a snapshot message).
    pub fn to_vec(&self) -> Vec<CommentEntry> {
        let mut all = Vec::with_capacity(self.len());
        all.extend(self.iter().cloned());
        all
    }

    pub fn contains_id(&self, id: &str) -> bool {
        self.ids.contains(id) || self.server_named(id)
    }

    /// Whether `id` is a server id naming one of the comments.
    fn server_named(&self, id: &str) -> bool {
        let Some(sequence) = server_id_sequence(id) else {
            return false;
        };
        // A new comment's id names the next sequence, past every comment:
        // answered without touching the list.
        if self.entries.last().is_none_or(|e| e.sequence < sequence) {
            return false;
        }
        self.entries
            .find_sequence(sequence)
            .and_then(|entry| entry.comment.as_ref())
            .is_some_and(|c| c.comment_id == id)
    }

    /// Encoded snapshot bytes of the comments (the content budget's measure).
    pub fn encoded_bytes(&self) -> usize {
        self.encoded
    }

    /// Estimated memory held by the comments.
    pub fn memory_bytes(&self) -> usize {
        self.memory
    }

    /// An entry's share of a snapshot, whatever line it moves to later (a
    /// line number takes at most 5 bytes).
    pub fn encoded_cost(entry: &CommentEntry) -> usize {
        EntrySize::of(entry).encoded_cost()
    }

    pub fn memory_cost(entry: &CommentEntry) -> usize {
        EntrySize::of(entry).memory_cost()
    }

    /// Adds a comment whose id is not taken (the caller checked).
    pub fn push(&mut self, entry: CommentEntry) {
        let comment = entry.comment.as_ref().expect("an entry holds a comment");
        debug_assert!(!self.contains_id(&comment.comment_id));
        debug_assert!(
            self.entries
                .last()
                .is_none_or(|e| e.sequence < entry.sequence)
        );
        if server_id_sequence(&comment.comment_id) != Some(entry.sequence) {
            self.ids.insert(comment.comment_id.clone());
        }
        if !comment.file_path.is_empty() {
            match self.by_file.get_mut(&comment.file_path) {
                Some(indexes) => indexes.push(self.entries.len),
                None => {
                    let indexes = vec![self.entries.len];
                    self.by_file.insert(comment.file_path.clone(), indexes);
                }
            }
        }
        self.encoded += Self::encoded_cost(&entry);
        self.memory += Self::memory_cost(&entry);
        self.entries.push(entry);
    }

    /// Moves the comments of the file `op` changed with their lines; a
    /// comment whose line went away stays at the nearest line. `len` is the
    /// file's length after `op`. O(comments on that file) per applied edit:
    /// the one per-edit cost that grows with the session, bounded by
    /// `--max-comments` (2000 by default) and only for the edited file; it
    /// is what keeps every comment on its line for everybody, and a lazier
    /// scheme would move the same cost to every snapshot and late join.
    pub fn reanchor(&mut self, op: &FileOp, len: usize) {
        let Some(indexes) = self.by_file.get(&*op.path) else {
            return;
        };
        for &index in indexes {
            let Some(comment) = self.entries.get_mut(index).and_then(|e| e.comment.as_mut()) else {
                continue;
            };
            let line = comment.line_number.max(0) as u32;
            let moved = ot::transform_line(&op.path, line, op).unwrap_or(line);
            let clamped = if len == 0 {
                0
            } else {
                moved.min(len as u32 - 1)
            };
            comment.line_number = clamped as i32;
        }
    }
}

/// An upper bound of an entry's encoded length that holds whatever line its
/// comment is moved to.
/// The lengths that decide an entry's costs: what a comment would cost can
/// be asked before the entry is built.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EntrySize {
    pub user_id: usize,
    /// The comment's id, text and file path (None: an entry without one).
    pub comment: Option<[usize; 3]>,
    pub sequence: u64,
}

impl EntrySize {
    pub fn of(entry: &CommentEntry) -> EntrySize {
        EntrySize {
            user_id: entry.user_id.len(),
            comment: entry
                .comment
                .as_ref()
                .map(|c| [c.comment_id.len(), c.text.len(), c.file_path.len()]),
            sequence: entry.sequence,
        }
    }

    /// The entry's share of a snapshot, whatever line it moves to later (a
    /// line number takes at most 5 bytes).
    pub fn encoded_cost(&self) -> usize {
        let comment = self.comment.map_or(0, |texts| {
            let mut len = 0;
            for text in texts {
                if text != 0 {
                    len += field_len(text);
                }
            }
            len + 1 + 5 // line_number, at its largest
        });
        let mut len = field_len(comment);
        if self.user_id != 0 {
            len += field_len(self.user_id);
        }
        // sequence, timestamp
        field_len(len + 1 + varint_len(self.sequence as usize) + 1 + 10)
    }

    pub fn memory_cost(&self) -> usize {
        let strings = self.user_id + self.comment.map_or(0, |texts| texts.iter().sum());
        strings + COMMENT_MEMORY_OVERHEAD
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb::codereview::{Comment, Snapshot};
    use crate::review::ot::LineOp;
    use prost::Message;
    use std::sync::Arc;

    fn entry(sequence: u64, id: &str, path: &str, line: i32) -> CommentEntry {
        CommentEntry {
            user_id: "ann".into(),
            comment: Some(Comment {
                comment_id: id.into(),
                line_number: line,
                text: "looks good".into(),
                file_path: path.into(),
            }),
            sequence,
            timestamp: 1_700_000_000_000,
        }
    }

    #[test]
    fn server_ids_have_their_own_form() {
        assert!(is_server_comment_id(&server_comment_id(17)));
        assert!(is_server_comment_id("c0"));
        assert!(!is_server_comment_id("c"));
        assert!(!is_server_comment_id("c12a"));
        assert!(!is_server_comment_id("mine-1"));
        assert!(!is_server_comment_id("C12"));
    }

    #[test]
    fn server_ids_are_c_and_the_decimal_sequence() {
        for sequence in [0, 1, 9, 10, 99, 100, 12_345, u64::from(u32::MAX), u64::MAX] {
            let id = server_comment_id(sequence);
            assert_eq!(id, format!("c{sequence}"));
            assert_eq!(server_comment_id_len(sequence), id.len());
            assert_eq!(server_id_sequence(&id), Some(sequence));
        }
    }

    #[test]
    fn encoded_cost_bounds_the_snapshot_wherever_the_line_moves() {
        let mut comments = Comments::default();
        comments.push(entry(1, "c1", "a.rs", 0));
        comments.push(entry(2, "mine", "", 3));
        let mut snapshot = Snapshot {
            comments: comments.to_vec(),
            ..Snapshot::default()
        };
        assert!(snapshot.encoded_len() <= comments.encoded_bytes());
        for c in &mut snapshot.comments {
            c.comment.as_mut().unwrap().line_number = i32::MAX;
        }
        assert!(snapshot.encoded_len() <= comments.encoded_bytes());
    }

    #[test]
    fn reanchoring_touches_only_the_file_changed() {
        let mut comments = Comments::default();
        comments.push(entry(1, "c1", "a.rs", 2));
        comments.push(entry(2, "c2", "b.rs", 2));
        let op = FileOp {
            path: Arc::from("a.rs"),
            op: LineOp::Insert {
                line: 0,
                text: Arc::from("x"),
            },
        };
        comments.reanchor(&op, 10);
        let lines: Vec<i32> = comments
            .iter()
            .map(|e| e.comment.as_ref().unwrap().line_number)
            .collect();
        assert_eq!(lines, vec![3, 2]);
        assert!(comments.contains_id("c2"));
        assert!(!comments.contains_id("c3"));
    }

    #[test]
    fn comments_across_many_blocks_keep_their_order_ids_and_lines() {
        let mut comments = Comments::default();
        let count = 3 * BLOCK_ENTRIES + 5;
        for i in 0..count as u64 {
            let sequence = 2 * i + 1;
            comments.push(entry(
                sequence,
                &server_comment_id(sequence),
                "a.rs",
                i as i32,
            ));
        }
        assert_eq!(comments.len(), count);
        assert!(comments.entries.blocks.len() >= 4);
        let sequences: Vec<u64> = comments.iter().map(|e| e.sequence).collect();
        assert_eq!(
            sequences,
            (0..count as u64).map(|i| 2 * i + 1).collect::<Vec<_>>()
        );
        for i in 0..count as u64 {
            assert!(comments.contains_id(&server_comment_id(2 * i + 1)));
            assert!(!comments.contains_id(&server_comment_id(2 * i + 2)));
        }
        assert!(!comments.contains_id("c0"));
        // An insert above every comment moves each one down a line.
        let op = FileOp {
            path: Arc::from("a.rs"),
            op: LineOp::Insert {
                line: 0,
                text: Arc::from("x"),
            },
        };
        comments.reanchor(&op, count + 1);
        let lines: Vec<i32> = comments
            .to_vec()
            .iter()
            .map(|e| e.comment.as_ref().unwrap().line_number)
            .collect();
        assert_eq!(lines, (1..=count as i32).collect::<Vec<_>>());
    }

    #[test]
    fn server_ids_are_found_by_their_sequence_and_client_ids_by_index() {
        let mut comments = Comments::default();
        comments.push(entry(5, "c5", "a.rs", 0));
        comments.push(entry(7, "mine", "a.rs", 0));
        // A client id of the server's form from before that form was
        // refused: indexed, not taken for the comment of sequence 3.
        comments.push(entry(9, "c3", "a.rs", 0));
        assert!(comments.contains_id("c5"));
        assert!(comments.contains_id("mine"));
        assert!(comments.contains_id("c3"));
        assert!(!comments.contains_id("c7"), "sequence 7 has another id");
        assert!(!comments.contains_id("c9"), "sequence 9 has another id");
        assert!(!comments.contains_id("c05"));
        assert!(!comments.contains_id("c6"));
        assert!(!comments.contains_id("c18446744073709551616"));
        assert_eq!(comments.ids.len(), 2, "the server's own id is not indexed");
    }
}
