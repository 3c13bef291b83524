//! The bidirectional session: broadcast and exclusion, one order for
//! everyone, presence, the article's clients, late joins, resumes,
//! isolation between sessions, fifty participants, nothing leaked.

use std::collections::BTreeMap;
use std::time::Duration;

use codereview::grpc::Code;
use codereview::pb::codereview::code_edit::Op;
use codereview::pb::codereview::joined::Catchup;
use codereview::pb::codereview::notice::Kind as NoticeKind;
use codereview::pb::codereview::presence_update::Status as Presence;
use codereview::pb::codereview::session_message::Payload;
use codereview::pb::codereview::{
    Ack, CodeEdit, Comment, CursorPosition, FileContent, Join, Notice, Role, SessionMessage,
    Snapshot, WatchRequest,
};
use codereview::review::limits::Limits;
use kit::participant::Participant;
use kit::payloads::{
    Dense, Order, as_ack, as_edit, catchup_of, chunk, comment, cursor, edit, essential_sequence,
    is_caught_up, is_presence, message, presence, record,
};
use kit::{QUIET, within};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::{
    author_presence, get_snapshot, is_empty, join, join_behind_proxy, join_explicit, limits,
    never_reading, own_join_ack, participant_entry, session_call_status, snapshot_lines, start,
    tonic, unlimited_rate, upload, watch,
};
use codereview::app::AppConfig;
use kit::server::TestServer;

// ----- 1. broadcast and exclusion -----

#[tokio::test]
async fn an_edit_reaches_the_others_and_its_author_gets_only_an_ack() {
    let server = start(limits()).await;
    let addr = server.addr;
    let (mut a, a_join) = join(addr, "s", "alice").await;
    assert_eq!(a_join.joined.sequence, 1);
    assert_eq!(a_join.joined.version, 0);
    assert_eq!(a_join.joined.role, Role::Author as i32);
    assert_eq!(catchup_of(&a_join.joined), Catchup::History);
    let (mut b, b_join) = join(addr, "s", "bob").await;
    assert_eq!(b_join.joined.sequence, 2);
    assert_eq!(b_join.joined.session_epoch, a_join.joined.session_epoch);

    let joined = a.recv().await;
    assert_eq!(joined.user_id, "bob");
    assert_eq!(joined.sequence, 2);
    assert_eq!(joined.payload, author_presence(Presence::Joined));

    let client_sequence = a.edit_at(Op::Insert, "main.rs", 0, "fn main() {}", 0).await;
    let edit = b.recv().await;
    assert_eq!(edit.session_id, "s");
    assert_eq!(edit.user_id, "alice");
    assert_eq!(edit.sequence, 3);
    assert_eq!(
        edit.client_sequence, 0,
        "others do not see the author's numbering"
    );
    assert!(edit.timestamp > 0, "the server stamps broadcasts");
    assert_eq!(
        edit.payload,
        Some(Payload::Edit(CodeEdit {
            file_path: "main.rs".into(),
            line_number: 0,
            content: "fn main() {}".into(),
            version: 1,
            op: Op::Insert as i32,
        }))
    );

    let ack = a.recv().await;
    assert_eq!(ack.client_sequence, client_sequence);
    assert_eq!(ack.sequence, 3);
    assert_eq!(
        ack.payload,
        Some(Payload::Ack(Ack {
            client_sequence,
            sequence: 3,
            version: 1,
            duplicate: false,
            noop: false,
            comment_id: String::new(),
        }))
    );
    // Never its own edit, and nothing else for either.
    a.expect_quiet(QUIET).await;
    b.expect_quiet(QUIET).await;
}

/// The server hands the messages it received together to the registry as
/// one batch: a message refused by validation in the middle of a burst is
/// answered in its place, and the others are applied and broadcast in order.
#[tokio::test]
async fn a_burst_with_a_refused_message_in_it_is_answered_and_broadcast_in_order() {
    const BURST: usize = 40;
    const REFUSED: usize = 17;
    let server = start(limits()).await;
    let addr = server.addr;
    let (mut a, _) = join(addr, "burst", "alice").await;
    let (mut b, _) = join(addr, "burst", "bob").await;
    a.recv_matching(|m| is_presence(m, "bob", Presence::Joined))
        .await;
    // One write: the server reads the burst at once.
    let sequences: Vec<u64> = (0..BURST)
        .map(|i| {
            let text = if i == REFUSED {
                String::new() // refused: a comment's text must not be empty
            } else {
                format!("note {i}")
            };
            a.queue(comment("", 0, &text))
        })
        .collect();
    a.flush().await;

    let mut answers = Vec::new();
    while answers.len() < BURST {
        let m = a.recv().await;
        match m.payload {
            Some(Payload::Ack(_)) => answers.push((m.client_sequence, true)),
            Some(Payload::Error(error)) => {
                assert_eq!(error.code, Code::InvalidArgument as i32, "{error:?}");
                answers.push((m.client_sequence, false));
            }
            other => panic!("alice: unexpected {other:?}"),
        }
    }
    let expected: Vec<(u64, bool)> = sequences
        .iter()
        .enumerate()
        .map(|(i, &cs)| (cs, i != REFUSED))
        .collect();
    assert_eq!(answers, expected, "answers in the order sent");

    let mut texts = Vec::new();
    while texts.len() < BURST - 1 {
        match b.recv().await.payload {
            Some(Payload::Comment(c)) => texts.push(c.text),
            other => panic!("bob: unexpected {other:?}"),
        }
    }
    let sent: Vec<String> = (0..BURST)
        .filter(|&i| i != REFUSED)
        .map(|i| format!("note {i}"))
        .collect();
    assert_eq!(texts, sent, "broadcast in the order sent");
    a.expect_quiet(QUIET).await;
    b.expect_quiet(QUIET).await;
}

