//! `codereview load` works against any server of the article's proto: here
//! the article's own server, transcribed to JavaScript (tests/node/seed_server.js)
//! and run with Node's @grpc/grpc-js, an independent implementation.

mod peers;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn load_checks_pass_against_the_articles_server() {
    let Some(node) = peers::node() else { return };
    let mut child = Command::new(&node.program)
        .arg(peers::root().join("tests/node/seed_server.js"))
        .current_dir(peers::root())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the article's server");
    let stderr = child.stderr.take().expect("piped stderr");
    let _server = Killed(child);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let addr = loop {
        let line = rx
            .recv_timeout(Duration::from_secs(15))
            .expect("the article's server did not start");
        if let Some(rest) = line.split("\"addr\":\"").nth(1) {
            break rest.trim_end_matches("\"}").to_owned();
        }
    };
    for kind in ["edit", "comment", "cursor"] {
        let output = Command::new(env!("CARGO_BIN_EXE_codereview"))
            .args(["load", "--addr", &format!("http://{addr}")])
            .args([
                "--sessions",
                "2",
                "--participants",
                "3",
                "--messages",
                "100",
                "--kind",
                kind,
            ])
            .output()
            .expect("run codereview load");
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            output.status.success(),
            "load --kind {kind} failed:\n{stdout}\n{stderr}"
        );
        let last = stdout.lines().last().unwrap_or("");
        assert!(last.contains("\"ok\":true"), "{last}");
        if kind != "cursor" {
            assert!(
                last.contains("\"delivered\":1200,\"expected\":1200"),
                "{last}"
            );
        }
    }
}
