//! The security campaign: TLS termination (`tls`), tokens and roles
//! (`auth`), limits (`limits`), hostile HTTP/2 and bytes (`abuse`), and the
//! fuzz corpora replayed as regression tests (`fuzz_corpus`). Servers run
//! in-process through `app::run` (or as the binary, for signals and
//! addresses); a well-behaved canary pair checks that what a test does to
//! the server does not reach anyone else.

mod abuse;
mod auth;
mod canary;
mod fuzz_corpus;
mod limits;
mod tls;

use codereview::app::AppConfig;
use codereview::grpc::server::ServerConfig;
use codereview::grpc::{Code, Status};
use codereview::review::limits::Limits;
use kit::binary;
use kit::process::Binary;

const BIN: Binary = binary!();

/// The wire settings a test server starts from.
fn server_config() -> ServerConfig {
    AppConfig::loopback().server
}

/// The session limits a test server starts from.
fn limits() -> Limits {
    AppConfig::loopback().limits
}

fn assert_code(status: &Status, code: Code, context: &str) {
    assert_eq!(status.code(), code, "{context}: got {status}");
}