/// Each message's session and user ids are checked on their own: the ids
/// of a refused message do not stick to the next one, which leaves them
/// empty (the server keeps the last message's id strings to decode the next
/// one into).
#[tokio::test]
async fn a_refused_messages_ids_do_not_stick_to_the_next_message() {
    let server = start(limits()).await;
    let addr = server.addr;
    let (mut a, _) = join(addr, "ids", "alice").await;
    let (mut b, _) = join(addr, "ids", "bob").await;
    a.recv_matching(|m| is_presence(m, "bob", Presence::Joined))
        .await;
    let with_ids = |a: &mut Participant, session: &str, user: &str, text: &str| {
        let client_sequence = a.take_client_sequence();
        SessionMessage {
            session_id: session.into(),
            user_id: user.into(),
            client_sequence,
            ..message("", "", Some(comment("", 0, text)))
        }
    };
    let sent = [
        with_ids(&mut a, "elsewhere", "", "wrong session"),
        with_ids(&mut a, "", "", "first"),
        with_ids(&mut a, "", "mallory", "wrong user"),
        with_ids(&mut a, "", "", "second"),
        with_ids(&mut a, "ids", "alice", "third"),
    ];
    let sequences: Vec<u64> = sent.iter().map(|m| m.client_sequence).collect();
    for message in sent {
        a.queue_raw(message);
    }
    a.flush().await;
    let mut answers = Vec::new();
    while answers.len() < sequences.len() {
        let m = a.recv().await;
        match m.payload {
            Some(Payload::Ack(_)) => answers.push((m.client_sequence, None)),
            Some(Payload::Error(error)) => answers.push((m.client_sequence, Some(error.code))),
            other => panic!("alice: unexpected {other:?}"),
        }
    }
    assert_eq!(
        answers,
        [
            (sequences[0], Some(Code::InvalidArgument as i32)),
            (sequences[1], None),
            (sequences[2], Some(Code::PermissionDenied as i32)),
            (sequences[3], None),
            (sequences[4], None),
        ]
    );
    let mut texts = Vec::new();
    while texts.len() < 3 {
        match b.recv().await.payload {
            Some(Payload::Comment(c)) => texts.push(c.text),
            other => panic!("bob: unexpected {other:?}"),
        }
    }
    assert_eq!(texts, ["first", "second", "third"]);
    a.expect_quiet(QUIET).await;
    b.expect_quiet(QUIET).await;
}

// ----- 2. ordering -----

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_edits_arrive_densely_and_in_one_order_for_everyone() {
    const EDITS: usize = 20;
    let server = start(limits()).await;
    let addr = server.addr;
    let users = ["p0", "p1", "p2"];
    let mut joined = Vec::new();
    for user in users {
        joined.push(join(addr, "order", user).await);
    }
    let mut tasks = JoinSet::new();
    for (mut p, catch_up) in joined {
        tasks.spawn(async move {
            let me = p.user.clone();
            let start = catch_up.joined.sequence;
            // Fire all edits at once (inserts at the top, each based on the
            // version this client knew: 0), then read.
            for i in 0..EDITS {
                p.edit_at(Op::Insert, "f.rs", 0, &format!("{me}-{i}"), 0)
                    .await;
            }
            let mut dense = Dense::after(start, me.clone());
            let mut order = Order::new();
            let (mut acks, mut edits) = (0, 0);
            while acks < EDITS || edits < 2 * EDITS {
                let m = p.recv().await;
                dense.observe(&m);
                record(&mut order, &me, &m);
                match &m.payload {
                    Some(Payload::Edit(_)) => {
                        assert_ne!(m.user_id, me, "never one's own edit");
                        edits += 1;
                    }
                    Some(Payload::Ack(a)) => {
                        acks += 1;
                        assert_eq!(a.client_sequence, acks as u64, "acks in order");
                        assert!(!a.noop && !a.duplicate, "{a:?}");
                    }
                    Some(Payload::Presence(_) | Payload::Cursor(_)) => {}
                    other => panic!("{me}: unexpected {other:?}"),
                }
            }
            p.expect_quiet(QUIET).await;
            // Keep the stream open until everyone is done (its LEFT would
            // be news for the others).
            (me, start, order, p)
        });
    }
    let mut seen = Vec::new();
    while let Some(result) = tasks.join_next().await {
        seen.push(result.expect("participant task"));
    }
    seen.sort_by(|a, b| a.0.cmp(&b.0));
    let total = 3 + 3 * EDITS as u64;
    for (me, start, order, _) in &seen {
        let keys: Vec<u64> = order.keys().copied().collect();
        let expected: Vec<u64> = (start + 1..=total).collect();
        assert_eq!(keys, expected, "{me}: every sequence after Joined, once");
    }
    // One order: the edits (sequences 4..) produced versions 1, 2, ... in
    // sequence order, and every participant agrees who made each.
    let reference: BTreeMap<u64, (String, i32)> = seen[0]
        .2
        .iter()
        .filter(|(s, _)| **s > 3)
        .map(|(s, (user, _, version))| (*s, (user.clone(), *version)))
        .collect();
    for (sequence, (_, version)) in &reference {
        assert_eq!(*version as u64, sequence - 3, "versions follow sequences");
    }
    for (me, _, order, _) in &seen[1..] {
        let mine: BTreeMap<u64, (String, i32)> = order
            .iter()
            .filter(|(s, _)| **s > 3)
            .map(|(s, (user, _, version))| (*s, (user.clone(), *version)))
            .collect();
        assert_eq!(mine, reference, "{me} saw another order than p0");
    }
    for user in users {
        let count = reference.values().filter(|(u, _)| u == user).count();
        assert_eq!(count, EDITS, "{user}'s edits are all in the order");
    }
    // The shared presence events agree too.
    assert_eq!(seen[0].2.get(&2), Some(&("p1".to_owned(), "joined", -1)));
    assert_eq!(seen[0].2.get(&3), Some(&("p2".to_owned(), "joined", -1)));
    assert_eq!(seen[1].2.get(&3), Some(&("p2".to_owned(), "joined", -1)));
}

