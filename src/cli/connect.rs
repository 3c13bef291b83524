//! What every client command shares: the server address, TLS settings and
//! credentials, turned into a connected channel with one-line errors.
//!
//! Setting up (parsing the address, loading the TLS files, reading the token
//! file) is apart from connecting: a setup mistake is reported at once as a
//! [`FailureKind::Setup`] error (exit status 2), never retried, while a
//! connection that fails is a [`FailureKind::Runtime`] error (exit status 1).

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::grpc::client::{Channel, ChannelConfig, Endpoint};
use crate::grpc::compression::Encoding;
use crate::grpc::tls::ClientTlsFiles;
use crate::grpc::{Code, Metadata, Status};

/// The connection flags of a client command.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    pub addr: String,
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub token: Option<String>,
    pub token_file: Option<PathBuf>,
    pub connect_timeout: Duration,
    /// Send large messages gzip-compressed (`--compress`). Responses are
    /// accepted compressed either way.
    pub compress: bool,
}

/// Whether a failure is the user's setup (flags, files, addresses: nothing
/// was asked of a server, and trying again cannot help) or happened while
/// running (a connection, a server's refusal).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    Setup,
    Runtime,
}

/// A client-side failure, printed as one line.
#[derive(Debug)]
pub struct ClientError {
    pub message: String,
    pub kind: FailureKind,
}

impl ClientError {
    /// A mistake in the flags or files: exit status 2.
    pub fn setup(message: impl Into<String>) -> ClientError {
        ClientError {
            message: message.into(),
            kind: FailureKind::Setup,
        }
    }

    /// A failure while running: exit status 1.
    pub fn runtime(message: impl Into<String>) -> ClientError {
        ClientError {
            message: message.into(),
            kind: FailureKind::Runtime,
        }
    }

    /// The process exit status this failure calls for.
    pub fn exit_code(&self) -> i32 {
        match self.kind {
            FailureKind::Setup => super::EXIT_USAGE,
            FailureKind::Runtime => super::EXIT_FAILURE,
        }
    }
}

impl std::fmt::Display for ClientError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl From<Status> for ClientError {
    fn from(status: Status) -> Self {
        ClientError::runtime(describe(&status))
    }
}

/// A status as one readable line.
pub fn describe(status: &Status) -> String {
    if refused_plaintext(status) {
        return format!(
            "{}: the server speaks TLS on this port and refused plaintext HTTP/2: {}",
            status.code().name(),
            super::tls_probe::USE_HTTPS
        );
    }
    if status.message().is_empty() {
        status.code().name().to_owned()
    } else {
        format!("{}: {}", status.code().name(), status.message())
    }
}

/// Whether the server ended the connection with INADEQUATE_SECURITY, which a
/// TLS server answers to plaintext HTTP/2 (gRPC maps it to PERMISSION_DENIED;
/// alone, "security properties do not meet minimum requirements" tells a
/// person nothing about what to change).
fn refused_plaintext(status: &Status) -> bool {
    status.code() == Code::PermissionDenied
        && status
            .message()
            .ends_with(&h2::Reason::INADEQUATE_SECURITY.to_string())
}

/// Reads a token file (trimmed).
pub fn read_token_file(path: &Path) -> Result<String, ClientError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ClientError::setup(format!("cannot read token file {}: {e}", path.display()))
    })?;
    let token = text.trim().to_owned();
    if token.is_empty() {
        return Err(ClientError::setup(format!(
            "token file {} is empty",
            path.display()
        )));
    }
    Ok(token)
}

/// Everything needed to connect, checked: the parsed address, the loaded TLS
/// configuration and where the token comes from.
#[derive(Debug, Clone)]
pub struct Connector {
    options: ClientOptions,
    endpoint: Endpoint,
    config: ChannelConfig,
}

impl ClientOptions {
    pub fn endpoint(&self) -> Result<Endpoint, ClientError> {
        Endpoint::parse(&self.addr).map_err(ClientError::setup)
    }

