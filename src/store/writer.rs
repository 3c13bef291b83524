//! The writer thread: the only code that writes the data dir. It takes jobs
//! in order (append a batch of records, store a snapshot, delete a session),
//! makes each durable (fdatasync; for files it creates, renames or removes,
//! the directory too), and reports back; it rolls and deletes log segments.
//!
//! A failed append leaves the segment as it was before the batch (the
//! partial write is cut off, or the next batch goes to a new segment), and
//! is reported as failed: nothing of it may be released, and the registry
//! sends it again later.
//!
//! The current segment's space is written ahead of the records, in zeros
//! ([`PREALLOCATION_STEP`]): an append then mostly lands in blocks the file
//! already has, and its `fdatasync` has no new size or blocks to commit
//! (on ext4 here, 170 µs instead of 240 for a few hundred bytes). A segment
//! is cut back to its records when the writer leaves it (rolled or shut
//! down); after a crash, recovery finds the zeros after the last record and
//! cuts them off as unused space.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread;

use tokio::sync::mpsc as async_mpsc;

use super::{
    Recovered, StoreConfig, StoreError, encode_entries, frame_snapshot, io_error, segment_name,
    snapshot_name, sync_dir,
};
use crate::pb::store::{Deleted, Record, record::Body};
use crate::review::ids::Text;

/// A log segment as recovery found it.
#[derive(Debug)]
pub struct SegmentInfo {
    pub number: u64,
    pub path: PathBuf,
    pub len: u64,
    /// Per session, the highest record index the segment holds.
    pub sessions: HashMap<String, u64>,
}

/// One session's records, encoded as log frames by the registry as it makes
/// them: on its own thread, while they are fresh in its cache, and freed
/// there (this thread then only writes bytes).
#[derive(Debug)]
pub struct SessionFrames {
    pub session: Text,
    /// The records' frames, in index order.
    pub bytes: Vec<u8>,
    /// The index of the last record framed.
    pub last_index: u64,
}

impl SessionFrames {
    pub fn new(session: Text) -> Self {
        SessionFrames {
            session,
            bytes: Vec::new(),
            last_index: 0,
        }
    }

    /// Frames records that follow those already here.
    pub fn push(&mut self, records: &[Record]) {
        if let Some(last) = records.last() {
            encode_entries(&mut self.bytes, &self.session, records);
            self.last_index = last.index;
        }
    }

    /// Takes frames that follow these (of the same session).
    pub fn append(&mut self, later: SessionFrames) {
        if !later.bytes.is_empty() {
            self.bytes.extend_from_slice(&later.bytes);
            self.last_index = later.last_index;
        }
    }
}

/// What the registry asks of the store.
#[derive(Debug)]
pub enum Job {
    /// Make these records durable (per session, in index order).
    Append(Vec<SessionFrames>),
    /// Store a session's snapshot: `payload` is an encoded `Snapshot`
    /// covering its records up to `index` (durable already).
    Snapshot {
        session_id: String,
        index: u64,
        payload: Vec<u8>,
    },
    /// Delete a session (this incarnation: `epoch`).
    Delete { session: Text, epoch: u64 },
}

/// What the store did.
#[derive(Debug)]
pub enum Event {
    /// An append is durable, or failed (then `batch` comes back to be sent
    /// again; nothing of it is durable).
    Appended {
        result: Result<(), String>,
        /// Per session: records below this index are durable.
        durable: Vec<(Text, u64)>,
        batch: Vec<SessionFrames>,
        /// Sessions whose records keep an old segment from being deleted:
        /// snapshot them.
        pinning: Vec<String>,
        disk_bytes: u64,
    },
    Snapshotted {
        session: String,
        result: Result<(), String>,
        disk_bytes: u64,
    },
    Deleted {
        session: String,
        result: Result<(), String>,
        disk_bytes: u64,
    },
}

/// The registry's end: jobs go in, events come out.
#[derive(Debug)]
pub struct StoreHandle {
    jobs: mpsc::Sender<Job>,
    pub events: async_mpsc::UnboundedReceiver<Event>,
    /// Disk use at start (segments and snapshots).
    pub disk_bytes: u64,
}

impl StoreHandle {
    /// Queues a job (never blocks). False when the writer is gone.
    pub fn send(&self, job: Job) -> bool {
        self.jobs.send(job).is_ok()
    }

    /// Separates the events (for a select loop) from the job sender.
    pub fn split(self) -> (StoreHandle, async_mpsc::UnboundedReceiver<Event>) {
        let (_, empty) = async_mpsc::unbounded_channel();
        let StoreHandle {
            jobs,
            events,
            disk_bytes,
        } = self;
        (
            StoreHandle {
                jobs,
                events: empty,
                disk_bytes,
            },
            events,
        )
    }
}

struct Segment {
    info: SegmentInfo,
}

