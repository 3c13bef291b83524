//! Recovery from real logs: a session's records written as the writer
//! writes them, then cut or damaged on disk, then opened again.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use super::*;
use crate::pb::store::Record;
use crate::review::ids::Text;
use crate::review::limits::Limits;
use crate::review::ot::LineOp;
use crate::review::roles::Role;
use crate::review::session::{Input, JoinRequest, Now, Session};
use crate::review::validate::{Action, ClientMessage, EditRequest, JoinOptions};

struct TempDir(PathBuf);

impl TempDir {
    fn new(label: &str) -> TempDir {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!(
            "codereview-store-{label}-{}-{n}",
            std::process::id()
        ));
        let _ = fs::remove_dir_all(&dir);
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn now() -> Now {
    Now {
        at: Instant::now(),
        unix_ms: 1_700_000_000_000,
    }
}

/// A session that made `edits` edits; its records and its final state.
fn session_log(id: &str, edits: usize) -> (Vec<Record>, Vec<Snapshot>) {
    let limits = Arc::new(Limits {
        rate_per_second: 0.0,
        ..Limits::default()
    });
    let mut session = Session::create(now(), Text::from(id), 42, limits);
    let mut records = Vec::new();
    let mut states = Vec::new();
    let mut step = |session: &mut Session, input: Input| {
        let fx = session.step(now(), input);
        session.mark_durable(session.next_index());
        for record in fx.records {
            records.push(record);
            states.push(session.to_snapshot(0));
        }
    };
    step(
        &mut session,
        Input::Join(JoinRequest {
            member: 1,
            user_id: Text::from("ann"),
            role: Role::Author,
            options: JoinOptions::default(),
            token: None,
        }),
    );
    for i in 0..edits {
        let message = ClientMessage {
            client_sequence: i as u64 + 1,
            action: Action::Edit(EditRequest {
                path: Text::from("f.txt"),
                op: LineOp::Insert {
                    line: 0,
                    text: Text::from(format!("line {i}").as_str()),
                },
                base_version: i as i32,
            }),
        };
        step(&mut session, Input::Message { member: 1, message });
    }
    (records, states)
}

fn config(dir: &TempDir) -> StoreConfig {
    StoreConfig {
        dir: dir.0.clone(),
        segment_bytes: 64 << 20,
        max_disk_bytes: 0,
    }
}

/// Writes `bytes` as the data dir's only segment.
fn write_segment(dir: &TempDir, bytes: &[u8]) -> PathBuf {
    fs::create_dir_all(&dir.0).unwrap();
    let path = dir.0.join(segment_name(1));
    fs::write(&path, bytes).unwrap();
    path
}

/// The session rebuilt from what recovery found.
fn rebuilt(found: &RecoveredSession) -> Result<Session, String> {
    let limits = Arc::new(Limits::default());
    let mut session = match &found.snapshot {
        Some(s) => Session::from_snapshot(s, limits).map_err(|e| e.0)?,
        None => Session::new(Text::from(found.session_id.as_str()), 0, limits),
    };
    for record in &found.records {
        session.replay(record).map_err(|e| e.0)?;
    }
    Ok(session)
}

/// Cut anywhere inside its last record, a log recovers to exactly the state
/// after the record before, and the file is cut back to the good bytes.
#[test]
fn a_log_torn_at_every_byte_of_its_last_record_recovers_the_records_before() {
    let (records, states) = session_log("s", 3);
    let mut bytes = Vec::new();
    encode_entries(&mut bytes, "s", &records[..records.len() - 1]);
    let good = bytes.len();
    encode_entries(&mut bytes, "s", &records[records.len() - 1..]);
    for cut in good..bytes.len() {
        let dir = TempDir::new("torn");
        let path = write_segment(&dir, &bytes[..cut]);
        let (_handle, recovered) = open(config(&dir)).unwrap();
        assert_eq!(recovered.torn_bytes, (cut - good) as u64, "cut at {cut}");
        assert_eq!(
            fs::metadata(&path).unwrap().len(),
            good as u64,
            "cut at {cut}"
        );
        assert_eq!(recovered.sessions.len(), 1);
        let session = rebuilt(&recovered.sessions[0]).unwrap();
        assert_eq!(
            session.to_snapshot(0),
            states[states.len() - 2],
            "cut at {cut}: the state before the last record"
        );
    }
}

/// A crash leaves the space the writer wrote ahead (zeros) after the last
/// record: recovery keeps every record, cuts the zeros off as unused space
/// (not as a torn write), and the file ends at the records again.
#[test]
fn zeros_written_ahead_after_the_last_record_are_cut_as_unused_space() {
    let (records, states) = session_log("s", 3);
    let mut bytes = Vec::new();
    encode_entries(&mut bytes, "s", &records);
    let good = bytes.len();
    bytes.resize(good + 100_000, 0);
    let dir = TempDir::new("zeros");
    let path = write_segment(&dir, &bytes);
    let (_handle, recovered) = open(config(&dir)).unwrap();
    assert_eq!(recovered.torn_bytes, 0);
    assert_eq!(recovered.unused_bytes, 100_000);
    assert_eq!(fs::metadata(&path).unwrap().len(), good as u64);
    let session = rebuilt(&recovered.sessions[0]).unwrap();
    assert_eq!(session.to_snapshot(0), *states.last().unwrap());
}

/// A record torn inside the space written ahead (its start written, the
/// rest still zeros) is a torn write: cut off with the zeros after it, and
/// the state is the one before it.
#[test]
fn a_record_torn_inside_the_space_written_ahead_is_cut_as_torn() {
    let (records, states) = session_log("s", 3);
    let mut bytes = Vec::new();
    encode_entries(&mut bytes, "s", &records[..records.len() - 1]);
    let good = bytes.len();
    encode_entries(&mut bytes, "s", &records[records.len() - 1..]);
    let half = (bytes.len() - good) / 2;
    bytes.truncate(good + half);
    bytes.resize(good + half + 4096, 0);
    let dir = TempDir::new("torn-zeros");
    let path = write_segment(&dir, &bytes);
    let (_handle, recovered) = open(config(&dir)).unwrap();
    assert_eq!(recovered.torn_bytes, (half + 4096) as u64);
    assert_eq!(recovered.unused_bytes, 0);
    assert_eq!(fs::metadata(&path).unwrap().len(), good as u64);
    let session = rebuilt(&recovered.sessions[0]).unwrap();
    assert_eq!(session.to_snapshot(0), states[states.len() - 2]);
}

/// The writer writes the current segment's space ahead of its records, and
/// cuts it back when it stops: a clean stop leaves nothing for recovery to
/// cut, and the records are all there.
#[test]
fn the_writer_writes_space_ahead_and_cuts_it_back_when_it_stops() {
    let (records, states) = session_log("s", 3);
    let dir = TempDir::new("ahead");
    let (store, _) = open(config(&dir)).unwrap();
    let mut frames = SessionFrames::new(Text::from("s"));
    frames.push(&records);
    let records_len = frames.bytes.len() as u64;
    let (jobs, mut events) = store.split();
    assert!(jobs.send(Job::Append(vec![frames])));
    match events.blocking_recv() {
        Some(Event::Appended { result: Ok(()), .. }) => {}
        other => panic!("an append: {other:?}"),
    }
    let segment = dir.0.join(segment_name(1));
    let written = fs::metadata(&segment).unwrap().len();
    assert!(
        written >= records_len + 32 * 1024,
        "space written ahead: {written} bytes for {records_len} of records"
    );
    let head = fs::read(&segment).unwrap();
    assert!(head[records_len as usize..].iter().all(|&b| b == 0));
    // No more jobs: the writer stops (its events end once it is gone).
    drop(jobs);
    assert!(events.blocking_recv().is_none());
    assert_eq!(fs::metadata(&segment).unwrap().len(), records_len);
    let (_handle, recovered) = open(config(&dir)).unwrap();
    assert_eq!((recovered.torn_bytes, recovered.unused_bytes), (0, 0));
    let session = rebuilt(&recovered.sessions[0]).unwrap();
    assert_eq!(session.to_snapshot(0), *states.last().unwrap());
}

/// A flipped bit in a record in the middle fails that session alone: the
/// other session in the same log is rebuilt whole.
#[test]
fn a_flipped_bit_in_a_middle_record_fails_its_session_alone() {
    let (damaged, _) = session_log("damaged", 3);
    let (healthy, healthy_states) = session_log("healthy", 3);
    let mut bytes = Vec::new();
    for i in 0..damaged.len().max(healthy.len()) {
        if let Some(r) = damaged.get(i) {
            encode_entries(&mut bytes, "damaged", std::slice::from_ref(r));
        }
        if let Some(r) = healthy.get(i) {
            encode_entries(&mut bytes, "healthy", std::slice::from_ref(r));
        }
    }
    // The damaged session's third record: flip one bit of its payload.
    let scan = frame::scan(&bytes, MAX_FRAME);
    let target = scan
        .frames
        .iter()
        .filter(|f| f.session_key == frame::session_key("damaged"))
        .nth(2)
        .unwrap();
    let at = target.offset + frame::HEADER_LEN + target.payload.len() / 2;
    let mut flipped = bytes.clone();
    flipped[at] ^= 0x04;
    let dir = TempDir::new("flipped");
    write_segment(&dir, &flipped);
    let (_handle, recovered) = open(config(&dir)).unwrap();
    assert_eq!(recovered.torn_bytes, 0);
    let by_id = |id: &str| {
        recovered
            .sessions
            .iter()
            .find(|s| s.session_id == id)
            .unwrap()
    };
    assert!(
        by_id("damaged").damage.is_some(),
        "the damaged session is failed"
    );
    let healthy = by_id("healthy");
    assert!(healthy.damage.is_none());
    assert_eq!(
        rebuilt(healthy).unwrap().to_snapshot(0),
        *healthy_states.last().unwrap()
    );
}

/// Recovers a data dir holding `snapshot_file` as session "s"'s snapshot
/// and `tail` as its log; checks that the snapshot and the tail rebuild
/// `last`, and returns the snapshot recovery read.
fn recover_snapshot_plus_tail(
    label: &str,
    snapshot_file: Vec<u8>,
    tail: &[Record],
    last: &Snapshot,
) -> Option<Snapshot> {
    let dir = TempDir::new(label);
    fs::create_dir_all(dir.0.join("snapshots")).unwrap();
    fs::write(
        dir.0.join("snapshots").join(snapshot_name("s")),
        snapshot_file,
    )
    .unwrap();
    let mut bytes = Vec::new();
    encode_entries(&mut bytes, "s", tail);
    write_segment(&dir, &bytes);
    let (_handle, recovered) = open(config(&dir)).unwrap();
    let found = &recovered.sessions[0];
    assert_eq!(rebuilt(found).unwrap().to_snapshot(0), *last);
    found.snapshot.clone()
}

/// A snapshot and the records after it rebuild the state; the records it
/// covers are not needed.
#[test]
fn a_snapshot_plus_the_tail_rebuilds_the_state() {
    let (records, states) = session_log("s", 5);
    let at = 3;
    let found = recover_snapshot_plus_tail(
        "snapshot",
        encode_snapshot(&states[at]),
        &records[at + 1..],
        states.last().unwrap(),
    );
    assert_eq!(found.unwrap().index, at as u64);
}

/// The same, with the snapshot as the registry sends it to the writer: the
/// session's own encoding (files and comments encoded from where it keeps
/// them), framed as the writer frames it.
#[test]
fn a_snapshot_the_session_encoded_plus_the_tail_rebuilds_the_state() {
    let (records, states) = session_log("s", 5);
    let at = 3;
    let mut session = Session::new(Text::from("s"), 0, Arc::new(Limits::default()));
    for record in &records[..=at] {
        session.replay(record).unwrap();
    }
    assert_eq!(session.to_snapshot(0), states[at]);
    let encoded = session.encode_snapshot(0);
    assert_eq!(encoded.index, at as u64);
    let found = recover_snapshot_plus_tail(
        "encoded-snapshot",
        frame_snapshot("s", &encoded.payload),
        &records[at + 1..],
        states.last().unwrap(),
    );
    assert_eq!(found.as_ref(), Some(&states[at]));
}

fn segment_files(dir: &TempDir) -> usize {
    fs::read_dir(&dir.0)
        .unwrap()
        .filter(|e| {
            let name = e.as_ref().unwrap().file_name();
            segment_number(&name.to_string_lossy()).is_some()
        })
        .count()
}

/// Closed log segments wait for their sessions' own snapshots (up to three);
/// past that, the sessions that keep the oldest are named to be snapshotted,
/// and once their snapshot covers them the closed segments go.
#[test]
fn old_segments_wait_for_snapshots_before_they_pin_their_sessions() {
    closed_segments_wait(0, 3);
}

/// With a small disk budget, the log holds at most a quarter of it.
#[test]
fn fewer_segments_wait_under_a_small_disk_budget() {
    closed_segments_wait(8 * 1024, 2);
    closed_segments_wait(1024, 1);
}

fn closed_segments_wait(max_disk_bytes: u64, waiting: usize) {
    use crate::pb::store::{CommentAdded, record::Body};
    let dir = TempDir::new("segments");
    let config = StoreConfig {
        dir: dir.0.clone(),
        segment_bytes: 1024,
        max_disk_bytes,
    };
    let (mut store, _) = open(config).expect("opens");
    let session = Text::from("s");
    let mut pinned_at = None;
    for index in 0..6u64 {
        // A record larger than a segment: every append closes one.
        let mut frames = SessionFrames::new(session.clone());
        frames.push(&[Record {
            index,
            timestamp: 0,
            body: Some(Body::Comment(CommentAdded {
                comment: Some(crate::pb::codereview::Comment {
                    text: "x".repeat(1500),
                    ..Default::default()
                }),
                ..Default::default()
            })),
        }]);
        assert!(store.send(Job::Append(vec![frames])));
        match store.events.blocking_recv() {
            Some(Event::Appended {
                result: Ok(()),
                pinning,
                ..
            }) => {
                let closed = index as usize + 1;
                if closed <= waiting {
                    assert!(pinning.is_empty(), "{closed} closed segments wait");
                } else {
                    assert_eq!(pinning, ["s"], "{closed} closed segments");
                    pinned_at.get_or_insert(closed);
                }
            }
            other => panic!("an append: {other:?}"),
        }
    }
    assert_eq!(pinned_at, Some(waiting + 1));
    // Six closed segments and the current one, all kept.
    assert_eq!(segment_files(&dir), 7);
    let snapshot = Snapshot {
        index: 5,
        session_id: "s".into(),
        ..Default::default()
    };
    assert!(store.send(Job::Snapshot {
        session_id: "s".into(),
        index: 5,
        payload: snapshot.encode_to_vec(),
    }));
    match store.events.blocking_recv() {
        Some(Event::Snapshotted { result: Ok(()), .. }) => {}
        other => panic!("a snapshot: {other:?}"),
    }
    // Covered: only the current segment is left.
    assert_eq!(segment_files(&dir), 1);
}
