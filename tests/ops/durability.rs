//! Durability of the real binary: `serve` killed with SIGKILL (at random
//! moments, under load) and started again on the same data dir loses
//! nothing it acknowledged, applies nothing twice, and serves resumes with
//! exactly what was missed; a damaged record fails its session alone; a
//! restart with 100 sessions is timed and changes nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use codereview::grpc::Code;
use codereview::grpc::client::ChannelConfig;
use codereview::pb::codereview::{Comment, Join, SessionMessage, session_message::Payload};
use codereview::store::{self, frame};
use kit::participant::{Link, Next, Participant, get_snapshot};
use kit::payloads::join_message_with;
use kit::process::{TempDir, free_port};
use kit::server::ServerProcess;
use kit::{LONG, STEP, WAIT};

use super::BIN;

/// `serve` on `port` keeping its sessions in `dir`.
fn serve(dir: &TempDir, port: u16) -> ServerProcess {
    let addr = format!("127.0.0.1:{port}");
    let data = dir.path().to_str().unwrap().to_owned();
    ServerProcess::start(
        BIN,
        &["--addr", &addr, "--data-dir", &data, "--rate-limit", "0"],
    )
}

fn kill_9(server: &mut ServerProcess) {
    server.signal("KILL");
    let deadline = Instant::now() + WAIT;
    while server.is_running() {
        assert!(Instant::now() < deadline, "the server survived SIGKILL");
        std::thread::sleep(Duration::from_millis(10));
    }
}

async fn link(addr: &str) -> Link {
    let addr: SocketAddr = addr.parse().unwrap();
    Link::own_with(addr, ChannelConfig::default()).await
}

fn comment(text: String) -> Payload {
    Payload::Comment(Comment {
        comment_id: String::new(),
        line_number: 0,
        text,
        file_path: String::new(),
    })
}

/// A writer of numbered comments that remembers what was acknowledged, the
/// last sequence number it saw, and resumes after a crash.
struct Writer {
    user: String,
    session: String,
    /// client sequence -> text, for everything sent.
    sent: BTreeMap<u64, String>,
    /// client sequences acknowledged (the server said: durable).
    acked: BTreeSet<u64>,
    last_sequence: u64,
    epoch: u64,
    /// Errors answering numbered messages (client sequence, code, message).
    errors: Vec<(u64, i32, String)>,
}

impl Writer {
    fn new(session: &str, user: &str) -> Writer {
        Writer {
            user: user.into(),
            session: session.into(),
            sent: BTreeMap::new(),
            acked: BTreeSet::new(),
            last_sequence: 0,
            epoch: 0,
            errors: Vec::new(),
        }
    }

    /// Joins (resuming after what it saw, once it has an epoch).
    async fn join(&mut self, addr: &str) -> Participant {
        let join = if self.epoch == 0 {
            Join::default()
        } else {
            Join {
                resume_after_sequence: Some(self.last_sequence),
                session_epoch: self.epoch,
                ..Join::default()
            }
        };
        let first = join_message_with(&self.session, &self.user, join);
        let (p, catch_up) = Participant::try_join(link(addr).await, None, first)
            .await
            .unwrap_or_else(|status| panic!("{} could not join: {status}", self.user));
        if self.epoch != 0 {
            assert_eq!(
                catch_up.joined.session_epoch, self.epoch,
                "the same session after the restart"
            );
        }
        self.epoch = catch_up.joined.session_epoch;
        for m in catch_up.messages.iter().chain([&catch_up.joined_message]) {
            self.see(m);
        }
        p
    }

