//! The client side on the same codec: a [`Channel`] is one HTTP/2 connection
//! (plaintext h2c with prior knowledge, or TLS with ALPN h2), and a
//! [`ClientCall`] is one call on it, of any of the four kinds. Deadlines are
//! sent as `grpc-timeout` and enforced locally too; send capacity is awaited
//! before writing, as on the server. Every call accepts gzip responses
//! (`grpc-accept-encoding: gzip, identity`); a channel configured with
//! [`ChannelConfig::send_encoding`] gzip compresses its large requests.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use h2::client::{ResponseFuture, SendRequest};
use h2::{Ping, SendStream};
use http::{HeaderValue, Method, Uri};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep, timeout};
use tokio_rustls::rustls::ClientConfig;
use tokio_rustls::rustls::pki_types::ServerName;

use super::codec::{self, DEFAULT_MAX_RECV_MESSAGE};
use super::compression::{self, Encoding};
use super::inbound::Inbound;
use super::metadata::Metadata;
use super::outbound::{OutboundQueue, WriteError};
use super::status::{Code, Status};
use super::timeout as grpc_timeout;

/// Where to connect: `http://host:port`, `https://host:port` or `host:port`
/// (plaintext).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub tls: bool,
    pub host: String,
    pub port: u16,
}

impl Endpoint {
    pub fn parse(text: &str) -> Result<Endpoint, String> {
        let (tls, rest) = if let Some(rest) = text.strip_prefix("https://") {
            (true, rest)
        } else if let Some(rest) = text.strip_prefix("http://") {
            (false, rest)
        } else if text.contains("://") {
            return Err(format!(
                "bad address {text:?}: the scheme must be http:// or https://"
            ));
        } else {
            (false, text)
        };
        let rest = rest.trim_end_matches('/');
        let (host, port) = if let Some(bracketed) = rest.strip_prefix('[') {
            let (host, after) = bracketed
                .split_once(']')
                .ok_or_else(|| format!("bad address {text:?}: unclosed '['"))?;
            (host, after.strip_prefix(':'))
        } else {
            match rest.rsplit_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (rest, None),
            }
        };
        if host.is_empty() {
            return Err(format!("bad address {text:?}: no host"));
        }
        let port = match port {
            Some(port) => port
                .parse::<u16>()
                .map_err(|_| format!("bad address {text:?}: port must be a number 1-65535"))?,
            None => {
                if tls {
                    443
                } else {
                    80
                }
            }
        };
        if port == 0 {
            return Err(format!("bad address {text:?}: port must be 1-65535"));
        }
        Ok(Endpoint {
            tls,
            host: host.to_owned(),
            port,
        })
    }

    fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scheme = if self.tls { "https" } else { "http" };
        write!(f, "{scheme}://{}", self.authority())
    }
}

/// The addresses of an endpoint. IP literals and `localhost` need no
/// resolver (the static binary may run where glibc's NSS is unavailable, e.g.
/// a `FROM scratch` container); other names go to the system resolver.
async fn resolve(endpoint: &Endpoint) -> Result<Vec<SocketAddr>, Status> {
    if let Ok(ip) = endpoint.host.parse::<std::net::IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, endpoint.port)]);
    }
    if endpoint.host.eq_ignore_ascii_case("localhost") {
        return Ok(vec![
            SocketAddr::from(([127, 0, 0, 1], endpoint.port)),
            SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, endpoint.port)),
        ]);
    }
    Ok(
        tokio::net::lookup_host((endpoint.host.as_str(), endpoint.port))
            .await
            .map_err(|e| connect_error(endpoint, format!("cannot resolve host: {e}")))?
            .collect(),
    )
}

