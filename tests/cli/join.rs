//! `codereview join` run as a person would: real processes, commands typed on
//! stdin, `--json` events read from stdout. Convergence of concurrent
//! participants, reconnection through a flaky network with exactly-once
//! edits, buffering while disconnected, fatal statuses, giving up, and a
//! server going away.

use std::thread;
use std::time::{Duration, Instant};

use kit::json::Json;
use kit::process::{Proc, TempDir, dead_addr};
use kit::proxy::{Proxy, Rng};
use kit::server::ServerProcess;
use kit::{WAIT, wait_until};

use crate::{BIN, Joined, assert_no_repeats, join, run, settle};

/// Uploads `lines` as file `name` of `session`.
fn seed_file(server: &ServerProcess, session: &str, name: &str, lines: &[String]) {
    let dir = TempDir::new("seed");
    let path = dir.join("file");
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    run(
        &[
            "upload",
            "--addr",
            &server.url(),
            "--session",
            session,
            "--name",
            name,
            &path.display().to_string(),
        ],
        WAIT,
    )
    .ok();
}

/// Nothing a participant printed says a command was refused or an error came
/// back: the scripts only type valid commands.
fn assert_all_applied(participant: &Proc) {
    for line in participant.json_lines() {
        let refused = line["type"] == "error"
            || (line["type"] == "status" && line["text"].str().starts_with("not "));
        assert!(
            !refused,
            "{}: {line}\n{}",
            participant.name,
            participant.transcript()
        );
    }
}

/// Quits every participant; their final documents (printed on quit) must be
/// identical and equal the server's snapshot.
fn quit_and_compare(server: &ServerProcess, session: &str, participants: &mut [&mut Proc]) -> Json {
    let snapshot = server.snapshot(session);
    for participant in participants.iter_mut() {
        let document = participant.quit();
        assert_eq!(
            document["files"], snapshot["files"],
            "{}'s final document differs from the server's snapshot",
            participant.name
        );
        assert_eq!(document["version"].i64(), snapshot["version"].i64());
        assert_eq!(document["pending"].u64(), 0);
    }
    snapshot
}

#[test]
fn conflicting_bursts_converge() {
    let server = ServerProcess::start(BIN, &["--rate-limit", "0"]);
    let session = "burst";
    let lines: Vec<String> = (0..10).map(|i| format!("line {i}")).collect();
    seed_file(&server, session, "f.rs", &lines);
    let mut alice = join(&server.url(), session, "alice", &[]);
    let mut bob = join(&server.url(), session, "bob", &[]);
    alice.caught_up();
    bob.caught_up();
    // Both have the upload before anyone types.
    for p in [&mut alice, &mut bob] {
        assert_eq!(p.show()["files"]["f.rs"].strings(), lines);
    }

    // Conflicting commands on lines 0..5, interleaved, nobody waiting.
    let alice_script = [
        "edit f.rs 0 A0",
        "delete f.rs 1",
        "insert f.rs 2 A-ins2",
        "edit f.rs 3 A3",
        "delete f.rs 0",
        "insert f.rs 0 A-top",
        "edit f.rs 4 A4",
        "delete f.rs 2",
        "edit f.rs 1 A1",
        "insert f.rs 5 A-ins5",
    ];
    let bob_script = [
        "delete f.rs 0",
        "edit f.rs 1 B1",
        "insert f.rs 1 B-ins1",
        "delete f.rs 3",
        "edit f.rs 0 B0",
        "insert f.rs 5 B-ins5",
        "delete f.rs 1",
        "edit f.rs 2 B2",
        "edit f.rs 0 B0-again",
        "delete f.rs 4",
    ];
    for (a, b) in alice_script.iter().zip(bob_script.iter()) {
        alice.send(a);
        bob.send(b);
    }
    settle(&server.url(), session, &mut [&mut alice, &mut bob]);
    quit_and_compare(&server, session, &mut [&mut alice, &mut bob]);
    for p in [&alice, &bob] {
        assert_all_applied(p);
        assert_no_repeats(p);
    }
}

#[test]
fn random_bursts_converge() {
    let server = ServerProcess::start(BIN, &["--rate-limit", "0"]);
    let session = "random";
    let lines: Vec<String> = (0..30).map(|i| format!("line {i}")).collect();
    seed_file(&server, session, "f.rs", &lines);
    let mut alice = join(&server.url(), session, "alice", &[]);
    let mut bob = join(&server.url(), session, "bob", &[]);
    alice.caught_up();
    bob.caught_up();
    let seed = 0x5eed_c0de;
    let mut rng = Rng::new(seed);
    const BURST: usize = 12;
    for round in 0..3 {
        // Each participant's script is valid in its own view whatever the
        // other does concurrently: `floor` is a lower bound of the file's
        // length there (the other may delete at most BURST lines).
        let mut scripts: Vec<Vec<String>> = Vec::new();
        for (name, p) in [("a", &mut alice), ("b", &mut bob)] {
            let len = p.show()["files"]["f.rs"].array().len() as i64;
            let mut floor = len - BURST as i64;
            assert!(floor > 6, "the file shrank too much: {len} lines");
            let mut script = Vec::new();
            for i in 0..BURST {
                let line = rng.below(6) as i64;
                let text = format!("{name}-r{round}-{i}");
                let command = match rng.below(3) {
                    1 if line <= floor => {
                        floor += 1;
                        format!("insert f.rs {line} {text}")
                    }
                    2 if line < floor => {
                        floor -= 1;
                        format!("delete f.rs {line}")
                    }
                    _ => format!("edit f.rs {line} {text}"),
                };
                script.push(command);
            }
            scripts.push(script);
        }
        for (a, b) in scripts[0].iter().zip(scripts[1].iter()) {
            alice.send(a);
            bob.send(b);
        }
        settle(&server.url(), session, &mut [&mut alice, &mut bob]);
    }
    quit_and_compare(&server, session, &mut [&mut alice, &mut bob]);
    for p in [&alice, &bob] {
        assert_all_applied(p);
        assert_no_repeats(p);
    }
}

