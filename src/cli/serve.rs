//! `codereview serve`: binds the listener, assembles the services, and runs
//! until SIGTERM/SIGINT, then drains (GOAWAY, streams finish or are ended
//! after the drain timeout) and exits 0. SIGHUP reloads the TLS certificate.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use argh::FromArgs;
use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::metrics::{Metrics, http as metrics_http};

use super::fd_limit;
use super::token::read_secret;
use crate::auth::Authenticator;
use crate::grpc::health::HealthReporter;
use crate::grpc::reflection;
use crate::grpc::server::{Router, Server, ServerConfig};
use crate::grpc::shutdown::{Phase, ShutdownController};
use crate::grpc::tls::{ServerTlsFiles, TlsSource};
use crate::logging::{self, Format, Level};
use crate::pb::health::health_check_response::ServingStatus;
use crate::review::error::{ErrorKind, ReviewError};
use crate::review::limits::Limits;
use crate::review::registry::{self, RegistryConfig};
use crate::review::service::{self, ServiceConfig};
use crate::{interop, log};

const DEFAULT_ADDR: &str = "127.0.0.1:50051";

/// run the server (plaintext h2c on 127.0.0.1:50051 by default)
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "serve")]
#[argh(help_triggers("-h", "--help", "help"))]
pub struct ServeArgs {
    /// address to listen on (default 127.0.0.1:50051; 0.0.0.0:$PORT when $PORT is set)
    #[argh(option)]
    pub addr: Option<String>,
    /// also serve grpc.testing.TestService (the gRPC interop test service)
    #[argh(switch)]
    pub interop: bool,
    /// do not serve gRPC server reflection (on by default: it describes the API, without a token, as health answers)
    #[argh(switch)]
    pub no_reflection: bool,

    /// PEM certificate chain: serve TLS (h2 over TLS 1.2/1.3)
    #[argh(option)]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for --tls-cert
    #[argh(option)]
    pub tls_key: Option<PathBuf>,
    /// PEM CA: require client certificates signed by it (mTLS)
    #[argh(option)]
    pub client_ca: Option<PathBuf>,
    /// allow a non-loopback address without TLS or without authentication (TLS terminated in front of us)
    #[argh(switch)]
    pub insecure: bool,
    /// file with the HS256 secret: require bearer tokens (see `codereview token`)
    #[argh(option)]
    pub auth_secret_file: Option<PathBuf>,

