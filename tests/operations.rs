//! Observability and operations of the real binary (`codereview serve` as a
//! child process): Prometheus metrics that move with traffic and parse with a
//! real Prometheus text parser, the metrics listener's HTTP behaviour,
//! structured logs (correlation fields, formats, levels, no secrets), and the
//! signals (SIGTERM/SIGINT drain, SIGHUP).
//!
//! Clients are the binary's own commands (`load`, `join --json`, `health`,
//! `snapshot`, `token`) run as processes, plus our own gRPC client
//! (`codereview::grpc::client`) for participants that must misbehave: one
//! that never reads, one that ignores the GOING_AWAY notice.
//!
//! Python's prometheus_client (the venv named by CODEREVIEW_PYTHON) follows
//! the peers' rule: skipped with a note when not set up, a failure when
//! CODEREVIEW_REQUIRE_PEERS=1.

mod operations_support;

use std::collections::BTreeMap;
use std::io::Read;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use codereview::auth::json::Value;
use codereview::grpc::Code;
use codereview::grpc::client::{CallOptions, Channel, ChannelConfig, ClientCall};
use codereview::grpc::health::WATCH;
use codereview::pb::codereview::{
    CodeEdit, Join, PresenceUpdate, SessionMessage, code_edit::Op, joined::Catchup,
    notice::Kind as NoticeKind, presence_update::Status as Presence, session_message::Payload,
};
use codereview::pb::health::{
    HealthCheckRequest, HealthCheckResponse, health_check_response::ServingStatus,
};
use operations_support::*;

const SECRET: &str = "operations-test-secret-0123456789-abcdefghijklmnop";

fn str_field<'a>(o: &'a BTreeMap<String, Value>, key: &str) -> Option<&'a str> {
    o.get(key).and_then(Value::as_str)
}

fn int_field(o: &BTreeMap<String, Value>, key: &str) -> Option<i64> {
    o.get(key).and_then(Value::as_i64)
}

fn edit(op: Op, file: &str, line: i32, content: &str) -> Payload {
    Payload::Edit(CodeEdit {
        file_path: file.into(),
        line_number: line,
        content: content.into(),
        version: 0,
        op: op as i32,
    })
}

fn is_ack(m: &SessionMessage, client_sequence: u64) -> bool {
    matches!(&m.payload, Some(Payload::Ack(a)) if a.client_sequence == client_sequence)
}

fn is_presence(m: &SessionMessage, user: &str, status: Presence) -> bool {
    matches!(&m.payload, Some(Payload::Presence(p)) if p.status == status as i32)
        && m.user_id == user
}

/// A `join --json` process that has caught up.
fn join_process(server: &Server, session: &str, user: &str, token: Option<&str>) -> Proc {
    let url = server.url();
    let mut args = vec![
        "join",
        "--addr",
        &url,
        "--session",
        session,
        "--user",
        user,
        "--json",
    ];
    if let Some(token) = token {
        args.extend(["--token", token]);
    }
    let join = Proc::spawn(&args);
    join.wait_json("the caught_up notice", |o| is_notice(o, "caught_up"));
    join
}

/// Waits for a `join --json` process to print the ack of its message
/// number `client_sequence`.
fn wait_ack(join: &Proc, client_sequence: i64) {
    join.wait_json(&format!("the ack of message {client_sequence}"), |o| {
        is_type(o, "ack") && int_field(o, "client_sequence") == Some(client_sequence)
    });
}

/// Quits a `join` process and checks it exits 0.
fn quit(mut join: Proc) {
    join.send_line("quit");
    let status = join
        .wait_exit(WAIT)
        .unwrap_or_else(|| panic!("`{}` did not quit; {}", join.name, join.said()));
    assert!(
        status.success(),
        "`{}`: {status}; {}",
        join.name,
        join.said()
    );
}

/// Opens grpc.health.v1.Health/Watch for the whole server.
async fn health_watch(channel: &Channel) -> ClientCall {
    let mut call = channel
        .start(WATCH, CallOptions::default())
        .await
        .expect("starting Health/Watch");
    call.send(&HealthCheckRequest {
        service: String::new(),
    })
    .await
    .expect("sending the health request");
    call.close_send();
    call
}

async fn next_health(call: &mut ClientCall) -> ServingStatus {
    let response = tokio::time::timeout(WAIT, call.message::<HealthCheckResponse>())
        .await
        .expect("a health update in time")
        .expect("the health watch is open")
        .expect("a health update");
    ServingStatus::try_from(response.status).expect("a known status")
}

/// `codereview health` against the server: (exit status, stdout).
fn health_command(server: &Server) -> (std::process::ExitStatus, String) {
    let url = server.url();
    let (status, out, _) = run(&["health", "--addr", &url, "--timeout", "3s"], WAIT);
    (status, out)
}

// ---------------------------------------------------------------------------
// 1. Metrics move as traffic flows

