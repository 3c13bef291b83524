//! Helpers for tests that run the `codereview` binary as a person would:
//! spawned processes with scripted stdin, output read line by line with
//! timeouts, a small JSON reader for `--json` output, and a TCP proxy that can
//! refuse or cut connections. Every child process is killed when its guard is
//! dropped (also when a test panics, after printing what it said).
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_codereview");

/// How long any single wait may take before the test fails (generous: a
/// regression must fail, not hang, but a loaded CI machine must not flake).
pub const WAIT: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------------------
// Processes

/// One output pipe of a child, read on a thread: every line is kept (for the
/// final analysis) and handed over through a channel (for waiting).
struct Pipe {
    lines: mpsc::Receiver<String>,
    seen: Arc<Mutex<Vec<String>>>,
    reader: Option<thread::JoinHandle<()>>,
}

impl Pipe {
    fn new(pipe: impl Read + Send + 'static) -> Pipe {
        let (sender, lines) = mpsc::channel();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let keep = seen.clone();
        let reader = thread::spawn(move || {
            for line in BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                keep.lock().unwrap().push(line.clone());
                let _ = sender.send(line);
            }
        });
        Pipe {
            lines,
            seen,
            reader: Some(reader),
        }
    }

    fn all(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }

    /// Waits for the reader to reach the end of the pipe (the child exited).
    fn finish(&mut self, deadline: Instant) {
        if let Some(reader) = self.reader.take() {
            while !reader.is_finished() && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(5));
            }
            if reader.is_finished() {
                let _ = reader.join();
            }
        }
    }
}

/// A running `codereview` process with piped stdin, stdout and stderr.
pub struct Proc {
    pub name: String,
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: Pipe,
    stderr: Pipe,
    status: Option<ExitStatus>,
}

impl Proc {
    /// Starts `codereview ARGS` in `dir` (the repository root by default).
    pub fn spawn(name: &str, args: &[&str]) -> Proc {
        Proc::spawn_in(name, args, None)
    }

    pub fn spawn_in(name: &str, args: &[&str], dir: Option<&Path>) -> Proc {
        let mut command = Command::new(BIN);
        command
            .env("CODEREVIEW_DATA_DIR", fresh_data_dir())
            .args(args)
            .current_dir(dir.unwrap_or(Path::new(env!("CARGO_MANIFEST_DIR"))));
        Proc::spawn_command(name, command)
    }

    /// Starts `codereview ARGS` with RLIMIT_NOFILE (soft and hard) set to
    /// `limit` (by `ulimit -n` in sh, which then execs the binary).
    pub fn spawn_with_file_limit(name: &str, limit: u64, args: &[&str]) -> Proc {
        let mut command = Command::new("sh");
        command
            .env("CODEREVIEW_DATA_DIR", fresh_data_dir())
            .arg("-c")
            .arg(format!("ulimit -n {limit} && exec \"$0\" \"$@\""))
            .arg(BIN)
            .args(args)
            .current_dir(env!("CARGO_MANIFEST_DIR"));
        Proc::spawn_command(name, command)
    }

