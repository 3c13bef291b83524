//! Helpers for the operations tests: the real `codereview` binary as a child
//! process (server and clients), its output read line by line on threads, a
//! plain-TCP HTTP/1.1 client for the metrics listener, a Prometheus text
//! reader, signals, a strict JSON check of log lines, and our own gRPC client
//! for participants that must misbehave (never read, ignore a notice).
//!
//! Every child process is killed when its guard is dropped (and what it said
//! is printed if the test is panicking). Every wait has a deadline.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use codereview::auth::json::{self, Value};
use codereview::grpc::client::{
    CallOptions, CallReceiver, CallSender, Channel, ChannelConfig, Endpoint,
};
use codereview::grpc::{Code, Status};
use codereview::pb::codereview::{
    Join, Joined, SessionMessage, notice::Kind as NoticeKind, session_message::Payload,
};

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_codereview");

/// The longest any single wait may take before the test fails: generous (a
/// loaded machine must not flake), but a regression fails instead of hanging.
pub const WAIT: Duration = Duration::from_secs(20);

/// The CollaborativeSession method, as the metrics label it.
pub const SESSION_METHOD: &str = "/codereview.v1.CodeReviewService/CollaborativeSession";

pub fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

// ---------------------------------------------------------------------------
// Output read on a thread

/// The lines of one pipe, collected by a thread for the child's whole life
/// (a full pipe would block the child).
pub struct Lines {
    seen: Arc<Mutex<Vec<String>>>,
    reader: Option<thread::JoinHandle<()>>,
}

impl Lines {
    pub fn new(pipe: impl Read + Send + 'static) -> Lines {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let keep = seen.clone();
        let reader = thread::spawn(move || {
            let mut reader = BufReader::new(pipe);
            let mut line = Vec::new();
            loop {
                line.clear();
                match reader.read_until(b'\n', &mut line) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        let text = String::from_utf8_lossy(&line);
                        let text = text.strip_suffix('\n').unwrap_or(&text);
                        keep.lock().unwrap().push(text.to_owned());
                    }
                }
            }
        });
        Lines {
            seen,
            reader: Some(reader),
        }
    }

    /// Every line so far.
    pub fn all(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }

    /// The first line (from the start) that satisfies `want`, waiting up to
    /// `within` for it to appear.
    pub fn wait_for(&self, within: Duration, want: impl Fn(&str) -> bool) -> Option<String> {
        self.wait_for_from(0, within, want).map(|(_, line)| line)
    }

    /// Like [`Lines::wait_for`], looking only at lines from index `from`;
    /// returns the index and the line.
    pub fn wait_for_from(
        &self,
        from: usize,
        within: Duration,
        want: impl Fn(&str) -> bool,
    ) -> Option<(usize, String)> {
        let deadline = Instant::now() + within;
        loop {
            {
                let seen = self.seen.lock().unwrap();
                if let Some((i, line)) = seen.iter().enumerate().skip(from).find(|(_, l)| want(l)) {
                    return Some((i, line.clone()));
                }
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits (up to `within`) for the end of the pipe; true if it was reached.
    pub fn finish(&mut self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        if let Some(reader) = self.reader.take() {
            while !reader.is_finished() && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(5));
            }
            if !reader.is_finished() {
                self.reader = Some(reader);
                return false;
            }
            let _ = reader.join();
        }
        true
    }
}

/// Waits up to `within` for a child to exit.
fn wait_child(child: &mut Child, within: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().expect("waiting for a child process") {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        thread::sleep(Duration::from_millis(5));
    }
}

/// Sends a signal by name ("TERM", "INT", "HUP") to a process.
pub fn send_signal(pid: u32, signal: &str) {
    let status = Command::new("kill")
        .args(["-s", signal, &pid.to_string()])
        .status()
        .expect("cannot run kill(1)");
    assert!(status.success(), "kill -s {signal} {pid}: {status}");
}

// ---------------------------------------------------------------------------
// The server

