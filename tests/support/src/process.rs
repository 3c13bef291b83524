//! The `codereview` binary run as a person would: child processes with
//! piped stdin, every output line read by a thread and kept (a full pipe
//! would block the child), waits with deadlines, one-shot runs, temporary
//! directories, signals. Every child is killed when its guard is dropped;
//! a test that panics prints what its children said first.
//!
//! The binary's path exists only in the test crates
//! (`CARGO_BIN_EXE_codereview`): they name it with [`binary!`], e.g.
//! `const BIN: Binary = binary!();` in their `main.rs`.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crate::WAIT;
use crate::json::Json;

/// The `codereview` binary built for this test run.
#[macro_export]
macro_rules! binary {
    () => {
        $crate::process::Binary::new(env!("CARGO_BIN_EXE_codereview"))
    };
}

/// Where the binary under test is.
#[derive(Debug, Clone, Copy)]
pub struct Binary(&'static str);

impl Binary {
    pub const fn new(path: &'static str) -> Binary {
        Binary(path)
    }

    pub fn path(self) -> &'static str {
        self.0
    }

    /// Starts `codereview ARGS` in the repository root.
    pub fn spawn(self, name: &str, args: &[&str]) -> Proc {
        self.spawn_in(name, args, None)
    }

    /// Starts `codereview ARGS` in `dir` (the repository root for None).
    pub fn spawn_in(self, name: &str, args: &[&str], dir: Option<&Path>) -> Proc {
        let mut command = Command::new(self.0);
        command.args(args).current_dir(dir.unwrap_or(crate::root()));
        Binary::launch(name, command)
    }

    /// Starts `codereview ARGS` with RLIMIT_NOFILE (soft and hard) set to
    /// `limit` (by `ulimit -n` in sh, which then execs the binary).
    pub fn spawn_with_file_limit(self, name: &str, limit: u64, args: &[&str]) -> Proc {
        let mut command = Command::new("sh");
        command
            .arg("-c")
            .arg(format!("ulimit -n {limit} && exec \"$0\" \"$@\""))
            .arg(self.0)
            .args(args)
            .current_dir(crate::root());
        Binary::launch(name, command)
    }

    /// Spawns the binary with a data dir of its own (`serve` is durable by
    /// default), removed with the process.
    fn launch(name: &str, mut command: Command) -> Proc {
        let data_dir = TempDir::new("data");
        command.env("CODEREVIEW_DATA_DIR", data_dir.path());
        let mut proc = Proc::spawn(name, command);
        proc._data_dir = Some(data_dir);
        proc
    }

    /// Runs `codereview ARGS` with stdin closed; panics if it runs longer
    /// than `limit` (after killing it).
    pub fn run(self, args: &[&str], limit: Duration) -> Output {
        self.run_in(args, None, limit)
    }

    pub fn run_in(self, args: &[&str], dir: Option<&Path>, limit: Duration) -> Output {
        let started = Instant::now();
        let mut proc = self.spawn_in(&format!("codereview {}", args.join(" ")), args, dir);
        proc.close_stdin();
        let status = proc.wait_exit(limit);
        let text = |lines: Vec<String>| lines.iter().map(|l| format!("{l}\n")).collect();
        Output {
            status,
            stdout: text(proc.stdout()),
            stderr: text(proc.stderr()),
            elapsed: started.elapsed(),
        }
    }
}

// ---------------------------------------------------------------------------
// Output lines

/// The lines of one pipe, collected by a thread for the child's whole life.
/// Waits either search every line so far ([`Lines::find`]) or read on from
/// where the last such read stopped ([`Lines::next_matching`]).
pub struct Lines {
    shared: Arc<(Mutex<Pipe>, Condvar)>,
    /// How many lines `next_matching` has consumed.
    cursor: usize,
}

#[derive(Default)]
struct Pipe {
    lines: Vec<String>,
    closed: bool,
}

