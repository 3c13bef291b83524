//! The server, assembled: one [`App`] built from one [`AppConfig`] (the
//! registry, the review service, health, reflection, tokens, TLS, metrics,
//! the review page and gRPC-Web),
//! and [`run`], which serves it on a listener until `shutdown` resolves and
//! then drains. The binary (`codereview serve`) and the tests both call
//! these, as mini-redis's binary and tests both call its `server::run`.
//!
//! ```text
//!  build ──► run: serving (ready) ──shutdown──► draining (not ready, GOAWAY,
//!  GOING_AWAY notices) ──all streams done, or drain timeout──► closing
//!  (streams ended with UNAVAILABLE) ──► done
//! ```

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::net::TcpListener;

use crate::auth::Authenticator;
use crate::grpc::health::HealthReporter;
use crate::grpc::observe::Telemetry;
use crate::grpc::reflection;
use crate::grpc::server::{Router, Server};
use crate::grpc::shutdown::{Phase, ShutdownController};
use crate::grpc::tls::{TlsReloader, TlsSource};
use crate::grpc::web::WebConfig;
use crate::log;
use crate::metrics::{Metrics, http as metrics_http};
use crate::pb::health::health_check_response::ServingStatus;
use crate::review::error::{ErrorKind, ReviewError};
use crate::review::registry::{self, RegistryConfig, RegistryHandle, Startup};
use crate::review::service::{self, ServiceConfig};

pub mod config;
pub mod fd_limit;

pub use config::{AppConfig, DEFAULT_ADDR, DEFAULT_DATA_DIR, default_store};

/// Why the app could not start, or stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AppError {
    /// The configuration, a file, an address: found before serving.
    Setup(String),
    /// The listener failed while serving.
    Serving(String),
}

impl std::fmt::Display for AppError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AppError::Setup(message) | AppError::Serving(message) => f.write_str(message),
        }
    }
}

impl std::error::Error for AppError {}

fn setup(message: impl std::fmt::Display) -> AppError {
    AppError::Setup(message.to_string())
}

/// A built server, not yet serving.
pub struct App {
    config: AppConfig,
    server: Server,
    registry: RegistryHandle,
    health: HealthReporter,
    metrics: Arc<Metrics>,
    metrics_listener: Option<TcpListener>,
    reloader: Option<Arc<TlsReloader>>,
    auth: bool,
    ready: Arc<AtomicBool>,
    /// False while the store fails.
    storage_ok: Arc<AtomicBool>,
    /// Resolves once the registry has recovered the store.
    startup: Startup,
}

impl App {
    /// Assembles the server; binds the metrics listener (if configured) so
    /// that every setup error shows before serving.
    pub async fn build(config: AppConfig) -> Result<App, AppError> {
        config.check().map_err(setup)?;
        warn_if_short_of_files(config.server.max_connections);
        let metrics = Metrics::new();
        let authenticator = match &config.auth_secret_file {
            Some(path) => {
                let secret = crate::auth::read_secret(path).map_err(setup)?;
                let failures = metrics.clone();
                let authenticator = Authenticator::new(&secret)
                    .map_err(setup)?
                    .on_failure(Arc::new(move |reason| failures.auth_failed(reason)));
                Some(Arc::new(authenticator))
            }
            None => None,
        };
        if !config.addr.ip().is_loopback() {
            let addr = config.addr.to_string();
            if config.tls.is_none() {
                log!(
                    Warn,
                    "serving plaintext on a non-loopback address (--insecure): traffic and tokens are not encrypted",
                    addr = addr.as_str()
                );
            }
            if authenticator.is_none() {
                log!(
                    Warn,
                    "serving without authentication on a non-loopback address (--insecure): anyone can join any session",
                    addr = addr.as_str()
                );
            }
        }

        let mut registry_config = RegistryConfig::new(config.limits.clone());
        registry_config.observer = metrics.clone();
        registry_config.store = config.store.clone();
        registry_config.session_retention = config.session_retention;
        registry_config.shared = config.redis.clone();
        let storage_ok = registry_config.storage_ok.clone();
        let mut service_config = ServiceConfig::new(registry_config.limits.clone());
        service_config.max_stream_duration = config.max_stream_duration;
        service_config.batch_bytes = config.batch_bytes;
        if let Some(authenticator) = &authenticator {
            service_config.auth_required = true;
            service_config.verifier = Some(authenticator.clone());
        }
        let (registry, startup) = registry::spawn(registry_config);

        let health = HealthReporter::new();
        let mut router = Router::new();
        health.register(&mut router);
        service::register(&mut router, registry.clone(), service_config);
        health.set(crate::pb::paths::SERVICE_NAME, ServingStatus::Serving);
        if config.interop {
            crate::interop::register(&mut router);
            health.set("grpc.testing.TestService", ServingStatus::Serving);
        }
        if config.reflection {
            // Last: it describes the services registered before it.
            reflection::register(
                &mut router,
                bytes::Bytes::from_static(crate::pb::DESCRIPTOR_SET),
            )
            .map_err(setup)?;
        }
        if let Some(authenticator) = &authenticator {
            router.set_interceptor(authenticator.clone().interceptor());
        }

        let mut server = Server::new(config.server.clone(), router).observer(metrics.clone());
        if config.web {
            server = server.web(WebConfig {
                assets: Arc::new(crate::web::asset),
                allowed_origins: config.web_origins.clone(),
            });
        }
        metrics.attach(server.telemetry(), registry.clone());
        let mut reloader = None;
        if let Some(files) = &config.tls {
            let (source, tls_reloader) = TlsSource::new(files.clone()).map_err(setup)?;
            server = server.tls(source);
            reloader = Some(Arc::new(tls_reloader));
        }
        let metrics_listener = match config.metrics_addr {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .map_err(|e| setup(format!("cannot listen on {addr} for metrics: {e}")))?,
            ),
            None => None,
        };
        Ok(App {
            auth: authenticator.is_some(),
            config,
            server,
            registry,
            health,
            metrics,
            metrics_listener,
            reloader,
            ready: Arc::new(AtomicBool::new(false)),
            storage_ok,
            startup,
        })
    }

    /// The registry (for figures in tests and metrics).
    pub fn registry(&self) -> RegistryHandle {
        self.registry.clone()
    }

    /// The wire layer's live figures.
    pub fn telemetry(&self) -> Arc<Telemetry> {
        self.server.telemetry()
    }

    /// Reloads the TLS certificate and key (SIGHUP), when serving TLS.
    pub fn tls_reloader(&self) -> Option<Arc<TlsReloader>> {
        self.reloader.clone()
    }

    /// Where the metrics listener is bound, if there is one.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_listener
            .as_ref()
            .and_then(|l| l.local_addr().ok())
    }

    /// Whether the app answers readiness checks as ready: recovered and
    /// serving, storage working, not draining.
    pub fn readiness(&self) -> metrics_http::Readiness {
        let (ready, storage) = (self.ready.clone(), self.storage_ok.clone());
        Arc::new(move || ready.load(Ordering::Relaxed) && storage.load(Ordering::Relaxed))
    }
}

