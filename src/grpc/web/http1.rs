//! One HTTP/1.1 connection of the web front end (plaintext: browsers use
//! HTTP/2 over TLS): requests one at a time, each answered before the next
//! is read; the page's assets, CORS preflights, and gRPC-Web calls relayed
//! through the [`Loopback`] with a chunked response that stays open as long
//! as the call streams.
//!
//! ```text
//!  read head (first: handshake timeout; then idle timeout; draining: close when idle)
//!    ├─ too large / malformed ──────────► 431 / 400, close
//!    ├─ GET, HEAD ──► asset or 404       ┐
//!    ├─ OPTIONS ───► 204 CORS or 403     ├─► keep-alive? read the next head : close
//!    ├─ POST gRPC-Web ─► read the body ─► loopback call ─► chunked relay ┘
//!    │                    (while it streams, a closed socket cancels the call)
//!    └─ anything else ──► 405 / 505, close
//! ```

use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderValue};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::time::{Instant, sleep_until, timeout};

use super::loopback::{Caller, Loopback, WebSink};
use super::request::{self, BodyLength, ParseError, RequestHead, RequestMethod};
use super::{MAX_HEAD, OriginCheck, WRITE_TIMEOUT, WebConfig, WebMode, WebRoute};
use crate::grpc::server::Shared;
use crate::grpc::shutdown::Phase;
use crate::grpc::sniff;
use crate::grpc::status::Status;
use crate::log;

/// Bytes of a next request we read ahead while a response streams
/// (pipelining); past it we stop reading until the response ends.
const READ_AHEAD: usize = MAX_HEAD + 4096;

/// How long, and how many bytes of what the client still sends, a closing
/// connection reads and drops after its last answer (see
/// [`Connection::close`]).
const LINGER: Duration = Duration::from_secs(1);
const LINGER_BYTES: usize = 64 * 1024;

/// Serves one HTTP/1.1 connection until it closes.
pub(crate) async fn serve<T>(
    io: T,
    shared: Arc<Shared>,
    web: WebConfig,
    caller: Caller,
    tls: bool,
    handshake_deadline: Instant,
) where
    T: AsyncRead + AsyncWrite + Send + 'static,
{
    let (reader, writer) = tokio::io::split(io);
    let mut conn = Connection {
        reader,
        writer,
        buffer: BytesMut::with_capacity(4096),
        reader_done: false,
        shared,
        web,
        caller,
        tls,
        loopback: None,
    };
    let mut shutdown = conn.shared.shutdown.clone();
    let mut deadline = handshake_deadline;
    loop {
        let head = loop {
            match request::parse_head(&conn.buffer, MAX_HEAD) {
                Ok(head) => break head,
                Err(ParseError::Incomplete) => {}
                Err(ParseError::TooLarge | ParseError::TooManyHeaders) => {
                    conn.plain(
                        "431 Request Header Fields Too Large",
                        "request head too large\n",
                        false,
                    )
                    .await;
                    conn.close().await;
                    return;
                }
                Err(ParseError::Version | ParseError::Malformed(_)) => {
                    conn.plain("400 Bad Request", "bad request\n", false).await;
                    conn.close().await;
                    return;
                }
            }
            if conn.reader_done {
                return;
            }
            tokio::select! {
                read = conn.read_more() => if !read { return },
                _ = sleep_until(deadline) => return,
                _ = shutdown.reached(Phase::Draining), if conn.buffer.is_empty() => return,
            }
        };
        conn.buffer.advance(head.head_len);
        let keep_alive = head.keep_alive && shutdown.phase() == Phase::Running;
        if !conn.answer(head, keep_alive).await || !keep_alive {
            conn.close().await;
            return;
        }
        deadline = Instant::now() + conn.shared.config.idle_timeout;
    }
}