impl Lines {
    pub fn read(pipe: impl Read + Send + 'static) -> Lines {
        let shared = Arc::new((Mutex::new(Pipe::default()), Condvar::new()));
        let writer = shared.clone();
        thread::spawn(move || {
            let mut reader = BufReader::new(pipe);
            let mut line = Vec::new();
            loop {
                line.clear();
                let ended = !matches!(reader.read_until(b'\n', &mut line), Ok(n) if n > 0);
                let (pipe, changed) = &*writer;
                let mut pipe = pipe.lock().unwrap();
                if ended {
                    pipe.closed = true;
                } else {
                    let text = String::from_utf8_lossy(&line);
                    pipe.lines
                        .push(text.strip_suffix('\n').unwrap_or(&text).to_owned());
                }
                changed.notify_all();
                if ended {
                    return;
                }
            }
        });
        Lines { shared, cursor: 0 }
    }

    /// Every line so far.
    pub fn all(&self) -> Vec<String> {
        self.shared.0.lock().unwrap().lines.clone()
    }

    /// Waits up to `limit` for a line from index `from` on that satisfies
    /// `want`; its index and text, or why not.
    fn wait(
        &self,
        from: usize,
        limit: Duration,
        mut want: impl FnMut(&str) -> bool,
    ) -> Result<(usize, String), String> {
        let deadline = Instant::now() + limit;
        let (pipe, changed) = &*self.shared;
        let mut pipe = pipe.lock().unwrap();
        let mut next = from;
        loop {
            while next < pipe.lines.len() {
                if want(&pipe.lines[next]) {
                    return Ok((next, pipe.lines[next].clone()));
                }
                next += 1;
            }
            if pipe.closed {
                return Err("the output ended".into());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(format!("timed out after {limit:?}"));
            }
            pipe = changed.wait_timeout(pipe, left).unwrap().0;
        }
    }

    /// The first line since the start that satisfies `want`, waiting up to
    /// `limit` for it.
    pub fn find(&self, limit: Duration, want: impl FnMut(&str) -> bool) -> Option<String> {
        self.wait(0, limit, want).ok().map(|(_, line)| line)
    }

    /// The next line (after those already consumed) that satisfies `want`;
    /// it and the lines before it are consumed.
    pub fn next_matching(
        &mut self,
        limit: Duration,
        want: impl FnMut(&str) -> bool,
    ) -> Result<String, String> {
        let (index, line) = self.wait(self.cursor, limit, want)?;
        self.cursor = index + 1;
        Ok(line)
    }

    /// Waits up to `limit` for the end of the pipe; whether it came.
    pub fn finish(&self, limit: Duration) -> bool {
        self.wait(usize::MAX, limit, |_| false) == Err("the output ended".into())
    }
}

// ---------------------------------------------------------------------------
// Processes

/// A running child with piped stdin, stdout and stderr; killed when dropped.
pub struct Proc {
    pub name: String,
    child: Child,
    stdin: Option<ChildStdin>,
    pub stdout: Lines,
    pub stderr: Lines,
    status: Option<ExitStatus>,
    /// Removed after the process is killed (dropped with it).
    _data_dir: Option<TempDir>,
}

