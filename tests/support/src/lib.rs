//! The test kit of codereview, one crate for every integration test binary
//! (as h2's `tests/h2-support`): a new test is a few lines on it.
//!
//! - [`server`]: the server in-process through `app::run` (the binary's own
//!   assembly), or the binary itself as a child process;
//! - [`participant`]: one CollaborativeSession harness, on our own client or
//!   on tonic (an independent implementation), and the other three RPCs;
//! - [`payloads`]: messages to send and readers of what arrives;
//! - [`proxy`]: a TCP proxy that cuts, refuses, hangs up or is flaky;
//! - [`h2raw`]: a raw HTTP/2 client that shows every frame;
//! - [`process`]: the binary's client commands as processes;
//! - [`peers`]: the Python (grpcio) and Node (grpc-js) peers;
//! - [`tls`]: certificates made at test time, and tokens;
//! - [`json`]: JSON (the binary's output, its logs) through the crate's own
//!   parser.
//!
//! Every wait is bounded: a regression fails, it does not hang. The bounds
//! are generous because they guard against hangs; they never measure speed.
#![forbid(unsafe_code)]

use std::future::Future;
use std::path::Path;
use std::time::{Duration, Instant};

pub mod h2raw;
pub mod json;
pub mod participant;
pub mod payloads;
pub mod peers;
pub mod process;
pub mod proxy;
pub mod server;
pub mod tls;

/// How long one expected message or event may take.
pub const STEP: Duration = Duration::from_secs(5);
/// How long a wait for something among other traffic may take.
pub const LONG: Duration = Duration::from_secs(10);
/// How long a child process may take for one step (start, exit, a line).
pub const WAIT: Duration = Duration::from_secs(20);
/// How long to listen when asserting that nothing (more) arrives.
pub const QUIET: Duration = Duration::from_millis(300);

/// The repository root (where `cargo test` runs the root package's tests).
pub fn root() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
}

/// Runs `f`, failing the test with `what` if it takes longer than `limit`.
pub async fn within<T>(limit: Duration, what: &str, f: impl Future<Output = T>) -> T {
    match tokio::time::timeout(limit, f).await {
        Ok(value) => value,
        Err(_) => panic!("timed out after {limit:?}: {what}"),
    }
}

/// Polls `check` every 20 ms until it returns `Ok`, failing after `limit`
/// with `what` and the last `Err` it gave.
pub async fn eventually<T, F, Fut>(limit: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let last = match check().await {
            Ok(value) => return value,
            Err(last) => last,
        };
        if tokio::time::Instant::now() >= deadline {
            panic!("timed out after {limit:?} waiting for {what}; last seen: {last}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The blocking form of [`eventually`], for tests without a runtime: polls
/// `done` every 10 ms; panics after `limit`.
pub fn wait_until(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}