    /// The current bearer token, if any (the file is read each time, so a
    /// refreshed file is picked up).
    pub fn token(&self) -> Result<Option<String>, ClientError> {
        match (&self.token, &self.token_file) {
            (Some(_), Some(_)) => Err(ClientError::setup("--token and --token-file are exclusive")),
            (Some(token), None) => Ok(Some(token.clone())),
            (None, Some(path)) => read_token_file(path).map(Some),
            (None, None) => Ok(None),
        }
    }

    fn channel_config(&self, endpoint: &Endpoint) -> Result<ChannelConfig, ClientError> {
        let tls = if endpoint.tls {
            let files = ClientTlsFiles {
                ca: self.ca.clone(),
                cert: self.cert.clone(),
                key: self.key.clone(),
            };
            Some(
                files
                    .load()
                    .map_err(|e| ClientError::setup(e.to_string()))?,
            )
        } else {
            if self.ca.is_some() || self.cert.is_some() {
                return Err(ClientError::setup(format!(
                    "--ca/--cert need an https:// address (got {})",
                    self.addr
                )));
            }
            None
        };
        Ok(ChannelConfig {
            tls,
            connect_timeout: self.connect_timeout,
            send_encoding: if self.compress {
                Encoding::Gzip
            } else {
                Encoding::Identity
            },
            ..ChannelConfig::default()
        })
    }

    /// Checks the flags and loads the files: every setup mistake surfaces
    /// here, before any connection is tried.
    pub fn prepare(&self) -> Result<Connector, ClientError> {
        let endpoint = self.endpoint()?;
        let config = self.channel_config(&endpoint)?;
        self.token()?;
        Ok(Connector {
            options: self.clone(),
            endpoint,
            config,
        })
    }

    /// Prepares, connects and attaches the credentials to every call.
    pub async fn connect(&self) -> Result<Channel, ClientError> {
        self.prepare()?.connect().await
    }
}

impl Connector {
    /// Connects and attaches the credentials (the token file is read again,
    /// so a refreshed token is used).
    pub async fn connect(&self) -> Result<Channel, ClientError> {
        let mut channel = Channel::connect(&self.endpoint, &self.config).await?;
        if let Some(token) = self.options.token()? {
            set_bearer(channel.default_metadata_mut(), &token)?;
        }
        Ok(channel)
    }
}

/// Sets `authorization: Bearer <token>`.
pub fn set_bearer(metadata: &mut Metadata, token: &str) -> Result<(), ClientError> {
    metadata
        .append("authorization", &format!("Bearer {token}"))
        .map_err(|_| ClientError::setup("the token contains characters not allowed in a header"))
}

/// The argh flag block shared by client commands, as a macro so each command
/// keeps one flat struct (argh has no flattening).
macro_rules! client_flags {
    (
        $(#[$meta:meta])*
        pub struct $name:ident { $($body:tt)* }
    ) => {
        $(#[$meta])*
        pub struct $name {
            /// server address: http://HOST:PORT or https://HOST:PORT (default http://127.0.0.1:50051)
            #[argh(option, default = "String::from(\"http://127.0.0.1:50051\")")]
            pub addr: String,
            /// PEM CA certificate that signed the server's certificate (https)
            #[argh(option)]
            pub ca: Option<std::path::PathBuf>,
            /// PEM client certificate (mTLS)
            #[argh(option)]
            pub cert: Option<std::path::PathBuf>,
            /// PEM private key of --cert
            #[argh(option)]
            pub key: Option<std::path::PathBuf>,
            /// bearer token
            #[argh(option)]
            pub token: Option<String>,
            /// file holding the bearer token (re-read when the token is refreshed)
            #[argh(option)]
            pub token_file: Option<std::path::PathBuf>,
            /// send large messages gzip-compressed (responses are accepted compressed either way)
            #[argh(switch)]
            pub compress: bool,
            $($body)*
        }

        impl $name {
            pub fn client_options(&self) -> crate::cli::connect::ClientOptions {
                crate::cli::connect::ClientOptions {
                    addr: self.addr.clone(),
                    ca: self.ca.clone(),
                    cert: self.cert.clone(),
                    key: self.key.clone(),
                    token: self.token.clone(),
                    token_file: self.token_file.clone(),
                    connect_timeout: std::time::Duration::from_secs(10),
                    compress: self.compress,
                }
            }
        }
    };
}
pub(crate) use client_flags;
