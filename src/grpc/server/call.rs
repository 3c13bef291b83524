//! What a handler sees of one call: the request head, the inbound message
//! stream ([`Streaming`]) and the outbound sink ([`ResponseSink`]).
//!
//! Flow control: inbound capacity is released only as the handler consumes
//! messages (see [`crate::grpc::inbound`]); outbound capacity is awaited before
//! writing and messages queued together are written together (see
//! [`crate::grpc::outbound`]).
//!
//! Both halves give themselves back to the dispatcher when dropped (the sink
//! through a oneshot), so the dispatcher can always send the final status, even
//! when the handler was cancelled by its deadline.

use std::future::poll_fn;
use std::marker::PhantomData;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use h2::RecvStream;
use h2::server::SendResponse;
use h2::{Reason, SendStream};
use http::HeaderValue;
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::grpc::codec;
use crate::grpc::compression::{self, Encoding};
use crate::grpc::inbound::Inbound;
use crate::grpc::metadata::Metadata;
use crate::grpc::observe::Telemetry;
use crate::grpc::outbound::{OutboundQueue, WriteError};
use crate::grpc::status::Status;

use super::budget::{AccountedChunk, ConnectionAccount};
use super::shared_compression;

/// Everything known about a call before its first message.
#[derive(Debug)]
pub struct RequestHead {
    /// The method path, e.g. `/codereview.v1.CodeReviewService/GetSnapshot`.
    pub method: &'static str,
    pub metadata: Metadata,
    /// From `grpc-timeout`; the dispatcher enforces it.
    pub deadline: Option<Instant>,
    /// From `grpc-encoding`: how the request's messages may be compressed
    /// (they are inflated before the handler sees them).
    pub encoding: Encoding,
    pub peer: Option<SocketAddr>,
    pub connection_id: u64,
    pub stream_id: u32,
    /// Values interceptors attach (e.g. the authenticated principal).
    pub extensions: http::Extensions,
}

/// A request: its head and its message (or message stream).
#[derive(Debug)]
pub struct Request<T> {
    head: RequestHead,
    message: T,
}

impl<T> Request<T> {
    pub fn new(head: RequestHead, message: T) -> Self {
        Request { head, message }
    }

    pub fn head(&self) -> &RequestHead {
        &self.head
    }

    pub fn metadata(&self) -> &Metadata {
        &self.head.metadata
    }

    pub fn extensions(&self) -> &http::Extensions {
        &self.head.extensions
    }

    pub fn message(&self) -> &T {
        &self.message
    }

    pub fn message_mut(&mut self) -> &mut T {
        &mut self.message
    }

    pub fn into_parts(self) -> (RequestHead, T) {
        (self.head, self.message)
    }

    pub fn into_message(self) -> T {
        self.message
    }
}

/// A unary or client-streaming response: the message plus initial and
/// trailing metadata.
#[derive(Debug, Default)]
pub struct Response<T> {
    pub message: T,
    pub metadata: Metadata,
    pub trailers: Metadata,
}

impl<T> Response<T> {
    pub fn new(message: T) -> Self {
        Response {
            message,
            metadata: Metadata::new(),
            trailers: Metadata::new(),
        }
    }
}

/// The inbound messages of a call, typed.
pub struct Streaming<T> {
    inbound: Inbound,
    _message: PhantomData<fn() -> T>,
}

impl<T> std::fmt::Debug for Streaming<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Streaming")
            .field("inbound", &self.inbound)
            .finish()
    }
}

impl<T> Streaming<T> {
    pub(crate) fn new(
        body: RecvStream,
        max_message_len: usize,
        encoding: Encoding,
        telemetry: Arc<Telemetry>,
    ) -> Self {
        Streaming {
            inbound: Inbound::new(body, max_message_len, telemetry).with_encoding(encoding),
            _message: PhantomData,
        }
    }

    /// Releases the flow-control capacity of the messages already returned.
    /// Called implicitly by the next [`Streaming::message`] that waits for
    /// more bytes (or finds a batch of them consumed, see
    /// [`crate::grpc::inbound::RELEASE_BATCH`]).
    pub fn release_consumed(&mut self) {
        self.inbound.release_consumed();
    }

    /// Bytes received and not yet returned as messages.
    pub fn buffered_bytes(&self) -> usize {
        self.inbound.buffered_bytes()
    }