/// How the server's log is written, which decides how its address is found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    Text,
}

/// `codereview serve` as a child process; killed when dropped.
pub struct Server {
    child: Child,
    pub stderr: Lines,
    /// The gRPC address, "127.0.0.1:PORT".
    pub addr: String,
    /// The metrics address, when `--metrics-addr` was given.
    pub metrics: Option<String>,
    pub args: Vec<String>,
}

impl Server {
    /// `serve --addr 127.0.0.1:0 --log-format json` plus `extra`; waits for
    /// the "listening" line (and "metrics listening" before it).
    pub fn start(extra: &[&str]) -> Server {
        Server::start_with(LogFormat::Json, extra)
    }

    pub fn start_with(format: LogFormat, extra: &[&str]) -> Server {
        let mut args: Vec<String> = vec!["serve".into(), "--addr".into(), "127.0.0.1:0".into()];
        args.push("--log-format".into());
        args.push(
            match format {
                LogFormat::Json => "json",
                LogFormat::Text => "text",
            }
            .into(),
        );
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut server = Server::spawn(args);
        let line = server
            .stderr
            .wait_for(WAIT, |l| is_listening_line(format, l))
            .unwrap_or_else(|| server.fail("did not log \"listening\""));
        server.addr = field_of(format, &line, "addr").expect("the listening line has an addr");
        if extra.contains(&"--metrics-addr") {
            let line = server
                .stderr
                .all()
                .into_iter()
                .find(|l| is_metrics_line(format, l))
                .unwrap_or_else(|| server.fail("did not log \"metrics listening\""));
            server.metrics = Some(field_of(format, &line, "addr").expect("metrics addr"));
        }
        server
    }