    /// Follows one message: essential sequence numbers must come one by one
    /// (no gap, no repeat), and acks are recorded.
    fn see(&mut self, m: &SessionMessage) {
        let essential = match &m.payload {
            Some(Payload::Comment(_) | Payload::Edit(_) | Payload::File(_)) => true,
            Some(Payload::Presence(p)) => p.status == 0 || p.status == 3,
            Some(Payload::Ack(a)) => a.sequence != 0 && !a.duplicate,
            _ => false,
        };
        if essential {
            assert_eq!(
                m.sequence,
                self.last_sequence + 1,
                "{}: sequence numbers one by one, none lost or repeated: {m:?}",
                self.user
            );
            self.last_sequence = m.sequence;
        }
        if let Some(Payload::Ack(ack)) = &m.payload
            && ack.client_sequence != 0
        {
            self.acked.insert(ack.client_sequence);
        }
        if let Some(Payload::Error(e)) = &m.payload {
            self.errors
                .push((e.client_sequence, e.code, e.message.clone()));
        }
    }

    /// Sends comments numbered `from..to` (resending unacknowledged ones
    /// first, with their numbers), reading as it goes; stops at the first
    /// broken stream.
    async fn write(&mut self, p: &mut Participant, count: usize) {
        let resend: Vec<(u64, String)> = self
            .sent
            .iter()
            .filter(|(n, _)| !self.acked.contains(n))
            .map(|(n, t)| (*n, t.clone()))
            .collect();
        for (n, text) in resend {
            p.queue_raw(p.message(Some(comment(text)), n));
        }
        if p.flush_raw().await.is_err() {
            return;
        }
        let first = self.sent.keys().next_back().map_or(1, |n| n + 1);
        for n in first..first + count as u64 {
            let text = format!("{} note {n}", self.user);
            self.sent.insert(n, text.clone());
            p.queue_raw(p.message(Some(comment(text)), n));
            if p.flush_raw().await.is_err() {
                return;
            }
            while let Next::Message(m) = p.next_within(Duration::ZERO).await {
                self.see(&m);
            }
        }
    }

    /// Reads until every comment sent is acknowledged (or the stream ends).
    async fn settle(&mut self, p: &mut Participant) {
        let deadline = Instant::now() + LONG;
        while self.acked.len() < self.sent.len() && Instant::now() < deadline {
            match p.next_within(STEP).await {
                Next::Message(m) => self.see(&m),
                _ => return,
            }
        }
    }
}

/// The comments a session holds, by text.
async fn comment_texts(addr: &str, session: &str) -> Vec<String> {
    let snapshot = get_snapshot(link(addr).await, None, session)
        .await
        .expect("GetSnapshot");
    snapshot
        .comments
        .iter()
        .map(|c| c.comment.as_ref().unwrap().text.clone())
        .collect()
}

/// SIGKILL at random moments while writers write: after each restart every
/// acknowledged comment is there, once; the writers resume with exactly
/// what they missed (sequence numbers one by one) and resend what was not
/// acknowledged, which is applied once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_acknowledged_is_lost_when_the_server_is_killed() {
    let dir = TempDir::new("kill9");
    let port = free_port();
    let mut writers: Vec<Writer> = (0..3)
        .map(|i| Writer::new("crash", &format!("w{i}")))
        .collect();
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    for round in 0..3 {
        let mut server = serve(&dir, port);
        let addr = server.addr.clone();
        let mut streams = Vec::new();
        for w in &mut writers {
            streams.push(w.join(&addr).await);
        }
        // Write at full speed; SIGKILL after a pseudo-random delay.
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let delay = Duration::from_millis(50 + rng % 250);
        let killer = std::thread::spawn(move || {
            std::thread::sleep(delay);
            kill_9(&mut server);
            server
        });
        let writing = async {
            for (w, p) in writers.iter_mut().zip(streams.iter_mut()) {
                w.write(p, 200).await;
            }
        };
        let _ = tokio::time::timeout(WAIT, writing).await;
        drop(killer.join().unwrap());
        drop(streams);
        // Restart on the same data dir: everything acknowledged is there.
        let server = serve(&dir, port);
        let texts = comment_texts(&server.addr, "crash").await;
        for w in &writers {
            for n in &w.acked {
                let text = &w.sent[n];
                assert_eq!(
                    texts.iter().filter(|t| *t == text).count(),
                    1,
                    "round {round}: acknowledged {text:?} is in the session once"
                );
            }
        }
        drop(server);
    }
    // Finally everyone resumes, resends, and everything sent is there once.
    let server = serve(&dir, port);
    for w in &mut writers {
        let mut p = w.join(&server.addr).await;
        w.write(&mut p, 0).await;
        w.settle(&mut p).await;
        let missing: Vec<&u64> = w.sent.keys().filter(|n| !w.acked.contains(n)).collect();
        assert!(
            missing.is_empty(),
            "{}: every comment acknowledged; missing {missing:?}; errors {:?}",
            w.user,
            w.errors
        );
    }
    let texts = comment_texts(&server.addr, "crash").await;
    let sent: usize = writers.iter().map(|w| w.sent.len()).sum();
    assert_eq!(texts.len(), sent, "each comment applied exactly once");
    let distinct: BTreeSet<&String> = texts.iter().collect();
    assert_eq!(distinct.len(), texts.len(), "no comment twice");
}

