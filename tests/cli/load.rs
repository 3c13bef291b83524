//! `codereview load` against the real server: it passes its own delivery
//! checks in every mode, and its checks do fail when the server ends slow
//! participants.

use std::time::Duration;

use kit::json::Json;
use kit::process::{Output, dead_addr};
use kit::server::ServerProcess;
use kit::{WAIT, wait_until};

use crate::{BIN, run};

/// How long one load run may take (the runs take well under a second).
const LOAD_TIMEOUT: Duration = Duration::from_secs(40);

/// Runs `load --addr URL ARGS`; returns the output and its final JSON line.
fn load(server: &ServerProcess, args: &[&str]) -> (Output, Json) {
    let url = server.url();
    let mut all = vec!["load", "--addr", &url];
    all.extend(args);
    let out = run(&all, LOAD_TIMEOUT);
    let last = out
        .stdout_lines()
        .last()
        .copied()
        .unwrap_or_else(|| panic!("load printed nothing on stdout: {}", out.describe()));
    let report = Json::parse(last)
        .unwrap_or_else(|e| panic!("the last line is not JSON ({e}): {}", out.describe()));
    assert_eq!(report["type"], "load", "{}", out.describe());
    (out, report)
}

/// 2 sessions of 3 participants sending 200 messages each, plus `extra`;
/// asserts every check passed.
fn passes(extra: &[&str]) -> Json {
    let server = ServerProcess::start(BIN, &["--rate-limit", "0"]);
    let mut args = vec![
        "--sessions",
        "2",
        "--participants",
        "3",
        "--messages",
        "200",
    ];
    args.extend(extra);
    let (out, report) = load(&server, &args);
    let context = out.describe();
    assert!(out.status.success(), "{context}");
    assert_eq!(report["ok"], true, "{context}");
    for violation in ["lost", "duplicated", "reordered", "echoed", "errors"] {
        assert_eq!(report[violation].u64(), 0, "{violation}: {context}");
    }
    assert_eq!(report["sent"].u64(), 2 * 3 * 200, "{context}");
    // Each message reaches the 2 other participants of its session.
    let all = 2 * 3 * 2 * 200;
    if report["kind"] == "cursor" {
        // Cursors coalesce by design: only the final positions must arrive.
        assert_eq!(report["expected"].u64(), 0, "{context}");
        let delivered = report["delivered"].u64();
        assert!(delivered >= 2 * 3 * 2 && delivered <= all, "{context}");
    } else {
        assert_eq!(report["expected"].u64(), all, "{context}");
        assert_eq!(report["delivered"].u64(), all, "{context}");
    }
    assert_eq!(report["rate_limited"].u64(), 0, "{context}");
    // The human summary is on stderr.
    let stderr = out.stderr_lines();
    assert_eq!(stderr.len(), 4, "{context}");
    assert!(stderr[0].starts_with("load: 2 sessions x 3 participants x 200 "));
    // A send rate only where sending is paced: unpaced, sends only queue
    // (it printed "sent 600 in 0.000s (16005976/s)"). The delivery rate is
    // over the run.
    let sent = if report["kind"] == "cursor" {
        "  sent 1200; delivered ".to_owned()
    } else if extra.contains(&"--rate") {
        "  sent 1200 in ".to_owned()
    } else {
        "  sent 1200; delivered 2400 of 2400 expected in ".to_owned()
    };
    assert!(stderr[1].starts_with(&sent), "{context}");
    assert!(report.get("send_per_second").is_none(), "{context}");
    assert!(stderr[3].contains("lost 0 duplicated 0 reordered 0 echoed 0; errors 0"));
    report
}

#[test]
fn edits() {
    let report = passes(&[]);
    assert_eq!(report["kind"], "edit");
    assert_eq!(report["streams_per_conn"].u64(), 8);
}

#[test]
fn comments() {
    assert_eq!(passes(&["--kind", "comment"])["kind"], "comment");
}

#[test]
fn cursors() {
    assert_eq!(passes(&["--kind", "cursor"])["kind"], "cursor");
}

#[test]
fn extended_protocol() {
    passes(&["--extended"]);
    passes(&["--extended", "--kind", "comment"]);
}

#[test]
fn paced() {
    let report = passes(&["--rate", "500"]);
    // 200 messages at 500/s take about 0.4 s: pacing is applied (a lower
    // bound only, never a speed assertion).
    assert!(
        report["send_seconds"].f64() >= 0.3,
        "sending took {}",
        report["send_seconds"]
    );
}