    /// A server that logs nothing at startup (e.g. `--log-level error`): it
    /// is given a port reserved here and found ready by connecting to it.
    pub fn start_silent(extra: &[&str]) -> Server {
        let port = free_port();
        let metrics_port = free_port();
        let addr = format!("127.0.0.1:{port}");
        let metrics = format!("127.0.0.1:{metrics_port}");
        let mut args: Vec<String> = vec![
            "serve".into(),
            "--addr".into(),
            addr.clone(),
            "--metrics-addr".into(),
            metrics.clone(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut server = Server::spawn(args);
        let deadline = Instant::now() + WAIT;
        loop {
            // Ready: /readyz answers 200 (so both listeners are bound).
            if let Ok(response) = http_get(&metrics, "/readyz")
                && response.status == 200
                && TcpStream::connect(&addr).is_ok()
            {
                break;
            }
            if let Some(status) = server.child.try_wait().unwrap() {
                server.fail(&format!("exited early with {status}"));
            }
            if Instant::now() >= deadline {
                server.fail("did not become ready");
            }
            thread::sleep(Duration::from_millis(20));
        }
        server.addr = addr;
        server.metrics = Some(metrics);
        server
    }

    fn spawn(args: Vec<String>) -> Server {
        let mut child = Command::new(BIN)
            .env("CODEREVIEW_DATA_DIR", fresh_data_dir())
            .args(&args)
            .current_dir(root())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("cannot start the codereview binary");
        let stderr = Lines::new(child.stderr.take().expect("piped stderr"));
        Server {
            child,
            stderr,
            addr: String::new(),
            metrics: None,
            args,
        }
    }

    fn fail(&mut self, what: &str) -> ! {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.stderr.finish(Duration::from_secs(2));
        panic!(
            "`codereview {}` {what}; its log:\n{}",
            self.args.join(" "),
            self.stderr.all().join("\n")
        );
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn metrics_addr(&self) -> &str {
        self.metrics
            .as_deref()
            .expect("started with --metrics-addr")
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn signal(&self, signal: &str) {
        send_signal(self.pid(), signal);
    }

    /// Waits up to `within` for the server to exit; then reads its log to the
    /// end.
    pub fn wait_exit(&mut self, within: Duration) -> Option<ExitStatus> {
        let status = wait_child(&mut self.child, within)?;
        self.stderr.finish(Duration::from_secs(5));
        Some(status)
    }

    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    pub fn log(&self) -> Vec<String> {
        self.stderr.all()
    }

    /// The first JSON log line whose msg is `msg` (waiting up to `within`).
    pub fn wait_for_msg(&self, msg: &str, within: Duration) -> Option<BTreeMap<String, Value>> {
        let line = self.stderr.wait_for(within, |l| {
            log_object(l).is_some_and(|o| o.get("msg").and_then(Value::as_str) == Some(msg))
        })?;
        log_object(&line)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if thread::panicking() {
            self.stderr.finish(Duration::from_secs(2));
            eprintln!(
                "--- server log (codereview {}) ---\n{}",
                self.args.join(" "),
                self.stderr.all().join("\n")
            );
        }
    }
}

/// A port that was free a moment ago (for servers that do not log theirs).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("binding an ephemeral port")
        .port()
}

fn is_listening_line(format: LogFormat, line: &str) -> bool {
    match format {
        LogFormat::Json => log_object(line)
            .is_some_and(|o| o.get("msg").and_then(Value::as_str) == Some("listening")),
        LogFormat::Text => text_message(line) == Some("listening"),
    }
}

fn is_metrics_line(format: LogFormat, line: &str) -> bool {
    match format {
        LogFormat::Json => log_object(line)
            .is_some_and(|o| o.get("msg").and_then(Value::as_str) == Some("metrics listening")),
        LogFormat::Text => text_message(line) == Some("metrics listening"),
    }
}

/// The message of a text log line: what follows "TS LEVEL " up to the first
/// ` key=` field.
pub fn text_message(line: &str) -> Option<&str> {
    let mut parts = line.splitn(2, ' ');
    let _ts = parts.next()?;
    let rest = parts.next()?.trim_start();
    let (_level, rest) = rest.split_once(' ')?;
    let rest = rest.trim_start();
    // Fields are " key=value"; the message ends before the first one.
    let end = rest
        .match_indices(' ')
        .find(|(i, _)| {
            let word = &rest[i + 1..];
            word.split_once('=').is_some_and(|(k, _)| {
                !k.is_empty() && k.bytes().all(|b| b == b'_' || b.is_ascii_alphanumeric())
            })
        })
        .map_or(rest.len(), |(i, _)| i);
    Some(&rest[..end])
}

/// The value of `key` in a log line (JSON string field, or text `key=value`).
pub fn field_of(format: LogFormat, line: &str, key: &str) -> Option<String> {
    match format {
        LogFormat::Json => log_object(line)?.get(key)?.as_str().map(str::to_owned),
        LogFormat::Text => {
            let needle = format!(" {key}=");
            let start = line.find(&needle)? + needle.len();
            let value = line[start..].split(' ').next()?;
            Some(value.trim_matches('"').to_owned())
        }
    }
}

/// A log line as a JSON object, if it is one.
pub fn log_object(line: &str) -> Option<BTreeMap<String, Value>> {
    match json::parse(line.as_bytes()) {
        Ok(Value::Object(map)) => Some(map),
        _ => None,
    }
}

/// Whether `ts` is an RFC 3339 UTC timestamp with optional fraction:
/// `YYYY-MM-DDTHH:MM:SS[.fff]Z` (or a `+HH:MM`/`-HH:MM` offset), with
/// plausible field ranges.
pub fn is_rfc3339(ts: &str) -> bool {
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

// ---------------------------------------------------------------------------
// Client processes

/// A `codereview` client process (join, watch, ...) with piped stdin; killed
/// when dropped.
pub struct Proc {
    pub name: String,
    child: Child,
    stdin: Option<ChildStdin>,
    pub stdout: Lines,
    pub stderr: Lines,
}

impl Proc {
    pub fn spawn(args: &[&str]) -> Proc {
        let mut child = Command::new(BIN)
            .env("CODEREVIEW_DATA_DIR", fresh_data_dir())
            .args(args)
            .current_dir(root())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("cannot start the codereview binary");
        let stdout = Lines::new(child.stdout.take().expect("piped stdout"));
        let stderr = Lines::new(child.stderr.take().expect("piped stderr"));
        Proc {
            name: args.join(" "),
            stdin: child.stdin.take(),
            child,
            stdout,
            stderr,
        }
    }

    /// Writes one line to its stdin.
    pub fn send_line(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin is open");
        stdin
            .write_all(format!("{line}\n").as_bytes())
            .and_then(|()| stdin.flush())
            .unwrap_or_else(|e| panic!("writing to `{}`: {e}", self.name));
    }

    /// Closes its stdin (end of input).
    pub fn close_stdin(&mut self) {
        self.stdin = None;
    }

    /// The first stdout JSON line satisfying `want`, waiting up to WAIT.
    pub fn wait_json(
        &self,
        what: &str,
        want: impl Fn(&BTreeMap<String, Value>) -> bool,
    ) -> BTreeMap<String, Value> {
        let line = self
            .stdout
            .wait_for(WAIT, |l| log_object(l).is_some_and(|o| want(&o)))
            .unwrap_or_else(|| panic!("`{}` did not print {what}; {}", self.name, self.said()));
        log_object(&line).expect("checked")
    }

    pub fn wait_exit(&mut self, within: Duration) -> Option<ExitStatus> {
        let status = wait_child(&mut self.child, within)?;
        self.stdout.finish(Duration::from_secs(5));
        self.stderr.finish(Duration::from_secs(5));
        Some(status)
    }

    pub fn said(&self) -> String {
        format!(
            "stdout:\n{}\nstderr:\n{}",
            self.stdout.all().join("\n"),
            self.stderr.all().join("\n")
        )
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if thread::panicking() {
            eprintln!("--- `codereview {}` ---\n{}", self.name, self.said());
        }
    }
}

/// The `"type"` of a `join --json` line.
pub fn is_type(o: &BTreeMap<String, Value>, kind: &str) -> bool {
    o.get("type").and_then(Value::as_str) == Some(kind)
}

/// Whether a `join --json` line is a notice of `kind`.
pub fn is_notice(o: &BTreeMap<String, Value>, kind: &str) -> bool {
    is_type(o, "notice") && o.get("kind").and_then(Value::as_str) == Some(kind)
}

/// Runs a `codereview` command to completion (stdin closed), up to `within`.
pub fn run(args: &[&str], within: Duration) -> (ExitStatus, String, String) {
    let mut proc = Proc::spawn(args);
    proc.close_stdin();
    let status = proc.wait_exit(within).unwrap_or_else(|| {
        panic!(
            "`codereview {}` did not finish within {within:?}",
            args.join(" ")
        )
    });
    let out = proc.stdout.all().join("\n");
    let err = proc.stderr.all().join("\n");
    (status, out, err)
}

/// A temporary directory, removed when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(label: &str) -> TempDir {
        static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let dir = std::env::temp_dir().join(format!(
            "codereview-ops-{label}-{}-{n}-{nanos}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).expect("creating a temporary directory");
        TempDir(dir)
    }

    pub fn write(&self, name: &str, content: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, content).expect("writing a temporary file");
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Mints a token with `codereview token`.
pub fn mint_token(secret: &Path, user: &str, role: &str) -> String {
    let secret = secret.to_str().expect("utf-8 path");
    let (status, out, err) = run(
        &[
            "token",
            "--secret-file",
            secret,
            "--user",
            user,
            "--role",
            role,
        ],
        WAIT,
    );
    assert!(status.success(), "codereview token failed: {err}");
    let token = out.trim().to_owned();
    assert!(token.len() > 20, "token: {token:?}");
    token
}

// ---------------------------------------------------------------------------
// HTTP/1.1 over plain TCP

#[derive(Debug, Clone)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
    /// Everything received, as is.
    pub raw: Vec<u8>,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Sends `request` as is on a new connection and reads the response until the
/// server closes the connection (every wait bounded by WAIT).
pub fn http_raw(addr: &str, request: &[u8]) -> std::io::Result<HttpResponse> {
    let addr: SocketAddr = addr.parse().expect("a socket address");
    let mut tcp = TcpStream::connect_timeout(&addr, WAIT)?;
    tcp.set_read_timeout(Some(WAIT))?;
    tcp.set_write_timeout(Some(WAIT))?;
    tcp.write_all(request)?;
    let mut raw = Vec::new();
    tcp.read_to_end(&mut raw)?;
    parse_http_response(raw)
}

pub fn parse_http_response(raw: Vec<u8>) -> std::io::Result<HttpResponse> {
    let bad = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_owned());
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| bad("no end of the response head"))?;
    let head = std::str::from_utf8(&raw[..end]).map_err(|_| bad("head is not UTF-8"))?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or("");
    if !version.starts_with("HTTP/1.") {
        return Err(bad("not an HTTP/1.x status line"));
    }
    let status: u16 = parts
        .next()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("no status code"))?;
    let mut headers = Vec::new();
    for line in lines {
        let (k, v) = line
            .split_once(':')
            .ok_or_else(|| bad("header without colon"))?;
        headers.push((k.trim().to_owned(), v.trim().to_owned()));
    }
    let body = String::from_utf8_lossy(&raw[end + 4..]).into_owned();
    Ok(HttpResponse {
        status,
        headers,
        body,
        raw,
    })
}

/// `GET path` (HTTP/1.1, Host, Connection: close).
pub fn http_get(addr: &str, path: &str) -> std::io::Result<HttpResponse> {
    http_raw(
        addr,
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: */*\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    )
}

/// GET /metrics, checked (200, the 0.0.4 content type, a body whose length is
/// the declared content-length), parsed.
pub fn scrape(addr: &str) -> Exposition {
    let response = http_get(addr, "/metrics").unwrap_or_else(|e| panic!("scraping {addr}: {e}"));
    assert_eq!(response.status, 200, "{response:?}");
    let content_type = response.header("content-type").unwrap_or("");
    assert!(
        content_type.starts_with("text/plain") && content_type.contains("version=0.0.4"),
        "content-type {content_type:?}"
    );
    let length: usize = response
        .header("content-length")
        .and_then(|v| v.parse().ok())
        .expect("a content-length");
    assert_eq!(
        length,
        response.body.len(),
        "content-length matches the body"
    );
    Exposition::parse(&response.body)
}

// ---------------------------------------------------------------------------
// Prometheus text

#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// A scraped exposition: the text and its samples.
#[derive(Debug, Clone)]
pub struct Exposition {
    pub text: String,
    pub samples: Vec<Sample>,
}

impl Exposition {
    /// A small reader of the sample lines (the real parser is Python's
    /// prometheus_client, in the exposition test); panics on a line it cannot
    /// read.
    pub fn parse(text: &str) -> Exposition {
        let mut samples = Vec::new();
        for line in text.lines() {
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            samples.push(
                parse_sample(line).unwrap_or_else(|| panic!("unreadable sample line {line:?}")),
            );
        }
        Exposition {
            text: text.to_owned(),
            samples,
        }
    }

    /// The sample `name` with exactly these labels.
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let want: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.samples
            .iter()
            .find(|s| s.name == name && s.labels == want)
            .map(|s| s.value)
    }

    /// The sample, or 0 when it is absent (labelled counters appear with
    /// their first increment).
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.get(name, labels).unwrap_or(0.0)
    }

    /// The sum of the samples `name` whose labels include `labels`.
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.samples
            .iter()
            .filter(|s| {
                s.name == name
                    && labels
                        .iter()
                        .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|s| s.value)
            .sum()
    }
}

fn parse_sample(line: &str) -> Option<Sample> {
    let name_end = line.find(['{', ' '])?;
    let name = &line[..name_end];
    let mut labels = BTreeMap::new();
    let mut rest = &line[name_end..];
    if let Some(mut inner) = rest.strip_prefix('{') {
        loop {
            if let Some(after) = inner.strip_prefix('}') {
                rest = after;
                break;
            }
            let (key, after) = inner.split_once("=\"")?;
            let mut value = String::new();
            let mut chars = after.char_indices();
            let end = loop {
                let (i, c) = chars.next()?;
                match c {
                    '"' => break i,
                    '\\' => match chars.next()?.1 {
                        'n' => value.push('\n'),
                        other => value.push(other),
                    },
                    c => value.push(c),
                }
            };
            labels.insert(key.to_owned(), value);
            inner = &after[end + 1..];
            inner = inner.strip_prefix(',').unwrap_or(inner);
        }
    }
    let mut fields = rest.split_whitespace();
    let value = match fields.next()? {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        v => v.parse().ok()?,
    };
    Some(Sample {
        name: name.to_owned(),
        labels,
        value,
    })
}

/// Polls GET /metrics until `want` holds (up to WAIT); returns that scrape.
pub fn scrape_until(addr: &str, what: &str, want: impl Fn(&Exposition) -> bool) -> Exposition {
    let deadline = Instant::now() + WAIT;
    loop {
        let exposition = scrape(addr);
        if want(&exposition) {
            return exposition;
        }
        if Instant::now() >= deadline {
            panic!(
                "metrics never showed {what} within {WAIT:?}; last scrape:\n{}",
                exposition.text
            );
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// The metric family names the README's "Operating" section lists.
pub fn readme_families() -> Vec<String> {
    let readme = std::fs::read_to_string(root().join("README.md")).expect("README.md");
    let start = readme
        .find("## Operating")
        .expect("README has an Operating section");
    let section = &readme[start + 3..];
    let section = &section[..section.find("\n## ").unwrap_or(section.len())];
    let mut names: Vec<String> = Vec::new();
    for (i, _) in section.match_indices("codereview_") {
        let name: String = section[i..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        if !names.contains(&name) {
            names.push(name);
        }
    }
    names
}

// ---------------------------------------------------------------------------
// Python's prometheus_client, following the peers' skip/require rule

/// The venv Python with prometheus_client, or None (after a note) when it is
/// not set up; panics instead when `CODEREVIEW_REQUIRE_PEERS=1`.
pub fn prometheus_python() -> Option<PathBuf> {
    let found = match std::env::var_os("CODEREVIEW_PYTHON") {
        Some(value) if !value.is_empty() => {
            let program = PathBuf::from(value);
            match Command::new(&program)
                .args(["-c", "import prometheus_client.parser"])
                .stdin(Stdio::null())
                .output()
            {
                Ok(output) if output.status.success() => Ok(program),
                Ok(output) => Err(format!(
                    "CODEREVIEW_PYTHON={} cannot import prometheus_client: {}",
                    program.display(),
                    String::from_utf8_lossy(&output.stderr).trim()
                )),
                Err(e) => Err(format!("CODEREVIEW_PYTHON={}: {e}", program.display())),
            }
        }
        _ => Err("CODEREVIEW_PYTHON is not set".to_owned()),
    };
    match found {
        Ok(program) => Some(program),
        Err(reason) => {
            if std::env::var("CODEREVIEW_REQUIRE_PEERS").as_deref() == Ok("1") {
                panic!(
                    "CODEREVIEW_REQUIRE_PEERS=1 but prometheus_client is not usable: {reason}; \
                     run scripts/setup-peers (or run the tests with scripts/test)"
                );
            }
            eprintln!("skipping: python peer not set up (run scripts/test): {reason}");
            None
        }
    }
}

/// What prometheus_client made of an exposition.
#[derive(Debug, Clone)]
pub struct ParsedFamily {
    pub name: String,
    pub kind: String,
    pub help: String,
    pub samples: usize,
}

const PARSE_SCRIPT: &str = r#"
import sys
from prometheus_client.parser import text_string_to_metric_families
text = sys.stdin.read()
total = 0
for family in text_string_to_metric_families(text):
    total += len(family.samples)
    help = family.documentation.replace("\t", " ").replace("\n", " ")
    print("FAMILY\t%s\t%s\t%d\t%s" % (family.name, family.type, len(family.samples), help))
print("SAMPLES\t%d" % total)
"#;

/// Parses `text` with prometheus_client's `text_string_to_metric_families`;
/// Err with Python's complaint when it does not parse.
pub fn prometheus_parse(python: &Path, text: &str) -> Result<(Vec<ParsedFamily>, usize), String> {
    let mut child = Command::new(python)
        .args(["-c", PARSE_SCRIPT])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cannot run python");
    let mut stdin = child.stdin.take().expect("piped stdin");
    let input = text.to_owned();
    let writer = thread::spawn(move || {
        let _ = stdin.write_all(input.as_bytes());
    });
    let mut stdout = Lines::new(child.stdout.take().expect("piped"));
    let mut stderr = Lines::new(child.stderr.take().expect("piped"));
    let status = wait_child(&mut child, WAIT).unwrap_or_else(|| {
        let _ = child.kill();
        panic!("python did not finish parsing within {WAIT:?}")
    });
    let _ = writer.join();
    stdout.finish(WAIT);
    stderr.finish(WAIT);
    if !status.success() {
        return Err(stderr.all().join("\n"));
    }
    let mut families = Vec::new();
    let mut total = None;
    for line in stdout.all() {
        let fields: Vec<&str> = line.split('\t').collect();
        match fields.as_slice() {
            ["FAMILY", name, kind, samples, help] => families.push(ParsedFamily {
                name: name.to_string(),
                kind: kind.to_string(),
                samples: samples.parse().expect("a count"),
                help: help.to_string(),
            }),
            ["SAMPLES", n] => total = n.parse().ok(),
            _ => return Err(format!("unexpected output from the parse script: {line:?}")),
        }
    }
    Ok((families, total.ok_or("no SAMPLES line")?))
}

// ---------------------------------------------------------------------------
// Our own gRPC client, for participants that misbehave

/// Connects to `addr` ("127.0.0.1:PORT") with `config`; a token, if given,
/// goes on every call.
pub async fn connect(addr: &str, config: ChannelConfig, token: Option<&str>) -> Channel {
    let endpoint = Endpoint::parse(&format!("http://{addr}")).expect("an endpoint");
    let mut channel = tokio::time::timeout(WAIT, Channel::connect(&endpoint, &config))
        .await
        .expect("connecting in time")
        .unwrap_or_else(|status| panic!("cannot connect to {addr}: {status:?}"));
    if let Some(token) = token {
        channel
            .default_metadata_mut()
            .append("authorization", &format!("Bearer {token}"))
            .expect("a valid header");
    }
    channel
}

/// A participant stream driven message by message.
pub struct Member {
    pub user: String,
    pub session: String,
    pub sender: CallSender,
    pub receiver: CallReceiver,
    next_client_sequence: u64,
    /// The last essential sequence seen (for resumes).
    pub last_sequence: u64,
    pub epoch: u64,
}

impl Member {
    /// Opens CollaborativeSession and sends `join` as the first message.
    pub async fn open(channel: &Channel, session: &str, user: &str, join: Join) -> Member {
        let call =
            tokio::time::timeout(WAIT, channel.start(SESSION_METHOD, CallOptions::default()))
                .await
                .expect("starting the call in time")
                .unwrap_or_else(|status| panic!("{user}: cannot start the call: {status:?}"));
        let (sender, receiver) = call.split();
        let mut member = Member {
            user: user.to_owned(),
            session: session.to_owned(),
            sender,
            receiver,
            next_client_sequence: 1,
            last_sequence: 0,
            epoch: 0,
        };
        member.send(Payload::Join(join)).await;
        member
    }

    /// Opens and waits for CAUGHT_UP; returns the member and its Joined.
    pub async fn join(
        channel: &Channel,
        session: &str,
        user: &str,
        join: Join,
    ) -> (Member, Joined) {
        let mut member = Member::open(channel, session, user, join).await;
        let mut joined = None;
        loop {
            let message = member.expect_message().await;
            match message.payload {
                Some(Payload::Joined(j)) => {
                    member.epoch = j.session_epoch;
                    joined = Some(j);
                }
                Some(Payload::Notice(n)) if n.kind == NoticeKind::CaughtUp as i32 => break,
                _ => {}
            }
        }
        (member, joined.expect("Joined before CAUGHT_UP"))
    }

    pub fn message(&mut self, payload: Payload) -> SessionMessage {
        let numbered = matches!(payload, Payload::Edit(_) | Payload::Comment(_));
        let client_sequence = if numbered {
            let n = self.next_client_sequence;
            self.next_client_sequence += 1;
            n
        } else {
            0
        };
        SessionMessage {
            session_id: self.session.clone(),
            user_id: self.user.clone(),
            timestamp: 0,
            payload: Some(payload),
            sequence: 0,
            client_sequence,
        }
    }

    /// Sends one message (bounded by WAIT).
    pub async fn send(&mut self, payload: Payload) {
        let message = self.message(payload);
        tokio::time::timeout(WAIT, self.sender.send(&message))
            .await
            .unwrap_or_else(|_| panic!("{}: sending took longer than {WAIT:?}", self.user))
            .unwrap_or_else(|status| panic!("{}: send failed: {status:?}", self.user));
    }

    /// The next message or the end of the stream (Ok(None) for OK, Err with
    /// the status), within WAIT.
    pub async fn next(&mut self) -> Result<Option<SessionMessage>, Status> {
        let next = tokio::time::timeout(WAIT, self.receiver.message::<SessionMessage>())
            .await
            .unwrap_or_else(|_| panic!("{}: nothing received within {WAIT:?}", self.user));
        if let Ok(Some(m)) = &next
            && m.sequence != 0
        {
            self.last_sequence = self.last_sequence.max(m.sequence);
        }
        next
    }

    pub async fn expect_message(&mut self) -> SessionMessage {
        match self.next().await {
            Ok(Some(m)) => m,
            other => panic!("{}: expected a message, got {other:?}", self.user),
        }
    }

    /// Reads until a message satisfies `want`.
    pub async fn until(
        &mut self,
        what: &str,
        want: impl Fn(&SessionMessage) -> bool,
    ) -> SessionMessage {
        loop {
            match self.next().await {
                Ok(Some(m)) if want(&m) => return m,
                Ok(Some(_)) => {}
                other => panic!("{}: the stream ended before {what}: {other:?}", self.user),
            }
        }
    }

    /// Reads to the end of the stream; returns its final status and what
    /// arrived before it.
    pub async fn until_end(&mut self) -> (Status, Vec<SessionMessage>) {
        let mut seen = Vec::new();
        loop {
            match self.next().await {
                Ok(Some(m)) => seen.push(m),
                Ok(None) => return (Status::ok(), seen),
                Err(status) => return (status, seen),
            }
        }
    }
}

/// Whether a message is a notice of `kind`.
pub fn notice_of(m: &SessionMessage, kind: NoticeKind) -> bool {
    matches!(&m.payload, Some(Payload::Notice(n)) if n.kind == kind as i32)
}

/// The status code name of a Status, for messages.
pub fn code_of(status: &Status) -> Code {
    status.code()
}

/// A tokio runtime for tests that are otherwise synchronous (processes).
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

/// A fresh data dir for one spawned `codereview` (servers are durable by
/// default; each keeps its own log).
fn fresh_data_dir() -> std::path::PathBuf {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    std::env::temp_dir().join(format!("codereview-test-data-{}-{n}", std::process::id()))
}
