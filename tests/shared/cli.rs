//! The binary's own commands against instances sharing sessions: `load`
//! spread over three instances, `join` moving to another instance when its
//! own is killed.

use std::time::Duration;

use kit::json::Json;
use kit::process::{Binary, TempDir};
use kit::redis::RedisServer;
use kit::server::ServerProcess;
use kit::{WAIT, binary};

const BINARY: Binary = binary!();

fn instances(redis: &RedisServer, n: usize) -> Vec<ServerProcess> {
    let url = redis.url();
    (0..n)
        .map(|_| ServerProcess::start(BINARY, &["--redis", &url, "--rate-limit", "0"]))
        .collect()
}

/// `load` with three `--addr`: participants round-robin over three
/// instances of one Redis; nothing is lost, duplicated, reordered or
/// echoed, and edits with OT converge (every instance's snapshot equal).
#[test]
fn load_spread_over_three_instances_checks_out() {
    let redis = RedisServer::start();
    let servers = instances(&redis, 3);
    let urls: Vec<String> = servers.iter().map(ServerProcess::url).collect();
    let mut args: Vec<&str> = vec!["load", "--streams-per-conn", "1"];
    for url in &urls {
        args.extend(["--addr", url.as_str()]);
    }
    for kind in ["comment", "edit"] {
        let mut run = args.clone();
        run.extend([
            "--sessions",
            "2",
            "--participants",
            "3",
            "--messages",
            "100",
            "--kind",
            kind,
            "--extended",
        ]);
        let out = BINARY.run(&run, Duration::from_secs(120));
        let context = out.describe();
        let report = Json::parse(out.stdout_lines().last().copied().unwrap_or(""))
            .unwrap_or_else(|e| panic!("no report ({e}): {context}"));
        assert!(out.status.success(), "{context}");
        assert_eq!(report["ok"], true, "{context}");
        for violation in ["lost", "duplicated", "reordered", "echoed", "errors"] {
            assert_eq!(report[violation].u64(), 0, "{violation}: {context}");
        }
        assert_eq!(report["delivered"].u64(), 2 * 3 * 2 * 100, "{context}");
        // (The session names are in the report since load reports them.)
        let prefix = report.str_of("session_prefix").unwrap_or("").to_owned();
        if kind == "edit" && !prefix.is_empty() {
            for session in 0..2 {
                let name = format!("{prefix}{session}");
                let snapshots: Vec<String> = servers
                    .iter()
                    .map(|s| s.snapshot(&name)["files"].to_string())
                    .collect();
                assert_eq!(snapshots[0], snapshots[1], "{name}");
                assert_eq!(snapshots[0], snapshots[2], "{name}");
            }
        }
    }
}

/// `join` with two `--addr`: its instance is killed with SIGKILL; it
/// reconnects to the other one, resumes, and what it typed before and
/// after is applied exactly once.
#[test]
fn join_moves_to_another_instance_when_its_own_is_killed() {
    let redis = RedisServer::start();
    let servers = instances(&redis, 2);
    let dir = TempDir::new("shared-join");
    dir.write("f.txt", "one\ntwo\n");
    let first = servers[0].url();
    let second = servers[1].url();
    let uploaded = BINARY.run_in(
        &["upload", "--addr", &first, "--session", "k", "f.txt"],
        Some(dir.path()),
        WAIT,
    );
    assert!(uploaded.status.success(), "{}", uploaded.describe());
    let mut ann = BINARY.spawn(
        "ann",
        &[
            "join",
            "--json",
            "--addr",
            &first,
            "--addr",
            &second,
            "--session",
            "k",
            "--user",
            "ann",
            "--backoff",
            "100ms",
        ],
    );
    ann.wait_json("caught up", WAIT, |j| {
        j["type"] == "notice" && j["kind"] == "caught_up"
    });
    ann.send("edit f.txt 0 before");
    ann.wait_json("the ack", WAIT, |j| j["type"] == "ack");
    servers[0].proc.signal("KILL");
    ann.send("edit f.txt 1 after");
    ann.send("quit");
    let status = ann.wait_exit(Duration::from_secs(30));
    assert!(status.success(), "{status}\n{}", ann.transcript());
    let snapshot = servers[1].snapshot("k");
    let files = snapshot["files"].object();
    assert_eq!(files.len(), 1, "{snapshot}");
    assert_eq!(files["f.txt"].strings(), ["before", "after"], "{snapshot}");
    let acks: Vec<u64> = ann
        .json_lines()
        .into_iter()
        .filter(|j| j["type"] == "ack" && j["client_sequence"].u64() > 0)
        .map(|j| j["client_sequence"].u64())
        .collect();
    assert_eq!(acks, [1, 2], "{}", ann.transcript());
    let resumed = ann
        .json_lines()
        .into_iter()
        .filter(|j| j["type"] == "joined")
        .count();
    assert_eq!(resumed, 2, "joined, then resumed on the other instance");
}