/// Client connection settings.
#[derive(Debug, Clone)]
pub struct ChannelConfig {
    /// Required for `https://` endpoints.
    pub tls: Option<Arc<ClientConfig>>,
    pub connect_timeout: Duration,
    /// Keepalive PING interval (zero disables) and how long to wait for the
    /// answer before the connection is considered dead.
    pub keepalive_interval: Duration,
    pub keepalive_timeout: Duration,
    pub initial_stream_window: u32,
    pub initial_connection_window: u32,
    pub max_recv_message_bytes: usize,
    /// How requests are encoded: gzip compresses each message of at least
    /// [`compression::COMPRESS_THRESHOLD`] bytes (default identity).
    pub send_encoding: Encoding,
}

impl Default for ChannelConfig {
    fn default() -> Self {
        ChannelConfig {
            tls: None,
            connect_timeout: Duration::from_secs(10),
            keepalive_interval: Duration::from_secs(20),
            keepalive_timeout: Duration::from_secs(10),
            initial_stream_window: 1024 * 1024,
            initial_connection_window: 4 * 1024 * 1024,
            max_recv_message_bytes: DEFAULT_MAX_RECV_MESSAGE,
            send_encoding: Encoding::Identity,
        }
    }
}

/// One HTTP/2 connection to a server. Cheap to clone; calls multiplex on it.
#[derive(Clone)]
pub struct Channel {
    send_request: SendRequest<Bytes>,
    scheme: &'static str,
    authority: String,
    max_recv_message_bytes: usize,
    send_encoding: Encoding,
    default_metadata: Metadata,
    driver: Arc<DriverGuard>,
}

/// Stops the connection task when the last channel clone is dropped.
struct DriverGuard(JoinHandle<()>);

impl Drop for DriverGuard {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl std::fmt::Debug for Channel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Channel")
            .field("authority", &self.authority)
            .finish()
    }
}

/// Options of one call.
#[derive(Debug, Clone, Default)]
pub struct CallOptions {
    pub metadata: Metadata,
    pub timeout: Option<Duration>,
}

impl CallOptions {
    pub fn timeout(timeout: Duration) -> Self {
        CallOptions {
            timeout: Some(timeout),
            ..CallOptions::default()
        }
    }
}

fn connect_error(endpoint: &Endpoint, what: impl std::fmt::Display) -> Status {
    Status::unavailable(format!("cannot connect to {endpoint}: {what}"))
}

impl Channel {
    /// Connects (TCP, then TLS for https, then the HTTP/2 handshake).
    pub async fn connect(endpoint: &Endpoint, config: &ChannelConfig) -> Result<Channel, Status> {
        let connect = async {
            let addrs = resolve(endpoint).await?;
            let mut last_error = None;
            for addr in addrs {
                match TcpStream::connect(addr).await {
                    Ok(tcp) => {
                        let _ = tcp.set_nodelay(true);
                        return Ok(tcp);
                    }
                    Err(e) => last_error = Some(e),
                }
            }
            Err(match last_error {
                Some(e) => connect_error(endpoint, e),
                None => connect_error(endpoint, "host has no address"),
            })
        };
        let tcp = timeout(config.connect_timeout, connect)
            .await
            .map_err(|_| connect_error(endpoint, "timed out"))??;
        let driver;
        let send_request;
        if endpoint.tls {
            let tls_config = config.tls.clone().ok_or_else(|| {
                Status::invalid_argument(format!("{endpoint} needs TLS settings (--ca FILE)"))
            })?;
            let name = ServerName::try_from(endpoint.host.clone())
                .map_err(|_| connect_error(endpoint, "invalid TLS server name"))?;
            let connector = tokio_rustls::TlsConnector::from(tls_config);
            let tls = timeout(config.connect_timeout, connector.connect(name, tcp))
                .await
                .map_err(|_| connect_error(endpoint, "TLS handshake timed out"))?
                .map_err(|e| {
                    Status::unavailable(format!("TLS handshake with {endpoint} failed: {e}"))
                })?;
            (send_request, driver) = handshake(tls, endpoint, config).await?;
        } else {
            (send_request, driver) = handshake(tcp, endpoint, config).await?;
        }
        Ok(Channel {
            send_request,
            scheme: if endpoint.tls { "https" } else { "http" },
            authority: endpoint.authority(),
            max_recv_message_bytes: config.max_recv_message_bytes,
            send_encoding: config.send_encoding,
            default_metadata: Metadata::new(),
            driver: Arc::new(DriverGuard(driver)),
        })
    }

