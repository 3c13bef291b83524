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
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (controller, signal) = ShutdownController::new();
    let task = tokio::spawn(Server::new(config, router).serve(listener, signal));
    TestServer {
        addr,
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
