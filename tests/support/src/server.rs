//! A codereview server for a test, assembled the way the binary assembles
//! it: in-process through `App::build` + `app::run` ([`TestServer`], with
//! optional TLS and token authentication), or the binary itself as a child
//! process ([`ServerProcess`], with its log read line by line).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use codereview::app::{self, App, AppConfig, AppError};
use codereview::grpc::Status;
use codereview::grpc::client::{Channel, ChannelConfig, Endpoint};
use codereview::grpc::observe::Telemetry;
use codereview::grpc::tls::{ServerTlsFiles, TlsReloader};
use codereview::review::registry::{RegistryHandle, RegistryStats};
use codereview::review::roles::Role;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_rustls::rustls::ClientConfig;

use crate::json::Json;
use crate::process::{Binary, Proc};
use crate::tls::{SECRET, token};
use crate::{LONG, STEP, WAIT, eventually, within};

// ---------------------------------------------------------------------------
// In-process

/// A server running in this process on `127.0.0.1:PORT`; asked to shut down
/// (drain) when dropped.
pub struct TestServer {
    pub addr: SocketAddr,
    pub registry: RegistryHandle,
    /// Live wire figures (connections, streams, buffered bytes).
    pub telemetry: Arc<Telemetry>,
    pub reloader: Option<Arc<TlsReloader>>,
    /// Where `/metrics` is served, when configured.
    pub metrics_addr: Option<SocketAddr>,
    /// How clients reach it over TLS (None: plaintext).
    client_tls: Option<Arc<ClientConfig>>,
    auth: bool,
    shutdown: Option<oneshot::Sender<&'static str>>,
    task: Option<JoinHandle<Result<(), AppError>>>,
    _secret: Option<crate::process::TempDir>,
}

/// How to start a [`TestServer`] beyond its [`AppConfig`].
pub struct Launch {
    config: AppConfig,
    client_tls: Option<Arc<ClientConfig>>,
    secret: Option<crate::process::TempDir>,
}

impl Launch {
    /// Requires bearer tokens signed with [`SECRET`] (see [`token`]).
    pub fn auth(mut self) -> Launch {
        let dir = crate::process::TempDir::new("secret");
        let path = dir.join("secret");
        std::fs::write(&path, SECRET).expect("writing the token secret");
        self.config.auth_secret_file = Some(path);
        self.secret = Some(dir);
        self
    }

    /// Serves TLS from `files`; clients connect with `client`.
    pub fn tls(mut self, files: ServerTlsFiles, client: Arc<ClientConfig>) -> Launch {
        self.config.tls = Some(files);
        self.client_tls = Some(client);
        self
    }

    pub async fn start(self) -> TestServer {
        // In-process servers log through the process-wide logger: keep test
        // output to errors.
        codereview::logging::init(
            codereview::logging::Level::Error,
            codereview::logging::Format::Json,
        );
        let listener = TcpListener::bind(self.config.addr)
            .await
            .expect("binding the test server");
        let auth = self.config.auth_secret_file.is_some();
        let app = App::build(self.config)
            .await
            .unwrap_or_else(|e| panic!("the test server does not build: {e}"));
        let (shutdown, signal) = oneshot::channel();
        let stop = async move { signal.await.unwrap_or("test server dropped") };
        TestServer {
            addr: listener.local_addr().expect("a bound address"),
            registry: app.registry(),
            telemetry: app.telemetry(),
            reloader: app.tls_reloader(),
            metrics_addr: app.metrics_addr(),
            client_tls: self.client_tls,
            auth,
            shutdown: Some(shutdown),
            task: Some(tokio::spawn(app::run(listener, app, stop))),
            _secret: self.secret,
        }
    }
}

impl TestServer {
    /// `config` served in-process (use `AppConfig::loopback()` plus
    /// overrides, so that defaults meant for tests apply).
    pub async fn start(config: AppConfig) -> TestServer {
        TestServer::launch(config).start().await
    }

    /// `AppConfig::loopback()` served in-process.
    pub async fn start_default() -> TestServer {
        TestServer::start(AppConfig::loopback()).await
    }

