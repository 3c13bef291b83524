//! The wire layer (`src/grpc/`) against the in-process server as
//! `serve --interop` assembles it: frame by frame on the raw HTTP/2 client
//! (`http2`), and the gRPC interop cases driven by tonic, an independent
//! implementation, plus our own client against a tonic server (`interop`).

mod http2;
mod interop;

use codereview::app::AppConfig;
use codereview::grpc::server::ServerConfig;
use kit::server::TestServer;

/// The wire settings a test server starts from.
fn server_config() -> ServerConfig {
    AppConfig::loopback().server
}

/// `serve --interop`: the server with grpc.testing.TestService, on `server`.
fn interop_config(server: ServerConfig) -> AppConfig {
    AppConfig {
        server,
        interop: true,
        ..AppConfig::loopback()
    }
}

async fn interop_server(server: ServerConfig) -> TestServer {
    TestServer::start(interop_config(server)).await
}