    /// Metadata sent with every call on this channel (e.g. `authorization`).
    pub fn default_metadata_mut(&mut self) -> &mut Metadata {
        &mut self.default_metadata
    }

    /// Whether the connection is still up.
    pub fn is_closed(&self) -> bool {
        self.driver.0.is_finished()
    }

    /// Starts a call of any kind. Send messages with [`ClientCall::send`],
    /// half-close with [`ClientCall::close_send`], read with
    /// [`ClientCall::message`].
    pub async fn start(&self, path: &str, options: CallOptions) -> Result<ClientCall, Status> {
        let uri = Uri::builder()
            .scheme(self.scheme)
            .authority(self.authority.as_str())
            .path_and_query(path)
            .build()
            .map_err(|e| Status::internal(format!("bad method path {path:?}: {e}")))?;
        let mut request = http::Request::new(());
        *request.method_mut() = Method::POST;
        *request.uri_mut() = uri;
        let headers = request.headers_mut();
        headers.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
        headers.insert(http::header::TE, HeaderValue::from_static("trailers"));
        headers.insert(
            http::header::USER_AGENT,
            HeaderValue::from_static(concat!("codereview/", env!("CARGO_PKG_VERSION"))),
        );
        headers.insert(
            "grpc-accept-encoding",
            HeaderValue::from_static(compression::ACCEPT_ENCODING),
        );
        if self.send_encoding != Encoding::Identity {
            headers.insert(
                "grpc-encoding",
                HeaderValue::from_static(self.send_encoding.name()),
            );
        }
        let deadline = options.timeout.map(|t| Instant::now() + t);
        if let Some(t) = options.timeout
            && let Ok(value) = HeaderValue::from_str(&grpc_timeout::format(t))
        {
            headers.insert("grpc-timeout", value);
        }
        self.default_metadata.write_into(headers);
        options.metadata.write_into(headers);

        let ready = async {
            self.send_request
                .clone()
                .ready()
                .await
                .map_err(|e| Status::from_h2(&e))
        };
        let mut send_request = match deadline {
            Some(deadline) => tokio::time::timeout_at(deadline, ready)
                .await
                .map_err(|_| {
                    Status::deadline_exceeded("deadline exceeded before the call started")
                })??,
            None => ready.await?,
        };
        let (response, send) = send_request
            .send_request(request, false)
            .map_err(|e| Status::from_h2(&e))?;
        Ok(ClientCall {
            sender: CallSender {
                send: Some(send),
                outbound: OutboundQueue::new(),
                encoding: self.send_encoding,
                deadline,
            },
            receiver: CallReceiver {
                response: Some(response),
                body: None,
                max_recv_message_bytes: self.max_recv_message_bytes,
                headers: None,
                status: None,
                deadline,
            },
        })
    }

    /// A unary call.
    pub async fn unary<Req: prost::Message, Resp: prost::Message + Default>(
        &self,
        path: &str,
        request: &Req,
        options: CallOptions,
    ) -> Result<Resp, Status> {
        let mut call = self.start(path, options).await?;
        if let Err(send_error) = call.send(request).await {
            // The server may have ended the call already; its status explains
            // the failure better than the broken send does.
            return Err(call.message::<Resp>().await.err().unwrap_or(send_error));
        }
        call.close_send();
        let response = call.message::<Resp>().await?;
        match response {
            Some(message) => {
                // Drain to the trailers so a late error status is not missed.
                if call.message::<Resp>().await?.is_some() {
                    return Err(Status::internal(
                        "unary call returned more than one message",
                    ));
                }
                Ok(message)
            }
            None => Err(Status::internal("unary call returned no message")),
        }
    }
}