/// How often each of `texts` occurs in `lines`.
fn occurrences<'a>(
    lines: &[String],
    texts: impl Iterator<Item = &'a String>,
) -> Vec<(String, usize)> {
    texts
        .map(|t| (t.clone(), lines.iter().filter(|l| *l == t).count()))
        .collect()
}

#[test]
fn flaky_network_applies_every_edit_exactly_once() {
    let server = ServerProcess::start(BIN, &["--rate-limit", "0"]);
    let session = "flaky";
    let proxy = Proxy::start(&server.addr);
    let mut alice = join(&server.url(), session, "alice", &[]);
    let mut bob = join(
        &proxy.url(),
        session,
        "bob",
        &[
            "--backoff",
            "50ms",
            "--backoff-max",
            "300ms",
            "--max-attempts",
            "100",
        ],
    );
    alice.caught_up();
    bob.caught_up();

    let seed = 0x00f1_a4e5;
    let mut rng = Rng::new(seed);
    proxy.start_flaky(300, 700, seed);
    let mut alice_texts = Vec::new();
    let mut bob_texts = Vec::new();
    let mut forced_offline = 0;
    // bob's messages are numbered 1, 2, ... in the order he types them; the
    // numbers of his inserts into his own file (never cancelled).
    let mut bob_commands = 0u64;
    let mut bob_own = Vec::new();
    let started = Instant::now();
    for i in 0..120 {
        // Twice, make sure bob is offline while he types: refuse new
        // connections, cut the current one, wait until he noticed.
        if i == 40 || i == 80 {
            // A burst right before the cut: some of it is in flight.
            for _ in 0..10 {
                let text = format!("bob-{}", bob_texts.len());
                bob.send(&format!("insert bob.rs 0 {text}"));
                bob_texts.push(text);
                bob_commands += 1;
                bob_own.push(bob_commands);
            }
            let before = disconnects(&bob);
            proxy.set_refusing(true);
            proxy.cut();
            wait_until("bob to notice the cut", WAIT, || disconnects(&bob) > before);
            for _ in 0..5 {
                let text = format!("bob-{}", bob_texts.len());
                bob.send(&format!("insert bob.rs 0 {text}"));
                bob_texts.push(text);
                bob_commands += 1;
                bob_own.push(bob_commands);
            }
            thread::sleep(Duration::from_millis(150));
            proxy.set_refusing(false);
            forced_offline += 1;
        }
        bob_commands += 1;
        for (name, p, texts) in [
            ("alice", &mut alice, &mut alice_texts),
            ("bob", &mut bob, &mut bob_texts),
        ] {
            if rng.below(3) == 0 {
                // The shared file: conflicts, checked for convergence only.
                let text = format!("{name}-shared-{i}");
                if rng.below(2) == 0 {
                    p.send(&format!("edit shared.rs {} {text}", rng.below(4)));
                } else {
                    p.send(&format!("insert shared.rs 0 {text}"));
                }
            } else {
                // Its own file: inserts no concurrent edit can cancel.
                let text = format!("{name}-{}", texts.len());
                p.send(&format!("insert {name}.rs 0 {text}"));
                texts.push(text);
                if name == "bob" {
                    bob_own.push(bob_commands);
                }
            }
        }
        thread::sleep(Duration::from_millis(25));
    }
    proxy.stop_flaky();
    let typing = started.elapsed();
    settle(&server.url(), session, &mut [&mut alice, &mut bob]);
    let snapshot = quit_and_compare(&server, session, &mut [&mut alice, &mut bob]);

    // bob went through several reconnections.
    let reconnections = bob
        .json_lines()
        .iter()
        .filter(|j| j["type"] == "joined")
        .count()
        - 1;
    assert!(
        reconnections >= 3 && disconnects(&bob) >= 3,
        "bob reconnected only {reconnections} times ({} disconnects, {} cuts in {typing:?})\n{}",
        disconnects(&bob),
        proxy.cuts(),
        bob.transcript()
    );
    assert_eq!(forced_offline, 2);
    let duplicates = bob
        .json_lines()
        .iter()
        .filter(|j| j["type"] == "ack" && j["duplicate"] == true)
        .count();
    // Acks of bob's edits in a resume's replay: applied, but the ack was lost
    // with the connection.
    let mut replaying = false;
    let mut replayed = 0;
    for j in bob.json_lines() {
        if j["type"] == "joined" {
            replaying = true;
        } else if j["type"] == "notice" && j["kind"] == "caught_up" {
            replaying = false;
        } else if replaying && j["type"] == "ack" && j["client_sequence"].u64() != 0 {
            replayed += 1;
        }
    }
    eprintln!(
        "bob: {reconnections} reconnections, {} disconnects, {} cuts, {duplicates} duplicate acks, {replayed} acks replayed, {} edits of his own file in {typing:?}",
        disconnects(&bob),
        proxy.cuts(),
        bob_texts.len()
    );
    // Each of bob's inserts was acknowledged under its original client
    // sequence number (a resend keeps it), and no other number was used. (A
    // shared-file edit that a concurrent edit cancelled while it waited is
    // not resent, so it may go unacknowledged.)
    let mut acked: Vec<u64> = bob
        .json_lines()
        .iter()
        .filter(|j| j["type"] == "ack" && j["client_sequence"].u64() != 0)
        .map(|j| j["client_sequence"].u64())
        .collect();
    acked.sort_unstable();
    acked.dedup();
    let unacked: Vec<u64> = bob_own
        .iter()
        .copied()
        .filter(|cs| acked.binary_search(cs).is_err())
        .collect();
    assert!(
        unacked.is_empty(),
        "bob's inserts {unacked:?} were not acknowledged"
    );
    assert!(
        acked.iter().all(|cs| (1..=bob_commands).contains(cs)),
        "acks for numbers bob never used: {acked:?}"
    );
    assert_eq!(bob_own.len(), bob_texts.len());
    // Each reconnection resumed after the last event bob had printed.
    let catchups: Vec<String> = bob
        .json_lines()
        .iter()
        .filter(|j| j["type"] == "joined")
        .map(|j| j["catchup"].str().to_owned())
        .collect();
    assert!(
        catchups[1..].iter().all(|c| c == "RESUME"),
        "{catchups:?}\n{}",
        bob.transcript()
    );

    // Every edit applied exactly once, and nothing else in the own files.
    for (name, texts) in [("alice", &alice_texts), ("bob", &bob_texts)] {
        let file = snapshot["files"][&format!("{name}.rs")[..]].strings();
        let counts = occurrences(&file, texts.iter());
        let wrong: Vec<_> = counts.iter().filter(|(_, n)| *n != 1).collect();
        assert!(
            wrong.is_empty(),
            "{name}'s edits not applied exactly once: {wrong:?}"
        );
        assert_eq!(file.len(), texts.len(), "{name}.rs: {file:?}");
    }

    // alice saw each of bob's edits, once.
    let seen_by_alice: Vec<String> = alice
        .json_lines()
        .iter()
        .filter(|j| j["type"] == "edit" && j["user"] == "bob" && j["file"] == "bob.rs")
        .map(|j| j["content"].str().to_owned())
        .collect();
    let counts = occurrences(&seen_by_alice, bob_texts.iter());
    let wrong: Vec<_> = counts.iter().filter(|(_, n)| *n != 1).collect();
    assert!(
        wrong.is_empty(),
        "alice did not see each of bob's edits exactly once: {wrong:?}"
    );
    assert_eq!(seen_by_alice.len(), bob_texts.len());

    for p in [&alice, &bob] {
        assert_all_applied(p);
        assert_no_repeats(p);
    }
}

