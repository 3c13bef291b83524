//! Independent gRPC peers (Python grpcio, Node @grpc/grpc-js) and the real
//! server binary, for tests that prove our wire layer against other
//! implementations.
//!
//! Peer discovery: `CODEREVIEW_PYTHON` / `CODEREVIEW_NODE` name the
//! interpreters (`scripts/test` sets them after `scripts/setup-peers`). A peer
//! that is not set up makes the test skip with a note on stderr, unless
//! `CODEREVIEW_REQUIRE_PEERS=1`, where it fails instead: CI must not pass by
//! skipping.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// How long the server may take to log "listening".
const STARTUP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one peer script may run before it is killed and the test fails.
pub const PEER_TIMEOUT: Duration = Duration::from_secs(120);

/// The repository root: peer scripts and protos are found from here.
pub fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Which independent implementation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Python,
    Node,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Python => "python",
            Kind::Node => "node",
        }
    }

    fn env_var(self) -> &'static str {
        match self {
            Kind::Python => "CODEREVIEW_PYTHON",
            Kind::Node => "CODEREVIEW_NODE",
        }
    }
}

/// A usable peer interpreter.
#[derive(Clone, Debug)]
pub struct Peer {
    pub kind: Kind,
    pub program: PathBuf,
}

/// The Python grpcio peer, or `None` (after a note on stderr) when it is not
/// set up. Panics instead when `CODEREVIEW_REQUIRE_PEERS=1`.
pub fn python() -> Option<Peer> {
    discover(Kind::Python)
}

/// The Node grpc-js peer; see [`python`].
pub fn node() -> Option<Peer> {
    discover(Kind::Node)
}

/// The Python grpcio peer with the stubs generated from the article's
/// original proto (tests/python/gen_seed/); see [`python`].
pub fn python_seed() -> Option<Peer> {
    discover_with(Kind::Python, &["tests/python/gen_seed/codereview_pb2.py"])
}

fn discover(kind: Kind) -> Option<Peer> {
    discover_with(kind, &[])
}

/// Like [`discover`], also requiring `files` (relative to the root).
fn discover_with(kind: Kind, files: &[&str]) -> Option<Peer> {
    let found = usable(kind).and_then(|program| {
        match files.iter().find(|file| !root().join(file).is_file()) {
            Some(file) => Err(format!("{file} is missing")),
            None => Ok(program),
        }
    });
    match found {
        Ok(program) => Some(Peer { kind, program }),
        Err(reason) => {
            if std::env::var("CODEREVIEW_REQUIRE_PEERS").as_deref() == Ok("1") {
                panic!(
                    "CODEREVIEW_REQUIRE_PEERS=1 but the {} peer is not usable: {reason}; \
                     run scripts/setup-peers (or run the tests with scripts/test)",
                    kind.name()
                );
            }
            eprintln!(
                "skipping: {} peer not set up (run scripts/test): {reason}",
                kind.name()
            );
            None
        }
    }
}

/// The interpreter named by the peer's variable, if it runs and its
/// dependencies are installed.
fn usable(kind: Kind) -> Result<PathBuf, String> {
    let var = kind.env_var();
    let program = match std::env::var_os(var) {
        Some(value) if !value.is_empty() => PathBuf::from(value),
        _ => return Err(format!("{var} is not set")),
    };
    let probe: &[&str] = match kind {
        Kind::Python => {
            if !root().join("tests/python/gen").is_dir() {
                return Err("tests/python/gen/ (the generated stubs) is missing".into());
            }
            &["-c", "import grpc"]
        }
        Kind::Node => {
            if !root()
                .join("tests/node/node_modules/@grpc/grpc-js")
                .is_dir()
            {
                return Err("tests/node/node_modules/@grpc/grpc-js is missing".into());
            }
            &["--version"]
        }
    };
    let output = Command::new(&program)
        .args(probe)
        .current_dir(root())
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{var}={}: cannot run it: {e}", program.display()))?;
    if !output.status.success() {
        return Err(format!(
            "{var}={} {}: {}: {}",
            program.display(),
            probe.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    Ok(program)
}

impl Peer {
    /// Runs `script` (relative to the repository root) with `args`, from the
    /// repository root; returns its exit status, stdout and stderr. Panics if
    /// it cannot start or runs longer than [`PEER_TIMEOUT`].
    pub fn run(&self, script: &str, args: &[&str]) -> (ExitStatus, String, String) {
        self.run_with_timeout(script, args, PEER_TIMEOUT)
    }

    pub fn run_with_timeout(
        &self,
        script: &str,
        args: &[&str],
        timeout: Duration,
    ) -> (ExitStatus, String, String) {
        let mut child = Command::new(&self.program)
            .arg(root().join(script))
            .args(args)
            .current_dir(root())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {} {script}: {e}", self.program.display()));
        let stdout = drain(child.stdout.take().expect("piped stdout"));
        let stderr = drain(child.stderr.take().expect("piped stderr"));
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(status) = child.try_wait().expect("waiting for a peer script") {
                break status;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "{} {script} {} did not finish within {timeout:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
                    self.kind.name(),
                    args.join(" "),
                    stdout.join().unwrap_or_default(),
                    stderr.join().unwrap_or_default()
                );
            }
            thread::sleep(Duration::from_millis(20));
        };
        (
            status,
            stdout.join().unwrap_or_default(),
            stderr.join().unwrap_or_default(),
        )
    }
}

/// Reads a pipe to the end on a thread, so a chatty child never blocks.
fn drain(mut pipe: impl Read + Send + 'static) -> thread::JoinHandle<String> {
    thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = pipe.read_to_end(&mut bytes);
        String::from_utf8_lossy(&bytes).into_owned()
    })
}

