//! `codereview serve`: flags become an [`AppConfig`], signals become the
//! app's shutdown (SIGTERM/SIGINT) and certificate reloads (SIGHUP); the
//! server itself is [`crate::app`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use argh::FromArgs;
use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};

use crate::app::{self, App, AppConfig, AppError, DEFAULT_ADDR};
use crate::grpc::server::ServerConfig;
use crate::grpc::tls::ServerTlsFiles;
use crate::log;
use crate::logging::{self, Format, Level};
use crate::review::limits::Limits;
use crate::shared_log::SharedLogConfig;
use crate::store::StoreConfig;

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
    /// do not serve the review page and gRPC-Web (on by default, on the same port: GET / in a browser)
    #[argh(switch)]
    pub no_web: bool,
    /// another origin whose pages may call gRPC-Web here (CORS), e.g. http://localhost:3000; repeatable (default none: same origin only)
    #[argh(option)]
    pub web_origin: Vec<String>,

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
    /// in memory (--data-dir none), how long an empty session is kept for resumes (default 60s)
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

    /// where sessions are kept durably, or "none" to keep them in memory only (default codereview-data; $CODEREVIEW_DATA_DIR when set)
    #[argh(option)]
    pub data_dir: Option<String>,
    /// durable sessions without participants are deleted after this long (default 24h)
    #[argh(
        option,
        default = "Duration::from_secs(86_400)",
        from_str_fn(super::parse_duration)
    )]
    pub session_retention: Duration,
    /// keep sessions in Redis, shared by every instance given the same URL: redis://[[USER]:PASSWORD@]HOST[:PORT][/DB] or rediss://… (TLS); replaces --data-dir (default: none)
    #[argh(option)]
    pub redis: Option<String>,
    /// a file holding the Redis password (instead of one in the --redis URL)
    #[argh(option)]
    pub redis_password_file: Option<PathBuf>,
    /// PEM certificates to trust for rediss:// (default: the system's, from SSL_CERT_FILE or the distribution's bundle)
    #[argh(option)]
    pub redis_ca: Option<PathBuf>,
    /// disk the data dir may use; past it edits, comments and uploads get RESOURCE_EXHAUSTED, 0 = no budget (default 4GiB)
    #[argh(option, default = "4 << 30", from_str_fn(super::parse_bytes))]
    pub max_disk: usize,
    /// size at which a log segment is closed and a new one begun (default 64MiB)
    #[argh(option, default = "64 << 20", from_str_fn(super::parse_bytes))]
    pub log_segment_bytes: usize,

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
    /// The whole configuration from the flags and the environment.
    pub fn config(&self, env: &Environment) -> Result<AppConfig, String> {
        let to_u32 = |name: &str, value: usize| {
            u32::try_from(value).map_err(|_| format!("--{name} is too large"))
        };
        let server = ServerConfig {
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
        };
        let limits = Limits {
            max_id_bytes: self.max_id_bytes,
            max_line_bytes: self.max_line_bytes,
            max_lines_per_file: self.max_lines,
            max_files: self.max_files,
            max_comments: self.max_comments,
            max_document_bytes: self.max_document_bytes,
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
        let tls = match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Some(ServerTlsFiles {
                cert: cert.clone(),
                key: key.clone(),
                client_ca: self.client_ca.clone(),
            }),
            (None, None) if self.client_ca.is_some() => {
                return Err("--client-ca needs --tls-cert and --tls-key".into());
            }
            (None, None) => None,
            _ => return Err("--tls-cert and --tls-key go together".into()),
        };
        let data_dir = self
            .data_dir
            .clone()
            .or_else(|| env.data_dir.clone().filter(|d| !d.is_empty()))
            .unwrap_or_else(|| app::DEFAULT_DATA_DIR.to_owned());
        let redis = self.redis_config()?;
        if redis.is_some() && self.data_dir.is_some() {
            return Err("--redis keeps sessions in Redis: it does not go with --data-dir".into());
        }
        let store = match data_dir.as_str() {
            _ if redis.is_some() => None,
            "none" => None,
            dir => Some(StoreConfig {
                dir: PathBuf::from(dir),
                segment_bytes: self.log_segment_bytes as u64,
                max_disk_bytes: self.max_disk as u64,
            }),
        };
        let config = AppConfig {
            addr: self.bind_addr(env.port.as_deref())?,
            server,
            limits,
            tls,
            auth_secret_file: self.auth_secret_file.clone(),
            insecure: self.insecure,
            interop: self.interop,
            reflection: !self.no_reflection,
            metrics_addr: self.metrics_addr,
            max_stream_duration: Some(self.max_stream_duration).filter(|d| !d.is_zero()),
            drain_timeout: self.drain_timeout,
            store,
            session_retention: self.session_retention,
            web: !self.no_web,
            web_origins: self.web_origin.clone(),
            redis,
            ..AppConfig::default()
        };
        config.check()?;
        Ok(config)
    }

    /// The Redis settings, with the password and CA files read.
    fn redis_config(&self) -> Result<Option<SharedLogConfig>, String> {
        let Some(url) = &self.redis else {
            if self.redis_password_file.is_some() || self.redis_ca.is_some() {
                return Err("--redis-password-file and --redis-ca go with --redis".into());
            }
            return Ok(None);
        };
        crate::resp::Endpoint::parse(url)
            .map_err(|e| format!("--redis {}: {e}", crate::shared_log::redacted(url)))?;
        let read = |path: &PathBuf, what: &str| {
            std::fs::read(path).map_err(|e| format!("{what} {}: {e}", path.display()))
        };
        let password = match &self.redis_password_file {
            Some(path) => {
                let bytes = read(path, "--redis-password-file")?;
                let text = String::from_utf8(bytes)
                    .map_err(|_| "--redis-password-file: the password is not UTF-8".to_string())?;
                Some(text.trim_end_matches(['\r', '\n']).to_owned())
            }
            None => None,
        };
        let ca_pem = match &self.redis_ca {
            Some(path) => Some(read(path, "--redis-ca")?),
            None => None,
        };
        Ok(Some(SharedLogConfig {
            url: url.clone(),
            password,
            ca_pem,
            instance: crate::shared_log::new_instance_name(),
            retention: self.session_retention,
            lease_ttl: Duration::from_secs(10),
        }))
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

/// What `serve` reads from its environment.
#[derive(Debug, Clone, Default)]
pub struct Environment {
    /// `$PORT`: listen on 0.0.0.0:$PORT when --addr is not given.
    pub port: Option<String>,
    /// `$CODEREVIEW_DATA_DIR`: the data dir when --data-dir is not given.
    pub data_dir: Option<String>,
}

impl Environment {
    pub fn read() -> Self {
        Environment {
            port: std::env::var("PORT").ok(),
            data_dir: std::env::var("CODEREVIEW_DATA_DIR").ok(),
        }
    }
}

/// Runs the server; returns the exit status. A failure is one plain line on
/// stderr (not a log line: it is for the person who started the server,
/// whatever the log format).
pub async fn run(args: ServeArgs) -> i32 {
    let (message, code) = match serve(args).await {
        Ok(()) => return 0,
        Err(AppError::Setup(message)) => (message, super::EXIT_USAGE),
        Err(AppError::Serving(message)) => (message, super::EXIT_FAILURE),
    };
    eprintln!("codereview serve: {message}");
    code
}

async fn serve(args: ServeArgs) -> Result<(), AppError> {
    let setup = |message: String| AppError::Setup(message);
    // Handlers first: a signal that arrives as soon as we are listening
    // must be handled, not take its default action.
    let mut sigterm = signal(SignalKind::terminate()).map_err(|e| setup(e.to_string()))?;
    let mut sigint = signal(SignalKind::interrupt()).map_err(|e| setup(e.to_string()))?;
    let mut sighup = signal(SignalKind::hangup()).map_err(|e| setup(e.to_string()))?;
    let level = Level::parse(&args.log_level)
        .ok_or_else(|| setup("--log-level must be error, warn, info or debug".into()))?;
    let format = Format::parse(&args.log_format)
        .ok_or_else(|| setup("--log-format must be json or text".into()))?;
    logging::init(level, format);

    let config = args.config(&Environment::read()).map_err(setup)?;
    let addr = config.addr;
    let app = App::build(config).await?;
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| setup(format!("cannot listen on {addr}: {e}")))?;
    let reloader = app.tls_reloader();
    let shutdown = async move {
        loop {
            tokio::select! {
                _ = sigterm.recv() => return "SIGTERM",
                _ = sigint.recv() => return "SIGINT",
                _ = sighup.recv() => match &reloader {
                    Some(reloader) => match reloader.reload() {
                        Ok(()) => log!(Info, "TLS certificate reloaded"),
                        Err(error) => log!(Error, "TLS reload failed; keeping the previous certificate", error = error.to_string().as_str()),
                    },
                    None => log!(Info, "SIGHUP ignored: no TLS certificate to reload"),
                },
            }
        }
    };
    app::run(listener, app, shutdown).await
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
        let config = |extra: &[&str]| args(extra).config(&Environment::default());
        let a = config(&[
            "--max-frame-size",
            "64KiB",
            "--keepalive-interval",
            "0",
            "--rate-limit",
            "0",
        ])
        .unwrap();
        assert_eq!(a.server.max_frame_size, 65536);
        assert!(a.server.keepalive_interval.is_zero());
        assert_eq!(a.limits.rate_per_second, 0.0);
        assert!(config(&["--max-frame-size", "1KiB"]).is_err());
        let buffers = config(&[
            "--max-send-buffer",
            "64KiB",
            "--max-outbound-buffer",
            "32MiB",
        ])
        .unwrap();
        assert_eq!(buffers.server.max_send_buffer_size, 64 << 10);
        assert_eq!(buffers.server.max_outbound_buffer, 32 << 20);
        assert!(config(&["--max-send-buffer", "0"]).is_err());
        assert!(
            config(&[
                "--max-send-buffer",
                "1MiB",
                "--max-outbound-buffer",
                "512KiB"
            ])
            .is_err()
        );
        assert!(config(&["--max-outbound-buffer", "0"]).is_ok());
        assert!(config(&["--max-document-bytes", "8MiB"]).is_err());
        assert!(config(&["--client-ca", "ca.pem"]).is_err());
        assert!(
            config(&["--addr", "0.0.0.0:1"]).is_err(),
            "plaintext off loopback"
        );
        assert!(config(&["--addr", "0.0.0.0:1", "--insecure"]).is_ok());
        assert_eq!(
            config(&["--max-stream-duration", "0"])
                .unwrap()
                .max_stream_duration,
            None
        );
        assert!(!config(&["--no-reflection"]).unwrap().reflection);
        assert!(!config(&["--no-web"]).unwrap().web);
        let origins = config(&[
            "--web-origin",
            "http://localhost:3000",
            "--web-origin",
            "https://review.example.com",
        ])
        .unwrap();
        assert_eq!(
            origins.web_origins,
            ["http://localhost:3000", "https://review.example.com"]
        );
        assert!(config(&["--web-origin", "localhost:3000"]).is_err());
        assert!(config(&["--no-web", "--web-origin", "http://a"]).is_err());
        assert_eq!(config(&["--data-dir", "none"]).unwrap().store, None);
        let dir = config(&["--data-dir", "/srv/reviews"])
            .unwrap()
            .store
            .unwrap()
            .dir;
        assert_eq!(dir, PathBuf::from("/srv/reviews"));
        let env = Environment {
            data_dir: Some("/var/lib/cr".into()),
            ..Environment::default()
        };
        assert_eq!(
            args(&[]).config(&env).unwrap().store.unwrap().dir,
            PathBuf::from("/var/lib/cr")
        );
        assert_eq!(
            args(&["--data-dir", "none"]).config(&env).unwrap().store,
            None,
            "the flag wins over the environment"
        );
    }

    /// The defaults are written once, in the configuration types: the flags'
    /// defaults (argh needs its own) must be exactly those.
    #[test]
    fn the_flags_defaults_are_the_configurations_defaults() {
        assert_eq!(
            args(&[]).config(&Environment::default()).unwrap(),
            AppConfig::default()
        );
    }

    /// Each flag's help says its default: it must be the real one.
    #[test]
    fn the_help_states_the_real_defaults() {
        let help = match crate::cli::Cli::from_args(&["codereview"], &["serve", "--help"]) {
            Err(early) => early.output,
            Ok(_) => panic!("--help prints help"),
        };
        let defaults = AppConfig::default();
        let said = |flag: &str| -> String {
            let name = format!("--{flag}");
            let mut lines = help
                .lines()
                .map(str::trim_start)
                .skip_while(|l| l.split_whitespace().next() != Some(name.as_str()));
            let first = lines.next().unwrap_or_default();
            let rest = lines.take_while(|l| !l.starts_with("--"));
            let text = std::iter::once(first)
                .chain(rest)
                .collect::<Vec<_>>()
                .join(" ");
            text.split("(default ")
                .nth(1)
                .and_then(|rest| rest.split([')', ';']).next())
                .unwrap_or_else(|| panic!("{name} states no default: {text}"))
                .to_owned()
        };
        let bytes = |text: String| crate::cli::parse_bytes(&text).unwrap();
        let duration = |text: String| crate::cli::parse_duration(&text).unwrap();
        let (server, limits) = (&defaults.server, &defaults.limits);
        assert_eq!(
            bytes(said("max-message-bytes")),
            server.max_recv_message_bytes
        );
        assert_eq!(bytes(said("max-document-bytes")), limits.max_document_bytes);
        assert_eq!(bytes(said("max-memory")), limits.max_memory_bytes);
        assert_eq!(bytes(said("outbox-bytes")), limits.outbox_bytes);
        assert_eq!(bytes(said("max-send-buffer")), server.max_send_buffer_size);
        assert_eq!(
            said("max-sessions").parse::<usize>().unwrap(),
            limits.max_sessions
        );
        assert_eq!(
            said("max-participants").parse::<usize>().unwrap(),
            limits.max_participants
        );
        assert_eq!(
            said("max-connections").parse::<usize>().unwrap(),
            server.max_connections
        );
        assert_eq!(
            said("history-events").parse::<usize>().unwrap(),
            limits.history_events
        );
        assert_eq!(
            said("rate-limit").parse::<f64>().unwrap(),
            limits.rate_per_second
        );
        assert_eq!(duration(said("session-linger")), limits.session_linger);
        assert_eq!(duration(said("drain-timeout")), defaults.drain_timeout);
        assert_eq!(
            duration(said("keepalive-interval")),
            server.keepalive_interval
        );
    }
}