struct Writer {
    config: StoreConfig,
    /// Oldest first; the last is the one written to.
    segments: Vec<Segment>,
    current: Option<File>,
    /// The current segment's length before anything not yet durable.
    good_len: u64,
    /// How far the current segment's space is written (zeros past
    /// `good_len`).
    allocated_len: u64,
    next_number: u64,
    snapshot_index: HashMap<String, u64>,
    snapshot_bytes: HashMap<String, u64>,
    events: async_mpsc::UnboundedSender<Event>,
    /// A batch's frames gathered for one write: kept between batches so a
    /// batch is gathered without growing a fresh buffer (up to
    /// [`KEPT_ENCODE_BUFFER`]; a larger one is let go after its batch).
    encoded: Vec<u8>,
}

/// The most closed log segments that wait for their sessions' own snapshots
/// (see `Writer::waiting_segments`): the log then holds at most four
/// segments (256 MiB by default) that recovery replays.
const MAX_WAITING_SEGMENTS: usize = 3;

/// The largest gathering buffer kept between batches.
const KEPT_ENCODE_BUFFER: usize = 4 << 20;

/// How far past the records the current segment's space is written (zeros),
/// topped up when half of it is used: one append in about half this many
/// bytes pays for the space's commit. Measured here (ext4), zeros and a
/// `fdatasync`: 64 KiB 250-270 µs, about what a growing append costs
/// anyway; 256 KiB 400-470 µs; 1 MiB 1-2 ms, a stall that showed in the
/// paced p99. A segment (or the disk budget) is exceeded by at most this
/// much until it is cut back.
const PREALLOCATION_STEP: u64 = 64 * 1024;

/// The zeros the space ahead is written with, a piece at a time.
static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];

pub(super) fn start(
    config: StoreConfig,
    segments: Vec<SegmentInfo>,
    recovered: &Recovered,
) -> Result<StoreHandle, StoreError> {
    let (jobs, job_rx) = mpsc::channel();
    let (events_tx, events) = async_mpsc::unbounded_channel();
    let mut writer = Writer {
        next_number: segments.last().map_or(1, |s| s.number + 1),
        segments: segments.into_iter().map(|info| Segment { info }).collect(),
        current: None,
        good_len: 0,
        allocated_len: 0,
        config,
        snapshot_index: HashMap::new(),
        snapshot_bytes: HashMap::new(),
        events: events_tx,
        encoded: Vec::new(),
    };
    for session in &recovered.sessions {
        if let Some(snapshot) = &session.snapshot {
            writer
                .snapshot_index
                .insert(session.session_id.clone(), snapshot.index);
            let path = writer.snapshot_path(&session.session_id);
            let bytes = fs::metadata(&path).map_or(0, |m| m.len());
            writer
                .snapshot_bytes
                .insert(session.session_id.clone(), bytes);
        }
    }
    // Always write to a fresh segment: the last one may end where a crash
    // left it, and recovery already cut its torn tail.
    writer.roll()?;
    writer.collect_segments();
    let disk_bytes = writer.disk_bytes();
    thread::Builder::new()
        .name("codereview-store".into())
        .spawn(move || writer.run(job_rx))
        .map_err(|e| StoreError(format!("cannot start the store thread: {e}")))?;
    Ok(StoreHandle {
        jobs,
        events,
        disk_bytes,
    })
}

impl Writer {
    fn snapshot_path(&self, session: &str) -> PathBuf {
        self.config
            .dir
            .join("snapshots")
            .join(snapshot_name(session))
    }

    fn disk_bytes(&self) -> u64 {
        self.segments.iter().map(|s| s.info.len).sum::<u64>()
            + self.snapshot_bytes.values().sum::<u64>()
    }

    fn run(mut self, jobs: mpsc::Receiver<Job>) {
        while let Ok(job) = jobs.recv() {
            let event = match job {
                Job::Append(batch) => self.append(batch),
                Job::Snapshot {
                    session_id,
                    index,
                    payload,
                } => {
                    let result = self.snapshot(&session_id, index, &payload).map_err(|e| e.0);
                    if result.is_ok() {
                        self.collect_segments();
                    }
                    Event::Snapshotted {
                        session: session_id,
                        result,
                        disk_bytes: self.disk_bytes(),
                    }
                }
                Job::Delete { session, epoch } => {
                    let result = self.delete(&session, epoch).map_err(|e| e.0);
                    Event::Deleted {
                        session: session.to_string(),
                        result,
                        disk_bytes: self.disk_bytes(),
                    }
                }
            };
            if self.events.send(event).is_err() {
                break; // the registry is gone
            }
        }
        self.leave_current();
    }

