//! Prometheus metrics that move with traffic and parse with a real
//! Prometheus text parser (prometheus_client), and the metrics listener's
//! HTTP behaviour.

use std::io::Read;
use std::net::TcpStream;

use codereview::grpc::Code;
use codereview::grpc::client::ChannelConfig;
use codereview::pb::codereview::Join;
use codereview::pb::codereview::code_edit::Op;
use codereview::pb::codereview::joined::Catchup;
use codereview::pb::codereview::presence_update::Status as Presence;
use codereview::pb::codereview::session_message::Payload;
use codereview::pb::paths::COLLABORATIVE_SESSION;
use kit::WAIT;
use kit::participant::Participant;
use kit::payloads::{incompressible_line, is_presence, join_message_with};
use kit::process::TempDir;
use kit::server::ServerProcess;

use crate::exposition::{
    http_get, http_raw, prometheus_parse, prometheus_python, scrape, scrape_until,
};
use crate::{
    BIN, SECRET, connect, edit, health_command, is_ack, is_notice, join_process, member,
    mint_token, quit, run, runtime, spawn, str_field, wait_ack,
};

// ---------------------------------------------------------------------------
// 1. Metrics move as traffic flows

#[test]
fn metrics_move_as_traffic_flows_and_gauges_follow_a_live_participant() {
    let server = ServerProcess::start(
        BIN,
        &[
            "--metrics-addr",
            "127.0.0.1:0",
            "--rate-limit",
            "0",
            "--session-linger",
            "0s",
            "--session-retention",
            "0s",
        ],
    );
    let metrics = server.metrics_addr().to_owned();
    let method = [("method", COLLABORATIVE_SESSION)];
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
            // Edits at the versions the clients know, sent without waiting
            // for acks: three participants' edits cross, so some are
            // transformed (article-style version-0 edits only cross when
            // the timing happens to make them).
            "--extended",
        ],
        WAIT,
    );
    assert!(status.success(), "load: {status}\n{out}\n{err}");
    assert!(out.contains("\"ok\":true"), "{out}");

    // A participant that stays connected, and one edit from it.
    let mut join = join_process(&server, "ops-live", "lingerer", None);
    join.send("insert notes.txt 0 a line from the lingerer");
    wait_ack(&join, 1);

    // And a watcher of that session.
    let watcher = spawn(&["watch", "--addr", &url, "--session", "ops-live", "--json"]);
    watcher.find_json("the caught_up notice", |o| is_notice(o, "caught_up"));

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
            &[("method", COLLABORATIVE_SESSION), ("le", "+Inf")]
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
            &[("method", COLLABORATIVE_SESSION), ("code", "OK")]
        ) > during.value(
            "codereview_rpcs_total",
            &[("method", COLLABORATIVE_SESSION), ("code", "OK")]
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
    let server = ServerProcess::start(
        BIN,
        &[
            "--metrics-addr",
            "127.0.0.1:0",
            "--auth-secret-file",
            secret,
        ],
    );
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
    let server = ServerProcess::start(
        BIN,
        &["--metrics-addr", "127.0.0.1:0", "--max-connections", "1"],
    );
    let metrics = server.metrics_addr().to_owned();
    let rejected = [("reason", "max_connections")];
    assert_eq!(
        scrape(&metrics).value("codereview_connections_rejected_total", &rejected),
        0.0
    );
    let rt = runtime();
    // One connection holds the only slot.
    let (_channel, _member) = rt.block_on(async {
        let channel = connect(&server.addr, ChannelConfig::default()).await;
        let (member, _) = member(&channel, "ops-full", "first", Join::default()).await;
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

#[test]
fn slow_consumers_are_counted_when_a_participant_that_never_reads_is_ended() {
    let server = ServerProcess::start(
        BIN,
        &[
            "--metrics-addr",
            "127.0.0.1:0",
            "--rate-limit",
            "0",
            "--outbox-bytes",
            "16KiB",
        ],
    );
    let metrics = server.metrics_addr().to_owned();
    assert_eq!(
        scrape(&metrics).value("codereview_slow_consumers_total", &[]),
        0.0
    );
    let rt = runtime();
    let (_channel, _writer, sleepy_end) = rt.block_on(async {
        let channel = connect(&server.addr, ChannelConfig::default()).await;
        let (mut writer, _) = member(&channel, "ops-slow", "writer", Join::default()).await;
        // Small windows, and it never reads.
        let small = ChannelConfig {
            initial_stream_window: 16 * 1024,
            initial_connection_window: 16 * 1024,
            ..ChannelConfig::default()
        };
        let sleepy_channel = connect(&server.addr, small).await;
        let mut sleepy = Participant::open(
            &sleepy_channel,
            None,
            join_message_with("ops-slow", "sleepy", Join::default()),
        )
        .await;
        writer
            .recv_matching(|m| is_presence(m, "sleepy", Presence::Joined))
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
                .recv_matching(|m| is_ack(m, cs) || is_presence(m, "sleepy", Presence::Left))
                .await;
            if !is_ack(&ack_or_left, cs) {
                sleepy_left = true;
                writer.recv_matching(|m| is_ack(m, cs)).await;
            }
            if sleepy_left {
                break;
            }
        }
        if !sleepy_left {
            writer
                .recv_matching(|m| is_presence(m, "sleepy", Presence::Left))
                .await;
        }
        // Now it reads: what was in flight, then its status.
        (channel, writer, sleepy.until_end().await.1)
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
    let server = ServerProcess::start(BIN, &["--metrics-addr", "127.0.0.1:0", "--rate-limit", "0"]);
    let metrics = server.metrics_addr().to_owned();
    let before = scrape(&metrics);
    assert_eq!(
        before.value("codereview_resumes_total", &[("mode", "replay")]),
        0.0
    );
    let rt = runtime();
    let catchup = rt.block_on(async {
        let channel = connect(&server.addr, ChannelConfig::default()).await;
        let (mut ann, ann_join) = member(&channel, "ops-resume", "ann", Join::default()).await;
        let (mut bob, _) = member(&channel, "ops-resume", "bob", Join::default()).await;
        bob.send(edit(Op::Insert, "a.txt", 0, "hello")).await;
        bob.recv_matching(|m| is_ack(m, 1)).await;
        ann.recv_matching(|m| matches!(m.payload, Some(Payload::Edit(_))))
            .await;
        let (last, epoch) = (ann.last_sequence, ann_join.joined.session_epoch);
        // Ann's stream breaks (cancelled); she comes back where she was.
        ann.cancel();
        drop(ann);
        bob.recv_matching(|m| is_presence(m, "ann", Presence::Left))
            .await;
        let resume = Join {
            want_snapshot: false,
            resume_after_sequence: Some(last),
            session_epoch: epoch,
        };
        let (_ann, joined) = member(&channel, "ops-resume", "ann", resume).await;
        joined.joined.catchup
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

/// The metric family names the README's "Operating" section lists.
fn readme_families() -> Vec<String> {
    let readme = std::fs::read_to_string(kit::root().join("README.md")).expect("README.md");
    let start = readme
        .find("## Operating")
        .expect("README has an Operating section");
    let section = &readme[start + 3..];
    let section = &section[..section.find("\n## ").unwrap_or(section.len())];
    let mut names: Vec<String> = Vec::new();
    for (i, _) in section.match_indices("codereview_") {
        let name: String = section[i..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        if !names.contains(&name) {
            names.push(name);
        }
    }
    names
}

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
    let server = ServerProcess::start(
        BIN,
        &[
            "--metrics-addr",
            "127.0.0.1:0",
            "--auth-secret-file",
            secret_path,
            "--rate-limit",
            "0",
        ],
    );
    let metrics = server.metrics_addr().to_owned();
    // Traffic that gives the labelled families samples: sessions with edits,
    // an auth failure, a health check.
    let token = mint_token(&secret, "ann", "author");
    let mut join = join_process(&server, "ops-expo", "ann", Some(&token));
    join.send("insert a.txt 0 first");
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
    let server = ServerProcess::start(BIN, &["--metrics-addr", "127.0.0.1:0"]);
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
    let server = ServerProcess::start(BIN, &["--metrics-addr", "127.0.0.1:0"]);
    let metrics = server.metrics_addr().to_owned();
    let head = http_raw(
        &metrics,
        format!("HEAD /healthz HTTP/1.1\r\nHost: {metrics}\r\n\r\n").as_bytes(),
    )
    .unwrap();
    assert_eq!(head.status, 200, "{head:?}");
    assert_eq!(head.body, "", "a HEAD response has no body: {head:?}");
}