    /// HTTP/2 initial stream window for received data (default 1MiB)
    #[argh(option, default = "1 << 20", from_str_fn(super::parse_bytes))]
    pub initial_stream_window: usize,
    /// HTTP/2 connection window for received data (default 4MiB)
    #[argh(option, default = "4 << 20", from_str_fn(super::parse_bytes))]
    pub initial_connection_window: usize,
    /// largest HTTP/2 frame accepted, 16KiB..16MiB (default 16KiB)
    #[argh(option, default = "16 << 10", from_str_fn(super::parse_bytes))]
    pub max_frame_size: usize,
    /// concurrent streams per connection (default 100)
    #[argh(option, default = "100")]
    pub max_concurrent_streams: u32,
    /// largest request header block (default 16KiB)
    #[argh(option, default = "16 << 10", from_str_fn(super::parse_bytes))]
    pub max_header_list_size: usize,
    /// response bytes HTTP/2 may hold per stream for a peer that does not read (default 256KiB)
    #[argh(option, default = "256 << 10", from_str_fn(super::parse_bytes))]
    pub max_send_buffer: usize,
    /// response bytes all connections may hold before those holding the most are closed, 0 = off (default 256MiB)
    #[argh(option, default = "256 << 20", from_str_fn(super::parse_bytes))]
    pub max_outbound_buffer: usize,
    /// largest gRPC message received (default 4MiB)
    #[argh(option, default = "4 << 20", from_str_fn(super::parse_bytes))]
    pub max_message_bytes: usize,
    /// interval between keepalive PINGs, 0 to disable (default 30s)
    #[argh(
        option,
        default = "Duration::from_secs(30)",
        from_str_fn(super::parse_duration)
    )]
    pub keepalive_interval: Duration,
    /// how long a PING may go unanswered (default 10s)
    #[argh(
        option,
        default = "Duration::from_secs(10)",
        from_str_fn(super::parse_duration)
    )]
    pub keepalive_timeout: Duration,
    /// close connections without streams after this long (default 5m)
    #[argh(
        option,
        default = "Duration::from_secs(300)",
        from_str_fn(super::parse_duration)
    )]
    pub idle_timeout: Duration,
    /// time allowed for TLS and the HTTP/2 preface (default 10s)
    #[argh(
        option,
        default = "Duration::from_secs(10)",
        from_str_fn(super::parse_duration)
    )]
    pub handshake_timeout: Duration,
    /// connections served at once (default 1024)
    #[argh(option, default = "1024")]
    pub max_connections: usize,
    /// on SIGTERM, how long streams may take to finish before they are ended with UNAVAILABLE (default 10s)
    #[argh(
        option,
        default = "Duration::from_secs(10)",
        from_str_fn(super::parse_duration)
    )]
    pub drain_timeout: Duration,

    /// sessions held at once (default 512)
    #[argh(option, default = "512")]
    pub max_sessions: usize,
    /// live participants per session (default 64)
    #[argh(option, default = "64")]
    pub max_participants: usize,
    /// live watchers per session (default 64)
    #[argh(option, default = "64")]
    pub max_watchers: usize,
    /// content one session holds: files, paths, comments (default 2MiB)
    #[argh(option, default = "2 << 20", from_str_fn(super::parse_bytes))]
    pub max_document_bytes: usize,
    /// lines per file (default 20000)
    #[argh(option, default = "20_000")]
    pub max_lines: usize,
    /// files per session (default 200)
    #[argh(option, default = "200")]
    pub max_files: usize,
    /// bytes per line (default 4KiB)
    #[argh(option, default = "4 << 10", from_str_fn(super::parse_bytes))]
    pub max_line_bytes: usize,
    /// comments per session (default 2000)
    #[argh(option, default = "2000")]
    pub max_comments: usize,
    /// bytes of session_id and user_id (default 128)
    #[argh(option, default = "128")]
    pub max_id_bytes: usize,
    /// recent events kept for late joiners and resumes (default 1000)
    #[argh(option, default = "1000")]
    pub history_events: usize,
    /// essential bytes a participant may have pending before it is ended with RESOURCE_EXHAUSTED (default 8MiB)
    #[argh(option, default = "8 << 20", from_str_fn(super::parse_bytes))]
    pub outbox_bytes: usize,
    /// silence after which a participant is shown IDLE (default 60s)
    #[argh(
        option,
        default = "Duration::from_secs(60)",
        from_str_fn(super::parse_duration)
    )]
    pub idle_after: Duration,
    /// how long an empty session is kept for resumes (default 60s)
    #[argh(
        option,
        default = "Duration::from_secs(60)",
        from_str_fn(super::parse_duration)
    )]
    pub session_linger: Duration,
    /// messages per second per participant, 0 for no limit (default 100)
    #[argh(option, default = "100.0")]
    pub rate_limit: f64,
    /// burst of messages above the rate (default 200)
    #[argh(option, default = "200.0")]
    pub rate_burst: f64,
    /// content bytes per second per participant, messages and uploads (default 1MiB; off with --rate-limit 0)
    #[argh(option, default = "1 << 20", from_str_fn(super::parse_bytes))]
    pub rate_bytes: usize,
    /// burst of content bytes above that rate, at least --max-document-bytes (default 4MiB)
    #[argh(option, default = "4 << 20", from_str_fn(super::parse_bytes))]
    pub rate_bytes_burst: usize,
    /// memory all sessions may hold (content with overhead, history, outboxes); beyond it new sessions and growth get RESOURCE_EXHAUSTED (default 1GiB)
    #[argh(option, default = "1 << 30", from_str_fn(super::parse_bytes))]
    pub max_memory: usize,
    /// streams are ended with UNAVAILABLE after this long, 0 for never (default 24h)
    #[argh(
        option,
        default = "Duration::from_secs(86_400)",
        from_str_fn(super::parse_duration)
    )]
    pub max_stream_duration: Duration,

    /// log level: error, warn, info, debug (default info)
    #[argh(option, default = "String::from(\"info\")")]
    pub log_level: String,
    /// log format: json or text (default json)
    #[argh(option, default = "String::from(\"json\")")]
    pub log_format: String,
    /// serve Prometheus metrics, /healthz and /readyz on this address, e.g. 127.0.0.1:9464 (default: off)
    #[argh(option)]
    pub metrics_addr: Option<SocketAddr>,
}