    /// Cuts the current segment back to its records (the space written
    /// ahead goes) and stops writing to it.
    fn leave_current(&mut self) {
        let Some(file) = self.current.take() else {
            return;
        };
        if self.allocated_len > self.good_len {
            let cut = file.set_len(self.good_len).and_then(|()| file.sync_data());
            if let Err(error) = cut {
                // Harmless: recovery cuts the zeros off too.
                crate::log!(
                    Warn,
                    "cannot cut a log segment's unused space",
                    error = error.to_string().as_str()
                );
            }
        }
        self.allocated_len = self.good_len;
    }

    /// Keeps space written ahead of the current segment's records, now
    /// ending at `end`: when less than half a step is left past them, zeros
    /// up to a step past them (never over the records just written). Made
    /// durable by the append's own `fdatasync`.
    fn write_ahead(file: &File, allocated_len: &mut u64, end: u64) -> std::io::Result<()> {
        *allocated_len = (*allocated_len).max(end);
        if *allocated_len - end >= PREALLOCATION_STEP / 2 {
            return Ok(());
        }
        let target = end + PREALLOCATION_STEP;
        while *allocated_len < target {
            let piece = (target - *allocated_len).min(ZEROS.len() as u64) as usize;
            file.write_all_at(&ZEROS[..piece], *allocated_len)?;
            *allocated_len += piece as u64;
        }
        Ok(())
    }

    /// Starts a new segment (durably: the directory entry too).
    fn roll(&mut self) -> Result<(), StoreError> {
        self.leave_current();
        let number = self.next_number;
        let path = self.config.dir.join(segment_name(number));
        let file = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .open(&path)
            .map_err(|e| io_error("cannot create", &path, e))?;
        sync_dir(&self.config.dir).map_err(|e| io_error("cannot sync", &self.config.dir, e))?;
        self.next_number += 1;
        self.segments.push(Segment {
            info: SegmentInfo {
                number,
                path,
                len: 0,
                sessions: HashMap::new(),
            },
        });
        self.current = Some(file);
        self.good_len = 0;
        self.allocated_len = 0;
        Ok(())
    }

    /// Writes `bytes` to the current segment and makes them durable, or
    /// leaves the segment as it was.
    fn write_durably(&mut self, bytes: &[u8]) -> Result<(), String> {
        if self.current.is_none() {
            self.roll().map_err(|e| e.0)?;
        }
        let path = self
            .segments
            .last()
            .map(|s| s.info.path.clone())
            .unwrap_or_default();
        let file = self.current.as_mut().expect("rolled above");
        let end = self.good_len + bytes.len() as u64;
        let written = file
            .write_all_at(bytes, self.good_len)
            .and_then(|()| Self::write_ahead(file, &mut self.allocated_len, end))
            .and_then(|()| file.sync_data());
        match written {
            Ok(()) => {
                self.good_len += bytes.len() as u64;
                if let Some(segment) = self.segments.last_mut() {
                    segment.info.len = self.good_len;
                }
                Ok(())
            }
            Err(error) => {
                // Cut the partial write off; if even that fails, write the
                // next batch to a new segment.
                let cut = file.set_len(self.good_len).and_then(|()| file.sync_data());
                self.allocated_len = self.good_len;
                if cut.is_err() {
                    self.current = None;
                }
                Err(format!("cannot write {}: {error}", path.display()))
            }
        }
    }

    fn append(&mut self, batch: Vec<SessionFrames>) -> Event {
        let written = match batch.as_slice() {
            [one] => self.write_durably(&one.bytes),
            _ => {
                // One write for the batch: the sessions' frames together.
                let mut bytes = std::mem::take(&mut self.encoded);
                bytes.clear();
                for frames in &batch {
                    bytes.extend_from_slice(&frames.bytes);
                }
                let written = self.write_durably(&bytes);
                if bytes.capacity() <= KEPT_ENCODE_BUFFER {
                    self.encoded = bytes;
                }
                written
            }
        };
        match written {
            Ok(()) => {
                let mut durable = Vec::with_capacity(batch.len());
                for frames in &batch {
                    if frames.bytes.is_empty() {
                        continue;
                    }
                    let segment = self.segments.last_mut().expect("written");
                    let sessions = &mut segment.info.sessions;
                    let top = match sessions.get_mut(&*frames.session) {
                        Some(top) => top,
                        None => sessions.entry(frames.session.to_string()).or_default(),
                    };
                    *top = (*top).max(frames.last_index);
                    durable.push((frames.session.clone(), frames.last_index + 1));
                }
                if self.good_len >= self.config.segment_bytes
                    && let Err(error) = self.roll()
                {
                    crate::log!(
                        Error,
                        "cannot start a new log segment",
                        error = error.0.as_str()
                    );
                }
                self.collect_segments();
                Event::Appended {
                    result: Ok(()),
                    durable,
                    batch: Vec::new(),
                    pinning: self.pinning(),
                    disk_bytes: self.disk_bytes(),
                }
            }
            Err(error) => Event::Appended {
                result: Err(error),
                durable: Vec::new(),
                batch,
                pinning: Vec::new(),
                disk_bytes: self.disk_bytes(),
            },
        }
    }