    /// Starts `command` with piped stdin, stdout and stderr.
    fn spawn_command(name: &str, mut command: Command) -> Proc {
        let description = format!("{command:?}");
        command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {description}: {e}"));
        let stdin = child.stdin.take();
        let stdout = Pipe::new(child.stdout.take().expect("piped stdout"));
        let stderr = Pipe::new(child.stderr.take().expect("piped stderr"));
        Proc {
            name: name.to_owned(),
            child,
            stdin,
            stdout,
            stderr,
            status: None,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Types one line on the process's stdin.
    pub fn send(&mut self, line: &str) {
        let name = &self.name;
        let stdin = self
            .stdin
            .as_mut()
            .unwrap_or_else(|| panic!("{name}: stdin already closed"));
        stdin
            .write_all(format!("{line}\n").as_bytes())
            .and_then(|()| stdin.flush())
            .unwrap_or_else(|e| panic!("{name}: cannot type {line:?}: {e}"));
    }

    /// Ends the process's input (a join treats it as `quit`).
    pub fn close_stdin(&mut self) {
        self.stdin = None;
    }

    /// Every stdout line so far.
    pub fn stdout(&self) -> Vec<String> {
        self.stdout.all()
    }

    /// Every stderr line so far.
    pub fn stderr(&self) -> Vec<String> {
        self.stderr.all()
    }

    /// Everything the process said, for failure messages.
    pub fn transcript(&self) -> String {
        format!(
            "--- {} stdout ---\n{}\n--- {} stderr ---\n{}",
            self.name,
            self.stdout().join("\n"),
            self.name,
            self.stderr().join("\n")
        )
    }

    /// The next stdout line, or None on timeout / end of output.
    pub fn next_stdout(&mut self, timeout: Duration) -> Option<String> {
        self.stdout.lines.recv_timeout(timeout).ok()
    }

    /// Reads stdout until a line satisfies `want`; panics after `timeout`.
    pub fn wait_stdout(
        &mut self,
        what: &str,
        timeout: Duration,
        want: impl Fn(&str) -> bool,
    ) -> String {
        wait_line(&self.stdout.lines, timeout, want).unwrap_or_else(|why| {
            panic!(
                "{}: no stdout line {what} ({why})\n{}",
                self.name,
                self.transcript()
            )
        })
    }

    /// Reads stderr until a line satisfies `want`; panics after `timeout`.
    pub fn wait_stderr(
        &mut self,
        what: &str,
        timeout: Duration,
        want: impl Fn(&str) -> bool,
    ) -> String {
        wait_line(&self.stderr.lines, timeout, want).unwrap_or_else(|why| {
            panic!(
                "{}: no stderr line {what} ({why})\n{}",
                self.name,
                self.transcript()
            )
        })
    }

    /// Reads stdout (JSON lines) until one satisfies `want`; panics after
    /// `timeout` or on a line that is not JSON.
    pub fn wait_json(
        &mut self,
        what: &str,
        timeout: Duration,
        want: impl Fn(&Json) -> bool,
    ) -> Json {
        let name = self.name.clone();
        let line = wait_line(&self.stdout.lines, timeout, |line| {
            let value = Json::parse(line)
                .unwrap_or_else(|e| panic!("{name}: stdout line is not JSON ({e}): {line}"));
            want(&value)
        })
        .unwrap_or_else(|why| {
            panic!(
                "{}: no JSON line {what} ({why})\n{}",
                self.name,
                self.transcript()
            )
        });
        Json::parse(&line).expect("checked above")
    }

    /// The exit status, if the process has exited.
    pub fn try_status(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().expect("try_wait");
        }
        self.status
    }

    /// Waits for the process to exit (and its output to be read); panics
    /// after `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(status) = self.try_status() {
                break status;
            }
            if Instant::now() >= deadline {
                panic!(
                    "{} did not exit within {timeout:?}\n{}",
                    self.name,
                    self.transcript()
                );
            }
            thread::sleep(Duration::from_millis(5));
        };
        let drained = Instant::now() + Duration::from_secs(5);
        self.stdout.finish(drained);
        self.stderr.finish(drained);
        status
    }

    /// Sends SIGTERM (to this child only, by its id).
    pub fn terminate(&mut self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .expect("running kill");
        assert!(status.success(), "kill -TERM {} failed", self.pid());
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.try_status().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if thread::panicking() {
            eprintln!("{}", self.transcript());
        }
    }
}

fn wait_line(
    lines: &mpsc::Receiver<String>,
    timeout: Duration,
    want: impl Fn(&str) -> bool,
) -> Result<String, String> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) if want(&line) => return Ok(line),
            Ok(_) => {}
            Err(mpsc::RecvTimeoutError::Timeout) => {
                return Err(format!("timed out after {timeout:?}"));
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => return Err("the output ended".into()),
        }
    }
}

