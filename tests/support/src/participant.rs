//! One participant harness: a CollaborativeSession stream driven message by
//! message, on our own client or on tonic (an independent gRPC
//! implementation) through the same API, and the other three RPCs on either.
//!
//! A [`Link`] is one HTTP/2 connection of either client. Receiving is lazy:
//! a participant that does not read leaves its flow-control windows closed,
//! as a slow reader would. Every wait has a deadline; a participant tracks
//! the latest document version and sequence number it has seen (for edits'
//! base version and resumes) and numbers its messages (client sequences).

use std::net::SocketAddr;
use std::time::Duration;

use codereview::grpc::client::{
    CallOptions, CallReceiver, CallSender, Channel, ChannelConfig, Endpoint,
};
use codereview::grpc::{Code, Status};
use codereview::pb::codereview::{
    Ack, CodeEdit, Error, FileChunk, Joined, Notice, SessionMessage, Snapshot, SnapshotRequest,
    UploadSummary, WatchRequest, code_edit::Op, notice::Kind as NoticeKind,
    session_message::Payload,
};
use codereview::pb::health::{HealthCheckRequest, HealthCheckResponse};
use codereview::pb::paths::{COLLABORATIVE_SESSION, GET_SNAPSHOT, UPLOAD_FILES, WATCH_SESSION};
use codereview::review::roles::Role;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::codec::CompressionEncoding;
use tonic::codegen::http::uri::PathAndQuery;
use tonic::metadata::{MetadataKey, MetadataValue};
use tonic_prost::ProstCodec;

use crate::payloads::{as_notice, edit, is_caught_up, message};
use crate::proxy::Proxy;
use crate::server::TestServer;
use crate::tls::auth_options;
use crate::{LONG, QUIET, STEP, within};

// ---------------------------------------------------------------------------
// Connections

/// One HTTP/2 connection to the server, on our own client or on tonic
/// (gzip-compressing its requests and accepting gzip responses, or not).
#[derive(Clone, Debug)]
pub enum Link {
    Own(Channel),
    Tonic(tonic::transport::Channel, Gzip),
}

/// Whether tonic compresses what it sends and accepts compressed responses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Gzip {
    Off,
    On,
}

impl From<&Channel> for Link {
    fn from(channel: &Channel) -> Link {
        Link::Own(channel.clone())
    }
}

impl Link {
    /// Our own client, plaintext, with `config`.
    pub async fn own_with(addr: SocketAddr, config: ChannelConfig) -> Link {
        let endpoint = Endpoint::parse(&format!("http://{addr}")).expect("an endpoint");
        let channel = within(STEP * 2, "connect", Channel::connect(&endpoint, &config)).await;
        Link::Own(channel.unwrap_or_else(|status| panic!("connect to {addr}: {status}")))
    }

    /// tonic, plaintext, advertising `stream_window` (tonic's default when
    /// None): a small window makes the server stop sending once that many
    /// unread bytes are in flight.
    pub async fn tonic(addr: SocketAddr, stream_window: Option<u32>) -> Link {
        Link::tonic_with(addr, stream_window, Gzip::Off).await
    }

    pub async fn tonic_with(addr: SocketAddr, stream_window: Option<u32>, gzip: Gzip) -> Link {
        let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .expect("valid url")
            .tcp_nodelay(true)
            .connect_timeout(STEP)
            .initial_stream_window_size(stream_window);
        Link::Tonic(
            endpoint.connect().await.expect("connect to the server"),
            gzip,
        )
    }

    /// A unary call.
    pub async fn unary<Req, Resp>(
        &self,
        path: &'static str,
        request: &Req,
        options: CallOptions,
    ) -> Result<Resp, Status>
    where
        Req: prost::Message + Clone + Send + 'static,
        Resp: prost::Message + Default + Send + 'static,
    {
        match self {
            Link::Own(channel) => channel.unary(path, request, options).await,
            Link::Tonic(channel, gzip) => {
                let mut grpc = tonic_client(channel, *gzip).await?;
                let request = tonic_request(request.clone(), &options);
                let codec = ProstCodec::<Req, Resp>::default();
                let response = grpc
                    .unary(request, PathAndQuery::from_static(path), codec)
                    .await;
                response
                    .map(tonic::Response::into_inner)
                    .map_err(from_tonic)
            }
        }
    }

