//! Security, part 3: limits. Each `serve` flag maps to a field of
//! ServerConfig, Limits or ServiceConfig; these tests set the field and
//! check the precise status (or per-message error) at the limit, and that a
//! well-behaved participant on the same server is unaffected.

use std::time::Duration;

use codereview::grpc::Code;
use codereview::pb::codereview::{
    Join, SessionMessage, WatchRequest, code_edit::Op, joined::Catchup, session_message::Payload,
};
use codereview::review::roles::Role;
use kit::h2raw;
use kit::participant::{Next, Outcome, Participant, get_snapshot, session_status, upload, watch};
use kit::payloads::{
    as_edit, chunk, comment, edit, essential_sequence, join_message, join_message_with,
};
use kit::server::{TestServer, loopback};
use kit::{QUIET, STEP, within};
use tokio::time::Instant;

use crate::assert_code;
use crate::canary::Canary;

/// Essential sequence numbers in `messages` (replays and live events).
fn sequences(messages: &[SessionMessage]) -> Vec<u64> {
    messages.iter().filter_map(essential_sequence).collect()
}

// ---------------------------------------------------------------------------
// Messages and streams (ServerConfig).

#[tokio::test]
async fn an_oversized_message_is_resource_exhausted_and_others_are_unaffected() {
    let limit = 64 * 1024;
    let server = TestServer::start(loopback(|c| {
        c.server.max_recv_message_bytes = limit;
        // Every session must fit in one snapshot message (the app checks):
        // short ids and paths and two participants a session leave nearly
        // all of the message to content, so an upload near the limit fits.
        c.limits.max_id_bytes = 32;
        c.limits.max_path_bytes = 32;
        c.limits.max_participants = 2;
        c.limits.max_document_bytes = limit - c.limits.snapshot_overhead_bytes();
    }))
    .await;
    let mut canary = Canary::start(&server).await;
    let mut witness = Participant::join_server(&server, "size", "wit", Role::Author).await;
    let mut big = Participant::join_server(&server, "size", "big", Role::Author).await;

    // Just under the limit is decoded (and refused by validation, per message).
    let sequence = big
        .send(comment("f.txt", 0, &"c".repeat(limit - 100)))
        .await;
    assert_eq!(
        big.outcome(sequence).await.code(),
        Code::InvalidArgument as i32
    );
    // Over the limit ends the call.
    big.send(comment("f.txt", 0, &"c".repeat(limit + 1))).await;
    let status = big.end().await;
    assert_code(
        &status,
        Code::ResourceExhausted,
        "message over max_recv_message_bytes",
    );
    witness
        .recv_matching(|m| m.user_id == "big" && matches!(m.payload, Some(Payload::Presence(_))))
        .await;

    // Client streaming too: an oversized chunk is refused, a smaller one is not.
    let channel = server.channel().await;
    let status = upload(
        &channel,
        Default::default(),
        &[chunk("size-upload", "a.txt", "x".repeat(limit + 1))],
    )
    .await
    .expect_err("oversized upload chunk");
    assert_code(&status, Code::ResourceExhausted, "oversized upload chunk");
    let line = "y".repeat(1000);
    let text = format!("{line}\n").repeat(limit / 1001 - 1);
    upload(
        &channel,
        Default::default(),
        &[chunk("size-upload", "a.txt", &text)],
    )
    .await
    .expect("an upload chunk under the limit");

    // The rest of the server is unaffected.
    let sequence = witness.edit(Op::Replace, "f.txt", 0, "after").await;
    witness.outcome(sequence).await.ack();
    witness.assert_open().await;
    canary.check().await;
}

