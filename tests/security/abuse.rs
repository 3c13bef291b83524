//! Security, part 4: hostile HTTP/2 and hostile bytes, on the raw HTTP/2
//! client. During each abuse a well-behaved [`Canary`] pair keeps editing
//! and reading in its own session on the same server (every edit must
//! arrive, in order); afterwards a new client must connect and be served.
//! Memory is judged by counting what the server holds (registry and wire
//! figures), never by timing.

use std::net::SocketAddr;
use std::time::Duration;

use codereview::grpc::server::ServerConfig;
use codereview::pb::codereview::{SessionMessage, code_edit::Op, session_message::Payload};
use codereview::pb::health::HealthCheckRequest;
use codereview::pb::paths::COLLABORATIVE_SESSION;
use codereview::review::limits::Limits;
use codereview::review::roles::Role;
use kit::h2raw::{
    self, CANCEL, CONTINUATION, Conn, END_HEADERS, ENHANCE_YOUR_CALM, Event, HEADERS, PING,
    PREFACE, PROTOCOL_ERROR, REFUSED_STREAM, RST_STREAM, SETTINGS, SETTINGS_HEADER_TABLE_SIZE,
    SETTINGS_INITIAL_WINDOW_SIZE, SETTINGS_MAX_CONCURRENT_STREAMS, SETTINGS_MAX_FRAME_SIZE,
    encode_frame, encode_headers, grpc_encode, grpc_request_headers, grpc_status, header,
    settings_payload,
};
use kit::participant::{Participant, health_check};
use kit::payloads::{as_edit, edit, join_message};
use kit::server::{TestServer, loopback};
use kit::{QUIET, STEP, eventually, within};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::canary::{Canary, Pump, Sample, Sampler};
use crate::{limits, server_config};

/// A plaintext review server with the interop service too.
async fn server_with(config: ServerConfig, limits: Limits) -> TestServer {
    TestServer::start(loopback(|c| {
        c.server = config;
        c.limits = limits;
        c.interop = true;
    }))
    .await
}

/// After an abuse: the canary's rounds all succeeded, it still works, and a
/// brand-new client connects and is served (health, and a session).
async fn assert_still_serving(server: &TestServer, pump: Pump) -> Canary {
    let mut canary = pump.stop().await;
    assert!(
        canary.rounds() >= 2,
        "the canary did not run during the abuse"
    );
    canary.check().await;
    let channel = server.channel().await;
    assert_eq!(
        health_check(&channel)
            .await
            .expect("a new client is served"),
        1
    );
    let (mut p, _) = Participant::join(&channel, None, "after-abuse", "newcomer").await;
    let sequence = p.edit(Op::Replace, "f.txt", 0, "hello").await;
    p.outcome(sequence).await.ack();
    canary
}

/// Reads until the server closes the connection or `wait` passes; whether
/// it closed.
async fn closed_within(conn: &mut Conn, wait: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match conn.read_frame_within(left).await {
            Ok(Some(_)) => {}
            Ok(None) => return true,
            Err(_) => return false,
        }
    }
}