/// A participant that half-closes right after sending still gets every
/// acknowledgement before its call ends OK: acknowledgements wait for the
/// log, and the half-close waits for them (it did not, once).
#[tokio::test]
async fn a_half_close_waits_for_the_acknowledgements_the_log_holds_back() {
    let dir = TempDir::new("halfclose");
    let server = serve(&dir, free_port());
    for round in 0..5 {
        let session = format!("half-{round}");
        let first = join_message_with(&session, "ann", Join::default());
        let (mut p, _) = Participant::try_join(link(&server.addr).await, None, first)
            .await
            .unwrap();
        let mut numbers = Vec::new();
        for i in 0..50 {
            numbers.push(p.queue(comment(format!("c{i} of round {round}"))));
        }
        p.flush().await;
        p.close_send();
        let (messages, status) = p.until_end().await;
        assert_eq!(status.code(), Code::Ok, "round {round}: {status}");
        let acked: Vec<u64> = messages
            .iter()
            .filter_map(|m| match &m.payload {
                Some(Payload::Ack(a)) => Some(a.client_sequence),
                _ => None,
            })
            .collect();
        assert_eq!(
            acked, numbers,
            "round {round}: every acknowledgement, in order: {messages:#?}"
        );
    }
}

/// A flipped bit in one session's record fails that session alone: it
/// answers DATA_LOSS, the other session in the same log is served whole.
#[tokio::test]
async fn a_damaged_record_fails_its_session_alone() {
    let dir = TempDir::new("bitflip");
    let port = free_port();
    let mut server = serve(&dir, port);
    for session in ["damaged", "healthy"] {
        let first = join_message_with(session, "ann", Join::default());
        let (mut p, _) = Participant::try_join(link(&server.addr).await, None, first)
            .await
            .unwrap();
        for i in 0..5 {
            let n = p.send(comment(format!("{session} {i}"))).await;
            p.outcome(n).await.ack();
        }
    }
    kill_9(&mut server);
    // Flip a bit in the payload of the damaged session's fourth record.
    let segment = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.file_name().unwrap().to_string_lossy().starts_with("wal-")
                && std::fs::metadata(p).unwrap().len() > 0
        })
        .expect("a log segment");
    let mut bytes = std::fs::read(&segment).unwrap();
    let scan = frame::scan(&bytes, store::MAX_FRAME);
    let target = scan
        .frames
        .iter()
        .filter(|f| f.session_key == frame::session_key("damaged"))
        .nth(3)
        .expect("a fourth record")
        .clone();
    let at = target.offset + frame::HEADER_LEN + target.payload.len() / 2;
    bytes[at] ^= 0x20;
    std::fs::write(&segment, &bytes).unwrap();
    let server = serve(&dir, port);
    let status = get_snapshot(link(&server.addr).await, None, "damaged")
        .await
        .expect_err("a damaged session is not served");
    assert_eq!(status.code(), Code::DataLoss, "{status}");
    let first = join_message_with("damaged", "bob", Join::default());
    let status = Participant::try_join(link(&server.addr).await, None, first)
        .await
        .err()
        .expect("refused");
    assert_eq!(status.code(), Code::DataLoss, "{status}");
    let texts = comment_texts(&server.addr, "healthy").await;
    assert_eq!(texts.len(), 5, "the healthy session is whole: {texts:?}");
    assert!(
        server
            .log()
            .iter()
            .any(|l| l.contains("session damaged in storage")),
        "the log says which session and why"
    );
}