    /// Reads the next raw (still protobuf-encoded) message.
    pub async fn raw_message(&mut self) -> Result<Option<Bytes>, Status> {
        self.inbound.raw_message().await
    }
}

impl<T: prost::Message + Default> Streaming<T> {
    /// Reads the next message; `Ok(None)` once the peer has half-closed.
    /// Cancel-safe: dropping the future loses no message.
    pub async fn message(&mut self) -> Result<Option<T>, Status> {
        match self.inbound.raw_message().await? {
            Some(payload) => T::decode(payload).map(Some).map_err(|e| {
                Status::invalid_argument(format!("request message is not valid protobuf: {e}"))
            }),
            None => Ok(None),
        }
    }

    /// Reads the next message into the value `target` makes once it has
    /// arrived (fields absent on the wire keep what that value holds, so it
    /// is to be cleared). A value whose strings are kept from one message
    /// to the next spares their allocation per message. Cancel-safe like
    /// [`Streaming::message`]: `target` is called only when nothing is
    /// awaited any more.
    pub async fn message_into(&mut self, target: impl FnOnce() -> T) -> Result<Option<T>, Status> {
        match self.inbound.raw_message().await? {
            Some(payload) => {
                let mut message = target();
                message.merge(payload).map_err(|e| {
                    Status::invalid_argument(format!("request message is not valid protobuf: {e}"))
                })?;
                Ok(Some(message))
            }
            None => Ok(None),
        }
    }
}

/// The h2 side of a response, owned by a [`ResponseSink`] while the handler
/// runs and by the dispatcher afterwards.
pub(crate) struct SinkCore {
    respond: SendResponse<AccountedChunk>,
    stream: Option<SendStream<AccountedChunk>>,
    initial_metadata: Metadata,
    pending: OutboundQueue,
    /// How responses are encoded: gzip when the client's
    /// `grpc-accept-encoding` lists it (each large message is then
    /// compressed, see [`compression::compress_framed`]).
    response_encoding: Encoding,
    telemetry: Arc<Telemetry>,
    /// The connection's outbound account: what is queued here, and what h2
    /// holds of it, counts against the process's outbound budget.
    account: Arc<ConnectionAccount>,
}

impl SinkCore {
    pub(crate) fn new(
        respond: SendResponse<AccountedChunk>,
        telemetry: Arc<Telemetry>,
        account: Arc<ConnectionAccount>,
    ) -> Self {
        SinkCore {
            respond,
            stream: None,
            initial_metadata: Metadata::new(),
            pending: OutboundQueue::new(),
            response_encoding: Encoding::Identity,
            telemetry,
            account,
        }
    }

    /// Sets the response encoding (before the headers are sent).
    pub(crate) fn set_response_encoding(&mut self, encoding: Encoding) {
        self.response_encoding = encoding;
    }

    pub(crate) fn pending_len(&self) -> usize {
        self.pending.len()
    }

    fn response_head(&self) -> http::Response<()> {
        let mut response = http::Response::new(());
        let headers = response.headers_mut();
        headers.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
        // Every response says which message encodings we accept, so a client
        // refused for an unsupported one learns the alternatives.
        headers.insert(
            "grpc-accept-encoding",
            HeaderValue::from_static(compression::ACCEPT_ENCODING),
        );
        if self.response_encoding != Encoding::Identity {
            headers.insert(
                "grpc-encoding",
                HeaderValue::from_static(self.response_encoding.name()),
            );
        }
        self.initial_metadata.write_into(headers);
        response
    }

    pub(crate) fn send_headers(&mut self) -> Result<&mut SendStream<AccountedChunk>, Status> {
        if self.stream.is_none() {
            let head = self.response_head();
            let stream = self
                .respond
                .send_response(head, false)
                .map_err(|e| Status::from_h2(&e))?;
            self.stream = Some(stream);
        }
        Ok(self.stream.as_mut().expect("just set"))
    }

    pub(crate) fn queue(&mut self, framed: Bytes) {
        let framed = shared_compression::compress_framed(framed, self.response_encoding);
        self.account.queued(framed.len());
        self.pending.push(framed);
    }

