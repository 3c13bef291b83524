//! The code-review service over real TCP connections, driven by tonic (an
//! independent gRPC implementation) as the client: each participant has its
//! own connection unless stated. See `review_support` for the helpers.

mod common;
mod review_support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use codereview::grpc::server::ServerConfig;
use codereview::pb::codereview::{
    Ack, CodeEdit, Comment, CursorPosition, FileContent, Join, Notice, PresenceUpdate, Role,
    SessionMessage, Snapshot, WatchRequest, code_edit::Op, joined::Catchup,
    notice::Kind as NoticeKind, presence_update::Status as Presence, session_message::Payload,
};
use codereview::review::limits::Limits;
use codereview::review::ot::LineOp;
use codereview::review::registry::RegistryHandle;
use review_support::*;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tonic::Code;

async fn start(limits: Limits) -> (common::TestServer, RegistryHandle, SocketAddr) {
    let (server, registry) = common::start_review(ServerConfig::default(), limits).await;
    let addr = server.addr;
    (server, registry, addr)
}

/// Limits without the per-participant rate limit (100/s, burst 200): for
/// tests that send bursts larger than the default burst allows.
fn unlimited_rate() -> Limits {
    Limits {
        rate_per_second: 0.0,
        ..Limits::default()
    }
}

fn own_join_ack(sequence: u64) -> Ack {
    Ack {
        client_sequence: 0,
        sequence,
        version: 0,
        duplicate: false,
        noop: false,
        comment_id: String::new(),
    }
}

fn author_presence(status: Presence) -> Option<Payload> {
    Some(Payload::Presence(PresenceUpdate {
        status: status as i32,
        role: Role::Author as i32,
    }))
}

// ----- 1. broadcast and exclusion -----

