//! Telling a person that the server speaks TLS when they connected in
//! plaintext.
//!
//! A TLS port answers plaintext HTTP/2 in ways that say nothing useful: our
//! server sends GOAWAY INADEQUATE_SECURITY (gRPC's PERMISSION_DENIED,
//! "security properties do not meet minimum requirements"), and that frame
//! can be lost when the connection closes under the client's unread request;
//! other TLS servers just drop the connection. So when a plaintext command
//! fails that way, [`explain`] asks the port itself: a TLS ClientHello that
//! gets a certificate back proves it speaks TLS. The probe trusts no
//! certificate (an empty root store), sends nothing after the handshake, and
//! runs only on that failure path, bounded by [`PROBE_TIMEOUT`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore, pki_types::ServerName};

use super::connect::{ClientError, ClientOptions, FailureKind};
use crate::grpc::client::Endpoint;

/// How long the probe may take (connect and handshake).
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// What to do instead, said once for every command.
pub const USE_HTTPS: &str =
    "use an https:// address and --ca FILE (the CA that signed its certificate)";

/// Whether a failure looks like a TLS port refusing plaintext: the server
/// ended the connection at once, rather than being unreachable or answering
/// with a status of its own.
fn looks_like_a_refusal(message: &str) -> bool {
    let dropped = [
        "PERMISSION_DENIED: stream reset by peer",
        "UNAVAILABLE: connection error",
        "UNAVAILABLE: the request stream was closed by the server",
        "HTTP/2 handshake failed",
        "connection closed by peer",
    ];
    !message.contains(USE_HTTPS) && dropped.iter().any(|d| message.contains(d))
}

/// Rewrites a plaintext command's failure when the port turns out to speak
/// TLS; any other error is returned as it is.
pub async fn explain(options: &ClientOptions, error: ClientError) -> ClientError {
    if error.kind != FailureKind::Runtime || !looks_like_a_refusal(&error.message) {
        return error;
    }
    match options.endpoint() {
        Ok(endpoint) if !endpoint.tls && speaks_tls(&endpoint).await => {
            ClientError::runtime(format!(
                "UNAVAILABLE: the server speaks TLS on this port and dropped the plaintext connection: {USE_HTTPS}"
            ))
        }
        _ => error,
    }
}

/// Whether `endpoint`'s port completes a TLS handshake as far as showing a
/// certificate.
pub async fn speaks_tls(endpoint: &Endpoint) -> bool {
    tokio::time::timeout(PROBE_TIMEOUT, probe(endpoint))
        .await
        .unwrap_or(false)
}

async fn probe(endpoint: &Endpoint) -> bool {
    let Some(addr) = address(endpoint).await else {
        return false;
    };
    let Ok(tcp) = TcpStream::connect(addr).await else {
        return false;
    };
    let Ok(name) = ServerName::try_from(endpoint.host.clone()) else {
        return false;
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let Ok(builder) =
        ClientConfig::builder_with_provider(provider).with_safe_default_protocol_versions()
    else {
        return false;
    };
    let mut config = builder
        .with_root_certificates(RootCertStore::empty())
        .with_no_client_auth();
    config.alpn_protocols = vec![crate::grpc::tls::ALPN_H2.to_vec()];
    match TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
    {
        // Trusting nothing, the handshake can only get as far as refusing
        // the server's certificate: that is the proof.
        Ok(_) => true,
        Err(error) => error
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
            .is_some_and(|e| matches!(e, rustls::Error::InvalidCertificate(_))),
    }
}

/// The first address of the endpoint (IP addresses and `localhost` without
/// a resolver, as the client itself does).
async fn address(endpoint: &Endpoint) -> Option<SocketAddr> {
    if let Ok(ip) = endpoint.host.parse::<std::net::IpAddr>() {
        return Some(SocketAddr::new(ip, endpoint.port));
    }
    if endpoint.host.eq_ignore_ascii_case("localhost") {
        return Some(SocketAddr::from(([127, 0, 0, 1], endpoint.port)));
    }
    tokio::net::lookup_host((endpoint.host.as_str(), endpoint.port))
        .await
        .ok()?
        .next()
}