struct Connection<T> {
    reader: ReadHalf<T>,
    writer: WriteHalf<T>,
    /// Received and not yet consumed.
    buffer: BytesMut,
    /// The client closed its side (or the socket failed).
    reader_done: bool,
    shared: Arc<Shared>,
    web: WebConfig,
    caller: Caller,
    tls: bool,
    loopback: Option<Loopback>,
}

impl<T: AsyncRead + AsyncWrite + Send> Connection<T> {
    /// Reads more into the buffer; false at the end of the stream.
    async fn read_more(&mut self) -> bool {
        self.buffer.reserve(4096);
        match self.reader.read_buf(&mut self.buffer).await {
            Ok(n) if n > 0 => true,
            _ => {
                self.reader_done = true;
                false
            }
        }
    }

    /// Ends the connection after its last answer: our side shut down, then
    /// what the client still sends (the rest of a refused request) read and
    /// dropped for a moment, up to [`LINGER_BYTES`] within [`LINGER`], so
    /// that closing with unread input does not reset the connection before
    /// the client has read the answer (RFC 9112, section 9.6).
    async fn close(&mut self) {
        let _ = timeout(WRITE_TIMEOUT, self.writer.shutdown()).await;
        let mut dropped = 0;
        let drain = async {
            while dropped < LINGER_BYTES && !self.reader_done {
                self.buffer.clear();
                if !self.read_more().await {
                    break;
                }
                dropped += self.buffer.len();
            }
        };
        let _ = timeout(LINGER, drain).await;
    }

    /// Writes all of `bytes`, or fails after [`WRITE_TIMEOUT`].
    async fn write(&mut self, bytes: &[u8]) -> Result<(), Status> {
        match timeout(WRITE_TIMEOUT, self.writer.write_all(bytes)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(Status::cancelled("the client closed the connection")),
            Err(_) => Err(Status::cancelled("the client stopped reading")),
        }
    }

    /// A short text response; `keep` says whether the connection stays.
    async fn plain(&mut self, status: &str, body: &str, keep: bool) -> bool {
        let response = format!(
            "HTTP/1.1 {status}\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\n{}\r\n{body}",
            body.len(),
            if keep { "" } else { "connection: close\r\n" }
        );
        self.write(response.as_bytes()).await.is_ok() && keep
    }

    async fn respond(
        &mut self,
        status: &str,
        headers: &HeaderMap,
        body: &[u8],
        keep: bool,
    ) -> bool {
        let mut out = BytesMut::with_capacity(256 + body.len());
        out.put_slice(format!("HTTP/1.1 {status}\r\n").as_bytes());
        put_headers(&mut out, headers);
        out.put_slice(format!("content-length: {}\r\n", body.len()).as_bytes());
        if !keep {
            out.put_slice(b"connection: close\r\n");
        }
        out.put_slice(b"\r\n");
        out.put_slice(body);
        self.write(&out).await.is_ok() && keep
    }

