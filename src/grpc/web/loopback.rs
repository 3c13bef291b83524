//! The in-memory HTTP/2 connection a gRPC-Web call rides on: our own h2
//! client on one end of a duplex pipe, this server's connection code
//! ([`serve_connection`]) on the other. A call goes in as native gRPC (the
//! browser's headers, `application/grpc`, `te: trailers`, its whole body)
//! and its response is relayed to a [`WebSink`] as gRPC-Web: the messages,
//! then the trailers as the last frame.
//!
//! Flow control holds end to end: received DATA is released to the server
//! only once the sink has written it, so a browser that does not read
//! pushes back on the call like any slow HTTP/2 peer.

use std::future::{Future, poll_fn};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request};
use tokio::time::Instant;

use super::framing::{self, WebMode};
use crate::grpc::server::connection::{ConnectionInfo, serve_connection};
use crate::grpc::server::{BoxFuture, Shared};
use crate::grpc::status::Status;

/// The duplex pipe's buffer each way.
const PIPE_BYTES: usize = 64 * 1024;

/// Request headers that belong to HTTP or the browser, not to the call.
fn is_forwarded(name: &str) -> bool {
    !(name.starts_with(':')
        || name.starts_with("sec-")
        || name.starts_with("access-control-")
        || matches!(
            name,
            "host"
                | "connection"
                | "keep-alive"
                | "proxy-connection"
                | "transfer-encoding"
                | "upgrade"
                | "te"
                | "content-length"
                | "content-type"
                | "accept"
                | "accept-encoding"
                | "accept-language"
                | "cache-control"
                | "pragma"
                | "priority"
                | "origin"
                | "referer"
                | "cookie"
                | "dnt"
                | "user-agent"
                | "x-grpc-web"
                | "x-user-agent"
        ))
}

/// The loopback's server end: the connection code every socket runs.
/// Boxed with its `Send` stated, because that code's streams may open
/// loopbacks themselves, a cycle the compiler cannot see through.
fn server_side(
    io: tokio::io::DuplexStream,
    shared: Arc<Shared>,
    info: Arc<ConnectionInfo>,
    deadline: Instant,
) -> BoxFuture<()> {
    let shutdown = shared.shutdown.clone();
    Box::pin(serve_connection(io, shared, info, shutdown, deadline))
}

/// Who the calls come from (for the server's logs, limits and TLS facts).
#[derive(Debug, Clone)]
pub(crate) struct Caller {
    pub(crate) connection_id: u64,
    pub(crate) peer: Option<std::net::SocketAddr>,
    pub(crate) extensions: http::Extensions,
}

/// An open loopback connection; dropped, it closes.
pub(crate) struct Loopback {
    send: h2::client::SendRequest<Bytes>,
}

impl Loopback {
    /// Opens a loopback connection into this server for `caller`'s calls.
    pub(crate) async fn open(shared: &Arc<Shared>, caller: &Caller) -> Result<Loopback, Status> {
        let (client_io, server_io) = tokio::io::duplex(PIPE_BYTES);
        // Its own account against the outbound budget (a shed closes the
        // loopback, which ends the web call).
        let id = shared.next_connection_id.fetch_add(1, Ordering::Relaxed);
        let info = Arc::new(ConnectionInfo::new(
            caller.connection_id,
            caller.peer,
            caller.extensions.clone(),
            shared.outbound_budget.open(id),
        ));
        let deadline = Instant::now() + shared.config.handshake_timeout;
        tokio::spawn(server_side(server_io, shared.clone(), info, deadline));
        let (send, connection) = h2::client::Builder::new()
            .initial_window_size(shared.config.initial_stream_window)
            .initial_connection_window_size(shared.config.initial_connection_window)
            .max_frame_size(shared.config.max_frame_size)
            .handshake::<_, Bytes>(client_io)
            .await
            .map_err(|e| Status::from_h2(&e))?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(Loopback { send })
    }

    /// Whether the connection can take another call.
    pub(crate) async fn ready(&mut self) -> bool {
        poll_fn(|cx| self.send.poll_ready(cx)).await.is_ok()
    }