#[test]
fn metrics_move_as_traffic_flows_and_gauges_follow_a_live_participant() {
    let server = Server::start(&[
        "--metrics-addr",
        "127.0.0.1:0",
        "--rate-limit",
        "0",
        "--session-linger",
        "0s",
        "--session-retention",
        "0s",
    ]);
    let metrics = server.metrics_addr().to_owned();
    let method = [("method", SESSION_METHOD)];
    let before = scrape(&metrics);
    assert_eq!(before.value("codereview_sessions", &[]), 0.0);
    assert_eq!(before.value("codereview_participants", &[]), 0.0);
    assert_eq!(before.value("codereview_up", &[]), 1.0);

    // Traffic: 2 sessions x 3 participants x 50 edits (each broadcast to 2).
    let url = server.url();
    let (status, out, err) = run(
        &[
            "load",
            "--addr",
            &url,
            "--sessions",
            "2",
            "--participants",
            "3",
            "--messages",
            "50",
        ],
        WAIT,
    );
    assert!(status.success(), "load: {status}\n{out}\n{err}");
    assert!(out.contains("\"ok\":true"), "{out}");

    // A participant that stays connected, and one edit from it.
    let mut join = join_process(&server, "ops-live", "lingerer", None);
    join.send_line("insert notes.txt 0 a line from the lingerer");
    wait_ack(&join, 1);

    // And a watcher of that session.
    let watcher = Proc::spawn(&["watch", "--addr", &url, "--session", "ops-live", "--json"]);
    watcher.wait_json("the caught_up notice", |o| is_notice(o, "caught_up"));

    // The load's sessions go away (linger 0); the live one stays.
    let during = scrape_until(&metrics, "one live session, participant and watcher", |e| {
        e.value("codereview_sessions", &[]) == 1.0
            && e.value("codereview_participants", &[]) == 1.0
            && e.value("codereview_watchers", &[]) == 1.0
            && e.value("codereview_streams_active", &method) == 1.0
            && e.value("codereview_connections_active", &[]) == 2.0
    });
    let delta = |name: &str, labels: &[(&str, &str)]| {
        during.value(name, labels) - before.value(name, labels)
    };
    let sum_delta =
        |name: &str, labels: &[(&str, &str)]| during.sum(name, labels) - before.sum(name, labels);
    let report = || format!("before:\n{}\nduring:\n{}", before.text, during.text);

    // One connection for the load (6 streams, 8 per connection), one each
    // for join and watch.
    assert!(
        delta("codereview_connections_total", &[]) >= 3.0,
        "{}",
        report()
    );
    assert_eq!(
        during.value("codereview_connections_active", &[]),
        2.0,
        "{}",
        report()
    );
    // The load's six streams finished (it drops them: CANCELLED).
    assert!(
        sum_delta("codereview_rpcs_total", &method) >= 6.0,
        "{}",
        report()
    );
    // 300 edits from the load, 1 from the join, each counted once.
    assert_eq!(
        delta("codereview_messages_received_total", &[("kind", "edit")]),
        301.0,
        "{}",
        report()
    );
    // Each load edit went to the 2 other participants of its session; the
    // lingerer is alone.
    assert_eq!(
        delta("codereview_messages_sent_total", &[("kind", "edit")]),
        600.0,
        "{}",
        report()
    );
    // Every edit carries 64 bytes of padding on top of its framing.
    assert!(
        delta("codereview_bytes_received_total", &[]) > 301.0 * 64.0,
        "{}",
        report()
    );
    assert!(
        delta("codereview_bytes_sent_total", &[]) > 600.0 * 64.0,
        "{}",
        report()
    );
    // The finished streams are in the duration histogram, consistently.
    let count = "codereview_stream_duration_seconds_count";
    assert!(delta(count, &method) >= 6.0, "{}", report());
    assert_eq!(
        during.value(count, &method),
        during.value(
            "codereview_stream_duration_seconds_bucket",
            &[("method", SESSION_METHOD), ("le", "+Inf")]
        ),
        "{}",
        report()
    );
    assert!(during.value("codereview_stream_duration_seconds_sum", &method) > 0.0);
    // Three participants editing at once: edits were transformed.
    assert!(
        delta("codereview_edits_transformed_total", &[]) > 0.0,
        "{}",
        report()
    );
    assert!(
        during.value("codereview_history_bytes", &[]) > 0.0,
        "{}",
        report()
    );

    // The lingerer and the watcher leave: the session goes (linger 0), the
    // gauges drop.
    drop(watcher);
    quit(join);
    let after = scrape_until(&metrics, "no sessions and no participants", |e| {
        e.value("codereview_sessions", &[]) == 0.0
            && e.value("codereview_participants", &[]) == 0.0
            && e.value("codereview_watchers", &[]) == 0.0
            && e.value("codereview_streams_active", &method) == 0.0
            && e.value("codereview_connections_active", &[]) == 0.0
    });
    // Its stream ended with OK (it said LEFT) and was timed.
    assert!(
        after.value(
            "codereview_rpcs_total",
            &[("method", SESSION_METHOD), ("code", "OK")]
        ) > during.value(
            "codereview_rpcs_total",
            &[("method", SESSION_METHOD), ("code", "OK")]
        ),
        "during:\n{}\nafter:\n{}",
        during.text,
        after.text
    );
    assert_eq!(
        after.value(count, &method),
        during.value(count, &method) + 1.0
    );
    assert_eq!(after.value("codereview_outbox_bytes", &[]), 0.0);
}

#[test]
fn auth_failures_are_counted_by_reason() {
    let dir = TempDir::new("auth");
    let secret = dir.write("secret", SECRET);
    let secret = secret.to_str().unwrap();
    let server = Server::start(&[
        "--metrics-addr",
        "127.0.0.1:0",
        "--auth-secret-file",
        secret,
    ]);
    let metrics = server.metrics_addr().to_owned();
    let before = scrape(&metrics);
    assert_eq!(
        before.value("codereview_auth_failures_total", &[("reason", "missing")]),
        0.0
    );

    // A call without a token.
    let url = server.url();
    let (status, _, err) = run(&["snapshot", "--addr", &url, "--session", "s"], WAIT);
    assert!(!status.success());
    assert!(err.contains("UNAUTHENTICATED"), "{err}");
    let after = scrape_until(&metrics, "one missing-token failure", |e| {
        e.value("codereview_auth_failures_total", &[("reason", "missing")]) == 1.0
    });
    assert_eq!(
        after.sum("codereview_auth_failures_total", &[]),
        1.0,
        "{}",
        after.text
    );

    // A forged token counts under another reason; health checks need none.
    let (status, _, err) = run(
        &[
            "snapshot",
            "--addr",
            &url,
            "--session",
            "s",
            "--token",
            "not.a.token",
        ],
        WAIT,
    );
    assert!(!status.success());
    assert!(err.contains("UNAUTHENTICATED"), "{err}");
    let (status, out) = health_command(&server);
    assert!(status.success(), "{out}");
    let after = scrape_until(&metrics, "two failures", |e| {
        e.sum("codereview_auth_failures_total", &[]) == 2.0
    });
    assert_eq!(
        after.value("codereview_auth_failures_total", &[("reason", "missing")]),
        1.0
    );
}

