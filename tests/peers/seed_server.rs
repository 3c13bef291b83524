//! `codereview load` works against any server of the article's proto: here
//! the article's own server, transcribed to JavaScript (tests/node/seed_server.js)
//! and run with Node's @grpc/grpc-js, an independent implementation.

use std::time::Duration;

use kit::json::Json;
use kit::peers;

use crate::BIN;

#[test]
fn load_checks_pass_against_the_articles_server() {
    let Some(node) = peers::node() else { return };
    let mut server = node.spawn(&["tests/node/seed_server.js"]);
    let started = Duration::from_secs(15);
    let line = server.wait_stderr("with its address", started, |l| l.contains("\"addr\":\""));
    let addr = line
        .split("\"addr\":\"")
        .nth(1)
        .unwrap()
        .trim_end_matches("\"}");
    let url = format!("http://{addr}");
    for kind in ["edit", "comment", "cursor"] {
        let args = [
            "load",
            "--addr",
            &url,
            "--sessions",
            "2",
            "--participants",
            "3",
        ];
        let args: Vec<&str> = args
            .into_iter()
            .chain(["--messages", "100", "--kind", kind])
            .collect();
        let output = BIN.run(&args, Duration::from_secs(60));
        let (stdout, stderr) = (&output.stdout, &output.stderr);
        assert!(
            output.status.success(),
            "load --kind {kind} failed:\n{stdout}\n{stderr}"
        );
        let last = stdout.lines().last().unwrap_or("");
        let report = Json::parse(last).unwrap_or_else(|e| panic!("{e}: {last}"));
        assert_eq!(report["ok"], true, "{last}");
        if kind != "cursor" {
            assert_eq!(report["delivered"].u64(), 1200, "{last}");
            assert_eq!(report["expected"].u64(), 1200, "{last}");
        }
    }
}
