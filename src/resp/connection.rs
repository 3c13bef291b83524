//! One connection to Redis: TCP or TLS (rustls), logged in and on its
//! database, then commands written and their replies read in order.
//!
//! A connection does one thing at a time (a caller that needs two at once
//! opens two). Any failure on it (the socket, a reply that cannot be read)
//! is an [`Error::Connection`], after which it must be dropped; so must a
//! connection whose `send`, `query` or `pipeline` was abandoned (a deadline):
//! where it stopped is not known. `receive` alone may be abandoned and
//! called again (what was read stays in the connection). A refused command
//! is an [`Error::Refused`] and leaves the connection usable, except the
//! refusals that mean this server cannot serve us as it is (a replica after
//! a failover, a server still loading, a login gone): those are
//! `Error::Connection`, so the caller connects again.

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};

use super::endpoint::Endpoint;
use super::value::{Command, Decoder, Value};

/// Read room added before each read from the socket.
const READ_CHUNK: usize = 16 * 1024;
/// A read buffer left larger than this by a big reply is let go once empty.
const KEEP_READ_BUFFER: usize = 1024 * 1024;
/// Error replies that mean: connect again (to whatever the name now points
/// at), not: this command was wrong.
const RECONNECT_ON: &[&str] = &["READONLY", "LOADING", "MASTERDOWN", "NOAUTH", "WRONGPASS"];

/// Where the system's CA certificates usually are, when `SSL_CERT_FILE`
/// does not say (Debian/Ubuntu, Fedora/RHEL, openSUSE, Alpine).
const SYSTEM_ROOTS: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/ca-bundle.pem",
    "/etc/ssl/cert.pem",
];

/// Why Redis did not answer as asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// The connection failed or cannot be trusted any more: drop it.
    Connection(String),
    /// Redis refused the command (an error reply); the connection is fine.
    Refused(String),
    /// The reply was past the decoder's bounds: drop the connection (it
    /// stopped mid-reply), but Redis itself answered; asking for less can
    /// work.
    TooBig(String),
}

impl Error {
    /// Redis cannot be reached or cannot serve us as it is.
    pub fn is_connection(&self) -> bool {
        matches!(self, Error::Connection(_))
    }

    /// The connection is unusable after this error.
    pub fn drops_connection(&self) -> bool {
        matches!(self, Error::Connection(_) | Error::TooBig(_))
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Connection(why) | Error::TooBig(why) => f.write_str(why),
            Error::Refused(why) => write!(f, "Redis refused: {why}"),
        }
    }
}

fn connection_error(what: &str, error: impl std::fmt::Display) -> Error {
    Error::Connection(format!("{what}: {error}"))
}

/// How to open connections to one Redis (cheap to clone).
#[derive(Clone)]
pub struct Client {
    endpoint: Arc<Endpoint>,
    tls: Option<TlsConnector>,
}

impl Client {
    /// For `endpoint`; a `rediss://` one trusts `ca_pem` (PEM
    /// certificates), or without it the system's CA certificates.
    pub fn new(endpoint: Endpoint, ca_pem: Option<&[u8]>) -> Result<Client, String> {
        let tls = match endpoint.tls {
            false => None,
            true => Some(TlsConnector::from(Arc::new(tls_config(ca_pem)?))),
        };
        Ok(Client {
            endpoint: Arc::new(endpoint),
            tls,
        })
    }

    /// Connects, logs in and selects the database, all within `timeout`.
    pub async fn connect(&self, timeout: Duration) -> Result<Connection, Error> {
        match tokio::time::timeout(timeout, self.open()).await {
            Ok(result) => result,
            Err(_) => Err(Error::Connection(format!(
                "connecting to Redis took longer than {timeout:?}"
            ))),
        }
    }

    async fn open(&self) -> Result<Connection, Error> {
        let endpoint = &self.endpoint;
        let tcp = TcpStream::connect((endpoint.host.as_str(), endpoint.port))
            .await
            .map_err(|e| {
                connection_error(
                    &format!("connecting to {}:{}", endpoint.host, endpoint.port),
                    e,
                )
            })?;
        let _ = tcp.set_nodelay(true);
        let stream = match &self.tls {
            None => Stream::Plain(tcp),
            Some(connector) => {
                let name = ServerName::try_from(endpoint.host.clone())
                    .map_err(|e| connection_error("the TLS server name", e))?;
                let tls = connector
                    .connect(name, tcp)
                    .await
                    .map_err(|e| connection_error("the TLS handshake with Redis", e))?;
                Stream::Tls(Box::new(tls))
            }
        };
        let mut connection = Connection {
            stream,
            read: BytesMut::new(),
            decoder: Decoder::new(),
            write: Vec::new(),
        };
        let mut hello = Vec::new();
        if let Some(password) = &endpoint.password {
            let mut auth = Command::new("AUTH");
            if let Some(user) = &endpoint.username {
                auth.arg(user);
            }
            auth.arg(password);
            hello.push(auth);
        }
        if endpoint.db != 0 {
            let mut select = Command::new("SELECT");
            select.arg(u64::from(endpoint.db));
            hello.push(select);
        }
        // A refused login or database makes the connection useless.
        connection.send(&hello).await?;
        for _ in &hello {
            if let Value::Error(why) = connection.receive().await? {
                return Err(Error::Connection(format!("Redis refused the login: {why}")));
            }
        }
        Ok(connection)
    }
}