#[test]
fn one_stream_per_connection() {
    assert_eq!(
        passes(&["--streams-per-conn", "1"])["streams_per_conn"].u64(),
        1
    );
}

/// Issue 15: what load sends is what clients send. `--kind mix` takes
/// edits, comments and cursors in turn; with `--extended` the edits are
/// an OT client's: inserts into the one file the session shares, based on
/// the latest version the participant knows (so the server transforms the
/// concurrent ones), and every participant ends knowing the final version.
/// Texts are `--payload` bytes. `--server-pid` reports the server's CPU and
/// RSS, and the load's own CPU. (Before: no mix, each participant replaced lines of a file of its
/// own, texts were the padding plus the marker, no server figures.)
#[test]
fn mixed_extended_load_edits_one_file_and_reports_the_server() {
    let server = ServerProcess::start(BIN, &["--rate-limit", "0"]);
    let pid = server.pid().to_string();
    let (out, report) = load(
        &server,
        &[
            "--sessions",
            "2",
            "--participants",
            "3",
            "--messages",
            "90",
            "--kind",
            "mix",
            "--extended",
            "--payload",
            "100",
            "--server-pid",
            &pid,
        ],
    );
    let context = out.describe();
    assert_eq!(report["ok"], true, "{context}");
    // Each sends 30 edits, 30 comments, 30 cursors; the 60 edits and
    // comments reach the 2 others.
    assert_eq!(report["expected"].u64(), 2 * 3 * 60 * 2, "{context}");
    assert_eq!(
        report["delivered_essential"].u64(),
        2 * 3 * 60 * 2,
        "{context}"
    );
    assert_eq!(report["final_version"].i64(), 3 * 30, "{context}");
    assert!(report["server_rss_peak"].u64() > 0, "{context}");
    assert!(report["server_rss_end"].u64() > 0, "{context}");
    // Read in nanoseconds per thread: the server's work for 720 deliveries
    // shows (in 10 ms ticks it often read as zero), and so does the load's.
    assert!(report["server_cpu_s"].f64() > 0.0, "{context}");
    assert!(
        report["cpu_per_million_deliveries"].f64() > 0.0,
        "{context}"
    );
    assert!(report["client_cpu_s"].f64() > 0.0, "{context}");
    let stderr = out.stderr_lines();
    assert!(
        stderr[1].contains(" (720 edits and comments of 720 expected, the rest cursors) in "),
        "{context}"
    );
    assert!(stderr[4].starts_with("  server: "), "{context}");
    assert!(stderr[5].starts_with("  client (this load): "), "{context}");
    // The session (kept after its participants left) has one file of all
    // 90 inserted lines, each a 100-byte text.
    let session = format!("{}0", report["session_prefix"].str());
    let snapshot = server.snapshot(&session);
    let files = snapshot["files"].object();
    assert_eq!(
        files.keys().collect::<Vec<_>>(),
        ["load/review.rs"],
        "{snapshot}"
    );
    let lines = files["load/review.rs"].strings();
    assert_eq!(lines.len(), 90, "{snapshot}");
    assert!(lines.iter().all(|l| l.len() == 100), "{snapshot}");
    let comments = snapshot["comments"].array();
    assert_eq!(comments.len(), 90, "{snapshot}");
    assert!(
        comments.iter().all(|c| c["text"].str().len() == 100),
        "{snapshot}"
    );
}

/// A load run that overflows a 2 KiB outbox: 1.5 KB events, unpaced.
fn overflowing_load() -> (ServerProcess, Output, Json) {
    // A 2 KiB outbox cannot hold two 1.5 KB events: whoever falls behind by
    // two messages is ended with RESOURCE_EXHAUSTED.
    let server = ServerProcess::start(BIN, &["--rate-limit", "0", "--outbox-bytes", "2KiB"]);
    let (out, report) = load(
        &server,
        &[
            "--sessions",
            "2",
            "--participants",
            "3",
            "--messages",
            "300",
            "--payload",
            "1500",
            "--drain",
            "3s",
        ],
    );
    (server, out, report)
}

