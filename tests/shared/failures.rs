//! Failures: an instance killed, Redis stopped and started again.

use std::time::Duration;

use codereview::grpc::status::Code;
use codereview::pb::codereview::presence_update::Status as Presence;
use codereview::pb::codereview::session_message::Payload;
use kit::participant::{Participant, get_snapshot, health_check};
use kit::payloads::comment;
use kit::process::Binary;
use kit::redis::RedisServer;
use kit::server::{ServerProcess, plaintext_endpoint};
use kit::{LONG, WAIT, binary};

use super::instance;

const BINARY: Binary = binary!();

/// An instance killed with SIGKILL cannot say LEFT for its participants:
/// once its lease expires, another instance does, so nobody stays
/// "present" for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_instance_leaves_no_ghost() {
    let redis = RedisServer::start();
    let url = redis.url();
    let doomed = ServerProcess::start(BINARY, &["--redis", &url]);
    let survivor = instance(&redis).await;
    let doomed_addr = doomed.addr.parse().expect("an address");
    let doomed_channel = kit::server::connect(&plaintext_endpoint(doomed_addr), None)
        .await
        .expect("connecting to the doomed instance");
    let (mut ghost, _) = Participant::join(&doomed_channel, None, "g", "ghost").await;
    let n = ghost.send(comment("", 0, "before the crash")).await;
    ghost.ack_of(n).await;
    let (mut bob, catch_up) = Participant::join(&survivor.channel().await, None, "g", "bob").await;
    assert!(
        catch_up.messages.iter().any(|m| m.user_id == "ghost"),
        "bob sees ghost's history"
    );
    doomed.proc.signal("KILL");
    // The lease lives 10 s after its last renewal; checks run every 3 s.
    // (The wait panics, naming what came, when no LEFT comes in time.)
    bob.recv_until_within(Duration::from_secs(25), |m| {
        m.user_id == "ghost"
            && matches!(&m.payload, Some(Payload::Presence(p)) if p.status == Presence::Left as i32)
    })
    .await;
    let snapshot = get_snapshot(&survivor.channel().await, None, "g")
        .await
        .expect("a snapshot");
    let present: Vec<&str> = snapshot
        .participants
        .iter()
        .map(|p| p.user_id.as_str())
        .collect();
    assert_eq!(present, ["bob"]);
    assert_eq!(snapshot.comments.len(), 1, "what was acknowledged is kept");
}