/// How many times a participant said it was disconnected.
fn disconnects(participant: &Proc) -> usize {
    participant
        .statuses()
        .iter()
        .filter(|s| s.starts_with("disconnected"))
        .count()
}

/// Joins `session` as `user` through `proxy`, waits for the catch-up, then
/// makes the proxy refuse and cuts the connection: the participant was up
/// and is now offline, retrying every 20..100 ms.
fn join_then_go_offline(proxy: &Proxy, session: &str, user: &str, extra: &[&str]) -> Proc {
    let mut args = vec![
        "--backoff",
        "20ms",
        "--backoff-max",
        "100ms",
        "--max-attempts",
        "1000",
    ];
    args.extend(extra);
    let mut participant = join(&proxy.url(), session, user, &args);
    participant.caught_up();
    proxy.set_refusing(true);
    proxy.cut();
    participant.wait_json("disconnected", WAIT, |j| {
        j["type"] == "status" && j["text"].str().starts_with("disconnected")
    });
    participant
}

#[test]
fn buffers_while_disconnected_up_to_the_limit() {
    let server = ServerProcess::start(BIN, &["--rate-limit", "0"]);
    let session = "buffer";
    let proxy = Proxy::start(&server.addr);
    let mut carol = join_then_go_offline(&proxy, session, "carol", &["--buffer", "3"]);
    carol.send("insert f.rs 0 one");
    carol.send("insert f.rs 0 two");
    carol.send("comment 0 three");
    carol.send("insert f.rs 0 four");
    let refusal = carol.wait_json("refusing the 4th command", WAIT, |j| {
        j["type"] == "status" && j["text"].str().starts_with("not applied")
    });
    assert_eq!(
        refusal["text"].str(),
        "not applied: 3 messages are already waiting for the server (limit 3)"
    );
    carol.send("comment 1 five");
    let refusal = carol.wait_json("refusing the 5th command", WAIT, |j| {
        j["type"] == "status" && j["text"].str().starts_with("not sent")
    });
    assert_eq!(
        refusal["text"].str(),
        "not sent: 3 messages are already waiting for the server (limit 3)"
    );
    let document = carol.show();
    assert_eq!(document["pending"].u64(), 3);
    // Applied locally, waiting for the server.
    assert_eq!(document["files"]["f.rs"].strings(), ["two", "one"]);
    assert_eq!(proxy.accepted(), 1);
    // It keeps trying.
    wait_until("carol to retry twice", WAIT, || {
        carol
            .statuses()
            .iter()
            .filter(|s| s.starts_with("reconnecting in"))
            .count()
            >= 2
    });

    // The server comes up: the three are sent and acknowledged, in order.
    proxy.set_refusing(false);
    carol.caught_up();
    let mut acked = Vec::new();
    while acked.len() < 3 {
        let ack = carol.wait_json("acks", WAIT, |j| {
            j["type"] == "ack" && j["client_sequence"].u64() != 0
        });
        assert_eq!(ack["duplicate"], false);
        acked.push(ack["client_sequence"].u64());
    }
    assert_eq!(acked, [1, 2, 3]);
    assert_eq!(carol.show()["pending"].u64(), 0);
    let snapshot = server.snapshot(session);
    assert_eq!(snapshot["files"]["f.rs"].strings(), ["two", "one"]);
    let comments: Vec<&str> = snapshot["comments"]
        .array()
        .iter()
        .map(|c| c["text"].str())
        .collect();
    assert_eq!(comments, ["three"]);
    let document = carol.quit();
    assert_eq!(document["files"], snapshot["files"]);
}

/// `join` without --json: status lines and the final error go to stderr.
fn human_join(url: &str, user: &str, extra: &[&str]) -> Proc {
    let mut args = vec!["join", "--addr", url, "--session", "s", "--user", user];
    args.extend(extra);
    BIN.spawn(user, &args)
}

/// A server that requires tokens, and tokens for `mallory` from its secret.
fn auth_server() -> (ServerProcess, String, TempDir) {
    let dir = TempDir::new("auth");
    let secret = dir.file("secret");
    std::fs::write(
        &secret,
        "a secret of more than thirty-two bytes, for tests\n",
    )
    .unwrap();
    let server = ServerProcess::start(BIN, &["--auth-secret-file", &secret]);
    let token = run(
        &[
            "token",
            "--secret-file",
            &secret,
            "--user",
            "mallory",
            "--role",
            "author",
        ],
        WAIT,
    )
    .ok()
    .trim()
    .to_owned();
    (server, token, dir)
}