// ----- 3. presence -----

#[tokio::test]
async fn presence_joined_and_left_however_a_stream_ends() {
    let server = start(limits()).await;
    let addr = server.addr;
    let (mut a, a_join) = join(addr, "presence", "alice").await;
    let mut dense = Dense::after(a_join.joined.sequence, "alice");

    // Ends normally: the client half-closes; its call ends with OK.
    let (mut b, b_join) = join(addr, "presence", "bob").await;
    let m = a.recv().await;
    assert!(is_presence(&m, "bob", Presence::Joined), "{m:?}");
    assert_eq!(
        m.payload,
        author_presence(Presence::Joined),
        "JOINED carries the role"
    );
    assert_eq!(dense.observe(&m), Some(b_join.joined.sequence));
    b.close_send();
    let (_, end) = b.inbox().until_end().await;
    assert!(end.is_ok(), "a half-closed call ends with OK: {end:?}");
    let m = a.recv().await;
    assert!(is_presence(&m, "bob", Presence::Left), "{m:?}");
    assert_eq!(m.payload, author_presence(Presence::Left));
    dense.observe(&m);

    // Says LEFT itself: the server ends its call with OK.
    let (mut e, _) = join(addr, "presence", "erin").await;
    let m = a.recv().await;
    assert!(is_presence(&m, "erin", Presence::Joined), "{m:?}");
    dense.observe(&m);
    e.send_payload(Some(presence(Presence::Left))).await;
    let (_, end) = e.inbox().until_end().await;
    assert!(end.is_ok(), "LEFT ends the call with OK: {end:?}");
    let m = a.recv().await;
    assert!(is_presence(&m, "erin", Presence::Left), "{m:?}");
    dense.observe(&m);

    // Cancelled: tonic resets the stream when it is dropped.
    let (mut c, _) = join(addr, "presence", "carol").await;
    let m = a.recv().await;
    assert!(is_presence(&m, "carol", Presence::Joined), "{m:?}");
    dense.observe(&m);
    c.cancel();
    let m = a.recv().await;
    assert!(is_presence(&m, "carol", Presence::Left), "{m:?}");
    dense.observe(&m);

    // The TCP connection is cut.
    let (mut d, _) = join_behind_proxy(addr, "presence", "dave").await;
    let m = a.recv().await;
    assert!(is_presence(&m, "dave", Presence::Joined), "{m:?}");
    dense.observe(&m);
    d.cut_connection();
    let m = a.recv().await;
    assert!(is_presence(&m, "dave", Presence::Left), "{m:?}");
    dense.observe(&m);

    a.expect_quiet(QUIET).await;
    let stats = server
        .wait_for_stats("alice alone", |s| s.participants == 1)
        .await;
    assert_eq!(stats.sessions, 1);
    let snapshot = get_snapshot(addr, "presence").await.unwrap();
    let names: Vec<&str> = snapshot
        .participants
        .iter()
        .map(|p| p.user_id.as_str())
        .collect();
    assert_eq!(names, ["alice"]);
}