/// Redis stops: members end with UNAVAILABLE, readiness goes false and
/// new calls fail fast with UNAVAILABLE; nothing unappended was
/// acknowledged. Redis comes back (same files): the server serves again by
/// itself, with everything acknowledged before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_stops_while_redis_is_down_and_resumes_after() {
    let mut redis = RedisServer::start();
    let server = instance(&redis).await;
    let (mut ann, _) = Participant::join(&server.channel().await, None, "d", "ann").await;
    let n = ann.send(comment("", 0, "kept")).await;
    ann.ack_of(n).await;
    redis.stop(true);
    // A write now is never acknowledged; the stream ends UNAVAILABLE.
    ann.send(comment("", 0, "not appended")).await;
    ends_unavailable_without_ack(&mut ann, n + 1).await;
    // New calls fail fast.
    let started = std::time::Instant::now();
    let refused = Participant::try_join(
        &server.channel().await,
        None,
        kit::payloads::join_message("d", "bob"),
    )
    .await;
    let status = refused.err().expect("no join while Redis is down");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(started.elapsed() < LONG);
    let _ = health_check(&server.channel().await).await;
    redis.start_again();
    // Service resumes by itself.
    let deadline = std::time::Instant::now() + LONG;
    let snapshot = loop {
        match get_snapshot(&server.channel().await, None, "d").await {
            Ok(snapshot) => break snapshot,
            Err(status) => {
                assert!(
                    std::time::Instant::now() < deadline,
                    "not serving again: {status:?}"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    let texts: Vec<&str> = snapshot
        .comments
        .iter()
        .map(|c| c.comment.as_ref().map_or("", |c| c.text.as_str()))
        .collect();
    assert_eq!(texts, ["kept"]);
    let (mut bob, _) = Participant::join(&server.channel().await, None, "d", "bob").await;
    let n = bob.send(comment("", 0, "after")).await;
    bob.ack_of(n).await;
}

/// Redis answers but refuses every write (full memory, `noeviction`):
/// nothing is acknowledged, the members end UNAVAILABLE and the instance is
/// not ready, as when Redis is down. Once Redis takes writes again, it
/// serves again by itself, without a reconnect to tell it so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_refusing_writes_stops_service_until_it_takes_them_again() {
    let redis = RedisServer::start();
    let server = ServerProcess::start(
        BINARY,
        &["--redis", &redis.url(), "--metrics-addr", "127.0.0.1:0"],
    );
    let metrics = server.metrics.clone().expect("a metrics address");
    wait_until_ready(&metrics, LONG).await;
    let addr = server.addr.parse().expect("an address");
    let channel = kit::server::connect(&plaintext_endpoint(addr), None)
        .await
        .expect("connecting");
    let (mut ann, _) = Participant::join(&channel, None, "full", "ann").await;
    let n = ann.send(comment("", 0, "kept")).await;
    ann.ack_of(n).await;

    let full = redis.commands(&[
        &["CONFIG", "SET", "maxmemory-policy", "noeviction"],
        &["CONFIG", "SET", "maxmemory", "1"],
    ]);
    assert_eq!(full, "+OK\r\n+OK\r\n");
    ann.send(comment("", 0, "refused")).await;
    ends_unavailable_without_ack(&mut ann, n + 1).await;
    assert_eq!(http_status(&metrics, "/readyz"), Some(503));

    assert_eq!(
        redis.command(&["CONFIG", "SET", "maxmemory", "0"]),
        "+OK\r\n"
    );
    wait_until_ready(&metrics, LONG).await;
    let (mut bob, _) = Participant::join(&channel, None, "full", "bob").await;
    let n = bob.send(comment("", 0, "after")).await;
    bob.ack_of(n).await;
}

/// `participant`'s stream ends UNAVAILABLE, and its message `sequence` was
/// never acknowledged.
async fn ends_unavailable_without_ack(participant: &mut Participant, sequence: u64) {
    let (messages, status) = participant.until_end_within(WAIT).await;
    assert!(
        !messages
            .iter()
            .any(|m| matches!(&m.payload, Some(Payload::Ack(a)) if a.client_sequence == sequence)),
        "message {sequence} acknowledged while Redis could not take it: {messages:?}"
    );
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
}

/// The status line's code of `GET path` on the metrics listener.
pub(super) fn http_status(addr: &str, path: &str) -> Option<u16> {
    use std::io::{Read, Write};
    let mut conn = std::net::TcpStream::connect(addr).ok()?;
    conn.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        conn,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut reply = String::new();
    let _ = conn.read_to_string(&mut reply);
    reply.split(' ').nth(1)?.parse().ok()
}

/// Redis down when `serve` starts: it says so, stays not ready (joins get
/// UNAVAILABLE) and becomes ready by itself once Redis answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_at_start_means_not_ready_until_it_answers() {
    let mut redis = RedisServer::start();
    redis.stop(false);
    let url = redis.url();
    let server = ServerProcess::start(BINARY, &["--redis", &url, "--metrics-addr", "127.0.0.1:0"]);
    let said = server.wait_for_msg(
        "Redis is unreachable: not ready until it answers (retrying)",
        WAIT,
    );
    assert!(
        said.is_some(),
        "serve does not say that Redis is unreachable"
    );
    let metrics = server.metrics.clone().expect("a metrics address");
    assert_eq!(http_status(&metrics, "/readyz"), Some(503));
    let addr = server.addr.parse().expect("an address");
    let channel = kit::server::connect(&plaintext_endpoint(addr), None)
        .await
        .expect("connecting");
    let refused =
        Participant::try_join(&channel, None, kit::payloads::join_message("z", "ann")).await;
    let status = refused.err().expect("no join without Redis");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    redis.start_again();
    wait_until_ready(&metrics, LONG).await;
    let (mut ann, _) = Participant::join(&channel, None, "z", "ann").await;
    let n = ann.send(comment("", 0, "hello")).await;
    ann.ack_of(n).await;
}

/// Waits until `/readyz` on the metrics listener says 200.
pub(super) async fn wait_until_ready(metrics: &str, limit: Duration) {
    let deadline = std::time::Instant::now() + limit;
    while http_status(metrics, "/readyz") != Some(200) {
        assert!(
            std::time::Instant::now() < deadline,
            "not ready within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