#[tokio::test]
async fn a_fourth_stream_waits_when_three_are_allowed_per_connection() {
    let server = TestServer::start(loopback(|c| c.server.max_concurrent_streams = 3)).await;
    let mut canary = Canary::start(&server).await;
    let channel = server.channel().await;
    let mut first_three = Vec::new();
    for user in ["u1", "u2", "u3"] {
        first_three.push(Participant::join(&channel, None, "streams", user).await.0);
    }

    // Our client (like any HTTP/2 client) holds the fourth back until a
    // stream ends: it is not joined meanwhile.
    let fourth_channel = channel.clone();
    let mut fourth =
        tokio::spawn(
            async move { Participant::join(&fourth_channel, None, "streams", "u4").await },
        );
    assert!(
        tokio::time::timeout(QUIET, &mut fourth).await.is_err(),
        "a fourth stream was served while three were open"
    );
    assert_eq!(server.stats().await.participants, 2 + 3);

    // The first three work meanwhile.
    let sequence = first_three[0].edit(Op::Replace, "f.txt", 0, "three").await;
    first_three[0].outcome(sequence).await.ack();
    first_three[1].recv_edit("three").await;
    first_three[2].recv_edit("three").await;

    // When one ends, the fourth proceeds.
    let mut leaving = first_three.pop().unwrap();
    leaving.close_send();
    assert!(leaving.end().await.is_ok());
    let (mut u4, _) = within(STEP, "the fourth stream", fourth)
        .await
        .expect("fourth join task");
    let sequence = first_three[0].edit(Op::Replace, "f.txt", 0, "four").await;
    first_three[0].outcome(sequence).await.ack();
    u4.recv_edit("four").await;
    canary.check().await;
}

#[tokio::test]
async fn a_fourth_stream_opened_anyway_is_refused() {
    let server = TestServer::start(loopback(|c| c.server.max_concurrent_streams = 3)).await;
    let mut canary = Canary::start(&server).await;

    // A raw client that ignores SETTINGS_MAX_CONCURRENT_STREAMS.
    let mut conn = h2raw::Conn::connect(server.addr).await;
    assert!(
        conn.server_settings
            .contains(&(h2raw::SETTINGS_MAX_CONCURRENT_STREAMS, 3)),
        "server settings: {:?}",
        conn.server_settings
    );
    let mut open = Vec::new();
    for user in ["r1", "r2", "r3"] {
        let id = conn
            .open_grpc(codereview::pb::paths::COLLABORATIVE_SESSION)
            .await;
        assert!(
            conn.send_data(
                id,
                &h2raw::grpc_encode(&join_message("raw-streams", user)),
                false
            )
            .await
        );
        open.push(id);
    }
    server
        .wait_for_stats("three raw participants", |s| s.participants == 2 + 3)
        .await;
    let fourth = conn
        .open_grpc(codereview::pb::paths::COLLABORATIVE_SESSION)
        .await;
    let reset = conn
        .read_until(STEP, |f| {
            f.kind == h2raw::RST_STREAM && f.stream_id == fourth
        })
        .await;
    assert_eq!(
        reset.rst_code(),
        h2raw::REFUSED_STREAM,
        "{}",
        conn.describe_log()
    );
    // The connection and its three streams live on.
    conn.ping_roundtrip().await;
    assert!(conn.goaway.is_none(), "{}", conn.describe_log());
    assert!(
        !conn
            .log
            .iter()
            .any(|f| f.kind == h2raw::RST_STREAM && open.contains(&f.stream_id)),
        "an accepted stream was reset: {}",
        conn.describe_log()
    );
    assert_eq!(server.stats().await.participants, 2 + 3);
    canary.check().await;
}

// ---------------------------------------------------------------------------
// Sessions and participants (Limits).