/// A participant that says LEFT right after a burst gets every
/// acknowledgement first (durable: each released once its record is on
/// disk), then its call ends with OK, and the others see it leave: LEFT
/// drops nothing queued for the stream, as a half-close does not.
#[tokio::test]
async fn left_after_a_burst_ends_the_call_after_its_acknowledgements() {
    for durable in [false, true] {
        let data = kit::process::TempDir::new("left");
        let mut config = AppConfig {
            limits: unlimited_rate(),
            ..AppConfig::loopback()
        };
        if durable {
            config.store = Some(codereview::app::default_store(data.path().to_path_buf()));
        }
        let server = TestServer::start(config).await;
        let (mut watcher, _) = join(server.addr, "leaving", "bob").await;
        let (mut ann, _) = join(server.addr, "leaving", "ann").await;
        let mut sent = Vec::new();
        for i in 0..20 {
            sent.push(ann.send(comment("", 0, &format!("comment {i}"))).await);
        }
        ann.send_payload(Some(presence(Presence::Left))).await;
        let (messages, end) = ann.inbox().until_end().await;
        assert!(
            end.is_ok(),
            "durable {durable}: LEFT ends the call with OK: {end:?}"
        );
        let acked: Vec<u64> = messages
            .iter()
            .filter_map(|m| match &m.payload {
                Some(Payload::Ack(ack)) if ack.client_sequence != 0 => Some(ack.client_sequence),
                _ => None,
            })
            .collect();
        assert_eq!(
            acked, sent,
            "durable {durable}: every acknowledgement before the end"
        );
        let m = watcher
            .recv_matching(|m| is_presence(m, "ann", Presence::Left))
            .await;
        assert!(is_presence(&m, "ann", Presence::Left));
    }
}

#[tokio::test]
async fn presence_idle_after_silence_and_active_when_speaking() {
    let limits = Limits {
        idle_after: Duration::from_millis(300),
        ..limits()
    };
    let server = start(limits).await;
    let addr = server.addr;
    let (mut a, _) = join(addr, "idle", "alice").await;
    let (mut b, _) = join(addr, "idle", "bob").await;
    let joined_at = Instant::now();
    a.recv_matching(|m| is_presence(m, "bob", Presence::Joined))
        .await;

    // The registry ticks every second: IDLE within idle_after + a tick.
    let idle = within(
        Duration::from_millis(2500),
        "bob shown IDLE",
        a.recv_matching(|m| is_presence(m, "bob", Presence::Idle)),
    )
    .await;
    assert!(joined_at.elapsed() >= Duration::from_millis(300));
    assert_eq!(idle.payload, author_presence(Presence::Idle));
    assert_eq!(
        idle.sequence, 2,
        "ephemeral events carry the latest sequence"
    );
    let snapshot = get_snapshot(addr, "idle").await.unwrap();
    let bob = snapshot
        .participants
        .iter()
        .find(|p| p.user_id == "bob")
        .expect("bob is there");
    assert_eq!(bob.status, Presence::Idle as i32);

    // Speaking makes bob ACTIVE again, before what he said.
    let client_sequence = b.send(comment("", 0, "looks good")).await;
    let got = a
        .recv_until(|m| matches!(m.payload, Some(Payload::Comment(_))))
        .await;
    let active = got
        .iter()
        .position(|m| is_presence(m, "bob", Presence::Active))
        .unwrap_or_else(|| panic!("bob ACTIVE before his comment: {got:?}"));
    assert_eq!(got[active].payload, author_presence(Presence::Active));
    let said = got.last().unwrap();
    assert_eq!(said.user_id, "bob");
    assert_eq!(said.sequence, 3);
    let ack = b.ack_of(client_sequence).await;
    assert_eq!(ack.sequence, 3);
    assert_eq!(ack.comment_id, "c3");
}

// ----- 5. seed-style clients -----

#[tokio::test]
async fn seed_style_clients_join_extend_files_and_get_per_message_errors() {
    let server = start(limits()).await;
    let addr = server.addr;
    // First message a plain PresenceUpdate JOINED, no Join.
    let (mut p, p_join) = join(addr, "seed", "pat").await;
    assert_eq!(catchup_of(&p_join.joined), Catchup::History);
    assert_eq!(p_join.joined.sequence, 1);

    // First message an edit (version 0) into an empty file: a replace past
    // the end extends the file with empty lines (0-based: line 3 is the 4th).
    let first = message("seed", "eve", Some(edit(Op::Replace, "main.rs", 3, "x", 0)));
    let mut e = Participant::open(tonic(addr).await, None, first).await;
    let e_join = e.inbox().catch_up().await;
    assert_eq!(e_join.joined.sequence, 2);
    assert_eq!(e_join.joined.version, 0);
    let ack = e.recv().await;
    assert_eq!(
        ack.payload,
        Some(Payload::Ack(Ack {
            client_sequence: 0,
            sequence: 3,
            version: 1,
            duplicate: false,
            noop: false,
            comment_id: String::new(),
        }))
    );
    let got = p.recv_until(|m| as_edit(m).is_some()).await;
    assert!(is_presence(&got[0], "eve", Presence::Joined), "{got:?}");
    let broadcast = got.last().unwrap();
    assert_eq!(broadcast.user_id, "eve");
    assert_eq!(broadcast.sequence, 3);
    assert_eq!(
        broadcast.payload,
        Some(edit(Op::Replace, "main.rs", 3, "x", 1))
    );
    assert_eq!(
        snapshot_lines(addr, "seed", "main.rs").await,
        ["", "", "", "x"]
    );

    // A delete of a missing line and an insert past the end (4 lines: 4
    // appends, 5 is past it) each get an Error; the stream stays open.
    let delete = e.edit_at(Op::Delete, "main.rs", 10, "", 0).await;
    let m = e.recv().await;
    let Some(Payload::Error(error)) = &m.payload else {
        panic!("an Error for the delete: {m:?}");
    };
    assert_eq!(error.code, Code::OutOfRange as i32);
    assert_eq!(error.client_sequence, delete);
    assert_eq!(m.client_sequence, delete);
    let insert = e.edit_at(Op::Insert, "main.rs", 5, "y", 0).await;
    let m = e.recv().await;
    let Some(Payload::Error(error)) = &m.payload else {
        panic!("an Error for the insert: {m:?}");
    };
    assert_eq!(error.code, Code::OutOfRange as i32);
    assert_eq!(error.client_sequence, insert);
    let valid = e.edit_at(Op::Insert, "main.rs", 4, "y", 0).await;
    let ack = e.ack_of(valid).await;
    assert_eq!((ack.sequence, ack.version), (4, 2));
    assert_eq!(
        snapshot_lines(addr, "seed", "main.rs").await,
        ["", "", "", "x", "y"]
    );
    // The refused edits were never broadcast.
    let m = p.recv().await;
    assert_eq!(m.payload, Some(edit(Op::Insert, "main.rs", 4, "y", 2)));
    p.expect_quiet(QUIET).await;
}

