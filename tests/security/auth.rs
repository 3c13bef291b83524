//! Security, part 2: bearer tokens (HS256), the session scope, the subject as
//! identity, roles as capabilities, and mid-stream refresh. Every test runs
//! a server with the authentication interceptor and checks that a
//! well-behaved participant with a valid token is unaffected throughout.

use std::time::Duration;

use codereview::grpc::base64::{self, Alphabet};
use codereview::grpc::client::{CallOptions, Channel};
use codereview::grpc::{Code, Status};
use codereview::pb::codereview::{
    SessionMessage, WatchRequest, code_edit::Op, notice::Kind as NoticeKind,
    session_message::Payload,
};
use codereview::pb::testing::{
    Empty, SimpleRequest, StreamingInputCallRequest, StreamingOutputCallRequest,
};
use codereview::review::roles::Role;
use kit::participant::{
    Next, Participant, get_snapshot, health_check, session_status, upload, watch,
};
use kit::payloads::{as_edit, as_error, chunk, comment, cursor, edit, join_message, token_refresh};
use kit::server::{TestServer, loopback};
use kit::tls::{SECRET, auth_options, raw_auth_options, token, unix_now, unix_now_ms};
use kit::{QUIET, STEP, within};

use crate::assert_code;
use crate::canary::{CANARY_SESSION, Canary};

async fn auth_server() -> TestServer {
    TestServer::launch(loopback(|c| c.interop = true))
        .auth()
        .start()
        .await
}