    /// Starts a call of `path` with the browser's `headers` and its request
    /// messages (`body`, already decoded from the text mode).
    pub(crate) async fn call(
        &mut self,
        path: &str,
        headers: &HeaderMap,
        body: Bytes,
    ) -> Result<Relay, Status> {
        let mut request = Request::post(format!("http://loopback{path}"))
            .body(())
            .map_err(|e| Status::internal(e.to_string()))?;
        let forwarded = request.headers_mut();
        for (name, value) in headers {
            if is_forwarded(name.as_str()) {
                forwarded.append(name.clone(), value.clone());
            }
        }
        forwarded.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
        forwarded.insert(http::header::TE, HeaderValue::from_static("trailers"));
        let (response, mut stream) = self
            .send
            .send_request(request, false)
            .map_err(|e| Status::from_h2(&e))?;
        // The body is within the message limit, below the stream window.
        stream
            .send_data(body, true)
            .map_err(|e| Status::from_h2(&e))?;
        let response = response.await.map_err(|e| Status::from_h2(&e))?;
        let (parts, body) = response.into_parts();
        if parts.status != http::StatusCode::OK {
            let code = crate::grpc::status::Code::from_http_status(parts.status.as_u16());
            return Ok(Relay::finished(
                parts.headers,
                Status::new(code, format!("HTTP status {}", parts.status)),
            ));
        }
        if body.is_end_stream() {
            let trailers = framing::trailers_of_head(&parts.headers);
            return Ok(Relay {
                head: HeaderMap::new(),
                body: None,
                trailers: Some(trailers),
                _stream: Some(stream),
            });
        }
        Ok(Relay {
            head: parts.headers,
            body: Some(body),
            trailers: None,
            _stream: Some(stream),
        })
    }
}

/// Where a relayed response goes: one front end's response.
pub(crate) trait WebSink {
    /// Sends the response head: 200, the gRPC-Web content type, CORS and
    /// the call's initial metadata in `metadata`.
    fn head(&mut self, metadata: HeaderMap) -> impl Future<Output = Result<(), Status>> + Send;
    /// Sends bytes of the body (already in the response's mode).
    fn data(&mut self, bytes: Bytes) -> impl Future<Output = Result<(), Status>> + Send;
    /// Ends the body after the trailers frame.
    fn end(&mut self) -> impl Future<Output = Result<(), Status>> + Send;
    /// Resolves when the client has gone (the call is then cancelled).
    fn gone(&mut self) -> impl Future<Output = ()> + Send;
}

/// A call's response, as it arrives from the server.
pub(crate) struct Relay {
    head: HeaderMap,
    body: Option<h2::RecvStream>,
    trailers: Option<HeaderMap>,
    /// Kept open until the response is done (dropping it early resets).
    _stream: Option<h2::SendStream<Bytes>>,
}

impl Relay {
    /// A response with no messages and this status.
    pub(crate) fn finished(head: HeaderMap, status: Status) -> Relay {
        let mut trailers = framing::trailers_of_head(&head);
        trailers.extend(status.to_trailers());
        Relay {
            head: HeaderMap::new(),
            body: None,
            trailers: Some(trailers),
            _stream: None,
        }
    }

    /// Relays the response to `sink` in `mode`; returns the call's status.
    /// If the client goes, the call is reset (CANCEL) by dropping it.
    pub(crate) async fn run<S: WebSink + Send>(mut self, mode: WebMode, sink: &mut S) -> Status {
        let metadata = crate::grpc::Metadata::from_headers(&self.head);
        let mut head = HeaderMap::new();
        metadata.write_into(&mut head);
        if let Err(status) = sink.head(head).await {
            return status;
        }
        let trailers = match self.body.take() {
            None => self.trailers.take().unwrap_or_default(),
            Some(mut body) => loop {
                let next = tokio::select! {
                    chunk = body.data() => chunk,
                    () = sink.gone() => return Status::cancelled("the client went away"),
                };
                match next {
                    Some(Ok(chunk)) => {
                        let len = chunk.len();
                        let written = sink.data(mode.encode_chunk(chunk)).await;
                        let _ = body.flow_control().release_capacity(len);
                        if let Err(status) = written {
                            return status;
                        }
                    }
                    Some(Err(error)) => break Status::from_h2(&error).to_trailers(),
                    None => {
                        let trailers = tokio::select! {
                            trailers = body.trailers() => trailers,
                            () = sink.gone() => return Status::cancelled("the client went away"),
                        };
                        break match trailers {
                            Ok(Some(trailers)) => trailers,
                            Ok(None) => {
                                Status::internal("the call ended without trailers").to_trailers()
                            }
                            Err(error) => Status::from_h2(&error).to_trailers(),
                        };
                    }
                }
            },
        };
        let status = Status::from_trailers(&trailers)
            .unwrap_or_else(|| Status::internal("the call ended without a grpc-status"));
        if let Err(status) = sink
            .data(mode.encode_chunk(framing::trailers_frame(&trailers)))
            .await
        {
            return status;
        }
        if let Err(status) = sink.end().await {
            return status;
        }
        status
    }
}