#[test]
fn refused_connections_are_counted_by_reason() {
    let server = Server::start(&["--metrics-addr", "127.0.0.1:0", "--max-connections", "1"]);
    let metrics = server.metrics_addr().to_owned();
    let rejected = [("reason", "max_connections")];
    assert_eq!(
        scrape(&metrics).value("codereview_connections_rejected_total", &rejected),
        0.0
    );
    let rt = runtime();
    // One connection holds the only slot.
    let (_channel, _member) = rt.block_on(async {
        let channel = connect(&server.addr, ChannelConfig::default(), None).await;
        let (member, _) = Member::join(&channel, "ops-full", "first", Join::default()).await;
        (channel, member)
    });
    let (status, out) = health_command(&server);
    assert!(!status.success(), "a second connection is refused: {out}");
    // The command's connection is refused; after a failed plaintext
    // connection a client command also probes the port for TLS (a second
    // connection, refused too): one or two refusals, each counted.
    let after = scrape_until(&metrics, "the refused connections", |e| {
        let refused = e.value("codereview_connections_rejected_total", &rejected);
        (1.0..=2.0).contains(&refused)
    });
    assert_eq!(after.value("codereview_connections_active", &[]), 1.0);
    let line = server
        .wait_for_msg("connection refused: max connections reached", WAIT)
        .expect("a warning line");
    assert_eq!(str_field(&line, "level"), Some("warn"));
}

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

#[test]
fn slow_consumers_are_counted_when_a_participant_that_never_reads_is_ended() {
    let server = Server::start(&[
        "--metrics-addr",
        "127.0.0.1:0",
        "--rate-limit",
        "0",
        "--outbox-bytes",
        "16KiB",
    ]);
    let metrics = server.metrics_addr().to_owned();
    assert_eq!(
        scrape(&metrics).value("codereview_slow_consumers_total", &[]),
        0.0
    );
    let rt = runtime();
    let (_channel, _writer, sleepy_end) = rt.block_on(async {
        let channel = connect(&server.addr, ChannelConfig::default(), None).await;
        let (mut writer, _) = Member::join(&channel, "ops-slow", "writer", Join::default()).await;
        // Small windows, and it never reads.
        let small = ChannelConfig {
            initial_stream_window: 16 * 1024,
            initial_connection_window: 16 * 1024,
            ..ChannelConfig::default()
        };
        let sleepy_channel = connect(&server.addr, small, None).await;
        let mut sleepy = Member::open(&sleepy_channel, "ops-slow", "sleepy", Join::default()).await;
        writer
            .until("sleepy joined", |m| {
                is_presence(m, "sleepy", Presence::Joined)
            })
            .await;
        // 3 KiB lines, one at a time (the writer keeps up): far more than
        // the windows and the outbox bound together. Incompressible: our
        // client accepts gzip, and 3 KiB of one letter would cross the wire
        // in a few dozen bytes.
        let line = incompressible_line(3 * 1024);
        let mut sleepy_left = false;
        for i in 0..100 {
            let cs = i as u64 + 1;
            writer.send(edit(Op::Insert, "big.txt", i, &line)).await;
            let ack_or_left = writer
                .until("its ack", |m| {
                    is_ack(m, cs) || is_presence(m, "sleepy", Presence::Left)
                })
                .await;
            if !is_ack(&ack_or_left, cs) {
                sleepy_left = true;
                writer.until("its ack", |m| is_ack(m, cs)).await;
            }
            if sleepy_left {
                break;
            }
        }
        if !sleepy_left {
            writer
                .until("sleepy left", |m| is_presence(m, "sleepy", Presence::Left))
                .await;
        }
        // Now it reads: what was in flight, then its status.
        (channel, writer, sleepy.until_end().await.0)
    });
    assert_eq!(sleepy_end.code(), Code::ResourceExhausted, "{sleepy_end:?}");
    // Counted once; only the writer remains.
    scrape_until(&metrics, "one slow consumer, one participant", |e| {
        e.value("codereview_slow_consumers_total", &[]) == 1.0
            && e.value("codereview_participants", &[]) == 1.0
    });
    let closed = server
        .wait_for_msg("participant stream closed", WAIT)
        .expect("the sleepy stream's close line");
    assert_eq!(str_field(&closed, "user_id"), Some("sleepy"));
    assert_eq!(str_field(&closed, "status"), Some("RESOURCE_EXHAUSTED"));
}