/// Every way to present bad (or no) credentials, with a label.
fn bad_credentials() -> Vec<(&'static str, Option<String>)> {
    let valid = token("ann", Role::Author, None, 3600);
    let other_key = codereview::auth::jwt::Key::new(&[9u8; 32]).unwrap();
    let now = unix_now();
    let forged = other_key.sign(&codereview::auth::jwt::Claims {
        subject: "ann".into(),
        role: Role::Author,
        sessions: codereview::auth::jwt::Sessions::All,
        issued_at: now,
        expires_at: now + 3600,
    });
    let parts: Vec<&str> = valid.split('.').collect();
    let none_header = base64::encode(br#"{"alg":"none","typ":"JWT"}"#, Alphabet::UrlSafe);
    let alg_none = format!("{none_header}.{}.", parts[1]);
    let escalated = base64::encode(
        format!(
            r#"{{"sub":"root","role":"author","sessions":"*","iat":{now},"exp":{}}}"#,
            now + 3600
        )
        .as_bytes(),
        Alphabet::UrlSafe,
    );
    let tampered = format!("{}.{escalated}.{}", parts[0], parts[2]);
    vec![
        ("missing", None),
        ("not a bearer scheme", Some(format!("Basic {valid}"))),
        ("malformed: one part", Some("Bearer garbage".into())),
        ("malformed: bad base64", Some("Bearer a!b.c$d.e%f".into())),
        ("wrong signature", Some(format!("Bearer {forged}"))),
        (
            "expired",
            Some(format!("Bearer {}", token("ann", Role::Author, None, -10))),
        ),
        ("alg none", Some(format!("Bearer {alg_none}"))),
        ("tampered claims", Some(format!("Bearer {tampered}"))),
    ]
}

/// Starts `path`, sends `message`, half-closes and reads to the end: the
/// final status (OK if the call succeeded).
async fn call_status<M: prost::Message>(
    channel: &Channel,
    path: &str,
    options: CallOptions,
    message: &M,
) -> Status {
    within(STEP, path, async {
        let mut call = match channel.start(path, options).await {
            Ok(call) => call,
            Err(status) => return status,
        };
        let _ = call.send(message).await;
        call.close_send();
        let (_sender, mut receiver) = call.split();
        loop {
            match receiver.raw_message().await {
                Ok(Some(_)) => {}
                Ok(None) => return Status::ok(),
                Err(status) => return status,
            }
        }
    })
    .await
}

// ---------------------------------------------------------------------------
// Tokens.

#[tokio::test]
async fn bad_or_missing_tokens_are_unauthenticated_on_every_rpc() {
    let server = auth_server().await;
    let mut canary = Canary::start(&server).await;
    let channel = server.channel().await;
    let join = join_message("auth-target", "ann");
    let watch = WatchRequest {
        session_id: "auth-target".into(),
        ..WatchRequest::default()
    };
    let upload_chunk = chunk("auth-target", "a.txt", "x\n");
    let output = StreamingOutputCallRequest::default();

    for (label, credentials) in bad_credentials() {
        let options = || raw_auth_options(credentials.as_deref());
        let statuses = [
            (
                "CollaborativeSession",
                session_status(&channel, options(), &join).await.1,
            ),
            (
                "GetSnapshot",
                call_status(
                    &channel,
                    codereview::pb::paths::GET_SNAPSHOT,
                    options(),
                    &codereview::pb::codereview::SnapshotRequest {
                        session_id: "auth-target".into(),
                    },
                )
                .await,
            ),
            (
                "WatchSession",
                call_status(
                    &channel,
                    codereview::pb::paths::WATCH_SESSION,
                    options(),
                    &watch,
                )
                .await,
            ),
            (
                "UploadFiles",
                upload(&channel, options(), std::slice::from_ref(&upload_chunk))
                    .await
                    .expect_err("upload with bad credentials"),
            ),
            (
                "TestService/EmptyCall",
                call_status(
                    &channel,
                    "/grpc.testing.TestService/EmptyCall",
                    options(),
                    &Empty {},
                )
                .await,
            ),
            (
                "TestService/UnaryCall",
                call_status(
                    &channel,
                    "/grpc.testing.TestService/UnaryCall",
                    options(),
                    &SimpleRequest::default(),
                )
                .await,
            ),
            (
                "TestService/StreamingOutputCall",
                call_status(
                    &channel,
                    "/grpc.testing.TestService/StreamingOutputCall",
                    options(),
                    &output,
                )
                .await,
            ),
            (
                "TestService/StreamingInputCall",
                call_status(
                    &channel,
                    "/grpc.testing.TestService/StreamingInputCall",
                    options(),
                    &StreamingInputCallRequest::default(),
                )
                .await,
            ),
            (
                "TestService/FullDuplexCall",
                call_status(
                    &channel,
                    "/grpc.testing.TestService/FullDuplexCall",
                    options(),
                    &output,
                )
                .await,
            ),
            (
                "TestService/HalfDuplexCall",
                call_status(
                    &channel,
                    "/grpc.testing.TestService/HalfDuplexCall",
                    options(),
                    &output,
                )
                .await,
            ),
        ];
        for (rpc, status) in statuses {
            assert_code(
                &status,
                Code::Unauthenticated,
                &format!("{rpc} with {label} credentials"),
            );
        }
    }
    // Nothing was created by the refused calls.
    let stats = server.stats().await;
    assert_eq!(stats.sessions, 1, "only the canary's session: {stats:?}");
    assert_eq!(stats.participants, 2, "only the canary: {stats:?}");

    // With a valid token the same calls work.
    let good = token("ann", Role::Author, None, 3600);
    let summary = upload(&channel, auth_options(Some(&good)), &[upload_chunk])
        .await
        .expect("upload with a valid token");
    assert_eq!(summary.files, 1);
    let status = call_status(
        &channel,
        "/grpc.testing.TestService/EmptyCall",
        auth_options(Some(&good)),
        &Empty {},
    )
    .await;
    assert!(status.is_ok(), "EmptyCall with a valid token: {status}");

    // Health needs no token.
    assert_eq!(
        health_check(&channel)
            .await
            .expect("health without a token"),
        1
    );
    canary.check().await;
}

#[tokio::test]
async fn an_independent_client_sees_the_same_refusals() {
    // tonic, without any credentials: TestService and CodeReviewService
    // refuse, health answers.
    use tonic::codegen::http::uri::PathAndQuery;
    let server = auth_server().await;
    let mut canary = Canary::start(&server).await;
    let channel = tonic::transport::Endpoint::from_shared(server.url())
        .unwrap()
        .connect()
        .await
        .expect("tonic connect");
    let mut grpc = tonic::client::Grpc::new(channel);

    grpc.ready().await.unwrap();
    let refused = grpc
        .unary::<_, Empty, _>(
            tonic::Request::new(Empty {}),
            PathAndQuery::from_static("/grpc.testing.TestService/EmptyCall"),
            tonic_prost::ProstCodec::default(),
        )
        .await
        .expect_err("EmptyCall without a token");
    assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused:?}");

    grpc.ready().await.unwrap();
    let mut request = tonic::Request::new(codereview::pb::codereview::SnapshotRequest {
        session_id: CANARY_SESSION.into(),
    });
    request
        .metadata_mut()
        .insert("authorization", "Bearer not-a-token".parse().unwrap());
    let refused = grpc
        .unary::<_, codereview::pb::codereview::Snapshot, _>(
            request,
            PathAndQuery::from_static("/codereview.v1.CodeReviewService/GetSnapshot"),
            tonic_prost::ProstCodec::default(),
        )
        .await
        .expect_err("GetSnapshot with a malformed token");
    assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused:?}");

    grpc.ready().await.unwrap();
    let health = grpc
        .unary::<_, codereview::pb::health::HealthCheckResponse, _>(
            tonic::Request::new(codereview::pb::health::HealthCheckRequest::default()),
            PathAndQuery::from_static("/grpc.health.v1.Health/Check"),
            tonic_prost::ProstCodec::default(),
        )
        .await
        .expect("health without a token");
    assert_eq!(health.into_inner().status, 1);
    canary.check().await;
}

