//! Everything the server is configured by, in one value with its defaults
//! written once: the wire layer's [`ServerConfig`], the domain's [`Limits`]
//! and the app's own settings. `codereview serve` builds it from flags (and
//! a test checks that the flags' defaults are these); tests build it
//! directly.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::grpc::server::ServerConfig;
use crate::grpc::tls::ServerTlsFiles;
use crate::review::limits::Limits;
use crate::review::service::DEFAULT_BATCH_BYTES;
use crate::shared_log::SharedLogConfig;
use crate::store::StoreConfig;

/// Where `serve` listens by default (plaintext, loopback only).
pub const DEFAULT_ADDR: &str = "127.0.0.1:50051";

/// Where sessions are kept by default (relative to the working directory;
/// `$CODEREVIEW_DATA_DIR` or `--data-dir` name another place).
pub const DEFAULT_DATA_DIR: &str = "codereview-data";

#[derive(Debug, Clone, PartialEq)]
pub struct AppConfig {
    /// The address the listener is bound to (for the loopback rule and the
    /// log; `run` is handed the listener itself).
    pub addr: SocketAddr,
    /// HTTP/2 and gRPC settings and bounds.
    pub server: ServerConfig,
    /// Sessions' bounds.
    pub limits: Limits,
    /// Serve TLS with these files (None: plaintext h2c).
    pub tls: Option<ServerTlsFiles>,
    /// Require bearer tokens signed with the secret in this file.
    pub auth_secret_file: Option<PathBuf>,
    /// Allow a non-loopback address without TLS or without tokens.
    pub insecure: bool,
    /// Also serve grpc.testing.TestService.
    pub interop: bool,
    /// Serve gRPC server reflection (default on).
    pub reflection: bool,
    /// Serve metrics, /healthz and /readyz here (default off).
    pub metrics_addr: Option<SocketAddr>,
    /// Streams are ended with UNAVAILABLE after this long (default 24 h;
    /// None: never).
    pub max_stream_duration: Option<Duration>,
    /// On shutdown, how long streams may take to finish (default 10 s).
    pub drain_timeout: Duration,
    /// The most a stream takes from its outbox per write (default 64 KiB;
    /// no flag: tests lower it to make a reader fall behind sooner).
    pub batch_bytes: usize,
    /// Keep sessions durable here (default: the `codereview-data` dir;
    /// None: in memory, lost at exit).
    pub store: Option<StoreConfig>,
    /// Durable sessions without participants are deleted after this long
    /// (default 24 h).
    pub session_retention: Duration,
    /// Serve the review page and gRPC-Web on the gRPC port (default on).
    pub web: bool,
    /// Other origins whose pages may call gRPC-Web here (CORS), exactly
    /// `scheme://host[:port]` (default none: the page's own origin only).
    pub web_origins: Vec<String>,
    /// Share sessions with other instances through Redis (then `store` is
    /// None: Redis keeps them). Default: none.
    pub redis: Option<SharedLogConfig>,
}

/// The durable store's defaults, in `dir`.
pub fn default_store(dir: PathBuf) -> StoreConfig {
    StoreConfig {
        dir,
        segment_bytes: 64 << 20,
        max_disk_bytes: 4 << 30,
    }
}

impl Default for AppConfig {
    fn default() -> Self {
        AppConfig {
            addr: DEFAULT_ADDR.parse().expect("a valid default address"),
            server: ServerConfig::default(),
            limits: Limits::default(),
            tls: None,
            auth_secret_file: None,
            insecure: false,
            interop: false,
            reflection: true,
            metrics_addr: None,
            max_stream_duration: Some(Duration::from_secs(24 * 3600)),
            drain_timeout: Duration::from_secs(10),
            batch_bytes: DEFAULT_BATCH_BYTES,
            store: Some(default_store(PathBuf::from(DEFAULT_DATA_DIR))),
            session_retention: Duration::from_secs(24 * 3600),
            web: true,
            web_origins: Vec::new(),
            redis: None,
        }
    }
}