/// Reads a plain socket until the peer closes; the bytes read.
async fn read_to_close(tcp: &mut TcpStream, wait: Duration) -> Vec<u8> {
    let mut out = Vec::new();
    within(wait, "the server to close the socket", async {
        let mut buf = [0u8; 4096];
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    out
}

/// Keeps writing `frames` (repeated) on `conn`'s socket without reading,
/// up to `total` bytes; returns how much was written before the server
/// stopped reading (no progress for a second) or closed the connection. A
/// server that answers every frame but buffers at most a bounded amount of
/// answers must stop reading long before `total` (kernel buffers are a few
/// MiB): this counts bytes, it does not time anything.
async fn write_until_stalled(conn: &mut Conn, frames: &[u8], total: usize) -> usize {
    let tcp = conn.socket();
    let mut written = 0;
    while written < total {
        match tokio::time::timeout(Duration::from_secs(1), tcp.write(frames)).await {
            Ok(Ok(n)) if n > 0 => written += n,
            Ok(_) => break,  // closed by the server
            Err(_) => break, // stalled: the server stopped reading
        }
    }
    written
}

/// Asserts nothing the registry holds grew beyond the canary's own traffic
/// and that no gRPC bytes piled up on the wire.
fn assert_flat(samples: &[Sample], baseline: &Sample, what: &str) {
    assert!(!samples.is_empty());
    for s in samples {
        assert_eq!(
            s.registry.members, baseline.registry.members,
            "{what}: members changed: {s:?}"
        );
        assert!(
            s.registry_bytes() <= baseline.registry_bytes() + 256 * 1024,
            "{what}: the registry grew: {s:?} (baseline {baseline:?})"
        );
        assert!(
            s.inbound_buffered + s.outbound_buffered <= 64 * 1024,
            "{what}: gRPC bytes piled up: {s:?}"
        );
    }
}

async fn sample_now(server: &TestServer) -> Sample {
    let (connections, streams, inbound_buffered, outbound_buffered) = server.wire();
    Sample {
        registry: server.stats().await,
        connections,
        streams,
        inbound_buffered,
        outbound_buffered,
        outbound_unwritten: server
            .telemetry
            .stats
            .outbound_unwritten
            .load(std::sync::atomic::Ordering::Relaxed),
    }
}

// ---------------------------------------------------------------------------
// A raw participant that stops reading.

/// A CollaborativeSession stream on the raw HTTP/2 client, announcing a tiny
/// stream window and never giving it back: after its first `window` bytes
/// the server cannot send it anything.
pub struct StalledParticipant {
    pub conn: Conn,
    pub stream: u32,
}

impl StalledParticipant {
    pub async fn join(
        addr: SocketAddr,
        window: u32,
        token: Option<&str>,
        session: &str,
        user: &str,
    ) -> StalledParticipant {
        let mut conn =
            Conn::connect_with(addr, &[(h2raw::SETTINGS_INITIAL_WINDOW_SIZE, window)]).await;
        conn.auto_window_update = false;
        let mut headers = h2raw::grpc_request_headers(COLLABORATIVE_SESSION);
        if let Some(token) = token {
            headers.push(("authorization".into(), format!("Bearer {token}")));
        }
        let stream = conn.open(&headers, false).await;
        let first = h2raw::grpc_encode(&join_message(session, user));
        assert!(
            conn.send_data(stream, &first, false).await,
            "stalled participant: the join was refused"
        );
        StalledParticipant { conn, stream }
    }

    /// A participant that never reads and advertises the largest windows
    /// HTTP/2 allows (stream and connection), on a socket with a small
    /// kernel receive buffer: whatever the server sends it piles up in the
    /// server, as far as the server lets it.
    pub async fn join_wide_open(
        addr: SocketAddr,
        token: Option<&str>,
        session: &str,
        user: &str,
    ) -> StalledParticipant {
        const MAX_WINDOW: u32 = (1 << 31) - 1;
        let mut conn = Conn::connect_with_receive_buffer(
            addr,
            &[(h2raw::SETTINGS_INITIAL_WINDOW_SIZE, MAX_WINDOW)],
            4096,
        )
        .await;
        conn.auto_window_update = false;
        conn.send_window_update(0, MAX_WINDOW - 65_535).await;
        let mut headers = h2raw::grpc_request_headers(COLLABORATIVE_SESSION);
        if let Some(token) = token {
            headers.push(("authorization".into(), format!("Bearer {token}")));
        }
        let stream = conn.open(&headers, false).await;
        let first = h2raw::grpc_encode(&join_message(session, user));
        assert!(
            conn.send_data(stream, &first, false).await,
            "stalled participant: the join was refused"
        );
        StalledParticipant { conn, stream }
    }

    /// Starts reading again: opens the windows wide and reads the stream to
    /// its end. Returns the messages and the grpc-status.
    pub async fn read_to_end(&mut self) -> (Vec<SessionMessage>, u32) {
        use prost::Message;
        self.conn.auto_window_update = true;
        self.conn.send_window_update(0, 1 << 30).await;
        self.conn.send_window_update(self.stream, 1 << 30).await;
        let events = self.conn.collect_stream_within(self.stream, STEP * 2).await;
        let messages = h2raw::messages(&events)
            .into_iter()
            .map(|m| SessionMessage::decode(m).expect("valid SessionMessage"))
            .collect();
        (messages, h2raw::grpc_status(&events))
    }
}

// ---------------------------------------------------------------------------
// Frame floods.

#[tokio::test]
async fn rapid_reset_is_cut_off_and_the_server_keeps_serving() {
    let config = server_config();
    let max_streams = config.max_concurrent_streams as i64;
    let server = server_with(config, limits()).await;
    let canary = Canary::start(&server).await;
    let baseline = sample_now(&server).await;
    let pump = canary.pump();
    let sampler = Sampler::start(&server);

    // 1000 streams opened and reset at once, in one write.
    let mut conn = Conn::connect(server.addr).await;
    let block = encode_headers(&grpc_request_headers(COLLABORATIVE_SESSION));
    let mut flood = Vec::new();
    for i in 0..1000u32 {
        let id = 1 + 2 * i;
        flood.extend(encode_frame(HEADERS, END_HEADERS, id, &block));
        flood.extend(encode_frame(RST_STREAM, 0, id, &CANCEL.to_be_bytes()));
    }
    within(STEP, "writing the flood", conn.write_raw(&flood)).await;
    let closed = closed_within(&mut conn, STEP).await;
    let samples = sampler.stop().await;

    if closed {
        let goaway = conn
            .goaway
            .clone()
            .unwrap_or_else(|| panic!("closed without GOAWAY: {}", conn.describe_log()));
        assert_eq!(goaway.code, ENHANCE_YOUR_CALM, "{goaway:?}");
    } else {
        // Kept open: then it must stay bounded by the stream limit.
        for s in &samples {
            assert!(
                s.streams <= max_streams + baseline.streams,
                "streams grew past the limit while the connection stayed: {s:?}"
            );
        }
    }
    for s in &samples {
        assert_eq!(s.registry.members, baseline.registry.members, "{s:?}");
    }
    drop(conn);
    server
        .wait_for_connections("the abusive connection to go", |n| {
            n == baseline.connections
        })
        .await;
    eventually(STEP, "the reset streams to be gone", || async {
        let (_, streams, ..) = server.wire();
        if streams == baseline.streams {
            Ok(())
        } else {
            Err(format!("{streams} streams"))
        }
    })
    .await;
    assert_still_serving(&server, pump).await;
}

#[tokio::test]
async fn a_ping_flood_leaves_the_server_bounded_and_serving() {
    let server = server_with(server_config(), limits()).await;
    let canary = Canary::start(&server).await;
    let baseline = sample_now(&server).await;
    let pump = canary.pump();
    let sampler = Sampler::start(&server);

    let mut conn = Conn::connect(server.addr).await;
    let mut flood = Vec::with_capacity(10_000 * 17);
    for i in 0..10_000u64 {
        flood.extend(encode_frame(PING, 0, 0, &i.to_be_bytes()));
    }
    // Written without reading a byte; the server may stop reading (then the
    // write stalls) or close the connection: both are fine, unbounded
    // buffering is not.
    let _ = tokio::time::timeout(STEP, conn.write_raw(&flood)).await;

    // The connection, if still open, answers each PING once (no more).
    if !conn.is_eof() {
        let mut answered = 0;
        while let Ok(Some(frame)) = conn.read_frame_within(QUIET).await {
            if frame.kind == PING && frame.is_ack() {
                answered += 1;
            }
        }
        assert!(answered <= 10_000, "{answered} PING ACKs");
    }

    // Keep flooding without ever reading: the server must stop reading
    // (its unsent answers are bounded) or close the connection.
    let total = 256 << 20;
    let written = write_until_stalled(&mut conn, &flood, total).await;
    assert!(
        written < total,
        "the server read {written} bytes of PINGs it could not answer"
    );
    eprintln!("PING flood: the server stopped reading after {written} unanswerable bytes");
    let samples = sampler.stop().await;
    assert_flat(&samples, &baseline, "PING flood");
    drop(conn);
    server
        .wait_for_connections("the flooding connection to go", |n| {
            n == baseline.connections
        })
        .await;
    assert_still_serving(&server, pump).await;
}

#[tokio::test]
async fn a_settings_flood_leaves_the_server_bounded_and_serving() {
    let server = server_with(server_config(), limits()).await;
    let canary = Canary::start(&server).await;
    let baseline = sample_now(&server).await;
    let pump = canary.pump();
    let sampler = Sampler::start(&server);

    let mut conn = Conn::connect(server.addr).await;
    let mut flood = Vec::new();
    for i in 0..10_000u32 {
        let payload = settings_payload(&[
            (SETTINGS_HEADER_TABLE_SIZE, 4096 - (i % 2) * 4096),
            (SETTINGS_INITIAL_WINDOW_SIZE, 65_535 + i % 1000),
            (SETTINGS_MAX_FRAME_SIZE, 16_384 + i % 1000),
        ]);
        flood.extend(encode_frame(SETTINGS, 0, 0, &payload));
    }
    let _ = tokio::time::timeout(STEP, conn.write_raw(&flood)).await;
    let total = 256 << 20;
    let written = write_until_stalled(&mut conn, &flood, total).await;
    assert!(
        written < total,
        "the server read {written} bytes of SETTINGS it could not acknowledge"
    );
    eprintln!("SETTINGS flood: the server stopped reading after {written} bytes");
    let samples = sampler.stop().await;
    assert_flat(&samples, &baseline, "SETTINGS flood");
    drop(conn);
    server
        .wait_for_connections("the flooding connection to go", |n| {
            n == baseline.connections
        })
        .await;
    assert_still_serving(&server, pump).await;
}

// ---------------------------------------------------------------------------
// Header abuse.

#[tokio::test]
async fn a_huge_header_is_refused() {
    let config = server_config();
    assert_eq!(config.max_header_list_size, 16 * 1024);
    let server = server_with(config, limits()).await;
    let canary = Canary::start(&server).await;
    let pump = canary.pump();

    // A header list somewhat over the limit: that stream is refused (431 or
    // a reset), the connection lives on.
    let mut conn = Conn::connect(server.addr).await;
    let mut headers = grpc_request_headers(COLLABORATIVE_SESSION);
    headers.push(("x-big".into(), "b".repeat(20 * 1024)));
    let id = conn.next_stream_id();
    conn.send_headers(id, &headers, true).await;
    let events = conn.collect_stream(id).await;
    let refused = match events.first() {
        Some(Event::Headers(h, _)) => header(h, ":status") == Some("431"),
        Some(Event::Reset(code)) => *code == REFUSED_STREAM || *code == PROTOCOL_ERROR,
        _ => false,
    };
    assert!(refused, "oversized header list: {events:?}");
    let events = conn
        .call(
            "/grpc.health.v1.Health/Check",
            &grpc_encode(&HealthCheckRequest::default()),
        )
        .await;
    assert_eq!(grpc_status(&events), 0, "the same connection still serves");

    // A 1 MiB header value: the connection is closed with GOAWAY.
    let mut conn = Conn::connect(server.addr).await;
    let mut headers = grpc_request_headers(COLLABORATIVE_SESSION);
    headers.push(("x-huge".into(), "h".repeat(1024 * 1024)));
    let id = conn.next_stream_id();
    within(
        STEP,
        "sending the huge header",
        conn.send_headers(id, &headers, false),
    )
    .await;
    assert!(
        closed_within(&mut conn, STEP).await,
        "the connection stayed open: {}",
        conn.describe_log()
    );
    let goaway = conn
        .goaway
        .clone()
        .unwrap_or_else(|| panic!("no GOAWAY: {}", conn.describe_log()));
    assert!(
        goaway.code == ENHANCE_YOUR_CALM || goaway.code == 0x9, // COMPRESSION_ERROR
        "{goaway:?}"
    );
    assert!(
        !conn
            .log
            .iter()
            .any(|f| f.kind == HEADERS && f.stream_id == id),
        "the huge request got a response: {}",
        conn.describe_log()
    );
    assert_still_serving(&server, pump).await;
}

#[tokio::test]
async fn endless_continuation_frames_close_the_connection() {
    let server = server_with(server_config(), limits()).await;
    let canary = Canary::start(&server).await;
    let baseline = sample_now(&server).await;
    let pump = canary.pump();

    let mut conn = Conn::connect(server.addr).await;
    let id = conn.next_stream_id();
    let mut flood = encode_frame(
        HEADERS,
        0,
        id,
        &encode_headers(&grpc_request_headers(COLLABORATIVE_SESSION)),
    );
    // Each CONTINUATION holds one small, valid header; none ends the block.
    let fragment = encode_headers(&[("x-c".to_owned(), "v".to_owned())]);
    for _ in 0..10_000 {
        flood.extend(encode_frame(CONTINUATION, 0, id, &fragment));
    }
    let _ = tokio::time::timeout(STEP, conn.write_raw(&flood)).await;
    assert!(
        closed_within(&mut conn, STEP).await,
        "the connection stayed open: {}",
        conn.describe_log()
    );
    let goaway = conn
        .goaway
        .clone()
        .unwrap_or_else(|| panic!("no GOAWAY: {}", conn.describe_log()));
    assert_eq!(goaway.code, ENHANCE_YOUR_CALM, "{goaway:?}");
    assert_eq!(
        sample_now(&server).await.registry.members,
        baseline.registry.members
    );
    assert_still_serving(&server, pump).await;
}

// ---------------------------------------------------------------------------
// Slow and silent clients.

#[tokio::test]
async fn a_client_that_never_reads_is_ended_and_the_server_stays_bounded() {
    let limits = Limits {
        outbox_bytes: 64 * 1024,
        rate_per_second: 0.0,
        ..limits()
    };
    let outbox_limit = limits.outbox_bytes;
    let batch = 16 * 1024;
    let server = TestServer::start(loopback(|c| {
        c.limits = limits;
        c.batch_bytes = batch;
    }))
    .await;
    let canary = Canary::start(&server).await;
    let pump = canary.pump();
    let baseline = server.stats().await;
    let sampler = Sampler::start(&server);

    let mut writer = Participant::join_server(&server, "slow", "writer", Role::Author).await;
    let mut reader = Participant::join_server(&server, "slow", "reader", Role::Reviewer).await;
    let mut stalled = StalledParticipant::join(server.addr, 1024, None, "slow", "stalled").await;
    server
        .wait_for_stats("the stalled participant to join", |s| {
            s.participants == baseline.participants + 3
        })
        .await;

    // Edits flow until the stalled participant is ended.
    let line = "e".repeat(900);
    let mut acked = Vec::new();
    let mut removed = false;
    for round in 0..200 {
        let sent: Vec<(u64, String)> = (0..10)
            .map(|i| {
                let n = round * 10 + i;
                let content = format!("{n:05} {line}");
                let sequence = writer.queue(Payload::Edit(codereview::pb::codereview::CodeEdit {
                    file_path: "f.txt".into(),
                    line_number: n % 20,
                    content: content.clone(),
                    version: 0,
                    op: Op::Replace as i32,
                }));
                (sequence, content)
            })
            .collect();
        writer.flush().await;
        for (sequence, content) in sent {
            writer.outcome(sequence).await.ack();
            acked.push(content);
        }
        let stats = server.stats().await;
        if stats.participants == baseline.participants + 2 {
            removed = true;
            break;
        }
    }
    assert!(removed, "the stalled participant was never ended");
    // The well-behaved reader got every edit, in order.
    for content in &acked {
        reader.recv_edit(content).await;
    }
    let samples = sampler.stop().await;
    let max_event = 1024 + 512;
    for s in &samples {
        assert!(
            s.registry.outbox_bytes <= s.registry.members.max(1) * (outbox_limit + max_event),
            "outboxes over their bound: {s:?}"
        );
        assert!(
            s.outbound_buffered as usize <= s.streams.max(1) as usize * (batch + max_event),
            "outbound bytes over the batch bound: {s:?}"
        );
    }

    // When it reads again: whatever was already on its way, then
    // RESOURCE_EXHAUSTED.
    let (messages, status) = stalled.read_to_end().await;
    assert_eq!(
        status, 8,
        "the stalled participant's status; got {messages:?}"
    );
    let edits: Vec<&str> = messages
        .iter()
        .filter_map(as_edit)
        .map(|e| e.content.as_str())
        .collect();
    assert!(
        edits.len() < acked.len() && edits.iter().zip(&acked).all(|(a, b)| a == b),
        "the stalled participant should get an in-order prefix of the edits, then the status"
    );
    reader.assert_open().await;
    writer.assert_open().await;
    assert_still_serving(&server, pump).await;
}

/// Many participants that never read, each advertising the largest HTTP/2
/// windows (so h2 would buffer up to its per-stream cap for each): the
/// process-wide outbound budget closes the connections holding the most
/// until the rest fit, while the well-behaved participants (a writer and a
/// reader in the same session, and the canary) keep working.
#[tokio::test]
async fn the_outbound_budget_closes_the_readers_holding_the_most() {
    let budget = 512 * 1024;
    let send_buffer = 64 * 1024;
    // Small batches: what a stream can queue before the shedding takes
    // effect stays small next to the budget.
    let batch = 2 * 1024;
    let stallers = 16;
    let config = ServerConfig {
        max_send_buffer_size: send_buffer,
        max_outbound_buffer: budget,
        // Only the budget may close the stallers' connections here.
        keepalive_interval: Duration::ZERO,
        ..server_config()
    };
    let limits = Limits {
        rate_per_second: 0.0,
        ..limits()
    };
    let server = TestServer::start(loopback(|c| {
        c.server = config;
        c.limits = limits;
        c.batch_bytes = batch;
    }))
    .await;
    let canary = Canary::start(&server).await;
    let pump = canary.pump();
    let baseline = server.stats().await;
    let mut writer = Participant::join_server(&server, "budget", "writer", Role::Author).await;
    let mut reader = Participant::join_server(&server, "budget", "reader", Role::Reviewer).await;
    let mut stalled = Vec::new();
    for i in 0..stallers {
        let user = format!("stalled-{i}");
        stalled.push(StalledParticipant::join_wide_open(server.addr, None, "budget", &user).await);
    }
    server
        .wait_for_stats("every participant to join", |s| {
            s.participants == baseline.participants + 2 + stallers
        })
        .await;
    let (open_before, ..) = server.wire();
    let sampler = Sampler::start(&server);

    // Edits of ~2 KiB, each broadcast to every staller, until at least half
    // of them are closed (no more than 8 can each hold a full 64 KiB stream
    // buffer within 512 KiB), then as many again as fill the survivors'
    // buffers. Before the server holds anything, the kernel takes up to its
    // largest socket send buffer per connection: send enough to fill that
    // twice over before giving up.
    let kernel_send_buffer = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_wmem")
        .ok()
        .and_then(|text| text.split_whitespace().nth(2)?.parse::<usize>().ok())
        .unwrap_or(4 << 20);
    let line = "b".repeat(1900);
    let max_event = line.len() + 512;
    let round_bytes = 10 * line.len();
    let max_rounds = 2 * (kernel_send_buffer + send_buffer + batch) / round_bytes + 1;
    let fill_rounds = 2 * (send_buffer + batch) / round_bytes + 1;
    // The budget may be passed while the connections chosen are being
    // closed, by what the streams queue meanwhile: each queues at most one
    // batch (plus the event that overflows it) per turn of the runtime, and
    // the closing takes effect within two turns: allow four. Without the
    // budget the stallers alone would hold 16 x (64 + 4) KiB = 1.1 MiB.
    let slack = 4 * (stallers + 2) * (batch + max_event);
    let bound = (budget + slack) as i64;
    let mut acked = Vec::new();
    let mut closed = 0;
    let mut rounds_left = None;
    for round in 0..max_rounds {
        let sent: Vec<(u64, String)> = (0..10)
            .map(|i| {
                let n = round * 10 + i;
                let content = format!("{n:05} {line}");
                let payload = edit(Op::Replace, "f.txt", (n % 20) as i32, &content, 0);
                (writer.queue(payload), content)
            })
            .collect();
        writer.flush().await;
        for (sequence, content) in sent {
            writer.outcome(sequence).await.ack();
            acked.push(content);
        }
        let held = server.outbound_held();
        assert!(
            held <= bound,
            "after {} edits the server holds {held} outbound bytes, over the budget {budget} (+ {slack} in flight)",
            acked.len()
        );
        let (open, ..) = server.wire();
        closed = open_before - open;
        if closed >= stallers as i64 / 2 && rounds_left.is_none() {
            rounds_left = Some(fill_rounds);
        }
        if let Some(left) = rounds_left.as_mut() {
            *left -= 1;
            if *left == 0 {
                break;
            }
        }
    }
    assert!(
        closed >= stallers as i64 / 2,
        "only {closed} of {stallers} connections that never read were closed after {} edits; the server holds {} outbound bytes (budget {budget})",
        acked.len(),
        server.outbound_held()
    );
    // What stays open fits in the budget once the closed ones are released.
    eventually(
        STEP,
        "the outbound bytes held to fit in the budget",
        || async {
            let held = server.outbound_held();
            if held <= budget as i64 {
                Ok(())
            } else {
                Err(format!("{held} bytes held, budget {budget}"))
            }
        },
    )
    .await;
    let samples = sampler.stop().await;
    for s in &samples {
        assert!(
            s.outbound_held() <= bound,
            "outbound bytes held {} over the budget {budget} (+ {slack} in flight): {s:?}",
            s.outbound_held()
        );
    }
    let peak = samples.iter().map(Sample::outbound_held).max().unwrap_or(0);
    eprintln!(
        "outbound budget: {} samples, peak held {peak} / budget {budget}; {closed} of {stallers} stallers closed after {} edits",
        samples.len(),
        acked.len()
    );

    // The well-behaved participants were spared and missed nothing.
    for content in &acked {
        reader.recv_edit(content).await;
    }
    reader.assert_open().await;
    writer.assert_open().await;
    assert_still_serving(&server, pump).await;

    // The stallers still open count until they go; then every account is
    // back to zero.
    drop(stalled);
    eventually(STEP, "every outbound byte to be released", || async {
        let held = server.outbound_held();
        if held == 0 {
            Ok(())
        } else {
            Err(format!("{held} bytes held"))
        }
    })
    .await;
}

#[tokio::test]
async fn silent_connections_are_closed_after_the_handshake_timeout() {
    let handshake_timeout = Duration::from_secs(1);
    let server = server_with(
        ServerConfig {
            handshake_timeout,
            ..server_config()
        },
        limits(),
    )
    .await;
    let canary = Canary::start(&server).await;
    let (baseline, ..) = server.wire();
    let pump = canary.pump();

    let mut silent = Vec::new();
    for _ in 0..20 {
        silent.push(TcpStream::connect(server.addr).await.expect("connect"));
    }
    server
        .wait_for_connections("20 silent connections", |n| n == baseline + 20)
        .await;
    // Served meanwhile: a new client.
    let channel = server.channel().await;
    health_check(&channel)
        .await
        .expect("served while 20 sockets are silent");
    drop(channel);
    for (i, tcp) in silent.iter_mut().enumerate() {
        let bytes = read_to_close(tcp, handshake_timeout + STEP).await;
        assert!(bytes.is_empty(), "silent socket {i} received {bytes:?}");
    }
    server
        .wait_for_connections("the silent connections to be released", |n| n == baseline)
        .await;
    assert_still_serving(&server, pump).await;
}

/// The handshake timeout covers the whole client preface (RFC 9113 §3.4):
/// the magic, then a SETTINGS frame. Keepalive is off and the idle timeout
/// is minutes, so only the handshake deadline can close these connections.
#[tokio::test]
async fn a_preface_without_its_settings_frame_is_closed_at_the_handshake_timeout() {
    let server = server_with(
        ServerConfig {
            handshake_timeout: Duration::from_millis(500),
            keepalive_interval: Duration::ZERO,
            ..server_config()
        },
        limits(),
    )
    .await;
    let canary = Canary::start(&server).await;
    let (baseline, ..) = server.wire();
    let pump = canary.pump();

    let settings = encode_frame(
        SETTINGS,
        0,
        0,
        &settings_payload(&[(SETTINGS_MAX_CONCURRENT_STREAMS, 100)]),
    );
    let openings = [
        ("the magic alone", PREFACE.to_vec()),
        (
            "a SETTINGS header without its payload",
            [PREFACE, &settings[..9]].concat(),
        ),
        (
            "a SETTINGS frame missing its last byte",
            [PREFACE, &settings[..settings.len() - 1]].concat(),
        ),
    ];
    for (what, opening) in openings {
        let mut tcp = TcpStream::connect(server.addr).await.expect("connect");
        tcp.write_all(&opening).await.expect("write the opening");
        // A hang guard, not a speed check: without the deadline these stay
        // open for the idle timeout (5 minutes).
        let bytes = read_to_close(&mut tcp, STEP).await;
        assert!(
            bytes.len() >= 9 && bytes[3] == SETTINGS,
            "{what}: the server should have sent its SETTINGS before closing, got {bytes:?}"
        );
    }
    // A first frame other than SETTINGS is a connection error at once.
    let mut tcp = TcpStream::connect(server.addr).await.expect("connect");
    let ping_first = [PREFACE, &encode_frame(PING, 0, 0, &[7; 8])].concat();
    tcp.write_all(&ping_first).await.expect("write the opening");
    let bytes = read_to_close(&mut tcp, STEP).await;
    let frames = frame_kinds(&bytes);
    assert!(
        !frames.contains(&PING),
        "a PING before SETTINGS was answered: frames {frames:?}"
    );

    // Clients that send the whole preface are served as before.
    let mut conn = Conn::connect(server.addr).await;
    let events = conn
        .call(
            "/grpc.health.v1.Health/Check",
            &grpc_encode(&HealthCheckRequest::default()),
        )
        .await;
    assert_eq!(grpc_status(&events), 0, "{}", conn.describe_log());
    drop(conn);
    server
        .wait_for_connections("the connections to be released", |n| n == baseline)
        .await;
    assert_still_serving(&server, pump).await;
}

/// The frame types in a byte stream the server sent (after no preface).
fn frame_kinds(mut bytes: &[u8]) -> Vec<u8> {
    let mut kinds = Vec::new();
    while bytes.len() >= 9 {
        let len = u32::from_be_bytes([0, bytes[0], bytes[1], bytes[2]]) as usize;
        kinds.push(bytes[3]);
        bytes = &bytes[(9 + len).min(bytes.len())..];
    }
    kinds
}

#[tokio::test]
async fn http1_and_garbage_get_a_505_or_are_closed() {
    let server = server_with(server_config(), limits()).await;
    let canary = Canary::start(&server).await;
    let (baseline, ..) = server.wire();
    let pump = canary.pump();

    let mut tcp = TcpStream::connect(server.addr).await.expect("connect");
    tcp.write_all(b"POST /codereview.v1.CodeReviewService/GetSnapshot HTTP/1.1\r\nHost: x\r\ncontent-length: 0\r\n\r\n")
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&read_to_close(&mut tcp, STEP).await).into_owned();
    assert!(text.starts_with("HTTP/1.1 505 "), "{text:?}");
    assert!(text.contains("HTTP/2"), "{text:?}");

    // Random garbage (a fixed pseudo-random sequence), short and long.
    let mut state = 0x2545_f491_u32;
    let mut garbage = |n: usize| -> Vec<u8> {
        (0..n)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 17;
                state ^= state << 5;
                (state & 0xff) as u8
            })
            .collect()
    };
    for len in [1, 7, 24, 100, 64 * 1024] {
        let mut bytes = garbage(len);
        if bytes[0] == 0x16 || b"PGHDOCT".contains(&bytes[0]) {
            bytes[0] = 0x00; // make sure it is not a TLS or HTTP/1 opening
        }
        let mut tcp = TcpStream::connect(server.addr).await.expect("connect");
        let _ = tcp.write_all(&bytes).await;
        if len < 24 {
            // Not enough to decide: the handshake timeout (10 s) would close
            // it; close our side instead and check the server lets go.
            let _ = tcp.shutdown().await;
        }
        let response = read_to_close(&mut tcp, STEP).await;
        assert!(
            response.is_empty(),
            "garbage of {len} bytes got {response:?}"
        );
    }
    // An HTTP/2 preface followed by garbage frames: a connection error.
    let mut conn = Conn::connect(server.addr).await;
    conn.write_raw(&garbage(512)).await;
    assert!(
        closed_within(&mut conn, STEP).await,
        "{}",
        conn.describe_log()
    );

    server
        .wait_for_connections("the abusive sockets to be released", |n| n == baseline)
        .await;
    assert_still_serving(&server, pump).await;
}