// ---------------------------------------------------------------------------
// Scope and identity.

#[tokio::test]
async fn a_session_the_token_does_not_allow_is_permission_denied() {
    let server = auth_server().await;
    let mut canary = Canary::start(&server).await;
    let channel = server.channel().await;
    let scoped = token("ann", Role::Author, Some(&["allowed"]), 3600);
    let opts = || auth_options(Some(&scoped));

    // CollaborativeSession.
    let (messages, status) =
        session_status(&channel, opts(), &join_message("forbidden", "ann")).await;
    assert_code(&status, Code::PermissionDenied, "join outside the scope");
    assert!(
        messages.is_empty(),
        "nothing may be delivered before the refusal: {messages:?}"
    );
    let (mut ann, _) = Participant::join(&channel, Some(&scoped), "allowed", "ann").await;

    // GetSnapshot.
    let status = get_snapshot(&channel, Some(&scoped), "forbidden")
        .await
        .expect_err("snapshot outside the scope");
    assert_code(
        &status,
        Code::PermissionDenied,
        "GetSnapshot outside the scope",
    );
    get_snapshot(&channel, Some(&scoped), "allowed")
        .await
        .expect("snapshot inside the scope");
    get_snapshot(&channel, Some(&scoped), CANARY_SESSION)
        .await
        .expect_err("the canary's session is outside the scope too");

    // WatchSession.
    let mut refused = watch(
        &channel,
        Some(&scoped),
        WatchRequest {
            session_id: "forbidden".into(),
            ..WatchRequest::default()
        },
    )
    .await;
    assert_code(
        &refused.end().await,
        Code::PermissionDenied,
        "WatchSession outside the scope",
    );
    let mut watcher = watch(
        &channel,
        Some(&scoped),
        WatchRequest {
            session_id: "allowed".into(),
            ..WatchRequest::default()
        },
    )
    .await;
    watcher
        .recv_matching(|m| matches!(m.payload, Some(Payload::Joined(_))))
        .await;

    // UploadFiles.
    let status = upload(&channel, opts(), &[chunk("forbidden", "a.txt", "x\n")])
        .await
        .expect_err("upload outside the scope");
    assert_code(
        &status,
        Code::PermissionDenied,
        "UploadFiles outside the scope",
    );
    upload(&channel, opts(), &[chunk("allowed", "a.txt", "x\n")])
        .await
        .expect("upload inside the scope");

    // Nothing of "forbidden" exists; the allowed session works.
    let everything = token("root", Role::Observer, None, 3600);
    let status = get_snapshot(&channel, Some(&everything), "forbidden")
        .await
        .expect_err("no such session");
    assert_code(&status, Code::NotFound, "the refused calls created nothing");
    ann.recv_matching(|m| matches!(m.payload, Some(Payload::File(_))))
        .await;
    let sequence = ann.edit(Op::Replace, "a.txt", 0, "inside").await;
    ann.outcome(sequence).await.ack();
    watcher
        .recv_matching(|m| matches!(&m.payload, Some(Payload::Edit(e)) if e.content == "inside"))
        .await;
    canary.check().await;
}

