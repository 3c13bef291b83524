//! Helpers for the code-review integration tests (`tests/review_service.rs`).
//!
//! Clients are tonic (an independent gRPC implementation) used generically:
//! `tonic::client::Grpc` + `tonic_prost::ProstCodec`, no codegen. Each
//! [`Participant`] has its own HTTP/2 connection, optionally through a
//! [`Proxy`] whose TCP connections can be cut to simulate a dropped network.
//! [`RawSession`] uses our own client with small flow-control windows, for a
//! participant that truly stops reading (tonic buffers what it receives).
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use codereview::pb::codereview::{
    Ack, CodeEdit, Comment, CursorPosition, FileChunk, Join, Joined, PresenceUpdate,
    SessionMessage, Snapshot, SnapshotRequest, UploadSummary, WatchRequest, code_edit::Op,
    joined::Catchup, notice::Kind as NoticeKind, presence_update::Status as Presence,
    session_message::Payload,
};
use codereview::review::registry::{RegistryHandle, RegistryStats};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Status, Streaming};
use tonic_prost::ProstCodec;

pub const COLLABORATIVE_SESSION: &str = "/codereview.v1.CodeReviewService/CollaborativeSession";
pub const GET_SNAPSHOT: &str = "/codereview.v1.CodeReviewService/GetSnapshot";
pub const WATCH_SESSION: &str = "/codereview.v1.CodeReviewService/WatchSession";
pub const UPLOAD_FILES: &str = "/codereview.v1.CodeReviewService/UploadFiles";

/// How long one expected message may take (generous: a loaded CI machine).
pub const STEP: Duration = Duration::from_secs(5);
/// How long to listen when asserting that nothing arrives.
pub const QUIET: Duration = Duration::from_millis(300);
/// How long a `recv_until` may take overall.
pub const LONG: Duration = Duration::from_secs(10);

// ----- connections -----

/// How a participant connects.
#[derive(Debug, Clone, Copy, Default)]
pub struct ConnectOptions {
    /// Through a [`Proxy`], so the TCP connection can be cut.
    pub via_proxy: bool,
    /// The HTTP/2 stream window the client advertises (tonic's default when
    /// `None`). A small window makes the server stop sending once that many
    /// unread bytes are in flight.
    pub stream_window: Option<u32>,
}

/// A tonic channel (one HTTP/2 connection) to `addr`.
pub async fn connect(addr: SocketAddr, stream_window: Option<u32>) -> Channel {
    let mut endpoint = Endpoint::from_shared(format!("http://{addr}"))
        .expect("valid url")
        .tcp_nodelay(true)
        .connect_timeout(STEP);
    if let Some(window) = stream_window {
        endpoint = endpoint.initial_stream_window_size(window);
    }
    endpoint.connect().await.expect("connect to the server")
}

fn grpc(channel: Channel) -> tonic::client::Grpc<Channel> {
    tonic::client::Grpc::new(channel)
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20)
}

fn path(method: &'static str) -> PathAndQuery {
    PathAndQuery::from_static(method)
}