// ----- 6. late join -----

#[tokio::test]
async fn late_joiners_get_history_or_a_snapshot_then_live_events() {
    let server = start(limits()).await;
    let addr = server.addr;
    let (mut a, _) = join(addr, "late", "alice").await;
    for i in 0..5 {
        let cs = a
            .edit_at(Op::Insert, "a.rs", i, &format!("line {i}"), i)
            .await;
        a.ack_of(cs).await;
    }

    // No Join: the history.
    let (mut h, h_join) = join(addr, "late", "harry").await;
    assert_eq!(catchup_of(&h_join.joined), Catchup::History);
    assert_eq!(h_join.joined.sequence, 7);
    assert_eq!(h_join.joined.version, 5);
    let history = &h_join.messages;
    assert_eq!(history.len(), 7, "{history:#?}");
    assert!(is_presence(&history[0], "alice", Presence::Joined));
    assert_eq!(history[0].sequence, 1);
    for i in 0..5 {
        let m = &history[i + 1];
        assert_eq!(m.user_id, "alice");
        assert_eq!(m.sequence, i as u64 + 2);
        assert_eq!(
            m.payload,
            Some(edit(
                Op::Insert,
                "a.rs",
                i as i32,
                &format!("line {i}"),
                i as i32 + 1
            ))
        );
    }
    // Its own JOINED (sequence 7) comes as an Ack, like all its own events.
    assert_eq!(history[6].payload, Some(Payload::Ack(own_join_ack(7))));
    let Some(Payload::Notice(Notice { kind, at, .. })) = h_join.caught_up.payload else {
        panic!("CAUGHT_UP: {:?}", h_join.caught_up);
    };
    assert_eq!((kind, at), (NoticeKind::CaughtUp as i32, 0));

    // Something for the snapshot to show: a comment and a cursor.
    let cs = a.send(comment("a.rs", 2, "why?")).await;
    let comment_ack = a.ack_of(cs).await;
    assert_eq!(comment_ack.sequence, 8);
    assert_eq!(comment_ack.comment_id, "c8");
    let cs = a.send(cursor("a.rs", 3, 7)).await;
    let cursor_ack = a.ack_of(cs).await;
    assert_eq!(cursor_ack.sequence, 0, "cursors are not essential");

    // Join { want_snapshot }: Joined(SNAPSHOT), the Snapshot, CAUGHT_UP.
    let (mut s, s_join) = join_explicit(
        addr,
        "late",
        "sam",
        Join {
            want_snapshot: true,
            ..Join::default()
        },
    )
    .await;
    assert_eq!(catchup_of(&s_join.joined), Catchup::Snapshot);
    assert_eq!(s_join.joined.sequence, 9);
    assert_eq!(s_join.joined.version, 5);
    assert_eq!(s_join.messages.len(), 1, "{:#?}", s_join.messages);
    let Some(Payload::Snapshot(snapshot)) = &s_join.messages[0].payload else {
        panic!("a Snapshot after Joined: {:?}", s_join.messages);
    };
    let expected = Snapshot {
        session_id: "late".into(),
        session_epoch: s_join.joined.session_epoch,
        sequence: 9,
        version: 5,
        files: vec![FileContent {
            file_path: "a.rs".into(),
            lines: (0..5).map(|i| format!("line {i}")).collect(),
            version: 0,
        }],
        comments: vec![codereview::pb::codereview::CommentEntry {
            user_id: "alice".into(),
            comment: Some(Comment {
                comment_id: "c8".into(),
                line_number: 2,
                text: "why?".into(),
                file_path: "a.rs".into(),
            }),
            sequence: 8,
            timestamp: snapshot.comments[0].timestamp,
        }],
        participants: vec![
            participant_entry("alice", Some(("a.rs", 3, 7))),
            participant_entry("harry", None),
            participant_entry("sam", None),
        ],
    };
    assert_eq!(snapshot, &expected);
    assert!(snapshot.comments[0].timestamp > 0);

    // Live events follow, densely.
    let cs = a.edit_at(Op::Replace, "a.rs", 0, "first", 5).await;
    let m = s.recv().await;
    assert_eq!(m.sequence, 10);
    assert_eq!(m.payload, Some(edit(Op::Replace, "a.rs", 0, "first", 6)));
    assert_eq!(a.ack_of(cs).await.sequence, 10);
    // Harry saw the comment, the cursor, sam's join and the edit live.
    let got = h.recv_until(|m| as_edit(m).is_some()).await;
    let kinds: Vec<_> = got
        .iter()
        .map(|m| match &m.payload {
            Some(Payload::Comment(_)) => "comment",
            Some(Payload::Cursor(_)) => "cursor",
            Some(Payload::Presence(_)) => "presence",
            Some(Payload::Edit(_)) => "edit",
            _ => "other",
        })
        .collect();
    assert_eq!(kinds, ["comment", "cursor", "presence", "edit"], "{got:#?}");
    assert_eq!(
        got[1].payload,
        Some(Payload::Cursor(CursorPosition {
            file_path: "a.rs".into(),
            line: 3,
            column: 7
        }))
    );
}
// ----- 7. resume -----