#[tokio::test]
async fn the_token_subject_is_the_identity() {
    let server = auth_server().await;
    let mut canary = Canary::start(&server).await;
    let channel = server.channel().await;
    let alice = token("alice", Role::Author, None, 3600);

    // A first message for someone else ends the call.
    let (messages, status) = session_status(
        &channel,
        auth_options(Some(&alice)),
        &join_message("identity", "mallory"),
    )
    .await;
    assert_code(
        &status,
        Code::PermissionDenied,
        "first message as another user",
    );
    assert!(messages.is_empty(), "{messages:?}");
    assert_eq!(
        server.stats().await.participants,
        2,
        "only the canary joined"
    );

    // An empty user_id means the token's subject.
    let (mut alice_p, joined) = Participant::join(&channel, Some(&alice), "identity", "").await;
    assert_eq!(
        joined.joined.role,
        codereview::pb::codereview::Role::Author as i32
    );
    let (mut bob, _) = Participant::join(
        &server.channel().await,
        Some(&token("bob", Role::Author, None, 3600)),
        "identity",
        "bob",
    )
    .await;
    let presence = alice_p
        .recv_matching(|m| matches!(m.payload, Some(Payload::Presence(_))))
        .await;
    assert_eq!(presence.user_id, "bob");

    // A later message for someone else: per-message PERMISSION_DENIED.
    let version = alice_p.version;
    alice_p
        .send_raw(SessionMessage {
            user_id: "mallory".into(),
            client_sequence: 100,
            payload: Some(edit(Op::Replace, "f.txt", 0, "as mallory", version)),
            ..SessionMessage::default()
        })
        .await
        .expect("send");
    let error = alice_p.outcome(100).await.error();
    assert_eq!(error.code, Code::PermissionDenied as i32, "{error:?}");

    // The stream stays open and the impersonation was not applied.
    let sequence = alice_p
        .send(edit(Op::Replace, "f.txt", 0, "as alice", version))
        .await;
    alice_p.outcome(sequence).await.ack();
    let seen = bob
        .recv_matching(|m| matches!(m.payload, Some(Payload::Edit(_))))
        .await;
    assert_eq!(as_edit(&seen).unwrap().content, "as alice");
    assert_eq!(seen.user_id, "alice");
    let snapshot = get_snapshot(&channel, Some(&alice), "identity")
        .await
        .unwrap();
    assert_eq!(snapshot.files[0].lines, vec!["as alice".to_owned()]);
    alice_p.assert_open().await;
    canary.check().await;
}

// ---------------------------------------------------------------------------
// Roles.

#[tokio::test]
async fn a_reviewer_may_comment_and_move_a_cursor_but_not_edit() {
    let server = auth_server().await;
    let mut canary = Canary::start(&server).await;
    let mut author = Participant::join_server(&server, "roles-r", "ann", Role::Author).await;
    let mut reviewer = Participant::join_server(&server, "roles-r", "rev", Role::Reviewer).await;
    let sequence = author.edit(Op::Replace, "f.txt", 0, "line zero").await;
    author.outcome(sequence).await.ack();
    reviewer.recv_edit("line zero").await;

    // Edit: refused, per message.
    let sequence = reviewer.edit(Op::Replace, "f.txt", 0, "by reviewer").await;
    let error = reviewer.outcome(sequence).await.error();
    assert_eq!(error.code, Code::PermissionDenied as i32, "{error:?}");
    for op in [Op::Insert, Op::Delete] {
        let sequence = reviewer.edit(op, "f.txt", 0, "by reviewer").await;
        assert_eq!(
            reviewer.outcome(sequence).await.code(),
            Code::PermissionDenied as i32
        );
    }

    // Comment and cursor: accepted and seen by the author.
    let sequence = reviewer.send(comment("f.txt", 0, "looks odd")).await;
    let ack = reviewer.outcome(sequence).await.ack();
    assert!(!ack.comment_id.is_empty());
    author
        .recv_matching(|m| matches!(&m.payload, Some(Payload::Comment(c)) if c.text == "looks odd"))
        .await;
    let sequence = reviewer.send(cursor("f.txt", 0, 3)).await;
    reviewer.outcome(sequence).await.ack();
    author
        .recv_matching(|m| {
            matches!(&m.payload, Some(Payload::Cursor(c)) if c.column == 3) && m.user_id == "rev"
        })
        .await;

    // Uploading is the author's.
    let rev_token = token("rev", Role::Reviewer, None, 3600);
    let status = upload(
        reviewer.link(),
        auth_options(Some(&rev_token)),
        &[chunk("roles-r", "g.txt", "x\n")],
    )
    .await
    .expect_err("a reviewer upload");
    assert_code(&status, Code::PermissionDenied, "reviewer upload");

    // Nothing the reviewer tried to change changed; both streams stay open.
    let snapshot = get_snapshot(reviewer.link(), Some(&rev_token), "roles-r")
        .await
        .unwrap();
    assert_eq!(snapshot.files.len(), 1);
    assert_eq!(snapshot.files[0].lines, vec!["line zero".to_owned()]);
    let sequence = author.edit(Op::Replace, "f.txt", 0, "still flowing").await;
    author.outcome(sequence).await.ack();
    reviewer.recv_edit("still flowing").await;
    reviewer.assert_open().await;
    canary.check().await;
}

