//! Durable sessions on the local disk: one write-ahead log shared by every
//! session (so one fsync covers every record a registry turn made: group
//! commit), and a snapshot file per session (its whole state at a log
//! position). The registry's I/O shell talks to it through a narrow seam:
//! "append these records", "store this snapshot", "delete this session",
//! and at start "what was there". A dedicated thread does the disk work, so
//! the registry never waits on the disk.
//!
//! ```text
//!  data dir/
//!    wal-00000001.log   frames of (session, record), appended, fdatasync'd
//!    wal-00000002.log   the current segment (rolled past --segment-bytes)
//!    snapshots/<hex session id>.snap   one frame: the session's snapshot
//! ```
//!
//! Compaction: a closed segment is deleted once every session with records
//! in it has a snapshot past them (oldest segments first, so a session's
//! `Deleted` record outlives the records it cancels). Disk use is the
//! snapshots (each bounded by the document and history limits) plus at most
//! the current segment and those waiting for snapshots. Recovery reads the
//! snapshots, then the segments in order; a torn tail is cut off; a damaged
//! record fails its session alone (its clients get DATA_LOSS).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use prost::Message;

use crate::pb::store::{Record, Snapshot, WalEntry, record::Body};

pub mod crc;
mod entry;
pub mod frame;
mod writer;

pub use writer::{Event, Job, SessionFrames, StoreHandle};

/// The largest frame recovery believes (a snapshot holds at most a session's
/// content, history and operation log, each bounded far below this).
pub const MAX_FRAME: usize = 512 << 20;

/// Where and how sessions are kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreConfig {
    pub dir: PathBuf,
    /// A log segment is closed (and a new one begun) past this size.
    pub segment_bytes: u64,
    /// Disk use (segments and snapshots) past which content growth is
    /// refused (0: no budget).
    pub max_disk_bytes: u64,
}

/// What the store found at start.
#[derive(Debug, Default)]
pub struct Recovered {
    pub sessions: Vec<RecoveredSession>,
    pub segments: usize,
    pub frames: usize,
    pub bytes: u64,
    /// Bytes cut off the end of the last segment (a write a crash tore).
    pub torn_bytes: u64,
    /// Zeros cut off segments' ends: space the writer had written ahead of
    /// its records (see the writer), left by a crash.
    pub unused_bytes: u64,
}

/// One session as the disk holds it: fold `snapshot`, then `records`.
#[derive(Debug)]
pub struct RecoveredSession {
    pub session_id: String,
    pub snapshot: Option<Snapshot>,
    /// The records after the snapshot (or from the first), in index order.
    pub records: Vec<Record>,
    /// Why the session cannot be rebuilt (damaged records or snapshot).
    pub damage: Option<String>,
}

#[derive(Debug)]
pub struct StoreError(pub String);

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn io_error(what: &str, path: &Path, error: io::Error) -> StoreError {
    StoreError(format!("{what} {}: {error}", path.display()))
}

/// A session id as a file name (hex: any id is safe on any filesystem).
pub fn snapshot_name(session_id: &str) -> String {
    let mut name: String = session_id.bytes().map(|b| format!("{b:02x}")).collect();
    name.push_str(".snap");
    name
}

fn segment_name(number: u64) -> String {
    format!("wal-{number:08}.log")
}

fn segment_number(name: &str) -> Option<u64> {
    name.strip_prefix("wal-")?
        .strip_suffix(".log")?
        .parse()
        .ok()
}

/// Encodes a snapshot file's bytes (one frame).
pub fn encode_snapshot(snapshot: &Snapshot) -> Vec<u8> {
    frame_snapshot(&snapshot.session_id, &snapshot.encode_to_vec())
}

/// A snapshot file's bytes: `payload`, an encoded `Snapshot` of the
/// session, in one frame.
pub fn frame_snapshot(session_id: &str, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + frame::HEADER_LEN);
    frame::encode(&mut out, frame::session_key(session_id), payload);
    out
}