#[test]
fn resumes_are_counted_by_mode() {
    let server = Server::start(&["--metrics-addr", "127.0.0.1:0", "--rate-limit", "0"]);
    let metrics = server.metrics_addr().to_owned();
    let before = scrape(&metrics);
    assert_eq!(
        before.value("codereview_resumes_total", &[("mode", "replay")]),
        0.0
    );
    let rt = runtime();
    let catchup = rt.block_on(async {
        let channel = connect(&server.addr, ChannelConfig::default(), None).await;
        let (mut ann, _) = Member::join(&channel, "ops-resume", "ann", Join::default()).await;
        let (mut bob, _) = Member::join(&channel, "ops-resume", "bob", Join::default()).await;
        bob.send(edit(Op::Insert, "a.txt", 0, "hello")).await;
        bob.until("the ack", |m| is_ack(m, 1)).await;
        ann.until("bob's edit", |m| {
            matches!(m.payload, Some(Payload::Edit(_)))
        })
        .await;
        let (last, epoch) = (ann.last_sequence, ann.epoch);
        // Ann's stream breaks (cancelled); she comes back where she was.
        ann.sender.cancel();
        drop(ann);
        bob.until("ann left", |m| is_presence(m, "ann", Presence::Left))
            .await;
        let resume = Join {
            want_snapshot: false,
            resume_after_sequence: Some(last),
            session_epoch: epoch,
        };
        let (_ann, joined) = Member::join(&channel, "ops-resume", "ann", resume).await;
        joined.catchup
    });
    assert_eq!(catchup, Catchup::Resume as i32, "the server replayed");
    let after = scrape_until(&metrics, "one replayed resume", |e| {
        e.value("codereview_resumes_total", &[("mode", "replay")]) == 1.0
    });
    assert_eq!(
        after.value("codereview_resumes_total", &[("mode", "snapshot")]),
        0.0
    );
}

// ---------------------------------------------------------------------------
// 2. The exposition parses with a real Prometheus text parser

