//! The web front end on an HTTP/2 stream (what browsers speak over TLS): the
//! page's assets on `GET`, CORS preflights, and gRPC-Web calls relayed
//! through a [`Loopback`] (one per call), the response written with send
//! capacity reserved first, as every response of this server is.

use std::future::poll_fn;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use h2::server::SendResponse;
use h2::{RecvStream, SendStream};
use http::{HeaderMap, HeaderValue, StatusCode};

use super::loopback::{Caller, Loopback, Relay, WebSink};
use super::{OriginCheck, WebConfig, WebMode, WebRoute};
use crate::grpc::outbound::{OutboundQueue, WriteError};
use crate::grpc::server::Shared;
use crate::grpc::server::budget::AccountedChunk;
use crate::grpc::server::connection::ConnectionInfo;
use crate::grpc::status::Status;
use crate::log;

/// Whether the web front end answers this request (else it is native gRPC,
/// or refused as before: the dispatcher's checks).
pub(crate) fn wants(method: &http::Method, headers: &HeaderMap) -> bool {
    let content_type = headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    matches!(
        super::route(method, content_type),
        WebRoute::Asset | WebRoute::Preflight | WebRoute::Call(_)
    )
}

/// Answers one web request on an HTTP/2 stream.
pub(crate) async fn serve(
    parts: http::request::Parts,
    body: RecvStream,
    respond: SendResponse<AccountedChunk>,
    shared: Arc<Shared>,
    web: WebConfig,
    connection: Arc<ConnectionInfo>,
    tls: bool,
) {
    let host = parts
        .uri
        .authority()
        .map(|a| a.as_str().to_owned())
        .or_else(|| {
            parts
                .headers
                .get(http::header::HOST)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        });
    let origin = OriginCheck::of(
        parts.headers.get(http::header::ORIGIN),
        host.as_deref(),
        tls,
        &web.allowed_origins,
    );
    let content_type = parts
        .headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    let mut sink = StreamSink {
        respond: Some(respond),
        stream: None,
        mode: WebMode::Binary,
        cors: HeaderMap::new(),
        connection: connection.clone(),
    };
    match super::route(&parts.method, content_type) {
        WebRoute::Asset => {
            let Some(asset) = (web.assets)(parts.uri.path()) else {
                sink.plain(StatusCode::NOT_FOUND, "not found\n").await;
                return;
            };
            let mut head = HeaderMap::new();
            head.insert(
                http::header::CONTENT_TYPE,
                HeaderValue::from_static(asset.content_type),
            );
            head.insert(
                http::header::CACHE_CONTROL,
                HeaderValue::from_static("no-cache"),
            );
            for (name, value) in asset.headers {
                head.insert(*name, HeaderValue::from_static(value));
            }
            let body = if parts.method == http::Method::HEAD {
                Bytes::new()
            } else {
                asset.body
            };
            sink.whole(StatusCode::OK, head, body).await;
        }
        WebRoute::Preflight => {
            if !matches!(origin, OriginCheck::Allowed(_)) {
                sink.plain(StatusCode::FORBIDDEN, "origin not allowed\n")
                    .await;
                return;
            }
            let head = super::preflight_headers(
                &origin,
                parts.headers.get("access-control-request-headers"),
            );
            sink.whole(StatusCode::NO_CONTENT, head, Bytes::new()).await;
        }
        WebRoute::Call(mode) => {
            if origin == OriginCheck::Refused {
                sink.plain(
                    StatusCode::FORBIDDEN,
                    "origin not allowed (see serve --web-origin)\n",
                )
                .await;
                return;
            }
            sink.mode = mode;
            origin.write_cors(&mut sink.cors);
            let limit = mode.max_body(shared.config.max_recv_message_bytes);
            let relay = match read_body(body, limit).await {
                Ok(bytes) => match mode.decode_body(bytes) {
                    Ok(messages) => {
                        let caller = Caller {
                            connection_id: connection.id,
                            peer: connection.peer,
                            extensions: connection.extensions.clone(),
                        };
                        match Loopback::open(&shared, &caller).await {
                            Ok(mut loopback) => {
                                match loopback
                                    .call(parts.uri.path(), &parts.headers, messages)
                                    .await
                                {
                                    Ok(relay) => relay,
                                    Err(status) => Relay::finished(HeaderMap::new(), status),
                                }
                            }
                            Err(status) => Relay::finished(HeaderMap::new(), status),
                        }
                    }
                    Err(_) => Relay::finished(
                        HeaderMap::new(),
                        Status::internal("the request body is not valid base64"),
                    ),
                },
                Err(status) => Relay::finished(HeaderMap::new(), status),
            };
            let status = relay.run(mode, &mut sink).await;
            log!(
                Debug,
                "gRPC-Web call finished",
                conn = connection.id,
                method = parts.uri.path(),
                status = status.code().name()
            );
        }
        WebRoute::MethodNotAllowed | WebRoute::UnsupportedMediaType => {
            sink.plain(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n")
                .await;
        }
    }
}

/// The request's whole body, within `limit` bytes.
async fn read_body(mut body: RecvStream, limit: usize) -> Result<Bytes, Status> {
    let mut out = BytesMut::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.map_err(|e| Status::from_h2(&e))?;
        let _ = body.flow_control().release_capacity(chunk.len());
        if out.len() + chunk.len() > limit {
            return Err(Status::resource_exhausted(format!(
                "request body larger than the limit of {limit} bytes"
            )));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out.freeze())
}

/// A response on the stream.
struct StreamSink {
    respond: Option<SendResponse<AccountedChunk>>,
    stream: Option<SendStream<AccountedChunk>>,
    mode: WebMode,
    cors: HeaderMap,
    connection: Arc<ConnectionInfo>,
}

impl StreamSink {
    fn start(&mut self, status: StatusCode, headers: HeaderMap, end: bool) -> Result<(), Status> {
        let Some(mut respond) = self.respond.take() else {
            return Err(Status::internal("response already started"));
        };
        let mut response = http::Response::new(());
        *response.status_mut() = status;
        *response.headers_mut() = headers;
        let stream = respond
            .send_response(response, end)
            .map_err(|e| Status::from_h2(&e))?;
        if !end {
            self.stream = Some(stream);
        }
        Ok(())
    }

    async fn write(&mut self, bytes: Bytes) -> Result<(), Status> {
        let Some(stream) = self.stream.as_mut() else {
            return Err(Status::internal("response not started"));
        };
        let mut queue = OutboundQueue::new();
        queue.push(bytes);
        let account = &self.connection.outbound;
        queue
            .flush(stream, |chunk| account.hand_over(chunk))
            .await
            .map_err(|error| match error {
                WriteError::H2(error) => Status::from_h2(&error),
                WriteError::Closed => Status::cancelled("stream closed by peer"),
            })
    }

    async fn whole(&mut self, status: StatusCode, headers: HeaderMap, body: Bytes) {
        if body.is_empty() {
            let _ = self.start(status, headers, true);
            return;
        }
        if self.start(status, headers, false).is_ok() && self.write(body).await.is_ok() {
            let _ = self.end().await;
        }
    }

    async fn plain(&mut self, status: StatusCode, text: &'static str) {
        let mut headers = HeaderMap::new();
        headers.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        self.whole(status, headers, Bytes::from_static(text.as_bytes()))
            .await;
    }
}

impl WebSink for StreamSink {
    async fn head(&mut self, metadata: HeaderMap) -> Result<(), Status> {
        let mut headers = std::mem::take(&mut self.cors);
        headers.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static(self.mode.content_type()),
        );
        headers.insert(
            http::header::CACHE_CONTROL,
            HeaderValue::from_static("no-store"),
        );
        for (name, value) in &metadata {
            headers.append(name.clone(), value.clone());
        }
        self.start(StatusCode::OK, headers, false)
    }

    async fn data(&mut self, bytes: Bytes) -> Result<(), Status> {
        self.write(bytes).await
    }

    async fn end(&mut self) -> Result<(), Status> {
        let Some(stream) = self.stream.as_mut() else {
            return Ok(());
        };
        let empty = self.connection.outbound.hand_over(Bytes::new());
        stream
            .send_data(empty, true)
            .map_err(|e| Status::from_h2(&e))
    }

    async fn gone(&mut self) {
        let _ = match (self.stream.as_mut(), self.respond.as_mut()) {
            (Some(stream), _) => poll_fn(|cx| stream.poll_reset(cx)).await,
            (None, Some(respond)) => poll_fn(|cx| respond.poll_reset(cx)).await,
            (None, None) => std::future::pending().await,
        };
    }
}