    /// Starts a CollaborativeSession sending `first`, or a WatchSession; a
    /// refusal shows as the inbox's end.
    async fn start(
        &self,
        options: CallOptions,
        first: First<'_>,
        label: String,
    ) -> (Sender, Inbox) {
        let (sender, source) = match self {
            Link::Own(channel) => {
                let path = match first {
                    First::Session(_) => COLLABORATIVE_SESSION,
                    First::Watch(_) => WATCH_SESSION,
                };
                match within(STEP, "start a call", channel.start(path, options)).await {
                    Err(status) => (Sender::Closed, Err(status)),
                    Ok(mut call) => {
                        // The server may refuse at once; the refusal is read later.
                        let send = async {
                            match first {
                                First::Session(m) => call.send(m).await,
                                First::Watch(request) => call.send(request).await,
                            }
                        };
                        let _ = within(STEP, "send the first message", send).await;
                        if matches!(first, First::Watch(_)) {
                            call.close_send();
                        }
                        let (sender, receiver) = call.split();
                        (Sender::Own(sender), Ok(Source::Own(receiver)))
                    }
                }
            }
            Link::Tonic(channel, gzip) => {
                let mut tx = None;
                let started = async {
                    let mut grpc = tonic_client(channel, *gzip).await?;
                    let response = match first {
                        First::Session(m) => {
                            let (sender, rx) = mpsc::unbounded_channel();
                            sender.send(m.clone()).expect("queued");
                            tx = Some(sender);
                            let request = tonic_request(UnboundedReceiverStream::new(rx), &options);
                            let codec = ProstCodec::<SessionMessage, SessionMessage>::default();
                            let path = PathAndQuery::from_static(COLLABORATIVE_SESSION);
                            grpc.streaming(request, path, codec).await
                        }
                        First::Watch(request) => {
                            let request = tonic_request(request.clone(), &options);
                            let codec = ProstCodec::<WatchRequest, SessionMessage>::default();
                            let path = PathAndQuery::from_static(WATCH_SESSION);
                            grpc.server_streaming(request, path, codec).await
                        }
                    };
                    response
                        .map(tonic::Response::into_inner)
                        .map_err(from_tonic)
                };
                let stream = within(STEP, "the server's response headers", started).await;
                (Sender::Tonic(tx), stream.map(Source::Tonic))
            }
        };
        let mut inbox = Inbox {
            label,
            source: Source::Done,
            ended: None,
            log: Vec::new(),
            version: 0,
            last_sequence: 0,
            sender: None,
            _link: self.clone(),
        };
        match source {
            Ok(source) => inbox.source = source,
            Err(status) => inbox.ended = Some(status),
        }
        (sender, inbox)
    }
}

/// The first message of a streaming call.
#[derive(Clone, Copy)]
enum First<'a> {
    Session(&'a SessionMessage),
    Watch(&'a WatchRequest),
}

async fn tonic_client(
    channel: &tonic::transport::Channel,
    gzip: Gzip,
) -> Result<tonic::client::Grpc<tonic::transport::Channel>, Status> {
    let mut grpc = tonic::client::Grpc::new(channel.clone())
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20);
    if gzip == Gzip::On {
        grpc = grpc
            .send_compressed(CompressionEncoding::Gzip)
            .accept_compressed(CompressionEncoding::Gzip);
    }
    grpc.ready()
        .await
        .map_err(|e| Status::unavailable(e.to_string()))?;
    Ok(grpc)
}

/// A tonic request carrying `options` (ASCII metadata and timeout).
fn tonic_request<T>(message: T, options: &CallOptions) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    for (key, value) in options.metadata.iter() {
        if let (Ok(key), Ok(value)) = (
            MetadataKey::from_bytes(key.as_bytes()),
            MetadataValue::try_from(value),
        ) {
            request.metadata_mut().append(key, value);
        }
    }
    if let Some(timeout) = options.timeout {
        request.set_timeout(timeout);
    }
    request
}

/// tonic's status as ours (the code and message the server sent).
pub fn from_tonic(status: tonic::Status) -> Status {
    Status::new(Code::from_i32(status.code() as i32), status.message())
}

// ---------------------------------------------------------------------------
// Receiving

/// What a stream delivered next.
#[derive(Debug)]
pub enum Next {
    Message(SessionMessage),
    /// The call ended with this status (OK included).
    End(Status),
    /// Nothing within the wait.
    Quiet,
}