/// A TCP proxy in front of the server: cutting it closes every connection
/// that went through it (both sides), as a network failure would.
pub struct Proxy {
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Proxy {
    pub async fn start(target: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy address");
        let task = tokio::spawn(async move {
            let mut pipes = JoinSet::new();
            while let Ok((mut inbound, _)) = listener.accept().await {
                pipes.spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(target).await else {
                        return;
                    };
                    let _ = inbound.set_nodelay(true);
                    let _ = outbound.set_nodelay(true);
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                });
            }
        });
        Proxy { addr, task }
    }

    /// Cuts every connection (dropping the pipes closes both sockets).
    pub fn cut(self) {
        self.task.abort();
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

// ----- receiving -----

/// What the next read produced.
#[derive(Debug)]
pub enum Next {
    Message(SessionMessage),
    /// The call ended: `Ok` for status OK, the status otherwise.
    Ended(Result<(), Status>),
    /// Nothing within the wait.
    Quiet,
}

/// The receiving half of a session or watch stream.
pub struct Inbox {
    label: String,
    stream: Streaming<SessionMessage>,
    ended: Option<Result<(), Status>>,
    /// Keeps the connection of a watch call alive.
    _channel: Option<Channel>,
}

impl Inbox {
    pub fn new(label: impl Into<String>, stream: Streaming<SessionMessage>) -> Inbox {
        Inbox {
            label: label.into(),
            stream,
            ended: None,
            _channel: None,
        }
    }

    pub fn label(&self) -> &str {
        &self.label
    }

    /// The next message, the end of the call, or `Quiet` after `wait`.
    pub async fn next_within(&mut self, wait: Duration) -> Next {
        if let Some(ended) = &self.ended {
            return Next::Ended(ended.clone());
        }
        match tokio::time::timeout(wait, self.stream.message()).await {
            Err(_) => Next::Quiet,
            Ok(Ok(Some(message))) => Next::Message(message),
            Ok(Ok(None)) => {
                self.ended = Some(Ok(()));
                Next::Ended(Ok(()))
            }
            Ok(Err(status)) => {
                self.ended = Some(Err(status.clone()));
                Next::Ended(Err(status))
            }
        }
    }

    /// The next message (panics if none arrives within [`STEP`] or the call
    /// ends).
    pub async fn recv(&mut self) -> SessionMessage {
        match self.next_within(STEP).await {
            Next::Message(message) => message,
            Next::Ended(end) => panic!(
                "{}: the call ended ({end:?}) instead of a message",
                self.label
            ),
            Next::Quiet => panic!("{}: no message within {STEP:?}", self.label),
        }
    }

    /// Messages up to and including the first matching `done` (panics after
    /// [`LONG`] or when the call ends first).
    pub async fn recv_until(
        &mut self,
        mut done: impl FnMut(&SessionMessage) -> bool,
    ) -> Vec<SessionMessage> {
        let deadline = Instant::now() + LONG;
        let mut got = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next_within(left).await {
                Next::Message(message) => {
                    let stop = done(&message);
                    got.push(message);
                    if stop {
                        return got;
                    }
                }
                Next::Ended(end) => panic!(
                    "{}: the call ended ({end:?}) before the awaited message; got {got:#?}",
                    self.label
                ),
                Next::Quiet => panic!(
                    "{}: the awaited message did not come within {LONG:?}; got {got:#?}",
                    self.label
                ),
            }
        }
    }

    /// The first message matching `wanted`, skipping others.
    pub async fn recv_matching(
        &mut self,
        wanted: impl FnMut(&SessionMessage) -> bool,
    ) -> SessionMessage {
        self.recv_until(wanted).await.pop().expect("non-empty")
    }

    /// Everything that arrives until `wait` passes without a message.
    pub async fn drain_quiet(&mut self, wait: Duration) -> Vec<SessionMessage> {
        let mut got = Vec::new();
        loop {
            match self.next_within(wait).await {
                Next::Message(message) => got.push(message),
                Next::Quiet | Next::Ended(_) => return got,
            }
        }
    }

    /// Asserts that nothing arrives within `wait` (the call may not end either).
    pub async fn expect_quiet(&mut self, wait: Duration) {
        match self.next_within(wait).await {
            Next::Quiet => {}
            other => panic!("{}: expected nothing, got {other:?}", self.label),
        }
    }

    /// Reads (and returns) whatever is left until the call ends, with its
    /// final status; panics if it does not end within [`LONG`].
    pub async fn until_end(&mut self) -> (Vec<SessionMessage>, Result<(), Status>) {
        let deadline = Instant::now() + LONG;
        let mut got = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next_within(left).await {
                Next::Message(message) => got.push(message),
                Next::Ended(end) => return (got, end),
                Next::Quiet => panic!("{}: the call did not end within {LONG:?}", self.label),
            }
        }
    }

    /// Reads a Joined, the catch-up and the CAUGHT_UP notice.
    pub async fn catch_up(&mut self) -> CatchUp {
        let first = self.recv().await;
        let Some(Payload::Joined(joined)) = first.payload.clone() else {
            panic!("{}: expected Joined first, got {first:?}", self.label);
        };
        let mut messages = self.recv_until(is_caught_up).await;
        let caught_up = messages.pop().expect("the notice");
        CatchUp {
            joined_message: first,
            joined,
            messages,
            caught_up,
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

// ----- participants -----

/// One CollaborativeSession stream on its own connection.
pub struct Participant {
    pub session_id: String,
    pub user_id: String,
    tx: Option<mpsc::UnboundedSender<SessionMessage>>,
    inbox: Option<Inbox>,
    channel: Option<Channel>,
    proxy: Option<Proxy>,
    next_client_sequence: u64,
}

impl Participant {
    /// Opens the stream (waits for the response headers, which the server
    /// sends at once); sends nothing yet.
    pub async fn open(addr: SocketAddr, session_id: &str, user_id: &str) -> Participant {
        Participant::open_with(addr, session_id, user_id, ConnectOptions::default()).await
    }

    pub async fn open_with(
        addr: SocketAddr,
        session_id: &str,
        user_id: &str,
        options: ConnectOptions,
    ) -> Participant {
        let (proxy, target) = if options.via_proxy {
            let proxy = Proxy::start(addr).await;
            let target = proxy.addr;
            (Some(proxy), target)
        } else {
            (None, addr)
        };
        let channel = connect(target, options.stream_window).await;
        let (tx, rx) = mpsc::unbounded_channel();
        let mut client = grpc(channel.clone());
        client.ready().await.expect("channel ready");
        let stream = tokio::time::timeout(
            STEP,
            client.streaming::<_, _, SessionMessage, _>(
                Request::new(UnboundedReceiverStream::new(rx)),
                path(COLLABORATIVE_SESSION),
                ProstCodec::<SessionMessage, SessionMessage>::default(),
            ),
        )
        .await
        .expect("the server answers with headers at once")
        .expect("the call starts")
        .into_inner();
        Participant {
            session_id: session_id.to_owned(),
            user_id: user_id.to_owned(),
            tx: Some(tx),
            inbox: Some(Inbox::new(format!("{session_id}/{user_id}"), stream)),
            channel: Some(channel),
            proxy,
            next_client_sequence: 1,
        }
    }

    /// Opens, sends `first` (session and user filled in) and reads the
    /// catch-up.
    pub async fn join_with(
        addr: SocketAddr,
        session_id: &str,
        user_id: &str,
        options: ConnectOptions,
        first: Option<Payload>,
    ) -> (Participant, CatchUp) {
        let mut p = Participant::open_with(addr, session_id, user_id, options).await;
        p.send_payload(first);
        let catch_up = p.inbox().catch_up().await;
        (p, catch_up)
    }

    /// Joins the way the article's clients do: a plain PresenceUpdate JOINED.
    pub async fn join(addr: SocketAddr, session_id: &str, user_id: &str) -> (Participant, CatchUp) {
        Participant::join_with(
            addr,
            session_id,
            user_id,
            ConnectOptions::default(),
            Some(presence(Presence::Joined)),
        )
        .await
    }

    /// Joins with an explicit Join message.
    pub async fn join_explicit(
        addr: SocketAddr,
        session_id: &str,
        user_id: &str,
        options: ConnectOptions,
        join: Join,
    ) -> (Participant, CatchUp) {
        Participant::join_with(
            addr,
            session_id,
            user_id,
            options,
            Some(Payload::Join(join)),
        )
        .await
    }

    pub fn inbox(&mut self) -> &mut Inbox {
        self.inbox.as_mut().expect("the stream was cancelled")
    }

    /// A message from this participant (session and user filled in).
    pub fn message(&self, payload: Option<Payload>, client_sequence: u64) -> SessionMessage {
        SessionMessage {
            session_id: self.session_id.clone(),
            timestamp: 0,
            user_id: self.user_id.clone(),
            payload,
            sequence: 0,
            client_sequence,
        }
    }

    /// Sends a message as is.
    pub fn send(&mut self, message: SessionMessage) {
        self.tx
            .as_ref()
            .expect("the sending side is closed")
            .send(message)
            .expect("the request stream is open");
    }

    /// Sends a payload without a client_sequence (the article's clients).
    pub fn send_payload(&mut self, payload: Option<Payload>) {
        let message = self.message(payload, 0);
        self.send(message);
    }

    /// Sends a payload with the next client_sequence; returns it.
    pub fn send_numbered(&mut self, payload: Payload) -> u64 {
        let client_sequence = self.next_client_sequence;
        self.next_client_sequence += 1;
        let message = self.message(Some(payload), client_sequence);
        self.send(message);
        client_sequence
    }

    /// Sends an edit with the next client_sequence; returns it.
    pub fn edit(&mut self, op: Op, file: &str, line: i32, content: &str, version: i32) -> u64 {
        self.send_numbered(edit(op, file, line, content, version))
    }

    pub fn set_next_client_sequence(&mut self, next: u64) {
        self.next_client_sequence = next;
    }

    pub async fn recv(&mut self) -> SessionMessage {
        self.inbox().recv().await
    }

    pub async fn recv_until(
        &mut self,
        done: impl FnMut(&SessionMessage) -> bool,
    ) -> Vec<SessionMessage> {
        self.inbox().recv_until(done).await
    }

    pub async fn recv_matching(
        &mut self,
        wanted: impl FnMut(&SessionMessage) -> bool,
    ) -> SessionMessage {
        self.inbox().recv_matching(wanted).await
    }

    pub async fn expect_quiet(&mut self, wait: Duration) {
        self.inbox().expect_quiet(wait).await
    }

    pub async fn drain_quiet(&mut self, wait: Duration) -> Vec<SessionMessage> {
        self.inbox().drain_quiet(wait).await
    }

    /// The acknowledgement of `client_sequence` (skipping other messages;
    /// panics on an Error for it).
    pub async fn ack_of(&mut self, client_sequence: u64) -> Ack {
        let message = self
            .recv_matching(|m| match &m.payload {
                Some(Payload::Ack(a)) => a.client_sequence == client_sequence,
                Some(Payload::Error(e)) => e.client_sequence == client_sequence,
                _ => false,
            })
            .await;
        assert_eq!(message.client_sequence, client_sequence, "{message:?}");
        match message.payload {
            Some(Payload::Ack(ack)) => ack,
            other => panic!(
                "{}: expected an Ack for {client_sequence}, got {other:?}",
                self.user_id
            ),
        }
    }

    /// The stream ends normally: half-close (END_STREAM), as a client that is
    /// done does. The receiving side stays readable.
    pub fn close_send(&mut self) {
        self.tx = None;
    }

    /// Cancels the call (tonic resets the stream when it is dropped).
    pub fn cancel(&mut self) {
        self.inbox = None;
        self.tx = None;
    }

    /// Cuts the TCP connection (requires `via_proxy`).
    pub fn cut_connection(&mut self) {
        self.proxy
            .take()
            .expect("connect with via_proxy to cut the connection")
            .cut();
        self.inbox = None;
        self.tx = None;
        self.channel = None;
    }
}

// ----- our own client, for a reader that truly stops reading -----

/// A session stream on our own client with 64 KiB windows: what it does not
/// read stays unacknowledged in flow control, so the server must stop.
pub struct RawSession {
    pub call: codereview::grpc::client::ClientCall,
    _channel: codereview::grpc::client::Channel,
}

impl RawSession {
    pub async fn open(addr: SocketAddr, first: &SessionMessage) -> RawSession {
        use codereview::grpc::client::{CallOptions, Channel, ChannelConfig, Endpoint};
        let endpoint = Endpoint::parse(&format!("http://{addr}")).expect("endpoint");
        let config = ChannelConfig {
            initial_stream_window: 65_535,
            initial_connection_window: 65_535,
            ..ChannelConfig::default()
        };
        let channel = Channel::connect(&endpoint, &config).await.expect("connect");
        let mut call = channel
            .start(COLLABORATIVE_SESSION, CallOptions::default())
            .await
            .expect("start the call");
        call.send(first).await.expect("send the first message");
        RawSession {
            call,
            _channel: channel,
        }
    }

    /// Reads everything until the call ends; returns the messages and the
    /// final status.
    pub async fn until_end(
        &mut self,
    ) -> (Vec<SessionMessage>, Result<(), codereview::grpc::Status>) {
        let mut got = Vec::new();
        loop {
            match tokio::time::timeout(STEP, self.call.message::<SessionMessage>()).await {
                Err(_) => panic!("the raw call did not end; got {} messages", got.len()),
                Ok(Ok(Some(message))) => got.push(message),
                Ok(Ok(None)) => return (got, Ok(())),
                Ok(Err(status)) => return (got, Err(status)),
            }
        }
    }
}

// ----- the other RPCs -----

pub async fn get_snapshot(addr: SocketAddr, session_id: &str) -> Result<Snapshot, Status> {
    let mut client = grpc(connect(addr, None).await);
    client.ready().await.expect("ready");
    client
        .unary(
            Request::new(SnapshotRequest {
                session_id: session_id.to_owned(),
            }),
            path(GET_SNAPSHOT),
            ProstCodec::<SnapshotRequest, Snapshot>::default(),
        )
        .await
        .map(tonic::Response::into_inner)
}

/// The lines of `file` in the session's snapshot (panics if the call fails).
pub async fn snapshot_lines(addr: SocketAddr, session_id: &str, file: &str) -> Vec<String> {
    let snapshot = get_snapshot(addr, session_id).await.expect("snapshot");
    snapshot
        .files
        .into_iter()
        .find(|f| f.file_path == file)
        .map(|f| f.lines)
        .unwrap_or_default()
}

pub async fn upload(addr: SocketAddr, chunks: Vec<FileChunk>) -> Result<UploadSummary, Status> {
    let mut client = grpc(connect(addr, None).await);
    client.ready().await.expect("ready");
    client
        .client_streaming(
            Request::new(tokio_stream::iter(chunks)),
            path(UPLOAD_FILES),
            ProstCodec::<FileChunk, UploadSummary>::default(),
        )
        .await
        .map(tonic::Response::into_inner)
}

pub fn chunk(session_id: &str, file_path: &str, content: impl Into<Vec<u8>>) -> FileChunk {
    FileChunk {
        session_id: session_id.to_owned(),
        file_path: file_path.to_owned(),
        content: content.into().into(),
    }
}

/// Starts a WatchSession call. A call refused at once fails here; one
/// refused after its headers fails at the first read.
pub async fn watch(addr: SocketAddr, request: WatchRequest) -> Result<Inbox, Status> {
    let channel = connect(addr, None).await;
    let mut client = grpc(channel.clone());
    client.ready().await.expect("ready");
    let label = format!("watch {}", request.session_id);
    let stream = client
        .server_streaming(
            Request::new(request),
            path(WATCH_SESSION),
            ProstCodec::<WatchRequest, SessionMessage>::default(),
        )
        .await?
        .into_inner();
    let mut inbox = Inbox::new(label, stream);
    inbox._channel = Some(channel);
    Ok(inbox)
}

/// Starts a session call whose first message is `first` and returns how the
/// call ended (for calls the server refuses). Panics if it does not end.
pub async fn session_call_status(addr: SocketAddr, first: SessionMessage) -> Result<(), Status> {
    let channel = connect(addr, None).await;
    let mut client = grpc(channel);
    client.ready().await.expect("ready");
    let (tx, rx) = mpsc::unbounded_channel();
    tx.send(first).expect("queued");
    let started = client
        .streaming::<_, _, SessionMessage, _>(
            Request::new(UnboundedReceiverStream::new(rx)),
            path(COLLABORATIVE_SESSION),
            ProstCodec::<SessionMessage, SessionMessage>::default(),
        )
        .await;
    let result = match started {
        Err(status) => Err(status),
        Ok(response) => {
            let mut inbox = Inbox::new("refused", response.into_inner());
            let (messages, end) = inbox.until_end().await;
            assert!(
                messages.is_empty(),
                "a refused call delivers nothing: {messages:?}"
            );
            end
        }
    };
    drop(tx);
    result
}

// ----- building messages -----

pub fn edit(op: Op, file: &str, line: i32, content: &str, version: i32) -> Payload {
    Payload::Edit(CodeEdit {
        file_path: file.to_owned(),
        line_number: line,
        content: content.to_owned(),
        version,
        op: op as i32,
    })
}

pub fn presence(status: Presence) -> Payload {
    Payload::Presence(PresenceUpdate {
        status: status as i32,
        role: 0,
    })
}

pub fn cursor(file: &str, line: i32, column: i32) -> Payload {
    Payload::Cursor(CursorPosition {
        file_path: file.to_owned(),
        line,
        column,
    })
}

pub fn comment(file: &str, line: i32, text: &str) -> Payload {
    Payload::Comment(Comment {
        comment_id: String::new(),
        line_number: line,
        text: text.to_owned(),
        file_path: file.to_owned(),
    })
}

// ----- reading messages -----

pub fn is_caught_up(m: &SessionMessage) -> bool {
    matches!(&m.payload, Some(Payload::Notice(n)) if n.kind == NoticeKind::CaughtUp as i32)
}

/// `(user, status)` of a presence message.
pub fn presence_of(m: &SessionMessage) -> Option<(&str, Presence)> {
    match &m.payload {
        Some(Payload::Presence(p)) => Some((
            m.user_id.as_str(),
            Presence::try_from(p.status).expect("a known status"),
        )),
        _ => None,
    }
}

pub fn is_presence(m: &SessionMessage, user: &str, status: Presence) -> bool {
    presence_of(m) == Some((user, status))
}

pub fn as_edit(m: &SessionMessage) -> Option<&CodeEdit> {
    match &m.payload {
        Some(Payload::Edit(e)) => Some(e),
        _ => None,
    }
}

pub fn as_ack(m: &SessionMessage) -> Option<&Ack> {
    match &m.payload {
        Some(Payload::Ack(a)) => Some(a),
        _ => None,
    }
}

pub fn catchup_of(joined: &Joined) -> Catchup {
    Catchup::try_from(joined.catchup).expect("a known catch-up kind")
}

/// The essential sequence number a message accounts for, if any: edits,
/// comments, uploads, JOINED/LEFT, and (non-duplicate, non-cursor) acks of
/// the receiver's own actions.
pub fn essential_sequence(m: &SessionMessage) -> Option<u64> {
    match &m.payload {
        Some(Payload::Edit(_) | Payload::Comment(_) | Payload::File(_)) => Some(m.sequence),
        Some(Payload::Presence(p))
            if p.status == Presence::Joined as i32 || p.status == Presence::Left as i32 =>
        {
            Some(m.sequence)
        }
        Some(Payload::Ack(a)) if a.sequence != 0 && !a.duplicate => Some(a.sequence),
        _ => None,
    }
}

/// Checks that essential sequence numbers come densely: each exactly the
/// previous plus one.
#[derive(Debug, Clone)]
pub struct Dense {
    pub last: u64,
    pub label: String,
}

impl Dense {
    pub fn after(last: u64, label: impl Into<String>) -> Dense {
        Dense {
            last,
            label: label.into(),
        }
    }

    /// Feeds one message; returns its essential sequence number if it has one.
    pub fn observe(&mut self, m: &SessionMessage) -> Option<u64> {
        let sequence = essential_sequence(m)?;
        assert_eq!(
            sequence,
            self.last + 1,
            "{}: essential sequence numbers must be dense (no loss, no duplicate): {m:?}",
            self.label
        );
        self.last = sequence;
        Some(sequence)
    }
}

/// What each participant records of the total order: sequence -> (user,
/// what, version).
pub type Order = BTreeMap<u64, (String, &'static str, i32)>;

/// Records an essential event in `order` as `me` sees it.
pub fn record(order: &mut Order, me: &str, m: &SessionMessage) {
    let Some(sequence) = essential_sequence(m) else {
        return;
    };
    let entry = match &m.payload {
        Some(Payload::Edit(e)) => (m.user_id.clone(), "edit", e.version),
        Some(Payload::Ack(a)) => (me.to_owned(), "own", a.version),
        Some(Payload::Presence(p)) if p.status == Presence::Joined as i32 => {
            (m.user_id.clone(), "joined", -1)
        }
        Some(Payload::Presence(_)) => (m.user_id.clone(), "left", -1),
        Some(Payload::Comment(_)) => (m.user_id.clone(), "comment", -1),
        Some(Payload::File(f)) => (m.user_id.clone(), "file", f.version),
        _ => return,
    };
    assert!(
        order.insert(sequence, entry).is_none(),
        "{me}: sequence {sequence} seen twice"
    );
}

// ----- the registry -----

/// Polls the registry's stats until `done` holds (panics with the last
/// figures after `within`).
pub async fn wait_for_stats(
    registry: &RegistryHandle,
    within: Duration,
    mut done: impl FnMut(&RegistryStats) -> bool,
) -> RegistryStats {
    let deadline = Instant::now() + within;
    loop {
        let stats = registry.stats().await.expect("registry running");
        if done(&stats) {
            return stats;
        }
        if Instant::now() >= deadline {
            panic!("registry stats did not settle within {within:?}: {stats:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Sessions, participants, members, watchers and parked pulls all zero.
pub fn is_empty(stats: &RegistryStats) -> bool {
    stats.sessions == 0
        && stats.participants == 0
        && stats.members == 0
        && stats.watchers == 0
        && stats.parked_pulls == 0
}

/// Runs `f` with a deadline, panicking with `what` when it passes.
pub async fn within<T>(limit: Duration, what: &str, f: impl Future<Output = T>) -> T {
    match tokio::time::timeout(limit, f).await {
        Ok(value) => value,
        Err(_) => panic!("{what}: not done within {limit:?}"),
    }
}

pub fn code_of(result: &Result<(), Status>) -> Code {
    match result {
        Ok(()) => Code::Ok,
        Err(status) => status.code(),
    }
}

// ----- a client-side OT replica driven over the wire -----

/// A participant that keeps a [`Replica`](codereview::review::replica::Replica)
/// (as `codereview join` and the simulator in `session_tests.rs` do): local
/// edits apply at once and are sent with the replica's version; remote edits,
/// uploads and acks are applied as they arrive.
pub struct OtClient {
    pub p: Participant,
    pub replica: codereview::review::replica::Replica,
    pub dense: Dense,
    pub noop_acks: usize,
}

impl OtClient {
    /// Joins with a snapshot and starts the replica from it.
    pub async fn join(addr: SocketAddr, session_id: &str, user_id: &str) -> OtClient {
        let (p, catch_up) = Participant::join_explicit(
            addr,
            session_id,
            user_id,
            ConnectOptions::default(),
            Join {
                want_snapshot: true,
                ..Join::default()
            },
        )
        .await;
        assert_eq!(catchup_of(&catch_up.joined), Catchup::Snapshot);
        let Some(Payload::Snapshot(snapshot)) = &catch_up.messages[0].payload else {
            panic!("a Snapshot follows Joined(SNAPSHOT): {catch_up:?}");
        };
        let mut replica = codereview::review::replica::Replica::new();
        replica.reset(snapshot);
        OtClient {
            dense: Dense::after(catch_up.joined.sequence, user_id),
            p,
            replica,
            noop_acks: 0,
        }
    }

    /// Applies `op` to `file` locally and sends it (without waiting).
    pub fn local(&mut self, file: &str, op: codereview::review::ot::LineOp) {
        let client_sequence = self.p.next_client_sequence;
        self.p.next_client_sequence += 1;
        let op = codereview::review::ot::FileOp {
            path: std::sync::Arc::from(file),
            op,
        };
        let wire = self
            .replica
            .local_edit(op, client_sequence)
            .unwrap_or_else(|e| panic!("{}: local edit invalid: {e:?}", self.p.user_id));
        let message = self.p.message(Some(Payload::Edit(wire)), client_sequence);
        self.p.send(message);
    }

    /// Applies one message from the server to the replica.
    pub fn process(&mut self, m: &SessionMessage) {
        self.dense.observe(m);
        match &m.payload {
            Some(Payload::Edit(e)) => {
                let op = codereview::review::replica::from_wire(e).expect("a valid edit");
                self.replica
                    .remote(op, e.version)
                    .unwrap_or_else(|gap| panic!("{}: version gap {gap:?}", self.p.user_id));
            }
            Some(Payload::File(f)) => self
                .replica
                .remote_file(&f.file_path, &f.lines, f.version)
                .unwrap_or_else(|gap| panic!("{}: version gap {gap:?}", self.p.user_id)),
            Some(Payload::Ack(a)) => {
                if a.noop {
                    self.noop_acks += 1;
                }
                self.replica.ack(a.client_sequence, a.version);
            }
            Some(Payload::Error(e)) => panic!("{}: unexpected error {e:?}", self.p.user_id),
            _ => {}
        }
    }

    /// Processes at most one message arriving within `wait`; returns whether
    /// one did.
    pub async fn pump_one(&mut self, wait: Duration) -> bool {
        match self.p.inbox().next_within(wait).await {
            Next::Message(m) => {
                self.process(&m);
                true
            }
            Next::Quiet => false,
            Next::Ended(end) => panic!("{}: stream ended: {end:?}", self.p.user_id),
        }
    }

    /// Processes messages until every local edit is acknowledged and nothing
    /// more arrives for [`QUIET`].
    pub async fn settle(&mut self) {
        let deadline = Instant::now() + LONG;
        loop {
            assert!(
                Instant::now() < deadline,
                "{}: did not settle; pending {:?}",
                self.p.user_id,
                self.replica.pending().collect::<Vec<_>>()
            );
            if !self.pump_one(QUIET).await && self.replica.pending().next().is_none() {
                return;
            }
        }
    }

    pub fn lines(&self, file: &str) -> Vec<String> {
        self.replica
            .file(file)
            .map(|lines| lines.iter().map(|l| l.to_string()).collect())
            .unwrap_or_default()
    }
}
