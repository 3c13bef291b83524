//! `codereview serve`: binds the listener, assembles the services, and runs
//! until SIGTERM/SIGINT, then drains (GOAWAY, streams finish or are ended
//! after the drain timeout) and exits 0. SIGHUP reloads the TLS certificate.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use argh::FromArgs;
use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};

use crate::grpc::health::HealthReporter;
use crate::grpc::server::{Router, Server, ServerConfig};
use crate::grpc::shutdown::{Phase, ShutdownController};
use crate::grpc::tls::{ServerTlsFiles, TlsSource};
use crate::logging::{self, Format, Level};
use crate::{interop, log};

const DEFAULT_ADDR: &str = "127.0.0.1:50051";

/// run the server (plaintext h2c on 127.0.0.1:50051 by default)
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "serve")]
pub struct ServeArgs {
    /// address to listen on (default 127.0.0.1:50051; 0.0.0.0:$PORT when $PORT is set)
    #[argh(option)]
    pub addr: Option<String>,
    /// also serve grpc.testing.TestService (the gRPC interop test service)
    #[argh(switch)]
    pub interop: bool,

    /// PEM certificate chain: serve TLS (h2 over TLS 1.2/1.3)
    #[argh(option)]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for --tls-cert
    #[argh(option)]
    pub tls_key: Option<PathBuf>,
    /// PEM CA: require client certificates signed by it (mTLS)
    #[argh(option)]
    pub client_ca: Option<PathBuf>,
    /// allow a non-loopback address without TLS (TLS terminated in front of us)
    #[argh(switch)]
    pub insecure: bool,

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
    /// largest gRPC message received (default 4MiB)
    #[argh(option, default = "4 << 20", from_str_fn(super::parse_bytes))]
    pub max_message_bytes: usize,
    /// interval between keepalive PINGs, 0 to disable (default 30s)
    #[argh(option, default = "Duration::from_secs(30)", from_str_fn(super::parse_duration))]
    pub keepalive_interval: Duration,
    /// how long a PING may go unanswered (default 10s)
    #[argh(option, default = "Duration::from_secs(10)", from_str_fn(super::parse_duration))]
    pub keepalive_timeout: Duration,
    /// close connections without streams after this long (default 5m)
    #[argh(option, default = "Duration::from_secs(300)", from_str_fn(super::parse_duration))]
    pub idle_timeout: Duration,
    /// time allowed for TLS and the HTTP/2 preface (default 10s)
    #[argh(option, default = "Duration::from_secs(10)", from_str_fn(super::parse_duration))]
    pub handshake_timeout: Duration,
    /// connections served at once (default 1024)
    #[argh(option, default = "1024")]
    pub max_connections: usize,
    /// on SIGTERM, how long streams may take to finish (default 10s)
    #[argh(option, default = "Duration::from_secs(10)", from_str_fn(super::parse_duration))]
    pub drain_timeout: Duration,

    /// log level: error, warn, info, debug (default info)
    #[argh(option, default = "String::from(\"info\")")]
    pub log_level: String,
    /// log format: json or text (default json)
    #[argh(option, default = "String::from(\"json\")")]
    pub log_format: String,
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
        if self.initial_stream_window > (1 << 31) - 1 || self.initial_connection_window > (1 << 31) - 1 {
            return Err("HTTP/2 windows must be below 2GiB".into());
        }
        Ok(ServerConfig {
            initial_stream_window: to_u32("initial-stream-window", self.initial_stream_window)?,
            initial_connection_window: to_u32("initial-connection-window", self.initial_connection_window)?,
            max_frame_size: to_u32("max-frame-size", self.max_frame_size)?,
            max_concurrent_streams: self.max_concurrent_streams,
            max_header_list_size: to_u32("max-header-list-size", self.max_header_list_size)?,
            max_recv_message_bytes: self.max_message_bytes,
            keepalive_interval: self.keepalive_interval,
            keepalive_timeout: self.keepalive_timeout,
            idle_timeout: self.idle_timeout,
            handshake_timeout: self.handshake_timeout,
            max_connections: self.max_connections,
            ..ServerConfig::default()
        })
    }

    /// The address to bind: --addr, else 0.0.0.0:$PORT, else the default.
    pub fn bind_addr(&self, port_env: Option<&str>) -> Result<SocketAddr, String> {
        let text = match (&self.addr, port_env) {
            (Some(addr), _) => addr.clone(),
            (None, Some(port)) if !port.is_empty() => format!("0.0.0.0:{port}"),
            _ => DEFAULT_ADDR.to_owned(),
        };
        text.parse()
            .map_err(|_| format!("bad listen address {text:?}: expected HOST:PORT, e.g. 127.0.0.1:50051"))
    }
}

