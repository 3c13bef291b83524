//! A client generated from the article's original proto
//! (tests/seed/codereview.proto, kept verbatim), unchanged, keeps working
//! against `codereview serve` with its default flags. Two independent
//! implementations drive the same scenarios: Python grpcio with stubs
//! generated from the seed proto only (tests/python/seed_client.py) and Node
//! @grpc/grpc-js loading the seed proto (tests/node/seed_client.js). Both
//! skip, without failing, the server's extension messages (payload cases the
//! seed proto does not know).
//!
//! Set the peers up with scripts/setup-peers; scripts/test does that and runs
//! this with the peers required.

use kit::peers;
use kit::server::{LogFormat, ServerProcess};

use crate::BIN;

const PYTHON_CLIENT: &str = "tests/python/seed_client.py";
const NODE_CLIENT: &str = "tests/node/seed_client.js";
const SCENARIOS: [&str; 4] = [
    "two_participants",
    "late_join_history",
    "edit_into_empty_session",
    // Version-0 edits from both sides, interleaved: none vanishes.
    "concurrent_replaces",
];

#[test]
fn clients_generated_from_the_article_proto_work_against_serve_with_default_flags() {
    let python = peers::python_seed();
    let node = peers::node();
    if python.is_none() && node.is_none() {
        return;
    }
    // Exactly `codereview serve` on a free port: every other flag at its
    // default (JSON logs, which is how the address is read, are the default).
    let args = ["serve", "--addr", "127.0.0.1:0"];
    let mut server = ServerProcess::start_args(BIN, LogFormat::Json, &args);
    let addr = server.addr.clone();

    // Every scenario with every peer against the one server (each run uses
    // its own session ids), then report all failures at once.
    let mut failures = Vec::new();
    for (peer, script) in [(&python, PYTHON_CLIENT), (&node, NODE_CLIENT)] {
        let Some(peer) = peer else { continue };
        for scenario in SCENARIOS {
            let (status, stdout, stderr) =
                peer.run(script, &["--server", &addr, "--scenario", scenario]);
            let passed = status.success()
                && !stdout.contains("FAIL")
                && stdout.contains(&format!("PASS scenario {scenario}"));
            if !passed {
                failures.push(format!(
                    "--- {} scenario {scenario} ---\n{}",
                    peer.kind.name(),
                    peer.describe(script, status, &stdout, &stderr)
                ));
            }
        }
    }
    // (A failed assertion prints the server's log as the server is dropped.)
    let exit = server.exit_status();
    assert!(
        failures.is_empty(),
        "{} seed-client run(s) failed (server {}):\n{}",
        failures.len(),
        match exit {
            None => "still running".to_owned(),
            Some(status) => format!("exited: {status}"),
        },
        failures.join("\n")
    );
    assert_eq!(exit, None, "the server exited during the seed-client runs");
}