#[tokio::test]
async fn resume_delivers_exactly_what_was_missed_and_resends_are_not_applied_twice() {
    let server = start(limits()).await;
    let addr = server.addr;
    let (mut a, _) = join(addr, "resume", "alice").await;
    let (mut b, b_join) = join_behind_proxy(addr, "resume", "bob").await;
    let epoch = b_join.joined.session_epoch;
    let mut dense = Dense::after(b_join.joined.sequence, "bob");
    a.recv_matching(|m| is_presence(m, "bob", Presence::Joined))
        .await;

    // Bob edits (seen acknowledged), then edits again and loses the
    // connection before reading that acknowledgement.
    let first = b.edit_at(Op::Insert, "r.rs", 0, "bob 1", 0).await;
    let ack = b.ack_of(first).await;
    dense.last = ack.sequence;
    let last_seen = ack.sequence;
    let second_edit = edit(Op::Insert, "r.rs", 1, "bob 2", 1);
    let second = b.send(second_edit.clone()).await;
    let m = a
        .recv_matching(|m| as_edit(m).is_some_and(|e| e.content == "bob 2"))
        .await;
    let second_sequence = m.sequence;
    b.cut_connection();
    let left = a
        .recv_matching(|m| is_presence(m, "bob", Presence::Left))
        .await;

    // Alice goes on without him.
    let mut alice_sequences = Vec::new();
    for i in 0..10 {
        let cs = a
            .edit_at(Op::Insert, "r.rs", 0, &format!("alice {i}"), 0)
            .await;
        alice_sequences.push(a.ack_of(cs).await.sequence);
    }
    assert_eq!(snapshot_lines(addr, "resume", "r.rs").await.len(), 12);

    // Bob resumes: exactly the missed sequence numbers, once each.
    let (mut b, resumed) = join_explicit(
        addr,
        "resume",
        "bob",
        Join {
            want_snapshot: false,
            resume_after_sequence: Some(last_seen),
            session_epoch: epoch,
        },
    )
    .await;
    assert_eq!(catchup_of(&resumed.joined), Catchup::Resume);
    assert_eq!(resumed.joined.session_epoch, epoch);
    assert_eq!(resumed.joined.last_client_sequence, second);
    assert_eq!(resumed.joined.sequence, left.sequence + 11);
    for m in &resumed.messages {
        dense.observe(m);
    }
    assert_eq!(
        dense.last, resumed.joined.sequence,
        "the replay ends at Joined.sequence"
    );
    let sequences: Vec<u64> = resumed
        .messages
        .iter()
        .filter_map(essential_sequence)
        .collect();
    let expected: Vec<u64> = (last_seen + 1..=resumed.joined.sequence).collect();
    assert_eq!(sequences, expected);
    // What they are: the lost ack, his own LEFT (as an ack), alice's ten
    // edits, his own new JOINED (as an ack).
    let replay = &resumed.messages;
    let lost = as_ack(&replay[0]).expect("the lost acknowledgement");
    assert_eq!(
        (lost.client_sequence, lost.sequence, lost.version),
        (second, second_sequence, 2)
    );
    assert_eq!(as_ack(&replay[1]), Some(&own_join_ack(left.sequence)));
    for (i, sequence) in alice_sequences.iter().enumerate() {
        let m = &replay[2 + i];
        assert_eq!(m.sequence, *sequence);
        assert_eq!(m.user_id, "alice");
        assert_eq!(as_edit(m).unwrap().content, format!("alice {i}"));
    }
    assert_eq!(
        as_ack(&replay[12]),
        Some(&own_join_ack(resumed.joined.sequence))
    );
    assert_eq!(replay.len(), 13, "{replay:#?}");

    // A resend of the already processed message is acknowledged as a
    // duplicate and not applied again.
    let resend = b.message(Some(second_edit), second);
    b.send_raw(resend).await.expect("sent");
    let m = b.recv().await;
    assert_eq!(
        m.payload,
        Some(Payload::Ack(Ack {
            client_sequence: second,
            sequence: second_sequence,
            version: 2,
            duplicate: true,
            noop: false,
            comment_id: String::new(),
        }))
    );
    assert_eq!(m.client_sequence, second);
    assert_eq!(snapshot_lines(addr, "resume", "r.rs").await.len(), 12);
    // Alice never sees the duplicate, only the rejoin.
    let got = a.drain_quiet(QUIET).await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert!(is_presence(&got[0], "bob", Presence::Joined));

    // Live events follow the replay densely.
    let cs = a.edit_at(Op::Insert, "r.rs", 0, "alice live", 0).await;
    let m = b.recv().await;
    dense.observe(&m);
    assert_eq!(m.sequence, resumed.joined.sequence + 1);
    assert_eq!(as_edit(&m).unwrap().content, "alice live");
    a.ack_of(cs).await;
    // And his numbering goes on from where it was.
    b.set_next_client_sequence(second + 1);
    let third = b.edit_at(Op::Insert, "r.rs", 0, "bob 3", 0).await;
    let ack = b.ack_of(third).await;
    dense.last += 1;
    assert_eq!(ack.sequence, dense.last);
    assert!(!ack.duplicate);
    assert_eq!(snapshot_lines(addr, "resume", "r.rs").await.len(), 14);
}