/// Decodes a snapshot file's bytes.
pub fn decode_snapshot(bytes: &[u8]) -> Result<Snapshot, String> {
    let scan = frame::scan(bytes, MAX_FRAME);
    match (
        scan.frames.as_slice(),
        scan.damage.is_empty(),
        scan.valid_len == bytes.len(),
    ) {
        ([only], true, true) => Snapshot::decode(only.payload).map_err(|e| e.to_string()),
        _ => Err("the snapshot file is damaged".into()),
    }
}

/// Encodes WAL frames for a batch of records.
pub fn encode_entries(out: &mut Vec<u8>, session_id: &str, records: &[Record]) {
    let key = frame::session_key(session_id);
    for record in records {
        frame::encode_with(out, key, |out| entry::encode(out, session_id, record));
    }
}

/// What the WAL's frames say about each session (pure: recovery and tests).
#[derive(Debug, Default)]
pub struct WalContents {
    /// Records of each session's current incarnation, in log order.
    pub records: BTreeMap<String, Vec<Record>>,
    /// Epochs deleted, per session id (their snapshots are stale).
    pub deleted: HashMap<String, HashSet<u64>>,
    /// Sessions whose records were damaged.
    pub damaged: BTreeMap<String, String>,
    /// Damaged frames whose session is not known yet (by key).
    pub damaged_keys: HashSet<u64>,
    pub frames: usize,
}

impl WalContents {
    /// Folds one segment's bytes in; returns where its good bytes end and,
    /// per session, the highest record index it holds (the records of a
    /// deleted incarnation no longer count, in this segment or earlier
    /// ones: `earlier`).
    pub fn add_segment(
        &mut self,
        bytes: &[u8],
        earlier: &mut [HashMap<String, u64>],
    ) -> (usize, HashMap<String, u64>) {
        let mut highest: HashMap<String, u64> = HashMap::new();
        let scan = frame::scan(bytes, MAX_FRAME);
        for damage in &scan.damage {
            if let Some(key) = damage.session_key {
                self.damaged_keys.insert(key);
            }
        }
        for found in &scan.frames {
            self.frames += 1;
            let entry = match WalEntry::decode(found.payload) {
                Ok(entry) => entry,
                Err(error) => {
                    self.damaged_keys.insert(found.session_key);
                    let _ = error;
                    continue;
                }
            };
            let Some(record) = entry.record else {
                self.damaged_keys.insert(found.session_key);
                continue;
            };
            if frame::session_key(&entry.session_id) != found.session_key {
                self.damaged_keys.insert(found.session_key);
                continue;
            }
            if let Some(Body::Deleted(deleted)) = &record.body {
                self.records.remove(&entry.session_id);
                self.damaged.remove(&entry.session_id);
                highest.remove(&entry.session_id);
                for segment in earlier.iter_mut() {
                    segment.remove(&entry.session_id);
                }
                self.deleted
                    .entry(entry.session_id)
                    .or_default()
                    .insert(deleted.epoch);
                continue;
            }
            let top = highest.entry(entry.session_id.clone()).or_default();
            *top = (*top).max(record.index);
            self.records
                .entry(entry.session_id)
                .or_default()
                .push(record);
        }
        (scan.valid_len, highest)
    }
}