    /// Writes a snapshot file: temp file, fsync, rename, fsync the dir.
    fn snapshot(&mut self, session_id: &str, index: u64, payload: &[u8]) -> Result<(), StoreError> {
        let path = self.snapshot_path(session_id);
        let tmp = path.with_extension("snap.tmp");
        let bytes = frame_snapshot(session_id, payload);
        let write = |path: &Path| -> std::io::Result<()> {
            let mut file = File::create(path)?;
            file.write_all(&bytes)?;
            file.sync_all()
        };
        write(&tmp).map_err(|e| io_error("cannot write", &tmp, e))?;
        fs::rename(&tmp, &path).map_err(|e| io_error("cannot rename", &tmp, e))?;
        let dir = self.config.dir.join("snapshots");
        sync_dir(&dir).map_err(|e| io_error("cannot sync", &dir, e))?;
        self.snapshot_index.insert(session_id.to_owned(), index);
        self.snapshot_bytes
            .insert(session_id.to_owned(), bytes.len() as u64);
        Ok(())
    }

    /// Deletes a session: a durable `Deleted` record (so recovery never
    /// brings this incarnation back), then its snapshot.
    fn delete(&mut self, session: &Text, epoch: u64) -> Result<(), StoreError> {
        let record = Record {
            index: 0,
            timestamp: crate::review::now_unix_ms(),
            body: Some(Body::Deleted(Deleted { epoch })),
        };
        let mut bytes = Vec::new();
        encode_entries(&mut bytes, session, &[record]);
        self.write_durably(&bytes).map_err(StoreError)?;
        for segment in &mut self.segments {
            segment.info.sessions.remove(&**session);
        }
        self.snapshot_index.remove(&**session);
        self.snapshot_bytes.remove(&**session);
        let path = self.snapshot_path(session);
        match fs::remove_file(&path) {
            Ok(()) => {
                let dir = self.config.dir.join("snapshots");
                sync_dir(&dir).map_err(|e| io_error("cannot sync", &dir, e))?;
            }
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => return Err(io_error("cannot remove", &path, error)),
        }
        self.collect_segments();
        Ok(())
    }

    /// Whether every session with records in a segment has a snapshot past
    /// them.
    fn covered(&self, segment: &Segment) -> bool {
        segment.info.sessions.iter().all(|(session, highest)| {
            self.snapshot_index
                .get(session)
                .is_some_and(|index| index >= highest)
        })
    }

    /// Deletes the oldest closed segments that snapshots cover.
    fn collect_segments(&mut self) {
        while self.segments.len() > 1 && self.covered(&self.segments[0]) {
            let segment = self.segments.remove(0);
            if let Err(error) = fs::remove_file(&segment.info.path) {
                crate::log!(
                    Warn,
                    "cannot remove a log segment",
                    segment = segment.info.path.display().to_string().as_str(),
                    error = error.to_string().as_str()
                );
            }
            let _ = sync_dir(&self.config.dir);
        }
    }

    /// How many closed segments may wait for their sessions' own snapshots
    /// (the registry snapshots a session after enough records of its own)
    /// before the sessions that keep the oldest are snapshotted for it: [`MAX_WAITING_SEGMENTS`], fewer when the disk budget is
    /// small (the log may then hold at most a quarter of it), at least one.
    fn waiting_segments(&self) -> usize {
        let budget = self.config.max_disk_bytes;
        let segment = self.config.segment_bytes.max(1);
        let by_budget = match budget {
            0 => MAX_WAITING_SEGMENTS,
            _ => usize::try_from(budget / 4 / segment).unwrap_or(usize::MAX),
        };
        by_budget.clamp(1, MAX_WAITING_SEGMENTS)
    }

    /// The sessions that keep the oldest closed segment from being deleted,
    /// once more closed segments wait than [`Writer::waiting_segments`]:
    /// they are to be snapshotted. Before, when the first segment closed,
    /// every session with a record in it was, however large and however
    /// recently it had been snapshotted: with 1 KiB comments over 50
    /// sessions, 134 MB of snapshots for 90 MB of log.
    fn pinning(&self) -> Vec<String> {
        let closed = self.segments.len().saturating_sub(1);
        if closed <= self.waiting_segments() {
            return Vec::new();
        }
        let oldest = &self.segments[0];
        oldest
            .info
            .sessions
            .iter()
            .filter(|(session, highest)| {
                self.snapshot_index
                    .get(*session)
                    .is_none_or(|index| index < *highest)
            })
            .map(|(session, _)| session.clone())
            .collect()
    }
}
