//! One total order per session across instances.

use std::collections::{BTreeMap, BTreeSet};

use codereview::grpc::client::CallOptions;
use codereview::pb::codereview::code_edit::Op;
use codereview::pb::codereview::session_message::Payload;
use codereview::pb::codereview::{Join, SessionMessage};
use kit::participant::Next;
use kit::participant::{Participant, get_snapshot, upload};
use kit::payloads::{chunk, comment, join_message_with};
use kit::redis::RedisServer;
use kit::{LONG, STEP};

use codereview::shared_log::scripts::SNAPSHOT;

use super::{instance, instance_with};
use codereview::app::AppConfig;

/// What an essential event says, for comparing replicas (None: not one).
fn essence(m: &SessionMessage) -> Option<String> {
    let what = match m.payload.as_ref()? {
        Payload::Edit(e) => format!(
            "edit {} {} {:?} v{}",
            e.file_path, e.line_number, e.content, e.version
        ),
        Payload::Comment(c) => format!(
            "comment {} {} {:?} {}",
            c.file_path, c.line_number, c.text, c.comment_id
        ),
        Payload::Presence(p) => format!("presence {}", p.status),
        Payload::File(f) => format!("file {} v{}", f.file_path, f.version),
        _ => return None,
    };
    Some(format!("{}: {what}", m.user_id))
}

/// Three instances, a participant on each, all sending edits to the same
/// line and comments as fast as they can: every sequence number is given
/// once (acknowledged to its author, delivered to the other two), every
/// participant sees the same event at the same number, and the three
/// instances' snapshots are identical.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_give_one_session_one_order() {
    const EACH: usize = 30;
    let redis = RedisServer::start();
    let servers = [
        instance(&redis).await,
        instance(&redis).await,
        instance(&redis).await,
    ];
    upload(
        &servers[0].channel().await,
        CallOptions::default(),
        &[chunk("s", "f.txt", "base\n")],
    )
    .await
    .expect("an upload");
    let users = ["ann", "bob", "cy"];
    let mut participants = Vec::new();
    for (server, user) in servers.iter().zip(users) {
        let (p, _) = Participant::join(&server.channel().await, None, "s", user).await;
        participants.push(p);
    }
    let mut tasks = Vec::new();
    for mut p in participants {
        tasks.push(tokio::spawn(async move {
            let mut sent = Vec::new();
            for i in 0..EACH {
                let text = format!("{}-{i}", p.user);
                sent.push(p.edit(Op::Insert, "f.txt", 0, &text).await);
                sent.push(p.send(comment("f.txt", 0, &text)).await);
            }
            let mut own = BTreeSet::new();
            for n in sent {
                let ack = p.ack_of(n).await;
                assert!(!ack.duplicate, "{}: {ack:?}", p.user);
                own.insert(ack.sequence);
            }
            (p, own)
        }));
    }
    let mut finished = Vec::new();
    for task in tasks {
        finished.push(task.await.expect("a participant"));
    }
    let last = finished
        .iter()
        .flat_map(|(_, own)| own.iter().copied())
        .max()
        .expect("acks");
    // Each participant reads until it has every number up to the last
    // (the inbox's log holds what came while it waited for its acks too).
    let mut seen: Vec<BTreeMap<u64, String>> = Vec::new();
    for (p, own) in &mut finished {
        let floor = *own.iter().next().expect("acks");
        let deadline = tokio::time::Instant::now() + LONG;
        let user = p.user.clone();
        loop {
            let mut events = BTreeMap::new();
            for m in p.inbox().log.iter().filter(|m| m.sequence >= floor) {
                let Some(event) = essence(m) else { continue };
                assert!(
                    events.insert(m.sequence, event).is_none() && !own.contains(&m.sequence),
                    "{user}: sequence {} delivered twice",
                    m.sequence
                );
            }
            let missing: Vec<u64> = (floor..=last)
                .filter(|n| !own.contains(n) && !events.contains_key(n))
                .collect();
            if missing.is_empty() {
                seen.push(events);
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{} waits for events {missing:?}",
                p.user
            );
            if let Next::End(status) = p.next_within(STEP).await {
                panic!("{}: ended ({status}) while missing {missing:?}", p.user);
            }
        }
    }
    // Where two participants saw the same number, they saw the same event.
    for (i, a) in seen.iter().enumerate() {
        for b in seen.iter().skip(i + 1) {
            for (n, event) in a {
                if let Some(other) = b.get(n) {
                    assert_eq!(event, other, "sequence {n}");
                }
            }
        }
    }
    let mut snapshots = Vec::new();
    for server in &servers {
        let mut snapshot = get_snapshot(&server.channel().await, None, "s")
            .await
            .expect("a snapshot");
        snapshot
            .participants
            .sort_by(|a, b| a.user_id.cmp(&b.user_id));
        snapshots.push(snapshot);
    }
    assert_eq!(snapshots[0].files, snapshots[1].files);
    assert_eq!(snapshots[0].files, snapshots[2].files);
    assert_eq!(snapshots[0].comments, snapshots[1].comments);
    assert_eq!(snapshots[0].comments, snapshots[2].comments);
    let lines = &snapshots[0].files[0].lines;
    assert_eq!(
        lines.len(),
        3 * EACH + 1,
        "every insert applied once: {lines:?}"
    );
    assert_eq!(snapshots[0].comments.len(), 3 * EACH);
    // The stream itself is dense: its ids are unique and increasing (a
    // stream's rule), the first is record 0's and the last is record
    // XLEN-1's, so no number is missing or taken twice.
    let key = "codereview:{s}:log";
    let length: u64 = redis
        .command(&["XLEN", key])
        .trim_start_matches(':')
        .trim()
        .parse()
        .expect("XLEN");
    let first = redis.command(&["XRANGE", key, "-", "+", "COUNT", "1"]);
    let last = redis.command(&["XREVRANGE", key, "+", "-", "COUNT", "1"]);
    assert!(first.contains("\r\n0-1\r\n"), "{first}");
    assert!(
        last.contains(&format!("\r\n{}-1\r\n", length - 1)),
        "{length}: {last}"
    );
    assert!(
        length as usize > 6 * EACH,
        "every message is a record: {length}"
    );
}