#[tokio::test]
async fn an_edit_reaches_the_others_and_its_author_gets_only_an_ack() {
    let (_server, _registry, addr) = start(Limits::default()).await;
    let (mut a, a_join) = Participant::join(addr, "s", "alice").await;
    assert_eq!(a_join.joined.sequence, 1);
    assert_eq!(a_join.joined.version, 0);
    assert_eq!(a_join.joined.role, Role::Author as i32);
    assert_eq!(catchup_of(&a_join.joined), Catchup::History);
    let (mut b, b_join) = Participant::join(addr, "s", "bob").await;
    assert_eq!(b_join.joined.sequence, 2);
    assert_eq!(b_join.joined.session_epoch, a_join.joined.session_epoch);

    let joined = a.recv().await;
    assert_eq!(joined.user_id, "bob");
    assert_eq!(joined.sequence, 2);
    assert_eq!(joined.payload, author_presence(Presence::Joined));

    let client_sequence = a.edit(Op::Insert, "main.rs", 0, "fn main() {}", 0);
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

// ----- 2. ordering -----

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_edits_arrive_densely_and_in_one_order_for_everyone() {
    const EDITS: usize = 20;
    let (_server, _registry, addr) = start(Limits::default()).await;
    let users = ["p0", "p1", "p2"];
    let mut joined = Vec::new();
    for user in users {
        joined.push(Participant::join(addr, "order", user).await);
    }
    let mut tasks = JoinSet::new();
    for (mut p, catch_up) in joined {
        tasks.spawn(async move {
            let me = p.user_id.clone();
            let start = catch_up.joined.sequence;
            // Fire all edits at once (inserts at the top, each based on the
            // version this client knew: 0), then read.
            for i in 0..EDITS {
                p.edit(Op::Insert, "f.rs", 0, &format!("{me}-{i}"), 0);
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
    let (_server, registry, addr) = start(Limits::default()).await;
    let (mut a, a_join) = Participant::join(addr, "presence", "alice").await;
    let mut dense = Dense::after(a_join.joined.sequence, "alice");

    // Ends normally: the client half-closes; its call ends with OK.
    let (mut b, b_join) = Participant::join(addr, "presence", "bob").await;
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
    let (mut e, _) = Participant::join(addr, "presence", "erin").await;
    let m = a.recv().await;
    assert!(is_presence(&m, "erin", Presence::Joined), "{m:?}");
    dense.observe(&m);
    e.send_payload(Some(presence(Presence::Left)));
    let (_, end) = e.inbox().until_end().await;
    assert!(end.is_ok(), "LEFT ends the call with OK: {end:?}");
    let m = a.recv().await;
    assert!(is_presence(&m, "erin", Presence::Left), "{m:?}");
    dense.observe(&m);

    // Cancelled: tonic resets the stream when it is dropped.
    let (mut c, _) = Participant::join(addr, "presence", "carol").await;
    let m = a.recv().await;
    assert!(is_presence(&m, "carol", Presence::Joined), "{m:?}");
    dense.observe(&m);
    c.cancel();
    let m = a.recv().await;
    assert!(is_presence(&m, "carol", Presence::Left), "{m:?}");
    dense.observe(&m);

    // The TCP connection is cut.
    let via_proxy = ConnectOptions {
        via_proxy: true,
        ..ConnectOptions::default()
    };
    let (mut d, _) = Participant::join_with(
        addr,
        "presence",
        "dave",
        via_proxy,
        Some(presence(Presence::Joined)),
    )
    .await;
    let m = a.recv().await;
    assert!(is_presence(&m, "dave", Presence::Joined), "{m:?}");
    dense.observe(&m);
    d.cut_connection();
    let m = a.recv().await;
    assert!(is_presence(&m, "dave", Presence::Left), "{m:?}");
    dense.observe(&m);

    a.expect_quiet(QUIET).await;
    let stats = wait_for_stats(&registry, Duration::from_secs(3), |s| s.participants == 1).await;
    assert_eq!(stats.sessions, 1);
    let snapshot = get_snapshot(addr, "presence").await.unwrap();
    let names: Vec<&str> = snapshot
        .participants
        .iter()
        .map(|p| p.user_id.as_str())
        .collect();
    assert_eq!(names, ["alice"]);
}

#[tokio::test]
async fn presence_idle_after_silence_and_active_when_speaking() {
    let limits = Limits {
        idle_after: Duration::from_millis(300),
        ..Limits::default()
    };
    let (_server, _registry, addr) = start(limits).await;
    let (mut a, _) = Participant::join(addr, "idle", "alice").await;
    let (mut b, _) = Participant::join(addr, "idle", "bob").await;
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
    let client_sequence = b.send_numbered(comment("", 0, "looks good"));
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

// ----- 4. OT convergence -----

#[tokio::test]
async fn concurrent_conflicting_edits_converge_over_the_wire() {
    let (_server, _registry, addr) = start(Limits::default()).await;
    let mut a = OtClient::join(addr, "ot", "alice").await;
    let mut b = OtClient::join(addr, "ot", "bob").await;
    let original: Vec<String> = (0..6).map(|i| format!("line {i}")).collect();
    let summary = upload(
        addr,
        vec![chunk("ot", "f.rs", format!("{}\n", original.join("\n")))],
    )
    .await
    .unwrap();
    assert_eq!(summary.version, 1);
    a.settle().await;
    b.settle().await;
    assert_eq!(a.lines("f.rs"), original);
    assert_eq!(b.lines("f.rs"), original);

    let text = |s: &str| -> Arc<str> { Arc::from(s) };
    // Round 1: both edit the same region at once, neither having seen the
    // other's edits.
    a.local(
        "f.rs",
        LineOp::Replace {
            line: 2,
            text: text("A replaced 2"),
        },
    );
    a.local("f.rs", LineOp::Delete { line: 1 });
    a.local(
        "f.rs",
        LineOp::Insert {
            line: 3,
            text: text("A inserted"),
        },
    );
    b.local("f.rs", LineOp::Delete { line: 2 });
    b.local(
        "f.rs",
        LineOp::Replace {
            line: 1,
            text: text("B replaced 1"),
        },
    );
    b.local(
        "f.rs",
        LineOp::Insert {
            line: 0,
            text: text("B inserted"),
        },
    );
    b.local(
        "f.rs",
        LineOp::Replace {
            line: 4,
            text: text("B replaced 4"),
        },
    );
    tokio::join!(a.settle(), b.settle());
    check_converged(addr, &a, &b).await;

    // Round 2: interleaved; bob applies part of what arrives before editing.
    a.local(
        "f.rs",
        LineOp::Insert {
            line: 0,
            text: text("A top"),
        },
    );
    a.local(
        "f.rs",
        LineOp::Replace {
            line: 4,
            text: text("A four"),
        },
    );
    b.pump_one(Duration::from_millis(100)).await;
    b.local("f.rs", LineOp::Delete { line: 0 });
    b.local(
        "f.rs",
        LineOp::Insert {
            line: 2,
            text: text("B two"),
        },
    );
    a.pump_one(Duration::from_millis(100)).await;
    a.local("f.rs", LineOp::Delete { line: 3 });
    a.local(
        "f.rs",
        LineOp::Replace {
            line: 0,
            text: text("A zero"),
        },
    );
    tokio::join!(a.settle(), b.settle());
    check_converged(addr, &a, &b).await;

    // Round 3: the same operations on the same lines: one delete of line 1
    // becomes a no-op, the server's first replace of line 2 wins, both
    // inserts at 4 survive; alice also extends the file past its end.
    let len = a.lines("f.rs").len() as u32;
    a.noop_acks = 0;
    b.noop_acks = 0;
    a.local("f.rs", LineOp::Delete { line: 1 });
    a.local(
        "f.rs",
        LineOp::Replace {
            line: 2,
            text: text("A again 2"),
        },
    );
    a.local(
        "f.rs",
        LineOp::Insert {
            line: 4,
            text: text("A at 4"),
        },
    );
    a.local(
        "f.rs",
        LineOp::Replace {
            line: len + 1,
            text: text("A tail"),
        },
    );
    b.local("f.rs", LineOp::Delete { line: 1 });
    b.local(
        "f.rs",
        LineOp::Replace {
            line: 2,
            text: text("B again 2"),
        },
    );
    b.local(
        "f.rs",
        LineOp::Insert {
            line: 4,
            text: text("B at 4"),
        },
    );
    tokio::join!(a.settle(), b.settle());
    check_converged(addr, &a, &b).await;
    assert_eq!(
        a.noop_acks + b.noop_acks,
        2,
        "the later of the two deletes of line 1 and of the two replaces of line 2 are no-ops"
    );
    let lines = a.lines("f.rs");
    let replaced = lines.contains(&"A again 2".to_owned()) as u8
        + lines.contains(&"B again 2".to_owned()) as u8;
    assert_eq!(replaced, 1, "one replace of line 2 wins: {lines:?}");
    let lines = a.lines("f.rs");
    assert!(lines.contains(&"A at 4".to_owned()) && lines.contains(&"B at 4".to_owned()));
    assert_eq!(lines.last().map(String::as_str), Some("A tail"));
}

async fn check_converged(addr: SocketAddr, a: &OtClient, b: &OtClient) {
    let snapshot = get_snapshot(addr, "ot").await.unwrap();
    let server = snapshot
        .files
        .iter()
        .find(|f| f.file_path == "f.rs")
        .map(|f| f.lines.clone())
        .unwrap_or_default();
    assert_eq!(a.lines("f.rs"), b.lines("f.rs"), "the replicas diverged");
    assert_eq!(
        a.lines("f.rs"),
        server,
        "the replicas differ from the server"
    );
    assert_eq!(a.replica.version(), snapshot.version);
    assert_eq!(b.replica.version(), snapshot.version);
}

// ----- 5. seed-style clients -----

#[tokio::test]
async fn seed_style_clients_join_extend_files_and_get_per_message_errors() {
    let (_server, _registry, addr) = start(Limits::default()).await;
    // First message a plain PresenceUpdate JOINED, no Join.
    let (mut p, p_join) = Participant::join(addr, "seed", "pat").await;
    assert_eq!(catchup_of(&p_join.joined), Catchup::History);
    assert_eq!(p_join.joined.sequence, 1);

    // First message an edit (version 0) into an empty file: a replace past
    // the end extends the file with empty lines (0-based: line 3 is the 4th).
    let mut e = Participant::open(addr, "seed", "eve").await;
    e.send_payload(Some(edit(Op::Replace, "main.rs", 3, "x", 0)));
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
    let delete = e.edit(Op::Delete, "main.rs", 10, "", 0);
    let m = e.recv().await;
    let Some(Payload::Error(error)) = &m.payload else {
        panic!("an Error for the delete: {m:?}");
    };
    assert_eq!(error.code, Code::OutOfRange as i32);
    assert_eq!(error.client_sequence, delete);
    assert_eq!(m.client_sequence, delete);
    let insert = e.edit(Op::Insert, "main.rs", 5, "y", 0);
    let m = e.recv().await;
    let Some(Payload::Error(error)) = &m.payload else {
        panic!("an Error for the insert: {m:?}");
    };
    assert_eq!(error.code, Code::OutOfRange as i32);
    assert_eq!(error.client_sequence, insert);
    let valid = e.edit(Op::Insert, "main.rs", 4, "y", 0);
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
    let (_server, _registry, addr) = start(Limits::default()).await;
    let (mut a, _) = Participant::join(addr, "late", "alice").await;
    for i in 0..5 {
        let cs = a.edit(Op::Insert, "a.rs", i, &format!("line {i}"), i);
        a.ack_of(cs).await;
    }

    // No Join: the history.
    let (mut h, h_join) = Participant::join(addr, "late", "harry").await;
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
    let cs = a.send_numbered(comment("a.rs", 2, "why?"));
    let comment_ack = a.ack_of(cs).await;
    assert_eq!(comment_ack.sequence, 8);
    assert_eq!(comment_ack.comment_id, "c8");
    let cs = a.send_numbered(cursor("a.rs", 3, 7));
    let cursor_ack = a.ack_of(cs).await;
    assert_eq!(cursor_ack.sequence, 0, "cursors are not essential");

    // Join { want_snapshot }: Joined(SNAPSHOT), the Snapshot, CAUGHT_UP.
    let (mut s, s_join) = Participant::join_explicit(
        addr,
        "late",
        "sam",
        ConnectOptions::default(),
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
            participant("alice", Some(("a.rs", 3, 7))),
            participant("harry", None),
            participant("sam", None),
        ],
    };
    assert_eq!(snapshot, &expected);
    assert!(snapshot.comments[0].timestamp > 0);

    // Live events follow, densely.
    let cs = a.edit(Op::Replace, "a.rs", 0, "first", 5);
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

fn participant(
    user: &str,
    cursor: Option<(&str, i32, i32)>,
) -> codereview::pb::codereview::Participant {
    codereview::pb::codereview::Participant {
        user_id: user.into(),
        status: Presence::Active as i32,
        role: Role::Author as i32,
        cursor: cursor.map(|(file, line, column)| CursorPosition {
            file_path: file.into(),
            line,
            column,
        }),
    }
}

// ----- 7. resume -----

#[tokio::test]
async fn resume_delivers_exactly_what_was_missed_and_resends_are_not_applied_twice() {
    let (_server, _registry, addr) = start(Limits::default()).await;
    let (mut a, _) = Participant::join(addr, "resume", "alice").await;
    let via_proxy = ConnectOptions {
        via_proxy: true,
        ..ConnectOptions::default()
    };
    let (mut b, b_join) = Participant::join_with(
        addr,
        "resume",
        "bob",
        via_proxy,
        Some(presence(Presence::Joined)),
    )
    .await;
    let epoch = b_join.joined.session_epoch;
    let mut dense = Dense::after(b_join.joined.sequence, "bob");
    a.recv_matching(|m| is_presence(m, "bob", Presence::Joined))
        .await;

    // Bob edits (seen acknowledged), then edits again and loses the
    // connection before reading that acknowledgement.
    let first = b.edit(Op::Insert, "r.rs", 0, "bob 1", 0);
    let ack = b.ack_of(first).await;
    dense.last = ack.sequence;
    let last_seen = ack.sequence;
    let second_edit = edit(Op::Insert, "r.rs", 1, "bob 2", 1);
    let second = b.send_numbered(second_edit.clone());
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
        let cs = a.edit(Op::Insert, "r.rs", 0, &format!("alice {i}"), 0);
        alice_sequences.push(a.ack_of(cs).await.sequence);
    }
    assert_eq!(snapshot_lines(addr, "resume", "r.rs").await.len(), 12);

    // Bob resumes: exactly the missed sequence numbers, once each.
    let (mut b, resumed) = Participant::join_explicit(
        addr,
        "resume",
        "bob",
        ConnectOptions::default(),
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
    b.send(resend);
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
    let cs = a.edit(Op::Insert, "r.rs", 0, "alice live", 0);
    let m = b.recv().await;
    dense.observe(&m);
    assert_eq!(m.sequence, resumed.joined.sequence + 1);
    assert_eq!(as_edit(&m).unwrap().content, "alice live");
    a.ack_of(cs).await;
    // And his numbering goes on from where it was.
    b.set_next_client_sequence(second + 1);
    let third = b.edit(Op::Insert, "r.rs", 0, "bob 3", 0);
    let ack = b.ack_of(third).await;
    dense.last += 1;
    assert_eq!(ack.sequence, dense.last);
    assert!(!ack.duplicate);
    assert_eq!(snapshot_lines(addr, "resume", "r.rs").await.len(), 14);
}

// ----- 8. slow consumer -----

struct SlowRun {
    _server: common::TestServer,
    registry: RegistryHandle,
    addr: SocketAddr,
    a: Participant,
    f: Participant,
    /// What the slow participant had received when it was ended.
    s_messages: Vec<SessionMessage>,
    s_end: Result<(), codereview::grpc::Status>,
}

const BIG_EDITS: usize = 200;

/// `len` pseudo-random letters and digits: text gzip cannot shrink much.
fn incompressible_line(len: usize) -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    let mut state = 0x2545_f491_4f6c_dd1du64;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            ALPHABET[(state % ALPHABET.len() as u64) as usize] as char
        })
        .collect()
}

/// A sends 200 inserts of 3 KiB lines; F reads everything; S never reads
/// (our own client, 64 KiB windows, never calls `message()`).
async fn slow_consumer_run() -> SlowRun {
    // 200 edits in a burst: no rate limit. 600 KiB of content fits the
    // default session budget (2 MiB) and history (4 MiB, 1000 events).
    let limits = Limits {
        outbox_bytes: 64 * 1024,
        ..unlimited_rate()
    };
    let (server, registry, addr) = start(limits).await;
    let (mut a, _) = Participant::join(addr, "slow", "alice").await;
    let (mut f, _) = Participant::join(addr, "slow", "fast").await;
    let join = SessionMessage {
        session_id: "slow".into(),
        user_id: "sleepy".into(),
        payload: Some(Payload::Join(Join::default())),
        ..SessionMessage::default()
    };
    let mut s = RawSession::open(addr, &join).await;
    let sleepy_joined = f
        .recv_matching(|m| is_presence(m, "sleepy", Presence::Joined))
        .await;

    // A keeps at most WINDOW edits unacknowledged (a burst of all 200 would
    // put 600 KiB ahead of F's next pull in the registry's queue: see
    // `a_burst_larger_than_the_outbox_bound_does_not_end_a_reader_that_keeps_up`).
    // F reads concurrently and must get every edit promptly, in order,
    // whatever S does.
    const WINDOW: u64 = 4;
    // Incompressible: our client accepts gzip, and 3 KiB of one letter would
    // cross the wire in a few dozen bytes, never filling S's windows.
    let line = incompressible_line(3 * 1024);
    let started = Instant::now();
    let fast_reader = tokio::spawn(async move {
        let mut dense = Dense::after(sleepy_joined.sequence, "fast");
        let mut edits = 0;
        let mut sleepy_left = false;
        within(
            Duration::from_secs(5),
            "the fast reader gets all edits",
            async {
                while edits < BIG_EDITS {
                    let m = f.recv().await;
                    dense.observe(&m);
                    if let Some(e) = as_edit(&m) {
                        assert_eq!(e.line_number, edits as i32);
                        assert!(e.content.starts_with(&format!("{edits:04}")));
                        edits += 1;
                    } else if is_presence(&m, "sleepy", Presence::Left) {
                        sleepy_left = true;
                    }
                }
            },
        )
        .await;
        (f, sleepy_left, started.elapsed())
    });
    let mut acked = 0;
    for i in 0..BIG_EDITS as u64 {
        if i >= acked + WINDOW {
            acked += 1;
            a.ack_of(acked).await;
        }
        a.edit(Op::Insert, "big.rs", i as i32, &format!("{i:04}{line}"), 0);
    }
    while acked < BIG_EDITS as u64 {
        acked += 1;
        a.ack_of(acked).await;
    }
    let (mut f, sleepy_left, elapsed) = fast_reader.await.expect("the fast reader");
    if !sleepy_left {
        f.recv_matching(|m| is_presence(m, "sleepy", Presence::Left))
            .await;
    }
    eprintln!("fast reader got {BIG_EDITS} edits in {elapsed:?}");
    let stats = wait_for_stats(&registry, Duration::from_secs(3), |s| {
        s.participants == 2 && s.outbox_bytes <= 1024
    })
    .await;
    assert_eq!(stats.members, 2, "{stats:?}");

    let (s_messages, s_end) = s.until_end().await;
    SlowRun {
        _server: server,
        registry,
        addr,
        a,
        f,
        s_messages,
        s_end,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slow_consumer_is_ended_without_slowing_anyone() {
    let run = slow_consumer_run().await;
    let status = run
        .s_end
        .clone()
        .expect_err("the slow participant is ended");
    assert_eq!(
        status.code(),
        codereview::grpc::Code::ResourceExhausted,
        "{status:?}"
    );
    // What it had received was a dense prefix, not everything.
    let first = &run.s_messages[0];
    assert!(
        matches!(first.payload, Some(Payload::Joined(_))),
        "{first:?}"
    );
    let edits = run
        .s_messages
        .iter()
        .filter(|m| as_edit(m).is_some())
        .count();
    assert!(edits < BIG_EDITS, "it fell behind: {edits} edits delivered");
    let Some(Payload::Joined(joined)) = &first.payload else {
        unreachable!()
    };
    let mut dense = Dense::after(0, "sleepy");
    let mut caught_up = false;
    for m in &run.s_messages[1..] {
        if caught_up {
            dense.observe(m);
        } else if is_caught_up(m) {
            caught_up = true;
            dense.last = joined.sequence;
        }
    }
    assert!(dense.last > joined.sequence, "it got some live events");
    let stats = run.registry.stats().await.unwrap();
    assert!(stats.outbox_bytes <= 1024, "{stats:?}");

    drop((run.a, run.f));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slow_consumer_can_rejoin_with_a_snapshot_after_being_ended() {
    let mut run = slow_consumer_run().await;
    let mut s = Participant::open(run.addr, "slow", "sleepy").await;
    s.send_payload(Some(Payload::Join(Join {
        want_snapshot: true,
        ..Join::default()
    })));
    let first = match s.inbox().next_within(STEP).await {
        Next::Message(m) => m,
        other => panic!("rejoining with a snapshot: expected Joined, got {other:?}"),
    };
    let Some(Payload::Joined(back)) = first.payload.clone() else {
        panic!("Joined first: {first:?}");
    };
    assert_eq!(catchup_of(&back), Catchup::Snapshot);
    let m = s.recv().await;
    let Some(Payload::Snapshot(snapshot)) = &m.payload else {
        panic!("a Snapshot: {m:?}");
    };
    assert_eq!(snapshot.files[0].lines.len(), BIG_EDITS);
    assert!(is_caught_up(&s.recv().await));
    let cs = run.a.edit(Op::Insert, "big.rs", 0, "after", 0);
    let m = s.recv().await;
    assert_eq!(m.sequence, back.sequence + 1);
    assert_eq!(as_edit(&m).unwrap().content, "after");
    run.a.ack_of(cs).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slow_consumer_can_resume_after_being_ended() {
    let mut run = slow_consumer_run().await;
    let Some(Payload::Joined(joined)) = &run.s_messages[0].payload else {
        panic!("Joined first: {:?}", run.s_messages.first());
    };
    let epoch = joined.session_epoch;
    let last = run
        .s_messages
        .iter()
        .filter_map(essential_sequence)
        .max()
        .unwrap_or(joined.sequence)
        .max(joined.sequence);
    let mut s = Participant::open(run.addr, "slow", "sleepy").await;
    s.send_payload(Some(Payload::Join(Join {
        want_snapshot: false,
        resume_after_sequence: Some(last),
        session_epoch: epoch,
    })));
    let first = match s.inbox().next_within(STEP).await {
        Next::Message(m) => m,
        other => panic!(
            "resuming after sequence {last} (session at {}): expected Joined, got {other:?}",
            get_snapshot(run.addr, "slow").await.unwrap().sequence
        ),
    };
    let Some(Payload::Joined(resumed)) = first.payload.clone() else {
        panic!("Joined first: {first:?}");
    };
    let mut rest = s.recv_until(is_caught_up).await;
    rest.pop();
    match catchup_of(&resumed) {
        Catchup::Resume => {
            let sequences: Vec<u64> = rest.iter().filter_map(essential_sequence).collect();
            let expected: Vec<u64> = (last + 1..=resumed.sequence).collect();
            assert_eq!(sequences, expected, "exactly the missed events");
        }
        Catchup::Snapshot => {
            let Some(Payload::Snapshot(snapshot)) = &rest[0].payload else {
                panic!("a Snapshot: {rest:?}");
            };
            assert_eq!(snapshot.files[0].lines.len(), BIG_EDITS);
        }
        Catchup::History => panic!("a resume gets RESUME or SNAPSHOT, not HISTORY"),
    }
    let cs = run.a.edit(Op::Insert, "big.rs", 0, "after", 0);
    let m = s.recv().await;
    assert_eq!(m.sequence, resumed.sequence + 1);
    assert_eq!(as_edit(&m).unwrap().content, "after");
    run.a.ack_of(cs).await;
    drop(run.f);
}

/// A burst larger than the outbox bound, admitted at once (rate limiting
/// off), is applied at the registry's speed, faster than any reader drains
/// it over the network: every reader is then behind by more than its bound.
/// That is the bound doing its job; the defence is configuration — the
/// per-participant rate limit keeps admitted bursts (rate_burst × message
/// size × participants) below outbox_bytes, as the README's limits section
/// says. Kept (ignored) as a record of the trade-off: pulls are served
/// before other commands, which narrows but cannot close the gap.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "by design: bursts above outbox_bytes need the rate limit (see doc comment)"]
async fn a_burst_larger_than_the_outbox_bound_does_not_end_a_reader_that_keeps_up() {
    // A burst of 200 edits: no rate limit.
    let limits = Limits {
        outbox_bytes: 64 * 1024,
        ..unlimited_rate()
    };
    let (_server, _registry, addr) = start(limits).await;
    let (mut a, _) = Participant::join(addr, "burst", "alice").await;
    let (mut f, f_join) = Participant::join(addr, "burst", "fast").await;
    let fast_reader = tokio::spawn(async move {
        let mut dense = Dense::after(f_join.joined.sequence, "fast");
        let mut edits = 0;
        while edits < BIG_EDITS {
            match f.inbox().next_within(STEP).await {
                Next::Message(m) => {
                    dense.observe(&m);
                    edits += as_edit(&m).is_some() as usize;
                }
                other => return Err(format!("after {edits} edits: {other:?}")),
            }
        }
        Ok(edits)
    });
    let line = "x".repeat(3 * 1024);
    for i in 0..BIG_EDITS {
        a.edit(Op::Insert, "big.rs", i as i32, &format!("{i:04}{line}"), 0);
    }
    let got = fast_reader.await.expect("the fast reader");
    assert_eq!(got, Ok(BIG_EDITS), "the fast reader was ended");
}

// ----- 9. isolation -----

#[tokio::test]
async fn sessions_are_isolated() {
    let (_server, _registry, addr) = start(Limits::default()).await;
    let (mut a1, _) = Participant::join(addr, "s1", "alice").await;
    let (mut b1, _) = Participant::join(addr, "s1", "bob").await;
    a1.recv_matching(|m| is_presence(m, "bob", Presence::Joined))
        .await;

    // Everything in s2: joins, edits, comments, cursors, uploads, leaving,
    // a watcher, an error.
    let (mut a2, _) = Participant::join(addr, "s2", "alice").await;
    let (mut b2, _) = Participant::join(addr, "s2", "bob").await;
    let mut w2 = watch(
        addr,
        WatchRequest {
            session_id: "s2".into(),
            ..WatchRequest::default()
        },
    )
    .await
    .unwrap();
    let cs = a2.edit(Op::Insert, "x.rs", 0, "s2 only", 0);
    a2.ack_of(cs).await;
    let cs = b2.send_numbered(comment("x.rs", 0, "s2 comment"));
    b2.ack_of(cs).await;
    let cs = b2.send_numbered(cursor("x.rs", 0, 1));
    b2.ack_of(cs).await;
    let cs = a2.edit(Op::Delete, "x.rs", 9, "", 0);
    a2.recv_matching(|m| m.client_sequence == cs).await;
    upload(addr, vec![chunk("s2", "y.rs", "uploaded\n")])
        .await
        .unwrap();
    b2.send_payload(Some(presence(Presence::Left)));
    b2.inbox().until_end().await.1.unwrap();
    w2.recv_matching(|m| is_presence(m, "bob", Presence::Left))
        .await;

    a1.expect_quiet(QUIET).await;
    b1.expect_quiet(QUIET).await;

    // And the other way round.
    let cs = a1.edit(Op::Insert, "x.rs", 0, "s1 only", 0);
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
        ..Limits::default()
    };
    let (_server, registry, addr) = start(limits).await;
    let mut joined = Vec::new();
    for i in 0..N {
        joined.push(Participant::join(addr, "crowd", &format!("u{i:02}")).await);
    }
    let stats = registry.stats().await.unwrap();
    assert_eq!((stats.sessions, stats.participants), (1, N));

    let mut tasks = JoinSet::new();
    for (mut p, catch_up) in joined {
        tasks.spawn(async move {
            let me = p.user_id.clone();
            let cs = p.edit(Op::Insert, "crowd.rs", 0, &me, 0);
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
    wait_for_stats(&registry, Duration::from_secs(3), is_empty).await;
}

// ----- 11. no leaked state -----

#[tokio::test]
async fn nothing_is_leaked_however_streams_end() {
    let limits = Limits {
        session_linger: Duration::ZERO,
        ..Limits::default()
    };
    let (_server, registry, addr) = start(limits).await;
    let via_proxy = ConnectOptions {
        via_proxy: true,
        ..ConnectOptions::default()
    };

    // Session a: every way to go.
    let (mut stay, _) = Participant::join(addr, "leak-a", "stay").await;
    let (mut says_left, _) = Participant::join(addr, "leak-a", "says-left").await;
    let (mut half_closes, _) = Participant::join(addr, "leak-a", "half-closes").await;
    let (mut cancels, _) = Participant::join(addr, "leak-a", "cancels").await;
    let (mut cut, _) = Participant::join_with(
        addr,
        "leak-a",
        "cut",
        via_proxy,
        Some(presence(Presence::Joined)),
    )
    .await;
    let mut watcher = watch(
        addr,
        WatchRequest {
            session_id: "leak-a".into(),
            want_snapshot: true,
            ..WatchRequest::default()
        },
    )
    .await
    .unwrap();
    watcher.recv_until(is_caught_up).await;
    let cs = stay.edit(Op::Insert, "a.rs", 0, "x", 0);
    stay.ack_of(cs).await;
    says_left.send_payload(Some(presence(Presence::Left)));
    half_closes.close_send();
    cancels.cancel();
    cut.cut_connection();

    // Session b: the same user twice (the older stream is replaced), and a
    // participant that never reads.
    let (mut first, _) = Participant::join(addr, "leak-b", "twice").await;
    let (mut second, _) = Participant::join(addr, "leak-b", "twice").await;
    let (_, end) = first.inbox().until_end().await;
    assert_eq!(code_of(&end), Code::Aborted, "{end:?}");
    let never_reads = RawSession::open(
        addr,
        &SessionMessage {
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
    .await
    .unwrap();
    other_watcher.recv_until(is_caught_up).await;
    wait_for_stats(&registry, Duration::from_secs(3), |s| s.sessions == 2).await;

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
    assert_eq!(code_of(&refused), Code::InvalidArgument);

    // Everyone goes.
    drop(watcher);
    drop(other_watcher);
    drop(never_reads);
    second.cancel();
    stay.close_send();
    let (_, end) = says_left.inbox().until_end().await;
    assert!(end.is_ok(), "{end:?}");
    drop((stay, says_left, half_closes, cancels, cut, first, second));
    let stats = wait_for_stats(&registry, Duration::from_secs(3), is_empty).await;
    assert_eq!(stats.outbox_bytes, 0, "{stats:?}");
    assert_eq!(stats.users_remembered, 0, "{stats:?}");
}

// ----- 12. the four RPCs -----

#[tokio::test]
async fn get_snapshot_refuses_unknown_and_empty_sessions() {
    let (_server, _registry, addr) = start(Limits::default()).await;
    let status = get_snapshot(addr, "nobody-here").await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    let status = get_snapshot(addr, "").await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    let status = get_snapshot(addr, &"s".repeat(200)).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");

    let (_a, a_join) = Participant::join(addr, "snap", "alice").await;
    let snapshot = get_snapshot(addr, "snap").await.unwrap();
    assert_eq!(
        snapshot,
        Snapshot {
            session_id: "snap".into(),
            session_epoch: a_join.joined.session_epoch,
            sequence: 1,
            version: 0,
            files: vec![],
            comments: vec![],
            participants: vec![participant("alice", None)],
        }
    );
}

#[tokio::test]
async fn watchers_see_live_events_but_are_not_participants() {
    let (_server, registry, addr) = start(Limits::default()).await;
    let (mut a, _) = Participant::join(addr, "watched", "alice").await;
    let mut w = watch(
        addr,
        WatchRequest {
            session_id: "watched".into(),
            ..WatchRequest::default()
        },
    )
    .await
    .unwrap();
    let catch_up = w.catch_up().await;
    assert_eq!(catchup_of(&catch_up.joined), Catchup::History);
    assert_eq!(catch_up.joined.role, Role::Observer as i32);
    assert_eq!(catch_up.joined.sequence, 1);
    assert_eq!(catch_up.messages.len(), 1);
    assert!(is_presence(
        &catch_up.messages[0],
        "alice",
        Presence::Joined
    ));
    let stats = registry.stats().await.unwrap();
    assert_eq!((stats.participants, stats.watchers), (1, 1));

    let cs = a.edit(Op::Insert, "w.rs", 0, "watched line", 0);
    a.ack_of(cs).await;
    let m = w.recv().await;
    assert_eq!((m.user_id.as_str(), m.sequence), ("alice", 2));
    assert_eq!(
        m.payload,
        Some(edit(Op::Insert, "w.rs", 0, "watched line", 1))
    );
    let (mut b, _) = Participant::join(addr, "watched", "bob").await;
    let m = w.recv().await;
    assert!(is_presence(&m, "bob", Presence::Joined), "{m:?}");
    assert_eq!(m.sequence, 3);
    let cs = b.send_numbered(cursor("w.rs", 0, 4));
    b.ack_of(cs).await;
    let m = w.recv().await;
    assert_eq!(m.payload, Some(cursor("w.rs", 0, 4)));

    // A watcher with a snapshot: Joined(SNAPSHOT), the Snapshot, CAUGHT_UP.
    let mut ws = watch(
        addr,
        WatchRequest {
            session_id: "watched".into(),
            want_snapshot: true,
            ..WatchRequest::default()
        },
    )
    .await
    .unwrap();
    let catch_up = ws.catch_up().await;
    assert_eq!(catchup_of(&catch_up.joined), Catchup::Snapshot);
    assert_eq!(catch_up.joined.role, Role::Observer as i32);
    assert_eq!(catch_up.messages.len(), 1);
    let Some(Payload::Snapshot(snapshot)) = &catch_up.messages[0].payload else {
        panic!("{:?}", catch_up.messages);
    };
    assert_eq!(snapshot.sequence, 3);
    assert_eq!(snapshot.files[0].lines, ["watched line"]);
    let names: Vec<&str> = snapshot
        .participants
        .iter()
        .map(|p| p.user_id.as_str())
        .collect();
    assert_eq!(names, ["alice", "bob"], "watchers are not participants");

    // Participants never hear of watchers.
    let got = a.drain_quiet(QUIET).await;
    assert_eq!(got.len(), 2, "bob's JOINED and cursor only: {got:?}");
    let stats = registry.stats().await.unwrap();
    assert_eq!((stats.participants, stats.watchers), (2, 2));
    let snapshot = get_snapshot(addr, "watched").await.unwrap();
    assert_eq!(snapshot.participants.len(), 2);

    // Both watchers see bob go.
    b.close_send();
    for watcher in [&mut w, &mut ws] {
        let m = watcher
            .recv_matching(|m| presence_of(m).is_some_and(|(_, s)| s == Presence::Left))
            .await;
        assert!(is_presence(&m, "bob", Presence::Left), "{m:?}");
        assert_eq!(m.sequence, 4);
    }

    let status = match watch(addr, WatchRequest::default()).await {
        Err(status) => status,
        Ok(mut inbox) => inbox.until_end().await.1.unwrap_err(),
    };
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
}

#[tokio::test]
async fn uploads_are_summarised_broadcast_and_snapshotted() {
    let (_server, _registry, addr) = start(Limits::default()).await;
    let (mut a, _) = Participant::join(addr, "up", "alice").await;
    let summary = upload(
        addr,
        vec![
            chunk("up", "a.rs", "fn a() {}\n"),
            chunk("up", "b.rs", "line1\n"),
            chunk("up", "b.rs", "line2\nli"),
            chunk("up", "b.rs", "ne3\n"),
        ],
    )
    .await
    .unwrap();
    assert_eq!(
        summary,
        codereview::pb::codereview::UploadSummary {
            files: 2,
            lines: 4,
            bytes: 10 + 6 * 3,
            version: 2,
            sequence: 3,
        }
    );
    let m = a.recv().await;
    assert_eq!(m.sequence, 2);
    assert_eq!(
        m.payload,
        Some(Payload::File(FileContent {
            file_path: "a.rs".into(),
            lines: vec!["fn a() {}".into()],
            version: 1,
        }))
    );
    let m = a.recv().await;
    assert_eq!(m.sequence, 3);
    assert_eq!(
        m.payload,
        Some(Payload::File(FileContent {
            file_path: "b.rs".into(),
            lines: vec!["line1".into(), "line2".into(), "line3".into()],
            version: 2,
        }))
    );
    let snapshot = get_snapshot(addr, "up").await.unwrap();
    assert_eq!(snapshot.version, 2);
    assert_eq!(
        snapshot.files,
        vec![
            FileContent {
                file_path: "a.rs".into(),
                lines: vec!["fn a() {}".into()],
                version: 0,
            },
            FileContent {
                file_path: "b.rs".into(),
                lines: vec!["line1".into(), "line2".into(), "line3".into()],
                version: 0,
            },
        ]
    );

    // Chunks of one file must be consecutive.
    let status = upload(
        addr,
        vec![
            chunk("up", "a.rs", "a\n"),
            chunk("up", "b.rs", "b\n"),
            chunk("up", "a.rs", "more a\n"),
        ],
    )
    .await
    .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    // Text must be UTF-8.
    let status = upload(
        addr,
        vec![chunk("up", "bin.rs", vec![0x66, 0xff, 0xfe, 0x0a])],
    )
    .await
    .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    // Neither changed anything.
    assert_eq!(get_snapshot(addr, "up").await.unwrap(), snapshot);
    a.expect_quiet(QUIET).await;
}

// ----- 13. validation -----

#[tokio::test]
async fn invalid_messages_get_errors_and_invalid_streams_are_refused() {
    let (_server, _registry, addr) = start(Limits::default()).await;
    let (mut a, _) = Participant::join(addr, "valid", "alice").await;

    let mut other_session = a.message(Some(edit(Op::Insert, "v.rs", 0, "x", 0)), 1);
    other_session.session_id = "elsewhere".into();
    a.send(other_session);
    let m = a.recv().await;
    let Some(Payload::Error(error)) = &m.payload else {
        panic!("an Error: {m:?}");
    };
    assert_eq!(error.code, Code::InvalidArgument as i32);
    assert_eq!(error.client_sequence, 1);

    let mut other_user = a.message(Some(edit(Op::Insert, "v.rs", 0, "x", 0)), 2);
    other_user.user_id = "mallory".into();
    a.send(other_user);
    let m = a.recv().await;
    let Some(Payload::Error(error)) = &m.payload else {
        panic!("an Error: {m:?}");
    };
    assert_eq!(error.code, Code::PermissionDenied as i32);
    assert_eq!(error.client_sequence, 2);

    // The stream is still open and nothing was applied.
    a.set_next_client_sequence(3);
    let cs = a.edit(Op::Insert, "v.rs", 0, "ok", 0);
    let ack = a.ack_of(cs).await;
    assert_eq!((ack.sequence, ack.version), (2, 1));
    assert_eq!(snapshot_lines(addr, "valid", "v.rs").await, ["ok"]);

    // A stream whose first message has no session, or a too long one.
    for session_id in [String::new(), "s".repeat(200)] {
        let end = session_call_status(
            addr,
            SessionMessage {
                session_id: session_id.clone(),
                user_id: "bob".into(),
                payload: Some(presence(Presence::Joined)),
                ..SessionMessage::default()
            },
        )
        .await;
        assert_eq!(
            code_of(&end),
            Code::InvalidArgument,
            "{session_id:?}: {end:?}"
        );
    }
    a.expect_quiet(QUIET).await;
}

// ----- 14. cursor coalescing -----

#[tokio::test]
async fn cursor_moves_coalesce_for_a_reader_that_is_not_reading() {
    const MOVES: i32 = 500;
    // 500 cursor moves in a burst: no rate limit.
    let (_server, _registry, addr) = start(unlimited_rate()).await;
    // Bob advertises a 1 KiB stream window: once he stops reading, the server
    // can have at most that much in flight to him, and the rest waits (and
    // coalesces) in his outbox.
    let small_window = ConnectOptions {
        stream_window: Some(1024),
        ..ConnectOptions::default()
    };
    let (mut b, _) = Participant::join_with(
        addr,
        "cursors",
        "bob",
        small_window,
        Some(presence(Presence::Joined)),
    )
    .await;
    let (mut a, _) = Participant::join(addr, "cursors", "alice").await;
    b.recv_matching(|m| is_presence(m, "alice", Presence::Joined))
        .await;

    // Bob stops reading; alice moves her cursor 500 times, numbering the
    // last so its acknowledgement shows all were processed.
    for i in 0..MOVES - 1 {
        a.send_payload(Some(cursor("c.rs", i, i % 80)));
    }
    let last = a.send_numbered(cursor("c.rs", MOVES - 1, 42));
    let ack = a.ack_of(last).await;
    assert_eq!(ack.sequence, 0);

    let got = b.drain_quiet(QUIET).await;
    let cursors: Vec<&CursorPosition> = got
        .iter()
        .filter_map(|m| match &m.payload {
            Some(Payload::Cursor(c)) => {
                assert_eq!(m.user_id, "alice");
                Some(c)
            }
            _ => None,
        })
        .collect();
    eprintln!("bob received {} of {MOVES} cursor moves", cursors.len());
    assert!(
        cursors.len() < 100,
        "far fewer than {MOVES} cursor messages: {}",
        cursors.len()
    );
    assert_eq!(
        cursors.last().copied(),
        Some(&CursorPosition {
            file_path: "c.rs".into(),
            line: MOVES - 1,
            column: 42,
        })
    );
    // In order: each one is a later position than the one before.
    assert!(cursors.windows(2).all(|w| w[0].line < w[1].line));
}

// ----- found on the way -----

/// `ServerConfig::keepalive_interval` is documented "zero disables"; a
/// server with keepalive disabled must still serve sessions.
#[tokio::test]
async fn a_server_with_keepalive_disabled_serves_sessions() {
    let config = ServerConfig {
        keepalive_interval: Duration::ZERO,
        ..ServerConfig::default()
    };
    let (server, _registry) = common::start_review(config, Limits::default()).await;
    let (mut a, _) = Participant::join(server.addr, "keepalive", "alice").await;
    let cs = a.edit(Op::Insert, "k.rs", 0, "x", 0);
    assert_eq!(a.ack_of(cs).await.version, 1);
}
