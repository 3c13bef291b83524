//! Sessions shared by several instances through a real Redis
//! (`serve --redis`): one total order per session across instances,
//! resume and resend dedupe on another instance, no ghost after an
//! instance dies, and service that stops cleanly while Redis is down and
//! resumes by itself when it is back; logins, databases and TLS.
//!
//! Each test starts its own `redis-server` (the Debian package; .ci/run
//! installs it) on a free loopback port and stops it by pid.

mod cli;
mod failures;
mod login;
mod order;

use std::time::Duration;

use codereview::app::AppConfig;
use codereview::shared_log::{SharedLogConfig, new_instance_name};
use kit::redis::RedisServer;
use kit::server::{TestServer, loopback};

/// An in-process instance sharing sessions through `redis`.
async fn instance(redis: &RedisServer) -> TestServer {
    instance_with(redis, |_| {}).await
}

/// An instance with settings of its own.
async fn instance_with(redis: &RedisServer, adjust: impl FnOnce(&mut AppConfig)) -> TestServer {
    TestServer::start(loopback(|config: &mut AppConfig| {
        config.redis = Some(shared_config(redis));
        adjust(config);
    }))
    .await
}

fn shared_config(redis: &RedisServer) -> SharedLogConfig {
    SharedLogConfig {
        url: redis.url(),
        password: None,
        ca_pem: None,
        instance: new_instance_name(),
        retention: Duration::from_secs(3600),
        lease_ttl: Duration::from_secs(10),
    }
}