#[tokio::test]
async fn an_observer_may_only_watch() {
    let server = auth_server().await;
    let mut canary = Canary::start(&server).await;
    let mut author = Participant::join_server(&server, "roles-o", "ann", Role::Author).await;
    let mut observer = Participant::join_server(&server, "roles-o", "obs", Role::Observer).await;
    let obs_token = token("obs", Role::Observer, None, 3600);

    for (what, payload) in [
        ("edit", edit(Op::Replace, "f.txt", 0, "by observer", 0)),
        ("comment", comment("f.txt", 0, "by observer")),
        ("cursor", cursor("f.txt", 0, 1)),
    ] {
        let sequence = observer.send(payload).await;
        let error = observer.outcome(sequence).await.error();
        assert_eq!(
            error.code,
            Code::PermissionDenied as i32,
            "observer {what}: {error:?}"
        );
    }
    let status = upload(
        observer.link(),
        auth_options(Some(&obs_token)),
        &[chunk("roles-o", "g.txt", "x\n")],
    )
    .await
    .expect_err("an observer upload");
    assert_code(&status, Code::PermissionDenied, "observer upload");

    // Watching works, on the stream and with WatchSession.
    let mut watcher = watch(
        observer.link(),
        Some(&obs_token),
        WatchRequest {
            session_id: "roles-o".into(),
            ..WatchRequest::default()
        },
    )
    .await;
    watcher
        .recv_matching(|m| {
            matches!(&m.payload, Some(Payload::Notice(n)) if n.kind == NoticeKind::CaughtUp as i32)
        })
        .await;
    let sequence = author.edit(Op::Replace, "f.txt", 0, "authored").await;
    author.outcome(sequence).await.ack();
    observer.recv_edit("authored").await;
    watcher
        .recv_matching(|m| matches!(&m.payload, Some(Payload::Edit(e)) if e.content == "authored"))
        .await;
    let snapshot = get_snapshot(observer.link(), Some(&obs_token), "roles-o")
        .await
        .expect("an observer may take a snapshot");
    assert_eq!(snapshot.files[0].lines, vec!["authored".to_owned()]);
    assert!(snapshot.comments.is_empty(), "{:?}", snapshot.comments);
    observer.assert_open().await;
    canary.check().await;
}

#[tokio::test]
async fn an_author_may_upload() {
    let server = auth_server().await;
    let mut canary = Canary::start(&server).await;
    let mut reviewer = Participant::join_server(&server, "roles-a", "rev", Role::Reviewer).await;
    let channel = server.channel().await;
    let ann = token("ann", Role::Author, None, 3600);
    let summary = upload(
        &channel,
        auth_options(Some(&ann)),
        &[
            chunk("roles-a", "a.rs", "fn main() {\n"),
            chunk("roles-a", "a.rs", "}\n"),
            chunk("roles-a", "b.rs", "// b\n"),
        ],
    )
    .await
    .expect("an author upload");
    assert_eq!((summary.files, summary.lines), (2, 3));
    let file = reviewer
        .recv_matching(|m| matches!(&m.payload, Some(Payload::File(f)) if f.file_path == "a.rs"))
        .await;
    let Some(Payload::File(file)) = file.payload else {
        unreachable!()
    };
    assert_eq!(file.lines, vec!["fn main() {".to_owned(), "}".to_owned()]);
    reviewer.assert_open().await;
    canary.check().await;
}