#[test]
fn every_exposition_line_parses_with_prometheus_client_and_readme_families_are_there() {
    let Some(python) = prometheus_python() else {
        return;
    };
    // The parse check is not vacuous: a broken line is refused.
    assert!(
        prometheus_parse(&python, "# TYPE x counter\nx{a=\"b} 1\n").is_err(),
        "prometheus_client accepted a broken line"
    );

    let dir = TempDir::new("expo");
    let secret = dir.write("secret", SECRET);
    let secret_path = secret.to_str().unwrap();
    let server = Server::start(&[
        "--metrics-addr",
        "127.0.0.1:0",
        "--auth-secret-file",
        secret_path,
        "--rate-limit",
        "0",
    ]);
    let metrics = server.metrics_addr().to_owned();
    // Traffic that gives the labelled families samples: sessions with edits,
    // an auth failure, a health check.
    let token = mint_token(&secret, "ann", "author");
    let mut join = join_process(&server, "ops-expo", "ann", Some(&token));
    join.send_line("insert a.txt 0 first");
    wait_ack(&join, 1);
    let url = server.url();
    let (status, _, _) = run(&["snapshot", "--addr", &url, "--session", "ops-expo"], WAIT);
    assert!(!status.success(), "no token: refused");
    assert!(health_command(&server).0.success());

    // With a participant connected, and after it left.
    let live = scrape(&metrics);
    quit(join);
    let quiet = scrape(&metrics);
    for exposition in [live, quiet] {
        let text = &exposition.text;
        let (families, parsed_samples) =
            prometheus_parse(&python, text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        // Nothing was dropped: every sample line became a sample.
        let sample_lines = text
            .lines()
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .count();
        assert_eq!(parsed_samples, sample_lines, "{text}");
        assert_eq!(exposition.samples.len(), sample_lines);

        let readme = readme_families();
        assert!(readme.len() >= 21, "README lists the families: {readme:?}");
        for name in &readme {
            // prometheus_client names a counter family without `_total`.
            let family = families
                .iter()
                .find(|f| {
                    f.name == *name || (f.kind == "counter" && format!("{}_total", f.name) == *name)
                })
                .unwrap_or_else(|| panic!("README family {name} is not in the exposition\n{text}"));
            let expected = if name.ends_with("_total") {
                "counter"
            } else if name == "codereview_stream_duration_seconds" {
                "histogram"
            } else {
                "gauge"
            };
            assert_eq!(family.kind, expected, "{name}");
            assert!(!family.help.trim().is_empty(), "{name} has no HELP");
            // HELP and TYPE once each, TYPE before the samples.
            let help = format!("# HELP {name} ");
            let type_line = format!("# TYPE {name} {expected}");
            assert_eq!(
                text.lines().filter(|l| l.starts_with(&help)).count(),
                1,
                "{name}"
            );
            assert_eq!(
                text.lines().filter(|l| *l == type_line).count(),
                1,
                "{name}"
            );
            let type_at = text.find(&type_line).unwrap();
            if let Some(first_sample) = text
                .lines()
                .position(|l| !l.starts_with('#') && l.starts_with(name.as_str()))
            {
                let sample_at: usize = text.lines().take(first_sample).map(|l| l.len() + 1).sum();
                assert!(type_at < sample_at, "{name}: TYPE after a sample");
            }
        }
        // Labelled families exercised above have samples.
        for name in [
            "codereview_rpcs",
            "codereview_stream_duration_seconds",
            "codereview_messages_received",
            "codereview_auth_failures",
            "codereview_resumes",
        ] {
            let family = families.iter().find(|f| f.name == name).unwrap();
            assert!(family.samples > 0, "{name} has no samples\n{text}");
        }
    }
}

// ---------------------------------------------------------------------------
// 3. The metrics listener's HTTP

#[test]
fn metrics_listener_answers_by_the_book_and_an_idle_client_blocks_nobody() {
    let server = Server::start(&["--metrics-addr", "127.0.0.1:0"]);
    let metrics = server.metrics_addr().to_owned();

    // A client that connects and sends nothing.
    let mut idle = TcpStream::connect(&metrics).expect("connecting");

    let get = |path: &str| http_get(&metrics, path).unwrap_or_else(|e| panic!("GET {path}: {e}"));
    let healthz = get("/healthz");
    assert_eq!(healthz.status, 200, "{healthz:?}");
    let readyz = get("/readyz");
    assert_eq!(readyz.status, 200, "{readyz:?}");
    assert_eq!(get("/metrics?name[]=x").status, 200);
    let missing = get("/nope");
    assert_eq!(missing.status, 404, "{missing:?}");
    for response in [&healthz, &readyz, &missing] {
        let length: usize = response.header("content-length").unwrap().parse().unwrap();
        assert_eq!(length, response.body.len());
    }

    let post = http_raw(
        &metrics,
        format!("POST /metrics HTTP/1.1\r\nHost: {metrics}\r\nContent-Length: 0\r\n\r\n")
            .as_bytes(),
    )
    .unwrap();
    assert_eq!(post.status, 405, "{post:?}");

    // A 20 KiB request head.
    let big = format!(
        "GET /metrics HTTP/1.1\r\nHost: {metrics}\r\nX-Filler: {}\r\n\r\n",
        "a".repeat(20 * 1024)
    );
    let too_large = http_raw(&metrics, big.as_bytes()).expect("a response to a 20 KiB head");
    assert_eq!(too_large.status, 431, "{too_large:?}");

    // Garbage (a complete "head" that is not HTTP).
    for garbage in [
        &b"this is not http\r\n\r\n"[..],
        &b"GET /metrics HTTP/9.9\r\n\r\n"[..],
        &b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03\r\n\r\n"[..],
    ] {
        let response = http_raw(&metrics, garbage).expect("a response to garbage");
        assert_eq!(response.status, 400, "{garbage:?} -> {response:?}");
    }

    // The idle client was there all along, still connected: it blocked
    // nobody.
    idle.set_nonblocking(true).unwrap();
    let mut byte = [0u8; 1];
    match idle.read(&mut byte) {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
        other => panic!("the idle client should still be connected and unanswered: {other:?}"),
    }
    // ... and the listener does not keep it forever.
    idle.set_nonblocking(false).unwrap();
    idle.set_read_timeout(Some(WAIT)).unwrap();
    match idle.read(&mut byte) {
        Ok(0) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        other => panic!("the idle client should be disconnected eventually: {other:?}"),
    }
    // Still serving afterwards.
    assert_eq!(scrape(&metrics).value("codereview_up", &[]), 1.0);
}

#[test]
fn head_requests_get_headers_without_a_body() {
    let server = Server::start(&["--metrics-addr", "127.0.0.1:0"]);
    let metrics = server.metrics_addr().to_owned();
    let head = http_raw(
        &metrics,
        format!("HEAD /healthz HTTP/1.1\r\nHost: {metrics}\r\n\r\n").as_bytes(),
    )
    .unwrap();
    assert_eq!(head.status, 200, "{head:?}");
    assert_eq!(head.body, "", "a HEAD response has no body: {head:?}");
}

#[test]
fn readiness_and_health_turn_false_while_draining_and_the_drain_ends_when_streams_do() {
    let mut server = Server::start(&["--metrics-addr", "127.0.0.1:0", "--drain-timeout", "60s"]);
    let metrics = server.metrics_addr().to_owned();
    assert_eq!(http_get(&metrics, "/readyz").unwrap().status, 200);
    let (status, out) = health_command(&server);
    assert!(status.success(), "{out}");
    assert_eq!(out.trim(), "SERVING");

    let rt = runtime();
    let (_channel, mut member, mut watch) = rt.block_on(async {
        let channel = connect(&server.addr, ChannelConfig::default(), None).await;
        let (member, _) = Member::join(&channel, "ops-ready", "stayer", Join::default()).await;
        let mut watch = health_watch(&channel).await;
        assert_eq!(next_health(&mut watch).await, ServingStatus::Serving);
        (channel, member, watch)
    });

    server.signal("TERM");
    let draining = server
        .wait_for_msg("shutting down: draining", WAIT)
        .expect("the draining line");
    assert_eq!(str_field(&draining, "signal"), Some("SIGTERM"));
    rt.block_on(async {
        assert_eq!(next_health(&mut watch).await, ServingStatus::NotServing);
        member
            .until("the GOING_AWAY notice", |m| {
                notice_of(m, NoticeKind::GoingAway)
            })
            .await;
    });
    // Not ready (and still alive) while the participant keeps it draining.
    let readyz = http_get(&metrics, "/readyz").unwrap();
    assert_eq!(readyz.status, 503, "{readyz:?}");
    assert_eq!(http_get(&metrics, "/healthz").unwrap().status, 200);
    assert_eq!(scrape(&metrics).value("codereview_participants", &[]), 1.0);
    // No new connections: `codereview health` fails.
    let (status, out) = health_command(&server);
    assert!(!status.success(), "health during the drain: {out}");
    assert!(server.is_running());

    // The participant leaves and the watch ends: the drain is over long
    // before the 60 s timeout.
    let end = rt.block_on(async {
        member
            .send(Payload::Presence(PresenceUpdate {
                status: Presence::Left as i32,
                role: 0,
            }))
            .await;
        let end = member.until_end().await.0;
        watch.cancel();
        end
    });
    assert!(end.is_ok(), "{end:?}");
    drop(watch);
    let status = server
        .wait_exit(WAIT)
        .expect("the server exits once drained");
    assert!(status.success(), "{status}");
    let log = server.log();
    let last = log_object(log.last().unwrap()).expect("a JSON line");
    assert_eq!(
        str_field(&last, "msg"),
        Some("shutdown complete"),
        "{log:?}"
    );
    assert_eq!(
        last.get("drained_in_time"),
        Some(&Value::Bool(true)),
        "{log:?}"
    );
    assert_eq!(int_field(&last, "participants"), Some(1));
}

// ---------------------------------------------------------------------------
// 4. Logs

/// Checks every stderr line is a JSON object with ts (RFC 3339), level, msg.
fn assert_json_lines(log: &[String]) -> Vec<BTreeMap<String, Value>> {
    log.iter()
        .map(|line| {
            let object = log_object(line).unwrap_or_else(|| panic!("not a JSON object: {line:?}"));
            let ts = str_field(&object, "ts").unwrap_or_else(|| panic!("no ts: {line}"));
            assert!(is_rfc3339(ts), "ts {ts:?} is not RFC 3339: {line}");
            let level = str_field(&object, "level").unwrap_or_else(|| panic!("no level: {line}"));
            assert!(
                ["error", "warn", "info", "debug"].contains(&level),
                "{line}"
            );
            let msg = str_field(&object, "msg").unwrap_or_else(|| panic!("no msg: {line}"));
            assert!(!msg.is_empty(), "{line}");
            object
        })
        .collect()
}

#[test]
fn json_logs_correlate_a_participant_stream_and_never_contain_tokens_or_content() {
    let dir = TempDir::new("logs");
    let secret = dir.write("secret", SECRET);
    let secret_path = secret.to_str().unwrap();
    let mut server = Server::start(&[
        "--auth-secret-file",
        secret_path,
        "--log-level",
        "debug",
        "--rate-limit",
        "0",
    ]);
    let token = mint_token(&secret, "alice", "author");
    let unique = format!("{:x}", std::process::id() as u64 * 7919 + 0x5eed);
    let edit_text = format!("UNIQUE-EDIT-TEXT-{unique}");
    let comment_text = format!("UNIQUE-COMMENT-TEXT-{unique}");

    let mut join = join_process(&server, "ops-logs", "alice", Some(&token));
    join.send_line(&format!("insert notes.txt 0 {edit_text}"));
    wait_ack(&join, 1);
    join.send_line(&format!("comment 0 {comment_text}"));
    wait_ack(&join, 2);
    quit(join);

    // A refused token must not be logged either.
    let forged = format!("{token}FORGED");
    let url = server.url();
    let (status, _, _) = run(
        &[
            "snapshot",
            "--addr",
            &url,
            "--session",
            "ops-logs",
            "--token",
            &forged,
        ],
        WAIT,
    );
    assert!(!status.success());

    server
        .wait_for_msg("participant stream closed", WAIT)
        .expect("the close line");
    server.signal("TERM");
    let status = server.wait_exit(WAIT).expect("the server exits");
    assert!(status.success(), "{status}");

    let log = server.log();
    let objects = assert_json_lines(&log);
    for line in &log {
        let signature = token.rsplit('.').next().unwrap();
        for secret in [
            &token,
            &forged,
            &signature.to_owned(),
            &edit_text,
            &comment_text,
            &SECRET.to_owned(),
        ] {
            assert!(
                !line.contains(secret.as_str()),
                "a secret or content leaked into the log: {line}"
            );
        }
    }
    let joined: Vec<_> = objects
        .iter()
        .filter(|o| str_field(o, "msg") == Some("participant joined"))
        .collect();
    let closed: Vec<_> = objects
        .iter()
        .filter(|o| str_field(o, "msg") == Some("participant stream closed"))
        .collect();
    assert_eq!(joined.len(), 1, "{log:#?}");
    assert_eq!(closed.len(), 1, "{log:#?}");
    let (joined, closed) = (joined[0], closed[0]);
    for key in ["conn", "stream"] {
        let value = int_field(joined, key).unwrap_or_else(|| panic!("joined has no {key}"));
        assert!(value > 0);
        assert_eq!(int_field(closed, key), Some(value), "the same {key}");
    }
    for o in [joined, closed] {
        assert_eq!(str_field(o, "session_id"), Some("ops-logs"));
        assert_eq!(str_field(o, "user_id"), Some("alice"));
    }
    assert_eq!(str_field(closed, "status"), Some("OK"));
    assert!(int_field(closed, "duration_ms").is_some_and(|d| d >= 0));
    // Join, edit, comment, LEFT in; at least Joined, CAUGHT_UP, the ack and
    // the comment out.
    assert!(
        int_field(closed, "messages_in").is_some_and(|n| n >= 4),
        "{closed:?}"
    );
    assert!(
        int_field(closed, "messages_out").is_some_and(|n| n >= 4),
        "{closed:?}"
    );
    assert_eq!(
        str_field(objects.last().unwrap(), "msg"),
        Some("shutdown complete")
    );
}

#[test]
fn text_logs_are_for_people() {
    let mut server = Server::start_with(LogFormat::Text, &[]);
    let join = join_process(&server, "ops-text", "texter", None);
    quit(join);
    server
        .stderr
        .wait_for(WAIT, |l| {
            text_message(l) == Some("participant stream closed")
        })
        .expect("the close line");
    server.signal("TERM");
    assert!(server.wait_exit(WAIT).expect("exits").success());
    let log = server.log();
    assert!(log.len() >= 4, "{log:#?}");
    for line in &log {
        assert!(
            log_object(line).is_none() && !line.starts_with('{'),
            "a JSON line in text mode: {line}"
        );
        let mut words = line.split_whitespace();
        let ts = words.next().unwrap_or("");
        assert!(is_rfc3339(ts), "{line}");
        let level = words.next().unwrap_or("");
        assert!(
            ["ERROR", "WARN", "INFO", "DEBUG"].contains(&level),
            "{line}"
        );
        assert!(text_message(line).is_some_and(|m| !m.is_empty()), "{line}");
    }
    let find = |msg: &str| {
        log.iter()
            .find(|l| text_message(l) == Some(msg))
            .unwrap_or_else(|| panic!("no {msg:?} line in {log:#?}"))
    };
    let joined = find("participant joined");
    let closed = find("participant stream closed");
    for line in [joined, closed] {
        for field in ["conn=", "stream=", "session_id=ops-text", "user_id=texter"] {
            assert!(line.contains(&format!(" {field}")), "{field} in {line}");
        }
    }
    for field in ["status=OK", "duration_ms=", "messages_in=", "messages_out="] {
        assert!(closed.contains(&format!(" {field}")), "{field} in {closed}");
    }
    assert_eq!(text_message(log.last().unwrap()), Some("shutdown complete"));
}

#[test]
fn log_level_error_suppresses_info_lines() {
    let mut server = Server::start_silent(&["--log-level", "error", "--log-format", "json"]);
    // Work that logs at info otherwise: a participant session and a drain.
    let join = join_process(&server, "ops-quiet", "hush", None);
    quit(join);
    server.signal("TERM");
    assert!(server.wait_exit(WAIT).expect("exits").success());
    let log = server.log();
    let objects = assert_json_lines(&log);
    for (line, o) in log.iter().zip(&objects) {
        assert_eq!(str_field(o, "level"), Some("error"), "below error: {line}");
    }
    assert!(
        log.is_empty(),
        "nothing went wrong, so nothing is logged: {log:#?}"
    );
}

// ---------------------------------------------------------------------------
// 5. Shutdown and drain

/// A `join --json` process and a participant of ours that ignores the notice
/// share a session; `signal` starts the drain (2 s).
fn drain_with(signal: &str) {
    const DRAIN: Duration = Duration::from_secs(2);
    let mut server = Server::start(&["--metrics-addr", "127.0.0.1:0", "--drain-timeout", "2s"]);
    let metrics = server.metrics_addr().to_owned();
    let join = join_process(&server, "ops-drain", "polite", None);
    let rt = runtime();
    let (channel, mut stubborn, mut watch) = rt.block_on(async {
        let channel = connect(&server.addr, ChannelConfig::default(), None).await;
        let (stubborn, _) = Member::join(&channel, "ops-drain", "stubborn", Join::default()).await;
        let mut watch = health_watch(&channel).await;
        assert_eq!(next_health(&mut watch).await, ServingStatus::Serving);
        (channel, stubborn, watch)
    });
    scrape_until(&metrics, "two participants", |e| {
        e.value("codereview_participants", &[]) == 2.0
    });

    let signalled = Instant::now();
    server.signal(signal);

    // The join process is told, as a JSON notice line.
    let notice = join.wait_json("the going_away notice", |o| is_notice(o, "going_away"));
    assert!(
        int_field(&notice, "at").is_some_and(|at| at > 0),
        "{notice:?}"
    );
    // Health turns NOT_SERVING; no new connection is accepted.
    rt.block_on(async {
        assert_eq!(next_health(&mut watch).await, ServingStatus::NotServing);
    });
    let (status, out) = health_command(&server);
    assert!(!status.success(), "health during the drain: {out}");

    // Ours gets the notice too, stays, and is ended with UNAVAILABLE once
    // the drain time is up.
    let (end, ended_after) = rt.block_on(async {
        stubborn
            .until("the GOING_AWAY notice", |m| {
                notice_of(m, NoticeKind::GoingAway)
            })
            .await;
        let end = stubborn.until_end().await.0;
        (end, signalled.elapsed())
    });
    assert_eq!(end.code(), Code::Unavailable, "{end:?}");
    assert!(
        ended_after >= DRAIN,
        "ended after {ended_after:?}, before the drain time"
    );

    let exit_by = signalled + DRAIN + Duration::from_secs(3);
    let status = server
        .wait_exit(exit_by.saturating_duration_since(Instant::now()))
        .unwrap_or_else(|| panic!("the server did not exit within drain-timeout + 3 s"));
    assert!(status.success(), "{status}");
    drop(watch);
    drop(channel);
    drop(join);

    let log = server.log();
    let objects = assert_json_lines(&log);
    let draining = objects
        .iter()
        .find(|o| str_field(o, "msg") == Some("shutting down: draining"))
        .expect("the draining line");
    assert_eq!(
        str_field(draining, "signal"),
        Some(format!("SIG{signal}").as_str())
    );
    let last = objects.last().unwrap();
    assert_eq!(
        str_field(last, "msg"),
        Some("shutdown complete"),
        "{log:#?}"
    );
    assert_eq!(int_field(last, "sessions"), Some(1), "{last:?}");
    assert_eq!(int_field(last, "participants"), Some(2), "{last:?}");
    assert_eq!(
        last.get("drained_in_time"),
        Some(&Value::Bool(false)),
        "{last:?}"
    );
}

#[test]
fn sigterm_drains_with_a_going_away_notice_then_unavailable_then_exit_zero() {
    drain_with("TERM");
}

#[test]
fn sigint_drains_like_sigterm() {
    drain_with("INT");
}

/// Starts the server and signals it the moment it logs "listening" (from the
/// thread reading its log, as a supervisor acting on that line would);
/// returns the child and its log lines so far (still being collected).
fn signal_on_listening(
    signal: &'static str,
) -> (
    std::process::Child,
    std::sync::Arc<std::sync::Mutex<Vec<String>>>,
) {
    use std::io::BufRead;
    let mut child = std::process::Command::new(BIN)
        .args(["serve", "--addr", "127.0.0.1:0", "--drain-timeout", "1s"])
        .args(["--data-dir", "none"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawning the server");
    let pid = child.id();
    let stderr = child.stderr.take().unwrap();
    let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let keep = lines.clone();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            let listening = line.contains("\"msg\":\"listening\"");
            keep.lock().unwrap().push(line);
            if listening {
                send_signal(pid, signal);
            }
        }
    });
    (child, lines)
}

