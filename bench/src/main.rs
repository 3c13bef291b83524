//! `tonic-peer`: the benchmark peer, a plain tonic server of
//! proto/codereview/v1 with the article's semantics (see the crate docs).
//!
//! ```text
//! tonic-peer [--addr HOST:PORT] [--tls-cert PEM --tls-key PEM]
//! ```
//!
//! Listens on `--addr` (default 127.0.0.1:50052; port 0 picks one) and
//! prints `{"msg":"listening","addr":"HOST:PORT"}` on stderr once bound, the
//! line `scripts/bench-peer` waits for. TLS (rustls with ring, as
//! `codereview serve`) when given a certificate and key, so that the static
//! binary carries TLS like ours. Runs until SIGINT or SIGTERM.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::PathBuf;

use codereview_bench::pb::code_review_service_server::CodeReviewServiceServer;
use codereview_bench::service::Peer;
use tokio::signal::unix::{SignalKind, signal};
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Identity, Server, ServerTlsConfig};

struct Flags {
    addr: SocketAddr,
    tls: Option<(PathBuf, PathBuf)>,
}

fn flags() -> Result<Flags, String> {
    let mut addr = "127.0.0.1:50052".to_owned();
    let (mut cert, mut key) = (None, None);
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--addr" => addr = value()?,
            "--tls-cert" => cert = Some(PathBuf::from(value()?)),
            "--tls-key" => key = Some(PathBuf::from(value()?)),
            other => return Err(format!("unknown flag {other:?}")),
        }
    }
    let tls = match (cert, key) {
        (Some(cert), Some(key)) => Some((cert, key)),
        (None, None) => None,
        _ => return Err("--tls-cert and --tls-key go together".into()),
    };
    let addr = addr
        .parse()
        .map_err(|e| format!("bad --addr {addr:?}: {e}"))?;
    Ok(Flags { addr, tls })
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let flags = flags().map_err(|e| format!("tonic-peer: {e}"))?;
    let mut builder = Server::builder();
    if let Some((cert, key)) = &flags.tls {
        let identity = Identity::from_pem(std::fs::read(cert)?, std::fs::read(key)?);
        builder = builder.tls_config(ServerTlsConfig::new().identity(identity))?;
    }
    let incoming = TcpIncoming::bind(flags.addr)?.with_nodelay(Some(true));
    eprintln!(
        r#"{{"msg":"listening","addr":"{}"}}"#,
        incoming.local_addr()?
    );
    let mut terminate = signal(SignalKind::terminate())?;
    let shutdown = async move {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = terminate.recv() => {}
        }
    };
    builder
        .add_service(CodeReviewServiceServer::new(Peer::default()))
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await?;
    Ok(())
}