/// The client side of TLS, with the roots to trust.
fn tls_config(ca_pem: Option<&[u8]>) -> Result<ClientConfig, String> {
    let (pem, source) = match ca_pem {
        Some(pem) => (pem.to_vec(), "--redis-ca".to_string()),
        None => system_roots()?,
    };
    let mut roots = RootCertStore::empty();
    let certs: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{source}: {e}"))?;
    let (added, _) = roots.add_parsable_certificates(certs);
    if added == 0 {
        return Err(format!("{source}: no CA certificate in it"));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| format!("TLS setup: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// The system's CA certificates: `SSL_CERT_FILE`, else the first bundle
/// with a certificate in it where distributions keep one.
fn system_roots() -> Result<(Vec<u8>, String), String> {
    if let Some(path) = std::env::var_os("SSL_CERT_FILE") {
        let shown = path.to_string_lossy().into_owned();
        return std::fs::read(&path)
            .map(|pem| (pem, format!("SSL_CERT_FILE {shown}")))
            .map_err(|e| format!("SSL_CERT_FILE {shown}: {e}"));
    }
    SYSTEM_ROOTS
        .iter()
        .filter_map(|path| std::fs::read(path).ok().map(|pem| (pem, path.to_string())))
        .find(|(pem, _)| {
            rustls_pemfile::certs(&mut pem.as_slice()).any(|cert| cert.is_ok())
        })
        .ok_or_else(|| {
            format!(
                "rediss:// needs CA certificates: none at {} and no SSL_CERT_FILE; give --redis-ca FILE",
                SYSTEM_ROOTS.join(", ")
            )
        })
}

/// An error reply as an error: most say the command was refused; some say
/// this connection cannot serve us (see the module doc).
fn refusal(why: String) -> Error {
    let code = why.split(' ').next().unwrap_or_default();
    if RECONNECT_ON.contains(&code) {
        Error::Connection(format!("Redis refused: {why}"))
    } else {
        Error::Refused(why)
    }
}

enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

/// An open connection (see the module doc).
pub struct Connection {
    stream: Stream,
    read: BytesMut,
    decoder: Decoder,
    write: Vec<u8>,
}

impl Connection {
    /// Runs one command.
    pub async fn query(&mut self, command: &Command) -> Result<Value, Error> {
        self.send(std::slice::from_ref(command)).await?;
        match self.receive().await? {
            Value::Error(why) => Err(refusal(why)),
            value => Ok(value),
        }
    }

    /// Runs commands in one write, and reads a reply for each; the first
    /// error reply, if any, is the outcome.
    pub async fn pipeline(&mut self, commands: &[Command]) -> Result<Vec<Value>, Error> {
        self.send(commands).await?;
        let mut replies = Vec::with_capacity(commands.len());
        for _ in commands {
            replies.push(self.receive().await?);
        }
        match replies.iter().find_map(|r| match r {
            Value::Error(why) => Some(why.clone()),
            _ => None,
        }) {
            Some(why) => Err(refusal(why)),
            None => Ok(replies),
        }
    }

    /// Writes commands (flushed) without reading anything.
    pub async fn send(&mut self, commands: &[Command]) -> Result<(), Error> {
        self.write.clear();
        for command in commands {
            command.encode(&mut self.write);
        }
        let written = match &mut self.stream {
            Stream::Plain(tcp) => tcp.write_all(&self.write).await,
            Stream::Tls(tls) => match tls.write_all(&self.write).await {
                Ok(()) => tls.flush().await,
                Err(e) => Err(e),
            },
        };
        if self.write.capacity() > 1024 * 1024 {
            self.write = Vec::new();
        }
        written.map_err(|e| connection_error("writing to Redis", e))
    }

    /// The next value Redis sends (a reply, or a pub/sub message).
    pub async fn receive(&mut self) -> Result<Value, Error> {
        loop {
            if let Some(value) =
                self.decoder
                    .decode(&mut self.read)
                    .map_err(|e| match e.is_too_big() {
                        true => Error::TooBig(e.to_string()),
                        false => Error::Connection(e.to_string()),
                    })?
            {
                if self.read.is_empty() && self.read.capacity() > KEEP_READ_BUFFER {
                    self.read = BytesMut::new();
                }
                return Ok(value);
            }
            self.read.reserve(READ_CHUNK);
            let read = match &mut self.stream {
                Stream::Plain(tcp) => tcp.read_buf(&mut self.read).await,
                Stream::Tls(tls) => tls.read_buf(&mut self.read).await,
            };
            match read {
                Ok(0) => return Err(Error::Connection("Redis closed the connection".into())),
                Ok(_) => {}
                Err(e) => return Err(connection_error("reading from Redis", e)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_that_mean_connect_again_fail_the_connection() {
        for why in [
            "READONLY You can't write against a read only replica.",
            "LOADING Redis is loading the dataset in memory",
            "MASTERDOWN Link with MASTER is down",
            "NOAUTH Authentication required.",
            "WRONGPASS invalid username-password pair",
        ] {
            assert!(refusal(why.into()).is_connection(), "{why}");
        }
        for why in [
            "ERR unknown command",
            "OOM command not allowed when used memory > 'maxmemory'.",
            "WRONGTYPE Operation against a key holding the wrong kind of value",
            "READONLYISH not a code we know",
        ] {
            assert_eq!(refusal(why.into()), Error::Refused(why.into()));
        }
    }
}