async fn handshake<T>(
    io: T,
    endpoint: &Endpoint,
    config: &ChannelConfig,
) -> Result<(SendRequest<Bytes>, JoinHandle<()>), Status>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (send_request, mut connection) = h2::client::Builder::new()
        .initial_window_size(config.initial_stream_window)
        .initial_connection_window_size(config.initial_connection_window)
        .max_frame_size(16 * 1024)
        .max_header_list_size(16 * 1024)
        .enable_push(false)
        .handshake::<T, Bytes>(io)
        .await
        .map_err(|e| connect_error(endpoint, format!("HTTP/2 handshake failed: {e}")))?;
    let ping_pong = connection.ping_pong();
    let interval = config.keepalive_interval;
    let ping_timeout = config.keepalive_timeout;
    let driver = tokio::spawn(async move {
        let keepalive = async move {
            let Some(mut ping_pong) = ping_pong else {
                return std::future::pending().await;
            };
            if interval.is_zero() {
                return std::future::pending().await;
            }
            loop {
                sleep(interval).await;
                match timeout(ping_timeout, ping_pong.ping(Ping::opaque())).await {
                    Ok(Ok(_)) => continue,
                    _ => return,
                }
            }
        };
        tokio::select! {
            _ = connection => {}
            _ = keepalive => {} // dead peer: dropping the connection fails its calls
        }
    });
    Ok((send_request, driver))
}

/// One call in progress: a sending half and a receiving half, which can be
/// used together or split (to send and receive concurrently).
pub struct ClientCall {
    pub sender: CallSender,
    pub receiver: CallReceiver,
}

/// The sending half of a call.
pub struct CallSender {
    send: Option<SendStream<Bytes>>,
    outbound: OutboundQueue,
    encoding: Encoding,
    deadline: Option<Instant>,
}

/// The receiving half of a call.
pub struct CallReceiver {
    response: Option<ResponseFuture>,
    body: Option<Inbound>,
    max_recv_message_bytes: usize,
    headers: Option<Metadata>,
    status: Option<Status>,
    deadline: Option<Instant>,
}

impl std::fmt::Debug for ClientCall {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientCall")
            .field("status", &self.receiver.status)
            .finish()
    }
}

async fn with_deadline<T>(
    deadline: Option<Instant>,
    future: impl std::future::Future<Output = Result<T, Status>>,
) -> Result<T, Status> {
    match deadline {
        Some(deadline) => tokio::time::timeout_at(deadline, future)
            .await
            .unwrap_or_else(|_| Err(Status::deadline_exceeded("deadline exceeded"))),
        None => future.await,
    }
}

impl ClientCall {
    /// Splits the call so both halves can be used concurrently. Dropping both
    /// before the call ends cancels it (RST_STREAM CANCEL).
    pub fn split(self) -> (CallSender, CallReceiver) {
        (self.sender, self.receiver)
    }

    pub fn queue<M: prost::Message>(&mut self, message: &M) {
        self.sender.queue(message);
    }

    pub async fn flush(&mut self) -> Result<(), Status> {
        self.sender.flush().await
    }

    pub async fn send<M: prost::Message>(&mut self, message: &M) -> Result<(), Status> {
        self.sender.send(message).await
    }

    pub fn close_send(&mut self) {
        self.sender.close_send();
    }

    /// Cancels the call (RST_STREAM CANCEL).
    pub fn cancel(&mut self) {
        self.sender.cancel();
        self.receiver.cancelled();
    }

    pub async fn headers(&mut self) -> Result<&Metadata, Status> {
        self.receiver.headers().await
    }

    pub async fn message<M: prost::Message + Default>(&mut self) -> Result<Option<M>, Status> {
        let result = self.receiver.message().await;
        if let Err(status) = &result
            && status.code() == Code::DeadlineExceeded
        {
            self.sender.cancel();
        }
        result
    }

    pub fn status(&self) -> Option<&Status> {
        self.receiver.status()
    }

    pub fn trailers(&self) -> Option<&Metadata> {
        self.receiver.trailers()
    }
}