// ---------------------------------------------------------------------------
// Mid-stream refresh.

#[tokio::test]
async fn a_refreshed_token_outlives_the_first_and_an_unrefreshed_stream_is_ended() {
    let server = auth_server().await;
    let mut canary = Canary::start(&server).await;
    let mut witness = Participant::join_server(&server, "refresh", "wit", Role::Author).await;

    // Two participants whose tokens live 3 s.
    let short_alice = token("alice", Role::Author, None, 3);
    let short_bob = token("bob", Role::Author, None, 3);
    let first_expiry_ms = (unix_now() + 3) * 1000;
    let (mut alice, joined_a) = Participant::join(
        &server.channel().await,
        Some(&short_alice),
        "refresh",
        "alice",
    )
    .await;
    let (mut bob, joined_b) =
        Participant::join(&server.channel().await, Some(&short_bob), "refresh", "bob").await;
    for joined in [&joined_a, &joined_b] {
        assert!(
            (joined.joined.token_expires_at - first_expiry_ms).abs() <= 1000,
            "Joined.token_expires_at {} vs {first_expiry_ms}",
            joined.joined.token_expires_at
        );
    }

    // Both are warned before their token expires.
    for p in [&mut alice, &mut bob] {
        let joined = if p.user == "alice" {
            &joined_a
        } else {
            &joined_b
        };
        let (message, notice) = p.recv_notice(NoticeKind::TokenExpiring).await;
        assert_eq!(notice.at, joined.joined.token_expires_at, "{notice:?}");
        assert!(
            message.timestamp < notice.at,
            "the warning (stamped {}) must come before the expiry {}",
            message.timestamp,
            notice.at
        );
    }

    // Alice refreshes; Bob does not.
    let fresh = token("alice", Role::Author, None, 60);
    let sequence = alice.send(token_refresh(&fresh)).await;
    let (_, refreshed) = alice.recv_notice(NoticeKind::TokenRefreshed).await;
    assert!(
        refreshed.at > joined_a.joined.token_expires_at,
        "{refreshed:?}"
    );
    assert!(
        !alice
            .log
            .iter()
            .any(|m| as_error(m).is_some_and(|e| e.client_sequence == sequence)),
        "the refresh was answered with an error: {:?}",
        alice.log
    );

    // Bob is ended with UNAUTHENTICATED once his token has expired.
    let status = bob.until_end_within(Duration::from_secs(4) + STEP).await.1;
    assert_code(&status, Code::Unauthenticated, "unrefreshed stream");
    assert!(
        unix_now_ms() >= joined_b.joined.token_expires_at,
        "Bob was ended before his token expired"
    );
    witness
        .recv_matching(|m| m.user_id == "bob" && matches!(m.payload, Some(Payload::Presence(_))))
        .await;

    // Alice, past the first token's expiry, keeps both directions.
    let sequence = witness.edit(Op::Replace, "f.txt", 0, "after expiry").await;
    witness.outcome(sequence).await.ack();
    alice.recv_edit("after expiry").await;
    let sequence = alice
        .edit(Op::Replace, "f.txt", 1, "alice after expiry")
        .await;
    alice.outcome(sequence).await.ack();
    witness.recv_edit("alice after expiry").await;
    alice.assert_open().await;
    canary.check().await;
}

#[tokio::test]
async fn a_refresh_with_someone_elses_token_is_refused_and_the_stream_stays() {
    let server = auth_server().await;
    let mut canary = Canary::start(&server).await;
    let mut witness = Participant::join_server(&server, "refresh-x", "wit", Role::Author).await;
    let alice_token = token("alice", Role::Author, None, 3600);
    let (mut alice, _) = Participant::join(
        &server.channel().await,
        Some(&alice_token),
        "refresh-x",
        "alice",
    )
    .await;

    let cases = [
        (
            "another user's token",
            token("bob", Role::Author, None, 3600),
            Code::PermissionDenied,
        ),
        (
            "a token for other sessions",
            token("alice", Role::Author, Some(&["elsewhere"]), 3600),
            Code::PermissionDenied,
        ),
        ("garbage", "not-a-token".to_owned(), Code::Unauthenticated),
        (
            "an expired token",
            token("alice", Role::Author, None, -10),
            Code::Unauthenticated,
        ),
    ];
    for (what, fresh, code) in cases {
        let sequence = alice.send(token_refresh(&fresh)).await;
        let error = alice.outcome(sequence).await.error();
        assert_eq!(error.code, code as i32, "refresh with {what}: {error:?}");
    }
    assert!(
        !alice.log.iter().any(|m| matches!(
            &m.payload,
            Some(Payload::Notice(n)) if n.kind == NoticeKind::TokenRefreshed as i32
        )),
        "a refused refresh must not be confirmed"
    );

    // The stream is intact and still alice's.
    let sequence = alice.edit(Op::Replace, "f.txt", 0, "still alice").await;
    alice.outcome(sequence).await.ack();
    let seen = witness.recv_edit("still alice").await;
    assert_eq!(seen.content, "still alice");
    let sequence = witness.edit(Op::Replace, "f.txt", 0, "to alice").await;
    witness.outcome(sequence).await.ack();
    alice.recv_edit("to alice").await;
    alice.assert_open().await;
    canary.check().await;
}