/// What a finished command printed.
#[derive(Debug)]
pub struct Output {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

impl Output {
    pub fn stdout_lines(&self) -> Vec<&str> {
        self.stdout.lines().collect()
    }

    pub fn stderr_lines(&self) -> Vec<&str> {
        self.stderr.lines().collect()
    }

    pub fn describe(&self) -> String {
        format!(
            "exit {:?} after {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.status.code(),
            self.elapsed,
            self.stdout,
            self.stderr
        )
    }

    /// Asserts success and returns stdout.
    pub fn ok(&self) -> &str {
        assert!(self.status.success(), "command failed: {}", self.describe());
        &self.stdout
    }

    /// Asserts a runtime failure (exit status 1: the command ran and
    /// failed) with exactly one stderr line, which it returns.
    pub fn one_line_error(&self) -> &str {
        self.one_line_failure(1)
    }

    /// Asserts a usage or setup error (exit status 2: nothing was attempted)
    /// with exactly one stderr line, which it returns.
    pub fn one_line_usage_error(&self) -> &str {
        self.one_line_failure(2)
    }

    fn one_line_failure(&self, code: i32) -> &str {
        assert!(
            !self.status.success(),
            "expected a failure: {}",
            self.describe()
        );
        assert_eq!(self.status.code(), Some(code), "{}", self.describe());
        let lines = self.stderr_lines();
        assert_eq!(
            lines.len(),
            1,
            "expected exactly one stderr line: {}",
            self.describe()
        );
        lines[0]
    }
}

/// Runs `codereview ARGS` with stdin closed; panics if it runs longer than
/// `timeout` (after killing it).
pub fn run(args: &[&str], timeout: Duration) -> Output {
    run_in(args, None, timeout)
}

pub fn run_in(args: &[&str], dir: Option<&Path>, timeout: Duration) -> Output {
    let started = Instant::now();
    let mut proc = Proc::spawn_in(&format!("codereview {}", args.join(" ")), args, dir);
    proc.close_stdin();
    let status = proc.wait_exit(timeout);
    Output {
        status,
        stdout: proc.stdout().iter().map(|l| format!("{l}\n")).collect(),
        stderr: proc.stderr().iter().map(|l| format!("{l}\n")).collect(),
        elapsed: started.elapsed(),
    }
}

// ---------------------------------------------------------------------------
// The server

/// `codereview serve` on an ephemeral port of 127.0.0.1.
pub struct Server {
    pub proc: Proc,
    /// "127.0.0.1:PORT"
    pub addr: String,
}

impl Server {
    /// Starts `serve --addr 127.0.0.1:0 --log-format json EXTRA` and waits for
    /// its "listening" log line.
    pub fn start(extra: &[&str]) -> Server {
        let mut args = vec!["serve", "--log-format", "json"];
        if !extra.contains(&"--addr") {
            args.extend(["--addr", "127.0.0.1:0"]);
        }
        args.extend(extra);
        let mut proc = Proc::spawn("server", &args);
        let line = proc.wait_stderr("\"listening\"", WAIT, |l| {
            l.contains(r#""msg":"listening""#)
        });
        let log = Json::parse(&line).expect("the server logs JSON");
        let addr = log["addr"].str().to_owned();
        Server { proc, addr }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn port(&self) -> u16 {
        self.addr.rsplit(':').next().unwrap().parse().unwrap()
    }

    /// The server's `snapshot --json` of a session (panics on failure).
    pub fn snapshot(&self, session: &str) -> Json {
        snapshot_json(&self.url(), session)
    }
}

/// `codereview snapshot --json` of a session at `url`.
pub fn snapshot_json(url: &str, session: &str) -> Json {
    let out = run(
        &["snapshot", "--addr", url, "--session", session, "--json"],
        WAIT,
    );
    let text = out.ok();
    Json::parse(text.trim()).unwrap_or_else(|e| panic!("snapshot is not JSON ({e}): {text}"))
}

/// An address nobody listens on (bound, then released).
pub fn dead_addr() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    format!("http://{addr}")
}

/// A fresh empty directory under the system temp directory, removed when
/// dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(label: &str) -> TempDir {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("codereview-cli-{label}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    pub fn file(&self, name: &str) -> String {
        self.join(name).display().to_string()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

// ---------------------------------------------------------------------------
// Participants

/// Starts `join --json --addr URL --session S --user U EXTRA`.
pub fn join(url: &str, session: &str, user: &str, extra: &[&str]) -> Proc {
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
    Proc::spawn(user, &args)
}

impl Proc {
    /// Waits for the CAUGHT_UP notice of the current connection.
    pub fn caught_up(&mut self) {
        self.wait_json("notice caught_up", WAIT, |j| {
            j["type"] == "notice" && j["kind"] == "caught_up"
        });
    }