/// Waits (up to WAIT) until the child exits or `done` holds for its log.
fn exit_or(
    child: &mut std::process::Child,
    lines: &std::sync::Mutex<Vec<String>>,
    done: impl Fn(&[String]) -> bool,
) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        if done(&lines.lock().unwrap()) {
            return None;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "neither an exit nor the expected log: {:#?}",
                lines.lock().unwrap()
            );
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn a_sigterm_right_after_listening_is_handled() {
    for attempt in 0..100 {
        let (mut child, lines) = signal_on_listening("TERM");
        let status = exit_or(&mut child, &lines, |_| false).expect("it exits");
        if status.success() {
            // The reader may still be taking the last lines.
            let deadline = Instant::now() + WAIT;
            while !lines
                .lock()
                .unwrap()
                .iter()
                .any(|l| l.contains("shutdown complete"))
                && Instant::now() < deadline
            {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        let log = lines.lock().unwrap().clone();
        assert!(
            status.success() && log.last().is_some_and(|l| l.contains("shutdown complete")),
            "attempt {attempt}: SIGTERM right after \"listening\" gave {status}; log: {log:#?}"
        );
    }
}

#[test]
fn a_sighup_right_after_listening_is_ignored() {
    const IGNORED: &str = "SIGHUP ignored: no TLS certificate to reload";
    for attempt in 0..100 {
        let (mut child, lines) = signal_on_listening("HUP");
        let exited = exit_or(&mut child, &lines, |log| {
            log.iter().any(|l| l.contains(IGNORED))
        });
        let _ = child.kill();
        let _ = child.wait();
        assert!(
            exited.is_none(),
            "attempt {attempt}: SIGHUP right after \"listening\" ended the server: {exited:?}; log: {:#?}",
            lines.lock().unwrap()
        );
    }
}

// ---------------------------------------------------------------------------
// 6. SIGHUP without TLS

#[test]
fn sighup_without_tls_is_logged_and_ignored() {
    let mut server = Server::start(&["--metrics-addr", "127.0.0.1:0"]);
    let metrics = server.metrics_addr().to_owned();
    for round in 1..=2 {
        server.signal("HUP");
        let deadline = Instant::now() + WAIT;
        while server
            .log()
            .iter()
            .filter(|l| l.contains("SIGHUP ignored: no TLS certificate to reload"))
            .count()
            < round
        {
            assert!(
                Instant::now() < deadline,
                "no SIGHUP line: {:#?}",
                server.log()
            );
            assert!(
                server.is_running(),
                "SIGHUP killed the server: {:#?}",
                server.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    let line = server
        .wait_for_msg("SIGHUP ignored: no TLS certificate to reload", WAIT)
        .unwrap();
    assert_eq!(str_field(&line, "level"), Some("info"));
    // Still serving, still ready.
    assert!(server.is_running());
    let (status, out) = health_command(&server);
    assert!(status.success() && out.trim() == "SERVING", "{out}");
    assert_eq!(http_get(&metrics, "/readyz").unwrap().status, 200);
    let join = join_process(&server, "ops-hup", "after-hup", None);
    quit(join);
    assert!(!server.log().iter().any(|l| l.contains("shutting down")));
}

/// The resident memory of the real process, in bytes (Linux).
fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS");
    kb * 1024
}

/// `--max-memory` bounds what sessions really cost: sessions filled with
/// empty lines (the costliest content per budget byte: about 50 bytes of
/// memory per 2-byte line) are refused past the budget with
/// RESOURCE_EXHAUSTED, and the process's resident memory stays near the
/// budget; the server keeps answering.
#[test]
fn the_memory_budget_bounds_the_resident_memory() {
    let budget: u64 = 64 << 20;
    let server = Server::start(&["--max-memory", "64MiB"]);
    let before = rss_bytes(server.pid());
    let dir = TempDir::new("memory");
    let blank = "\n".repeat(20_000);
    let files: Vec<String> = (0..60)
        .map(|i| {
            dir.write(&format!("blank{i}.txt"), &blank)
                .to_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    let url = server.url();
    let mut refusal = None;
    'fill: for session in 0..40 {
        for file in &files {
            let id = format!("mem{session}");
            let (status, _, err) = run(&["upload", "--addr", &url, "--session", &id, file], WAIT);
            if !status.success() {
                if err.contains("memory") {
                    refusal = Some(err);
                    break 'fill;
                }
                // This session is full (its own content budget): next one.
                assert!(err.contains("RESOURCE_EXHAUSTED"), "{err}");
                continue 'fill;
            }
        }
    }
    let refusal = refusal.expect("uploads were refused at some point");
    assert!(
        refusal.contains("RESOURCE_EXHAUSTED") && refusal.contains("memory"),
        "{refusal}"
    );
    let grown = rss_bytes(server.pid()).saturating_sub(before);
    assert!(
        grown <= budget * 3 / 2,
        "the process grew by {} MiB for a budget of {} MiB",
        grown >> 20,
        budget >> 20
    );
    let (status, out, err) = run(&["snapshot", "--addr", &url, "--session", "mem0"], WAIT);
    assert!(status.success(), "{err}");
    assert!(out.contains("blank0.txt"), "{out}");
}