#[tokio::test]
async fn a_third_session_is_refused_when_two_are_allowed() {
    let server = TestServer::start(loopback(|c| {
        c.limits.max_sessions = 2;
        c.limits.session_linger = Duration::ZERO;
    }))
    .await;
    // Session 1: the canary's.
    let mut canary = Canary::start(&server).await;
    let channel = server.channel().await;
    let (mut second, _) = Participant::join(&channel, None, "second", "ann").await;

    let (messages, status) =
        session_status(&channel, Default::default(), &join_message("third", "ann")).await;
    assert_code(&status, Code::ResourceExhausted, "third session's join");
    assert!(messages.is_empty(), "{messages:?}");
    let status = upload(&channel, Default::default(), &[chunk("third", "a", "x\n")])
        .await
        .expect_err("an upload creating a third session");
    assert_code(&status, Code::ResourceExhausted, "third session's upload");
    let mut watcher = watch(
        &channel,
        None,
        WatchRequest {
            session_id: "third".into(),
            ..WatchRequest::default()
        },
    )
    .await;
    // Watching never creates a session.
    assert_code(
        &watcher.end().await,
        Code::NotFound,
        "third session's watch",
    );
    let status = get_snapshot(&channel, None, "third")
        .await
        .expect_err("no third");
    assert_code(&status, Code::NotFound, "the refusals created nothing");
    assert_eq!(server.stats().await.sessions, 2);

    // Existing sessions are unaffected; a freed slot can be used.
    let sequence = second.edit(Op::Replace, "f.txt", 0, "second").await;
    second.outcome(sequence).await.ack();
    canary.check().await;
    second.close_send();
    assert!(second.end().await.is_ok());
    server
        .wait_for_stats("the second session to be removed", |s| s.sessions == 1)
        .await;
    let (mut third, _) = Participant::join(&channel, None, "third", "ann").await;
    let sequence = third.edit(Op::Replace, "f.txt", 0, "third").await;
    third.outcome(sequence).await.ack();
    canary.check().await;
}

#[tokio::test]
async fn participants_beyond_the_limit_are_refused() {
    let server = TestServer::start(loopback(|c| c.limits.max_participants = 3)).await;
    let mut canary = Canary::start(&server).await;
    let channel = server.channel().await;
    let (mut p1, _) = Participant::join(&channel, None, "full", "p1").await;
    let (mut p2, _) = Participant::join(&channel, None, "full", "p2").await;
    let (mut p3, _) = Participant::join(&channel, None, "full", "p3").await;

    let (_, status) =
        session_status(&channel, Default::default(), &join_message("full", "p4")).await;
    assert_code(&status, Code::ResourceExhausted, "fourth participant");
    assert!(status.message().contains("full"), "{status}");

    // Those inside keep working; when one leaves, there is room again.
    let sequence = p1.edit(Op::Replace, "f.txt", 0, "inside").await;
    p1.outcome(sequence).await.ack();
    p2.recv_edit("inside").await;
    p3.recv_edit("inside").await;
    p3.close_send();
    assert!(p3.end().await.is_ok());
    server
        .wait_for_stats("p3 to leave", |s| s.participants == 2 + 2)
        .await;
    let (mut p4, _) = Participant::join(&channel, None, "full", "p4").await;
    let sequence = p1.edit(Op::Replace, "f.txt", 0, "room again").await;
    p1.outcome(sequence).await.ack();
    p2.recv_edit("room again").await;
    p4.recv_edit("room again").await;
    canary.check().await;
}

