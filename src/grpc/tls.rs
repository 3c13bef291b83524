//! TLS with rustls (ring provider, TLS 1.2 and 1.3, ALPN `h2` only): server
//! configurations loaded from PEM files (optionally requiring client
//! certificates), a swappable holder so SIGHUP can reload them while existing
//! connections keep theirs, and the client configuration that verifies the
//! server against a given CA.

use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::sync::watch;
use tokio_rustls::rustls::{
    self, ClientConfig, RootCertStore, ServerConfig,
    crypto::CryptoProvider,
    pki_types::{CertificateDer, PrivateKeyDer},
    server::WebPkiClientVerifier,
};

/// The ALPN protocol we speak.
pub const ALPN_H2: &[u8] = b"h2";

/// A TLS configuration problem, with the file it concerns.
#[derive(Debug)]
pub struct TlsError(pub String);

impl std::fmt::Display for TlsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TlsError {}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

const VERSIONS: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

/// Reads every certificate in a PEM file.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let file =
        File::open(path).map_err(|e| TlsError(format!("cannot open {}: {e}", path.display())))?;
    let certs: Vec<_> = rustls_pemfile::certs(&mut BufReader::new(file))
        .collect::<Result<_, _>>()
        .map_err(|e| {
            TlsError(format!(
                "cannot read certificates from {}: {e}",
                path.display()
            ))
        })?;
    if certs.is_empty() {
        return Err(TlsError(format!(
            "no certificate found in {}",
            path.display()
        )));
    }
    Ok(certs)
}

/// Reads the first private key in a PEM file.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let file =
        File::open(path).map_err(|e| TlsError(format!("cannot open {}: {e}", path.display())))?;
    rustls_pemfile::private_key(&mut BufReader::new(file))
        .map_err(|e| {
            TlsError(format!(
                "cannot read private key from {}: {e}",
                path.display()
            ))
        })?
        .ok_or_else(|| TlsError(format!("no private key found in {}", path.display())))
}

fn root_store(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(path)? {
        roots
            .add(cert)
            .map_err(|e| TlsError(format!("bad CA certificate in {}: {e}", path.display())))?;
    }
    Ok(roots)
}

/// Where the server's TLS material comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerTlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// When set, clients must present a certificate signed by this CA.
    pub client_ca: Option<PathBuf>,
}

impl ServerTlsFiles {
    /// Builds a rustls server configuration from the files.
    pub fn load(&self) -> Result<Arc<ServerConfig>, TlsError> {
        let provider = provider();
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(VERSIONS)
            .map_err(|e| TlsError(format!("TLS setup: {e}")))?;
        let builder = match &self.client_ca {
            Some(ca) => {
                let verifier = WebPkiClientVerifier::builder_with_provider(
                    Arc::new(root_store(ca)?),
                    provider,
                )
                .build()
                .map_err(|e| TlsError(format!("client CA {}: {e}", ca.display())))?;
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let mut config = builder
            .with_single_cert(load_certs(&self.cert)?, load_key(&self.key)?)
            .map_err(|e| {
                TlsError(format!(
                    "certificate {} / key {}: {e}",
                    self.cert.display(),
                    self.key.display()
                ))
            })?;
        config.alpn_protocols = vec![ALPN_H2.to_vec()];
        Ok(Arc::new(config))
    }
}

/// The server's current TLS configuration; replaced on reload, read by each
/// new connection (existing connections keep the one they started with).
#[derive(Debug, Clone)]
pub struct TlsSource {
    rx: watch::Receiver<Arc<ServerConfig>>,
}

/// Replaces the configuration a [`TlsSource`] hands out.
#[derive(Debug)]
pub struct TlsReloader {
    files: ServerTlsFiles,
    tx: watch::Sender<Arc<ServerConfig>>,
}

impl TlsSource {
    pub fn new(files: ServerTlsFiles) -> Result<(TlsSource, TlsReloader), TlsError> {
        let (tx, rx) = watch::channel(files.load()?);
        Ok((TlsSource { rx }, TlsReloader { files, tx }))
    }

    pub fn current(&self) -> Arc<ServerConfig> {
        self.rx.borrow().clone()
    }
}

impl TlsReloader {
    /// Re-reads the files; on error the old configuration stays in place.
    pub fn reload(&self) -> Result<(), TlsError> {
        let config = self.files.load()?;
        self.tx.send_replace(config);
        Ok(())
    }
}

/// What a client needs to verify the server (and optionally prove itself).
#[derive(Debug, Clone, Default)]
pub struct ClientTlsFiles {
    /// The CA that signed the server's certificate.
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

impl ClientTlsFiles {
    pub fn load(&self) -> Result<Arc<ClientConfig>, TlsError> {
        let ca = self.ca.as_ref().ok_or_else(|| {
            TlsError(
                "https needs --ca FILE: the CA certificate that signed the server's certificate"
                    .into(),
            )
        })?;
        let builder = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(VERSIONS)
            .map_err(|e| TlsError(format!("TLS setup: {e}")))?
            .with_root_certificates(root_store(ca)?);
        let mut config = match (&self.cert, &self.key) {
            (Some(cert), Some(key)) => builder
                .with_client_auth_cert(load_certs(cert)?, load_key(key)?)
                .map_err(|e| TlsError(format!("client certificate {}: {e}", cert.display())))?,
            (None, None) => builder.with_no_client_auth(),
            _ => return Err(TlsError("--cert and --key go together".into())),
        };
        config.alpn_protocols = vec![ALPN_H2.to_vec()];
        Ok(Arc::new(config))
    }
}

/// The verified client certificate chain of a TLS connection, attached to
/// every request head on it.
#[derive(Debug, Clone)]
pub struct PeerCertificates(pub Arc<Vec<CertificateDer<'static>>>);