enum Source {
    Own(CallReceiver),
    Tonic(tonic::Streaming<SessionMessage>),
    Done,
}

/// The receiving side of a session or watch stream, read on demand.
pub struct Inbox {
    pub label: String,
    source: Source,
    ended: Option<Status>,
    /// Everything received so far, in order.
    pub log: Vec<SessionMessage>,
    /// The latest document version seen (for edits' base version).
    pub version: i32,
    /// The highest sequence number seen (for resumes).
    pub last_sequence: u64,
    /// Keeps a watch call open (dropping both halves cancels it).
    sender: Option<Sender>,
    _link: Link,
}

impl Inbox {
    /// The final status once the call has ended.
    pub fn ended(&self) -> Option<&Status> {
        self.ended.as_ref()
    }

    pub async fn next_within(&mut self, wait: Duration) -> Next {
        if let Some(status) = &self.ended {
            return Next::End(status.clone());
        }
        let read = async {
            match &mut self.source {
                Source::Own(receiver) => receiver.message::<SessionMessage>().await,
                Source::Tonic(stream) => stream.message().await.map_err(from_tonic),
                Source::Done => Ok(None),
            }
        };
        match tokio::time::timeout(wait, read).await {
            Err(_) => Next::Quiet,
            Ok(Ok(Some(m))) => {
                let version = match &m.payload {
                    Some(Payload::Joined(j)) => j.version,
                    Some(Payload::Ack(a)) => a.version,
                    Some(Payload::Edit(e)) => e.version,
                    Some(Payload::File(f)) => f.version,
                    Some(Payload::Snapshot(s)) => s.version,
                    _ => 0,
                };
                self.version = self.version.max(version);
                self.last_sequence = self.last_sequence.max(m.sequence);
                self.log.push(m.clone());
                Next::Message(m)
            }
            Ok(result) => {
                let status = result.err().unwrap_or_else(Status::ok);
                self.source = Source::Done;
                self.ended = Some(status.clone());
                Next::End(status)
            }
        }
    }

    async fn next_before(&mut self, deadline: Instant) -> Next {
        let left = deadline.saturating_duration_since(Instant::now());
        self.next_within(left).await
    }

    /// The last messages received, for failure messages.
    fn recent(&self) -> Vec<&SessionMessage> {
        self.log.iter().rev().take(8).rev().collect()
    }

    /// The next message (panics if the call ends or none comes within
    /// [`STEP`]).
    pub async fn recv(&mut self) -> SessionMessage {
        match self.next_within(STEP).await {
            Next::Message(m) => m,
            Next::End(status) => panic!(
                "{}: the call ended ({status}) instead of a message",
                self.label
            ),
            Next::Quiet => panic!("{}: no message within {STEP:?}", self.label),
        }
    }

    /// Messages up to and including the first satisfying `done` (panics
    /// when the call ends first or `wait` runs out).
    pub async fn recv_until_within(
        &mut self,
        wait: Duration,
        mut done: impl FnMut(&SessionMessage) -> bool,
    ) -> Vec<SessionMessage> {
        let deadline = Instant::now() + wait;
        let mut got = Vec::new();
        loop {
            match self.next_before(deadline).await {
                Next::Message(m) => {
                    let stop = done(&m);
                    got.push(m);
                    if stop {
                        return got;
                    }
                }
                Next::End(status) => panic!(
                    "{}: the call ended ({status}) before the awaited message; got {got:#?}",
                    self.label
                ),
                Next::Quiet => panic!(
                    "{}: the awaited message did not come within {wait:?}; got {got:#?}",
                    self.label
                ),
            }
        }
    }

    /// As [`Inbox::recv_until_within`], within [`LONG`].
    pub async fn recv_until(
        &mut self,
        done: impl FnMut(&SessionMessage) -> bool,
    ) -> Vec<SessionMessage> {
        self.recv_until_within(LONG, done).await
    }

    /// The first message satisfying `wanted`, skipping others.
    pub async fn recv_matching(
        &mut self,
        wanted: impl FnMut(&SessionMessage) -> bool,
    ) -> SessionMessage {
        self.recv_until(wanted).await.pop().expect("non-empty")
    }

