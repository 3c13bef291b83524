//! The other three RPCs (GetSnapshot, WatchSession, UploadFiles), the
//! validation of what participants send, and the server's settings.

use std::time::Duration;

use codereview::app::AppConfig;
use codereview::grpc::Code;
use codereview::grpc::server::ServerConfig;
use codereview::pb::codereview::code_edit::Op;
use codereview::pb::codereview::joined::Catchup;
use codereview::pb::codereview::presence_update::Status as Presence;
use codereview::pb::codereview::session_message::Payload;
use codereview::pb::codereview::{FileContent, Role, SessionMessage, Snapshot, WatchRequest};
use kit::QUIET;
use kit::payloads::{catchup_of, chunk, cursor, edit, is_presence, presence, presence_of};
use kit::server::TestServer;

use crate::{
    get_snapshot, join, limits, participant_entry, server_config, session_call_status,
    snapshot_lines, start, upload, watch,
};

// ----- 12. the four RPCs -----

#[tokio::test]
async fn get_snapshot_refuses_unknown_and_empty_sessions() {
    let server = start(limits()).await;
    let addr = server.addr;
    let status = get_snapshot(addr, "nobody-here").await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    let status = get_snapshot(addr, "").await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    let status = get_snapshot(addr, &"s".repeat(200)).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");

    let (_a, a_join) = join(addr, "snap", "alice").await;
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
            participants: vec![participant_entry("alice", None)],
        }
    );
}

#[tokio::test]
async fn watchers_see_live_events_but_are_not_participants() {
    let server = start(limits()).await;
    let addr = server.addr;
    let (mut a, _) = join(addr, "watched", "alice").await;
    let mut w = watch(
        addr,
        WatchRequest {
            session_id: "watched".into(),
            ..WatchRequest::default()
        },
    )
    .await;
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
    let stats = server.stats().await;
    assert_eq!((stats.participants, stats.watchers), (1, 1));

    let cs = a.edit_at(Op::Insert, "w.rs", 0, "watched line", 0).await;
    a.ack_of(cs).await;
    let m = w.recv().await;
    assert_eq!((m.user_id.as_str(), m.sequence), ("alice", 2));
    assert_eq!(
        m.payload,
        Some(edit(Op::Insert, "w.rs", 0, "watched line", 1))
    );
    let (mut b, _) = join(addr, "watched", "bob").await;
    let m = w.recv().await;
    assert!(is_presence(&m, "bob", Presence::Joined), "{m:?}");
    assert_eq!(m.sequence, 3);
    let cs = b.send(cursor("w.rs", 0, 4)).await;
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
    .await;
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
    let stats = server.stats().await;
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

    let status = watch(addr, WatchRequest::default()).await.end().await;
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
}

#[tokio::test]
async fn uploads_are_summarised_broadcast_and_snapshotted() {
    let server = start(limits()).await;
    let addr = server.addr;
    let (mut a, _) = join(addr, "up", "alice").await;
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
    let server = start(limits()).await;
    let addr = server.addr;
    let (mut a, _) = join(addr, "valid", "alice").await;

    let mut other_session = a.message(Some(edit(Op::Insert, "v.rs", 0, "x", 0)), 1);
    other_session.session_id = "elsewhere".into();
    a.send_raw(other_session).await.expect("sent");
    let m = a.recv().await;
    let Some(Payload::Error(error)) = &m.payload else {
        panic!("an Error: {m:?}");
    };
    assert_eq!(error.code, Code::InvalidArgument as i32);
    assert_eq!(error.client_sequence, 1);

    let mut other_user = a.message(Some(edit(Op::Insert, "v.rs", 0, "x", 0)), 2);
    other_user.user_id = "mallory".into();
    a.send_raw(other_user).await.expect("sent");
    let m = a.recv().await;
    let Some(Payload::Error(error)) = &m.payload else {
        panic!("an Error: {m:?}");
    };
    assert_eq!(error.code, Code::PermissionDenied as i32);
    assert_eq!(error.client_sequence, 2);

    // The stream is still open and nothing was applied.
    a.set_next_client_sequence(3);
    let cs = a.edit_at(Op::Insert, "v.rs", 0, "ok", 0).await;
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
        assert_eq!(end.code(), Code::InvalidArgument, "{session_id:?}: {end:?}");
    }
    a.expect_quiet(QUIET).await;
}

// ----- found on the way -----

/// `ServerConfig::keepalive_interval` is documented "zero disables"; a
/// server with keepalive disabled must still serve sessions.
#[tokio::test]
async fn a_server_with_keepalive_disabled_serves_sessions() {
    let config = ServerConfig {
        keepalive_interval: Duration::ZERO,
        ..server_config()
    };
    let server = TestServer::start(AppConfig {
        server: config,
        ..AppConfig::loopback()
    })
    .await;
    let (mut a, _) = join(server.addr, "keepalive", "alice").await;
    let cs = a.edit_at(Op::Insert, "k.rs", 0, "x", 0).await;
    assert_eq!(a.ack_of(cs).await.version, 1);
}