// ---------------------------------------------------------------------------
// Memory.

/// Three participants in one session, one of which never reads: everything
/// the server holds stays under a bound computed from the configured limits,
/// at every sample (every 50 ms), and once the misbehaving participant is
/// gone (ended, then its connection closed by keepalive) it all returns.
#[tokio::test]
async fn memory_stays_bounded_while_a_participant_never_reads() {
    let limits = Limits {
        outbox_bytes: 64 * 1024,
        history_bytes: 128 * 1024,
        max_document_bytes: 256 * 1024,
        max_line_bytes: 1024,
        rate_per_second: 0.0,
        ..limits()
    };
    let config = ServerConfig {
        initial_stream_window: 64 * 1024,
        initial_connection_window: 256 * 1024,
        keepalive_interval: Duration::from_secs(1),
        keepalive_timeout: Duration::from_secs(1),
        ..server_config()
    };
    let batch = 16 * 1024;

    // The bound, from the limits: per member an outbox and its ephemeral
    // messages; the session's history and content; per stream one batch
    // plus one event in flight; per connection its receive window.
    let members = 3;
    let users = 3;
    let max_event = limits.max_line_bytes + limits.max_path_bytes + 2 * limits.max_id_bytes + 64;
    let ephemeral = users * 2 * (limits.max_path_bytes + 2 * limits.max_id_bytes + 64);
    let registry_bound = members * (limits.outbox_bytes + ephemeral)
        + (limits.history_bytes + max_event)
        + limits.max_document_bytes;
    let outbound_bound = (members * (batch + max_event)) as i64;
    let inbound_bound = members as i64 * config.initial_connection_window as i64;
    let windows = config.initial_connection_window;

    let server = TestServer::start(loopback(|c| {
        c.server = config;
        c.limits = limits;
        c.batch_bytes = batch;
    }))
    .await;
    let sampler = Sampler::start(&server);
    let mut writer = Participant::join_server(&server, "memory", "writer", Role::Author).await;
    let mut reader = Participant::join_server(&server, "memory", "reader", Role::Reviewer).await;
    let stalled = StalledParticipant::join(server.addr, 1024, None, "memory", "stalled").await;
    server
        .wait_for_stats("three participants", |s| s.participants == 3)
        .await;

    // 400 edits of ~900 bytes (360 KiB in all: more than any single bound).
    let line = "m".repeat(900);
    let mut acked = Vec::new();
    for round in 0..40 {
        let sent: Vec<(u64, String)> = (0..10)
            .map(|i| {
                let n = round * 10 + i;
                let content = format!("{n:05} {line}");
                let payload = edit(Op::Replace, "f.txt", n % 50, &content, 0);
                (writer.queue(payload), content)
            })
            .collect();
        writer.flush().await;
        for (sequence, content) in sent {
            writer.outcome(sequence).await.ack();
            acked.push(content);
        }
    }
    for content in &acked {
        reader.recv_edit(content).await;
    }
    // The misbehaving participant is ended, and its connection (which
    // answers no PING) closed: everything it held is released.
    server
        .wait_for_stats("the stalled participant to be ended", |s| {
            s.participants == 2 && s.members == 2
        })
        .await;
    server
        .wait_for_connections("the stalled connection to be closed by keepalive", |n| {
            n == 2
        })
        .await;
    eventually(STEP, "its stream to be released", || async {
        let (_, streams, inbound, outbound) = server.wire();
        if streams == 2 && outbound == 0 && inbound == 0 {
            Ok(())
        } else {
            Err(format!("{streams} streams, {inbound} in, {outbound} out"))
        }
    })
    .await;
    let samples = sampler.stop().await;
    drop(stalled);

    let mut peak = (0usize, 0i64, 0i64);
    for s in &samples {
        assert!(
            s.registry_bytes() <= registry_bound,
            "registry holds {} bytes, bound {registry_bound}: {s:?}",
            s.registry_bytes()
        );
        assert!(
            s.outbound_buffered <= outbound_bound,
            "outbound {} > bound {outbound_bound}: {s:?}",
            s.outbound_buffered
        );
        assert!(
            s.inbound_buffered <= inbound_bound,
            "inbound {} > bound {inbound_bound} ({members} connections x {windows}): {s:?}",
            s.inbound_buffered
        );
        peak.0 = peak.0.max(s.registry_bytes());
        peak.1 = peak.1.max(s.outbound_buffered);
        peak.2 = peak.2.max(s.inbound_buffered);
    }
    eprintln!(
        "memory: {} samples; peak registry {} / {registry_bound}, outbound {} / {outbound_bound}, inbound {} / {inbound_bound}",
        samples.len(),
        peak.0,
        peak.1,
        peak.2
    );
    assert!(samples.len() >= 10, "too few samples: {}", samples.len());

    // The well-behaved pair carries on.
    let sequence = writer.edit(Op::Replace, "f.txt", 0, "after").await;
    writer.outcome(sequence).await.ack();
    reader.recv_edit("after").await;
    let channel = server.channel().await;
    health_check(&channel)
        .await
        .expect("a new client is served");
}