impl ServeArgs {
    /// The wire layer's configuration from the flags.
    pub fn server_config(&self) -> Result<ServerConfig, String> {
        let to_u32 = |name: &str, value: usize| {
            u32::try_from(value).map_err(|_| format!("--{name} is too large"))
        };
        if !(16_384..=16_777_215).contains(&self.max_frame_size) {
            return Err("--max-frame-size must be between 16KiB and 16MiB-1".into());
        }
        if self.initial_stream_window > (1 << 31) - 1
            || self.initial_connection_window > (1 << 31) - 1
        {
            return Err("HTTP/2 windows must be below 2GiB".into());
        }
        if !(16_384..=(1 << 30)).contains(&self.max_send_buffer) {
            return Err("--max-send-buffer must be between 16KiB and 1GiB".into());
        }
        if self.max_outbound_buffer != 0 && self.max_outbound_buffer < self.max_send_buffer {
            return Err(
                "--max-outbound-buffer must be 0 (off) or at least --max-send-buffer".into(),
            );
        }
        Ok(ServerConfig {
            initial_stream_window: to_u32("initial-stream-window", self.initial_stream_window)?,
            initial_connection_window: to_u32(
                "initial-connection-window",
                self.initial_connection_window,
            )?,
            max_frame_size: to_u32("max-frame-size", self.max_frame_size)?,
            max_concurrent_streams: self.max_concurrent_streams,
            max_header_list_size: to_u32("max-header-list-size", self.max_header_list_size)?,
            max_recv_message_bytes: self.max_message_bytes,
            max_send_buffer_size: self.max_send_buffer,
            max_outbound_buffer: self.max_outbound_buffer,
            keepalive_interval: self.keepalive_interval,
            keepalive_timeout: self.keepalive_timeout,
            idle_timeout: self.idle_timeout,
            handshake_timeout: self.handshake_timeout,
            max_connections: self.max_connections,
            ..ServerConfig::default()
        })
    }

    /// The domain's limits from the flags.
    pub fn limits(&self) -> Result<Limits, String> {
        if !(self.rate_limit >= 0.0 && self.rate_burst >= 1.0) {
            return Err("--rate-limit must be >= 0 and --rate-burst >= 1".into());
        }
        if self.rate_bytes_burst < self.max_document_bytes {
            return Err(
                "--rate-bytes-burst must be at least --max-document-bytes (one upload of a full session must fit)"
                    .into(),
            );
        }
        let limits = Limits {
            max_id_bytes: self.max_id_bytes,
            max_line_bytes: self.max_line_bytes,
            max_lines_per_file: self.max_lines,
            max_files: self.max_files,
            max_comments: self.max_comments,
            max_session_bytes: self.max_document_bytes,
            max_sessions: self.max_sessions,
            max_participants: self.max_participants,
            max_watchers: self.max_watchers,
            history_events: self.history_events,
            outbox_bytes: self.outbox_bytes,
            idle_after: self.idle_after,
            session_linger: self.session_linger,
            rate_per_second: self.rate_limit,
            rate_burst: self.rate_burst,
            rate_bytes_per_second: self.rate_bytes as f64,
            rate_bytes_burst: self.rate_bytes_burst as f64,
            max_memory_bytes: self.max_memory,
            ..Limits::default()
        };
        let snapshot = limits.max_session_bytes + limits.snapshot_overhead_bytes();
        if snapshot > self.max_message_bytes {
            return Err(format!(
                "--max-document-bytes plus what a snapshot adds ({} bytes with --max-participants {}) must fit in \
                 --max-message-bytes {}: every session must fit in one snapshot message",
                limits.snapshot_overhead_bytes(),
                limits.max_participants,
                self.max_message_bytes
            ));
        }
        Ok(limits)
    }