// ----- 9. isolation -----

#[tokio::test]
async fn sessions_are_isolated() {
    let server = start(limits()).await;
    let addr = server.addr;
    let (mut a1, _) = join(addr, "s1", "alice").await;
    let (mut b1, _) = join(addr, "s1", "bob").await;
    a1.recv_matching(|m| is_presence(m, "bob", Presence::Joined))
        .await;

    // Everything in s2: joins, edits, comments, cursors, uploads, leaving,
    // a watcher, an error.
    let (mut a2, _) = join(addr, "s2", "alice").await;
    let (mut b2, _) = join(addr, "s2", "bob").await;
    let mut w2 = watch(
        addr,
        WatchRequest {
            session_id: "s2".into(),
            ..WatchRequest::default()
        },
    )
    .await;
    let cs = a2.edit_at(Op::Insert, "x.rs", 0, "s2 only", 0).await;
    a2.ack_of(cs).await;
    let cs = b2.send(comment("x.rs", 0, "s2 comment")).await;
    b2.ack_of(cs).await;
    let cs = b2.send(cursor("x.rs", 0, 1)).await;
    b2.ack_of(cs).await;
    let cs = a2.edit_at(Op::Delete, "x.rs", 9, "", 0).await;
    a2.recv_matching(|m| m.client_sequence == cs).await;
    upload(addr, vec![chunk("s2", "y.rs", "uploaded\n")])
        .await
        .unwrap();
    b2.send_payload(Some(presence(Presence::Left))).await;
    let (_, end) = b2.inbox().until_end().await;
    assert!(end.is_ok(), "{end:?}");
    w2.recv_matching(|m| is_presence(m, "bob", Presence::Left))
        .await;

    a1.expect_quiet(QUIET).await;
    b1.expect_quiet(QUIET).await;

    // And the other way round.
    let cs = a1.edit_at(Op::Insert, "x.rs", 0, "s1 only", 0).await;
    a1.ack_of(cs).await;
    let m = b1.recv().await;
    assert_eq!(m.session_id, "s1");
    assert_eq!(as_edit(&m).unwrap().content, "s1 only");
    let got = a2.drain_quiet(QUIET).await;
    assert!(
        got.iter().all(|m| m.session_id == "s2"),
        "s2 saw something of s1: {got:?}"
    );
    assert!(got.iter().all(|m| as_edit(m).is_none()), "{got:?}");
    let got = w2.drain_quiet(QUIET).await;
    assert!(got.iter().all(|m| m.session_id == "s2"), "{got:?}");
    assert_eq!(snapshot_lines(addr, "s1", "x.rs").await, ["s1 only"]);
    assert_eq!(snapshot_lines(addr, "s2", "x.rs").await, ["s2 only"]);
    assert!(snapshot_lines(addr, "s1", "y.rs").await.is_empty());
}

