//! Shared test helpers: start servers in-process, on an ephemeral port.
#![allow(dead_code)]

use std::net::SocketAddr;

use codereview::grpc::health::HealthReporter;
use codereview::grpc::server::{Router, Server, ServerConfig};
use codereview::grpc::shutdown::{Phase, ShutdownController};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// A server running in this process; shuts down when dropped.
pub struct TestServer {
    pub addr: SocketAddr,
    /// Live wire figures (connections, streams, buffered bytes).
    pub telemetry: std::sync::Arc<codereview::grpc::observe::Telemetry>,
    pub controller: ShutdownController,
    pub task: Option<JoinHandle<std::io::Result<()>>>,
}

impl TestServer {
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub async fn shutdown(mut self) {
        self.controller.advance(Phase::Draining);
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(std::time::Duration::from_secs(5), task).await;
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.controller.advance(Phase::Closing);
    }
}

pub async fn start(config: ServerConfig, router: Router) -> TestServer {
    serve(Server::new(config, router)).await
}

/// Serves an already configured server (e.g. with TLS) on an ephemeral port.
pub async fn serve(server: Server) -> TestServer {
    // In-process servers log through the process-wide logger: keep test
    // output to errors.
    codereview::logging::init(
        codereview::logging::Level::Error,
        codereview::logging::Format::Json,
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (controller, signal) = ShutdownController::new();
    let telemetry = server.telemetry();
    let task = tokio::spawn(server.serve(listener, signal));
    TestServer {
        addr,
        telemetry,
        controller,
        task: Some(task),
    }
}

/// The interop TestService plus health, as `serve --interop` registers them.
pub async fn start_interop(config: ServerConfig) -> TestServer {
    let mut router = Router::new();
    HealthReporter::new().register(&mut router);
    codereview::interop::register(&mut router);
    start(config, router).await
}

/// A code-review server (plus health) with the given limits; returns the
/// registry handle too so tests can count sessions and participants.
pub async fn start_review(
    config: ServerConfig,
    limits: codereview::review::limits::Limits,
) -> (TestServer, codereview::review::registry::RegistryHandle) {
    start_review_with(config, limits, |_| {}).await
}

/// Like [`start_review`], letting the caller adjust the service settings.
pub async fn start_review_with(
    config: ServerConfig,
    limits: codereview::review::limits::Limits,
    adjust: impl FnOnce(&mut codereview::review::service::ServiceConfig),
) -> (TestServer, codereview::review::registry::RegistryHandle) {
    let (router, registry) = review_router(limits, adjust);
    (start(config, router).await, registry)
}

/// The code-review service (plus health) on a router, for custom servers.
pub fn review_router(
    limits: codereview::review::limits::Limits,
    adjust: impl FnOnce(&mut codereview::review::service::ServiceConfig),
) -> (Router, codereview::review::registry::RegistryHandle) {
    use codereview::review::{registry, service};
    let registry_config = registry::RegistryConfig::new(limits);
    let mut service_config = service::ServiceConfig::new(registry_config.limits.clone());
    adjust(&mut service_config);
    let (registry, _startup) = registry::spawn(registry_config);
    let mut router = Router::new();
    HealthReporter::new().register(&mut router);
    service::register(&mut router, registry.clone(), service_config);
    (router, registry)
}