    /// Writes every pending byte as send capacity is granted. Cancel-safe:
    /// what is not yet written stays pending.
    pub(crate) async fn flush(&mut self) -> Result<(), Status> {
        if self.pending.is_empty() {
            return Ok(());
        }
        self.send_headers()?;
        let stream = self.stream.as_mut().expect("headers sent");
        let telemetry = &self.telemetry;
        let account = &self.account;
        self.pending
            .flush(stream, |chunk| {
                telemetry.observer.bytes_sent(chunk.len());
                account.hand_over(chunk)
            })
            .await
            .map_err(|error| match error {
                WriteError::H2(error) => Status::from_h2(&error),
                WriteError::Closed => Status::cancelled("stream closed by peer"),
            })
    }

    /// Resolves when the peer resets the stream.
    pub(crate) async fn reset(&mut self) -> Reason {
        let result = match self.stream.as_mut() {
            Some(stream) => poll_fn(|cx| stream.poll_reset(cx)).await,
            None => poll_fn(|cx| self.respond.poll_reset(cx)).await,
        };
        result.unwrap_or(Reason::CANCEL)
    }

    /// Sends the final status: trailers after the response, or a
    /// trailers-only response when the call fails before any message. h2
    /// follows it with RST_STREAM(NO_ERROR) once all handles are dropped if the
    /// client has not finished sending (the spec's early-closure rule).
    pub(crate) fn finish(mut self, status: &Status) {
        match self.stream.as_mut() {
            Some(stream) => {
                let _ = stream.send_trailers(status.to_trailers());
            }
            None if status.is_ok() => {
                // Headers, then trailers: some clients expect both on success.
                if let Ok(stream) = self.send_headers() {
                    let _ = stream.send_trailers(status.to_trailers());
                }
            }
            None => {
                let mut head = self.response_head();
                status.write_trailers(head.headers_mut());
                let _ = self.respond.send_response(head, true);
            }
        }
    }
}

impl Drop for SinkCore {
    fn drop(&mut self) {
        self.account.unqueued(self.pending.len());
    }
}

/// The outbound messages of a server-streaming or bidirectional call.
pub struct ResponseSink<T> {
    core: Option<SinkCore>,
    give_back: Option<oneshot::Sender<SinkCore>>,
    _message: PhantomData<fn(T)>,
}

impl<T> std::fmt::Debug for ResponseSink<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseSink")
            .field("pending_bytes", &self.pending_bytes())
            .finish()
    }
}

impl<T> ResponseSink<T> {
    pub(crate) fn new(core: SinkCore, give_back: oneshot::Sender<SinkCore>) -> Self {
        ResponseSink {
            core: Some(core),
            give_back: Some(give_back),
            _message: PhantomData,
        }
    }

    fn core(&mut self) -> &mut SinkCore {
        self.core.as_mut().expect("present until drop")
    }

    /// Initial metadata, sent with the response headers (before the first
    /// message, or with a trailers-only response).
    pub fn initial_metadata_mut(&mut self) -> &mut Metadata {
        &mut self.core().initial_metadata
    }

    /// Sends the response headers now, even before any message.
    pub fn send_headers(&mut self) -> Result<(), Status> {
        self.core().send_headers().map(|_| ())
    }

    /// Queues already framed messages (see [`codec::encode_message`]): one,
    /// or several back to back; the same `Bytes` may be queued on many sinks.
    pub fn queue_framed(&mut self, framed: Bytes) {
        self.core().queue(framed);
    }

    /// Bytes queued and not yet handed to h2.
    pub fn pending_bytes(&self) -> usize {
        self.core.as_ref().map_or(0, SinkCore::pending_len)
    }

    /// Writes everything queued, as flow control allows. Cancel-safe.
    pub async fn flush(&mut self) -> Result<(), Status> {
        self.core().flush().await
    }

    /// Resolves when the client cancels (resets) the call.
    pub async fn cancelled(&mut self) -> Status {
        Status::from_reset(self.core().reset().await)
    }
}

impl<T: prost::Message> ResponseSink<T> {
    /// Queues a message; it is written by the next [`ResponseSink::flush`].
    pub fn queue(&mut self, message: &T) {
        self.queue_framed(codec::encode_message(message));
    }

    /// Queues and flushes one message.
    pub async fn send(&mut self, message: &T) -> Result<(), Status> {
        self.queue(message);
        self.flush().await
    }
}

impl<T> Drop for ResponseSink<T> {
    fn drop(&mut self) {
        if let (Some(core), Some(tx)) = (self.core.take(), self.give_back.take()) {
            let _ = tx.send(core);
        }
    }
}