    /// Everything that arrives until `wait` passes without a message.
    pub async fn drain_quiet(&mut self, wait: Duration) -> Vec<SessionMessage> {
        let mut got = Vec::new();
        while let Next::Message(m) = self.next_within(wait).await {
            got.push(m);
        }
        got
    }

    /// Asserts that nothing arrives within `wait` (the call may not end
    /// either).
    pub async fn expect_quiet(&mut self, wait: Duration) {
        match self.next_within(wait).await {
            Next::Quiet => {}
            other => panic!("{}: expected nothing, got {other:?}", self.label),
        }
    }

    /// Asserts the call is still open: nothing ends it within [`QUIET`]
    /// (messages meanwhile are fine and logged).
    pub async fn assert_open(&mut self) {
        let deadline = Instant::now() + QUIET;
        loop {
            match self.next_before(deadline).await {
                Next::Message(_) => {}
                Next::End(status) => {
                    panic!("{}: the call ended unexpectedly: {status}", self.label)
                }
                Next::Quiet => return,
            }
        }
    }

    /// Reads (and returns) whatever is left until the call ends, with its
    /// final status; panics if it does not end within `wait`.
    pub async fn until_end_within(&mut self, wait: Duration) -> (Vec<SessionMessage>, Status) {
        let deadline = Instant::now() + wait;
        let mut got = Vec::new();
        loop {
            match self.next_before(deadline).await {
                Next::Message(m) => got.push(m),
                Next::End(status) => return (got, status),
                Next::Quiet => panic!(
                    "{}: the call is still open after {wait:?}; last received: {:#?}",
                    self.label,
                    self.recent()
                ),
            }
        }
    }

    /// As [`Inbox::until_end_within`], within [`LONG`].
    pub async fn until_end(&mut self) -> (Vec<SessionMessage>, Status) {
        self.until_end_within(LONG).await
    }

    /// Reads to the end of the call; its final status.
    pub async fn end(&mut self) -> Status {
        self.until_end().await.1
    }

    /// Reads a Joined, the catch-up and the CAUGHT_UP notice; the status if
    /// the call ends first.
    pub async fn try_catch_up(&mut self) -> Result<CatchUp, Status> {
        let deadline = Instant::now() + LONG;
        let mut joined = None;
        let mut messages = Vec::new();
        loop {
            let m = match self.next_before(deadline).await {
                Next::Message(m) => m,
                Next::End(status) => return Err(status),
                Next::Quiet => panic!(
                    "{}: no CAUGHT_UP within {LONG:?}; got {:#?}",
                    self.label,
                    self.recent()
                ),
            };
            match (&joined, &m.payload) {
                (None, Some(Payload::Joined(j))) => joined = Some((m.clone(), *j)),
                (None, _) => panic!("{}: expected Joined first, got {m:?}", self.label),
                (Some(_), _) if is_caught_up(&m) => {
                    let (joined_message, joined) = joined.expect("checked");
                    return Ok(CatchUp {
                        joined_message,
                        joined,
                        messages,
                        caught_up: m,
                    });
                }
                (Some(_), _) => messages.push(m),
            }
        }
    }

    pub async fn catch_up(&mut self) -> CatchUp {
        match self.try_catch_up().await {
            Ok(catch_up) => catch_up,
            Err(status) => panic!("{}: the call ended ({status}) before CAUGHT_UP", self.label),
        }
    }
}

/// What a join delivered before live events.
#[derive(Debug, Clone)]
pub struct CatchUp {
    pub joined_message: SessionMessage,
    pub joined: Joined,
    /// Between Joined and CAUGHT_UP (history, snapshot or resume).
    pub messages: Vec<SessionMessage>,
    pub caught_up: SessionMessage,
}

// ---------------------------------------------------------------------------
// Participants

/// The sending half of a call.
enum Sender {
    Own(CallSender),
    /// tonic streams what this channel yields; dropping it half-closes.
    Tonic(Option<mpsc::UnboundedSender<SessionMessage>>),
    Closed,
}

/// The outcome of a numbered message.
#[derive(Debug, Clone)]
pub enum Outcome {
    Ack(Ack),
    Error(Error),
}

impl Outcome {
    pub fn ack(self) -> Ack {
        match self {
            Outcome::Ack(ack) => ack,
            Outcome::Error(error) => panic!("expected an Ack, got {error:?}"),
        }
    }