    /// For a server with TLS or authentication: `launch(config).auth().start()`.
    pub fn launch(config: AppConfig) -> Launch {
        Launch {
            config,
            client_tls: None,
            secret: None,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Where clients connect (https when the server speaks TLS).
    pub fn endpoint(&self) -> Endpoint {
        Endpoint {
            tls: self.client_tls.is_some(),
            host: "127.0.0.1".into(),
            port: self.addr.port(),
        }
    }

    /// A new connection (our own client) with the server's TLS settings.
    pub async fn channel(&self) -> Channel {
        connect(&self.endpoint(), self.client_tls.clone())
            .await
            .unwrap_or_else(|status| panic!("connect to {}: {status}", self.endpoint()))
    }

    /// A token (valid one hour, all sessions) when the server requires them.
    pub fn token_for(&self, user: &str, role: Role) -> Option<String> {
        self.auth.then(|| token(user, role, None, 3600))
    }

    pub async fn stats(&self) -> RegistryStats {
        within(STEP, "registry stats", self.registry.stats())
            .await
            .expect("registry running")
    }

    /// Polls the registry's figures until `done` holds (panics with `what`
    /// and the last figures after [`LONG`]).
    pub async fn wait_for_stats(
        &self,
        what: &str,
        done: impl Fn(&RegistryStats) -> bool,
    ) -> RegistryStats {
        eventually(LONG, what, || async {
            let stats = self.stats().await;
            if done(&stats) {
                Ok(stats)
            } else {
                Err(format!("{stats:?}"))
            }
        })
        .await
    }

    /// (connections, streams, inbound buffered, outbound buffered).
    pub fn wire(&self) -> (i64, i64, i64, i64) {
        let s = &self.telemetry.stats;
        (
            s.connections.load(Ordering::Relaxed),
            s.streams.load(Ordering::Relaxed),
            s.inbound_buffered.load(Ordering::Relaxed),
            s.outbound_buffered.load(Ordering::Relaxed),
        )
    }

    /// Response bytes the server holds for its connections: queued by calls
    /// plus handed to h2 and not yet written (what the outbound budget bounds).
    pub fn outbound_held(&self) -> i64 {
        let s = &self.telemetry.stats;
        s.outbound_buffered.load(Ordering::Relaxed) + s.outbound_unwritten.load(Ordering::Relaxed)
    }

    /// Waits until the number of open connections satisfies `done`.
    pub async fn wait_for_connections(&self, what: &str, done: impl Fn(i64) -> bool) -> i64 {
        eventually(STEP * 2, what, || async {
            let (connections, ..) = self.wire();
            if done(connections) {
                Ok(connections)
            } else {
                Err(format!("{connections} connections"))
            }
        })
        .await
    }

    /// Shuts down as the binary does on SIGTERM (drain, then close) and
    /// returns how `app::run` ended.
    pub async fn shutdown(mut self) -> Result<(), AppError> {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send("test shutdown");
        }
        let task = self.task.take().expect("running");
        within(WAIT, "the server to shut down", task)
            .await
            .expect("the server task")
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send("test server dropped");
        }
    }
}

/// `AppConfig::loopback()` (with the defaults meant for tests) and the
/// test's own settings: `TestServer::start(loopback(|c| c.interop = true))`.
pub fn loopback(adjust: impl FnOnce(&mut AppConfig)) -> AppConfig {
    let mut config = AppConfig::loopback();
    adjust(&mut config);
    config
}

/// Connects with `tls` (required for https endpoints).
pub async fn connect(
    endpoint: &Endpoint,
    tls: Option<Arc<ClientConfig>>,
) -> Result<Channel, Status> {
    let config = ChannelConfig {
        tls,
        connect_timeout: STEP,
        ..ChannelConfig::default()
    };
    within(STEP * 2, "connect", Channel::connect(endpoint, &config)).await
}

pub fn plaintext_endpoint(addr: SocketAddr) -> Endpoint {
    Endpoint {
        tls: false,
        host: addr.ip().to_string(),
        port: addr.port(),
    }
}

pub fn tls_endpoint(addr: SocketAddr) -> Endpoint {
    Endpoint {
        tls: true,
        ..plaintext_endpoint(addr)
    }
}

// ---------------------------------------------------------------------------
// A child process

/// How the server's log is written, which decides how its address is found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    Text,
}

/// `codereview serve` as a child process; killed when dropped (its log is
/// printed if the test is panicking).
pub struct ServerProcess {
    pub proc: Proc,
    binary: Binary,
    /// The gRPC address, "127.0.0.1:PORT".
    pub addr: String,
    /// The metrics address, when `--metrics-addr` was given.
    pub metrics: Option<String>,
}

impl ServerProcess {
    /// `serve --log-format json --addr 127.0.0.1:0 EXTRA` (an `--addr` in
    /// `extra` replaces the default one); waits for the "listening" line.
    pub fn start(binary: Binary, extra: &[&str]) -> ServerProcess {
        ServerProcess::start_with(binary, LogFormat::Json, extra)
    }

    pub fn start_with(binary: Binary, format: LogFormat, extra: &[&str]) -> ServerProcess {
        assert!(
            !extra.contains(&"--log-format"),
            "the log format decides how the address is read: pass it as `format`"
        );
        let format_name = match format {
            LogFormat::Json => "json",
            LogFormat::Text => "text",
        };
        let mut args = vec!["serve", "--log-format", format_name];
        if !extra.contains(&"--addr") {
            args.extend(["--addr", "127.0.0.1:0"]);
        }
        args.extend(extra);
        ServerProcess::start_args(binary, format, &args)
    }