/// Serves `app` on `listener` until `shutdown` resolves (to the reason, for
/// the log), then drains: readiness and health go false, clients get GOAWAY
/// and a GOING_AWAY notice, streams have the drain timeout to finish, then
/// are ended with UNAVAILABLE. Before serving, the stored sessions are
/// recovered (readiness stays false until then; connections wait).
pub async fn run(
    listener: TcpListener,
    app: App,
    shutdown: impl Future<Output = &'static str>,
) -> Result<(), AppError> {
    let readiness = app.readiness();
    let App {
        config,
        server,
        registry,
        health,
        metrics,
        metrics_listener,
        reloader,
        auth,
        ready,
        storage_ok: _,
        startup,
    } = app;
    let local = listener
        .local_addr()
        .map_err(|e| AppError::Serving(e.to_string()))?;
    let metrics_task = metrics_listener.map(|listener| {
        if let Ok(bound) = listener.local_addr() {
            log!(Info, "metrics listening", addr = bound.to_string().as_str());
        }
        tokio::spawn(metrics_http::serve(listener, metrics, readiness))
    });
    let report = startup
        .await
        .map_err(|_| AppError::Serving("the registry stopped while starting".into()))?
        .map_err(|error| match config.redis {
            // The shared log's own errors name the flag concerned.
            Some(_) => AppError::Setup(error),
            None => AppError::Setup(format!(
                "cannot open the data dir: {error} (give --data-dir DIR for a writable directory, \
                 or --data-dir none to keep sessions in memory only)"
            )),
        })?;
    if let Some(store) = &config.store {
        log!(
            Info,
            "sessions recovered",
            data_dir = store.dir.display().to_string().as_str(),
            sessions = report.sessions as u64,
            failed_sessions = report.failed_sessions as u64,
            records = report.records as u64,
            torn_bytes = report.torn_bytes,
            unused_bytes = report.unused_bytes,
            elapsed_ms = report.elapsed.as_millis() as u64
        );
    }
    let (controller, signal) = ShutdownController::new();
    let mut server_task = tokio::spawn(server.serve(listener, signal));
    ready.store(true, Ordering::Relaxed);
    log!(
        Info,
        "listening",
        addr = local.to_string().as_str(),
        tls = reloader.is_some(),
        auth = auth,
        interop = config.interop,
        reflection = config.reflection,
        durable = config.store.is_some(),
        web = config.web
    );

    tokio::pin!(shutdown);
    let reason = tokio::select! {
        reason = &mut shutdown => reason,
        result = &mut server_task => {
            if let Some(task) = metrics_task {
                task.abort();
            }
            return match result {
                Ok(Ok(())) => Ok(()),
                Ok(Err(error)) => Err(AppError::Serving(error.to_string())),
                Err(error) => Err(AppError::Serving(error.to_string())),
            };
        }
    };

    let drain_timeout = config.drain_timeout;
    log!(
        Info,
        "shutting down: draining",
        signal = reason,
        drain_timeout_ms = drain_timeout.as_millis() as u64
    );
    ready.store(false, Ordering::Relaxed);
    health.set_all_not_serving();
    let before = registry.stats().await.unwrap_or_default();
    let deadline_ms = crate::review::now_unix_ms() + drain_timeout.as_millis() as i64;
    registry.drain(deadline_ms).await;
    controller.advance(Phase::Draining);
    let drained = tokio::time::timeout(drain_timeout, &mut server_task)
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

/// Warns, before listening, when the OS will not let `max_connections`
/// connections be open at once.
fn warn_if_short_of_files(max_connections: usize) {
    let Some(short) = fd_limit::read().and_then(|l| fd_limit::shortfall(max_connections, l)) else {
        return;
    };
    let msg = "too few file descriptors for --max-connections: connections beyond the limit fail at accept";
    let max_connections = max_connections as u64;
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