    pub fn error(self) -> Error {
        match self {
            Outcome::Error(error) => error,
            Outcome::Ack(ack) => panic!("expected an Error, got {ack:?}"),
        }
    }

    /// The per-message error code (0 for an Ack).
    pub fn code(&self) -> i32 {
        match self {
            Outcome::Ack(_) => 0,
            Outcome::Error(error) => error.code,
        }
    }
}

/// One CollaborativeSession stream.
pub struct Participant {
    pub session: String,
    pub user: String,
    sender: Sender,
    inbox: Option<Inbox>,
    link: Option<Link>,
    proxy: Option<Proxy>,
    next_client_sequence: u64,
}

/// A participant reads through its inbox: `p.recv()` is `p.inbox().recv()`.
impl std::ops::Deref for Participant {
    type Target = Inbox;

    fn deref(&self) -> &Inbox {
        self.inbox.as_ref().expect("the stream was cancelled")
    }
}

impl std::ops::DerefMut for Participant {
    fn deref_mut(&mut self) -> &mut Inbox {
        self.inbox()
    }
}

impl Participant {
    /// Opens the stream on `link` and sends `first` (the server may refuse
    /// it: the refusal is the inbox's end).
    pub async fn open(
        link: impl Into<Link>,
        token: Option<&str>,
        first: SessionMessage,
    ) -> Participant {
        let link = link.into();
        let label = format!("{}@{}", first.user_id, first.session_id);
        let (sender, inbox) = link
            .start(auth_options(token), First::Session(&first), label)
            .await;
        Participant {
            session: first.session_id,
            user: first.user_id,
            sender,
            inbox: Some(inbox),
            link: Some(link),
            proxy: None,
            next_client_sequence: 1,
        }
    }

    /// Opens with `first` and reads the catch-up; the status if the stream
    /// ends first. Numbering continues the user's (a resume must not reuse
    /// client sequence numbers).
    pub async fn try_join(
        link: impl Into<Link>,
        token: Option<&str>,
        first: SessionMessage,
    ) -> Result<(Participant, CatchUp), Status> {
        let mut p = Participant::open(link, token, first).await;
        let catch_up = p.inbox().try_catch_up().await?;
        p.next_client_sequence = catch_up.joined.last_client_sequence + 1;
        Ok((p, catch_up))
    }

    /// Joins `session` as `user` with a plain `Join`.
    pub async fn join(
        link: impl Into<Link>,
        token: Option<&str>,
        session: &str,
        user: &str,
    ) -> (Participant, CatchUp) {
        let first = crate::payloads::join_message(session, user);
        Participant::try_join(link, token, first)
            .await
            .unwrap_or_else(|status| panic!("{user} could not join {session}: {status}"))
    }

    /// Joins on a new connection to `server` (with a token when it needs one).
    pub async fn join_server(
        server: &TestServer,
        session: &str,
        user: &str,
        role: Role,
    ) -> Participant {
        let token = server.token_for(user, role);
        Participant::join(&server.channel().await, token.as_deref(), session, user)
            .await
            .0
    }

    /// Routes the participant's connection through `proxy`, which
    /// [`Participant::cut_connection`] cuts.
    pub fn behind(mut self, proxy: Proxy) -> Participant {
        self.proxy = Some(proxy);
        self
    }

    /// The connection the stream runs on (for more calls on it).
    pub fn link(&self) -> Link {
        self.link.clone().expect("the connection was cut")
    }

    pub fn inbox(&mut self) -> &mut Inbox {
        self.inbox.as_mut().expect("the stream was cancelled")
    }

    /// A message from this participant (session and user filled in).
    pub fn message(&self, payload: Option<Payload>, client_sequence: u64) -> SessionMessage {
        SessionMessage {
            client_sequence,
            ..message(&self.session, &self.user, payload)
        }
    }

    /// Takes the next client sequence number.
    pub fn take_client_sequence(&mut self) -> u64 {
        self.next_client_sequence += 1;
        self.next_client_sequence - 1
    }

    pub fn set_next_client_sequence(&mut self, next: u64) {
        self.next_client_sequence = next;
    }

    /// Queues a message without writing it yet (tonic sends at once).
    pub fn queue_raw(&mut self, message: SessionMessage) {
        match &mut self.sender {
            Sender::Own(sender) => sender.queue(&message),
            Sender::Tonic(Some(tx)) => tx.send(message).expect("the request stream is open"),
            Sender::Tonic(None) | Sender::Closed => {
                panic!("{}: the sending side is closed", self.user)
            }
        }
    }