/// A join refused with a fatal status exits 1 at once with one line naming
/// the status: no reconnection attempt.
fn assert_fatal(server: &ServerProcess, token: &str, code: &str) {
    let started = Instant::now();
    // Generous retry settings: a retry would show as status lines.
    let mut alice = human_join(
        &server.url(),
        "alice",
        &[
            "--token",
            token,
            "--backoff",
            "10ms",
            "--max-attempts",
            "100",
        ],
    );
    // stdin stays open: only the status may end it.
    let status = alice.wait_exit(Duration::from_secs(5));
    assert_eq!(status.code(), Some(1), "{}", alice.transcript());
    let stderr = alice.stderr();
    assert_eq!(stderr.len(), 1, "one line\n{}", alice.transcript());
    assert!(
        stderr[0].starts_with("codereview join: ") && stderr[0].contains(code),
        "{stderr:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "took {:?}",
        started.elapsed()
    );
    assert!(alice.stdout().is_empty(), "{}", alice.transcript());
}

#[test]
fn token_for_another_user_is_fatal() {
    let (server, mallory, _dir) = auth_server();
    for _ in 0..10 {
        assert_fatal(&server, &mallory, "PERMISSION_DENIED");
    }
}

/// Bug: the interceptor's UNAUTHENTICATED sometimes reaches the join as
/// `UNAVAILABLE: the request stream was closed by the server` (the failed
/// flush of the Join wins the race against reading the call's status), so a
/// fatal status is retried: about 1 join in 100 prints "disconnected: ..." and
/// "reconnecting in ..." before the UNAUTHENTICATED line.
#[test]
fn bad_token_is_fatal() {
    let (server, _, _dir) = auth_server();
    for _ in 0..200 {
        assert_fatal(&server, "not.a.token", "UNAUTHENTICATED");
    }
}

#[test]
fn bad_token_is_fatal_usually() {
    // The reliable part of `bad_token_is_fatal`: the status is named, the
    // exit is quick and non-zero.
    let (server, _, _dir) = auth_server();
    let mut alice = human_join(
        &server.url(),
        "alice",
        &[
            "--token",
            "not.a.token",
            "--backoff",
            "10ms",
            "--max-attempts",
            "100",
        ],
    );
    let status = alice.wait_exit(Duration::from_secs(5));
    assert_eq!(status.code(), Some(1), "{}", alice.transcript());
    let last = alice.stderr().last().cloned().unwrap_or_default();
    assert!(
        last.starts_with("codereview join: UNAUTHENTICATED: "),
        "{}",
        alice.transcript()
    );
}

/// Bug: with the commands piped in (stdin ends after `quit`), a refused
/// token is swallowed: the quit path sends LEFT and drains the stream, and
/// treats the call's error status as the end of the stream. The join prints
/// the document with the edit still waiting and exits 0, with no error.
#[test]
fn refused_token_with_a_piped_script_fails() {
    let (server, _, _dir) = auth_server();
    for _ in 0..20 {
        let mut alice = human_join(&server.url(), "alice", &["--token", "not.a.token"]);
        alice.send("insert f.rs 0 hello");
        alice.send("quit");
        alice.close_stdin();
        let status = alice.wait_exit(Duration::from_secs(5));
        assert_eq!(status.code(), Some(1), "{}", alice.transcript());
        let last = alice.stderr().last().cloned().unwrap_or_default();
        assert!(last.contains("UNAUTHENTICATED"), "{}", alice.transcript());
    }
}

#[test]
fn gives_up_after_max_attempts() {
    let server = ServerProcess::start(BIN, &[]);
    let proxy = Proxy::start(&server.addr);
    let mut alice = human_join(
        &proxy.url(),
        "alice",
        &["--max-attempts", "2", "--backoff", "10ms"],
    );
    alice.wait_stdout("the catch-up notice", WAIT, |l| {
        l.starts_with("notice caught_up")
    });
    proxy.set_refusing(true);
    proxy.cut();
    let status = alice.wait_exit(WAIT);
    assert_eq!(status.code(), Some(1), "{}", alice.transcript());
    let stderr = alice.stderr();
    let attempts: Vec<_> = stderr
        .iter()
        .filter(|l| l.starts_with("codereview join: reconnecting in"))
        .collect();
    assert_eq!(attempts.len(), 2, "{stderr:?}");
    let last = stderr.last().unwrap();
    assert!(
        last.starts_with(
            "codereview join: giving up after 2 reconnection attempts; last error: UNAVAILABLE"
        ),
        "{stderr:?}"
    );
}

/// Bug (issue 11, item 14): a join that never connected retried for a minute
/// and more ("reconnecting in 24.0s (attempt 6 of 10)") before saying
/// "connection refused", and with its input at an end (`join </dev/null`)
/// it exited 0. A first connection that fails ends the join at once, with
/// the reason and status 1, whatever the input; backoff is for connections
/// that were up.
#[test]
fn a_first_connection_that_fails_ends_the_join_at_once() {
    let addr = dead_addr();
    for input_closed in [false, true] {
        // The default retry settings: ten attempts, up to 30 s apart.
        let mut alice = human_join(&addr, "alice", &[]);
        if input_closed {
            alice.close_stdin();
        }
        let status = alice.wait_exit(Duration::from_secs(10));
        assert_eq!(status.code(), Some(1), "{}", alice.transcript());
        let stderr = alice.stderr();
        assert_eq!(
            stderr,
            [format!(
                "codereview join: UNAVAILABLE: cannot connect to {addr}: Connection refused (os error 111)"
            )],
            "{}",
            alice.transcript()
        );
        assert!(alice.stdout().is_empty(), "{}", alice.transcript());
    }
}

