//! Structured logs: correlation fields, the JSON and text formats, levels,
//! and never a token or any content.

use kit::json::Json;
use kit::process::{TempDir, free_port};
use kit::server::{LogFormat, ServerProcess};
use kit::{WAIT, wait_until};

use crate::exposition::http_get;
use crate::{
    BIN, SECRET, int_field, join_process, mint_token, quit, run, str_field, text_message, wait_ack,
};

// ---------------------------------------------------------------------------
// 4. Logs

/// Whether `ts` is an RFC 3339 UTC timestamp with optional fraction:
/// `YYYY-MM-DDTHH:MM:SS[.fff]Z` (or a `+HH:MM`/`-HH:MM` offset), with
/// plausible field ranges.
fn is_rfc3339(ts: &str) -> bool {
    let b = ts.as_bytes();
    let digits = |range: std::ops::Range<usize>| {
        range
            .clone()
            .all(|i| b.get(i).is_some_and(u8::is_ascii_digit))
    };
    let num = |range: std::ops::Range<usize>| ts[range].parse::<u32>().unwrap_or(99);
    if b.len() < 20
        || !digits(0..4)
        || b[4] != b'-'
        || !digits(5..7)
        || b[7] != b'-'
        || !digits(8..10)
        || !(b[10] == b'T' || b[10] == b't')
        || !digits(11..13)
        || b[13] != b':'
        || !digits(14..16)
        || b[16] != b':'
        || !digits(17..19)
    {
        return false;
    }
    if !(1..=12).contains(&num(5..7))
        || !(1..=31).contains(&num(8..10))
        || num(11..13) > 23
        || num(14..16) > 59
        || num(17..19) > 60
    {
        return false;
    }
    let mut rest = &ts[19..];
    if let Some(fraction) = rest.strip_prefix('.') {
        let n = fraction.bytes().take_while(u8::is_ascii_digit).count();
        if n == 0 {
            return false;
        }
        rest = &fraction[n..];
    }
    match rest {
        "Z" | "z" => true,
        offset => {
            let o = offset.as_bytes();
            o.len() == 6
                && (o[0] == b'+' || o[0] == b'-')
                && o[1..3].iter().all(u8::is_ascii_digit)
                && o[3] == b':'
                && o[4..6].iter().all(u8::is_ascii_digit)
        }
    }
}

/// Checks every stderr line is a JSON object with ts (RFC 3339), level, msg.
pub(crate) fn assert_json_lines(log: &[String]) -> Vec<Json> {
    log.iter()
        .map(|line| {
            let object =
                Json::object_of(line).unwrap_or_else(|| panic!("not a JSON object: {line:?}"));
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
    let mut server = ServerProcess::start(
        BIN,
        &[
            "--auth-secret-file",
            secret_path,
            "--log-level",
            "debug",
            "--rate-limit",
            "0",
        ],
    );
    let token = mint_token(&secret, "alice", "author");
    let unique = format!("{:x}", std::process::id() as u64 * 7919 + 0x5eed);
    let edit_text = format!("UNIQUE-EDIT-TEXT-{unique}");
    let comment_text = format!("UNIQUE-COMMENT-TEXT-{unique}");

    let mut join = join_process(&server, "ops-logs", "alice", Some(&token));
    join.send(&format!("insert notes.txt 0 {edit_text}"));
    wait_ack(&join, 1);
    join.send(&format!("comment 0 {comment_text}"));
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
    let status = server.proc.try_wait_exit(WAIT).expect("the server exits");
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
    let mut server = ServerProcess::start_with(BIN, LogFormat::Text, &[]);
    let join = join_process(&server, "ops-text", "texter", None);
    quit(join);
    server
        .proc
        .stderr
        .find(WAIT, |l| {
            text_message(l).as_deref() == Some("participant stream closed")
        })
        .expect("the close line");
    server.signal("TERM");
    assert!(server.proc.try_wait_exit(WAIT).expect("exits").success());
    let log = server.log();
    assert!(log.len() >= 4, "{log:#?}");
    for line in &log {
        assert!(
            Json::object_of(line).is_none() && !line.starts_with('{'),
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
            .find(|l| text_message(l).as_deref() == Some(msg))
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
    assert_eq!(
        text_message(log.last().unwrap()).as_deref(),
        Some("shutdown complete")
    );
}

/// A server that logs nothing at startup (e.g. `--log-level error`): given
/// ports reserved here and found ready when `/readyz` answers.
fn start_silent(extra: &[&str]) -> ServerProcess {
    let addr = format!("127.0.0.1:{}", free_port());
    let metrics = format!("127.0.0.1:{}", free_port());
    let mut args = vec!["serve", "--addr", &addr, "--metrics-addr", &metrics];
    args.extend(extra);
    let mut server = ServerProcess::spawn(BIN, &args, addr.clone(), Some(metrics.clone()));
    wait_until("the silent server to be ready", WAIT, || {
        if let Some(status) = server.proc.try_status() {
            panic!("the server exited early with {status}: {:#?}", server.log());
        }
        http_get(&metrics, "/readyz").is_ok_and(|r| r.status == 200)
            && std::net::TcpStream::connect(&addr).is_ok()
    });
    server
}

#[test]
fn log_level_error_suppresses_info_lines() {
    let mut server = start_silent(&["--log-level", "error", "--log-format", "json"]);
    // Work that logs at info otherwise: a participant session and a drain.
    let join = join_process(&server, "ops-quiet", "hush", None);
    quit(join);
    server.signal("TERM");
    assert!(server.proc.try_wait_exit(WAIT).expect("exits").success());
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