#[tokio::test]
async fn edits_beyond_the_document_limits_get_error_8_and_the_stream_stays() {
    let max_bytes = 1000;
    let max_lines = 5;
    let server = TestServer::start(loopback(|c| {
        c.limits.max_document_bytes = max_bytes;
        c.limits.max_lines_per_file = max_lines;
    }))
    .await;
    let mut canary = Canary::start(&server).await;
    let mut ann = Participant::join_server(&server, "doc", "ann", Role::Author).await;
    let mut bob = Participant::join_server(&server, "doc", "bob", Role::Author).await;

    // Lines: five fit, a sixth does not.
    for i in 0..max_lines {
        let sequence = ann
            .edit(Op::Insert, "f.txt", i as i32, &format!("line {i}"))
            .await;
        ann.outcome(sequence).await.ack();
    }
    let sequence = ann.edit(Op::Insert, "f.txt", 0, "one too many").await;
    let error = ann.outcome(sequence).await.error();
    assert_eq!(error.code, Code::ResourceExhausted as i32, "{error:?}");
    let sequence = ann
        .edit(Op::Insert, "g.txt", 0, "another file is fine")
        .await;
    ann.outcome(sequence).await.ack();

    // Bytes: a line that would take the session over its budget.
    let sequence = ann
        .edit(Op::Replace, "f.txt", 0, &"z".repeat(max_bytes))
        .await;
    let error = ann.outcome(sequence).await.error();
    assert_eq!(error.code, Code::ResourceExhausted as i32, "{error:?}");
    let sequence = ann
        .send(comment("f.txt", 0, &"w".repeat(max_bytes - 50)))
        .await;
    let error = ann.outcome(sequence).await.error();
    assert_eq!(
        error.code,
        Code::ResourceExhausted as i32,
        "a comment over budget: {error:?}"
    );
    let stats = server.stats().await;
    assert!(stats.content_bytes <= 2 * max_bytes, "{stats:?}");

    // Nothing refused reached bob; the stream goes on.
    let sequence = ann.edit(Op::Replace, "f.txt", 0, "small").await;
    ann.outcome(sequence).await.ack();
    let mut contents = Vec::new();
    loop {
        let message = bob
            .recv_matching(|m| matches!(m.payload, Some(Payload::Edit(_))))
            .await;
        let content = as_edit(&message).unwrap().content.clone();
        contents.push(content.clone());
        if content == "small" {
            break;
        }
    }
    let mut expected: Vec<String> = (0..max_lines).map(|i| format!("line {i}")).collect();
    expected.push("another file is fine".into());
    expected.push("small".into());
    assert_eq!(contents, expected);
    let snapshot = get_snapshot(bob.link(), None, "doc").await.unwrap();
    let f = snapshot
        .files
        .iter()
        .find(|f| f.file_path == "f.txt")
        .unwrap();
    assert_eq!(f.lines.len(), max_lines);
    assert!(snapshot.comments.is_empty());
    ann.assert_open().await;
    canary.check().await;
}

// ---------------------------------------------------------------------------
// Stream duration and rate (ServiceConfig, Limits).

#[tokio::test]
async fn streams_end_with_unavailable_at_max_duration_and_resume() {
    let server = TestServer::start(loopback(|c| {
        c.max_stream_duration = Some(Duration::from_secs(1))
    }))
    .await;
    let channel = server.channel().await;
    let (mut writer, _) = Participant::join(&channel, None, "duration", "w").await;
    let (mut reader, joined) = Participant::join(&channel, None, "duration", "r").await;
    let epoch = joined.joined.session_epoch;
    let sequence = writer.edit(Op::Replace, "f.txt", 0, "first").await;
    let first = writer.outcome(sequence).await.ack();
    reader.recv_edit("first").await;
    let mut watcher = watch(
        &channel,
        None,
        WatchRequest {
            session_id: "duration".into(),
            ..WatchRequest::default()
        },
    )
    .await;

    // All three are ended with UNAVAILABLE when their time is up.
    for (who, status) in [
        ("writer", writer.until_end_within(STEP).await.1),
        ("reader", reader.until_end_within(STEP).await.1),
        ("watcher", watcher.until_end_within(STEP).await.1),
    ] {
        assert_code(&status, Code::Unavailable, who);
        assert!(
            status.message().contains("maximum stream duration"),
            "{who}: {status}"
        );
    }
    let reader_last = sequences(&reader.log).into_iter().max().unwrap();
    assert!(reader_last >= first.sequence);

    // Unary calls are unaffected.
    get_snapshot(&channel, None, "duration")
        .await
        .expect("GetSnapshot");

    // The writer resumes and edits while the reader is away.
    let (mut writer, _) = Participant::try_join(
        &channel,
        None,
        join_message_with(
            "duration",
            "w",
            Join {
                resume_after_sequence: Some(first.sequence),
                session_epoch: epoch,
                ..Join::default()
            },
        ),
    )
    .await
    .expect("writer resumes");
    let sequence = writer.edit(Op::Replace, "f.txt", 0, "while away").await;
    let missed = writer.outcome(sequence).await.ack();

    // The reader resumes: exactly the events after what it saw, no gap.
    let (mut reader, joined) = Participant::try_join(
        &channel,
        None,
        join_message_with(
            "duration",
            "r",
            Join {
                resume_after_sequence: Some(reader_last),
                session_epoch: epoch,
                ..Join::default()
            },
        ),
    )
    .await
    .expect("reader resumes");
    assert_eq!(joined.joined.catchup, Catchup::Resume as i32, "{joined:?}");
    let replayed = sequences(&reader.log);
    let expected: Vec<u64> = (reader_last + 1..=joined.joined.sequence).collect();
    assert_eq!(
        replayed, expected,
        "the resume must replay exactly the missed events"
    );
    assert!(
        reader.log.iter().any(|m| {
            matches!(&m.payload, Some(Payload::Edit(e)) if e.content == "while away")
                && m.sequence == missed.sequence
        }),
        "the missed edit was not replayed: {:?}",
        reader.log
    );
    let sequence = writer.edit(Op::Replace, "f.txt", 0, "live again").await;
    writer.outcome(sequence).await.ack();
    reader.recv_edit("live again").await;
}