/// Bug (issue 11, item 14): `https://` without `--ca` was retried for 72 s
/// before "https needs --ca FILE", which `snapshot` says at once. Setup
/// mistakes end the join at once with status 2 (usage and setup errors).
#[test]
fn setup_mistakes_end_the_join_at_once() {
    let dir = TempDir::new("setup");
    let missing = dir.file("missing.pem");
    let missing_token = dir.file("missing-token");
    let cases: [(&[&str], &str); 4] = [
        (
            &["--addr", "https://127.0.0.1:1"],
            "codereview join: https needs --ca FILE: the CA certificate that signed the server's certificate",
        ),
        (
            &["--addr", "https://127.0.0.1:1", "--ca", &missing],
            "codereview join: cannot open",
        ),
        (
            &["--addr", "http://127.0.0.1:1", "--ca", &missing],
            "codereview join: --ca/--cert need an https:// address (got http://127.0.0.1:1)",
        ),
        (
            &[
                "--addr",
                "http://127.0.0.1:1",
                "--token-file",
                &missing_token,
            ],
            "codereview join: cannot read token file",
        ),
    ];
    for (flags, expected) in cases {
        let mut alice = human_join(flags[1], "alice", &flags[2..]);
        let status = alice.wait_exit(Duration::from_secs(10));
        assert_eq!(status.code(), Some(2), "{flags:?}\n{}", alice.transcript());
        let stderr = alice.stderr();
        assert_eq!(stderr.len(), 1, "{flags:?}\n{}", alice.transcript());
        assert!(stderr[0].starts_with(expected), "{flags:?}: {stderr:?}");
    }
}

#[test]
fn bad_addresses_are_one_line() {
    for (addr, why) in [
        ("ftp://x", "the scheme must be http:// or https://"),
        ("http://host:notaport", "port must be a number"),
    ] {
        let mut alice = human_join(addr, "alice", &[]);
        let status = alice.wait_exit(Duration::from_secs(10));
        assert_eq!(status.code(), Some(2), "{}", alice.transcript());
        let stderr = alice.stderr();
        assert_eq!(stderr.len(), 1, "{stderr:?}");
        assert!(
            stderr[0].starts_with(&format!("codereview join: bad address \"{addr}\""))
                && stderr[0].contains(why),
            "{stderr:?}"
        );
    }
}