    /// Answers one request; false when the connection must close.
    async fn answer(&mut self, head: RequestHead, keep: bool) -> bool {
        let method = match head.method {
            RequestMethod::Get => http::Method::GET,
            RequestMethod::Head => http::Method::HEAD,
            RequestMethod::Post => http::Method::POST,
            RequestMethod::Options => http::Method::OPTIONS,
            RequestMethod::Other => http::Method::PUT,
        };
        let origin = OriginCheck::of(
            head.headers.get(http::header::ORIGIN),
            head.header("host"),
            self.tls,
            &self.web.allowed_origins,
        );
        match super::route(&method, head.header("content-type")) {
            WebRoute::Asset => {
                let Some(asset) = (self.web.assets)(head.path()) else {
                    return self.plain("404 Not Found", "not found\n", keep).await;
                };
                let mut headers = HeaderMap::new();
                headers.insert(
                    http::header::CONTENT_TYPE,
                    HeaderValue::from_static(asset.content_type),
                );
                headers.insert(
                    http::header::CACHE_CONTROL,
                    HeaderValue::from_static("no-cache"),
                );
                for (name, value) in asset.headers {
                    headers.insert(*name, HeaderValue::from_static(value));
                }
                if head.method == RequestMethod::Head {
                    let mut out = BytesMut::new();
                    out.put_slice(b"HTTP/1.1 200 OK\r\n");
                    put_headers(&mut out, &headers);
                    out.put_slice(
                        format!("content-length: {}\r\n\r\n", asset.body.len()).as_bytes(),
                    );
                    return self.write(&out).await.is_ok() && keep;
                }
                self.respond("200 OK", &headers, &asset.body, keep).await
            }
            WebRoute::Preflight => {
                if !matches!(origin, OriginCheck::Allowed(_)) {
                    return self
                        .plain("403 Forbidden", "origin not allowed\n", keep)
                        .await;
                }
                let headers = super::preflight_headers(
                    &origin,
                    head.headers.get("access-control-request-headers"),
                );
                self.respond("204 No Content", &headers, b"", keep).await
            }
            WebRoute::Call(mode) => self.call(head, mode, origin, keep).await,
            WebRoute::MethodNotAllowed => {
                let mut headers = HeaderMap::new();
                headers.insert(
                    http::header::ALLOW,
                    HeaderValue::from_static("GET, HEAD, POST, OPTIONS"),
                );
                self.respond(
                    "405 Method Not Allowed",
                    &headers,
                    b"method not allowed\n",
                    false,
                )
                .await
            }
            WebRoute::UnsupportedMediaType => {
                // Native gRPC needs HTTP/2, as before the web front end.
                let _ = self.write(sniff::HTTP1_ON_H2_RESPONSE).await;
                false
            }
        }
    }

    /// Reads the body of a call: its declared length, within the limit.
    async fn body(&mut self, head: &RequestHead, mode: WebMode) -> Result<Bytes, (Status, bool)> {
        let length = match head.body {
            BodyLength::Encoded => {
                return Err((
                    Status::internal(
                        "chunked request bodies are not supported: send a Content-Length",
                    ),
                    false,
                ));
            }
            BodyLength::Exactly(n) => n,
        };
        let limit = mode.max_body(self.shared.config.max_recv_message_bytes);
        if length > limit as u64 {
            return Err((
                Status::resource_exhausted(format!(
                    "request body of {length} bytes is larger than the limit of {limit}"
                )),
                false,
            ));
        }
        let length = length as usize;
        let deadline = Instant::now() + WRITE_TIMEOUT;
        while self.buffer.len() < length {
            if self.reader_done {
                return Err((Status::cancelled("the client closed the connection"), false));
            }
            let read = tokio::select! {
                read = self.read_more() => read,
                _ = sleep_until(deadline) => false,
            };
            if !read {
                return Err((Status::cancelled("the request body did not arrive"), false));
            }
        }
        let body = self.buffer.split_to(length).freeze();
        mode.decode_body(body).map_err(|_| {
            (
                Status::internal("the request body is not valid base64"),
                true,
            )
        })
    }

    async fn call(
        &mut self,
        head: RequestHead,
        mode: WebMode,
        origin: OriginCheck,
        keep: bool,
    ) -> bool {
        if origin == OriginCheck::Refused {
            log!(
                Info,
                "gRPC-Web call refused: origin not allowed",
                conn = self.caller.connection_id,
                origin = head.header("origin").unwrap_or("?")
            );
            return self
                .plain(
                    "403 Forbidden",
                    "origin not allowed (see serve --web-origin)\n",
                    false,
                )
                .await;
        }
        let mut cors = HeaderMap::new();
        origin.write_cors(&mut cors);
        let body = match self.body(&head, mode).await {
            Ok(body) => body,
            Err((status, reusable)) => {
                let mut sink = self.sink(mode, cors, keep && reusable);
                let _ = super::loopback::Relay::finished(HeaderMap::new(), status)
                    .run(mode, &mut sink)
                    .await;
                return sink.usable && keep && reusable;
            }
        };
        let relay = match self.loopback_call(&head, body).await {
            Ok(relay) => relay,
            Err(status) => super::loopback::Relay::finished(HeaderMap::new(), status),
        };
        let conn = self.caller.connection_id;
        let mut sink = self.sink(mode, cors, keep);
        let status = relay.run(mode, &mut sink).await;
        log!(
            Debug,
            "gRPC-Web call finished",
            conn = conn,
            method = head.path(),
            status = status.code().name()
        );
        sink.usable && keep
    }