#[tokio::test]
async fn excess_messages_get_error_8_and_are_accepted_again_after_a_second() {
    let server = TestServer::start(loopback(|c| {
        c.limits.rate_per_second = 5.0;
        c.limits.rate_burst = 5.0;
    }))
    .await;
    let mut canary = Canary::start(&server).await;
    let mut ann = Participant::join_server(&server, "rate", "ann", Role::Author).await;
    let mut bob = Participant::join_server(&server, "rate", "bob", Role::Author).await;

    // Ten messages in one write.
    let started = Instant::now();
    let sent: Vec<u64> = (0..10)
        .map(|i| ann.queue(edit(Op::Replace, "f.txt", i, &format!("burst {i}"), 0)))
        .collect();
    ann.flush().await;
    let mut accepted = Vec::new();
    let mut refused = 0;
    for sequence in &sent {
        match ann.outcome(*sequence).await {
            Outcome::Ack(_) => accepted.push(*sequence),
            Outcome::Error(error) => {
                assert_eq!(error.code, Code::ResourceExhausted as i32, "{error:?}");
                assert!(error.message.contains("rate limit"), "{error:?}");
                refused += 1;
            }
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let refill = (elapsed * 5.0).floor() as usize;
    assert!(refused >= 1, "no message was refused by the rate limit");
    assert!(
        accepted.len() >= 5 && accepted.len() <= 5 + refill + 1,
        "{} accepted in {elapsed:.2}s with rate 5/s burst 5",
        accepted.len()
    );

    // Bob got exactly the accepted edits.
    for sequence in &accepted {
        let i = sequence - sent[0];
        bob.recv_edit(&format!("burst {i}")).await;
    }
    let extra = bob.next_within(QUIET).await;
    assert!(
        !matches!(&extra, Next::Message(m) if as_edit(m).is_some()),
        "a refused edit was broadcast: {extra:?}"
    );

    // The stream stayed open; after a second the bucket has refilled.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    for i in 0..3 {
        let sequence = ann
            .edit(Op::Replace, "g.txt", i, &format!("later {i}"))
            .await;
        ann.outcome(sequence).await.ack();
        bob.recv_edit(&format!("later {i}")).await;
    }
    ann.assert_open().await;
    canary.check().await;
}

// ---------------------------------------------------------------------------
// Gaps found (ignored until the server is fixed; see the ignore reasons).

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_flooding_client_cannot_outlive_max_stream_duration() {
    let server = TestServer::start(loopback(|c| {
        c.max_stream_duration = Some(Duration::from_secs(1));
        c.limits.rate_per_second = 0.0;
    }))
    .await;
    let channel = server.channel().await;
    let (mut flooder, _) = Participant::join(&channel, None, "flood", "flooder").await;

    // The flooder sends empty messages (valid: "touch") as fast as it can,
    // for at most 10 s; it reports whether its stream ended meanwhile.
    let flood = tokio::spawn(async move {
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(10) {
            for _ in 0..2000 {
                flooder.queue_raw(SessionMessage::default());
            }
            // A stalled write (the server stopped reading) is still flooding.
            let flushed = tokio::time::timeout(Duration::from_secs(2), flooder.flush_raw()).await;
            if let Ok(Err(_)) = flushed {
                return (true, flooder.until_end_within(STEP).await.1);
            }
            if let Next::End(status) = flooder.next_within(Duration::ZERO).await {
                return (true, status);
            }
        }
        (false, flooder.until_end_within(STEP * 2).await.1)
    });

    // A quiet participant who joined later is ended for its duration...
    let (mut quiet, _) = Participant::join(&server.channel().await, None, "flood", "quiet").await;
    let status = quiet.until_end_within(STEP).await.1;
    assert_code(&status, Code::Unavailable, "the quiet participant");
    // ...so the flooder, older, must have been ended while still flooding.
    let (ended_while_flooding, status) = within(STEP * 4, "the flood task", flood)
        .await
        .expect("flood task");
    assert!(
        ended_while_flooding,
        "the flooding stream outlived max_stream_duration for the whole flood (ended only \
         afterwards, with {status})"
    );
    assert_code(&status, Code::Unavailable, "the flooder");
    get_snapshot(&channel, None, "flood")
        .await
        .expect("GetSnapshot");
}

// ---------------------------------------------------------------------------
// Content budgets (issue: what independent clients found).

/// `lines` empty lines, as an uploaded file's text.
fn empty_lines(lines: usize) -> String {
    "\n".repeat(lines)
}

/// A session filled to its content budget with empty lines (the worst case:
/// 2 snapshot bytes per line against 1 byte of text) is still sent whole as
/// one snapshot to GetSnapshot, a watcher and a late joiner, under the 4 MiB
/// message limit every gRPC client has by default.
#[tokio::test]
async fn a_session_filled_to_its_budget_still_fits_in_one_snapshot() {
    let server = TestServer::start_default().await;
    let channel = server.channel().await;
    // Files of 20 000 empty lines while they fit, then ever smaller ones,
    // to use the budget up to the last few bytes.
    let mut accepted = 0;
    let mut size = 20_000;
    while size > 0 && accepted < 200 {
        // Short paths: what a path costs besides its bytes is what the old
        // budget forgot.
        let path = format!("{accepted}");
        let content = empty_lines(size);
        match upload(
            &channel,
            Default::default(),
            &[chunk("full", &path, &content)],
        )
        .await
        {
            Ok(_) => accepted += 1,
            Err(status) => {
                assert_code(
                    &status,
                    Code::ResourceExhausted,
                    "an upload past the budget",
                );
                size /= 2;
            }
        }
    }
    assert!(
        accepted >= 40,
        "only {accepted} files of 20 000 empty lines fit in 2 MiB"
    );
    let snapshot = get_snapshot(&channel, None, "full")
        .await
        .expect("GetSnapshot of a full session");
    assert_eq!(snapshot.files.len(), accepted);
    let watcher = watch(
        &channel,
        None,
        WatchRequest {
            session_id: "full".into(),
            want_snapshot: true,
            ..WatchRequest::default()
        },
    )
    .await;
    let mut watcher = watcher;
    watcher
        .recv_matching(|m| matches!(m.payload, Some(Payload::Snapshot(_))))
        .await;
    let (_late, joined) = Participant::try_join(
        &channel,
        None,
        join_message_with(
            "full",
            "late",
            Join {
                want_snapshot: true,
                ..Join::default()
            },
        ),
    )
    .await
    .expect("a late joiner of a full session");
    assert_eq!(joined.joined.catchup, Catchup::Snapshot as i32);
}

/// Uploads count against the uploader's rate limits like messages: a burst of
/// UploadFiles calls is cut at the message burst, and large uploads at the
/// byte burst, so that no author can push the others' readers out.
#[tokio::test]
async fn uploads_count_against_the_rate_limits() {
    let server = TestServer::start(loopback(|c| {
        c.limits.rate_per_second = 10.0;
        c.limits.rate_burst = 20.0;
    }))
    .await;
    let mut canary = Canary::start(&server).await;
    let channel = server.channel().await;
    // What the limiter may let through is its burst plus what it refills
    // while the calls run (measured, so a slow machine cannot fail this).
    let started = std::time::Instant::now();
    let mut refused = 0;
    for i in 0..60 {
        let path = format!("f{i}.txt");
        if let Err(status) = upload(
            &channel,
            Default::default(),
            &[chunk("flood", &path, "x\n")],
        )
        .await
        {
            assert_code(&status, Code::ResourceExhausted, "an upload over the rate");
            assert!(status.message().contains("rate limit"), "{status:?}");
            refused += 1;
        }
    }
    let allowed = 20.0 + 10.0 * started.elapsed().as_secs_f64();
    assert!(
        refused > 0 && (60 - refused) as f64 <= allowed.ceil(),
        "{} of 60 uploads were accepted where the limiter allows {allowed:.1}",
        60 - refused
    );
    // Bytes: 1.9 MB uploads of one file, back to back, into one session.
    let line = "z".repeat(999);
    let big = format!("{line}\n").repeat(1900);
    let started = std::time::Instant::now();
    let mut accepted = 0;
    for _ in 0..10 {
        if upload(
            &channel,
            Default::default(),
            &[chunk("bytes", "big.txt", &big)],
        )
        .await
        .is_ok()
        {
            accepted += 1;
        }
    }
    // 4 MiB of burst plus 1 MiB/s of refill, in uploads of 1.9 MB.
    let allowed_bytes = 4.0 * 1048576.0 + 1048576.0 * started.elapsed().as_secs_f64();
    let allowed = (allowed_bytes / big.len() as f64).floor() as usize;
    assert!(
        accepted < 10 && accepted <= allowed,
        "{accepted} uploads of 1.9 MB were accepted where the limiter allows {allowed}"
    );
    canary.check().await;
}

/// File paths that uploads name are checked like every other path: no NUL
/// or other control characters.
#[tokio::test]
async fn upload_paths_with_control_characters_are_refused() {
    let server = TestServer::start_default().await;
    let channel = server.channel().await;
    for path in ["a\0b.txt", "tab\there", "line\nbreak"] {
        let status = upload(&channel, Default::default(), &[chunk("paths", path, "x\n")])
            .await
            .expect_err("a control character in a path");
        assert_code(&status, Code::InvalidArgument, path);
    }
    assert!(
        get_snapshot(&channel, None, "paths").await.is_err(),
        "nothing was created"
    );
}

/// Past `--max-memory` new sessions and growth are refused, while
/// participants of existing sessions keep working.
#[tokio::test]
async fn past_the_memory_budget_new_sessions_and_growth_are_refused() {
    let budget = 24 << 20;
    let server = TestServer::start(loopback(|c| c.limits.max_memory_bytes = budget)).await;
    let mut canary = Canary::start(&server).await;
    let channel = server.channel().await;
    let mut refusal = None;
    'fill: for session in 0..100 {
        for file in 0..50 {
            let id = format!("mem{session}");
            let path = format!("f{file}.txt");
            if let Err(status) = upload(
                &channel,
                Default::default(),
                &[chunk(&id, &path, empty_lines(20_000))],
            )
            .await
            {
                refusal = Some(status);
                break 'fill;
            }
        }
    }
    let status = refusal.expect("the budget was reached");
    assert_code(
        &status,
        Code::ResourceExhausted,
        "growth past the memory budget",
    );
    assert!(status.message().contains("memory"), "{status:?}");
    // What room is left goes to smaller pieces, then nothing more is taken:
    // new sessions are refused too.
    let mut refused = None;
    for i in 0..1000 {
        let id = format!("small{i}");
        if let Err(status) = upload(
            &channel,
            Default::default(),
            &[chunk(&id, "a.txt", empty_lines(500))],
        )
        .await
        {
            refused = Some((i, status));
            break;
        }
    }
    let (after, status) = refused.expect("small sessions were refused in the end");
    assert_code(
        &status,
        Code::ResourceExhausted,
        "a new session past the budget",
    );
    assert!(status.message().contains("memory"), "{status:?}");
    assert!(after < 500, "{after} more sessions were created");
    let stats = server.stats().await;
    assert!(
        stats.memory_bytes <= budget,
        "{} bytes held for a budget of {budget}",
        stats.memory_bytes
    );
    canary.check().await;
}