impl Proc {
    /// Starts `command` with its three pipes.
    pub fn spawn(name: &str, mut command: Command) -> Proc {
        let description = format!("{command:?}");
        command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {description}: {e}"));
        Proc {
            name: name.to_owned(),
            stdin: child.stdin.take(),
            stdout: Lines::read(child.stdout.take().expect("piped stdout")),
            stderr: Lines::read(child.stderr.take().expect("piped stderr")),
            child,
            status: None,
            _data_dir: None,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Types one line on the process's stdin.
    pub fn send(&mut self, line: &str) {
        self.write(&format!("{line}\n"));
    }

    /// Writes `text` as is to the process's stdin.
    pub fn write(&mut self, text: &str) {
        let name = &self.name;
        let stdin = self
            .stdin
            .as_mut()
            .unwrap_or_else(|| panic!("{name}: stdin already closed"));
        stdin
            .write_all(text.as_bytes())
            .and_then(|()| stdin.flush())
            .unwrap_or_else(|e| panic!("{name}: cannot type {text:?}: {e}"));
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

    /// Reads stdout on until a line satisfies `want`; panics after `limit`.
    pub fn wait_stdout(
        &mut self,
        what: &str,
        limit: Duration,
        want: impl Fn(&str) -> bool,
    ) -> String {
        let found = self.stdout.next_matching(limit, want);
        found.unwrap_or_else(|why| self.missing("stdout", what, &why))
    }

    /// Reads stderr on until a line satisfies `want`; panics after `limit`.
    pub fn wait_stderr(
        &mut self,
        what: &str,
        limit: Duration,
        want: impl Fn(&str) -> bool,
    ) -> String {
        let found = self.stderr.next_matching(limit, want);
        found.unwrap_or_else(|why| self.missing("stderr", what, &why))
    }

    fn missing(&self, pipe: &str, what: &str, why: &str) -> ! {
        panic!(
            "{}: no {pipe} line {what} ({why})\n{}",
            self.name,
            self.transcript()
        )
    }

    /// Reads stdout (JSON lines) on until one satisfies `want`; panics after
    /// `limit` or on a line that is not JSON.
    pub fn wait_json(&mut self, what: &str, limit: Duration, want: impl Fn(&Json) -> bool) -> Json {
        let name = self.name.clone();
        let line = self.wait_stdout(what, limit, |line| {
            let value = Json::parse(line)
                .unwrap_or_else(|e| panic!("{name}: stdout line is not JSON ({e}): {line}"));
            want(&value)
        });
        Json::parse(&line).expect("checked above")
    }

    /// The first stdout JSON line since the start satisfying `want`, waiting
    /// up to WAIT for it (lines that are not JSON are passed over).
    pub fn find_json(&self, what: &str, want: impl Fn(&Json) -> bool) -> Json {
        let line = self
            .stdout
            .find(WAIT, |l| Json::parse(l).is_ok_and(|j| want(&j)))
            .unwrap_or_else(|| panic!("{}: printed no {what}\n{}", self.name, self.transcript()));
        Json::parse(&line).expect("checked above")
    }

    /// Every stdout line as JSON (panics on a line that is not JSON).
    pub fn json_lines(&self) -> Vec<Json> {
        let parse = |line: &String| {
            Json::parse(line)
                .unwrap_or_else(|e| panic!("{}: stdout line is not JSON ({e}): {line}", self.name))
        };
        self.stdout().iter().map(parse).collect()
    }

    /// The exit status, if the process has exited.
    pub fn try_status(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().expect("try_wait");
        }
        self.status
    }

    /// Waits up to `limit` for the process to exit, then for its output to
    /// end; None if it is still running.
    pub fn try_wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        let status = loop {
            if let Some(status) = self.try_status() {
                break status;
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(5));
        };
        self.stdout.finish(Duration::from_secs(5));
        self.stderr.finish(Duration::from_secs(5));
        Some(status)
    }

    /// As [`Proc::try_wait_exit`]; panics if the process does not exit.
    pub fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        self.try_wait_exit(limit).unwrap_or_else(|| {
            panic!(
                "{} did not exit within {limit:?}\n{}",
                self.name,
                self.transcript()
            )
        })
    }

    /// Sends a signal by name ("TERM", "INT", "HUP") to this child.
    pub fn signal(&self, signal: &str) {
        send_signal(self.pid(), signal);
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.try_status().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if thread::panicking() {
            self.stderr.finish(Duration::from_secs(2));
            eprintln!("{}", self.transcript());
        }
    }
}

/// Sends a signal by name ("TERM", "INT", "HUP") to the process `pid`.
pub fn send_signal(pid: u32, signal: &str) {
    let status = Command::new("kill")
        .args(["-s", signal, &pid.to_string()])
        .status()
        .expect("cannot run kill(1)");
    assert!(status.success(), "kill -s {signal} {pid}: {status}");
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

// ---------------------------------------------------------------------------
// Files and ports

/// A fresh empty directory under the system temp directory, removed when
/// dropped.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(label: &str) -> TempDir {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let name = format!("codereview-test-{label}-{}-{n}", std::process::id());
        let path = std::env::temp_dir().join(name);
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("creating a temporary directory");
        TempDir(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    /// The path of `name` in it, as a string (for arguments).
    pub fn file(&self, name: &str) -> String {
        self.join(name).display().to_string()
    }

    /// Writes `content` to `name` in it; the path.
    pub fn write(&self, name: &str, content: &str) -> PathBuf {
        let path = self.join(name);
        std::fs::write(&path, content).expect("writing a temporary file");
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A port of 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("binding an ephemeral port")
        .port()
}

/// A URL nobody listens on (bound, then released).
pub fn dead_addr() -> String {
    format!("http://127.0.0.1:{}", free_port())
}
