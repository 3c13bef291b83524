//! Readiness, the drain on SIGTERM/SIGINT, SIGHUP, and the memory budget
//! as the process's resident memory shows it.

use std::time::{Duration, Instant};

use codereview::grpc::Code;
use codereview::grpc::client::ChannelConfig;
use codereview::pb::codereview::notice::Kind as NoticeKind;
use codereview::pb::codereview::presence_update::Status as Presence;
use codereview::pb::codereview::session_message::Payload;
use codereview::pb::codereview::{Join, PresenceUpdate};
use codereview::pb::health::health_check_response::ServingStatus;
use kit::WAIT;
use kit::json::Json;
use kit::payloads::as_notice;
use kit::process::{TempDir, send_signal};
use kit::server::ServerProcess;

use crate::exposition::{http_get, scrape, scrape_until};
use crate::logs::assert_json_lines;
use crate::{
    BIN, connect, health_command, health_watch, int_field, is_notice, join_process, member,
    next_health, quit, run, runtime, str_field,
};

#[test]
fn readiness_and_health_turn_false_while_draining_and_the_drain_ends_when_streams_do() {
    let mut server = ServerProcess::start(
        BIN,
        &["--metrics-addr", "127.0.0.1:0", "--drain-timeout", "60s"],
    );
    let metrics = server.metrics_addr().to_owned();
    assert_eq!(http_get(&metrics, "/readyz").unwrap().status, 200);
    let (status, out) = health_command(&server);
    assert!(status.success(), "{out}");
    assert_eq!(out.trim(), "SERVING");

    let rt = runtime();
    let (_channel, mut member, mut watch) = rt.block_on(async {
        let channel = connect(&server.addr, ChannelConfig::default()).await;
        let (member, _) = member(&channel, "ops-ready", "stayer", Join::default()).await;
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
            .recv_matching(|m| as_notice(m, NoticeKind::GoingAway).is_some())
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
        // LEFT, without a client sequence.
        member
            .send_payload(Some(Payload::Presence(PresenceUpdate {
                status: Presence::Left as i32,
                role: 0,
            })))
            .await;
        let end = member.until_end().await.1;
        watch.cancel();
        end
    });
    assert!(end.is_ok(), "{end:?}");
    drop(watch);
    let status = server
        .proc
        .try_wait_exit(WAIT)
        .expect("the server exits once drained");
    assert!(status.success(), "{status}");
    let log = server.log();
    let last = Json::object_of(log.last().unwrap()).expect("a JSON line");
    assert_eq!(
        str_field(&last, "msg"),
        Some("shutdown complete"),
        "{log:?}"
    );
    assert_eq!(
        last.get("drained_in_time"),
        Some(&Json::Bool(true)),
        "{log:?}"
    );
    assert_eq!(int_field(&last, "participants"), Some(1));
}

// ---------------------------------------------------------------------------
// 5. Shutdown and drain

/// A `join --json` process and a participant of ours that ignores the notice
/// share a session; `signal` starts the drain (2 s).
fn drain_with(signal: &str) {
    const DRAIN: Duration = Duration::from_secs(2);
    let mut server = ServerProcess::start(
        BIN,
        &["--metrics-addr", "127.0.0.1:0", "--drain-timeout", "2s"],
    );
    let metrics = server.metrics_addr().to_owned();
    let join = join_process(&server, "ops-drain", "polite", None);
    let rt = runtime();
    let (channel, mut stubborn, mut watch) = rt.block_on(async {
        let channel = connect(&server.addr, ChannelConfig::default()).await;
        let (stubborn, _) = member(&channel, "ops-drain", "stubborn", Join::default()).await;
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
    let notice = join.find_json("the going_away notice", |o| is_notice(o, "going_away"));
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
            .recv_matching(|m| as_notice(m, NoticeKind::GoingAway).is_some())
            .await;
        let end = stubborn.until_end().await.1;
        (end, signalled.elapsed())
    });
    assert_eq!(end.code(), Code::Unavailable, "{end:?}");
    assert!(
        ended_after >= DRAIN,
        "ended after {ended_after:?}, before the drain time"
    );

    let exit_by = signalled + DRAIN + Duration::from_secs(3);
    let status = server
        .proc
        .try_wait_exit(exit_by.saturating_duration_since(Instant::now()))
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
        Some(&Json::Bool(false)),
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
    let mut child = std::process::Command::new(BIN.path())
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
    let mut server = ServerProcess::start(BIN, &["--metrics-addr", "127.0.0.1:0"]);
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
    let server = ServerProcess::start(BIN, &["--max-memory", "64MiB"]);
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