// ----- 10. fifty participants -----

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_participants_each_see_every_other_edit() {
    const N: usize = 50;
    let limits = Limits {
        session_linger: Duration::ZERO,
        ..limits()
    };
    let server = start(limits).await;
    let addr = server.addr;
    let mut joined = Vec::new();
    for i in 0..N {
        joined.push(join(addr, "crowd", &format!("u{i:02}")).await);
    }
    let stats = server.stats().await;
    assert_eq!((stats.sessions, stats.participants), (1, N));

    let mut tasks = JoinSet::new();
    for (mut p, catch_up) in joined {
        tasks.spawn(async move {
            let me = p.user.clone();
            let cs = p.edit_at(Op::Insert, "crowd.rs", 0, &me, 0).await;
            let mut dense = Dense::after(catch_up.joined.sequence, me.clone());
            let mut order = Order::new();
            let mut authors = Vec::new();
            let mut own_ack = None;
            while authors.len() < N - 1 || own_ack.is_none() {
                let m = p.recv().await;
                dense.observe(&m);
                record(&mut order, &me, &m);
                match &m.payload {
                    Some(Payload::Edit(e)) => {
                        assert_eq!(e.content, m.user_id);
                        authors.push(m.user_id.clone());
                    }
                    Some(Payload::Ack(a)) => {
                        assert_eq!(a.client_sequence, cs);
                        own_ack = Some(a.clone());
                    }
                    Some(Payload::Presence(_)) => {}
                    other => panic!("{me}: unexpected {other:?}"),
                }
            }
            authors.sort();
            (p, me, authors, order)
        });
    }
    let mut results = Vec::new();
    while let Some(result) = tasks.join_next().await {
        results.push(result.expect("participant task"));
    }
    let edits_of = |order: &Order| -> BTreeMap<u64, String> {
        order
            .iter()
            .filter(|(_, (_, what, _))| *what == "edit" || *what == "own")
            .map(|(s, (user, _, _))| (*s, user.clone()))
            .collect()
    };
    let reference = edits_of(&results[0].3);
    assert_eq!(reference.len(), N);
    for (_, me, authors, order) in &results {
        let others: Vec<String> = (0..N)
            .map(|i| format!("u{i:02}"))
            .filter(|u| u != me)
            .collect();
        assert_eq!(authors, &others, "{me} got every other edit once");
        assert_eq!(edits_of(order), reference, "{me}: one order for all");
    }

    // Everyone leaves: nothing is left once the (zero) linger has passed.
    for (mut p, ..) in results {
        p.close_send();
        drop(p);
    }
    server.wait_for_stats("nothing left", is_empty).await;
}

// ----- 11. no leaked state -----

#[tokio::test]
async fn nothing_is_leaked_however_streams_end() {
    let limits = Limits {
        session_linger: Duration::ZERO,
        ..limits()
    };
    let server = start(limits).await;
    let addr = server.addr;

    // Session a: every way to go.
    let (mut stay, _) = join(addr, "leak-a", "stay").await;
    let (mut says_left, _) = join(addr, "leak-a", "says-left").await;
    let (mut half_closes, _) = join(addr, "leak-a", "half-closes").await;
    let (mut cancels, _) = join(addr, "leak-a", "cancels").await;
    let (mut cut, _) = join_behind_proxy(addr, "leak-a", "cut").await;
    let mut watcher = watch(
        addr,
        WatchRequest {
            session_id: "leak-a".into(),
            want_snapshot: true,
            ..WatchRequest::default()
        },
    )
    .await;
    watcher.recv_until(is_caught_up).await;
    let cs = stay.edit_at(Op::Insert, "a.rs", 0, "x", 0).await;
    stay.ack_of(cs).await;
    says_left.send_payload(Some(presence(Presence::Left))).await;
    half_closes.close_send();
    cancels.cancel();
    cut.cut_connection();

    // Session b: the same user twice (the older stream is replaced), and a
    // participant that never reads.
    let (mut first, _) = join(addr, "leak-b", "twice").await;
    let (mut second, _) = join(addr, "leak-b", "twice").await;
    let (_, end) = first.inbox().until_end().await;
    assert_eq!(end.code(), Code::Aborted, "{end:?}");
    let never_reads = never_reading(
        addr,
        SessionMessage {
            session_id: "leak-b".into(),
            user_id: "never-reads".into(),
            ..SessionMessage::default()
        },
    )
    .await;
    let mut other_watcher = watch(
        addr,
        WatchRequest {
            session_id: "leak-b".into(),
            ..WatchRequest::default()
        },
    )
    .await;
    other_watcher.recv_until(is_caught_up).await;
    server
        .wait_for_stats("two sessions", |s| s.sessions == 2)
        .await;

    // Session c: seeded by an upload, nobody there; refused joins.
    upload(addr, vec![chunk("leak-c", "c.rs", "c\n")])
        .await
        .unwrap();
    let refused = session_call_status(
        addr,
        SessionMessage {
            session_id: "leak-c".into(),
            user_id: String::new(),
            ..SessionMessage::default()
        },
    )
    .await;
    assert_eq!(refused.code(), Code::InvalidArgument);

    // Everyone goes.
    drop(watcher);
    drop(other_watcher);
    drop(never_reads);
    second.cancel();
    stay.close_send();
    let (_, end) = says_left.inbox().until_end().await;
    assert!(end.is_ok(), "{end:?}");
    drop((stay, says_left, half_closes, cancels, cut, first, second));
    let stats = server.wait_for_stats("nothing left", is_empty).await;
    assert_eq!(stats.outbox_bytes, 0, "{stats:?}");
    assert_eq!(stats.users_remembered, 0, "{stats:?}");
}