// ---------------------------------------------------------------------------
// Gaps found (ignored until the server is fixed; see the ignore reasons).

#[tokio::test]
async fn a_watcher_whose_token_expires_is_ended_with_unauthenticated() {
    let server = auth_server().await;
    let mut canary = Canary::start(&server).await;
    let mut author = Participant::join_server(&server, "watch-expiry", "ann", Role::Author).await;
    let short = token("obs", Role::Observer, None, 3);
    let expiry_ms = (unix_now() + 3) * 1000;
    let channel = server.channel().await;
    let mut watcher = watch(
        &channel,
        Some(&short),
        WatchRequest {
            session_id: "watch-expiry".into(),
            ..WatchRequest::default()
        },
    )
    .await;
    let joined = watcher
        .recv_matching(|m| matches!(m.payload, Some(Payload::Joined(_))))
        .await;
    let Some(Payload::Joined(joined)) = joined.payload else {
        unreachable!()
    };

    // Like a participant's, the watcher's stream must end once its token
    // has expired (the registry checks every second).
    let status = watcher
        .until_end_within(Duration::from_secs(4) + STEP)
        .await
        .1;
    assert_code(
        &status,
        Code::Unauthenticated,
        "watcher after its token expired",
    );
    assert!(unix_now_ms() >= expiry_ms, "ended before the expiry");
    assert!(
        (joined.token_expires_at - expiry_ms).abs() <= 1000,
        "the watcher's Joined should announce the expiry: {joined:?}"
    );
    // And nothing written after the expiry reached it.
    let sequence = author.edit(Op::Replace, "f.txt", 0, "after expiry").await;
    author.outcome(sequence).await.ack();
    assert!(
        !watcher
            .log
            .iter()
            .any(|m| matches!(&m.payload, Some(Payload::Edit(e)) if e.content == "after expiry")),
        "an edit made after the token expired was delivered"
    );
    canary.check().await;
}

#[tokio::test]
async fn a_refresh_with_a_token_of_a_lesser_role_does_not_keep_the_old_rights() {
    let server = auth_server().await;
    let mut canary = Canary::start(&server).await;
    let mut witness =
        Participant::join_server(&server, "refresh-role", "wit", Role::Reviewer).await;
    let mut ann = Participant::join_server(&server, "refresh-role", "ann", Role::Author).await;

    // ann's rights are reduced to observer; her client presents the new token.
    let downgraded = token("ann", Role::Observer, None, 3600);
    let sequence = ann.send(token_refresh(&downgraded)).await;
    let reply = ann
        .recv_matching(|m| {
            as_error(m).is_some_and(|e| e.client_sequence == sequence)
                || matches!(
                    &m.payload,
                    Some(Payload::Notice(n)) if n.kind == NoticeKind::TokenRefreshed as i32
                )
        })
        .await;
    match as_error(&reply) {
        // Refusing a refresh that changes the role is one correct answer.
        Some(error) => assert_eq!(error.code, Code::PermissionDenied as i32, "{error:?}"),
        // Accepting it means the stream now has the observer's rights.
        None => {
            let sequence = ann
                .edit(Op::Replace, "f.txt", 0, "edited as observer")
                .await;
            let outcome = ann.outcome(sequence).await;
            assert_eq!(
                outcome.code(),
                Code::PermissionDenied as i32,
                "after refreshing with an observer token the stream still edits: {outcome:?}"
            );
            let next = witness.next_within(QUIET).await;
            assert!(
                !matches!(&next, Next::Message(m) if as_edit(m).is_some()),
                "the edit was broadcast: {next:?}"
            );
        }
    }
    ann.assert_open().await;
    canary.check().await;
}