    async fn loopback_call(
        &mut self,
        head: &RequestHead,
        body: Bytes,
    ) -> Result<super::loopback::Relay, Status> {
        let ready = match self.loopback.as_mut() {
            Some(loopback) => loopback.ready().await,
            None => false,
        };
        if !ready {
            self.loopback = Some(Loopback::open(&self.shared, &self.caller).await?);
        }
        let loopback = self.loopback.as_mut().expect("just opened");
        loopback.call(head.path(), &head.headers, body).await
    }

    fn sink(&mut self, mode: WebMode, cors: HeaderMap, keep: bool) -> ChunkedSink<'_, T> {
        ChunkedSink {
            conn: self,
            mode,
            cors,
            keep,
            usable: true,
        }
    }
}

fn put_headers(out: &mut BytesMut, headers: &HeaderMap) {
    for (name, value) in headers {
        out.put_slice(name.as_str().as_bytes());
        out.put_slice(b": ");
        out.put_slice(value.as_bytes());
        out.put_slice(b"\r\n");
    }
}

/// A gRPC-Web response on the connection: chunked, open while it streams.
struct ChunkedSink<'a, T> {
    conn: &'a mut Connection<T>,
    mode: WebMode,
    cors: HeaderMap,
    keep: bool,
    /// False once a write failed or the client went.
    usable: bool,
}

impl<T: AsyncRead + AsyncWrite + Send> ChunkedSink<'_, T> {
    async fn write(&mut self, bytes: &[u8]) -> Result<(), Status> {
        let written = self.conn.write(bytes).await;
        if written.is_err() {
            self.usable = false;
        }
        written
    }
}

impl<T: AsyncRead + AsyncWrite + Send> WebSink for ChunkedSink<'_, T> {
    async fn head(&mut self, metadata: HeaderMap) -> Result<(), Status> {
        let mut out = BytesMut::with_capacity(256);
        out.put_slice(b"HTTP/1.1 200 OK\r\n");
        out.put_slice(format!("content-type: {}\r\n", self.mode.content_type()).as_bytes());
        out.put_slice(b"transfer-encoding: chunked\r\ncache-control: no-store\r\n");
        put_headers(&mut out, &self.cors);
        put_headers(&mut out, &metadata);
        if !self.keep {
            out.put_slice(b"connection: close\r\n");
        }
        out.put_slice(b"\r\n");
        self.write(&out).await
    }

    async fn data(&mut self, bytes: Bytes) -> Result<(), Status> {
        if bytes.is_empty() {
            return Ok(());
        }
        let mut out = BytesMut::with_capacity(bytes.len() + 12);
        out.put_slice(format!("{:x}\r\n", bytes.len()).as_bytes());
        out.put_slice(&bytes);
        out.put_slice(b"\r\n");
        self.write(&out).await
    }

    async fn end(&mut self) -> Result<(), Status> {
        self.write(b"0\r\n\r\n").await
    }

    async fn gone(&mut self) {
        // Reads ahead (a pipelined next request) up to a bound; the end of
        // the stream means the client closed its side.
        loop {
            if self.conn.reader_done || self.conn.buffer.len() >= READ_AHEAD {
                if self.conn.reader_done {
                    self.usable = false;
                    return;
                }
                std::future::pending::<()>().await;
            }
            if !self.conn.read_more().await {
                self.usable = false;
                return;
            }
        }
    }
}