/// Opens (creating if needed) the data dir, recovers what it holds, and
/// starts the writer thread.
pub fn open(config: StoreConfig) -> Result<(StoreHandle, Recovered), StoreError> {
    let dir = &config.dir;
    fs::create_dir_all(dir.join("snapshots")).map_err(|e| io_error("cannot create", dir, e))?;
    let mut recovered = Recovered::default();

    // Segments, oldest first.
    let mut numbers: Vec<u64> = fs::read_dir(dir)
        .map_err(|e| io_error("cannot read", dir, e))?
        .filter_map(|entry| entry.ok())
        .filter_map(|entry| segment_number(&entry.file_name().to_string_lossy()))
        .collect();
    numbers.sort_unstable();
    let mut wal = WalContents::default();
    let mut segments = Vec::new();
    let mut contents: Vec<HashMap<String, u64>> = Vec::new();
    for (i, number) in numbers.iter().enumerate() {
        let path = dir.join(segment_name(*number));
        let bytes = fs::read(&path).map_err(|e| io_error("cannot read", &path, e))?;
        recovered.bytes += bytes.len() as u64;
        let (valid, highest) = wal.add_segment(&bytes, &mut contents);
        contents.push(highest);
        let mut len = bytes.len() as u64;
        if valid < bytes.len() {
            let tail = &bytes[valid..];
            let last = i + 1 == numbers.len();
            if tail.iter().all(|&b| b == 0) {
                recovered.unused_bytes += tail.len() as u64;
                crate::log!(
                    Info,
                    "log segment ends in space written ahead and not used: cut off",
                    segment = path.display().to_string().as_str(),
                    bytes = tail.len() as u64,
                    last_segment = last,
                );
            } else {
                recovered.torn_bytes += tail.len() as u64;
                crate::log!(
                    Warn,
                    "log segment ends in a torn write: cut off",
                    segment = path.display().to_string().as_str(),
                    bytes = tail.len() as u64,
                    last_segment = last,
                );
            }
            let file = fs::OpenOptions::new()
                .write(true)
                .open(&path)
                .map_err(|e| io_error("cannot open", &path, e))?;
            file.set_len(valid as u64)
                .and_then(|()| file.sync_all())
                .map_err(|e| io_error("cannot truncate", &path, e))?;
            len = valid as u64;
        }
        segments.push(writer::SegmentInfo {
            number: *number,
            path,
            len,
            sessions: HashMap::new(),
        });
    }
    for (segment, highest) in segments.iter_mut().zip(contents) {
        segment.sessions = highest;
    }
    recovered.segments = segments.len();
    recovered.frames = wal.frames;

    // Snapshots.
    let snapshot_dir = dir.join("snapshots");
    let mut snapshots: BTreeMap<String, Snapshot> = BTreeMap::new();
    let mut snapshot_damage: BTreeMap<String, String> = BTreeMap::new();
    for entry in
        fs::read_dir(&snapshot_dir).map_err(|e| io_error("cannot read", &snapshot_dir, e))?
    {
        let entry = entry.map_err(|e| io_error("cannot read", &snapshot_dir, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = entry.path();
        if name.ends_with(".tmp") {
            // A snapshot being written when the process died: never renamed.
            let _ = fs::remove_file(&path);
            continue;
        }
        let Some(hex) = name.strip_suffix(".snap") else {
            continue;
        };
        let Some(session_id) = decode_hex(hex) else {
            continue;
        };
        let bytes = fs::read(&path).map_err(|e| io_error("cannot read", &path, e))?;
        recovered.bytes += bytes.len() as u64;
        match decode_snapshot(&bytes) {
            Ok(snapshot) if snapshot.session_id == session_id => {
                let stale = wal
                    .deleted
                    .get(&session_id)
                    .is_some_and(|epochs| epochs.contains(&snapshot.epoch));
                if stale {
                    let _ = fs::remove_file(&path);
                } else {
                    snapshots.insert(session_id, snapshot);
                }
            }
            Ok(_) => {
                snapshot_damage.insert(session_id, "the snapshot names another session".into());
            }
            Err(why) => {
                snapshot_damage.insert(session_id, why);
            }
        }
    }

    // Damaged frames, attributed by key to the sessions we know.
    let mut damaged = wal.damaged.clone();
    let known: HashSet<String> = wal
        .records
        .keys()
        .chain(snapshots.keys())
        .chain(snapshot_damage.keys())
        .cloned()
        .collect();
    for id in &known {
        if wal.damaged_keys.contains(&frame::session_key(id)) {
            damaged.insert(id.clone(), "a record of this session is damaged".into());
        }
    }
    for (id, why) in snapshot_damage {
        damaged.insert(id, why);
    }

    let mut records = wal.records;
    for id in known {
        let snapshot = snapshots.remove(&id);
        let mut list = records.remove(&id).unwrap_or_default();
        // A snapshot from before the current incarnation (its Created
        // record, with another epoch, is in the log) is stale.
        let created_epoch = list.iter().find_map(|r| match &r.body {
            Some(Body::Created(c)) => Some(c.epoch),
            _ => None,
        });
        let snapshot = match (snapshot, created_epoch) {
            (Some(s), Some(epoch)) if s.epoch != epoch => None,
            (s, _) => s,
        };
        if let Some(snapshot) = &snapshot {
            list.retain(|r| r.index > snapshot.index);
        }
        list.sort_by_key(|r| r.index);
        list.dedup_by_key(|r| r.index);
        recovered.sessions.push(RecoveredSession {
            damage: damaged.remove(&id),
            session_id: id,
            snapshot,
            records: list,
        });
    }
    let handle = writer::start(config, segments, &recovered)?;
    Ok((handle, recovered))
}

fn decode_hex(hex: &str) -> Option<String> {
    if !hex.len().is_multiple_of(2) {
        return None;
    }
    let bytes: Option<Vec<u8>> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect();
    String::from_utf8(bytes?).ok()
}

/// Makes a directory's entries (new, renamed, removed files) durable.
pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod recovery_tests;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb::store::{Created, Deleted};

    fn record(index: u64, body: Body) -> Record {
        Record {
            index,
            timestamp: 0,
            body: Some(body),
        }
    }

    fn created(id: &str, epoch: u64) -> Body {
        Body::Created(Created {
            session_id: id.into(),
            epoch,
        })
    }

    #[test]
    fn a_wal_entry_is_encoded_as_prost_encodes_the_owned_entry() {
        use crate::pb::store::{CommentAdded, record::Body as B};
        let comment = B::Comment(CommentAdded {
            user_id: "ann".into(),
            client_sequence: 7,
            comment: Some(crate::pb::codereview::Comment {
                comment_id: "c3".into(),
                line_number: 2,
                text: "why?".into(),
                file_path: "a.rs".into(),
            }),
        });
        let records = [
            record(0, created("s", 1)),
            record(u64::MAX, comment),
            Record::default(),
        ];
        for session_id in ["", "s", &"x".repeat(300)] {
            for r in &records {
                let mut borrowed = Vec::new();
                entry::encode(&mut borrowed, session_id, r);
                let owned = WalEntry {
                    session_id: session_id.to_owned(),
                    record: Some(r.clone()),
                };
                assert_eq!(borrowed, owned.encode_to_vec());
            }
        }
    }

    #[test]
    fn names_round_trip() {
        assert_eq!(
            decode_hex(snapshot_name("a/b c").strip_suffix(".snap").unwrap()).as_deref(),
            Some("a/b c")
        );
        assert_eq!(segment_number(&segment_name(42)), Some(42));
        assert_eq!(segment_number("wal-x.log"), None);
    }

    #[test]
    fn a_deleted_session_starts_over_and_its_old_epoch_is_remembered() {
        let mut bytes = Vec::new();
        encode_entries(&mut bytes, "s", &[record(0, created("s", 1))]);
        encode_entries(&mut bytes, "t", &[record(0, created("t", 5))]);
        encode_entries(
            &mut bytes,
            "s",
            &[record(0, Body::Deleted(Deleted { epoch: 1 }))],
        );
        encode_entries(&mut bytes, "s", &[record(0, created("s", 2))]);
        let mut wal = WalContents::default();
        let (_, highest) = wal.add_segment(&bytes, &mut []);
        assert_eq!(highest["s"], 0);
        assert_eq!(highest["t"], 0);
        assert_eq!(wal.records["s"].len(), 1);
        assert!(matches!(&wal.records["s"][0].body, Some(Body::Created(c)) if c.epoch == 2));
        assert!(wal.deleted["s"].contains(&1));
        assert_eq!(wal.records["t"].len(), 1);
    }

    #[test]
    fn snapshots_round_trip_and_damage_is_refused() {
        let snapshot = Snapshot {
            index: 7,
            session_id: "s".into(),
            epoch: 3,
            ..Snapshot::default()
        };
        let bytes = encode_snapshot(&snapshot);
        assert_eq!(decode_snapshot(&bytes).unwrap(), snapshot);
        let mut damaged = bytes.clone();
        let last = damaged.len() - 1;
        damaged[last] ^= 1;
        assert!(decode_snapshot(&damaged).is_err());
        assert!(decode_snapshot(&bytes[..bytes.len() - 1]).is_err());
    }
}