/// A token with raw claims `payload`, signed with the servers' secret.
fn signed_claims(payload: &str) -> String {
    let header = base64::encode(br#"{"alg":"HS256","typ":"JWT"}"#, Alphabet::UrlSafe);
    let body = base64::encode(payload.as_bytes(), Alphabet::UrlSafe);
    let input = format!("{header}.{body}");
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, SECRET);
    let tag = ring::hmac::sign(&key, input.as_bytes());
    format!(
        "{input}.{}",
        base64::encode(tag.as_ref(), Alphabet::UrlSafe)
    )
}

/// Bug (issue 11, item 13): a token whose `exp` was a float was refused as
/// "the token has no expiry", and so was one whose `exp` was a string. RFC
/// 7519 NumericDates may be non-integer: such a token is valid (truncated
/// to whole seconds); a string is refused, naming the claim and what it
/// must be.
#[tokio::test]
async fn a_fractional_expiry_is_valid_and_a_string_expiry_is_named() {
    let server = auth_server().await;
    let channel = server.channel().await;
    let now = unix_now();
    let fractional = signed_claims(&format!(
        r#"{{"sub":"ann","role":"author","sessions":"*","iat":{now}.25,"exp":{}.5}}"#,
        now + 3600
    ));
    let summary = upload(
        &channel,
        auth_options(Some(&fractional)),
        &[chunk("numeric-dates", "a.txt", "x\n")],
    )
    .await
    .expect("a token with a fractional exp is valid");
    assert_eq!(summary.files, 1);

    let string = signed_claims(&format!(
        r#"{{"sub":"ann","role":"author","sessions":"*","exp":"{}"}}"#,
        now + 3600
    ));
    let status = upload(
        &channel,
        auth_options(Some(&string)),
        &[chunk("numeric-dates", "a.txt", "y\n")],
    )
    .await
    .expect_err("a token with a string exp is refused");
    assert_code(&status, Code::Unauthenticated, "a string exp");
    assert_eq!(
        status.message(),
        "the token's exp must be a number (seconds since the Unix epoch)"
    );
}

/// Only roles that may write create sessions: an observer token (even one
/// for every session) watching or joining ids that do not exist gets
/// NOT_FOUND and leaves nothing behind, so it cannot fill `--max-sessions`
/// and lock the authors out.
#[tokio::test]
async fn observers_cannot_create_sessions() {
    let server = auth_server().await;
    let channel = server.channel().await;
    let obs_token = token("obs", Role::Observer, None, 3600);
    for i in 0..20 {
        let id = format!("made-up-{i}");
        let mut watcher = watch(
            &channel,
            Some(&obs_token),
            WatchRequest {
                session_id: id.clone(),
                ..WatchRequest::default()
            },
        )
        .await;
        let status = watcher.end().await;
        assert_code(&status, Code::NotFound, "watching an unknown session");
        let status = Participant::try_join(&channel, Some(&obs_token), join_message(&id, "obs"))
            .await
            .err()
            .expect("an observer joining an unknown session");
        assert_code(
            &status,
            Code::NotFound,
            "an observer joining an unknown session",
        );
    }
    assert_eq!(server.stats().await.sessions, 0, "no session was created");
    // A reviewer (who may comment) creates one; then the observer may join and watch it.
    let rev_token = token("rev", Role::Reviewer, None, 3600);
    let (_reviewer, _) = Participant::join(&channel, Some(&rev_token), "real", "rev").await;
    let (_observer, joined) = Participant::join(&channel, Some(&obs_token), "real", "obs").await;
    assert_eq!(
        joined.joined.role,
        codereview::pb::codereview::Role::Observer as i32
    );
    let mut watcher = watch(
        &channel,
        Some(&obs_token),
        WatchRequest {
            session_id: "real".into(),
            ..WatchRequest::default()
        },
    )
    .await;
    watcher
        .recv_matching(|m| {
            matches!(&m.payload, Some(Payload::Notice(n)) if n.kind == NoticeKind::CaughtUp as i32)
        })
        .await;
}