#[test]
fn going_away_means_reconnect_elsewhere() {
    let mut server = ServerProcess::start(BIN, &["--rate-limit", "0", "--drain-timeout", "2s"]);
    // alice reaches the server through a proxy that refuses new connections
    // once the server is told to go: "elsewhere" is nowhere here. (Straight
    // to the server, her immediate reconnection can be admitted by the
    // draining server: see the report of this change.)
    let proxy = Proxy::start(&server.addr);
    let mut alice = join(
        &proxy.url(),
        "away",
        "alice",
        &[
            "--backoff",
            "50ms",
            "--backoff-max",
            "100ms",
            "--max-attempts",
            "3",
        ],
    );
    alice.caught_up();
    alice.send("insert f.rs 0 before the shutdown");
    alice.wait_json("the ack", WAIT, |j| {
        j["type"] == "ack" && j["client_sequence"].u64() == 1
    });

    proxy.set_refusing(true);
    let terminated = Instant::now();
    server.proc.signal("TERM");
    let notice = alice.wait_json("going away", WAIT, |j| j["type"] == "notice");
    assert_eq!(notice["kind"], "going_away", "{notice}");
    assert!(notice["at"].i64() > 0, "the notice carries the deadline");
    alice.wait_json("disconnected", WAIT, |j| {
        j["type"] == "status" && j["text"] == "disconnected: the server is going away"
    });
    // It tries to reconnect at once, and then with backoff.
    alice.wait_json("a reconnection attempt", WAIT, |j| {
        j["type"] == "status" && j["text"].str().starts_with("reconnecting in")
    });
    let status = server.proc.wait_exit(Duration::from_secs(4));
    assert!(
        status.success(),
        "server: {status}\n{}",
        server.proc.transcript()
    );
    assert!(terminated.elapsed() < Duration::from_secs(4));
    // The participant left before the drain deadline: no forced ending.
    assert!(
        server
            .proc
            .stderr()
            .iter()
            .any(|l| l.contains(r#""msg":"shutdown complete""#)
                && l.contains(r#""drained_in_time":true"#)),
        "{}",
        server.proc.transcript()
    );

    // It is still trying (the proxy refuses): dropped (killed) here.
    assert!(alice.try_status().is_none(), "{}", alice.transcript());
}

/// Bug (src/cli/join.rs, `run`): the attempt counter is reset as soon as a
/// connection is made and the stream opened, before the server has accepted
/// anything. An endpoint that accepts connections and then drops them (a
/// proxy or load balancer without a healthy backend) makes the join retry
/// forever: `--max-attempts` never triggers, "reconnecting in ... (attempt 1
/// of 2)" repeats.
#[test]
fn gives_up_against_an_endpoint_that_hangs_up() {
    let server = ServerProcess::start(BIN, &[]);
    let proxy = Proxy::start(&server.addr);
    let mut alice = join(
        &proxy.url(),
        "hang-up-session",
        "alice",
        &[
            "--backoff",
            "10ms",
            "--backoff-max",
            "20ms",
            "--max-attempts",
            "2",
        ],
    );
    alice.caught_up();
    // The backend goes away behind the front end.
    proxy.set_hang_up_after(Some(b"hang-up-session"));
    proxy.cut();
    let status = alice.wait_exit(WAIT);
    assert_eq!(status.code(), Some(1));
    let last = alice.stderr().last().cloned().unwrap_or_default();
    assert!(
        last.starts_with("codereview join: giving up after 2 reconnection attempts"),
        "{}",
        alice.transcript()
    );
    assert!(proxy.hung_up() <= 2, "{} connections", proxy.hung_up());
}

/// A front end that hangs up on the very first connection: never joined,
/// so it is a failure at once (status 1), not a reason to retry.
#[test]
fn a_first_connection_that_is_hung_up_on_ends_the_join_at_once() {
    let hang_up = Proxy::hang_up(b"hang-up-session");
    let url = hang_up.url();
    let mut alice = BIN.spawn(
        "alice",
        &[
            "join",
            "--addr",
            &url,
            "--session",
            "hang-up-session",
            "--user",
            "alice",
        ],
    );
    let status = alice.wait_exit(Duration::from_secs(10));
    assert_eq!(status.code(), Some(1), "{}", alice.transcript());
    let stderr = alice.stderr();
    assert_eq!(stderr.len(), 1, "{}", alice.transcript());
    assert!(
        stderr[0].starts_with("codereview join: UNAVAILABLE"),
        "{}",
        alice.transcript()
    );
    assert_eq!(hang_up.hung_up(), 1);
}

/// Bug (src/cli/join.rs, `Participant::resend`): after a reconnect the
/// waiting edits are resent first and the waiting comments after them, so
/// client sequence numbers go out of order (1, 3, 2, 4). The server has then
/// processed #3 and answers #2 as a duplicate: the comment is acknowledged
/// (`"duplicate":true`) and never applied.
#[test]
fn comments_and_edits_typed_offline_are_all_delivered() {
    let server = ServerProcess::start(BIN, &["--rate-limit", "0"]);
    let session = "mixed";
    let proxy = Proxy::start(&server.addr);
    let mut carol = join_then_go_offline(&proxy, session, "carol", &[]);
    carol.send("insert f.rs 0 one");
    carol.send("comment 0 first comment");
    carol.send("insert f.rs 0 two");
    carol.send("comment 1 second comment");
    assert_eq!(carol.show()["pending"].u64(), 4);
    proxy.set_refusing(false);
    carol.caught_up();
    let mut acks = Vec::new();
    while acks.len() < 4 {
        let ack = carol.wait_json("acks", WAIT, |j| {
            j["type"] == "ack" && j["client_sequence"].u64() != 0
        });
        acks.push(ack);
    }
    let snapshot = server.snapshot(session);
    let comments: Vec<&str> = snapshot["comments"]
        .array()
        .iter()
        .map(|c| c["text"].str())
        .collect();
    assert_eq!(
        comments,
        ["first comment", "second comment"],
        "acks: {acks:?}\n{}",
        carol.transcript()
    );
    assert_eq!(snapshot["files"]["f.rs"].strings(), ["two", "one"]);
    let document = carol.quit();
    assert_eq!(document["files"], snapshot["files"]);
}

#[test]
fn a_refused_edit_resyncs_from_a_snapshot() {
    let server = ServerProcess::start(BIN, &["--rate-limit", "0"]);
    let session = "refused";
    let mut erin = join(&server.url(), session, "erin", &[]);
    erin.caught_up();
    erin.send("insert f.rs 0 kept");
    erin.wait_json("the first ack", WAIT, |j| {
        j["type"] == "ack" && j["client_sequence"].u64() == 1
    });
    // Longer than the server's 4 KiB line limit: applied locally, refused.
    erin.send(&format!("edit f.rs 0 {}", "x".repeat(5000)));
    let error = erin.wait_json("the refusal", WAIT, |j| j["type"] == "error");
    assert_eq!(error["client_sequence"].u64(), 2, "{error}");
    assert_eq!(error["code"], "INVALID_ARGUMENT", "{error}");
    erin.wait_json("resyncing", WAIT, |j| {
        j["type"] == "status" && j["text"] == "disconnected: an edit was refused: resyncing"
    });
    let joined = erin.wait_json("a new stream", WAIT, |j| j["type"] == "joined");
    assert_eq!(joined["catchup"], "SNAPSHOT", "{joined}");
    erin.wait_json("the snapshot", WAIT, |j| j["type"] == "snapshot");
    erin.caught_up();
    let document = erin.show();
    assert_eq!(document["pending"].u64(), 0);
    assert_eq!(document["files"]["f.rs"].strings(), ["kept"]);
    // It goes on from there.
    erin.send("insert f.rs 1 later");
    erin.wait_json("the next ack", WAIT, |j| {
        j["type"] == "ack" && j["client_sequence"].u64() == 3
    });
    let snapshot = server.snapshot(session);
    assert_eq!(snapshot["files"]["f.rs"].strings(), ["kept", "later"]);
    // What was refused makes the exit status 1, said once on stderr (a
    // script must not take it for a success).
    erin.send("quit");
    let status = erin.wait_exit(WAIT);
    assert_eq!(status.code(), Some(1), "{}", erin.transcript());
    assert_eq!(
        erin.stderr(),
        [
            "codereview join: 1 of the commands typed was not applied: refused by the server or dropped when resyncing (see above)"
        ]
    );
    assert_eq!(erin.documents().pop().unwrap()["files"], snapshot["files"]);
}

#[test]
fn people_get_readable_output_and_help() {
    let server = ServerProcess::start(BIN, &["--rate-limit", "0"]);
    let mut frank = human_join(&server.url(), "frank", &[]);
    frank.wait_stdout("the catch-up notice", WAIT, |l| {
        l.starts_with("notice caught_up")
    });
    frank.send("insert f.rs 0 hello");
    frank.send("dance");
    frank.wait_stderr("help for an unknown command", WAIT, |l| {
        l.starts_with("codereview join: unknown command \"dance\"; try: edit FILE LINE TEXT")
    });
    frank.send("delete f.rs 7");
    let line = frank.wait_stderr("the refusal", WAIT, |l| l.contains("not applied"));
    assert_eq!(
        line,
        "codereview join: not applied: cannot delete line 7: the file has 1 lines (0-based)"
    );
    frank.send("edit f.rs -1 x");
    frank.wait_stderr("a bad line number", WAIT, |l| {
        l == "codereview join: LINE must be a number >= 0 (lines are 0-based), got \"-1\""
    });
    frank.send("show");
    frank.wait_stdout("the document", WAIT, |l| l == "== f.rs");
    frank.wait_stdout("its numbered line", WAIT, |l| l == "    0 | hello");
    frank.close_stdin();
    assert!(frank.wait_exit(WAIT).success(), "{}", frank.transcript());
    assert_eq!(server.snapshot("s")["files"]["f.rs"].strings(), ["hello"]);
}

#[test]
fn a_reviewer_may_comment_but_not_edit() {
    let dir = TempDir::new("reviewer");
    let secret = dir.file("secret");
    std::fs::write(
        &secret,
        "a secret of more than thirty-two bytes, for tests\n",
    )
    .unwrap();
    let server = ServerProcess::start(BIN, &["--auth-secret-file", &secret, "--rate-limit", "0"]);
    let token = run(
        &[
            "token",
            "--secret-file",
            &secret,
            "--user",
            "rita",
            "--role",
            "reviewer",
        ],
        WAIT,
    )
    .ok()
    .trim()
    .to_owned();
    let mut rita = join(&server.url(), "s", "rita", &["--token", &token]);
    let joined = rita.wait_json("joined", WAIT, |j| j["type"] == "joined");
    assert_eq!(joined["role"], "reviewer");
    rita.caught_up();
    rita.send("insert f.rs 0 nope");
    let refusal = rita.wait_json("the refusal", WAIT, |j| j["type"] == "status");
    assert_eq!(refusal["text"], "not applied: a reviewer may not edit");
    rita.send("comment 0 looks good");
    rita.wait_json("the ack", WAIT, |j| {
        j["type"] == "ack" && j["client_sequence"].u64() == 1
    });
    rita.quit();
    let snapshot = run(
        &[
            "snapshot",
            "--addr",
            &server.url(),
            "--session",
            "s",
            "--json",
            "--token",
            &token,
        ],
        WAIT,
    );
    let snapshot = Json::parse(snapshot.ok().trim()).unwrap();
    assert_eq!(snapshot["files"].object().len(), 0);
    assert_eq!(snapshot["comments"].array()[0]["text"], "looks good");
}

/// Bug (issue 11, item 3): `printf 'edit f.txt 0 A\nquit\n' | codereview
/// join ...` exited with "(1 waiting)" and the edit was never applied (10
/// of 10 tries): `quit` sent LEFT at once, before the commands typed during
/// the catch-up (the `early` queue) had gone out. Scripts pipe commands into
/// `join`: each must be applied exactly once before it leaves, and the last
/// document printed must be the server's, with nothing waiting.
#[test]
fn piped_commands_are_all_applied_before_leaving() {
    let server = ServerProcess::start(BIN, &[]);
    for round in 0..10 {
        let session = format!("piped-{round}");
        seed_file(&server, &session, "f.txt", &["one".into(), "two".into()]);
        let mut alice = join(&server.url(), &session, "alice", &[]);
        // All written at once, before the join has even connected.
        for line in [
            "edit f.txt 0 ONE",
            "insert f.txt 2 three",
            "comment 1 looks fine",
            "delete f.txt 1",
            "quit",
        ] {
            alice.send(line);
        }
        alice.close_stdin();
        let status = alice.wait_exit(WAIT);
        assert!(status.success(), "{status}\n{}", alice.transcript());
        assert_all_applied(&alice);
        let snapshot = server.snapshot(&session);
        assert_eq!(
            snapshot["files"]["f.txt"].strings(),
            ["ONE", "three"],
            "round {round}\n{}",
            alice.transcript()
        );
        let comments: Vec<&str> = snapshot["comments"]
            .array()
            .iter()
            .map(|c| c["text"].str())
            .collect();
        assert_eq!(comments, ["looks fine"], "round {round}");
        // Each acknowledged once, none a duplicate.
        let acks: Vec<u64> = alice
            .json_lines()
            .iter()
            .filter(|j| j["type"] == "ack" && j["client_sequence"].u64() != 0)
            .map(|j| {
                assert_eq!(j["duplicate"], false, "{j}");
                j["client_sequence"].u64()
            })
            .collect();
        assert_eq!(acks, [1, 2, 3, 4], "round {round}\n{}", alice.transcript());
        let document = alice.documents().pop().expect("the final document");
        assert_eq!(document["pending"].u64(), 0, "{document}");
        assert_eq!(document["files"], snapshot["files"]);
        assert_eq!(document["version"].i64(), snapshot["version"].i64());
        // It left: the server no longer lists it.
        assert!(
            snapshot["participants"].array().is_empty(),
            "{}",
            snapshot["participants"]
        );
    }
}

/// `quit` while the server cannot be reached waits (at most
/// `--quit-timeout`) for it: when it comes back in time, what was typed
/// offline is delivered before the join leaves. (Before: "quitting while
/// disconnected: 1 messages were not sent", exit 0, the edit lost.)
#[test]
fn quit_while_offline_waits_for_the_server_to_come_back() {
    let server = ServerProcess::start(BIN, &[]);
    let session = "comes-back";
    let proxy = Proxy::start(&server.addr);
    let mut carol = join_then_go_offline(&proxy, session, "carol", &["--quit-timeout", "20s"]);
    carol.send("insert f.rs 0 kept");
    carol.send("quit");
    carol.close_stdin();
    // Still trying to deliver it.
    let tries = |carol: &Proc| {
        carol
            .statuses()
            .iter()
            .filter(|s| s.starts_with("reconnecting in"))
            .count()
    };
    let before = tries(&carol);
    wait_until("two more attempts", WAIT, || tries(&carol) >= before + 2);
    assert!(carol.try_status().is_none(), "{}", carol.transcript());
    proxy.set_refusing(false);
    let status = carol.wait_exit(WAIT);
    assert!(status.success(), "{status}\n{}", carol.transcript());
    let snapshot = server.snapshot(session);
    assert_eq!(snapshot["files"]["f.rs"].strings(), ["kept"]);
    let document = carol.documents().pop().unwrap();
    assert_eq!(document["pending"].u64(), 0);
    assert_eq!(document["files"], snapshot["files"]);
}

/// When the server never answers within `--quit-timeout`, the join says how
/// many commands went unacknowledged, on stderr, and exits 1: a script must
/// not take a lost edit for a success.
#[test]
fn quit_fails_when_commands_stay_unacknowledged() {
    let server = ServerProcess::start(BIN, &[]);
    let proxy = Proxy::start(&server.addr);
    let mut carol = join_then_go_offline(&proxy, "unanswered", "carol", &["--quit-timeout", "1s"]);
    carol.send("insert f.rs 0 lost");
    carol.send("comment 0 lost too");
    carol.send("quit");
    let status = carol.wait_exit(WAIT);
    assert_eq!(status.code(), Some(1), "{}", carol.transcript());
    assert_eq!(
        carol.stderr(),
        [
            "codereview join: 2 commands were not acknowledged by the server within --quit-timeout 1s: they may not have been applied"
        ],
        "{}",
        carol.transcript()
    );
    let document = carol.documents().pop().unwrap();
    assert_eq!(document["pending"].u64(), 2);
}

/// Bug: a second `join` of the same user (a script run twice) numbered its
/// messages from 1 again; the server, having processed those numbers for
/// that user, acknowledged its edits as duplicates and never applied them,
/// while the join showed them applied and exited 0. Its catch-up also
/// replayed the user's own earlier edits as acknowledgements, so its copy
/// of the document lacked them. Each run must apply its edits on the real
/// document.
#[test]
fn the_same_user_joining_again_applies_its_edits() {
    let server = ServerProcess::start(BIN, &[]);
    let session = "again";
    let mut expected: Vec<String> = Vec::new();
    for run in 1..=3 {
        let mut x = join(&server.url(), session, "x", &[]);
        x.send(&format!("insert a.rs 0 run {run}"));
        x.send(&format!("comment 0 from run {run}"));
        x.close_stdin();
        let status = x.wait_exit(WAIT);
        assert!(status.success(), "run {run}: {status}\n{}", x.transcript());
        expected.insert(0, format!("run {run}"));
        let snapshot = server.snapshot(session);
        assert_eq!(
            snapshot["files"]["a.rs"].strings(),
            expected,
            "run {run}\n{}",
            x.transcript()
        );
        assert_eq!(snapshot["comments"].array().len(), run, "run {run}");
        let document = x.documents().pop().unwrap();
        assert_eq!(document["files"], snapshot["files"], "run {run}");
        assert!(
            x.json_lines()
                .iter()
                .all(|j| !(j["type"] == "ack" && j["duplicate"] == true)),
            "run {run}\n{}",
            x.transcript()
        );
    }
}

/// With the history truncated, a new `join` still rebuilds the files: its
/// catch-up is a snapshot, and a `show` typed before it connected shows the
/// files once they are known.
#[test]
fn a_join_rebuilds_the_files_when_the_history_is_truncated() {
    let server = ServerProcess::start(BIN, &["--history-events", "3"]);
    seed_file(&server, "short", "f.txt", &["one".into(), "two".into()]);
    for user in ["a", "b"] {
        let mut visitor = join(&server.url(), "short", user, &[]);
        visitor.send("quit");
        visitor.close_stdin();
        assert!(
            visitor.wait_exit(WAIT).success(),
            "{}",
            visitor.transcript()
        );
    }
    let mut carol = join(&server.url(), "short", "carol", &[]);
    carol.send("show");
    carol.send("quit");
    carol.close_stdin();
    assert!(carol.wait_exit(WAIT).success(), "{}", carol.transcript());
    let snapshot = server.snapshot("short");
    assert_eq!(snapshot["files"]["f.txt"].strings(), ["one", "two"]);
    let documents = carol.documents();
    assert!(!documents.is_empty(), "{}", carol.transcript());
    for document in documents {
        assert_eq!(
            document["files"],
            snapshot["files"],
            "{}",
            carol.transcript()
        );
    }
}

/// `serve` killed with SIGKILL and started again on the same port and data
/// dir while two people type: their `join`s reconnect, resume in the same
/// session (same epoch), resend what was not acknowledged, and both copies
/// converge with the server's; every line each typed into their own file
/// is there exactly once.
#[test]
fn joins_survive_a_server_killed_and_restarted() {
    let data = TempDir::new("join-kill9");
    let port = kit::process::free_port();
    let addr = format!("127.0.0.1:{port}");
    let data_dir = data.path().display().to_string();
    let serve = || {
        ServerProcess::start(
            BIN,
            &[
                "--addr",
                &addr,
                "--data-dir",
                &data_dir,
                "--rate-limit",
                "0",
            ],
        )
    };
    let mut server = serve();
    let session = "crash";
    let flags = [
        "--backoff",
        "50ms",
        "--backoff-max",
        "200ms",
        "--max-attempts",
        "100",
    ];
    let mut alice = join(&server.url(), session, "alice", &flags);
    let mut bob = join(&server.url(), session, "bob", &flags);
    alice.caught_up();
    bob.caught_up();
    let mut typed: Vec<(&str, String)> = Vec::new();
    for i in 0..60 {
        if i == 20 || i == 40 {
            server.signal("KILL");
            wait_until("the server to die", WAIT, || !server.is_running());
            drop(server);
            server = serve();
        }
        for (name, p) in [("alice", &mut alice), ("bob", &mut bob)] {
            let text = format!("{name}-{i}");
            p.send(&format!("insert {name}.rs 0 {text}"));
            typed.push((name, text));
        }
        thread::sleep(Duration::from_millis(20));
    }
    settle(&server.url(), session, &mut [&mut alice, &mut bob]);
    let snapshot = quit_and_compare(&server, session, &mut [&mut alice, &mut bob]);
    for (name, text) in &typed {
        let lines = snapshot["files"][&format!("{name}.rs")].strings();
        assert_eq!(
            lines.iter().filter(|l| *l == text).count(),
            1,
            "{text} in {name}.rs exactly once: {lines:?}"
        );
    }
    for p in [&alice, &bob] {
        let epochs: Vec<u64> = p
            .json_lines()
            .iter()
            .filter(|j| j["type"] == "joined")
            .map(|j| j["epoch"].u64())
            .collect();
        assert!(
            epochs.len() >= 3,
            "{}: joined again after each restart: {epochs:?}",
            p.name
        );
        assert!(
            epochs.iter().all(|e| *e == epochs[0] && *e != 0),
            "{}: one session across restarts: {epochs:?}",
            p.name
        );
        assert_no_repeats(p);
    }
}