impl CallSender {
    /// Queues a message without waiting; [`CallSender::flush`] writes it.
    pub fn queue<M: prost::Message>(&mut self, message: &M) {
        self.queue_framed(codec::encode_message(message));
    }

    /// Queues an already framed (uncompressed) message; it is compressed
    /// here if the channel sends gzip and the message is large enough.
    pub fn queue_framed(&mut self, framed: Bytes) {
        self.outbound
            .push(compression::compress_framed(framed, self.encoding));
    }

    /// Bytes queued and not yet written.
    pub fn pending_bytes(&self) -> usize {
        self.outbound.len()
    }

    /// Writes the queued messages as flow control allows (several messages
    /// ready together go out in one DATA frame). Cancel-safe.
    pub async fn flush(&mut self) -> Result<(), Status> {
        let deadline = self.deadline;
        let Some(send) = self.send.as_mut() else {
            return Err(Status::internal("the request stream is already closed"));
        };
        let outbound = &mut self.outbound;
        let result = with_deadline(deadline, async {
            outbound
                .flush(send, |chunk| chunk)
                .await
                .map_err(|error| match error {
                    WriteError::H2(error) => Status::from_h2(&error),
                    WriteError::Closed => {
                        Status::unavailable("the request stream was closed by the server")
                    }
                })
        })
        .await;
        if let Err(status) = &result
            && status.code() == Code::DeadlineExceeded
        {
            self.cancel();
        }
        result
    }

    /// Sends one message (queue + flush).
    pub async fn send<M: prost::Message>(&mut self, message: &M) -> Result<(), Status> {
        self.queue(message);
        self.flush().await
    }

    /// Half-closes: no more messages from us (END_STREAM).
    pub fn close_send(&mut self) {
        if let Some(mut send) = self.send.take() {
            let _ = send.send_data(Bytes::new(), true);
        }
    }

    /// Cancels the call (RST_STREAM CANCEL).
    pub fn cancel(&mut self) {
        if let Some(send) = self.send.as_mut() {
            send.send_reset(h2::Reason::CANCEL);
        }
    }
}

impl CallReceiver {
    fn cancelled(&mut self) {
        self.body = None;
        self.response = None;
        if self.status.is_none() {
            self.status = Some(Status::cancelled("cancelled by the client"));
        }
    }

    /// The response headers' custom metadata (waits for them).
    pub async fn headers(&mut self) -> Result<&Metadata, Status> {
        if self.headers.is_none() {
            let deadline = self.deadline;
            with_deadline(deadline, self.await_headers()).await?;
        }
        Ok(self.headers.as_ref().expect("set by await_headers"))
    }

    async fn await_headers(&mut self) -> Result<(), Status> {
        let Some(pending) = self.response.as_mut() else {
            return match &self.status {
                Some(status) if !status.is_ok() => Err(status.clone()),
                _ => Ok(()),
            };
        };
        // Polled in place (not taken) so that dropping this future loses
        // nothing: `message()` is used inside `select!`.
        let response = pending.await;
        self.response = None;
        let response = response.map_err(|e| Status::from_h2(&e))?;
        let (parts, body) = response.into_parts();
        self.headers = Some(Metadata::from_headers(&parts.headers));
        if parts.status != http::StatusCode::OK {
            // The spec: synthesize the status from the HTTP status.
            let mut message = format!("HTTP status {}", parts.status);
            if let Some(sent) = Status::from_trailers(&parts.headers)
                && !sent.message().is_empty()
            {
                message = format!("{message}: {}", sent.message());
            }
            let status = Status::new(Code::from_http_status(parts.status.as_u16()), message);
            self.status = Some(status.clone());
            return Err(status);
        }
        let content_type = parts
            .headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if !content_type.starts_with("application/grpc") {
            let status = Status::unknown(format!("unexpected content-type {content_type:?}"));
            self.status = Some(status.clone());
            return Err(status);
        }
        if let Some(status) = Status::from_trailers(&parts.headers) {
            // Trailers-only response.
            self.status = Some(status.clone());
            return if status.is_ok() { Ok(()) } else { Err(status) };
        }
        let encoding = match parts.headers.get("grpc-encoding") {
            None => Encoding::Identity,
            Some(value) => match Encoding::from_header(value.as_bytes()) {
                Some(encoding) => encoding,
                None => {
                    // We never offered it: the server broke the contract.
                    let status = Status::internal(format!(
                        "the response uses the message encoding {:?}, which we do not accept",
                        String::from_utf8_lossy(value.as_bytes())
                    ));
                    self.status = Some(status.clone());
                    return Err(status);
                }
            },
        };
        self.body = Some(
            Inbound::without_observer(body, self.max_recv_message_bytes).with_encoding(encoding),
        );
        Ok(())
    }