impl AppConfig {
    /// A configuration for an in-process server on `127.0.0.1:0` (tests,
    /// embedding): the defaults, on loopback, in memory.
    pub fn loopback() -> Self {
        AppConfig {
            addr: "127.0.0.1:0".parse().expect("valid"),
            store: None,
            ..AppConfig::default()
        }
    }

    /// Checks what the parts cannot check alone; the first problem found.
    pub fn check(&self) -> Result<(), String> {
        if self.redis.is_some() && self.store.is_some() {
            return Err("--redis keeps sessions in Redis: it does not go with --data-dir".into());
        }
        let server = &self.server;
        if !(16_384..=16_777_215).contains(&server.max_frame_size) {
            return Err("--max-frame-size must be between 16KiB and 16MiB-1".into());
        }
        if server.initial_stream_window > (1 << 31) - 1
            || server.initial_connection_window > (1 << 31) - 1
        {
            return Err("HTTP/2 windows must be below 2GiB".into());
        }
        if !(16_384..=(1 << 30)).contains(&server.max_send_buffer_size) {
            return Err("--max-send-buffer must be between 16KiB and 1GiB".into());
        }
        if server.max_outbound_buffer != 0
            && server.max_outbound_buffer < server.max_send_buffer_size
        {
            return Err(
                "--max-outbound-buffer must be 0 (off) or at least --max-send-buffer".into(),
            );
        }
        let limits = &self.limits;
        if !(limits.rate_per_second >= 0.0 && limits.rate_burst >= 1.0) {
            return Err("--rate-limit must be >= 0 and --rate-burst >= 1".into());
        }
        if limits.rate_bytes_burst < limits.max_document_bytes as f64 {
            return Err(
                "--rate-bytes-burst must be at least --max-document-bytes (one upload of a full session must fit)"
                    .into(),
            );
        }
        let snapshot = limits.max_document_bytes + limits.snapshot_overhead_bytes();
        if snapshot > server.max_recv_message_bytes {
            return Err(format!(
                "--max-document-bytes plus what a snapshot adds ({} bytes with --max-participants {}) must fit in \
                 --max-message-bytes {}: every session must fit in one snapshot message",
                limits.snapshot_overhead_bytes(),
                limits.max_participants,
                server.max_recv_message_bytes
            ));
        }
        for origin in &self.web_origins {
            check_origin(origin)?;
        }
        if !self.web && !self.web_origins.is_empty() {
            return Err("--web-origin needs the web front end: drop --no-web".into());
        }
        if !self.addr.ip().is_loopback() && !self.insecure {
            if self.tls.is_none() {
                return Err(format!(
                    "refusing to serve plaintext on the non-loopback address {}: \
                     give --tls-cert/--tls-key, or --insecure if TLS is terminated in front of this server",
                    self.addr
                ));
            }
            if self.auth_secret_file.is_none() {
                return Err(format!(
                    "refusing to serve without authentication on the non-loopback address {}: \
                     give --auth-secret-file, or --insecure to run open",
                    self.addr
                ));
            }
        }
        Ok(())
    }
}

/// An origin as browsers send it: `http` or `https`, `://`, a host (and a
/// port), nothing after.
fn check_origin(origin: &str) -> Result<(), String> {
    let bad = || {
        format!(
            "--web-origin {origin:?} is not an origin: expected scheme://host[:port], e.g. http://localhost:3000"
        )
    };
    let rest = origin
        .strip_prefix("https://")
        .or_else(|| origin.strip_prefix("http://"))
        .ok_or_else(bad)?;
    let host_ok = !rest.is_empty()
        && rest
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b));
    if !host_ok {
        return Err(bad());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_are_checked() {
        for good in [
            "http://localhost:3000",
            "https://review.example.com",
            "http://[::1]:8080",
        ] {
            assert_eq!(check_origin(good), Ok(()), "{good}");
        }
        for bad in [
            "localhost:3000",
            "http://",
            "http://a/b",
            "*",
            "null",
            "ftp://a",
            "http://a b",
        ] {
            assert!(check_origin(bad).is_err(), "{bad}");
        }
    }
}