    /// The address to bind: --addr, else 0.0.0.0:$PORT, else the default.
    pub fn bind_addr(&self, port_env: Option<&str>) -> Result<SocketAddr, String> {
        let text = match (&self.addr, port_env) {
            (Some(addr), _) => addr.clone(),
            (None, Some(port)) if !port.is_empty() => format!("0.0.0.0:{port}"),
            _ => DEFAULT_ADDR.to_owned(),
        };
        text.parse().map_err(|_| {
            format!("bad listen address {text:?}: expected HOST:PORT, e.g. 127.0.0.1:50051")
        })
    }
}

/// Why `serve` stopped early.
enum Failure {
    /// Flags, files, the address: found before serving (exit status 2).
    Setup(String),
    /// The listener failed while serving (exit status 1).
    Serving(String),
}

impl From<String> for Failure {
    fn from(message: String) -> Failure {
        Failure::Setup(message)
    }
}

impl From<&str> for Failure {
    fn from(message: &str) -> Failure {
        Failure::Setup(message.to_owned())
    }
}

/// Runs the server; returns the exit status. A failure is one plain line on
/// stderr (not a log line: it is for the person who started the server,
/// whatever the log format).
pub async fn run(args: ServeArgs) -> i32 {
    let (message, code) = match serve(args).await {
        Ok(()) => return 0,
        Err(Failure::Setup(message)) => (message, super::EXIT_USAGE),
        Err(Failure::Serving(message)) => (message, super::EXIT_FAILURE),
    };
    eprintln!("codereview serve: {message}");
    code
}