    /// The next message; `Ok(None)` when the call ended with OK, `Err` with the
    /// call's status otherwise. Cancel-safe.
    pub async fn message<M: prost::Message + Default>(&mut self) -> Result<Option<M>, Status> {
        match self.raw_message().await? {
            Some(payload) => M::decode(payload).map(Some).map_err(|e| {
                Status::internal(format!("response message is not valid protobuf: {e}"))
            }),
            None => Ok(None),
        }
    }

    /// The next message, still encoded.
    pub async fn raw_message(&mut self) -> Result<Option<Bytes>, Status> {
        let deadline = self.deadline;
        let result = with_deadline(deadline, self.read_frame()).await;
        if let Err(status) = &result
            && status.code() == Code::DeadlineExceeded
        {
            self.cancelled();
            self.status = Some(status.clone());
        }
        result
    }

    async fn read_frame(&mut self) -> Result<Option<Bytes>, Status> {
        if self.headers.is_none() {
            self.await_headers().await?;
        }
        let Some(body) = self.body.as_mut() else {
            return match &self.status {
                Some(status) if status.is_ok() => Ok(None),
                Some(status) => Err(status.clone()),
                None => Err(Status::internal("call ended without a status")),
            };
        };
        let result = match body.raw_message().await {
            Ok(Some(message)) => return Ok(Some(message)),
            Ok(None) => match body.trailers().await {
                Ok(trailers) => trailers
                    .as_ref()
                    .and_then(Status::from_trailers)
                    .unwrap_or_else(|| Status::internal("response ended without grpc-status")),
                Err(status) => status,
            },
            Err(status) => status,
        };
        self.body = None;
        self.status = Some(result.clone());
        if result.is_ok() {
            Ok(None)
        } else {
            Err(result)
        }
    }

    /// The final status once the call has ended.
    pub fn status(&self) -> Option<&Status> {
        self.status.as_ref()
    }

    /// The trailing metadata once the call has ended.
    pub fn trailers(&self) -> Option<&Metadata> {
        self.status.as_ref().map(Status::metadata)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse() {
        assert_eq!(
            Endpoint::parse("http://127.0.0.1:50051").unwrap(),
            Endpoint {
                tls: false,
                host: "127.0.0.1".into(),
                port: 50051
            }
        );
        assert_eq!(
            Endpoint::parse("https://example.com:8443/").unwrap(),
            Endpoint {
                tls: true,
                host: "example.com".into(),
                port: 8443
            }
        );
        assert_eq!(Endpoint::parse("localhost:1").unwrap().port, 1);
        assert_eq!(Endpoint::parse("https://h").unwrap().port, 443);
        assert_eq!(Endpoint::parse("[::1]:5").unwrap().host, "::1");
        assert!(Endpoint::parse("ftp://x:1").is_err());
        assert!(Endpoint::parse("http://:1").is_err());
        assert!(Endpoint::parse("http://h:99999").is_err());
        assert!(Endpoint::parse("http://h:0").is_err());
        assert_eq!(
            Endpoint::parse("[::1]:5").unwrap().to_string(),
            "http://[::1]:5"
        );
    }
}