    /// Writes what is queued (as flow control allows).
    pub async fn flush_raw(&mut self) -> Result<(), Status> {
        match &mut self.sender {
            Sender::Own(sender) => within(STEP, "flush", sender.flush()).await,
            _ => Ok(()),
        }
    }

    pub async fn flush(&mut self) {
        let result = self.flush_raw().await;
        result.unwrap_or_else(|status| panic!("{}: send failed: {status}", self.user));
    }

    /// Sends a message as is.
    pub async fn send_raw(&mut self, message: SessionMessage) -> Result<(), Status> {
        match &mut self.sender {
            Sender::Own(sender) => within(STEP, "send", sender.send(&message)).await,
            Sender::Tonic(Some(tx)) => tx
                .send(message)
                .map_err(|_| Status::unavailable("the request stream is closed")),
            Sender::Tonic(None) | Sender::Closed => {
                Err(Status::internal("the sending side is closed"))
            }
        }
    }

    /// Sends a payload without a client sequence (the article's clients).
    pub async fn send_payload(&mut self, payload: Option<Payload>) {
        let message = self.message(payload, 0);
        self.queue_raw(message);
        self.flush().await;
    }

    /// Queues `payload` numbered with the next client sequence; returns it.
    pub fn queue(&mut self, payload: Payload) -> u64 {
        let client_sequence = self.take_client_sequence();
        let message = self.message(Some(payload), client_sequence);
        self.queue_raw(message);
        client_sequence
    }

    /// Sends `payload` numbered with the next client sequence; returns it.
    pub async fn send(&mut self, payload: Payload) -> u64 {
        let client_sequence = self.queue(payload);
        self.flush().await;
        client_sequence
    }

    /// Sends an edit based on the latest version seen.
    pub async fn edit(&mut self, op: Op, file: &str, line: i32, content: &str) -> u64 {
        let version = self.version;
        self.send(edit(op, file, line, content, version)).await
    }

    /// Sends an edit based on `version`.
    pub async fn edit_at(
        &mut self,
        op: Op,
        file: &str,
        line: i32,
        content: &str,
        version: i32,
    ) -> u64 {
        self.send(edit(op, file, line, content, version)).await
    }

    /// The Ack or Error answering `client_sequence` (skipping other messages).
    pub async fn outcome(&mut self, client_sequence: u64) -> Outcome {
        let m = self
            .recv_matching(|m| {
                m.client_sequence == client_sequence
                    && matches!(m.payload, Some(Payload::Ack(_) | Payload::Error(_)))
            })
            .await;
        let (answers, outcome) = match m.payload {
            Some(Payload::Ack(ack)) => (ack.client_sequence, Outcome::Ack(ack)),
            Some(Payload::Error(error)) => (error.client_sequence, Outcome::Error(error)),
            _ => unreachable!(),
        };
        // The message and its payload name the same client sequence.
        assert_eq!(answers, client_sequence, "{}: {outcome:?}", self.user);
        outcome
    }

    /// The acknowledgement of `client_sequence` (panics on an Error for it).
    pub async fn ack_of(&mut self, client_sequence: u64) -> Ack {
        self.outcome(client_sequence).await.ack()
    }

    /// The edit whose content is `content` (skipping other messages).
    pub async fn recv_edit(&mut self, content: &str) -> CodeEdit {
        let m = self
            .recv_matching(|m| matches!(&m.payload, Some(Payload::Edit(e)) if e.content == content))
            .await;
        match m.payload {
            Some(Payload::Edit(edit)) => edit,
            _ => unreachable!(),
        }
    }

    /// The next notice of `kind` (skipping other messages).
    pub async fn recv_notice(&mut self, kind: NoticeKind) -> (SessionMessage, Notice) {
        let m = self.recv_matching(|m| as_notice(m, kind).is_some()).await;
        let notice = as_notice(&m, kind).expect("matched").clone();
        (m, notice)
    }

    /// Half-closes (END_STREAM), as a client that is done does; the
    /// receiving side stays readable.
    pub fn close_send(&mut self) {
        match &mut self.sender {
            Sender::Own(sender) => sender.close_send(),
            Sender::Tonic(tx) => *tx = None,
            Sender::Closed => {}
        }
    }

