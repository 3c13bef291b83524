//! The client commands run as a person would: real processes of the binary,
//! commands typed on stdin, `--json` events read from stdout. The one-shot
//! commands and their errors (`commands`), `join` with its replica,
//! reconnection and buffering (`join`), and `load` with its own delivery
//! checks (`load`). The server is the binary too, as a child process.

mod commands;
mod join;
mod load;

use std::path::Path;
use std::time::{Duration, Instant};

use kit::WAIT;
use kit::binary;
use kit::json::Json;
use kit::process::{Binary, Output, Proc};
use kit::server::snapshot_json;

const BIN: Binary = binary!();

/// Runs `codereview ARGS` with stdin closed (see [`Binary::run`]).
fn run(args: &[&str], limit: Duration) -> Output {
    BIN.run(args, limit)
}

fn run_in(args: &[&str], dir: Option<&Path>, limit: Duration) -> Output {
    BIN.run_in(args, dir, limit)
}

/// Starts `join --json --addr URL --session S --user U EXTRA`.
fn join(url: &str, session: &str, user: &str, extra: &[&str]) -> Proc {
    let mut args = vec![
        "join",
        "--json",
        "--addr",
        url,
        "--session",
        session,
        "--user",
        user,
    ];
    args.extend(extra);
    BIN.spawn(user, &args)
}

/// What a test does with a `join --json` process.
trait Joined {
    /// Waits for the CAUGHT_UP notice of the current connection.
    fn caught_up(&mut self);
    /// Types `show` and returns the document it prints.
    fn show(&mut self) -> Json;
    /// Types `quit`, waits for the exit and returns the last document printed.
    fn quit(&mut self) -> Json;
    fn documents(&self) -> Vec<Json>;
    /// The texts of the `{"type":"status"}` lines.
    fn statuses(&self) -> Vec<String>;
}

impl Joined for Proc {
    fn caught_up(&mut self) {
        self.wait_json("notice caught_up", WAIT, |j| {
            j["type"] == "notice" && j["kind"] == "caught_up"
        });
    }

    fn show(&mut self) -> Json {
        self.send("show");
        self.wait_json("document", WAIT, |j| j["type"] == "document")
    }

    fn quit(&mut self) -> Json {
        self.send("quit");
        let status = self.wait_exit(WAIT);
        assert!(
            status.success(),
            "{} exited with {status}\n{}",
            self.name,
            self.transcript()
        );
        self.documents()
            .pop()
            .unwrap_or_else(|| panic!("{} printed no document\n{}", self.name, self.transcript()))
    }

    fn documents(&self) -> Vec<Json> {
        let lines = self.json_lines();
        lines
            .into_iter()
            .filter(|j| j["type"] == "document")
            .collect()
    }

    fn statuses(&self) -> Vec<String> {
        let lines = self.json_lines();
        let statuses = lines.iter().filter(|j| j["type"] == "status");
        statuses.map(|j| j["text"].str().to_owned()).collect()
    }
}

/// Waits until every participant has nothing waiting for the server and
/// shows the server's document at the server's version: the session is
/// quiet and everyone converged. Returns the snapshot.
fn settle(server_url: &str, session: &str, participants: &mut [&mut Proc]) -> Json {
    let deadline = Instant::now() + WAIT;
    loop {
        let docs: Vec<Json> = participants.iter_mut().map(|p| p.show()).collect();
        let shown = || {
            docs.iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join("\n")
        };
        let quiet = docs.iter().all(|d| d["pending"].u64() == 0);
        if quiet {
            let snapshot = snapshot_json(BIN, server_url, session);
            if docs.iter().all(|d| {
                d["version"].i64() == snapshot["version"].i64() && d["files"] == snapshot["files"]
            }) {
                return snapshot;
            }
            if Instant::now() >= deadline {
                let names: Vec<&str> = participants.iter().map(|p| p.name.as_str()).collect();
                panic!(
                    "{names:?} did not converge with the server within {WAIT:?}\nserver: {snapshot}\nparticipants: {}",
                    shown()
                );
            }
        } else if Instant::now() >= deadline {
            panic!(
                "edits still waiting for the server after {WAIT:?}: {}",
                shown()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Whether a printed event is *essential* (numbered densely by the server):
/// edits, comments, uploads, joins and leaves, and acknowledgements of one's
/// own essential events (not duplicates, not no-ops).
fn is_essential(event: &Json) -> bool {
    match event.get("type").map(Json::str) {
        Some("edit" | "comment" | "file") => true,
        Some("presence") => event["status"] == "joined" || event["status"] == "left",
        Some("ack") => event["sequence"].u64() != 0 && event["duplicate"] == false,
        _ => false,
    }
}

/// Asserts that the essential events a participant printed carry strictly
/// increasing sequence numbers: nothing printed twice, nothing out of order.
fn assert_no_repeats(participant: &Proc) {
    let mut last = 0u64;
    for event in participant.json_lines().iter().filter(|e| is_essential(e)) {
        let seq = event["seq"].u64();
        assert!(
            seq > last,
            "{}: essential event with sequence {seq} printed after sequence {last}: {event}\n{}",
            participant.name,
            participant.transcript()
        );
        last = seq;
    }
}