/// A participant's stream on one instance, resumed on another after a
/// drop: it gets exactly what it missed; a resend of a message that was
/// acknowledged on the first instance is acknowledged again as a
/// duplicate on the second, never applied twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_and_a_resend_work_on_another_instance() {
    let redis = RedisServer::start();
    let one = instance(&redis).await;
    let two = instance(&redis).await;
    let (mut ann, joined) = Participant::join(&one.channel().await, None, "r", "ann").await;
    let (mut bob, _) = Participant::join(&two.channel().await, None, "r", "bob").await;
    let n = ann.send(comment("", 0, "first")).await;
    let first = ann.ack_of(n).await;
    bob.recv_matching(|m| matches!(&m.payload, Some(Payload::Comment(c)) if c.text == "first"))
        .await;
    let epoch = joined.joined.session_epoch;
    ann.cancel();
    // Bob writes while Ann is away.
    for text in ["while away 1", "while away 2"] {
        let n = bob.send(comment("", 0, text)).await;
        bob.ack_of(n).await;
    }
    let resume = Join {
        resume_after_sequence: Some(first.sequence),
        session_epoch: epoch,
        ..Join::default()
    };
    let (mut ann, catch_up) = Participant::try_join(
        &two.channel().await,
        None,
        join_message_with("r", "ann", resume),
    )
    .await
    .expect("ann resumes on the other instance");
    let missed: Vec<String> = catch_up
        .messages
        .iter()
        .filter_map(|m| match &m.payload {
            Some(Payload::Comment(c)) => Some(c.text.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(missed, ["while away 1", "while away 2"]);
    // The resend of the first comment, with its number.
    ann.set_next_client_sequence(n);
    let again = ann.send(comment("", 0, "first")).await;
    assert_eq!(again, n);
    let ack = ann.ack_of(n).await;
    assert!(ack.duplicate, "{ack:?}");
    assert_eq!(ack.sequence, first.sequence);
    let snapshot = get_snapshot(&one.channel().await, None, "r")
        .await
        .expect("a snapshot");
    let firsts = snapshot
        .comments
        .iter()
        .filter(|c| c.comment.as_ref().is_some_and(|c| c.text == "first"))
        .count();
    assert_eq!(firsts, 1);
}

/// How many entries a session's stream holds, once fewer than `below`
/// (snapshots are stored at the registry's next tick).
async fn trimmed_below(redis: &RedisServer, session: &str, below: usize) -> usize {
    let key = format!("codereview:{{{session}}}:log");
    let deadline = tokio::time::Instant::now() + LONG;
    loop {
        let length: usize = redis
            .command(&["XLEN", &key])
            .trim_start_matches(':')
            .trim()
            .parse()
            .expect("XLEN");
        if length < below {
            return length;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{key} not trimmed: {length} entries ({:?})",
            redis.command(&["HGET", &format!("codereview:{{{session}}}:snap"), "index"])
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// Every few thousand records a snapshot goes to Redis (the stream is
/// trimmed behind the one before: see the script's test); an instance that
/// has never seen the session rebuilds it from the snapshot and the tail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_in_redis_trim_the_stream_and_rebuild_replicas() {
    const EDITS: usize = 4300;
    let redis = RedisServer::start();
    let unlimited = |config: &mut AppConfig| config.limits.rate_per_second = 0.0;
    let writer = instance_with(&redis, unlimited).await;
    let (mut ann, _) = Participant::join(&writer.channel().await, None, "big", "ann").await;
    let mut last = 0;
    for i in 0..EDITS {
        last = ann
            .edit(Op::Insert, "f.txt", i as i32, &format!("line {i}"))
            .await;
        if i % 200 == 199 {
            ann.ack_of(last).await;
        }
    }
    ann.ack_of(last).await;
    let deadline = tokio::time::Instant::now() + LONG;
    while redis
        .command(&["HGET", "codereview:{big}:snap", "index"])
        .starts_with("$-1")
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no snapshot in Redis"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    // A fresh instance loads it: the same document.
    let reader = instance(&redis).await;
    let (_bob, _) = Participant::join(&reader.channel().await, None, "big", "bob").await;
    let from_writer = get_snapshot(&writer.channel().await, None, "big")
        .await
        .expect("a snapshot");
    let from_reader = get_snapshot(&reader.channel().await, None, "big")
        .await
        .expect("a snapshot");
    assert_eq!(from_reader.files, from_writer.files);
    assert_eq!(from_reader.files[0].lines.len(), EDITS);
}

/// A few big records make a snapshot due too, not only many records: a
/// long line rewritten 800 times (200 MiB of log, a 256 KiB document) is
/// snapshotted and trimmed in Redis, so loading the session reads about
/// its size, not its whole history.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn big_records_make_a_snapshot_due_in_redis() {
    const REWRITES: usize = 800;
    const LINE: usize = 256 << 10;
    let redis = RedisServer::start();
    let roomy = |config: &mut AppConfig| {
        config.limits.rate_per_second = 0.0;
        config.limits.max_line_bytes = LINE;
    };
    let writer = instance_with(&redis, roomy).await;
    let (mut ann, _) = Participant::join(&writer.channel().await, None, "wide", "ann").await;
    for i in 0..REWRITES {
        let number = i.to_string();
        let text = format!("{}{number}", " ".repeat(LINE - number.len()));
        let sent = ann.edit(Op::Replace, "f.txt", 0, &text).await;
        // Acknowledged now and then, as a client keeping a window would.
        if (i + 1) % 20 == 0 || i + 1 == REWRITES {
            ann.ack_of(sent).await;
        }
    }
    // Two snapshots (64 MiB each): the second trims behind the first.
    trimmed_below(&redis, "wide", REWRITES).await;
    // A fresh instance loads it: the last rewrite.
    let reader = instance_with(&redis, roomy).await;
    let from_reader = get_snapshot(&reader.channel().await, None, "wide")
        .await
        .expect("a snapshot");
    let lines = &from_reader.files[0].lines;
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0].trim_start(), (REWRITES - 1).to_string());
}

/// The snapshot script stores a snapshot only where the log reaches it (a
/// log that lost its last entries after the snapshot was read must not get
/// a snapshot claiming them), and trims behind the snapshot it replaces,
/// not behind the new one, always keeping the last entry.
#[test]
fn the_snapshot_script_needs_the_log_to_reach_it_and_trims_behind_the_one_before() {
    let redis = RedisServer::start();
    let (log, snap) = ("t:log", "t:snap");
    for i in 0..10 {
        redis.command(&["XADD", log, &format!("{i}-1"), "r", "x"]);
    }
    let snapshot = |index: &str| {
        redis
            .command(&["EVAL", SNAPSHOT, "2", log, snap, index, "data", "60000"])
            .trim()
            .to_owned()
    };
    let length = || redis.command(&["XLEN", log]).trim().to_owned();
    assert_eq!(snapshot("12"), ":0", "past the log's end (it ends at 10)");
    assert!(redis.command(&["HGET", snap, "index"]).starts_with("$-1"));
    assert_eq!(snapshot("4"), ":1");
    assert_eq!(length(), ":10", "no snapshot before it: nothing trimmed");
    assert_eq!(snapshot("10"), ":1", "the log's end is reached");
    assert_eq!(length(), ":6", "trimmed behind the one before (4)");
    assert_eq!(snapshot("9"), ":0", "older than the stored one");
    redis.command(&["XTRIM", log, "MAXLEN", "0"]);
    assert_eq!(snapshot("11"), ":0", "no log at all");
    assert!(redis.command(&["HGET", snap, "index"]).contains("10"));
}

/// A follower whose next entries are gone from Redis (trimmed behind a
/// snapshot it never reached) cannot read them again: its members are
/// ended with UNAVAILABLE (they resume on a fresh copy, loaded from the
/// snapshot) instead of the copy asking for them forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_trimmed_past_ends_its_members_to_load_again() {
    let redis = RedisServer::start();
    let writer = instance(&redis).await;
    let follower = instance(&redis).await;
    let (mut ann, _) = Participant::join(&writer.channel().await, None, "gap", "ann").await;
    let (mut bob, _) = Participant::join(&follower.channel().await, None, "gap", "bob").await;
    let sent = ann.send(comment("", 0, "seen by both")).await;
    ann.ack_of(sent).await;
    bob.recv_matching(
        |m| matches!(&m.payload, Some(Payload::Comment(c)) if c.text == "seen by both"),
    )
    .await;
    // The log jumps past where the follower is: the entries between are
    // gone, as a trim behind a snapshot the follower never reached leaves
    // them.
    let top = redis.command(&["XREVRANGE", "codereview:{gap}:log", "+", "-", "COUNT", "1"]);
    let last: u64 = top
        .lines()
        .find_map(|line| line.strip_suffix("-1"))
        .and_then(|index| index.parse().ok())
        .expect("the log's last entry");
    let later = codereview::pb::store::Record {
        index: last + 5,
        ..Default::default()
    };
    let encoded = String::from_utf8(prost::Message::encode_to_vec(&later)).expect("ASCII");
    let id = format!("{}-1", last + 5);
    redis.command(&["XADD", "codereview:{gap}:log", &id, "r", &encoded]);
    let status = bob.end().await;
    assert_eq!(
        status.code(),
        codereview::grpc::Code::Unavailable,
        "{status:?}"
    );
    assert!(status.message().contains("trimmed"), "{status:?}");
}