/// The server binary running as a child process; killed when dropped (also
/// when a test panics, after printing the server's log).
pub struct ServerProcess {
    child: Child,
    log: Arc<Mutex<String>>,
}

impl ServerProcess {
    /// None while the process runs; its exit status once it has exited.
    pub fn exit_status(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().expect("checking the server process")
    }

    /// Everything the server has logged so far (stderr).
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    pub fn id(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if thread::panicking() {
            eprintln!("--- server log ---\n{}", self.log());
        }
    }
}

/// Starts `codereview serve --addr 127.0.0.1:0 --log-format json` plus
/// `extra` (an `--addr` in `extra` replaces the default one) and waits for
/// its "listening" log line; returns the process and the address it listens
/// on ("127.0.0.1:PORT").
pub fn spawn_server(extra: &[&str]) -> (ServerProcess, String) {
    assert!(
        !extra.contains(&"--log-format"),
        "spawn_server reads the JSON log; do not pass --log-format"
    );
    let mut args = vec!["serve", "--log-format", "json"];
    if !extra.contains(&"--addr") {
        args.extend(["--addr", "127.0.0.1:0"]);
    }
    args.extend(extra);
    spawn_binary(&args)
}

/// Starts `codereview` with exactly `args` (which must make it log JSON, the
/// default, and listen on a free port) and waits for its "listening" log
/// line; returns the process and the address it listens on.
pub fn spawn_binary(args: &[&str]) -> (ServerProcess, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_codereview"))
        .env("CODEREVIEW_DATA_DIR", fresh_data_dir())
        .args(args)
        .current_dir(root())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cannot start the codereview binary");
    let stderr = child.stderr.take().expect("piped stderr");
    let log = Arc::new(Mutex::new(String::new()));
    let mut server = ServerProcess {
        child,
        log: log.clone(),
    };

    // Keep reading stderr for the server's whole life (a full pipe would
    // block its logging); hand each line over until the address is known.
    let (lines, received) = mpsc::channel::<String>();
    thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            log.lock().unwrap().push_str(&format!("{line}\n"));
            let _ = lines.send(line);
        }
    });
    let deadline = Instant::now() + STARTUP_TIMEOUT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match received.recv_timeout(left) {
            Ok(line) => {
                if let Some(addr) = listening_addr(&line) {
                    return (server, addr);
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => panic!(
                "`codereview {}` did not log \"listening\" within {STARTUP_TIMEOUT:?}; its log so far:\n{}",
                args.join(" "),
                server.log()
            ),
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                let status = server.child.wait().ok();
                panic!(
                    "`codereview {}` exited ({status:?}) before listening; its log:\n{}",
                    args.join(" "),
                    server.log()
                );
            }
        }
    }
}

/// The `addr` of a JSON log line whose `msg` is "listening".
fn listening_addr(line: &str) -> Option<String> {
    if !line.contains(r#""msg":"listening""#) {
        return None;
    }
    let start = line.find(r#""addr":""#)? + r#""addr":""#.len();
    let len = line[start..].find('"')?;
    Some(line[start..start + len].to_owned())
}

/// Formats a peer run for an assertion message.
pub fn describe(
    peer: &Peer,
    script: &str,
    status: ExitStatus,
    stdout: &str,
    stderr: &str,
) -> String {
    format!(
        "{} {script} exited with {status}\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}",
        peer.kind.name()
    )
}

/// A fresh data dir for one spawned `codereview` (servers are durable by
/// default; each keeps its own log).
fn fresh_data_dir() -> std::path::PathBuf {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    std::env::temp_dir().join(format!("codereview-test-data-{}-{n}", std::process::id()))
}