    /// `codereview ARGS` exactly (a server that logs in `format` and
    /// listens on a free port); waits for the "listening" line.
    pub fn start_args(binary: Binary, format: LogFormat, args: &[&str]) -> ServerProcess {
        let mut server = ServerProcess::spawn(binary, args, String::new(), None);
        let listening = server
            .proc
            .stderr
            .find(WAIT, |l| {
                log_message(format, l).as_deref() == Some("listening")
            })
            .unwrap_or_else(|| server.fail("did not log \"listening\""));
        server.addr =
            log_field(format, &listening, "addr").expect("the listening line has an addr");
        // "metrics listening" comes before "listening", if at all.
        server.metrics = server
            .log()
            .iter()
            .find(|l| log_message(format, l).as_deref() == Some("metrics listening"))
            .and_then(|l| log_field(format, l, "addr"));
        server
    }

    /// `codereview ARGS`, not waited for: the caller knows where it listens.
    pub fn spawn(
        binary: Binary,
        args: &[&str],
        addr: String,
        metrics: Option<String>,
    ) -> ServerProcess {
        ServerProcess {
            proc: binary.spawn("server", args),
            binary,
            addr,
            metrics,
        }
    }

    fn fail(&mut self, what: &str) -> ! {
        let log = self.log().join("\n");
        panic!("`{}` {what}; its log:\n{log}", self.proc.name);
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn port(&self) -> u16 {
        self.addr.rsplit(':').next().unwrap().parse().unwrap()
    }

    pub fn metrics_addr(&self) -> &str {
        self.metrics
            .as_deref()
            .expect("started with --metrics-addr")
    }

    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    /// Sends a signal by name ("TERM", "INT", "HUP").
    pub fn signal(&self, signal: &str) {
        self.proc.signal(signal);
    }

    /// None while it runs; its exit status once it has exited.
    pub fn exit_status(&mut self) -> Option<std::process::ExitStatus> {
        self.proc.try_status()
    }

    pub fn is_running(&mut self) -> bool {
        self.exit_status().is_none()
    }

    /// Every line it has logged so far.
    pub fn log(&self) -> Vec<String> {
        self.proc.stderr()
    }

    /// The first JSON log line whose msg is `msg` (waiting up to `limit`).
    pub fn wait_for_msg(&self, msg: &str, limit: Duration) -> Option<Json> {
        let line = self.proc.stderr.find(limit, |l| {
            log_message(LogFormat::Json, l).as_deref() == Some(msg)
        })?;
        Json::object_of(&line)
    }

    /// `codereview snapshot --json` of a session (panics on failure).
    pub fn snapshot(&self, session: &str) -> Json {
        snapshot_json(self.binary, &self.url(), session)
    }
}

/// `codereview snapshot --json` of a session at `url`.
pub fn snapshot_json(binary: Binary, url: &str, session: &str) -> Json {
    let out = binary.run(
        &["snapshot", "--addr", url, "--session", session, "--json"],
        WAIT,
    );
    let text = out.ok();
    Json::parse(text.trim()).unwrap_or_else(|e| panic!("snapshot is not JSON ({e}): {text}"))
}

// ---------------------------------------------------------------------------
// Log lines

/// The message of a log line: a JSON line's `msg`, or in a text line what
/// follows "TS LEVEL " up to the first ` key=` field.
pub fn log_message(format: LogFormat, line: &str) -> Option<String> {
    match format {
        LogFormat::Json => Json::object_of(line)?.str_of("msg").map(str::to_owned),
        LogFormat::Text => {
            let (_ts, rest) = line.split_once(' ')?;
            let (_level, rest) = rest.trim_start().split_once(' ')?;
            let rest = rest.trim_start();
            let is_field = |word: &str| {
                word.split_once('=').is_some_and(|(k, _)| {
                    !k.is_empty() && k.bytes().all(|b| b == b'_' || b.is_ascii_alphanumeric())
                })
            };
            let end = rest
                .match_indices(' ')
                .find(|(i, _)| is_field(&rest[i + 1..]))
                .map_or(rest.len(), |(i, _)| i);
            Some(rest[..end].to_owned())
        }
    }
}

/// The value of `key` in a log line (a JSON string member, or text
/// `key=value`).
pub fn log_field(format: LogFormat, line: &str, key: &str) -> Option<String> {
    match format {
        LogFormat::Json => Json::object_of(line)?.str_of(key).map(str::to_owned),
        LogFormat::Text => {
            let needle = format!(" {key}=");
            let start = line.find(&needle)? + needle.len();
            let value = line[start..].split(' ').next()?;
            Some(value.trim_matches('"').to_owned())
        }
    }
}