    /// Types `show` and returns the document it prints.
    pub fn show(&mut self) -> Json {
        self.send("show");
        self.wait_json("document", WAIT, |j| j["type"] == "document")
    }

    /// Types `quit`, waits for the exit and returns the last document printed.
    pub fn quit(&mut self) -> Json {
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
}

/// Polls `done` every 10 ms; panics after `timeout`.
pub fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        thread::sleep(Duration::from_millis(10));
    }
}

impl Proc {
    /// Every stdout line as JSON (panics on a line that is not JSON).
    pub fn json_lines(&self) -> Vec<Json> {
        self.stdout()
            .iter()
            .map(|line| {
                Json::parse(line).unwrap_or_else(|e| {
                    panic!("{}: stdout line is not JSON ({e}): {line}", self.name)
                })
            })
            .collect()
    }

    pub fn documents(&self) -> Vec<Json> {
        self.json_lines()
            .into_iter()
            .filter(|j| j["type"] == "document")
            .collect()
    }

    /// The texts of the `{"type":"status"}` lines.
    pub fn statuses(&self) -> Vec<String> {
        self.json_lines()
            .iter()
            .filter(|j| j["type"] == "status")
            .map(|j| j["text"].str().to_owned())
            .collect()
    }
}

/// Waits until every participant has nothing waiting for the server and shows
/// the server's document at the server's version: the session is quiet and
/// everyone converged. Returns the snapshot.
pub fn settle(server_url: &str, session: &str, participants: &mut [&mut Proc]) -> Json {
    let deadline = Instant::now() + WAIT;
    loop {
        let docs: Vec<Json> = participants.iter_mut().map(|p| p.show()).collect();
        let quiet = docs.iter().all(|d| d["pending"].u64() == 0);
        if quiet {
            let snapshot = snapshot_json(server_url, session);
            if docs.iter().all(|d| {
                d["version"].i64() == snapshot["version"].i64() && d["files"] == snapshot["files"]
            }) {
                return snapshot;
            }
            if Instant::now() >= deadline {
                let names: Vec<&str> = participants.iter().map(|p| p.name.as_str()).collect();
                panic!(
                    "{names:?} did not converge with the server within {WAIT:?}\nserver: {snapshot}\nparticipants: {}",
                    docs.iter()
                        .map(|d| d.to_string())
                        .collect::<Vec<_>>()
                        .join("\n")
                );
            }
        } else if Instant::now() >= deadline {
            panic!(
                "edits still waiting for the server after {WAIT:?}: {}",
                docs.iter()
                    .map(|d| d.to_string())
                    .collect::<Vec<_>>()
                    .join("\n")
            );
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// Whether a printed event is *essential* (numbered densely by the server):
/// edits, comments, uploads, joins and leaves, and acknowledgements of one's
/// own essential events (not duplicates, not no-ops).
pub fn is_essential(event: &Json) -> bool {
    match event.get("type").map(Json::str) {
        Some("edit" | "comment" | "file") => true,
        Some("presence") => event["status"] == "joined" || event["status"] == "left",
        Some("ack") => event["sequence"].u64() != 0 && event["duplicate"] == false,
        _ => false,
    }
}

/// Asserts that the essential events a participant printed carry strictly
/// increasing sequence numbers: nothing printed twice, nothing out of order.
pub fn assert_no_repeats(participant: &Proc) {
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

// ---------------------------------------------------------------------------
// A seeded random number generator (splitmix64): reproducible scripts.

pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// Uniform in `lo..=hi`.
    pub fn between(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }
}

// ---------------------------------------------------------------------------
// A TCP proxy that can refuse connections and cut them

struct ProxyState {
    target: SocketAddr,
    refusing: AtomicBool,
    /// When set, new connections are read until the client has sent this
    /// marker (it connected, opened its stream and sent its first message),
    /// then hung up on: a front end without a healthy backend.
    hang_up_after: Mutex<Option<&'static [u8]>>,
    flaky: AtomicBool,
    /// Bumped to cut every open connection.
    cut: tokio::sync::watch::Sender<u64>,
    cuts: AtomicU64,
    accepted: AtomicU64,
    hung_up: AtomicU64,
}

/// A proxy on 127.0.0.1 in front of `target`, on its own runtime thread.
pub struct Proxy {
    pub addr: SocketAddr,
    state: Arc<ProxyState>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Proxy {
    pub fn start(target: &str) -> Proxy {
        let target: SocketAddr = target.parse().expect("a socket address");
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let (cut, _) = tokio::sync::watch::channel(0u64);
        let state = Arc::new(ProxyState {
            target,
            refusing: AtomicBool::new(false),
            hang_up_after: Mutex::new(None),
            flaky: AtomicBool::new(false),
            cut,
            cuts: AtomicU64::new(0),
            accepted: AtomicU64::new(0),
            hung_up: AtomicU64::new(0),
        });
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = state.clone();
        runtime.spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    continue;
                };
                // Subscribe before looking at `refusing`: a connection either
                // sees a later cut or is refused.
                let mut cut = shared.cut.subscribe();
                if shared.refusing.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let hang_up_after = *shared.hang_up_after.lock().unwrap();
                if let Some(marker) = hang_up_after {
                    let shared = shared.clone();
                    tokio::spawn(async move {
                        if read_until_then_hang_up(client, marker).await {
                            shared.hung_up.fetch_add(1, Ordering::SeqCst);
                        }
                    });
                    continue;
                }
                shared.accepted.fetch_add(1, Ordering::SeqCst);
                let target = shared.target;
                tokio::spawn(async move {
                    let Ok(mut server) = tokio::net::TcpStream::connect(target).await else {
                        return;
                    };
                    let mut client = client;
                    let _ = client.set_nodelay(true);
                    let _ = server.set_nodelay(true);
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = cut.changed() => {}
                    }
                    // Dropping both sockets cuts the connection both ways.
                });
            }
        });
        Proxy {
            addr,
            state,
            runtime: Some(runtime),
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// While refusing, new connections are accepted and closed at once.
    pub fn set_refusing(&self, refusing: bool) {
        self.state.refusing.store(refusing, Ordering::SeqCst);
    }

    /// Cuts every open connection (both directions).
    pub fn cut(&self) {
        self.state.cuts.fetch_add(1, Ordering::SeqCst);
        self.state.cut.send_modify(|n| *n += 1);
    }

    /// While set, new connections are read until the client sent `marker`,
    /// then hung up on (see [`HangUp`]).
    pub fn set_hang_up_after(&self, marker: Option<&'static [u8]>) {
        *self.state.hang_up_after.lock().unwrap() = marker;
    }

    /// Connections hung up on, having sent the marker, so far.
    pub fn hung_up(&self) -> u64 {
        self.state.hung_up.load(Ordering::SeqCst)
    }

    /// Connections accepted and forwarded so far.
    pub fn accepted(&self) -> u64 {
        self.state.accepted.load(Ordering::SeqCst)
    }

    pub fn cuts(&self) -> u64 {
        self.state.cuts.load(Ordering::SeqCst)
    }

    /// Cuts every connection every `min..=max` ms (seeded) until
    /// [`Proxy::stop_flaky`].
    pub fn start_flaky(&self, min_ms: u64, max_ms: u64, seed: u64) {
        self.state.flaky.store(true, Ordering::SeqCst);
        let state = self.state.clone();
        self.runtime.as_ref().unwrap().spawn(async move {
            let mut rng = Rng::new(seed);
            loop {
                tokio::time::sleep(Duration::from_millis(rng.between(min_ms, max_ms))).await;
                if !state.flaky.load(Ordering::SeqCst) {
                    break;
                }
                state.cuts.fetch_add(1, Ordering::SeqCst);
                state.cut.send_modify(|n| *n += 1);
            }
        });
    }

    pub fn stop_flaky(&self) {
        self.state.flaky.store(false, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop_flaky();
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// A TCP endpoint that accepts connections, reads until the client has sent
/// `marker` (so the client has connected, opened its stream and sent its
/// first message), then hangs up: a front end without a healthy backend.
/// [`HangUp::connections`] counts the connections that sent the marker.
pub struct HangUp {
    pub addr: SocketAddr,
    connections: Arc<AtomicU64>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl HangUp {
    pub fn start(marker: &'static [u8]) -> HangUp {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicU64::new(0));
        let count = connections.clone();
        runtime.spawn(async move {
            loop {
                let Ok((socket, _)) = listener.accept().await else {
                    continue;
                };
                let count = count.clone();
                tokio::spawn(async move {
                    if read_until_then_hang_up(socket, marker).await {
                        count.fetch_add(1, Ordering::SeqCst);
                    }
                });
            }
        });
        HangUp {
            addr,
            connections,
            runtime: Some(runtime),
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn connections(&self) -> u64 {
        self.connections.load(Ordering::SeqCst)
    }
}

/// Reads until `marker` has been received, then drops the socket (hangs
/// up); whether the marker came.
async fn read_until_then_hang_up(mut socket: tokio::net::TcpStream, marker: &'static [u8]) -> bool {
    use tokio::io::AsyncReadExt;
    let mut seen = Vec::new();
    let mut buffer = [0u8; 4096];
    while !seen.windows(marker.len()).any(|w| w == marker) {
        match socket.read(&mut buffer).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => seen.extend_from_slice(&buffer[..n]),
        }
    }
    true
}

impl Drop for HangUp {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

// ---------------------------------------------------------------------------
// JSON (enough to read the binary's output; no size or depth limits)

#[derive(Debug, Clone, PartialEq)]
pub enum Json {
    Null,
    Bool(bool),
    /// The number's text, as printed.
    Number(String),
    String(String),
    Array(Vec<Json>),
    Object(BTreeMap<String, Json>),
}

static NULL: Json = Json::Null;

impl Json {
    pub fn parse(text: &str) -> Result<Json, String> {
        let mut parser = JsonParser {
            bytes: text.as_bytes(),
            pos: 0,
        };
        parser.skip();
        let value = parser.value()?;
        parser.skip();
        if parser.pos != parser.bytes.len() {
            return Err(format!("trailing characters at byte {}", parser.pos));
        }
        Ok(value)
    }

    pub fn get(&self, key: &str) -> Option<&Json> {
        match self {
            Json::Object(map) => map.get(key),
            _ => None,
        }
    }

    /// The string value; panics on anything else.
    pub fn str(&self) -> &str {
        match self {
            Json::String(s) => s,
            other => panic!("expected a JSON string, got {other}"),
        }
    }

    pub fn u64(&self) -> u64 {
        match self {
            Json::Number(n) => n
                .parse()
                .unwrap_or_else(|_| panic!("expected an unsigned integer, got {n}")),
            other => panic!("expected a JSON number, got {other}"),
        }
    }

    pub fn i64(&self) -> i64 {
        match self {
            Json::Number(n) => n
                .parse()
                .unwrap_or_else(|_| panic!("expected an integer, got {n}")),
            other => panic!("expected a JSON number, got {other}"),
        }
    }

    pub fn f64(&self) -> f64 {
        match self {
            Json::Number(n) => n.parse().expect("a JSON number"),
            other => panic!("expected a JSON number, got {other}"),
        }
    }

    pub fn array(&self) -> &[Json] {
        match self {
            Json::Array(items) => items,
            other => panic!("expected a JSON array, got {other}"),
        }
    }

    pub fn object(&self) -> &BTreeMap<String, Json> {
        match self {
            Json::Object(map) => map,
            other => panic!("expected a JSON object, got {other}"),
        }
    }

    /// An array of strings as a Vec.
    pub fn strings(&self) -> Vec<String> {
        self.array().iter().map(|s| s.str().to_owned()).collect()
    }
}

impl std::ops::Index<&str> for Json {
    type Output = Json;

    /// The member `key`, or null when missing.
    fn index(&self, key: &str) -> &Json {
        self.get(key).unwrap_or(&NULL)
    }
}

impl PartialEq<&str> for Json {
    fn eq(&self, other: &&str) -> bool {
        matches!(self, Json::String(s) if s == other)
    }
}

impl PartialEq<bool> for Json {
    fn eq(&self, other: &bool) -> bool {
        matches!(self, Json::Bool(b) if b == other)
    }
}

impl std::fmt::Display for Json {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Json::Null => f.write_str("null"),
            Json::Bool(b) => write!(f, "{b}"),
            Json::Number(n) => f.write_str(n),
            Json::String(s) => write!(f, "{s:?}"),
            Json::Array(items) => {
                f.write_str("[")?;
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        f.write_str(",")?;
                    }
                    write!(f, "{item}")?;
                }
                f.write_str("]")
            }
            Json::Object(map) => {
                f.write_str("{")?;
                for (i, (key, value)) in map.iter().enumerate() {
                    if i > 0 {
                        f.write_str(",")?;
                    }
                    write!(f, "{key:?}:{value}")?;
                }
                f.write_str("}")
            }
        }
    }
}

struct JsonParser<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl JsonParser<'_> {
    fn skip(&mut self) {
        while self.pos < self.bytes.len() && self.bytes[self.pos].is_ascii_whitespace() {
            self.pos += 1;
        }
    }

    fn error(&self, what: &str) -> String {
        format!("{what} at byte {}", self.pos)
    }

    fn expect(&mut self, word: &str) -> Result<(), String> {
        if self.bytes[self.pos..].starts_with(word.as_bytes()) {
            self.pos += word.len();
            Ok(())
        } else {
            Err(self.error(&format!("expected {word}")))
        }
    }

    fn value(&mut self) -> Result<Json, String> {
        match self.bytes.get(self.pos) {
            None => Err(self.error("unexpected end")),
            Some(b'n') => self.expect("null").map(|()| Json::Null),
            Some(b't') => self.expect("true").map(|()| Json::Bool(true)),
            Some(b'f') => self.expect("false").map(|()| Json::Bool(false)),
            Some(b'"') => self.string().map(Json::String),
            Some(b'[') => {
                self.pos += 1;
                let mut items = Vec::new();
                self.skip();
                if self.bytes.get(self.pos) == Some(&b']') {
                    self.pos += 1;
                    return Ok(Json::Array(items));
                }
                loop {
                    self.skip();
                    items.push(self.value()?);
                    self.skip();
                    match self.bytes.get(self.pos) {
                        Some(b',') => self.pos += 1,
                        Some(b']') => {
                            self.pos += 1;
                            return Ok(Json::Array(items));
                        }
                        _ => return Err(self.error("expected , or ]")),
                    }
                }
            }
            Some(b'{') => {
                self.pos += 1;
                let mut map = BTreeMap::new();
                self.skip();
                if self.bytes.get(self.pos) == Some(&b'}') {
                    self.pos += 1;
                    return Ok(Json::Object(map));
                }
                loop {
                    self.skip();
                    let key = self.string()?;
                    self.skip();
                    self.expect(":")?;
                    self.skip();
                    let value = self.value()?;
                    if map.insert(key.clone(), value).is_some() {
                        return Err(self.error(&format!("duplicate key {key:?}")));
                    }
                    self.skip();
                    match self.bytes.get(self.pos) {
                        Some(b',') => self.pos += 1,
                        Some(b'}') => {
                            self.pos += 1;
                            return Ok(Json::Object(map));
                        }
                        _ => return Err(self.error("expected , or }")),
                    }
                }
            }
            Some(b'-' | b'0'..=b'9') => {
                let start = self.pos;
                while self.pos < self.bytes.len()
                    && matches!(
                        self.bytes[self.pos],
                        b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9'
                    )
                {
                    self.pos += 1;
                }
                let text = std::str::from_utf8(&self.bytes[start..self.pos]).unwrap();
                text.parse::<f64>().map_err(|_| self.error("bad number"))?;
                Ok(Json::Number(text.to_owned()))
            }
            Some(_) => Err(self.error("unexpected character")),
        }
    }

    fn hex4(&mut self) -> Result<u32, String> {
        let digits = self
            .bytes
            .get(self.pos..self.pos + 4)
            .and_then(|d| std::str::from_utf8(d).ok())
            .and_then(|d| u32::from_str_radix(d, 16).ok())
            .ok_or_else(|| self.error("bad \\u escape"))?;
        self.pos += 4;
        Ok(digits)
    }

    fn string(&mut self) -> Result<String, String> {
        self.expect("\"")?;
        let mut out = Vec::new();
        loop {
            let Some(&byte) = self.bytes.get(self.pos) else {
                return Err(self.error("unterminated string"));
            };
            self.pos += 1;
            match byte {
                b'"' => break,
                b'\\' => {
                    let Some(&escape) = self.bytes.get(self.pos) else {
                        return Err(self.error("unterminated escape"));
                    };
                    self.pos += 1;
                    let c = match escape {
                        b'"' => '"',
                        b'\\' => '\\',
                        b'/' => '/',
                        b'b' => '\u{8}',
                        b'f' => '\u{c}',
                        b'n' => '\n',
                        b'r' => '\r',
                        b't' => '\t',
                        b'u' => {
                            let high = self.hex4()?;
                            let code = if (0xD800..0xDC00).contains(&high) {
                                self.expect("\\u")?;
                                let low = self.hex4()?;
                                0x10000
                                    + ((high - 0xD800) << 10)
                                    + (low.wrapping_sub(0xDC00) & 0x3FF)
                            } else {
                                high
                            };
                            char::from_u32(code).ok_or_else(|| self.error("bad code point"))?
                        }
                        _ => return Err(self.error("bad escape")),
                    };
                    let mut buffer = [0u8; 4];
                    out.extend_from_slice(c.encode_utf8(&mut buffer).as_bytes());
                }
                byte if byte < 0x20 => return Err(self.error("control character in a string")),
                byte => out.push(byte),
            }
        }
        String::from_utf8(out).map_err(|_| self.error("invalid UTF-8"))
    }
}

/// A fresh data dir for one spawned `codereview` (servers are durable by
/// default; each keeps its own log).
fn fresh_data_dir() -> std::path::PathBuf {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    std::env::temp_dir().join(format!("codereview-test-data-{}-{n}", std::process::id()))
}