async fn serve(args: ServeArgs) -> Result<(), Failure> {
    // Handlers first: a signal that arrives as soon as we are listening
    // must be handled, not take its default action.
    let mut sigterm = signal(SignalKind::terminate()).map_err(|e| e.to_string())?;
    let mut sigint = signal(SignalKind::interrupt()).map_err(|e| e.to_string())?;
    let mut sighup = signal(SignalKind::hangup()).map_err(|e| e.to_string())?;
    let level =
        Level::parse(&args.log_level).ok_or("--log-level must be error, warn, info or debug")?;
    let format = Format::parse(&args.log_format).ok_or("--log-format must be json or text")?;
    logging::init(level, format);

    let config = args.server_config()?;
    let addr = args.bind_addr(std::env::var("PORT").ok().as_deref())?;
    if let Some(short) = fd_limit::read().and_then(|l| fd_limit::shortfall(args.max_connections, l))
    {
        // Before listening, so it is the first thing an operator reads.
        let msg = "too few file descriptors for --max-connections: connections beyond the limit fail at accept";
        let max_connections = args.max_connections as u64;
        match short.hard {
            Some(hard_limit) => log!(
                Warn,
                msg,
                max_connections = max_connections,
                needed = short.needed,
                soft_limit = short.soft,
                hard_limit = hard_limit,
                fix = short.fix.as_str(),
            ),
            None => log!(
                Warn,
                msg,
                max_connections = max_connections,
                needed = short.needed,
                soft_limit = short.soft,
                fix = short.fix.as_str(),
            ),
        }
    }
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(
            TlsSource::new(ServerTlsFiles {
                cert: cert.clone(),
                key: key.clone(),
                client_ca: args.client_ca.clone(),
            })
            .map_err(|e| e.to_string())?,
        ),
        (None, None) if args.client_ca.is_some() => {
            return Err("--client-ca needs --tls-cert and --tls-key".into());
        }
        (None, None) => None,
        _ => return Err("--tls-cert and --tls-key go together".into()),
    };
    let metrics = Metrics::new();
    let authenticator = match &args.auth_secret_file {
        Some(path) => {
            let failures = metrics.clone();
            let authenticator = Authenticator::new(&read_secret(path)?)?
                .on_failure(Arc::new(move |reason| failures.auth_failed(reason)));
            Some(Arc::new(authenticator))
        }
        None => None,
    };
    if !addr.ip().is_loopback() {
        if tls.is_none() {
            if !args.insecure {
                return Err(Failure::Setup(format!(
                    "refusing to serve plaintext on the non-loopback address {addr}: \
                     give --tls-cert/--tls-key, or --insecure if TLS is terminated in front of this server"
                )));
            }
            log!(
                Warn,
                "serving plaintext on a non-loopback address (--insecure): traffic and tokens are not encrypted",
                addr = addr.to_string().as_str()
            );
        }
        if authenticator.is_none() {
            if !args.insecure {
                return Err(Failure::Setup(format!(
                    "refusing to serve without authentication on the non-loopback address {addr}: \
                     give --auth-secret-file, or --insecure to run open"
                )));
            }
            log!(
                Warn,
                "serving without authentication on a non-loopback address (--insecure): anyone can join any session",
                addr = addr.to_string().as_str()
            );
        }
    }

    let limits = args.limits()?;
    let mut registry_config = RegistryConfig::new(limits);
    registry_config.observer = metrics.clone();
    let mut service_config = ServiceConfig::new(registry_config.limits.clone());
    service_config.max_stream_duration = Some(args.max_stream_duration).filter(|d| !d.is_zero());
    if let Some(authenticator) = &authenticator {
        service_config.auth_required = true;
        service_config.verifier = Some(authenticator.clone());
    }
    let registry = registry::spawn(registry_config);

    let health = HealthReporter::new();
    let mut router = Router::new();
    health.register(&mut router);
    service::register(&mut router, registry.clone(), service_config);
    health.set(service::SERVICE_NAME, ServingStatus::Serving);
    if args.interop {
        interop::register(&mut router);
        health.set("grpc.testing.TestService", ServingStatus::Serving);
    }
    if !args.no_reflection {
        // Last: it describes the services registered before it.
        reflection::register(
            &mut router,
            bytes::Bytes::from_static(crate::pb::DESCRIPTOR_SET),
        )?;
    }
    if let Some(authenticator) = &authenticator {
        router.set_interceptor(authenticator.clone().interceptor());
    }

    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    let local = listener.local_addr().map_err(|e| e.to_string())?;

    let mut server = Server::new(config, router).observer(metrics.clone());
    metrics.attach(server.telemetry(), registry.clone());
    let ready = Arc::new(AtomicBool::new(false));
    let metrics_task = match args.metrics_addr {
        Some(metrics_addr) => {
            let metrics_listener = TcpListener::bind(metrics_addr)
                .await
                .map_err(|e| format!("cannot listen on {metrics_addr} for metrics: {e}"))?;
            let bound = metrics_listener.local_addr().map_err(|e| e.to_string())?;
            log!(Info, "metrics listening", addr = bound.to_string().as_str());
            Some(tokio::spawn(metrics_http::serve(
                metrics_listener,
                metrics.clone(),
                ready.clone(),
            )))
        }
        None => None,
    };
    let mut reloader = None;
    if let Some((source, tls_reloader)) = tls {
        server = server.tls(source);
        reloader = Some(tls_reloader);
    }
    let (controller, shutdown) = ShutdownController::new();
    let mut server_task = tokio::spawn(server.serve(listener, shutdown));
    ready.store(true, Ordering::Relaxed);
    log!(
        Info,
        "listening",
        addr = local.to_string().as_str(),
        tls = reloader.is_some(),
        auth = authenticator.is_some(),
        interop = args.interop,
        reflection = !args.no_reflection
    );

    let signal_name = loop {
        tokio::select! {
            _ = sigterm.recv() => break "SIGTERM",
            _ = sigint.recv() => break "SIGINT",
            _ = sighup.recv() => match &reloader {
                Some(reloader) => match reloader.reload() {
                    Ok(()) => log!(Info, "TLS certificate reloaded"),
                    Err(error) => log!(Error, "TLS reload failed; keeping the previous certificate", error = error.to_string().as_str()),
                },
                None => log!(Info, "SIGHUP ignored: no TLS certificate to reload"),
            },
            result = &mut server_task => {
                return match result {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(error)) => Err(Failure::Serving(error.to_string())),
                    Err(error) => Err(Failure::Serving(error.to_string())),
                };
            }
        }
    };

    log!(
        Info,
        "shutting down: draining",
        signal = signal_name,
        drain_timeout_ms = args.drain_timeout.as_millis() as u64
    );
    ready.store(false, Ordering::Relaxed);
    health.set_all_not_serving();
    let before = registry.stats().await.unwrap_or_default();
    let deadline_ms = crate::review::now_unix_ms() + args.drain_timeout.as_millis() as i64;
    registry.drain(deadline_ms).await;
    controller.advance(Phase::Draining);
    let drained = tokio::time::timeout(args.drain_timeout, &mut server_task)
        .await
        .is_ok();
    if !drained {
        // Streams still open: end them with UNAVAILABLE (clients resume
        // elsewhere), give the trailers a moment, then drop what is left.
        registry
            .close_all(ReviewError::new(
                ErrorKind::Unavailable,
                "server shut down: reconnect and resume",
            ))
            .await;
        let finished = tokio::time::timeout(Duration::from_secs(1), &mut server_task)
            .await
            .is_ok();
        controller.advance(Phase::Closing);
        if !finished {
            let _ = tokio::time::timeout(Duration::from_secs(2), &mut server_task).await;
        }
    }
    log!(
        Info,
        "shutdown complete",
        drained_in_time = drained,
        sessions = before.sessions,
        participants = before.participants,
        watchers = before.watchers,
    );
    if let Some(task) = metrics_task {
        task.abort();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(extra: &[&str]) -> ServeArgs {
        let mut all = vec!["serve"];
        all.extend_from_slice(extra);
        let cli: crate::cli::Cli =
            argh::FromArgs::from_args(&["codereview"], &all).expect("valid flags");
        match cli.command {
            Some(crate::cli::Command::Serve(args)) => args,
            _ => unreachable!(),
        }
    }

    #[test]
    fn the_address_comes_from_the_flag_then_port_then_the_default() {
        assert_eq!(
            args(&[]).bind_addr(None).unwrap(),
            "127.0.0.1:50051".parse().unwrap()
        );
        assert_eq!(
            args(&[]).bind_addr(Some("8080")).unwrap(),
            "0.0.0.0:8080".parse().unwrap()
        );
        assert_eq!(
            args(&[]).bind_addr(Some("")).unwrap(),
            "127.0.0.1:50051".parse().unwrap()
        );
        let explicit = args(&["--addr", "127.0.0.1:9"]);
        assert_eq!(
            explicit.bind_addr(Some("8080")).unwrap(),
            "127.0.0.1:9".parse().unwrap()
        );
        assert!(args(&[]).bind_addr(Some("not-a-port")).is_err());
    }

    #[test]
    fn flags_become_configuration() {
        let a = args(&[
            "--max-frame-size",
            "64KiB",
            "--keepalive-interval",
            "0",
            "--rate-limit",
            "0",
        ]);
        let config = a.server_config().unwrap();
        assert_eq!(config.max_frame_size, 65536);
        assert!(config.keepalive_interval.is_zero());
        assert_eq!(a.limits().unwrap().rate_per_second, 0.0);
        assert!(args(&["--max-frame-size", "1KiB"]).server_config().is_err());
        let buffers = args(&[
            "--max-send-buffer",
            "64KiB",
            "--max-outbound-buffer",
            "32MiB",
        ]);
        let config = buffers.server_config().unwrap();
        assert_eq!(config.max_send_buffer_size, 64 << 10);
        assert_eq!(config.max_outbound_buffer, 32 << 20);
        assert_eq!(
            args(&[]).server_config().unwrap().max_outbound_buffer,
            256 << 20
        );
        assert!(args(&["--max-send-buffer", "0"]).server_config().is_err());
        assert!(
            args(&[
                "--max-send-buffer",
                "1MiB",
                "--max-outbound-buffer",
                "512KiB"
            ])
            .server_config()
            .is_err()
        );
        assert!(
            args(&["--max-outbound-buffer", "0"])
                .server_config()
                .is_ok()
        );
        assert!(args(&["--max-document-bytes", "8MiB"]).limits().is_err());
    }
}