#[test]
fn checks_fail_when_the_server_ends_slow_participants() {
    let (server, out, report) = overflowing_load();
    let context = out.describe();
    assert_eq!(out.status.code(), Some(1), "{context}");
    assert_eq!(report["ok"], false, "{context}");
    assert!(report["errors"].u64() > 0, "{context}");
    assert!(
        report["delivered"].u64() < report["expected"].u64(),
        "{context}"
    );
    assert!(report["lost"].u64() > 0, "{context}");
    let violations = out.stderr_lines()[3];
    assert!(violations.contains("(first: p"), "{context}");
    // The server says why it ended them.
    wait_until("the server to log the overflow", WAIT, || {
        server.proc.stderr().iter().any(|l| {
            l.contains(r#""msg":"participant stream closed""#)
                && l.contains(r#""status":"RESOURCE_EXHAUSTED""#)
        })
    });
}

/// Bug (src/cli/load/): when the server ends a participant's call while
/// it is sending, the failed flush is reported ("send failed: UNAVAILABLE:
/// the request stream was closed by the server") instead of the call's
/// status (RESOURCE_EXHAUSTED: fell behind ...), which is what explains the
/// failure. Seen in about 1 run in 10 on a loaded machine.
#[test]
fn load_names_the_status_that_ended_a_participant() {
    for _ in 0..20 {
        let (_server, out, _) = overflowing_load();
        let violations = out.stderr_lines()[3];
        assert!(
            violations.contains("RESOURCE_EXHAUSTED"),
            "{}",
            out.describe()
        );
    }
}

/// Bug (issue 11, item 13): against a server's rate limit, the refused
/// messages (a per-message RESOURCE_EXHAUSTED "rate limit: ...") were
/// reported as lost, each refusal counted as an error, after waiting out
/// the whole drain. They are counted apart, with what to do about them; the
/// run still fails (it did not carry out the load asked for).
#[test]
fn rate_limit_refusals_are_counted_apart_and_not_called_lost() {
    let server = ServerProcess::start(BIN, &["--rate-limit", "50", "--rate-burst", "20"]);
    let (out, report) = load(&server, &["--participants", "3", "--messages", "100"]);
    let context = out.describe();
    assert_eq!(out.status.code(), Some(1), "{context}");
    assert_eq!(report["ok"], false, "{context}");
    let refused = report["rate_limited"].u64();
    assert!(refused > 0, "{context}");
    for clean in ["lost", "errors", "duplicated", "reordered", "echoed"] {
        assert_eq!(report[clean].u64(), 0, "{clean}: {context}");
    }
    // Each refused message reaches nobody; every other one reaches the two
    // others.
    assert_eq!(
        report["expected"].u64(),
        (3 * 100 - refused) * 2,
        "{context}"
    );
    assert_eq!(
        report["delivered"].u64(),
        report["expected"].u64(),
        "{context}"
    );
    let stderr = out.stderr_lines();
    assert!(
        stderr[3].starts_with("  violations: lost 0 duplicated 0 reordered 0 echoed 0; errors 0"),
        "{context}"
    );
    assert_eq!(
        stderr[4],
        format!(
            "  {refused} messages refused by the server's rate limit (rate limit: at most 50 \
             messages per second (burst 20)): not lost, never sent on; run serve with \
             --rate-limit 0 for a benchmark, or load with --rate below 50"
        ),
        "{context}"
    );
}

#[test]
fn bad_arguments_and_refused_connections_are_one_line() {
    let server = ServerProcess::start(BIN, &[]);
    let url = server.url();
    let dead = dead_addr();
    // Status 2 for usage and setup errors, 1 for a failed connection.
    let cases: [(&[&str], &str, i32); 4] = [
        (
            &["--addr", &url, "--participants", "1"],
            "codereview load: need --sessions >= 1, --participants >= 2, --messages >= 1, --streams-per-conn >= 1",
            2,
        ),
        (
            &["--addr", &url, "--kind", "dance"],
            "codereview load: --kind must be edit, comment, cursor or mix, got \"dance\"",
            2,
        ),
        (
            &["--addr", "ftp://x"],
            "codereview load: bad address \"ftp://x\": the scheme must be http:// or https://",
            2,
        ),
        (
            &["--addr", &dead],
            "codereview load: UNAVAILABLE: cannot connect to",
            1,
        ),
    ];
    for (args, expected, code) in cases {
        let mut all = vec!["load"];
        all.extend(args);
        let out = run(&all, LOAD_TIMEOUT);
        let line = if code == 2 {
            out.one_line_usage_error()
        } else {
            out.one_line_error()
        };
        assert!(line.starts_with(expected), "{args:?}: {line}");
        assert!(out.stdout.is_empty(), "{}", out.describe());
    }
}