/// 100 sessions of 1000 events: after SIGKILL and a restart every session is
/// exactly what it was (the time to serve again is printed, not asserted).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_with_100_sessions_keeps_them_as_they_were() {
    let dir = TempDir::new("hundred");
    let port = free_port();
    let mut server = serve(&dir, port);
    let conn = link(&server.addr).await;
    for s in 0..100 {
        let session = format!("s{s}");
        let first = join_message_with(&session, "ann", Join::default());
        let (mut p, _) = Participant::try_join(conn.clone(), None, first)
            .await
            .unwrap();
        let mut last = 0;
        for i in 0..998 {
            last = p.queue(comment(format!("{session} {i}")));
        }
        p.flush().await;
        p.outcome(last).await.ack();
        p.close_send();
        let _ = p.until_end().await;
    }
    let mut before = Vec::new();
    for s in 0..100 {
        before.push(
            get_snapshot(conn.clone(), None, &format!("s{s}"))
                .await
                .unwrap(),
        );
    }
    kill_9(&mut server);
    let started = Instant::now();
    let server = serve(&dir, port);
    let elapsed = started.elapsed();
    println!("restart with 100 sessions of 1000 events: serving after {elapsed:?}");
    let conn = link(&server.addr).await;
    for (s, expected) in before.iter().enumerate() {
        let after = get_snapshot(conn.clone(), None, &format!("s{s}"))
            .await
            .unwrap();
        assert_eq!(&after, expected, "session s{s} after the restart");
        assert_eq!(after.sequence, 1000);
    }
}

/// A session that made more than 4096 records is snapshotted on disk as its
/// records become durable (the registry tracks which sessions are due), and a
/// restart after SIGKILL rebuilds it, snapshot plus tail, as it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_session_is_snapshotted_and_rebuilt_from_its_snapshot() {
    let dir = TempDir::new("long-session");
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let data = dir.path().to_str().unwrap().to_owned();
    let args = [
        "--addr",
        addr.as_str(),
        "--data-dir",
        data.as_str(),
        "--rate-limit",
        "0",
        "--max-comments",
        "10000",
    ];
    let mut server = ServerProcess::start(BIN, &args);
    let conn = link(&server.addr).await;
    let first = join_message_with("long", "ann", Join::default());
    let (mut p, _) = Participant::try_join(conn.clone(), None, first)
        .await
        .unwrap();
    let mut last = 0;
    for i in 0..4200 {
        last = p.queue(comment(format!("long {i}")));
    }
    p.flush().await;
    p.outcome(last).await.ack();
    p.close_send();
    let _ = p.until_end().await;
    let snapshot_file = dir
        .path()
        .join("snapshots")
        .join(store::snapshot_name("long"));
    let deadline = Instant::now() + WAIT;
    while !snapshot_file.exists() {
        assert!(
            Instant::now() < deadline,
            "no snapshot of a session with 4202 records"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let before = get_snapshot(conn.clone(), None, "long").await.unwrap();
    kill_9(&mut server);
    let server = ServerProcess::start(BIN, &args);
    let after = get_snapshot(link(&server.addr).await, None, "long")
        .await
        .unwrap();
    assert_eq!(after, before);
    assert_eq!(after.sequence, 4202);
}