    /// Cancels the call (RST_STREAM CANCEL).
    pub fn cancel(&mut self) {
        if let Sender::Own(sender) = &mut self.sender {
            sender.cancel();
        }
        self.sender = Sender::Closed;
        self.inbox = None;
    }

    /// Cuts the TCP connection (needs [`Participant::behind`] a proxy).
    pub fn cut_connection(&mut self) {
        self.proxy
            .take()
            .expect("a participant behind a proxy")
            .cut();
        self.sender = Sender::Closed;
        self.inbox = None;
        self.link = None;
    }
}

// ---------------------------------------------------------------------------
// The other RPCs

/// GetSnapshot.
pub async fn get_snapshot(
    link: impl Into<Link>,
    token: Option<&str>,
    session: &str,
) -> Result<Snapshot, Status> {
    let request = SnapshotRequest {
        session_id: session.to_owned(),
    };
    let call = async {
        link.into()
            .unary(GET_SNAPSHOT, &request, auth_options(token))
            .await
    };
    within(STEP, "GetSnapshot", call).await
}

/// The lines of `file` in the session's snapshot (panics if the call fails).
pub async fn snapshot_lines(link: impl Into<Link>, session: &str, file: &str) -> Vec<String> {
    let snapshot = get_snapshot(link, None, session).await.expect("a snapshot");
    let file = snapshot.files.into_iter().find(|f| f.file_path == file);
    file.map(|f| f.lines).unwrap_or_default()
}

/// A health check of the whole server (no token); the serving status.
pub async fn health_check(link: impl Into<Link>) -> Result<i32, Status> {
    let request = HealthCheckRequest {
        service: String::new(),
    };
    let call = async {
        let link = link.into();
        link.unary::<_, HealthCheckResponse>(
            codereview::grpc::health::CHECK,
            &request,
            CallOptions::default(),
        )
        .await
    };
    within(STEP, "Health/Check", call).await.map(|r| r.status)
}

/// UploadFiles with `chunks`.
pub async fn upload(
    link: impl Into<Link>,
    options: CallOptions,
    chunks: &[FileChunk],
) -> Result<UploadSummary, Status> {
    let link = link.into();
    let call = async {
        match &link {
            Link::Own(channel) => {
                let mut call = channel.start(UPLOAD_FILES, options).await?;
                for chunk in chunks {
                    if let Err(send_error) = call.send(chunk).await {
                        return Err(call
                            .message::<UploadSummary>()
                            .await
                            .err()
                            .unwrap_or(send_error));
                    }
                }
                call.close_send();
                let summary = call.message::<UploadSummary>().await?;
                let rest = call.message::<UploadSummary>().await?;
                assert!(rest.is_none(), "UploadFiles returned two messages");
                summary.ok_or_else(|| Status::internal("no UploadSummary"))
            }
            Link::Tonic(channel, gzip) => {
                let mut grpc = tonic_client(channel, *gzip).await?;
                let request = tonic_request(tokio_stream::iter(chunks.to_vec()), &options);
                let codec = ProstCodec::<FileChunk, UploadSummary>::default();
                let path = PathAndQuery::from_static(UPLOAD_FILES);
                let response = grpc.client_streaming(request, path, codec).await;
                response
                    .map(tonic::Response::into_inner)
                    .map_err(from_tonic)
            }
        }
    };
    within(STEP, "UploadFiles", call).await
}

/// WatchSession: its inbox (a refusal is the inbox's end).
pub async fn watch(link: impl Into<Link>, token: Option<&str>, request: WatchRequest) -> Inbox {
    let link = link.into();
    let label = format!("watch {}", request.session_id);
    let (sender, mut inbox) = link
        .start(auth_options(token), First::Watch(&request), label)
        .await;
    inbox.sender = Some(sender);
    inbox
}

/// Opens a CollaborativeSession with `first` and reads it to its end (for
/// streams the server refuses): the messages and the final status.
pub async fn session_status(
    link: impl Into<Link>,
    options: CallOptions,
    first: &SessionMessage,
) -> (Vec<SessionMessage>, Status) {
    let link = link.into();
    let label = format!("{}@{} (refused?)", first.user_id, first.session_id);
    let (_sender, mut inbox) = link.start(options, First::Session(first), label).await;
    inbox.until_end_within(STEP).await
}