pub async fn run(args: ServeArgs) -> i32 {
    match serve(args).await {
        Ok(()) => 0,
        Err(message) => {
            log!(Error, "serve failed", error = message.as_str());
            eprintln!("codereview serve: {message}");
            2
        }
    }
}

async fn serve(args: ServeArgs) -> Result<(), String> {
    let level = Level::parse(&args.log_level).ok_or("--log-level must be error, warn, info or debug")?;
    let format = Format::parse(&args.log_format).ok_or("--log-format must be json or text")?;
    logging::init(level, format);

    let config = args.server_config()?;
    let addr = args.bind_addr(std::env::var("PORT").ok().as_deref())?;
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(
            TlsSource::new(ServerTlsFiles {
                cert: cert.clone(),
                key: key.clone(),
                client_ca: args.client_ca.clone(),
            })
            .map_err(|e| e.to_string())?,
        ),
        (None, None) if args.client_ca.is_some() => return Err("--client-ca needs --tls-cert and --tls-key".into()),
        (None, None) => None,
        _ => return Err("--tls-cert and --tls-key go together".into()),
    };
    if tls.is_none() && !addr.ip().is_loopback() {
        if !args.insecure {
            return Err(format!(
                "refusing to serve plaintext on the non-loopback address {addr}: \
                 give --tls-cert/--tls-key, or --insecure if TLS is terminated in front of this server"
            ));
        }
        log!(Warn, "serving plaintext on a non-loopback address (--insecure): traffic and tokens are not encrypted", addr = addr.to_string().as_str());
    }

    let health = HealthReporter::new();
    let mut router = Router::new();
    health.register(&mut router);
    if args.interop {
        interop::register(&mut router);
        health.set("grpc.testing.TestService", crate::pb::health::health_check_response::ServingStatus::Serving);
    }

    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    let local = listener.local_addr().map_err(|e| e.to_string())?;

    let mut server = Server::new(config, router);
    let mut reloader = None;
    if let Some((source, tls_reloader)) = tls {
        server = server.tls(source);
        reloader = Some(tls_reloader);
    }
    let (controller, shutdown) = ShutdownController::new();
    let mut server_task = tokio::spawn(server.serve(listener, shutdown));
    log!(Info, "listening", addr = local.to_string().as_str(), tls = reloader.is_some(), interop = args.interop);

    let mut sigterm = signal(SignalKind::terminate()).map_err(|e| e.to_string())?;
    let mut sigint = signal(SignalKind::interrupt()).map_err(|e| e.to_string())?;
    let mut sighup = signal(SignalKind::hangup()).map_err(|e| e.to_string())?;
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
                    Ok(Err(error)) => Err(error.to_string()),
                    Err(error) => Err(error.to_string()),
                };
            }
        }
    };

    log!(Info, "shutting down: draining", signal = signal_name, drain_timeout_ms = args.drain_timeout.as_millis() as u64);
    health.set_all_not_serving();
    controller.advance(Phase::Draining);
    let drained = tokio::time::timeout(args.drain_timeout, &mut server_task).await.is_ok();
    if !drained {
        controller.advance(Phase::Closing);
        let _ = tokio::time::timeout(Duration::from_secs(2), &mut server_task).await;
    }
    log!(Info, "shutdown complete", drained_in_time = drained);
    Ok(())
}
